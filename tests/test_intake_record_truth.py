"""Integration: the complaint of record tells what happened, through all three services.

Acknowledgement is a fact that stays possible after notes, waits, escalations and
breaches; every status change is on the timeline with its cause; severity,
flags, responsibility, escalation and the filing of a regulatory report as routing
applies them reach the record.
"""

from __future__ import annotations

import asyncio
import uuid
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta

import pytest

from complaints_shared.clock import ManualClock
from complaints_shared.events import EventType
from intake.main import create_app as create_intake_app
from intake.settings import IntakeSettings
from tests.support.http import command, complaint_body, complaint_when, create_complaint, token
from tests.support.kafka import of_type, routing_events
from tests.support.routing import (
    FAST_TIMERS,
    MONDAY_10_SHANGHAI,
    TUESDAY_22_SHANGHAI,
    assignment_when,
)
from tests.support.system import System, SystemFactory, serve, settings_for_test
from tests.support.waits import eventually
from tests.support.webhooks import receiver, serve_webhooks, subscribe

pytestmark = pytest.mark.integration

MINUTE = timedelta(minutes=1)


async def _timeline(system: System, cid: str, headers: dict) -> list[dict]:
    response = await system.intake.get(f"/v1/complaints/{cid}/timeline", headers=headers)
    return response.json()["entries"]


async def _ack_clock_stopped(system: System, cid: str) -> dict:
    return await assignment_when(
        system,
        cid,
        lambda doc: doc["clocks"]["acknowledge"]["state"] == "stopped",
        what="routing's acknowledge clock stopped",
    )


async def test_acknowledge_after_a_note_and_after_pending_and_resume(system: System) -> None:
    agent = token(system.intake_settings, branches=["LZ"], roles=("agent",))
    noted = await create_complaint(system, agent, subject="话费多扣一")
    waited = await create_complaint(system, agent, subject="话费多扣二")
    for cid in (noted["id"], waited["id"]):
        await complaint_when(
            system, cid, agent, lambda c: c["assignment"], what="assignment", timeout_s=20
        )

    after_note = await command(
        system, f"/v1/complaints/{noted['id']}/notes", {"text": "查账"}, agent
    )
    assert after_note["status"] == "open" and after_note["work_started_at"]
    acked = await command(system, f"/v1/complaints/{noted['id']}/acknowledge", {}, agent)
    assert acked["status"] == "open"
    assert acked["acknowledgement"]["acknowledged_by"] == "tester"
    assert acked["acknowledgement"]["late"] is False

    base = f"/v1/complaints/{waited['id']}"
    await command(system, f"{base}/pending-customer", {"reason": "等缴费凭证"}, agent)
    await command(system, f"{base}/resume", {}, agent)
    promised = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
    acked = await command(
        system,
        f"{base}/acknowledge",
        {"promised_response_at": promised, "message_to_customer": "明天答复"},
        agent,
    )
    assert acked["acknowledged_at"] and acked["status"] == "open"
    assert acked["acknowledgement"]["promised_response_at"] == promised

    again = await system.intake.post(f"{base}/acknowledge", json={}, headers=agent)
    assert again.status_code == 409
    problem = again.json()
    assert (problem["current_status"], problem["command"]) == ("open", "acknowledge")
    assert "already acknowledged" in problem["detail"]
    for cid in (noted["id"], waited["id"]):
        await _ack_clock_stopped(system, cid)


async def test_an_escalated_and_breached_complaint_is_acknowledged_late_and_its_clock_stops(
    system_factory: SystemFactory,
) -> None:
    clock = ManualClock(MONDAY_10_SHANGHAI)
    system = await system_factory(clock=clock, routing=FAST_TIMERS)
    agent = token(system.intake_settings, branches=["LZ"], roles=("agent",))
    cid = (await create_complaint(system, agent, severity="high"))["id"]
    assignment = await assignment_when(system, cid)
    clock.set(assignment["acknowledge_due_at"] + MINUTE)
    breached = await complaint_when(
        system,
        cid,
        agent,
        lambda c: c["sla"]["acknowledge_breached"] and (c["escalation"] or {}).get("level") == 1,
        what="breach and escalation on the record",
        timeout_s=20,
    )
    assert breached["status"] == "open"  # breach and escalation are facts, not statuses
    assert breached["escalation"]["reason"] == "sla_breach"

    acked = await command(system, f"/v1/complaints/{cid}/acknowledge", {}, agent)
    assert acked["acknowledgement"]["late"] is True
    assert acked["acknowledged_at"] == clock.now().isoformat().replace("+00:00", "Z")
    stopped = await _ack_clock_stopped(system, cid)
    assert stopped["clocks"]["acknowledge"]["stopped_at"] == clock.now()
    assert stopped["clocks"]["resolve"]["state"] == "running"


