"""Integration: routing assigns, queues and reassigns, and keeps loads right (Kafka, Mongo)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo.errors import DuplicateKeyError

from complaints_shared.clock import ManualClock
from complaints_shared.events import (
    ComplaintRejected,
    ComplaintWithdrawn,
    EventType,
    ResponsibleParty,
)
from routing.assignments import placement, queue
from routing.directory.models import BranchRead
from routing.sla import clocks as sla
from tests.support.events import base, received, reopened, resolved
from tests.support.http import BROADBAND_COMPLAINT, complaint_when, token
from tests.support.kafka import intake_producer, of_type, routing_events
from tests.support.routing import (
    FAST_TIMERS,
    MONDAY_10_SHANGHAI,
    assignment_when,
    outbox_drained,
    routing_db,
)
from tests.support.system import System, SystemFactory
from tests.support.waits import eventually

pytestmark = pytest.mark.integration


async def _loads(system: System, department: str) -> dict[str, int]:
    response = await system.routing.get(
        "/v1/assignments/workload",
        params={"department": department},
        headers=token(system.routing_settings, roles=("agent",)),
    )
    assert response.status_code == 200, response.text
    (row,) = response.json()["departments"]
    return {owner["id"]: owner["open_load"] for owner in row["owners"]}


async def test_complaint_from_intake_is_assigned_with_rule_version_and_business_due_times(
    system_factory: SystemFactory,
) -> None:
    system = await system_factory(clock=ManualClock(MONDAY_10_SHANGHAI))
    admin = token(system.intake_settings)
    created = await system.intake.post("/v1/complaints", json=BROADBAND_COMPLAINT, headers=admin)
    assert created.status_code == 201, created.text
    complaint_id = created.json()["id"]

    document = await outbox_drained(system, complaint_id)
    assert document["status"] == "open"
    assert (document["department"], document["rule_id"]) == ("LZ:BILLING", "demo:billing-keywords")
    assert document["rule_version"] == 1
    assert document["owner_id"] in {"lz-chen", "lz-liu"}
    assert document["sla_policy"] == "standard"
    lz = BranchRead.model_validate(await routing_db(system).branches.find_one({"_id": "demo:LZ"}))
    targets = sla.BUILTIN_TARGETS["high"]
    calendar = sla.branch_calendar(lz)
    start = document["clock_starts_at"]
    assert document["acknowledge_due_at"] == sla.deadline(calendar, start, targets.acknowledge)
    assert document["resolve_due_at"] == sla.deadline(calendar, start, targets.resolve)

    read = await system.routing.get(f"/v1/assignments/{complaint_id}", headers=admin)
    assert read.status_code == 200
    body = read.json()
    assert body["clocks"]["acknowledge"]["state"] == "running"
    assert body["clocks"]["acknowledge"]["basis"] == "business"
    events = await routing_events(
        system, until=lambda events: bool(of_type(events, EventType.COMPLAINT_ASSIGNED))
    )
    (assigned,) = of_type(events, EventType.COMPLAINT_ASSIGNED, complaint_id)
    assert assigned.data["owner_id"] == document["owner_id"]
    assert assigned.data["rule_version"] == 1
    assert assigned.data["sla_policy"] == "standard"
    assert assigned.data["duty_officer"] is False

    hosp_agent = token(system.routing_settings, branches=["HOSP"], roles=("agent",))
    foreign = await system.routing.get(f"/v1/assignments/{complaint_id}", headers=hosp_agent)
    assert foreign.status_code == 404
    other_org = token(system.routing_settings, org="other")
    assert (
        await system.routing.get(f"/v1/assignments/{complaint_id}", headers=other_org)
    ).status_code == 404

    # Intake's own commands drive the clocks, and routing's events come back to the record.
    async def command(name: str, body: dict) -> None:
        response = await system.intake.post(
            f"/v1/complaints/{complaint_id}/{name}", json=body, headers=admin
        )
        assert response.status_code == 200, response.text

    await command("acknowledge", {"message_to_customer": "已受理，今天内答复"})
    await assignment_when(
        system, complaint_id, lambda d: d["clocks"]["acknowledge"]["state"] == "stopped"
    )
    await command("pending-customer", {"reason": "等客户提供缴费凭证"})
    await assignment_when(system, complaint_id, lambda d: d["paused"])
    # One hour (not days): intake stamps its outbox with the injected clock, and its relay
    # publishes only entries stamped before the wall-clock time.
    system.clock.advance(timedelta(hours=1))
    await command("resume", {})
    resumed = await assignment_when(system, complaint_id, lambda d: not d["paused"])
    assert resumed["resolve_due_at"] == document["resolve_due_at"] + timedelta(hours=1)
    supervisor = token(system.routing_settings, roles=("supervisor",), subject="lz-zhao")
    escalated = await system.routing.post(
        f"/v1/assignments/{complaint_id}/escalate",
        json={"reason": "客户情绪激动"},
        headers=supervisor,
    )
    assert escalated.status_code == 200, escalated.text
    assert escalated.json()["escalations"][-1]["escalated_to_id"] == "lz-gao"
    await command(
        "resolve",
        {"summary": "已恢复宽带并致歉", "responsible_department": "LZ:SALES"},
    )
    finished = await assignment_when(system, complaint_id, lambda d: d["status"] == "resolved")
    assert finished["responsible_department"] == "LZ:SALES"

    async def recorded() -> dict | None:
        body = (await system.intake.get(f"/v1/complaints/{complaint_id}", headers=admin)).json()
        current = body["resolve_due_at"] == resumed["resolve_due_at"].isoformat().replace(
            "+00:00", "Z"
        )
        return body if current and body["escalation_level"] == 1 else None

    record = await eventually(recorded, timeout_s=15, what="intake record updated by routing")
    assert record["assignment"]["owner_id"] == document["owner_id"]
    assert record["responsible_department"] == "LZ:SALES"
    # The supervisor and their words, on the record and the timeline (until 6 December both
    # said routing escalated it, "manual", and nothing of why).
    escalation = record["escalation"]
    assert (escalation["escalated_by"], escalation["note"]) == ("lz-zhao", "客户情绪激动")
    timeline = await system.intake.get(f"/v1/complaints/{complaint_id}/timeline", headers=admin)
    [entry] = [entry for entry in timeline.json()["entries"] if entry["action"] == "escalated"]
    details = entry["details"]
    assert (details["reason"], details["by"], details["note"]) == (
        "manual",
        "lz-zhao",
        "客户情绪激动",
    )


@pytest.mark.parametrize("finish", ["resolve", "reject", "withdraw"])
async def test_a_complaint_finished_while_waiting_for_the_customer_waits_no_more(
    system: System, finish: str
) -> None:
    """The finish stopped the clocks but left ``paused: true`` on the assignment, which
    then told of a finished complaint still waiting for its customer until a reopen."""
    admin = token(system.intake_settings)
    created = await system.intake.post("/v1/complaints", json=BROADBAND_COMPLAINT, headers=admin)
    assert created.status_code == 201, created.text
    complaint_id = created.json()["id"]
    await outbox_drained(system, complaint_id)

    async def command(name: str, body: dict) -> None:
        path = f"/v1/complaints/{complaint_id}/{name}"
        response = await system.intake.post(path, json=body, headers=admin)
        assert response.status_code == 200, response.text

    await command("pending-customer", {"reason": "等客户提供缴费凭证"})
    await assignment_when(system, complaint_id, lambda d: d["paused"])
    bodies = {
        "resolve": {"summary": "已退还多收费用"},
        "reject": {"reason_code": "out_of_scope", "explanation": "非本公司业务"},
        "withdraw": {"reason": "客户撤回"},
    }
    await command(finish, bodies[finish])
    stored = await assignment_when(system, complaint_id, lambda d: d.get("finished_at") is not None)
    assert (stored["paused"], stored["paused_at"]) == (False, None)
    read = await system.routing.get(f"/v1/assignments/{complaint_id}", headers=admin)
    assert read.status_code == 200, read.text
    assert read.json()["paused"] is False
    assert {clock["state"] for clock in read.json()["clocks"].values()} == {"stopped"}


async def test_the_agent_handling_a_complaint_escalates_it(system: System) -> None:
    """特事特办: what is beyond the handler's authority goes up the chain at the handler's
    word; until 5 December an agent got a 403 and had to find a supervisor first."""
    admin = token(system.intake_settings)
    created = await system.intake.post("/v1/complaints", json=BROADBAND_COMPLAINT, headers=admin)
    assert created.status_code == 201, created.text
    complaint_id = created.json()["id"]
    await outbox_drained(system, complaint_id)
    agent = token(system.routing_settings, branches=["LZ"], roles=("agent",), subject="lz-chen")
    path = f"/v1/assignments/{complaint_id}/escalate"
    escalated = await system.routing.post(
        path, json={"reason": "客户要求赔偿超出权限"}, headers=agent
    )
    assert escalated.status_code == 200, escalated.text
    [escalation] = escalated.json()["escalations"]
    assert (escalation["escalated_by"], escalation["note"]) == ("lz-chen", "客户要求赔偿超出权限")
    # Moving the work stays a supervisor's: an agent's reassignment is still refused.
    moved = await system.routing.post(
        f"/v1/assignments/{complaint_id}/reassign",
        json={"owner_id": "lz-liu", "reason": "换人"},
        headers=agent,
    )
    assert moved.status_code == 403, moved.text


async def test_an_assignment_announced_again_after_each_wait_is_one_assignment_on_the_timeline(
    system: System,
) -> None:
    """Each resume announces the due times again with ``complaint.assigned``; intake added
    an ``assigned`` entry for each, all for the same owner, until 5 December."""
    admin = token(system.intake_settings)
    created = await system.intake.post("/v1/complaints", json=BROADBAND_COMPLAINT, headers=admin)
    assert created.status_code == 201, created.text
    complaint_id = created.json()["id"]
    await outbox_drained(system, complaint_id)
    path = f"/v1/complaints/{complaint_id}"
    for _ in range(2):
        for name, body in (("pending-customer", {"reason": "等客户提供缴费凭证"}), ("resume", {})):
            response = await system.intake.post(f"{path}/{name}", json=body, headers=admin)
            assert response.status_code == 200, response.text

    async def actions() -> list[str] | None:
        timeline = await system.intake.get(f"{path}/timeline", headers=admin)
        found = [entry["action"] for entry in timeline.json()["entries"]]
        return found if found.count("due_times_updated") == 2 else None

    found = await eventually(actions, what="both announcements on the timeline")
    assert found.count("assigned") == 1
    record = (await system.intake.get(path, headers=admin)).json()
    assert record["resolve_due_at"] is not None and record["assignment"]["owner_id"]


async def test_duplicate_received_event_assigns_once(system: System) -> None:
    complaint = received()
    async with intake_producer(system) as publish:
        event = await publish(EventType.COMPLAINT_RECEIVED, complaint)
        await publish.replay(event)  # the very same event delivered twice
        await publish(EventType.COMPLAINT_RECEIVED, complaint)  # re-sent under a new event id
    document = await outbox_drained(system, complaint.complaint_id)
    loads = await _loads(system, "LZ:BILLING")
    assert sum(loads.values()) == 1
    assert loads[document["owner_id"]] == 1
    events = await routing_events(
        system,
        until=lambda events: bool(of_type(events, EventType.COMPLAINT_ASSIGNED)),
        timeout_s=5,
    )
    assert len(of_type(events, EventType.COMPLAINT_ASSIGNED, complaint.complaint_id)) == 1


async def test_a_redelivery_refused_on_its_slot_index_is_known_as_routed(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A redelivered ``complaint.received`` plans the slot its first delivery took (the hint
    not moved: the process died before recording it), and its insert clashes on both its id
    and that slot. The server named the slot: routing took it for another complaint's,
    chose again, ten times, and failed the event with ``ConcurrentUpdate``. Whether the
    assignment is stored decides."""
    complaint = received()
    async with intake_producer(system) as publish:
        await publish(EventType.COMPLAINT_RECEIVED, complaint)
    await assignment_when(system, complaint.complaint_id, lambda d: d["status"] == "open")
    db = routing_db(system)
    insert = placement.store.insert

    async def named_by_its_slot(*, db: Any, document: dict) -> None:
        try:
            await insert(db=db, document=document)
        except DuplicateKeyError as exc:
            details = {**(exc.details or {}), "keyPattern": {"owner_slot": 1}}
            raise DuplicateKeyError("E11000 owner_slot_unique", 11000, details) from None

    monkeypatch.setattr(placement.store, "insert", named_by_its_slot)
    routed = await placement.route_received(
        db=db, settings=system.routing_settings, complaint=complaint, now=datetime.now(UTC)
    )
    assert routed is False
    assert await db.assignments.count_documents({"_id": complaint.complaint_id}) == 1


