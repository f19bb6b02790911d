"""Integration: ``count_each`` against the real database (routing's open loads per owner).

One count per value of a field among what a query selects, whether it is asked as one
``$in`` and a ``$group`` (MongoDB) or as one equality count per value (the local server,
where the ``$in`` reads every document of the organisation).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from pymongo import ASCENDING, AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection

from complaints_shared import mongo
from complaints_shared.mongo import count_each
from tests.support.infrastructure import Infrastructure

pytestmark = pytest.mark.integration


@pytest.fixture
async def work(infrastructure: Infrastructure) -> AsyncIterator[AsyncCollection]:
    client = AsyncMongoClient(infrastructure.mongodb_uri, tz_aware=True)
    db = client[f"t_counts_{uuid.uuid4().hex[:10]}"]
    try:
        await db.work.create_index(
            [("org", ASCENDING), ("owner_id", ASCENDING), ("status", ASCENDING)]
        )
        yield db.work
    finally:
        await client.drop_database(db.name)
        await client.close()


@pytest.mark.parametrize("shaped_for_local_server", [True, False], ids=["split", "one-read"])
async def test_each_value_is_counted_among_what_the_query_selects(
    work: AsyncCollection, monkeypatch: pytest.MonkeyPatch, shaped_for_local_server: bool
) -> None:
    """Both ways of asking give the same counts on whichever server runs the test."""

    async def shaped(client: AsyncMongoClient) -> bool:
        return shaped_for_local_server

    monkeypatch.setattr(mongo, "reads_shaped_for_local_server", shaped)
    rows = (
        [{"org": "demo", "owner_id": "王芳", "status": "open"}] * 3
        + [{"org": "demo", "owner_id": "王芳", "status": "resolved"}] * 2
        + [{"org": "demo", "owner_id": "li-lei", "status": "open"}]
        + [{"org": "other", "owner_id": "li-lei", "status": "open"}] * 4
    )
    await work.insert_many([dict(row) for row in rows])

    counts = await count_each(
        work,
        field="owner_id",
        values=["王芳", "li-lei", "nobody", "王芳"],
        query={"org": "demo", "status": "open"},
    )

    # Every value asked for once, with 0 where nothing matched; other organisations and
    # other statuses are not counted.
    assert counts == {"王芳": 3, "li-lei": 1, "nobody": 0}
    assert await count_each(work, field="owner_id", values=[], query={"org": "demo"}) == {}