async def test_a_hospital_major_incident_is_acknowledged_and_shows_routings_severity(
    system_factory: SystemFactory,
) -> None:
    clock = ManualClock(TUESDAY_22_SHANGHAI)  # out of hours: the duty officer takes it
    system = await system_factory(clock=clock, routing=FAST_TIMERS)
    duty = token(system.intake_settings, branches=["HOSP"], roles=("agent",))
    incident = await create_complaint(
        system,
        duty,
        branch="HOSP",
        category="medical",
        severity="normal",  # given by the caller; the keyword rule raises it to critical
        subject="急诊误诊",
        description="急诊误诊为胃炎，实为心梗，延误治疗",
    )
    cid = incident["id"]
    record = await complaint_when(
        system,
        cid,
        duty,
        lambda c: c["severity"] == "critical" and (c["escalation"] or {}).get("level") == 2,
        what="routing's severity and escalation on the record",
        timeout_s=20,
    )
    assert record["major_incident"] is True
    assert record["status"] == "open"
    assert record["escalation"]["reason"] == "critical_incident"
    assert record["regulatory_report_due_at"] is not None

    waiting = {"escalated": "true", "acknowledged": "false"}
    found = await system.intake.get("/v1/complaints", params=waiting, headers=duty)
    assert [item["id"] for item in found.json()["items"]] == [cid]
    acked = await command(system, f"/v1/complaints/{cid}/acknowledge", {}, duty)
    assert acked["acknowledged_at"] is not None
    found = await system.intake.get("/v1/complaints", params=waiting, headers=duty)
    assert found.json()["items"] == []
    await _ack_clock_stopped(system, cid)

    found = await system.intake.get("/v1/complaints", params={"severity": "critical"}, headers=duty)
    assert [item["id"] for item in found.json()["items"]] == [cid]
    window = {"from": (clock.now() - MINUTE).isoformat(), "to": (clock.now() + MINUTE).isoformat()}
    head = token(system.intake_settings, branches=["HOSP"], roles=("supervisor",))
    report = await system.intake.get(
        "/v1/reports/summary", params={"group_by": "severity", **window}, headers=head
    )
    groups = {group["group"]: group for group in report.json()["groups"]}
    assert groups["critical"]["received"] == 1 and "normal" not in groups
    assert groups["critical"]["acknowledge_on_time_pct"] == 100.0


