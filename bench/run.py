"""The project's benchmark: `make bench` (see docs/performance.md for the method).

Runs against the local infrastructure with the three services started as real
uvicorn processes (production settings), each run on its own topic prefix and
databases, and reports:

1. raw floor: one Mongo insert + one Kafka produce per operation, bare asyncio;
2. intake accept rate at increasing concurrency (rate, p50/p95/p99, errors);
3. end-to-end POST accepted → complaint.assigned published, at half the max rate;
4. routing drain rate of a pre-produced backlog, one replica and two;
5. peak RSS of every service and infrastructure process (and growth under a soak).

Results are printed as a table and written as JSON under bench-results/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import random
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from pymongo import AsyncMongoClient

from bench.workload import complaint_body
from complaints_shared.auth import mint_token
from complaints_shared.envelope import CloudEvent, from_kafka_record
from complaints_shared.events import (
    ComplaintReceived,
    CustomerContact,
    EventType,
    Topic,
)
from complaints_shared.kafka import EventProducer, ensure_topics
from complaints_shared.mongo import create_mongo_client
from complaints_shared.settings import ServiceSettings
from intake import filter_keys
from intake.store import COMPLAINT_INDEXES

ROOT = Path(__file__).resolve().parent.parent
# The infrastructure set to measure against: `make bench` uses the default local set; a private
# set (deploy/local/infra.sh with LOCAL_STATE_DIR and ports) keeps a benchmark off shared ones.
STATE = Path(os.environ.get("LOCAL_STATE_DIR") or ROOT / ".local")
RESULTS = ROOT / "bench-results"
VENV_BIN = Path(sys.executable).parent
PORTS = {"intake": 18001, "routing": 18002, "followup": 18003}
# Put on a service's PYTHONPATH by ``--trace-heap``: its sitecustomize snapshots the heap.
HEAP_TRACE_SITE = Path(__file__).resolve().parent / "heap_trace"


def percentile(values: list[float], share: float) -> float | None:
    """Nearest-rank percentile."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(share * len(ordered)))
    return ordered[rank - 1]


def latency_summary(latencies_s: list[float]) -> dict[str, float | None]:
    return {
        f"p{int(share * 100)}_ms": (
            round(value * 1000, 1)
            if (value := percentile(latencies_s, share)) is not None
            else None
        )
        for share in (0.5, 0.95, 0.99)
    }


# ----------------------------------------------------------------- processes --


def _children(pid: int) -> list[int]:
    found = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text().split()
            for child in map(int, text):
                found += [child, *_children(child)]
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return found


def _status_kb(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except FileNotFoundError:
        return 0
    return 0


def rss_kb(pid: int) -> int:
    """Resident set of a process and its children (uvicorn workers)."""
    return sum(_status_kb(p, "VmRSS") for p in [pid, *_children(pid)])


def peak_rss_kb(pid: int) -> int:
    return sum(_status_kb(p, "VmHWM") for p in [pid, *_children(pid)])


def cpu_s(pid: int | None) -> float:
    """CPU seconds (user + system) a process has used so far; 0 when unknown."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_by_process(run: Run) -> dict[str, float]:
    """CPU seconds used so far by each local process of a run: the database server(s), the
    broker, each service (with its workers) and this load generator, which shares the
    machine's cores with them."""
    cpu = {
        "database": sum(cpu_s(pid) for pid in run.database_pids()),
        "broker": cpu_s(infra_pids().get("kafka")),
    }
    for service in run.services:
        if service.process is not None:
            pid = service.process.pid
            cpu[service.name] = sum(cpu_s(p) for p in [pid, *_children(pid)])
    cpu["load generator"] = time.process_time()
    return cpu


def cpu_ms_per(before: dict[str, float], after: dict[str, float], count: int) -> dict[str, float]:
    """Each process's CPU between two ``cpu_by_process`` readings, per complaint (ms)."""
    return {
        name: round(1000 * (after[name] - before[name]) / count, 1)
        for name in after
        if name in before and count
    }


def database_pid() -> int | None:
    """The local MongoDB server's process: from the local state, else the one listening on
    MONGODB_URI's port (a set started elsewhere); None when it is not on this machine."""
    pid = infra_pids().get("mongo")
    if pid is not None:
        return pid
    port = urlsplit(os.environ.get("MONGODB_URI", "")).port or 27017
    return _listening_pid(port)


def _listening_pid(port: int) -> int | None:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for row in rows:
            fields = row.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # LISTEN
                inodes.add(fields[9])
    for fd_dir in Path("/proc").glob("[0-9]*/fd"):
        try:
            for fd in fd_dir.iterdir():
                if os.readlink(fd).removeprefix("socket:[").removesuffix("]") in inodes:
                    return int(fd_dir.parent.name)
        except OSError:
            continue
    return None


@dataclass
class Service:
    name: str
    port: int
    env: dict[str, str]
    process: subprocess.Popen | None = None
    log_path: Path | None = None

    def start(self) -> None:
        self.log_path = STATE / "logs" / f"bench-{self.name}-{self.port}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                str(VENV_BIN / "uvicorn"),
                f"{self.name}.main:create_app",
                "--factory",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--workers",
                self.env.get("UVICORN_WORKERS", "1"),
                "--no-access-log",
                "--log-level",
                "warning",
                # As compose runs them: uvicorn's default (5 s) closes idle keep-alive
                # connections, and a POST sent on one as it closes fails with a read error.
                "--timeout-keep-alive",
                "75",
            ],
            env={**os.environ, **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    async def wait_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        async with httpx.AsyncClient() as client:
            while time.monotonic() < deadline:
                if self.process and self.process.poll() is not None:
                    raise RuntimeError(f"{self.name} exited; see {self.log_path}")
                try:
                    response = await client.get(f"http://127.0.0.1:{self.port}/readyz", timeout=2)
                    if response.status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.2)
        raise TimeoutError(f"{self.name} not ready after {timeout_s}s; see {self.log_path}")

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


