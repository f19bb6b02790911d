"""Integration: the record's SLA figures agree with routing's clocks.

Routing's clock is the truth of "on time": business hours, and no time counted while the
complaint waits on the customer. Its verdict on a stopped clock (``complaint.sla_stopped``)
is what the record, the due-time lists and the report show; a queued complaint's clocks run
and reach the record like an owned one's; ``breached`` tells of the current cycle in both
services.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import pytest

from complaints_shared.clock import ManualClock
from complaints_shared.events import (
    ComplaintEscalated,
    ComplaintQueued,
    ComplaintSlaBreached,
    ComplaintSlaBreachWithdrawn,
    EscalationStep,
    EventType,
    SlaClock,
)
from routing.assignments.projections import REMEMBERED
from tests.support.clock import at
from tests.support.http import command, complaint_of, complaint_when, create_complaint, token
from tests.support.kafka import publish
from tests.support.routing import (
    FAST_TIMERS,
    MONDAY_10_SHANGHAI,
    assignment_when,
    hangzhou_service_desk,
)
from tests.support.system import System, SystemFactory
from tests.support.waits import eventually

pytestmark = pytest.mark.integration

MINUTE = timedelta(minutes=1)
WINDOW = {"from": "2026-11-01T00:00:00Z", "to": "2027-03-01T00:00:00Z"}


def _iso(moment) -> str:
    return moment.isoformat().replace("+00:00", "Z")


async def _listed(system: System, headers: dict, **params: str) -> list[str]:
    response = await system.intake.get("/v1/complaints", params=params, headers=headers)
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


async def _report(system: System, org: str = "demo") -> dict:
    supervisor = token(system.intake_settings, org=org, roles=("supervisor",))
    response = await system.intake.get("/v1/reports/summary", params=WINDOW, headers=supervisor)
    assert response.status_code == 200, response.text
    (group,) = response.json()["groups"]
    return group


async def _timeline_has(system: System, cid: str, headers: dict, action: str, count: int = 1):
    """Wait until the complaint's timeline holds ``count`` entries of ``action``."""

    async def probe() -> bool:
        response = await system.intake.get(f"/v1/complaints/{cid}/timeline", headers=headers)
        actions = [entry["action"] for entry in response.json()["entries"]]
        return actions.count(action) >= count

    await eventually(probe, what=f"{count} {action} on the timeline", timeout_s=20)


async def _verdict(system: System, cid: str, headers: dict, count: int = 1) -> dict:
    """The record once routing's ``count``-th verdict on a clock reached it."""
    await _timeline_has(system, cid, headers, "sla_stopped", count)
    return await complaint_of(system, cid, headers)


async def test_resolving_while_waiting_on_the_customer_is_on_time_as_routing_judges(
    system_factory: SystemFactory,
) -> None:
    clock = ManualClock(MONDAY_10_SHANGHAI)
    system = await system_factory(clock=clock, routing=FAST_TIMERS)
    agent = token(system.intake_settings, branches=["LZ"], roles=("agent",))
    cid = (await create_complaint(system, agent))["id"]
    await complaint_when(
        system, cid, agent, lambda c: c["resolve_due_at"], what="due times", timeout_s=20
    )
    await command(system, f"/v1/complaints/{cid}/acknowledge", {}, agent)
    clock.advance(timedelta(hours=1))
    waiting = await command(
        system, f"/v1/complaints/{cid}/pending-customer", {"reason": "等缴费凭证"}, agent
    )
    # The resolve clock stands still: its due time is unknown until the customer answers.
    assert waiting["resolve_due_at"] is None
    assert waiting["acknowledge_due_at"] is not None  # acknowledged: that clock is stopped
    await assignment_when(system, cid, lambda d: d["paused"], what="routing paused the clocks")

    clock.advance(timedelta(days=20))  # long past the due time the pause froze
    assert cid not in await _listed(system, agent, resolve_due_before=_iso(clock.now()))
    assert (await _report(system))["resolve_on_time_pct"] is None  # not overdue

    await command(system, f"/v1/complaints/{cid}/resolve", {"summary": "已退费"}, agent)
    routed = await assignment_when(system, cid, lambda d: d["status"] == "resolved")
    resolve_clock = routed["clocks"]["resolve"]
    assert routed["breached"] is False
    assert resolve_clock["stopped_at"] <= resolve_clock["due_at"]  # the wait left out
    record = await _verdict(system, cid, agent, count=2)  # the acknowledgement's, then this
    assert record["resolution"]["on_time"] is True
    assert at(record["resolution"]["resolve_due_at"]) == resolve_clock["due_at"]
    assert at(record["resolve_due_at"]) == routed["resolve_due_at"] == resolve_clock["due_at"]
    assert [r["on_time"] for r in record["resolutions"]] == [True]
    assert (await _report(system))["resolve_on_time_pct"] == 100.0


