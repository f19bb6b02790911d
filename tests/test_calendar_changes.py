"""Integration: a branch's new calendar re-lays the clocks of its open work.

Lanzhou (LZ) opens 09:00–18:00 on weekdays. A high complaint received on Monday
7 December 2026 at 10:00 has three business days to be resolved: Thursday 10:00. A typhoon
closes the branch on Tuesday 8 December; the administrator adds the closed day. Until
6 December the open complaint kept Thursday (laid out once, on the old calendar) while one
received a moment after the change got Friday, and it breached on Thursday.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from zoneinfo import ZoneInfo

import pytest

from complaints_shared.clock import ManualClock
from complaints_shared.events import Severity
from routing.assignments import placement, routing_context
from routing.assignments.scheduler import SlaScheduler
from routing.directory import store as directory_store
from tests.support.clock import at
from tests.support.events import received
from tests.support.http import command, complaint_when, create_complaint, token
from tests.support.routing import (
    FAST_TIMERS,
    CachedBeforeTheChange,
    assignment_when,
    routing_db,
)
from tests.support.system import System, SystemFactory
from tests.support.waits import eventually

pytestmark = pytest.mark.integration

SHANGHAI = ZoneInfo("Asia/Shanghai")
MINUTE = timedelta(minutes=1)
TYPHOON = {"holidays": {"country": "CN", "closed_days": ["2026-12-08"]}}
# A branch's mark goes once every replica's cached calendar is renewed: soon, here.
SETTLES_SOON = {"routing_context_max_age_s": 0.5, "replica_clock_skew_s": 0.1}


def shanghai(day: int, hour: int, minute: int = 0) -> datetime:
    """December 2026, Shanghai wall-clock time, as UTC."""
    return datetime(2026, 12, day, hour, minute, tzinfo=SHANGHAI).astimezone(UTC)


async def _change_branch(system: System, body: dict) -> dict:
    admin = token(system.routing_settings)
    response = await system.routing.patch("/v1/directory/branches/LZ", json=body, headers=admin)
    assert response.status_code == 200, response.text
    return response.json()


async def _complaint(system: System, headers: dict, **overrides: str) -> str:
    complaint_id = (await create_complaint(system, headers, **overrides))["id"]
    await assignment_when(system, complaint_id, lambda d: d.get("clocks"), what="clocks")
    return complaint_id


def _relaid(document: dict) -> bool:
    return document.get("calendar_version") == 1


async def test_a_closure_moves_the_open_deadline_and_the_record_without_a_breach_before_it(
    system_factory: SystemFactory,
) -> None:
    clock = ManualClock(shanghai(7, 10))  # Monday
    system = await system_factory(clock=clock, routing=FAST_TIMERS)
    agent = token(system.intake_settings, branches=["LZ"], roles=("agent",))
    cid = await _complaint(system, agent, severity="high")
    await command(system, f"/v1/complaints/{cid}/acknowledge", {}, agent)
    before = await assignment_when(system, cid, lambda d: d["clocks"]["acknowledge"]["stopped_at"])
    assert before["resolve_due_at"] == shanghai(10, 10)  # Thursday

    branch = await _change_branch(system, TYPHOON)
    assert branch["calendar_version"] == 1
    relaid = await assignment_when(system, cid, _relaid, what="re-laid on the new calendar")
    resolve = relaid["clocks"]["resolve"]
    # Monday's hours and Wednesday's and Thursday's, then the hour that fell on Tuesday.
    assert relaid["resolve_due_at"] == resolve["due_at"] == shanghai(11, 10)  # Friday
    assert resolve["warn_at"] > shanghai(10, 10) and resolve["breach_count"] == 0
    # The acknowledgement's verdict stands (a stopped clock is not re-laid).
    assert relaid["clocks"]["acknowledge"] == before["clocks"]["acknowledge"]
    # The same as a complaint received after the change gets.
    later = await _complaint(system, agent, severity="high", subject="台风后收到的投诉")
    assert (await assignment_when(system, later))["resolve_due_at"] == shanghai(11, 10)
    record = await complaint_when(
        system,
        cid,
        agent,
        lambda c: at(c["resolve_due_at"]) == shanghai(11, 10),
        what="intake's record with the new due time",
        timeout_s=20,
    )
    assert at(record["acknowledge_due_at"]) == before["acknowledge_due_at"]

    clock.set(shanghai(10, 14))  # Thursday afternoon: past the old due time
    warned = await assignment_when(
        system, cid, lambda d: d["clocks"]["resolve"]["warned"], what="the new warning"
    )
    # Warned at 80% of the time on the new calendar (Thursday 13:36), not breached.
    assert warned["clocks"]["resolve"]["breach_count"] == 0 and not warned["escalations"]
    clock.set(shanghai(11, 10) + MINUTE)  # Friday, the new due time
    breached = await assignment_when(
        system, cid, lambda d: d["escalation_level"] >= 1, what="the breach on Friday"
    )
    [escalation] = breached["escalations"]
    assert (escalation["clock"], escalation["breach_due_at"]) == ("resolve", shanghai(11, 10))
    actions = [entry["action"] for entry in breached["history"]]
    assert actions.count("calendar_applied") == 1


async def test_a_timer_due_on_the_old_calendar_does_not_fire_before_the_sweep_re_lays_it(
    system_factory: SystemFactory,
) -> None:
    """The queue sweep re-lays the work (here: not before an hour); the timer pass
    re-lays a complaint behind its branch's calendar before it fires anything."""
    clock = ManualClock(shanghai(7, 10))
    system = await system_factory(
        clock=clock, routing={**FAST_TIMERS, "queue_sweep_interval_s": 3600}
    )
    agent = token(system.intake_settings, branches=["LZ"], roles=("agent",))
    cid = await _complaint(system, agent, severity="high")
    await command(system, f"/v1/complaints/{cid}/acknowledge", {}, agent)
    await assignment_when(system, cid, lambda d: d["clocks"]["acknowledge"]["stopped_at"])
    await _change_branch(system, TYPHOON)

    clock.set(shanghai(10, 10) + MINUTE)  # Thursday: the old warning and due time are past
    relaid = await assignment_when(system, cid, _relaid, what="re-laid by the timer pass")
    assert relaid["resolve_due_at"] == shanghai(11, 10)
    clock.set(shanghai(10, 14))  # past the new warning (Thursday 13:36)
    warned = await assignment_when(
        system, cid, lambda d: d["clocks"]["resolve"]["warned"], what="the new warning"
    )
    assert warned["clocks"]["resolve"]["breach_count"] == 0 and not warned["escalations"]