def infra_env() -> dict[str, str]:
    """Where Kafka and MongoDB are: the local infrastructure, unless the environment says."""
    values = {}
    local = STATE / "infra.env"
    for line in local.read_text().splitlines() if local.exists() else []:
        if "=" in line:
            key, _, value = line.partition("=")
            values[key] = value
    for key in ("KAFKA_BOOTSTRAP_SERVERS", "MONGODB_URI"):
        values[key] = os.environ.get(key, values.get(key, ""))
    return values


def infra_pids() -> dict[str, int]:
    pids = {}
    for name in ("kafka", "mongo"):
        path = STATE / "pids" / f"{name}.pid"
        if path.exists():
            pids[name] = int(path.read_text().strip())
    return pids


@dataclass
class Run:
    """One benchmark run: its own topic prefix, databases and service processes."""

    args: argparse.Namespace
    infra: dict[str, str]
    run_id: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    services: list[Service] = field(default_factory=list)

    def mongodb_uri(self, service: str) -> str:
        """Where ``service``'s database lives: ``BENCH_<SERVICE>_MONGODB_URI`` (a server of
        its own, docs/scaling.md), else the infrastructure's one server."""
        return os.environ.get(f"BENCH_{service.upper()}_MONGODB_URI") or self.infra["MONGODB_URI"]

    def database_pids(self) -> list[int]:
        """The local database servers the run's services use (their CPU is the database's)."""
        pids = {database_pid()}
        for service in PORTS:
            uri = self.mongodb_uri(service)
            if uri != self.infra["MONGODB_URI"]:
                pids.add(_listening_pid(urlsplit(uri).port or 27017))
        return sorted(pid for pid in pids if pid is not None)

    def env(self, service: str, prefix: str | None = None, database_suffix: str = "") -> dict:
        prefix = prefix if prefix is not None else f"bench{self.run_id}."
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.infra["KAFKA_BOOTSTRAP_SERVERS"],
            "MONGODB_URI": self.mongodb_uri(service),
            "TOPIC_PREFIX": prefix,
            "MONGODB_DATABASE": f"bench{self.run_id}{database_suffix}_{service}",
            "LOG_LEVEL": "WARNING",
            "UVICORN_WORKERS": str(self.args.workers),
            "JWT_SECRET": self.args.jwt_secret,
        }

    def settings(self) -> ServiceSettings:
        return ServiceSettings(
            kafka_bootstrap_servers=self.infra["KAFKA_BOOTSTRAP_SERVERS"],
            mongodb_uri=self.infra["MONGODB_URI"],
            topic_prefix=f"bench{self.run_id}.",
            service_name="bench",
            jwt_secret=self.args.jwt_secret,
        )

    def token(self) -> str:
        settings = self.settings()
        return mint_token(
            secret=settings.jwt_secret,
            subject="bench",
            org="demo",
            branches="*",
            roles=["admin"],
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
        )


async def seed_routing(run: Run, database_suffix: str = "") -> None:
    from routing.demo import seed_demo_org

    client = AsyncMongoClient(run.mongodb_uri("routing"), tz_aware=True)
    try:
        db = client[f"bench{run.run_id}{database_suffix}_routing"]
        await seed_demo_org(db=db)
        # Every person at the most the API allows (1,000 open complaints), so every complaint
        # of a run of a few minutes is assigned. At 30/s the busiest person is full after five
        # to six minutes, and their department's complaints queue from then on.
        await db.staff.update_many({}, {"$set": {"capacity": 1000}})
    finally:
        await client.close()


def add_jwt_secret_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--jwt-secret", default=os.environ.get("JWT_SECRET", "bench-secret-0123456789abcdef-0123")
    )