async def test_a_filed_regulatory_report_is_on_the_record_and_its_deadline_no_longer_pending(
    system_factory: SystemFactory,
) -> None:
    clock = ManualClock(MONDAY_10_SHANGHAI)
    system = await system_factory(clock=clock, routing=FAST_TIMERS)
    agent = token(system.intake_settings, branches=["LZ"], roles=("agent",))
    head = token(system.routing_settings, branches=["LZ"], roles=("supervisor",), subject="lz-head")
    reported = EventType.COMPLAINT_REGULATORY_REPORT_FILED
    async with AsyncExitStack() as stack:
        hooks = await stack.enter_async_context(receiver())
        webhooks = await serve_webhooks(stack, system)
        # A branch's subscription: the filing names nothing of another branch.
        admin = token(system.intake_settings)
        await subscribe(webhooks, admin, url=hooks.url, event_types=[reported], branch="LZ")
        cid = (
            await create_complaint(
                system, agent, category="medical", severity="critical", subject="输液后过敏性休克"
            )
        )["id"]
        record = await complaint_when(
            system, cid, agent, lambda c: c["regulatory_report_due_at"], what="the deadline"
        )
        assert record["regulatory_report"] is None
        report_due = datetime.fromisoformat(record["regulatory_report_due_at"])
        resolve_due = datetime.fromisoformat(record["resolve_due_at"])
        assert report_due < resolve_due  # 6 hours against a critical complaint's 24

        path = f"/v1/assignments/{cid}/regulatory-report"
        filed_at = clock.now()
        filed = await system.routing.post(path, json={"reference": "卫健委-2026-017"}, headers=head)
        assert filed.status_code == 200, filed.text
        record = await complaint_when(
            system, cid, agent, lambda c: c["regulatory_report"], what="the filing on the record"
        )
        filing = record["regulatory_report"]
        assert (filing["reference"], filing["filed_by"], filing["on_time"]) == (
            "卫健委-2026-017",
            "lz-head",
            True,
        )
        assert datetime.fromisoformat(filing["filed_at"]) == filed_at
        assert datetime.fromisoformat(record["regulatory_report_due_at"]) == report_due

        # A retried request is on record already; another reference is refused: neither is
        # announced again.
        again = await system.routing.post(path, json={"reference": "卫健委-2026-017"}, headers=head)
        assert again.status_code == 200, again.text
        other = await system.routing.post(path, json={"reference": "卫健委-2026-018"}, headers=head)
        assert other.status_code == 409, other.text

        # Both deadlines pass: the resolve clock breaches, the filed report's does not.
        clock.set(resolve_due + MINUTE)
        record = await complaint_when(
            system,
            cid,
            agent,
            lambda c: c["sla"]["resolve_breached"],
            what="the resolve clock's breach",
            timeout_s=20,
        )
        assert record["sla"]["regulatory_report_breached"] is False
        assert record["regulatory_report"] == filing

        entries = await _timeline(system, cid, agent)
        [entry] = [e for e in entries if e["action"] == "regulatory_report_filed"]
        assert entry["cause"] == "complaint.regulatory_report_filed"
        assert (entry["details"]["reference"], entry["details"]["by"]) == (
            "卫健委-2026-017",
            "lz-head",
        )
        assert entry["details"]["on_time"] is True

        # Routing announced the filing once: a second announcement would come before the
        # breach, on the complaint's own ordered partition.
        events = await routing_events(
            system,
            until=lambda events: bool(of_type(events, EventType.COMPLAINT_SLA_BREACHED, cid)),
        )
        [announced] = of_type(events, reported, cid)
        assert announced.data["on_time"] is True and announced.data["breached"] is False
        assert datetime.fromisoformat(announced.data["due_at"]) == report_due

        await eventually(lambda: asyncio.sleep(0, hooks.requests), what="webhook delivery")
        [delivered] = hooks.bodies()
        assert delivered["type"] == reported.value
        assert delivered["data"] == announced.data


async def _followup_check(system: System, cid: str, headers: dict) -> str:
    async def probe() -> str | None:
        response = await system.followup.get(
            "/v1/followups", params={"complaint_id": cid}, headers=headers
        )
        items = response.json()["items"]
        return items[0]["id"] if items else None

    return await eventually(probe, timeout_s=15, what="satisfaction check")


@pytest.mark.parametrize(
    ("satisfied", "action", "status_to"),
    [(True, "closed", "closed"), (False, "reopened", "reopened")],
)
async def test_closure_and_reopening_by_followup_are_on_the_timeline(
    system: System, satisfied: bool, action: str, status_to: str
) -> None:
    admin = token(system.intake_settings)
    cid = (await create_complaint(system, admin))["id"]
    await complaint_when(
        system, cid, admin, lambda c: c["assignment"], what="assignment", timeout_s=20
    )
    await command(system, f"/v1/complaints/{cid}/resolve", {"summary": "已退费"}, admin)
    check_id = await _followup_check(system, cid, admin)
    outcome = await system.followup.post(
        f"/v1/followups/{check_id}/outcome",
        json={"satisfied": satisfied, "score": 5 if satisfied else 2},
        headers=admin,
    )
    assert outcome.status_code == 200, outcome.text
    await complaint_when(
        system, cid, admin, lambda c: c["status"] == status_to, what=status_to, timeout_s=20
    )

    entries = await _timeline(system, cid, admin)
    actions = [entry["action"] for entry in entries]
    completed = entries[actions.index("followup_completed")]
    (changed,) = [entry for entry in entries if entry["action"] == action]
    assert actions.index("followup_completed") < actions.index(action)
    assert (changed["status_from"], changed["status_to"]) == ("resolved", status_to)
    assert changed["actor"] == "followup"
    assert changed["cause"] == "followup.completed"
    assert changed["event_id"] == completed["event_id"] is not None
    # Every status change on the timeline names where it came from.
    statuses = [entry["status_to"] for entry in entries if entry.get("status_to")]
    assert statuses[:2] == ["open", "resolved"] and statuses[-1] == status_to


async def _responsibility_set_in_routing(system: System, admin: dict) -> str:
    """A complaint routed, its supervisor naming {LZ:NETWORK, supplier} responsible; its id."""
    supervisor = token(system.routing_settings, roles=("supervisor",))
    cid = (await create_complaint(system, admin))["id"]
    await assignment_when(system, cid)
    response = await system.routing.post(
        f"/v1/assignments/{cid}/responsibility",
        json={"responsible_department": "LZ:NETWORK", "responsible_party": "supplier"},
        headers=supervisor,
    )
    assert response.status_code == 200, response.text
    return cid


