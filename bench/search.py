"""Search and reports over a large database: ``python -m bench.search`` (docs/performance.md).

Seeds ``--complaints`` complaints (default 100,000) into a fresh intake database with bulk
writes, each built by intake's own ``registration.new_document`` from the benchmark's varied bodies
(``bench/workload.py``), with its search posting (``postings.posting``), registered over
``--days`` days; then starts intake as a real uvicorn process on that database and times, with
``--repeats`` requests each: the first page of ``q=断网&branch=LZ``, the first page of every
documented filter and sort, a second page, and ``GET /v1/reports/summary``; then, for
``--changes-s`` seconds, the summary (the last 30 days, and today) every two seconds while
``--changes-per-s`` complaints of the last week a second are acknowledged through the API, as
a working organisation changes its open complaints. Results are printed and written to
``bench-results/search-<time>.json``. Seeding 100,000 takes minutes
(the index builds): ``--keep`` keeps the database and ``--reuse RUN_ID`` measures it again.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time
import uuid
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import httpx
from pymongo import AsyncMongoClient

from bench.run import (
    PORTS,
    RESULTS,
    ROOT,
    Run,
    Service,
    drop_run_databases,
    infra_env,
    latency_summary,
    machine,
)
from bench.workload import complaint_body
from complaints_shared.auth import Principal
from complaints_shared.events import Topic
from complaints_shared.kafka import ensure_topics
from intake import filter_keys, postings, registration, rollup, store
from intake.models import ComplaintCreate
from intake.settings import IntakeSettings

SEED_BATCH = 1000
# Owners per branch the seeded complaints are assigned to (``owner=lz-yang`` finds a quarter
# of LZ's).
OWNERS = ("yang", "li", "wang", "zhao")
# Where a seeded database records how it was seeded (``--keep``, then ``--reuse``).
SEED_RECORD = "bench_seed"
# The filters and sorts of GET /v1/complaints (docs/intake.md), each timed on its first page.
FILTERS: dict[str, dict[str, Any]] = {
    "q=断网&branch=LZ": {"q": "断网", "branch": "LZ"},
    "q=断网": {"q": "断网"},
    "q=经常断网 (longer)": {"q": "经常断网"},
    "q=断 (one character)": {"q": "断", "branch": "LZ"},
    "newest first (no filter)": {},
    "oldest first": {"sort": "created_at"},
    "branch": {"branch": "LZ"},
    "status": {"status": "received"},
    "branch+status": {"branch": "HOSP", "status": "received"},
    "category": {"category": "billing"},
    "severity": {"severity": "high"},
    "channel": {"channel": "web"},
    "flag": {"flag": "repeat"},
    "repeat": {"repeat": "true"},
    "breached": {"breached": "false"},
    "acknowledged (none is)": {"acknowledged": "true"},
    "not acknowledged": {"acknowledged": "false"},
    "escalated (none is)": {"escalated": "true"},
    "not escalated": {"escalated": "false"},
    "department": {"department": "LZ:NETWORK"},
    "owner": {"owner": "lz-yang"},
    "reference": {},  # filled in with a seeded reference
    "customer_phone": {},  # filled in with a seeded phone
    "created_from (last 7 days)": {},  # filled in relative to the seeding
    "acknowledge_due_at sort": {"sort": "acknowledge_due_at"},
    "resolve_due_at sort": {"sort": "resolve_due_at"},
    "acknowledge_due_before": {},  # filled in relative to the seeding
}


def seeding_settings(run: Run) -> IntakeSettings:
    return IntakeSettings(
        kafka_bootstrap_servers=run.infra["KAFKA_BOOTSTRAP_SERVERS"],
        mongodb_uri=run.infra["MONGODB_URI"],
        topic_prefix=f"bench{run.run_id}.",
        service_name="intake",
        jwt_secret=run.args.jwt_secret,
    )


def seeded_complaint(
    *,
    settings: IntakeSettings,
    principal: Principal,
    sequence: int,
    rng: random.Random,
    now: datetime,
    numbers: Counter,
) -> dict[str, Any]:
    """One complaint exactly as intake stores it (``registration.new_document``), its
    ``complaint.received`` already published, and routed as intake's projection records it."""
    request = ComplaintCreate.model_validate(complaint_body(sequence, rng))
    body = request.model_dump(mode="json", exclude={"severity", "flags"})
    day = now.astimezone(ZoneInfo(settings.reference_time_zone)).strftime("%Y%m%d")
    numbers[(request.branch, day)] += 1
    document = registration.new_document(
        settings=settings,
        principal=principal,
        request=request,
        body=body,
        complaint_id=str(uuid.uuid4()),
        reference=f"{request.branch}-{day}-{numbers[(request.branch, day)]:04d}",
        earlier=[],
        now=now,
    )
    # Published long ago; the due times routing's assignment gave it (1 and 7 days).
    document["outbox"] = []
    del document["outbox_pending_since"]
    document["acknowledge_due_at"] = now + timedelta(days=1)
    document["resolve_due_at"] = now + timedelta(days=7)
    department = "NETWORK" if request.category == "network" else "SERVICE"
    owner = f"{request.branch.lower()}-{rng.choice(OWNERS)}"
    document["assignment"] = {
        "department": f"{request.branch}:{department}",
        "department_name": department.title(),
        "owner_id": owner,
        "owner_name": owner,
        "rule_id": None,
        "rule_version": None,
        "assigned_at": now,
        "duty_officer": False,
        "queued": False,
    }
    document.update(filter_keys.stored_fields(document))
    return document


