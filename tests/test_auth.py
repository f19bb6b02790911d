"""Bearer tokens: no token is 401; a branch-scoped token never sees another branch."""

from __future__ import annotations

import pytest

from tests.support.http import BROADBAND_COMPLAINT, token
from tests.support.system import System
from tests.support.waits import eventually

pytestmark = pytest.mark.integration


async def test_requests_without_a_valid_token_are_401_problems(system: System) -> None:
    missing = await system.intake.post("/v1/complaints", json=BROADBAND_COMPLAINT)
    assert missing.status_code == 401
    assert missing.headers["content-type"].startswith("application/problem+json")
    assert missing.json()["status"] == 401

    forged = await system.intake.get(
        "/v1/complaints/anything", headers={"Authorization": "Bearer not-a-jwt"}
    )
    assert forged.status_code == 401
    wrong_secret = token(system.intake_settings.model_copy(update={"jwt_secret": "x" * 40}))
    assert (await system.routing.get("/v1/assignments/x", headers=wrong_secret)).status_code == 401
    assert (await system.followup.get("/v1/followups")).status_code == 401


async def test_branch_token_cannot_see_another_branch(system: System) -> None:
    lz_agent = token(system.intake_settings, branches=["LZ"], roles=("agent",))
    hosp_agent = token(system.intake_settings, branches=["HOSP"], roles=("agent",))
    other_org = token(system.intake_settings, org="other", roles=("admin",))
    created = await system.intake.post("/v1/complaints", json=BROADBAND_COMPLAINT, headers=lz_agent)
    assert created.status_code == 201
    complaint_id = created.json()["id"]

    assert (await system.intake.get(f"/v1/complaints/{complaint_id}", headers=lz_agent)).is_success
    for foreign in (hosp_agent, other_org):
        response = await system.intake.get(f"/v1/complaints/{complaint_id}", headers=foreign)
        assert response.status_code == 404
        assert response.json()["type"].endswith("/not-found")
        resolve = await system.intake.post(
            f"/v1/complaints/{complaint_id}/resolve", json={"summary": "x"}, headers=foreign
        )
        assert resolve.status_code == 404

    async def assigned() -> bool:
        return (
            await system.routing.get(f"/v1/assignments/{complaint_id}", headers=lz_agent)
        ).is_success

    await eventually(assigned, what="assignment visible to its branch")
    foreign_assignment = await system.routing.get(
        f"/v1/assignments/{complaint_id}", headers=hosp_agent
    )
    assert foreign_assignment.status_code == 404

    elsewhere = await system.intake.post(
        "/v1/complaints", json={**BROADBAND_COMPLAINT, "branch": "HOSP"}, headers=lz_agent
    )
    # Another branch does not exist for the token: 404 naming the field, never 403.
    assert elsewhere.status_code == 404
    assert elsewhere.json()["field"] == "branch"


async def test_invalid_complaint_is_a_422_problem_naming_the_field(system: System) -> None:
    admin = token(system.intake_settings)
    body = {**BROADBAND_COMPLAINT, "severity": "apocalyptic", "colour": "red"}
    response = await system.intake.post("/v1/complaints", json=body, headers=admin)
    assert response.status_code == 422
    problem = response.json()
    assert response.headers["content-type"].startswith("application/problem+json")
    fields = {error["field"] for error in problem["errors"]}
    assert {"severity", "colour"} <= fields
    db = system.mongo[system.intake_settings.database_name()]
    assert await db.complaints.count_documents({}) == 0


async def test_a_caller_the_route_refuses_hears_that_before_anything_about_the_request(
    system: System,
) -> None:
    """FastAPI reads a JSON body, and the app checks the query's names, before the route's
    access declaration runs: a caller without a token or without the role got a 422 (or a
    400) about the body or the query, learning how the route reads its input, instead of the
    401 or 403 the same request gets well formed."""
    json_type = {"Content-Type": "application/json"}
    agent = token(system.intake_settings, roles=("agent",))
    supervisor = token(system.intake_settings, roles=("supervisor",))
    broken, unreadable = b"{", b"[" * 5000 + b"]" * 5000

    for body in (broken, unreadable):
        refused = await system.intake.post("/v1/complaints", content=body, headers=json_type)
        assert refused.status_code == 401, refused.text
        assert refused.headers["content-type"].startswith("application/problem+json")
        forbidden = await system.routing.post(
            "/v1/routing/rules", content=body, headers={**agent, **json_type}
        )
        assert forbidden.status_code == 403, forbidden.text
    unknown = await system.intake.get(
        "/v1/reports/summary", params={"group_by": "branch", "x": "1"}, headers=agent
    )
    assert unknown.status_code == 403, unknown.text
    assert (await system.followup.get("/v1/followups", params={"x": "1"})).status_code == 401

    # A caller the route admits is told what is wrong with the request.
    admitted = await system.intake.post(
        "/v1/complaints", content=broken, headers={**agent, **json_type}
    )
    assert admitted.status_code == 422 and admitted.json()["errors"][0]["field"] == "body"
    unknown = await system.intake.get(
        "/v1/reports/summary", params={"group_by": "branch", "x": "1"}, headers=supervisor
    )
    assert unknown.status_code == 422 and unknown.json()["errors"][0]["field"] == "x"
