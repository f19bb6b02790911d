"""Data access for the complaint of record. No HTTP here.

Every change goes through ``change``, a complaint's use of the shared aggregate
kernel (``complaints_shared.aggregate``): read the document, let the caller decide
(using the lifecycle), then write conditionally on the version read (optimistic
concurrency) together with the timeline entries and the outbox events it causes.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from pymongo.asynchronous.database import AsyncDatabase

from complaints_shared import aggregate
from complaints_shared.aggregate import Aggregate
from complaints_shared.auth import Principal
from complaints_shared.events import EventData, EventType
from complaints_shared.idempotency import CommandKey
from complaints_shared.mongo import (
    as_stored,
    by_ids,
    ensure_index,
    insert_batched,
    merge_updates,
    retrying,
)
from complaints_shared.stored import from_stored
from intake import filter_keys, floors
from intake.lifecycle import Status
from intake.models import ComplaintRead
from intake.repeats import repeat_buckets, repeat_keys
from intake.settings import IntakeSettings

COMPLAINTS = "complaints"
APPLIED_EVENTS_KEPT = 500
MAX_WRITE_ATTEMPTS = 8
# The timeline's ``cause`` of a change asked for over HTTP (else the consumed event's type).
COMMAND_CAUSE = "command"
# Entries on the complaint's timeline, counted with each change that adds some (documents
# stored before 4 December count from their first change since).
TIMELINE_LENGTH = "timeline_length"
# The document's size as estimated on it: the registered document, then each timeline entry
# added, twice (a command's words are also kept where it put them: a note, a reason, a
# resolution). ``commands`` refuses more past ``MAX_RECORD_BYTES``.
RECORD_BYTES = "record_bytes"
# When routing's acknowledge clock stopped (its verdict, complaint.sla_stopped): at the
# acknowledgement, or at a resolution, rejection, withdrawal or closure that came first.
ACKNOWLEDGE_STOPPED_AT = "acknowledge_stopped_at"


def estimated_bytes(value: Any) -> int:
    """About what ``value`` takes stored (its JSON; BSON is within a few bytes a field)."""
    return len(orjson.dumps(value, default=str))


HIDDEN_FIELDS = {"outbox": 0, "applied_events": 0, "timeline": 0}
COMPLAINT = Aggregate(
    collection=COMPLAINTS,
    what="complaint",
    applied_events_kept=APPLIED_EVENTS_KEPT,
    max_write_attempts=MAX_WRITE_ATTEMPTS,
    hidden=HIDDEN_FIELDS,
    # The timeline is only appended to. (The search grams live in ``intake.postings``.)
    unread=("timeline",),
    # Beside the kernel only the relay (the outbox) and the end of a resubmission window
    # write a complaint, neither a field a decision reads, and the directory's renames
    # (``directory_names``), which move the version.
    decide_on_inserted=True,
)


# The lists of GET /v1/complaints read through these (org first: every query is scoped to
# the caller's organisation); the sort key comes last, then the ``_id`` tie-break every
# page sorts on. Every filter by value (branch, status, category, department, owner, flag,
# customer...) goes through the one index of ``intake.filter_keys``. docs/performance.md
# lists each query shape and its index; tests/test_index_coverage.py checks that every
# shape has one.
COMPLAINT_INDEXES: dict[str, list[tuple[str, int]]] = {
    "org_created": [("org", 1), ("created_at", -1), ("_id", -1)],
    "org_filter_keys_created": filter_keys.INDEX,
    "org_ack_due": [("org", 1), ("acknowledge_due_at", 1), ("_id", 1)],
    "org_resolve_due": [("org", 1), ("resolve_due_at", 1), ("_id", 1)],
    "org_repeat_keys": [("org", 1), ("repeat_keys", 1)],
}
# An index per filter, before ``intake.filter_keys``: dropped at start.
RETIRED_INDEXES = (
    "org_branch_created",
    "org_status_created",
    "org_branch_status_created",
    "org_category_created",
    "org_severity_created",
    "org_channel_created",
    "org_flags_created",
    "org_department_status",
    "org_owner_status",
    "org_customer_keys",
    "org_breached",
    "org_repeat",
)
# Reference numbers are unique per organisation; a search by reference names the org.
REFERENCE_INDEX = [("org", 1), ("reference", 1)]


async def ensure_indexes(*, db: AsyncDatabase) -> None:
    complaints = db[COMPLAINTS]
    await ensure_index(complaints, REFERENCE_INDEX, unique=True, name="reference_unique")
    for name, keys in COMPLAINT_INDEXES.items():
        await ensure_index(complaints, keys, name=name)
    existing = await complaints.index_information()
    for name in RETIRED_INDEXES:
        if name in existing:
            # Before ``intake.repair`` writes keys: fewer index entries to rewrite each time.
            await complaints.drop_index(name)


def timeline_entry(
    *,
    actor: str,
    action: str,
    at: datetime,
    cause: str = COMMAND_CAUSE,
    event_id: str | None = None,
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One line of the complaint's history; ``action`` is a word of ``Action``."""
    return {
        "at": at,
        "actor": actor,
        "action": action,
        "cause": cause,
        "event_id": event_id,
        "details": details or {},
    }