async def seed(run: Run, *, complaints: int, days: int) -> dict[str, Any]:
    """Seed ``complaints`` complaints, or reuse a database seeded before with ``--keep``."""
    settings = seeding_settings(run)
    principal = Principal(subject="bench", org="demo", branches="*", roles=("admin",))
    client = AsyncMongoClient(run.infra["MONGODB_URI"], tz_aware=True)
    db = client[run.env("intake")["MONGODB_DATABASE"]]
    kept = await db[SEED_RECORD].find_one({"_id": "seed"})
    if kept is not None:
        await client.close()
        if kept["complaints"] != complaints or kept["days"] != days:
            raise SystemExit(
                f"run {run.run_id} holds {kept['complaints']} complaints over "
                f"{kept['days']} days, not {complaints} over {days}"
            )
        print(f"  reusing the {complaints} complaints seeded by run {run.run_id}", flush=True)
        return {**{k: v for k, v in kept.items() if k != "_id"}, "reused": True}
    rng = random.Random(15)
    numbers: Counter = Counter()
    end = datetime.now(UTC)
    step = timedelta(days=days) / complaints
    samples: dict[str, Any] = {}
    started = time.monotonic()
    try:
        # Bulk insert first (each complaint and its search posting, as registration writes
        # them), the service's own index set after (its ensure_indexes): on SecantusDB a
        # batch insert maintaining the multikey grams index is far slower.
        for first in range(0, complaints, SEED_BATCH):
            batch = [
                seeded_complaint(
                    settings=settings,
                    principal=principal,
                    sequence=sequence,
                    rng=rng,
                    now=end - step * (complaints - sequence),
                    numbers=numbers,
                )
                for sequence in range(first, min(first + SEED_BATCH, complaints))
            ]
            await db[store.COMPLAINTS].insert_many(batch, ordered=False)
            await db[postings.POSTINGS].insert_many(
                [postings.posting(document) for document in batch], ordered=False
            )
            samples = {"reference": batch[-1]["reference"], "phone": batch[-1]["customer"]["phone"]}
        inserted_s = time.monotonic() - started
        await store.ensure_indexes(db=db)
        await postings.ensure_indexes(db=db)
        indexed_s = time.monotonic() - started - inserted_s
        seeded = {
            "complaints": complaints,
            "days": days,
            "insert_s": round(inserted_s, 1),
            "index_s": round(indexed_s, 1),
            "end": end,
            **samples,
        }
        # What a later run with ``--reuse`` needs to measure the same data.
        await db[SEED_RECORD].insert_one({"_id": "seed", **seeded})
    finally:
        await client.close()
    print(
        f"  seeded {complaints} complaints: insert {inserted_s:.0f} s, indexes {indexed_s:.0f} s",
        flush=True,
    )
    return seeded


