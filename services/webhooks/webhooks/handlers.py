"""Kafka event handlers of webhooks: every catalogue event becomes deliveries.

One handler serves every event type: it finds the organisation's subscriptions
that want the event and records one delivery per subscription before the
consumer commits the offset. A subscription of every branch gets the event as
published; one of a branch gets it without other branches' data
(``webhooks.visibility``), each distinct body rendered once per event. Delivery
ids derive from (subscription, event), so a redelivered event records nothing
twice. The dispatcher is woken at once; it sends a delivery once the
consumed-through moment (``webhooks.watermark``) has passed the event's time,
so an earlier event of the same subject from another topic is recorded first
and goes first.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from complaints_shared.envelope import CloudEvent
from complaints_shared.events import EventData, EventPayload, EventType
from complaints_shared.kafka import EventHandler
from complaints_shared.logs import get_logger
from complaints_shared.mongo import bson_time
from complaints_shared.runtime import Runtime
from webhooks import store
from webhooks.scheduler import Dispatcher
from webhooks.visibility import DeliveredBodies

log = get_logger(__name__)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def order_key(event: CloudEvent, *, recorded_ns: int) -> str:
    """Sorts a subject's deliveries by event time, then by when they were recorded.

    Events of one topic can share a millisecond (``followup.attempted`` and
    ``followup.completed`` of one call); they are consumed in publication order, and the
    recording time keeps that order across restarts and replicas, unlike a counter. The
    event time counts to the millisecond: an event published from the outbox's copy in
    memory has microseconds, one read back from MongoDB not, and a later event of the same
    millisecond sorted before an earlier one that was read back.
    """
    micros = (bson_time(event.time) - EPOCH) // timedelta(microseconds=1)
    return f"{micros:017d}.{recorded_ns:020d}"


class RecordingClock:
    """Wall-clock nanoseconds, strictly increasing within the process."""

    def __init__(self) -> None:
        self._last_ns = 0

    def next_ns(self) -> int:
        self._last_ns = max(time.time_ns(), self._last_ns + 1)
        return self._last_ns


def build_handlers(runtime: Runtime, *, dispatcher: Dispatcher) -> dict[EventType, EventHandler]:
    recording = RecordingClock()

    async def record(event: CloudEvent, data: EventPayload) -> None:
        # Every catalogue event names its organisation and branch (complaint and branch events).
        org: str = data.org  # type: ignore[attr-defined]
        branch: str = data.branch  # type: ignore[attr-defined]
        subscriptions = await store.subscriptions_for_event(
            db=runtime.db, org=org, branch=branch, event_type=event.type
        )
        if not subscriptions:
            return
        now = runtime.clock.now()
        bodies = DeliveredBodies(event, data)
        key = order_key(event, recorded_ns=recording.next_ns())
        complaint_id = data.complaint_id if isinstance(data, EventData) else None
        deliveries = [
            store.new_delivery(
                delivery_id=store.delivery_id(
                    subscription_id=subscription["_id"], event_id=event.id
                ),
                subscription=subscription,
                org=org,
                branch=branch,
                event_id=event.id,
                event_type=event.type,
                event_time=event.time,
                subject=event.subject,
                complaint_id=complaint_id,
                body=bodies.for_subscription(subscription),
                order_key=key,
                now=now,
            )
            for subscription in subscriptions
        ]
        recorded = await store.insert_deliveries(db=runtime.db, deliveries=deliveries)
        if recorded:
            dispatcher.deliveries_recorded(
                subscription_ids=[subscription["_id"] for subscription in subscriptions],
                event_time=event.time,
            )
            log.info("webhook_deliveries_recorded", count=recorded)

    return dict.fromkeys(EventType, record)
