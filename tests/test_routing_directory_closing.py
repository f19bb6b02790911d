"""Integration: closing and reopening branches and departments.

A branch closes once no rule names its departments and no work waits or is open in them;
while closed, routing, reassignment, rules and the duty officer never use its departments
and intake registers no complaint for it. A closed department or branch reopens as it was.
"""

from __future__ import annotations

import pytest

from complaints_shared.clock import ManualClock
from complaints_shared.events import EventType
from tests.support.events import received
from tests.support.http import complaint_body, create_complaint, token
from tests.support.kafka import intake_producer
from tests.support.routing import MONDAY_10_SHANGHAI, TUESDAY_22_SHANGHAI, assignment_when
from tests.support.system import SystemFactory
from tests.support.waits import eventually

pytestmark = pytest.mark.integration


def _problem_type(response) -> str:
    assert response.headers["content-type"].startswith("application/problem+json"), response.text
    return response.json()["type"].rsplit("/", 1)[-1]


def _field(response) -> str:
    assert response.status_code == 422, response.text
    return response.json()["errors"][0]["field"]


async def _audit_actions(system, entity: str, entity_id: str) -> list[str]:
    """The actions of the entry's audit trail (changes at one clock instant: in any order)."""
    trail = await system.routing.get(
        "/v1/directory/audit",
        params={"entity": entity, "entity_id": entity_id},
        headers=token(system.routing_settings),
    )
    return [entry["action"] for entry in trail.json()]


async def test_a_branch_in_use_stays_open_and_a_closed_one_takes_no_work(
    system_factory: SystemFactory,
) -> None:
    system = await system_factory(clock=ManualClock(MONDAY_10_SHANGHAI))
    admin = token(system.routing_settings)
    supervisor = token(system.routing_settings, roles=("supervisor",))
    registrar = token(system.intake_settings)
    api = system.routing

    # The default rule sends everything no other rule covers to HQ:CS: HQ stays open.
    refused = await api.post("/v1/directory/branches/HQ/deactivate", headers=admin)
    assert refused.status_code == 409, refused.text
    assert _problem_type(refused) == "branch-in-use"
    assert "demo:default" in refused.json()["detail"]
    assert (await api.get("/v1/directory/branches/HQ", headers=admin)).json()["active"]

    # Work with the appliance station's people keeps it open until it moves.
    repair = await create_complaint(
        system,
        registrar,
        branch="APPL",
        category="after_sales",
        subject="空调坏了",
        description="空调不制冷，约好的师傅没有来",
    )
    routed = await assignment_when(system, repair["id"], lambda doc: doc.get("owner_id"))
    assert routed["department"] == "APPL:SERVICE"
    refused = await api.post("/v1/directory/branches/APPL/deactivate", headers=admin)
    assert refused.status_code == 409, refused.text
    assert _problem_type(refused) == "branch-in-use"
    assert repair["id"] in refused.json()["detail"]
    moved = await api.post(
        f"/v1/assignments/{repair['id']}/reassign",
        json={"department": "HQ:CS", "reason": "服务站停业"},
        headers=supervisor,
    )
    assert moved.status_code == 200, moved.text
    closed = await api.post("/v1/directory/branches/APPL/deactivate", headers=admin)
    assert closed.status_code == 200, closed.text
    assert not (await api.get("/v1/directory/branches/APPL", headers=admin)).json()["active"]

    # Its department is no reassignment target and no rule target, by id or by kind.
    elsewhere = await create_complaint(system, registrar, branch="LZ")
    await assignment_when(system, elsewhere["id"], lambda doc: doc.get("owner_id"))
    refused = await api.post(
        f"/v1/assignments/{elsewhere['id']}/reassign",
        json={"department": "APPL:SERVICE", "reason": "转售后"},
        headers=supervisor,
    )
    assert _field(refused) == "department"
    rule = {"id": "to-appl", "name": "售后 → 服务站", "conditions": {"keywords_any": ["空调"]}}
    by_id = {**rule, "action": {"department_id": "APPL:SERVICE"}}
    assert _field(await api.post("/v1/routing/rules", json=by_id, headers=admin)) == (
        "action.department_id"
    )
    by_kind = {**rule, "branches": ["APPL"], "action": {"department_kind": "after_sales"}}
    assert _field(await api.post("/v1/routing/rules", json=by_kind, headers=admin)) == (
        "action.department_kind"
    )

    # A complaint of the station already on its way is routed past its department.
    in_flight = received(branch="APPL", category="after_sales", description="洗衣机漏水")
    async with intake_producer(system) as publish:
        await publish(EventType.COMPLAINT_RECEIVED, in_flight)
    document = await assignment_when(
        system, in_flight.complaint_id, lambda doc: doc.get("department")
    )
    assert (document["department"], document["rule_id"]) == ("HQ:CS", "demo:default")

    # Intake registers nothing for the closed station once routing's announcement reached it.
    body = complaint_body(branch="APPL", category="after_sales", subject="冰箱不制冷")

    async def refused_by_intake():
        answer = await system.intake.post("/v1/complaints", json=body, headers=registrar)
        return answer if answer.status_code == 422 else None

    refusal = await eventually(refused_by_intake, what="intake refusing the closed branch")
    assert refusal.json()["errors"][0]["field"] == "branch"

    # Reopened, it registers and routes to its own department again.
    reopened = await api.post("/v1/directory/branches/APPL/reactivate", headers=admin)
    assert reopened.status_code == 200, reopened.text
    assert reopened.json()["active"], reopened.text
    assert reopened.headers["etag"] == f'"{reopened.json()["version"]}"'
    assert {"deactivated", "reactivated"} <= set(await _audit_actions(system, "branch", "APPL"))

    async def registered():
        answer = await system.intake.post("/v1/complaints", json=body, headers=registrar)
        return answer if answer.status_code == 201 else None

    again = (await eventually(registered, what="intake registering the reopened branch")).json()
    document = await assignment_when(system, again["id"], lambda doc: doc.get("department"))
    assert document["department"] == "APPL:SERVICE"


