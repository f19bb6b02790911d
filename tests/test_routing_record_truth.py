"""Routing's record stays true when intake's news comes late, early or out of the usual order.

- A breach fired before an on-time acknowledgement, wait or finish reached routing is
  withdrawn, and intake and webhooks are told (``complaint.sla_breach_withdrawn``).
- What happens to an unroutable complaint (acknowledged, waiting, resolved, reopened)
  moves the clocks it gets once routed.
- A major incident's regulatory report deadline runs until the report is filed.
- An event for an assignment routing does not hold is dead-lettered, to be replayed after
  its ``complaint.received``.
- A manual escalation climbs the chain of the department handling the complaint now.
"""

from __future__ import annotations

import asyncio
import json
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from complaints_shared.clock import ManualClock
from complaints_shared.dlq import read_dead_letters, replay, run_command
from complaints_shared.events import (
    ComplaintAcknowledged,
    ComplaintPendingCustomer,
    ComplaintReceived,
    ComplaintResumed,
    ComplaintWithdrawn,
    EventType,
    Topic,
    dead_letter_topic,
)
from routing.assignments import lifecycle, placement, projections, routing_context
from routing.assignments.lifecycle import Command
from routing.directory.models import BranchRead
from routing.sla import clocks as sla
from routing.sla.models import TimeBasis
from tests.support.events import base, received, reopened, resolved
from tests.support.http import command, complaint_when, create_complaint, token
from tests.support.kafka import intake_producer, of_type, routing_events
from tests.support.routing import (
    FAST_TIMERS,
    HANGZHOU_AGENT,
    MONDAY_10_SHANGHAI,
    assignment_when,
    hangzhou_service_desk,
    routing_db,
)
from tests.support.system import System, SystemFactory
from tests.support.waits import eventually
from tests.support.webhooks import receiver, serve_webhooks, subscribe

MINUTE = timedelta(minutes=1)
integration = pytest.mark.integration


def _clock_of(document: dict, name: str) -> dict:
    return document["clocks"][name]


async def _calendar(system: System, branch_id: str) -> Any:
    branch = await routing_db(system).branches.find_one({"_id": branch_id})
    return sla.branch_calendar(BranchRead.model_validate(branch))


# ------------------------------------------------ a breach the news overtook --


@integration
async def test_a_breach_fired_before_an_on_time_acknowledgement_arrived_is_withdrawn(
    system_factory: SystemFactory,
) -> None:
    clock = ManualClock(MONDAY_10_SHANGHAI)
    system = await system_factory(clock=clock, routing=FAST_TIMERS)
    complaint = received(severity="high", received_at=clock.now())
    cid = complaint.complaint_id
    async with intake_producer(system) as publish:
        await publish(EventType.COMPLAINT_RECEIVED, complaint)
        document = await assignment_when(system, cid)
        due = _clock_of(document, "acknowledge")["due_at"]
        # Acknowledged a minute before the due time; the news waited (an outage, a lag)
        # and the timer fired a minute after it.
        clock.set(due + MINUTE)
        await assignment_when(system, cid, lambda d: d["escalation_level"] == 1, what="breach")
        acknowledged = ComplaintAcknowledged(
            **base(complaint), acknowledged_by="lz-chen", acknowledged_at=due - MINUTE
        )
        await publish(EventType.COMPLAINT_ACKNOWLEDGED, acknowledged)
        document = await assignment_when(
            system, cid, lambda d: _clock_of(d, "acknowledge")["state"] == "stopped"
        )

    ack = _clock_of(document, "acknowledge")
    assert (ack["stopped_at"], ack["breach_count"]) == (due - MINUTE, 0)
    assert document["breached"] is False
    assert document["escalation_level"] == 0
    # The team lead was notified: the record keeps it, marked withdrawn.
    [escalation] = document["escalations"]
    assert escalation["escalated_to_id"] == "lz-gao"
    assert escalation["withdrawn_reason"] == "acknowledged_on_time"
    assert escalation["withdrawn_at"] == due + MINUTE
    assert "breach_withdrawn" in [entry["action"] for entry in document["history"]]

    events = await routing_events(
        system,
        until=lambda events: bool(of_type(events, EventType.COMPLAINT_SLA_BREACH_WITHDRAWN)),
    )
    [withdrawn] = of_type(events, EventType.COMPLAINT_SLA_BREACH_WITHDRAWN, cid)
    data = withdrawn.data
    assert (data["clock"], data["reason"], data["withdrawn_breaches"]) == (
        "acknowledge",
        "acknowledged_on_time",
        1,
    )
    assert datetime.fromisoformat(data["stopped_at"]) == due - MINUTE
    assert [step["escalated_to_id"] for step in data["withdrawn_escalations"]] == ["lz-gao"]
    assert (data["escalation_level"], data["escalation"], data["breached_clocks"]) == (0, None, [])

    # The resolve clock still runs; its breach climbs from the level that stands.
    clock.set(document["resolve_due_at"] + MINUTE)
    document = await assignment_when(system, cid, lambda d: d["escalation_level"] == 1)
    assert document["escalations"][-1]["escalated_to_id"] == "lz-gao"
    assert document["escalations"][-1]["clock"] == "resolve"
    assert document["breached"] is True


