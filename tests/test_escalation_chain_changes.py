"""Integration: escalation while the directory changes under it.

A chain is resolved to people when a complaint escalates. A head who retired, a team lead
on leave or a chain an administrator shortened must neither send an escalation to nobody
nor leave a complaint stranded below the branch head: a climb goes from what was reached
to the next step above it that finds a person, and a major incident reaches whoever heads
the branch now (DESIGN §1 step 4: a major medical error goes to the hospital head at once).
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from datetime import timedelta

import pytest

from complaints_shared.clock import ManualClock, SystemClock
from complaints_shared.events import ComplaintAcknowledged, EventType
from routing.assignments import major_incidents
from routing.main import create_app as create_routing_app
from tests.support.events import base, received
from tests.support.http import command, complaint_when, create_complaint, token
from tests.support.kafka import intake_producer
from tests.support.routing import FAST_TIMERS, MONDAY_10_SHANGHAI, assignment_when, routing_db
from tests.support.system import System, SystemFactory

pytestmark = pytest.mark.integration

MINUTE = timedelta(minutes=1)
MEDICAL_ERROR = {
    "branch": "HOSP",
    "category": "medical",
    "severity": "critical",
    "subject": "手术失误",
    "description": "手术失误导致病人重伤，怀疑医疗事故",
}
NEW_HEAD = {
    "id": "hosp-head2",
    "branch": "HOSP",
    "department": "PRO",
    "name": "李新院长",
    "role": "branch_head",
    "capacity": 0,
}
NEW_DEPARTMENT_HEAD = {
    "id": "hosp-wu",
    "branch": "HOSP",
    "department": "MED",
    "name": "吴科长",
    "role": "department_head",
    "capacity": 0,
}
SHORT_CHAIN = {"escalation_chain": [{"role": "department_head"}]}


def _admin(system: System) -> dict[str, str]:
    return token(system.routing_settings)


def _supervisor(system: System) -> dict[str, str]:
    return token(system.routing_settings, roles=("supervisor",), subject="lz-sup")


def _reached(document: dict) -> list[tuple]:
    return [
        (record["level"], record["escalated_to_role"], record["escalated_to_id"])
        for record in document["escalations"]
    ]


async def _ok(answer) -> dict:
    assert answer.status_code in (200, 201), answer.text
    return answer.json()


async def _escalate(system: System, cid: str, reason: str = "客户要求主管处理"):
    return await system.routing.post(
        f"/v1/assignments/{cid}/escalate", json={"reason": reason}, headers=_supervisor(system)
    )


async def _medical_error_nobody_above_can_take(system: System) -> tuple[str, dict]:
    """A medical error registered once 周科长 and 王院长, the medical-affairs chain's
    department and hospital heads, have left: a major incident that reached nobody at once.
    Its id and routing's assignment."""
    for person in ("hosp-head", "hosp-zhou"):
        await _ok(
            await system.routing.post(
                f"/v1/directory/staff/{person}/deactivate", headers=_admin(system)
            )
        )
    supervisor = token(system.intake_settings, roles=("supervisor",))
    cid = (await create_complaint(system, supervisor, **MEDICAL_ERROR))["id"]
    document = await assignment_when(system, cid, lambda d: d.get("owner_id"))
    assert (document["major_incident"], document["escalations"]) == (True, [])
    return cid, document


async def _billing_complaint(system: System, **overrides) -> str:
    """An LZ billing complaint (chain: team lead lz-gao, head lz-xie, branch head lz-gm)."""
    complaint = received(**overrides)
    async with intake_producer(system) as publish:
        await publish(EventType.COMPLAINT_RECEIVED, complaint)
    await assignment_when(system, complaint.complaint_id, lambda d: d.get("owner_id"))
    return complaint.complaint_id


async def test_a_major_incident_reaches_the_head_who_replaced_the_one_its_chain_names(
    system: System,
) -> None:
    """The medical-affairs chain names 周科长 and 王院长 (hosp-head). Once she retired, the
    inactive head was taken for the chain's branch-head rung and resolved to nobody: a
    medical error escalated to ``('branch_head', None)`` while the notify list found the
    new head."""
    admin = _admin(system)
    await _ok(await system.routing.post("/v1/directory/staff/hosp-head/deactivate", headers=admin))
    await _ok(await system.routing.post("/v1/directory/staff", json=NEW_HEAD, headers=admin))
    simulated = await _ok(
        await system.routing.post("/v1/routing/simulate", json=MEDICAL_ERROR, headers=admin)
    )
    assert simulated["escalated_to_id"] == "hosp-head2"

    incident = received(**MEDICAL_ERROR)
    async with intake_producer(system) as publish:
        await publish(EventType.COMPLAINT_RECEIVED, incident)
    document = await assignment_when(system, incident.complaint_id, lambda d: d.get("escalations"))
    assert document["major_incident"]
    [escalation] = document["escalations"]
    assert (escalation["escalated_to_id"], escalation["reason"]) == (
        "hosp-head2",
        "critical_incident",
    )
    assert document["escalation_level"] == escalation["level"] == 2