async def test_a_closed_branchs_duty_officer_takes_no_urgent_night_work(
    system_factory: SystemFactory,
) -> None:
    """The hospital's duty officer stands in for an open hospital only: an urgent complaint
    of the closed hospital still on its way goes to the default rule's department's people."""
    system = await system_factory(clock=ManualClock(TUESDAY_22_SHANGHAI))
    admin = token(system.routing_settings)
    closed = await system.routing.post("/v1/directory/branches/HOSP/deactivate", headers=admin)
    assert closed.status_code == 200, closed.text

    urgent = received(
        branch="HOSP",
        category="service_attitude",
        severity="high",
        description="夜间急诊护士态度恶劣",
        received_at=TUESDAY_22_SHANGHAI,
    )
    async with intake_producer(system) as publish:
        await publish(EventType.COMPLAINT_RECEIVED, urgent)
    document = await assignment_when(system, urgent.complaint_id, lambda doc: doc.get("owner_id"))
    assert document["department"] == "HQ:CS"
    assert (document["owner_id"], document["duty_officer"]) == ("hq-zhao", False)


async def test_a_closed_department_or_branch_reopens_as_it_was(
    system_factory: SystemFactory,
) -> None:
    system = await system_factory(clock=ManualClock(MONDAY_10_SHANGHAI))
    admin = token(system.routing_settings)
    lz_admin = token(system.routing_settings, branches=["LZ"])
    api = system.routing

    closed = await api.post("/v1/directory/departments/LZ:SALES/deactivate", headers=lz_admin)
    assert closed.status_code == 200, closed.text
    hosp_admin = token(system.routing_settings, branches=["HOSP"])
    foreign = await api.post("/v1/directory/departments/LZ:SALES/reactivate", headers=hosp_admin)
    assert foreign.status_code == 404, foreign.text
    reopened = await api.post("/v1/directory/departments/LZ:SALES/reactivate", headers=lz_admin)
    assert reopened.status_code == 200, reopened.text
    assert (reopened.json()["active"], reopened.json()["version"]) == (True, 3)
    assert reopened.headers["etag"] == '"3"'
    assert {"deactivated", "reactivated"} <= set(
        await _audit_actions(system, "department", "LZ:SALES")
    )
    # Routing uses it again: the mis-selling rule finds Lanzhou's sales department.
    registrar = token(system.intake_settings)
    sold = await create_complaint(
        system,
        registrar,
        category="other",
        subject="强制捆绑套餐",
        description="营业员强制办理五个套餐",
    )
    document = await assignment_when(system, sold["id"], lambda doc: doc.get("department"))
    assert document["department"] == "LZ:SALES"

    # One department of a kind per branch: a successor opened meanwhile keeps its place.
    await api.post("/v1/directory/departments/LZ:SALES/deactivate", headers=lz_admin)
    successor = {"branch": "LZ", "code": "MKT", "name": "市场部", "kind": "sales"}
    made = await api.post("/v1/directory/departments", json=successor, headers=lz_admin)
    assert made.status_code == 201, made.text
    taken = await api.post("/v1/directory/departments/LZ:SALES/reactivate", headers=lz_admin)
    assert taken.status_code == 409, taken.text
    assert _problem_type(taken) == "department-kind-taken"
    assert "LZ:MKT" in taken.json()["detail"]

    # A department of a closed branch waits for its branch; the branch reopens as it was.
    await api.post("/v1/directory/departments/CEM:QA/deactivate", headers=admin)
    assert (await api.post("/v1/directory/branches/CEM/deactivate", headers=admin)).status_code == (
        200
    )
    waiting = await api.post("/v1/directory/departments/CEM:QA/reactivate", headers=admin)
    assert waiting.status_code == 409, waiting.text
    assert _problem_type(waiting) == "branch-closed"
    cem_admin = token(system.routing_settings, branches=["CEM"])
    not_theirs = await api.post("/v1/directory/branches/CEM/reactivate", headers=cem_admin)
    assert not_theirs.status_code == 403, not_theirs.text
    branch = await api.post("/v1/directory/branches/CEM/reactivate", headers=admin)
    assert (branch.status_code, branch.json()["active"]) == (200, True), branch.text
    department = await api.post("/v1/directory/departments/CEM:QA/reactivate", headers=admin)
    assert (department.status_code, department.json()["active"]) == (200, True), department.text
    listed = await api.get("/v1/directory/departments", params={"branch": "CEM"}, headers=admin)
    assert {entry["id"] for entry in listed.json()} == {"CEM:QA", "CEM:SALES"}