async def test_a_paused_complaint_keeps_its_remaining_time_for_the_resume(
    system_factory: SystemFactory,
) -> None:
    clock = ManualClock(shanghai(7, 10))
    system = await system_factory(clock=clock, routing=FAST_TIMERS)
    agent = token(system.intake_settings, branches=["LZ"], roles=("agent",))
    cid = await _complaint(system, agent, severity="high")
    await command(system, f"/v1/complaints/{cid}/acknowledge", {}, agent)
    clock.set(shanghai(7, 11))
    await command(system, f"/v1/complaints/{cid}/pending-customer", {"reason": "等照片"}, agent)
    await assignment_when(system, cid, lambda d: d["paused"], what="paused")  # 26 h left

    clock.set(shanghai(7, 11, 30))
    await _change_branch(system, TYPHOON)
    relaid = await assignment_when(system, cid, _relaid, what="re-laid while paused")
    assert relaid["clocks"]["resolve"]["state"] == "paused"

    clock.set(shanghai(7, 12))
    await command(system, f"/v1/complaints/{cid}/resume", {}, agent)
    resumed = await assignment_when(system, cid, lambda d: not d["paused"], what="resumed")
    # 26 business hours from Monday 12:00 without Tuesday: 6 + 9 + 9 + 2, Friday 11:00
    # (laid out on the new calendar from the old one's due time, it was Thursday 11:00).
    assert resumed["resolve_due_at"] == shanghai(11, 11)
    await complaint_when(
        system,
        cid,
        agent,
        lambda c: c["resolve_due_at"] and at(c["resolve_due_at"]) == shanghai(11, 11),
        what="the record's due time after the resume",
        timeout_s=20,
    )


