"""Where received → assigned time goes, stage by stage: ``python -m bench.stages``
(docs/performance.md).

Starts the three services on a run of their own (as ``bench.run`` does), posts complaints
open loop at ``--rate`` for ``--seconds`` per round and reads intake's and routing's topics.
Per complaint: the POST (sent → 201), intake's relay (201 → the ``complaint.received``
record's timestamp, negative when the relay publishes before the response is read), and
routing (``complaint.received`` → ``complaint.assigned`` record timestamps). Prints their
percentiles per round and the slowest complaints with the wall time they were posted, so a
periodic stall shows as a cluster.

``--lists-per-s`` also sends that many reads a second while posting, in turn of the ``LISTS``
shapes (``GET /v1/complaints`` newest first, oldest first, due first, a ``q`` without a
branch filter, and the report summary of the last 30 days), and prints each shape's
latency: what a list or a report costs with writes beside it.

``BENCH_<SERVICE>_MONGODB_URI`` (e.g. ``BENCH_ROUTING_MONGODB_URI``) gives a service's
database a server of its own; the database CPU printed is then that of every local server
the run uses (docs/scaling.md).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from datetime import datetime

import httpx
from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from bench.run import (
    PORTS,
    Run,
    Service,
    add_jwt_secret_argument,
    by_window,
    cpu_by_process,
    cpu_ms_per,
    drop_run_databases,
    percentile,
    prepared_run,
    rss_kb,
)
from bench.workload import complaint_body
from complaints_shared.envelope import from_kafka_record
from complaints_shared.events import EventType, Topic

# The reads ``--lists-per-s`` sends, in turn: label → (path, query parameters).
LISTS = {
    "newest first": ("/v1/complaints", {}),
    "oldest first": ("/v1/complaints", {"sort": "created_at"}),
    "acknowledge due first": ("/v1/complaints", {"sort": "acknowledge_due_at"}),
    "q=断网, no branch": ("/v1/complaints", {"q": "断网"}),
    "report, last 30 days": ("/v1/reports/summary", {}),
}


class Stamps:
    """Record timestamps of ``complaint.received`` and ``complaint.assigned`` per complaint."""

    def __init__(self) -> None:
        self.received: dict[str, float] = {}
        self.assigned: dict[str, float] = {}

    async def collect(self, consumer: AIOKafkaConsumer, stop: asyncio.Event) -> None:
        while not stop.is_set():
            for records in (await consumer.getmany(timeout_ms=200)).values():
                for record in records:
                    event = from_kafka_record(record.value, record.headers)
                    if event.type == EventType.COMPLAINT_RECEIVED:
                        self.received[event.subject] = record.timestamp / 1000
                    elif event.type == EventType.COMPLAINT_ASSIGNED:
                        self.assigned[event.subject] = record.timestamp / 1000


async def _outbox_releases() -> dict[str, float]:
    """Per service and remover (``write`` or ``relay``), documents whose published events
    were removed so far (``complaints_outbox_documents_released_total``)."""
    counts: dict[str, float] = {}
    async with httpx.AsyncClient(timeout=10) as http:
        for name, port in PORTS.items():
            text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
            for family in text_string_to_metric_families(text):
                if family.name == "complaints_outbox_documents_released":
                    for sample in family.samples:
                        if sample.name.endswith("_total"):
                            counts[f"{name} {sample.labels['by']}"] = sample.value
    return counts


def _line(name: str, seconds: list[float]) -> str:
    ms = [1000 * value for value in seconds]
    figures = "  ".join(
        f"{label} {percentile(ms, share):7.1f}"
        for label, share in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))
    )
    return f"  {name:<24} {figures}  max {max(ms):7.1f} ms"


async def _round(
    run: Run, stamps: Stamps, *, rate: float, seconds: float, first: int
) -> dict[str, tuple[float, float]]:
    """Post open loop for ``seconds``; per accepted complaint, (sent, answered) wall times."""
    accepted: dict[str, tuple[float, float]] = {}
    rng = random.Random(first)
    headers = {"Authorization": f"Bearer {run.token()}"}
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{PORTS['intake']}", timeout=60
    ) as http:

        async def one(sequence: int) -> None:
            sent = time.time()
            response = await http.post(
                "/v1/complaints", json=complaint_body(sequence, rng), headers=headers
            )
            if response.status_code == 201:
                accepted[response.json()["id"]] = (sent, time.time())

        tasks: list[asyncio.Task] = []
        started = time.monotonic()
        while time.monotonic() - started < seconds:
            tasks.append(asyncio.create_task(one(first + len(tasks))))
            await asyncio.sleep(max(0.0, started + len(tasks) / rate - time.monotonic()))
        await asyncio.gather(*tasks)
    for _ in range(150):  # up to 30 s for the last ones to be assigned
        if accepted.keys() <= stamps.assigned.keys():
            break
        await asyncio.sleep(0.2)
    return accepted


MemorySamples = list[tuple[float, dict[str, int]]]


ListLatencies = dict[str, list[float]]


async def _send_lists(run: Run, rate: float, latencies: ListLatencies, stop: asyncio.Event) -> None:
    """Open loop until ``stop``: ``rate`` reads a second, the ``LISTS`` shapes in turn; each
    shape's latencies (s) of its 200s, and of anything else under ``<label> <status or error>``."""
    headers = {"Authorization": f"Bearer {run.token()}"}
    shapes = list(LISTS.items())
    async with httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{PORTS['intake']}", timeout=60
    ) as http:

        async def one(label: str, path: str, params: dict[str, str]) -> None:
            sent = time.perf_counter()
            try:
                response = await http.get(path, params=params, headers=headers)
                key = label if response.status_code == 200 else f"{label} {response.status_code}"
            except httpx.HTTPError as exc:
                key = f"{label} {type(exc).__name__}"
            latencies.setdefault(key, []).append(time.perf_counter() - sent)

        tasks: list[asyncio.Task] = []
        started = time.monotonic()
        while not stop.is_set():
            label, (path, params) = shapes[len(tasks) % len(shapes)]
            tasks.append(asyncio.create_task(one(label, path, params)))
            await asyncio.sleep(max(0.0, started + len(tasks) / rate - time.monotonic()))
        await asyncio.gather(*tasks)


