"""Sorted reads shaped for the local server (``complaints_shared.mongo.sorted_batches``),
and the windowed scans of background jobs (``windows_of``).

Whatever shape the reads take (windows over the date, ``$in`` split into one equality read
per value, the other equalities checked on what was read), walking page after page returns
exactly the documents of the filter in (date, ``_id``) order, each once: ties in one
millisecond, documents years apart, one dated in the future, both directions, bounds on the
date. And every read a windowed walk sends is what the local server answers from an index:
equalities on an index's leading fields plus one range on the date, nothing else.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo.asynchronous.database import AsyncDatabase

from complaints_shared.mongo import sorted_batches, windows_of
from tests.support.finds import Finds, scratch_database
from tests.support.infrastructure import Infrastructure

pytestmark = pytest.mark.integration

INDEXES = [
    ["org", "created_at", "_id"],
    ["org", "branch", "created_at", "_id"],
    ["org", "branch", "status", "created_at", "_id"],
    ["org", "tags", "created_at", "_id"],
    ["org", "code"],  # a reference number: read by equality, not in windows
]
NOW = datetime.now(UTC).replace(microsecond=0)
TIE = NOW - timedelta(minutes=30)


@pytest.fixture
async def finds() -> Finds:
    return Finds()


@pytest.fixture
async def db(infrastructure: Infrastructure, finds: Finds) -> AsyncIterator[AsyncDatabase]:
    rng = random.Random(7)
    documents = []
    moments = (
        [NOW - timedelta(minutes=rng.randrange(600)) for _ in range(120)]  # the last hours
        + [TIE] * 6  # one millisecond, six documents
        + [NOW - timedelta(days=rng.randrange(2, 60)) for _ in range(60)]
        + [NOW - timedelta(days=3 * 365 + rng.randrange(30)) for _ in range(8)]  # years ago
        + [NOW + timedelta(hours=2)]  # a clock ahead of this one
    )
    for number, moment in enumerate(moments):
        documents.append(
            {
                "_id": str(uuid.uuid4()),
                "org": rng.choice(["o", "o", "o", "x"]),
                "branch": rng.choice("ABC"),
                "status": rng.choice(["new", "open", "done"]),
                "tags": rng.sample(["red", "blue", "green"], rng.randrange(3)),
                "created_at": moment,
                "code": f"c{number % 50}",
                "hidden": "never shown",
            }
        )
    async with scratch_database(infrastructure, finds, prefix="t_sorted") as db:
        await db.things.insert_many(documents)
        for keys in INDEXES:
            await db.things.create_index(
                [(key, -1 if key in ("created_at", "_id") else 1) for key in keys]
            )
        yield db


def _expected(documents: list[dict[str, Any]], wanted: Any, descending: bool) -> list[str]:
    chosen = [d for d in documents if wanted(d)]
    chosen.sort(key=lambda d: (d["created_at"], d["_id"]), reverse=descending)
    return [d["_id"] for d in chosen]


async def _walk(
    db: AsyncDatabase,
    query: dict[str, Any],
    *,
    descending: bool,
    page: int,
    window: Any,
    floor: Any = None,
) -> list[str]:
    """Every document, page by page, each page a new read after the last one's position."""
    seen: list[str] = []
    after = None
    while True:
        taken: list[dict[str, Any]] = []
        batches = sorted_batches(
            db.things,
            query,
            field="created_at",
            descending=descending,
            after=after,
            batch=page + 1,
            window=window,
            indexes=INDEXES,
            projection={"hidden": 0},
            floor=floor,
        )
        async for documents in batches:
            taken += documents
            if len(taken) > page:
                break
        await batches.aclose()
        assert all("hidden" not in d and "created_at" in d for d in taken)
        seen += [d["_id"] for d in taken[:page]]
        if len(taken) <= page:
            return seen
        last = taken[page - 1]
        after = (last["created_at"], last["_id"])


