"""What a pass of the report rollup costs on a full day: ``python -m bench.rollup_pass``
(docs/performance.md).

Builds a scratch database holding ``--complaints`` complaints registered over 20 hours of one
day, each exactly as intake stores it (``bench.search.seeded_complaint``: open, routed, its
acknowledge and resolve due times still to come, so that the day's tallies list every one),
with a third of them acknowledged. Builds the rollup (``rollup.refresh``), then ``--passes``
times acknowledges ``--changes`` more complaints and runs one pass 15 s later, as the job does
every ``REPORT_ROLLUP_INTERVAL_S``. Prints, per pass, the wall time, this process's CPU (what a
pass costs intake, where its event loop is held for part of it) and the local database
server's CPU, the tally documents' sizes, and writes ``bench-results/rollup-pass-<time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import bson
from pymongo import AsyncMongoClient

from bench.run import RESULTS, cpu_s, database_pid, infra_env
from bench.search import seeded_complaint
from complaints_shared.auth import Principal
from intake import rollup, store
from intake.settings import IntakeSettings

DATABASE = "bench_rollup_pass"
SPREAD = timedelta(hours=20)
INTERVAL = timedelta(seconds=15)


def _spread(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "p50": round(statistics.median(ordered), 1),
        "max": round(ordered[-1], 1),
    }


async def _measure(*, uri: str, complaints: int, passes: int, changes: int) -> dict[str, Any]:
    client = AsyncMongoClient(uri, tz_aware=True)
    await client.drop_database(DATABASE)
    db = client[DATABASE]
    settings = IntakeSettings(mongodb_uri=uri, service_name="intake", mongodb_database=DATABASE)
    principal = Principal(subject="bench", org="demo", branches="*", roles=("admin",))
    rng = random.Random(21)
    numbers: Counter = Counter()
    day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    step = SPREAD / complaints
    documents = []
    for sequence in range(complaints):
        created = day + step * sequence
        document = seeded_complaint(
            settings=settings,
            principal=principal,
            sequence=sequence,
            rng=rng,
            now=created,
            numbers=numbers,
        )
        if sequence % 3 == 0:
            document["acknowledged_at"] = created + timedelta(seconds=rng.randrange(60, 3600))
        documents.append(document)
    for first in range(0, complaints, 1000):
        await db[store.COMPLAINTS].insert_many(documents[first : first + 1000], ordered=False)
    await rollup.ensure_indexes(db=db)
    now = day + SPREAD + timedelta(minutes=1)
    started = time.perf_counter()
    built = await rollup.refresh(db=db, now=now)
    build_s = time.perf_counter() - started
    server = database_pid()
    unacknowledged = [d for d in documents if "acknowledged_at" not in d]
    rng.shuffle(unacknowledged)
    walls, own_cpu, server_cpu = [], [], []
    for number in range(passes):
        now += INTERVAL
        for document in unacknowledged[number * changes : (number + 1) * changes]:
            await db[store.COMPLAINTS].update_one(
                {"_id": document["_id"]},
                {
                    "$set": {"acknowledged_at": now - INTERVAL, "updated_at": now - INTERVAL},
                    "$inc": {"version": 1},
                },
            )
        wall, own, served = time.perf_counter(), time.process_time(), cpu_s(server)
        moved = await rollup.refresh(db=db, now=now)
        walls.append(1000 * (time.perf_counter() - wall))
        own_cpu.append(1000 * (time.process_time() - own))
        server_cpu.append(1000 * (cpu_s(server) - served))
        assert moved == changes, f"pass {number} moved {moved} complaints, not {changes}"
    sizes = [len(bson.encode(document)) async for document in db[rollup.TALLIES].find({})]
    await client.drop_database(DATABASE)
    await client.close()
    return {
        "complaints": complaints,
        "built": built,
        "build_s": round(build_s, 1),
        "passes": passes,
        "changes_per_pass": changes,
        "pass_wall_ms": _spread(walls),
        "pass_intake_cpu_ms": _spread(own_cpu),
        "pass_database_cpu_ms": _spread(server_cpu) if server is not None else None,
        "tally_documents": len(sizes),
        "tally_bytes_total": sum(sizes),
        "tally_bytes_largest": max(sizes),
        "rollup_version": rollup.VERSION,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--complaints", type=int, nargs="+", default=[15000])
    parser.add_argument("--passes", type=int, default=12)
    parser.add_argument("--changes", type=int, default=40, help="complaints changed per pass")
    args = parser.parse_args()
    uri = infra_env()["MONGODB_URI"]
    results = []
    for complaints in args.complaints:
        measured = await _measure(
            uri=uri, complaints=complaints, passes=args.passes, changes=args.changes
        )
        results.append(measured)
        database = measured["pass_database_cpu_ms"] or {"p50": "?", "max": "?"}
        print(
            f"{complaints} complaints in a day (built in {measured['build_s']} s); a pass of "
            f"{args.changes} changes: wall p50 {measured['pass_wall_ms']['p50']} ms "
            f"(max {measured['pass_wall_ms']['max']}), intake CPU p50 "
            f"{measured['pass_intake_cpu_ms']['p50']} ms (max "
            f"{measured['pass_intake_cpu_ms']['max']}), database CPU p50 {database['p50']} ms "
            f"(max {database['max']}); {measured['tally_documents']} tally documents, "
            f"{measured['tally_bytes_total'] / 1e6:.2f} MB, largest "
            f"{measured['tally_bytes_largest'] / 1e6:.3f} MB",
            flush=True,
        )
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"rollup-pass-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    print(f"written {path}")


if __name__ == "__main__":
    asyncio.run(main())
