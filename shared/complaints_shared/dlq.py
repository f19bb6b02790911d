"""The operator's dead-letter tool: list, inspect (redacted), replay and dismiss dead letters.

``complaints-dlq list|inspect|replay|dismiss`` reads ``<topic>.dlq`` from the beginning
(no consumer group, nothing is committed), selects by topic, reason, event type, complaint
id and dead-letter time, and replays to the original topic with the original key and
headers (so the original ``ce_id``: consumers recognise an event they already applied),
a complaint's ``complaint.received`` before its other events (``in_replay_order``).
Every replay and every dismissal is recorded in the ledger ``<topic>.dlq.replayed`` (key
``<partition>:<offset>`` of the dead letter, value its identity: when, by whom and why),
and a dead letter recorded there is neither listed nor sent again: running the same replay
twice re-sends nothing. A record applies only to the dead letter it names
(``DeadLetter.identity``): a DLQ topic deleted and created again starts at offset 0 again.
A crash between the send and the record re-sends that one dead letter on the next run,
which the idempotent consumers absorb. A replay leaves two kinds of dead letter unless
asked for them: reasons replaying cannot cure (``UNREPLAYABLE_REASONS``) and replays that
failed again (``replay_of``), so that running it again sends nothing.

Settings come from the environment like a service's: ``KAFKA_BOOTSTRAP_SERVERS``,
``TOPIC_PREFIX``. See docs/operations.md.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from complaints_shared.events import EVENT_TYPE_PREFIX, EventType, Topic, dead_letter_topic
from complaints_shared.kafka import (
    PRODUCER_STOP_S,
    REPLAY_FOR_HEADER,
    DeadLetterReason,
    connection_options,
    create_missing_topics,
    dead_letter_ledger_topic,
)
from complaints_shared.settings import ServiceSettings

# The ledger of a DLQ topic's replays and dismissals (named before dismissals existed).
REPLAYED_SUFFIX = ".replayed"
# A ledger record's ``action``; records written before dismissals existed have none: replays.
REPLAYED = "replayed"
DISMISSED = "dismissed"
# What a ledger record says beside the dead letter's identity, by action: when, by whom, why.
LEDGER_RECORD_FIELDS = {
    REPLAYED: ("replayed_at", "replayed_by", "replay_note"),
    DISMISSED: ("dismissed_at", "dismissed_by", "dismissal_note"),
}
# Reasons a replay cannot cure (not a CloudEvent of ours: it is refused again, at a new
# offset). A replay sends such dead letters only when its ``--reason`` names them.
UNREPLAYABLE_REASONS = frozenset({DeadLetterReason.INVALID_ENVELOPE.value})
# Why a replay holds back a replayed record refused again (``--include-failed-replays``).
FAILED_REPLAY = "failed replay"
# How many values per dimension ``list --summary`` names; the rest are summed as OTHERS.
SUMMARY_TOP_VALUES = 20
OTHERS = "(others)"
# Names the dead letter a record was replayed from; not a dlq_* header, so it survives
# a second dead-lettering and ties the new dead letter to the old one.
REPLAY_OF_HEADER = "replay_of"
READ_TIMEOUT_S = 30.0
# How long one replayed record may wait for the broker's acknowledgement. aiokafka retries a
# send for as long as the broker is away, so without a bound a replay would wait for its return.
REPLAY_SEND_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class DeadLetter:
    """One record of a ``<topic>.dlq``, as the consumer loop wrote it."""

    dlq_topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes | None], ...]
    timestamp_ms: int

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name and value is not None:
                return value.decode("utf-8", "replace")
        return None

    @property
    def ref(self) -> str:
        """``<partition>:<offset>`` within its DLQ topic: how replays are recorded."""
        return f"{self.partition}:{self.offset}"

    @property
    def identity(self) -> dict[str, str | None]:
        """What tells this dead letter from another at its position, should the DLQ topic
        be deleted and created again (offsets start at 0 again): which consumer group failed
        on which record, and when. Each ledger record names the dead letter it is about so."""
        return {
            "consumer_group": self.header("dlq_consumer_group"),
            "original_topic": self.original_topic,
            "original_partition": self.header("dlq_original_partition"),
            "original_offset": self.header("dlq_original_offset"),
            "event_id": self.header("ce_id"),
            "failed_at": self.failed_at.isoformat(),
        }

    @property
    def is_failed_replay(self) -> bool:
        """A replayed record refused again: it carries the dead letter it was replayed from."""
        return self.header(REPLAY_OF_HEADER) is not None

    @property
    def original_topic(self) -> str:
        return self.header("dlq_original_topic") or self.dlq_topic.removesuffix(".dlq")

    @property
    def omitted_bytes(self) -> int | None:
        """The original's size when this dead letter only points at it (it did not fit
        the dead-letter topic beside the ``dlq_*`` headers); None when it holds the record."""
        omitted = self.header("dlq_record_omitted")
        return int(omitted) if omitted else None

    @property
    def original_position(self) -> TopicPartition | None:
        partition = self.header("dlq_original_partition")
        return TopicPartition(self.original_topic, int(partition)) if partition else None

    @property
    def event_type(self) -> str:
        return self.header("ce_type") or "unknown"

    @property
    def complaint_id(self) -> str | None:
        subject = self.header("ce_subject")
        if subject:
            return subject
        return self.key.decode("utf-8", "replace") if self.key else None

    @property
    def failed_at(self) -> datetime:
        stamped = self.header("dlq_failed_at")
        if stamped:
            return datetime.fromisoformat(stamped)
        return datetime.fromtimestamp(self.timestamp_ms / 1000, UTC)

    def summary(self, *, ledger_record: dict[str, Any] | None) -> dict[str, Any]:
        """One line about this dead letter; ``ledger_record`` its replay's or dismissal's
        record, if any (when, by whom, why)."""
        action = ledger_action(ledger_record) if ledger_record is not None else None
        record = ledger_record or {}
        return {
            "dlq": f"{self.dlq_topic}@{self.ref}",
            "failed_at": self.failed_at.isoformat(),
            "reason": self.header("dlq_reason") or "unknown",
            "event_type": short_type(self.event_type),
            "complaint_id": self.complaint_id,
            "event_id": self.header("ce_id"),
            "attempts": int(self.header("dlq_attempts") or 0),
            "service": self.header("dlq_service") or self.header("dlq_consumer_group"),
            # A record that failed again after a replay: the dead letter it was replayed from.
            "replay_of": self.header(REPLAY_OF_HEADER),
            "replayed": action == REPLAYED,
            "dismissed": action == DISMISSED,
            **{
                name: record[name]
                for name in LEDGER_RECORD_FIELDS.get(action or "", ())
                if name in record
            },
        }

    def redacted(self, *, ledger_record: dict[str, Any] | None) -> dict[str, Any]:
        """Everything an operator needs to judge the failure; data as field shapes only."""
        return {
            **self.summary(ledger_record=ledger_record),
            "error": self.header("dlq_error"),
            "original": {
                "topic": self.original_topic,
                "partition": self.header("dlq_original_partition"),
                "offset": self.header("dlq_original_offset"),
            },
            "consumer_group": self.header("dlq_consumer_group"),
            "headers": {
                name: value.decode("utf-8", "replace") if value is not None else None
                for name, value in self.headers
                if name.startswith("ce_") or name in ("content-type", REPLAY_OF_HEADER)
            },
            "data_shape": (
                _data_shape(self.value)
                if self.omitted_bytes is None
                else f"<omitted, {self.omitted_bytes} bytes: read from the original offset>"
            ),
        }


@dataclass
class Selection:
    """Which dead letters an operator means; every given criterion must hold."""

    reasons: set[str] = field(default_factory=set)
    event_types: set[str] = field(default_factory=set)
    complaint_ids: set[str] = field(default_factory=set)
    since: datetime | None = None
    until: datetime | None = None

    def matches(self, letter: DeadLetter) -> bool:
        if self.reasons and letter.header("dlq_reason") not in self.reasons:
            return False
        if self.event_types and not (
            {letter.event_type, short_type(letter.event_type)} & self.event_types
        ):
            return False
        if self.complaint_ids and letter.complaint_id not in self.complaint_ids:
            return False
        if self.since is not None and letter.failed_at < self.since:
            return False
        return self.until is None or letter.failed_at < self.until

    @property
    def narrowed(self) -> bool:
        """Whether it names more than topics: a dismissal must not take everything."""
        return bool(
            self.reasons or self.event_types or self.complaint_ids or self.since or self.until
        )


@dataclass(frozen=True)
class Ledger:
    """A DLQ topic's ledger (``<dlq>.replayed``): every record of a replay or dismissal, by
    the position of its dead letter. A position may hold records about several dead letters
    (the DLQ topic deleted and created again), so each is checked against the dead letter."""

    records_by_ref: dict[str, list[dict[str, Any]]]

    def record_for(self, letter: DeadLetter) -> dict[str, Any] | None:
        """The first record about ``letter`` itself (a crash may have written two), if any."""
        records = self.records_by_ref.get(letter.ref, ())
        return next((record for record in records if _is_about(record, letter)), None)


@dataclass(frozen=True)
class ReplayResult:
    replayed: list[DeadLetter]
    already_replayed: list[DeadLetter]
    # Pointers whose original Kafka no longer retains: nothing left to send.
    originals_gone: list[DeadLetter] = field(default_factory=list)
    # Dismissed by an operator: never sent.
    dismissed: list[DeadLetter] = field(default_factory=list)


@dataclass(frozen=True)
class DismissResult:
    dismissed: list[DeadLetter]
    # Replayed or dismissed before: left as they are.
    already_settled: list[DeadLetter]


class ReplayBrokenOff(Exception):
    """The broker did not acknowledge ``letter`` (within ``REPLAY_SEND_TIMEOUT_S``, or it
    refused it): the replay stopped there. ``replayed`` went through and are recorded;
    ``letter`` may have reached its topic unrecorded, so the same replay run again sends it
    again (which the idempotent consumers absorb)."""

    def __init__(self, *, replayed: list[DeadLetter], letter: DeadLetter, cause: str) -> None:
        super().__init__(
            f"the broker did not acknowledge dead letter {letter.dlq_topic}@{letter.ref}: {cause}"
        )
        self.replayed = replayed
        self.letter = letter


def short_type(event_type: str) -> str:
    """``org.complaintdesk.complaint.received.v1`` → ``complaint.received``."""
    return event_type.removeprefix(EVENT_TYPE_PREFIX).rsplit(".v", 1)[0]


def service_dead_letter_topics(settings: ServiceSettings) -> list[str]:
    return [dead_letter_topic(settings.topic(topic.value)) for topic in Topic]


async def read_dead_letters(*, settings: ServiceSettings, dlq_topic: str) -> list[DeadLetter]:
    """Every record of ``dlq_topic``, oldest first per partition."""
    return [
        DeadLetter(
            dlq_topic=dlq_topic,
            partition=record.partition,
            offset=record.offset,
            key=record.key,
            value=record.value,
            headers=tuple(record.headers or ()),
            timestamp_ms=record.timestamp,
        )
        for record in await _read_whole_topic(settings=settings, topic=dlq_topic)
    ]


async def read_ledger(*, settings: ServiceSettings, dlq_topic: str) -> Ledger:
    """``dlq_topic``'s ledger, oldest record first per position."""
    records = await _read_whole_topic(settings=settings, topic=dlq_topic + REPLAYED_SUFFIX)
    records_by_ref: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        if record.key:
            try:
                value = orjson.loads(record.value or b"{}")
            except orjson.JSONDecodeError:
                value = {}
            records_by_ref.setdefault(record.key.decode(), []).append(
                value if isinstance(value, dict) else {}
            )
    return Ledger(records_by_ref=records_by_ref)


