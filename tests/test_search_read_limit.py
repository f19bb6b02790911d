"""The read limit of a page checked in the service (``aggregate.page``'s ``keep`` and
``expand``, as intake's ``q`` uses them): every read counts, one whose documents the
equalities checked on what was read refused all of them too."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo.asynchronous.database import AsyncDatabase

from complaints_shared import aggregate
from complaints_shared.pagination import Page
from tests.support.finds import Finds, scratch_database
from tests.support.infrastructure import Infrastructure

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)
# ``severity`` leads no index: it is checked on what (org, branch, created_at) reads.
INDEXES = [["org", "branch", "created_at", "_id"]]


@pytest.fixture
async def finds() -> Finds:
    return Finds()


@pytest.fixture
async def db(infrastructure: Infrastructure, finds: Finds) -> AsyncIterator[AsyncDatabase]:
    async with scratch_database(infrastructure, finds, prefix="t_read_limit") as db:
        await db.things.create_index([("org", 1), ("branch", 1), ("created_at", -1), ("_id", -1)])
        yield db


async def _page(db: AsyncDatabase, cursor: str | None) -> Page[str]:
    return await aggregate.page(
        collection=db.things,
        query={"org": "o", "branch": "LZ", "severity": "critical"},
        sort_field="created_at",
        limit=1,
        cursor=cursor,
        to_item=lambda document: document["_id"],
        descending=True,
        keep=lambda document: "断" in document["subject"],
        window=timedelta(hours=2),
        indexes=INDEXES,
    )


async def test_reads_whose_documents_were_all_refused_count_toward_the_page_limit(
    db: AsyncDatabase, finds: Finds
) -> None:
    """One critical complaint below 300 newer normal ones: each read returns only normal
    ones, which the severity check refuses. Until 5 December such reads were not counted
    and the page read on to the end (about 20 reads) instead of ending short after 10."""
    things: list[dict[str, Any]] = [
        {
            "_id": f"normal-{minute:03d}",
            "org": "o",
            "branch": "LZ",
            "severity": "normal",
            "subject": "断网",
            "created_at": NOW - timedelta(minutes=minute),
        }
        for minute in range(300)
    ]
    things.append(
        {
            "_id": "critical",
            "org": "o",
            "branch": "LZ",
            "severity": "critical",
            "subject": "医院断网",
            "created_at": NOW - timedelta(minutes=400),
        }
    )
    await db.things.insert_many(things)

    listed: list[str] = []
    cursor = None
    pages = 0
    while True:
        finds.filters.clear()
        page = await _page(db, cursor)
        reads = len(finds.filters)
        assert reads <= aggregate.MAX_FILTERED_READS, (pages, reads)
        if pages == 0:
            # Short and empty, with a cursor to go on: 10 reads hold 160 normal ones.
            assert (page.items, page.next_cursor is not None) == ([], True)
        listed += page.items
        pages += 1
        cursor = page.next_cursor
        if cursor is None or pages > 20:
            break
    assert listed == ["critical"]
    assert cursor is None