async def test_a_major_incident_without_a_head_goes_to_the_most_senior_then_to_the_new_head(
    system_factory: SystemFactory,
) -> None:
    """While the hospital has no head, a medical error goes at once to the most senior
    person its chain finds (周科长, the department head), a manual escalation stops below
    the vacancy (a 409 saying nobody is available), and the head appointed later is given
    it by routing itself, not by whoever thinks of escalating again. Until 5 December such
    an incident was escalated to nobody at once, and reached the new head only if someone
    escalated it by hand (or a breach climbed) after the appointment."""
    system = await system_factory(routing=FAST_TIMERS)
    admin = _admin(system)
    await _ok(await system.routing.post("/v1/directory/staff/hosp-head/deactivate", headers=admin))
    simulated = await _ok(
        await system.routing.post("/v1/routing/simulate", json=MEDICAL_ERROR, headers=admin)
    )
    assert (simulated["escalation_level"], simulated["escalated_to_id"]) == (1, "hosp-zhou")
    supervisor = token(system.intake_settings, roles=("supervisor",))
    cid = (await create_complaint(system, supervisor, **MEDICAL_ERROR))["id"]
    document = await assignment_when(system, cid, lambda d: d.get("owner_id"))
    assert document["major_incident"]
    [at_once] = document["escalations"]
    assert (at_once["level"], at_once["escalated_to_id"], at_once["reason"]) == (
        1,
        "hosp-zhou",
        "critical_incident",
    )
    vacant = await _escalate(system, cid, "仍未答复")
    assert vacant.status_code == 409, vacant.text
    assert "nobody above it" in vacant.json()["detail"]

    await _ok(await system.routing.post("/v1/directory/staff", json=NEW_HEAD, headers=admin))
    reached = await assignment_when(
        system, cid, lambda d: len(d["escalations"]) == 2, what="the new head reached"
    )
    assert _reached(reached)[-1] == (2, "branch_head", "hosp-head2")
    assert reached["escalations"][-1]["reason"] == "critical_incident"
    assert reached["escalation_level"] == 2
    assert "awaiting_branch_head" not in reached
    shown = await complaint_when(
        system,
        cid,
        supervisor,
        lambda c: (c.get("escalation") or {}).get("escalated_to_id") == "hosp-head2",
        what="intake's record at the new head",
    )
    assert shown["escalation_level"] == 2


async def test_a_major_incident_nobody_could_take_climbs_as_the_posts_above_it_are_filled(
    system_factory: SystemFactory,
) -> None:
    """The medical-affairs chain names 周科长 and 王院长; both have left, and nobody else holds
    either role: a medical error reaches nobody at once. The department head appointed next
    is given it (still awaiting a head), then the hospital head appointed after her."""
    system = await system_factory(routing=FAST_TIMERS)
    admin = _admin(system)
    cid, document = await _medical_error_nobody_above_can_take(system)
    assert document["awaiting_branch_head"] is True

    await _ok(
        await system.routing.post("/v1/directory/staff", json=NEW_DEPARTMENT_HEAD, headers=admin)
    )
    stand_in = await assignment_when(
        system, cid, lambda d: len(d["escalations"]) == 1, what="the new department head"
    )
    assert _reached(stand_in) == [(1, "department_head", "hosp-wu")]
    assert stand_in["awaiting_branch_head"] is True
    shown = await system.routing.get(f"/v1/assignments/{cid}", headers=admin)
    assert (shown.json()["awaiting_branch_head"], shown.json()["escalation_level"]) == (True, 1)

    await _ok(await system.routing.post("/v1/directory/staff", json=NEW_HEAD, headers=admin))
    head = await assignment_when(
        system, cid, lambda d: len(d["escalations"]) == 2, what="the new hospital head"
    )
    assert _reached(head)[-1] == (2, "branch_head", "hosp-head2")
    assert [record["reason"] for record in head["escalations"]] == ["critical_incident"] * 2
    assert "awaiting_branch_head" not in head


