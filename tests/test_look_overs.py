"""Integration: look-overs (``complaints_shared.timers.look_over_due``) against the database.

A look-over is a due time on a document that any replica's pass acts on once: the names
intake applied (``settle_at``) and the rules routing changed (``look_over_at``) are looked
over so. One document's failure must neither stop the others nor be retried at once for
good, and a document planned again while it was looked over keeps its next look-over.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection

from complaints_shared.failures import TransientFailure
from complaints_shared.timers import look_over_due
from tests.support.infrastructure import Infrastructure

pytestmark = pytest.mark.integration

FIELD = "look_at"


@pytest.fixture
async def collection(infrastructure: Infrastructure) -> AsyncIterator[AsyncCollection]:
    client: AsyncMongoClient = AsyncMongoClient(infrastructure.mongodb_uri, tz_aware=True)
    name = f"t_{uuid.uuid4().hex[:10]}_look_overs"
    try:
        yield client[name]["documents"]
    finally:
        await client.drop_database(name)
        await client.close()


async def test_each_due_document_is_looked_over_once_whatever_the_others_do(
    collection: AsyncCollection,
) -> None:
    now = datetime.now(UTC)
    planned = {
        "done": now - timedelta(seconds=50),
        "busy": now - timedelta(seconds=40),
        "broken": now - timedelta(seconds=30),
        "planned_again": now - timedelta(seconds=20),
        "later": now + timedelta(hours=1),
    }
    await collection.insert_many([{"_id": key, FIELD: at} for key, at in planned.items()])
    next_time = now + timedelta(minutes=5)
    looked: list[str] = []

    async def look(document: dict[str, Any]) -> dict[str, Any] | None:
        looked.append(document["_id"])
        if document["_id"] == "busy":
            raise TransientFailure("a concurrent change")
        if document["_id"] == "broken":
            raise ValueError("a fault of this document")
        if document["_id"] == "planned_again":
            # Another change planned its own look-over while this one ran.
            await collection.update_one({"_id": "planned_again"}, {"$set": {FIELD: next_time}})
            return None
        return {"result": "seen"}

    count = await look_over_due(
        collection, field=FIELD, look=look, what="test", defer_s=60, limit=10
    )

    assert looked == ["done", "busy", "broken", "planned_again"]  # the earliest first
    assert count == 3  # the busy one is deferred, not counted
    stored = {document["_id"]: document async for document in collection.find()}
    assert stored["done"] == {"_id": "done", "result": "seen"}
    deferred = stored["busy"][FIELD]
    assert now + timedelta(seconds=55) <= deferred <= datetime.now(UTC) + timedelta(seconds=60)
    assert stored["broken"] == {"_id": "broken"}  # dropped: it holds nobody up for good
    assert abs(stored["planned_again"][FIELD] - next_time) < timedelta(milliseconds=1)
    assert abs(stored["later"][FIELD] - planned["later"]) < timedelta(milliseconds=1)

    # The next pass: nothing due but what was deferred, and that not yet.
    looked.clear()
    again = await look_over_due(
        collection, field=FIELD, look=look, what="test", defer_s=60, limit=10
    )
    assert (again, looked) == (0, [])


async def test_a_pass_looks_over_at_most_its_limit_the_earliest_first(
    collection: AsyncCollection,
) -> None:
    now = datetime.now(UTC)
    await collection.insert_many(
        [{"_id": f"d{index}", FIELD: now - timedelta(seconds=index)} for index in range(5)]
    )
    looked: list[str] = []

    async def look(document: dict[str, Any]) -> None:
        looked.append(document["_id"])

    assert (
        await look_over_due(collection, field=FIELD, look=look, what="test", defer_s=1, limit=2)
        == 2
    )
    assert looked == ["d4", "d3"]
    assert await collection.count_documents({FIELD: {"$exists": True}}) == 3