def to_read(document: dict[str, Any]) -> ComplaintRead:
    shown = {**document, "id": document["_id"]}
    if shown.get("closed_at") is None:
        # Who closed it, while it is: a reopen stored before 5 December left it behind.
        shown.pop("closed_via", None)
    return from_stored(ComplaintRead, shown)


async def shown_to(
    *, db: AsyncDatabase, principal: Principal, complaints: list[ComplaintRead]
) -> list[ComplaintRead]:
    """``complaints`` as the caller may read them: ``repeat_of`` names only earlier complaints
    of the token's branches. Repeat detection is organisation-wide and ``repeat_count`` counts
    every earlier complaint, but another branch's complaint ids are not the caller's to see."""
    linked = {earlier for complaint in complaints for earlier in complaint.repeat_of}
    if principal.all_branches or not linked:
        return complaints
    visible = await _visible(db=db, principal=principal, complaint_ids=linked)
    return [
        complaint
        if visible.issuperset(complaint.repeat_of)
        else complaint.model_copy(
            update={"repeat_of": [earlier for earlier in complaint.repeat_of if earlier in visible]}
        )
        for complaint in complaints
    ]


async def repeats_shown_to(
    *, db: AsyncDatabase, principal: Principal, repeat_of: list[str]
) -> list[str]:
    """``repeat_of`` of an answer stored for a replay, as the caller may read it now
    (``shown_to``): the token replaying a key may cover fewer branches than the first."""
    if principal.all_branches or not repeat_of:
        return repeat_of
    visible = await _visible(db=db, principal=principal, complaint_ids=set(repeat_of))
    return [earlier for earlier in repeat_of if earlier in visible]


async def _visible(*, db: AsyncDatabase, principal: Principal, complaint_ids: set[str]) -> set[str]:
    """Those of ``complaint_ids`` in the token's branches."""
    return {
        document["_id"]
        async for document in db[COMPLAINTS].find(
            by_ids(sorted(complaint_ids), principal.scope_filter()), projection={"_id": 1}
        )
    }


async def find(*, db: AsyncDatabase, complaint_id: str) -> dict[str, Any] | None:
    """The stored complaint, or None: registration's own reads, without a caller's scope."""
    return await db[COMPLAINTS].find_one({"_id": complaint_id}, projection=HIDDEN_FIELDS)


async def insert(*, db: AsyncDatabase, document: dict[str, Any], entered: float) -> dict[str, Any]:
    """Store a new complaint (``registration.new_document``, stamped when the request
    began: ``entered``, its ``time.monotonic()``); returns it as stored. One committed
    late is stamped again (``aggregate.stamped_if_late``), as a late change is: the report
    rollup, having read past its first stamp meanwhile, would never count it."""
    await floors.cover(db=db, complaint=document)
    await retrying(insert_batched, db[COMPLAINTS], document)
    aggregate.inserted(db=db, aggregate=COMPLAINT, document=document)
    return as_stored(await stamped_if_late(db=db, document=document, entered=entered))


