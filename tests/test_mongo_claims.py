"""Integration: ``claim_first`` against the real database (the schedulers' way to take work).

The earliest due document whose lease is free is taken, exactly once among racing
claimers, whether the lease is checked by the read (MongoDB) or on the candidates in the
service (the local server, where the read would otherwise scan the collection).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from pymongo import ASCENDING, AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection

from complaints_shared import mongo
from complaints_shared.mongo import claim_first
from tests.support.infrastructure import Infrastructure

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
async def checks(infrastructure: Infrastructure) -> AsyncIterator[AsyncCollection]:
    client = AsyncMongoClient(infrastructure.mongodb_uri, tz_aware=True)
    db = client[f"t_claims_{uuid.uuid4().hex[:10]}"]
    try:
        await db.checks.create_index([("status", ASCENDING), ("due_at", ASCENDING)])
        yield db.checks
    finally:
        await client.drop_database(db.name)
        await client.close()


async def _claim(checks: AsyncCollection, owner: str) -> str | None:
    claimed = await claim_first(
        checks,
        {"status": "scheduled", "due_at": {"$lt": NOW}},
        {"$set": {"lease_owner": owner, "lease_until": NOW + timedelta(seconds=30)}},
        sort=[("due_at", ASCENDING)],
        projection={"_id": 1},
        lease=("lease_until", NOW),
    )
    return claimed["_id"] if claimed else None


async def test_the_earliest_due_document_with_a_free_lease_is_taken(
    checks: AsyncCollection,
) -> None:
    minutes = [timedelta(minutes=m) for m in range(1, 6)]
    await checks.insert_many(
        [
            # the two earliest are held by someone else
            {
                "_id": "held-1",
                "status": "scheduled",
                "due_at": NOW - minutes[4],
                "lease_until": NOW + timedelta(seconds=10),
            },
            {
                "_id": "held-2",
                "status": "scheduled",
                "due_at": NOW - minutes[3],
                "lease_until": NOW + timedelta(seconds=10),
            },
            {
                "_id": "expired",
                "status": "scheduled",
                "due_at": NOW - minutes[2],
                "lease_until": NOW - timedelta(seconds=1),
            },
            {"_id": "free", "status": "scheduled", "due_at": NOW - minutes[1]},
            {"_id": "done", "status": "done", "due_at": NOW - minutes[0]},
            {"_id": "later", "status": "scheduled", "due_at": NOW + minutes[0]},
        ]
    )
    assert await _claim(checks, "me") == "expired"  # an expired lease is free
    assert await _claim(checks, "me") == "free"
    assert await _claim(checks, "me") is None  # the rest are held, finished or not due
    held = await checks.find_one({"_id": "held-1"})
    assert "lease_owner" not in held  # untouched


async def test_racing_claimers_take_each_document_once(checks: AsyncCollection) -> None:
    await checks.insert_many(
        [
            {"_id": f"c{n}", "status": "scheduled", "due_at": NOW - timedelta(seconds=n + 1)}
            for n in range(8)
        ]
    )
    taken = await asyncio.gather(*(_claim(checks, f"owner-{n}") for n in range(12)))
    claimed = [item for item in taken if item is not None]
    assert sorted(claimed) == sorted(f"c{n}" for n in range(8))  # each once, none missed
    owners = {doc["_id"]: doc["lease_owner"] async for doc in checks.find({})}
    assert len(owners) == 8


async def test_a_free_document_behind_more_held_ones_than_a_read_takes_is_still_taken(
    checks: AsyncCollection,
) -> None:
    """Documents that keep failing are held until their retry; however many are due
    first (more than the local server's claim reads at once), the next free one is taken."""
    held = mongo.CLAIM_CANDIDATES * 2 + 3
    await checks.insert_many(
        [
            {
                "_id": f"held-{n:03}",
                "status": "scheduled",
                "due_at": NOW - timedelta(hours=1) + timedelta(seconds=n),
                "lease_until": NOW + timedelta(minutes=5),
            }
            for n in range(held)
        ]
        + [{"_id": "free", "status": "scheduled", "due_at": NOW - timedelta(minutes=1)}]
    )
    assert await _claim(checks, "me") == "free"
    assert await _claim(checks, "me") is None


async def test_upserts_racing_to_create_one_document_each_get_it_back(
    checks: AsyncCollection,
) -> None:
    """``upsert_and_read``: eight saves racing to create one document each apply once and
    each get the stored document back. With ``find_one_and_update(upsert=True, AFTER)`` the
    local server handed some losers None (about one in eight, probe of 4 December): the SLA
    policy save that used it answered those with a TypeError, a 500."""
    for _ in range(10):
        key = uuid.uuid4().hex
        saved = await asyncio.gather(
            *(mongo.upsert_and_read(checks, key, {"$inc": {"saves": 1}}) for _ in range(8))
        )
        assert all(document is not None and document["_id"] == key for document in saved)
        assert sorted(document["saves"] for document in saved)[-1] == 8
        assert (await checks.find_one({"_id": key}))["saves"] == 8
