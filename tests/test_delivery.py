"""At-least-once delivery: duplicates have one effect; poison messages go to the DLQ."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import DefaultPartitioner
from pymongo.errors import AutoReconnect

from complaints_shared.envelope import CloudEvent, to_kafka_record
from complaints_shared.events import (
    ComplaintReceived,
    EventType,
    Topic,
    dead_letter_topic,
)
from complaints_shared.failures import Rejected
from complaints_shared.kafka import EventConsumer, EventHandler, EventProducer, ensure_topics
from complaints_shared.metrics import PARTITION_STALLED
from complaints_shared.settings import ServiceSettings
from tests.support.events import NETWORK_DROPOUTS, received
from tests.support.http import BROADBAND_COMPLAINT, token
from tests.support.kafka import events_of, handled_count, intake_producer, read_topic, redeliver
from tests.support.system import System
from tests.support.waits import NotYet, eventually

pytestmark = pytest.mark.integration


async def test_duplicate_received_event_assigns_once(system: System) -> None:
    complaint_id = str(uuid.uuid4())
    event = CloudEvent.new(
        event_type=EventType.COMPLAINT_RECEIVED,
        source="intake",
        data=received(complaint_id=complaint_id, **NETWORK_DROPOUTS),
    )
    handled_before = handled_count("routing", EventType.COMPLAINT_RECEIVED)
    async with intake_producer(system) as publish:
        for _ in range(2):  # the same event, delivered twice
            await publish.replay(event)

    db = system.mongo[system.routing_settings.database_name()]
    assignment = await eventually(
        lambda: db.assignments.find_one({"_id": complaint_id}), what="assignment"
    )
    assert assignment["department"] == "LZ:NETWORK"

    def saw_assigned(records: list) -> bool:
        return len(events_of(records, event_type=EventType.COMPLAINT_ASSIGNED)) >= 1

    records = await read_topic(
        bootstrap_servers=system.infra.kafka_bootstrap_servers,
        topic=system.topic(Topic.ROUTING),
        until=saw_assigned,
    )
    await eventually(
        lambda: handled_count("routing", EventType.COMPLAINT_RECEIVED) >= handled_before + 2,
        what="both deliveries consumed",
    )
    records = await read_topic(
        bootstrap_servers=system.infra.kafka_bootstrap_servers,
        topic=system.topic(Topic.ROUTING),
        until=lambda rs: False,
        timeout_s=1.0,
    )
    assigned = [
        e
        for e in events_of(records, event_type=EventType.COMPLAINT_ASSIGNED)
        if e.subject == complaint_id
    ]
    assert len(assigned) == 1
    assert await db.assignments.count_documents({"_id": complaint_id}) == 1


async def test_failing_handler_dead_letters_and_consumer_moves_on(system: System) -> None:
    settings, topic = await _probe_topic(system, "dlq-probe")
    poison_id, healthy_id = str(uuid.uuid4()), str(uuid.uuid4())
    handled: list[str] = []
    attempts: list[str] = []

    async def handler(event: CloudEvent, data: ComplaintReceived) -> None:
        attempts.append(data.complaint_id)
        if data.complaint_id == poison_id:
            raise RuntimeError(f"cannot route complaint for {data.customer.phone}")
        handled.append(data.complaint_id)

    producer = EventProducer(settings=settings)
    try:
        async with _consuming(settings, topic, handler, producer):
            await _publish_received(producer, topic, [poison_id, healthy_id])
            # A record that is not a CloudEvent at all goes straight to the DLQ.
            await producer.publish_raw(topic=topic, key=b"junk", value=b"{not json", headers=[])

            await eventually(lambda: healthy_id in handled, what="healthy event handled")
            dead = await read_topic(
                bootstrap_servers=settings.kafka_bootstrap_servers,
                topic=dead_letter_topic(topic),
                until=lambda records: len(records) >= 2,
            )
    finally:
        await producer.stop()

    assert attempts.count(poison_id) == settings.consumer_max_attempts
    assert len(dead) == 2
    headers = [dict(record.headers) for record in dead]
    poison = next(h for h in headers if h.get("ce_subject") == poison_id.encode())
    assert poison["dlq_reason"] == b"retries_exhausted"
    # The error names the exception and where it was raised, never the message's values.
    assert poison["dlq_error"].startswith(b"RuntimeError at test_delivery.py")
    assert b"13900000000" not in b"".join(poison.values())
    assert poison["dlq_original_topic"] == topic.encode()
    assert poison["dlq_attempts"] == str(settings.consumer_max_attempts).encode()
    junk = next(h for h in headers if "ce_subject" not in h)
    assert junk["dlq_reason"] == b"invalid_envelope"
    assert b"missing CloudEvents header" in junk["dlq_error"]


async def test_refused_and_malformed_events_dead_letter_at_once_and_the_partition_goes_on(
    system: System,
) -> None:
    """Permanent failures are not retried; the next record of the same partition is handled."""
    settings, topic = await _probe_topic(system, "refusal-probe")
    key = str(uuid.uuid4())  # one key: every record below shares a partition
    refused_id, after_id = str(uuid.uuid4()), str(uuid.uuid4())
    attempts: list[str] = []

    async def handler(event: CloudEvent, data: ComplaintReceived) -> None:
        attempts.append(data.complaint_id)
        if data.complaint_id == refused_id:
            raise Rejected(f"organisation {data.org!r} has no directory")

    refused = CloudEvent.new(
        event_type=EventType.COMPLAINT_RECEIVED,
        source="test",
        data=received(complaint_id=refused_id),
    )
    malformed = CloudEvent.new(
        event_type=EventType.COMPLAINT_RECEIVED, source="test", data=received()
    )
    # A contract break: the phone number where the customer's name belongs, no channel.
    malformed.data["customer"]["name"] = {"phone": "13900000000"}
    del malformed.data["channel"]
    after = CloudEvent.new(
        event_type=EventType.COMPLAINT_RECEIVED, source="test", data=received(complaint_id=after_id)
    )
    producer = EventProducer(settings=settings)
    try:
        async with _consuming(settings, topic, handler, producer):
            for event in (refused, malformed, after):
                _, value, headers = to_kafka_record(event)
                await producer.publish_raw(
                    topic=topic, key=key.encode(), value=value, headers=headers
                )
            await eventually(lambda: after_id in attempts, what="next record handled")
            dead = await read_topic(
                bootstrap_servers=settings.kafka_bootstrap_servers,
                topic=dead_letter_topic(topic),
                until=lambda records: len(records) >= 2,
            )
    finally:
        await producer.stop()

    assert attempts == [refused_id, after_id]
    by_id = {dict(r.headers)["ce_id"].decode(): dict(r.headers) for r in dead}
    assert by_id[refused.id]["dlq_reason"] == b"rejected"
    assert by_id[refused.id]["dlq_attempts"] == b"1"
    assert by_id[refused.id]["dlq_error"] == b"Rejected: organisation 'demo' has no directory"
    invalid = by_id[malformed.id]
    assert invalid["dlq_reason"] == b"invalid_data"
    assert invalid["dlq_attempts"] == b"0"
    assert b"customer.name: string_type" in invalid["dlq_error"]
    assert b"channel: missing" in invalid["dlq_error"]
    assert b"13900000000" not in invalid["dlq_error"]
    assert all(r.key == key.encode() for r in dead)


async def test_transient_failure_stalls_only_its_partition_and_never_dead_letters(
    system: System,
) -> None:
    """A database outage for one complaint's partition: retried past the attempt limit,
    in order, while another partition flows; nothing reaches the DLQ."""
    settings, topic = await _probe_topic(system, "stall-probe")
    settings = settings.model_copy(update={"consumer_retry_backoff_max_s": 0.2})
    stalled_id, other_id = _ids_on_two_partitions(settings.topic_partitions)
    follower_id = str(uuid.uuid4())  # published with the stalled one's key
    outage = asyncio.Event()
    outage.set()
    attempts: list[str] = []
    handled: list[str] = []

    async def handler(event: CloudEvent, data: ComplaintReceived) -> None:
        attempts.append(data.complaint_id)
        if data.complaint_id == stalled_id and outage.is_set():
            raise AutoReconnect("connection refused")
        handled.append(data.complaint_id)

    def stalled_gauge() -> float:
        return sum(
            sample.value
            for metric in PARTITION_STALLED.collect()
            for sample in metric.samples
            if sample.labels["service"] == settings.service_name
        )

    producer = EventProducer(settings=settings)
    try:
        async with _consuming(settings, topic, handler, producer):
            stalled = CloudEvent.new(
                event_type=EventType.COMPLAINT_RECEIVED,
                source="test",
                data=received(complaint_id=stalled_id),
            )
            follower = CloudEvent.new(
                event_type=EventType.COMPLAINT_RECEIVED,
                source="test",
                data=received(complaint_id=follower_id),
            )
            for event in (stalled, follower):
                _, value, headers = to_kafka_record(event)
                await producer.publish_raw(
                    topic=topic, key=stalled_id.encode(), value=value, headers=headers
                )
            await _publish_received(producer, topic, [other_id])

            await eventually(lambda: other_id in handled, what="other partition flows")
            await eventually(
                lambda: attempts.count(stalled_id) > 2 * settings.consumer_max_attempts,
                what="retries past the attempt limit",
            )
            assert stalled_gauge() == 1
            assert follower_id not in attempts  # order kept within the partition
            outage.clear()
            await eventually(lambda: follower_id in handled, what="partition resumed")
            assert stalled_gauge() == 0
    finally:
        await producer.stop()
    assert handled == [other_id, stalled_id, follower_id]
    assert not await read_topic(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        topic=dead_letter_topic(topic),
        until=lambda records: False,
        timeout_s=1.0,
    )


def _ids_on_two_partitions(partitions: int) -> tuple[str, str]:
    """Two complaint ids the producer's default partitioner puts on different partitions."""
    partitioner = DefaultPartitioner()
    every = list(range(partitions))
    first = str(uuid.uuid4())
    home = partitioner(first.encode(), every, every)
    while True:
        other = str(uuid.uuid4())
        if partitioner(other.encode(), every, every) != home:
            return first, other


