"""Per organisation, what no complaint lies outside: the floors ascending lists start from.

On the local server an ascending (oldest-first or due-time) list is read in windows of its
sort date from a date no complaint is below, and a ``q`` without a branch filter walks each
branch's postings in date order (``intake.search``, ``complaints_shared.mongo.
sorted_batches``). ``search_floors`` holds, per organisation, for each ``FLOOR_FIELDS`` date
a value no complaint's is below and ``branches``, every branch it has a complaint in. They
are only ever lowered (``$min``) and added to (``$addToSet``), never raised or removed: a
date that went up or away leaves a floor lower than needed, still a bound.

Every write of a complaint covers itself before it is made (``cover``: ``store.insert``,
``store.change``), so the stored floors bound every complaint stored, and a list reads one
document for them. Until 3 December a list read every complaint changed since the report
rollup's last pass instead (90–540 ms per list at 20/s, docs/performance.md). A crash
between the cover and the complaint's write leaves a floor lower than needed; the rollup
still lowers the floors from every change it reads (``intake.rollup``), for complaints
written by a version before this one.

A write rarely lowers anything: a complaint is registered now, due later, in a branch seen
before. This process remembers the floors it last read or wrote per organisation
(``_known``); since the stored ones only go down and grow, a complaint those cover is
covered, and it writes only when one is not.
"""

from __future__ import annotations

from collections import OrderedDict, defaultdict
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from complaints_shared.mongo import retrying

FLOORS = "search_floors"
FLOOR_FIELDS = ("created_at", "acknowledge_due_at", "resolve_due_at")
# What a complaint's floors are read from.
SOURCE_FIELDS = ("org", "branch", *FLOOR_FIELDS)
# Per (database, org): floors at or above the stored ones and branches among them, as this
# process last read or wrote them. At most this many organisations.
KNOWN_KEPT = 1000
_known: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()


def floors_of(complaints: Iterable[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per organisation, the lowest of each ``FLOOR_FIELDS`` date among ``complaints`` and
    their branches (``branches``, a set)."""
    floors: dict[str, dict[str, Any]] = defaultdict(lambda: {"branches": set()})
    for complaint in complaints:
        lowest = floors[complaint["org"]]
        lowest["branches"].add(complaint["branch"])
        for name in FLOOR_FIELDS:
            if _below(complaint.get(name), lowest.get(name)):
                lowest[name] = complaint[name]
    return floors


async def lower(*, db: AsyncDatabase, complaints: Iterable[Mapping[str, Any]]) -> None:
    """Lower the stored floors and add the branches so that they bound ``complaints``."""
    for org, lowest in floors_of(complaints).items():
        branches = sorted(lowest.pop("branches"))
        update: dict[str, Any] = {"$addToSet": {"branches": {"$each": branches}}}
        if lowest:
            update["$min"] = lowest
        # $min and $addToSet: the same effect however often it is repeated.
        await retrying(db[FLOORS].update_one, {"_id": org}, update, upsert=True)
        _remember(db=db, org=org, lowest={**lowest, "branches": branches})


async def cover(*, db: AsyncDatabase, complaint: Mapping[str, Any]) -> None:
    """Make the stored floors bound ``complaint`` (its values as about to be written:
    ``org``, ``branch`` and any ``FLOOR_FIELDS``), writing only when the floors this
    process knows do not."""
    key = (db.name, complaint["org"])
    known = _known.get(key)
    if known is None:
        stored = await retrying(db[FLOORS].find_one, {"_id": complaint["org"]})
        known = _remember(db=db, org=complaint["org"], lowest=stored or {})
    if not _covers(known, complaint):
        await lower(db=db, complaints=[complaint])


async def stored(*, db: AsyncDatabase, org: str) -> dict[str, Any] | None:
    """The floors and branches of ``org`` as stored (None: none yet)."""
    found = await db[FLOORS].find_one({"_id": org})
    if found is None:
        return None
    return {"branches": sorted(found.get("branches", []))} | {
        name: found.get(name) for name in FLOOR_FIELDS
    }


def values_written(current: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """What a write of ``update`` to the complaint ``current`` leaves in the fields its floors
    are read from that it sets (top-level ``$set`` or ``$min``; a field it unsets or leaves
    needs no floor it does not have already)."""
    written = {name: current[name] for name in ("org", "branch")}
    for operator in ("$set", "$min"):
        for name, value in update.get(operator, {}).items():
            if name in SOURCE_FIELDS:
                written[name] = value
    return written


def _covers(known: Mapping[str, Any], complaint: Mapping[str, Any]) -> bool:
    if complaint["branch"] not in known["branches"]:
        return False
    return not any(_below(complaint.get(name), known.get(name)) for name in FLOOR_FIELDS)


def _below(value: Any, floor: datetime | None) -> bool:
    """Whether the date ``value`` needs a floor lower than ``floor`` (None: none yet)."""
    return isinstance(value, datetime) and (floor is None or value < floor)


def _remember(*, db: AsyncDatabase, org: str, lowest: Mapping[str, Any]) -> dict[str, Any]:
    """Fold ``lowest`` (floors and branches now stored or lower) into what this process
    knows of ``org``'s; the result."""
    key = (db.name, org)
    known = _known.pop(key, None) or {"branches": set()}
    known["branches"].update(lowest.get("branches", ()))
    for name in FLOOR_FIELDS:
        if _below(lowest.get(name), known.get(name)):
            known[name] = lowest[name]
    _known[key] = known
    while len(_known) > KNOWN_KEPT:
        _known.popitem(last=False)
    return known


async def organisations(*, db: AsyncDatabase) -> list[str]:
    """Every organisation with a complaint (one floors document each)."""
    return [found["_id"] async for found in db[FLOORS].find({}, projection={"_id": 1})]
