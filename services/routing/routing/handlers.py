"""Kafka event handlers of routing, one per consumed event type, registered in one place."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from complaints_shared.envelope import CloudEvent
from complaints_shared.events import (
    ComplaintReceived,
    ComplaintReclassified,
    ComplaintReopened,
    ComplaintResolved,
    EventData,
    EventType,
)
from complaints_shared.kafka import EventHandler
from complaints_shared.runtime import Runtime
from routing.assignments import placement, planning, projections, routing_context, unroutable
from routing.assignments.lifecycle import Command
from routing.context_cache import ContextCache


def build_handlers(runtime: Runtime) -> dict[EventType, EventHandler]:
    db, settings, clock = runtime.db, runtime.settings, runtime.clock
    contexts: ContextCache[routing_context.RoutingContext] = ContextCache(
        max_age_s=settings.routing_context_max_age_s,
        version_check_s=settings.routing_directory_check_s,
    )

    async def on_complaint_received(event: CloudEvent, data: ComplaintReceived) -> None:
        try:
            await placement.route_received(
                db=db, settings=settings, complaint=data, now=clock.now(), contexts=contexts
            )
            return
        except planning.NoRoute:
            pass
        try:
            # The cached context may predate a rule another replica added within
            # ``routing_directory_check_s``, and a complaint found unroutable after this
            # replica's sweep saw the change would wait for the next one: judged again on
            # what is stored now before it waits.
            await placement.route_received(
                db=db, settings=settings, complaint=data, now=clock.now()
            )
        except planning.NoRoute as no_route:
            # Not a failure to retry: a state the complaint waits in until a rule covers it.
            await unroutable.enter(
                db=db, settings=settings, complaint=data, no_route=no_route, now=clock.now()
            )

    def clock_event(command: Command, at: Callable[[Any], datetime]) -> EventHandler:
        """Acknowledged, pending customer and resumed move the clocks the same way."""

        async def on_clock_event(event: CloudEvent, data: EventData) -> None:
            await projections.change_clocks(
                db=db,
                settings=settings,
                event=event,
                data=data,
                command=command,
                at=at(data),
                now=clock.now(),
            )

        return on_clock_event

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

        return on_finished

    async def on_complaint_reopened(event: CloudEvent, data: ComplaintReopened) -> None:
        await projections.reopen(db=db, settings=settings, event=event, data=data, now=clock.now())

    async def on_complaint_reclassified(event: CloudEvent, data: ComplaintReclassified) -> None:
        await projections.reclassify(
            db=db, settings=settings, event=event, data=data, now=clock.now()
        )

    return {
        EventType.COMPLAINT_RECEIVED: on_complaint_received,
        EventType.COMPLAINT_ACKNOWLEDGED: clock_event(
            Command.ACKNOWLEDGE, lambda data: data.acknowledged_at
        ),
        EventType.COMPLAINT_PENDING_CUSTOMER: clock_event(
            Command.PAUSE, lambda data: data.paused_at
        ),
        EventType.COMPLAINT_RESUMED: clock_event(Command.RESUME, lambda data: data.resumed_at),
        EventType.COMPLAINT_RESOLVED: on_complaint_resolved,
        EventType.COMPLAINT_REJECTED: finisher(Command.REJECT, lambda data: data.rejected_at),
        EventType.COMPLAINT_WITHDRAWN: finisher(Command.WITHDRAW, lambda data: data.withdrawn_at),
        EventType.COMPLAINT_CLOSED: finisher(Command.CLOSE, lambda data: data.closed_at),
        EventType.COMPLAINT_REOPENED: on_complaint_reopened,
        EventType.COMPLAINT_RECLASSIFIED: on_complaint_reclassified,
    }