async def test_partitions_are_handled_side_by_side(system: System) -> None:
    """A complaint whose handler waits does not hold up one on another partition."""
    settings, topic = await _probe_topic(system, "parallel-probe")
    slow_id, quick_id = _ids_on_two_partitions(settings.topic_partitions)
    quick_done = asyncio.Event()
    handled: list[str] = []

    async def handler(event: CloudEvent, data: ComplaintReceived) -> None:
        if data.complaint_id == slow_id:
            # Served one at a time, this would wait for an event queued behind it.
            await asyncio.wait_for(quick_done.wait(), timeout=10)
        else:
            quick_done.set()
        handled.append(data.complaint_id)

    producer = EventProducer(settings=settings)
    try:
        # Both are published before the consumer starts, so one poll fetches them together.
        await _publish_received(producer, topic, [slow_id, quick_id])
        async with _consuming(settings, topic, handler, producer):
            await eventually(lambda: len(handled) == 2, what="both events handled")
    finally:
        await producer.stop()
    assert handled == [quick_id, slow_id]
    assert not await read_topic(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        topic=dead_letter_topic(topic),
        until=lambda records: False,
        timeout_s=1.0,
    )


async def test_a_handled_partition_takes_its_next_record_at_once(system: System) -> None:
    """Each record of a complaint published only once the one before is handled: the partition
    resumes as soon as its handler ends, not when the consumer's next poll returns."""
    settings, topic = await _probe_topic(system, "resume-probe")
    complaint_id = str(uuid.uuid4())
    hops = 20
    handled = asyncio.Queue[float]()

    async def handler(event: CloudEvent, data: ComplaintReceived) -> None:
        handled.put_nowait(time.monotonic())

    producer = EventProducer(settings=settings)
    try:
        async with _consuming(settings, topic, handler, producer):
            await _publish_received(producer, topic, [complaint_id])
            await asyncio.wait_for(handled.get(), timeout=30)  # the group has joined
            started = time.monotonic()
            for _ in range(hops):
                await _publish_received(producer, topic, [complaint_id])
                await asyncio.wait_for(handled.get(), timeout=10)
            per_hop_s = (time.monotonic() - started) / hops
    finally:
        await producer.stop()
    # Resumed only when the consumer's next poll returned, a hop took ~500 ms; now ~10 ms.
    assert per_hop_s < 0.1, f"{per_hop_s * 1000:.0f} ms per record"


