"""Integration: the shared aggregate kernel against the real MongoDB.

One change loop serves every aggregate of every service: a consumed event applied
twice has one effect, a lost version race decides again on the new document, the
events land in the outbox in the same write, effects run once after the write, a
caller sees only their organisation's and branches' documents, and cursor pages
walk ties on the sort key without gaps or repeats.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from enum import StrEnum
from typing import Any

import orjson
import pytest
from pymongo import AsyncMongoClient, monitoring
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import AutoReconnect

from complaints_shared import aggregate
from complaints_shared.aggregate import Aggregate, Decision
from complaints_shared.auth import Principal, Role
from complaints_shared.events import EventType
from complaints_shared.pagination import decode_cursor, encode_cursor, listing_tag
from complaints_shared.problems import ConcurrentUpdate, ProblemError
from complaints_shared.settings import ServiceSettings
from complaints_shared.transitions import InvalidTransition
from routing.assignments.lifecycle import Command
from routing.assignments.models import AssignmentStatus
from tests.support.events import note_added
from tests.support.infrastructure import Infrastructure

pytestmark = pytest.mark.integration

NOW = datetime(2026, 11, 30, 2, tzinfo=UTC)
THING = Aggregate(collection="things", what="thing", applied_events_kept=3)
REMEMBERED_THING = Aggregate(collection="things", what="thing", decide_on_inserted=True)


@pytest.fixture
async def db(infrastructure: Infrastructure) -> AsyncIterator[AsyncDatabase]:
    client = AsyncMongoClient(infrastructure.mongodb_uri, tz_aware=True)
    name = f"t_kernel_{uuid.uuid4().hex[:10]}"
    try:
        yield client[name]
    finally:
        await client.drop_database(name)
        await client.close()


SETTINGS = ServiceSettings(service_name="kernel-probe")


async def _thing(db: AsyncDatabase, *, branch: str = "LZ", **fields: Any) -> str:
    thing_id = str(uuid.uuid4())
    await db[THING.collection].insert_one(
        {"_id": thing_id, "org": "demo", "branch": branch, "count": 0, "version": 1, **fields}
    )
    return thing_id


def _count_up(thing_id: str, effects: list[int]) -> Any:
    async def after(document: dict[str, Any]) -> None:
        effects.append(document["count"])

    def decide(current: dict[str, Any]) -> Decision:
        return Decision(
            {"$inc": {"count": 1}},
            [
                (
                    EventType.COMPLAINT_NOTE_ADDED,
                    note_added(complaint_id=thing_id, note_id="n-1", added_at=NOW),
                )
            ],
            [after],
        )

    return decide


async def _counted_up(
    db: AsyncDatabase, thing_id: str, effects: list[int], **keywords: Any
) -> dict[str, Any] | None:
    """The thing counted up once through the kernel (``_count_up``)."""
    return await aggregate.change(
        db=db,
        settings=SETTINGS,
        aggregate=THING,
        aggregate_id=thing_id,
        decide=_count_up(thing_id, effects),
        now=NOW,
        **keywords,
    )


async def test_an_event_applied_twice_has_one_effect(db: AsyncDatabase) -> None:
    thing_id = await _thing(db)
    effects: list[int] = []
    for _ in range(2):  # the same consumed event, redelivered
        document = await _counted_up(db, thing_id, effects, event_id="event-1")
        assert document is not None and document["count"] == 1
    stored = await db[THING.collection].find_one({"_id": thing_id})
    assert stored["count"] == 1
    assert stored["version"] == 2
    assert stored["applied_events"] == ["event-1"]
    assert [entry["type"] for entry in stored["outbox"]] == [
        "org.complaintdesk.complaint.note_added.v1"
    ]
    assert effects == [1]  # after the write, with the stored document, once


async def test_only_the_newest_applied_event_ids_are_kept(db: AsyncDatabase) -> None:
    thing_id = await _thing(db)
    for number in range(5):
        await _counted_up(db, thing_id, [], event_id=f"event-{number}")
    stored = await db[THING.collection].find_one({"_id": thing_id})
    assert stored["applied_events"] == ["event-2", "event-3", "event-4"]
    assert stored["count"] == 5


async def test_a_committed_change_whose_read_back_loses_its_connection_still_succeeds(
    db: AsyncDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The write of a change commits, then the read of the document after it meets a
    dropped connection. The change used to fail with it: a 503 telling an HTTP client to
    send the command again, which repeated it (a second remedy, a second escalation rung).
    The read is repeated now, and the change answered once."""
    thing_id = await _thing(db)
    update_one, find_one = AsyncCollection.update_one, AsyncCollection.find_one
    written, dropped = asyncio.Event(), asyncio.Event()

    async def update_then_drop_the_next_read(self: AsyncCollection, *args: Any, **kw: Any):
        result = await update_one(self, *args, **kw)
        written.set()
        return result

    async def read(self: AsyncCollection, *args: Any, **kw: Any):
        if written.is_set() and not dropped.is_set():
            dropped.set()
            raise AutoReconnect("connection closed (injected)")
        return await find_one(self, *args, **kw)

    monkeypatch.setattr(AsyncCollection, "update_one", update_then_drop_the_next_read)
    monkeypatch.setattr(AsyncCollection, "find_one", read)
    effects: list[int] = []
    document = await _counted_up(db, thing_id, effects)
    monkeypatch.undo()
    assert dropped.is_set()
    assert document is not None and (document["count"], document["version"]) == (1, 2)
    stored = await db[THING.collection].find_one({"_id": thing_id})
    assert (stored["count"], stored["version"]) == (1, 2)
    assert effects == [1]


