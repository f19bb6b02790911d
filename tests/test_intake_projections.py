"""Intake applies routing and follow-up events once, and in the right order when late."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from complaints_shared.clock import ManualClock
from complaints_shared.events import (
    ComplaintAssigned,
    ComplaintEscalated,
    ComplaintQueued,
    ComplaintReassigned,
    ComplaintResponsibilitySet,
    ComplaintSlaBreached,
    EventType,
    FollowupCompleted,
    FollowupOutcome,
    ResponsibleParty,
    SlaClock,
)
from tests.support.clock import at
from tests.support.http import command, complaint_body, complaint_when, create_complaint, token
from tests.support.kafka import handled_count, publish, republish, routing_events
from tests.support.routing import assignment_when
from tests.support.system import System, SystemFactory
from tests.support.waits import eventually

pytestmark = pytest.mark.integration


def _unsatisfied_answer(complaint_id: str, *, answered_at: datetime) -> FollowupCompleted:
    """The customer's "unsatisfied" to the first check of the first resolution."""
    return FollowupCompleted(
        complaint_id=complaint_id,
        org="demo",
        branch="LZ",
        followup_id=f"{complaint_id}:r1:1",
        resolution_number=1,
        sequence=1,
        outcome=FollowupOutcome.UNSATISFIED,
        score=2,
        problem_solved=False,
        completed_at=answered_at,
    )


async def _once_consumed(system: System, outcome: FollowupCompleted, headers: dict) -> dict:
    """Publish follow-up's ``outcome``; the complaint of record once intake consumed it."""
    before = handled_count("intake", EventType.FOLLOWUP_COMPLETED)
    await publish(system, (EventType.FOLLOWUP_COMPLETED, outcome), service="followup")
    await eventually(
        lambda: handled_count("intake", EventType.FOLLOWUP_COMPLETED) > before,
        what="the outcome consumed",
    )
    return (
        await system.intake.get(f"/v1/complaints/{outcome.complaint_id}", headers=headers)
    ).json()


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
        assignment_sequence=2,  # routing's own assignment was 1
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
        assignment_sequence=1,
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
        (EventType.COMPLAINT_ASSIGNED, stale_assignment),  # late: numbered before it
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


async def test_assignment_events_apply_in_routing_order_whatever_the_replicas_clocks(
    system: System,
) -> None:
    """Replica A, its clock five minutes ahead, queues the complaint; replica B, five minutes
    behind, drains the queue a second later and a supervisor reassigns it: each was dropped
    for good as "older" than the queueing. A dead letter replayed afterwards (an earlier
    assignment intake never applied) still changes nothing."""
    admin = token(system.intake_settings)
    # Counted once handled to the end, a moment after the record shows the assignment.
    before = handled_count("intake", EventType.COMPLAINT_ASSIGNED)
    cid = (await create_complaint(system, admin))["id"]
    routed = await complaint_when(
        system, cid, admin, lambda c: c["assignment"] is not None, what="routing's assignment"
    )
    base = {"complaint_id": cid, "org": "demo", "branch": "LZ"}
    now = datetime.now(UTC)
    ahead, behind = now + timedelta(minutes=5), now - timedelta(minutes=5)
    desk = {"department": "LZ:BILLING", "department_name": "计费账务部"}
    rule = {"rule_id": "demo:billing-keywords", "rule_version": 1}
    queued = ComplaintQueued(**base, **desk, **rule, queued_at=ahead, assignment_sequence=2)
    drained = ComplaintAssigned(
        **base,
        **desk,
        **rule,
        owner_id="lz-gao",
        owner_name="高峰",
        assigned_at=behind + timedelta(seconds=1),
        resolve_due_at=now + timedelta(hours=24),
        assignment_sequence=3,
    )
    reassigned = ComplaintReassigned(
        **base,
        **desk,
        from_department="LZ:BILLING",
        from_owner_id="lz-gao",
        owner_id="lz-xie",
        owner_name="谢敏",
        reason="休假",
        reassigned_by="sup-1",
        reassigned_at=behind + timedelta(seconds=2),
        assignment_sequence=4,
    )
    dead_letter = ComplaintAssigned(
        **base,
        **desk,
        **rule,
        owner_id="lz-chen",
        owner_name="陈静",
        assigned_at=ahead,
        assignment_sequence=2,
    )
    await publish(
        system,
        (EventType.COMPLAINT_QUEUED, queued),
        (EventType.COMPLAINT_ASSIGNED, drained),
        (EventType.COMPLAINT_REASSIGNED, reassigned),
        (EventType.COMPLAINT_ASSIGNED, dead_letter),
        service="routing",
    )
    await eventually(
        lambda: handled_count("intake", EventType.COMPLAINT_ASSIGNED) >= before + 3,
        what="routing's assignment, the drain and the replayed dead letter consumed",
    )
    # One partition, in order: the reassignment between them was applied too.
    final = (await system.intake.get(f"/v1/complaints/{cid}", headers=admin)).json()
    assert routed["assignment"]["queued"] is False
    assert final["assignment"]["owner_id"] == "lz-xie"
    assert final["assignment"]["queued"] is False
    assert final["resolve_due_at"] is not None  # the drain's due time stands
    stored = await intake_record(system, cid)
    assert stored["assignment_sequence"] == 4