async def test_full_department_queues_and_freed_capacity_assigns_the_next(
    system_factory: SystemFactory,
) -> None:
    system = await system_factory(routing=FAST_TIMERS)
    admin = token(system.routing_settings)
    patched = await system.routing.patch(
        "/v1/directory/staff/hotel-ma", json={"capacity": 1}, headers=admin
    )
    assert patched.status_code == 200, patched.text
    first = received(branch="HOTEL", category="service_attitude", description="前台态度冷淡")
    second = received(branch="HOTEL", category="service_attitude", description="房间没有打扫")
    async with intake_producer(system) as publish:
        await publish(EventType.COMPLAINT_RECEIVED, first)
        await assignment_when(system, first.complaint_id, lambda d: d["status"] == "open")
        await publish(EventType.COMPLAINT_RECEIVED, second)
        queued = await assignment_when(system, second.complaint_id)
        assert (queued["status"], queued["owner_id"]) == ("queued", None)
        assert queued["department"] == "HOTEL:FRONT"
        await publish(EventType.COMPLAINT_RESOLVED, resolved(first))
        taken = await assignment_when(
            system, second.complaint_id, lambda d: d["status"] == "open", what="queue drained"
        )
    assert taken["owner_id"] == "hotel-ma"
    assert await _loads(system, "HOTEL:FRONT") == {"hotel-gm": 0, "hotel-ma": 1}
    events = await routing_events(
        system,
        until=lambda events: len(of_type(events, EventType.COMPLAINT_ASSIGNED)) >= 2,
    )
    assert len(of_type(events, EventType.COMPLAINT_QUEUED, second.complaint_id)) == 1
    assert len(of_type(events, EventType.COMPLAINT_ASSIGNED, second.complaint_id)) == 1
    metrics = (await system.routing.get("/metrics")).text
    # Department ids are unique within an organisation only (until 5 December no org label).
    assert 'complaints_routing_queued_total{department="HOTEL:FRONT",org="demo"}' in metrics