async def test_calendar_basis_clocks_of_a_critical_complaint_stay_where_they_are(
    system_factory: SystemFactory,
) -> None:
    clock = ManualClock(shanghai(7, 10))
    system = await system_factory(clock=clock, routing=FAST_TIMERS)
    agent = token(system.intake_settings, branches=["LZ"], roles=("agent",))
    cid = await _complaint(system, agent, severity="critical")
    before = await assignment_when(system, cid)
    assert {clock["basis"] for clock in before["clocks"].values()} == {"calendar"}

    await _change_branch(system, TYPHOON)
    relaid = await assignment_when(system, cid, _relaid, what="stamped with the new calendar")
    assert relaid["clocks"] == before["clocks"]
    assert relaid["assignment_sequence"] == before["assignment_sequence"]  # nothing announced


async def test_a_change_of_the_branch_name_re_lays_nothing(system_factory: SystemFactory) -> None:
    clock = ManualClock(shanghai(7, 10))
    system = await system_factory(clock=clock, routing=FAST_TIMERS)
    agent = token(system.intake_settings, branches=["LZ"], roles=("agent",))
    cid = await _complaint(system, agent, severity="high")
    before = await assignment_when(system, cid)

    branch = await _change_branch(system, {"name": "兰州分公司（新址）"})
    assert branch["calendar_version"] == 0
    stored = await routing_db(system).branches.find_one({"_id": "demo:LZ"})
    assert directory_store.CALENDAR_CHANGE_PENDING not in stored
    assert directory_store.CALENDAR_CHANGES not in stored
    scheduler = SlaScheduler(settings=system.routing_settings)
    runtime = SimpleNamespace(db=routing_db(system), clock=clock)
    assert await scheduler.apply_calendar_changes(runtime) == 0
    after = await assignment_when(system, cid)
    assert (after["clocks"], after["version"]) == (before["clocks"], before["version"])


async def test_a_re_lay_cut_short_is_completed_by_the_next_sweep_once_per_complaint(
    system_factory: SystemFactory,
) -> None:
    """Batches of two: the first sweep re-lays two of three complaints and leaves the branch
    marked; a replica that died holding the branch does not hold it up; two replicas
    sweeping at once re-lay the third once."""
    clock = ManualClock(shanghai(7, 10))
    settings = {
        **FAST_TIMERS,
        **SETTLES_SOON,
        "queue_sweep_interval_s": 3600,
        "calendar_change_batch_size": 2,
    }
    system = await system_factory(clock=clock, routing=settings)
    agent = token(system.intake_settings, branches=["LZ"], roles=("agent",))
    complaints = [
        await _complaint(system, agent, severity="high", subject=f"第{n}单") for n in range(3)
    ]
    await _change_branch(system, TYPHOON)
    db = routing_db(system)
    runtime = SimpleNamespace(db=db, clock=clock)

    assert await SlaScheduler(settings=system.routing_settings).apply_calendar_changes(runtime) == 2
    branch = await db.branches.find_one({"_id": "demo:LZ"})
    assert branch[directory_store.CALENDAR_CHANGE_PENDING] is True
    versions = [
        (await db.assignments.find_one({"_id": cid})).get("calendar_version") for cid in complaints
    ]
    assert sorted(versions) == [0, 1, 1]

    # A replica died holding the branch; its lease has run out.
    await db.branches.update_one(
        {"_id": "demo:LZ"},
        {
            "$set": {
                directory_store.CALENDAR_LEASE_UNTIL: datetime.now(UTC) - MINUTE,
                directory_store.CALENDAR_LEASE_OWNER: "routing-dead",
            }
        },
    )
    replicas = [SlaScheduler(settings=system.routing_settings) for _ in range(2)]
    counts = await asyncio.gather(*(r.apply_calendar_changes(runtime) for r in replicas))
    assert sum(counts) == 1

    async def settled() -> dict | None:
        await replicas[0].apply_calendar_changes(runtime)  # nothing behind: once caches renew
        found = await db.branches.find_one({"_id": "demo:LZ"})
        return found if directory_store.CALENDAR_CHANGE_PENDING not in found else None

    await eventually(settled, what="the branch settled", timeout_s=5)
    for cid in complaints:
        document = await db.assignments.find_one({"_id": cid})
        assert document["calendar_version"] == 1
        assert document["resolve_due_at"] == shanghai(11, 10)
        actions = [entry["action"] for entry in document["history"]]
        assert actions.count("calendar_applied") == 1


