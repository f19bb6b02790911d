"""Integration: two routing replicas on one database never double-assign or double-fire."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from datetime import timedelta

import pytest

from complaints_shared.clock import ManualClock
from complaints_shared.events import EventType
from routing.main import create_app as create_routing_app
from tests.support.events import received, resolved
from tests.support.http import token
from tests.support.kafka import intake_producer, of_type, routing_events
from tests.support.routing import FAST_TIMERS, MONDAY_10_SHANGHAI, routing_db
from tests.support.system import System, SystemFactory
from tests.support.waits import NotYet, eventually

pytestmark = pytest.mark.integration

CAPACITY = 3
COMPLAINTS = 8


async def _both_consuming(system: System, extra_app) -> bool:
    runtimes = [system.routing_app.state.runtime, extra_app.state.runtime]
    return all(runtime.consumer.assigned.is_set() for runtime in runtimes)


async def _states(system: System, ids: list[str]) -> dict[str, dict]:
    cursor = routing_db(system).assignments.find({"_id": {"$in": ids}})
    return {doc["_id"]: doc async for doc in cursor}


async def _settled(system: System, ids: list[str], open_wanted: int) -> dict | None:
    """The assignments once every complaint is routed and ``open_wanted`` are with an owner."""
    states = await _states(system, ids)
    if len(states) < len(ids) or any(doc.get("outbox") for doc in states.values()):
        return None
    open_ones = [doc for doc in states.values() if doc["status"] == "open"]
    return states if len(open_ones) == open_wanted else None


async def test_two_replicas_never_double_assign_overfill_lose_a_decrement_or_double_fire(
    system_factory: SystemFactory,
) -> None:
    clock = ManualClock(MONDAY_10_SHANGHAI)  # the hotel front desk is open around the clock
    system = await system_factory(clock=clock, routing=FAST_TIMERS)
    admin = token(system.routing_settings)
    capped = await system.routing.patch(
        "/v1/directory/staff/hotel-ma", json={"capacity": CAPACITY}, headers=admin
    )
    assert capped.status_code == 200, capped.text
    async with AsyncExitStack() as stack:
        extra = create_routing_app(system.routing_settings, clock=clock)
        await system.serve_extra(stack, extra)
        await eventually(lambda: _both_consuming(system, extra), what="both replicas consuming")
        complaints = [
            received(
                branch="HOTEL",
                category="service_attitude",
                description=f"第{n}号房间投诉前台",
                received_at=clock.now(),
            )
            for n in range(COMPLAINTS)
        ]
        ids = [complaint.complaint_id for complaint in complaints]
        async with intake_producer(system) as publish:
            events = await asyncio.gather(
                *(publish(EventType.COMPLAINT_RECEIVED, c) for c in complaints)
            )
            await asyncio.gather(*(publish.replay(event) for event in events))  # redelivered

            states = await eventually(
                lambda: _settled(system, ids, CAPACITY), timeout_s=20, what="all routed"
            )
            slots = [doc["owner_slot"] for doc in states.values() if doc["status"] == "open"]
            assert sorted(slots) == [f"demo:hotel-ma#{n}" for n in range(CAPACITY)]
            assert (
                sum(doc["status"] == "queued" for doc in states.values()) == COMPLAINTS - CAPACITY
            )

            # Past the end of the business day (a day, for a front desk that never closes):
            # every acknowledgement clock breaches, once.
            clock.advance(timedelta(hours=25))
            await eventually(
                lambda: _all_breached(system, ids), timeout_s=20, what="every clock breached"
            )

            # Resolve whoever holds work, round after round: the queue drains, loads stay capped.
            finished: set[str] = set()
            while len(finished) < COMPLAINTS:
                states = await _states(system, ids)
                holding = [cid for cid, doc in states.items() if doc["status"] == "open"]
                assert 0 < len(holding) <= CAPACITY
                by_id = {c.complaint_id: c for c in complaints}
                await asyncio.gather(
                    *(
                        publish(EventType.COMPLAINT_RESOLVED, resolved(by_id[cid]))
                        for cid in holding
                    )
                )
                finished.update(holding)
                left = COMPLAINTS - len(finished)
                await eventually(
                    lambda left=left: _resolved_and_refilled(system, ids, finished, left),
                    timeout_s=20,
                    what="queue refilled",
                )

    workload = await system.routing.get(
        "/v1/assignments/workload", params={"department": "HOTEL:FRONT"}, headers=admin
    )
    (front,) = workload.json()["departments"]
    assert (front["open"], front["queued"]) == (0, 0)
    assert {o["id"]: o["open_load"] for o in front["owners"]}["hotel-ma"] == 0

    published = await routing_events(
        system,
        until=lambda events: len(of_type(events, EventType.COMPLAINT_SLA_BREACHED)) >= COMPLAINTS,
    )
    for cid in ids:
        assert len(of_type(published, EventType.COMPLAINT_ASSIGNED, cid)) == 1
        assert len(of_type(published, EventType.COMPLAINT_SLA_BREACHED, cid)) == 1
        assert len(of_type(published, EventType.COMPLAINT_ESCALATED, cid)) == 1
    assert len(of_type(published, EventType.COMPLAINT_QUEUED)) == COMPLAINTS - CAPACITY


async def _all_breached(system: System, ids: list[str]) -> bool | NotYet:
    states = await _states(system, ids)
    waiting = [
        cid[:8]
        for cid, doc in states.items()
        if doc["clocks"]["acknowledge"]["breach_count"] < 1 or doc.get("outbox")
    ]
    return not waiting or NotYet(f"not breached or not yet published: {waiting}")


async def _resolved_and_refilled(
    system: System, ids: list[str], finished: set[str], left: int
) -> bool | NotYet:
    states = await _states(system, ids)
    open_now = sum(doc["status"] == "open" for doc in states.values())
    if open_now == min(CAPACITY, left) and all(
        states[cid]["status"] == "resolved" for cid in finished
    ):
        return True
    statuses = {cid[:8]: (doc["status"], doc.get("owner_slot")) for cid, doc in states.items()}
    return NotYet(
        f"{open_now} open, {left} left, finished {sorted(c[:8] for c in finished)}: {statuses}"
    )
