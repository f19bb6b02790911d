"""Kafka plumbing: topic creation, a producer wrapper and a consumer loop.

The consumer handles partitions side by side (each in order) and commits a
partition's offsets only after every handler's effect is stored. Failures are
classified (``complaints_shared.failures``): a transient one (database or broker
away, step-down, timeout, concurrent change) stalls only its partition, retried
with capped, jittered backoff for as long as it lasts; a permanent one (bad
envelope, bad data, a handler's ``Rejected``, or an unexpected error on every
attempt) moves the record to ``<topic>.dlq`` with a reason code and a redacted
error, and the partition goes on with the next record. ``complaints-dlq``
(``complaints_shared.dlq``) lists, inspects and replays dead letters.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from aiokafka import (
    AIOKafkaConsumer,
    AIOKafkaProducer,
    ConsumerRebalanceListener,
    ConsumerRecord,
    TopicPartition,
)
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import (
    CommitFailedError,
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    KafkaError,
    MessageSizeTooLargeError,
    OutOfOrderSequenceNumber,
    ProducerFenced,
    RecordListTooLargeError,
    RecordTooLargeError,
    TopicAlreadyExistsError,
    UnknownProducerId,
    for_code,
)
from aiokafka.helpers import create_ssl_context
from pydantic import ValidationError

from complaints_shared.envelope import CloudEvent, EnvelopeError, from_kafka_record, to_kafka_record
from complaints_shared.events import (
    EVENT_TYPE_PREFIX,
    EventPayload,
    EventType,
    Topic,
    dead_letter_topic,
    parse_data,
)
from complaints_shared.failures import Rejected, is_transient, redacted_error
from complaints_shared.logs import bound_context, get_logger
from complaints_shared.metrics import (
    DEAD_LETTERS,
    EVENTS_CONSUMED,
    HANDLER_RETRIES,
    PARTITION_STALLED,
    event_type_label,
)
from complaints_shared.settings import ServiceSettings
from complaints_shared.timing import wait_event

log = get_logger(__name__)

# Records fetched per poll, and so at most the records redelivered after a crash.
MAX_POLL_RECORDS = 100
_CATALOGUE_TYPES = frozenset(EventType)

EventHandler = Callable[[CloudEvent, EventPayload], Awaitable[None]]
METADATA_MAX_AGE_MS = 10_000
# Deliveries failing with these mean the producer's idempotence state (its producer id and
# per-partition sequence numbers) no longer matches the broker's, typically after a broker
# restart lost a batch in flight. aiokafka neither bumps the epoch nor resets the sequence the
# way the Java client does, so every later batch to that partition fails the same way, forever.
# The only way out is a new producer, which gets a new producer id.
PRODUCER_STATE_LOST = (
    OutOfOrderSequenceNumber,
    UnknownProducerId,
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    ProducerFenced,
)
# How long a discarded producer may take to fail or flush what it still holds.
DISCARDED_PRODUCER_STOP_S = 10.0
# How long the producer may take at shutdown to deliver what it holds. aiokafka retries a
# send for as long as the broker is away, so its stop would wait for the broker's return.
PRODUCER_STOP_S = 5.0
# How long a cancelled consumer (a shutdown past its grace) may take to commit what it
# handled, leave its group and close its connections: aiokafka's stop waits for the group
# coordinator, which may be away.
CANCELLED_CONSUMER_CLOSE_S = 5.0
# Once stopping, how long the consumer waits on the broker for its last commit and again
# for leaving its group. With the broker away both waited on the group coordinator until
# the shutdown's grace ran out and cut the close short (20 s of a 25 s stop, until
# 5 December); the group drops a member that did not leave at its session timeout, and
# what was not committed is redelivered to the idempotent handlers.
STOPPING_BROKER_WAIT_S = 3.0
# Faults of the consumer loop itself in a row (none handled a record, none ran this long
# before it) after which the consumer counts as failing (readiness), and the cap of the
# pause before each restart (0.5 s, doubling).
LOOP_FAULTS_FAILING = 3
LOOP_FAULT_WINDOW_S = 60.0
LOOP_FAULT_BACKOFF_MAX_S = 30.0


async def ensure_topics(*, settings: ServiceSettings, topics: Iterable[str]) -> None:
    """Create the given topics and their dead-letter topics when missing. A dead-letter
    topic keeps its records for ``DEAD_LETTER_RETENTION_MS`` (by default until deleted):
    each is work not done until someone replays it."""
    names = sorted(set(topics))
    await create_missing_topics(
        settings=settings,
        topics=[
            *(_new_topic(name, settings=settings) for name in names),
            *(
                _new_topic(dead_letter_topic(name), settings=settings, kept_for_replay=True)
                for name in names
            ),
        ],
    )


def _new_topic(
    name: str,
    *,
    settings: ServiceSettings,
    partitions: int | None = None,
    kept_for_replay: bool = False,
) -> NewTopic:
    return NewTopic(
        name=name,
        num_partitions=partitions or settings.topic_partitions,
        replication_factor=settings.topic_replication_factor,
        topic_configs=(
            {"retention.ms": str(settings.dead_letter_retention_ms)} if kept_for_replay else {}
        ),
    )


def dead_letter_ledger_topic(name: str, *, settings: ServiceSettings) -> NewTopic:
    """A topic of the dead-letter tool's own (one partition), kept as dead letters are."""
    return _new_topic(name, settings=settings, partitions=1, kept_for_replay=True)


