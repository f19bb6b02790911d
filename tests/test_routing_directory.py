"""Integration: the directory and rules admin APIs validate, scope, version and audit."""

from __future__ import annotations

import asyncio
import json
import uuid
from datetime import date, timedelta

import pytest

from complaints_shared.events import CustomerContact, EventType
from routing import audit
from routing.rules import store as rules_store
from tests.support.events import received
from tests.support.faults import FailsFirst
from tests.support.http import token
from tests.support.kafka import intake_producer
from tests.support.routing import assignment_when
from tests.support.system import System

pytestmark = pytest.mark.integration

XIAN = {
    "code": "XA",
    "name": "西安分公司",
    "time_zone": "Asia/Shanghai",
    "hours": {day: [{"start": "08:30", "end": "17:30"}] for day in ("mon", "tue", "wed", "thu")},
    "holidays": {
        "country": "CN",
        "closed_days": ["2026-12-31"],
        "working_days": ["2026-12-27"],
    },
}


def _field(response) -> str:
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    return response.json()["errors"][0]["field"]


async def test_directory_validates_references_chains_and_scopes(system: System) -> None:
    admin = token(system.routing_settings)
    api = system.routing
    supervisor = token(system.routing_settings, roles=("supervisor",))
    assert (await api.get("/v1/directory/branches", headers=supervisor)).status_code == 403

    assert (
        _field(
            await api.post(
                "/v1/directory/branches", json={**XIAN, "time_zone": "Mars/Base"}, headers=admin
            )
        )
        == "time_zone"
    )
    bad_country = {**XIAN, "holidays": {"country": "XX"}}
    assert (
        _field(await api.post("/v1/directory/branches", json=bad_country, headers=admin))
        == "holidays.country"
    )
    assert (
        _field(await api.post("/v1/directory/branches", json={**XIAN, "hours": {}}, headers=admin))
        == "hours"
    )
    overlapping = {
        **XIAN,
        "hours": {"mon": [{"start": "08:00", "end": "12:00"}, {"start": "11:00", "end": "17:00"}]},
    }
    assert (
        _field(await api.post("/v1/directory/branches", json=overlapping, headers=admin))
        == "hours.mon"
    )
    backwards = {**XIAN, "hours": {"mon": [{"start": "18:00", "end": "09:00"}]}}
    assert _field(
        await api.post("/v1/directory/branches", json=backwards, headers=admin)
    ).startswith("hours.mon")
    no_officer = {**XIAN, "duty_officer_id": "nobody"}
    assert (
        _field(await api.post("/v1/directory/branches", json=no_officer, headers=admin))
        == "duty_officer_id"
    )
    created = await api.post("/v1/directory/branches", json=XIAN, headers=admin)
    assert created.status_code == 201, created.text
    assert created.json()["holidays"]["working_days"] == ["2026-12-27"]
    # The same creation again (a retry) is answered with the branch; another body is a 409.
    repeated = await api.post("/v1/directory/branches", json=XIAN, headers=admin)
    assert (repeated.status_code, repeated.json()["version"]) == (201, 1), repeated.text
    renamed = {**XIAN, "name": "另一个西安营业厅"}
    assert (
        await api.post("/v1/directory/branches", json=renamed, headers=admin)
    ).status_code == 409

    department = {"branch": "XA", "code": "CS", "name": "客户服务部", "kind": "customer_service"}
    unknown_branch = {**department, "branch": "ZZ"}
    assert (
        _field(await api.post("/v1/directory/departments", json=unknown_branch, headers=admin))
        == "branch"
    )
    empty_chain = {**department, "escalation_chain": []}
    assert (
        _field(await api.post("/v1/directory/departments", json=empty_chain, headers=admin))
        == "escalation_chain"
    )
    ghost = {**department, "escalation_chain": [{"staff_id": "ghost"}]}
    assert (
        _field(await api.post("/v1/directory/departments", json=ghost, headers=admin))
        == "escalation_chain.0.staff_id"
    )
    # Another branch's person: an escalation looks the chain up among the department's own
    # branch, so the rung went to nobody (an org-wide admin's token saw both branches).
    foreign = {**department, "escalation_chain": [{"role": "team_lead"}, {"staff_id": "hosp-head"}]}
    refused = await api.post("/v1/directory/departments", json=foreign, headers=admin)
    assert _field(refused) == "escalation_chain.1.staff_id", refused.text
    assert "branch HOSP" in refused.json()["errors"][0]["message"]
    loop = {**department, "escalation_chain": [{"role": "team_lead"}, {"role": "team_lead"}]}
    assert (
        _field(await api.post("/v1/directory/departments", json=loop, headers=admin))
        == "escalation_chain.1"
    )
    downward = {
        **department,
        "escalation_chain": [{"role": "department_head"}, {"role": "team_lead"}],
    }
    assert (
        _field(await api.post("/v1/directory/departments", json=downward, headers=admin))
        == "escalation_chain.1"
    )
    both = {**department, "escalation_chain": [{"role": "team_lead", "staff_id": "lz-gao"}]}
    assert _field(await api.post("/v1/directory/departments", json=both, headers=admin)).startswith(
        "escalation_chain.0"
    )
    made = await api.post("/v1/directory/departments", json=department, headers=admin)
    assert made.status_code == 201, made.text
    assert [step["role"] for step in made.json()["escalation_chain"]] == [
        "team_lead",
        "department_head",
        "branch_head",
    ]
    twin = {**department, "code": "CS2"}
    assert _field(await api.post("/v1/directory/departments", json=twin, headers=admin)) == "kind"

    person = {"id": "xa-zhou", "branch": "XA", "department": "CS", "name": "周敏", "capacity": 5}
    nowhere = {**person, "department": "NOPE"}
    assert (
        _field(await api.post("/v1/directory/staff", json=nowhere, headers=admin)) == "department"
    )
    assert (await api.post("/v1/directory/staff", json=person, headers=admin)).status_code == 201
    lead = {**person, "id": "xa-lead", "name": "组长", "role": "team_lead", "capacity": 0}
    assert (await api.post("/v1/directory/staff", json=lead, headers=admin)).status_code == 201
    assert (
        _field(
            await api.patch("/v1/directory/staff/xa-zhou", json={"capacity": None}, headers=admin)
        )
        == "capacity"
    )
    chain = {"escalation_chain": [{"staff_id": "xa-lead"}, {"role": "branch_head"}]}
    assert (
        await api.patch("/v1/directory/departments/XA:CS", json=chain, headers=admin)
    ).status_code == 200
    # Another branch's person: the token covers both, but Xi'an's urgent night work would go
    # to someone whose own token cannot open it.
    foreign_officer = await api.patch(
        "/v1/directory/branches/XA", json={"duty_officer_id": "lz-hu"}, headers=admin
    )
    assert _field(foreign_officer) == "duty_officer_id", foreign_officer.text
    officer = await api.patch(
        "/v1/directory/branches/XA", json={"duty_officer_id": "xa-lead"}, headers=admin
    )
    assert officer.status_code == 200 and officer.json()["version"] == 2

    lz_admin = token(system.routing_settings, branches=["LZ"])
    assert (await api.get("/v1/directory/branches/XA", headers=lz_admin)).status_code == 404
    assert (await api.get("/v1/directory/staff/xa-zhou", headers=lz_admin)).status_code == 404
    assert (await api.get("/v1/directory/departments/XA:CS", headers=lz_admin)).status_code == 404
    assert [
        b["code"] for b in (await api.get("/v1/directory/branches", headers=lz_admin)).json()
    ] == ["LZ"]
    other_org = token(system.routing_settings, org="acme")
    assert (await api.get("/v1/directory/branches/LZ", headers=other_org)).status_code == 404

    trail = await api.get(
        "/v1/directory/audit", params={"entity": "branch", "entity_id": "XA"}, headers=admin
    )
    assert [entry["action"] for entry in trail.json()] == ["updated", "created"]

    complaint = received(branch="XA", category="other", description="营业厅排队太久")
    async with intake_producer(system) as publish:
        await publish(EventType.COMPLAINT_RECEIVED, complaint)
    document = await assignment_when(system, complaint.complaint_id)
    assert (document["department"], document["owner_id"]) == ("XA:CS", "xa-zhou")
    staff = await api.get("/v1/directory/staff/xa-zhou", headers=admin)
    assert staff.json()["open_load"] == 1