async def test_routing_numbers_every_assignment_event_and_intake_keeps_the_last(
    system: System,
) -> None:
    """Assigned, reassigned twice, re-announced on resume: 1, 2, 3, 4 in the order written."""
    admin = token(system.intake_settings)
    cid = (await create_complaint(system, admin))["id"]
    first = await assignment_when(system, cid, lambda doc: doc.get("owner_id") is not None)
    other = "lz-liu" if first["owner_id"] == "lz-chen" else "lz-chen"
    supervisor = token(system.routing_settings, roles=("supervisor",))
    path = f"/v1/assignments/{cid}/reassign"
    for body in ({"owner_id": other, "reason": "休假"}, {"department": "LZ:CS", "reason": "转"}):
        moved = await system.routing.post(path, json=body, headers=supervisor)
        assert moved.status_code == 200, moved.text
    # Intake takes a wait once it has applied the assignment (a received complaint cannot wait).
    await complaint_when(system, cid, admin, lambda c: c["status"] == "open", what="routed")
    await command(system, f"/v1/complaints/{cid}/pending-customer", {"reason": "等凭证"}, admin)
    await assignment_when(system, cid, lambda doc: doc.get("paused"), what="paused")
    await command(system, f"/v1/complaints/{cid}/resume", {}, admin)
    kinds = (EventType.COMPLAINT_ASSIGNED, EventType.COMPLAINT_REASSIGNED)

    def announced(events: list) -> list:
        return [event for event in events if event.subject == cid and event.type in kinds]

    found = announced(await routing_events(system, until=lambda e: len(announced(e)) >= 4))
    events = sorted(found, key=lambda event: event.data["assignment_sequence"])
    assert [event.data["assignment_sequence"] for event in events] == [1, 2, 3, 4]
    assert [event.type for event in events] == [kinds[0], kinds[1], kinds[1], kinds[0]]
    assert events[-1].data["department"] == "LZ:CS"  # the resume re-announces the latest
    # Intake is "open" again as soon as it takes the resume; routing's events reach it after
    # (the department was read before they had, when the broker was slow).
    stored = await eventually(
        lambda: _with_sequence(system, cid, 4), what="the re-announcement applied"
    )
    assert stored["assignment"]["owner_id"] == events[-1].data["owner_id"]
    final = await complaint_when(
        system, cid, admin, lambda c: c["status"] == "open", what="resumed"
    )
    assert final["assignment"]["department"] == "LZ:CS"


async def _with_sequence(system: System, cid: str, number: int) -> dict | None:
    stored = await intake_record(system, cid)
    return stored if stored.get("assignment_sequence") == number else None


async def intake_record(system: System, cid: str) -> dict:
    return await system.mongo[system.intake_settings.database_name()].complaints.find_one(
        {"_id": cid}
    )