async def prepared_run(args: argparse.Namespace) -> tuple[Run, list[Service]]:
    """A run of its own: its topics created, routing's directory seeded, and its three
    services (not started yet)."""
    run = Run(args=args, infra=infra_env())
    settings = run.settings()
    await ensure_topics(settings=settings, topics=[settings.topic(t.value) for t in Topic])
    await seed_routing(run)
    run.services = [Service(name, port, run.env(name)) for name, port in PORTS.items()]
    return run, run.services


async def drop_run_databases(run: Run) -> None:
    for uri in sorted({run.mongodb_uri(service) for service in PORTS}):
        client = AsyncMongoClient(uri)
        try:
            for name in await client.list_database_names():
                if name.startswith(f"bench{run.run_id}"):
                    await client.drop_database(name)
        finally:
            await client.close()


# ------------------------------------------------------------------ measures --


async def raw_floor(
    run: Run, *, concurrency: int, duration_s: float, indexed: bool = False
) -> dict[str, Any]:
    """What intake must do per complaint, with nothing else: insert + produce.

    ``indexed``: into a collection with the indexes intake keeps on its complaints
    (search, reports, repeat detection), which every insert must maintain.
    """
    settings = run.settings()
    topic = settings.topic("bench-floor.v1")
    await ensure_topics(settings=settings, topics=[topic])
    mongo = create_mongo_client(settings=settings)
    collection = mongo[f"bench{run.run_id}_floor"]["indexed" if indexed else "complaints"]
    if indexed:
        for name, keys in COMPLAINT_INDEXES.items():
            await collection.create_index(keys, name=name)
    producer = EventProducer(settings=settings)
    rng = random.Random(1)
    latencies: list[float] = []
    deadline = time.monotonic() + duration_s
    sequence = 0

    async def worker() -> None:
        nonlocal sequence
        while time.monotonic() < deadline:
            sequence += 1
            body = complaint_body(sequence, rng)
            complaint_id = str(uuid.uuid4())
            document = {"_id": complaint_id, **body, "status": "received"}
            document.update(filter_keys.stored_fields(document), created_at=datetime.now(UTC))
            started = time.perf_counter()
            await collection.insert_one(document)
            event = CloudEvent.new(
                event_type=EventType.COMPLAINT_RECEIVED,
                source="bench",
                data=_received(complaint_id, body),
            )
            await producer.publish(event, topic=topic)
            latencies.append(time.perf_counter() - started)

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.monotonic() - started
    await producer.stop()
    await mongo.close()
    return {
        "concurrency": concurrency,
        "indexed": indexed,
        "ops": len(latencies),
        "ops_per_s": round(len(latencies) / elapsed, 1),
        **latency_summary(latencies),
    }


def _received(complaint_id: str, body: dict) -> ComplaintReceived:
    return ComplaintReceived(
        complaint_id=complaint_id,
        org="demo",
        branch=body["branch"],
        reference=f"{body['branch']}-BENCH-{complaint_id[:6]}",
        channel=body["channel"],
        category=body["category"],
        severity=body["severity"],
        subject=body["subject"],
        description=body["description"],
        product=body["product"],
        customer=CustomerContact(name=body["customer"]["name"], phone=body["customer"]["phone"]),
        received_at=datetime.now(UTC),
    )


async def post_load(
    *, url: str, token: str, concurrency: int, duration_s: float, seed: int
) -> dict[str, Any]:
    """Closed loop: ``concurrency`` clients POST complaints back to back for ``duration_s``."""
    rng = random.Random(seed)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    deadline = time.monotonic() + duration_s
    sequence = seed * 10_000_000
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:

        async def worker() -> None:
            nonlocal sequence
            while time.monotonic() < deadline:
                sequence += 1
                started = time.perf_counter()
                try:
                    response = await client.post(
                        "/v1/complaints", json=complaint_body(sequence, rng), headers=headers
                    )
                    outcome = str(response.status_code)
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                if outcome == "201":
                    latencies.append(time.perf_counter() - started)
                else:
                    errors[outcome] = errors.get(outcome, 0) + 1

        database_cpu = cpu_s(database_pid())
        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.monotonic() - started
        database_cpu = cpu_s(database_pid()) - database_cpu
    return {
        "concurrency": concurrency,
        "accepted": len(latencies),
        "requests_per_s": round(len(latencies) / elapsed, 1),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        **latency_summary(latencies),
        # The whole pipeline's share (routing and follow-up work on the same server meanwhile).
        "database_cpu_ms_per_request": (
            round(1000 * database_cpu / len(latencies), 1) if latencies else None
        ),
        "database_cpu_share": round(database_cpu / elapsed, 2),
    }