async def replayed_refs(*, settings: ServiceSettings, dlq_topic: str) -> set[str]:
    """The positions (``<partition>:<offset>``) of ``dlq_topic`` whose ledger records a
    replay; whether about the dead letter there now, ``Ledger.record_for`` says."""
    ledger = await read_ledger(settings=settings, dlq_topic=dlq_topic)
    return {
        ref
        for ref, records in ledger.records_by_ref.items()
        if any(ledger_action(record) == REPLAYED for record in records)
    }


def ledger_action(record: dict[str, Any]) -> str:
    """``replayed`` or ``dismissed``; a record written before dismissals existed is a replay."""
    return record.get("action", REPLAYED)


def _is_about(record: dict[str, Any], letter: DeadLetter) -> bool:
    """Whether a ledger record was written about ``letter``, not about an earlier dead letter
    at its position (the DLQ topic deleted and created again)."""
    identity = record.get("dead_letter")
    if identity is not None:
        return identity == letter.identity
    # Written before records named their dead letter: the event id and original topic it
    # does name must match, and a replay cannot be about a dead letter written after it.
    if (record.get("event_id"), record.get("original_topic")) != (
        letter.header("ce_id"),
        letter.original_topic,
    ):
        return False
    try:
        replayed_at = datetime.fromisoformat(record["replayed_at"])
    except (KeyError, TypeError, ValueError):
        return True
    return replayed_at.tzinfo is None or replayed_at >= letter.failed_at