async def _sample_memory(services: list[Service], samples: MemorySamples, every_s: float) -> None:
    """Every ``every_s``: the resident set (MB) of each service's processes."""
    while True:
        rss = {s.name: rss_kb(s.process.pid) // 1024 for s in services if s.process is not None}
        samples.append((time.time(), rss))
        await asyncio.sleep(every_s)


def _print_stalls(
    *, sent: dict[str, float], answered: dict[str, float], stamps: Stamps, over_ms: float
) -> None:
    """Each second of posting time in which some complaint took over ``over_ms`` from 201 to
    assigned: how many did and the slowest. A stall shows as a few seconds holding most of
    them, repeating if periodic; spread-out queueing as many seconds with one or two."""
    slow: dict[int, list[float]] = {}
    for c, at in sent.items():
        took = 1000 * (stamps.assigned[c] - answered[c])
        if took > over_ms:
            slow.setdefault(int(at), []).append(took)
    total = sum(len(times) for times in slow.values())
    print(f"  over {over_ms:.0f} ms: {total} of {len(sent)} in {len(slow)} seconds of posting")
    for second in sorted(slow, key=lambda s: -len(slow[s]))[:12]:
        print(
            f"    {datetime.fromtimestamp(second):%H:%M:%S}  {len(slow[second]):3d} over,"
            f" slowest {max(slow[second]):6.0f} ms"
        )


def _print_series(
    *,
    sent: dict[str, float],
    answered: dict[str, float],
    stamps: Stamps,
    window_s: float,
    memory: MemorySamples,
) -> None:
    """Per window of posting time: how many, POST p99, 201 → assigned p99 (stalls show
    as windows far above the rest, steady queueing as a slow rise), and each service's
    resident set at the window's end (a leak shows as a steady rise)."""
    start = min(sent.values())
    for number, members in enumerate(by_window(sent, window_s=window_s)):
        if not members:
            continue
        post = [1000 * (answered[c] - sent[c]) for c in members]
        assigned = [1000 * (stamps.assigned[c] - answered[c]) for c in members]
        end = start + (number + 1) * window_s
        rss = next((taken for at, taken in reversed(memory) if at <= end), {})
        print(
            f"    {datetime.fromtimestamp(start + number * window_s):%H:%M:%S}"
            f"  {len(members):4d}  POST p99 {percentile(post, 0.99):6.0f} ms"
            f"  201 → assigned p99 {percentile(assigned, 0.99):6.0f} ms"
            + "  RSS MB "
            + " ".join(f"{name} {mb}" for name, mb in rss.items())
        )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=15.0)
    parser.add_argument("--seconds", type=float, default=30.0, help="per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--settle-s", type=float, default=0.0, help="wait after the services are ready"
    )
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="complaints stored before the services start (as bench.search seeds them), "
        "to see whether a complaint costs more in a fuller database",
    )
    parser.add_argument(
        "--series-s",
        type=float,
        default=0.0,
        help="also print POST and 201 → assigned p99 per window of this many seconds",
    )
    parser.add_argument(
        "--stalls-ms",
        type=float,
        default=0.0,
        help="also print the seconds of posting in which complaints took over this long",
    )
    parser.add_argument(
        "--lists-per-s",
        type=float,
        default=0.0,
        help="also send this many lists and reports a second while posting (LISTS, in turn)",
    )
    add_jwt_secret_argument(parser)
    args = parser.parse_args()
    run, services = await prepared_run(args)
    if args.seed:
        from bench.search import seed

        await seed(run, complaints=args.seed, days=30)
    settings = run.settings()
    consumer = AIOKafkaConsumer(
        bootstrap_servers=run.infra["KAFKA_BOOTSTRAP_SERVERS"], enable_auto_commit=False
    )
    stamps, stop = Stamps(), asyncio.Event()
    collector: asyncio.Task | None = None
    sampler: asyncio.Task | None = None
    memory: MemorySamples = []
    try:
        for service in services:
            service.start()
        for service in services:
            await service.wait_ready()
        await consumer.start()
        await consumer._client.force_metadata_update()
        partitions = [
            TopicPartition(settings.topic(topic.value), partition)
            for topic in (Topic.INTAKE, Topic.ROUTING)
            for partition in consumer.partitions_for_topic(settings.topic(topic.value)) or ()
        ]
        consumer.assign(partitions)
        await consumer.seek_to_end(*partitions)
        collector = asyncio.create_task(stamps.collect(consumer, stop))
        if args.series_s > 0:
            sampler = asyncio.create_task(_sample_memory(services, memory, args.series_s / 4))
        await asyncio.sleep(args.settle_s)
        for number in range(args.rounds):
            cpu_before = cpu_by_process(run)
            releases = await _outbox_releases()
            lists: ListLatencies = {}
            lists_done = asyncio.Event()
            lister = (
                asyncio.create_task(_send_lists(run, args.lists_per_s, lists, lists_done))
                if args.lists_per_s > 0
                else None
            )
            try:
                accepted = await _round(
                    run, stamps, rate=args.rate, seconds=args.seconds, first=number * 1_000_000
                )
            finally:
                lists_done.set()
                if lister is not None:
                    await lister
            cpu_per_complaint = cpu_ms_per(cpu_before, cpu_by_process(run), len(accepted))
            ids = [c for c in accepted if c in stamps.received and c in stamps.assigned]
            print(
                f"round {number + 1}: {len(accepted)} accepted, {len(ids)} assigned;"
                f" database {cpu_per_complaint.get('database', 0.0):.1f} ms CPU per complaint"
            )
            print(
                "  CPU per complaint: "
                + ", ".join(f"{name} {ms:.1f}" for name, ms in cpu_per_complaint.items())
                + " ms"
            )
            released = {
                key: count - releases.get(key, 0.0)
                for key, count in (await _outbox_releases()).items()
            }
            print(
                "  outbox releases per complaint: "
                + ", ".join(
                    f"{key} {count / max(1, len(accepted)):.2f}"
                    for key, count in sorted(released.items())
                    if count
                )
            )
            if not ids:
                continue
            sent = {c: accepted[c][0] for c in ids}
            answered = {c: accepted[c][1] for c in ids}
            print(_line("POST", [answered[c] - sent[c] for c in ids]))
            print(_line("201 → received event", [stamps.received[c] - answered[c] for c in ids]))
            print(
                _line(
                    "received → assigned",
                    [stamps.assigned[c] - stamps.received[c] for c in ids],
                )
            )
            print(_line("201 → assigned", [stamps.assigned[c] - answered[c] for c in ids]))
            for label, seconds in lists.items():
                print(_line(f"GET {label} ({len(seconds)})", seconds))
            if args.series_s > 0:
                _print_series(
                    sent=sent,
                    answered=answered,
                    stamps=stamps,
                    window_s=args.series_s,
                    memory=memory,
                )
            if args.stalls_ms > 0:
                _print_stalls(sent=sent, answered=answered, stamps=stamps, over_ms=args.stalls_ms)
            for c in sorted(ids, key=lambda c: stamps.assigned[c] - answered[c])[-5:]:
                print(
                    f"    posted {datetime.fromtimestamp(sent[c]):%H:%M:%S.%f}"[:-3]
                    + f"  POST {1000 * (answered[c] - sent[c]):5.0f} ms"
                    + f"  routing {1000 * (stamps.assigned[c] - stamps.received[c]):5.0f} ms"
                )
    finally:
        stop.set()
        if sampler is not None:
            sampler.cancel()
        if collector is not None:
            await collector
        await consumer.stop()
        for service in services:
            service.stop()
        await drop_run_databases(run)


if __name__ == "__main__":
    asyncio.run(main())
