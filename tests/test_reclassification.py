"""Integration: a supervisor's new severity, category or flags, through intake and routing.

A hospital complaint registered as a service-attitude one that turns out, on the call-back,
to allege a medical error becomes a major incident: its report deadline runs from the
reclassification and it goes to the hospital head at once, in routing and on intake's
record. A new severity re-lays the customer's clocks from their start. Only unfinished
complaints are reclassified, only by their branches' supervisors; a redelivered or late
reclassification event changes nothing more.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from complaints_shared.clock import ManualClock
from complaints_shared.events import ComplaintAssigned, ComplaintReclassified, EventType
from routing.assignments import routing_context, unroutable
from routing.directory import store as directory_store
from tests.support.http import command, complaint_when, create_complaint, token
from tests.support.kafka import handled_count, of_type, publish, republish, service_events
from tests.support.routing import (
    FAST_TIMERS,
    MONDAY_10_SHANGHAI,
    assignment_when,
    hangzhou_service_desk,
    routing_db,
)
from tests.support.system import System, SystemFactory
from tests.support.waits import eventually

pytestmark = pytest.mark.integration

HOUR = timedelta(hours=1)
MEDICAL_ERROR = "回访时家属反映：疑似误诊导致病情加重，按重大医疗差错处理"
RECLASSIFIED = EventType.COMPLAINT_RECLASSIFIED


def _supervisor(system: System, branch: str, subject: str = "head") -> dict[str, str]:
    return token(system.intake_settings, branches=[branch], roles=("supervisor",), subject=subject)


async def _reclassify(system: System, cid: str, body: dict, headers: dict) -> dict:
    return await command(system, f"/v1/complaints/{cid}/reclassify", body, headers)


async def _routed(system: System, cid: str, headers: dict) -> dict:
    return await complaint_when(
        system, cid, headers, lambda c: c["assignment"], what="the assignment", timeout_s=20
    )


async def test_a_medical_error_found_later_makes_a_hospital_complaint_a_major_incident(
    system_factory: SystemFactory,
) -> None:
    clock = ManualClock(MONDAY_10_SHANGHAI)  # the patient-relations office is open
    system = await system_factory(clock=clock, routing=FAST_TIMERS)
    head = _supervisor(system, "HOSP", subject="hosp-qin")
    cid = (
        await create_complaint(
            system,
            head,
            branch="HOSP",
            category="service_attitude",
            severity="normal",
            subject="候诊时护士态度差",
            description="家属反映候诊时护士态度恶劣。",
        )
    )["id"]
    record = await _routed(system, cid, head)
    assert record["major_incident"] is False and record["regulatory_report_due_at"] is None
    filing = f"/v1/assignments/{cid}/regulatory-report"
    routing_head = token(system.routing_settings, branches=["HOSP"], roles=("supervisor",))
    reference = {"reference": "卫健委-1"}
    refused = await system.routing.post(filing, json=reference, headers=routing_head)
    assert refused.status_code == 409, refused.text

    clock.advance(HOUR)
    learnt_at = clock.now()
    answer = await _reclassify(system, cid, {"category": "medical", "reason": MEDICAL_ERROR}, head)
    assert (answer["category"], answer["severity"], answer["reclassification_count"]) == (
        "medical",
        "normal",
        1,
    )

    # Routing: the report deadline from the reclassification, the hospital head at once.
    assignment = await assignment_when(
        system, cid, lambda doc: doc.get("major_incident"), what="the major incident"
    )
    report = assignment["clocks"]["regulatory_report"]
    assert report["started_at"] == learnt_at
    assert report["due_at"] == learnt_at + 6 * HOUR
    (escalation,) = assignment["escalations"]
    assert (escalation["level"], escalation["reason"], escalation["escalated_to_id"]) == (
        2,
        "critical_incident",
        "hosp-head",
    )
    assert assignment["category"] == "medical" and assignment["escalation_level"] == 2

    # Intake's record agrees.
    record = await complaint_when(
        system,
        cid,
        head,
        lambda c: c["major_incident"] and (c["escalation"] or {}).get("level") == 2,
        what="the major incident on the record",
        timeout_s=20,
    )
    assert datetime.fromisoformat(record["regulatory_report_due_at"]) == learnt_at + 6 * HOUR
    assert record["escalation"]["reason"] == "critical_incident"
    assert record["category"] == "medical"

    # Recorded once, with what it was and what it is, in the supervisor's words.
    timeline = (await system.intake.get(f"/v1/complaints/{cid}/timeline", headers=head)).json()
    (entry,) = [e for e in timeline["entries"] if e["action"] == "reclassified"]
    assert entry["actor"] == "hosp-qin" and entry["details"]["reason"] == MEDICAL_ERROR
    assert entry["details"]["before"] == {
        "severity": "normal",
        "category": "service_attitude",
        "flags": [],
    }
    assert entry["details"]["after"]["category"] == "medical"

    # Lists and reports count it under its new category.
    found = await system.intake.get("/v1/complaints", params={"category": "medical"}, headers=head)
    assert [item["id"] for item in found.json()["items"]] == [cid]
    found = await system.intake.get(
        "/v1/complaints", params={"category": "service_attitude"}, headers=head
    )
    assert found.json()["items"] == []
    window = {"from": (clock.now() - 2 * HOUR).isoformat(), "to": clock.now().isoformat()}
    summary = await system.intake.get(
        "/v1/reports/summary", params={"group_by": "category", **window}, headers=head
    )
    groups = {group["group"]: group for group in summary.json()["groups"]}
    assert groups["medical"]["received"] == 1 and "service_attitude" not in groups

    filed = await system.routing.post(filing, json=reference, headers=routing_head)
    assert filed.status_code == 200, filed.text
    record = await complaint_when(
        system, cid, head, lambda c: c["regulatory_report"], what="the filing on the record"
    )
    assert record["regulatory_report"]["on_time"] is True


async def test_a_severity_upgrade_re_lays_the_running_clocks_from_their_start(
    system_factory: SystemFactory,
) -> None:
    clock = ManualClock(MONDAY_10_SHANGHAI)
    system = await system_factory(clock=clock, routing=FAST_TIMERS)
    head = _supervisor(system, "LZ")
    acknowledged = (await create_complaint(system, head, subject="话费多扣一"))["id"]
    waiting = (await create_complaint(system, head, subject="话费多扣二"))["id"]
    # Registered high at the same instant: the clocks the other two should end up with.
    high = (await create_complaint(system, head, severity="high", subject="话费多扣三"))["id"]
    for cid in (acknowledged, waiting, high):
        await _routed(system, cid, head)
    expected = (await assignment_when(system, high))["clocks"]
    await command(system, f"/v1/complaints/{acknowledged}/acknowledge", {}, head)
    stopped = await assignment_when(
        system,
        acknowledged,
        lambda doc: doc["clocks"]["acknowledge"]["state"] == "stopped",
        what="the acknowledge clock stopped",
    )
    acknowledge_due = stopped["clocks"]["acknowledge"]["due_at"]
    assert stopped["clocks"]["resolve"]["due_at"] > expected["resolve"]["due_at"]

    clock.advance(5 * HOUR)  # past a high complaint's 4 business hours to acknowledge
    for cid in (acknowledged, waiting):
        await _reclassify(system, cid, {"severity": "high", "reason": "客户系人大代表"}, head)

    # The stopped clock stays as it was; the resolve clock runs to a high one's target.
    document = await assignment_when(
        system, acknowledged, lambda doc: doc["severity"] == "high", what="re-laid"
    )
    assert document["clocks"]["acknowledge"]["due_at"] == acknowledge_due
    assert document["clocks"]["acknowledge"]["state"] == "stopped"
    assert document["clocks"]["resolve"]["due_at"] == expected["resolve"]["due_at"]
    assert document["priority"] == 2 and document["escalation_level"] == 0

    # Not acknowledged: its new target ran out an hour ago, so it breaches and escalates now.
    document = await assignment_when(
        system,
        waiting,
        lambda doc: doc["clocks"]["acknowledge"]["breach_count"] == 1,
        what="the acknowledge breach",
    )
    assert document["clocks"]["acknowledge"]["due_at"] == expected["acknowledge"]["due_at"]
    assert document["escalations"][-1]["reason"] == "sla_breach"
    record = await complaint_when(
        system,
        waiting,
        head,
        lambda c: c["sla"]["acknowledge_breached"] and c["escalation_level"] == 1,
        what="the breach on the record",
        timeout_s=20,
    )
    assert record["severity"] == "high" and record["major_incident"] is False
    for name in ("acknowledge", "resolve"):
        due = datetime.fromisoformat(record[f"{name}_due_at"])
        assert due == expected[name]["due_at"], name


async def test_becoming_critical_makes_a_major_incident_under_the_default_criteria(
    system_factory: SystemFactory,
) -> None:
    clock = ManualClock(MONDAY_10_SHANGHAI)
    system = await system_factory(clock=clock, routing=FAST_TIMERS)
    head = _supervisor(system, "LZ")
    cid = (await create_complaint(system, head))["id"]
    await _routed(system, cid, head)
    clock.advance(HOUR)
    await _reclassify(system, cid, {"severity": "critical", "reason": "涉及人身安全"}, head)
    record = await complaint_when(
        system,
        cid,
        head,
        lambda c: c["major_incident"] and c["escalation_level"] == 3,
        what="the branch head on the record",
        timeout_s=20,
    )
    assert record["escalation"]["reason"] == "critical_incident"
    assert datetime.fromisoformat(record["regulatory_report_due_at"]) == clock.now() + 6 * HOUR
    assert datetime.fromisoformat(record["resolve_due_at"]) == MONDAY_10_SHANGHAI + 24 * HOUR


async def test_a_finished_complaint_keeps_its_classification(system: System) -> None:
    head = _supervisor(system, "LZ")
    cid = (await create_complaint(system, head))["id"]
    await _routed(system, cid, head)
    path = f"/v1/complaints/{cid}/reclassify"

    nothing = await system.intake.post(path, json={"reason": "核实"}, headers=head)
    assert nothing.status_code == 422, nothing.text
    assert {error["field"] for error in nothing.json()["errors"]} == {
        "severity",
        "category",
        "flags",
    }
    same = await system.intake.post(
        path, json={"category": "billing", "reason": "核实"}, headers=head
    )
    assert same.status_code == 409 and "already" in same.json()["detail"], same.text

    # A retry under the same key changes nothing more.
    keyed = {**head, "Idempotency-Key": "reclassify-1"}
    body = {"severity": "high", "reason": "补充分类"}
    first = await system.intake.post(path, json=body, headers=keyed)
    again = await system.intake.post(path, json=body, headers=keyed)
    assert first.status_code == again.status_code == 200, again.text
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["reclassification_count"] == 1

    await command(system, f"/v1/complaints/{cid}/resolve", {"summary": "已退费"}, head)
    refused = await system.intake.post(
        path, json={"severity": "critical", "reason": "补充分类"}, headers=head
    )
    assert refused.status_code == 409, refused.text
    problem = refused.json()
    assert problem["current_status"] == "resolved" and problem["command"] == "reclassify"
    assert "resolved" in problem["detail"]
    record = (await system.intake.get(f"/v1/complaints/{cid}", headers=head)).json()
    assert (record["severity"], record["reclassification_count"]) == ("high", 1)


async def test_only_a_supervisor_of_the_complaints_branch_reclassifies_it(system: System) -> None:
    lz_head = _supervisor(system, "LZ")
    cid = (await create_complaint(system, lz_head))["id"]
    path = f"/v1/complaints/{cid}/reclassify"
    body = {"flags": ["regulator_involved"], "reason": "客户已拨打12315投诉"}

    agent = token(system.intake_settings, branches=["LZ"], roles=("agent",))
    assert (await system.intake.post(path, json=body, headers=agent)).status_code == 403
    hospital_head = _supervisor(system, "HOSP")
    foreign = await system.intake.post(path, json=body, headers=hospital_head)
    assert foreign.status_code == 404, foreign.text

    answer = await _reclassify(system, cid, body, lz_head)
    assert answer["flags"] == ["regulator_involved"]
    found = await system.intake.get(
        "/v1/complaints", params={"flag": "regulator_involved"}, headers=lz_head
    )
    assert [item["id"] for item in found.json()["items"]] == [cid]


async def test_a_redelivered_or_late_reclassification_applies_once(system: System) -> None:
    head = _supervisor(system, "LZ")
    cid = (await create_complaint(system, head))["id"]
    await _routed(system, cid, head)
    await _reclassify(system, cid, {"severity": "high", "reason": "第一次调整"}, head)
    await _reclassify(system, cid, {"severity": "low", "reason": "第二次调整"}, head)
    applied = await assignment_when(
        system,
        cid,
        lambda doc: doc.get("reclassification_number") == 2 and not doc.get("outbox"),
        what="both reclassifications applied",
    )

    events = await service_events(
        system, "intake", until=lambda events: len(of_type(events, RECLASSIFIED, cid)) == 2
    )
    first = of_type(events, RECLASSIFIED, cid)[0]
    data = ComplaintReclassified.model_validate(first.data)
    assert data.reclassification_number == 1 and data.severity.value == "high"

    handled = handled_count("routing", RECLASSIFIED.value)
    await republish(system, first)  # the same event again
    await publish(system, (RECLASSIFIED, data))  # the first one, arriving late as a new event
    await eventually(
        lambda: handled_count("routing", RECLASSIFIED.value) >= handled + 2,
        what="both deliveries handled",
    )
    document = await assignment_when(system, cid, what="the assignment")
    assert document["severity"] == "low"
    assert document["assignment_sequence"] == applied["assignment_sequence"]
    assert [entry["action"] for entry in document["history"]].count("reclassified") == 2
    record = (await system.intake.get(f"/v1/complaints/{cid}", headers=head)).json()
    assert (record["severity"], record["reclassification_count"]) == ("low", 2)


async def test_a_billing_complaint_found_a_medical_error_is_a_major_incident_under_its_policy(
    system_factory: SystemFactory,
) -> None:
    """A complaint routed under a policy of its old category (billing, major only when
    critical) kept that policy's criteria alone: reclassified medical with a safety risk it
    stayed no major incident, while one registered so at the same moment is one."""
    clock = ManualClock(MONDAY_10_SHANGHAI)
    system = await system_factory(clock=clock, routing=FAST_TIMERS)
    admin = token(system.routing_settings)
    billing_only = {
        "name": "计费专用",
        "categories": ["billing"],
        "major_incident": {"min_severity": "critical", "categories": [], "flags": []},
    }
    saved = await system.routing.put(
        "/v1/routing/sla-policies/billing-only", json=billing_only, headers=admin
    )
    assert saved.status_code in (200, 201), saved.text
    head = _supervisor(system, "LZ")
    cid = (await create_complaint(system, head, severity="normal", category="billing"))["id"]
    routed = await assignment_when(system, cid, lambda doc: doc.get("clocks"), what="routed")
    assert (routed["sla_policy"], routed["major_incident"]) == ("billing-only", False)

    clock.advance(HOUR)
    body = {"category": "medical", "flags": ["safety_risk"], "reason": MEDICAL_ERROR}
    await _reclassify(system, cid, body, head)
    major = await assignment_when(
        system, cid, lambda doc: doc.get("major_incident"), what="the major incident"
    )
    assert major["regulatory_report_due_at"] == clock.now() + 6 * HOUR
    assert major["sla_policy"] == "billing-only"  # its targets stay the policy's
    record = await complaint_when(
        system, cid, head, lambda c: c["major_incident"], what="the major incident on record"
    )
    assert record["regulatory_report_due_at"] is not None


async def _unroutable_in_hangzhou(system: System) -> tuple[dict, dict, str]:
    """acme's Hangzhou shop, which no rule leads to, and a normal complaint there left
    unroutable: acme's administrator's token, the shop's supervisor's, the complaint's id."""
    admin = token(system.routing_settings, org="acme")
    head = token(
        system.intake_settings,
        org="acme",
        branches=["HZ"],
        roles=("supervisor",),
        subject="hz-head",
    )
    await hangzhou_service_desk(system, admin)
    cid = (await create_complaint(system, head, branch="HZ", severity="normal"))["id"]
    await assignment_when(system, cid, lambda doc: doc["status"] == "unroutable", what="unroutable")
    return admin, head, cid