async def _with_ledger_records(
    *, settings: ServiceSettings, letters: Sequence[DeadLetter]
) -> list[tuple[DeadLetter, dict[str, Any] | None]]:
    """Each of ``letters`` with its ledger record (None: neither replayed nor dismissed)."""
    ledgers = {
        dlq_topic: await read_ledger(settings=settings, dlq_topic=dlq_topic)
        for dlq_topic in dict.fromkeys(letter.dlq_topic for letter in letters)
    }
    return [(letter, ledgers[letter.dlq_topic].record_for(letter)) for letter in letters]


async def replay(
    *,
    settings: ServiceSettings,
    letters: Sequence[DeadLetter],
    operator: str,
    note: str | None = None,
    dry_run: bool = False,
) -> ReplayResult:
    """Send each dead letter neither replayed nor dismissed yet to its original topic
    (``in_replay_order``), then record it: when, by ``operator``, why (``note``)."""
    replayed: list[DeadLetter] = []
    already: list[DeadLetter] = []
    dismissed: list[DeadLetter] = []
    pending: list[DeadLetter] = []
    for letter, record in await _with_ledger_records(settings=settings, letters=letters):
        if record is None:
            pending.append(letter)
        else:
            (dismissed if ledger_action(record) == DISMISSED else already).append(letter)
    pending = in_replay_order(pending)
    if dry_run or not pending:
        return ReplayResult(
            replayed=pending if dry_run else [], already_replayed=already, dismissed=dismissed
        )
    await _ensure_topics(
        settings=settings, topics={letter.dlq_topic + REPLAYED_SUFFIX for letter in pending}
    )
    producer = AIOKafkaProducer(
        **connection_options(settings),
        acks="all",
        enable_idempotence=True,
        client_id="complaints-dlq",
    )
    await producer.start()
    gone: list[DeadLetter] = []
    try:
        for dead_letter in pending:
            letter = dead_letter
            if letter.omitted_bytes is not None:
                try:
                    original = await read_original(settings=settings, letter=letter)
                except (TimeoutError, KafkaError) as exc:
                    cause = f"its original could not be read: {exc!r}"
                    raise ReplayBrokenOff(replayed=replayed, letter=letter, cause=cause) from exc
                if original is None:
                    gone.append(letter)
                    continue
                letter = original
            try:
                await asyncio.wait_for(
                    _send_replay(
                        producer, letter, dead_letter=dead_letter, operator=operator, note=note
                    ),
                    REPLAY_SEND_TIMEOUT_S,
                )
            except TimeoutError as exc:
                cause = f"no answer within {REPLAY_SEND_TIMEOUT_S:g} s"
                raise ReplayBrokenOff(replayed=replayed, letter=letter, cause=cause) from exc
            except KafkaError as exc:
                raise ReplayBrokenOff(replayed=replayed, letter=letter, cause=repr(exc)) from exc
            replayed.append(letter)
    finally:
        # What it still holds was not acknowledged: the next run sends that letter again.
        with suppress(TimeoutError):
            await asyncio.wait_for(producer.stop(), timeout=PRODUCER_STOP_S)
    return ReplayResult(
        replayed=replayed, already_replayed=already, originals_gone=gone, dismissed=dismissed
    )