async def rollup_built(run: Run, timeout_s: float = 900) -> float:
    """Seconds until intake's report rollup has its first watermark (``intake.rollup``):
    its first pass reads every complaint once."""
    client = AsyncMongoClient(run.infra["MONGODB_URI"], tz_aware=True)
    db = client[run.env("intake")["MONGODB_DATABASE"]]
    started = time.monotonic()
    try:
        while await rollup.watermark(db=db) is None:
            if time.monotonic() - started > timeout_s:
                raise TimeoutError(f"no report rollup after {timeout_s} s")
            await asyncio.sleep(1)
    finally:
        await client.close()
    built = time.monotonic() - started
    print(f"  report rollup built in {built:.0f} s", flush=True)
    return round(built, 1)


async def timed(
    client: httpx.AsyncClient, path: str, params: dict[str, Any], repeats: int
) -> dict[str, Any]:
    latencies, statuses, items, cursor = [], Counter(), 0, None
    for _ in range(repeats):
        started = time.perf_counter()
        response = await client.get(path, params=params)
        latencies.append(time.perf_counter() - started)
        statuses[response.status_code] += 1
        if response.status_code == 200 and path == "/v1/complaints":
            items = len(response.json()["items"])
            cursor = response.json()["next_cursor"]
    return {
        "params": params,
        **latency_summary(latencies),
        "statuses": dict(statuses),
        "items": items,
        "next_cursor": cursor,
    }


