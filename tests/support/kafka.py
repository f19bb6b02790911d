"""Kafka in tests: publishing events as a service would, reading topics, counting handled events.

Tests put other services' events straight onto the test's topics, so each test controls
exactly what a consumer sees (and when), and read topics from the beginning without a
consumer group to see what a service published.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from aiokafka import AIOKafkaConsumer, TopicPartition

from complaints_shared.dlq import DeadLetter, read_dead_letters
from complaints_shared.envelope import CloudEvent, from_kafka_record
from complaints_shared.events import (
    EVENT_TYPE_PREFIX,
    EventData,
    EventType,
    Topic,
    dead_letter_topic,
)
from complaints_shared.kafka import EventProducer
from complaints_shared.metrics import EVENTS_CONSUMED
from complaints_shared.outbox import PENDING_SINCE_FIELD
from complaints_shared.settings import ServiceSettings
from tests.support.system import System
from tests.support.waits import eventually

# The topic each service publishes on.
TOPIC_OF = {"intake": Topic.INTAKE, "routing": Topic.ROUTING, "followup": Topic.FOLLOWUP}


class Publisher:
    """Publishes onto a service's topic of the test as that service would, or replays an event."""

    def __init__(self, system: System, *, service: str = "intake") -> None:
        self._system = system
        self._service = service
        settings = getattr(system, f"{service}_settings")
        self._producer = EventProducer(settings=settings)

    async def __call__(self, event_type: EventType, data: EventData) -> CloudEvent:
        event = CloudEvent.new(event_type=event_type, source=self._service, data=data)
        await self.replay(event)
        return event

    async def replay(self, event: CloudEvent) -> None:
        """The same CloudEvent once more (a redelivery, as at-least-once allows)."""
        await self._producer.publish(event, topic=self._system.topic(TOPIC_OF[self._service]))

    async def stop(self) -> None:
        await self._producer.stop()


@asynccontextmanager
async def publisher(system: System, *, service: str = "intake") -> AsyncIterator[Publisher]:
    """``await publish(event_type, data)`` onto ``service``'s topic of the test."""
    sending = Publisher(system, service=service)
    try:
        yield sending
    finally:
        await sending.stop()


def intake_producer(system: System):
    """``await publish(event_type, data)`` onto the test's intake topic, as intake would."""
    return publisher(system, service="intake")


async def publish(
    system: System, *events: tuple[EventType, EventData], service: str = "intake"
) -> list[CloudEvent]:
    """Put events on ``service``'s topic (intake's by default) in order; the CloudEvents sent."""
    async with publisher(system, service=service) as send:
        return [await send(event_type, data) for event_type, data in events]


async def republish(system: System, event: CloudEvent, *, service: str = "intake") -> None:
    """Deliver an already published CloudEvent again."""
    async with publisher(system, service=service) as send:
        await send.replay(event)


async def redeliver(system: System, record, *, service: str) -> None:
    """Put a record read from ``service``'s topic there once more, byte for byte."""
    producer = EventProducer(settings=getattr(system, f"{service}_settings"))
    try:
        await producer.publish_raw(
            topic=system.topic(TOPIC_OF[service]),
            key=record.key,
            value=record.value,
            headers=list(record.headers),
        )
    finally:
        await producer.stop()


async def outbox_sent(collection) -> bool:
    """Whether the relay published every pending outbox entry of ``collection``."""
    return await collection.count_documents({PENDING_SINCE_FIELD: {"$exists": True}}) == 0


async def read_topic(
    *, bootstrap_servers: str, topic: str, until: Callable[[list], bool], timeout_s: float = 10.0
) -> list:
    """Read ``topic`` from the beginning (no consumer group) until ``until(records)`` holds."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap_servers, enable_auto_commit=False)
    try:
        # In the try: a start failing after it connected leaves a metadata task only stop() ends.
        await consumer.start()
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


def of_type(events: list[CloudEvent], event_type: EventType, subject: str | None = None) -> list:
    return [
        event
        for event in events
        if event.type == event_type.value and (subject is None or event.subject == subject)
    ]


async def service_events(
    system: System,
    service: str,
    *,
    until: Callable[[list[CloudEvent]], bool],
    timeout_s: float = 15.0,
) -> list[CloudEvent]:
    """Every event ``service`` published in this test, read until ``until`` holds."""

    def decoded(records: list) -> list[CloudEvent]:
        return [event for kind in EventType for event in events_of(records, event_type=kind.value)]

    records = await read_topic(
        bootstrap_servers=system.infra.kafka_bootstrap_servers,
        topic=system.topic(TOPIC_OF[service]),
        until=lambda records: until(decoded(records)),
        timeout_s=timeout_s,
    )
    return decoded(records)


async def routing_events(
    system: System, *, until: Callable[[list[CloudEvent]], bool], timeout_s: float = 15.0
) -> list[CloudEvent]:
    """Every event routing published in this test, read until ``until`` holds."""
    return await service_events(system, "routing", until=until, timeout_s=timeout_s)


async def followup_events(system: System, *, event_type: str, subject: str, count: int) -> list:
    """The follow-up topic's events of a type for one complaint, once ``count`` are there."""

    def of_subject(records: list) -> list:
        return [e for e in events_of(records, event_type=event_type) if e.subject == subject]

    records = await read_topic(
        bootstrap_servers=system.infra.kafka_bootstrap_servers,
        topic=system.topic(Topic.FOLLOWUP),
        until=lambda records: len(of_subject(records)) >= count,
    )
    return of_subject(records)


def handled_count(service: str, event_type: str) -> float:
    """How many events of a type this process's consumers of ``service`` have handled."""
    return EVENTS_CONSUMED.labels(service, event_type, "handled")._value.get()


def short_type(event_type: str) -> str:
    """``org.complaintdesk.complaint.closed.v1`` → ``complaint.closed``."""
    return event_type.removeprefix(EVENT_TYPE_PREFIX).rsplit(".v", 1)[0]


async def group_dead_letters(
    settings: ServiceSettings, *, topic: str, event_id: str | None = None
) -> list[DeadLetter]:
    """The dead letters of ``topic`` that ``settings``' consumer group left (of one event,
    given its id): the topic's other readers dead-letter their own."""
    letters = await read_dead_letters(settings=settings, dlq_topic=dead_letter_topic(topic))
    group = settings.consumer_group()
    return [
        letter
        for letter in letters
        if letter.header("dlq_consumer_group") == group
        and (event_id is None or letter.header("ce_id") == event_id)
    ]