async def dismiss(
    *,
    settings: ServiceSettings,
    letters: Sequence[DeadLetter],
    operator: str,
    note: str,
    dry_run: bool = False,
) -> DismissResult:
    """Record each dead letter neither replayed nor dismissed yet as dismissed, by
    ``operator``, why (``note``), sending nothing: one a replay cannot help (a foreign
    producer's record) is then no longer listed, nor ever replayed."""
    pending: list[DeadLetter] = []
    settled: list[DeadLetter] = []
    for letter, record in await _with_ledger_records(settings=settings, letters=letters):
        (pending if record is None else settled).append(letter)
    if dry_run or not pending:
        return DismissResult(dismissed=pending if dry_run else [], already_settled=settled)
    await _ensure_topics(
        settings=settings, topics={letter.dlq_topic + REPLAYED_SUFFIX for letter in pending}
    )
    producer = AIOKafkaProducer(
        **connection_options(settings),
        acks="all",
        enable_idempotence=True,
        client_id="complaints-dlq",
    )
    await producer.start()
    try:
        # Nothing goes to the original topics, so no order to keep: one batch, one wait.
        await asyncio.wait_for(
            _record_dismissals(producer, pending, operator=operator, note=note),
            REPLAY_SEND_TIMEOUT_S,
        )
    finally:
        with suppress(TimeoutError):
            await asyncio.wait_for(producer.stop(), timeout=PRODUCER_STOP_S)
    return DismissResult(dismissed=pending, already_settled=settled)