async def test_acknowledging_while_waiting_and_resolving_at_the_resume_are_on_routings_clock(
    system_factory: SystemFactory,
) -> None:
    clock = ManualClock(MONDAY_10_SHANGHAI)
    system = await system_factory(clock=clock, routing=FAST_TIMERS)
    agent = token(system.intake_settings, branches=["LZ"], roles=("agent",))
    # High: acknowledge within 4 business hours, resolve within 3 business days.
    cid = (await create_complaint(system, agent, severity="high"))["id"]
    await complaint_when(
        system, cid, agent, lambda c: c["resolve_due_at"], what="due times", timeout_s=20
    )
    clock.advance(timedelta(hours=1))
    await command(system, f"/v1/complaints/{cid}/pending-customer", {"reason": "等照片"}, agent)
    await assignment_when(system, cid, lambda d: d["paused"], what="routing paused the clocks")
    clock.advance(timedelta(days=10))  # both due times the pause froze have passed

    await command(system, f"/v1/complaints/{cid}/acknowledge", {}, agent)
    routed = await assignment_when(
        system, cid, lambda d: d["clocks"]["acknowledge"]["state"] == "stopped"
    )
    record = await complaint_when(
        system,
        cid,
        agent,
        lambda c: c["acknowledge_due_at"] is not None,
        what="routing's verdict on the acknowledgement",
        timeout_s=20,
    )
    assert record["acknowledgement"]["late"] is False
    assert at(record["acknowledge_due_at"]) == routed["clocks"]["acknowledge"]["due_at"]
    assert at(record["acknowledged_at"]) <= at(record["acknowledge_due_at"])

    # Resolved the moment the customer answers, before routing announces the new due times.
    await command(system, f"/v1/complaints/{cid}/resume", {}, agent)
    await command(system, f"/v1/complaints/{cid}/resolve", {"summary": "已处理"}, agent)
    record = await _verdict(system, cid, agent, count=2)
    assert record["resolution"]["on_time"] is True
    routed = await assignment_when(system, cid, lambda d: d["status"] == "resolved")
    assert at(record["resolution"]["resolve_due_at"]) == routed["resolve_due_at"]
    report = await _report(system)
    assert (report["acknowledge_on_time_pct"], report["resolve_on_time_pct"]) == (100.0, 100.0)


async def _full_department(system: System, org: str) -> None:
    """A branch whose one department has nobody with capacity: everything queues."""
    admin = token(system.routing_settings, org=org)
    for path, body in (
        ("/v1/directory/branches", {"code": "HZ", "name": "杭州门店"}),
        (
            "/v1/directory/departments",
            {"branch": "HZ", "code": "SVC", "name": "客户服务部", "kind": "customer_service"},
        ),
        (
            "/v1/directory/staff",
            {"id": "hz-li", "branch": "HZ", "department": "SVC", "name": "李娜", "capacity": 0},
        ),
        (
            "/v1/routing/rules",
            {
                "id": "everything",
                "name": "其余",
                "is_default": True,
                "action": {"department_id": "HZ:SVC"},
            },
        ),
    ):
        made = await system.routing.post(path, json=body, headers=admin)
        assert made.status_code == 201, made.text