async def test_a_severity_set_while_unroutable_stands_over_a_rules_override(system: System) -> None:
    """A supervisor raised an unroutable complaint to high; the rule that routed it later
    lowered it to its ``severity_override`` (low), the supervisor's judgement undone."""
    admin, head, cid = await _unroutable_in_hangzhou(system)
    await _reclassify(system, cid, {"severity": "high", "reason": "客户多次投诉未果"}, head)
    await assignment_when(system, cid, lambda doc: doc["severity"] == "high", what="reclassified")

    rule = {
        "id": "everything",
        "name": "其余投诉",
        "is_default": True,
        "action": {"department_id": "HZ:SVC", "severity_override": "low"},
    }
    assert (await system.routing.post("/v1/routing/rules", json=rule, headers=admin)).is_success
    routed = await assignment_when(
        system, cid, lambda doc: doc["status"] == "open", what="routed", timeout_s=30
    )
    assert routed["severity"] == "high"
    record = await complaint_when(
        system, cid, head, lambda c: c["assignment"], what="routed on record", timeout_s=20
    )
    assert record["severity"] == "high"


async def test_a_category_change_that_moves_no_due_time_is_announced_by_nobody(
    system: System,
) -> None:
    """Routing announced every reclassification again, and intake recorded each as
    ``due_times_updated`` although no due time had moved."""
    head = _supervisor(system, "LZ")
    cid = (await create_complaint(system, head, severity="normal", category="billing"))["id"]
    await _routed(system, cid, head)
    await _reclassify(system, cid, {"category": "policy", "reason": "实为资费政策争议"}, head)
    await assignment_when(system, cid, lambda doc: doc["category"] == "policy", what="applied")
    await _reclassify(system, cid, {"severity": "high", "reason": "客户多次来电"}, head)
    await assignment_when(system, cid, lambda doc: doc["severity"] == "high", what="applied")

    async def actions() -> list[str] | None:
        timeline = await system.intake.get(f"/v1/complaints/{cid}/timeline", headers=head)
        found = [entry["action"] for entry in timeline.json()["entries"]]
        return found if "due_times_updated" in found else None

    found = await eventually(actions, what="the severity's due times on the timeline")
    # The severity moved the due times: announced once; the category change: not at all.
    assert found.count("reclassified") == 2 and found.count("due_times_updated") == 1


