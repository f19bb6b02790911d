"""How far the webhooks consumer group has recorded the event topics, as a moment in time.

A complaint's events come from three topics that the consumer reads side by side, so
one topic can be behind another: a routing event can be recorded while the intake
event it reacted to still waits behind other records of its partition. The order
contract (docs/webhooks.md, "Order") is kept by releasing an event's deliveries only
once every event that was in Kafka before it happened has been recorded too.

This job observes, every ``order_watermark_interval_s``: the moment ``M`` (wall clock,
like events' ``time``), then the end offset of every partition of the consumed topics,
then the offsets the group has committed (committed = deliveries stored). Once the
committed offsets reach the end offsets read at ``M``, every record in Kafka before
``M`` is recorded, and ``through`` becomes ``M``: deliveries of events with
``time <= through`` may go. Under steady load the observations queue up and each is
reached in turn, so ``through`` trails the consumer's lag, never waits for an idle
topic. Group offsets make it true across replicas, whichever replica consumed what.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from complaints_shared.events import Topic
from complaints_shared.kafka import connection_options
from complaints_shared.logs import get_logger
from complaints_shared.runtime import Runtime
from complaints_shared.timing import wait_event
from webhooks.metrics import ORDER_WATERMARK_LAG
from webhooks.settings import WebhooksSettings

log = get_logger(__name__)

# Observations not reached yet (at 0.1 s apart, a minute of consumer lag). Beyond, every
# second one is dropped, the oldest kept: the oldest are what the group reaches next, and
# dropping them (a deque's ``maxlen``) froze ``through`` while the group stayed over a
# minute behind, holding every delivery back until it caught up.
MAX_PENDING_OBSERVATIONS = 600

# While Kafka is away: retry after 0.5 s, doubling up to 10 s.
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 10.0

Offsets = dict[TopicPartition, int]


def reached(*, ends: Offsets, committed: Offsets, starts: Offsets | None = None) -> bool:
    """Has the group committed every partition up to these end offsets? Records before a
    partition's log start (``starts``: deleted by retention, say) are nothing to wait for:
    a partition whose every record is gone is reached without a commit, which its consumer,
    fetching nothing there, would never make."""
    starts = starts or {}
    return all(max(committed.get(tp, -1), starts.get(tp, 0)) >= end for tp, end in ends.items())


class ConsumedWatermark:
    """``through``: every event in Kafka before this moment has its deliveries recorded."""

    def __init__(self, *, settings: WebhooksSettings, on_advance: Callable[[], None]) -> None:
        self._settings = settings
        self._on_advance = on_advance
        self._topics = [settings.topic(topic.value) for topic in Topic]
        self._observations: deque[tuple[datetime, Offsets]] = deque()
        self.through: datetime | None = None

    def advance(
        self,
        *,
        ends_at: datetime,
        ends: Offsets,
        committed: Offsets,
        starts: Offsets | None = None,
    ) -> None:
        """Queue the observation (``ends`` read at ``ends_at``), then take every one reached
        (``reached``: by the offsets ``committed``, or the log ``starts`` read since)."""
        self._observations.append((ends_at, ends))
        if len(self._observations) > MAX_PENDING_OBSERVATIONS:
            thinned = list(self._observations)[::2]
            if thinned[-1] is not self._observations[-1]:
                thinned.append(self._observations[-1])
            self._observations = deque(thinned)
        newest: datetime | None = None
        # End offsets only grow, so the observations are reached oldest first.
        while self._observations and reached(
            ends=self._observations[0][1], committed=committed, starts=starts
        ):
            newest = self._observations.popleft()[0]
        if newest is not None:
            self.through = newest
            self._on_advance()

    async def run_watermark(self, runtime: Runtime) -> None:
        """The background job: observe until the service stops (Kafka away: keep trying)."""
        while not runtime.topics_ready.is_set():
            if await wait_event(runtime.stopping, timeout_s=0.5):
                return
        interval_s = self._settings.order_watermark_interval_s
        pause_s = interval_s
        admin: AIOKafkaAdminClient | None = None
        offsets: AIOKafkaConsumer | None = None
        try:
            while not runtime.stopping.is_set():
                try:
                    async with asyncio.timeout(self._settings.kafka_request_timeout_s):
                        if admin is None or offsets is None:
                            admin, offsets = await self._connect()
                        await self._observe(admin, offsets)
                    pause_s = interval_s
                except Exception as exc:  # broker away: reconnect, backing off, and observe again
                    pause_s = min(max(pause_s * 2, RETRY_FIRST_S), RETRY_MAX_S)
                    log.warning("webhook_watermark_unobserved", error=repr(exc), retry_in_s=pause_s)
                    await _close(admin, offsets)
                    admin = offsets = None
                if self.through is not None:
                    lag_s = (datetime.now(UTC) - self.through).total_seconds()
                    ORDER_WATERMARK_LAG.set(max(lag_s, 0.0))
                await wait_event(runtime.stopping, timeout_s=pause_s)
        finally:
            await _close(admin, offsets)

    async def _connect(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        options = connection_options(self._settings)
        admin = AIOKafkaAdminClient(**options)
        # No group: it only reads end offsets and never joins the service's group.
        offsets = AIOKafkaConsumer(**options, enable_auto_commit=False)
        try:
            await admin.start()
            await offsets.start()
        except BaseException:
            await _close(admin, offsets)
            raise
        return admin, offsets

    async def _observe(self, admin: AIOKafkaAdminClient, offsets: AIOKafkaConsumer) -> None:
        ends_at = datetime.now(UTC)  # taken before the end offsets are read
        described = await admin.describe_topics(self._topics)
        missing = [topic["topic"] for topic in described if topic["error_code"]]
        if missing or len(described) != len(self._topics):
            raise RuntimeError(f"topics not described: {missing or self._topics}")
        partitions = [
            TopicPartition(topic["topic"], partition["partition"])
            for topic in described
            for partition in topic["partitions"]
        ]
        ends = await offsets.end_offsets(partitions)
        group = await admin.list_consumer_group_offsets(self._settings.consumer_group())
        committed = {tp: position.offset for tp, position in group.items()}
        starts = await offsets.beginning_offsets(partitions)
        self.advance(ends_at=ends_at, ends=ends, committed=committed, starts=starts)


async def _close(admin: AIOKafkaAdminClient | None, offsets: AIOKafkaConsumer | None) -> None:
    for client in (offsets, admin):
        if client is None:
            continue
        try:
            await (client.stop() if isinstance(client, AIOKafkaConsumer) else client.close())
        except Exception as exc:
            log.warning("webhook_watermark_close_failed", error=repr(exc))