async def measure(run: Run, seeded: dict[str, Any]) -> dict[str, Any]:
    end: datetime = seeded["end"]
    filters = dict(FILTERS)
    filters["reference"] = {"reference": seeded["reference"]}
    filters["customer_phone"] = {"customer_phone": seeded["phone"]}
    filters["created_from (last 7 days)"] = {"created_from": (end - timedelta(days=7)).isoformat()}
    filters["acknowledge_due_before"] = {
        "acknowledge_due_before": (end - timedelta(days=30)).isoformat(),
        "sort": "acknowledge_due_at",
    }
    repeats = run.args.repeats
    results: dict[str, Any] = {}
    headers = {"Authorization": f"Bearer {run.token()}"}
    base = f"http://127.0.0.1:{PORTS['intake']}"
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=120) as client:
        for label, params in filters.items():
            results[label] = await timed(client, "/v1/complaints", params, repeats)
            print(f"  {label}: p95 {results[label]['p95_ms']} ms {results[label]['statuses']}")
        cursor = results["newest first (no filter)"]["next_cursor"]
        results["second page (no filter)"] = await timed(
            client, "/v1/complaints", {"cursor": cursor}, repeats
        )
        cursor = results["q=断网&branch=LZ"]["next_cursor"]
        if cursor:
            results["second page of q=断网&branch=LZ"] = await timed(
                client, "/v1/complaints", {"q": "断网", "branch": "LZ", "cursor": cursor}, repeats
            )
        window = {"from": (end - timedelta(days=seeded["days"])).isoformat(), "to": end.isoformat()}
        for group_by in ("branch", "category"):
            label = f"reports/summary by {group_by} ({seeded['days']} days)"
            results[label] = await timed(
                client,
                "/v1/reports/summary",
                {**window, "group_by": group_by},
                max(1, repeats // 4),
            )
            print(f"  {label}: p95 {results[label]['p95_ms']} ms {results[label]['statuses']}")
    return results


async def beside_changes(run: Run, seeded: dict[str, Any]) -> dict[str, Any]:
    """The summary asked every 2 s while complaints registered in the last week are
    acknowledged, ``--changes-per-s`` a second for ``--changes-s`` seconds: what a report
    costs once the rollup's days keep changing (docs/performance.md, "Reports beside
    writes")."""
    rate, seconds = run.args.changes_per_s, run.args.changes_s
    end: datetime = seeded["end"]
    mongo = AsyncMongoClient(run.infra["MONGODB_URI"], tz_aware=True)
    try:
        db = mongo[run.env("intake")["MONGODB_DATABASE"]]
        recent = {"created_at": {"$gte": end - timedelta(days=7)}, "status": "received"}
        waiting = [c["_id"] async for c in db[store.COMPLAINTS].find(recent, projection={"_id": 1})]
    finally:
        await mongo.close()
    random.Random(time.time_ns()).shuffle(waiting)
    today = end.replace(hour=0, minute=0, second=0, microsecond=0)
    shapes = {"summary (last 30 days)": {}, "summary (today)": {"from": today.isoformat()}}
    latencies: dict[str, list[float]] = {label: [] for label in shapes}
    statuses: dict[str, Counter] = {label: Counter() for label in (*shapes, "acknowledge")}
    headers = {"Authorization": f"Bearer {run.token()}"}
    base = f"http://127.0.0.1:{PORTS['intake']}"
    stop = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=120) as client:

        async def acknowledge() -> None:
            while waiting and time.monotonic() < stop:
                started = time.monotonic()
                response = await client.post(f"/v1/complaints/{waiting.pop()}/acknowledge", json={})
                statuses["acknowledge"][response.status_code] += 1
                await asyncio.sleep(max(0.0, 1 / rate - (time.monotonic() - started)))

        async def ask() -> None:
            while time.monotonic() < stop:
                for label, params in shapes.items():
                    started = time.perf_counter()
                    response = await client.get("/v1/reports/summary", params=params)
                    latencies[label].append(time.perf_counter() - started)
                    statuses[label][response.status_code] += 1
                await asyncio.sleep(2)

        await asyncio.gather(acknowledge(), ask())
    results = {
        label: {**latency_summary(latencies[label]), "asked": len(latencies[label])}
        for label in shapes
    }
    for label, result in results.items():
        print(f"  {label} beside {rate}/s acknowledgements: {result} {dict(statuses[label])}")
    print(f"  acknowledgements: {dict(statuses['acknowledge'])}")
    return {
        "changes_per_s": rate,
        "seconds": seconds,
        "results": results,
        "statuses": {label: dict(counted) for label, counted in statuses.items()},
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--complaints", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=90, help="registration dates spread over")
    parser.add_argument("--repeats", type=int, default=20, help="requests per measured query")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--changes-s",
        type=float,
        default=150,
        help="seconds of reports beside acknowledgements (0: none); long enough for two "
        "passes of the report rollup",
    )
    parser.add_argument("--changes-per-s", type=float, default=2.0)
    parser.add_argument("--keep", action="store_true", help="keep the seeded database")
    parser.add_argument(
        "--reuse",
        metavar="RUN_ID",
        help="measure the database a run with --keep seeded (implies --keep); seeding "
        "100,000 complaints takes minutes on the local server",
    )
    parser.add_argument(
        "--jwt-secret", default=os.environ.get("JWT_SECRET", "bench-secret-0123456789abcdef-0123")
    )
    args = parser.parse_args()
    run = Run(args=args, infra=infra_env())
    if args.reuse:
        run.run_id, args.keep = args.reuse, True
    print(f"bench search run {run.run_id}: {args.complaints} complaints", flush=True)
    settings = run.settings()
    await ensure_topics(settings=settings, topics=[settings.topic(t.value) for t in Topic])
    seeded = await seed(run, complaints=args.complaints, days=args.days)
    intake = Service("intake", PORTS["intake"], run.env("intake"))
    try:
        intake.start()
        await intake.wait_ready(timeout_s=600)
        seeded["rollup_s"] = await rollup_built(run)
        results = await measure(run, seeded)
        if args.changes_s > 0:
            results["beside changes"] = await beside_changes(run, seeded)
    finally:
        intake.stop()
        if not args.keep:
            await drop_run_databases(run)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"search-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    report = {
        "started_at": seeded["end"].isoformat(),
        "machine": machine(),
        "settings": {k: v for k, v in vars(args).items() if k != "jwt_secret"},
        "seeded": {k: v for k, v in seeded.items() if k != "end"},
        "results": results,
    }
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False, default=str))
    print(f"\nwritten: {path.relative_to(ROOT)}")


if __name__ == "__main__":
    asyncio.run(main())
