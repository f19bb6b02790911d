"""Intake applies routing and follow-up events once, and in the right order when late."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from complaints_shared.events import (
    ComplaintAssigned,
    ComplaintEscalated,
    ComplaintReassigned,
    ComplaintSlaBreached,
    EventType,
    SlaClock,
)
from tests.support.http import complaint_body, complaint_when, token
from tests.support.kafka import handled_count, publish, republish
from tests.support.system import System
from tests.support.waits import eventually

pytestmark = pytest.mark.integration


async def test_late_and_repeated_routing_events_leave_the_newest_state(system: System) -> None:
    admin = token(system.intake_settings)
    created = (
        await system.intake.post("/v1/complaints", json=complaint_body(), headers=admin)
    ).json()
    cid = created["id"]
    await complaint_when(
        system, cid, admin, lambda c: c["assignment"] is not None, what="routing's own assignment"
    )
    base = {"complaint_id": cid, "org": "demo", "branch": "LZ"}
    later = datetime.now(UTC) + timedelta(minutes=5)
    reassigned = ComplaintReassigned(
        **base,
        from_department="LZ:BILLING",
        from_owner_id="lz-chen",
        department="LZ:BILLING",
        department_name="计费账务部",
        owner_id="lz-liu",
        owner_name="刘洋",
        reason="休假",
        reassigned_by="sup-1",
        reassigned_at=later,
    )
    stale_assignment = ComplaintAssigned(
        **base,
        department="LZ:CS",
        department_name="客户服务部",
        owner_id="lz-wang",
        owner_name="王芳",
        rule_id="demo:default",
        rule_version=1,
        assigned_at=later - timedelta(minutes=1),
    )
    level_two = ComplaintEscalated(
        **base,
        level=2,
        escalated_to_role="department_head",
        reason="sla_breach",
        escalated_at=later,
    )
    level_one = ComplaintEscalated(
        **base,
        level=1,
        escalated_to_role="team_lead",
        reason="sla_breach",
        escalated_at=later - timedelta(minutes=2),
    )
    breached = ComplaintSlaBreached(
        **base, clock=SlaClock.ACKNOWLEDGE, due_at=later, breached_at=later, escalation_level=2
    )
    before = handled_count("intake", EventType.COMPLAINT_REASSIGNED)
    events = await publish(
        system,
        (EventType.COMPLAINT_REASSIGNED, reassigned),
        (EventType.COMPLAINT_ESCALATED, level_two),
        (EventType.COMPLAINT_ASSIGNED, stale_assignment),  # late: older than the reassignment
        (EventType.COMPLAINT_ESCALATED, level_one),  # late: lower level
        (EventType.COMPLAINT_SLA_BREACHED, breached),
        service="routing",
    )
    # The same reassignment delivered again (at-least-once) after everything else.
    await republish(system, events[0], service="routing")
    await eventually(
        lambda: handled_count("intake", EventType.COMPLAINT_REASSIGNED) >= before + 2,
        what="both reassignment deliveries consumed",
    )
    final = await complaint_when(
        system, cid, admin, lambda c: c["sla"]["acknowledge_breached"], what="breach applied"
    )
    assert final["assignment"]["owner_id"] == "lz-liu"
    assert final["assignment"]["department"] == "LZ:BILLING"
    assert final["escalation_level"] == 2
    assert final["status"] == "open"  # escalation is a fact, not a status
    assert final["escalation"]["level"] == 2 and final["escalation"]["reason"] == "sla_breach"
    timeline = (await system.intake.get(f"/v1/complaints/{cid}/timeline", headers=admin)).json()
    actions = [entry["action"] for entry in timeline["entries"]]
    assert actions.count("reassigned") == 1
    found = await system.intake.get("/v1/complaints", params={"breached": "true"}, headers=admin)
    assert [item["id"] for item in found.json()["items"]] == [cid]


async def test_followup_outcome_for_an_earlier_resolution_does_not_close(system: System) -> None:
    from complaints_shared.events import FollowupCompleted, FollowupOutcome

    admin = token(system.intake_settings)
    cid = (await system.intake.post("/v1/complaints", json=complaint_body(), headers=admin)).json()[
        "id"
    ]
    for path, body in [
        ("resolve", {"summary": "一"}),
        ("reopen", {"reason": "未解决"}),
        ("resolve", {"summary": "二"}),
    ]:
        response = await system.intake.post(
            f"/v1/complaints/{cid}/{path}", json=body, headers=admin
        )
        assert response.status_code == 200, response.text
    stale = FollowupCompleted(
        complaint_id=cid,
        org="demo",
        branch="LZ",
        followup_id=f"{cid}:r1:1",
        resolution_number=1,
        outcome=FollowupOutcome.SATISFIED,
        score=5,
        completed_at=datetime.now(UTC),
    )
    before = handled_count("intake", EventType.FOLLOWUP_COMPLETED)
    await publish(system, (EventType.FOLLOWUP_COMPLETED, stale), service="followup")
    await eventually(
        lambda: handled_count("intake", EventType.FOLLOWUP_COMPLETED) > before,
        what="stale outcome consumed",
    )
    document = (await system.intake.get(f"/v1/complaints/{cid}", headers=admin)).json()
    assert document["status"] == "resolved"
    assert document["satisfaction"]["resolution_number"] == 1