async def stamped_if_late(
    *, db: AsyncDatabase, document: dict[str, Any], entered: float
) -> dict[str, Any]:
    """``document`` (inserted by a request that began at ``entered``) stamped again when the
    insert committed late: the one this request made, or one an earlier try of it made
    (a retry's insert refused on its own id)."""
    return await aggregate.stamped_if_late(
        db[COMPLAINTS],
        document,
        version=document.get("version"),
        stamped=document["updated_at"],
        entered=entered,
    )


async def get_visible(*, db: AsyncDatabase, principal: Principal, complaint_id: str) -> dict:
    """The complaint if the caller may see it; a foreign one is simply not found."""
    return await aggregate.get_visible(
        db=db, aggregate=COMPLAINT, principal=principal, aggregate_id=complaint_id
    )


async def get_timeline(*, db: AsyncDatabase, principal: Principal, complaint_id: str) -> dict:
    return await aggregate.get_visible(
        db=db,
        aggregate=COMPLAINT,
        principal=principal,
        aggregate_id=complaint_id,
        projection={"reference": 1, "timeline": 1},
    )


async def find_earlier_complaints(
    *, db: AsyncDatabase, org: str, keys: list[str], since: datetime, now: datetime
) -> list[dict[str, Any]]:
    """The customer's open complaints and those finished since ``since``, newest first.

    One equality ``$in`` on the multikey index ``(org, repeat_keys)``, however many
    complaints the customer has: the keys name the customer and either ``open`` or
    the UTC week the complaint finished (``repeats.repeat_keys``), so "open, or finished
    within the window" is the customer's keys × (``open`` + each week the window
    touches). A range or a status condition next to the customer keys would make
    SecantusDB scan the collection (docs/mongodb-compatibility.md). What the first week
    brings in from before the window is trimmed exactly here.
    """
    if not keys:
        return []
    wanted = [f"{key}|{bucket}" for key in keys for bucket in repeat_buckets(since=since, now=now)]
    candidates = await (
        db[COMPLAINTS]
        .find(
            {"org": org, "repeat_keys": {"$in": wanted}},
            projection={"_id": 1, "branch": 1, "created_at": 1, "finished_at": 1},
        )
        .to_list(None)
    )
    earlier = [
        document
        for document in candidates
        if document.get("finished_at") is None or document["finished_at"] >= since
    ]
    earlier.sort(key=lambda document: (document["created_at"], document["_id"]), reverse=True)
    return earlier


# ------------------------------------------------------------------- changes --


@dataclass(frozen=True)
class Decision:
    """What one change does to a complaint.

    ``status`` is the next status as ``lifecycle.transition`` decided it (None keeps
    the current one); ``entries`` are timeline entries (action, details) written after
    the caller's own entry, and a status change is recorded on the last entry.
    """

    update: dict[str, Any]
    events: list[tuple[EventType, EventData]] = field(default_factory=list)
    status: Status | None = None
    entries: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    # The caller's own entry arrives withdrawn already (a breach or a rung whose withdrawal
    # was applied first): marked as ``mark_withdrawn`` marks those it finds.
    withdrawn: dict[str, Any] | None = None
    # When ``entries`` and the status change happened, if not when the caller's own entry
    # did: a reopening caused by an answer consumed late happens when it is applied.
    entries_at: datetime | None = None
    # Added to the caller's own entry's details: what the decision found on the record (a
    # reclassification's classification before it).
    details: dict[str, Any] = field(default_factory=dict)
    # The caller's own entry's action, when the decision finds it is another than asked (an
    # assignment announced again with new due times is no new assignment).
    action: str | None = None


UNCHANGED = Decision({})


def _status_update(*, current: dict[str, Any], next_status: Status | None, now: datetime) -> dict:
    if next_status is None or next_status.value == current["status"]:
        return {}
    keys = repeat_keys(current.get("customer_keys", []), status=next_status, at=now)
    return {"$set": {"status": next_status.value, "repeat_keys": keys}}