def connection_options(settings: ServiceSettings) -> dict[str, Any]:
    """How each client of a service reaches the brokers: their addresses and the security
    the cluster asks for (``KAFKA_SECURITY_PROTOCOL``, SASL credentials, the brokers' CA).
    Every producer, consumer and admin client is made with these, the dead-letter tool's
    too: until 6 December they all connected in plaintext, and a cluster that asks for
    credentials (a managed one) could not be used."""
    protocol = settings.kafka_security_protocol
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap_servers,
        "security_protocol": protocol,
    }
    if protocol in ("SSL", "SASL_SSL"):
        options["ssl_context"] = create_ssl_context(cafile=settings.kafka_ssl_cafile or None)
    if protocol in ("SASL_PLAINTEXT", "SASL_SSL"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    return options


class TopicsNotCreated(KafkaError):
    """The broker refused to create topics (a replication factor above its brokers, a
    configuration it does not take): the service cannot run on them."""

    retriable = False


async def create_missing_topics(*, settings: ServiceSettings, topics: list[NewTopic]) -> None:
    """Create those of ``topics`` the broker lacks. The broker answers a refusal per topic
    (aiokafka does not raise it): any but "exists already" (another replica was first)
    raises ``TopicsNotCreated`` naming the topic and the broker's reason."""
    admin = AIOKafkaAdminClient(**connection_options(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [topic for topic in topics if topic.name not in existing]
        if not missing:
            return
        try:
            response = await admin.create_topics(missing)
        except TopicAlreadyExistsError:
            return
        refused = [
            f"{answer[0]}: {for_code(answer[1]).__name__}"
            + (f" ({answer[2]})" if len(answer) > 2 and answer[2] else "")
            for answer in response.topic_errors
            if answer[1] not in (0, TopicAlreadyExistsError.errno)
        ]
        if refused:
            raise TopicsNotCreated("the broker refused to create " + "; ".join(refused))
        log.info("topics_created", topics=sorted(topic.name for topic in missing))
    finally:
        await admin.close()


def service_topics(settings: ServiceSettings) -> list[str]:
    return [settings.topic(topic.value) for topic in Topic]


class EventProducer:
    """Idempotent producer that connects lazily, so a service can start while Kafka is down.

    A producer whose idempotence state the broker no longer accepts (``PRODUCER_STATE_LOST``),
    or whose sender task died, is discarded; the next send starts a fresh one. The events it
    failed stay wherever their caller keeps them (an outbox, an uncommitted offset) and are
    sent again by the new producer.
    """

    def __init__(self, *, settings: ServiceSettings) -> None:
        self._settings = settings
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()
        self._stopping: set[asyncio.Task[None]] = set()

    async def _connected(self) -> AIOKafkaProducer:
        if self._producer is not None and _sender_died(self._producer):
            self._discard(self._producer, reason="sender_task_died")
        if self._producer is not None:
            return self._producer
        async with self._lock:
            if self._producer is None:
                producer = AIOKafkaProducer(
                    **connection_options(self._settings),
                    acks="all",
                    enable_idempotence=True,
                    linger_ms=2,
                    # Refresh leadership soon after a broker restart instead of after 5 minutes.
                    metadata_max_age_ms=METADATA_MAX_AGE_MS,
                    request_timeout_ms=int(self._settings.kafka_request_timeout_s * 1000),
                    client_id=self._settings.service_name,
                )
                try:
                    await producer.start()
                except BaseException:
                    await producer.stop()
                    raise
                self._producer = producer
        return self._producer

    def _discard(self, producer: AIOKafkaProducer, *, reason: str) -> None:
        """Stop using ``producer``; the next send connects a new one."""
        if self._producer is not producer:
            return  # already replaced
        self._producer = None
        log.warning("producer_discarded", reason=reason)
        task = asyncio.get_running_loop().create_task(_stop_quietly(producer))
        self._stopping.add(task)
        task.add_done_callback(self._stopping.discard)

    def _watch(self, producer: AIOKafkaProducer, delivery: asyncio.Future) -> asyncio.Future:
        def check(done: asyncio.Future) -> None:
            if not done.cancelled() and isinstance(done.exception(), PRODUCER_STATE_LOST):
                self._discard(producer, reason=type(done.exception()).__name__)

        delivery.add_done_callback(check)
        return delivery

    async def publish(self, event: CloudEvent, *, topic: str) -> None:
        """Send one event and wait for the broker's acknowledgement."""
        key, value, headers = to_kafka_record(event)
        await self.publish_raw(topic=topic, key=key, value=value, headers=headers)

    async def send_in_order(self, records: list[tuple[CloudEvent, str]]) -> list[asyncio.Future]:
        """Queue ``(event, topic)`` records in order, all through one producer; a future per
        record sent resolves when the broker acknowledged it.

        Fewer futures than records when that producer was discarded meanwhile (a delivery
        failed with its state lost, possibly while a send waited for room in a full batch):
        the rest are not sent, as a new producer could deliver them before those still in
        the old one, a later event of a complaint before an earlier one. The caller sends
        them again, after the ones not acknowledged."""
        producer = await self._connected()
        deliveries = []
        for event, topic in records:
            if self._producer is not producer:
                break
            key, value, headers = to_kafka_record(event)
            try:
                delivery = await producer.send(topic, value=value, key=key, headers=headers)
            except Exception:
                if self._producer is not producer:
                    break  # closed while this send waited for room: the rest next round
                raise
            deliveries.append(self._watch(producer, delivery))
        return deliveries

    async def publish_raw(
        self, *, topic: str, key: bytes | None, value: bytes | None, headers: list
    ) -> None:
        producer = await self._connected()
        delivery = await producer.send(topic, value=value, key=key, headers=headers)
        await self._watch(producer, delivery)

    async def is_reachable(self) -> bool:
        producer = await self._connected()
        await producer.client.fetch_all_metadata()
        return True

    async def stop(self) -> None:
        """Deliver what the producer holds, for up to ``PRODUCER_STOP_S``, and close it.
        What it could not deliver was never acknowledged: its events are still in their
        outboxes, and a later start (or another replica) publishes them."""
        producer, self._producer = self._producer, None
        if producer is not None:
            try:
                await asyncio.wait_for(producer.stop(), timeout=PRODUCER_STOP_S)
            except TimeoutError:
                log.warning("producer_stop_cut_short", timeout_s=PRODUCER_STOP_S)
        if self._stopping:
            await asyncio.gather(*self._stopping, return_exceptions=True)


# Set by a dead letter's replay (``dlq``): the consumer group that dead-lettered the record,
# the only one to handle it again.
REPLAY_FOR_HEADER = "replay_for"


def _bounded_if(stopping: bool) -> asyncio.Timeout:
    """``STOPPING_BROKER_WAIT_S`` on a wait for the broker once stopping; none otherwise."""
    return asyncio.timeout(STOPPING_BROKER_WAIT_S if stopping else None)


def _without_version(event_type: str) -> str:
    """``org.complaintdesk.complaint.received`` of ``org.complaintdesk.complaint.received.v1``."""
    name, dot_v, version = event_type.rpartition(".v")
    return name if dot_v and version.isdigit() else event_type


def _sender_died(producer: AIOKafkaProducer) -> bool:
    # aiokafka keeps no public flag for it; a dead sender fails every later send.
    task = producer._sender.sender_task
    return task is not None and task.done()


async def _stop_quietly(producer: AIOKafkaProducer) -> None:
    try:
        await asyncio.wait_for(producer.stop(), timeout=DISCARDED_PRODUCER_STOP_S)
    except Exception as exc:  # it was broken already; its unsent events are retried elsewhere
        log.info("discarded_producer_stop_failed", error=repr(exc))


class DeadLetterReason(StrEnum):
    """Why a record went to ``<topic>.dlq`` (header ``dlq_reason``)."""

    INVALID_ENVELOPE = "invalid_envelope"  # not a CloudEvent of ours: headers, JSON
    INVALID_DATA = "invalid_data"  # the data does not match the event type's contract
    REJECTED = "rejected"  # the handler refused it (``Rejected``): fix the cause, replay
    RETRIES_EXHAUSTED = "retries_exhausted"  # an unexpected error, every attempt failed


class _DeadLetter(Exception):
    def __init__(self, reason: DeadLetterReason, error: str, attempts: int) -> None:
        super().__init__(error)
        self.reason = reason
        self.error = error
        self.attempts = attempts


class HandlerCancelled(Exception):
    """A handler let out a cancellation nobody asked of its task (an await of a future
    another task cancelled): an error of its record, retried and counted as any other."""


async def _cancellation_as_error(handling: Awaitable[None]) -> None:
    """Await ``handling``; a cancellation of it that its task was not asked for is
    ``HandlerCancelled``. Until 6 December it ended the partition's task as if the consumer
    had cancelled it, and the rest of the fetched batch was passed over."""
    try:
        await handling
    except asyncio.CancelledError as exc:
        task = asyncio.current_task()
        if task is None or task.cancelling():
            raise  # the consumer's own: a revoke or a stop
        raise HandlerCancelled("the handler was cancelled from elsewhere") from exc


class EventConsumer:
    """Consumes topics in a consumer group and dispatches to one handler per event type.

    Each partition's records are handled in order by a task of their own while the
    partition is paused in the consumer; the poll loop keeps polling (so the group
    keeps its members) and other partitions keep flowing. A partition is resumed as soon
    as its task has stored every effect; the offsets handled are committed every
    ``consumer_commit_interval_s`` and whenever partitions are given up.
    """

    def __init__(
        self,
        *,
        settings: ServiceSettings,
        topics: list[str],
        handlers: dict[EventType, EventHandler],
        producer: EventProducer,
        group_id: str | None = None,
    ) -> None:
        self._settings = settings
        self._topics = topics
        self._handlers = handlers
        # The handled types without their version: another version of one is work this
        # consumer cannot do, not a type it does not care about (``_decode``).
        self._handled_names = {_without_version(event_type) for event_type in handlers}
        self._producer = producer
        self._group_id = group_id or settings.consumer_group()
        self._consumer: AIOKafkaConsumer | None = None
        self._stopping = asyncio.Event()
        self._in_flight: dict[TopicPartition, asyncio.Task[None]] = {}
        # The next offset of each partition whose records up to it are handled and not yet
        # committed (``_commit_handled``, ``_finish_partitions``).
        self._progress: dict[TopicPartition, int] = {}
        self._committed_at = time.monotonic()
        self.assigned = asyncio.Event()
        # Faults of the loop itself in a row, and when the last one was (``failing``).
        self._faults = 0
        self._last_fault_at = 0.0
        # Broker errors since partitions were last assigned, and when the last one was.
        self._broker_faults = 0
        self._last_broker_fault_at = 0.0

    @property
    def failing(self) -> bool:
        """Whether the loop keeps faulting: ``LOOP_FAULTS_FAILING`` in a row, the last one
        recent (a record handled ends it), or as many broker errors without partitions
        assigned in between (a group the broker refuses). Readiness fails meanwhile."""
        now = time.monotonic()
        faulting = self._faults >= LOOP_FAULTS_FAILING
        refused = self._broker_faults >= LOOP_FAULTS_FAILING
        return (faulting and now - self._last_fault_at < LOOP_FAULT_WINDOW_S) or (
            refused and now - self._last_broker_fault_at < LOOP_FAULT_WINDOW_S
        )

    async def run(self) -> None:
        """Consume until ``stop()``; reconnects while the broker is unavailable.

        Cancelled (a shutdown whose grace ran out), it still closes the consumer, within
        ``CANCELLED_CONSUMER_CLOSE_S``, before the cancellation goes on: otherwise its
        connections would stay open and the group would keep it as a member.
        """
        try:
            backoff_s = 0.5
            while not self._stopping.is_set():
                started = time.monotonic()
                try:
                    await self._start_consumer()
                    started = time.monotonic()
                    await self._consume()
                except KafkaError as exc:
                    # The pause starts again from 0.5 s only after a consumer that ran well:
                    # one the broker fails each time right after it starts (a group it may
                    # not join, say) would otherwise rebalance the group every 0.5 s. Such
                    # errors until partitions are assigned again count (``failing``): a
                    # consumer the broker kept refusing was reported ready while it
                    # consumed nothing.
                    now = time.monotonic()
                    if now - started >= LOOP_FAULT_WINDOW_S:
                        backoff_s = 0.5
                    self._broker_faults += 1
                    self._last_broker_fault_at = now
                    log.warning("consumer_kafka_error", error=repr(exc), retry_in_s=backoff_s)
                    await self._close_consumer()
                    await self._sleep_unless_stopping(backoff_s)
                    backoff_s = min(backoff_s * 2, 10.0)
                except Exception as exc:
                    # A fault of this loop itself (every record's own failure is handled or
                    # dead-lettered): the consumer starts again from the last commit, never
                    # stays dead, after a pause that grows while the faults go on (each
                    # restart rebalances the group), and ``failing`` tells readiness.
                    now = time.monotonic()
                    ran_well = now - started >= LOOP_FAULT_WINDOW_S
                    self._faults = 1 if ran_well else self._faults + 1
                    self._last_fault_at = now
                    delay_s = min(0.5 * 2 ** min(self._faults - 1, 10), LOOP_FAULT_BACKOFF_MAX_S)
                    log.error(
                        "consumer_failed",
                        error=redacted_error(exc),
                        faults_in_a_row=self._faults,
                        retry_in_s=delay_s,
                    )
                    await self._close_consumer()
                    await self._sleep_unless_stopping(delay_s)
            await self._close_consumer()
        except asyncio.CancelledError:
            await self._close_cancelled()
            raise

    async def stop(self) -> None:
        self._stopping.set()

    async def _start_consumer(self) -> None:
        if self._consumer is not None:
            return
        consumer = AIOKafkaConsumer(
            **connection_options(self._settings),
            group_id=self._group_id,
            client_id=self._settings.service_name,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=MAX_POLL_RECORDS,
            metadata_max_age_ms=METADATA_MAX_AGE_MS,
        )
        consumer.subscribe(self._topics, listener=_FinishBeforeRevoke(self))
        try:
            await consumer.start()
        except BaseException:
            await consumer.stop()
            raise
        self._consumer = consumer
        log.info("consumer_started", topics=self._topics, group=self._group_id)

    async def _close_consumer(self) -> None:
        if self._consumer is None:
            return
        consumer = self._consumer
        self.assigned.clear()
        await self._finish_partitions(set(self._in_flight) | set(self._progress))
        self._consumer = None
        try:
            async with _bounded_if(self._stopping.is_set()):
                await consumer.stop()
        except (KafkaError, TimeoutError) as exc:
            log.warning("consumer_stop_failed", error=repr(exc))

    async def _close_cancelled(self) -> None:
        """Give up the partitions' tasks (their records are redelivered), commit what was
        handled and close the consumer, leaving the rest undone after the time limit."""
        for task in self._in_flight.values():
            task.cancel()
        try:
            async with asyncio.timeout(CANCELLED_CONSUMER_CLOSE_S):
                await self._close_consumer()
        except Exception as exc:  # timed out or failed: the group drops us at its session timeout
            log.warning(
                "consumer_close_cut_short", error=repr(exc), timeout_s=CANCELLED_CONSUMER_CLOSE_S
            )

    async def _consume(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while not self._stopping.is_set():
            batches = await self._fetch(consumer)
            if consumer.assignment():
                self.assigned.set()
                self._broker_faults = 0
            for partition, records in batches.items():
                # No more records of this partition until its task has stored their effects.
                consumer.pause(partition)
                self._in_flight[partition] = asyncio.create_task(
                    self._process_partition(partition, records),
                    name=f"consume-{partition.topic}-{partition.partition}",
                )
            finished = {tp for tp, task in self._in_flight.items() if task.done()}
            if finished:
                self._resume(finished)
            await self._commit_handled()

    async def _fetch(self, consumer: AIOKafkaConsumer) -> dict[TopicPartition, list]:
        """Records fetched within 200 ms, or none as soon as a partition's task ends: its
        partition is committed and resumed at once, not when a poll of the others returns
        (a paused partition waited up to the poll's timeout; ~110 ms of received → assigned
        at 15/s, docs/performance.md)."""
        fetch = asyncio.ensure_future(
            consumer.getmany(timeout_ms=200, max_records=MAX_POLL_RECORDS)
        )
        try:
            await asyncio.wait(
                {fetch, *self._in_flight.values()}, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            if not fetch.done():
                # Safe: the consumer hands records over only when its wait returns.
                fetch.cancel()
                await asyncio.wait({fetch})
        return {} if fetch.cancelled() else fetch.result()

    def _resume(self, partitions: set[TopicPartition]) -> None:
        """Resume the partitions whose tasks ended; a task's error ends the loop."""
        consumer = self._consumer
        assert consumer is not None
        tasks = [self._in_flight.pop(tp) for tp in partitions]
        for task in tasks:
            if task.cancelled():
                # Not by this consumer (a revoke or a stop takes its tasks out first), nor
                # a handler's (an error of its record, ``_handle_until_done``): the rest of
                # its batch is unhandled. Resumed, the partition fetched past them and later
                # commits passed over them; a fault of the loop starts again from the
                # offsets handled.
                raise RuntimeError("a partition's handling was cancelled midway")
        assigned = consumer.assignment()
        consumer.resume(*(tp for tp in partitions if tp in assigned))
        for task in tasks:
            if task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    async def _commit_handled(self) -> None:
        """Commit the offsets handled since the last commit, once the interval has passed.

        Every effect up to these offsets is stored: a crash redelivers at most the records
        handled since the last commit, which idempotent handlers absorb. Committing after
        every poll meant a request to the broker per record at ordinary rates.
        """
        consumer = self._consumer
        assert consumer is not None
        if not self._progress:
            return
        if time.monotonic() - self._committed_at < self._settings.consumer_commit_interval_s:
            return
        # A partition no longer assigned is its next owner's to redeliver from its last commit.
        assigned = consumer.assignment()
        offsets = {tp: offset for tp, offset in self._progress.items() if tp in assigned}
        self._committed_at = time.monotonic()
        try:
            # Abandoned at a stop (the broker away, a commit waits for the group
            # coordinator): the progress stays for the stop's own, bounded, commit.
            if offsets and not await self._unless_stopping(consumer.commit(offsets)):
                return
        except CommitFailedError as exc:
            # The group rebalanced meanwhile: the partitions' next owner redelivers.
            log.warning("consumer_commit_failed", error=repr(exc), partitions=len(offsets))
        for tp, offset in list(self._progress.items()):
            # Partitions handled further while the commit was on its way stay due.
            if tp not in assigned or offsets.get(tp) == offset:
                del self._progress[tp]

    async def _unless_stopping(self, awaitable: Awaitable[Any]) -> bool:
        """Wait for ``awaitable`` unless the consumer stops first, then give it up (False).
        A wait on the broker inside the loop (a commit) used to hold a stop until the
        shutdown's grace ran out."""
        task = asyncio.ensure_future(awaitable)
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({task, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not task.done():
                task.cancel()
                await asyncio.wait({task})
        if task.cancelled():
            return False
        task.result()  # its error, if any
        return True

    async def _finish_partitions(self, partitions: set[TopicPartition]) -> None:
        """Let the tasks of ``partitions`` end, then commit what was handled on them."""
        # Taken out before they are cancelled: the loop must not meet them cancelled.
        tasks = [self._in_flight.pop(tp) for tp in partitions if tp in self._in_flight]
        if not self._stopping.is_set():
            # Leaving these partitions (rebalance, broker error): a stalled task stops
            # retrying; its record is redelivered to whoever owns the partition next.
            # When stopping, tasks return by themselves at their next record or retry pause.
            for task in tasks:
                task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        consumer = self._consumer
        offsets = {tp: self._progress.pop(tp) for tp in partitions if tp in self._progress}
        if consumer is None or not offsets:
            return
        try:
            async with _bounded_if(self._stopping.is_set()):
                await consumer.commit(offsets)
        except (KafkaError, TimeoutError) as exc:
            log.warning("consumer_commit_failed", error=repr(exc), partitions=len(offsets))

    async def _process_partition(
        self, partition: TopicPartition, records: list[ConsumerRecord]
    ) -> None:
        """Handle records in order until stopping, noting the next offset to commit."""
        for record in records:
            if self._stopping.is_set():
                return
            if not await self._process(record):
                return
            self._progress[partition] = record.offset + 1
            self._faults = 0  # records are flowing

    async def _process(self, record: ConsumerRecord) -> bool:
        """Handle or dead-letter one record; False when stopping left it unfinished. A
        record replayed from the dead-letter topic for another consumer group (``dlq``
        replay) is passed over: the other services reading the topic handled it the first
        time."""
        replayed_for = _header(record, REPLAY_FOR_HEADER)
        if replayed_for is not None and replayed_for != self._group_id:
            event_type = event_type_label(_header(record, "ce_type"))
            EVENTS_CONSUMED.labels(
                self._settings.service_name, event_type, "replay_for_another_group"
            ).inc()
            return True
        declared = _header(record, "ce_type")
        if declared is not None and self._none_of_ours(declared):
            # Another service's event (follow-up reads routing's topic for its branch
            # announcements alone): passed over undecoded, as it would be decoded. Decoding
            # each cost follow-up as much CPU per complaint as all its own work; a broken one
            # is dead-lettered by the consumers that handle its type, not by every reader.
            EVENTS_CONSUMED.labels(self._settings.service_name, declared, "skipped").inc()
            return True
        try:
            event, data, handler = self._decode(record)
            if handler is None:
                skipped = event_type_label(event.type)
                EVENTS_CONSUMED.labels(self._settings.service_name, skipped, "skipped").inc()
                return True
            with bound_context(
                complaint_id=event.subject, event_id=event.id, event_type=event.type
            ):
                return await self._handle_until_done(record, event, data, handler)
        except _DeadLetter as dead:
            return await self._dead_letter(record, dead)

    def _none_of_ours(self, event_type: str) -> bool:
        """Whether ``event_type`` is a type of the catalogue this consumer handles in no
        version (an unknown type is decoded: it may be a broken envelope of ours)."""
        return (
            event_type in _CATALOGUE_TYPES
            and event_type not in self._handlers
            and _without_version(event_type) not in self._handled_names
        )

    def _decode(
        self, record: ConsumerRecord
    ) -> tuple[CloudEvent, EventPayload | None, EventHandler | None]:
        try:
            event = from_kafka_record(record.value, record.headers)
        except EnvelopeError as exc:
            # Our own message: names headers and positions, never values.
            error = f"EnvelopeError: {exc}"[:500]
            raise _DeadLetter(DeadLetterReason.INVALID_ENVELOPE, error, 0) from exc
        except Exception as exc:  # a record no producer of ours wrote: decoding it fails alike
            raise _DeadLetter(DeadLetterReason.INVALID_ENVELOPE, redacted_error(exc), 0) from exc
        handler = self._handlers.get(event.type)  # type: ignore[call-overload]
        if handler is None:
            name = _without_version(event.type)
            if name in self._handled_names:
                # A producer on a newer (or older) contract: skipped and committed until
                # 5 December, so, say, complaints received as v2 were never routed.
                handled = sorted(str(t) for t in self._handlers if _without_version(t) == name)
                error = f"no handler for {event.type}: this consumer handles {handled}"
                raise _DeadLetter(DeadLetterReason.INVALID_DATA, error, 0)
            if event.type.startswith(EVENT_TYPE_PREFIX) and event.type not in _CATALOGUE_TYPES:
                # A type of ours this release does not know: a newer release's, published
                # while this replica still runs (compose recreates services in no set order).
                # Skipped and committed until 6 December, so the newer replica sharing the
                # group never saw it: kept as a dead letter to replay once this is upgraded.
                error = (
                    f"{event.type} is not in this consumer's contract (a newer release's "
                    "event type?): replay it once this service is upgraded"
                )
                raise _DeadLetter(DeadLetterReason.INVALID_DATA, error, 0)
            return event, None, None
        try:
            return event, parse_data(event.type, event.data), handler
        except ValidationError as exc:
            raise _DeadLetter(DeadLetterReason.INVALID_DATA, redacted_error(exc), 0) from exc

    async def _handle_until_done(
        self, record: ConsumerRecord, event: CloudEvent, data: EventPayload, handler: EventHandler
    ) -> bool:
        """Run the handler until it succeeds, refuses, or keeps failing unexpectedly.

        A transient failure (dependency away, concurrent change) stalls the partition and
        is retried without limit; only unexpected errors count towards the attempt limit.
        """
        settings = self._settings
        service = settings.service_name
        attempts = failed = 0
        stalled_since: float | None = None
        while True:
            attempts += 1
            try:
                await _cancellation_as_error(handler(event, data))
            except Rejected as exc:
                raise _DeadLetter(DeadLetterReason.REJECTED, redacted_error(exc), attempts) from exc
            except Exception as exc:
                transient = is_transient(exc)
                if not transient:
                    failed += 1
                    if failed >= settings.consumer_max_attempts:
                        log.error("handler_failed", attempts=attempts, error=redacted_error(exc))
                        raise _DeadLetter(
                            DeadLetterReason.RETRIES_EXHAUSTED, redacted_error(exc), attempts
                        ) from exc
                if transient and stalled_since is None:
                    stalled_since = time.monotonic()
                    PARTITION_STALLED.labels(service, record.topic, str(record.partition)).set(1)
                delay_s = retry_delay_s(
                    attempt=attempts if transient else failed,
                    first_s=settings.consumer_retry_backoff_s,
                    max_s=settings.consumer_retry_backoff_max_s,
                )
                HANDLER_RETRIES.labels(
                    service, event_type_label(event.type), "transient" if transient else "error"
                ).inc()
                log.warning(
                    "partition_stalled" if transient else "handler_retry",
                    topic=record.topic,
                    partition=record.partition,
                    offset=record.offset,
                    attempt=attempts,
                    stalled_for_s=_elapsed(stalled_since),
                    error=redacted_error(exc),
                    retry_in_s=round(delay_s, 2),
                )
                if await self._sleep_unless_stopping(delay_s):
                    return False
            else:
                EVENTS_CONSUMED.labels(service, event_type_label(event.type), "handled").inc()
                if stalled_since is not None:
                    PARTITION_STALLED.labels(service, record.topic, str(record.partition)).set(0)
                    log.info(
                        "partition_resumed",
                        topic=record.topic,
                        partition=record.partition,
                        attempts=attempts,
                        stalled_for_s=_elapsed(stalled_since),
                    )
                return True

    async def _dead_letter(self, record: ConsumerRecord, dead: _DeadLetter) -> bool:
        """Publish the original record to the DLQ; keep trying until Kafka takes it."""
        headers = [
            # A replayed record that fails again carries only its latest failure.
            *((name, value) for name, value in record.headers or [] if not name.startswith("dlq_")),
            ("dlq_reason", dead.reason.value.encode()),
            ("dlq_error", dead.error.encode("utf-8", "replace")),
            ("dlq_attempts", str(dead.attempts).encode()),
            ("dlq_original_topic", record.topic.encode()),
            ("dlq_original_partition", str(record.partition).encode()),
            ("dlq_original_offset", str(record.offset).encode()),
            ("dlq_consumer_group", self._group_id.encode()),
            ("dlq_service", self._settings.service_name.encode()),
            ("dlq_failed_at", datetime.now(UTC).isoformat().encode()),
        ]
        key, value = record.key, record.value
        if key is None and value is None:
            # A record of neither (a foreign producer's tombstone): the client sends no such
            # record, and its refusal escaped the consumer loop and stopped it. Kept empty.
            value = b""
            headers.append(("dlq_value_was_null", b"true"))
        pointer = False
        delay_s = 0.5
        while True:
            try:
                await self._producer.publish_raw(
                    topic=dead_letter_topic(record.topic),
                    key=key,
                    value=value,
                    headers=headers,
                )
                break
            except _TOO_LARGE as exc:
                if pointer:  # a few hundred bytes refused: the broker's limit is the fault
                    log.error("dead_letter_pointer_refused", error=repr(exc))
                    if await self._sleep_unless_stopping(10.0):
                        return False
                    continue
                # The record fitted its topic, but not beside the dlq_* headers: sending it
                # again would fail forever and stall the partition. The dead letter points
                # at the original instead, which replay reads back while Kafka retains it.
                log.warning("dead_letter_too_large", error=repr(exc), size=_record_bytes(record))
                key, value, headers = _pointer_to(record, headers=headers)
                pointer = True
            except KafkaError as exc:
                log.warning("dead_letter_publish_failed", error=repr(exc), retry_in_s=delay_s)
                if await self._sleep_unless_stopping(delay_s):
                    return False
                delay_s = min(delay_s * 2, 10.0)
        event_type = event_type_label(_header(record, "ce_type"))
        EVENTS_CONSUMED.labels(self._settings.service_name, event_type, "dead_lettered").inc()
        DEAD_LETTERS.labels(self._settings.service_name, record.topic, dead.reason.value).inc()
        log.error(
            "dead_lettered",
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            event_id=_header(record, "ce_id"),
            reason=dead.reason.value,
            attempts=dead.attempts,
            error=dead.error,
        )
        return True

    async def _sleep_unless_stopping(self, delay_s: float) -> bool:
        """Sleep; True when stopping cut it short."""
        await wait_event(self._stopping, timeout_s=delay_s)
        return self._stopping.is_set()


# The producer's own size check and the broker's answers for a record over its limits.
_TOO_LARGE = (MessageSizeTooLargeError, RecordTooLargeError, RecordListTooLargeError)
# Original headers a pointer keeps (the ce_* ones, to list and select it), each at most this.
_POINTER_HEADER_MAX_BYTES = 512


def _record_bytes(record: ConsumerRecord) -> int:
    headers = sum(len(name) + len(value or b"") for name, value in record.headers or [])
    return len(record.key or b"") + len(record.value or b"") + headers


def _pointer_to(
    record: ConsumerRecord, *, headers: list[tuple[str, bytes]]
) -> tuple[bytes | None, bytes, list[tuple[str, bytes]]]:
    """A dead letter for ``record`` without its content: its ``dlq_*`` headers say where the
    original lies (``dlq_original_*``) and ``dlq_record_omitted`` how large it was."""
    kept = [
        (name, value)
        for name, value in headers
        if name.startswith("dlq_")
        or (name.startswith("ce_") and len(value or b"") <= _POINTER_HEADER_MAX_BYTES)
    ]
    key = record.key if record.key is not None and len(record.key) <= 256 else None
    return key, b"", [*kept, ("dlq_record_omitted", str(_record_bytes(record)).encode())]


class _FinishBeforeRevoke(ConsumerRebalanceListener):
    """Partitions leaving this member first finish (or give up) their task and commit."""

    def __init__(self, consumer: EventConsumer) -> None:
        self._consumer = consumer

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self._consumer._finish_partitions(set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        return None


def retry_delay_s(*, attempt: int, first_s: float, max_s: float) -> float:
    """Capped exponential backoff with full jitter in its upper half (spreads replicas)."""
    ceiling = min(max_s, first_s * 2 ** min(attempt - 1, 30))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def _elapsed(since: float | None) -> float:
    return 0.0 if since is None else round(time.monotonic() - since, 1)


def _header(record: ConsumerRecord, name: str) -> str | None:
    """The record's header ``name`` as text (None: absent); bytes that are no UTF-8 replaced."""
    for key, value in record.headers or []:
        if key == name and value is not None:
            return value.decode("utf-8", "replace")
    return None


__all__ = [
    "DeadLetterReason",
    "EventConsumer",
    "EventHandler",
    "EventProducer",
    "TopicPartition",
    "ensure_topics",
    "service_topics",
]