async def test_reassignment_keeps_both_owners_loads_right(system: System) -> None:
    complaint = received()
    async with intake_producer(system) as publish:
        await publish(EventType.COMPLAINT_RECEIVED, complaint)
        document = await assignment_when(system, complaint.complaint_id)
        first_owner = document["owner_id"]
        other = "lz-liu" if first_owner == "lz-chen" else "lz-chen"
        supervisor = token(system.routing_settings, roles=("supervisor",))
        path = f"/v1/assignments/{complaint.complaint_id}/reassign"

        missing_reason = await system.routing.post(
            path, json={"owner_id": other}, headers=supervisor
        )
        assert missing_reason.status_code == 422
        assert missing_reason.json()["errors"][0]["field"] == "reason"
        agent = token(system.routing_settings, roles=("agent",))
        forbidden = await system.routing.post(
            path, json={"owner_id": other, "reason": "休假"}, headers=agent
        )
        assert forbidden.status_code == 403
        unknown = await system.routing.post(
            path, json={"owner_id": "nobody", "reason": "调岗"}, headers=supervisor
        )
        assert unknown.status_code == 422 and unknown.json()["errors"][0]["field"] == "owner_id"
        lz_supervisor = token(system.routing_settings, branches=["LZ"], roles=("supervisor",))
        elsewhere = await system.routing.post(
            path, json={"department": "HOSP:MED", "reason": "转医院"}, headers=lz_supervisor
        )
        nowhere = await system.routing.post(
            path, json={"department": "LZ:NOWHERE", "reason": "转医院"}, headers=lz_supervisor
        )
        # Another branch's department answers exactly like one that does not exist.
        assert elsewhere.status_code == nowhere.status_code == 422
        assert elsewhere.json()["errors"][0]["field"] == "department"

        moved = await system.routing.post(
            path, json={"owner_id": other, "reason": "原处理人休假"}, headers=supervisor
        )
        assert moved.status_code == 200, moved.text
        assert moved.json()["owner_id"] == other
        assert await _loads(system, "LZ:BILLING") == {
            first_owner: 0,
            other: 1,
            "lz-gao": 0,
            "lz-xie": 0,
        }
        transferred = await system.routing.post(
            path, json={"department": "LZ:CS", "reason": "属服务态度问题"}, headers=supervisor
        )
        assert transferred.status_code == 200, transferred.text
        new_owner = transferred.json()["owner_id"]
        assert new_owner in {"lz-wang", "lz-li"}
        assert sum((await _loads(system, "LZ:BILLING")).values()) == 0
        assert (await _loads(system, "LZ:CS"))[new_owner] == 1

        await publish(EventType.COMPLAINT_RESOLVED, resolved(complaint))
        await assignment_when(system, complaint.complaint_id, lambda d: d["status"] == "resolved")
    assert sum((await _loads(system, "LZ:CS")).values()) == 0
    late = await system.routing.post(
        path, json={"owner_id": "lz-li", "reason": "晚了"}, headers=supervisor
    )
    assert late.status_code == 409
    events = await routing_events(
        system, until=lambda events: len(of_type(events, EventType.COMPLAINT_REASSIGNED)) >= 2
    )
    moves = of_type(events, EventType.COMPLAINT_REASSIGNED, complaint.complaint_id)
    assert [(m.data["from_owner_id"], m.data["owner_id"]) for m in moves] == [
        (first_owner, other),
        (other, new_owner),
    ]
    assert moves[1].data["department"] == "LZ:CS"
    assert moves[0].data["reason"] == "原处理人休假"


