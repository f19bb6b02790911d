"""Webhook delivery benchmark: `make bench-webhooks` (figures in docs/performance.md).

Starts the webhooks service as a real uvicorn process (its own topic prefix and
database) and a local HTTP receiver answering 204, subscribes 1 and then 50
subscriptions to it, produces ``complaint.received`` events straight to Kafka and
measures, per scenario:

- burst: N events produced at once → deliveries per second until the last 2xx;
- steady: events at a fixed rate → latency from each event's Kafka record timestamp
  to the receiver's 2xx answer (p50/p95/p99), one figure per delivery;
- backlog (``--backlog N``): a subscription re-activated with N held deliveries drains
  (its receiver answers after ``--backlog-answer-ms``, so it stays at its limit of
  attempts in flight) while another subscription gets events at ``--backlog-rate``:
  that one's latency, and how fast the backlog drains beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import socket
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import uvicorn
from aiokafka import AIOKafkaProducer
from fastapi import FastAPI, Request, Response
from pymongo import AsyncMongoClient

from bench.run import RESULTS, ROOT, Run, Service, _received, infra_env, latency_summary, machine
from bench.workload import complaint_body
from complaints_shared.envelope import CloudEvent, to_kafka_record
from complaints_shared.events import EventType, Topic
from complaints_shared.kafka import ensure_topics
from webhooks import store

PORT = 18004
RNG = random.Random(14)
RECEIVED = "org.complaintdesk.complaint.received.v1"
CLOSED = "org.complaintdesk.complaint.closed.v1"


class Receiver:
    """Answers 204 at once and notes when each delivery arrived; under ``/slow/`` answers
    after ``slow_answer_s`` and only counts them."""

    def __init__(self, *, slow_answer_s: float = 0.0) -> None:
        self.arrivals: dict[tuple[str, str], float] = {}  # (webhook-id, event id) -> time
        self.expected = 0
        self.complete = asyncio.Event()
        self.slow_answer_s = slow_answer_s
        self.slow_answered = 0
        self.app = FastAPI()
        self.app.post("/hooks/{n}")(self._hook)
        self.app.post("/slow/{n}")(self._slow_hook)

    async def _slow_hook(self, request: Request, n: int) -> Response:
        await request.body()
        await asyncio.sleep(self.slow_answer_s)
        self.slow_answered += 1
        return Response(status_code=204)

    async def _hook(self, request: Request, n: int) -> Response:
        body = await request.body()
        arrived = time.time()
        event_id = orjson.loads(body)["id"]
        self.arrivals.setdefault((request.headers["webhook-id"], event_id), arrived)
        if len(self.arrivals) >= self.expected:
            self.complete.set()
        return Response(status_code=204)


async def serve(receiver: Receiver) -> tuple[uvicorn.Server, asyncio.Task, int]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(
        uvicorn.Config(receiver.app, log_level="warning", access_log=False, lifespan="off")
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    await asyncio.sleep(0.5)  # uvicorn binds the given socket at once; let it start serving
    return server, task, port


async def produce(
    producer: AIOKafkaProducer, topic: str, *, count: int, rate_per_s: float | None
) -> dict[str, float]:
    """Produce ``count`` events; their Kafka record timestamps (s) by event id."""
    stamps: dict[str, float] = {}
    pending = []
    started = time.monotonic()
    for index in range(count):
        complaint_id = str(uuid.uuid4())
        event = CloudEvent.new(
            event_type=EventType.COMPLAINT_RECEIVED,
            source="bench",
            data=_received(complaint_id, complaint_body(index, RNG)),
        )
        key, value, headers = to_kafka_record(event)
        future = await producer.send(topic, value=value, key=key, headers=headers)
        pending.append((event.id, future))
        if rate_per_s:
            await asyncio.sleep(max(0.0, started + (index + 1) / rate_per_s - time.monotonic()))
    for event_id, future in pending:
        metadata = await future
        stamps[event_id] = metadata.timestamp / 1000
    return stamps


async def scenario(
    run: Run,
    receiver: Receiver,
    receiver_port: int,
    producer: AIOKafkaProducer,
    *,
    subscriptions: int,
    burst: int,
    steady_rate: float,
    steady_s: float,
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {run.token()}"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{PORT}") as client:
        ids = []
        for number in range(subscriptions):
            response = await client.post(
                "/v1/webhooks/subscriptions",
                json={
                    "target_url": f"http://127.0.0.1:{receiver_port}/hooks/{number}",
                    "event_types": ["org.complaintdesk.complaint.received.v1"],
                },
                headers=headers,
            )
            response.raise_for_status()
            ids.append(response.json()["id"])
        topic = run.settings().topic(Topic.INTAKE.value)
        result: dict[str, Any] = {"subscriptions": subscriptions}
        for phase, count, rate in (
            ("burst", burst, None),
            ("steady", int(steady_rate * steady_s), steady_rate),
        ):
            expected = count * subscriptions
            receiver.arrivals.clear()
            receiver.expected = expected
            receiver.complete.clear()
            began = time.time()
            stamps = await produce(producer, topic, count=count, rate_per_s=rate)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(receiver.complete.wait(), timeout=600)
            arrivals = list(receiver.arrivals.items())
            latencies = [at - stamps[event_id] for (_, event_id), at in arrivals]
            last = max((at for _, at in arrivals), default=began)
            result[phase] = {
                "events": count,
                "deliveries": len(arrivals),
                "expected": expected,
                "rate_per_s": rate,
                "deliveries_per_s": round(len(arrivals) / (last - began), 1) if arrivals else 0,
                "latency_s": latency_summary(latencies),
            }
            print(f"    {subscriptions} subscription(s), {phase}: {result[phase]}", flush=True)
        for subscription_id in ids:
            await client.delete(f"/v1/webhooks/subscriptions/{subscription_id}", headers=headers)
    return result


async def hold_deliveries(run: Run, *, subscription_id: str, count: int) -> None:
    """``count`` deliveries of a paused subscription, as the dispatcher holds them (no timer),
    written straight to the service's database: a day's backlog without a day's events."""
    client = AsyncMongoClient(run.infra["MONGODB_URI"], tz_aware=True)
    try:
        deliveries = client[f"bench{run.run_id}_webhooks"][store.DELIVERIES]
        now = datetime.now(UTC)
        for first in range(0, count, 1000):
            batch = []
            for _ in range(first, min(count, first + 1000)):
                event_id = str(uuid.uuid4())
                delivery = store.new_delivery(
                    delivery_id=store.delivery_id(
                        subscription_id=subscription_id, event_id=event_id
                    ),
                    subscription={"_id": subscription_id},
                    org="demo",
                    branch="LZ",
                    event_id=event_id,
                    event_type=CLOSED,
                    event_time=now - timedelta(days=1),
                    subject=event_id,
                    complaint_id=event_id,
                    body=json.dumps({"id": event_id, "type": CLOSED}),
                    order_key=f"{first:017d}",
                    now=now,
                )
                del delivery["next_attempt_at"]
                batch.append(delivery)
            await deliveries.insert_many(batch)
    finally:
        await client.close()


