"""Kafka event handlers of routing, one per consumed event type, registered in one place."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from complaints_shared.envelope import CloudEvent
from complaints_shared.events import (
    ComplaintAcknowledged,
    ComplaintPendingCustomer,
    ComplaintReceived,
    ComplaintReopened,
    ComplaintResolved,
    ComplaintResumed,
    EventData,
    EventType,
)
from complaints_shared.kafka import EventHandler
from complaints_shared.runtime import Runtime
from routing.assignments import placement, planning, projections, routing_context, store, unroutable
from routing.assignments.lifecycle import Command
from routing.context_cache import ContextCache


def build_handlers(runtime: Runtime) -> dict[EventType, EventHandler]:
    db, settings, clock = runtime.db, runtime.settings, runtime.clock
    contexts: ContextCache[routing_context.RoutingContext] = ContextCache(
        max_age_s=settings.routing_context_max_age_s
    )

    async def on_complaint_received(event: CloudEvent, data: ComplaintReceived) -> None:
        try:
            routed = await placement.route_received(
                db=db, settings=settings, complaint=data, now=clock.now(), contexts=contexts
            )
        except planning.NoRoute as no_route:
            # Not a failure to retry: a state the complaint waits in until a rule covers it.
            routed = await unroutable.enter(
                db=db, settings=settings, complaint=data, no_route=no_route, now=clock.now()
            )
        if routed:
            runtime.relay.notify(store.ASSIGNMENTS)

    async def on_complaint_acknowledged(event: CloudEvent, data: ComplaintAcknowledged) -> None:
        await projections.acknowledge(
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
        await projections.pause(
            db=db,
            settings=settings,
            event=event,
            complaint_id=data.complaint_id,
            at=data.paused_at,
            now=clock.now(),
        )

    async def on_complaint_resumed(event: CloudEvent, data: ComplaintResumed) -> None:
        await projections.resume(
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
        await projections.finish(
            db=db,
            settings=settings,
            event=event,
            complaint_id=data.complaint_id,
            command=Command.RESOLVE,
            at=data.resolved_at,
            now=clock.now(),
            resolved=data,
        )
        runtime.relay.notify()

    def finisher(command: Command, finished_at: Callable[[Any], datetime]) -> EventHandler:
        """Rejected, withdrawn and closed all end the assignment the same way."""

        async def on_finished(event: CloudEvent, data: EventData) -> None:
            await projections.finish(
                db=db,
                settings=settings,
                event=event,
                complaint_id=data.complaint_id,
                command=command,
                at=finished_at(data),
                now=clock.now(),
            )
            runtime.relay.notify()

        return on_finished

    async def on_complaint_reopened(event: CloudEvent, data: ComplaintReopened) -> None:
        await projections.reopen(db=db, settings=settings, event=event, data=data, now=clock.now())
        runtime.relay.notify()

    return {
        EventType.COMPLAINT_RECEIVED: on_complaint_received,
        EventType.COMPLAINT_ACKNOWLEDGED: on_complaint_acknowledged,
        EventType.COMPLAINT_PENDING_CUSTOMER: on_complaint_pending_customer,
        EventType.COMPLAINT_RESUMED: on_complaint_resumed,
        EventType.COMPLAINT_RESOLVED: on_complaint_resolved,
        EventType.COMPLAINT_REJECTED: finisher(Command.REJECT, lambda data: data.rejected_at),
        EventType.COMPLAINT_WITHDRAWN: finisher(Command.WITHDRAW, lambda data: data.withdrawn_at),
        EventType.COMPLAINT_CLOSED: finisher(Command.CLOSE, lambda data: data.closed_at),
        EventType.COMPLAINT_REOPENED: on_complaint_reopened,
    }