async def _record_dismissals(
    producer: AIOKafkaProducer, letters: Sequence[DeadLetter], *, operator: str, note: str
) -> None:
    sent = [
        await producer.send(
            letter.dlq_topic + REPLAYED_SUFFIX,
            key=letter.ref.encode(),
            value=orjson.dumps(
                _ledger_record(letter, action=DISMISSED, operator=operator, note=note)
            ),
        )
        for letter in letters
    ]
    await asyncio.gather(*sent)


async def read_original(*, settings: ServiceSettings, letter: DeadLetter) -> DeadLetter | None:
    """``letter`` holding its original record again, read from where it was consumed;
    None when retention has deleted it."""
    position = letter.original_position
    offset = letter.header("dlq_original_offset")
    if position is None or offset is None:
        return None
    consumer = AIOKafkaConsumer(
        **connection_options(settings),
        enable_auto_commit=False,
        client_id="complaints-dlq",
        # The original may exceed the default fetch size of one partition.
        max_partition_fetch_bytes=max(letter.omitted_bytes or 0, 1) + 1024 * 1024,
    )
    await consumer.start()
    try:
        consumer.assign([position])
        start = (await consumer.beginning_offsets([position]))[position]
        end = (await consumer.end_offsets([position]))[position]
        if not start <= int(offset) < end:
            return None
        consumer.seek(position, int(offset))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READ_TIMEOUT_S
        while loop.time() < deadline:
            batches = await consumer.getmany(position, timeout_ms=500)
            for record in batches.get(position, []):
                if record.offset == int(offset):
                    # Its own headers, then the dead letter's (which replay leaves behind).
                    dlq_headers = [item for item in letter.headers if item[0].startswith("dlq_")]
                    return replace(
                        letter,
                        key=record.key,
                        value=record.value,
                        headers=(*(record.headers or ()), *dlq_headers),
                    )
                if record.offset > int(offset):  # compacted away meanwhile
                    return None
        raise TimeoutError(f"could not read {position} at {offset} in {READ_TIMEOUT_S} s")
    finally:
        await consumer.stop()


async def _send_replay(
    producer: AIOKafkaProducer,
    letter: DeadLetter,
    *,
    dead_letter: DeadLetter,
    operator: str,
    note: str | None,
) -> None:
    """``letter`` to its original topic, then the record that ``dead_letter`` was replayed
    (the two differ for a pointer: ``letter`` holds its original record again)."""
    await producer.send_and_wait(
        letter.original_topic, key=letter.key, value=letter.value, headers=_replay_headers(letter)
    )
    await producer.send_and_wait(
        dead_letter.dlq_topic + REPLAYED_SUFFIX,
        key=dead_letter.ref.encode(),
        value=orjson.dumps(
            _ledger_record(dead_letter, action=REPLAYED, operator=operator, note=note)
        ),
    )


def _ledger_record(
    letter: DeadLetter, *, action: str, operator: str, note: str | None
) -> dict[str, Any]:
    """What the ledger keeps of a replay or dismissal: which dead letter, when, who, why."""
    at_field, by_field, note_field = LEDGER_RECORD_FIELDS[action]
    return {
        "action": action,
        "dead_letter": letter.identity,
        # As every record had them before ``dead_letter``: readers of the topic know them.
        "event_id": letter.header("ce_id"),
        "original_topic": letter.original_topic,
        at_field: datetime.now(UTC).isoformat(),
        by_field: operator,
        note_field: note,
    }


def in_replay_order(letters: Sequence[DeadLetter]) -> list[DeadLetter]:
    """``letters`` in the order they were read (oldest first per partition, so a complaint's
    events in the order they happened), but every ``complaint.received`` first: a consumer
    refuses a complaint's other events until it holds the complaint (routing's assignment,
    intake's record), and a received event dead-lettered again after a replay tried too
    early sits behind the events that were refused meanwhile."""
    received = EventType.COMPLAINT_RECEIVED.value
    return sorted(letters, key=lambda letter: letter.event_type != received)


