"""Where a complaint's MongoDB operations go: ``python -m bench.ops`` (docs/performance.md).

Starts the three services on a run of their own (as ``bench.run`` does), turns on the
database profiler for their databases, posts ``--complaints`` complaints one every
``1 / --rate`` seconds, waits until every one is assigned and prints the operations per
complaint by service, collection and command, most first.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import random
import time

import httpx
from pymongo import AsyncMongoClient

from bench.run import (
    PORTS,
    add_jwt_secret_argument,
    cpu_s,
    database_pid,
    drop_run_databases,
    prepared_run,
)
from bench.workload import complaint_body
from complaints_shared.outbox import PENDING_SINCE_FIELD

SERVICES = ("intake", "routing", "followup")


def shape(condition: object) -> str:
    """A filter's field names and operators, without values."""
    if isinstance(condition, dict):
        return (
            "{"
            + ", ".join(
                f"{key}: {shape(value)}" if key.startswith("$") or isinstance(value, dict) else key
                for key, value in condition.items()
            )
            + "}"
        )
    if isinstance(condition, list):
        return "[" + ", ".join(shape(item) for item in condition[:2]) + "]"
    return "·"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--complaints", type=int, default=100)
    parser.add_argument("--rate", type=float, default=5.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--shapes", action="store_true", help="one line per filter shape")
    parser.add_argument(
        "--cpu-only",
        action="store_true",
        help="profiler off (it costs the server CPU itself): database CPU per complaint only",
    )
    add_jwt_secret_argument(parser)
    args = parser.parse_args()
    run, services = await prepared_run(args)
    client = AsyncMongoClient(run.infra["MONGODB_URI"], tz_aware=True)
    databases = {name: client[f"bench{run.run_id}_{name}"] for name in SERVICES}
    try:
        for service in services:
            service.start()
        for service in services:
            await service.wait_ready()
        # Settled: startup work (indexes, backfills) is not a complaint's.
        await asyncio.sleep(3)
        for db in databases.values():
            await db.command("profile", 0 if args.cpu_only else 2)
        rng = random.Random(7)
        headers = {"Authorization": f"Bearer {run.token()}"}
        database_cpu = cpu_s(database_pid())
        started = time.monotonic()
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{PORTS['intake']}", timeout=30
        ) as http:
            for sequence in range(args.complaints):
                response = await http.post(
                    "/v1/complaints", json=complaint_body(sequence, rng), headers=headers
                )
                response.raise_for_status()
                await asyncio.sleep(
                    max(0.0, started + (sequence + 1) / args.rate - time.monotonic())
                )
        assignments = databases["routing"]["assignments"]
        complaints = databases["intake"]["complaints"]
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assigned = await complaints.count_documents({"assignment.owner_id": {"$ne": None}})
            if (
                assigned >= args.complaints
                and await assignments.count_documents({}) >= args.complaints
            ):
                break
            await asyncio.sleep(1)
        # The relays' releases of what they published belong to the complaint too.
        pending = {PENDING_SINCE_FIELD: {"$exists": True}}
        while time.monotonic() < deadline:
            if not (
                await complaints.count_documents(pending)
                or await assignments.count_documents(pending)
            ):
                break
            await asyncio.sleep(0.2)
        elapsed = time.monotonic() - started
        database_cpu = cpu_s(database_pid()) - database_cpu
        for db in databases.values():
            await db.command("profile", 0)
        counts: collections.Counter = collections.Counter()
        millis: collections.Counter = collections.Counter()
        for name, db in databases.items():
            async for entry in db["system.profile"].find({}):
                namespace = entry.get("ns", "").split(".", 1)[-1]
                if namespace.startswith("system."):
                    continue
                command = entry.get("op", "?")
                body = entry.get("command") or {}
                if command == "command" and body:
                    command = next(iter(body))
                if args.shapes:
                    command += " " + shape(body.get("filter") or body.get("q") or body.get("query"))
                counts[(name, namespace, command)] += 1
                millis[(name, namespace, command)] += entry.get("millis", 0)
    finally:
        for service in services:
            service.stop()
        await client.close()
    total = sum(counts.values())
    per_complaint = total / args.complaints
    print(
        f"{args.complaints} complaints in {elapsed:.1f} s: {per_complaint:.1f} operations and "
        f"{1000 * database_cpu / args.complaints:.1f} ms database CPU each"
        + ("" if args.cpu_only else " (the profiler's own work included)")
    )
    print("  ops/complaint  server ms/complaint (the profiler's own timing)")
    for key, count in counts.most_common():
        service, namespace, command = key
        spent = millis[key] / args.complaints
        print(
            f"  {count / args.complaints:6.2f}  {spent:6.2f} ms  {service:<9} {namespace:<28} "
            f"{command}"
        )
    await drop_run_databases(run)


if __name__ == "__main__":
    asyncio.run(main())
