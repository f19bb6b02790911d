"""Dead letters against the real services: poison records and operator replays."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import GroupAuthorizationFailedError
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.structs import ConsumerRecord

from complaints_shared import dlq
from complaints_shared.dlq import (
    DeadLetter,
    in_replay_order,
    read_dead_letters,
    replayed_refs,
    run_command,
)
from complaints_shared.envelope import CloudEvent, to_kafka_record
from complaints_shared.events import EVENT_TYPE_PREFIX, EventType, Topic, dead_letter_topic
from complaints_shared.failures import Rejected
from complaints_shared.kafka import (
    EVENTS_CONSUMED,
    PRODUCER_STOP_S,
    DeadLetterReason,
    EventConsumer,
    EventProducer,
    _DeadLetter,
    ensure_topics,
)
from complaints_shared.metrics import OTHER_EVENT_TYPE
from intake.settings import IntakeSettings
from tests.support.events import NETWORK_DROPOUTS, received, resolved
from tests.support.http import BROADBAND_COMPLAINT, token
from tests.support.kafka import group_dead_letters, handled_count, publish
from tests.support.system import System, settings_for_test
from tests.support.waits import eventually

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[1]


async def test_poison_records_dead_letter_with_their_reason_and_the_partition_goes_on(
    system: System,
) -> None:
    complaint_id = str(uuid.uuid4())
    key = complaint_id.encode()  # all three on the complaint's partition, in this order
    good = CloudEvent.new(
        event_type=EventType.COMPLAINT_RECEIVED,
        source="intake",
        data=received(complaint_id=complaint_id, **NETWORK_DROPOUTS),
    )
    bad_data = CloudEvent.new(
        event_type=EventType.COMPLAINT_RECEIVED,
        source="intake",
        data=received(complaint_id=complaint_id, **NETWORK_DROPOUTS),
    )
    bad_data.data["received_at"] = "yesterday"
    bad_data.data["customer"]["phone"] = ["13900000000"]
    topic = system.topic(Topic.INTAKE)
    producer = EventProducer(settings=system.intake_settings)
    try:
        await producer.publish_raw(
            topic=topic, key=key, value=b'{"complaint_id": 1}', headers=[("ce_type", b"x")]
        )
        _, value, headers = to_kafka_record(bad_data)
        await producer.publish_raw(topic=topic, key=key, value=value, headers=headers)
        _, value, headers = to_kafka_record(good)
        await producer.publish_raw(topic=topic, key=key, value=value, headers=headers)
    finally:
        await producer.stop()

    routing_db = system.mongo[system.routing_settings.database_name()]
    assignment = await eventually(
        lambda: routing_db.assignments.find_one({"_id": complaint_id}), what="good one assigned"
    )
    assert assignment["department"] == "LZ:NETWORK"

    async def routing_dead_letters() -> list:
        letters = await read_dead_letters(
            settings=system.routing_settings, dlq_topic=dead_letter_topic(topic)
        )
        group = system.routing_settings.consumer_group()
        mine = [letter for letter in letters if letter.header("dlq_consumer_group") == group]
        return mine if len(mine) == 2 else []

    dead = await eventually(routing_dead_letters, what="both poison records dead-lettered")
    by_reason = {letter.header("dlq_reason"): letter for letter in dead}
    assert set(by_reason) == {"invalid_envelope", "invalid_data"}
    assert "missing CloudEvents header" in by_reason["invalid_envelope"].header("dlq_error")
    invalid = by_reason["invalid_data"].header("dlq_error")
    assert "received_at: datetime_from_date_parsing" in invalid
    assert "customer.phone: string_type" in invalid
    assert "13900000000" not in invalid and "yesterday" not in invalid
    assert by_reason["invalid_data"].header("ce_id") == bad_data.id
    # A type none of the catalogue's is counted as ``other``: labelled as written, a flood of
    # distinct types made a series each, rendered by every scrape on the event loop.
    routing_types = {
        sample.labels["event_type"]
        for metric in EVENTS_CONSUMED.collect()
        for sample in metric.samples
        if sample.labels.get("service") == "routing"
    }
    assert "x" not in routing_types and OTHER_EVENT_TYPE in routing_types


async def test_a_broken_record_of_a_type_a_reader_does_not_handle_is_its_handlers_dead_letter(
    system: System,
) -> None:
    """Follow-up reads routing's topic for branch announcements alone: it passes routing's
    complaint events over undecoded (decoding each cost it as much CPU per complaint as all
    its own work), and a broken one is intake's dead letter, which handles its type, not
    follow-up's too."""
    complaint_id = str(uuid.uuid4())
    event = CloudEvent.new(
        event_type=EventType.COMPLAINT_ASSIGNED,
        source="routing",
        data=received(complaint_id=complaint_id),  # its id is missing: no data is read
    )
    _, value, headers = to_kafka_record(event)
    no_id = [(name, None if name == "ce_id" else raw) for name, raw in headers]
    skipped = EVENTS_CONSUMED.labels("followup", EventType.COMPLAINT_ASSIGNED, "skipped")
    skipped_before = skipped._value.get()
    followup = system.followup_app.state.runtime.consumer
    await eventually(
        lambda: asyncio.sleep(0, followup.assigned.is_set()), what="follow-up consuming"
    )
    topic = system.topic(Topic.ROUTING)
    producer = AIOKafkaProducer(bootstrap_servers=system.intake_settings.kafka_bootstrap_servers)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key=complaint_id.encode(), headers=no_id)
    finally:
        await producer.stop()

    async def intakes() -> list[DeadLetter]:
        letters = await group_dead_letters(system.intake_settings, topic=topic)
        return [letter for letter in letters if letter.key == complaint_id.encode()]

    [dead] = await eventually(intakes, what="intake dead-lettered the broken record")
    assert dead.header("dlq_reason") == "invalid_envelope"
    await eventually(
        lambda: skipped._value.get() > skipped_before, timeout_s=30, what="follow-up passed it"
    )
    followups = await group_dead_letters(system.followup_settings, topic=topic)
    assert [letter for letter in followups if letter.key == complaint_id.encode()] == []