FILTERS = [
    ({"org": "o"}, lambda d: d["org"] == "o"),
    (
        {"org": "o", "branch": {"$in": ["A", "C"]}},
        lambda d: d["org"] == "o" and d["branch"] in "AC",
    ),
    (
        {"org": "o", "branch": "B", "status": {"$in": ["new", "open"]}},
        lambda d: d["org"] == "o" and d["branch"] == "B" and d["status"] != "done",
    ),
    # No index leads with status: checked on what (org, created_at) reads.
    ({"org": "o", "status": "done"}, lambda d: d["org"] == "o" and d["status"] == "done"),
    ({"org": "o", "tags": {"$all": ["red"]}}, lambda d: d["org"] == "o" and "red" in d["tags"]),
    (
        {"org": "o", "tags": {"$in": ["red", "blue"]}},
        lambda d: d["org"] == "o" and bool({"red", "blue"} & set(d["tags"])),
    ),
    ({"org": "o", "branch": {"$in": []}}, lambda d: False),
    ({"org": "o", "code": "c7"}, lambda d: d["org"] == "o" and d["code"] == "c7"),
    (
        {"org": "o", "created_at": {"$gte": TIE, "$lt": NOW}},
        lambda d: d["org"] == "o" and TIE <= d["created_at"] < NOW,
    ),
    (
        {"org": "o", "created_at": {"$lte": TIE, "$ne": None}},
        lambda d: d["org"] == "o" and d["created_at"] <= TIE,
    ),
]


@pytest.mark.parametrize("descending", [True, False])
@pytest.mark.parametrize("window", [timedelta(minutes=20), None])
async def test_every_page_walk_returns_the_filter_in_order_each_document_once(
    db: AsyncDatabase, finds: Finds, descending: bool, window: timedelta | None
) -> None:
    documents = await db.things.find({}).to_list(None)
    oldest = min(d["created_at"] for d in documents)

    async def floor() -> datetime:
        return oldest - timedelta(days=3)  # a bound, not the minimum itself

    finds.filters.clear()
    for query, wanted in FILTERS:
        expected = _expected(documents, wanted, descending)
        for page in (3, 25):
            walked = await _walk(
                db, query, descending=descending, page=page, window=window, floor=floor
            )
            assert walked == expected, (query, page)
    if window is not None:
        # The windowed reads (ascending ones from the floor): equalities, then one range
        # on the date, and no operator else.
        for sent in finds.filters:
            if sent.keys() == {"org", "code"} or (
                sent.keys() == {"org", "code", "created_at"} and len(sent["created_at"]) == 1
            ):
                continue  # the equality read on ("org", "code") and its later pages
            operators = [key for key, value in sent.items() if isinstance(value, dict)]
            assert operators == ["created_at"], sent
            assert set(sent["created_at"]) <= {"$gt", "$lt"}, sent
            leading = [key for key in sent if key != "created_at"]
            assert any(
                sorted(keys[: len(leading)]) == sorted(leading)
                and keys[len(leading)] == "created_at"
                for keys in INDEXES
            ), sent


async def test_a_window_far_from_the_documents_widens_until_it_reaches_them(
    db: AsyncDatabase, finds: Finds
) -> None:
    oldest = await db.things.find({"org": "o"}).sort("created_at", 1).limit(3).to_list(None)
    before = oldest[-1]["created_at"]
    finds.filters.clear()
    walked = await _walk(
        db,
        {"org": "o", "created_at": {"$lt": before}},
        descending=True,
        page=10,
        window=timedelta(seconds=1),
    )
    assert walked == [d["_id"] for d in oldest[:2]][::-1]
    # From one second to three years in reads that widen at least twofold each time.
    assert len(finds.filters) < 40


