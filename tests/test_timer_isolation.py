"""A timer document that cannot fire is recorded and postponed; the others fire on time."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from complaints_shared.clock import ManualClock
from complaints_shared.events import EventType
from complaints_shared.metrics import TIMER_FAILURES
from tests.support.clock import at, start_clock
from tests.support.events import received, resolved
from tests.support.followup import checks_of, make_due, wait_status
from tests.support.http import agent, token
from tests.support.kafka import intake_producer, publish
from tests.support.routing import FAST_TIMERS, MONDAY_10_SHANGHAI, assignment_when, routing_db
from tests.support.system import SystemFactory
from tests.support.waits import eventually

pytestmark = pytest.mark.integration

MINUTE = timedelta(minutes=1)
# Both schedulers poll every 50 ms here; a healthy document fires within a few polls.
USUAL_FIRING_S = 3.0
RETRY = {"timer_retry_backoff_s": 0.5, "timer_retry_backoff_max_s": 2.0}


def _failures(service: str, timer: str) -> float:
    return TIMER_FAILURES.labels(service, timer)._value.get()


async def _failures_counted(service: str, timer: str, *, above: float) -> None:
    """The metric counts a failure just after the document records it."""
    await eventually(
        lambda: _failures(service, timer) > above, what=f"{service}'s {timer} failure counted"
    )


async def test_a_malformed_assignment_does_not_delay_other_sla_deadlines(
    system_factory: SystemFactory,
) -> None:
    clock = ManualClock(MONDAY_10_SHANGHAI)
    system = await system_factory(clock=clock, routing={**FAST_TIMERS, **RETRY})
    broken, healthy = received(received_at=clock.now()), received(received_at=clock.now())
    async with intake_producer(system) as publish_received:
        await publish_received(EventType.COMPLAINT_RECEIVED, broken)
        await publish_received(EventType.COMPLAINT_RECEIVED, healthy)
    healthy_doc = await assignment_when(system, healthy.complaint_id)
    broken_doc = await assignment_when(system, broken.complaint_id)
    assignments = routing_db(system).assignments
    good_clocks = broken_doc["clocks"]
    # Corrupted (a bad migration, say) and due first: it is claimed before the healthy one.
    await assignments.update_one(
        {"_id": broken.complaint_id},
        {
            "$set": {
                "clocks.acknowledge": {"due_at": "not a date"},
                "next_timer_at": healthy_doc["next_timer_at"] - MINUTE,
            }
        },
    )
    failures_before = _failures("routing", "sla")

    clock.set(healthy_doc["clocks"]["acknowledge"]["warn_at"] + MINUTE)
    started = time.monotonic()
    await assignment_when(
        system,
        healthy.complaint_id,
        lambda d: d["clocks"]["acknowledge"]["warned"],
        what="healthy warning fired",
    )
    assert time.monotonic() - started < USUAL_FIRING_S

    recorded = await assignment_when(
        system, broken.complaint_id, lambda d: d.get("timer_failures", 0) >= 1, what="failure"
    )
    assert "due_at: datetime_from_date_parsing" in recorded["timer_last_error"]
    assert "not a date" not in recorded["timer_last_error"]
    assert recorded["timer_lease_until"] == recorded["timer_retry_at"]  # postponed, not lost
    await _failures_counted("routing", "sla", above=failures_before)

    # Repaired, it fires at its next retry and carries no failure any more.
    await assignments.update_one({"_id": broken.complaint_id}, {"$set": {"clocks": good_clocks}})
    repaired = await assignment_when(
        system,
        broken.complaint_id,
        lambda d: d["clocks"]["acknowledge"]["warned"],
        what="repaired document fired",
    )
    assert "timer_failures" not in repaired and "timer_last_error" not in repaired


async def test_a_malformed_followup_check_does_not_delay_other_checks(
    system_factory: SystemFactory,
) -> None:
    clock = start_clock()
    system = await system_factory(
        clock=clock, followup={"scheduler_poll_interval_s": 0.05, **RETRY}
    )
    admin = token(system.intake_settings)
    broken, healthy = (resolved(resolved_at=clock.now() - timedelta(hours=20)) for _ in range(2))
    await publish(
        system,
        (EventType.COMPLAINT_RESOLVED, broken),
        (EventType.COMPLAINT_RESOLVED, healthy),
    )
    [broken_check] = await checks_of(system, broken.complaint_id, admin)
    [healthy_check] = await checks_of(system, healthy.complaint_id, admin)
    checks = system.mongo[system.followup_settings.database_name()].satisfaction_checks
    healthy_due = at(healthy_check["due_at"])
    await checks.update_one(
        {"_id": broken_check["id"]},
        {"$set": {"history": "corrupted", "due_at": healthy_due - MINUTE}},
    )
    failures_before = _failures("followup", "followup_check")

    clock.set(healthy_due + MINUTE)
    started = time.monotonic()

    async def healthy_is_due() -> bool:
        document = await checks.find_one({"_id": healthy_check["id"]})
        return document["status"] == "due"

    await eventually(healthy_is_due, what="healthy check due")
    assert time.monotonic() - started < USUAL_FIRING_S

    async def broken_recorded() -> dict | None:
        document = await checks.find_one({"_id": broken_check["id"]})
        return document if document.get("timer_failures", 0) >= 1 else None

    recorded = await eventually(broken_recorded, what="failure recorded")
    assert recorded["status"] == "scheduled"
    assert recorded["timer_last_error"].startswith("WriteError code=")
    assert recorded["timer_lease_until"] == recorded["timer_retry_at"]
    await _failures_counted("followup", "followup_check", above=failures_before)


async def test_a_claim_that_cannot_expire_does_not_hold_up_the_other_claims(
    system_factory: SystemFactory,
) -> None:
    """An abandoned claim whose expiry fails is recorded and postponed like a timer: before,
    it stayed first among the expired claims each pass read (a batch of one here), and
    every claim behind it stayed held however long ago its agent walked away."""
    clock = start_clock()
    system = await system_factory(
        clock=clock,
        followup={"scheduler_poll_interval_s": 0.05, "scheduler_batch_size": 1, **RETRY},
    )
    admin = token(system.intake_settings)
    caller = agent(system, "agent-a")
    broken, healthy = (resolved(resolved_at=clock.now() - timedelta(hours=20)) for _ in range(2))
    await publish(
        system,
        (EventType.COMPLAINT_RESOLVED, broken),
        (EventType.COMPLAINT_RESOLVED, healthy),
    )
    [broken_check] = await checks_of(system, broken.complaint_id, admin)
    [healthy_check] = await checks_of(system, healthy.complaint_id, admin)
    for check in (broken_check, healthy_check):
        await make_due(system, clock, check, caller)
        claimed = await system.followup.post(f"/v1/followups/{check['id']}/claim", headers=caller)
        assert claimed.status_code == 200, claimed.text
    checks = system.mongo[system.followup_settings.database_name()].satisfaction_checks
    held = await checks.find_one({"_id": healthy_check["id"]})
    # Corrupted, and abandoned longest ago: each pass reads it first.
    await checks.update_one(
        {"_id": broken_check["id"]},
        {"$set": {"history": "corrupted", "claim_lease_until": held["claim_lease_until"] - MINUTE}},
    )
    failures_before = _failures("followup", "followup_claim")
    clock.advance(timedelta(seconds=system.followup_settings.claim_lease_s + 1))

    await wait_status(system, healthy_check["id"], "due", caller)  # expired all the same

    async def broken_recorded() -> dict | None:
        document = await checks.find_one({"_id": broken_check["id"]})
        return document if document.get("timer_failures", 0) >= 1 else None

    recorded = await eventually(broken_recorded, what="failure recorded")
    assert recorded["status"] == "in_progress"
    assert recorded["claim_lease_until"] == recorded["timer_retry_at"]  # postponed, not lost
    await _failures_counted("followup", "followup_claim", above=failures_before)


async def test_a_backlog_of_timers_that_fire_no_event_drains_without_waiting_per_batch(
    system_factory: SystemFactory,
) -> None:
    """A pass that claimed a full batch whose documents announced nothing (a re-lay, a breach
    with no rung left, clocks stopped meanwhile) waited the poll interval before the next,
    so after an outage such a backlog drained one batch per poll interval, the timers due
    behind it waiting as long."""
    routing = {"scheduler_poll_interval_s": 10.0, "scheduler_batch_size": 2}
    system = await system_factory(routing=routing)
    complaints = [received() for _ in range(6)]
    async with intake_producer(system) as publish_events:
        for complaint in complaints:
            await publish_events(EventType.COMPLAINT_RECEIVED, complaint)
            await assignment_when(system, complaint.complaint_id)
            await publish_events(EventType.COMPLAINT_RESOLVED, resolved(complaint))
    ids = [complaint.complaint_id for complaint in complaints]
    for cid in ids:
        await assignment_when(system, cid, lambda doc: doc["status"] == "resolved")
    assignments = routing_db(system).assignments
    # Due, with nothing left to fire: the clocks were stopped by the resolution.
    await assignments.update_many(
        {"_id": {"$in": ids}}, {"$set": {"next_timer_at": MONDAY_10_SHANGHAI}}
    )

    async def cleared() -> int:
        return await assignments.count_documents(
            {"_id": {"$in": ids}, "next_timer_at": {"$type": "date"}}
        )

    await eventually(
        lambda: _below(cleared, 6), timeout_s=15, what="the first of the backlog looked at"
    )
    started = time.monotonic()
    await eventually(lambda: _below(cleared, 1), timeout_s=30, what="the whole backlog")
    # Three batches one after the other, not one every poll interval (10 s): well under one.
    assert time.monotonic() - started < 5.0


async def _below(count, limit: int) -> bool:
    return await count() < limit
