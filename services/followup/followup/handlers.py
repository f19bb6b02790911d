"""Kafka event handlers of follow-up, one per consumed event type."""

from __future__ import annotations

from complaints_shared.envelope import CloudEvent
from complaints_shared.events import ComplaintResolved, EventType
from complaints_shared.kafka import EventHandler
from complaints_shared.runtime import Runtime

from followup import store


def build_handlers(runtime: Runtime) -> dict[EventType, EventHandler]:
    async def on_complaint_resolved(event: CloudEvent, data: ComplaintResolved) -> None:
        await store.schedule_checks(db=runtime.db, settings=runtime.settings, resolved=data)

    return {EventType.COMPLAINT_RESOLVED: on_complaint_resolved}