async def test_responsible_department_from_resolution_and_from_a_supervisor(
    system: System,
) -> None:
    complaint = received()
    supervisor = token(system.routing_settings, roles=("supervisor",))
    async with intake_producer(system) as publish:
        await publish(EventType.COMPLAINT_RECEIVED, complaint)
        await assignment_when(system, complaint.complaint_id)
        resolution = resolved(
            complaint, responsible_department="SALES", responsible_party=ResponsibleParty.STAFF
        )
        await publish(EventType.COMPLAINT_RESOLVED, resolution)
        document = await assignment_when(
            system, complaint.complaint_id, lambda d: d["status"] == "resolved"
        )
    assert document["department"] == "LZ:BILLING"  # handled there ...
    assert document["responsible_department"] == "LZ:SALES"  # ... but Sales was at fault
    path = f"/v1/assignments/{complaint.complaint_id}/responsibility"
    unknown = await system.routing.post(
        path, json={"responsible_department": "LZ:NOPE"}, headers=supervisor
    )
    assert unknown.status_code == 422
    assert unknown.json()["errors"][0]["field"] == "responsible_department"
    changed = await system.routing.post(
        path,
        json={"responsible_department": "LZ:NETWORK", "responsible_party": "company"},
        headers=supervisor,
    )
    assert changed.status_code == 200, changed.text
    assert changed.json()["responsible_department"] == "LZ:NETWORK"
    workload = await system.routing.get(
        "/v1/assignments/workload", params={"branch": "LZ"}, headers=supervisor
    )
    rows = {row["department"]: row for row in workload.json()["departments"]}
    assert rows["LZ:NETWORK"]["responsible_for"] == 1
    assert rows["LZ:BILLING"]["responsible_for"] == 0
    events = await routing_events(
        system,
        until=lambda events: len(of_type(events, EventType.COMPLAINT_RESPONSIBILITY_SET)) >= 2,
    )
    sets = of_type(events, EventType.COMPLAINT_RESPONSIBILITY_SET, complaint.complaint_id)
    assert [(e.data["responsible_department"], e.data["set_by"]) for e in sets] == [
        ("LZ:SALES", "agent-1"),
        ("LZ:NETWORK", "tester"),
    ]


