"""Repeat detection's keys: how a customer's earlier complaints are found again.

A complaint carries ``repeat_keys``: each of its customer keys with the bucket it is in,
``open`` while it is open, else the UTC week it finished (``w`` and that week's Monday). "Open,
or finished within the window" is then one equality ``$in`` on a multikey index
(``store.find_earlier_complaints``), which trims the window's first week exactly.

Weeks, not days (as before): the lookup names every customer key with every bucket of the
window, and each value is an index probe. Three keys and a 30-day window are 18 values by
week, 93 by day: 0.65 against 2.7 ms of the local server's CPU per lookup
(docs/performance.md). Keys stored by day are rewritten at start (``backfill_batch``).
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

from pymongo import UpdateOne
from pymongo.asynchronous.database import AsyncDatabase

from complaints_shared.mongo import retrying
from intake import identity
from intake.lifecycle import OPEN_STATUSES, Status

# Earlier complaints named in ``repeat_of`` (newest first); ``repeat_count`` counts them all.
MAX_REPEAT_LINKS = 20
# The ``repeat_keys`` bucket of an open complaint (a finished one: the week it finished).
REPEAT_OPEN = "open"
WEEK = "w"
WEEK_DAYS = 7


def finished_bucket(day: date) -> str:
    """The bucket of a complaint finished on the UTC ``day``: its week, by the Monday."""
    return f"{WEEK}{day - timedelta(days=day.weekday()):%Y%m%d}"


def repeat_keys(customer_keys: list[str], *, status: Status, at: datetime) -> list[str]:
    """The keys repeat detection finds a complaint by: ``<customer key>|open`` while it is
    open, ``<customer key>|w<Monday of the UTC week it finished>`` once resolved, closed,
    rejected or withdrawn (a reopen makes it open again)."""
    bucket = REPEAT_OPEN if status in OPEN_STATUSES else finished_bucket(at.astimezone(UTC).date())
    return [f"{key}|{bucket}" for key in customer_keys]


def repeat_buckets(*, since: datetime, now: datetime) -> list[str]:
    """The buckets of complaints open now or finished in a UTC week from ``since``'s to
    ``now``'s (the first week reaches back before ``since``: the caller trims it)."""
    first, last = since.astimezone(UTC).date(), now.astimezone(UTC).date()
    monday = first - timedelta(days=first.weekday())
    weeks = (last - monday).days // WEEK_DAYS + 1
    return [REPEAT_OPEN, *(finished_bucket(monday + timedelta(weeks=n)) for n in range(weeks))]


def current_keys(keys: list[str]) -> list[str] | None:
    """``keys`` as stored before weeks (``<key>|<UTC day>``) in today's form; None when
    nothing in them changes."""
    current = []
    for key in keys:
        customer, _, bucket = key.rpartition("|")
        if len(bucket) == 8 and bucket.isdigit():
            bucket = finished_bucket(datetime.strptime(bucket, "%Y%m%d").date())
        current.append(f"{customer}|{bucket}")
    return None if current == keys else current


# What ``rederive_customer_keys`` reads of each complaint in the start-up scan.
KEY_SOURCES = ("version", "customer", "customer_keys", "repeat_keys", "status", "finished_at")


async def rederive_customer_keys(
    *, db: AsyncDatabase, collection: str, batch: list[dict[str, Any]]
) -> set[str]:
    """Of a batch of complaints (``KEY_SOURCES`` and ``updated_at``, read by the start-up
    pass ``intake.repair.at_start``), store the customer keys of those whose stored keys are
    not what ``identity.customer_keys`` derives today, with their repeat keys; the ids whose
    keys changed, whose filter keys and search posting are then stale. A complaint stored
    before repeat keys existed (23 November) gets its repeat keys too.

    ``+86 10 6552 1234`` was a key of its own until 5 December, so a complaint stored before
    was no repeat of the customer's later ones, and the customer's phone did not find it.
    The batch's ``repeat_keys`` are updated in place (the week rewrite after this reads them).
    Each write is conditional on the version read: a change meanwhile writes keys itself."""
    writes: list[UpdateOne] = []
    changed: set[str] = set()
    for complaint in batch:
        keys = identity.customer_keys(complaint.get("customer") or {})
        rekeyed = keys != complaint.get("customer_keys")
        if not rekeyed and (complaint.get("repeat_keys") or not keys):
            continue
        # A finished one's bucket is the week it finished (an open one has none).
        finished = complaint.get("finished_at") or complaint["updated_at"]
        status = Status(complaint["status"])
        derived = {
            "customer_keys": keys,
            "repeat_keys": repeat_keys(keys, status=status, at=finished),
        }
        condition = {"_id": complaint["_id"], "version": complaint.get("version")}
        writes.append(UpdateOne(condition, {"$set": derived}))
        complaint.update(derived)
        if rekeyed:
            changed.add(complaint["_id"])
    if writes:
        await retrying(db[collection].bulk_write, writes, ordered=False)
    return changed


async def backfill_batch(*, db: AsyncDatabase, collection: str, batch: list[dict[str, Any]]) -> int:
    """Of a batch of complaints (``_id``, ``version`` and ``repeat_keys``, read by the
    start-up pass ``intake.repair.at_start``), rewrite keys stored by day; how many it wrote.
    Each write is conditional on the version read, so a change meanwhile (which writes the
    keys itself) wins. Not a change of the complaint: ``updated_at`` and the version stay."""
    writes = []
    for complaint in batch:
        keys = current_keys(complaint.get("repeat_keys") or [])
        if keys is not None:
            condition = {"_id": complaint["_id"], "version": complaint.get("version")}
            writes.append(UpdateOne(condition, {"$set": {"repeat_keys": keys}}))
    if not writes:
        return 0
    return (await retrying(db[collection].bulk_write, writes, ordered=False)).modified_count