async def test_a_late_outcome_of_an_earlier_resolution_leaves_the_current_satisfaction(
    system: System,
) -> None:
    """Resolution 2's call found the customer satisfied (4); resolution 1's week-later call,
    finished late, wrote its 5 over it."""
    admin = token(system.intake_settings)
    cid = (await create_complaint(system, admin))["id"]
    for path, body in [
        ("resolve", {"summary": "一"}),
        ("reopen", {"reason": "未解决"}),
        ("resolve", {"summary": "二"}),
    ]:
        await command(system, f"/v1/complaints/{cid}/{path}", body, admin)
    base = {"complaint_id": cid, "org": "demo", "branch": "LZ"}

    def outcome(resolution: int, sequence: int, score: int) -> FollowupCompleted:
        return FollowupCompleted(
            **base,
            followup_id=f"{cid}:r{resolution}:{sequence}",
            resolution_number=resolution,
            sequence=sequence,
            outcome=FollowupOutcome.SATISFIED,
            score=score,
            problem_solved=True,
            completed_at=datetime.now(UTC),
        )

    before = handled_count("intake", EventType.FOLLOWUP_COMPLETED)
    await publish(
        system,
        (EventType.FOLLOWUP_COMPLETED, outcome(2, 1, 4)),
        (EventType.FOLLOWUP_COMPLETED, outcome(1, 2, 5)),
        service="followup",
    )
    await eventually(
        lambda: handled_count("intake", EventType.FOLLOWUP_COMPLETED) >= before + 2,
        what="both outcomes consumed",
    )
    document = (await system.intake.get(f"/v1/complaints/{cid}", headers=admin)).json()
    assert document["status"] == "closed"
    satisfaction = document["satisfaction"]
    assert (satisfaction["resolution_number"], satisfaction["score"]) == (2, 4)
    timeline = (await system.intake.get(f"/v1/complaints/{cid}/timeline", headers=admin)).json()
    completed = [e for e in timeline["entries"] if e["action"] == "followup_completed"]
    assert [entry["details"]["score"] for entry in completed] == [4, 5]  # both on the timeline


async def test_followup_outcome_for_an_earlier_resolution_does_not_close(system: System) -> None:
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


async def test_an_unsatisfied_answer_consumed_after_an_administrators_close_is_recorded_only(
    system: System,
) -> None:
    """The customer answered "unsatisfied" at 10:00; intake consumed it only after a
    supervisor closed the complaint at 11:00 (the outcome dead-lettered, replayed days later).
    The administrator's close ends the call-backs; until 5 December the late answer reopened
    the complaint they had closed, dated at the answer, so its new clock started days ago."""
    admin = token(system.intake_settings)
    cid = (await create_complaint(system, admin))["id"]
    await command(system, f"/v1/complaints/{cid}/resolve", {"summary": "已退款"}, admin)
    answered_at = datetime.now(UTC)
    await command(system, f"/v1/complaints/{cid}/close", {"reason": "已电话确认"}, admin)
    late = _unsatisfied_answer(cid, answered_at=answered_at)
    document = await _once_consumed(system, late, admin)
    assert (document["status"], document["reopen_count"]) == ("closed", 0)
    assert document["satisfaction"]["outcome"] == "unsatisfied"


async def test_an_answer_in_the_millisecond_of_an_administrators_close_does_not_reopen_it(
    system: System,
) -> None:
    """MongoDB keeps a time to the millisecond: the close stored at .898000 happened at
    .898xxx. Until 5 December an answer at .898500 compared as after the close and reopened
    the complaint the supervisor had closed (seen twice in a full run, once the close came
    within a millisecond of the answer). Both are compared as stored now: a tie is the close's."""
    admin = token(system.intake_settings)
    cid = (await create_complaint(system, admin))["id"]
    await command(system, f"/v1/complaints/{cid}/resolve", {"summary": "已退款"}, admin)
    closed = await command(system, f"/v1/complaints/{cid}/close", {"reason": "已电话确认"}, admin)
    closed_at = at(closed["closed_at"])
    assert closed_at.microsecond % 1000 == 0  # as stored
    late = _unsatisfied_answer(cid, answered_at=closed_at + timedelta(microseconds=500))
    document = await _once_consumed(system, late, admin)
    assert (document["status"], document["reopen_count"]) == ("closed", 0)
    assert document["satisfaction"]["outcome"] == "unsatisfied"