@integration
async def test_a_wait_begun_before_the_due_time_withdraws_the_breach_and_keeps_the_time_left(
    system_factory: SystemFactory,
) -> None:
    clock = ManualClock(MONDAY_10_SHANGHAI)
    system = await system_factory(clock=clock, routing=FAST_TIMERS)
    complaint = received(severity="high", received_at=clock.now())
    cid = complaint.complaint_id
    async with intake_producer(system) as publish:
        await publish(EventType.COMPLAINT_RECEIVED, complaint)
        document = await assignment_when(system, cid)
        due = _clock_of(document, "acknowledge")["due_at"]  # Monday 14:00 in Lanzhou
        clock.set(due + MINUTE)
        await assignment_when(system, cid, lambda d: d["breached"], what="breach")
        paused = ComplaintPendingCustomer(
            **base(complaint), reason="等客户提供凭证", paused_by="lz-chen", paused_at=due - MINUTE
        )
        await publish(EventType.COMPLAINT_PENDING_CUSTOMER, paused)
        document = await assignment_when(system, cid, lambda d: d["paused"])
        ack = _clock_of(document, "acknowledge")
        assert (ack["state"], ack["breach_count"], ack["next_breach_at"]) == ("paused", 0, due)
        assert (document["breached"], document["escalation_level"]) == (False, 0)
        assert document["escalations"][0]["withdrawn_reason"] == "paused_on_time"

        resumed_at = due + timedelta(hours=20)  # Tuesday 10:00 in Lanzhou
        clock.set(resumed_at)
        resumed = ComplaintResumed(**base(complaint), resumed_by="lz-chen", resumed_at=resumed_at)
        await publish(EventType.COMPLAINT_RESUMED, resumed)
        document = await assignment_when(system, cid, lambda d: not d["paused"])
    # The minute that was left at the pause, laid out again from the resume.
    assert document["acknowledge_due_at"] == resumed_at + MINUTE
    clock.set(resumed_at + 2 * MINUTE)
    document = await assignment_when(system, cid, lambda d: d["escalation_level"] == 1)
    assert _clock_of(document, "acknowledge")["breach_count"] == 1


def _breaching_clock(due: datetime, *, breaches: int = 1) -> sla.Clock:
    return sla.Clock(
        basis=TimeBasis.CALENDAR,
        state="running",
        started_at=due - timedelta(hours=24),
        due_at=due,
        next_breach_at=due + timedelta(hours=24 * breaches),
        span_s=24 * 3600,
        warned=True,
        breach_count=breaches,
    )


def _escalation(level: int, *, reason: str, at: datetime, **fields: Any) -> dict[str, Any]:
    return {
        "level": level,
        "escalated_to_id": f"person-{level}",
        "escalated_to_name": None,
        "escalated_to_role": None,
        "reason": reason,
        "note": None,
        "escalated_by": "routing",
        "escalated_at": at,
        **fields,
    }


def _assignment(**fields: Any) -> dict[str, Any]:
    return {"_id": "c-1", "org": "demo", "branch": "LZ", **fields}


def test_withdrawing_a_breach_leaves_a_later_manual_escalation_standing() -> None:
    due = datetime(2026, 11, 24, 2, tzinfo=UTC)
    breach = _escalation(1, reason="sla_breach", at=due, clock="resolve", breach_due_at=due)
    manual = _escalation(2, reason="manual", at=due + MINUTE)
    current = _assignment(escalation_level=2, escalations=[breach, manual], breached=True)
    clocks = {"resolve": sla.stop_clock(_breaching_clock(due), at=due - MINUTE)}

    update, events = lifecycle.withdraw_breaches(
        current, clocks, names=["resolve"], command=Command.RESOLVE, at=due - MINUTE, now=due
    )

    fields = update["$set"]
    assert (fields["escalation_level"], fields["breached"]) == (2, False)
    assert [record.get("withdrawn_reason") for record in fields["escalations"]] == [
        "resolved_on_time",
        None,
    ]
    assert clocks["resolve"].breach_count == 0
    [(_, event)] = events
    assert event.escalation is not None and event.escalation.level == 2
    assert [step.level for step in event.withdrawn_escalations] == [1]