async def change(
    *,
    db: AsyncDatabase,
    settings: IntakeSettings,
    complaint_id: str,
    scope: dict[str, Any],
    actor: str,
    action: str,
    decide: Callable[[dict[str, Any]], Decision],
    now: datetime,
    happened_at: datetime | None = None,
    cause: str = COMMAND_CAUSE,
    event_id: str | None = None,
    command_key: CommandKey | None = None,
    details: dict[str, Any] | None = None,
    read_back: bool = True,
) -> dict[str, Any] | None:
    """Apply one decided change atomically; returns the new document (with
    ``read_back=False`` the document before it: see ``aggregate.change``).

    Every change writes its timeline entries with the actor, the cause (``command``
    or the consumed event's type) and the causing event id; a status change is
    recorded on the entry that caused it (``status_from`` / ``status_to``).
    ``event_id`` makes the change idempotent for consumed events: a document that
    already applied it is returned unchanged (None when it does not exist).

    ``now`` is when the record changes here, stamped as ``updated_at``: the report rollup
    and the reports read the complaints changed since a time by it. ``happened_at``, for
    a consumed event, is when the change happened elsewhere: the time of its timeline
    entries and of a status change's repeat keys (``now`` when not given).
    """
    at = happened_at or now

    async def timeline_and_status(current: dict[str, Any]) -> aggregate.Decision:
        decision = decide(current)
        status_from = Status(current["status"])
        changed_at = decision.entries_at or at
        entries = [
            (decision.action or action, {**(details or {}), **decision.details}, at),
            *((*entry, changed_at) for entry in decision.entries),
        ]
        timeline = [
            timeline_entry(
                actor=actor, action=name, at=when, cause=cause, event_id=event_id, details=extra
            )
            for name, extra, when in entries
        ]
        if decision.withdrawn is not None:
            timeline[0]["withdrawn"] = decision.withdrawn
        if decision.status is not None and decision.status is not status_from:
            timeline[-1]["status_from"] = status_from.value
            timeline[-1]["status_to"] = decision.status.value
        update = merge_updates(
            decision.update,
            _status_update(current=current, next_status=decision.status, now=changed_at),
            {
                "$push": {"timeline": {"$each": timeline}},
                "$inc": {
                    TIMELINE_LENGTH: len(timeline),
                    RECORD_BYTES: 2 * estimated_bytes(timeline),
                },
            },
        )
        # Before the write: a list after it finds the complaint within the floors.
        await floors.cover(db=db, complaint=floors.values_written(current, update))
        return aggregate.Decision(filter_keys.with_keys(current, update), decision.events)

    return await aggregate.change(
        db=db,
        settings=settings,
        aggregate=COMPLAINT,
        aggregate_id=complaint_id,
        decide=timeline_and_status,
        now=now,
        scope=scope,
        event_id=event_id,
        command_key=command_key,
        read_back=read_back,
    )


async def mark_withdrawn(
    *,
    db: AsyncDatabase,
    complaint_id: str,
    org: str,
    marks: list[dict[str, Any]],
    withdrawn: dict[str, Any],
) -> None:
    """Mark the timeline entries each of ``marks`` selects (conditions on one entry, as
    ``arrayFilters`` say them, on the names ``e0``, ``e1``...) ``withdrawn``: they stay on
    the timeline. Idempotent; beside the kernel, as no decision reads the timeline."""
    if not marks:
        return
    names = [f"e{n}" for n in range(len(marks))]
    await retrying(
        db[COMPLAINTS].update_one,
        {"_id": complaint_id, "org": org},
        {"$set": {f"timeline.$[{name}].withdrawn": withdrawn for name in names}},
        array_filters=[
            {f"{name}.{path}": condition for path, condition in mark.items()}
            for name, mark in zip(names, marks, strict=True)
        ],
    )


def new_id() -> str:
    return str(uuid.uuid4())