async def test_responsibility_set_in_routing_reaches_the_record_and_the_report(
    system: System,
) -> None:
    admin = token(system.intake_settings)
    cid = await _responsibility_set_in_routing(system, admin)
    record = await complaint_when(
        system,
        cid,
        admin,
        lambda c: c["responsibility"],
        what="responsibility on the record",
        timeout_s=20,
    )
    assert (record["responsible_department"], record["responsible_party"]) == (
        "LZ:NETWORK",
        "supplier",
    )
    assert record["responsibility"]["set_by"]
    entries = await _timeline(system, cid, admin)
    assert "responsibility_set" in [entry["action"] for entry in entries]
    report = (await system.intake.get("/v1/reports/summary", headers=admin)).json()
    (lz,) = report["groups"]
    assert lz["top_responsible_departments"] == [{"value": "LZ:NETWORK", "count": 1}]
    assert lz["top_responsible_parties"] == [{"value": "supplier", "count": 1}]


async def test_a_party_named_alone_at_resolution_sets_the_whole_responsibility(
    system: System,
) -> None:
    """Routing set {LZ:NETWORK, supplier}; the resolution names the customer alone. The
    record said ``responsible_party: customer`` beside ``responsibility.party: supplier``
    (set by routing), and routing's assignment kept the supplier."""
    admin = token(system.intake_settings)
    cid = await _responsibility_set_in_routing(system, admin)
    await complaint_when(
        system, cid, admin, lambda c: c["responsibility"], what="routing's responsibility"
    )
    resolved = await command(
        system,
        f"/v1/complaints/{cid}/resolve",
        {"summary": "客户自行拔了光猫电源", "responsible_party": "customer"},
        admin,
    )
    assert (resolved["responsible_department"], resolved["responsible_party"]) == (
        "LZ:NETWORK",
        "customer",
    )
    assert resolved["responsibility"]["party"] == "customer"
    assert resolved["responsibility"]["set_by"] == "tester"
    assigned = await assignment_when(
        system, cid, lambda doc: doc.get("responsible_party") == "customer", what="the party"
    )
    assert assigned["responsible_department"] == "LZ:NETWORK"

    async def announced_twice() -> bool:
        entries = await _timeline(system, cid, admin)
        return [entry["action"] for entry in entries].count("responsibility_set") == 2

    # Routing announces the whole responsibility again, and the record keeps agreeing.
    await eventually(announced_twice, what="routing's second responsibility_set")
    record = await complaint_when(system, cid, admin, lambda c: True, what="the record")
    assert (record["responsible_department"], record["responsible_party"]) == (
        "LZ:NETWORK",
        "customer",
    )
    assert record["responsibility"]["party"] == "customer"


async def test_a_resolution_cannot_blame_a_department_of_a_branch_the_token_does_not_cover(
    system: System,
) -> None:
    """Routing's responsibility route answers another branch's department like an unknown
    one; a resolution naming it was taken and sent on to routing."""
    lz_agent = token(system.intake_settings, branches=["LZ"], roles=("agent",))
    cid = (await create_complaint(system, lz_agent))["id"]
    refused = await system.intake.post(
        f"/v1/complaints/{cid}/resolve",
        json={"summary": "x", "responsible_department": "HOSP:MED"},
        headers=lz_agent,
    )
    assert refused.status_code == 422, refused.text
    assert refused.json()["errors"][0]["field"] == "responsible_department"
    own = await system.intake.post(
        f"/v1/complaints/{cid}/resolve",
        json={"summary": "x", "responsible_department": "LZ:NETWORK"},
        headers=lz_agent,
    )
    assert own.status_code == 200, own.text


async def test_unknown_query_parameters_are_422_problems_on_every_service(
    system: System,
) -> None:
    admin = token(system.intake_settings)
    cid = (await create_complaint(system, admin))["id"]
    for client, path in [
        (system.intake, "/v1/reports/summary"),
        (system.intake, "/v1/complaints"),
        (system.intake, f"/v1/complaints/{cid}"),
        (system.intake, f"/v1/complaints/{cid}/timeline"),
        (system.routing, "/v1/assignments"),
        (system.followup, "/v1/followups"),
    ]:
        response = await client.get(path, params={"brnach": "LZ"}, headers=admin)
        assert response.status_code == 422, (path, response.text)
        problem = response.json()
        assert problem["errors"] == [{"field": "brnach", "message": "unknown parameter"}], path
    known = await system.intake.get("/v1/reports/summary", params={"branch": "LZ"}, headers=admin)
    assert known.status_code == 200


