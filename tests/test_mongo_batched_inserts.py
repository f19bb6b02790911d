"""Integration: ``insert_batched`` against the real database (new complaints, their search
postings and routing's assignments are inserted through it).

Inserts that arrive while one is in flight go out together in one ``insert_many``, and
each caller still gets exactly what its own ``insert_one`` would have given: its
duplicate key (with the key pattern the services tell an id clash by), or success while
a neighbour of the batch fails.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from bson.errors import InvalidDocument
from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, DuplicateKeyError, WriteConcernError
from pymongo.monitoring import CommandListener, CommandStartedEvent

from complaints_shared.failures import is_transient
from complaints_shared.mongo import insert_batched, is_id_clash
from tests.support.infrastructure import Infrastructure

pytestmark = pytest.mark.integration


class InsertCommands(CommandListener):
    """How many documents each insert command sent carried."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def started(self, event: CommandStartedEvent) -> None:
        if event.command_name == "insert":
            self.sizes.append(len(event.command.get("documents", [])))

    def succeeded(self, event: Any) -> None:
        pass

    def failed(self, event: Any) -> None:
        pass


@pytest.fixture
async def inserts(infrastructure: Infrastructure) -> AsyncIterator[tuple[AsyncCollection, list]]:
    listener = InsertCommands()
    client = AsyncMongoClient(infrastructure.mongodb_uri, tz_aware=True, event_listeners=[listener])
    db = client[f"t_batched_{uuid.uuid4().hex[:10]}"]
    try:
        await db.items.create_index("claim", unique=True, sparse=True, name="claim_unique")
        yield db.items, listener.sizes
    finally:
        await client.drop_database(db.name)
        await client.close()


async def _outcome(collection: AsyncCollection, document: dict[str, Any]) -> Any:
    try:
        await insert_batched(collection, document)
    except Exception as exc:
        return exc
    return "stored"


async def test_inserts_arriving_together_go_out_in_one_command_and_are_all_stored(
    inserts: tuple[AsyncCollection, list],
) -> None:
    items, sizes = inserts
    documents = [{"_id": f"item-{n}", "text": f"投诉 {n}"} for n in range(40)]
    outcomes = await asyncio.gather(*(_outcome(items, document) for document in documents))
    assert outcomes == ["stored"] * 40
    stored = await items.find({}, sort=[("_id", 1)]).to_list(None)
    assert sorted(d["_id"] for d in stored) == sorted(d["_id"] for d in documents)
    assert {d["text"] for d in stored} == {d["text"] for d in documents}
    # 40 callers, far fewer commands: the first went out alone, the rest waited for it.
    assert sum(sizes) == 40
    assert len(sizes) <= 3, sizes
    assert max(sizes) >= 20, sizes


async def test_a_lone_insert_goes_out_at_once(inserts: tuple[AsyncCollection, list]) -> None:
    items, sizes = inserts
    await asyncio.wait_for(insert_batched(items, {"_id": "alone"}), timeout=5)
    assert sizes == [1]
    assert await items.find_one({"_id": "alone"}) == {"_id": "alone"}


async def test_each_caller_gets_its_own_duplicate_key_and_the_others_are_stored(
    inserts: tuple[AsyncCollection, list],
) -> None:
    items, sizes = inserts
    await items.insert_one({"_id": "taken", "claim": "held"})
    documents = [
        {"_id": "new-1"},
        {"_id": "taken"},  # the same id: an id clash
        {"_id": "new-2", "claim": "held"},  # another unique index: not an id clash
        {"_id": "new-3"},
    ]
    outcomes = await asyncio.gather(*(_outcome(items, document) for document in documents))
    assert outcomes[0] == outcomes[3] == "stored"
    assert isinstance(outcomes[1], DuplicateKeyError) and is_id_clash(outcomes[1])
    assert isinstance(outcomes[2], DuplicateKeyError) and not is_id_clash(outcomes[2])
    assert {d["_id"] for d in await items.find({}).to_list(None)} == {
        "taken",
        "new-1",
        "new-3",
    }
    assert sum(sizes[1:]) == 4 and len(sizes) <= 3, sizes


async def test_a_document_that_cannot_be_sent_fails_alone(
    inserts: tuple[AsyncCollection, list],
) -> None:
    items, _ = inserts
    documents = [{"_id": "good-1"}, {"_id": "bad", "value": object()}, {"_id": "good-2"}]
    outcomes = await asyncio.gather(*(_outcome(items, document) for document in documents))
    assert outcomes[0] == outcomes[2] == "stored"
    assert isinstance(outcomes[1], InvalidDocument)
    assert {d["_id"] for d in await items.find({}).to_list(None)} == {"good-1", "good-2"}


async def test_a_cancelled_caller_leaves_the_others_stored(
    inserts: tuple[AsyncCollection, list],
) -> None:
    items, _ = inserts
    first = asyncio.ensure_future(insert_batched(items, {"_id": "first"}))
    await asyncio.sleep(0)  # the first is in flight; the next ones wait for it
    waiting = [asyncio.ensure_future(insert_batched(items, {"_id": f"w-{n}"})) for n in range(5)]
    await asyncio.sleep(0)
    waiting[2].cancel()
    await first
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert isinstance(results[2], asyncio.CancelledError)
    assert [r for n, r in enumerate(results) if n != 2] == [None] * 4
    stored = {d["_id"] for d in await items.find({}).to_list(None)}
    assert {"first", "w-0", "w-1", "w-3", "w-4"} <= stored
    # A later insert starts a new batch: nothing is left stuck behind the cancelled one.
    await asyncio.wait_for(insert_batched(items, {"_id": "later"}), timeout=5)
    assert await items.find_one({"_id": "later"}) is not None


async def test_inserts_left_without_their_write_concern_are_transient_beside_a_duplicate(
    inserts: tuple[AsyncCollection, list], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch with a duplicate (an identical resubmission, say) meets a failover: the server
    answers the duplicate and write-concern errors (code 11602). Every other caller got the
    whole bulk's error, which the duplicate made look permanent: a 500, or a handler's
    attempt counted towards its dead letter. Each gets the write-concern error alone now,
    transient (a 503, or retried without limit); the duplicate's caller its duplicate."""
    items, _ = inserts
    await items.insert_one({"_id": "taken"})
    insert_many = AsyncCollection.insert_many

    async def failing_over(self: AsyncCollection, *arguments: Any, **keywords: Any) -> Any:
        try:
            return await insert_many(self, *arguments, **keywords)
        except BulkWriteError as exc:
            stepped_down = {"code": 11602, "errmsg": "operation was interrupted"}
            raise BulkWriteError({**exc.details, "writeConcernErrors": [stepped_down]}) from exc

    monkeypatch.setattr(AsyncCollection, "insert_many", failing_over)
    documents = [{"_id": "new-1"}, {"_id": "taken"}, {"_id": "new-2"}]
    outcomes = await asyncio.gather(*(_outcome(items, document) for document in documents))
    assert isinstance(outcomes[1], DuplicateKeyError)
    for unconcerned in (outcomes[0], outcomes[2]):
        assert isinstance(unconcerned, WriteConcernError), unconcerned
        assert is_transient(unconcerned)