async def test_a_setting_made_after_a_resolution_routing_had_not_applied_yet_stands(
    system: System,
) -> None:
    """An agent resolved in intake naming Sales; routing, behind on its events, had not
    applied the resolution when a supervisor set Network through routing a moment later.
    Intake keeps the responsibility set latest (Network). Routing kept the last one it
    wrote, the older resolution's Sales, and the two disagreed for good; now routing keeps
    Network too, and announces nothing older."""
    complaint = received()
    supervisor = token(system.routing_settings, roles=("supervisor",))
    path = f"/v1/assignments/{complaint.complaint_id}/responsibility"
    async with intake_producer(system) as publish:
        await publish(EventType.COMPLAINT_RECEIVED, complaint)
        await assignment_when(system, complaint.complaint_id)
        resolved_at = datetime.now(UTC) - timedelta(seconds=30)
        changed = await system.routing.post(
            path, json={"responsible_department": "LZ:NETWORK"}, headers=supervisor
        )
        assert changed.status_code == 200, changed.text
        resolution = resolved(
            complaint,
            responsible_department="SALES",
            responsible_party=ResponsibleParty.STAFF,
            resolved_at=resolved_at,
        )
        await publish(EventType.COMPLAINT_RESOLVED, resolution)
        document = await assignment_when(
            system, complaint.complaint_id, lambda d: d["status"] == "resolved"
        )
    assert (document["responsible_department"], document["responsible_party"]) == (
        "LZ:NETWORK",
        None,
    )
    # The finish's clock verdicts are announced before any responsibility it would set.
    events = await routing_events(
        system,
        until=lambda events: bool(
            of_type(events, EventType.COMPLAINT_SLA_STOPPED, complaint.complaint_id)
        ),
    )
    sets = of_type(events, EventType.COMPLAINT_RESPONSIBILITY_SET, complaint.complaint_id)
    assert [e.data["responsible_department"] for e in sets] == ["LZ:NETWORK"]