async def test_a_queued_complaint_has_routings_due_times_through_waits_and_reopens(
    system_factory: SystemFactory,
) -> None:
    clock = ManualClock(MONDAY_10_SHANGHAI)
    system = await system_factory(clock=clock, routing=FAST_TIMERS)
    await _full_department(system, "acme")
    acme = token(system.intake_settings, org="acme")
    cid = (await create_complaint(system, acme, branch="HZ", subject="门店服务态度差"))["id"]
    record = await complaint_when(
        system,
        cid,
        acme,
        lambda c: c["assignment"] and c["resolve_due_at"],
        what="the queued complaint's due times",
        timeout_s=20,
    )
    routed = await assignment_when(system, cid)
    assert routed["status"] == "queued" and record["assignment"]["queued"] is True
    assert at(record["acknowledge_due_at"]) == routed["acknowledge_due_at"]
    assert at(record["resolve_due_at"]) == routed["resolve_due_at"]
    far = _iso(clock.now() + timedelta(days=60))
    assert cid in await _listed(system, acme, resolve_due_before=far)

    # A wait while queued: routing announces the due times the resume lays out.
    base = f"/v1/complaints/{cid}"
    await command(system, f"{base}/pending-customer", {"reason": "等客户回电"}, acme)
    await assignment_when(system, cid, lambda d: d["paused"], what="routing paused the clocks")
    clock.advance(timedelta(days=2))
    await command(system, f"{base}/resume", {}, acme)
    resumed = await assignment_when(system, cid, lambda d: not d["paused"], what="resumed")
    assert resumed["resolve_due_at"] > routed["resolve_due_at"]
    await complaint_when(
        system,
        cid,
        acme,
        lambda c: c["resolve_due_at"] and at(c["resolve_due_at"]) == resumed["resolve_due_at"],
        what="the resumed due time on the record",
        timeout_s=20,
    )

    clock.advance(timedelta(days=30))  # still nobody with room: resolved far too late
    await command(system, f"{base}/resolve", {"summary": "处理"}, acme)
    record = await _verdict(system, cid, acme)
    assert record["resolution"]["on_time"] is False
    assert at(record["resolution"]["resolve_due_at"]) == resumed["resolve_due_at"]
    assert (await _report(system, "acme"))["resolve_on_time_pct"] == 0.0

    reopened_at = clock.advance(timedelta(days=1))
    await command(system, f"{base}/reopen", {"reason": "客户不满意"}, acme)
    requeued = await assignment_when(
        system, cid, lambda d: d["status"] == "queued" and d.get("reopen_count") == 1
    )
    assert requeued["clocks"]["resolve"]["started_at"] == reopened_at
    record = await complaint_when(
        system,
        cid,
        acme,
        lambda c: c["resolve_due_at"] is not None,
        what="the new cycle's due time on the record",
        timeout_s=20,
    )
    assert at(record["resolve_due_at"]) == requeued["resolve_due_at"]


async def test_a_queued_event_without_due_times_keeps_those_on_record(system: System) -> None:
    """``complaint.queued`` published before it carried due times is still consumed."""
    admin = token(system.intake_settings)
    cid = (await create_complaint(system, admin))["id"]
    record = await complaint_when(
        system, cid, admin, lambda c: c["resolve_due_at"], what="due times", timeout_s=20
    )
    earlier = ComplaintQueued(
        complaint_id=cid,
        org="demo",
        branch="LZ",
        department="LZ:BILLING",
        department_name="计费账务部",
        rule_id="demo:billing-keywords",
        rule_version=1,
        queued_at=at(record["assignment"]["assigned_at"]) + MINUTE,
    )
    payload = earlier.model_dump(mode="json", exclude_none=True)
    assert "resolve_due_at" not in payload  # as an earlier version published it
    await publish(
        system, (EventType.COMPLAINT_QUEUED, ComplaintQueued(**payload)), service="routing"
    )
    queued = await complaint_when(
        system, cid, admin, lambda c: c["assignment"]["queued"], what="queued", timeout_s=20
    )
    assert queued["acknowledge_due_at"] == record["acknowledge_due_at"]
    assert queued["resolve_due_at"] == record["resolve_due_at"]