async def test_an_unsatisfied_answer_consumed_days_late_reopens_the_complaint_now(
    system_factory: SystemFactory,
) -> None:
    """The customer answered "unsatisfied" right after the resolution; intake consumed the
    outcome five days later (the broker away, or the dead letter replayed). Until 5 December
    the reopening was dated at the answer: routing started the new cycle's resolve clock five
    days back, breached on arrival, and escalated a complaint its handlers first saw again
    that minute. The reopening now happens when intake applies it; the answer keeps its time."""
    clock = ManualClock(datetime.now(UTC).replace(microsecond=0))
    system = await system_factory(clock=clock)
    admin = token(system.intake_settings)
    cid = (await create_complaint(system, admin))["id"]
    await complaint_when(system, cid, admin, lambda c: c["assignment"], what="assigned")
    await command(system, f"/v1/complaints/{cid}/resolve", {"summary": "已退款"}, admin)
    answered_at = datetime.now(UTC)  # the published event's time too (the wall clock)
    applied_at = clock.advance(timedelta(days=5))
    late = _unsatisfied_answer(cid, answered_at=answered_at)
    await publish(system, (EventType.FOLLOWUP_COMPLETED, late), service="followup")
    reopened = await complaint_when(
        system,
        cid,
        admin,
        lambda c: (
            c["status"] == "reopened"
            and c["resolve_due_at"]
            and at(c["resolve_due_at"]) > applied_at
        ),
        what="reopened with a resolve clock from now",
        timeout_s=20,
    )
    assert reopened["sla_breached"] is False
    timeline = (await system.intake.get(f"/v1/complaints/{cid}/timeline", headers=admin)).json()
    [answer] = [e for e in timeline["entries"] if e["action"] == "followup_completed"]
    [reopening] = [e for e in timeline["entries"] if e["action"] == "reopened"]
    assert at(answer["at"]) < applied_at
    assert at(reopening["at"]) == applied_at
    assert reopening["status_to"] == "reopened"


async def test_a_late_responsibility_setting_leaves_the_newer_one_on_record(
    system: System,
) -> None:
    """A supervisor's responsibility setting was dead-lettered in intake; the agent then
    resolved naming another department and party; the operator replayed the dead letter.
    Until 5 December the replay overwrote the resolution's responsibility, and intake
    disagreed with routing for good. An older setting is now on the timeline only; a newer
    one still applies."""
    admin = token(system.intake_settings)
    cid = (await create_complaint(system, admin))["id"]
    await complaint_when(system, cid, admin, lambda c: c["assignment"], what="assigned")
    # Routing announces the resolution's responsibility too: both are counted below.
    before = handled_count("intake", EventType.COMPLAINT_RESPONSIBILITY_SET)
    await command(
        system,
        f"/v1/complaints/{cid}/resolve",
        {"summary": "已退款", "responsible_department": "LZ:BILLING", "responsible_party": "staff"},
        admin,
    )

    def setting(set_at: datetime) -> ComplaintResponsibilitySet:
        return ComplaintResponsibilitySet(
            complaint_id=cid,
            org="demo",
            branch="LZ",
            responsible_department="LZ:NETWORK",
            responsible_party=ResponsibleParty.SUPPLIER,
            set_by="sup-1",
            set_at=set_at,
        )

    older = setting(datetime.now(UTC) - timedelta(days=2))
    await publish(system, (EventType.COMPLAINT_RESPONSIBILITY_SET, older), service="routing")
    await eventually(
        lambda: handled_count("intake", EventType.COMPLAINT_RESPONSIBILITY_SET) >= before + 2,
        what="routing's announcement and the late setting consumed",
    )
    kept = (await system.intake.get(f"/v1/complaints/{cid}", headers=admin)).json()
    assert (kept["responsible_department"], kept["responsible_party"]) == ("LZ:BILLING", "staff")
    assert kept["responsibility"]["party"] == "staff"
    timeline = (await system.intake.get(f"/v1/complaints/{cid}/timeline", headers=admin)).json()
    assert "responsibility_set" in [entry["action"] for entry in timeline["entries"]]

    newer = setting(datetime.now(UTC) + timedelta(seconds=1))
    await publish(system, (EventType.COMPLAINT_RESPONSIBILITY_SET, newer), service="routing")
    changed = await complaint_when(
        system,
        cid,
        admin,
        lambda c: c["responsible_department"] == "LZ:NETWORK",
        what="the newer setting applied",
    )
    assert changed["responsibility"]["party"] == "supplier"