async def intake_ramp(run: Run, url: str) -> tuple[list[dict], dict]:
    """Raise concurrency until the accept rate stops growing (< 5%) or errors appear."""
    levels: list[dict] = []
    best: dict | None = None
    for seed, concurrency in enumerate(run.args.concurrency, start=1):
        result = await post_load(
            url=url,
            token=run.token(),
            concurrency=concurrency,
            duration_s=run.args.duration_s,
            seed=seed,
        )
        levels.append(result)
        print(
            f"  intake c={concurrency}: {result['requests_per_s']} req/s, "
            f"database {result['database_cpu_ms_per_request']} ms CPU/request, "
            f"p99 {result['p99_ms']} ms, errors {result['errors']}",
            flush=True,
        )
        if result["errors"]:
            break
        if best is not None and result["requests_per_s"] < best["requests_per_s"] * 1.05:
            best = max(best, result, key=lambda r: r["requests_per_s"])
            break
        best = result
    return levels, best or levels[0]


async def mongo_operations(run: Run) -> int:
    """Operations the MongoDB server has executed so far (serverStatus opcounters)."""
    client = AsyncMongoClient(run.infra["MONGODB_URI"])
    try:
        counters = (await client.admin.command("serverStatus"))["opcounters"]
        return sum(
            counters.get(kind, 0)
            for kind in ("insert", "query", "update", "delete", "getmore", "command")
        )
    finally:
        await client.close()


async def wait_until_routed(run: Run, *, timeout_s: float = 600) -> float:
    """Wait until routing has caught up with every complaint intake stored; seconds waited."""
    client = AsyncMongoClient(run.infra["MONGODB_URI"])
    started = time.monotonic()
    try:
        complaints = client[f"bench{run.run_id}_intake"]["complaints"]
        assignments = client[f"bench{run.run_id}_routing"]["assignments"]
        while time.monotonic() - started < timeout_s:
            if await assignments.count_documents({}) >= await complaints.count_documents({}):
                break
            await asyncio.sleep(1.0)
    finally:
        await client.close()
    return round(time.monotonic() - started, 1)


# A long run's p99 per window of acceptance time: a stall shows as one window far above the
# rest, a pipeline falling behind as a rise.
SERIES_WINDOW_S = 20.0


def by_window(moments: dict[str, float], *, window_s: float) -> list[list[str]]:
    """The ids of ``moments`` (wall times) per window of ``window_s``, from the earliest on
    (an empty list for a window with none)."""
    start = min(moments.values(), default=0.0)
    windows: list[list[str]] = []
    for key, moment in moments.items():
        number = int((moment - start) // window_s)
        windows.extend([] for _ in range(number + 1 - len(windows)))
        windows[number].append(key)
    return windows


async def _busy_by_window(server: int, *, done: asyncio.Event) -> list[float]:
    """The database's share of a core per ``SERIES_WINDOW_S`` of wall time, from the first
    POST until ``done`` (the last window as long as it lasted, unless under a second): beside
    the p99 per window, whether a slow window had a busier server."""
    shares: list[float] = []
    cpu, at = cpu_s(server), time.monotonic()
    while not done.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), timeout=SERIES_WINDOW_S)
        cpu_now, now = cpu_s(server), time.monotonic()
        if now - at >= 1.0:
            shares.append(round((cpu_now - cpu) / (now - at), 2))
        cpu, at = cpu_now, now
    return shares


def _p99_by_window(
    accepted_at: dict[str, float], assigned_at: dict[str, float]
) -> list[float | None]:
    measured = {cid: at for cid, at in accepted_at.items() if cid in assigned_at}
    p99s = [
        percentile([1000 * max(0.0, assigned_at[c] - measured[c]) for c in members], 0.99)
        for members in by_window(measured, window_s=SERIES_WINDOW_S)
    ]
    return [round(ms, 1) if ms is not None else None for ms in p99s]


