"""Helpers shared by the routing tests (this module holds no tests of its own).

Intake's events are produced straight onto the test's intake topic, so each test
controls ``received_at`` and the lifecycle events exactly, with a ManualClock
shared by all services to move time instead of sleeping.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

from complaints_shared.envelope import CloudEvent
from complaints_shared.events import (
    ComplaintReceived,
    ComplaintResolved,
    CustomerContact,
    EventData,
    EventType,
    Topic,
)
from complaints_shared.kafka import EventProducer
from tests.conftest import System
from tests.helpers import events_of, eventually, read_topic

# Scheduler settings that make timers fire within a tenth of a second of the clock moving.
FAST_TIMERS = {"scheduler_poll_interval_s": 0.05, "queue_sweep_interval_s": 0.2}

# Monday 23 November 2026, 10:00 in Shanghai (02:00 UTC): the LZ branch is open.
MONDAY_10_SHANGHAI = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)
# Tuesday 24 November 2026, 22:00 in Shanghai: every office is closed.
TUESDAY_22_SHANGHAI = datetime(2026, 11, 24, 14, 0, tzinfo=UTC)


def received(**overrides: Any) -> ComplaintReceived:
    """A ``complaint.received`` for the demo organisation (LZ billing, normal) unless overridden."""
    complaint_id = overrides.pop("complaint_id", None) or str(uuid.uuid4())
    values: dict[str, Any] = {
        "complaint_id": complaint_id,
        "org": "demo",
        "branch": "LZ",
        "reference": f"T-{complaint_id[:8]}",
        "channel": "phone",
        "category": "billing",
        "severity": "normal",
        "subject": "话费账单有误",
        "description": "本月账单多扣了两百元",
        "customer": CustomerContact(name="马先生", phone="13809310000"),
        "received_at": datetime.now(UTC),
        **overrides,
    }
    return ComplaintReceived(**values)


def base(complaint: ComplaintReceived) -> dict[str, str]:
    return {
        "complaint_id": complaint.complaint_id,
        "org": complaint.org,
        "branch": complaint.branch,
    }


def resolved(complaint: ComplaintReceived, **overrides: Any) -> ComplaintResolved:
    values: dict[str, Any] = {
        **base(complaint),
        "reference": complaint.reference,
        "category": complaint.category,
        "severity": complaint.severity,
        "resolution_number": 1,
        "summary": "已处理并致歉",
        "customer": complaint.customer,
        "resolved_by": "agent-1",
        "resolved_at": datetime.now(UTC),
        **overrides,
    }
    return ComplaintResolved(**values)


class IntakePublisher:
    """Publishes onto the test's intake topic as intake would (``publish``), or replays one."""

    def __init__(self, system: System) -> None:
        self._system = system
        self._producer = EventProducer(settings=system.intake_settings)

    async def __call__(self, event_type: EventType, data: EventData) -> CloudEvent:
        event = CloudEvent.new(event_type=event_type, source="intake", data=data)
        await self.replay(event)
        return event

    async def replay(self, event: CloudEvent) -> None:
        await self._producer.publish(event, topic=self._system.topic(Topic.INTAKE))

    async def stop(self) -> None:
        await self._producer.stop()


@asynccontextmanager
async def intake_producer(system: System) -> AsyncIterator[IntakePublisher]:
    """``await publish(event_type, data)`` onto the test's intake topic."""
    publisher = IntakePublisher(system)
    try:
        yield publisher
    finally:
        await publisher.stop()


def routing_db(system: System):
    return system.mongo[system.routing_settings.database_name()]


async def assignment_when(
    system: System,
    complaint_id: str,
    holds: Callable[[dict], bool] = lambda doc: True,
    *,
    what: str = "assignment",
    timeout_s: float = 30.0,
) -> dict:
    """The assignment document once ``holds`` is true of it."""

    async def probe() -> dict | None:
        document = await routing_db(system).assignments.find_one({"_id": complaint_id})
        return document if document is not None and holds(document) else None

    return await eventually(probe, timeout_s=timeout_s, interval_s=0.05, what=what)


async def routing_events(
    system: System, *, until: Callable[[list[CloudEvent]], bool], timeout_s: float = 15.0
) -> list[CloudEvent]:
    """Every event routing published in this test, read until ``until`` holds."""

    def decoded(records: list) -> list[CloudEvent]:
        return [event for kind in EventType for event in events_of(records, event_type=kind.value)]

    records = await read_topic(
        bootstrap_servers=system.infra.kafka_bootstrap_servers,
        topic=system.topic(Topic.ROUTING),
        until=lambda records: until(decoded(records)),
        timeout_s=timeout_s,
    )
    return decoded(records)


def of_type(events: list[CloudEvent], event_type: EventType, subject: str | None = None) -> list:
    return [
        event
        for event in events
        if event.type == event_type.value and (subject is None or event.subject == subject)
    ]


async def outbox_drained(system: System, complaint_id: str) -> dict:
    """The assignment once the relay published every pending event."""
    return await assignment_when(
        system, complaint_id, lambda doc: not doc.get("outbox"), what="outbox drained"
    )


def at_local(day: datetime, hours: float) -> datetime:
    return day + timedelta(hours=hours)