@pytest.mark.parametrize("left", ["escalated to nobody", "its head rung withdrawn"])
async def test_a_major_incident_an_older_release_left_unmarked_reaches_the_head_after_a_restart(
    system_factory: SystemFactory, left: str
) -> None:
    """Until 5 December a medical error whose branch had no head was escalated to nobody
    and marked nothing, and until that evening one whose breach to the head was withdrawn
    went back below it unmarked; the releases after mark such work and the queue sweep
    takes it to the head once there is one, but only work they handled themselves: the
    incidents stored before stayed below the head for good. Routing marks them at start."""
    system = await system_factory(routing=FAST_TIMERS)
    admin = _admin(system)
    cid, document = await _medical_error_nobody_above_can_take(system)
    db = routing_db(system)
    # As an older release stored it.
    stored: dict = {"$unset": {"awaiting_branch_head": ""}}
    if left == "its head rung withdrawn":
        taken_back = {
            "level": 2,
            "escalated_to_id": "hosp-head",
            "escalated_to_name": "王院长",
            "escalated_to_role": "branch_head",
            "reason": "sla_breach",
            "escalated_by": "routing",
            "escalated_at": document["created_at"],
            "withdrawn_at": document["created_at"],
            "withdrawn_reason": "acknowledged_on_time",
        }
        stored["$set"] = {"escalations": [taken_back], "escalation_level": 0}
    await db.assignments.update_one({"_id": cid}, stored)
    await _ok(await system.routing.post("/v1/directory/staff", json=NEW_HEAD, headers=admin))

    async with AsyncExitStack() as stack:
        # The upgraded routing starts beside the one running.
        await system.serve_extra(stack, create_routing_app(system.routing_settings))
        head = await assignment_when(
            system,
            cid,
            lambda d: d["escalation_level"] == 2,
            what="the new hospital head",
            timeout_s=20,
        )
    assert _reached(head)[-1] == (2, "branch_head", "hosp-head2")
    assert head["escalations"][-1]["reason"] == "critical_incident"
    assert "awaiting_branch_head" not in head


async def test_a_major_incident_whose_breach_to_the_head_is_withdrawn_goes_back_up_to_the_head(
    system_factory: SystemFactory,
) -> None:
    """Without a head, a medical error stood with 周科长 awaiting one. The new head was
    reached by the acknowledge clock's breach before the sweep came (which then ended the
    mark), and the breach was withdrawn: the acknowledgement had been made in time. The
    incident fell back to 周科长 and stayed there, the head told of a breach and its
    withdrawal only. Now the withdrawal marks it again and the sweep takes it to the head,
    reason ``critical_incident``."""
    clock = ManualClock(MONDAY_10_SHANGHAI)
    # The sweep is run by the test, between the breach and the acknowledgement's news.
    system = await system_factory(
        clock=clock, routing={**FAST_TIMERS, "queue_sweep_interval_s": 3600}
    )
    admin = _admin(system)
    db = routing_db(system)
    await _ok(await system.routing.post("/v1/directory/staff/hosp-head/deactivate", headers=admin))
    incident = received(**MEDICAL_ERROR, received_at=clock.now())
    cid = incident.complaint_id
    async with intake_producer(system) as publish:
        await publish(EventType.COMPLAINT_RECEIVED, incident)
        document = await assignment_when(system, cid, lambda d: d.get("escalations"))
        assert _reached(document) == [(1, "department_head", "hosp-zhou")]
        assert document["awaiting_branch_head"] is True

        await _ok(await system.routing.post("/v1/directory/staff", json=NEW_HEAD, headers=admin))
        due = document["acknowledge_due_at"]
        clock.set(due + MINUTE)
        breached = await assignment_when(
            system, cid, lambda d: len(d["escalations"]) == 2, what="the breach's climb"
        )
        assert _reached(breached)[-1] == (2, "branch_head", "hosp-head2")
        assert breached["escalations"][-1]["reason"] == "sla_breach"
        await major_incidents.follow_up(db=db, settings=system.routing_settings, now=clock.now())
        assert "awaiting_branch_head" not in await assignment_when(system, cid)

        acknowledged = ComplaintAcknowledged(
            **base(incident), acknowledged_by="hosp-zhou", acknowledged_at=due - MINUTE
        )
        await publish(EventType.COMPLAINT_ACKNOWLEDGED, acknowledged)
        withdrawn = await assignment_when(
            system, cid, lambda d: d["escalation_level"] == 1, what="the breach withdrawn"
        )
    assert withdrawn["escalations"][-1]["withdrawn_reason"] == "acknowledged_on_time"
    assert withdrawn.get("awaiting_branch_head") is True

    escalated = await major_incidents.follow_up(
        db=db, settings=system.routing_settings, now=clock.now()
    )
    assert escalated == 1
    head = await assignment_when(system, cid)
    assert _reached(head)[-1] == (2, "branch_head", "hosp-head2")
    assert head["escalations"][-1]["reason"] == "critical_incident"
    assert head["escalation_level"] == 2
    assert "awaiting_branch_head" not in head


