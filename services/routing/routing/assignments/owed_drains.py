"""Departments this process owes a queue drain, until a drain that began later has run.

A department's queue is drained when capacity frees, and the queue sweep offers every
department its census of queues found. Between two censuses (``QUEUE_CENSUS_INTERVAL_S``)
room could go unused in two cases, and this ledger covers both at the next sweep:

- a drain an error cut short (the database away mid-drain): the finish that started it
  is stored, so its redelivered event does not drain again;
- a complaint just queued: owner choice found the department full, and a drain that ran
  a moment before (here or on another replica, for a slot freed meanwhile) did not see
  the complaint yet.

A department is owed from the moment it is noted (``owe``) until a drain of it that began
after that note ends without error (``settle``). In-process only: what a crash loses,
the census finds.
"""

from __future__ import annotations

import itertools

from pymongo.asynchronous.database import AsyncDatabase

_notes = itertools.count(1)
# (database, org, department) -> the number of the latest note owing it.
_owed: dict[tuple[str, str, str], int] = {}


def owe(*, db: AsyncDatabase, org: str, department_id: str) -> None:
    """Note that the department's queue must be offered again."""
    _owed[(db.name, org, department_id)] = next(_notes)


def mark() -> int:
    """Taken as a drain begins: notes after it are not settled by that drain."""
    return next(_notes)


def settle(*, db: AsyncDatabase, org: str, department_id: str, since: int) -> None:
    """A drain that began at ``since`` (``mark``) ended without error."""
    key = (db.name, org, department_id)
    if _owed.get(key, since) < since:
        del _owed[key]


def departments(*, db: AsyncDatabase) -> list[tuple[str, str]]:
    """(org, department) pairs of ``db`` owed a drain."""
    return sorted((org, department) for name, org, department in _owed if name == db.name)