@pytest.mark.parametrize(
    ("start", "end"),
    [(None, None), (TIE, None), (NOW - timedelta(days=30), TIE), (None, NOW)],
)
async def test_a_windowed_scan_reads_every_document_once_in_short_reads(
    db: AsyncDatabase, finds: Finds, start: datetime | None, end: datetime | None
) -> None:
    documents = await db.things.find({"org": "o"}).to_list(None)
    expected = sorted(
        d["_id"]
        for d in documents
        if (start is None or d["created_at"] >= start) and (end is None or d["created_at"] < end)
    )
    finds.filters.clear()
    reads: list[list[dict[str, Any]]] = []
    async for found in windows_of(
        db.things,
        {"org": "o"},
        field="created_at",
        batch=8,
        width=timedelta(minutes=1),
        start=start,
        end=end,
        projection={"hidden": 0},
    ):
        reads.append(found)
    scanned = sorted(d["_id"] for found in reads for d in found)
    assert scanned == expected  # the tie, years ago, a clock ahead: each once
    assert all("hidden" not in d for found in reads for d in found)
    # Each read is one equality and one range on the date (what an index serves), and the
    # windows follow the documents' density: at most four batches' worth (a window widens at
    # most fourfold) plus the six documents of one millisecond.
    for sent in finds.filters:
        assert sent.keys() == {"org", "created_at"}, sent
        assert set(sent["created_at"]) <= {"$gt", "$lt"}, sent
    assert max(map(len, reads)) <= 4 * 8 + 6, [len(found) for found in reads]


async def test_a_windowed_scan_refuses_a_bound_in_the_query(db: AsyncDatabase) -> None:
    with pytest.raises(ValueError, match="created_at"):
        async for _ in windows_of(
            db.things,
            {"org": "o", "created_at": {"$gt": TIE}},
            field="created_at",
            batch=8,
            width=timedelta(minutes=1),
        ):
            pass


async def test_a_page_after_a_dense_one_reads_a_window_holding_about_a_page(
    db: AsyncDatabase, finds: Finds
) -> None:
    """A first window of fixed width read everything written within it (two hours of
    complaints at 20/s is 144,000): the next page of the same shape starts with a window
    sized by the density the last one found, and returns the same documents."""
    now = datetime.now(UTC).replace(microsecond=0)
    dense = [
        {"_id": f"d{number:05d}", "org": "o", "created_at": now - timedelta(milliseconds=100 * n)}
        for number, n in enumerate(range(3000))  # ten a second over the last five minutes
    ]
    await db.dense.insert_many(dense)
    await db.dense.create_index([("org", 1), ("created_at", -1), ("_id", -1)])

    async def first_page() -> list[str]:
        batches = sorted_batches(
            db.dense,
            {"org": "o"},
            field="created_at",
            descending=True,
            after=None,
            batch=20,
            window=timedelta(hours=2),
            indexes=[["org", "created_at", "_id"]],
        )
        taken: list[str] = []
        async for documents in batches:
            taken += [d["_id"] for d in documents]
            if len(taken) >= 20:
                break
        await batches.aclose()
        return taken[:20]

    def first_window_s() -> float:
        sent = finds.filters[0]["created_at"]
        return (now - sent["$gt"]).total_seconds()

    finds.filters.clear()
    first = await first_page()
    assert first == [d["_id"] for d in dense[:20]]
    assert first_window_s() >= 7000  # unknown density: the caller's two hours
    finds.filters.clear()
    assert await first_page() == first
    # About a page at ten a second (2.5 s, and the time since the documents were written).
    assert first_window_s() < 60


async def test_an_unanchored_ascending_read_leaves_out_documents_without_the_sort_key(
    db: AsyncDatabase,
) -> None:
    """No floor and no bound: one read of what the filter selects, and a ``$ne: null`` on
    the sort key (complaints not yet given a due time) still holds, as a range implies it
    elsewhere (a due-time list before any due time was known answered 500)."""
    now = datetime.now(UTC).replace(microsecond=0)
    await db.due.insert_many(
        [
            {"_id": "a", "org": "o", "due_at": now + timedelta(hours=2)},
            {"_id": "b", "org": "o"},
            {"_id": "c", "org": "o", "due_at": now - timedelta(hours=1)},
            {"_id": "d", "org": "o", "due_at": None},
        ]
    )
    await db.due.create_index([("org", 1), ("due_at", 1), ("_id", 1)])
    for floor in (None, _no_floor):
        batches = sorted_batches(
            db.due,
            {"org": "o", "due_at": {"$ne": None}},
            field="due_at",
            descending=False,
            after=None,
            batch=10,
            window=timedelta(hours=2),
            indexes=[["org", "due_at", "_id"]],
            floor=floor,
        )
        assert [d["_id"] async for documents in batches for d in documents] == ["c", "a"]


async def _no_floor() -> None:
    return None
