"""The operator's dead-letter tool: list, inspect (redacted) and replay dead letters.

``complaints-dlq list|inspect|replay`` reads ``<topic>.dlq`` from the beginning (no
consumer group, nothing is committed), selects by topic, reason, event type, complaint
id and dead-letter time, and replays to the original topic with the original key and
headers (so the original ``ce_id``: consumers recognise an event they already applied),
a complaint's ``complaint.received`` before its other events (``in_replay_order``).
Every replay is recorded in ``<topic>.dlq.replayed`` (key ``<partition>:<offset>`` of
the dead letter; when, by whom and why), and a dead letter recorded there is not sent
again: running the same replay twice re-sends nothing. A crash between the send and the
record re-sends that one dead letter on the next run, which the idempotent consumers absorb.

Settings come from the environment like a service's: ``KAFKA_BOOTSTRAP_SERVERS``,
``TOPIC_PREFIX``. See docs/operations.md.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import sys
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
    create_missing_topics,
    dead_letter_ledger_topic,
)
from complaints_shared.settings import ServiceSettings

REPLAYED_SUFFIX = ".replayed"
# What a listed dead letter shows of its replay's record.
REPLAY_RECORD_FIELDS = ("replayed_at", "replayed_by", "replay_note")
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

    def summary(self, *, replayed: bool | dict[str, Any]) -> dict[str, Any]:
        """One line about this dead letter; ``replayed`` its replay's record, if any (when,
        by whom, why), or whether it was replayed."""
        record = replayed if isinstance(replayed, dict) else {}
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
            "replayed": isinstance(replayed, dict) or replayed,
            **{name: record.get(name) for name in REPLAY_RECORD_FIELDS if record},
        }

    def redacted(self, *, replayed: bool | dict[str, Any]) -> dict[str, Any]:
        """Everything an operator needs to judge the failure; data as field shapes only."""
        return {
            **self.summary(replayed=replayed),
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


@dataclass(frozen=True)
class ReplayResult:
    replayed: list[DeadLetter]
    already_replayed: list[DeadLetter]
    # Pointers whose original Kafka no longer retains: nothing left to send.
    originals_gone: list[DeadLetter] = field(default_factory=list)


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


async def replay_records(*, settings: ServiceSettings, dlq_topic: str) -> dict[str, dict]:
    """The replays of ``dlq_topic``'s dead letters (by ``<partition>:<offset>``): when, by
    whom and why (the first, should a crash have sent one twice)."""
    records = await _read_whole_topic(settings=settings, topic=dlq_topic + REPLAYED_SUFFIX)
    replays: dict[str, dict] = {}
    for record in records:
        if record.key:
            try:
                value = orjson.loads(record.value or b"{}")
            except orjson.JSONDecodeError:
                value = {}
            replays.setdefault(record.key.decode(), value if isinstance(value, dict) else {})
    return replays


async def replayed_refs(*, settings: ServiceSettings, dlq_topic: str) -> set[str]:
    """The dead letters of ``dlq_topic`` already replayed (``<partition>:<offset>``)."""
    return set(await replay_records(settings=settings, dlq_topic=dlq_topic))


async def replay(
    *,
    settings: ServiceSettings,
    letters: Sequence[DeadLetter],
    operator: str,
    note: str | None = None,
    dry_run: bool = False,
) -> ReplayResult:
    """Send each dead letter not yet replayed to its original topic (``in_replay_order``),
    then record it: when, by ``operator``, why (``note``)."""
    by_topic: dict[str, list[DeadLetter]] = {}
    for letter in letters:
        by_topic.setdefault(letter.dlq_topic, []).append(letter)
    replayed: list[DeadLetter] = []
    already: list[DeadLetter] = []
    pending: list[DeadLetter] = []
    for dlq_topic, topic_letters in by_topic.items():
        done = await replayed_refs(settings=settings, dlq_topic=dlq_topic)
        for letter in topic_letters:
            (already if letter.ref in done else pending).append(letter)
    pending = in_replay_order(pending)
    if dry_run or not pending:
        return ReplayResult(replayed=pending if dry_run else [], already_replayed=already)
    await _ensure_topics(
        settings=settings, topics={letter.dlq_topic + REPLAYED_SUFFIX for letter in pending}
    )
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        acks="all",
        enable_idempotence=True,
        client_id="complaints-dlq",
    )
    await producer.start()
    gone: list[DeadLetter] = []
    try:
        for letter in pending:
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
                    _send_replay(producer, letter, operator=operator, note=note),
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
    return ReplayResult(replayed=replayed, already_replayed=already, originals_gone=gone)


async def read_original(*, settings: ServiceSettings, letter: DeadLetter) -> DeadLetter | None:
    """``letter`` holding its original record again, read from where it was consumed;
    None when retention has deleted it."""
    position = letter.original_position
    offset = letter.header("dlq_original_offset")
    if position is None or offset is None:
        return None
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
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
    producer: AIOKafkaProducer, letter: DeadLetter, *, operator: str, note: str | None
) -> None:
    """``letter`` to its original topic, then the record that it was replayed."""
    await producer.send_and_wait(
        letter.original_topic, key=letter.key, value=letter.value, headers=_replay_headers(letter)
    )
    await producer.send_and_wait(
        letter.dlq_topic + REPLAYED_SUFFIX,
        key=letter.ref.encode(),
        value=orjson.dumps(
            {
                "event_id": letter.header("ce_id"),
                "original_topic": letter.original_topic,
                "replayed_at": datetime.now(UTC).isoformat(),
                "replayed_by": operator,
                "replay_note": note,
            }
        ),
    )


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
        bootstrap_servers=settings.kafka_bootstrap_servers,
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
        description="List, inspect and replay dead letters (docs/operations.md).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for name, help_text in (
        ("list", "one line per dead letter: where, when, why, which event"),
        ("inspect", "each selected dead letter in full, its data redacted to field shapes"),
        ("replay", "send selected dead letters to their original topic, each at most once"),
    ):
        command = commands.add_parser(name, help=help_text)
        command.add_argument(
            "--topic",
            action="append",
            choices=[topic.value for topic in Topic],
            help="original topic (repeatable); default: all",
        )
        command.add_argument("--reason", action="append", default=[], help="dlq_reason")
        command.add_argument(
            "--event-type", action="append", default=[], help="e.g. complaint.received"
        )
        command.add_argument("--complaint-id", action="append", default=[])
        command.add_argument(
            "--since", type=_aware, help="dead-lettered at or after (ISO 8601 with offset)"
        )
        command.add_argument("--until", type=_aware, help="dead-lettered before")
        command.add_argument(
            "--include-replayed",
            action="store_true",
            help="list/inspect: also dead letters already replayed",
        )
        if name == "replay":
            command.add_argument(
                "--dry-run", action="store_true", help="show what would be replayed"
            )
            command.add_argument(
                "--operator",
                type=_named,
                default=None,
                help="who replays, recorded with each replay (default: the login name)",
            )
            command.add_argument(
                "--note", type=_named, help="why, recorded with each replay (e.g. a ticket)"
            )
    return parser


async def run_command(argv: Sequence[str], *, settings: ServiceSettings | None = None) -> int:
    args = _parser().parse_args(argv)
    settings = settings or ServiceSettings()
    topics = [
        dead_letter_topic(settings.topic(topic))
        for topic in (args.topic or [topic.value for topic in Topic])
    ]
    selection = Selection(
        reasons=set(args.reason),
        event_types=set(args.event_type),
        complaint_ids=set(args.complaint_id),
        since=args.since,
        until=args.until,
    )
    letters: list[DeadLetter] = []
    done: dict[tuple[str, str], dict] = {}
    for topic in topics:
        letters.extend(
            letter
            for letter in await read_dead_letters(settings=settings, dlq_topic=topic)
            if selection.matches(letter)
        )
        replays = await replay_records(settings=settings, dlq_topic=topic)
        done.update(((topic, ref), record) for ref, record in replays.items())
    if args.command == "replay":
        try:
            result = await replay(
                settings=settings,
                letters=letters,
                operator=args.operator or _login_name(),
                note=args.note,
                dry_run=args.dry_run,
            )
        except ReplayBrokenOff as broken_off:
            for letter in broken_off.replayed:
                _print({"action": "replayed", **letter.summary(replayed=True)})
            print(
                f"replay broken off: {broken_off}; replayed {len(broken_off.replayed)}. "
                "Run it again once the broker is back: what is recorded is not sent again.",
                file=sys.stderr,
            )
            return 1
        verb = "would replay" if args.dry_run else "replayed"
        for letter in result.replayed:
            _print({"action": verb, **letter.summary(replayed=not args.dry_run)})
        for letter in result.originals_gone:
            _print({"action": "original gone", **letter.summary(replayed=False)})
        print(
            f"{verb} {len(result.replayed)}, already replayed {len(result.already_replayed)}"
            + (
                f"; {len(result.originals_gone)} not replayable: too large for the dead-letter"
                " topic, and their originals are past the topic's retention"
                if result.originals_gone
                else ""
            ),
            file=sys.stderr,
        )
        return 1 if result.originals_gone else 0
    shown = 0
    for letter in letters:
        replayed = done.get((letter.dlq_topic, letter.ref), False)
        if replayed is not False and not args.include_replayed:
            continue
        shown += 1
        _print(
            letter.redacted(replayed=replayed)
            if args.command == "inspect"
            else letter.summary(replayed=replayed)
        )
    print(f"{shown} dead letter(s)", file=sys.stderr)
    return 0


def _print(document: dict[str, Any]) -> None:
    print(json.dumps(document, ensure_ascii=False))


def main() -> None:
    """CLI entry point (``complaints-dlq``)."""
    sys.exit(asyncio.run(run_command(sys.argv[1:])))


if __name__ == "__main__":
    main()