async def test_breached_tells_of_the_current_cycle_in_routing_and_intake(
    system_factory: SystemFactory,
) -> None:
    clock = ManualClock(MONDAY_10_SHANGHAI)
    system = await system_factory(clock=clock, routing=FAST_TIMERS)
    admin = token(system.intake_settings)
    supervisor = token(system.routing_settings, roles=("supervisor",))
    cid = (await create_complaint(system, admin, severity="high"))["id"]
    await complaint_when(
        system, cid, admin, lambda c: c["resolve_due_at"], what="due times", timeout_s=20
    )
    await command(system, f"/v1/complaints/{cid}/acknowledge", {}, admin)
    routed = await assignment_when(
        system, cid, lambda d: d["clocks"]["acknowledge"]["state"] == "stopped"
    )
    first_due = routed["resolve_due_at"]
    clock.set(first_due + MINUTE)
    await complaint_when(
        system,
        cid,
        admin,
        lambda c: c["sla"]["resolve_breached"],
        what="the resolve breach on the record",
        timeout_s=20,
    )
    assert cid in await _listed(system, admin, breached="true")

    async def breached_in_workload() -> int:
        response = await system.routing.get(
            "/v1/assignments/workload", params={"department": "LZ:BILLING"}, headers=supervisor
        )
        assert response.status_code == 200, response.text
        return response.json()["departments"][0]["breached"]

    assert await breached_in_workload() == 1

    await command(system, f"/v1/complaints/{cid}/resolve", {"summary": "已处理"}, admin)
    await assignment_when(system, cid, lambda d: d["status"] == "resolved")
    await command(system, f"/v1/complaints/{cid}/reopen", {"reason": "客户不满意"}, admin)
    routed = await assignment_when(
        system, cid, lambda d: d["status"] == "open" and d.get("reopen_count") == 1
    )
    assert routed["breached"] is False
    record = await complaint_when(
        system,
        cid,
        admin,
        lambda c: c["resolve_due_at"] is not None,
        what="the new cycle on the record",
        timeout_s=20,
    )
    assert record["sla"]["resolve_breached"] is False
    assert cid not in await _listed(system, admin, breached="true")
    assert await breached_in_workload() == 0

    # A breach of the cycle the reopen ended, consumed late, is on the timeline only.
    late = ComplaintSlaBreached(
        complaint_id=cid,
        org="demo",
        branch="LZ",
        clock=SlaClock.RESOLVE,
        due_at=first_due,
        breached_at=first_due + MINUTE,
        escalation_level=1,
        reopen_count=0,
    )
    await publish(system, (EventType.COMPLAINT_SLA_BREACHED, late), service="routing")

    await _timeline_has(system, cid, admin, "sla_breached", count=2)
    assert cid not in await _listed(system, admin, breached="true")

    # The new cycle's own breach counts again, in both services.
    clock.set(routed["resolve_due_at"] + MINUTE)
    await complaint_when(
        system,
        cid,
        admin,
        lambda c: c["sla"]["resolve_breached"],
        what="the new cycle's breach",
        timeout_s=20,
    )
    assert cid in await _listed(system, admin, breached="true")
    assert await breached_in_workload() == 1


async def test_a_wait_begun_while_unroutable_gets_its_due_times_at_the_resume(
    system_factory: SystemFactory,
) -> None:
    """The wait begun while unroutable is remembered: routed, the clocks stand still until the
    resume, which lays them out again (the hour waited does not count) and announces them."""
    clock = ManualClock(MONDAY_10_SHANGHAI)
    system = await system_factory(clock=clock, routing=FAST_TIMERS)
    admin = token(system.routing_settings, org="acme")
    await hangzhou_service_desk(system, admin)
    acme = token(system.intake_settings, org="acme")
    cid = (await create_complaint(system, acme, branch="HZ", subject="门店服务态度差"))["id"]
    await assignment_when(system, cid, lambda d: d["status"] == "unroutable", what="unroutable")
    base = f"/v1/complaints/{cid}"
    await command(system, f"{base}/acknowledge", {}, acme)
    await command(system, f"{base}/pending-customer", {"reason": "等客户回电"}, acme)
    # Routing holds both before a rule routes the complaint (else the wait comes after it).
    await assignment_when(
        system,
        cid,
        lambda d: len(d.get(REMEMBERED) or []) == 2,
        what="the acknowledgement and the wait remembered",
    )

    rule = {
        "id": "everything",
        "name": "其余",
        "is_default": True,
        "action": {"department_id": "HZ:SVC"},
    }
    made = await system.routing.post("/v1/routing/rules", json=rule, headers=admin)
    assert made.status_code == 201, made.text
    routed = await assignment_when(system, cid, lambda d: d["status"] == "open", what="routed")
    await _timeline_has(system, cid, acme, "assigned")
    waiting = await complaint_of(system, cid, acme)
    assert waiting["status"] == "pending_customer" and waiting["resolve_due_at"] is None

    clock.advance(timedelta(hours=1))
    await command(system, f"{base}/resume", {}, acme)
    record = await complaint_when(
        system,
        cid,
        acme,
        lambda c: c["resolve_due_at"] is not None,
        what="the due time announced at the resume",
        timeout_s=20,
    )
    assert routed["paused"] is True
    assert at(record["resolve_due_at"]) == routed["resolve_due_at"] + timedelta(hours=1)