async def test_an_escalation_passes_over_a_team_lead_on_leave_to_the_next_person_up(
    system: System,
) -> None:
    """With the only team lead on leave the first rung found nobody, and an escalation used
    it up: level 1 to ``('team_lead', None)``, nobody told."""
    await _ok(
        await system.routing.patch(
            "/v1/directory/staff/lz-gao", json={"status": "on_leave"}, headers=_admin(system)
        )
    )
    cid = await _billing_complaint(system)

    first = await _ok(await _escalate(system, cid))
    assert _reached(first) == [(2, "department_head", "lz-xie")]
    second = await _ok(await _escalate(system, cid, "仍未解决"))
    assert _reached(second)[-1] == (3, "branch_head", "lz-gm")
    top = await _escalate(system, cid, "再次来电")
    assert top.status_code == 409, top.text
    assert "already at the top" in top.json()["detail"]


async def test_a_named_team_lead_on_leave_is_stood_in_for_by_the_departments_other_lead(
    system: System,
) -> None:
    """A chain naming lz-gao, who is on leave, escalates to the billing department's active
    team lead rather than to nobody."""
    admin = _admin(system)
    stand_in = {
        "id": "lz-ma",
        "branch": "LZ",
        "department": "BILLING",
        "name": "马组长",
        "role": "team_lead",
        "capacity": 0,
    }
    await _ok(await system.routing.post("/v1/directory/staff", json=stand_in, headers=admin))
    named_chain = {"escalation_chain": [{"staff_id": "lz-gao"}, {"role": "department_head"}]}
    await _ok(
        await system.routing.patch(
            "/v1/directory/departments/LZ:BILLING", json=named_chain, headers=admin
        )
    )
    await _ok(
        await system.routing.patch(
            "/v1/directory/staff/lz-gao", json={"status": "on_leave"}, headers=admin
        )
    )
    cid = await _billing_complaint(system)

    escalated = await _ok(await _escalate(system, cid))
    assert _reached(escalated) == [(1, "team_lead", "lz-ma")]


async def test_a_manual_escalation_after_the_chain_was_shortened_goes_on_to_the_branch_head(
    system: System,
) -> None:
    """Escalated to the team lead and the department head, then the chain was cut to the
    department head (the branch head implied): level 2 was taken as a position in the new
    chain, whose second step is the branch head, and the escalation was refused as 'already
    at the top'."""
    cid = await _billing_complaint(system)
    await _ok(await _escalate(system, cid))
    twice = await _ok(await _escalate(system, cid, "仍未解决"))
    assert _reached(twice) == [(1, "team_lead", "lz-gao"), (2, "department_head", "lz-xie")]
    await _ok(
        await system.routing.patch(
            "/v1/directory/departments/LZ:BILLING", json=SHORT_CHAIN, headers=_admin(system)
        )
    )

    third = await _ok(await _escalate(system, cid, "客户投诉至总经理"))
    assert (third["escalation_level"], _reached(third)[-1]) == (3, (3, "branch_head", "lz-gm"))
    top = await _escalate(system, cid, "再次来电")
    assert top.status_code == 409, top.text


async def test_a_breach_after_the_chain_was_shortened_climbs_to_the_branch_head(
    system_factory: SystemFactory,
) -> None:
    """The same on the timer path: breaches found level 2 at the top of the two-step chain
    and kept the complaint below the branch head for good."""
    clock = ManualClock(MONDAY_10_SHANGHAI)
    system = await system_factory(clock=clock, routing=FAST_TIMERS)
    cid = await _billing_complaint(system, received_at=clock.now())
    await _ok(await _escalate(system, cid))
    await _ok(await _escalate(system, cid, "仍未解决"))
    await _ok(
        await system.routing.patch(
            "/v1/directory/departments/LZ:BILLING", json=SHORT_CHAIN, headers=_admin(system)
        )
    )
    document = await assignment_when(system, cid)

    clock.set(document["acknowledge_due_at"] + MINUTE)
    document = await assignment_when(
        system,
        cid,
        lambda d: d["clocks"]["acknowledge"]["breach_count"] == 1,
        what="the acknowledge clock breached",
    )
    assert document["escalation_level"] == 3
    assert document["escalations"][-1]["reason"] == "sla_breach"
    assert _reached(document)[-1] == (3, "branch_head", "lz-gm")