async def test_an_announcement_from_before_a_reclassification_leaves_the_new_flags_standing(
    system: System,
) -> None:
    """Routing's ``complaint.assigned`` already on its way (a queue's drain, a resume) when a
    supervisor added a flag reached intake after the reclassification; routing, applying a
    change of flags that moves no due time, announced nothing after it. Intake took the
    announcement's flags: the record and its filter keys lost the new flag for good, while
    its timeline said reclassified and routing held it."""
    head = _supervisor(system, "LZ")
    cid = (await create_complaint(system, head, severity="normal", category="billing"))["id"]
    routed = await _routed(system, cid, head)
    assert routed["flags"] == []
    assigned_type = EventType.COMPLAINT_ASSIGNED
    events = await service_events(
        system, "routing", until=lambda events: bool(of_type(events, assigned_type, cid))
    )
    [assigned] = of_type(events, assigned_type, cid)
    before = ComplaintAssigned.model_validate(assigned.data)
    assert before.reclassification_number == 0

    await _reclassify(system, cid, {"flags": ["media_risk"], "reason": "客户称将联系媒体"}, head)
    await assignment_when(
        system, cid, lambda doc: doc.get("reclassification_number") == 1, what="applied"
    )
    # The announcement made before routing applied it, numbered after the one intake holds.
    late = before.model_copy(update={"assignment_sequence": before.assignment_sequence + 1})
    await publish(system, (EventType.COMPLAINT_ASSIGNED, late), service="routing")

    async def taken() -> dict | None:
        timeline = await system.intake.get(f"/v1/complaints/{cid}/timeline", headers=head)
        actions = [entry["action"] for entry in timeline.json()["entries"]]
        return timeline.json() if "due_times_updated" in actions else None

    await eventually(taken, what="the late announcement applied")
    record = (await system.intake.get(f"/v1/complaints/{cid}", headers=head)).json()
    assert (record["flags"], record["reclassification_count"]) == (["media_risk"], 1)
    listed = await system.intake.get(
        "/v1/complaints", params={"flag": "media_risk", "branch": "LZ"}, headers=head
    )
    assert cid in [item["id"] for item in listed.json()["items"]]