async def test_a_record_with_a_null_header_value_is_dead_lettered_and_the_partition_goes_on(
    system: System,
) -> None:
    """Kafka allows a header without a value, and the client hands it over as None. Decoding
    it raised an ``AttributeError`` no handler caught: the consumer loop died, the record
    was never committed, and every replica that read it died the same way. Now a null
    header is an absent one: a record missing a CloudEvents attribute so is dead-lettered,
    one whose foreign header alone is null is handled, and the events after them too."""
    complaint_id = str(uuid.uuid4())
    key = complaint_id.encode()  # all on the complaint's partition, in this order
    events = [
        CloudEvent.new(
            event_type=EventType.COMPLAINT_RECEIVED,
            source="intake",
            data=received(complaint_id=complaint_id, **NETWORK_DROPOUTS),
        )
        for _ in range(2)
    ]
    topic = system.topic(Topic.INTAKE)
    producer = AIOKafkaProducer(bootstrap_servers=system.intake_settings.kafka_bootstrap_servers)
    await producer.start()
    try:
        _, value, headers = to_kafka_record(events[0])
        no_id = [(name, None if name == "ce_id" else raw) for name, raw in headers]
        await producer.send_and_wait(topic, value, key=key, headers=no_id)
        _, value, headers = to_kafka_record(events[1])
        foreign = [*headers, ("x-trace", None)]
        await producer.send_and_wait(topic, value, key=key, headers=foreign)
    finally:
        await producer.stop()

    routing_db = system.mongo[system.routing_settings.database_name()]
    assignment = await eventually(
        lambda: routing_db.assignments.find_one({"_id": complaint_id}),
        what="the record whose foreign header is null handled (the one before has no id)",
    )
    assert assignment["department"] == "LZ:NETWORK"

    async def routing_dead_letters() -> list:
        letters = await read_dead_letters(
            settings=system.routing_settings, dlq_topic=dead_letter_topic(topic)
        )
        group = system.routing_settings.consumer_group()
        return [letter for letter in letters if letter.header("dlq_consumer_group") == group]

    [dead] = await eventually(routing_dead_letters, what="the record without an id dead-lettered")
    assert dead.header("dlq_reason") == "invalid_envelope"
    assert "ce_id" in dead.header("dlq_error")
    assert dead.header("ce_id") is None and dead.header("ce_type") == events[0].type


async def test_replay_after_restoring_a_lost_record_applies_once_and_twice_changes_nothing(
    system: System, capsys: pytest.CaptureFixture[str]
) -> None:
    """Intake refuses routing's event for a complaint it lost; restored, a replay applies it
    once, and the same replay again sends nothing and changes nothing."""
    started = datetime.now(UTC)
    admin = token(system.intake_settings)
    created = await system.intake.post("/v1/complaints", json=BROADBAND_COMPLAINT, headers=admin)
    complaint_id = created.json()["id"]
    complaints = system.mongo[system.intake_settings.database_name()].complaints

    async def timeline_actions() -> list[str]:
        document = await complaints.find_one({"_id": complaint_id})
        return [entry["action"] for entry in document["timeline"]] if document else []

    await eventually(lambda: _has(timeline_actions, "assigned"), what="assignment on record")
    # The record is lost (say, the database was restored from a backup taken before it).
    backup = await complaints.find_one({"_id": complaint_id})
    await complaints.delete_one({"_id": complaint_id})

    supervisor = token(system.routing_settings, roles=("supervisor",))
    owner = (await system.routing.get(f"/v1/assignments/{complaint_id}", headers=supervisor)).json()
    other = "lz-liu" if owner["owner_id"] == "lz-chen" else "lz-chen"
    moved = await system.routing.post(
        f"/v1/assignments/{complaint_id}/reassign",
        json={"owner_id": other, "reason": "原处理人休假"},
        headers=supervisor,
    )
    assert moved.status_code == 200, moved.text

    dlq_args = ["--topic", Topic.ROUTING.value, "--complaint-id", complaint_id]

    async def listed() -> list[dict]:
        capsys.readouterr()
        await run_command(["list", *dlq_args], settings=system.intake_settings)
        return _printed(capsys.readouterr().out)

    [letter] = await eventually(listed, what="refused event dead-lettered")
    assert letter["reason"] == "rejected"
    assert letter["event_type"] == "complaint.reassigned"
    assert letter["service"] == "intake"
    assert letter["attempts"] == 1

    # The console script (make dlq) shows the same, redacted: no customer data anywhere.
    inspected = _console(system, ["inspect", *dlq_args])
    [detail] = [json.loads(line) for line in inspected.splitlines()]
    assert detail["error"].startswith(f"Rejected: complaint {complaint_id}")
    assert detail["data_shape"]["complaint_id"] == f"<str {len(complaint_id)}>"
    assert "马先生" not in inspected and "0931" not in inspected

    await complaints.insert_one(backup)  # the operator restores the record
    window = ["--since", started.isoformat(), "--until", (started + timedelta(hours=1)).isoformat()]
    capsys.readouterr()
    await run_command(
        [
            "replay",
            *dlq_args,
            "--event-type",
            "complaint.reassigned",
            *window,
            "--operator",
            "ops-王",
            "--note",
            "工单 4711: record restored",
        ],
        settings=system.intake_settings,
    )
    first = capsys.readouterr()
    assert "replayed 1, already replayed 0" in first.err
    assert [line["event_id"] for line in _printed(first.out)] == [letter["event_id"]]
    # The ledger says who replayed it, when and why; the listing shows it.
    await run_command(["list", "--include-replayed", *dlq_args], settings=system.intake_settings)
    [replayed] = _printed(capsys.readouterr().out)
    assert replayed["replayed"] is True
    assert (replayed["replayed_by"], replayed["replay_note"]) == (
        "ops-王",
        "工单 4711: record restored",
    )
    assert datetime.fromisoformat(replayed["replayed_at"]) >= started

    async def reassigned_once() -> bool:
        document = await complaints.find_one({"_id": complaint_id})
        return document["assignment"]["owner_id"] == other

    await eventually(reassigned_once, what="replayed reassignment applied")
    await run_command(["replay", *dlq_args], settings=system.intake_settings)
    assert "replayed 0, already replayed 1" in capsys.readouterr().err
    assert not await listed()  # replayed letters are hidden from list by default

    # Even a second send (a replay that crashed before recording itself) has no effect:
    # the replay kept the original ce_id and key, which intake has applied already.
    [dead] = [
        letter
        for letter in await read_dead_letters(
            settings=system.intake_settings,
            dlq_topic=dead_letter_topic(system.topic(Topic.ROUTING)),
        )
        if letter.complaint_id == complaint_id
    ]
    assert dead.key == complaint_id.encode()
    handled_before = handled_count("intake", EventType.COMPLAINT_REASSIGNED)
    producer = EventProducer(settings=system.intake_settings)
    try:
        await producer.publish_raw(
            topic=system.topic(Topic.ROUTING),
            key=dead.key,
            value=dead.value,
            headers=[(n, v) for n, v in dead.headers if not n.startswith("dlq_")],
        )
    finally:
        await producer.stop()
    await eventually(
        lambda: handled_count("intake", EventType.COMPLAINT_REASSIGNED) > handled_before,
        what="second send consumed",
    )
    assert (await timeline_actions()).count("reassigned") == 1


