"""What the periodic queue sweep costs while a department is full:
``python -m bench.queue_sweep`` (docs/performance.md).

Builds a scratch database with routing's indexes (as the service's start creates them),
one department whose only person holds their whole capacity (``--capacity`` open
assignments, the load hint saying so) and ``--queued`` complaints queued for it, as a
department looks in a major incident. Then times, ``--sweeps`` times each, the two parts
of routing's queue sweep: the census of the departments with a queue
(``store.queued_departments``, every ``QUEUE_CENSUS_INTERVAL_S``) and the drain of the full
department (``queue.drain_queue``, every ``QUEUE_SWEEP_INTERVAL_S``), beside the read of
the queue a drain makes when someone has room (``store.queued_in_department``: what every
drain of a full department paid before it was recognised from the desk). Prints the
server's CPU (from /proc, so the local server only) and the wall time of each.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from pymongo import AsyncMongoClient

from bench.owner_slots import DEPARTMENT, ORG, OWNER, open_assignment, store_owner
from bench.run import cpu_s, database_pid, infra_env
from routing.assignments import owners, queue
from routing.assignments import store as assignment_store
from routing.directory import store as directory_store
from routing.settings import RoutingSettings

DATABASE = "bench_queue_sweep"


def _assignment(number: int, now: datetime, *, slot: int | None) -> dict[str, Any]:
    """An assignment of about the size routing stores: the owner's, open in ``slot``, else
    queued for the department."""
    document = open_assignment(number, slot or 0, now)
    if slot is not None:
        return document
    for field in ("owner_id", "owner_name", "assigned_at", *owners.slot_fields(ORG, OWNER, 0)):
        document.pop(field, None)
    return {**document, "status": "queued", "priority": number % 3, "queued_at": now}


async def _one_size(*, uri: str, capacity: int, queued: int, sweeps: int) -> None:
    client = AsyncMongoClient(uri, tz_aware=True)
    await client.drop_database(DATABASE)
    db = client[DATABASE]
    await assignment_store.ensure_indexes(db=db)
    now = datetime.now(UTC)
    await store_owner(db, capacity=capacity, load_hint=capacity)
    documents = [_assignment(n, now, slot=n) for n in range(capacity)]
    documents += [_assignment(capacity + n, now, slot=None) for n in range(queued)]
    for start in range(0, len(documents), 1000):
        await db[assignment_store.ASSIGNMENTS].insert_many(documents[start : start + 1000])
    settings = RoutingSettings(mongodb_uri=uri)
    directory_store.forget_desks()
    server = database_pid()

    async def census() -> int:
        await assignment_store.queued_departments(db=db)
        return 0

    async def drain() -> int:
        # As a sweep 10 s after the last finds it: the desk and the counts have expired.
        directory_store.forget_desks()
        return await queue.drain_queue(
            db=db, settings=settings, org=ORG, department_id=DEPARTMENT, now=now
        )

    async def queue_read() -> int:
        await assignment_store.queued_in_department(
            db=db, org=ORG, department_id=DEPARTMENT, limit=queue.DRAIN_BATCH
        )
        return 0

    measured = (
        ("census (queued_departments)", census),
        ("drain of the full department", drain),
        ("the queue's read alone", queue_read),
    )
    for label, run in measured:
        cpu, started = cpu_s(server), time.perf_counter()
        assigned = sum([await run() for _ in range(sweeps)])
        cpu, wall = cpu_s(server) - cpu, time.perf_counter() - started
        print(
            f"  {label:<30} {1000 * cpu / sweeps:7.2f} ms server CPU"
            f"  {1000 * wall / sweeps:7.2f} ms wall each; {assigned} assigned"
        )
    assert not await owners.has_room(db=db, org=ORG, department_id=DEPARTMENT)
    await client.drop_database(DATABASE)
    await client.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queued", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--capacity", type=int, default=1000)
    parser.add_argument("--sweeps", type=int, default=30)
    args = parser.parse_args()
    uri = infra_env()["MONGODB_URI"]
    for queued in args.queued:
        print(f"a full department (one person at {args.capacity}) with {queued} queued:")
        await _one_size(uri=uri, capacity=args.capacity, queued=queued, sweeps=args.sweeps)


if __name__ == "__main__":
    asyncio.run(main())
