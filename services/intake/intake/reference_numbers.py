"""Reference numbers: ``LZ-20261123-0007``, counted per organisation, branch and the
branch's local day (one organisation's numbers say nothing of another's registrations).

The day is the branch's own calendar day, so intake keeps what routing announced of its
branches (``branch.updated``): their time zones, and whether they are open (a closed branch
registers no complaints: ``registration``).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from contextlib import suppress
from dataclasses import dataclass
from datetime import datetime

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from complaints_shared import announced_branches
from complaints_shared.announced_branches import branch_key
from complaints_shared.business_calendar import zone_or_utc
from complaints_shared.events import BranchUpdated
from complaints_shared.mongo import retrying
from intake import store
from intake.settings import IntakeSettings

REFERENCE_COUNTERS = "reference_counters"
REFERENCE_ATTEMPTS = 5
# Reference numbers a process reserves per counter write (``next_reference``).
REFERENCE_BLOCK = 20
# Blocks (branch-days) a process remembers; an evicted block's unused numbers are skipped.
BLOCKS_KEPT = 1024
# How long a process keeps what routing announced of a branch (``reference_branch``).
TIME_ZONE_KEPT_S = 30.0
# Per process: (database, counter key) -> [next number, last number of the block].
_blocks: OrderedDict[tuple[str, str], list[int]] = OrderedDict()
_block_locks: dict[tuple[str, str], asyncio.Lock] = {}


@dataclass(frozen=True)
class ReferenceBranch:
    """What registration needs of a branch: the zone its days count in, whether it is open."""

    time_zone: str
    active: bool = True


# Per process: (database, branch key) -> (the branch, kept until on the monotonic clock).
_branches: dict[tuple[str, str], tuple[ReferenceBranch, float]] = {}


async def record_branch(*, db: AsyncDatabase, branch: BranchUpdated) -> None:
    """Keep the newest version of a branch routing announced (``announced_branches``), and
    forget what this process kept of it."""
    slot = (db.name, branch_key(branch.org, branch.branch))
    _branches.pop(slot, None)
    await announced_branches.keep_newest(db=db, branch=branch)
    # Again after the write: a read racing it may have kept the old branch meanwhile.
    _branches.pop(slot, None)


async def reference_branch(
    *, db: AsyncDatabase, settings: IntakeSettings, org: str, branch: str
) -> ReferenceBranch:
    """The branch's own time zone once routing announced it, else ``REFERENCE_TIME_ZONE``,
    and whether it is open (a branch routing never announced is).

    Kept per process for ``TIME_ZONE_KEPT_S`` (one read per branch, not per complaint);
    ``record_branch`` forgets it at once in the process that consumed the change, other
    replicas within that time.
    """
    slot = (db.name, branch_key(org, branch))
    kept = _branches.get(slot)
    if kept is not None and kept[1] > time.monotonic():
        return kept[0]
    announced = await announced_branches.announced(db=db, org=org, branch=branch) or {}
    found = ReferenceBranch(
        time_zone=announced.get("time_zone") or settings.reference_time_zone,
        active=announced.get("active", True),
    )
    _branches[slot] = (found, time.monotonic() + TIME_ZONE_KEPT_S)
    return found


def counter_key(org: str, reference_prefix: str) -> str:
    """The counter of ``org``'s references starting ``reference_prefix`` (``LZ-20261123``).
    Until 4 December it was the prefix alone, shared by organisations with the same branch
    code; a stored complaint numbered by such a counter is skipped (``skip_taken``)."""
    return f"{org}:{reference_prefix}"


async def next_reference(
    *, db: AsyncDatabase, org: str, branch: str, at: datetime, time_zone: str
) -> str:
    """Reference numbers count per organisation, branch and local calendar day:
    ``LZ-20261123-0007``.

    A process reserves ``REFERENCE_BLOCK`` numbers at a time with one counter write and
    hands them out in order, so the counter is written once per block, not per complaint.
    Replicas hold different blocks (numbers are unique, not in registration order across
    replicas), and a block's unused numbers are skipped when its process stops: gaps,
    never duplicates.
    """
    day = at.astimezone(zone_or_utc(time_zone)).strftime("%Y%m%d")
    prefix = f"{branch}-{day}"
    key = counter_key(org, prefix)
    slot = (db.name, key)
    async with _block_locks.setdefault(slot, asyncio.Lock()):
        block = _blocks.get(slot)
        if block is None or block[0] > block[1]:
            last = await _reserve_block(db=db, key=key)
            block = _blocks[slot] = [last - REFERENCE_BLOCK + 1, last]
            _blocks.move_to_end(slot)
            while len(_blocks) > BLOCKS_KEPT:
                forgotten, _ = _blocks.popitem(last=False)
                _block_locks.pop(forgotten, None)
        number = block[0]
        block[0] += 1
    return f"{prefix}-{number:04d}"


async def skip_taken(*, db: AsyncDatabase, org: str, reference: str) -> None:
    """After ``reference`` turned out stored already: move its counter past every number of
    its branch-day stored in ``org``, and forget this process's block of it, so the next
    ``next_reference`` hands out a free number.

    The counter can only be behind when it was lost or restored from a backup older than
    the complaints (or complaints were imported): a rare path, which reads the references
    of one branch-day through ``reference_unique``.
    """
    prefix = reference.rsplit("-", 1)[0]
    key = counter_key(org, prefix)
    # Every "<prefix>-<number>" lies strictly between "<prefix>-" and "<prefix>." ("."
    # follows "-").
    between = {"$gt": f"{prefix}-", "$lt": f"{prefix}."}
    stored = await (
        db[store.COMPLAINTS]
        .find({"org": org, "reference": between}, {"reference": 1})
        .to_list(None)
    )
    numbers = [document["reference"].rsplit("-", 1)[1] for document in stored]
    highest = max((int(number) for number in numbers if number.isdigit()), default=0)
    counters, past = db[REFERENCE_COUNTERS], {"$max": {"seq": highest}}
    try:
        await retrying(counters.update_one, {"_id": key}, past, upsert=True)
    except DuplicateKeyError:  # created meanwhile by the day's first complaint
        await retrying(counters.update_one, {"_id": key}, past)
    slot = (db.name, key)
    async with _block_locks.setdefault(slot, asyncio.Lock()):
        _blocks.pop(slot, None)


async def _reserve_block(*, db: AsyncDatabase, key: str) -> int:
    """The last number of a newly reserved block of the counter ``key``."""
    counters = db[REFERENCE_COUNTERS]
    for _ in range(REFERENCE_ATTEMPTS):
        # Repeated after a dropped connection that had counted already, a block is
        # skipped (a gap, never a duplicate): no worse than the failed request it saves.
        counter = await retrying(
            counters.find_one_and_update,
            {"_id": key},
            {"$inc": {"seq": REFERENCE_BLOCK}},
            return_document=ReturnDocument.AFTER,
        )
        if counter is not None:
            return counter["seq"]
        # The day's first complaint creates the counter. Not as an upsert of the $inc:
        # SecantusDB answers the loser of two racing upserts with no document after
        # counting it, which would leave a gap in the numbers.
        with suppress(DuplicateKeyError):
            await retrying(counters.insert_one, {"_id": key, "seq": 0})
    raise RuntimeError(f"reference counter {key} could not be incremented")