async def _hz_with_a_chain(system: System) -> dict:
    """Organisation acme's branch HZ: a department with a two-rung chain and no rule yet."""
    admin = token(system.routing_settings, org="acme")
    department = {
        "branch": "HZ",
        "code": "SVC",
        "name": "客户服务部",
        "kind": "customer_service",
        "escalation_chain": [{"role": "team_lead"}, {"role": "department_head"}],
    }
    staff = [
        {"id": "hz-li", "name": "李娜", "capacity": 5},
        {"id": "hz-zhao", "name": "赵组长", "capacity": 5, "role": "team_lead"},
        {"id": "hz-qian", "name": "钱经理", "capacity": 5, "role": "department_head"},
    ]
    for path, body in (
        ("/v1/directory/branches", {"code": "HZ", "name": "杭州门店"}),
        ("/v1/directory/departments", department),
        *(
            ("/v1/directory/staff", {**person, "branch": "HZ", "department": "SVC"})
            for person in staff
        ),
    ):
        made = await system.routing.post(path, json=body, headers=admin)
        assert made.status_code == 201, made.text
    return admin


async def _route_hz(system: System, admin: dict) -> None:
    rule = {"id": "hz", "name": "杭州", "is_default": True, "action": {"department_id": "HZ:SVC"}}
    made = await system.routing.post("/v1/routing/rules", json=rule, headers=admin)
    assert made.status_code == 201, made.text


async def test_an_acknowledgement_made_late_while_unroutable_is_a_breach_once_routed(
    system_factory: SystemFactory,
) -> None:
    """Routed at last, a complaint's clocks run from its receipt and take what it went
    through meanwhile in order, the timers a scheduler would have fired among it: an
    acknowledgement a day late is a breach that climbed a rung at the due time, as it is
    for a complaint routed all along, in routing and on the record."""
    clock = ManualClock(MONDAY_10_SHANGHAI)
    system = await system_factory(clock=clock, routing=FAST_TIMERS)
    admin = await _hz_with_a_chain(system)
    acme = token(system.intake_settings, org="acme")
    cid = (await create_complaint(system, acme, branch="HZ", subject="门店服务态度差"))["id"]
    await assignment_when(system, cid, lambda d: d["status"] == "unroutable", what="unroutable")
    clock.advance(timedelta(hours=24))
    await command(system, f"/v1/complaints/{cid}/acknowledge", {}, acme)
    await assignment_when(
        system, cid, lambda d: len(d.get(REMEMBERED) or []) == 1, what="the late ack remembered"
    )

    await _route_hz(system, admin)
    routed = await assignment_when(system, cid, lambda d: d["status"] == "open", what="routed")
    acknowledge = routed["clocks"]["acknowledge"]
    assert acknowledge["state"] == "stopped" and acknowledge["breach_count"] == 1
    assert acknowledge["due_at"] < MONDAY_10_SHANGHAI + timedelta(hours=24)
    (climbed,) = routed["escalations"]
    assert (climbed["reason"], climbed["clock"], climbed["level"]) == (
        "sla_breach",
        "acknowledge",
        1,
    )
    assert climbed["escalated_to_id"] == "hz-zhao"
    assert climbed["escalated_at"] == acknowledge["due_at"]
    assert routed["escalation_level"] == 1 and routed["breached"] is True

    record = await _verdict(system, cid, acme)
    assert record["acknowledgement"]["late"] is True
    assert record["sla"]["acknowledge_breached"] is True and record["escalation_level"] == 1
    await _timeline_has(system, cid, acme, "sla_breached")