async def test_a_department_a_rule_names_stays_active_and_deactivations_answer_their_etag(
    system: System,
) -> None:
    """Until 5 December a branch's administrator could deactivate the department the
    organisation's default rule names (HQ:CS): the rule was passed over from then on and
    every complaint no other rule covers went unroutable. The rule was checked when saved,
    never again. And deactivations answered no ``ETag``, which every other change does."""
    admin = token(system.routing_settings)
    hq_admin = token(system.routing_settings, branches=["HQ"])
    api = system.routing
    for who in (hq_admin, admin):
        refused = await api.post("/v1/directory/departments/HQ:CS/deactivate", headers=who)
        assert refused.status_code == 409, refused.text
        assert refused.json()["type"].endswith("/department-in-use")
        assert "demo:default" in refused.json()["detail"]
    assert (await api.get("/v1/directory/departments/HQ:CS", headers=admin)).json()["active"]

    department = {"branch": "LZ", "code": "PILOT", "name": "试点组", "kind": "pilot"}
    made = await api.post("/v1/directory/departments", json=department, headers=admin)
    assert made.status_code == 201, made.text
    rule = {
        "id": "pilot",
        "name": "试点",
        "conditions": {"keywords_any": ["试点"]},
        "action": {"department_id": "LZ:PILOT"},
    }
    assert (await api.post("/v1/routing/rules", json=rule, headers=admin)).status_code == 201
    lz_admin = token(system.routing_settings, branches=["LZ"])
    refused = await api.post("/v1/directory/departments/LZ:PILOT/deactivate", headers=lz_admin)
    assert refused.status_code == 409 and "demo:pilot" in refused.json()["detail"], refused.text
    assert (await api.delete("/v1/routing/rules/demo:pilot", headers=admin)).status_code == 200
    closed = await api.post("/v1/directory/departments/LZ:PILOT/deactivate", headers=lz_admin)
    assert closed.status_code == 200, closed.text
    assert (closed.headers["etag"], closed.json()["version"]) == ('"2"', 2)
    again = await api.post(
        "/v1/directory/departments/LZ:PILOT/deactivate",
        headers={**lz_admin, "If-Match": closed.headers["etag"]},
    )
    assert (again.status_code, again.headers["etag"]) == (200, '"2"'), again.text

    person = {"id": "lz-pilot", "branch": "LZ", "department": "BILLING", "name": "试点员"}
    assert (await api.post("/v1/directory/staff", json=person, headers=admin)).status_code == 201
    gone = await api.post("/v1/directory/staff/lz-pilot/deactivate", headers=lz_admin)
    assert (gone.status_code, gone.headers["etag"], gone.json()["version"]) == (200, '"2"', 2)
    branch = {**XIAN, "code": "XB"}
    assert (await api.post("/v1/directory/branches", json=branch, headers=admin)).status_code == 201
    shut = await api.post("/v1/directory/branches/XB/deactivate", headers=admin)
    assert (shut.status_code, shut.headers["etag"]) == (200, f'"{shut.json()["version"]}"')