async def test_a_replay_is_handled_by_the_service_that_dead_lettered_it_only(
    system: System, capsys: pytest.CaptureFixture[str]
) -> None:
    """Routing refuses a resolution of a complaint it never received; follow-up, reading the
    same topic, handled it. Replayed, the record went back to the topic for every reader:
    follow-up handled it a second time (a webhook subscriber, weeks on, got it again). It
    is now for the consumer group that dead-lettered it."""
    resolution = resolved()
    complaint_id = resolution.complaint_id
    followup_before = handled_count("followup", EventType.COMPLAINT_RESOLVED)
    await publish(system, (EventType.COMPLAINT_RESOLVED, resolution))
    dlq_args = ["--topic", Topic.INTAKE.value, "--complaint-id", complaint_id]

    async def listed() -> list[dict]:
        capsys.readouterr()
        await run_command(["list", *dlq_args], settings=system.routing_settings)
        return _printed(capsys.readouterr().out)

    [letter] = await eventually(listed, what="routing dead-lettered the resolution")
    assert (letter["service"], letter["reason"]) == ("routing", "rejected")
    await eventually(
        lambda: handled_count("followup", EventType.COMPLAINT_RESOLVED) > followup_before,
        what="follow-up handled the resolution",
    )
    followup_handled = handled_count("followup", EventType.COMPLAINT_RESOLVED)
    skipped = EVENTS_CONSUMED.labels(
        "followup", EventType.COMPLAINT_RESOLVED, "replay_for_another_group"
    )
    skipped_before = skipped._value.get()

    await run_command(["replay", *dlq_args], settings=system.routing_settings)
    assert "replayed 1" in capsys.readouterr().err
    await eventually(lambda: skipped._value.get() > skipped_before, what="follow-up passed it")
    # Routing took it up again (and refused it again: the complaint is still unknown there).
    [again] = await eventually(listed, what="the replay refused again by routing")
    assert again["service"] == "routing" and again["replay_of"]
    assert handled_count("followup", EventType.COMPLAINT_RESOLVED) == followup_handled


def test_a_replay_sends_each_complaints_received_event_before_its_other_events() -> None:
    def letter(offset: int, event_type: EventType, complaint_id: str) -> DeadLetter:
        return DeadLetter(
            dlq_topic="complaints.intake.v1.dlq",
            partition=0,
            offset=offset,
            key=complaint_id.encode(),
            value=b"{}",
            headers=(("ce_type", event_type.value.encode()),),
            timestamp_ms=0,
        )

    # Refused while its received event was dead-lettered, which a replay tried too early
    # (before the fix) dead-lettered again, behind them.
    acknowledged = letter(1, EventType.COMPLAINT_ACKNOWLEDGED, "a")
    resolved = letter(2, EventType.COMPLAINT_RESOLVED, "a")
    other = letter(3, EventType.COMPLAINT_RESOLVED, "b")
    received_again = letter(4, EventType.COMPLAINT_RECEIVED, "a")

    ordered = in_replay_order([acknowledged, resolved, other, received_again])

    assert [item.offset for item in ordered] == [4, 1, 2, 3]


def _printed(out: str) -> list[dict]:
    """The command's JSON lines: a service's log record (it has a ``level``) may share stdout,
    and so may the local broker's script (lines not JSON) when a test stops or starts it."""
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return [line for line in lines if "level" not in line]