def _replay_headers(letter: DeadLetter) -> list[tuple[str, bytes]]:
    # The original ce_* headers (and so its ce_id) unchanged; the failure stays in the DLQ.
    # For the consumer group that dead-lettered it only: the topic's other readers handled
    # it the first time, and would handle it again (a webhook delivered twice, months on).
    kept = [
        (name, value)
        for name, value in letter.headers
        if not name.startswith("dlq_") and name not in (REPLAY_OF_HEADER, REPLAY_FOR_HEADER)
    ]
    headers = [*kept, (REPLAY_OF_HEADER, f"{letter.dlq_topic}@{letter.ref}".encode())]
    group = letter.header("dlq_consumer_group")
    if group:
        headers.append((REPLAY_FOR_HEADER, group.encode()))
    return headers


def _data_shape(value: bytes | None) -> Any:
    """The data's structure with each value replaced by its type (and length for text)."""
    try:
        data = orjson.loads(value) if value else None
    except orjson.JSONDecodeError:
        return f"<not JSON, {len(value or b'')} bytes>"
    return _shape(data)


def _shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_shape(item) for item in value[:3]] + (["…"] if len(value) > 3 else [])
    if isinstance(value, str):
        return f"<str {len(value)}>"
    if value is None:
        return None
    return f"<{type(value).__name__}>"


async def _read_whole_topic(*, settings: ServiceSettings, topic: str) -> list:
    """Records of ``topic`` from the beginning to its end as of now; none when it is absent."""
    consumer = AIOKafkaConsumer(
        **connection_options(settings),
        enable_auto_commit=False,
        client_id="complaints-dlq",
    )
    await consumer.start()
    try:
        # topics() fetches metadata without keeping it; partitions_for_topic needs it kept.
        await consumer._client.force_metadata_update()
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            return []
        assignment = [TopicPartition(topic, partition) for partition in sorted(partitions)]
        consumer.assign(assignment)
        await consumer.seek_to_beginning(*assignment)
        ends = await consumer.end_offsets(assignment)
        records: list = []
        remaining = {tp for tp in assignment if ends[tp] > 0}
        loop = asyncio.get_running_loop()
        # A long topic takes as long as it takes; only a read that stops moving gives up.
        deadline = loop.time() + READ_TIMEOUT_S
        while remaining:
            if loop.time() > deadline:
                raise TimeoutError(f"reading {topic} made no progress for {READ_TIMEOUT_S} s")
            batches = await consumer.getmany(*remaining, timeout_ms=500)
            for tp, batch in batches.items():
                records.extend(record for record in batch if record.offset < ends[tp])
            if any(batches.values()):
                deadline = loop.time() + READ_TIMEOUT_S
            remaining = {tp for tp in remaining if await consumer.position(tp) < ends[tp]}
        return sorted(records, key=lambda record: (record.partition, record.offset))
    finally:
        await consumer.stop()


async def _ensure_topics(*, settings: ServiceSettings, topics: Iterable[str]) -> None:
    await create_missing_topics(
        settings=settings,
        topics=[dead_letter_ledger_topic(name, settings=settings) for name in sorted(set(topics))],
    )


def _aware(text: str) -> datetime:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise argparse.ArgumentTypeError(f"{text!r} has no UTC offset (e.g. 2026-12-01T08:00Z)")
    return moment


def _named(text: str) -> str:
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text.strip()