async def test_a_complaint_reopened_before_it_was_ever_routed_climbs_a_rung_once_routed(
    system_factory: SystemFactory,
) -> None:
    """A reopen takes a routed complaint one rung up its chain; one reopened while it had no
    route yet is taken up the same rung once routed, by whoever reopened it, and its fresh
    resolve clock runs from the reopen. The resolution made while it had no route is judged
    then on its cycle's clock, as any: it used to stay unjudged on the record for good."""
    clock = ManualClock(MONDAY_10_SHANGHAI)
    system = await system_factory(clock=clock, routing=FAST_TIMERS)
    admin = await _hz_with_a_chain(system)
    acme = token(system.intake_settings, org="acme")
    head = token(system.intake_settings, org="acme", roles=("supervisor",), subject="hz-head")
    cid = (await create_complaint(system, acme, branch="HZ", subject="退货被拒"))["id"]
    base = f"/v1/complaints/{cid}"
    await assignment_when(system, cid, lambda d: d["status"] == "unroutable", what="unroutable")
    await command(system, f"{base}/acknowledge", {}, acme)
    clock.advance(timedelta(hours=1))
    await command(system, f"{base}/resolve", {"summary": "已退款"}, acme)
    clock.advance(timedelta(hours=1))
    reopened_at = clock.now()
    await command(system, f"{base}/reopen", {"reason": "客户称未收到退款"}, head)
    await assignment_when(
        system,
        cid,
        lambda d: d["status"] == "unroutable" and len(d.get(REMEMBERED) or []) == 3,
        what="the acknowledgement, the resolution and the reopen remembered",
    )

    await _route_hz(system, admin)
    routed = await assignment_when(system, cid, lambda d: d["status"] == "open", what="routed")
    (climbed,) = routed["escalations"]
    assert (climbed["reason"], climbed["level"], climbed["escalated_by"]) == (
        "reopened",
        1,
        "hz-head",
    )
    assert climbed["escalated_at"] == reopened_at
    assert routed["escalation_level"] == 1 and routed["breached"] is False
    assert routed["clocks"]["resolve"]["started_at"] >= reopened_at
    record = await complaint_when(
        system, cid, acme, lambda c: c["escalation_level"] == 1, what="the rung on the record"
    )
    assert record["status"] == "reopened"
    record = await complaint_when(
        system,
        cid,
        acme,
        lambda c: c["resolutions"][0]["on_time"] is not None,
        what="the first cycle's verdict on the record",
        timeout_s=20,
    )
    (first,) = record["resolutions"]
    assert first["on_time"] is True  # resolved an hour in, within the first cycle's clock
    assert at(first["resolve_due_at"]) > at(first["resolved_at"])
    assert record["resolve_due_at"] is not None
    assert at(record["resolve_due_at"]) == routed["clocks"]["resolve"]["due_at"], (
        "the record's due time is the present cycle's"
    )


def _withdrawal(
    base: dict,
    clock: SlaClock,
    due: datetime,
    *,
    rungs: Sequence[Any] = (),
    standing: EscalationStep | None = None,
) -> tuple[EventType, ComplaintSlaBreachWithdrawn]:
    """Routing's withdrawal of ``clock``'s breach due at ``due`` (stopped a minute before it,
    news of it late), of the ``rungs`` it climbed, in cycle 0; ``standing`` still stands."""
    reasons = {SlaClock.RESOLVE: "resolved_on_time", SlaClock.ACKNOWLEDGE: "acknowledged_on_time"}
    return EventType.COMPLAINT_SLA_BREACH_WITHDRAWN, ComplaintSlaBreachWithdrawn(
        **base,
        clock=clock,
        due_at=due,
        stopped_at=due - MINUTE,
        reason=reasons[clock],
        withdrawn_breaches=max(len(rungs), 1),
        withdrawn_at=due + 5 * MINUTE,
        withdrawn_escalations=list(rungs),
        escalation_level=standing.level if standing else 0,
        escalation=standing,
        reopen_count=0,
    )


