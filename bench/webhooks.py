"""Webhook delivery benchmark: `make bench-webhooks` (figures in docs/performance.md).

Starts the webhooks service as a real uvicorn process (its own topic prefix and
database) and a local HTTP receiver answering 204, subscribes 1 and then 50
subscriptions to it, produces ``complaint.received`` events straight to Kafka and
measures, per scenario:

- burst: N events produced at once → deliveries per second until the last 2xx;
- steady: events at a fixed rate → latency from each event's Kafka record timestamp
  to the receiver's 2xx answer (p50/p95/p99), one figure per delivery.
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
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import uvicorn
from aiokafka import AIOKafkaProducer
from fastapi import FastAPI, Request, Response

from bench.run import RESULTS, ROOT, Run, Service, _received, infra_env, latency_summary, machine
from bench.workload import complaint_body
from complaints_shared.envelope import CloudEvent, to_kafka_record
from complaints_shared.events import EventType, Topic
from complaints_shared.kafka import ensure_topics

PORT = 18004
RNG = random.Random(14)


class Receiver:
    """Answers 204 at once and notes when each delivery arrived."""

    def __init__(self) -> None:
        self.arrivals: dict[tuple[str, str], float] = {}  # (webhook-id, event id) -> time
        self.expected = 0
        self.complete = asyncio.Event()
        self.app = FastAPI()
        self.app.post("/hooks/{n}")(self._hook)

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


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--burst", type=int, default=1000, help="events of the burst phase")
    parser.add_argument("--burst-50", type=int, default=40, help="burst events with 50 subs")
    parser.add_argument("--steady-rate", type=float, default=20.0, help="events/s, 1 sub")
    parser.add_argument("--steady-rate-50", type=float, default=2.0, help="events/s, 50 subs")
    parser.add_argument("--steady-s", type=float, default=20.0)
    parser.add_argument("--jwt-secret", default="bench-secret-0123456789abcdef-0123")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    run = Run(args=args, infra=infra_env())
    settings = run.settings()
    await ensure_topics(settings=settings, topics=[settings.topic(t.value) for t in Topic])
    receiver = Receiver()
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
        result["scenarios"] = [
            await scenario(
                run,
                receiver,
                receiver_port,
                producer,
                subscriptions=1,
                burst=args.burst,
                steady_rate=args.steady_rate,
                steady_s=args.steady_s,
            ),
            await scenario(
                run,
                receiver,
                receiver_port,
                producer,
                subscriptions=50,
                burst=args.burst_50,
                steady_rate=args.steady_rate_50,
                steady_s=args.steady_s,
            ),
        ]
    finally:
        service.stop()
        await producer.stop()
        server.should_exit = True
        await server_task
    from pymongo import AsyncMongoClient

    client = AsyncMongoClient(run.infra["MONGODB_URI"])
    await client.drop_database(f"bench{run.run_id}_webhooks")
    await client.close()
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"bench-webhooks-{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.write_text(json.dumps(result, indent=2))
    print(f"written: {path.relative_to(ROOT)}")


if __name__ == "__main__":
    asyncio.run(main())
