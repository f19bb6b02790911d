"""What finding an owner's free slot costs when work finishes out of order:
``python -m bench.owner_slots`` (docs/performance.md).

Builds a scratch database with routing's assignment and staff indexes (as the service's start
creates them) and one owner holding ``--load`` open assignments in slots 0..load-1. Then, for
``--cycles`` rounds, finishes a random open assignment of theirs (the slot freed in the same
write and the staff document told, as routing does) and gives them a new one: the slot found
as owner choice finds it (``owners.likely_free_slot`` with the hints of the kept desk), the
assignment inserted and the staff document told. Once with the freed slots tried, as routing
does, and once without (``freed=[]``, the code before they were kept). Prints per new
assignment the server's CPU (from /proc, so the local server only), the wall time, how often
the owner's open assignments were all read and how many documents that read.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from datetime import UTC, datetime
from typing import Any

from pymongo import AsyncMongoClient, monitoring
from pymongo.asynchronous.database import AsyncDatabase

from bench.run import cpu_s, database_pid, infra_env
from routing.assignments import owners
from routing.assignments import store as assignment_store
from routing.directory import store as directory_store

DATABASE = "bench_owner_slots"
ORG, OWNER, DEPARTMENT = "demo", "busy-owner", "LZ:NETWORK"


class FullReads(monitoring.CommandListener):
    """Counts the reads of all the owner's open assignments (``owners.free_slot``)."""

    def __init__(self) -> None:
        self.count = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        command = event.command
        if event.command_name == "find" and "owner_id" in command.get("filter", {}):
            self.count += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def open_assignment(number: int, slot: int, now: datetime) -> dict[str, Any]:
    """An open assignment of about the size routing stores (history, subject, SLA fields)."""
    return {
        "_id": f"c-{number}",
        "org": ORG,
        "branch": "LZ",
        "department": DEPARTMENT,
        "owner_id": OWNER,
        "owner_name": "忙碌的处理人",
        "status": "open",
        "priority": 2,
        "category": "network",
        "subject": "家里宽带断网三天，客服一直说在处理",
        "assigned_at": now,
        "resolve_due_at": now,
        "history": [
            {"at": now, "action": "received", "actor": "routing"},
            {"at": now, "action": "assigned", "actor": "routing", "owner": OWNER},
        ],
        "version": 1,
        **owners.slot_fields(ORG, OWNER, slot),
    }


async def store_owner(db: AsyncDatabase, *, capacity: int, load_hint: int) -> None:
    """The department's one person (``OWNER``), as the directory stores staff."""
    await db[directory_store.STAFF].insert_one(
        {
            "_id": directory_store.staff_key(ORG, OWNER),
            "id": OWNER,
            "org": ORG,
            "branch": "LZ",
            "department": "NETWORK",
            "department_id": DEPARTMENT,
            "name": "忙碌的处理人",
            "capacity": capacity,
            directory_store.LOAD_HINT: load_hint,
        }
    )


async def _one_mode(*, uri: str, load: int, cycles: int, keep_freed: bool, seed: int) -> None:
    full_reads = FullReads()
    client = AsyncMongoClient(uri, tz_aware=True, event_listeners=[full_reads])
    await client.drop_database(DATABASE)
    db = client[DATABASE]
    await assignment_store.ensure_indexes(db=db)
    await directory_store.ensure_indexes(db=db)
    now = datetime.now(UTC)
    await store_owner(db, capacity=1000, load_hint=load)
    await db[assignment_store.ASSIGNMENTS].insert_many(
        [open_assignment(n, n, now) for n in range(load)]
    )
    directory_store.forget_desks()
    rng = random.Random(seed)
    open_ids = [f"c-{n}" for n in range(load)]
    slots = {f"c-{n}": n for n in range(load)}
    documents_read = 0
    server = database_pid()
    cpu, started = cpu_s(server), time.perf_counter()
    for cycle in range(cycles):
        finished = open_ids.pop(rng.randrange(len(open_ids)))
        await db[assignment_store.ASSIGNMENTS].update_one(
            {"_id": finished}, {"$set": {"status": "resolved"}, **owners.FREE_SLOT}
        )
        await directory_store.record_release(db=db, org=ORG, staff_id=OWNER, slot=slots[finished])

        desk = await directory_store.desk(db=db, org=ORG, department_id=DEPARTMENT)
        person = desk[0]
        before = full_reads.count
        slot = await owners.likely_free_slot(
            db=db,
            org=ORG,
            owner_id=OWNER,
            guess=person.open_load,
            freed=directory_store.freed_slots(db=db, person=person) if keep_freed else [],
            limit=person.capacity,
        )
        assert slot is not None
        if full_reads.count > before:
            documents_read += len(open_ids)
        new_id = f"c-{load + cycle}"
        await db[assignment_store.ASSIGNMENTS].insert_one(open_assignment(load + cycle, slot, now))
        await directory_store.record_assignment(db=db, org=ORG, staff_id=OWNER, slot=slot, at=now)
        open_ids.append(new_id)
        slots[new_id] = slot
    cpu, wall = cpu_s(server) - cpu, time.perf_counter() - started
    highest = max(slots[i] for i in open_ids)
    label = "freed slots tried" if keep_freed else "without freed slots"
    print(
        f"  {label:<20} {1000 * cpu / cycles:6.2f} ms server CPU"
        f"  {1000 * wall / cycles:6.2f} ms wall per finish + assignment;"
        f"  full reads {full_reads.count}/{cycles}, {documents_read / cycles:6.1f} documents"
        f" read by them per assignment; highest slot {highest} for {load} open"
    )
    await client.drop_database(DATABASE)
    await client.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--load", type=int, nargs="+", default=[30, 300])
    parser.add_argument("--cycles", type=int, default=400)
    args = parser.parse_args()
    uri = infra_env()["MONGODB_URI"]
    for load in args.load:
        print(f"one owner with {load} open assignments, {args.cycles} finishes in random order:")
        for keep_freed in (False, True):
            await _one_mode(
                uri=uri, load=load, cycles=args.cycles, keep_freed=keep_freed, seed=load
            )


if __name__ == "__main__":
    asyncio.run(main())