async def end_to_end(
    run: Run,
    url: str,
    *,
    rate_per_s: float,
    duration_s: float,
    first_sequence: int,
    catch_up_s: float,
) -> dict:
    """Open loop at ``rate_per_s``: POST accepted → complaint.assigned record timestamp.

    Starts only once routing has caught up, so no earlier backlog is measured. After the
    last POST it waits up to ``catch_up_s`` for the last complaints to be assigned, so a run
    that fell behind is measured to its end (latencies, CPU) instead of cut off.
    """
    backlog_wait_s = await wait_until_routed(run)
    topic = run.settings().topic(Topic.ROUTING.value)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=run.infra["KAFKA_BOOTSTRAP_SERVERS"], enable_auto_commit=False
    )
    await consumer.start()
    partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
    if not partitions:
        await consumer._client.force_metadata_update()
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
    consumer.assign(partitions)
    await consumer.seek_to_end(*partitions)
    accepted_at: dict[str, float] = {}
    assigned_at: dict[str, float] = {}
    # Queued behind owners at their capacity (the bench resolves nothing): routed, no owner.
    queued: set[str] = set()
    posting_done = asyncio.Event()
    all_assigned = asyncio.Event()

    async def collect() -> None:
        while not all_assigned.is_set():
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for record in records:
                    event = from_kafka_record(record.value, record.headers)
                    if event.type == EventType.COMPLAINT_ASSIGNED:
                        assigned_at[event.subject] = record.timestamp / 1000
                    elif event.type == EventType.COMPLAINT_QUEUED:
                        queued.add(event.subject)
            routed = assigned_at.keys() | queued
            if posting_done.is_set() and accepted_at.keys() <= routed:
                all_assigned.set()

    collector = asyncio.create_task(collect())
    operations_before = await mongo_operations(run)
    server = database_pid()  # None when the database is not a local process
    database_cpu = cpu_s(server)
    cpu_before = cpu_by_process(run)
    measured_from = time.monotonic()
    series = duration_s >= 3 * SERIES_WINDOW_S
    busy = (
        asyncio.create_task(_busy_by_window(server, done=posting_done))
        if series and server is not None
        else None
    )
    rng = random.Random(99)
    headers = {"Authorization": f"Bearer {run.token()}"}
    errors: dict[str, int] = {}
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def one(sequence: int) -> None:
            try:
                response = await client.post(
                    "/v1/complaints", json=complaint_body(sequence, rng), headers=headers
                )
                outcome = str(response.status_code)
            except httpx.HTTPError as exc:
                outcome = type(exc).__name__
            if outcome == "201":
                accepted_at[response.json()["id"]] = time.time()
            else:
                errors[outcome] = errors.get(outcome, 0) + 1

        interval = 1 / rate_per_s
        started = time.monotonic()
        tasks = []
        sequence = first_sequence
        while time.monotonic() - started < duration_s:
            sequence += 1
            tasks.append(asyncio.create_task(one(sequence)))
            next_at = started + len(tasks) * interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        await asyncio.gather(*tasks)
    posting_done.set()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_assigned.wait(), timeout=catch_up_s)
    all_assigned.set()
    await collector
    await consumer.stop()
    database_cpu = cpu_s(server) - database_cpu
    cpu_per_complaint = cpu_ms_per(cpu_before, cpu_by_process(run), len(accepted_at))
    measured_s = time.monotonic() - measured_from
    operations = await mongo_operations(run) - operations_before
    latencies = [
        max(0.0, assigned_at[cid] - accepted)
        for cid, accepted in accepted_at.items()
        if cid in assigned_at
    ]
    result = {
        "rate_per_s": round(rate_per_s, 1),
        "waited_for_backlog_s": backlog_wait_s,
        "complaints": len(accepted_at),
        "assigned": len(latencies),
        "queued": len((queued & accepted_at.keys()) - assigned_at.keys()),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        # From the last 201 to the last complaint.assigned: how long the pipeline took to
        # catch up after the load stopped (None when some were still unassigned).
        "catch_up_s": (
            round(max(0.0, max(assigned_at[c] for c in accepted_at) - max(accepted_at.values())), 1)
            if accepted_at and accepted_at.keys() <= assigned_at.keys()
            else None
        ),
        **latency_summary(latencies),
        "mongo_operations_per_complaint": (
            round(operations / len(accepted_at), 1) if accepted_at else None
        ),
        # Intake, routing, follow-up and the projections, from the first POST until the last
        # complaint is assigned: the whole pipeline's database work per complaint.
        "database_cpu_ms_per_complaint": (
            round(1000 * database_cpu / len(accepted_at), 1) if accepted_at else None
        ),
        "database_cpu_share": round(database_cpu / measured_s, 2),
        # Every local process the same way (the services, the broker, the load generator):
        # on a small machine they share its cores with the database.
        "cpu_ms_per_complaint": cpu_per_complaint,
    }
    if series:
        result["p99_ms_by_window"] = _p99_by_window(accepted_at, assigned_at)
    if busy is not None:
        result["database_busy_by_window"] = await busy
    return result


