"""Kafka event handlers of webhooks: every catalogue event becomes deliveries.

One handler serves every event type: it finds the organisation's subscriptions
that want the event and records one delivery per subscription before the
consumer commits the offset. Delivery ids derive from (subscription, event), so
a redelivered event records nothing twice. The dispatcher is woken at once.
"""

from __future__ import annotations

import itertools
from datetime import timedelta

from complaints_shared.envelope import CloudEvent
from complaints_shared.events import EventData, EventType
from complaints_shared.kafka import EventHandler
from complaints_shared.logs import get_logger
from complaints_shared.runtime import Runtime
from webhooks import store
from webhooks.scheduler import Dispatcher
from webhooks.signing import structured_body

log = get_logger(__name__)


def order_key(event: CloudEvent, *, arrival: int) -> str:
    """Sorts a complaint's deliveries by event time, then by the order they were consumed."""
    micros = int(event.time.timestamp() * 1_000_000)
    return f"{micros:017d}.{arrival:012d}"


def build_handlers(runtime: Runtime, *, dispatcher: Dispatcher) -> dict[EventType, EventHandler]:
    arrivals = itertools.count()
    settle = timedelta(seconds=runtime.settings.order_settle_s)  # type: ignore[attr-defined]

    async def record(event: CloudEvent, data: EventData) -> None:
        subscriptions = await store.subscriptions_for_event(
            db=runtime.db, org=data.org, branch=data.branch, event_type=event.type
        )
        if not subscriptions:
            return
        now = runtime.clock.now()
        body = structured_body(event)
        key = order_key(event, arrival=next(arrivals))
        deliveries = [
            store.new_delivery(
                delivery_id=store.delivery_id(
                    subscription_id=subscription["_id"], event_id=event.id
                ),
                subscription=subscription,
                org=data.org,
                branch=data.branch,
                event_id=event.id,
                event_type=event.type,
                complaint_id=data.complaint_id,
                body=body,
                order_key=key,
                now=now,
                due_at=now + settle,
            )
            for subscription in subscriptions
        ]
        recorded = await store.insert_deliveries(db=runtime.db, deliveries=deliveries)
        if recorded:
            dispatcher.notify()
            log.info("webhook_deliveries_recorded", count=recorded)

    return dict.fromkeys(EventType, record)