async def test_a_major_incident_found_after_the_chain_was_shortened_still_reaches_the_head(
    system_factory: SystemFactory,
) -> None:
    """Level 2 (the department head) compared with the shortened chain's branch-head rung,
    2, read as 'there already': a complaint found a safety risk reached no branch head."""
    clock = ManualClock(MONDAY_10_SHANGHAI)
    system = await system_factory(clock=clock, routing=FAST_TIMERS)
    head = token(system.intake_settings, branches=["LZ"], roles=("supervisor",), subject="head")
    cid = (await create_complaint(system, head))["id"]
    await assignment_when(system, cid, lambda d: d.get("owner_id"))
    await _ok(await _escalate(system, cid))
    await _ok(await _escalate(system, cid, "仍未解决"))
    await _ok(
        await system.routing.patch(
            "/v1/directory/departments/LZ:BILLING", json=SHORT_CHAIN, headers=_admin(system)
        )
    )

    clock.advance(timedelta(hours=1))
    body = {"flags": ["safety_risk"], "reason": "涉及人身安全"}
    await command(system, f"/v1/complaints/{cid}/reclassify", body, head)
    document = await assignment_when(
        system, cid, lambda d: d.get("major_incident"), what="the major incident"
    )
    assert _reached(document)[-1] == (3, "branch_head", "lz-gm")
    assert document["escalations"][-1]["reason"] == "critical_incident"
    record = await complaint_when(
        system,
        cid,
        head,
        lambda c: c["escalation_level"] == 3,
        what="the head on the record",
        timeout_s=20,
    )
    assert record["escalation"]["escalated_to_id"] == "lz-gm"


async def test_a_major_incident_reopened_below_the_head_goes_to_the_head_at_once(
    system_factory: SystemFactory,
) -> None:
    """A medical error the hospital resolved while nobody above the ward could take it (both
    posts vacant) is reopened once a department head and a hospital head are appointed. The
    reopen climbed one rung, to the new department head, and the incident stayed below the
    head for good (the branch had one, so nothing marked it to wait for one). Now the reopen
    takes it to the head at once."""
    # The sweep is run by the test, once the posts are filled.
    system = await system_factory(routing={**FAST_TIMERS, "queue_sweep_interval_s": 3600})
    admin = _admin(system)
    db = routing_db(system)
    cid, _ = await _medical_error_nobody_above_can_take(system)
    supervisor = token(system.intake_settings, roles=("supervisor",))
    await command(system, f"/v1/complaints/{cid}/acknowledge", {}, supervisor)
    await command(system, f"/v1/complaints/{cid}/resolve", {"summary": "已致歉并赔偿"}, supervisor)
    await assignment_when(system, cid, lambda d: d["status"] == "resolved", what="resolved")

    await _ok(
        await system.routing.post("/v1/directory/staff", json=NEW_DEPARTMENT_HEAD, headers=admin)
    )
    await _ok(await system.routing.post("/v1/directory/staff", json=NEW_HEAD, headers=admin))
    await major_incidents.follow_up(
        db=db, settings=system.routing_settings, now=SystemClock().now()
    )
    finished = await assignment_when(system, cid)
    assert ("awaiting_branch_head" not in finished, finished["escalations"]) == (True, [])

    await command(system, f"/v1/complaints/{cid}/reopen", {"reason": "家属仍不满意"}, supervisor)
    reopened = await assignment_when(
        system, cid, lambda d: d["status"] == "open" and d["escalations"], what="reopened"
    )
    assert _reached(reopened) == [(2, "branch_head", "hosp-head2")]
    assert reopened["escalations"][-1]["reason"] == "reopened"
    assert "awaiting_branch_head" not in reopened
    await complaint_when(
        system,
        cid,
        supervisor,
        lambda c: (c.get("escalation") or {}).get("escalated_to_id") == "hosp-head2",
        what="intake's record at the head",
    )
