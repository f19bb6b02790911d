"""What each of a complaint's operations costs the database server, one at a time:
``python -m bench.writes`` (docs/performance.md).

Builds a scratch database with intake's collections and their real indexes
(``intake.main.ensure_indexes`` and the outbox's, as the service's start creates them),
stores ``--stored`` complaints in the service's own shape (``bench.search.seeded_complaint``),
then runs each operation ``--repeats`` times in a row and prints the server's CPU per
operation (from /proc, so the local server only) and the client's wall time, and how many
search grams a posting holds.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from pymongo import AsyncMongoClient

from bench.run import cpu_s, database_pid, infra_env
from bench.search import seeded_complaint
from complaints_shared.auth import Principal
from complaints_shared.outbox import ensure_outbox_index
from intake import filter_keys, grams, postings, store
from intake.main import ensure_indexes as intake_indexes
from intake.settings import IntakeSettings

DATABASE = "bench_writes"


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stored", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=300)
    args = parser.parse_args()
    uri = infra_env()["MONGODB_URI"]
    client = AsyncMongoClient(uri, tz_aware=True)
    await client.drop_database(DATABASE)
    db = client[DATABASE]
    # Every index the service keeps, as its start creates them.
    await intake_indexes(db=db)
    await ensure_outbox_index(db=db, collection=store.COMPLAINTS)
    settings = IntakeSettings(
        kafka_bootstrap_servers="unused:9092",
        mongodb_uri=uri,
        service_name="intake",
        jwt_secret=os.environ.get("JWT_SECRET", "bench-secret-0123456789abcdef-0123"),
    )
    principal = Principal(subject="bench", org="demo", branches="*", roles=("admin",))
    rng, numbers, now = random.Random(1), Counter(), datetime.now(UTC)

    def complaint(sequence: int) -> dict[str, Any]:
        document = seeded_complaint(
            settings=settings,
            principal=principal,
            sequence=sequence,
            rng=rng,
            now=now,
            numbers=numbers,
        )
        document["version"] = 1
        del document["assignment"]  # as stored before routing's decision is projected
        document.update(filter_keys.stored_fields(document))
        return document

    server = database_pid()
    try:
        await db[store.COMPLAINTS].insert_many([complaint(n) for n in range(args.stored)])
        new = [complaint(1_000_000 + n) for n in range(args.repeats)]
        upserted = [complaint(2_000_000 + n) for n in range(args.repeats)]
        complaints, postings_ = db[store.COMPLAINTS], db[postings.POSTINGS]
        assignment = {
            "department": "LZ:NETWORK",
            "department_name": "Network",
            "owner_id": "lz-o1",
            "owner_name": "lz-o1",
            "queued": False,
            "assigned_at": now,
        }

        def projection(n: int) -> Awaitable[Any]:
            # The shape of intake's projection of complaint.assigned through the kernel.
            update = {
                "$set": {
                    "assignment": assignment,
                    "acknowledge_due_at": now,
                    "resolve_due_at": now,
                    "status": "assigned",
                    "updated_at": datetime.now(UTC),
                },
                "$inc": {"version": 1},
                "$push": {"timeline": {"at": now, "action": "assigned"}},
            }
            return complaints.update_one(
                {"_id": new[n]["_id"], "version": 1}, filter_keys.with_keys(new[n], update)
            )

        operations: list[tuple[str, Callable[[int], Awaitable[Any]]]] = [
            ("complaint insert", lambda n: complaints.insert_one(new[n])),
            ("posting insert", lambda n: postings_.insert_one(postings.posting(new[n]))),
            (
                "posting upsert (replace_one)",
                lambda n: postings_.replace_one(
                    {"_id": upserted[n]["_id"]}, postings.posting(upserted[n]), upsert=True
                ),
            ),
            ("assignment projection (update)", projection),
            ("read by _id", lambda n: complaints.find_one({"_id": new[n]["_id"]})),
            (
                "repeat lookup",
                lambda n: complaints.find(
                    {"org": "demo", "repeat_keys": {"$in": [f"p:{n}", f"e:{n}"]}}
                ).to_list(None),
            ),
        ]
        indexes = len(await complaints.index_information())
        per_posting = sum(len(postings.posting(d)[grams.FIELD]) for d in new) / len(new)
        print(
            f"{args.stored} complaints stored, {indexes} complaint indexes,"
            f" {per_posting:.1f} search grams per posting"
        )
        for label, operation in operations:
            cpu, started = cpu_s(server), time.perf_counter()
            for n in range(args.repeats):
                await operation(n)
            print(
                f"  {label:<32} {1000 * (cpu_s(server) - cpu) / args.repeats:6.2f} ms server CPU"
                f"  {1000 * (time.perf_counter() - started) / args.repeats:6.2f} ms wall"
            )
    finally:
        await client.drop_database(DATABASE)
        await client.close()


if __name__ == "__main__":
    asyncio.run(main())