async def test_a_complaint_finished_before_the_change_reopens_on_the_new_calendar(
    system_factory: SystemFactory,
) -> None:
    """Resolved before the typhoon closure, reopened after the sweep re-laid the branch's
    open work: until 6 December the fresh resolve clock ran on the old calendar (Thursday,
    not Friday) until its first timer."""
    clock = ManualClock(shanghai(7, 10))
    system = await system_factory(clock=clock, routing={**FAST_TIMERS, **SETTLES_SOON})
    agent = token(system.intake_settings, branches=["LZ"], roles=("agent",))
    supervisor = token(system.intake_settings, branches=["LZ"], roles=("supervisor",))
    cid = await _complaint(system, agent, severity="high")
    clock.set(shanghai(7, 11))
    await command(system, f"/v1/complaints/{cid}/resolve", {"summary": "已退费"}, agent)
    await assignment_when(system, cid, lambda d: d["status"] == "resolved", what="resolved")

    clock.set(shanghai(7, 11, 30))
    await _change_branch(system, TYPHOON)
    db = routing_db(system)

    async def swept() -> bool:
        branch = await db.branches.find_one({"_id": "demo:LZ"})
        return directory_store.CALENDAR_CHANGE_PENDING not in branch

    await eventually(swept, what="the sweep done with the branch")
    assert (await assignment_when(system, cid)).get("calendar_version") in (None, 0)

    clock.set(shanghai(7, 12))
    await command(system, f"/v1/complaints/{cid}/reopen", {"reason": "客户仍被扣费"}, supervisor)
    reopened = await assignment_when(system, cid, lambda d: d["status"] == "open", what="reopened")
    # Three business days from Monday 12:00 without Tuesday: Friday 12:00, not Thursday.
    assert reopened["resolve_due_at"] == reopened["clocks"]["resolve"]["due_at"] == shanghai(11, 12)
    assert _relaid(reopened)
    await complaint_when(
        system,
        cid,
        agent,
        lambda c: c["resolve_due_at"] and at(c["resolve_due_at"]) == shanghai(11, 12),
        what="the record's due time after the reopen",
        timeout_s=20,
    )


async def test_work_a_replica_placed_with_its_older_calendar_is_re_laid_before_the_mark_goes(
    system_factory: SystemFactory,
) -> None:
    """Another replica, its branch context cached before the typhoon closure, places a
    complaint on the old calendar just after the sweep found the branch's open work re-laid.
    The mark went at that pass, and the complaint kept Thursday until its first timer. Now
    the mark stays until every replica's copy is renewed, and a pass then re-lays it."""
    clock = ManualClock(shanghai(7, 10))
    renewed = {"routing_context_max_age_s": 2.0, "replica_clock_skew_s": 0.5}
    # The sweep is run by the test.
    routing = {**FAST_TIMERS, **renewed, "queue_sweep_interval_s": 3600}
    system = await system_factory(clock=clock, routing=routing)
    db = routing_db(system)
    complaint = received(severity=Severity.HIGH, received_at=clock.now())
    cached = await routing_context.load_context(db=db, complaint=complaint)
    await _change_branch(system, TYPHOON)
    scheduler = SlaScheduler(settings=system.routing_settings)
    runtime = SimpleNamespace(db=db, clock=clock)
    assert await scheduler.apply_calendar_changes(runtime) == 0  # no open work yet

    await placement.route_received(
        db=db,
        settings=system.routing_settings,
        complaint=complaint,
        now=clock.now(),
        contexts=CachedBeforeTheChange(cached),  # type: ignore[arg-type]
    )
    placed = await db.assignments.find_one({"_id": complaint.complaint_id})
    assert (placed.get("calendar_version", 0), placed["resolve_due_at"]) == (0, shanghai(10, 10))

    # The passes look again once every replica's copy is renewed (2.5 s here), not before.
    assert await scheduler.apply_calendar_changes(runtime) == 0

    async def relaid() -> dict | None:
        await scheduler.apply_calendar_changes(runtime)
        found = await db.assignments.find_one({"_id": complaint.complaint_id})
        return found if found.get("calendar_version") == 1 else None

    document = await eventually(relaid, timeout_s=10, what="re-laid by a later pass")
    assert document["resolve_due_at"] == shanghai(11, 10)

    async def settled() -> bool:
        await scheduler.apply_calendar_changes(runtime)
        branch = await db.branches.find_one({"_id": "demo:LZ"})
        return directory_store.CALENDAR_CHANGE_PENDING not in branch

    await eventually(settled, timeout_s=10, what="the mark gone once the caches renewed")