async def test_handled_offsets_are_committed_each_interval_and_all_at_stop(
    system: System,
) -> None:
    """A consumer commits what it handled every ``consumer_commit_interval_s``, not after
    every record, and commits everything handled when it stops (nothing redelivered after
    a clean restart)."""
    records = 6
    # An hour: nothing committed while running; a fifth of a second: everything, soon.
    assert await _committed_while_running(system, interval_s=3600.0, records=records) == (0, 6)
    assert await _committed_while_running(system, interval_s=0.2, records=records) == (6, 6)


async def _committed_while_running(
    system: System, *, interval_s: float, records: int
) -> tuple[int, int]:
    """Records committed while running (read until all are, for up to 3 s after they are
    handled), then after the stop."""
    settings, topic = await _probe_topic(system, f"commit-probe-{int(interval_s * 10)}")
    settings = settings.model_copy(update={"consumer_commit_interval_s": interval_s})
    group = f"{settings.topic_prefix}{settings.service_name}"
    handled: list[str] = []

    async def handler(event: CloudEvent, data: ComplaintReceived) -> None:
        handled.append(data.complaint_id)

    producer = EventProducer(settings=settings)
    try:
        async with _consuming(settings, topic, handler, producer):
            await _publish_received(producer, topic, [str(uuid.uuid4()) for _ in range(records)])
            await eventually(lambda: len(handled) == records, what="every record handled")
            deadline = time.monotonic() + 3.0
            running = await _committed(settings, group)
            while running < records and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                running = await _committed(settings, group)
    finally:
        await producer.stop()
    return running, await _committed(settings, group)