async def backlog_scenario(
    run: Run,
    receiver: Receiver,
    receiver_port: int,
    producer: AIOKafkaProducer,
    *,
    backlog: int,
    rate: float,
    seconds: float,
) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {run.token()}"}
    base = f"http://127.0.0.1:{receiver_port}"
    # Re-activating makes the whole backlog due in one write: seconds on the local server.
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{PORT}", timeout=120) as client:

        async def subscription(url: str, event_type: str) -> str:
            response = await client.post(
                "/v1/webhooks/subscriptions",
                json={"target_url": url, "event_types": [event_type]},
                headers=headers,
            )
            response.raise_for_status()
            return response.json()["id"]

        async def set_status(subscription_id: str, status: str) -> None:
            response = await client.patch(
                f"/v1/webhooks/subscriptions/{subscription_id}",
                json={"status": status},
                headers=headers,
            )
            response.raise_for_status()

        backlogged = await subscription(f"{base}/slow/0", CLOSED)
        await set_status(backlogged, "paused")
        await hold_deliveries(run, subscription_id=backlogged, count=backlog)
        other = await subscription(f"{base}/hooks/1", RECEIVED)
        count = int(rate * seconds)
        receiver.arrivals.clear()
        receiver.expected = count
        receiver.complete.clear()
        receiver.slow_answered = 0
        reactivating = time.time()
        await set_status(backlogged, "active")
        began = time.time()
        topic = run.settings().topic(Topic.INTAKE.value)
        stamps = await produce(producer, topic, count=count, rate_per_s=rate)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(receiver.complete.wait(), timeout=120)
        ended = time.time()
        drained = receiver.slow_answered
        arrivals = list(receiver.arrivals.items())
        result = {
            "backlog": backlog,
            "backlog_answer_ms": round(receiver.slow_answer_s * 1000),
            "reactivation_s": round(began - reactivating, 2),
            "events": count,
            "deliveries": len(arrivals),
            "rate_per_s": rate,
            "latency_s": latency_summary([at - stamps[event_id] for (_, event_id), at in arrivals]),
            "backlog_drained": drained,
            "backlog_drained_per_s": round(drained / (ended - began), 1),
        }
        print(f"    backlog of {backlog} beside 1 subscription: {result}", flush=True)
        for subscription_id in (backlogged, other):
            await client.delete(f"/v1/webhooks/subscriptions/{subscription_id}", headers=headers)
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burst", type=int, default=1000, help="events of the burst phase")
    parser.add_argument("--burst-50", type=int, default=40, help="burst events with 50 subs")
    parser.add_argument("--steady-rate", type=float, default=20.0, help="events/s, 1 sub")
    parser.add_argument("--steady-rate-50", type=float, default=2.0, help="events/s, 50 subs")
    parser.add_argument("--steady-s", type=float, default=20.0)
    parser.add_argument("--jwt-secret", default="bench-secret-0123456789abcdef-0123")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--backlog", type=int, default=0, help="held deliveries re-activated (0: no such phase)"
    )
    parser.add_argument("--backlog-answer-ms", type=float, default=200.0)
    parser.add_argument("--backlog-rate", type=float, default=2.0, help="events/s beside it")
    parser.add_argument(
        "--backlog-only", action="store_true", help="only the backlog phase (needs --backlog)"
    )
    args = parser.parse_args()
    run = Run(args=args, infra=infra_env())
    settings = run.settings()
    await ensure_topics(settings=settings, topics=[settings.topic(t.value) for t in Topic])
    receiver = Receiver(slow_answer_s=args.backlog_answer_ms / 1000)
    server, server_task, receiver_port = await serve(receiver)
    env = {
        **run.env("webhooks"),
        "DEPLOYMENT_ENVIRONMENT": "development",
        "ALLOW_LOOPBACK_TARGETS": "true",
    }
    service = Service("webhooks", PORT, env)
    producer = AIOKafkaProducer(
        bootstrap_servers=run.infra["KAFKA_BOOTSTRAP_SERVERS"], acks="all", linger_ms=2
    )
    result: dict[str, Any] = {"started_at": datetime.now(UTC).isoformat(), "machine": machine()}
    try:
        await producer.start()
        service.start()
        await service.wait_ready()
        print(f"webhooks bench run {run.run_id}", flush=True)
        result["scenarios"] = []
        if not args.backlog_only:
            for subscriptions, burst, rate in (
                (1, args.burst, args.steady_rate),
                (50, args.burst_50, args.steady_rate_50),
            ):
                result["scenarios"].append(
                    await scenario(
                        run,
                        receiver,
                        receiver_port,
                        producer,
                        subscriptions=subscriptions,
                        burst=burst,
                        steady_rate=rate,
                        steady_s=args.steady_s,
                    )
                )
        if args.backlog:
            result["backlog"] = await backlog_scenario(
                run,
                receiver,
                receiver_port,
                producer,
                backlog=args.backlog,
                rate=args.backlog_rate,
                seconds=args.steady_s,
            )
    finally:
        service.stop()
        await producer.stop()
        server.should_exit = True
        await server_task
        client = AsyncMongoClient(run.infra["MONGODB_URI"])
        await client.drop_database(f"bench{run.run_id}_webhooks")  # a failed run's too
        await client.close()
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"bench-webhooks-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"written: {path.relative_to(ROOT)}")


if __name__ == "__main__":
    asyncio.run(main())