async def routing_drain(run: Run, *, replicas: int, events: int) -> dict:
    """Pre-produce ``events`` complaint.received, then time ``replicas`` routing instances."""
    suffix = f"drain{replicas}"
    prefix = f"bench{run.run_id}{suffix}."
    settings = run.settings().model_copy(update={"topic_prefix": prefix})
    topic = settings.topic(Topic.INTAKE.value)
    await ensure_topics(settings=settings, topics=[settings.topic(t.value) for t in Topic])
    await seed_routing(run, database_suffix=suffix)
    producer = EventProducer(settings=settings)
    rng = random.Random(replicas)
    records = [
        (
            CloudEvent.new(
                event_type=EventType.COMPLAINT_RECEIVED,
                source="bench",
                data=_received(str(uuid.uuid4()), complaint_body(sequence, rng)),
            ),
            topic,
        )
        for sequence in range(events)
    ]
    while records:  # the rest again should the producer be replaced mid-way
        sent = await producer.send_in_order(records)
        await asyncio.gather(*sent)
        records = records[len(sent) :]
    await producer.stop()
    instances = [
        Service("routing", PORTS["routing"] + 10 + index, run.env("routing", prefix, suffix))
        for index in range(replicas)
    ]
    database_cpu = cpu_s(database_pid())
    for instance in instances:
        instance.start()
    peak = 0
    client = AsyncMongoClient(run.infra["MONGODB_URI"], tz_aware=True)
    assignments = client[f"bench{run.run_id}{suffix}_routing"]["assignments"]
    try:
        deadline = time.monotonic() + run.args.drain_timeout_s
        done = 0
        while time.monotonic() < deadline:
            # Counting costs the local server a scan; every 2 s keeps it to a few percent.
            done = await assignments.estimated_document_count()
            peak = max(peak, *(peak_rss_kb(i.process.pid) for i in instances if i.process))
            if done >= events:
                break
            await asyncio.sleep(2.0)
        span = await (
            await assignments.aggregate(
                [
                    {
                        "$group": {
                            "_id": None,
                            "first": {"$min": "$created_at"},
                            "last": {"$max": "$created_at"},
                        }
                    }
                ]
            )
        ).to_list(None)
        database_cpu = cpu_s(database_pid()) - database_cpu
        by_status = {
            row["_id"]: row["count"]
            async for row in await assignments.aggregate(
                [{"$group": {"_id": "$status", "count": {"$sum": 1}}}]
            )
        }
    finally:
        for instance in instances:
            instance.stop()
        await client.close()
    span_s = (span[0]["last"] - span[0]["first"]).total_seconds() if span else 0
    return {
        "replicas": replicas,
        "events": events,
        "assigned": done,
        "drain_s": round(span_s, 2),
        "events_per_s": round(done / span_s, 1) if span_s else None,
        "by_status": by_status,
        "database_cpu_ms_per_event": round(1000 * database_cpu / done, 1) if done else None,
        "peak_rss_mb": round(peak / 1024, 1),
    }


async def soak(
    run: Run,
    url: str,
    services: list[Service],
    *,
    rate: float,
    seconds: float,
    catch_up_s: float,
) -> dict:
    """Half load for ``seconds``; RSS after warm-up versus at the end."""
    start_rss = {s.name: rss_kb(s.process.pid) for s in services if s.process}
    result = await end_to_end(
        run,
        url,
        rate_per_s=rate,
        duration_s=seconds,
        first_sequence=800_000_000,
        catch_up_s=catch_up_s,
    )
    end_rss = {s.name: rss_kb(s.process.pid) for s in services if s.process}
    growth = {
        name: round(100 * (end_rss[name] - start_rss[name]) / start_rss[name], 1)
        for name in start_rss
    }
    return {
        "seconds": seconds,
        "rate_per_s": rate,
        "latency": result,
        "rss_start_mb": {k: round(v / 1024, 1) for k, v in start_rss.items()},
        "rss_end_mb": {k: round(v / 1024, 1) for k, v in end_rss.items()},
        "rss_growth_pct": growth,
    }


# -------------------------------------------------------------------- report --


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    versions = dict(
        line.split("=", 1)
        for line in (ROOT / "deploy" / "versions.env").read_text().splitlines()
        if "=" in line and not line.startswith("#")
    )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "kafka": versions.get("KAFKA_VERSION"),
        "secantusdb": versions.get("SECANTUSDB_VERSION"),
        "kernel": platform.release(),
    }


def per_complaint(result: dict) -> dict:
    """The end-to-end run the per-complaint costs are quoted from: the highest rate the
    pipeline sustained (every complaint assigned, p99 < 250 ms), else the lowest rate run."""
    runs = [result["end_to_end"], *result.get("end_to_end_by_rate", [])]
    sustained = [
        r
        for r in runs
        if r["complaints"] and r["assigned"] == r["complaints"] and (r["p99_ms"] or 0) < 250
    ]
    if sustained:
        return max(sustained, key=lambda r: r["rate_per_s"])
    return min(runs, key=lambda r: r["rate_per_s"])