async def test_rules_are_validated_versioned_and_recorded_on_assignments(system: System) -> None:
    admin = token(system.routing_settings)
    api = system.routing
    rule = {
        "id": "vip-billing",
        "name": "VIP 计费投诉 → 计费账务部",
        "position": 5,
        "conditions": {"vip": True, "categories": ["billing"]},
        "action": {
            "department_id": "LZ:BILLING",
            "required_skill": "billing",
            "notify_roles": ["team_lead"],
        },
    }
    for broken, field in [
        ({"action": {"department_id": "LZ:NOPE"}}, "action.department_id"),
        ({"action": {"department_kind": "astrology"}}, "action.department_kind"),
        ({"action": {"department_kind": "billing", "sla_policy": "nope"}}, "action.sla_policy"),
        ({"branches": ["ZZ"]}, "branches.0"),
        ({"is_default": True, "conditions": {}}, "is_default"),
        # "Non-VIP only" is a condition, which the default rule would store and then ignore.
        ({"is_default": True, "conditions": {"vip": False}}, "conditions"),
        ({"action": {"department_kind": "billing", "department_id": "LZ:BILLING"}}, "action"),
        ({"conditions": {"flags_any": ["angry"]}}, "conditions.flags_any.0"),
    ]:
        response = await api.post("/v1/routing/rules", json={**rule, **broken}, headers=admin)
        assert _field(response) == field, broken
    scoped_admin = token(system.routing_settings, branches=["LZ"])
    assert (await api.post("/v1/routing/rules", json=rule, headers=scoped_admin)).status_code == 403
    created = await api.post("/v1/routing/rules", json=rule, headers=admin)
    assert created.status_code == 201, created.text
    assert (created.json()["id"], created.json()["version"]) == ("demo:vip-billing", 1)
    # Tied positions are tried by id: the list shows them in that order (until 5 December
    # in the order stored, the later rule first though the earlier one matched first).
    tie = {
        "id": "aa-tie",
        "name": "同位次",
        "position": 5,
        "conditions": {"keywords_any": ["  media  ", "不会出现 "]},
        "action": {"department_id": "LZ:BILLING"},
    }
    assert (await api.post("/v1/routing/rules", json=tie, headers=admin)).status_code == 201
    listed = await api.get("/v1/routing/rules", headers=admin)
    assert [rule["id"] for rule in listed.json()[:2]] == ["demo:aa-tie", "demo:vip-billing"]
    assert listed.json()[-1]["is_default"]
    # A keyword's trailing space (whole words only) is kept, other white space dropped.
    assert listed.json()[0]["conditions"]["keywords_any"] == ["media ", "不会出现 "]

    vip = CustomerContact(name="贵宾", vip=True)
    first = received(customer=vip, description="账单有问题")
    async with intake_producer(system) as publish:
        await publish(EventType.COMPLAINT_RECEIVED, first)
        document = await assignment_when(system, first.complaint_id)
        assert (document["rule_id"], document["rule_version"]) == ("demo:vip-billing", 1)
        assert {n["staff_id"] for n in document["notify"]} == {"lz-gao"}

        changed = await api.patch(
            "/v1/routing/rules/demo:vip-billing",
            json={"action": {**rule["action"], "sla_policy": "regulator"}},
            headers=admin,
        )
        assert changed.status_code == 200, changed.text
        assert changed.json()["version"] == 2
        second = received(customer=vip, description="账单又错了")
        await publish(EventType.COMPLAINT_RECEIVED, second)
        document = await assignment_when(system, second.complaint_id)
        assert (document["rule_version"], document["sla_policy"]) == (2, "regulator")

        assert (
            await api.delete("/v1/routing/rules/demo:default", headers=admin)
        ).status_code == 409
        retired = await api.delete("/v1/routing/rules/demo:vip-billing", headers=admin)
        assert retired.json()["active"] is False
        third = received(customer=vip, description="账单第三次出错")
        await publish(EventType.COMPLAINT_RECEIVED, third)
        document = await assignment_when(system, third.complaint_id)
        assert document["rule_id"] == "demo:billing-keywords"

    versions = await api.get("/v1/routing/rules/demo:vip-billing/versions", headers=admin)
    assert [(v["version"], v["change"]) for v in versions.json()] == [
        (3, "deactivated"),
        (2, "updated"),
        (1, "created"),
    ]
    assert versions.json()[1]["rule"]["action"]["sla_policy"] == "regulator"
    assert versions.json()[1]["changed_by"] == "tester"
    other_org = token(system.routing_settings, org="acme")
    assert (
        await api.get("/v1/routing/rules/demo:vip-billing", headers=other_org)
    ).status_code == 404

    policy = {
        "name": "快速",
        "targets": {
            "normal": {
                "acknowledge": {"amount": 30, "unit": "minutes", "basis": "business"},
                "resolve": {"amount": 2, "unit": "days", "basis": "business"},
            }
        },
        "warning_share": 0.5,
    }
    saved = await api.put("/v1/routing/sla-policies/fast", json=policy, headers=admin)
    assert saved.status_code == 200, saved.text
    assert saved.json()["version"] == 1
    # The same policy again (a retry after a lost answer) saves nothing; a change does.
    resaved = await api.put("/v1/routing/sla-policies/fast", json=policy, headers=admin)
    assert (resaved.status_code, resaved.json()["version"]) == (200, 1), resaved.text
    changed = await api.put(
        "/v1/routing/sla-policies/fast", json={**policy, "warning_share": 0.6}, headers=admin
    )
    assert (changed.json()["version"], changed.headers["etag"]) == (2, '"2"')
    same_day_calendar = {
        **policy,
        "targets": {
            "low": {
                "acknowledge": {"unit": "end_of_business_day", "basis": "calendar"},
                "resolve": {"amount": 2, "unit": "days", "basis": "business"},
            }
        },
    }
    bad = await api.put("/v1/routing/sla-policies/fast", json=same_day_calendar, headers=admin)
    assert _field(bad).startswith("targets.low.acknowledge")
    second_default = await api.put(
        "/v1/routing/sla-policies/other", json={**policy, "is_default": True}, headers=admin
    )
    assert _field(second_default) == "is_default"

    # Saves racing to create one policy all answer with it (on the local server the loser
    # of two such upserts was handed nothing back: a TypeError, a 500), and the same save
    # repeated beside itself (a gateway's timeout, then the retry) is one version.
    racing = await asyncio.gather(
        *(api.put("/v1/routing/sla-policies/racing", json=policy, headers=admin) for _ in range(8))
    )
    assert [answer.status_code for answer in racing] == [200] * 8, [a.text for a in racing]
    assert {answer.json()["version"] for answer in racing} == {1}
    stored = await api.get("/v1/routing/sla-policies/racing", headers=admin)
    assert stored.json()["version"] == 1
    trail = await api.get(
        "/v1/directory/audit",
        params={"entity": "sla_policy", "entity_id": "racing"},
        headers=admin,
    )
    assert [entry["action"] for entry in trail.json()] == ["saved"]