async def test_a_lost_version_race_decides_again_on_the_new_document(db: AsyncDatabase) -> None:
    thing_id = await _thing(db)
    seen_counts: list[int] = []

    async def decide(current: dict[str, Any]) -> Decision:
        seen_counts.append(current["count"])
        if len(seen_counts) == 1:  # someone else writes between our read and our write
            await db[THING.collection].update_one(
                {"_id": thing_id}, {"$inc": {"count": 10, "version": 1}}
            )
        return Decision({"$set": {"count": current["count"] + 1}})

    document = await aggregate.change(
        db=db, settings=SETTINGS, aggregate=THING, aggregate_id=thing_id, decide=decide, now=NOW
    )
    assert seen_counts == [0, 10]
    assert document is not None and document["count"] == 11
    assert document["updated_at"] == NOW


async def test_a_change_committed_late_is_stamped_again_with_its_commit_time(
    db: AsyncDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that waited (a database failing over, say) is committed long after its
    stamp; a reader of the changes since a time may have read past the stamp meanwhile.
    The kernel stamps such a change again with its commit time on the writer's clock, and
    answers the document as stored; a change committed in time keeps its stamp."""
    # Long enough for a change made in time on a busy machine (a read and a write).
    monkeypatch.setattr(aggregate, "LATE_COMMIT_S", 1.0)
    thing_id = await _thing(db)

    async def count_up(*, wait_s: float) -> dict[str, Any] | None:
        async def decide(current: dict[str, Any]) -> Decision:
            await asyncio.sleep(wait_s)  # the change waits before its write
            return Decision({"$inc": {"count": 1}})

        return await aggregate.change(
            db=db, settings=SETTINGS, aggregate=THING, aggregate_id=thing_id, decide=decide, now=NOW
        )

    in_time = await count_up(wait_s=0)
    assert in_time is not None and in_time["updated_at"] == NOW

    late = await count_up(wait_s=1.5)
    stored = await db[THING.collection].find_one({"_id": thing_id})
    assert NOW + timedelta(seconds=1.5) <= stored["updated_at"] < NOW + timedelta(seconds=10)
    assert (stored["count"], stored["version"]) == (2, 3)  # stamped again, not changed again
    assert late is not None and late["updated_at"] == stored["updated_at"]


async def test_a_document_that_never_stops_changing_is_a_409(db: AsyncDatabase) -> None:
    thing_id = await _thing(db)

    async def decide(current: dict[str, Any]) -> Decision:
        await db[THING.collection].update_one({"_id": thing_id}, {"$inc": {"version": 1}})
        return Decision({"$inc": {"count": 1}})

    with pytest.raises(ConcurrentUpdate) as raised:
        await aggregate.change(
            db=db, settings=SETTINGS, aggregate=THING, aggregate_id=thing_id, decide=decide, now=NOW
        )
    assert raised.value.status == 409
    assert thing_id in raised.value.detail
    assert (await db[THING.collection].find_one({"_id": thing_id}))["count"] == 0


async def test_nothing_to_do_and_refusals_write_nothing(db: AsyncDatabase) -> None:
    thing_id = await _thing(db, status=AssignmentStatus.CLOSED.value)
    unchanged = await aggregate.change(
        db=db,
        settings=SETTINGS,
        aggregate=THING,
        aggregate_id=thing_id,
        decide=lambda current: None,
        now=NOW,
        event_id="event-1",
    )
    assert unchanged is not None and unchanged["version"] == 1

    def refuse(current: dict[str, Any]) -> Decision:
        raise InvalidTransition(
            current=AssignmentStatus(current["status"]), command=Command.ESCALATE, what="thing"
        )

    with pytest.raises(InvalidTransition) as raised:
        await aggregate.change(
            db=db, settings=SETTINGS, aggregate=THING, aggregate_id=thing_id, decide=refuse, now=NOW
        )
    assert raised.value.detail == f"thing {thing_id}: cannot escalate a thing that is closed"
    stored = await db[THING.collection].find_one({"_id": thing_id})
    assert stored["version"] == 1
    assert "applied_events" not in stored and "outbox" not in stored


async def test_visibility_scoped_reads_and_changes(db: AsyncDatabase) -> None:
    lanzhou = await _thing(db, branch="LZ")
    xian = await _thing(db, branch="XA")
    agent = Principal(subject="a", org="demo", branches=["LZ"], roles=[Role.AGENT])
    stranger = Principal(subject="s", org="other", branches="*", roles=[Role.ADMIN])

    seen = await aggregate.get_visible(
        db=db, aggregate=THING, principal=agent, aggregate_id=lanzhou
    )
    assert seen["_id"] == lanzhou and "outbox" not in seen
    for principal, thing_id in ((agent, xian), (stranger, lanzhou)):
        with pytest.raises(ProblemError) as raised:
            await aggregate.get_visible(
                db=db, aggregate=THING, principal=principal, aggregate_id=thing_id
            )
        assert raised.value.status == 404
        assert thing_id in raised.value.detail
    foreign = await aggregate.change(
        db=db,
        settings=SETTINGS,
        aggregate=THING,
        aggregate_id=xian,
        decide=_count_up(xian, []),
        now=NOW,
        scope=aggregate.visibility(agent),
    )
    assert foreign is None
    assert (await db[THING.collection].find_one({"_id": xian}))["count"] == 0


@pytest.mark.parametrize("descending", [False, True])
async def test_cursor_pages_walk_ties_without_gaps_or_repeats(
    db: AsyncDatabase, descending: bool
) -> None:
    # Three documents share each instant, so pages must break ties on _id.
    instants = [NOW + timedelta(minutes=minute) for minute in range(4)]
    expected = []
    for at in instants:
        for _ in range(3):
            expected.append((at, await _thing(db, created_at=at)))
    await _thing(db, branch="XA", created_at=NOW)  # another branch: never listed
    expected.sort(reverse=descending)
    agent = Principal(subject="a", org="demo", branches=["LZ"], roles=[Role.AGENT])

    walked: list[str] = []
    cursor = None
    while True:
        page = await aggregate.page(
            collection=db[THING.collection],
            query={
                "$and": [
                    aggregate.visibility(agent),
                    {"created_at": {"$lt": NOW + timedelta(hours=1)}},
                ]
            },
            sort_field="created_at",
            limit=5,
            cursor=cursor,
            to_item=lambda document: document["_id"],
            descending=descending,
        )
        walked.extend(page.items)
        cursor = page.next_cursor
        if cursor is None:
            break
    assert walked == [thing_id for _, thing_id in expected]


def forged_cursor(sort_value: str) -> str:
    raw = orjson.dumps([sort_value, "x"])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "sort_value",
    [
        "9999-12-31T23:59:59.999+00:00",  # a millisecond later overflowed (a 500)
        "0001-01-01T00:00:00+00:00",  # a millisecond earlier overflowed
        "9999-12-31T23:00:00-05:00",  # overflowed on conversion to UTC
        "2201-01-01T00:00:00+00:00",
        "1969-12-31T23:59:59+00:00",
    ],
)
def test_a_cursor_with_a_date_outside_1970_to_2200_is_a_422_naming_cursor(
    sort_value: str,
) -> None:
    with pytest.raises(ProblemError) as raised:
        decode_cursor(forged_cursor(sort_value), tag="t")
    assert raised.value.status == 422
    assert [error["field"] for error in raised.value.extensions["errors"]] == ["cursor"]


def test_a_cursor_holds_its_date_in_utc() -> None:
    shanghai = datetime(2026, 11, 30, 10, tzinfo=timezone(timedelta(hours=8)))
    cursor = encode_cursor(sort_value=shanghai, document_id="c-1", tag="t")
    at, document_id = decode_cursor(cursor, tag="t")
    assert (at, at.utcoffset(), document_id) == (NOW, timedelta(0), "c-1")
    # naive: as stored; a cursor given out before cursors carried their listing: taken.
    assert decode_cursor(forged_cursor("2026-11-30T02:00:00"), tag="t")[0] == NOW


def test_a_cursor_is_a_position_in_its_own_listing_only() -> None:
    def tag(**changes: object) -> str:
        listing = {
            "collection": "complaints",
            "sort_field": "created_at",
            "descending": False,
            "listing": {"org": "demo", "branch": {"$in": ["LZ", "HOSP"]}, "status": "open"},
        }
        return listing_tag(**{**listing, **changes})  # type: ignore[arg-type]

    cursor = encode_cursor(sort_value=NOW, document_id="c-1", tag=tag())
    # The same listing built in another order (a token's branches are a set): the same tag.
    same = {"status": "open", "branch": {"$in": ["HOSP", "LZ"]}, "org": "demo"}
    assert decode_cursor(cursor, tag=tag(listing=same)) == (NOW, "c-1")
    for other in (
        tag(descending=True),
        tag(sort_field="resolve_due_at"),
        tag(collection="assignments"),
        tag(listing={"org": "demo", "branch": {"$in": ["LZ", "HOSP"]}, "status": "resolved"}),
    ):
        with pytest.raises(ProblemError) as raised:
            decode_cursor(cursor, tag=other)
        assert raised.value.status == 422
        assert [error["field"] for error in raised.value.extensions["errors"]] == ["cursor"]


async def test_the_first_change_after_an_insert_decides_on_the_inserted_copy(
    infrastructure: Infrastructure,
) -> None:
    """A document this process inserted is changed once without reading it first; a copy
    another writer has overtaken costs one refused write, then the change decides again
    on the stored document; a scope the copy is outside of is left to the read; an
    aggregate that does not allow it always reads."""
    reads: list[str] = []

    class Reads(monitoring.CommandListener):
        def started(self, event: monitoring.CommandStartedEvent) -> None:
            if event.command_name == "find" and event.command.get("find") == THING.collection:
                reads.append(event.command["filter"]["_id"])

        def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
            pass

        def failed(self, event: monitoring.CommandFailedEvent) -> None:
            pass

    client = AsyncMongoClient(infrastructure.mongodb_uri, tz_aware=True, event_listeners=[Reads()])
    db = client[f"t_kernel_{uuid.uuid4().hex[:10]}"]
    try:

        async def inserted(**fields: Any) -> str:
            document = {"_id": str(uuid.uuid4()), "org": "demo", "count": 0, "version": 1}
            await db[THING.collection].insert_one(document | fields)
            aggregate.inserted(db=db, aggregate=REMEMBERED_THING, document=document | fields)
            return document["_id"]

        def count_up(current: dict[str, Any]) -> Decision:
            return Decision({"$set": {"count": current["count"] + 1}})

        async def change(thing_id: str, **scope: Any) -> dict[str, Any] | None:
            return await aggregate.change(
                db=db,
                settings=SETTINGS,
                aggregate=REMEMBERED_THING,
                aggregate_id=thing_id,
                decide=count_up,
                now=NOW,
                scope=scope or None,
                read_back=False,
            )

        fresh = await inserted()
        await change(fresh, org="demo")
        assert reads == []  # decided on the inserted copy
        await change(fresh)
        assert reads == [fresh]  # the copy serves one change only
        assert (await db[THING.collection].find_one({"_id": fresh}))["count"] == 2

        overtaken = await inserted()
        await db[THING.collection].update_one(
            {"_id": overtaken}, {"$set": {"count": 10}, "$inc": {"version": 1}}
        )
        reads.clear()
        await change(overtaken)
        assert reads == [overtaken]  # the version refused the copy's write: read, decide again
        assert (await db[THING.collection].find_one({"_id": overtaken}))["count"] == 11

        elsewhere = await inserted(org="other")
        reads.clear()
        assert await change(elsewhere, org="demo") is None  # outside the scope: not found
        assert reads == [elsewhere]
        assert (await db[THING.collection].find_one({"_id": elsewhere}))["count"] == 0

        plain = str(uuid.uuid4())
        await db[THING.collection].insert_one({"_id": plain, "count": 0, "version": 1})
        aggregate.inserted(db=db, aggregate=THING, document={"_id": plain, "version": 1})
        reads.clear()
        await aggregate.change(
            db=db, settings=SETTINGS, aggregate=THING, aggregate_id=plain, decide=count_up, now=NOW
        )
        assert reads == [plain, plain]  # read before (and after) the write, as always
    finally:
        await client.drop_database(db.name)
        await client.close()


class ThingStatus(StrEnum):
    RECEIVED = "received"
    RESOLVED = "resolved"


class ThingCommand(StrEnum):
    RECORD_REMEDY = "record_remedy"


@pytest.mark.parametrize("copy_says", ["refused", "nothing to do"])
async def test_a_decision_the_inserted_copy_refuses_is_taken_again_on_the_stored_document(
    db: AsyncDatabase, copy_says: str
) -> None:
    """The replica that registered a complaint decided its first change on the copy it
    inserted; another replica had resolved it meanwhile, so a remedy (legal once resolved)
    was a 409 "cannot record_remedy a complaint that is received" while GET said resolved.
    A refusal, or a "nothing to do", on the copy is now decided again on what is stored."""
    thing_id = str(uuid.uuid4())
    document = {"_id": thing_id, "org": "demo", "status": "received", "count": 0, "version": 1}
    await db[THING.collection].insert_one(document)
    aggregate.inserted(db=db, aggregate=REMEMBERED_THING, document=document)
    await db[THING.collection].update_one(  # another replica's change
        {"_id": thing_id}, {"$set": {"status": "resolved"}, "$inc": {"version": 1}}
    )

    def remedy(current: dict[str, Any]) -> Decision | None:
        if current["status"] != "resolved":
            if copy_says == "refused":
                raise InvalidTransition(
                    current=ThingStatus(current["status"]), command=ThingCommand.RECORD_REMEDY
                )
            return None
        return Decision({"$inc": {"count": 1}})

    changed = await aggregate.change(
        db=db,
        settings=SETTINGS,
        aggregate=REMEMBERED_THING,
        aggregate_id=thing_id,
        decide=remedy,
        now=NOW,
        scope={"org": "demo"},
    )
    assert changed is not None and changed["count"] == 1
    assert (await db[THING.collection].find_one({"_id": thing_id}))["count"] == 1


async def test_an_expanded_page_continues_from_where_its_ordering_read_placed_it(
    db: AsyncDatabase,
) -> None:
    """A page ordered by one read and expanded by another (intake's ``q`` on a due-time
    order) took its cursor from the expanded document: one whose date moved in between
    (routing changed a due time) put the cursor past every document up to the new date,
    which were never listed though they had not moved."""
    base = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)
    names = ["a", "b", "c"]
    await db.narrow.insert_many(
        [{"_id": name, "due": base + timedelta(minutes=5 * n)} for n, name in enumerate(names)]
    )

    async def expand(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        # Read after the ordering read: "a"'s due time has moved past the others' meanwhile.
        moved = {"a": base + timedelta(minutes=20)}
        return [
            {**document, "due": moved.get(document["_id"], document["due"])} for document in batch
        ]

    listed: list[str] = []
    cursor = None
    for _ in range(4):
        page = await aggregate.page(
            collection=db.narrow,
            query={},
            sort_field="due",
            limit=1,
            cursor=cursor,
            to_item=lambda document: document["_id"],
            expand=expand,
        )
        listed += page.items
        cursor = page.next_cursor
        if cursor is None:
            break
    assert listed == names
