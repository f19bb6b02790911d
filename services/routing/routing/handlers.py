"""Kafka event handlers of routing, one per consumed event type, registered in one place."""

from __future__ import annotations

from complaints_shared.envelope import CloudEvent
from complaints_shared.events import (
    ComplaintAcknowledged,
    ComplaintClosed,
    ComplaintPendingCustomer,
    ComplaintReceived,
    ComplaintRejected,
    ComplaintReopened,
    ComplaintResolved,
    ComplaintResumed,
    ComplaintWithdrawn,
    EventType,
)
from complaints_shared.kafka import EventHandler
from complaints_shared.runtime import Runtime
from routing import lifecycle, store
from routing.models import AssignmentStatus


def build_handlers(runtime: Runtime) -> dict[EventType, EventHandler]:
    db, settings, clock = runtime.db, runtime.settings, runtime.clock

    async def on_complaint_received(event: CloudEvent, data: ComplaintReceived) -> None:
        if await store.route_received(db=db, settings=settings, complaint=data, now=clock.now()):
            runtime.relay.notify()

    async def on_complaint_acknowledged(event: CloudEvent, data: ComplaintAcknowledged) -> None:
        await lifecycle.acknowledge(
            db=db,
            settings=settings,
            event=event,
            complaint_id=data.complaint_id,
            at=data.acknowledged_at,
            now=clock.now(),
        )

    async def on_complaint_pending_customer(
        event: CloudEvent, data: ComplaintPendingCustomer
    ) -> None:
        await lifecycle.pause(
            db=db,
            settings=settings,
            event=event,
            complaint_id=data.complaint_id,
            at=data.paused_at,
            now=clock.now(),
        )

    async def on_complaint_resumed(event: CloudEvent, data: ComplaintResumed) -> None:
        await lifecycle.resume(
            db=db,
            settings=settings,
            event=event,
            complaint_id=data.complaint_id,
            org=data.org,
            branch=data.branch,
            at=data.resumed_at,
            now=clock.now(),
        )
        runtime.relay.notify()

    async def on_complaint_resolved(event: CloudEvent, data: ComplaintResolved) -> None:
        await lifecycle.finish(
            db=db,
            settings=settings,
            event=event,
            complaint_id=data.complaint_id,
            status=AssignmentStatus.RESOLVED,
            at=data.resolved_at,
            now=clock.now(),
            resolved=data,
        )
        runtime.relay.notify()

    async def on_complaint_rejected(event: CloudEvent, data: ComplaintRejected) -> None:
        await lifecycle.finish(
            db=db,
            settings=settings,
            event=event,
            complaint_id=data.complaint_id,
            status=AssignmentStatus.REJECTED,
            at=data.rejected_at,
            now=clock.now(),
        )
        runtime.relay.notify()

    async def on_complaint_withdrawn(event: CloudEvent, data: ComplaintWithdrawn) -> None:
        await lifecycle.finish(
            db=db,
            settings=settings,
            event=event,
            complaint_id=data.complaint_id,
            status=AssignmentStatus.WITHDRAWN,
            at=data.withdrawn_at,
            now=clock.now(),
        )
        runtime.relay.notify()

    async def on_complaint_closed(event: CloudEvent, data: ComplaintClosed) -> None:
        await lifecycle.finish(
            db=db,
            settings=settings,
            event=event,
            complaint_id=data.complaint_id,
            status=AssignmentStatus.CLOSED,
            at=data.closed_at,
            now=clock.now(),
        )
        runtime.relay.notify()

    async def on_complaint_reopened(event: CloudEvent, data: ComplaintReopened) -> None:
        await lifecycle.reopen(db=db, settings=settings, event=event, data=data, now=clock.now())
        runtime.relay.notify()

    return {
        EventType.COMPLAINT_RECEIVED: on_complaint_received,
        EventType.COMPLAINT_ACKNOWLEDGED: on_complaint_acknowledged,
        EventType.COMPLAINT_PENDING_CUSTOMER: on_complaint_pending_customer,
        EventType.COMPLAINT_RESUMED: on_complaint_resumed,
        EventType.COMPLAINT_RESOLVED: on_complaint_resolved,
        EventType.COMPLAINT_REJECTED: on_complaint_rejected,
        EventType.COMPLAINT_WITHDRAWN: on_complaint_withdrawn,
        EventType.COMPLAINT_CLOSED: on_complaint_closed,
        EventType.COMPLAINT_REOPENED: on_complaint_reopened,
    }
