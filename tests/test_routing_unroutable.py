"""A complaint no rule can route is a visible state, not a dead letter, and leaves it when it can.

An organisation without a default rule (here: a new organisation with no rules at
all) registers a complaint: routing keeps it as ``unroutable`` with the reason,
intake shows that on the record and the timeline within seconds, routing's views
count it, and nothing reaches the dead-letter topic. Adding a rule routes it; a
supervisor's reassignment routes one the rules still cannot. A regulatory report filed
meanwhile is on the record at once and judged against the deadline routing gives it.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from complaints_shared.clock import ManualClock, SystemClock
from complaints_shared.events import ComplaintUnroutable, EventType, Topic, dead_letter_topic
from complaints_shared.problems import ConcurrentUpdate
from routing import context_cache
from routing.assignments import unroutable
from routing.assignments.scheduler import SlaScheduler
from routing.rules.models import RuleCreate
from tests.support.faults import FailsFirst
from tests.support.http import create_complaint, token
from tests.support.kafka import events_of, of_type, publish, read_topic, routing_events
from tests.support.routing import (
    HANGZHOU_AGENT,
    HANGZHOU_BRANCH,
    HANGZHOU_DEPARTMENT,
    MONDAY_10_SHANGHAI,
    assignment_when,
    hangzhou_service_desk,
    routing_db,
)
from tests.support.system import System, SystemFactory
from tests.support.waits import eventually

pytestmark = pytest.mark.integration

ORG = "acme"
BRANCH, DEPARTMENT, AGENT = HANGZHOU_BRANCH, HANGZHOU_DEPARTMENT, HANGZHOU_AGENT
DEFAULT_RULE = {
    "id": "everything",
    "name": "其余投诉 → 杭州客户服务部",
    "is_default": True,
    "action": {"department_id": "HZ:SVC"},
}


async def _record(system: System, complaint_id: str) -> dict:
    response = await system.intake.get(
        f"/v1/complaints/{complaint_id}", headers=token(system.intake_settings, org=ORG)
    )
    return response.json()


async def _created_once_its_bump_failed(
    system: System, monkeypatch: pytest.MonkeyPatch, path: str, body: dict, *, headers: dict
) -> dict:
    """POST ``body`` while the directory bump fails once (a 503), then again: the retry
    answers 201 with the entry as first stored (version 1) and bumps; the entry it answers."""
    bump = FailsFirst(context_cache.directory_changed)
    monkeypatch.setattr(context_cache, "directory_changed", bump)
    first = await system.routing.post(path, json=body, headers=headers)
    assert first.status_code == 503, first.text
    retried = await system.routing.post(path, json=body, headers=headers)
    assert retried.status_code == 201, retried.text
    assert retried.json()["version"] == 1
    assert len(bump.calls) == 2
    return retried.json()


async def _visibly_unroutable(system: System, complaint_id: str) -> dict:
    async def unroutable() -> dict | None:
        record = await _record(system, complaint_id)
        return record if record.get("unroutable") else None

    return await eventually(unroutable, timeout_s=10, what="the record showing unroutable")


async def _unroutable_beside_the_desk(system: System) -> str:
    """Acme's Hangzhou service desk (no rule leads there yet) and a complaint of the shop,
    shown unroutable; its id."""
    await hangzhou_service_desk(system, token(system.routing_settings, org=ORG))
    acme_admin = token(system.intake_settings, org=ORG)
    created = await create_complaint(system, acme_admin, branch="HZ", subject="门店服务态度差")
    await _visibly_unroutable(system, created["id"])
    return created["id"]


async def _routed(system: System, complaint_id: str) -> dict:
    async def routed() -> dict | None:
        record = await _record(system, complaint_id)
        return record if record.get("assignment") and not record.get("unroutable") else None

    return await eventually(routed, timeout_s=10, what="the record showing the assignment")


async def test_an_unroutable_complaint_is_visible_and_routed_once_a_rule_covers_it(
    system: System,
) -> None:
    admin = token(system.routing_settings, org=ORG)
    acme_admin = token(system.intake_settings, org=ORG)
    complaint_id = (
        await create_complaint(system, acme_admin, branch="HZ", subject="门店服务态度差")
    )["id"]

    record = await _visibly_unroutable(system, complaint_id)
    assert "add a default rule" in record["unroutable"]["reason"]
    assert record["assignment"] is None
    assert record["status"] == "received"
    timeline = await system.intake.get(
        f"/v1/complaints/{complaint_id}/timeline", headers=token(system.intake_settings, org=ORG)
    )
    assert "found_unroutable" in [entry["action"] for entry in timeline.json()["entries"]]

    assignment = await system.routing.get(f"/v1/assignments/{complaint_id}", headers=admin)
    assert assignment.json()["status"] == "unroutable"
    assert assignment.json()["department"] is None
    listed = await system.routing.get("/v1/assignments?status=unroutable", headers=admin)
    assert [item["complaint_id"] for item in listed.json()["items"]] == [complaint_id]
    workload = await system.routing.get("/v1/assignments/workload", headers=admin)
    assert workload.json()["unroutable"] == 1

    # The directory alone does not route it: no rule leads there yet.
    await hangzhou_service_desk(system, admin)
    assert (await _record(system, complaint_id))["unroutable"] is not None

    rule = await system.routing.post("/v1/routing/rules", json=DEFAULT_RULE, headers=admin)
    assert rule.status_code == 201, rule.text
    routed = await _routed(system, complaint_id)
    assert routed["assignment"]["department"] == "HZ:SVC"
    assert routed["assignment"]["owner_id"] == "hz-li"
    assert routed["acknowledge_due_at"] is not None
    assert (await system.routing.get("/v1/assignments/workload", headers=admin)).json()[
        "unroutable"
    ] == 0

    dead = await read_topic(
        bootstrap_servers=system.infra.kafka_bootstrap_servers,
        topic=dead_letter_topic(system.topic(Topic.INTAKE)),
        until=lambda records: False,
        timeout_s=1.0,
    )
    assert dead == []
    announced = await read_topic(
        bootstrap_servers=system.infra.kafka_bootstrap_servers,
        topic=system.topic(Topic.ROUTING),
        until=lambda records: len(records) >= 2,
    )
    assert [e.subject for e in events_of(announced, event_type=EventType.COMPLAINT_UNROUTABLE)] == [
        complaint_id
    ]
    assert [e.subject for e in events_of(announced, event_type=EventType.COMPLAINT_ASSIGNED)] == [
        complaint_id
    ]


async def test_the_customer_is_asked_for_what_is_missing_before_the_complaint_is_taken_up(
    system: System,
) -> None:
    """补正 before 受理: a received complaint (here unroutable) may wait for the customer; it
    was a 409 until routed or acknowledged. The resume returns it to received, or to open
    once routing took it up during the wait."""
    admin = token(system.routing_settings, org=ORG)
    acme = token(system.intake_settings, org=ORG)
    untaken, routed_meanwhile = [
        (await create_complaint(system, acme, branch="HZ", subject=f"门店服务态度差{n}"))["id"]
        for n in range(2)
    ]
    for complaint_id in (untaken, routed_meanwhile):
        await _visibly_unroutable(system, complaint_id)
        waiting = await system.intake.post(
            f"/v1/complaints/{complaint_id}/pending-customer",
            json={"reason": "请客户补充当时的录音和小票"},
            headers=acme,
        )
        assert waiting.status_code == 200, waiting.text
        assert waiting.json()["status"] == "pending_customer"

    async def resume(complaint_id: str) -> str:
        path = f"/v1/complaints/{complaint_id}/resume"
        resumed = await system.intake.post(path, json={}, headers=acme)
        assert resumed.status_code == 200, resumed.text
        return resumed.json()["status"]

    assert await resume(untaken) == "received"

    await hangzhou_service_desk(system, admin)
    rule = await system.routing.post("/v1/routing/rules", json=DEFAULT_RULE, headers=admin)
    assert rule.status_code == 201, rule.text
    during_the_wait = await _routed(system, routed_meanwhile)
    assert during_the_wait["status"] == "pending_customer"
    assert await resume(routed_meanwhile) == "open"
    assert (await _routed(system, untaken))["status"] == "open"
    # Routing laid the wait out from its memory of the unroutable complaint, and resumed.
    await assignment_when(system, routed_meanwhile, lambda d: d["status"] == "open")
    await assignment_when(system, routed_meanwhile, lambda d: not d["paused"])


async def test_a_rejected_or_withdrawn_unroutable_complaint_waits_for_no_route(
    system: System,
) -> None:
    """``unroutable`` stayed on intake's record of a complaint rejected or withdrawn before
    any rule routed it, for good, while routing had finished it."""
    acme = token(system.intake_settings, org=ORG)
    rejected, withdrawn = [
        (await create_complaint(system, acme, branch="HZ", subject=f"门店服务态度差{n}"))["id"]
        for n in range(2)
    ]
    for complaint_id in (rejected, withdrawn):
        await _visibly_unroutable(system, complaint_id)
    endings = (
        (rejected, "reject", {"reason_code": "out_of_scope", "explanation": "非本店业务"}),
        (withdrawn, "withdraw", {"reason": "客户撤回"}),
    )
    for complaint_id, name, body in endings:
        path = f"/v1/complaints/{complaint_id}/{name}"
        ended = await system.intake.post(path, json=body, headers=acme)
        assert ended.status_code == 200, ended.text
        assert ended.json()["unroutable"] is None
        assert (await _record(system, complaint_id))["unroutable"] is None
    # Routing's word arriving after the rejection (it had not read the complaint yet, or a
    # replay from the dead-letter topic) leaves it so.
    late = ComplaintUnroutable(
        complaint_id=rejected,
        org=ORG,
        branch="HZ",
        reason="no routing rule matches",
        unroutable_at=datetime.now(UTC),
    )
    [sent] = await publish(system, (EventType.COMPLAINT_UNROUTABLE, late), service="routing")

    async def applied() -> dict | None:
        timeline = await system.intake.get(f"/v1/complaints/{rejected}/timeline", headers=acme)
        ids = [entry.get("event_id") for entry in timeline.json()["entries"]]
        return timeline.json() if sent.id in ids else None

    await eventually(applied, what="the late announcement applied")
    assert (await _record(system, rejected))["unroutable"] is None


async def test_a_supervisor_reassigning_an_unroutable_complaint_routes_it(system: System) -> None:
    admin = token(system.routing_settings, org=ORG)
    await hangzhou_service_desk(system, admin)
    # The organisation has people and a department but no rule at all yet.
    acme_admin = token(system.intake_settings, org=ORG)
    complaint_id = (await create_complaint(system, acme_admin, branch="HZ", subject="退货被拒"))[
        "id"
    ]
    await _visibly_unroutable(system, complaint_id)

    supervisor = token(
        system.routing_settings, org=ORG, roles=("supervisor",), subject="supervisor-zhou"
    )
    escalated = await system.routing.post(
        f"/v1/assignments/{complaint_id}/escalate", json={"reason": "没人处理"}, headers=supervisor
    )
    assert escalated.status_code == 409
    moved = await system.routing.post(
        f"/v1/assignments/{complaint_id}/reassign",
        json={"department": "HZ:SVC", "reason": "宁波暂由杭州客服处理"},
        headers=supervisor,
    )
    assert moved.status_code == 200, moved.text
    assert (moved.json()["status"], moved.json()["owner_id"]) == ("open", "hz-li")
    assert moved.json()["resolve_due_at"] is not None
    routed = await _routed(system, complaint_id)
    assert routed["assignment"]["department"] == "HZ:SVC"
    # The record says who routed it and why, as it does of a reassignment (until 6 December
    # it showed a rule's assignment, by nobody, for no reason).
    timeline = await system.intake.get(
        f"/v1/complaints/{complaint_id}/timeline", headers=acme_admin
    )
    [assigned] = [entry for entry in timeline.json()["entries"] if entry["action"] == "assigned"]
    by_hand = ("supervisor-zhou", "宁波暂由杭州客服处理")
    assert (assigned["details"]["by"], assigned["details"]["reason"]) == by_hand
    events = await routing_events(
        system, until=lambda events: bool(of_type(events, EventType.COMPLAINT_ASSIGNED))
    )
    [announced] = of_type(events, EventType.COMPLAINT_ASSIGNED, complaint_id)
    assert (announced.data["routed_by"], announced.data["routed_reason"]) == by_hand


async def test_a_report_filed_while_unroutable_is_on_the_record_and_judged_once_routed(
    system: System,
) -> None:
    admin = token(system.routing_settings, org=ORG)
    acme_admin = token(system.intake_settings, org=ORG)
    complaint_id = (
        await create_complaint(
            system,
            acme_admin,
            branch="HZ",
            category="medical",
            severity="critical",
            subject="发错药",
        )
    )["id"]
    await _visibly_unroutable(system, complaint_id)
    supervisor = token(system.routing_settings, org=ORG, roles=("supervisor",), subject="hz-head")
    filed = await system.routing.post(
        f"/v1/assignments/{complaint_id}/regulatory-report",
        json={"reference": "卫健委-HZ-001"},
        headers=supervisor,
    )
    assert filed.status_code == 200, filed.text

    async def filing_judged(judged: bool) -> dict | None:
        record = await _record(system, complaint_id)
        filing = record.get("regulatory_report")
        return record if filing and (filing["on_time"] is not None) == judged else None

    record = await eventually(
        lambda: filing_judged(False), timeout_s=10, what="the filing on the record"
    )
    filing = record["regulatory_report"]
    assert (filing["reference"], filing["filed_by"]) == ("卫健委-HZ-001", "hz-head")
    assert record["regulatory_report_due_at"] is None  # no deadline known while unroutable

    await hangzhou_service_desk(system, admin)
    rule = await system.routing.post("/v1/routing/rules", json=DEFAULT_RULE, headers=admin)
    assert rule.status_code == 201, rule.text
    record = await eventually(
        lambda: filing_judged(True), timeout_s=10, what="routing's verdict on the filing"
    )
    assert record["regulatory_report"]["on_time"] is True
    assert record["regulatory_report"]["filed_at"] == filing["filed_at"]
    stored = await routing_db(system).assignments.find_one({"_id": complaint_id})
    report = stored["clocks"]["regulatory_report"]
    # Laid out from the receipt, stopped at the filing.
    assert (report["state"], report["stopped_at"]) == (
        "stopped",
        stored["regulatory_report_filed_at"],
    )
    assert datetime.fromisoformat(record["regulatory_report_due_at"]) == report["due_at"]
    timeline = await system.intake.get(
        f"/v1/complaints/{complaint_id}/timeline", headers=acme_admin
    )
    entries = timeline.json()["entries"]
    assert [e["action"] for e in entries].count("regulatory_report_filed") == 1
    [verdict] = [e for e in entries if e["action"] == "sla_stopped"]
    assert (verdict["details"]["clock"], verdict["details"]["on_time"]) == (
        "regulatory_report",
        True,
    )


async def test_the_sweep_retries_every_unroutable_complaint_not_only_the_oldest(
    system_factory: SystemFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An edit's own request retries the oldest few; those may stay unroutable (a category
    the new rule does not cover) while a newer one is covered now. The queue sweep goes
    through every one after the change."""
    # The service's own sweeper waits an hour: only the test's sweeps look.
    system = await system_factory(routing={"queue_sweep_interval_s": 3600})
    monkeypatch.setattr(unroutable, "RETRY_BATCH", 2)
    admin = token(system.routing_settings, org=ORG)
    acme_admin = token(system.intake_settings, org=ORG)
    await hangzhou_service_desk(system, admin)
    scheduler = SlaScheduler(settings=system.routing_settings)
    runtime = SimpleNamespace(db=routing_db(system), clock=SystemClock())
    await scheduler.sweep_queues(runtime)  # has looked at the organisation's version already
    older = [
        (await create_complaint(system, acme_admin, branch="HZ", category="billing", subject=s))[
            "id"
        ]
        for s in ("发票开错了", "多收了运费")
    ]
    for complaint_id in older:
        await _visibly_unroutable(system, complaint_id)
    newer = (
        await create_complaint(
            system, acme_admin, branch="HZ", category="product_quality", subject="买的电饭煲坏了"
        )
    )["id"]
    await _visibly_unroutable(system, newer)

    quality = {
        "id": "quality",
        "name": "质量投诉 → 杭州客户服务部",
        "conditions": {"categories": ["product_quality"]},
        "action": {"department_id": "HZ:SVC"},
    }
    rule = await system.routing.post("/v1/routing/rules", json=quality, headers=admin)
    assert rule.status_code == 201, rule.text
    db = routing_db(system)
    assert (await db.assignments.find_one({"_id": newer}))["status"] == "unroutable"

    await scheduler.sweep_queues(runtime)
    assert (await db.assignments.find_one({"_id": newer}))["status"] == "open"
    routed = await _routed(system, newer)
    assert routed["assignment"]["department"] == "HZ:SVC"
    for complaint_id in older:
        assert (await db.assignments.find_one({"_id": complaint_id}))["status"] == "unroutable"


