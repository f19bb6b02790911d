"""Kafka plumbing: topic creation, a producer wrapper and a consumer loop.

The consumer handles the partitions of a poll side by side (each in order) and
commits the polled offsets only after every handler's effect is stored,
retries a failing handler with exponential backoff, and moves a message that
keeps failing (or cannot be decoded) to ``<topic>.dlq`` with the error in
headers, then goes on with the next message.
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Awaitable, Callable, Iterable
from contextlib import suppress

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError
from pydantic import ValidationError

from complaints_shared.envelope import CloudEvent, EnvelopeError, from_kafka_record, to_kafka_record
from complaints_shared.events import EventData, EventType, Topic, dead_letter_topic, parse_data
from complaints_shared.logs import bound_context, get_logger
from complaints_shared.metrics import EVENTS_CONSUMED, HANDLER_RETRIES
from complaints_shared.settings import ServiceSettings
from complaints_shared.timing import wait_event

log = get_logger(__name__)

# Records fetched per poll, and so at most the records redelivered after a crash.
MAX_POLL_RECORDS = 100

EventHandler = Callable[[CloudEvent, EventData], Awaitable[None]]
METADATA_MAX_AGE_MS = 10_000


async def ensure_topics(*, settings: ServiceSettings, topics: Iterable[str]) -> None:
    """Create the given topics and their dead-letter topics when missing."""
    wanted = set()
    for name in topics:
        wanted.update({name, dead_letter_topic(name)})
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        missing = wanted - set(await admin.list_topics())
        if not missing:
            return
        new_topics = [
            NewTopic(
                name=name,
                num_partitions=settings.topic_partitions,
                replication_factor=settings.topic_replication_factor,
            )
            for name in sorted(missing)
        ]
        with suppress(TopicAlreadyExistsError):  # another replica created them first
            await admin.create_topics(new_topics)
        log.info("topics_created", topics=sorted(missing))
    finally:
        await admin.close()


def service_topics(settings: ServiceSettings) -> list[str]:
    return [settings.topic(topic.value) for topic in Topic]


class EventProducer:
    """Idempotent producer that connects lazily, so a service can start while Kafka is down."""

    def __init__(self, *, settings: ServiceSettings) -> None:
        self._settings = settings
        self._producer: AIOKafkaProducer | None = None
        self._lock = asyncio.Lock()

    async def _connected(self) -> AIOKafkaProducer:
        if self._producer is not None:
            return self._producer
        async with self._lock:
            if self._producer is None:
                producer = AIOKafkaProducer(
                    bootstrap_servers=self._settings.kafka_bootstrap_servers,
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

    async def publish(self, event: CloudEvent, *, topic: str) -> None:
        """Send one event and wait for the broker's acknowledgement."""
        producer = await self._connected()
        key, value, headers = to_kafka_record(event)
        await producer.send_and_wait(topic, value=value, key=key, headers=headers)

    async def send(self, event: CloudEvent, *, topic: str) -> asyncio.Future:
        """Queue one event; the returned future resolves when the broker acknowledged it."""
        producer = await self._connected()
        key, value, headers = to_kafka_record(event)
        return await producer.send(topic, value=value, key=key, headers=headers)

    async def publish_raw(
        self, *, topic: str, key: bytes | None, value: bytes | None, headers: list
    ) -> None:
        producer = await self._connected()
        await producer.send_and_wait(topic, value=value, key=key, headers=headers)

    async def is_reachable(self) -> bool:
        producer = await self._connected()
        await producer.client.fetch_all_metadata()
        return True

    async def stop(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None


class EventConsumer:
    """Consumes topics in a consumer group and dispatches to one handler per event type."""

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
        self._producer = producer
        self._group_id = group_id or settings.consumer_group()
        self._consumer: AIOKafkaConsumer | None = None
        self._stopping = asyncio.Event()
        self.assigned = asyncio.Event()

    async def run(self) -> None:
        """Consume until ``stop()``; reconnects while the broker is unavailable."""
        backoff_s = 0.5
        while not self._stopping.is_set():
            try:
                await self._start_consumer()
                backoff_s = 0.5
                await self._consume()
            except KafkaError as exc:
                log.warning("consumer_kafka_error", error=repr(exc), retry_in_s=backoff_s)
                await self._close_consumer()
                await self._sleep_unless_stopping(backoff_s)
                backoff_s = min(backoff_s * 2, 10.0)
        await self._close_consumer()

    async def stop(self) -> None:
        self._stopping.set()

    async def _start_consumer(self) -> None:
        if self._consumer is not None:
            return
        consumer = AIOKafkaConsumer(
            *self._topics,
            bootstrap_servers=self._settings.kafka_bootstrap_servers,
            group_id=self._group_id,
            client_id=self._settings.service_name,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=MAX_POLL_RECORDS,
            metadata_max_age_ms=METADATA_MAX_AGE_MS,
        )
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
        consumer, self._consumer = self._consumer, None
        self.assigned.clear()
        try:
            await consumer.stop()
        except KafkaError as exc:
            log.warning("consumer_stop_failed", error=repr(exc))

    async def _consume(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        while not self._stopping.is_set():
            batches = await consumer.getmany(timeout_ms=200, max_records=MAX_POLL_RECORDS)
            if consumer.assignment():
                self.assigned.set()
            if not batches:
                continue
            # Partitions are independent (a complaint's events share one), so they run side by
            # side; within a partition records are handled in order.
            progress: dict[TopicPartition, int] = {}
            outcomes = await asyncio.gather(
                *(
                    self._process_partition(partition, records, progress)
                    for partition, records in batches.items()
                ),
                return_exceptions=True,
            )
            if progress:
                # Committed only once every effect up to these offsets is stored; a crash
                # redelivers at most this poll, which the idempotent handlers absorb.
                await consumer.commit(progress)
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome

    async def _process_partition(
        self,
        partition: TopicPartition,
        records: list[ConsumerRecord],
        progress: dict[TopicPartition, int],
    ) -> None:
        """Handle records in order until stopping, noting the next offset to commit."""
        for record in records:
            if self._stopping.is_set():
                return
            await self._process(record)
            progress[partition] = record.offset + 1

    async def _process(self, record: ConsumerRecord) -> None:
        try:
            event = from_kafka_record(record.value, record.headers)
        except EnvelopeError as exc:
            await self._dead_letter(record, event_type="unknown", error=str(exc), attempts=0)
            return
        with bound_context(complaint_id=event.subject, event_id=event.id, event_type=event.type):
            handler = self._handlers.get(event.type)  # type: ignore[call-overload]
            if handler is None:
                EVENTS_CONSUMED.labels(self._settings.service_name, event.type, "skipped").inc()
                return
            try:
                data = parse_data(event.type, event.data)
            except ValidationError as exc:
                await self._dead_letter(record, event_type=event.type, error=str(exc), attempts=0)
                return
            await self._handle_with_retries(record, event, data, handler)

    async def _handle_with_retries(
        self, record: ConsumerRecord, event: CloudEvent, data: EventData, handler: EventHandler
    ) -> None:
        attempts = self._settings.consumer_max_attempts
        delay_s = self._settings.consumer_retry_backoff_s
        for attempt in range(1, attempts + 1):
            try:
                await handler(event, data)
            except Exception as exc:
                if attempt == attempts:
                    log.error("handler_failed", attempts=attempt, error=repr(exc))
                    error = "".join(traceback.format_exception_only(exc)).strip()
                    await self._dead_letter(
                        record, event_type=event.type, error=error, attempts=attempt
                    )
                    return
                HANDLER_RETRIES.labels(self._settings.service_name, event.type).inc()
                log.warning("handler_retry", attempt=attempt, error=repr(exc), delay_s=delay_s)
                await asyncio.sleep(delay_s)
                delay_s *= 2
            else:
                EVENTS_CONSUMED.labels(self._settings.service_name, event.type, "handled").inc()
                return

    async def _dead_letter(
        self, record: ConsumerRecord, *, event_type: str, error: str, attempts: int
    ) -> None:
        """Publish the original record to the DLQ; keep trying until Kafka takes it."""
        headers = [
            *(record.headers or []),
            ("dlq_error", error[:4000].encode("utf-8", "replace")),
            ("dlq_original_topic", record.topic.encode()),
            ("dlq_original_partition", str(record.partition).encode()),
            ("dlq_original_offset", str(record.offset).encode()),
            ("dlq_consumer_group", self._group_id.encode()),
            ("dlq_attempts", str(attempts).encode()),
        ]
        delay_s = 0.5
        while True:
            try:
                await self._producer.publish_raw(
                    topic=dead_letter_topic(record.topic),
                    key=record.key,
                    value=record.value,
                    headers=headers,
                )
                break
            except KafkaError as exc:
                log.warning("dead_letter_publish_failed", error=repr(exc), retry_in_s=delay_s)
                await asyncio.sleep(delay_s)
                delay_s = min(delay_s * 2, 10.0)
        EVENTS_CONSUMED.labels(self._settings.service_name, event_type, "dead_lettered").inc()
        log.error("dead_lettered", topic=record.topic, offset=record.offset, error=error[:500])

    async def _sleep_unless_stopping(self, delay_s: float) -> None:
        await wait_event(self._stopping, timeout_s=delay_s)


__all__ = [
    "EventConsumer",
    "EventHandler",
    "EventProducer",
    "TopicPartition",
    "ensure_topics",
    "service_topics",
]