def test_every_breach_of_a_re_armed_resolve_clock_is_withdrawn_back_to_the_level_before() -> None:
    due = datetime(2026, 11, 24, 2, tzinfo=UTC)
    earlier_cycle = _escalation(
        1,
        reason="sla_breach",
        at=due - timedelta(days=3),
        clock="resolve",
        breach_due_at=due - timedelta(days=4),
    )
    reopened = _escalation(2, reason="reopened", at=due - timedelta(days=2))
    breaches = [
        _escalation(level, reason="sla_breach", at=at, clock="resolve", breach_due_at=due)
        for level, at in ((3, due), (4, due + timedelta(days=1)))
    ]
    current = _assignment(
        escalation_level=4, escalations=[earlier_cycle, reopened, *breaches], reopen_count=1
    )
    first_cycle = {"breached_in_cycle": 0}
    this_cycle = {"breached_in_cycle": 1}
    clocks = {
        "acknowledge": sla.stop_clock(
            _breaching_clock(due - timedelta(days=6)).model_copy(update=first_cycle),
            at=due - timedelta(days=5),
        ),
        "resolve": sla.pause_clock(
            _breaching_clock(due, breaches=2).model_copy(update=this_cycle), at=due
        ),
        "regulatory_report": _breaching_clock(due - timedelta(hours=1)).model_copy(
            update=this_cycle
        ),
    }

    update, events = lifecycle.withdraw_breaches(
        current, clocks, names=["resolve"], command=Command.PAUSE, at=due, now=due
    )

    fields = update["$set"]
    assert fields["escalation_level"] == 2  # the reopen's escalation stands
    assert [bool(record.get("withdrawn_at")) for record in fields["escalations"]] == [
        False,
        False,
        True,
        True,
    ]
    # ``breached`` is of this cycle: the report deadline's breach, not the first cycle's.
    assert fields["breached"] is True
    assert clocks["resolve"].next_breach_at == due
    [(_, event)] = events
    assert (event.withdrawn_breaches, event.reopen_count) == (2, 1)
    assert [clock.value for clock in event.breached_clocks] == ["regulatory_report"]


def test_a_stop_after_the_due_time_withdraws_nothing() -> None:
    due = datetime(2026, 11, 24, 2, tzinfo=UTC)
    breach = _escalation(1, reason="sla_breach", at=due, clock="acknowledge", breach_due_at=due)
    current = _assignment(escalation_level=1, escalations=[breach], breached=True)
    clocks = {"acknowledge": sla.stop_clock(_breaching_clock(due), at=due + MINUTE)}

    assert lifecycle.withdraw_breaches(
        current,
        clocks,
        names=["acknowledge"],
        command=Command.ACKNOWLEDGE,
        at=due + MINUTE,
        now=due + 2 * MINUTE,
    ) == ({}, [])