async def test_the_201_body_equals_a_later_get_field_for_field(infrastructure) -> None:
    settings = settings_for_test(IntakeSettings, infra=infrastructure, run_id=uuid.uuid4().hex[:10])
    clock = ManualClock(MONDAY_10_SHANGHAI + timedelta(microseconds=123_456))
    async with AsyncExitStack() as stack:
        client = await serve(stack, create_intake_app(settings, clock=clock), "intake")
        admin = token(settings)
        created = await client.post(
            "/v1/complaints",
            json=complaint_body(occurred_at="2026-11-22T08:30:15.987654+08:00"),
            headers=admin,
        )
        assert created.status_code == 201, created.text
        body = created.json()
        later = (await client.get(f"/v1/complaints/{body['id']}", headers=admin)).json()
    assert body.pop("resubmission") is False
    assert body == later
    assert body["created_at"] == "2026-11-23T02:00:00.123000Z"


async def test_reference_numbers_count_the_day_in_the_branchs_own_time_zone(
    system_factory: SystemFactory,
) -> None:
    # 03:00 UTC on 24 November: still the 23rd in New York, already the 24th in Shanghai.
    clock = ManualClock(datetime(2026, 11, 24, 3, 0, tzinfo=UTC))
    system = await system_factory(clock=clock)
    admin = token(system.routing_settings)
    created = await system.routing.post(
        "/v1/directory/branches",
        json={"code": "NYC", "name": "纽约办事处", "time_zone": "America/New_York"},
        headers=admin,
    )
    assert created.status_code == 201, created.text
    intake_db = system.mongo[system.intake_settings.database_name()]

    async def known(version: int):
        document = await intake_db.branches.find_one({"_id": "demo:NYC"})
        return document if document and document["version"] == version else None

    assert (await eventually(lambda: known(1), what="branch.updated in intake"))[
        "time_zone"
    ] == "America/New_York"
    nyc = await create_complaint(system, admin, branch="NYC", subject="海外账单")
    lz = await create_complaint(system, admin, branch="LZ", subject="本地账单")
    assert nyc["reference"] == "NYC-20261123-0001"
    assert lz["reference"] == "LZ-20261124-0001"  # not announced yet: REFERENCE_TIME_ZONE

    moved = await system.routing.patch(
        "/v1/directory/branches/NYC", json={"time_zone": "Asia/Tokyo"}, headers=admin
    )
    assert moved.status_code == 200, moved.text
    await eventually(lambda: known(2), what="the branch's new time zone in intake")
    later = await create_complaint(system, admin, branch="NYC", subject="再次投诉")
    assert later["reference"] == "NYC-20261124-0001"


async def test_repeat_detection_finds_an_open_complaint_behind_hundreds_of_newer_ones(
    infrastructure,
) -> None:
    """The customer's open complaint from long ago still makes the next one a repeat,
    however many of their complaints were registered (and finished) since."""
    settings = settings_for_test(IntakeSettings, infra=infrastructure, run_id=uuid.uuid4().hex[:10])
    start = MONDAY_10_SHANGHAI
    clock = ManualClock(start)
    customer = {"name": "总机", "phone": "0931-8888888"}
    async with AsyncExitStack() as stack:
        client = await serve(stack, create_intake_app(settings, clock=clock), "intake")
        admin = token(settings)

        async def register(subject: str) -> dict:
            response = await client.post(
                "/v1/complaints",
                json=complaint_body(subject=subject, customer=customer),
                headers=admin,
            )
            assert response.status_code == 201, response.text
            return response.json()

        oldest = await register("第一次投诉")
        for n in range(230):
            clock.set(start + timedelta(minutes=n + 1))
            cid = (await register(f"第{n + 2}次投诉"))["id"]
            withdrawn = await client.post(f"/v1/complaints/{cid}/withdraw", json={}, headers=admin)
            assert withdrawn.status_code == 200, withdrawn.text
        # Past the repeat window of every withdrawn one; the oldest is still open.
        clock.set(start + timedelta(days=settings.repeat_window_days + 1))
        latest = await register("又来投诉")
    assert latest["repeat_count"] == 1
    assert latest["repeat_of"] == [oldest["id"]]
    assert "repeat" in latest["flags"]
