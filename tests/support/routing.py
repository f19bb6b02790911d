"""Reading routing's state in tests: assignments, timers and the times they are set at.

Intake's events are produced straight onto the test's intake topic (``support.kafka``),
so each test controls ``received_at`` and the lifecycle events exactly, with a
ManualClock shared by all services to move time instead of sleeping.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from routing.assignments import routing_context
from tests.support.system import System
from tests.support.waits import eventually

# Scheduler settings that make timers fire within a tenth of a second of the clock moving.
FAST_TIMERS = {"scheduler_poll_interval_s": 0.05, "queue_sweep_interval_s": 0.2}

# Monday 23 November 2026, 10:00 in Shanghai (02:00 UTC): the LZ branch is open.
MONDAY_10_SHANGHAI = datetime(2026, 11, 23, 2, 0, tzinfo=UTC)
# Tuesday 24 November 2026, 22:00 in Shanghai: every office is closed.
TUESDAY_22_SHANGHAI = datetime(2026, 11, 24, 14, 0, tzinfo=UTC)


# Organisation acme's Hangzhou shop: a branch, its customer-service department and one agent,
# which no routing rule leads to until a test adds one.
HANGZHOU_BRANCH = {"code": "HZ", "name": "杭州门店"}
HANGZHOU_DEPARTMENT = {
    "branch": "HZ",
    "code": "SVC",
    "name": "客户服务部",
    "kind": "customer_service",
}
HANGZHOU_AGENT = {"id": "hz-li", "branch": "HZ", "department": "SVC", "name": "李娜", "capacity": 5}


async def hangzhou_service_desk(system: System, admin: dict[str, str]) -> None:
    """Create the Hangzhou branch, department and agent through routing's directory API."""
    for path, body in (
        ("/v1/directory/branches", HANGZHOU_BRANCH),
        ("/v1/directory/departments", HANGZHOU_DEPARTMENT),
        ("/v1/directory/staff", HANGZHOU_AGENT),
    ):
        made = await system.routing.post(path, json=body, headers=admin)
        assert made.status_code == 201, made.text


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


async def outbox_drained(system: System, complaint_id: str) -> dict:
    """The assignment once the relay published every pending event."""
    return await assignment_when(
        system, complaint_id, lambda doc: not doc.get("outbox"), what="outbox drained"
    )


class CachedBeforeTheChange:
    """Another replica's routing contexts (``placement.route_received``'s ``contexts``),
    cached before an administrator's change and not renewed yet (for up to
    ``ROUTING_CONTEXT_MAX_AGE_S``)."""

    def __init__(self, context: routing_context.RoutingContext) -> None:
        self._context = context

    async def get(self, **_: object) -> routing_context.RoutingContext:
        return self._context