def _login_name() -> str:
    """Who runs the tool, as the system knows them (``unknown`` in a container without one)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="complaints-dlq",
        description="List, inspect, replay and dismiss dead letters (docs/operations.md).",
    )
    selection = argparse.ArgumentParser(add_help=False)
    selection.add_argument(
        "--topic",
        action="append",
        choices=[topic.value for topic in Topic],
        help="original topic (repeatable); default: all",
    )
    selection.add_argument("--reason", action="append", default=[], help="dlq_reason")
    selection.add_argument(
        "--event-type", action="append", default=[], help="e.g. complaint.received"
    )
    selection.add_argument("--complaint-id", action="append", default=[])
    selection.add_argument(
        "--since", type=_aware, help="dead-lettered at or after (ISO 8601 with offset)"
    )
    selection.add_argument("--until", type=_aware, help="dead-lettered before")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("list", "one line per dead letter: where, when, why, which event"),
        ("inspect", "each selected dead letter in full, its data redacted to field shapes"),
    ):
        command = commands.add_parser(name, help=help_text, parents=[selection])
        command.add_argument(
            "--include-replayed", action="store_true", help="also dead letters already replayed"
        )
        command.add_argument(
            "--include-dismissed", action="store_true", help="also dead letters dismissed"
        )
        if name == "list":
            command.add_argument(
                "--summary",
                action="store_true",
                help="counts by topic, reason, consumer group and event type instead of lines",
            )
    replay_command = commands.add_parser(
        "replay",
        help="send selected dead letters to their original topic, each at most once",
        parents=[selection],
    )
    replay_command.add_argument(
        "--dry-run", action="store_true", help="show what would be replayed"
    )
    replay_command.add_argument(
        "--operator",
        type=_named,
        default=None,
        help="who replays, recorded with each replay (default: the login name)",
    )
    replay_command.add_argument(
        "--note", type=_named, help="why, recorded with each replay (e.g. a ticket)"
    )
    replay_command.add_argument(
        "--include-failed-replays",
        action="store_true",
        help="also replays refused again (replay_of), once their cause is fixed",
    )
    dismiss_command = commands.add_parser(
        "dismiss",
        help="record selected dead letters as dismissed: no longer listed, never replayed",
        parents=[selection],
    )
    dismiss_command.add_argument(
        "--dry-run", action="store_true", help="show what would be dismissed"
    )
    dismiss_command.add_argument(
        "--operator", type=_named, required=True, help="who dismisses, recorded with each"
    )
    dismiss_command.add_argument(
        "--note", type=_named, required=True, help="why, recorded with each (e.g. a ticket)"
    )
    return parser


async def run_command(argv: Sequence[str], *, settings: ServiceSettings | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    selection = Selection(
        reasons=set(args.reason),
        event_types=set(args.event_type),
        complaint_ids=set(args.complaint_id),
        since=args.since,
        until=args.until,
    )
    if args.command == "dismiss" and not selection.narrowed:
        parser.error(
            "dismiss takes a selection: --reason, --event-type, --complaint-id, --since or --until"
        )
    settings = settings or ServiceSettings()
    topics = [
        dead_letter_topic(settings.topic(topic))
        for topic in (args.topic or [topic.value for topic in Topic])
    ]
    letters: list[tuple[DeadLetter, dict[str, Any] | None]] = []
    for topic in topics:
        ledger = await read_ledger(settings=settings, dlq_topic=topic)
        letters.extend(
            (letter, ledger.record_for(letter))
            for letter in await read_dead_letters(settings=settings, dlq_topic=topic)
            if selection.matches(letter)
        )
    if args.command == "replay":
        return await _run_replay(args, settings=settings, selection=selection, letters=letters)
    if args.command == "dismiss":
        return await _run_dismiss(args, settings=settings, letters=letters)
    shown = [
        (letter, record)
        for letter, record in letters
        if record is None
        or (args.include_replayed if ledger_action(record) == REPLAYED else args.include_dismissed)
    ]
    if args.command == "list" and args.summary:
        _print(summary_counts([letter for letter, _ in shown]))
    else:
        for letter, record in shown:
            _print(
                letter.redacted(ledger_record=record)
                if args.command == "inspect"
                else letter.summary(ledger_record=record)
            )
    print(f"{len(shown)} dead letter(s)", file=sys.stderr)
    return 0


def held_back_because(
    letter: DeadLetter, *, selection: Selection, failed_replays: bool
) -> str | None:
    """Why a replay leaves ``letter`` unless asked for it (None: it sends it). Replaying one
    of ``UNREPLAYABLE_REASONS`` only dead-letters it again; so does replaying a failed
    replay before its cause is fixed, and a run after would send it again, and again."""
    reason = letter.header("dlq_reason") or "unknown"
    if reason in UNREPLAYABLE_REASONS and reason not in selection.reasons:
        return reason
    if letter.is_failed_replay and not failed_replays:
        return FAILED_REPLAY
    return None


def summary_counts(letters: Sequence[DeadLetter]) -> dict[str, Any]:
    """How many dead letters, by DLQ topic, reason, consumer group and event type: the
    ``SUMMARY_TOP_VALUES`` most frequent values of each, the rest summed as ``OTHERS``."""
    return {
        "dead_letters": len(letters),
        "failed_replays": sum(letter.is_failed_replay for letter in letters),
        "by_topic": _top_counts(letter.dlq_topic for letter in letters),
        "by_reason": _top_counts(letter.header("dlq_reason") or "unknown" for letter in letters),
        "by_consumer_group": _top_counts(
            letter.header("dlq_consumer_group") or "unknown" for letter in letters
        ),
        "by_event_type": _top_counts(short_type(letter.event_type) for letter in letters),
    }


def _top_counts(values: Iterable[str]) -> dict[str, int]:
    counts = Counter(values)
    top = dict(counts.most_common(SUMMARY_TOP_VALUES))
    others = counts.total() - sum(top.values())
    return {**top, OTHERS: others} if others else top


async def _run_replay(
    args: argparse.Namespace,
    *,
    settings: ServiceSettings,
    selection: Selection,
    letters: Sequence[tuple[DeadLetter, dict[str, Any] | None]],
) -> int:
    held_back: Counter[str] = Counter()
    sendable: list[DeadLetter] = []
    for letter, record in letters:
        because = None
        if record is None:
            because = held_back_because(
                letter, selection=selection, failed_replays=args.include_failed_replays
            )
        if because is None:
            sendable.append(letter)
        else:
            held_back[because] += 1
    try:
        result = await replay(
            settings=settings,
            letters=sendable,
            operator=args.operator or _login_name(),
            note=args.note,
            dry_run=args.dry_run,
        )
    except ReplayBrokenOff as broken_off:
        for letter in broken_off.replayed:
            _print({"action": "replayed", **letter.summary(ledger_record={"action": REPLAYED})})
        print(
            f"replay broken off: {broken_off}; replayed {len(broken_off.replayed)}. "
            "Run it again once the broker is back: what is recorded is not sent again.",
            file=sys.stderr,
        )
        return 1
    verb = "would replay" if args.dry_run else "replayed"
    for letter in result.replayed:
        record = None if args.dry_run else {"action": REPLAYED}
        _print({"action": verb, **letter.summary(ledger_record=record)})
    for letter in result.originals_gone:
        _print({"action": "original gone", **letter.summary(ledger_record=None)})
    print(
        f"{verb} {len(result.replayed)}, already replayed {len(result.already_replayed)}"
        + (f", dismissed {len(result.dismissed)}" if result.dismissed else "")
        + _held_back_note(held_back)
        + (
            f"; {len(result.originals_gone)} not replayable: too large for the dead-letter"
            " topic, and their originals are past the topic's retention"
            if result.originals_gone
            else ""
        ),
        file=sys.stderr,
    )
    return 1 if result.originals_gone else 0


def _held_back_note(held_back: Counter[str]) -> str:
    notes = [
        f"{count} {because} (replaying cannot help: dismiss them, or --reason {because} to"
        " send them all the same)"
        for because, count in sorted(held_back.items())
        if because != FAILED_REPLAY
    ]
    if held_back[FAILED_REPLAY]:
        notes.append(
            f"{held_back[FAILED_REPLAY]} failed replay(s) (refused again: once the cause is"
            " fixed, --include-failed-replays)"
        )
    return f"; held back {', '.join(notes)}" if notes else ""


async def _run_dismiss(
    args: argparse.Namespace,
    *,
    settings: ServiceSettings,
    letters: Sequence[tuple[DeadLetter, dict[str, Any] | None]],
) -> int:
    try:
        result = await dismiss(
            settings=settings,
            letters=[letter for letter, _ in letters],
            operator=args.operator,
            note=args.note,
            dry_run=args.dry_run,
        )
    except (TimeoutError, KafkaError) as exc:
        print(
            f"dismissal broken off: {exc!r}. Run it again once the broker is back: what is"
            " recorded is left as it is.",
            file=sys.stderr,
        )
        return 1
    verb = "would dismiss" if args.dry_run else "dismissed"
    for letter in result.dismissed:
        record = None if args.dry_run else {"action": DISMISSED}
        _print({"action": verb, **letter.summary(ledger_record=record)})
    print(
        f"{verb} {len(result.dismissed)}, already replayed or dismissed"
        f" {len(result.already_settled)}",
        file=sys.stderr,
    )
    return 0


def _print(document: dict[str, Any]) -> None:
    print(json.dumps(document, ensure_ascii=False))


def main() -> None:
    """CLI entry point (``complaints-dlq``)."""
    sys.exit(asyncio.run(run_command(sys.argv[1:])))


if __name__ == "__main__":
    main()
