"""Integration: a producer whose idempotence state the broker rejects is replaced.

After a broker restart loses a batch in flight, the broker answers every later batch of
that producer for the partition with OUT_OF_ORDER_SEQUENCE_NUMBER, and aiokafka never
recovers from it by itself. Here the broker really answers so: the producer's next
sequence number is moved past what the broker expects, which is the state such a restart
leaves behind.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import OutOfOrderSequenceNumber

from complaints_shared.envelope import CloudEvent
from complaints_shared.events import EventType, Topic
from complaints_shared.kafka import EventProducer, ensure_topics
from complaints_shared.outbox import (
    OutboxRelay,
    outbox_entry,
    outbox_fields,
)
from complaints_shared.settings import ServiceSettings
from tests.support.events import received
from tests.support.kafka import outbox_sent, read_topic
from tests.support.system import System
from tests.support.waits import eventually

pytestmark = pytest.mark.integration


def _settings(system: System) -> ServiceSettings:
    return system.intake_settings.model_copy(
        update={
            "service_name": "producer-probe",
            # Under the system's own prefix: its topics go with the system's.
            "topic_prefix": f"{system.intake_settings.topic_prefix}prod{uuid.uuid4().hex[:8]}.",
            "outbox_poll_interval_s": 0.1,
        }
    )


def _break_sequences(producer: EventProducer, *, topic: str, partitions: int) -> None:
    """Leave the producer with sequence numbers the broker has not seen (a lost batch)."""
    inner = producer._producer
    assert inner is not None
    for partition in range(partitions):
        inner._txn_manager.increment_sequence_number(TopicPartition(topic, partition), 5)


# One complaint, so every event has the same key and goes to the partition whose sequence
# the broker already tracks for this producer.
COMPLAINT = received()


def _entry(settings: ServiceSettings) -> dict:
    return outbox_entry(event_type=EventType.COMPLAINT_RECEIVED, data=COMPLAINT, settings=settings)


async def test_rejected_sequence_gets_a_new_producer_and_the_event_is_sent(system: System) -> None:
    settings = _settings(system)
    topic = settings.topic(Topic.INTAKE.value)
    await ensure_topics(settings=settings, topics=[topic])
    producer = EventProducer(settings=settings)
    try:
        first = _entry(settings)
        await producer.publish(_event(first), topic=topic)
        broken = producer._producer
        _break_sequences(producer, topic=topic, partitions=settings.topic_partitions)

        second = _entry(settings)
        with pytest.raises(OutOfOrderSequenceNumber):
            await producer.publish(_event(second), topic=topic)
        assert producer._producer is not broken  # discarded: the next send starts afresh

        await producer.publish(_event(second), topic=topic)
        records = await read_topic(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            topic=topic,
            until=lambda records: len(records) >= 2,
        )
        assert [dict(r.headers)["ce_id"].decode() for r in records] == [first["id"], second["id"]]
    finally:
        await producer.stop()


async def test_outbox_relay_publishes_after_the_broker_rejected_its_sequence(
    system: System,
) -> None:
    settings = _settings(system)
    topic = settings.topic(Topic.INTAKE.value)
    await ensure_topics(settings=settings, topics=[topic])
    db = system.mongo[settings.database_name()]
    collection = db[f"relay_{uuid.uuid4().hex[:8]}"]
    producer = EventProducer(settings=settings)
    relay = OutboxRelay(db=db, collections=[collection.name], producer=producer, settings=settings)
    running = asyncio.create_task(relay.run())
    try:
        warm = _entry(settings)
        await collection.insert_one({"_id": "warm", **outbox_fields([warm])})
        relay.notify()
        await eventually(lambda: outbox_sent(collection), what="warm-up event published")
        _break_sequences(producer, topic=topic, partitions=settings.topic_partitions)

        entries = [_entry(settings) for _ in range(5)]
        for number, entry in enumerate(entries):
            await collection.insert_one({"_id": f"c{number}", **outbox_fields([entry])})
        relay.notify()
        await eventually(lambda: outbox_sent(collection), timeout_s=30, what="events published")
        records = await read_topic(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            topic=topic,
            until=lambda records: len(records) >= 1 + len(entries),
        )
        published = [dict(r.headers)["ce_id"].decode() for r in records]
        assert sorted(published) == sorted([warm["id"], *(e["id"] for e in entries)])
    finally:
        await relay.stop()
        await running
        await producer.stop()


def _event(entry: dict) -> CloudEvent:
    return CloudEvent.model_validate(entry)
