"""Kafka event handlers of intake, one per consumed event type, registered in one place."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from complaints_shared.envelope import CloudEvent
from complaints_shared.events import EventPayload, EventType
from complaints_shared.kafka import EventHandler
from complaints_shared.runtime import Runtime
from intake import projections

Projection = Callable[..., Awaitable[None]]

PROJECTIONS: dict[EventType, Projection] = {
    EventType.COMPLAINT_ASSIGNED: projections.apply_assigned,
    EventType.COMPLAINT_QUEUED: projections.apply_queued,
    EventType.COMPLAINT_UNROUTABLE: projections.apply_unroutable,
    EventType.COMPLAINT_REASSIGNED: projections.apply_reassigned,
    EventType.COMPLAINT_ESCALATED: projections.apply_escalated,
    EventType.COMPLAINT_SLA_WARNING: projections.apply_sla_warning,
    EventType.COMPLAINT_SLA_BREACHED: projections.apply_sla_breached,
    EventType.COMPLAINT_SLA_STOPPED: projections.apply_sla_stopped,
    EventType.COMPLAINT_SLA_BREACH_WITHDRAWN: projections.apply_sla_breach_withdrawn,
    EventType.COMPLAINT_RESPONSIBILITY_SET: projections.apply_responsibility_set,
    EventType.COMPLAINT_REGULATORY_REPORT_FILED: projections.apply_regulatory_report_filed,
    EventType.BRANCH_UPDATED: projections.apply_branch_updated,
    EventType.DEPARTMENT_UPDATED: projections.apply_department_updated,
    EventType.STAFF_UPDATED: projections.apply_staff_updated,
    EventType.FOLLOWUP_SCHEDULED: projections.record_followup_progress,
    EventType.FOLLOWUP_RESCHEDULED: projections.record_followup_progress,
    EventType.FOLLOWUP_ATTEMPTED: projections.record_followup_progress,
    EventType.FOLLOWUP_CANCELLED: projections.record_followup_progress,
    EventType.FOLLOWUP_COMPLETED: projections.apply_followup_completed,
}


def build_handlers(runtime: Runtime) -> dict[EventType, EventHandler]:
    def handler_for(projection: Projection) -> EventHandler:
        async def handle(event: CloudEvent, data: EventPayload) -> None:
            await projection(
                db=runtime.db,
                settings=runtime.settings,
                event=event,
                data=data,
                now=runtime.clock.now(),
            )

        return handle

    return {event_type: handler_for(projection) for event_type, projection in PROJECTIONS.items()}