async def test_a_resolution_after_a_setting_stands_in_both_services_whatever_their_clocks(
    system_factory: SystemFactory,
) -> None:
    """A supervisor sets Network in routing; an agent then resolves in intake naming Sales,
    on a clock five seconds behind routing's (``REPLICA_CLOCK_SKEW_S`` allows thirty).
    Ordered by each service's own clock, routing kept the setting and intake the resolution;
    intake now stamps the resolution's responsibility after the one on record, and routing
    orders by that stamp: both keep Sales."""
    clock = ManualClock(datetime.now(UTC))
    system = await system_factory(clock=clock)
    agent = token(system.intake_settings)
    supervisor = token(system.routing_settings, roles=("supervisor",))
    created = await system.intake.post("/v1/complaints", json=BROADBAND_COMPLAINT, headers=agent)
    assert created.status_code == 201, created.text
    cid = created.json()["id"]
    await complaint_when(system, cid, agent, lambda c: c["assignment"], what="assigned")
    path = f"/v1/assignments/{cid}/responsibility"
    changed = await system.routing.post(
        path, json={"responsible_department": "LZ:NETWORK"}, headers=supervisor
    )
    assert changed.status_code == 200, changed.text
    await complaint_when(
        system, cid, agent, lambda c: c["responsible_department"] == "LZ:NETWORK", what="set"
    )

    clock.advance(timedelta(seconds=-5))  # intake's clock, behind routing's
    resolve = {"summary": "已退费", "responsible_department": "LZ:SALES"}
    answered = await system.intake.post(
        f"/v1/complaints/{cid}/resolve", json=resolve, headers=agent
    )
    assert answered.status_code == 200, answered.text
    document = await assignment_when(system, cid, lambda d: d["status"] == "resolved")
    assert document["responsible_department"] == "LZ:SALES"
    record = await complaint_when(
        system,
        cid,
        agent,
        lambda c: c["status"] == "resolved" and c["responsible_department"] == "LZ:SALES",
        what="intake's record",
    )
    assert record["responsibility"]["department"] == "LZ:SALES"


async def test_deactivated_person_gets_no_new_work_and_their_open_work_is_reported(
    system: System,
) -> None:
    admin = token(system.routing_settings)
    first = received()
    async with intake_producer(system) as publish:
        await publish(EventType.COMPLAINT_RECEIVED, first)
        owner = (await assignment_when(system, first.complaint_id))["owner_id"]
        report = await system.routing.post(f"/v1/directory/staff/{owner}/deactivate", headers=admin)
        assert report.status_code == 200, report.text
        assert [work["complaint_id"] for work in report.json()["open_work"]] == [first.complaint_id]
        later = [received() for _ in range(3)]
        for complaint in later:
            await publish(EventType.COMPLAINT_RECEIVED, complaint)
        owners = {
            (await assignment_when(system, complaint.complaint_id))["owner_id"]
            for complaint in later
        }
        assert owner not in owners
        assert owners == {"lz-chen", "lz-liu"} - {owner}
        withdrawn = ComplaintWithdrawn(
            **base(later[0]), withdrawn_by="customer", withdrawn_at=datetime.now(UTC)
        )
        rejected = ComplaintRejected(
            **base(later[1]),
            reason_code="duplicate",
            explanation="重复投诉",
            rejected_by="agent-1",
            rejected_at=datetime.now(UTC),
        )
        await publish(EventType.COMPLAINT_WITHDRAWN, withdrawn)
        await publish(EventType.COMPLAINT_REJECTED, rejected)
        for complaint, status in ((later[0], "withdrawn"), (later[1], "rejected")):
            document = await assignment_when(
                system, complaint.complaint_id, lambda d, s=status: d["status"] == s
            )
            assert {c["state"] for c in document["clocks"].values()} == {"stopped"}
            assert "owner_slot" not in document
    assert (await _loads(system, "LZ:BILLING"))[next(iter(owners))] == 1
    staff = await system.routing.get(f"/v1/directory/staff/{owner}", headers=admin)
    assert staff.json()["status"] == "inactive"
    assert staff.json()["open_load"] == 1