async def test_rungs_withdrawn_by_a_late_withdrawal_after_a_reopen_leave_routings_level(
    system: System,
) -> None:
    """Routing climbed two rungs for a resolve breach (its consumer behind), then learned of
    the on-time resolution and withdrew both, then took the reopen one rung up from level 0.
    Intake, behind too, applied both climbs, then the reopen's, then the withdrawal of the
    ended cycle: it dropped the withdrawal as of another cycle and kept level 2 against
    routing's 1. Now the level is the highest rung not withdrawn, whatever the order; a rung
    replayed after its withdrawal stays withdrawn; and the acknowledge clock's flag, which
    no reopen clears, follows its withdrawal whatever the cycle."""
    admin = token(system.intake_settings)
    cid = (await create_complaint(system, admin, severity="high"))["id"]
    routed = await assignment_when(system, cid, lambda d: d["status"] == "open")
    base = {"complaint_id": cid, "org": "demo", "branch": routed["branch"]}
    due = routed["resolve_due_at"]
    ack_due = routed["acknowledge_due_at"]
    rungs = [
        ComplaintEscalated(
            **base,
            level=level,
            escalated_to_role="supervisor",
            reason="sla_breach",
            escalated_at=due + MINUTE * level,
        )
        for level in (1, 2)
    ]
    ack_breach = ComplaintSlaBreached(
        **base,
        clock=SlaClock.ACKNOWLEDGE,
        due_at=ack_due,
        breached_at=ack_due + MINUTE,
        escalation_level=0,
        reopen_count=0,
    )
    await publish(
        system,
        (EventType.COMPLAINT_SLA_BREACHED, ack_breach),
        *((EventType.COMPLAINT_ESCALATED, rung) for rung in rungs),
        service="routing",
    )
    await complaint_when(
        system,
        cid,
        admin,
        lambda c: c["escalation_level"] == 2 and c["sla"]["acknowledge_breached"],
        what="both rungs and the acknowledge breach on the record",
    )

    await command(system, f"/v1/complaints/{cid}/resolve", {"summary": "已处理"}, admin)
    await assignment_when(system, cid, lambda d: d["status"] == "resolved")
    await command(system, f"/v1/complaints/{cid}/reopen", {"reason": "客户不满意"}, admin)
    reopened = await assignment_when(
        system, cid, lambda d: d["status"] == "open" and d.get("reopen_count") == 1
    )
    assert reopened["escalation_level"] == 1  # routing climbed from its own level 0
    await _timeline_has(system, cid, admin, "escalated", count=3)

    await publish(
        system,
        _withdrawal(base, SlaClock.RESOLVE, due, rungs=[rung.model_dump() for rung in rungs]),
        _withdrawal(base, SlaClock.ACKNOWLEDGE, ack_due),
        service="routing",
    )
    await _timeline_has(system, cid, admin, "sla_breach_withdrawn", count=2)
    record = await complaint_of(system, cid, admin)
    assert record["escalation_level"] == reopened["escalation_level"] == 1
    assert record["escalation"]["reason"] == "reopened"
    assert record["sla"]["acknowledge_breached"] is False

    # The second rung's climb delivered again after its withdrawal (a replay, a redelivery
    # past the remembered event ids) finds it withdrawn.
    # So does a breach: no flag, and the timeline shows it withdrawn as it arrives.
    await publish(
        system,
        (EventType.COMPLAINT_ESCALATED, rungs[1]),
        (EventType.COMPLAINT_SLA_BREACHED, ack_breach),
        service="routing",
    )
    await _timeline_has(system, cid, admin, "sla_breached", count=2)
    record = await complaint_of(system, cid, admin)
    assert (record["escalation_level"], record["escalation"]["reason"]) == (1, "reopened")
    assert record["sla"]["acknowledge_breached"] is False
    timeline = await system.intake.get(f"/v1/complaints/{cid}/timeline", headers=admin)
    late = [
        entry
        for entry in timeline.json()["entries"]
        if entry["action"] in ("escalated", "sla_breached")
    ][-2:]
    assert [(entry["action"], entry["withdrawn"]["reason"]) for entry in late] == [
        ("escalated", "resolved_on_time"),
        ("sla_breached", "acknowledged_on_time"),
    ]


