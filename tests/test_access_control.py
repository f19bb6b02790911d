"""Access over every route of every service, verified with tokens of a real OIDC provider.

The walker takes each operation of each app (``app.routes``, included routers expanded)
and proves its declaration holds: no or flawed tokens are 401, a token without the
declared roles is 403, a branch admin on organisation configuration is 403, and a
branch-A token on branch-B data is 404 (a filter naming branch B too; a listing that does not
name it answers without B's data).
A route without a declaration, or without a probe here, fails.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from fastapi import APIRouter, FastAPI

from complaints_shared.access import Access, Operation, Public, Scope, allow, operations
from complaints_shared.auth import Role
from complaints_shared.role_matrix import DOCUMENT, SERVICES, render, service_apps
from intake import store as intake_store
from tests.support.faults import FailsFirst
from tests.support.http import BROADBAND_COMPLAINT, token
from tests.support.identity_provider import IdentityProvider
from tests.support.infrastructure import Infrastructure
from tests.support.routing import assignment_when
from tests.support.system import System, running_systems
from tests.support.waits import eventually

ROOT = Path(__file__).resolve().parent.parent
BRANCH_A, BRANCH_B = "LZ", "HOSP"
APPS = service_apps()
OPERATIONS = [
    pytest.param(service, operation, id=f"{service} {operation.method} {operation.path}")
    for service, app in APPS.items()
    for operation in operations(app)
    if not operation.documentation
]

HOSPITAL_COMPLAINT = {
    "branch": BRANCH_B,
    "channel": "walk_in",
    "category": "service_attitude",
    "severity": "normal",
    "customer": {"name": "刘女士", "phone": "13909310001", "preferred_contact_channel": "phone"},
    "subject": "挂号窗口态度差",
    "description": "挂号窗口工作人员态度恶劣，要求道歉。",
}


@dataclass
class World:
    """A running system in JWKS mode with one complaint of branch B worked to follow-up."""

    system: System
    idp: IdentityProvider
    complaint_id: str
    followup_id: str
    subscription_id: str
    delivery_id: str

    def client(self, service: str) -> httpx.AsyncClient:
        return getattr(self.system, service)

    def headers(self, **claims: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.idp.token('k1', **claims)}"}


@dataclass
class Probe:
    """A request touching branch B: its data, or naming it in a filter or body."""

    path: str
    json: Any = None
    params: dict[str, Any] | None = None
    listing: bool = False


def _probe(path: str, **kwargs: Any) -> Callable[[World], Probe]:
    return lambda world: Probe(
        path.format(
            complaint=world.complaint_id,
            followup=world.followup_id,
            subscription=world.subscription_id,
            delivery=world.delivery_id,
        ),
        **kwargs,
    )


CONTACT_HOURS = {
    "time_zone": "Asia/Shanghai",
    "start": "09:00",
    "end": "20:00",
    "weekdays": ["mon"],
}
BRANCH_POLICY = {
    "checks": [{"after_hours": 2}],
    "max_attempts": 5,
    "attempt_spacing_hours": 0,
    "satisfied_score_threshold": 5,
}
# Every operation of every service, keyed "METHOD /path": what it looks like aimed at branch B.
PROBES: dict[str, Callable[[World], Probe]] = {
    # intake
    "POST /v1/complaints": _probe("/v1/complaints", json=HOSPITAL_COMPLAINT),
    "GET /v1/complaints": _probe("/v1/complaints", params={"branch": BRANCH_B}, listing=True),
    "GET /v1/complaints/{complaint_id}": _probe("/v1/complaints/{complaint}"),
    "GET /v1/complaints/{complaint_id}/timeline": _probe("/v1/complaints/{complaint}/timeline"),
    "POST /v1/complaints/{complaint_id}/acknowledge": _probe(
        "/v1/complaints/{complaint}/acknowledge", json={}
    ),
    "POST /v1/complaints/{complaint_id}/notes": _probe(
        "/v1/complaints/{complaint}/notes", json={"text": "回访前核实"}
    ),
    "POST /v1/complaints/{complaint_id}/pending-customer": _probe(
        "/v1/complaints/{complaint}/pending-customer", json={"reason": "等待患者回电"}
    ),
    "POST /v1/complaints/{complaint_id}/resume": _probe(
        "/v1/complaints/{complaint}/resume", json={}
    ),
    "POST /v1/complaints/{complaint_id}/resolve": _probe(
        "/v1/complaints/{complaint}/resolve", json={"summary": "已致歉"}
    ),
    "POST /v1/complaints/{complaint_id}/reject": _probe(
        "/v1/complaints/{complaint}/reject", json={"reason_code": "other", "explanation": "x"}
    ),
    "POST /v1/complaints/{complaint_id}/withdraw": _probe(
        "/v1/complaints/{complaint}/withdraw", json={}
    ),
    "POST /v1/complaints/{complaint_id}/reopen": _probe(
        "/v1/complaints/{complaint}/reopen", json={"reason": "患者不满意"}
    ),
    "POST /v1/complaints/{complaint_id}/close": _probe(
        "/v1/complaints/{complaint}/close", json={"reason": "结案"}
    ),
    "POST /v1/complaints/{complaint_id}/remedies": _probe(
        "/v1/complaints/{complaint}/remedies", json={"type": "apology"}
    ),
    "POST /v1/complaints/{complaint_id}/reclassify": _probe(
        "/v1/complaints/{complaint}/reclassify",
        json={"category": "medical", "reason": "回访中家属反映疑似误诊"},
    ),
    "GET /v1/reports/summary": _probe("/v1/reports/summary", listing=True),
    # routing: assignments
    "GET /v1/assignments": _probe("/v1/assignments", listing=True),
    "GET /v1/assignments/workload": _probe(
        "/v1/assignments/workload", params={"branch": BRANCH_B}, listing=True
    ),
    "GET /v1/assignments/{complaint_id}": _probe("/v1/assignments/{complaint}"),
    "POST /v1/assignments/{complaint_id}/reassign": _probe(
        "/v1/assignments/{complaint}/reassign", json={"owner_id": "lz-wang", "reason": "调岗"}
    ),
    "POST /v1/assignments/{complaint_id}/escalate": _probe(
        "/v1/assignments/{complaint}/escalate", json={"reason": "超时"}
    ),
    "POST /v1/assignments/{complaint_id}/responsibility": _probe(
        "/v1/assignments/{complaint}/responsibility", json={"responsible_department": "LZ:CS"}
    ),
    "POST /v1/assignments/{complaint_id}/regulatory-report": _probe(
        "/v1/assignments/{complaint}/regulatory-report", json={}
    ),
    # routing: directory
    "POST /v1/directory/branches": _probe(
        "/v1/directory/branches", json={"code": "NEW", "name": "新网点", "time_zone": "UTC"}
    ),
    "GET /v1/directory/branches": _probe("/v1/directory/branches", listing=True),
    "GET /v1/directory/branches/{code}": _probe(f"/v1/directory/branches/{BRANCH_B}"),
    "PATCH /v1/directory/branches/{code}": _probe(
        f"/v1/directory/branches/{BRANCH_B}", json={"name": "医院"}
    ),
    "POST /v1/directory/branches/{code}/deactivate": _probe(
        f"/v1/directory/branches/{BRANCH_B}/deactivate"
    ),
    "POST /v1/directory/branches/{code}/reactivate": _probe(
        f"/v1/directory/branches/{BRANCH_B}/reactivate"
    ),
    "POST /v1/directory/departments": _probe(
        "/v1/directory/departments",
        json={"branch": BRANCH_B, "code": "NEW", "name": "新科室", "kind": "new"},
    ),
    "GET /v1/directory/departments": _probe(
        "/v1/directory/departments", params={"branch": BRANCH_B}, listing=True
    ),
    "GET /v1/directory/departments/{department_id}": _probe("/v1/directory/departments/HOSP:PRO"),
    "PATCH /v1/directory/departments/{department_id}": _probe(
        "/v1/directory/departments/HOSP:PRO", json={"name": "病人关系办公室"}
    ),
    "POST /v1/directory/departments/{department_id}/deactivate": _probe(
        "/v1/directory/departments/HOSP:PRO/deactivate"
    ),
    "POST /v1/directory/departments/{department_id}/reactivate": _probe(
        "/v1/directory/departments/HOSP:PRO/reactivate"
    ),
    "POST /v1/directory/staff": _probe(
        "/v1/directory/staff",
        json={"id": "hosp-new", "branch": BRANCH_B, "department": "PRO", "name": "新人"},
    ),
    "GET /v1/directory/staff": _probe(
        "/v1/directory/staff", params={"branch": BRANCH_B}, listing=True
    ),
    "GET /v1/directory/staff/{staff_id}": _probe("/v1/directory/staff/hosp-sun"),
    "PATCH /v1/directory/staff/{staff_id}": _probe(
        "/v1/directory/staff/hosp-sun", json={"capacity": 5}
    ),
    "POST /v1/directory/staff/{staff_id}/deactivate": _probe(
        "/v1/directory/staff/hosp-sun/deactivate"
    ),
    "GET /v1/directory/audit": _probe(
        "/v1/directory/audit", params={"entity": "branch", "entity_id": BRANCH_B}
    ),
    # routing: rules, SLA policies, simulation
    "GET /v1/routing/rules": _probe("/v1/routing/rules"),
    "POST /v1/routing/rules": _probe(
        "/v1/routing/rules",
        json={"id": "new-rule", "name": "新规则", "action": {"department_id": "HOSP:PRO"}},
    ),
    "GET /v1/routing/rules/{rule_id}": _probe("/v1/routing/rules/demo:default"),
    "PATCH /v1/routing/rules/{rule_id}": _probe(
        "/v1/routing/rules/demo:default", json={"name": "兜底"}
    ),
    "DELETE /v1/routing/rules/{rule_id}": _probe("/v1/routing/rules/demo:medical-category"),
    "GET /v1/routing/rules/{rule_id}/versions": _probe("/v1/routing/rules/demo:default/versions"),
    "GET /v1/routing/sla-policies": _probe("/v1/routing/sla-policies"),
    "GET /v1/routing/sla-policies/{policy_id}": _probe("/v1/routing/sla-policies/medical"),
    "PUT /v1/routing/sla-policies/{policy_id}": _probe(
        "/v1/routing/sla-policies/medical", json={"name": "x"}
    ),
    "POST /v1/routing/sla-policies/{policy_id}/retire": _probe(
        "/v1/routing/sla-policies/medical/retire"
    ),
    "POST /v1/routing/sla-policies/{policy_id}/reinstate": _probe(
        "/v1/routing/sla-policies/medical/reinstate"
    ),
    "DELETE /v1/routing/sla-policies/{policy_id}": _probe("/v1/routing/sla-policies/medical"),
    "POST /v1/routing/simulate": _probe("/v1/routing/simulate", json={"branch": BRANCH_B}),
    # followup
    "GET /v1/followups": _probe("/v1/followups", params={"branch": BRANCH_B}, listing=True),
    "GET /v1/followups/stats": _probe(
        "/v1/followups/stats", params={"branch": BRANCH_B}, listing=True
    ),
    "GET /v1/followups/policy": _probe("/v1/followups/policy"),
    "PUT /v1/followups/policy": _probe("/v1/followups/policy", json={"checks": []}),
    "GET /v1/followups/policy/history": _probe("/v1/followups/policy/history"),
    "GET /v1/followups/policy/branches/{branch}": _probe(
        f"/v1/followups/policy/branches/{BRANCH_B}"
    ),
    "PUT /v1/followups/policy/branches/{branch}": _probe(
        f"/v1/followups/policy/branches/{BRANCH_B}", json=BRANCH_POLICY
    ),
    "DELETE /v1/followups/policy/branches/{branch}": _probe(
        f"/v1/followups/policy/branches/{BRANCH_B}"
    ),
    "GET /v1/followups/policy/branches/{branch}/history": _probe(
        f"/v1/followups/policy/branches/{BRANCH_B}/history"
    ),
    "GET /v1/followups/contact-hours/{branch}": _probe(f"/v1/followups/contact-hours/{BRANCH_B}"),
    "PUT /v1/followups/contact-hours/{branch}": _probe(
        f"/v1/followups/contact-hours/{BRANCH_B}", json=CONTACT_HOURS
    ),
    "GET /v1/followups/contact-hours/{branch}/history": _probe(
        f"/v1/followups/contact-hours/{BRANCH_B}/history"
    ),
    "GET /v1/followups/{followup_id}": _probe("/v1/followups/{followup}"),
    "POST /v1/followups/{followup_id}/claim": _probe("/v1/followups/{followup}/claim"),
    "DELETE /v1/followups/{followup_id}/claim": _probe("/v1/followups/{followup}/claim"),
    "POST /v1/followups/{followup_id}/attempts": _probe(
        "/v1/followups/{followup}/attempts", json={"reached": False}
    ),
    "POST /v1/followups/{followup_id}/outcome": _probe(
        "/v1/followups/{followup}/outcome", json={"satisfied": True, "score": 5}
    ),
    # webhooks
    "POST /v1/webhooks/subscriptions": _probe(
        "/v1/webhooks/subscriptions",
        json={"target_url": "https://crm.example.com/h", "event_types": ["*"], "branch": BRANCH_B},
    ),
    "GET /v1/webhooks/subscriptions": _probe("/v1/webhooks/subscriptions", listing=True),
    "GET /v1/webhooks/subscriptions/{subscription_id}": _probe(
        "/v1/webhooks/subscriptions/{subscription}"
    ),
    "PATCH /v1/webhooks/subscriptions/{subscription_id}": _probe(
        "/v1/webhooks/subscriptions/{subscription}", json={"description": "医院 CRM"}
    ),
    "DELETE /v1/webhooks/subscriptions/{subscription_id}": _probe(
        "/v1/webhooks/subscriptions/{subscription}"
    ),
    "POST /v1/webhooks/subscriptions/{subscription_id}/secret/rotate": _probe(
        "/v1/webhooks/subscriptions/{subscription}/secret/rotate"
    ),
    "POST /v1/webhooks/subscriptions/{subscription_id}/ping": _probe(
        "/v1/webhooks/subscriptions/{subscription}/ping"
    ),
    "GET /v1/webhooks/subscriptions/{subscription_id}/deliveries": _probe(
        "/v1/webhooks/subscriptions/{subscription}/deliveries"
    ),
    "GET /v1/webhooks/subscriptions/{subscription_id}/deliveries/{delivery_id}": _probe(
        "/v1/webhooks/subscriptions/{subscription}/deliveries/{delivery}"
    ),
    "POST /v1/webhooks/subscriptions/{subscription_id}/deliveries/{delivery_id}/redeliver": _probe(
        "/v1/webhooks/subscriptions/{subscription}/deliveries/{delivery}/redeliver"
    ),
    "POST /v1/webhooks/subscriptions/{subscription_id}/redeliver": _probe(
        "/v1/webhooks/subscriptions/{subscription}/redeliver",
        json={"from": "2026-01-01T00:00:00Z", "to": "2100-01-01T00:00:00Z"},
    ),
}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forged(header: dict[str, Any], claims: dict[str, Any], key: bytes | None) -> str:
    """A token built by hand: PyJWT itself refuses to sign these two attacks."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"
    if key is None:
        return signing_input + "."
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def flawed_tokens(idp: IdentityProvider) -> dict[str, str]:
    """Tokens that must never pass, each with the flaw in its name."""
    now = int(time.time())
    public_pem = (
        idp.keys["k1"]
        .private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return {
        "expired": idp.token("k1", iat=now - 7200, exp=now - 3600),
        "not yet valid": idp.token("k1", nbf=now + 3600),
        "wrong audience": idp.token("k1", aud="another-application"),
        "wrong issuer": idp.token("k1", iss="https://idp.example/other-realm"),
        "alg none": _forged({"alg": "none", "typ": "JWT", "kid": "k1"}, idp.claims(), None),
        "HS256 signed with the public key": _forged(
            {"alg": "HS256", "typ": "JWT", "kid": "k1"}, idp.claims(), public_pem
        ),
        "signed by an unpublished key": idp.token("unpublished"),
        "branches as a string": idp.token("k1", branches=BRANCH_A),
        "garbage": "not-a-jwt",
    }


@pytest.fixture(scope="module")
async def world(infrastructure: Infrastructure) -> AsyncIterator[World]:
    idp = IdentityProvider().start()
    idp.add_key("k1")
    idp.add_key("unpublished", publish=False)
    oidc = {"jwt_jwks_url": idp.jwks_url, "jwt_issuer": idp.issuer}
    try:
        async with running_systems(infrastructure) as make:
            system = await make(intake=oidc, routing=oidc, followup=oidc, webhooks=oidc)
            admin = {"Authorization": f"Bearer {idp.token('k1')}"}
            created = await system.intake.post(
                "/v1/complaints", json=HOSPITAL_COMPLAINT, headers=admin
            )
            assert created.status_code == 201, created.text
            complaint_id = created.json()["id"]

            async def assigned() -> bool:
                response = await system.routing.get(
                    f"/v1/assignments/{complaint_id}", headers=admin
                )
                return response.status_code == 200

            await eventually(assigned, what="the hospital complaint's assignment")
            path = f"/v1/complaints/{complaint_id}"
            for command, body in (("acknowledge", {}), ("resolve", {"summary": "已当面致歉"})):
                response = await system.intake.post(f"{path}/{command}", json=body, headers=admin)
                assert response.status_code == 200, response.text

            async def followup_id() -> str | None:
                response = await system.followup.get(
                    "/v1/followups", params={"complaint_id": complaint_id}, headers=admin
                )
                items = response.json()["items"]
                return items[0]["id"] if items else None

            found = await eventually(followup_id, what="the hospital complaint's follow-up")
            subscription = await system.webhooks.post(
                "/v1/webhooks/subscriptions",
                # Nothing listens there: the ping stays pending, which is all the probes need.
                json={
                    "target_url": "http://127.0.0.1:9/h",
                    "event_types": ["*"],
                    "branch": BRANCH_B,
                },
                headers=admin,
            )
            assert subscription.status_code == 201, subscription.text
            subscription_id = subscription.json()["id"]
            ping = await system.webhooks.post(
                f"/v1/webhooks/subscriptions/{subscription_id}/ping", headers=admin
            )
            assert ping.status_code == 202, ping.text
            yield World(
                system=system,
                idp=idp,
                complaint_id=complaint_id,
                followup_id=found,
                subscription_id=subscription_id,
                delivery_id=ping.json()["id"],
            )
    finally:
        idp.stop()


def test_every_service_under_services_is_walked() -> None:
    assert sorted(path.name for path in (ROOT / "services").iterdir() if path.is_dir()) == sorted(
        SERVICES
    )


def test_only_fastapi_documentation_routes_go_without_a_declaration() -> None:
    for app in APPS.values():
        undeclared = [op for op in operations(app) if op.documentation]
        assert {op.path for op in undeclared} <= {
            "/openapi.json",
            "/docs",
            "/docs/oauth2-redirect",
            "/redoc",
        }


# Module level: the annotations of this module are resolved from its globals.
ThingReader = allow(Role.AGENT, scope=Scope.BRANCH, action="reading things")


def test_the_walk_finds_routes_without_a_declaration_in_included_routers() -> None:
    router = APIRouter(prefix="/v1/things")

    @router.get("")
    async def undeclared() -> dict[str, str]:
        return {}

    @router.get("/{thing_id}")
    async def declared(thing_id: str, principal: ThingReader) -> dict[str, str]:
        return {}

    app = FastAPI()
    app.include_router(router)
    found = {(op.method, op.path): op for op in operations(app) if not op.documentation}
    assert found[("GET", "/v1/things")].declaration is None
    assert found[("GET", "/v1/things/{thing_id}")].declaration == Access(
        frozenset({Role.AGENT}), Scope.BRANCH, "reading things"
    )
    with pytest.raises(ValueError, match="declares no access"):
        render({"things": app})
    with pytest.raises(ValueError, match="at least one role"):
        allow(scope=Scope.BRANCH, action="reading without roles")


def test_security_document_role_matrix_is_current() -> None:
    text = DOCUMENT.read_text(encoding="utf-8")
    assert render(APPS) in text, (
        "docs/security.md's role matrix is stale: run `.venv/bin/python -m "
        "complaints_shared.role_matrix`"
    )


@pytest.mark.integration
@pytest.mark.parametrize(("service", "operation"), OPERATIONS)
async def test_every_operation_enforces_its_declared_access(
    world: World, service: str, operation: Operation
) -> None:
    where = f"{service} {operation.method} {operation.path}"
    declaration = operation.declaration
    assert declaration is not None, (
        f"{where} declares {len(operation.declarations)} access rules: declare exactly one "
        "(complaints_shared.access.allow(...), or public(...) for an operational probe)"
    )
    if isinstance(declaration, Public):
        assert not operation.path.startswith("/v1/"), f"{where}: API routes are never public"
        return
    assert isinstance(declaration, Access)
    probe_for = PROBES.get(f"{operation.method} {operation.path}")
    assert probe_for is not None, f"{where}: add a probe aimed at branch {BRANCH_B} to PROBES"
    probe = probe_for(world)
    client = world.client(service)

    async def call(headers: dict[str, str]) -> httpx.Response:
        return await client.request(
            operation.method, probe.path, json=probe.json, params=probe.params, headers=headers
        )

    missing = await call({})
    assert missing.status_code == 401, f"{where} without a token: {missing.status_code}"
    assert missing.headers["content-type"].startswith("application/problem+json")
    for flaw, flawed in flawed_tokens(world.idp).items():
        response = await call({"Authorization": f"Bearer {flawed}"})
        assert response.status_code == 401, f"{where} with a token {flaw}: {response.text}"

    no_role = await call(world.headers(roles=[]))
    assert no_role.status_code == 403, f"{where} without a role: {no_role.status_code}"
    for role in Role:
        if not declaration.permits(role):
            response = await call(world.headers(roles=[role.value]))
            assert response.status_code == 403, f"{where} as {role}: {response.status_code}"

    branch_admin = await call(world.headers(branches=[BRANCH_A], roles=["admin"]))
    if declaration.scope is Scope.ORGANISATION:
        assert branch_admin.status_code == 403, f"{where} by a branch admin: {branch_admin.text}"
    elif (probe.params or {}).get("branch") == BRANCH_B:
        # Naming another branch in a filter: a 404 naming the field, never a quiet empty answer.
        assert branch_admin.status_code == 404, (
            f"{where}: filter on {BRANCH_B}: {branch_admin.text}"
        )
        assert branch_admin.json()["field"] == "branch", f"{where}: {branch_admin.text}"
    elif probe.listing:
        assert branch_admin.status_code == 404 or (
            branch_admin.is_success and BRANCH_B not in branch_admin.text
        ), f"{where}: branch {BRANCH_A} sees {BRANCH_B}: {branch_admin.text[:300]}"
    else:
        assert branch_admin.status_code == 404, (
            f"{where}: branch {BRANCH_A} on {BRANCH_B}'s data: {branch_admin.status_code}"
        )

    if operation.method == "GET":
        # The probe really reaches branch B's data: an organisation-wide admin gets it.
        everything = await call(world.headers())
        assert everything.status_code == 200, f"{where} for an org-wide admin: {everything.text}"
        if probe.listing:
            assert BRANCH_B in everything.text, f"{where}: the probe shows no {BRANCH_B} data"


# ------------------------------------------------------- cross-branch references --


def _same_answer(foreign: httpx.Response, unknown: httpx.Response, *, field: str) -> None:
    """Naming another branch's id answers exactly like naming an id that does not exist."""
    assert foreign.status_code == unknown.status_code == 422, (foreign.text, unknown.text)
    assert foreign.json()["errors"][0]["field"] == unknown.json()["errors"][0]["field"] == field
    assert foreign.json()["type"] == unknown.json()["type"]


@pytest.mark.integration
async def test_a_branch_admin_cannot_name_another_branchs_people_in_the_directory(
    system: System,
) -> None:
    lz_admin = token(system.routing_settings, branches=[BRANCH_A], roles=("admin",))
    routing = system.routing

    async def duty_officer(staff_id: str) -> httpx.Response:
        return await routing.patch(
            f"/v1/directory/branches/{BRANCH_A}",
            json={"duty_officer_id": staff_id},
            headers=lz_admin,
        )

    _same_answer(
        await duty_officer("hosp-duty"), await duty_officer("nobody"), field="duty_officer_id"
    )

    async def chain(staff_id: str) -> httpx.Response:
        return await routing.patch(
            "/v1/directory/departments/LZ:CS",
            json={"escalation_chain": [{"staff_id": "lz-hu"}, {"staff_id": staff_id}]},
            headers=lz_admin,
        )

    _same_answer(
        await chain("hosp-head"), await chain("nobody"), field="escalation_chain.1.staff_id"
    )

    async def new_department(staff_id: str) -> httpx.Response:
        body = {
            "branch": BRANCH_A,
            "code": f"D{staff_id.upper().replace('-', '')}",
            "name": "新部门",
            "kind": "special",
            "escalation_chain": [{"staff_id": staff_id}],
        }
        return await routing.post("/v1/directory/departments", json=body, headers=lz_admin)

    _same_answer(
        await new_department("hosp-head"),
        await new_department("nobody"),
        field="escalation_chain.0.staff_id",
    )
    # The branch's own people are fine, and nothing of the refused changes was stored.
    assert (await duty_officer("lz-hu")).status_code == 200
    department = await routing.get("/v1/directory/departments/LZ:CS", headers=lz_admin)
    assert {"staff_id": "hosp-head"} not in department.json()["escalation_chain"]


@pytest.mark.integration
async def test_creating_a_person_with_another_branchs_id_is_judged_as_a_free_id_first(
    system: System,
) -> None:
    """Staff ids are the organisation's, so one taken in another branch cannot be given
    again. But the clash was checked before the body: any body, even one naming no
    department, answered 409 for a taken id and 422 for a free one, a harmless probe that
    listed the other branches' people. Now the body is judged first, and the clash names
    no branch."""
    lz_admin = token(system.routing_settings, branches=[BRANCH_A], roles=("admin",))

    async def create(staff_id: str, department: str) -> httpx.Response:
        body = {"id": staff_id, "branch": BRANCH_A, "name": "探", "department": department}
        return await system.routing.post("/v1/directory/staff", json=body, headers=lz_admin)

    taken, free = await create("hosp-sun", "NOPE"), await create("nobody-yet", "NOPE")
    assert taken.status_code == free.status_code == 422, (taken.text, free.text)
    assert taken.json()["errors"] == free.json()["errors"]
    clash = await create("hosp-sun", "CS")
    assert clash.status_code == 409, clash.text
    assert BRANCH_B not in clash.json()["detail"] and "taken" in clash.json()["detail"]


@pytest.mark.integration
async def test_a_branch_supervisor_cannot_send_work_to_another_branch(system: System) -> None:
    admin = token(system.intake_settings)
    created = await system.intake.post("/v1/complaints", json=BROADBAND_COMPLAINT, headers=admin)
    complaint_id = created.json()["id"]

    async def assigned() -> bool:
        return (
            await system.routing.get(f"/v1/assignments/{complaint_id}", headers=admin)
        ).is_success

    await eventually(assigned, what="the assignment")
    lz_supervisor = token(system.routing_settings, branches=[BRANCH_A], roles=("supervisor",))
    path = f"/v1/assignments/{complaint_id}"

    async def reassign(body: dict[str, str]) -> httpx.Response:
        return await system.routing.post(
            f"{path}/reassign", json={**body, "reason": "转交"}, headers=lz_supervisor
        )

    _same_answer(
        await reassign({"owner_id": "hosp-sun"}),
        await reassign({"owner_id": "nobody"}),
        field="owner_id",
    )
    _same_answer(
        await reassign({"department": "HOSP:PRO"}),
        await reassign({"department": "LZ:NOWHERE"}),
        field="department",
    )

    async def responsibility(department: str) -> httpx.Response:
        return await system.routing.post(
            f"{path}/responsibility",
            json={"responsible_department": department},
            headers=lz_supervisor,
        )

    _same_answer(
        await responsibility("HOSP:MED"),
        await responsibility("LZ:NOWHERE"),
        field="responsible_department",
    )
    unchanged = (await system.routing.get(path, headers=admin)).json()
    assert unchanged["department"].startswith(f"{BRANCH_A}:")


async def _lanzhou_quality_to_the_hospital(system: System, admin: dict[str, str]) -> None:
    """An organisation rule sending Lanzhou's product-quality complaints to the hospital's desk."""
    rule = {
        "id": "lz-to-hospital",
        "name": "兰州产品质量转医院",
        "branches": [BRANCH_A],
        "conditions": {"categories": ["product_quality"]},
        "action": {"department_id": "HOSP:PRO"},
        "position": 1,
    }
    created = await system.routing.post("/v1/routing/rules", json=rule, headers=admin)
    assert created.status_code == 201, created.text


@pytest.mark.integration
async def test_simulation_shows_a_branch_token_only_its_own_people(system: System) -> None:
    admin = token(system.routing_settings)
    await _lanzhou_quality_to_the_hospital(system, admin)
    request = {"branch": BRANCH_A, "category": "product_quality", "description": "质量问题"}

    full = await system.routing.post("/v1/routing/simulate", json=request, headers=admin)
    assert full.status_code == 200, full.text
    assert full.json()["department"] == "HOSP:PRO"
    assert {c["id"] for c in full.json()["candidates"]} >= {"hosp-sun"}

    lz_supervisor = token(system.routing_settings, branches=[BRANCH_A], roles=("supervisor",))
    scoped = await system.routing.post("/v1/routing/simulate", json=request, headers=lz_supervisor)
    assert scoped.status_code == 200, scoped.text
    body = scoped.json()
    assert body["department"] == "HOSP:PRO"
    assert body["candidates"] == []
    assert body["chosen_owner_id"] is None and body["chosen_owner_name"] is None
    assert "hosp-" not in scoped.text
    assert body["queued"] == full.json()["queued"] is False
    # Said to be left out, not "nobody would take it" (until 6 December).
    assert body["chosen_owner_hidden"] is True and full.json()["chosen_owner_hidden"] is False
    assert body["candidates_hidden"] == len(full.json()["candidates"]) > 0


@pytest.mark.integration
async def test_branch_admin_keeps_its_branch_but_not_the_organisation(system: System) -> None:
    lz_admin = token(system.followup_settings, branches=[BRANCH_A], roles=("admin",))
    policy = await system.followup.get(
        "/v1/followups/policy", headers=token(system.followup_settings)
    )
    replaced = await system.followup.put(
        "/v1/followups/policy", json=policy.json()["policy"], headers=lz_admin
    )
    assert replaced.status_code == 403
    assert "all branches" in replaced.json()["detail"]
    hours = await system.followup.get(f"/v1/followups/contact-hours/{BRANCH_A}", headers=lz_admin)
    assert hours.status_code == 200
    own = await system.followup.put(
        f"/v1/followups/contact-hours/{BRANCH_A}",
        json={"time_zone": "Asia/Shanghai", "start": "09:00", "end": "18:00", "weekdays": ["mon"]},
        headers=lz_admin,
    )
    assert own.status_code == 200, own.text
    new_branch = await system.routing.post(
        "/v1/directory/branches",
        json={"code": "XN", "name": "新区", "time_zone": "Asia/Shanghai"},
        headers=token(system.routing_settings, branches=[BRANCH_A, "XN"], roles=("admin",)),
    )
    assert new_branch.status_code == 403


# ------------------------------- another branch, and the organisation, seen from a branch --


@pytest.mark.integration
async def test_naming_another_branch_in_a_list_filter_is_a_404_naming_the_field(
    system: System,
) -> None:
    lz_supervisor = token(system.intake_settings, branches=[BRANCH_A], roles=("supervisor",))
    # Each filter names the token's own branch and another: the other one decides.
    filtered = [
        (system.intake, "/v1/complaints", {"branch": [BRANCH_A, BRANCH_B]}),
        (system.intake, "/v1/reports/summary", {"branch": [BRANCH_A, BRANCH_B]}),
        (system.followup, "/v1/followups", {"branch": BRANCH_B}),
        (system.followup, "/v1/followups/stats", {"branch": BRANCH_B}),
        (system.routing, "/v1/assignments/workload", {"branch": BRANCH_B}),
    ]
    for client, path, params in filtered:
        foreign = await client.get(path, params=params, headers=lz_supervisor)
        assert foreign.status_code == 404, f"{path}: {foreign.status_code} {foreign.text[:200]}"
        assert foreign.json()["field"] == "branch", path
        assert BRANCH_B in foreign.json()["detail"], path
        own = await client.get(path, params={"branch": BRANCH_A}, headers=lz_supervisor)
        assert own.status_code == 200, f"{path}: {own.text[:200]}"
    # Another branch's department, where a department only ever holds its branch's people
    # (the staff list answered an empty list until 6 December).
    lz_admin = token(system.intake_settings, branches=[BRANCH_A], roles=("admin",))
    for path, headers in (
        ("/v1/directory/staff", lz_admin),
        ("/v1/assignments/workload", lz_supervisor),
    ):
        foreign = await system.routing.get(path, params={"department": "HOSP:PRO"}, headers=headers)
        assert foreign.status_code == 404, f"{path}: {foreign.status_code} {foreign.text[:200]}"
        assert foreign.json()["field"] == "department", path
        own = await system.routing.get(path, params={"department": "LZ:BILLING"}, headers=headers)
        assert own.status_code == 200 and "lz-chen" in own.text, f"{path}: {own.text[:200]}"


@pytest.mark.integration
async def test_a_branch_reads_the_policy_it_inherits_without_the_organisations_audit_data(
    system: System,
) -> None:
    organisation_admin = token(system.followup_settings, subject="org-admin-zhao")
    saved = await system.followup.put(
        "/v1/followups/policy", json=BRANCH_POLICY, headers=organisation_admin
    )
    assert saved.status_code == 200, saved.text
    lz_agent = token(system.followup_settings, branches=[BRANCH_A], roles=("agent",))
    path = f"/v1/followups/policy/branches/{BRANCH_A}"

    inherited = await system.followup.get(path, headers=lz_agent)
    assert inherited.status_code == 200, inherited.text
    body = inherited.json()
    assert (body["branch"], body["inherited"]) == (BRANCH_A, True)
    assert body["policy"] == saved.json()["policy"]
    assert (body["version"], body["changed_by"], body["changed_at"]) == (None, None, None)
    assert "org-admin-zhao" not in inherited.text

    another_admin = token(system.followup_settings, subject="org-admin-qian")
    own_policy = await system.followup.put(
        path, json={**BRANCH_POLICY, "max_attempts": 2}, headers=another_admin
    )
    assert own_policy.status_code == 200, own_policy.text
    own = (await system.followup.get(path, headers=lz_agent)).json()
    assert (own["inherited"], own["version"], own["changed_by"]) == (False, 1, "org-admin-qian")
    assert own["policy"] == own_policy.json()["policy"]

    back = await system.followup.delete(path, headers=another_admin)
    assert back.status_code == 200, back.text
    assert (back.json()["inherited"], back.json()["version"]) == (True, None)
    assert "org-admin-zhao" not in back.text


@pytest.mark.integration
async def test_workload_counts_responsibility_only_from_the_tokens_branches(
    system: System,
) -> None:
    admin = token(system.routing_settings)
    created = await system.intake.post("/v1/complaints", json=BROADBAND_COMPLAINT, headers=admin)
    complaint_id = created.json()["id"]
    await assignment_when(system, complaint_id, what="the Lanzhou assignment")
    # An organisation-wide supervisor holds the hospital's desk responsible for Lanzhou's case.
    blamed = await system.routing.post(
        f"/v1/assignments/{complaint_id}/responsibility",
        json={"responsible_department": "HOSP:PRO"},
        headers=admin,
    )
    assert blamed.status_code == 200, blamed.text

    async def responsible_for(headers: dict[str, str]) -> int:
        response = await system.routing.get(
            "/v1/assignments/workload", params={"department": "HOSP:PRO"}, headers=headers
        )
        assert response.status_code == 200, response.text
        (department,) = response.json()["departments"]
        return department["responsible_for"]

    hosp_supervisor = token(system.routing_settings, branches=[BRANCH_B], roles=("supervisor",))
    assert await responsible_for(admin) == 1
    assert await responsible_for(hosp_supervisor) == 0


@pytest.mark.integration
async def test_a_deactivation_lists_only_the_tokens_branches_open_work(system: System) -> None:
    """An organisation rule sends Lanzhou's product-quality complaints to the hospital's
    desk. Deactivating that desk, or the person holding the complaint, answered the hospital
    admin with Lanzhou's complaint ids, statuses and owners, which every other route of that
    token answers 404 for. Now they are counted, not listed; an organisation-wide admin
    still gets them listed."""
    admin = token(system.routing_settings)
    await _lanzhou_quality_to_the_hospital(system, admin)
    complaint = await system.intake.post(
        "/v1/complaints",
        json={**BROADBAND_COMPLAINT, "category": "product_quality", "subject": "路由器质量问题"},
        headers=token(system.intake_settings),
    )
    assert complaint.status_code == 201, complaint.text
    complaint_id = complaint.json()["id"]
    assignment = await assignment_when(
        system, complaint_id, lambda doc: doc.get("owner_id") is not None, what="at HOSP:PRO"
    )
    assert (assignment["department"], assignment["branch"]) == ("HOSP:PRO", BRANCH_A)
    hosp_admin = token(system.routing_settings, branches=[BRANCH_B], roles=("admin",))
    # The rule names the desk: it stays active until the organisation changes the rule.
    named = await system.routing.post(
        "/v1/directory/departments/HOSP:PRO/deactivate", headers=hosp_admin
    )
    assert named.status_code == 409, named.text
    assert "lz-to-hospital" in named.json()["detail"]
    assert (
        await system.routing.delete("/v1/routing/rules/demo:lz-to-hospital", headers=admin)
    ).status_code == 200
    for path in (
        f"/v1/directory/staff/{assignment['owner_id']}/deactivate",
        "/v1/directory/departments/HOSP:PRO/deactivate",
    ):
        report = await system.routing.post(path, headers=hosp_admin)
        assert report.status_code == 200, report.text
        assert report.json()["open_work"] == [], report.text
        assert report.json()["open_work_of_other_branches"] == 1
        assert complaint_id not in report.text
        listed = await system.routing.post(path, headers=admin)
        assert [work["complaint_id"] for work in listed.json()["open_work"]] == [complaint_id]
        assert listed.json()["open_work_of_other_branches"] == 0
    closed = await system.routing.post(
        f"/v1/directory/branches/{BRANCH_A}/deactivate", headers=admin
    )
    assert closed.status_code == 200, closed.text
    assert [work["complaint_id"] for work in closed.json()["open_work"]] == [complaint_id]


@pytest.mark.integration
async def test_a_repeat_across_branches_is_counted_but_names_only_complaints_the_token_sees(
    system: System,
) -> None:
    admin = token(system.intake_settings)
    lz_agent = token(system.intake_settings, branches=[BRANCH_A], roles=("agent",))
    at_hospital = await system.intake.post("/v1/complaints", json=HOSPITAL_COMPLAINT, headers=admin)
    assert at_hospital.status_code == 201, at_hospital.text
    hospital_id = at_hospital.json()["id"]
    # The same customer complains in Lanzhou, twice.
    same_customer = {**BROADBAND_COMPLAINT, "customer": HOSPITAL_COMPLAINT["customer"]}
    first = await system.intake.post("/v1/complaints", json=same_customer, headers=lz_agent)
    assert first.status_code == 201, first.text
    assert (first.json()["repeat_count"], first.json()["repeat_of"]) == (1, [])
    assert "repeat" in first.json()["flags"]
    assert hospital_id not in first.text
    first_id = first.json()["id"]
    second = await system.intake.post(
        "/v1/complaints", json={**same_customer, "subject": "还是没有恢复"}, headers=lz_agent
    )
    assert second.status_code == 201, second.text
    assert (second.json()["repeat_count"], second.json()["repeat_of"]) == (2, [first_id])
    second_id = second.json()["id"]

    # Reading it back, one by one or listed, shows the same; the organisation sees every link.
    read = await system.intake.get(f"/v1/complaints/{second_id}", headers=lz_agent)
    assert (read.json()["repeat_count"], read.json()["repeat_of"]) == (2, [first_id])
    listed = await system.intake.get("/v1/complaints", params={"repeat": "true"}, headers=lz_agent)
    assert listed.status_code == 200, listed.text
    assert hospital_id not in listed.text
    assert {item["id"] for item in listed.json()["items"]} == {first_id, second_id}
    noted = await system.intake.post(
        f"/v1/complaints/{second_id}/notes", json={"text": "客户第三次来电"}, headers=lz_agent
    )
    assert noted.status_code == 200, noted.text
    assert noted.json()["repeat_of"] == [first_id]
    everything = await system.intake.get(f"/v1/complaints/{second_id}", headers=admin)
    assert everything.json()["repeat_of"] == [first_id, hospital_id]


@pytest.mark.integration
async def test_a_registration_replayed_by_a_narrower_token_names_only_complaints_it_sees(
    system: System,
) -> None:
    """The answer to a registration under an ``Idempotency-Key`` is stored as the first
    token could read it. Retried after the person's branches were narrowed, it was replayed
    as stored until 5 December, naming another branch's complaint in ``repeat_of``."""
    wide = token(
        system.intake_settings, branches=[BRANCH_A, "HOSP"], roles=("agent",), subject="u1"
    )
    narrow = token(system.intake_settings, branches=[BRANCH_A], roles=("agent",), subject="u1")
    at_hospital = await system.intake.post("/v1/complaints", json=HOSPITAL_COMPLAINT, headers=wide)
    assert at_hospital.status_code == 201, at_hospital.text
    hospital_id = at_hospital.json()["id"]
    same_customer = {**BROADBAND_COMPLAINT, "customer": HOSPITAL_COMPLAINT["customer"]}
    key = {"Idempotency-Key": "narrowed-retry"}
    first = await system.intake.post("/v1/complaints", json=same_customer, headers=wide | key)
    assert first.status_code == 201, first.text
    assert first.json()["repeat_of"] == [hospital_id]
    replay = await system.intake.post("/v1/complaints", json=same_customer, headers=narrow | key)
    assert replay.status_code == 201, replay.text
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert (replay.json()["id"], replay.json()["repeat_count"]) == (first.json()["id"], 1)
    assert replay.json()["repeat_of"] == []
    assert hospital_id not in replay.text
    again = await system.intake.post("/v1/complaints", json=same_customer, headers=wide | key)
    assert again.json()["repeat_of"] == [hospital_id]


@pytest.mark.integration
async def test_a_note_whose_repeat_check_fails_is_answered_once_and_stored_once(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The note is stored; the read that checks ``repeat_of`` against the caller's branches
    then meets a dropped connection. The answer is the stored complaint with those links
    withheld, not a 503 whose retry would add the note a second time."""
    lz_agent = token(system.intake_settings, branches=[BRANCH_A], roles=("agent",))
    first = await system.intake.post("/v1/complaints", json=BROADBAND_COMPLAINT, headers=lz_agent)
    assert first.status_code == 201, first.text
    again = {**BROADBAND_COMPLAINT, "subject": "还是没有恢复"}
    second = await system.intake.post("/v1/complaints", json=again, headers=lz_agent)
    assert second.json()["repeat_of"] == [first.json()["id"]]
    second_id = second.json()["id"]
    monkeypatch.setattr(intake_store, "shown_to", FailsFirst(intake_store.shown_to))

    noted = await system.intake.post(
        f"/v1/complaints/{second_id}/notes", json={"text": "客户第三次来电"}, headers=lz_agent
    )
    assert noted.status_code == 200, noted.text
    assert noted.json()["repeat_count"] == second.json()["repeat_count"]
    assert noted.json()["repeat_of"] == []
    timeline = await system.intake.get(f"/v1/complaints/{second_id}/timeline", headers=lz_agent)
    actions = [entry["action"] for entry in timeline.json()["entries"]]
    assert actions.count("note_added") == 1, actions
    read = await system.intake.get(f"/v1/complaints/{second_id}", headers=lz_agent)
    assert read.json()["repeat_of"] == [first.json()["id"]]


@pytest.mark.integration
async def test_a_report_says_which_branches_it_counted(system: System) -> None:
    """A token of HOSP alone, asking for no branch, gets HOSP's figures; the answer said
    ``branches: []``, "every branch", so a sum of such answers counted HOSP as the whole
    organisation."""
    window = {"from": "2026-11-01T00:00:00Z", "to": "2026-12-31T00:00:00Z"}
    hospital = token(system.intake_settings, branches=[BRANCH_B], roles=("supervisor",))
    mine = await system.intake.get("/v1/reports/summary", params=window, headers=hospital)
    assert mine.status_code == 200, mine.text
    assert mine.json()["branches"] == [BRANCH_B]
    admin = token(system.intake_settings)
    everything = await system.intake.get("/v1/reports/summary", params=window, headers=admin)
    assert everything.json()["branches"] == []
    asked = await system.intake.get(
        "/v1/reports/summary", params={**window, "branch": BRANCH_A}, headers=admin
    )
    assert asked.json()["branches"] == [BRANCH_A]