async def test_a_consumer_cancelled_past_the_shutdown_grace_leaves_its_group_at_once(
    system: System,
) -> None:
    """A handler that never returns keeps a stopping consumer from ending; the runtime then
    cancels it. It still gives up the handler and leaves the group (another member gets the
    partitions now, not after the session timeout), and the cancellation goes on."""
    settings, topic = await _probe_topic(system, "cancel-probe")
    group = f"{settings.topic_prefix}{settings.service_name}"
    entered, handler_cancelled = asyncio.Event(), asyncio.Event()

    async def stuck(event: CloudEvent, data: ComplaintReceived) -> None:
        entered.set()
        try:
            await asyncio.Event().wait()  # a call to a dependency that never answers
        except asyncio.CancelledError:
            handler_cancelled.set()
            raise

    producer = EventProducer(settings=settings)
    consumer = EventConsumer(
        settings=settings,
        topics=[topic],
        handlers={EventType.COMPLAINT_RECEIVED: stuck},
        producer=producer,
        group_id=group,
    )
    consuming = asyncio.create_task(consumer.run())
    try:
        await _publish_received(producer, topic, [str(uuid.uuid4())])
        await asyncio.wait_for(entered.wait(), timeout=30)
        assert await _members(settings, group) == 1
        await consumer.stop()
        assert not (await asyncio.wait({consuming}, timeout=0.5))[0], "the set-up: it waits"
        consuming.cancel()  # what the runtime does once its grace is over
        await asyncio.wait({consuming}, timeout=10)
        assert consuming.done() and consuming.cancelled(), "the cancellation goes on"
        await eventually(
            lambda: _members_are(settings, group, 0),
            timeout_s=3,
            what="the cancelled consumer gone from its group",
        )
    finally:
        consuming.cancel()
        await producer.stop()
    assert handler_cancelled.is_set()


