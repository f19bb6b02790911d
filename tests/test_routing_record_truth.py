"""Routing's record stays true when intake's news comes late, early or out of the usual order.

- What happens to an unroutable complaint (acknowledged, waiting, resolved, reopened)
  moves the clocks it gets once routed.
- A major incident's regulatory report deadline runs until the report is filed.
- An event for an assignment routing does not hold is dead-lettered, to be replayed after
  its ``complaint.received``.
- A manual escalation climbs the chain of the department handling the complaint now.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from complaints_shared.clock import ManualClock
from complaints_shared.dlq import read_dead_letters, run_command
from complaints_shared.events import (
    ComplaintAcknowledged,
    ComplaintPendingCustomer,
    ComplaintReopened,
    ComplaintResumed,
    EventType,
    Topic,
    dead_letter_topic,
)
from routing.assignments import placement, routing_context
from routing.directory.models import BranchRead
from routing.sla import clocks as sla
from routing.sla.models import TimeBasis
from tests.support.events import base, received, resolved
from tests.support.http import token
from tests.support.kafka import intake_producer, of_type, routing_events
from tests.support.routing import FAST_TIMERS, MONDAY_10_SHANGHAI, assignment_when, routing_db
from tests.support.system import System, SystemFactory
from tests.support.waits import eventually

MINUTE = timedelta(minutes=1)
integration = pytest.mark.integration


def _clock_of(document: dict, name: str) -> dict:
    return document["clocks"][name]


async def _calendar(system: System, branch_id: str) -> Any:
    branch = await routing_db(system).branches.find_one({"_id": branch_id})
    return sla.branch_calendar(BranchRead.model_validate(branch))


# ------------------------------------------------ what an unroutable one went through --

ORG = "acme"
HANGZHOU = (
    ("/v1/directory/branches", {"code": "HZ", "name": "杭州门店"}),
    (
        "/v1/directory/departments",
        {"branch": "HZ", "code": "SVC", "name": "客户服务部", "kind": "customer_service"},
    ),
    (
        "/v1/directory/staff",
        {"id": "hz-li", "branch": "HZ", "department": "SVC", "name": "李娜", "capacity": 5},
    ),
)
DEFAULT_RULE = {
    "id": "everything",
    "name": "其余投诉 → 杭州客户服务部",
    "is_default": True,
    "action": {"department_id": "HZ:SVC"},
}


async def _hangzhou_without_rules(system: System) -> dict:
    admin = token(system.routing_settings, org=ORG)
    for path, body in HANGZHOU:
        made = await system.routing.post(path, json=body, headers=admin)
        assert made.status_code == 201, made.text
    return admin


async def _add_the_default_rule(system: System, admin: dict) -> None:
    made = await system.routing.post("/v1/routing/rules", json=DEFAULT_RULE, headers=admin)
    assert made.status_code == 201, made.text


@integration
async def test_an_acknowledgement_and_a_wait_while_unroutable_move_the_clocks_it_gets(
    system_factory: SystemFactory,
) -> None:
    clock = ManualClock(MONDAY_10_SHANGHAI)
    system = await system_factory(clock=clock, routing=FAST_TIMERS)
    admin = await _hangzhou_without_rules(system)
    t0 = clock.now()
    complaint = received(org=ORG, branch="HZ", received_at=t0)
    cid = complaint.complaint_id
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
    clock = ManualClock(MONDAY_10_SHANGHAI)
    system = await system_factory(clock=clock, routing=FAST_TIMERS)
    admin = await _hangzhou_without_rules(system)
    t0 = clock.now()
    complaint = received(org=ORG, branch="HZ", received_at=t0)
    cid = complaint.complaint_id
    resolved_at, reopened_at = t0 + timedelta(hours=1), t0 + timedelta(days=1)
    async with intake_producer(system) as publish:
        await publish(EventType.COMPLAINT_RECEIVED, complaint)
        await publish(EventType.COMPLAINT_RESOLVED, resolved(complaint, resolved_at=resolved_at))
        reopened = ComplaintReopened(
            **base(complaint),
            reason="客户不满意",
            reopened_by="followup",
            reopened_at=reopened_at,
            reopen_count=1,
        )
        await publish(EventType.COMPLAINT_REOPENED, reopened)
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
    assert (document["breached"], document["escalation_level"]) == (False, 0)


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
