"""Order across topics: a complaint's events reach a subscriber in the order they happened.

A complaint's events come from three topics (intake, routing, follow-up), which the
webhooks consumer reads side by side; one topic can lag behind another. These tests
make the intake topic lag on purpose (a backlog of another organisation's events on
the same partition) so that a later routing event is recorded before the earlier
intake one, and check that the receiver still gets them in the order they happened.
"""

from __future__ import annotations

import asyncio
import uuid
from contextlib import AsyncExitStack
from datetime import UTC, datetime

import orjson
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

from complaints_shared.envelope import CloudEvent, to_kafka_record
from complaints_shared.events import (
    ComplaintSlaWarning,
    EventPayload,
    EventType,
    SlaClock,
    Topic,
)
from complaints_shared.kafka import ensure_topics
from tests.support.events import note_added
from tests.support.http import token
from tests.support.kafka import short_type
from tests.support.waits import eventually
from tests.support.webhooks import (
    Isolation,
    receiver,
    serve_webhooks,
    subscribe,
    webhooks_settings,
)

pytestmark = pytest.mark.integration

# Records of another organisation ahead of the complaint's event on the intake partition:
# enough that the consumer needs a while to work through them.
BACKLOG = 300
PARTITION = 0


async def _publish(
    producer: AIOKafkaProducer, *, topic: str, event_type: EventType, data: EventPayload
) -> asyncio.Future:
    event = CloudEvent.new(event_type=event_type, source="/test", data=data)
    key, value, headers = to_kafka_record(event)
    return await producer.send(topic, value, key=key, headers=headers, partition=PARTITION)


async def test_an_earlier_event_consumed_late_from_another_topic_still_arrives_first(
    alone: Isolation,
) -> None:
    complaint_id = f"cmp_{uuid.uuid4().hex[:12]}"
    async with AsyncExitStack() as stack:
        hooks = await stack.enter_async_context(receiver())
        webhooks = await serve_webhooks(stack, alone)
        settings = webhooks.settings
        admin = token(settings)
        await subscribe(
            webhooks,
            admin,
            url=hooks.url,
            event_types=[EventType.COMPLAINT_NOTE_ADDED.value, EventType.COMPLAINT_SLA_WARNING],
        )
        producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
        stack.push_async_callback(producer.stop)  # even when its start fails half-way
        await producer.start()
        intake_topic = settings.topic(Topic.INTAKE.value)
        for number in range(BACKLOG):
            other = note_added(
                org="elsewhere",
                complaint_id=f"cmp_other_{number}",
                author="agent-7",
                text="backlog",
            )
            await _publish(
                producer, topic=intake_topic, event_type=EventType.COMPLAINT_NOTE_ADDED, data=other
            )
        # The note is in the log before the warning happens: it must be delivered first.
        noted = await _publish(
            producer,
            topic=intake_topic,
            event_type=EventType.COMPLAINT_NOTE_ADDED,
            data=note_added(complaint_id=complaint_id, author="agent-7", text="客户来电催办"),
        )
        await noted
        now = datetime.now(UTC)
        warning = ComplaintSlaWarning(
            complaint_id=complaint_id,
            org="demo",
            branch="LZ",
            clock=SlaClock.RESOLVE,
            due_at=now,
            warned_at=now,
        )
        warned = await _publish(
            producer,
            topic=settings.topic(Topic.ROUTING.value),
            event_type=EventType.COMPLAINT_SLA_WARNING,
            data=warning,
        )
        await warned
        await eventually(
            lambda: asyncio.sleep(0, len(hooks.delivered_ids()) == 2),
            timeout_s=60,
            what="both events delivered",
        )
        deliveries = webhooks.app.state.runtime.db["deliveries"]
        recorded = {
            short_type(document["event_type"]): document["created_at"]
            async for document in deliveries.find({"complaint_id": complaint_id})
        }
    # The set-up did what it says: the later event was recorded first.
    assert recorded["complaint.sla_warning"] < recorded["complaint.note_added"], recorded
    arrived = [short_type(orjson.loads(request.body)["type"]) for request in hooks.requests]
    assert arrived == ["complaint.note_added", "complaint.sla_warning"]


async def test_a_partition_whose_records_retention_deleted_does_not_hold_deliveries(
    alone: Isolation,
) -> None:
    """A follow-up partition holds a record the group never consumed, and retention deletes
    it (here: ``delete_records``) before the service starts with a new group. Its consumer
    fetched nothing there and never committed, and the order watermark waited for that
    commit: no event delivery went out until a new record landed on the partition."""
    settings = webhooks_settings(alone)
    await ensure_topics(settings=settings, topics=[settings.topic(t.value) for t in Topic])
    followup = TopicPartition(settings.topic(Topic.FOLLOWUP.value), PARTITION)
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    try:
        await producer.start()
        gone = await producer.send_and_wait(followup.topic, b"{}", partition=PARTITION)
        await admin.start()
        await admin.delete_records({followup: RecordsToDelete(gone.offset + 1)})
    finally:
        await producer.stop()
        await admin.close()
    complaint_id = f"cmp_{uuid.uuid4().hex[:12]}"
    async with AsyncExitStack() as stack:
        hooks = await stack.enter_async_context(receiver())
        webhooks = await serve_webhooks(stack, alone)
        await subscribe(
            webhooks,
            token(settings),
            url=hooks.url,
            event_types=[EventType.COMPLAINT_NOTE_ADDED.value],
        )
        sender = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
        stack.push_async_callback(sender.stop)
        await sender.start()
        noted = await _publish(
            sender,
            topic=settings.topic(Topic.INTAKE.value),
            event_type=EventType.COMPLAINT_NOTE_ADDED,
            data=note_added(complaint_id=complaint_id, author="agent-7", text="客户来电催办"),
        )
        await noted
        await eventually(
            lambda: asyncio.sleep(0, len(hooks.delivered_ids()) == 1),
            timeout_s=30,
            what="the note delivered",
        )
