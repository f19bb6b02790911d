"""Test helpers: polling with a deadline, reading topics, minting tokens."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiokafka import AIOKafkaConsumer, TopicPartition

from complaints_shared.auth import mint_token
from complaints_shared.envelope import CloudEvent, from_kafka_record
from complaints_shared.events import EVENT_TYPE_PREFIX
from complaints_shared.metrics import EVENTS_CONSUMED
from complaints_shared.settings import ServiceSettings

T = TypeVar("T")


async def eventually(
    probe: Callable[[], Awaitable[T | None]],
    *,
    timeout_s: float = 10.0,
    interval_s: float = 0.1,
    what: str = "condition",
) -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    last: T | None = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; last value: {last!r}")


def token(
    settings: ServiceSettings,
    *,
    org: str = "demo",
    branches: list[str] | str = "*",
    roles: tuple[str, ...] = ("admin",),
    subject: str = "tester",
) -> dict[str, str]:
    jwt = mint_token(
        secret=settings.jwt_secret,
        subject=subject,
        org=org,
        branches=branches,
        roles=list(roles),
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
    )
    return {"Authorization": f"Bearer {jwt}"}


async def read_topic(
    *, bootstrap_servers: str, topic: str, until: Callable[[list], bool], timeout_s: float = 10.0
) -> list:
    """Read ``topic`` from the beginning (no consumer group) until ``until(records)`` holds."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = await eventually(
            lambda: _partitions(consumer, topic), timeout_s=timeout_s, what=f"topic {topic}"
        )
        assignment = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(assignment)
        await consumer.seek_to_beginning(*assignment)
        records: list = []
        deadline = time.monotonic() + timeout_s
        while not until(records) and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200)
            for batch in batches.values():
                records.extend(batch)
        return records
    finally:
        await consumer.stop()


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int] | None:
    await consumer._client.force_metadata_update()
    return consumer.partitions_for_topic(topic)


def events_of(records: list, *, event_type: str) -> list[CloudEvent]:
    events = [from_kafka_record(record.value, record.headers) for record in records]
    return [event for event in events if event.type == event_type]


def handled_count(service: str, event_type: str) -> float:
    """How many events of a type this process's consumers of ``service`` have handled."""
    return EVENTS_CONSUMED.labels(service, event_type, "handled")._value.get()


def short_type(event_type: str) -> str:
    """``org.complaintdesk.complaint.closed.v1`` → ``complaint.closed``."""
    return event_type.removeprefix(EVENT_TYPE_PREFIX).rsplit(".v", 1)[0]