async def test_inputs_that_used_to_fail_deeper_are_422s_naming_the_field(system: System) -> None:
    """Each of these passed validation and then failed with a 500: comparing an aware with
    a naive time, loading a time zone or a holiday table by a bad name, a calendar closed
    for years, an integer too large for BSON, a target the calendar cannot lay out, text
    the driver cannot encode."""
    lz_admin = token(system.routing_settings, branches=["LZ"])
    admin = token(system.routing_settings)
    api = system.routing
    before = (await api.get("/v1/directory/branches/LZ", headers=lz_admin)).json()

    mondays_only = {"mon": [{"start": "09:00", "end": "18:00"}]}
    first_monday = date(2026, 11, 30)
    three_years_of_mondays = [
        (first_monday + timedelta(weeks=week)).isoformat() for week in range(157)
    ]
    for change, field in [
        ({"time_zone": "Asia"}, "time_zone"),
        ({"time_zone": "x" * 300}, "time_zone"),
        ({"hours": {"mon": [{"start": "12:00+01:00", "end": "18:00"}]}}, "hours.mon.0.start"),
        ({"holidays": {"country": "countries"}}, "holidays.country"),
        ({"holidays": {"country": "__init__"}}, "holidays.country"),
        ({"holidays": {"country": "GB", "subdivision": "__init__"}}, "holidays.subdivision"),
        ({"holidays": {"closed_days": ["9999-12-31"]}}, "holidays.closed_days.0"),
        (
            {"hours": mondays_only, "holidays": {"closed_days": three_years_of_mondays}},
            "holidays.closed_days",
        ),
    ]:
        response = await api.patch("/v1/directory/branches/LZ", json=change, headers=lz_admin)
        assert _field(response) == field, (change, response.text)
    after = (await api.get("/v1/directory/branches/LZ", headers=lz_admin)).json()
    assert after["version"] == before["version"]

    rule = {"id": "far", "name": "远", "action": {"department_kind": "billing"}}
    too_far = {**rule, "position": 2**63}
    assert _field(await api.post("/v1/routing/rules", json=too_far, headers=admin)) == "position"
    assert (
        _field(
            await api.patch(
                "/v1/routing/rules/demo:default", json={"position": -(2**63)}, headers=admin
            )
        )
        == "position"
    )
    # httpx would refuse to encode the surrogate itself: the body is sent as escaped JSON.
    lone = {**rule, "action": {**rule["action"], "required_skill": "\ud800"}}
    response = await api.post(
        "/v1/routing/rules",
        content=json.dumps(lone),
        headers={**admin, "content-type": "application/json"},
    )
    assert _field(response) == "action.required_skill"

    hours = {"amount": 10_000, "unit": "hours", "basis": "business"}
    policy = {"name": "太长", "targets": {"high": {"acknowledge": hours, "resolve": hours}}}
    response = await api.put("/v1/routing/sla-policies/long", json=policy, headers=admin)
    assert _field(response) == "targets.high.acknowledge.amount"
    assert {error["field"] for error in response.json()["errors"]} == {
        "targets.high.acknowledge.amount",
        "targets.high.resolve.amount",
    }
    assert (await api.get("/v1/routing/sla-policies/long", headers=admin)).status_code == 404


