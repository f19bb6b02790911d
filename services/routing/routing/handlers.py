"""Kafka event handlers of routing, one per consumed event type."""

from __future__ import annotations

from complaints_shared.envelope import CloudEvent
from complaints_shared.events import (
    ComplaintClosed,
    ComplaintReceived,
    ComplaintReopened,
    ComplaintResolved,
    EventType,
)
from complaints_shared.kafka import EventHandler
from complaints_shared.runtime import Runtime

from routing import store
from routing.models import AssignmentStatus


def build_handlers(runtime: Runtime) -> dict[EventType, EventHandler]:
    async def on_complaint_received(event: CloudEvent, data: ComplaintReceived) -> None:
        if await store.assign_received(db=runtime.db, settings=runtime.settings, complaint=data):
            runtime.relay.notify()

    async def on_complaint_resolved(event: CloudEvent, data: ComplaintResolved) -> None:
        await store.set_assignment_status(
            db=runtime.db,
            event=event,
            complaint_id=data.complaint_id,
            status=AssignmentStatus.RESOLVED,
        )

    async def on_complaint_reopened(event: CloudEvent, data: ComplaintReopened) -> None:
        await store.set_assignment_status(
            db=runtime.db,
            event=event,
            complaint_id=data.complaint_id,
            status=AssignmentStatus.OPEN,
        )

    async def on_complaint_closed(event: CloudEvent, data: ComplaintClosed) -> None:
        await store.set_assignment_status(
            db=runtime.db,
            event=event,
            complaint_id=data.complaint_id,
            status=AssignmentStatus.CLOSED,
        )

    return {
        EventType.COMPLAINT_RECEIVED: on_complaint_received,
        EventType.COMPLAINT_RESOLVED: on_complaint_resolved,
        EventType.COMPLAINT_REOPENED: on_complaint_reopened,
        EventType.COMPLAINT_CLOSED: on_complaint_closed,
    }