async def test_a_rule_added_through_another_replica_routes_the_next_complaint_at_once(
    system_factory: SystemFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replica reuses its routing context until it sees the directory version change (at
    most every ``routing_directory_check_s``). A complaint that context finds no rule for is
    planned again on what is stored before it waits as unroutable. Before, one received
    moments after another replica added the rule was found unroutable (on its record and
    timeline) until a sweep routed it, and stayed so where that replica's sweep had seen
    the change already."""
    system = await system_factory(
        routing={"routing_directory_check_s": 3600, "queue_sweep_interval_s": 0.1}
    )
    admin = token(system.routing_settings, org=ORG)
    await hangzhou_service_desk(system, admin)
    acme = token(system.intake_settings, org=ORG)
    first = await create_complaint(system, acme, branch="HZ", subject="门店服务态度差")
    await _visibly_unroutable(system, first["id"])  # this replica's context: no rule

    made = await system.routing.post("/v1/routing/rules", json=DEFAULT_RULE, headers=admin)
    assert made.status_code == 201, made.text
    # As if another replica had made the change: this one's contexts have not seen it yet,
    # while its sweep, which reads the version each pass, has (the first is routed by it).
    monkeypatch.setattr(context_cache, "_changed_here", {})
    await _routed(system, first["id"])
    await asyncio.sleep(0.5)  # more sweeps: the version stands seen

    second = await create_complaint(system, acme, branch="HZ", subject="店员态度冷淡")
    routed = await _routed(system, second["id"])
    assert routed["assignment"]["department"] == "HZ:SVC"
    assignment = await routing_db(system).assignments.find_one({"_id": second["id"]})
    assert unroutable.STATE not in [entry["action"] for entry in assignment["history"]]


async def test_a_rule_whose_directory_bump_failed_routes_once_its_creation_is_retried(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rule is stored, then the organisation's directory version bump meets a dropped
    connection: a 503. The client sends the same request again, as told; the repeated
    creation answers with the stored rule and bumps the version, so the complaint that no
    rule covered is routed (a 409 there left it unroutable until some other edit)."""
    admin = token(system.routing_settings, org=ORG)
    complaint_id = await _unroutable_beside_the_desk(system)
    await _created_once_its_bump_failed(
        system, monkeypatch, "/v1/routing/rules", DEFAULT_RULE, headers=admin
    )
    routed = await _routed(system, complaint_id)
    assert routed["assignment"]["department"] == "HZ:SVC"

    other = {**DEFAULT_RULE, "name": "另一条规则"}
    different = await system.routing.post("/v1/routing/rules", json=other, headers=admin)
    assert different.status_code == 409, different.text


async def _audit_trail(system: System, admin: dict, *, entity: str, entity_id: str) -> list[str]:
    trail = await system.routing.get(
        "/v1/directory/audit", params={"entity": entity, "entity_id": entity_id}, headers=admin
    )
    assert trail.status_code == 200, trail.text
    return [entry["action"] for entry in trail.json()]


async def test_a_department_whose_directory_bump_failed_routes_once_its_creation_is_retried(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every branch's customer-service department takes the complaints; Ningbo has none yet,
    so its complaint waits unroutable. The department is stored and audited, then the bump
    meets a dropped connection: a 503. The same request again answers with the stored
    department, records nothing twice and bumps, and the complaint is routed there (before:
    a 422 for a kind already taken, by itself, or a 409, and it stayed unroutable)."""
    admin = token(system.routing_settings, org=ORG)
    acme_admin = token(system.intake_settings, org=ORG)
    await hangzhou_service_desk(system, admin)
    by_kind = {
        "id": "customer-service",
        "name": "投诉 → 本门店客户服务部",
        "action": {"department_kind": "customer_service"},
    }
    for path, body in (
        ("/v1/routing/rules", by_kind),
        ("/v1/directory/branches", {"code": "NB", "name": "宁波门店"}),
    ):
        made = await system.routing.post(path, json=body, headers=admin)
        assert made.status_code == 201, made.text
    complaint_id = (
        await create_complaint(system, acme_admin, branch="NB", subject="门店服务态度差")
    )["id"]
    await _visibly_unroutable(system, complaint_id)
    ningbo = {**DEPARTMENT, "branch": "NB", "name": "宁波客户服务部"}
    retried = await _created_once_its_bump_failed(
        system, monkeypatch, "/v1/directory/departments", ningbo, headers=admin
    )
    stored = await routing_db(system).departments.find_one({"_id": f"{ORG}:NB:SVC"})
    assert datetime.fromisoformat(retried["created_at"]) == stored["created_at"]
    trail = await _audit_trail(system, admin, entity="department", entity_id="NB:SVC")
    assert trail == ["created"]
    routed = await _routed(system, complaint_id)
    assert routed["assignment"]["department"] == "NB:SVC"

    renamed = {**ningbo, "name": "宁波售后服务部"}
    different = await system.routing.post("/v1/directory/departments", json=renamed, headers=admin)
    assert different.status_code == 409, different.text


async def test_a_branch_or_staff_creation_repeated_answers_with_the_stored_entry_once_audited(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A branch created twice with the same body is one branch with one audit record. A
    person stored and audited whose bump failed (a 503) is answered on the retry, and the
    queue of their department is offered to them then; another body is a 409 either way."""
    admin = token(system.routing_settings, org=ORG)
    acme_admin = token(system.intake_settings, org=ORG)
    ningbo = {"code": "NB", "name": "宁波门店"}
    made = [
        await system.routing.post("/v1/directory/branches", json=ningbo, headers=admin)
        for _ in range(2)
    ]
    assert [response.status_code for response in made] == [201, 201], made[1].text
    stored = await routing_db(system).branches.find_one({"_id": f"{ORG}:NB"})
    assert made[1].json()["version"] == 1
    assert datetime.fromisoformat(made[1].json()["created_at"]) == stored["created_at"]
    assert await _audit_trail(system, admin, entity="branch", entity_id="NB") == ["created"]
    renamed = {**ningbo, "name": "宁波旗舰店"}
    different = await system.routing.post("/v1/directory/branches", json=renamed, headers=admin)
    assert different.status_code == 409, different.text

    for path, body in (
        ("/v1/directory/branches", BRANCH),
        ("/v1/directory/departments", DEPARTMENT),
        ("/v1/routing/rules", DEFAULT_RULE),
    ):
        made_one = await system.routing.post(path, json=body, headers=admin)
        assert made_one.status_code == 201, made_one.text
    complaint_id = (
        await create_complaint(system, acme_admin, branch="HZ", subject="门店服务态度差")
    )["id"]
    db = routing_db(system)
    queued = await eventually(
        lambda: db.assignments.find_one({"_id": complaint_id, "status": "queued"}),
        what="the complaint queued in a department without people",
    )
    assert queued["department"] == "HZ:SVC"
    await _created_once_its_bump_failed(
        system, monkeypatch, "/v1/directory/staff", AGENT, headers=admin
    )
    assert await _audit_trail(system, admin, entity="staff", entity_id="hz-li") == ["created"]
    # Offered within the request, as after a creation that did not fail.
    assigned = await db.assignments.find_one({"_id": complaint_id})
    assert (assigned["status"], assigned["owner_id"]) == ("open", "hz-li")

    busier = {**AGENT, "capacity": 9}
    different = await system.routing.post("/v1/directory/staff", json=busier, headers=admin)
    assert different.status_code == 409, different.text


async def test_the_sweep_routes_an_unroutable_complaint_after_the_context_max_age_without_a_bump(
    system_factory: SystemFactory,
) -> None:
    """A rule written to the database by hand (or one whose bump failed) leaves the
    directory version as it was. The queue sweep still tries the organisation's unroutable
    complaints once ``routing_context_max_age_s`` has passed since it last did, so the
    complaint is routed; before, it waited for the next edit made through the API."""
    # The service's own sweeper waits an hour: only the test's sweeps look.
    system = await system_factory(routing={"queue_sweep_interval_s": 3600})
    complaint_id = await _unroutable_beside_the_desk(system)
    settings = system.routing_settings.model_copy(update={"routing_context_max_age_s": 0.3})
    scheduler = SlaScheduler(settings=settings)
    runtime = SimpleNamespace(db=routing_db(system), clock=SystemClock())
    db = routing_db(system)
    version = await context_cache.directory_version(db=db, org=ORG)
    assert await scheduler.sweep_queues(runtime) == 0  # tried at this version: no rule yet

    rule = RuleCreate.model_validate(DEFAULT_RULE)
    now = SystemClock().now()
    await db.rules.insert_one(
        {
            "_id": f"{ORG}:{rule.id}",
            "org": ORG,
            **rule.model_dump(mode="json", exclude={"id", "position"}),
            "position": 10,
            "version": 1,
            "active": True,
            "created_at": now,
            "updated_at": now,
            "updated_by": "dba",
        }
    )

    async def swept_and_routed() -> dict | None:
        await scheduler.sweep_queues(runtime)
        return await db.assignments.find_one({"_id": complaint_id, "status": "open"})

    routed = await eventually(swept_and_routed, timeout_s=5, what="a sweep routing it")
    assert routed["department"] == "HZ:SVC"
    assert await context_cache.directory_version(db=db, org=ORG) == version


async def test_a_complaint_routed_in_the_morning_goes_to_the_department_not_the_night_duty_officer(
    system_factory: SystemFactory,
) -> None:
    """Two high-severity complaints arrive at 02:30, when no rule covers them. Until
    5 December the duty officer's turn was judged at the receipt, not when an owner was
    chosen: the one a rule added at 10:00 routed went to the duty officer (off shift by
    then, uncapped), and so did the one a supervisor sent to a department at night, which
    the supervisor had chosen for its people (the record said ``duty_officer: true``)."""
    clock = ManualClock(MONDAY_10_SHANGHAI - timedelta(hours=7, minutes=30))  # 02:30
    system = await system_factory(clock=clock)
    admin = token(system.routing_settings, org=ORG)
    office = {
        **BRANCH,
        "time_zone": "Asia/Shanghai",
        "hours": {day: [{"start": "08:30", "end": "17:30"}] for day in ("mon", "tue", "wed")},
    }
    night = {"branch": "HZ", "code": "NIGHT", "name": "夜间值班", "kind": "night_desk"}
    duty = {"id": "hz-duty", "branch": "HZ", "department": "NIGHT", "name": "值班长"}
    for path, body in (
        ("/v1/directory/branches", office),
        ("/v1/directory/departments", DEPARTMENT),
        ("/v1/directory/departments", night),
        ("/v1/directory/staff", AGENT),
        ("/v1/directory/staff", duty),
    ):
        made = await system.routing.post(path, json=body, headers=admin)
        assert made.status_code == 201, made.text
    covered = await system.routing.patch(
        "/v1/directory/branches/HZ", json={"duty_officer_id": "hz-duty"}, headers=admin
    )
    assert covered.status_code == 200, covered.text

    acme = token(system.intake_settings, org=ORG)
    waiting, sent = [
        (await create_complaint(system, acme, branch="HZ", severity="high", subject=subject))["id"]
        for subject in ("门店收银多收钱", "店员辱骂顾客")
    ]
    for complaint_id in (waiting, sent):
        await _visibly_unroutable(system, complaint_id)
    supervisor = token(system.routing_settings, org=ORG, roles=("supervisor",))
    moved = await system.routing.post(
        f"/v1/assignments/{sent}/reassign",
        json={"department": "HZ:SVC", "reason": "交客服部处理"},
        headers=supervisor,
    )
    assert moved.status_code == 200, moved.text
    assert (moved.json()["owner_id"], moved.json()["duty_officer"]) == ("hz-li", False)

    clock.advance(timedelta(hours=7, minutes=30))  # Monday 10:00, the branch open
    rule = await system.routing.post("/v1/routing/rules", json=DEFAULT_RULE, headers=admin)
    assert rule.status_code == 201, rule.text
    routed = (await _routed(system, waiting))["assignment"]
    assert routed["owner_id"] == "hz-li"
    read = await system.routing.get(f"/v1/assignments/{waiting}", headers=admin)
    assert (read.json()["owner_id"], read.json()["duty_officer"]) == ("hz-li", False)
    # The clocks still count from the receipt, the night's part of them running (urgent).
    started = datetime.fromisoformat(read.json()["clock_starts_at"])
    assert started == clock.now() - timedelta(hours=7, minutes=30)


async def test_a_complaint_that_kept_changing_under_the_sweep_is_tried_at_the_next_sweep(
    system_factory: SystemFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A complaint reclassified again and again while a sweep routes it is deferred (a
    conflict, transient). The sweep noted the organisation as tried all the same, so the
    complaint waited ``routing_context_max_age_s`` (a minute by default) for the next try;
    now the next sweep tries it."""
    system = await system_factory(
        routing={"queue_sweep_interval_s": 3600, "routing_context_max_age_s": 600}
    )
    admin = token(system.routing_settings, org=ORG)
    complaint_id = await _unroutable_beside_the_desk(system)
    changing = {"now": True}
    leave = unroutable.leave

    async def leave_unless_changing(**keywords: object) -> bool:
        if changing["now"]:
            raise ConcurrentUpdate(detail="the complaint changed while it was routed (the test)")
        return await leave(**keywords)  # type: ignore[arg-type]

    monkeypatch.setattr(unroutable, "leave", leave_unless_changing)
    rule = await system.routing.post("/v1/routing/rules", json=DEFAULT_RULE, headers=admin)
    assert rule.status_code == 201, rule.text
    scheduler = SlaScheduler(settings=system.routing_settings)
    runtime = SimpleNamespace(db=routing_db(system), clock=SystemClock())
    assert await scheduler.sweep_queues(runtime) == 0
    db = routing_db(system)
    assert (await db.assignments.find_one({"_id": complaint_id}))["status"] == "unroutable"

    changing["now"] = False
    assert await scheduler.sweep_queues(runtime) == 1
    assert (await db.assignments.find_one({"_id": complaint_id}))["status"] == "open"
    assert (await _routed(system, complaint_id))["assignment"]["department"] == "HZ:SVC"
