"""Kafka event handlers of intake, one per consumed event type."""

from __future__ import annotations

from complaints_shared.envelope import CloudEvent
from complaints_shared.events import ComplaintAssigned, EventType, FollowupCompleted
from complaints_shared.kafka import EventHandler
from complaints_shared.runtime import Runtime

from intake import store


def build_handlers(runtime: Runtime) -> dict[EventType, EventHandler]:
    async def on_complaint_assigned(event: CloudEvent, data: ComplaintAssigned) -> None:
        await store.apply_assignment(
            db=runtime.db, settings=runtime.settings, event=event, data=data
        )

    async def on_followup_completed(event: CloudEvent, data: FollowupCompleted) -> None:
        await store.apply_followup_outcome(
            db=runtime.db, settings=runtime.settings, event=event, data=data
        )
        runtime.relay.notify()

    return {
        EventType.COMPLAINT_ASSIGNED: on_complaint_assigned,
        EventType.FOLLOWUP_COMPLETED: on_followup_completed,
    }