async def _members(settings: ServiceSettings, group: str) -> int:
    """How many members the group's coordinator holds."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    try:
        await admin.start()  # closed below even when its start fails half-way
        [response] = await admin.describe_consumer_groups([group])
    finally:
        await admin.close()
    [described] = response.to_object()["groups"]
    return len(described["members"])


async def _members_are(settings: ServiceSettings, group: str, count: int) -> bool | NotYet:
    members = await _members(settings, group)
    return members == count or NotYet(f"{members} members")


async def _committed(settings: ServiceSettings, group: str) -> int:
    """How many records the group has committed, over every partition."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    try:
        await admin.start()  # closed below even when its start fails half-way
        offsets = await admin.list_consumer_group_offsets(group)
    finally:
        await admin.close()
    return sum(max(0, position.offset) for position in offsets.values())


async def _probe_topic(system: System, name: str) -> tuple[ServiceSettings, str]:
    """Settings of a consumer of its own (service ``name``) and a fresh topic for it."""
    settings = system.intake_settings.model_copy(update={"service_name": name})
    topic = system.topic(f"{name}.v1")
    await ensure_topics(settings=settings, topics=[topic])
    return settings, topic


@asynccontextmanager
async def _consuming(
    settings: ServiceSettings, topic: str, handler: EventHandler, producer: EventProducer
) -> AsyncIterator[None]:
    """A consumer of ``topic`` running ``handler`` for complaint.received, for the block."""
    consumer = EventConsumer(
        settings=settings,
        topics=[topic],
        handlers={EventType.COMPLAINT_RECEIVED: handler},
        producer=producer,
        group_id=f"{settings.topic_prefix}{settings.service_name}",
    )
    consuming = asyncio.create_task(consumer.run())
    try:
        yield
    finally:
        await consumer.stop()
        await consuming


async def _publish_received(producer: EventProducer, topic: str, complaint_ids: list[str]) -> None:
    for complaint_id in complaint_ids:
        event = CloudEvent.new(
            event_type=EventType.COMPLAINT_RECEIVED,
            source="test",
            data=received(complaint_id=complaint_id),
        )
        await producer.publish(event, topic=topic)


async def test_redelivered_assignment_event_is_applied_once(system: System) -> None:
    """Intake's consumer: the same complaint.assigned twice leaves one timeline entry."""
    admin = token(system.intake_settings)
    created = (
        await system.intake.post("/v1/complaints", json=BROADBAND_COMPLAINT, headers=admin)
    ).json()
    db = system.mongo[system.intake_settings.database_name()]

    async def assigned_entries() -> list:
        document = await db.complaints.find_one({"_id": created["id"]})
        return [e for e in document["timeline"] if e["action"] == "assigned"]

    await eventually(assigned_entries, what="assignment applied")
    records = await read_topic(
        bootstrap_servers=system.infra.kafka_bootstrap_servers,
        topic=system.topic(Topic.ROUTING),
        until=lambda rs: len(rs) >= 1,
    )
    original = records[0]
    handled_before = handled_count("intake", EventType.COMPLAINT_ASSIGNED)
    await redeliver(system, original, service="routing")
    await eventually(
        lambda: handled_count("intake", EventType.COMPLAINT_ASSIGNED) > handled_before,
        what="redelivered event consumed",
    )
    assert len(await assigned_entries()) == 1