async def test_a_change_whose_record_failed_is_recorded_before_the_next_one(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rule's and a staff member's change are stored, then the write of their version or
    audit record meets a dropped connection: a 503. The change was live unrecorded, and the
    next change went ahead, so the version in between was never recorded. Now a change
    carries its record until it is written: the next change (or a read of a rule's
    versions) records it first, as the change of who made it."""
    zhao = token(system.routing_settings, subject="admin-zhao")
    qian = token(system.routing_settings, subject="admin-qian")
    api = system.routing
    rule = "/v1/routing/rules/demo:billing-keywords"
    monkeypatch.setattr(rules_store, "_record_version", FailsFirst(rules_store._record_version))
    failed = await api.patch(rule, json={"name": "账单关键词（一）"}, headers=zhao)
    assert failed.status_code == 503, failed.text
    next_change = await api.patch(rule, json={"name": "账单关键词（二）"}, headers=qian)
    assert (next_change.status_code, next_change.json()["version"]) == (200, 3)
    versions = (await api.get(f"{rule}/versions", headers=zhao)).json()
    assert [(v["version"], v["changed_by"], v["rule"]["name"]) for v in versions[:2]] == [
        (3, "admin-qian", "账单关键词（二）"),
        (2, "admin-zhao", "账单关键词（一）"),
    ]
    assert "unrecorded_change" not in versions[0]["rule"]

    monkeypatch.setattr(audit, "record", FailsFirst(audit.record))
    staff = "/v1/directory/staff/lz-chen"
    failed = await api.patch(staff, json={"capacity": 7}, headers=zhao)
    assert failed.status_code == 503, failed.text
    assert (await api.patch(staff, json={"capacity": 8}, headers=qian)).status_code == 200
    trail = await api.get(
        "/v1/directory/audit", params={"entity": "staff", "entity_id": "lz-chen"}, headers=zhao
    )
    assert [
        (entry["action"], entry["actor"], entry["snapshot"]["capacity"])
        for entry in trail.json()[:2]
    ] == [("updated", "admin-qian", 8), ("updated", "admin-zhao", 7)]


async def test_two_defaults_saved_at_once_leave_one_default(system: System) -> None:
    """The default SLA policy and the default rule were checked by reading: saves at once
    all read "no default yet" and all stored one. The database now refuses a second holder
    (a unique claim on the document): one save wins, the others are a 409 or the 422 naming
    the default, and the organisation has one default of each."""
    org = f"race{uuid.uuid4().hex[:8]}"
    admin = token(system.routing_settings, org=org)
    api = system.routing
    policy = {
        "name": "默认",
        "is_default": True,
        "targets": {
            "normal": {
                "acknowledge": {"amount": 30, "unit": "minutes", "basis": "business"},
                "resolve": {"amount": 2, "unit": "days", "basis": "business"},
            }
        },
    }
    saves = await asyncio.gather(
        *(api.put(f"/v1/routing/sla-policies/p{n}", json=policy, headers=admin) for n in range(8))
    )
    codes = sorted(save.status_code for save in saves)
    assert codes.count(200) == 1 and set(codes) <= {200, 409, 422}, [s.text for s in saves]
    listed = (await api.get("/v1/routing/sla-policies", headers=admin)).json()
    assert [p["id"] for p in listed if p["is_default"]] == [
        next(s.json()["id"] for s in saves if s.status_code == 200)
    ]
    # The role moves with the policy: retired, it is free for another; reinstated, refused.
    [winner] = [s.json()["id"] for s in saves if s.status_code == 200]
    retired = await api.post(f"/v1/routing/sla-policies/{winner}/retire", headers=admin)
    assert retired.status_code == 200, retired.text
    other = "p0" if winner != "p0" else "p1"
    taken = await api.put(f"/v1/routing/sla-policies/{other}", json=policy, headers=admin)
    assert taken.status_code == 200, taken.text
    back = await api.post(f"/v1/routing/sla-policies/{winner}/reinstate", headers=admin)
    assert back.status_code == 409, back.text

    # Rules: a branch and a department of the new organisation, then defaults at once.
    branch = await api.post(
        "/v1/directory/branches",
        json={"code": "RC", "name": "竞争"},
        headers=admin,
    )
    assert branch.status_code == 201, branch.text
    department = await api.post(
        "/v1/directory/departments",
        json={"branch": "RC", "code": "CS", "name": "客服", "kind": "customer_service"},
        headers=admin,
    )
    assert department.status_code == 201, department.text
    rule = {"is_default": True, "action": {"department_id": department.json()["id"]}}
    creations = await asyncio.gather(
        *(
            api.post(
                "/v1/routing/rules", json={**rule, "id": f"d{n}", "name": f"默认{n}"}, headers=admin
            )
            for n in range(8)
        )
    )
    codes = sorted(creation.status_code for creation in creations)
    assert codes.count(201) == 1 and set(codes) <= {201, 409, 422}, [c.text for c in creations]
    rules = (await api.get("/v1/routing/rules", headers=admin)).json()
    assert len([r for r in rules if r["is_default"] and r["active"]]) == 1

    # Departments: a branch has one active department of each kind.
    creations = await asyncio.gather(
        *(
            api.post(
                "/v1/directory/departments",
                json={"branch": "RC", "code": f"B{n}", "name": f"账务{n}", "kind": "billing"},
                headers=admin,
            )
            for n in range(8)
        )
    )
    codes = sorted(creation.status_code for creation in creations)
    assert codes.count(201) == 1 and set(codes) <= {201, 409, 422}, [c.text for c in creations]
    departments = (
        await api.get("/v1/directory/departments", params={"branch": "RC"}, headers=admin)
    ).json()
    items = departments["items"] if isinstance(departments, dict) else departments
    assert len([d for d in items if d["kind"] == "billing" and d["active"]]) == 1