def _console(system: System, args: list[str]) -> str:
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": system.infra.kafka_bootstrap_servers,
        "TOPIC_PREFIX": system.intake_settings.topic_prefix,
    }
    completed = subprocess.run(
        [str(Path(sys.executable).parent / "complaints-dlq"), *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return completed.stdout


async def _has(probe, action: str) -> bool:
    return action in await probe()


async def test_a_replay_the_broker_walks_away_from_ends_and_is_completed_when_it_is_back(
    infrastructure, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The broker goes away once a replay has sent and recorded its first dead letter. The
    replay used to wait for its return (aiokafka retries a send while the broker is away):
    the operator's command hung. Now it ends with exit code 1 once a send has waited
    ``REPLAY_SEND_TIMEOUT_S``, printing what went through; the same command with the broker
    back replays the rest."""
    broker = infrastructure.broker
    if broker is None:
        pytest.skip("the broker comes from KAFKA_BOOTSTRAP_SERVERS; this run cannot stop it")
    settings = settings_for_test(IntakeSettings, infra=infrastructure, run_id=uuid.uuid4().hex[:10])
    topic = settings.topic(Topic.INTAKE.value)
    await ensure_topics(settings=settings, topics=[topic])
    complaint_id = str(uuid.uuid4())  # both on one partition, in this order
    events = [
        CloudEvent.new(
            event_type=EventType.COMPLAINT_RECEIVED,
            source="intake",
            data=received(complaint_id=complaint_id, **NETWORK_DROPOUTS),
        )
        for _ in range(2)
    ]
    producer = EventProducer(settings=settings)
    try:
        for event in events:
            key, value, headers = to_kafka_record(event)
            await producer.publish_raw(
                topic=dead_letter_topic(topic),
                key=key,
                value=value,
                headers=[
                    *headers,
                    ("dlq_reason", b"rejected"),
                    ("dlq_original_topic", topic.encode()),
                ],
            )
    finally:
        await producer.stop()
    sends: list[object] = []
    away_at: list[float] = []

    class BrokerWalksAway(AIOKafkaProducer):
        async def send_and_wait(self, *arguments: Any, **keywords: Any) -> Any:
            sent = await super().send_and_wait(*arguments, **keywords)
            sends.append(sent)
            if len(sends) == 2:  # the first dead letter sent, and its replay recorded
                await asyncio.to_thread(broker.stop)
                away_at.append(time.monotonic())
            return sent

    monkeypatch.setattr(dlq, "AIOKafkaProducer", BrokerWalksAway)
    monkeypatch.setattr(dlq, "REPLAY_SEND_TIMEOUT_S", 3.0)
    replay = ["replay", "--topic", Topic.INTAKE.value]
    try:
        code = await asyncio.wait_for(run_command(replay, settings=settings), timeout=90)
        took_s = time.monotonic() - away_at[0]
    finally:
        await asyncio.to_thread(broker.start)
    broken_off = capsys.readouterr()
    assert code == 1, broken_off.err
    assert "replay broken off" in broken_off.err and "replayed 1." in broken_off.err
    assert [line["event_id"] for line in _printed(broken_off.out)] == [events[0].id]
    assert took_s < 3.0 + PRODUCER_STOP_S + 2.0, took_s
    dlq_topic = dead_letter_topic(topic)
    first, second = await read_dead_letters(settings=settings, dlq_topic=dlq_topic)
    assert await replayed_refs(settings=settings, dlq_topic=dlq_topic) == {first.ref}

    monkeypatch.setattr(dlq, "AIOKafkaProducer", AIOKafkaProducer)
    assert await run_command(replay, settings=settings) == 0
    completed = capsys.readouterr()
    assert "replayed 1, already replayed 1" in completed.err
    assert [line["event_id"] for line in _printed(completed.out)] == [events[1].id]
    assert await replayed_refs(settings=settings, dlq_topic=dlq_topic) == {first.ref, second.ref}


async def test_a_record_of_neither_key_nor_value_is_dead_lettered_without_stopping_the_consumer(
    infrastructure,
) -> None:
    """A foreign producer's record with a null key and a null value (a tombstone) is no
    CloudEvent: it goes to the dead-letter topic. The Kafka client sends no record of
    neither, and its refusal (an ``AssertionError``) escaped the consumer loop, which
    stopped consuming for good. Now it is dead-lettered with an empty value, saying so."""
    settings = settings_for_test(IntakeSettings, infra=infrastructure, run_id=uuid.uuid4().hex[:10])
    topic = settings.topic(Topic.ROUTING.value)
    await ensure_topics(settings=settings, topics=[topic])
    producer = EventProducer(settings=settings)
    consumer = EventConsumer(settings=settings, topics=[topic], handlers={}, producer=producer)
    tombstone = ConsumerRecord(
        topic=topic,
        partition=0,
        offset=7,
        timestamp=0,
        timestamp_type=0,
        key=None,
        value=None,
        checksum=None,
        serialized_key_size=-1,
        serialized_value_size=-1,
        headers=(),
    )
    refused = _DeadLetter(DeadLetterReason.INVALID_ENVELOPE, "missing CloudEvents header", 1)
    try:
        assert await asyncio.wait_for(consumer._dead_letter(tombstone, refused), timeout=30)
    finally:
        await producer.stop()
    [letter] = await read_dead_letters(settings=settings, dlq_topic=dead_letter_topic(topic))
    assert (letter.key, letter.value) == (None, b"")
    assert letter.header("dlq_value_was_null") == "true"
    assert (letter.header("dlq_reason"), letter.header("dlq_original_offset")) == (
        "invalid_envelope",
        "7",
    )


async def test_a_fault_of_the_consumer_loop_itself_restarts_it_instead_of_ending_it(
    infrastructure, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever a record's handling raises is retried or dead-lettered; anything else the
    loop meets (not the broker's error) used to end it for good. Now the consumer starts
    again from the last commit, after a pause that doubles while the faults go on (each
    restart rebalances the group), and counts as failing (readiness) after three in a row
    until a record is handled."""
    settings = settings_for_test(IntakeSettings, infra=infrastructure, run_id=uuid.uuid4().hex[:10])
    topic = settings.topic(Topic.ROUTING.value)
    await ensure_topics(settings=settings, topics=[topic])
    event = CloudEvent.new(
        event_type=EventType.COMPLAINT_RECEIVED, source="intake", data=received()
    )
    producer = EventProducer(settings=settings)
    handled: list[str] = []

    async def handle(event: CloudEvent, data: Any) -> None:
        handled.append(event.id)

    consumer = EventConsumer(
        settings=settings,
        topics=[topic],
        handlers={EventType.COMPLAINT_RECEIVED: handle},
        producer=producer,
    )
    fetch = EventConsumer._fetch
    sleep = EventConsumer._sleep_unless_stopping
    faults: list[float] = []
    pauses: list[float] = []
    failing_seen: list[bool] = []

    async def fails_thrice(self: EventConsumer, kafka_consumer: Any) -> dict:
        if len(faults) < 3:
            failing_seen.append(self.failing)
            faults.append(time.monotonic())
            raise RuntimeError("a fault of the loop (injected)")
        failing_seen.append(self.failing)
        return await fetch(self, kafka_consumer)

    async def noted(self: EventConsumer, delay_s: float) -> bool:
        pauses.append(delay_s)
        return await sleep(self, delay_s)

    monkeypatch.setattr(EventConsumer, "_fetch", fails_thrice)
    monkeypatch.setattr(EventConsumer, "_sleep_unless_stopping", noted)
    running = asyncio.create_task(consumer.run())
    try:
        key, value, headers = to_kafka_record(event)
        await producer.publish_raw(topic=topic, key=key, value=value, headers=headers)
        await eventually(
            lambda: asyncio.sleep(0, handled == [event.id]),
            timeout_s=30,
            what="the event handled after the loop's faults",
        )
        failing_after = consumer.failing
    finally:
        await consumer.stop()
        await asyncio.wait_for(running, timeout=30)
        await producer.stop()
    # The pauses the loop asked for (the consumer's stop and start come on top of them).
    assert len(faults) == 3 and pauses[:3] == [0.5, 1.0, 2.0], pauses
    waited = [later - earlier for earlier, later in itertools.pairwise(faults)]
    assert all(took >= asked for took, asked in zip(waited, pauses, strict=False)), waited
    assert failing_seen[:3] == [False, False, False] and failing_seen[3] is True
    assert failing_after is False, "a record handled: no longer failing"


async def test_records_after_one_whose_handling_let_a_cancellation_out_are_not_passed_over(
    infrastructure, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A handler that lets a cancellation out (one its task was not asked for: an await of
    a future another task cancelled) ended its partition's task "cancelled", which the loop
    took as finished: the partition was resumed past the rest of the batch it had fetched,
    and those records were never handled. Now it is an error of that record, retried as any
    other, and all three are handled in order."""
    settings = settings_for_test(IntakeSettings, infra=infrastructure, run_id=uuid.uuid4().hex[:10])
    topic = settings.topic(Topic.ROUTING.value)
    await ensure_topics(settings=settings, topics=[topic])
    complaint = received()  # one complaint: one partition, one batch
    events = [
        CloudEvent.new(event_type=EventType.COMPLAINT_RECEIVED, source="intake", data=complaint)
        for _ in range(3)
    ]
    producer = EventProducer(settings=settings)
    for event in events:
        key, value, headers = to_kafka_record(event)
        await producer.publish_raw(topic=topic, key=key, value=value, headers=headers)
    handled: list[str] = []
    cancelled: list[str] = []

    async def handle(event: CloudEvent, data: Any) -> None:
        if not cancelled:
            cancelled.append(event.id)
            raise asyncio.CancelledError  # as from an await of a task cancelled elsewhere
        handled.append(event.id)

    consumer = EventConsumer(
        settings=settings,
        topics=[topic],
        handlers={EventType.COMPLAINT_RECEIVED: handle},
        producer=producer,
    )
    start = EventConsumer._start_consumer
    starts: list[float] = []

    async def counted(self: EventConsumer) -> None:
        starts.append(time.monotonic())
        await start(self)

    monkeypatch.setattr(EventConsumer, "_start_consumer", counted)
    running = asyncio.create_task(consumer.run())
    try:
        await eventually(
            lambda: asyncio.sleep(0, len(handled) == 3),
            timeout_s=30,
            what="every record handled",
        )
    finally:
        await consumer.stop()
        await asyncio.wait_for(running, timeout=30)
        await producer.stop()
    assert cancelled == [events[0].id]
    assert handled == [event.id for event in events]
    # Retried as the record's error, not by a restart of the consumer (a rebalance).
    assert len(starts) == 1


async def test_a_broker_error_right_after_each_start_lengthens_the_pause(
    infrastructure, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A broker error after the consumer started (a group it may not join, a topic it may
    not read) restarted it after 0.5 s every time: the pause went back to 0.5 s at each
    successful start, so the group rebalanced twice a second for as long as it lasted. Now
    the pause doubles until a consumer runs well, as for the loop's own faults."""
    settings = settings_for_test(IntakeSettings, infra=infrastructure, run_id=uuid.uuid4().hex[:10])
    topic = settings.topic(Topic.ROUTING.value)
    await ensure_topics(settings=settings, topics=[topic])
    producer = EventProducer(settings=settings)

    async def handle(event: CloudEvent, data: Any) -> None:
        return None

    consumer = EventConsumer(
        settings=settings,
        topics=[topic],
        handlers={EventType.COMPLAINT_RECEIVED: handle},
        producer=producer,
    )
    fetch = EventConsumer._fetch
    sleep = EventConsumer._sleep_unless_stopping
    errors: list[float] = []
    pauses: list[float] = []

    async def refused_thrice(self: EventConsumer, kafka_consumer: Any) -> dict:
        if len(errors) < 3:
            errors.append(time.monotonic())
            raise GroupAuthorizationFailedError("the group refused (injected)")
        return await fetch(self, kafka_consumer)

    async def noted(self: EventConsumer, delay_s: float) -> bool:
        pauses.append(delay_s)
        return await sleep(self, delay_s)

    monkeypatch.setattr(EventConsumer, "_fetch", refused_thrice)
    monkeypatch.setattr(EventConsumer, "_sleep_unless_stopping", noted)
    running = asyncio.create_task(consumer.run())
    try:
        # Refused again and again, it is failing (readiness says so): it was reported
        # ready while it consumed nothing.
        await eventually(lambda: asyncio.sleep(0, consumer.failing), timeout_s=30, what="failing")
        await eventually(
            lambda: asyncio.sleep(0, len(errors) == 3 and consumer.assigned.is_set()),
            timeout_s=30,
            what="the consumer started again after three refusals",
        )
    finally:
        await consumer.stop()
        await asyncio.wait_for(running, timeout=30)
        await producer.stop()
    assert pauses[:3] == [0.5, 1.0, 2.0], pauses  # each after a start that succeeded


async def test_a_record_too_large_for_the_dead_letter_topic_points_at_its_original(
    system: System,
) -> None:
    """A record just under the broker's limit fits its topic but not the dead-letter topic
    beside the ``dlq_*`` headers: the send failed the same way forever and held its
    partition still. Now the dead letter points at the original (where it lies, how large
    it was), the partition goes on, and replay sends the original itself again."""
    complaint_id = str(uuid.uuid4())
    key = complaint_id.encode()
    headroom = 120  # under the producer's 1 MiB request limit; the dlq_* headers add ~400
    filler = b'{"note": "' + b"x" * 1_048_000 + b'"}'
    size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, filler, [])
    oversized = filler[:-2] + b"x" * (1024 * 1024 - headroom - size) + b'"}'
    good = CloudEvent.new(
        event_type=EventType.COMPLAINT_RECEIVED,
        source="intake",
        data=received(complaint_id=complaint_id, **NETWORK_DROPOUTS),
    )
    topic = system.topic(Topic.INTAKE)
    producer = EventProducer(settings=system.intake_settings)
    try:
        await producer.publish_raw(topic=topic, key=key, value=oversized, headers=[])
        _, value, headers = to_kafka_record(good)
        await producer.publish_raw(topic=topic, key=key, value=value, headers=headers)
    finally:
        await producer.stop()

    routing_db = system.mongo[system.routing_settings.database_name()]
    await eventually(  # the old code never got past the oversized record
        lambda: routing_db.assignments.find_one({"_id": complaint_id}),
        what="the record after the oversized one handled",
    )
    group = system.routing_settings.consumer_group()

    async def routings_letter() -> list[DeadLetter]:
        letters = await read_dead_letters(
            settings=system.routing_settings, dlq_topic=dead_letter_topic(topic)
        )
        return [
            letter
            for letter in letters
            if letter.header("dlq_consumer_group") == group and letter.key == key
        ]

    [letter] = await eventually(routings_letter, what="oversized record dead-lettered")
    assert letter.value == b""
    assert letter.omitted_bytes is not None and letter.omitted_bytes > 1_000_000
    assert letter.header("dlq_reason") == "invalid_envelope"
    assert letter.redacted(ledger_record=None)["data_shape"].startswith("<omitted, ")

    result = await dlq.replay(settings=system.routing_settings, letters=[letter], operator="test")
    assert [len(sent.value or b"") for sent in result.replayed] == [len(oversized)]
    assert result.originals_gone == []
    partition = int(letter.header("dlq_original_partition"))
    [replayed] = [
        record
        for record in await dlq._read_whole_topic(settings=system.routing_settings, topic=topic)
        if record.partition == partition and dict(record.headers).get(dlq.REPLAY_OF_HEADER)
    ]
    assert (replayed.key, replayed.value) == (key, oversized)
    assert (
        dict(replayed.headers)[dlq.REPLAY_OF_HEADER] == f"{letter.dlq_topic}@{letter.ref}".encode()
    )


async def test_a_pointer_whose_original_is_past_retention_is_reported_not_replayed(
    infrastructure,
) -> None:
    settings = settings_for_test(IntakeSettings, infra=infrastructure, run_id=uuid.uuid4().hex[:10])
    topic = settings.topic(Topic.ROUTING.value)
    await ensure_topics(settings=settings, topics=[topic])
    producer = EventProducer(settings=settings)
    consumer = EventConsumer(settings=settings, topics=[topic], handlers={}, producer=producer)
    gone = ConsumerRecord(  # an offset the (empty) topic no longer holds
        topic=topic,
        partition=0,
        offset=41,
        timestamp=0,
        timestamp_type=0,
        key=b"k",
        value=b"y" * (1024 * 1024 - 200),
        checksum=None,
        serialized_key_size=1,
        serialized_value_size=1024 * 1024 - 200,
        headers=(("ce_type", b"org.complaintdesk.complaint.noted.v1"),),
    )
    refused = _DeadLetter(DeadLetterReason.INVALID_ENVELOPE, "missing CloudEvents header", 1)
    try:
        assert await asyncio.wait_for(consumer._dead_letter(gone, refused), timeout=30)
    finally:
        await producer.stop()
    [letter] = await read_dead_letters(settings=settings, dlq_topic=dead_letter_topic(topic))
    assert letter.omitted_bytes == 1024 * 1024 - 200 + 1 + len("ce_type") + 36
    assert letter.header("ce_type") == "org.complaintdesk.complaint.noted.v1"

    # The original could not be read (the broker slow to answer): broken off, as a send is.
    async def unreadable(**_: Any) -> None:
        raise TimeoutError("no answer (injected)")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(dlq, "read_original", unreadable)
        with pytest.raises(dlq.ReplayBrokenOff, match="its original could not be read"):
            await dlq.replay(settings=settings, letters=[letter], operator="test")
    result = await dlq.replay(settings=settings, letters=[letter], operator="test")
    assert (result.replayed, [item.ref for item in result.originals_gone]) == ([], [letter.ref])
    assert await replayed_refs(settings=settings, dlq_topic=letter.dlq_topic) == set()


async def _dead_lettered_before_a_routed_one(system: System, *, event_type: str):
    """A complaint.received published as ``event_type``, then a good one on the same key:
    the good one is routed, and the first is routing's dead letter (returned), not routed."""
    complaint_id = str(uuid.uuid4())
    newer = CloudEvent.new(
        event_type=EventType.COMPLAINT_RECEIVED,
        source="intake",
        data=received(complaint_id=complaint_id, **NETWORK_DROPOUTS),
    )
    newer.type = event_type
    good = CloudEvent.new(
        event_type=EventType.COMPLAINT_RECEIVED,
        source="intake",
        data=received(**NETWORK_DROPOUTS),
    )
    topic = system.topic(Topic.INTAKE)
    producer = EventProducer(settings=system.intake_settings)
    try:
        for event in (newer, good):
            _, value, headers = to_kafka_record(event)
            await producer.publish_raw(
                topic=topic, key=complaint_id.encode(), value=value, headers=headers
            )
    finally:
        await producer.stop()

    routing_db = system.mongo[system.routing_settings.database_name()]
    await eventually(
        lambda: routing_db.assignments.find_one({"_id": good.subject}), what="the one after routed"
    )
    [dead] = await eventually(
        lambda: group_dead_letters(system.routing_settings, topic=topic, event_id=newer.id),
        what=f"the {event_type} record dead-lettered",
    )
    assert await routing_db.assignments.find_one({"_id": complaint_id}) is None
    return dead


async def test_another_version_of_a_handled_event_type_is_dead_lettered_not_skipped(
    system: System,
) -> None:
    """A breaking change is a new type version (``...complaint.received.v2``). A consumer
    with no handler for it skipped it and committed, as it does types it does not care
    about: a producer upgraded first left its complaints unrouted with no trace but a
    metric. It is now a dead letter ``invalid_data`` naming the version handled, to replay
    once the consumer is upgraded; the partition goes on."""
    newer = EventType.COMPLAINT_RECEIVED.value.removesuffix(".v1") + ".v2"
    dead = await _dead_lettered_before_a_routed_one(system, event_type=newer)
    assert dead.header("dlq_reason") == "invalid_data"
    assert EventType.COMPLAINT_RECEIVED.value in dead.header("dlq_error")


async def test_an_event_type_of_a_newer_release_is_dead_lettered_not_skipped(
    system: System,
) -> None:
    """A newer intake publishes a type this routing's contract does not know (as
    ``complaint.reclassified`` was to routing before 5 December) while this replica still
    runs: compose recreates services in no set order. It was skipped and committed, so the
    upgraded replica sharing the group never saw it. It is now a dead letter naming the
    type, to replay once the service is upgraded; the partition goes on."""
    newer = f"{EVENT_TYPE_PREFIX}complaint.merged.v1"
    dead = await _dead_lettered_before_a_routed_one(system, event_type=newer)
    assert dead.header("dlq_reason") == "invalid_data"
    assert "complaint.merged.v1" in dead.header("dlq_error")
    assert "upgraded" in dead.header("dlq_error")


async def test_a_ledger_record_hides_only_its_own_dead_letter_once_the_dlq_topic_is_recreated(
    infrastructure, capsys: pytest.CaptureFixture[str]
) -> None:
    """The ledger was keyed by the dead letter's ``<partition>:<offset>`` alone. An operator
    deleted a DLQ topic, the services created it again, and its new dead letters started at
    offset 0 again: one at a position the ledger held was listed as replayed (with another
    event's replay record), hidden from ``list`` and skipped by ``replay``. A ledger record
    now applies only to the dead letter it names."""
    settings = settings_for_test(IntakeSettings, infra=infrastructure, run_id=uuid.uuid4().hex[:10])
    topic = settings.topic(Topic.ROUTING.value)
    dlq_topic = dead_letter_topic(topic)
    await ensure_topics(settings=settings, topics=[topic])
    first, second = (
        CloudEvent.new(event_type=EventType.COMPLAINT_RECEIVED, source="intake", data=received())
        for _ in range(2)
    )
    await _write_dead_letters(
        settings, topic=topic, records=[_refused(first, topic=topic, settings=settings, offset=3)]
    )
    dlq_args = ["--topic", Topic.ROUTING.value]
    await run_command(["replay", *dlq_args, "--operator", "ops-李"], settings=settings)
    assert "replayed 1, already replayed 0" in capsys.readouterr().err
    [old] = await read_dead_letters(settings=settings, dlq_topic=dlq_topic)

    await _recreate_topic(settings, topic=topic, dlq_topic=dlq_topic)
    await _write_dead_letters(
        settings, topic=topic, records=[_refused(second, topic=topic, settings=settings, offset=9)]
    )
    [new] = await read_dead_letters(settings=settings, dlq_topic=dlq_topic)
    assert new.ref == old.ref  # the position the ledger holds a replay record for

    await run_command(["list", *dlq_args], settings=settings)
    listed = _printed(capsys.readouterr().out)
    assert [(line["event_id"], line["replayed"]) for line in listed] == [(second.id, False)]
    assert "replayed_by" not in listed[0]
    await run_command(["replay", *dlq_args, "--operator", "ops-李"], settings=settings)
    replayed = capsys.readouterr()
    assert "replayed 1, already replayed 0" in replayed.err
    assert [line["event_id"] for line in _printed(replayed.out)] == [second.id]
    sent = [
        dict(record.headers)["ce_id"].decode()
        for record in await dlq._read_whole_topic(settings=settings, topic=topic)
        if dict(record.headers).get(dlq.REPLAY_OF_HEADER)
    ]
    assert sorted(sent) == sorted([first.id, second.id])  # each once
    await run_command(["replay", *dlq_args], settings=settings)
    assert "replayed 0, already replayed 1" in capsys.readouterr().err


async def test_a_ledger_record_written_before_records_named_their_dead_letter_hides_only_its_own(
    infrastructure, capsys: pytest.CaptureFixture[str]
) -> None:
    """Records written before the ledger named the dead letter (``dead_letter``) hold its
    event id, original topic and replay time: a dead letter at the position is hidden only
    when they match it, and not when it was dead-lettered after the replay."""
    settings = settings_for_test(IntakeSettings, infra=infrastructure, run_id=uuid.uuid4().hex[:10])
    topic = settings.topic(Topic.ROUTING.value)
    dlq_topic = dead_letter_topic(topic)
    await ensure_topics(settings=settings, topics=[topic])
    replayed_event, other_event = (
        CloudEvent.new(event_type=EventType.COMPLAINT_RECEIVED, source="intake", data=received())
        for _ in range(2)
    )
    await _write_dead_letters(
        settings,
        topic=topic,
        records=[
            _refused(replayed_event, topic=topic, settings=settings, offset=1),
            _refused(other_event, topic=topic, settings=settings, offset=2),
            _not_ours(topic=topic, settings=settings, offset=3, ce_type="com.other.thing"),
        ],
    )
    an_hour_ago = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    now = datetime.now(UTC).isoformat()
    legacy = [  # as the tool wrote them: by position, naming the event and its topic
        ("0:0", {"event_id": replayed_event.id, "original_topic": topic, "replayed_at": now}),
        ("0:1", {"event_id": str(uuid.uuid4()), "original_topic": topic, "replayed_at": now}),
        ("0:2", {"event_id": None, "original_topic": topic, "replayed_at": an_hour_ago}),
    ]
    ledger_topic = dlq_topic + dlq.REPLAYED_SUFFIX
    await dlq._ensure_topics(settings=settings, topics=[ledger_topic])
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await producer.start()
    try:
        for ref, record in legacy:
            await producer.send_and_wait(
                ledger_topic, json.dumps(record).encode(), key=ref.encode()
            )
    finally:
        await producer.stop()

    await run_command(
        ["list", "--include-replayed", "--topic", Topic.ROUTING.value], settings=settings
    )
    listed = {line["dlq"].rsplit("@", 1)[1]: line for line in _printed(capsys.readouterr().out)}
    assert {ref: line["replayed"] for ref, line in listed.items()} == {
        "0:0": True,
        "0:1": False,
        "0:2": False,
    }
    assert listed["0:0"]["replayed_at"] == now


async def test_a_bare_replay_leaves_records_not_ours_and_a_dismissal_settles_them(
    infrastructure, capsys: pytest.CaptureFixture[str]
) -> None:
    """Dead letters ``invalid_envelope`` (not a CloudEvent of ours) could not be got rid
    of: listed forever, and sent back by every bare ``replay``, dead-lettered again at a new
    offset and sent again by the next. A replay now leaves them unless ``--reason`` names
    them, and ``dismiss`` records them as settled (who, why) without sending anything."""
    settings = settings_for_test(IntakeSettings, infra=infrastructure, run_id=uuid.uuid4().hex[:10])
    topic = settings.topic(Topic.INTAKE.value)
    await ensure_topics(settings=settings, topics=[topic])
    refused = CloudEvent.new(
        event_type=EventType.COMPLAINT_RESOLVED, source="intake", data=resolved()
    )
    await _write_dead_letters(
        settings,
        topic=topic,
        records=[
            *(
                _not_ours(topic=topic, settings=settings, offset=offset, ce_type=f"com.x.t{offset}")
                for offset in range(3)
            ),
            _refused(refused, topic=topic, settings=settings, offset=3),
        ],
    )
    dlq_args = ["--topic", Topic.INTAKE.value]

    async def command(*argv: str) -> tuple[list[dict], str]:
        """The JSON lines printed, and the last line on stderr (the tally)."""
        capsys.readouterr()
        assert await run_command([*argv, *dlq_args], settings=settings) == 0
        printed = capsys.readouterr()
        return _printed(printed.out), printed.err.splitlines()[-1]

    lines, err = await command("replay")
    assert [line["event_id"] for line in lines] == [refused.id]
    assert "replayed 1, already replayed 0; held back 3 invalid_envelope" in err
    lines, err = await command("replay")
    assert (lines, err.split(";")[0]) == ([], "replayed 0, already replayed 1")
    lines, err = await command("replay", "--reason", "invalid_envelope", "--dry-run")
    assert len(lines) == 3 and "would replay 3, already replayed 0" in err

    # A dismissal says who and why, and takes a selection narrower than topics.
    for incomplete in (
        ["dismiss", "--reason", "invalid_envelope", "--note", "INC-9"],
        ["dismiss", "--operator", "ops-王", "--note", "INC-9"],
    ):
        with pytest.raises(SystemExit):
            await run_command([*incomplete, *dlq_args], settings=settings)
    dismissal = ["--reason", "invalid_envelope", "--operator", "ops-王", "--note", "INC-9: 外部"]
    lines, err = await command("dismiss", *dismissal, "--dry-run")
    assert len(lines) == 3 and "would dismiss 3" in err
    lines, err = await command("list")
    assert len(lines) == 3
    lines, err = await command("dismiss", *dismissal)
    assert [line["action"] for line in lines] == ["dismissed"] * 3
    assert "dismissed 3, already replayed or dismissed 0" in err

    assert (await command("list")) == ([], "0 dead letter(s)")
    lines, _ = await command("list", "--include-dismissed")
    assert {
        (line["dismissed"], line["dismissed_by"], line["dismissal_note"]) for line in lines
    } == {(True, "ops-王", "INC-9: 外部")}
    lines, err = await command("replay", "--reason", "invalid_envelope")
    assert (lines, err) == ([], "replayed 0, already replayed 0, dismissed 3")
    lines, err = await command("replay")
    assert (lines, err) == ([], "replayed 0, already replayed 1, dismissed 3")
    lines, err = await command("dismiss", *dismissal)
    assert "dismissed 0, already replayed or dismissed 3" in err
    sent = [
        record
        for record in await dlq._read_whole_topic(settings=settings, topic=topic)
        if dict(record.headers).get(dlq.REPLAY_OF_HEADER)
    ]
    assert [dict(record.headers)["ce_id"].decode() for record in sent] == [refused.id]


async def test_a_replay_refused_again_is_held_back_until_asked_for_once_its_cause_is_fixed(
    infrastructure, capsys: pytest.CaptureFixture[str]
) -> None:
    """A replayed record the consumer refuses again becomes a new dead letter, which the
    next replay sent again, and the one after it: "running the same replay twice sends
    nothing" did not hold. It carries ``replay_of``, and a replay sends it only with
    ``--include-failed-replays``."""
    settings = settings_for_test(IntakeSettings, infra=infrastructure, run_id=uuid.uuid4().hex[:10])
    topic = settings.topic(Topic.ROUTING.value)
    dlq_topic = dead_letter_topic(topic)
    await ensure_topics(settings=settings, topics=[topic])
    event = CloudEvent.new(
        event_type=EventType.COMPLAINT_RECEIVED, source="intake", data=received()
    )
    cause_fixed = asyncio.Event()
    handled: list[str] = []

    async def handle(event: CloudEvent, data: Any) -> None:
        if not cause_fixed.is_set():
            raise Rejected(f"complaint {event.subject} is not on record here")
        handled.append(event.id)

    producer = EventProducer(settings=settings)
    consumer = EventConsumer(
        settings=settings,
        topics=[topic],
        handlers={EventType.COMPLAINT_RECEIVED: handle},
        producer=producer,
    )
    running = asyncio.create_task(consumer.run())
    dlq_args = ["--topic", Topic.ROUTING.value]

    async def dead_letters(count: int) -> list[DeadLetter]:
        letters = await read_dead_letters(settings=settings, dlq_topic=dlq_topic)
        return letters if len(letters) == count else []

    try:
        key, value, headers = to_kafka_record(event)
        await producer.publish_raw(topic=topic, key=key, value=value, headers=headers)
        [first] = await eventually(lambda: dead_letters(1), timeout_s=30, what="refused")
        await run_command(["replay", *dlq_args], settings=settings)  # before the fix
        assert "replayed 1, already replayed 0" in capsys.readouterr().err
        _, again = await eventually(lambda: dead_letters(2), timeout_s=30, what="refused again")
        assert again.header(dlq.REPLAY_OF_HEADER) == f"{dlq_topic}@{first.ref}"

        await run_command(["replay", *dlq_args], settings=settings)
        held = capsys.readouterr()
        assert _printed(held.out) == []
        assert "replayed 0, already replayed 1; held back 1 failed replay(s)" in held.err

        cause_fixed.set()
        await run_command(["replay", *dlq_args, "--include-failed-replays"], settings=settings)
        assert "replayed 1, already replayed 1" in capsys.readouterr().err
        await eventually(
            lambda: asyncio.sleep(0, handled == [event.id]), timeout_s=30, what="applied"
        )
        await run_command(["replay", *dlq_args, "--include-failed-replays"], settings=settings)
        assert "replayed 0, already replayed 2" in capsys.readouterr().err
    finally:
        await consumer.stop()
        await asyncio.wait_for(running, timeout=30)
        await producer.stop()


async def test_list_summary_counts_dead_letters_by_reason_consumer_group_and_event_type(
    infrastructure, capsys: pytest.CaptureFixture[str]
) -> None:
    """A flood of dead letters, each of its own invented type, is thousands of lines to
    ``list``; ``list --summary`` counts them, naming the most frequent values only."""
    settings = settings_for_test(IntakeSettings, infra=infrastructure, run_id=uuid.uuid4().hex[:10])
    topic = settings.topic(Topic.INTAKE.value)
    await ensure_topics(settings=settings, topics=[topic])
    refused = [
        CloudEvent.new(event_type=EventType.COMPLAINT_RESOLVED, source="intake", data=resolved())
        for _ in range(2)
    ]
    flood = dlq.SUMMARY_TOP_VALUES + 5
    await _write_dead_letters(
        settings,
        topic=topic,
        records=[
            *(
                _not_ours(topic=topic, settings=settings, offset=offset, ce_type=f"com.x.t{offset}")
                for offset in range(flood)
            ),
            *(
                _refused(event, topic=topic, settings=settings, offset=flood + index)
                for index, event in enumerate(refused)
            ),
        ],
    )

    await run_command(["list", "--summary", "--topic", Topic.INTAKE.value], settings=settings)
    [summary] = _printed(capsys.readouterr().out)
    assert summary["dead_letters"] == flood + 2
    assert summary["by_topic"] == {dead_letter_topic(topic): flood + 2}
    assert summary["by_reason"] == {"invalid_envelope": flood, "rejected": 2}
    assert summary["by_consumer_group"] == {settings.consumer_group(): flood + 2}
    by_type = summary["by_event_type"]
    assert len(by_type) == dlq.SUMMARY_TOP_VALUES + 1
    assert by_type["complaint.resolved"] == 2
    assert by_type[dlq.OTHERS] == flood + 2 - (2 + dlq.SUMMARY_TOP_VALUES - 1)
    assert sum(by_type.values()) == flood + 2


Record = tuple[bytes | None, bytes, list[tuple[str, bytes]]]


def _dead_letter_headers(
    *, topic: str, settings: IntakeSettings, reason: str, offset: int
) -> list[tuple[str, bytes]]:
    """As the consumer loop writes them, for a record at ``offset`` of partition 0."""
    return [
        ("dlq_reason", reason.encode()),
        ("dlq_error", b"refused (by hand)"),
        ("dlq_attempts", b"1"),
        ("dlq_original_topic", topic.encode()),
        ("dlq_original_partition", b"0"),
        ("dlq_original_offset", str(offset).encode()),
        ("dlq_consumer_group", settings.consumer_group().encode()),
        ("dlq_service", settings.service_name.encode()),
        ("dlq_failed_at", datetime.now(UTC).isoformat().encode()),
    ]


def _refused(event: CloudEvent, *, topic: str, settings: IntakeSettings, offset: int) -> Record:
    key, value, headers = to_kafka_record(event)
    dead = _dead_letter_headers(topic=topic, settings=settings, reason="rejected", offset=offset)
    return key, value, [*headers, *dead]


def _not_ours(*, topic: str, settings: IntakeSettings, offset: int, ce_type: str) -> Record:
    """A foreign producer's record: a type but no ``ce_id``."""
    dead = _dead_letter_headers(
        topic=topic, settings=settings, reason="invalid_envelope", offset=offset
    )
    return str(uuid.uuid4()).encode(), b"{}", [("ce_type", ce_type.encode()), *dead]


async def _write_dead_letters(
    settings: IntakeSettings, *, topic: str, records: list[Record]
) -> None:
    """``records`` onto partition 0 of ``topic``'s DLQ topic, in this order."""
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers)
    await producer.start()
    try:
        for key, value, headers in records:
            await producer.send_and_wait(
                dead_letter_topic(topic), value, key=key, headers=headers, partition=0
            )
    finally:
        await producer.stop()


async def _recreate_topic(settings: IntakeSettings, *, topic: str, dlq_topic: str) -> None:
    """``dlq_topic`` deleted, then created again as a service starting up does."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        await admin.delete_topics([dlq_topic])
        await eventually(
            lambda: _lacks(admin, dlq_topic), timeout_s=30, what=f"{dlq_topic} deleted"
        )

        async def created_empty() -> bool:
            await ensure_topics(settings=settings, topics=[topic])
            return dlq_topic in await admin.list_topics() and not await read_dead_letters(
                settings=settings, dlq_topic=dlq_topic
            )

        await eventually(created_empty, timeout_s=30, what=f"{dlq_topic} created again")
    finally:
        await admin.close()


async def _lacks(admin: AIOKafkaAdminClient, topic: str) -> bool:
    return topic not in await admin.list_topics()
