"""The whole loop over real Kafka and MongoDB: receive → route → resolve → follow up → close."""

from __future__ import annotations

import pytest

from tests.support.http import BROADBAND_COMPLAINT, assigned, token
from tests.support.system import System
from tests.support.waits import eventually

pytestmark = pytest.mark.integration


async def test_complaint_flows_from_intake_to_closure(system: System) -> None:
    admin = token(system.intake_settings)
    created = await system.intake.post("/v1/complaints", json=BROADBAND_COMPLAINT, headers=admin)
    assert created.status_code == 201, created.text
    complaint = created.json()
    assert complaint["status"] == "received"
    assert complaint["reference"].startswith("LZ-")

    routed = await eventually(
        lambda: assigned(system, complaint["id"], admin), timeout_s=10, what="assignment"
    )
    assert routed["status"] == "open"
    assert routed["assignment"]["department"] == "LZ:BILLING"
    assert routed["assignment"]["owner_id"] in {"lz-chen", "lz-liu"}
    assert routed["acknowledge_due_at"] is not None

    assignment = await system.routing.get(f"/v1/assignments/{complaint['id']}", headers=admin)
    assert assignment.status_code == 200
    assert assignment.json()["rule_id"] == "demo:billing-keywords"

    resolved = await system.intake.post(
        f"/v1/complaints/{complaint['id']}/resolve",
        json={"summary": "已恢复宽带，补打欠费单并当面致歉", "customer_accepted": True},
        headers=admin,
    )
    assert resolved.status_code == 200, resolved.text
    assert resolved.json()["status"] == "resolved"

    async def check_scheduled() -> dict | None:
        response = await system.followup.get(
            "/v1/followups", params={"complaint_id": complaint["id"]}, headers=admin
        )
        items = response.json()["items"]
        return items[0] if items else None

    check = await eventually(check_scheduled, timeout_s=10, what="satisfaction check")
    assert check["status"] == "scheduled"
    assert check["customer"]["phone"] == "+86 138 0931 0000"
    assert check["resolution_summary"].startswith("已恢复宽带")

    outcome = await system.followup.post(
        f"/v1/followups/{check['id']}/outcome",
        json={"satisfied": True, "score": 5, "comment": "处理及时"},
        headers=admin,
    )
    assert outcome.status_code == 200, outcome.text

    async def closed() -> dict | None:
        body = (await system.intake.get(f"/v1/complaints/{complaint['id']}", headers=admin)).json()
        return body if body["status"] == "closed" else None

    final = await eventually(closed, timeout_s=10, what="complaint closed")
    assert final["satisfaction"]["score"] == 5
    assert final["satisfaction"]["outcome"] == "satisfied"
    assert final["closed_at"] is not None


async def test_unsatisfied_outcome_reopens_the_complaint(system: System) -> None:
    admin = token(system.intake_settings)
    created = (
        await system.intake.post("/v1/complaints", json=BROADBAND_COMPLAINT, headers=admin)
    ).json()
    await eventually(lambda: assigned(system, created["id"], admin), what="assignment")
    await system.intake.post(
        f"/v1/complaints/{created['id']}/resolve", json={"summary": "已解释"}, headers=admin
    )

    async def check_id() -> str | None:
        response = await system.followup.get(
            "/v1/followups", params={"complaint_id": created["id"]}, headers=admin
        )
        items = response.json()["items"]
        return items[0]["id"] if items else None

    followup_id = await eventually(check_id, what="satisfaction check")
    await system.followup.post(
        f"/v1/followups/{followup_id}/outcome",
        json={"satisfied": False, "score": 2},
        headers=admin,
    )

    async def reopened() -> dict | None:
        # Routing hands a reopened complaint straight back to its owner, so "reopened" can be
        # over by the time we look; the reopen count and the timeline stay.
        body = (await system.intake.get(f"/v1/complaints/{created['id']}", headers=admin)).json()
        return body if body["reopen_count"] == 1 else None

    final = await eventually(reopened, what="complaint reopened")
    # Reopened; routing's re-announced assignment and escalation are facts, not statuses.
    assert final["status"] == "reopened"
    assert final["satisfaction"]["outcome"] == "unsatisfied"
    timeline = (
        await system.intake.get(f"/v1/complaints/{created['id']}/timeline", headers=admin)
    ).json()
    actions = [entry["action"] for entry in timeline["entries"]]
    assert actions.index("followup_completed") < actions.index("reopened")
    second = await system.followup.post(
        f"/v1/followups/{followup_id}/outcome",
        json={"satisfied": True, "score": 5},
        headers=admin,
    )
    assert second.status_code == 409
    assert second.json()["current_status"] == "completed"