def print_table(result: dict) -> None:
    floor = result["raw_floor"]["ops_per_s"]
    best = result["intake"]["max_sustained"]
    ratio = best["requests_per_s"] / floor if floor else 0
    drains = {d["replicas"]: d for d in result["routing_drain"]}
    quoted = result["per_complaint"]
    rows = [
        (
            "MongoDB ops per complaint",
            f"{quoted['mongo_operations_per_complaint']}",
            f"POST → assigned, opcounters delta at {quoted['rate_per_s']}/s",
        ),
        (
            "database CPU per complaint",
            f"{quoted['database_cpu_ms_per_complaint']} ms",
            f"whole pipeline at {quoted['rate_per_s']}/s "
            f"(database busy {quoted['database_cpu_share']:.0%})",
        ),
        (
            "raw floor (insert + produce)",
            f"{floor} ops/s",
            f"c={result['raw_floor']['concurrency']}",
        ),
        (
            "raw floor, intake's indexes",
            f"{result['raw_floor_indexed']['ops_per_s']} ops/s",
            f"intake is {best['requests_per_s'] / result['raw_floor_indexed']['ops_per_s']:.0%} "
            "of it",
        ),
        (
            "intake accept (max sustained)",
            f"{best['requests_per_s']} req/s",
            f"{ratio:.0%} of floor; p50/p95/p99 "
            f"{best['p50_ms']}/{best['p95_ms']}/{best['p99_ms']} ms; errors {best['errors']}; "
            f"database {best['database_cpu_ms_per_request']} ms CPU per complaint",
        ),
    ]
    e2e = result["end_to_end"]
    rows.append(
        (
            "received → assigned @ half rate",
            f"p99 {e2e['p99_ms']} ms",
            f"p50 {e2e['p50_ms']} / p95 {e2e['p95_ms']} ms at {e2e['rate_per_s']}/s",
        )
    )
    for extra in result.get("end_to_end_by_rate", []):
        rows.append(
            (
                f"received → assigned @ {extra['rate_per_s']}/s",
                f"p99 {extra['p99_ms']} ms",
                f"p50 {extra['p50_ms']} / p95 {extra['p95_ms']} ms; "
                f"{extra['assigned']}/{extra['complaints']} assigned; "
                f"{extra['mongo_operations_per_complaint']} ops and "
                f"{extra['database_cpu_ms_per_complaint']} ms database CPU per complaint",
            )
        )
    for replicas, drain in sorted(drains.items()):
        rows.append(
            (
                f"routing drain, {replicas} replica(s)",
                f"{drain['events_per_s']} ev/s",
                f"{drain['events']} events in {drain['drain_s']} s",
            )
        )
    if 1 in drains and 2 in drains and drains[1]["events_per_s"]:
        rows.append(
            (
                "two replicas / one",
                f"{drains[2]['events_per_s'] / drains[1]['events_per_s']:.2f}x",
                "",
            )
        )
    for name, mb in result["peak_rss_mb"].items():
        rows.append((f"peak RSS {name}", f"{mb} MB", ""))
    if "soak" in result:
        soaked = result["soak"]
        latency = soaked["latency"]
        if latency.get("catch_up_s") is not None:
            caught_up = f", the last {latency['catch_up_s']} s after the last POST"
        elif latency["assigned"] + latency.get("queued", 0) < latency["complaints"]:
            # Runs written before --catch-up-s waited 30 s.
            caught_up = f", the rest not within {result['settings'].get('catch_up_s', 30)} s"
        else:
            caught_up = ""
        rows.append(
            (
                f"soak {soaked['seconds']:.0f} s @ {soaked['rate_per_s']}/s",
                f"p99 {latency['p99_ms']} ms",
                f"{latency['assigned']}/{latency['complaints']} assigned{caught_up}"
                + (
                    f", {latency['queued']} queued behind owners at capacity"
                    if latency.get("queued")
                    else ""
                )
                + f"; RSS growth % {json.dumps(soaked['rss_growth_pct'])}",
            )
        )
        rows.append(
            (
                "soak CPU per complaint",
                "",
                ", ".join(
                    f"{name} {ms} ms"
                    for name, ms in soaked["latency"].get("cpu_ms_per_complaint", {}).items()
                ),
            )
        )
        if "p99_ms_by_window" in soaked["latency"]:
            rows.append(
                (
                    f"soak p99 per {SERIES_WINDOW_S:.0f} s",
                    "",
                    " ".join(
                        f"{ms:.0f}" if ms is not None else "-"
                        for ms in soaked["latency"]["p99_ms_by_window"]
                    ),
                )
            )
        if "database_busy_by_window" in soaked["latency"]:
            rows.append(
                (
                    f"soak database busy per {SERIES_WINDOW_S:.0f} s",
                    "",
                    " ".join(
                        f"{100 * share:.0f}%"
                        for share in soaked["latency"]["database_busy_by_window"]
                    ),
                )
            )
    width = max(len(row[0]) for row in rows)
    print()
    for label, value, note in rows:
        print(f"{label:<{width}}  {value:>14}  {note}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=float, default=10.0, help="per load level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[2, 4, 8, 16, 32, 64])
    parser.add_argument("--backlog", type=int, default=10_000, help="events for the drain test")
    parser.add_argument("--drain-timeout-s", type=float, default=600.0)
    parser.add_argument(
        "--soak-s", type=float, default=180.0, help="half-load soak for RSS growth (0: none)"
    )
    parser.add_argument(
        "--soak-rate", type=float, default=0.0, help="soak rate per s (default: half the best)"
    )
    parser.add_argument(
        "--e2e-rates",
        type=float,
        nargs="*",
        default=[5.0, 10.0, 15.0],
        help="further end-to-end rates per s, to show where the latency target holds",
    )
    parser.add_argument(
        "--catch-up-s",
        type=float,
        default=300.0,
        help="after an end-to-end run's last POST, wait this long for the rest to be assigned",
    )
    parser.add_argument("--workers", type=int, default=int(os.environ.get("UVICORN_WORKERS", "1")))
    parser.add_argument(
        "--trace-heap",
        choices=sorted(PORTS),
        help="snapshot this service's Python heap (slows it; see bench/heap.py)",
    )
    add_jwt_secret_argument(parser)
    args = parser.parse_args()
    run, services = await prepared_run(args)
    if args.trace_heap:
        traced = next(service for service in services if service.name == args.trace_heap)
        heap_dir = STATE / "heap" / f"{run.run_id}-{traced.name}"
        site = HEAP_TRACE_SITE
        traced.env["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(site), os.environ.get("PYTHONPATH")])
        )
        traced.env["BENCH_TRACE_HEAP_DIR"] = str(heap_dir)
        print(f"{traced.name}'s heap snapshots: {heap_dir} (python -m bench.heap {heap_dir})")
    print(
        f"bench run {run.run_id}: services with {args.workers} uvicorn worker(s) each", flush=True
    )
    if any(run.mongodb_uri(service) != run.infra["MONGODB_URI"] for service in PORTS):
        # The database figures here (CPU, busy share, operations) read one server only.
        print("BENCH_<SERVICE>_MONGODB_URI is set: database figures count MONGODB_URI's server")
    result: dict[str, Any] = {
        "started_at": datetime.now(UTC).isoformat(),
        "machine": machine(),
        "settings": {k: v for k, v in vars(args).items() if k != "jwt_secret"},
    }
    try:
        for service in services:
            service.start()
        for service in services:
            await service.wait_ready()
        url = f"http://127.0.0.1:{PORTS['intake']}"
        levels, best = await intake_ramp(run, url)
        result["intake"] = {"levels": levels, "max_sustained": best}
        print("  raw floor ...", flush=True)
        result["raw_floor"] = await raw_floor(
            run, concurrency=best["concurrency"], duration_s=args.duration_s
        )
        result["raw_floor_indexed"] = await raw_floor(
            run, concurrency=best["concurrency"], duration_s=args.duration_s, indexed=True
        )
        half = best["requests_per_s"] / 2
        print(f"  end-to-end at {half:.1f}/s ...", flush=True)
        result["end_to_end"] = await end_to_end(
            run,
            url,
            rate_per_s=half,
            duration_s=args.duration_s,
            first_sequence=900_000_000,
            catch_up_s=args.catch_up_s,
        )
        sweep = []
        for index, rate in enumerate(args.e2e_rates, start=1):
            print(f"  end-to-end at {rate:.1f}/s ...", flush=True)
            sweep.append(
                await end_to_end(
                    run,
                    url,
                    rate_per_s=rate,
                    duration_s=args.duration_s,
                    first_sequence=900_000_000 + index * 1_000_000,
                    catch_up_s=args.catch_up_s,
                )
            )
        result["end_to_end_by_rate"] = sweep
        if args.soak_s:
            rate = args.soak_rate or half
            print(f"  soak {args.soak_s}s at {rate:.1f}/s ...", flush=True)
            result["soak"] = await soak(
                run, url, services, rate=rate, seconds=args.soak_s, catch_up_s=args.catch_up_s
            )
        result["peak_rss_mb"] = {
            s.name: round(peak_rss_kb(s.process.pid) / 1024, 1) for s in services if s.process
        }
    finally:
        for service in services:
            service.stop()
    result["peak_rss_mb"].update(
        {name: round(peak_rss_kb(pid) / 1024, 1) for name, pid in infra_pids().items()}
    )
    drains = []
    for replicas in (1, 2):
        print(f"  routing drain of {args.backlog} events, {replicas} replica(s) ...", flush=True)
        drains.append(await routing_drain(run, replicas=replicas, events=args.backlog))
    result["routing_drain"] = drains
    result["per_complaint"] = per_complaint(result)
    result["ratios"] = {
        "intake_over_floor": round(best["requests_per_s"] / result["raw_floor"]["ops_per_s"], 3),
        "intake_over_indexed_floor": round(
            best["requests_per_s"] / result["raw_floor_indexed"]["ops_per_s"], 3
        ),
        "two_replicas_over_one": (
            round(drains[1]["events_per_s"] / drains[0]["events_per_s"], 3)
            if drains[0]["events_per_s"] and drains[1]["events_per_s"]
            else None
        ),
    }
    await drop_run_databases(run)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"bench-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    print_table(result)
    print(f"\nwritten: {path.relative_to(ROOT)}")


if __name__ == "__main__":
    asyncio.run(main())