@pytest.mark.parametrize("kept", ["no rungs", "the top rung seeded"])
async def test_a_withdrawal_on_a_record_from_before_the_rungs_were_kept_leaves_routings_level(
    system: System, kept: str
) -> None:
    """A complaint escalated twice before 4 December keeps only its highest rung
    (``escalation``), not the rungs under it. A withdrawal of that rung then left no rung
    standing: level 0 against routing's 1, and the escalated filter lost it. The
    withdrawal says which rung still stands; the record starts from that."""
    admin = token(system.intake_settings)
    cid = (await create_complaint(system, admin, severity="high"))["id"]
    routed = await assignment_when(system, cid, lambda d: d["status"] == "open")
    base = {"complaint_id": cid, "org": "demo", "branch": routed["branch"]}
    due = routed["acknowledge_due_at"]
    rung = {"escalated_to_role": "supervisor", "escalated_by": "routing"}
    first = EscalationStep(level=1, reason="sla_breach", escalated_at=due + MINUTE, **rung)
    second = EscalationStep(level=2, reason="sla_breach", escalated_at=due + 2 * MINUTE, **rung)
    await complaint_when(system, cid, admin, lambda c: c["assignment"], what="assigned")
    complaints = system.mongo[system.intake_settings.database_name()].complaints
    await complaints.update_one(  # as a record escalated twice before 4 December stands
        {"_id": cid},
        {
            "$set": {"escalation_level": 2, "escalation": second.model_dump()},
            "$unset": {"escalation_steps": ""},
        }
        if kept == "no rungs"
        else {  # a climb since the upgrade seeded the rungs with the top one only
            "$set": {
                "escalation_level": 2,
                "escalation": second.model_dump(),
                "escalation_steps": [{**second.model_dump(), "withdrawn": False}],
            }
        },
    )
    await publish(
        system,
        _withdrawal(base, SlaClock.RESOLVE, due, rungs=[second], standing=first),
        service="routing",
    )
    record = await complaint_when(
        system, cid, admin, lambda c: c["escalation_level"] < 2, what="the withdrawal applied"
    )
    assert (record["escalation_level"], record["escalation"]["level"]) == (1, 1)
    assert cid in await _listed(system, admin, escalated="true")


@pytest.mark.parametrize("wait", [True, False], ids=["after-a-wait", "straight"])
async def test_a_finish_before_any_acknowledgement_answers_that_clock_in_routing_and_intake(
    system_factory: SystemFactory, wait: bool
) -> None:
    """Routing stops the acknowledge clock at a finish nobody acknowledged before, and used
    to announce only the resolve clock's verdict. So a wait before the resolution left the
    record without an acknowledge due time for good (out of the report), and an
    acknowledgement after a reopen was recorded late by intake against a clock routing had
    judged met at the resolution."""
    clock = ManualClock(MONDAY_10_SHANGHAI)
    system = await system_factory(clock=clock, routing=FAST_TIMERS)
    agent = token(system.intake_settings, branches=["LZ"], roles=("agent",))
    supervisor = token(system.intake_settings, branches=["LZ"], roles=("supervisor",))
    # High: acknowledge within 4 business hours.
    cid = (await create_complaint(system, agent, severity="high"))["id"]
    await complaint_when(
        system, cid, agent, lambda c: c["resolve_due_at"], what="due times", timeout_s=20
    )
    clock.advance(timedelta(hours=1))
    if wait:
        waiting = await command(
            system, f"/v1/complaints/{cid}/pending-customer", {"reason": "等客户回电"}, agent
        )
        assert waiting["acknowledge_due_at"] is None  # the paused clock's due time is unknown
        await assignment_when(system, cid, lambda d: d["paused"], what="routing paused them")
        clock.advance(timedelta(days=3))
    await command(system, f"/v1/complaints/{cid}/resolve", {"summary": "已电话解释"}, agent)
    routed = await assignment_when(system, cid, lambda d: d["status"] == "resolved")
    ack_clock = routed["clocks"]["acknowledge"]
    assert ack_clock["state"] == "stopped" and ack_clock["stopped_at"] <= ack_clock["due_at"]

    record = await _verdict(system, cid, agent, count=2)  # the acknowledge clock's and resolve's
    assert at(record["acknowledge_due_at"]) == ack_clock["due_at"]
    assert at(record["acknowledge_stopped_at"]) == ack_clock["stopped_at"]
    assert record["acknowledgement"] is None
    assert (await _report(system))["acknowledge_on_time_pct"] == 100.0

    await command(system, f"/v1/complaints/{cid}/reopen", {"reason": "客户仍不满意"}, supervisor)
    clock.advance(timedelta(days=2))  # long past the acknowledge due time
    acknowledged = await command(system, f"/v1/complaints/{cid}/acknowledge", {}, agent)
    assert acknowledged["acknowledgement"]["late"] is False, "routing judged the clock met"
    after = await assignment_when(
        system, cid, lambda d: d["status"] == "open", what="routing reopened it"
    )
    assert after["clocks"]["acknowledge"] == ack_clock, "the acknowledgement changed no clock"
    assert (await _report(system))["acknowledge_on_time_pct"] == 100.0