async def _routed_and_resolved(system: System, publish, complaint) -> str:
    """``complaint`` received, routed and resolved by its owner, as routing sees it; the owner."""
    await publish(EventType.COMPLAINT_RECEIVED, complaint)
    owner = (await assignment_when(system, complaint.complaint_id))["owner_id"]
    await publish(EventType.COMPLAINT_RESOLVED, resolved(complaint, owner_id=owner))
    await assignment_when(
        system, complaint.complaint_id, lambda d: d["status"] == "resolved", what="resolved"
    )
    return owner


@pytest.mark.parametrize("owner_is", ["gone", "moved to customer service"])
async def test_a_reopen_whose_department_was_deactivated_goes_where_it_can_be_worked(
    system: System, owner_is: str
) -> None:
    """A billing complaint resolved, then the billing desk deactivated (a new one of the same
    kind opened) and its people gone or moved. The reopen went to the old desk's queue,
    which nobody can join, and climbed the old desk's chain of nobody. Now it follows its
    previous owner to their department, else goes to the desk's active successor."""
    admin = token(system.routing_settings)
    complaint = received()
    async with intake_producer(system) as publish:
        owner = await _routed_and_resolved(system, publish, complaint)
        for person in ("lz-chen", "lz-liu"):
            if owner_is == "moved to customer service" and person == owner:
                moved = await system.routing.patch(
                    f"/v1/directory/staff/{person}", json={"department": "CS"}, headers=admin
                )
                assert moved.status_code == 200, moved.text
                continue
            gone = await system.routing.post(
                f"/v1/directory/staff/{person}/deactivate", headers=admin
            )
            assert gone.status_code == 200, gone.text
        closed = await system.routing.post(
            "/v1/directory/departments/LZ:BILLING/deactivate", headers=admin
        )
        assert closed.status_code == 200, closed.text
        successor = {"branch": "LZ", "code": "BILL2", "name": "账务中心", "kind": "billing"}
        made = await system.routing.post("/v1/directory/departments", json=successor, headers=admin)
        assert made.status_code == 201, made.text
        newcomer = {"id": "lz-new", "branch": "LZ", "department": "BILL2", "name": "新人"}
        hired = await system.routing.post("/v1/directory/staff", json=newcomer, headers=admin)
        assert hired.status_code == 201, hired.text

        await publish(
            EventType.COMPLAINT_REOPENED,
            reopened(complaint, reopened_at=datetime.now(UTC)),
        )
        document = await assignment_when(
            system, complaint.complaint_id, lambda d: d["status"] != "resolved", what="reopened"
        )
    expected = ("LZ:CS", owner) if owner_is != "gone" else ("LZ:BILL2", "lz-new")
    assert (document["department"], document["owner_id"]) == expected
    assert document["status"] == "open"
    assert document["history"][-1]["details"]["moved_from"] == "LZ:BILLING"

    def reassigned(events: list) -> list:
        return [
            event
            for event in of_type(events, EventType.COMPLAINT_ASSIGNED, complaint.complaint_id)
            if event.data["department"] == expected[0]
        ]

    events = await routing_events(system, until=lambda events: bool(reassigned(events)))
    assert reassigned(events)[0].data["owner_id"] == expected[1]