@integration
async def test_intake_and_webhooks_learn_that_a_breach_was_withdrawn(
    system_factory: SystemFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = ManualClock(MONDAY_10_SHANGHAI)
    system = await system_factory(clock=clock, routing=FAST_TIMERS)
    agent = token(system.intake_settings, branches=["LZ"], roles=("agent",))
    admin = token(system.intake_settings)
    # Routing consumes the acknowledgement only when the test lets it (a lagging consumer).
    released = asyncio.Event()
    change_clocks = projections.change_clocks

    async def lagging(**arguments: Any) -> None:
        await released.wait()
        await change_clocks(**arguments)

    monkeypatch.setattr(projections, "change_clocks", lagging)
    async with AsyncExitStack() as stack:
        hooks = await stack.enter_async_context(receiver())
        webhooks = await serve_webhooks(stack, system)
        await subscribe(
            webhooks, admin, url=hooks.url, event_types=[EventType.COMPLAINT_SLA_BREACH_WITHDRAWN]
        )
        cid = (await create_complaint(system, agent, severity="high", subject="话费多扣"))["id"]
        record = await complaint_when(
            system, cid, agent, lambda c: c.get("acknowledge_due_at"), what="assigned"
        )
        due = datetime.fromisoformat(record["acknowledge_due_at"])
        clock.set(due - MINUTE)
        acknowledged = await command(system, f"/v1/complaints/{cid}/acknowledge", {}, agent)
        assert acknowledged["acknowledgement"]["late"] is False
        clock.set(due + MINUTE)
        await complaint_when(
            system,
            cid,
            agent,
            lambda c: c["sla"]["acknowledge_breached"] and c["escalation_level"] == 1,
            what="the breach and its escalation on record",
        )
        released.set()
        record = await complaint_when(
            system,
            cid,
            agent,
            lambda c: not c["sla"]["acknowledge_breached"],
            what="the breach withdrawn",
            timeout_s=15,
        )
        assert (record["escalation_level"], record["escalation"]) == (0, None)
        stored = await system.mongo[system.intake_settings.database_name()].complaints.find_one(
            {"_id": cid}
        )
        assert stored["sla_breached"] is False
        assert not {"x:breached", "e:escalated"} & set(stored["filter_keys"])
        assert record["acknowledgement"]["late"] is False
        timeline = await system.intake.get(f"/v1/complaints/{cid}/timeline", headers=agent)
        entries = timeline.json()["entries"]
        by_action = {entry["action"]: entry for entry in entries}
        # What was notified stays on the timeline, marked withdrawn.
        for action in ("sla_breached", "escalated"):
            assert by_action[action]["withdrawn"]["reason"] == "acknowledged_on_time"
        withdrawal = by_action["sla_breach_withdrawn"]
        assert withdrawal["details"]["reason"] == "acknowledged_on_time"
        assert withdrawal["details"]["withdrawn_levels"] == [1]

        await eventually(lambda: asyncio.sleep(0, hooks.requests), what="webhook delivery")
        [delivered] = hooks.bodies()
        assert delivered["type"] == EventType.COMPLAINT_SLA_BREACH_WITHDRAWN.value
        assert delivered["data"]["complaint_id"] == cid


# ------------------------------------------------ what an unroutable one went through --

ORG = "acme"
DEFAULT_RULE = {
    "id": "everything",
    "name": "其余投诉 → 杭州客户服务部",
    "is_default": True,
    "action": {"department_id": "HZ:SVC"},
}


async def _hangzhou_without_rules(system: System) -> dict:
    admin = token(system.routing_settings, org=ORG)
    await hangzhou_service_desk(system, admin)
    return admin


async def _add_the_default_rule(system: System, admin: dict) -> None:
    made = await system.routing.post("/v1/routing/rules", json=DEFAULT_RULE, headers=admin)
    assert made.status_code == 201, made.text


async def _unroutable_in_hangzhou(
    system_factory: SystemFactory,
) -> tuple[ManualClock, System, dict, ComplaintReceived]:
    """A system whose clock stands at Monday 10:00 in Shanghai and whose organisation acme
    has a Hangzhou desk but no rule, and a complaint to it received then (not published)."""
    clock = ManualClock(MONDAY_10_SHANGHAI)
    system = await system_factory(clock=clock, routing=FAST_TIMERS)
    admin = await _hangzhou_without_rules(system)
    return clock, system, admin, received(org=ORG, branch="HZ", received_at=clock.now())


@integration
async def test_an_acknowledgement_and_a_wait_while_unroutable_move_the_clocks_it_gets(
    system_factory: SystemFactory,
) -> None:
    clock, system, admin, complaint = await _unroutable_in_hangzhou(system_factory)
    t0, cid = complaint.received_at, complaint.complaint_id
    async with intake_producer(system) as publish:
        await publish(EventType.COMPLAINT_RECEIVED, complaint)
        await assignment_when(system, cid, lambda d: d["status"] == "unroutable")
        acknowledged_at, paused_at = t0 + 10 * MINUTE, t0 + timedelta(hours=1)
        await publish(
            EventType.COMPLAINT_ACKNOWLEDGED,
            ComplaintAcknowledged(
                **base(complaint), acknowledged_by="hz-li", acknowledged_at=acknowledged_at
            ),
        )
        await publish(
            EventType.COMPLAINT_PENDING_CUSTOMER,
            ComplaintPendingCustomer(
                **base(complaint), reason="等照片", paused_by="hz-li", paused_at=paused_at
            ),
        )
        document = await assignment_when(
            system, cid, lambda d: d.get("paused") and d.get("acknowledged_at"), what="remembered"
        )
        assert document["status"] == "unroutable"

        clock.advance(timedelta(days=2))
        await _add_the_default_rule(system, admin)
        document = await assignment_when(system, cid, lambda d: d["status"] == "open")
        ack, resolve = _clock_of(document, "acknowledge"), _clock_of(document, "resolve")
        assert (ack["state"], ack["stopped_at"]) == ("stopped", acknowledged_at)
        assert (resolve["state"], resolve["paused_at"]) == ("paused", paused_at)
        assert (document["paused"], document["paused_at"]) == (True, paused_at)
        assert document["next_timer_at"] is None  # nothing to fire: no breach, no escalation
        assert (document["breached"], document["escalation_level"]) == (False, 0)
        assert "remembered_events" not in document
        # Judged like any acknowledgement: on time, so intake's record says it was not late.
        events = await routing_events(
            system, until=lambda events: bool(of_type(events, EventType.COMPLAINT_SLA_STOPPED))
        )
        [verdict] = of_type(events, EventType.COMPLAINT_SLA_STOPPED, cid)
        assert (verdict.data["clock"], verdict.data["on_time"]) == ("acknowledge", True)

        resumed_at = clock.now()
        await publish(
            EventType.COMPLAINT_RESUMED,
            ComplaintResumed(**base(complaint), resumed_by="hz-li", resumed_at=resumed_at),
        )
        document = await assignment_when(system, cid, lambda d: not d["paused"])
    calendar = await _calendar(system, f"{ORG}:HZ")
    left = sla.between(calendar, TimeBasis.BUSINESS, paused_at, resolve["due_at"])
    assert document["resolve_due_at"] == sla.advance(calendar, TimeBasis.BUSINESS, resumed_at, left)
    assert _clock_of(document, "resolve")["breach_count"] == 0


@integration
async def test_a_never_routed_complaint_reopened_gets_its_resolve_clock_from_the_reopen(
    system_factory: SystemFactory,
) -> None:
    clock, system, admin, complaint = await _unroutable_in_hangzhou(system_factory)
    lead = {"id": "hz-wu", "name": "吴组长", "role": "team_lead", "capacity": 0}
    team_lead = {**HANGZHOU_AGENT, **lead}
    made = await system.routing.post("/v1/directory/staff", json=team_lead, headers=admin)
    assert made.status_code == 201, made.text
    t0, cid = complaint.received_at, complaint.complaint_id
    resolved_at, reopened_at = t0 + timedelta(hours=1), t0 + timedelta(days=1)
    async with intake_producer(system) as publish:
        await publish(EventType.COMPLAINT_RECEIVED, complaint)
        await publish(EventType.COMPLAINT_RESOLVED, resolved(complaint, resolved_at=resolved_at))
        await publish(EventType.COMPLAINT_REOPENED, reopened(complaint, reopened_at=reopened_at))
        await assignment_when(
            system, cid, lambda d: d["status"] == "unroutable" and d.get("reopen_count") == 1
        )
    clock.set(reopened_at + timedelta(hours=2))
    await _add_the_default_rule(system, admin)
    document = await assignment_when(system, cid, lambda d: d["status"] == "open")
    ack, resolve = _clock_of(document, "acknowledge"), _clock_of(document, "resolve")
    assert (ack["state"], ack["stopped_at"]) == ("stopped", resolved_at)
    assert (resolve["state"], resolve["started_at"]) == ("running", reopened_at)
    assert document["next_timer_at"] > clock.now()
    # The reopen climbed a rung, as it does for a complaint routed all along: to the team
    # lead (a desk without one passes the vacant rung over, and nobody above: no climb).
    assert (document["breached"], document["escalation_level"]) == (False, 1)
    assert [
        (e["reason"], e["escalated_by"], e["escalated_at"], e["escalated_to_id"])
        for e in document["escalations"]
    ] == [("reopened", "followup", reopened_at, "hz-wu")]


@integration
async def test_a_wait_after_a_reopen_before_any_route_is_remembered_too(
    system_factory: SystemFactory,
) -> None:
    """Waiting, resolved while waiting, reopened, waiting again: all before a route. The
    first wait left the assignment ``paused`` through the resolution and the reopen, so the
    second wait was taken for one already counted and not remembered: once routed, its
    clocks ran through the customer's wait (breaches while intake showed pending)."""
    clock, system, admin, complaint = await _unroutable_in_hangzhou(system_factory)
    t0, cid = complaint.received_at, complaint.complaint_id
    first_wait, resolved_at = t0 + 10 * MINUTE, t0 + timedelta(hours=1)
    reopened_at, second_wait = t0 + timedelta(hours=2), t0 + timedelta(hours=3)

    def pending(at: datetime) -> ComplaintPendingCustomer:
        return ComplaintPendingCustomer(
            **base(complaint), reason="等客户回电", paused_by="hz-li", paused_at=at
        )

    async with intake_producer(system) as publish:
        await publish(EventType.COMPLAINT_RECEIVED, complaint)
        await publish(EventType.COMPLAINT_PENDING_CUSTOMER, pending(first_wait))
        await publish(EventType.COMPLAINT_RESOLVED, resolved(complaint, resolved_at=resolved_at))
        await publish(EventType.COMPLAINT_REOPENED, reopened(complaint, reopened_at=reopened_at))
        await publish(EventType.COMPLAINT_PENDING_CUSTOMER, pending(second_wait))
        document = await assignment_when(
            system,
            cid,
            lambda d: len(d.get(projections.REMEMBERED) or []) == 4,
            what="both waits, the resolution and the reopen remembered",
            timeout_s=15,
        )
        assert document["status"] == "unroutable"
        assert [entry["command"] for entry in document[projections.REMEMBERED]] == [
            "pause",
            "resolve",
            "reopen",
            "pause",
        ]
        assert (document["paused"], document["paused_at"]) == (True, second_wait)
    clock.set(second_wait + timedelta(days=3))
    await _add_the_default_rule(system, admin)
    document = await assignment_when(system, cid, lambda d: d["status"] == "open")
    resolve = _clock_of(document, "resolve")
    assert (resolve["state"], resolve["paused_at"]) == ("paused", second_wait)
    assert (document["paused"], document["breached"]) == (True, False)


# ------------------------------------------------ the regulatory report deadline --


@integration
async def test_the_regulatory_report_deadline_outlives_the_resolution_until_it_is_filed(
    system_factory: SystemFactory,
) -> None:
    clock = ManualClock(MONDAY_10_SHANGHAI)
    system = await system_factory(clock=clock, routing=FAST_TIMERS)
    complaint = received(category="medical", severity="critical", received_at=clock.now())
    cid = complaint.complaint_id
    async with intake_producer(system) as publish:
        await publish(EventType.COMPLAINT_RECEIVED, complaint)
        await assignment_when(system, cid)
        await publish(EventType.COMPLAINT_RESOLVED, resolved(complaint, resolved_at=clock.now()))
        document = await assignment_when(system, cid, lambda d: d["status"] == "resolved")
    report = _clock_of(document, "regulatory_report")
    assert report["state"] == "running"
    assert {_clock_of(document, name)["state"] for name in ("acknowledge", "resolve")} == {
        "stopped"
    }
    assert document["next_timer_at"] == report["warn_at"]
    clock.set(report["warn_at"] + MINUTE)  # the authority's deadline nears: still warned
    await assignment_when(system, cid, lambda d: _clock_of(d, "regulatory_report")["warned"])

    supervisor = token(system.routing_settings, roles=("supervisor",))
    path = f"/v1/assignments/{cid}/regulatory-report"
    filed = await system.routing.post(
        path, json={"reference": "卫健委-2026-001"}, headers=supervisor
    )
    assert filed.status_code == 200, filed.text
    assert filed.json()["regulatory_report_reference"] == "卫健委-2026-001"
    stored = await routing_db(system).assignments.find_one({"_id": cid})
    assert stored["regulatory_report_filed_at"] == clock.now()
    assert _clock_of(stored, "regulatory_report")["stopped_at"] == clock.now()
    assert stored["next_timer_at"] is None

    again = await system.routing.post(
        path, json={"reference": "卫健委-2026-001"}, headers=supervisor
    )
    assert again.status_code == 200  # a retried request: on record already
    other = await system.routing.post(
        path, json={"reference": "卫健委-2026-002"}, headers=supervisor
    )
    assert other.status_code == 409
    assert "卫健委-2026-001" in other.json()["detail"]


def test_a_filing_announces_the_verdict_on_the_deadline_it_stopped() -> None:
    due = datetime(2026, 11, 23, 8, tzinfo=UTC)
    running = sla.Clock(
        basis=TimeBasis.CALENDAR,
        started_at=due - timedelta(hours=6),
        due_at=due,
        next_breach_at=due,
        span_s=6 * 3600,
    )

    def filed(at: datetime, report: sla.Clock | None) -> Any:
        return lifecycle.regulatory_report_filed_event(
            _assignment(),
            reference="卫健委-2026-001",
            filed_by="lz-head",
            filed_at=at,
            report=report,
        )

    in_time = filed(due - MINUTE, sla.stop_clock(running, at=due - MINUTE))
    assert (in_time.due_at, in_time.on_time, in_time.breached) == (due, True, False)
    assert (in_time.complaint_id, in_time.reference, in_time.filed_by) == (
        "c-1",
        "卫健委-2026-001",
        "lz-head",
    )
    breached = running.model_copy(update={"breach_count": 1, "next_breach_at": None})
    late = filed(due + MINUTE, sla.stop_clock(breached, at=due + MINUTE))
    assert (late.due_at, late.on_time, late.breached) == (due, False, True)
    # Filed while unroutable: no deadline yet, so no verdict (it follows once routed).
    unknown = filed(due, None)
    assert (unknown.due_at, unknown.on_time, unknown.breached) == (None, None, False)


# ------------------------------------------------ an event before its assignment --


@integration
async def test_an_event_for_an_assignment_not_held_is_dead_lettered_and_applies_once_replayed(
    system_factory: SystemFactory, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    clock = ManualClock(MONDAY_10_SHANGHAI)
    system = await system_factory(clock=clock, routing=FAST_TIMERS)
    route_received = placement.route_received
    failures: list[str] = []

    async def broken_until_fixed(**arguments: Any) -> bool:
        if len(failures) < system.routing_settings.consumer_max_attempts:
            failures.append(arguments["complaint"].complaint_id)
            raise RuntimeError("a bug in routing (injected)")
        return await route_received(**arguments)

    monkeypatch.setattr(placement, "route_received", broken_until_fixed)
    complaint = received(received_at=clock.now())
    cid = complaint.complaint_id
    acknowledged_at = clock.now() + 10 * MINUTE
    async with intake_producer(system) as publish:
        await publish(EventType.COMPLAINT_RECEIVED, complaint)
        await publish(
            EventType.COMPLAINT_ACKNOWLEDGED,
            ComplaintAcknowledged(
                **base(complaint), acknowledged_by="lz-chen", acknowledged_at=acknowledged_at
            ),
        )
    group = system.routing_settings.consumer_group()

    async def routing_dead_letters() -> list:
        letters = await read_dead_letters(
            settings=system.routing_settings,
            dlq_topic=dead_letter_topic(system.topic(Topic.INTAKE)),
        )
        return [letter for letter in letters if letter.header("dlq_consumer_group") == group]

    dead = await eventually(
        lambda: _when(routing_dead_letters(), lambda letters: len(letters) == 2),
        timeout_s=20,
        what="the received and the acknowledgement dead-lettered",
    )
    assert [(letter.event_type, letter.header("dlq_reason")) for letter in dead] == [
        (EventType.COMPLAINT_RECEIVED.value, "retries_exhausted"),
        (EventType.COMPLAINT_ACKNOWLEDGED.value, "rejected"),
    ]
    assert f"assignment {cid} does not exist here" in dead[1].header("dlq_error")

    # The bug fixed, the operator replays the complaint's dead letters: received first.
    capsys.readouterr()
    await run_command(
        ["replay", "--topic", Topic.INTAKE.value, "--complaint-id", cid],
        settings=system.routing_settings,
    )
    # The command's lines only (the services' log lines may share stdout).
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line]
    replayed = [entry for entry in printed if entry.get("action") == "replayed"]
    assert [entry["event_type"] for entry in replayed] == [
        "complaint.received",
        "complaint.acknowledged",
    ]
    document = await assignment_when(
        system, cid, lambda d: _clock_of(d, "acknowledge")["state"] == "stopped"
    )
    assert _clock_of(document, "acknowledge")["stopped_at"] == acknowledged_at
    assert document["acknowledged_at"] == acknowledged_at
    assert len(await routing_dead_letters()) == 2  # nothing refused again


async def _when(read: Any, holds: Any) -> Any:
    value = await read
    return value if holds(value) else None


# ------------------------------------------------ a manual escalation racing a move --


@integration
async def test_a_manual_escalation_racing_a_reassignment_climbs_the_new_departments_chain(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    complaint = received()  # LZ billing: team lead lz-gao
    cid = complaint.complaint_id
    async with intake_producer(system) as publish:
        await publish(EventType.COMPLAINT_RECEIVED, complaint)
    await assignment_when(system, cid, lambda d: d["department"] == "LZ:BILLING")
    supervisor = token(system.routing_settings, roles=("supervisor",))
    escalation_targets = routing_context.escalation_targets
    moved: list[bool] = []

    async def reassigned_meanwhile(**arguments: Any) -> Any:
        targets = await escalation_targets(**arguments)
        if not moved:  # the reassignment lands while the escalation is being decided
            moved.append(True)
            answer = await system.routing.post(
                f"/v1/assignments/{cid}/reassign",
                json={"department": "LZ:CS", "reason": "转客户服务部"},
                headers=supervisor,
            )
            assert answer.status_code == 200, answer.text
        return targets

    monkeypatch.setattr(routing_context, "escalation_targets", reassigned_meanwhile)
    escalated = await system.routing.post(
        f"/v1/assignments/{cid}/escalate", json={"reason": "客户投诉升级"}, headers=supervisor
    )
    assert escalated.status_code == 200, escalated.text
    body = escalated.json()
    assert body["department"] == "LZ:CS"
    assert body["escalations"][-1]["escalated_to_id"] == "lz-hu"  # CS's team lead


async def _refused_by_routing(system: System, complaint_id: str) -> list:
    """Routing's dead letters of ``complaint_id``'s intake events."""
    group = system.routing_settings.consumer_group()
    letters = await read_dead_letters(
        settings=system.routing_settings,
        dlq_topic=dead_letter_topic(system.topic(Topic.INTAKE)),
    )
    return [
        letter
        for letter in letters
        if letter.header("dlq_consumer_group") == group and letter.complaint_id == complaint_id
    ]


async def test_a_reopen_whose_finish_never_reached_routing_is_dead_lettered_not_dropped(
    system: System,
) -> None:
    """The complaint's resolved event was dead-lettered in routing (a bug on every attempt),
    then its reopen arrived at an assignment still open. It was remembered as applied and
    did nothing, and once the resolved event was replayed the assignment stayed resolved
    for good while intake's record was reopened. Now the reopen is refused as well, to be
    replayed after the finish (``complaints-dlq`` replays in dead-letter order)."""
    complaint = received()
    async with intake_producer(system) as publish:
        await publish(EventType.COMPLAINT_RECEIVED, complaint)
        await assignment_when(system, complaint.complaint_id, lambda d: d["status"] == "open")
        finish = resolved(complaint)
        again = reopened(finish, reopened_at=finish.resolved_at + timedelta(hours=1))
        await publish(EventType.COMPLAINT_REOPENED, again)
    [letter] = await eventually(
        lambda: _refused_by_routing(system, complaint.complaint_id),
        timeout_s=20,
        what="the reopen dead-lettered",
    )
    assert (letter.event_type, letter.header("dlq_reason")) == (
        EventType.COMPLAINT_REOPENED.value,
        "rejected",
    )
    assert "the finish reopen 1 undoes was not applied" in letter.header("dlq_error")
    stored = await routing_db(system).assignments.find_one({"_id": complaint.complaint_id})
    assert (stored["status"], stored.get("reopen_count", 0)) == ("open", 0)

    # The finish replayed (here: sent again), then the reopen: routing agrees with intake.
    async with intake_producer(system) as publish:
        await publish(EventType.COMPLAINT_RESOLVED, finish)
    await assignment_when(system, complaint.complaint_id, lambda d: d["status"] == "resolved")
    await replay(settings=system.routing_settings, letters=[letter], operator="test")
    reopened_here = await assignment_when(
        system, complaint.complaint_id, lambda d: d.get("reopen_count") == 1
    )
    assert reopened_here["status"] == "open"


@integration
async def test_a_withdrawal_whose_reopen_never_reached_routing_is_dead_lettered_not_dropped(
    system: System,
) -> None:
    """The reopen was dead-lettered in routing, then the customer withdrew the reopened
    complaint. Routing, still resolved, took the withdrawal for nothing to do and dropped it;
    the reopen's replay then reopened for good (owner, clock, a rung up) a complaint intake
    held withdrawn. Now the withdrawal is refused too, and both replayed in order agree."""
    complaint = received()
    cid = complaint.complaint_id
    finish = resolved(complaint)
    lost_reopen = reopened(finish, reopened_at=finish.resolved_at + timedelta(hours=1))
    withdrawal = ComplaintWithdrawn(
        **base(complaint),
        reason="客户已自行解决",
        withdrawn_by="lz-sup",
        withdrawn_at=finish.resolved_at + timedelta(hours=2),
    )
    async with intake_producer(system) as publish:
        await publish(EventType.COMPLAINT_RECEIVED, complaint)
        await assignment_when(system, cid, lambda d: d["status"] == "open")
        await publish(EventType.COMPLAINT_RESOLVED, finish)
        await assignment_when(system, cid, lambda d: d["status"] == "resolved")
        await publish(EventType.COMPLAINT_WITHDRAWN, withdrawal)
    [letter] = await eventually(
        lambda: _refused_by_routing(system, cid), timeout_s=20, what="the withdrawal dead-lettered"
    )
    assert (letter.event_type, letter.header("dlq_reason")) == (
        EventType.COMPLAINT_WITHDRAWN.value,
        "rejected",
    )
    assert "the reopen this withdraw follows was not applied" in letter.header("dlq_error")

    # The reopen replayed (here: sent again), then the withdrawal: routing agrees with intake.
    async with intake_producer(system) as publish:
        await publish(EventType.COMPLAINT_REOPENED, lost_reopen)
    await assignment_when(system, cid, lambda d: d.get("reopen_count") == 1)
    await replay(settings=system.routing_settings, letters=[letter], operator="test")
    ended = await assignment_when(system, cid, lambda d: d["status"] == "withdrawn")
    assert ended["reopen_count"] == 1
