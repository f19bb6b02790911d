"""Integration: durable SLA timers, escalation up the chain, pauses, restarts, major incidents.

Time moves with a ManualClock shared by the services; the scheduler polls every
50 ms, so a test moves the clock and waits for the stored outcome.
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta

import pytest

from complaints_shared.clock import ManualClock
from complaints_shared.events import (
    ComplaintAcknowledged,
    ComplaintPendingCustomer,
    ComplaintReopened,
    ComplaintResumed,
    EventType,
)
from routing.directory.models import BranchRead
from routing.main import create_app as create_routing_app
from routing.sla import clocks as sla
from routing.sla.models import TimeBasis
from tests.support.clock import at
from tests.support.events import base, received, resolved
from tests.support.http import token
from tests.support.kafka import intake_producer, of_type, routing_events
from tests.support.routing import (
    FAST_TIMERS,
    MONDAY_10_SHANGHAI,
    TUESDAY_22_SHANGHAI,
    assignment_when,
    routing_db,
)
from tests.support.system import SystemFactory

pytestmark = pytest.mark.integration

MINUTE = timedelta(minutes=1)


def _clock_of(document: dict, name: str) -> dict:
    return document["clocks"][name]


async def test_breaches_climb_the_escalation_chain_one_level_each(
    system_factory: SystemFactory,
) -> None:
    clock = ManualClock(MONDAY_10_SHANGHAI)
    system = await system_factory(clock=clock, routing=FAST_TIMERS)
    complaint = received(severity="high", received_at=clock.now())
    async with intake_producer(system) as publish:
        await publish(EventType.COMPLAINT_RECEIVED, complaint)
    cid = complaint.complaint_id
    document = await assignment_when(system, cid)
    ack = _clock_of(document, "acknowledge")
    assert ack["due_at"] == MONDAY_10_SHANGHAI + timedelta(hours=4)  # 4 business hours, all today

    clock.set(ack["warn_at"] + MINUTE)
    await assignment_when(system, cid, lambda d: _clock_of(d, "acknowledge")["warned"], what="warn")
    clock.set(ack["due_at"] + MINUTE)
    document = await assignment_when(system, cid, lambda d: d["escalation_level"] == 1)
    assert document["escalations"][-1]["escalated_to_id"] == "lz-gao"  # the team lead

    clock.set(document["resolve_due_at"] + MINUTE)
    document = await assignment_when(system, cid, lambda d: d["escalation_level"] == 2)
    assert document["escalations"][-1]["escalated_to_id"] == "lz-xie"  # the department head
    again = _clock_of(document, "resolve")["next_breach_at"]
    assert again is not None and again > document["resolve_due_at"]

    clock.set(again + MINUTE)  # still unresolved one full period later: up again
    document = await assignment_when(system, cid, lambda d: d["escalation_level"] == 3)
    assert document["escalations"][-1]["escalated_to_id"] == "lz-gm"  # the branch head
    assert document["breached"]
    # Nobody above: the timer stays armed, a span on, and fires without a word, so that a
    # rung freed again later (a withdrawal) is climbed. It used to be switched off for good.
    top_again = _clock_of(document, "resolve")["next_breach_at"]
    assert top_again is not None and top_again > again
    clock.set(top_again + MINUTE)
    document = await assignment_when(
        system,
        cid,
        lambda d: _clock_of(d, "resolve")["next_breach_at"] > top_again,
        what="the resolve timer armed a span on",
    )
    assert (document["escalation_level"], _clock_of(document, "resolve")["breach_count"]) == (3, 2)

    events = await routing_events(
        system, until=lambda events: len(of_type(events, EventType.COMPLAINT_ESCALATED)) >= 3
    )
    assert [e.data["clock"] for e in of_type(events, EventType.COMPLAINT_SLA_WARNING)] == [
        "acknowledge"
    ]
    breaches = of_type(events, EventType.COMPLAINT_SLA_BREACHED, cid)
    assert [(e.data["clock"], e.data["escalation_level"]) for e in breaches] == [
        ("acknowledge", 1),
        ("resolve", 2),
        ("resolve", 3),
    ]
    escalations = of_type(events, EventType.COMPLAINT_ESCALATED, cid)
    assert [
        (e.data["level"], e.data["escalated_to_role"], e.data["reason"]) for e in escalations
    ] == [
        (1, "team_lead", "sla_breach"),
        (2, "department_head", "sla_breach"),
        (3, "branch_head", "sla_breach"),
    ]

    supervisor = token(system.routing_settings, roles=("supervisor",))
    top = await system.routing.post(
        f"/v1/assignments/{cid}/escalate", json={"reason": "客户再次来电"}, headers=supervisor
    )
    assert top.status_code == 409  # already at the branch head


async def test_a_rung_freed_by_a_withdrawal_is_climbed_by_the_overdue_resolve_clock(
    system_factory: SystemFactory,
) -> None:
    """Escalated twice by hand, the complaint's acknowledge breach took the branch head, the
    top; its resolve breach could climb no more and switched its timer off. Then the
    acknowledgement, made in time, arrived late and withdrew the top rung: level 2, the
    complaint overdue, and no timer left to take it up again."""
    clock = ManualClock(MONDAY_10_SHANGHAI)
    system = await system_factory(clock=clock, routing=FAST_TIMERS)
    complaint = received(severity="high", received_at=clock.now())
    cid = complaint.complaint_id
    supervisor = token(system.routing_settings, roles=("supervisor",))
    async with intake_producer(system) as publish:
        await publish(EventType.COMPLAINT_RECEIVED, complaint)
        document = await assignment_when(system, cid)
        for _ in range(2):
            escalated = await system.routing.post(
                f"/v1/assignments/{cid}/escalate",
                json={"reason": "客户投诉升级"},
                headers=supervisor,
            )
            assert escalated.status_code == 200, escalated.text
        acknowledged_at = clock.now()  # in time; the news of it is held up
        clock.set(_clock_of(document, "acknowledge")["due_at"] + MINUTE)
        document = await assignment_when(system, cid, lambda d: d["escalation_level"] == 3)
        resolve = _clock_of(document, "resolve")
        clock.set(resolve["due_at"] + MINUTE)
        document = await assignment_when(
            system, cid, lambda d: _clock_of(d, "resolve")["breach_count"] == 1, what="breach"
        )
        rearmed = _clock_of(document, "resolve")["next_breach_at"]
        assert rearmed is not None, "the resolve timer switched off at the top"

        acknowledgement = ComplaintAcknowledged(
            **base(complaint), acknowledged_by="lz-chen", acknowledged_at=acknowledged_at
        )
        await publish(EventType.COMPLAINT_ACKNOWLEDGED, acknowledgement)
        document = await assignment_when(system, cid, lambda d: d["escalation_level"] == 2)
        clock.set(rearmed + MINUTE)
        document = await assignment_when(system, cid, lambda d: d["escalation_level"] == 3)
    climbed = document["escalations"][-1]
    assert (climbed["reason"], climbed["clock"]) == ("sla_breach", "resolve")


async def test_acknowledge_pause_resume_resolve_and_reopen_drive_the_clocks(
    system_factory: SystemFactory,
) -> None:
    clock = ManualClock(MONDAY_10_SHANGHAI)
    system = await system_factory(clock=clock, routing=FAST_TIMERS)
    complaint = received(received_at=clock.now())
    cid = complaint.complaint_id
    branch = await routing_db(system).branches.find_one({"_id": "demo:LZ"})
    calendar = sla.branch_calendar(BranchRead.model_validate(branch))
    async with intake_producer(system) as publish:
        await publish(EventType.COMPLAINT_RECEIVED, complaint)
        document = await assignment_when(system, cid)
        original_resolve_due = document["resolve_due_at"]

        acknowledged = ComplaintAcknowledged(
            **base(complaint), acknowledged_by="lz-chen", acknowledged_at=clock.now()
        )
        await publish(EventType.COMPLAINT_ACKNOWLEDGED, acknowledged)
        document = await assignment_when(
            system, cid, lambda d: _clock_of(d, "acknowledge")["state"] == "stopped"
        )
        assert document["next_timer_at"] == _clock_of(document, "resolve")["warn_at"]

        paused_at = clock.advance(timedelta(hours=1))
        await publish(
            EventType.COMPLAINT_PENDING_CUSTOMER,
            ComplaintPendingCustomer(
                **base(complaint),
                reason="等客户提供缴费凭证",
                paused_by="lz-chen",
                paused_at=paused_at,
            ),
        )
        document = await assignment_when(system, cid, lambda d: d["paused"])
        assert document["next_timer_at"] is None

        resumed_at = paused_at + timedelta(days=10)
        clock.set(resumed_at)
        await publish(
            EventType.COMPLAINT_RESUMED,
            ComplaintResumed(**base(complaint), resumed_by="lz-chen", resumed_at=resumed_at),
        )
        document = await assignment_when(system, cid, lambda d: not d["paused"])
        left = sla.between(calendar, TimeBasis.BUSINESS, paused_at, original_resolve_due)
        expected_due = sla.advance(calendar, TimeBasis.BUSINESS, resumed_at, left)
        assert document["resolve_due_at"] == expected_due
        assert _clock_of(document, "resolve")["breach_count"] == 0  # the pause cost nothing

        await publish(EventType.COMPLAINT_RESOLVED, resolved(complaint, resolved_at=clock.now()))
        document = await assignment_when(system, cid, lambda d: d["status"] == "resolved")
        assert {c["state"] for c in document["clocks"].values()} == {"stopped"}
        assert document["next_timer_at"] is None

        reopened_at = clock.advance(timedelta(days=30))
        await publish(
            EventType.COMPLAINT_REOPENED,
            ComplaintReopened(
                **base(complaint),
                reason="客户回访不满意",
                reopened_by="followup",
                reopened_at=reopened_at,
                reopen_count=1,
            ),
        )
        document = await assignment_when(system, cid, lambda d: d["status"] == "open")
    resolve = _clock_of(document, "resolve")
    assert resolve["started_at"] == reopened_at and resolve["state"] == "running"
    target = sla.BUILTIN_TARGETS["normal"].resolve
    assert document["resolve_due_at"] == sla.deadline(calendar, reopened_at, target)
    assert document["escalation_level"] == 1
    assert document["escalations"][-1]["reason"] == "reopened"

    events = await routing_events(
        system, until=lambda events: len(of_type(events, EventType.COMPLAINT_ASSIGNED)) >= 3
    )
    assert of_type(events, EventType.COMPLAINT_SLA_BREACHED) == []
    announced = of_type(events, EventType.COMPLAINT_ASSIGNED, cid)
    assert [at(a.data["resolve_due_at"]) for a in announced] == [
        original_resolve_due,
        expected_due,
        document["resolve_due_at"],
    ]
    (escalated,) = of_type(events, EventType.COMPLAINT_ESCALATED, cid)
    assert (escalated.data["reason"], escalated.data["escalated_to_id"]) == ("reopened", "lz-gao")


async def test_hospital_major_incident_reaches_the_head_with_a_six_hour_report_deadline(
    system_factory: SystemFactory,
) -> None:
    clock = ManualClock(TUESDAY_22_SHANGHAI)  # the patient-relations office is closed
    system = await system_factory(clock=clock, routing=FAST_TIMERS)
    incident = received(
        branch="HOSP",
        category="medical",
        severity="critical",
        subject="手术后患者重伤",
        description="家属称手术失误导致患者重伤，怀疑医疗事故，要求院方给说法",
        received_at=clock.now(),
    )
    reported = received(
        branch="HOSP",
        category="medical",
        description="输液时护士未核对姓名",
        received_at=clock.now(),
    )
    async with intake_producer(system) as publish:
        await publish(EventType.COMPLAINT_RECEIVED, incident)
        await publish(EventType.COMPLAINT_RECEIVED, reported)
        document = await assignment_when(system, incident.complaint_id)
        other = await assignment_when(system, reported.complaint_id)
    report_due = TUESDAY_22_SHANGHAI + timedelta(hours=6)
    assert (document["department"], document["owner_id"]) == ("HOSP:MED", "hosp-duty")
    assert document["duty_officer"] and document["major_incident"]
    assert document["escalation_level"] == 2
    assert document["escalations"][0]["escalated_to_id"] == "hosp-head"
    assert document["escalations"][0]["reason"] == "critical_incident"
    assert document["regulatory_report_due_at"] == report_due
    # A normal medical complaint is also a major incident by policy, but nobody's night work.
    assert other["owner_id"] in {"hosp-lin", "hosp-zhou"} and not other["duty_officer"]
    assert other["escalations"][0]["escalated_to_id"] == "hosp-head"

    supervisor = token(system.routing_settings, roles=("supervisor",))
    filed = await system.routing.post(
        f"/v1/assignments/{reported.complaint_id}/regulatory-report",
        json={"reference": "卫健委-2026-118"},
        headers=supervisor,
    )
    assert filed.status_code == 200, filed.text
    assert filed.json()["clocks"]["regulatory_report"]["state"] == "stopped"

    clock.set(TUESDAY_22_SHANGHAI + timedelta(hours=6) + MINUTE)
    await assignment_when(
        system,
        incident.complaint_id,
        lambda d: _clock_of(d, "regulatory_report")["breach_count"] == 1,
        what="report deadline breached",
    )
    events = await routing_events(
        system,
        until=lambda events: any(
            e.data["clock"] == "regulatory_report"
            for e in of_type(events, EventType.COMPLAINT_SLA_BREACHED)
        ),
    )
    (assigned,) = of_type(events, EventType.COMPLAINT_ASSIGNED, incident.complaint_id)
    assert assigned.data["duty_officer"] is True
    assert assigned.data["escalation_level"] == 2
    assert at(assigned.data["regulatory_report_due_at"]) == report_due
    (escalated,) = of_type(events, EventType.COMPLAINT_ESCALATED, incident.complaint_id)
    assert escalated.data["escalated_to_id"] == "hosp-head"
    assert at(escalated.data["regulatory_report_due_at"]) == report_due
    breaches = of_type(events, EventType.COMPLAINT_SLA_BREACHED, incident.complaint_id)
    assert {e.data["clock"] for e in breaches} >= {"acknowledge", "regulatory_report"}
    warnings = of_type(events, EventType.COMPLAINT_SLA_WARNING, reported.complaint_id)
    assert all(w.data["clock"] != "regulatory_report" for w in warnings)
    other_breaches = of_type(events, EventType.COMPLAINT_SLA_BREACHED, reported.complaint_id)
    assert all(b.data["clock"] != "regulatory_report" for b in other_breaches)


async def test_timers_survive_a_restart_and_a_crashed_replicas_lease(
    system_factory: SystemFactory,
) -> None:
    clock = ManualClock(MONDAY_10_SHANGHAI)
    # The fixture's own replica polls once at start, then never again in this test.
    system = await system_factory(clock=clock, routing={"scheduler_poll_interval_s": 3600})
    fast = system.routing_settings.model_copy(update={**FAST_TIMERS, "scheduler_lease_s": 1.0})
    complaint = received(severity="high", received_at=clock.now())
    cid = complaint.complaint_id

    async with AsyncExitStack() as first:
        await system.serve_extra(first, create_routing_app(fast, clock=clock))
        async with intake_producer(system) as publish:
            await publish(EventType.COMPLAINT_RECEIVED, complaint)
        document = await assignment_when(system, cid)
    # The replica that would have fired the timers is gone.

    clock.advance(timedelta(hours=5))  # past the 4 business hours to acknowledge
    # As if a replica had claimed the timers and crashed before firing them.
    await routing_db(system).assignments.update_one(
        {"_id": cid},
        {
            "$set": {
                "timer_lease_owner": "routing-crashed",
                "timer_lease_until": datetime.now(UTC) + timedelta(seconds=1),
            }
        },
    )
    async with AsyncExitStack() as second:
        await system.serve_extra(second, create_routing_app(fast, clock=clock))
        document = await assignment_when(
            system, cid, lambda d: _clock_of(d, "acknowledge")["breach_count"] == 1
        )
    assert document["escalation_level"] == 1
    assert "timer_lease_owner" not in document
    events = await routing_events(
        system, until=lambda events: bool(of_type(events, EventType.COMPLAINT_SLA_BREACHED))
    )
    assert len(of_type(events, EventType.COMPLAINT_SLA_BREACHED, cid)) == 1
    assert len(of_type(events, EventType.COMPLAINT_ESCALATED, cid)) == 1