async def test_a_complaint_taken_off_its_owner_waits_for_someone_else(system: System) -> None:
    """A supervisor moves a complaint off its owner within the department while nobody else
    there has room: it waits in the queue. Until 5 December the drain that followed the
    owner's freed slot gave it straight back to them (the answer said queued)."""
    admin = token(system.routing_settings)
    supervisor = token(system.routing_settings, roles=("supervisor",))
    away = await system.routing.patch(
        "/v1/directory/staff/lz-liu", json={"status": "on_leave"}, headers=admin
    )
    assert away.status_code == 200, away.text
    complaint = received()
    async with intake_producer(system) as publish:
        await publish(EventType.COMPLAINT_RECEIVED, complaint)
        document = await assignment_when(system, complaint.complaint_id)
    assert document["owner_id"] == "lz-chen"
    moved = await system.routing.post(
        f"/v1/assignments/{complaint.complaint_id}/reassign",
        json={"department": "LZ:BILLING", "reason": "陈静负担过重，交他人处理"},
        headers=supervisor,
    )
    assert moved.status_code == 200, moved.text
    assert (moved.json()["status"], moved.json()["owner_id"]) == ("queued", None)
    # The drain after the move and a sweep of the queue both pass it over for lz-chen.
    await queue.drain_queue(
        db=routing_db(system),
        settings=system.routing_settings,
        org="demo",
        department_id="LZ:BILLING",
        now=datetime.now(UTC),
    )
    stored = await routing_db(system).assignments.find_one({"_id": complaint.complaint_id})
    assert (stored["status"], stored["owner_id"]) == ("queued", None)
    # Back from leave, lz-liu takes it.
    back = await system.routing.patch(
        "/v1/directory/staff/lz-liu", json={"status": "active"}, headers=admin
    )
    assert back.status_code == 200, back.text
    document = await assignment_when(
        system, complaint.complaint_id, lambda d: d["status"] == "open", what="assigned again"
    )
    assert document["owner_id"] == "lz-liu"


async def test_a_reopen_goes_to_the_department_when_its_previous_owner_moved_to_another(
    system: System,
) -> None:
    """A billing complaint resolved, then its owner moved to customer service. Until
    5 December the reopen went back to them (over their capacity, the complaint left on
    billing's chain), billing's people with room passed over. Now it is billing's turn."""
    admin = token(system.routing_settings)
    complaint = received()
    async with intake_producer(system) as publish:
        owner = await _routed_and_resolved(system, publish, complaint)
        moved = await system.routing.patch(
            f"/v1/directory/staff/{owner}", json={"department": "CS"}, headers=admin
        )
        assert moved.status_code == 200, moved.text
        await publish(
            EventType.COMPLAINT_REOPENED, reopened(complaint, reopened_at=datetime.now(UTC))
        )
        document = await assignment_when(
            system, complaint.complaint_id, lambda d: d["status"] != "resolved", what="reopened"
        )
    assert document["department"] == "LZ:BILLING"
    assert document["owner_id"] in {"lz-chen", "lz-liu"} - {owner}, document["owner_id"]


async def test_simulation_has_no_side_effects(system: System) -> None:
    db = routing_db(system)

    async def snapshot() -> dict:
        names = sorted(await db.list_collection_names())
        return {
            name: await db[name]
            .find({}, projection={"_id": 1, "updated_at": 1, "version": 1})
            .sort("_id", 1)
            .to_list(None)
            for name in names
        }

    await eventually(lambda: _ready(system), what="routing ready")
    before = await snapshot()
    supervisor = token(system.routing_settings, roles=("supervisor",))
    response = await system.routing.post(
        "/v1/routing/simulate",
        json={
            "branch": "HOSP",
            "category": "medical",
            "severity": "critical",
            "description": "手术失误导致重伤，怀疑医疗事故",
            "received_at": (MONDAY_10_SHANGHAI + timedelta(hours=12)).isoformat(),
        },
        headers=supervisor,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["matched_rule"]["id"] == "demo:major-medical-incident"
    assert body["department"] == "HOSP:MED"
    assert body["duty_officer"] and body["chosen_owner_id"] == "hosp-duty"
    assert body["major_incident"] and body["escalated_to_id"] == "hosp-head"
    assert {c["id"]: c["open_load"] for c in body["candidates"]} == {"hosp-lin": 0, "hosp-zhou": 0}
    assert body["regulatory_report_due_at"] is not None
    assert body["sla_policy"] == "medical"

    in_hours = await system.routing.post(
        "/v1/routing/simulate",
        json={"branch": "LZ", "category": "billing", "description": "话费多扣"},
        headers=supervisor,
    )
    assert in_hours.json()["chosen_owner_id"] in {"lz-chen", "lz-liu"}
    foreign = await system.routing.post(
        "/v1/routing/simulate",
        json={"branch": "HOSP"},
        headers=token(system.routing_settings, branches=["LZ"], roles=("supervisor",)),
    )
    assert foreign.status_code == 404
    assert await snapshot() == before
    events = await routing_events(system, until=lambda events: False, timeout_s=1.0)
    assert events == []


async def _ready(system: System) -> bool:
    response = await system.routing.get("/readyz")
    return response.status_code == 200