async def test_a_reclassification_applied_while_an_unroutable_complaint_is_routed_stands(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The routing of an unroutable complaint plans from the document it read first; a
    reclassification routing applied before its write (normal → high, here while the
    branch's context is read) was written over with the plan's old severity, and nothing
    brought it back (a redelivered reclassification is one applied already)."""
    _, head, cid = await _unroutable_in_hangzhou(system)
    db = routing_db(system)
    desk = await directory_store.find_department(db=db, org="acme", department_id="HZ:SVC")
    assert desk is not None and desk.active
    load_context = routing_context.load_context
    raced: list[bool] = []

    async def reclassified_meanwhile(*, db, complaint):
        if complaint.complaint_id == cid and not raced:
            raced.append(True)
            await _reclassify(system, cid, {"severity": "high", "reason": "客户多次投诉未果"}, head)
            await assignment_when(
                system, cid, lambda doc: doc["severity"] == "high", what="reclassified"
            )
        return await load_context(db=db, complaint=complaint)

    monkeypatch.setattr(routing_context, "load_context", reclassified_meanwhile)
    routed = await unroutable.leave(
        db=db,
        settings=system.routing_settings,
        complaint_id=cid,
        now=datetime.now(UTC),
        actor="hz-head",
        reason="转杭州门店客服",
        department=desk,
    )
    assert raced == [True]
    assert routed is not None and routed["status"] == "open"  # hz-li had room
    assert (routed["severity"], routed["received_severity"]) == ("high", "high")
    stored = await db.assignments.find_one({"_id": cid})
    assert (stored["severity"], stored["reclassification_number"]) == ("high", 1)
    # Announced with the reclassification it was planned with: intake takes its classification.
    assigned_type = EventType.COMPLAINT_ASSIGNED
    events = await service_events(
        system, "routing", until=lambda events: bool(of_type(events, assigned_type, cid))
    )
    [announced] = of_type(events, assigned_type, cid)
    assert (announced.data["severity"], announced.data["reclassification_number"]) == ("high", 1)


async def test_a_report_filed_while_unroutable_is_judged_when_a_reclassification_makes_it_major(
    system: System,
) -> None:
    """A supervisor files the regulatory report while no rule routes the complaint (no
    deadline known: ``on_time`` unknown); a rule routes it as an ordinary complaint, then a
    reclassification to critical makes it a major incident, whose report deadline the earlier
    filing met. Routing stopped the deadline at the filing, but until 6 December told intake
    only the deadline, so the record kept ``on_time`` unknown for good."""
    admin, head, cid = await _unroutable_in_hangzhou(system)
    routing_head = token(
        system.routing_settings, org="acme", branches=["HZ"], roles=("supervisor",)
    )
    filed = await system.routing.post(
        f"/v1/assignments/{cid}/regulatory-report",
        json={"reference": "市监局-2026-17"},
        headers=routing_head,
    )
    assert filed.status_code == 200, filed.text
    record = await complaint_when(
        system, cid, head, lambda c: c["regulatory_report"], what="the filing on the record"
    )
    assert record["regulatory_report"]["on_time"] is None
    rule = {"id": "everything", "name": "其余投诉", "is_default": True}
    rule["action"] = {"department_id": "HZ:SVC"}
    assert (await system.routing.post("/v1/routing/rules", json=rule, headers=admin)).is_success
    await complaint_when(
        system, cid, head, lambda c: c["assignment"], what="routed on record", timeout_s=30
    )

    await _reclassify(system, cid, {"severity": "critical", "reason": "涉及人身安全"}, head)
    record = await complaint_when(
        system,
        cid,
        head,
        lambda c: c["major_incident"] and c["regulatory_report"]["on_time"] is not None,
        what="the filing judged on the record",
        timeout_s=20,
    )
    assert record["regulatory_report"]["on_time"] is True
    assert record["regulatory_report_due_at"] is not None
    assert record["sla"]["regulatory_report_breached"] is False
    assignment = await routing_db(system).assignments.find_one({"_id": cid})
    assert assignment["clocks"]["regulatory_report"]["state"] == "stopped"
