"""Integration: intake's record shows the directory's current names of departments and people.

Routing announces every change of a department (``department.updated``) and a staff member
(``staff.updated``); intake shows the newest name on the complaints not finished for good
(the handling department, the owner, the escalation target), never an older one delivered
late, and a withdrawn, rejected or closed complaint keeps the names it ended with. Webhook
subscriptions of a branch get its own branch's announcements only.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta

import pytest

from complaints_shared.envelope import CloudEvent
from complaints_shared.events import (
    ComplaintAssigned,
    ComplaintEscalated,
    DepartmentUpdated,
    EventType,
    FollowupCompleted,
    FollowupOutcome,
)
from complaints_shared.mongo import create_mongo_client, service_database
from intake import directory_names, projections
from intake.main import create_app as create_intake_app
from tests.support.http import command, complaint_of, complaint_when, create_complaint, token
from tests.support.kafka import handled_count, publish, short_type
from tests.support.system import System, SystemFactory
from tests.support.waits import eventually
from tests.support.webhooks import receiver, serve_webhooks, subscribe

pytestmark = pytest.mark.integration


def _intake_db(system: System):
    return system.mongo[system.intake_settings.database_name()]


async def _assigned(system: System, headers: dict, **overrides) -> dict:
    created = await create_complaint(system, headers, **overrides)
    return await complaint_when(
        system, created["id"], headers, lambda c: c["assignment"], what="assignment"
    )


async def _renamed(system: System, path: str, name: str, admin: dict) -> dict:
    response = await system.routing.patch(path, json={"name": name}, headers=admin)
    assert response.status_code == 200, response.text
    return response.json()


async def _billing_renamed_on(system: System, complaint_id: str, headers: dict) -> dict:
    """LZ:BILLING renamed 账务中心 by routing's administrator, once the complaint shows it;
    the department as routing answered."""
    admin = token(system.routing_settings)
    renamed = await _renamed(system, "/v1/directory/departments/LZ:BILLING", "账务中心", admin)
    await complaint_when(
        system,
        complaint_id,
        headers,
        lambda c: c["assignment"]["department_name"] == "账务中心",
        what="the department's new name",
    )
    return renamed


async def _applied(system: System, key: str, name: str) -> dict:
    """Intake's announcement of ``key`` once the complaints were renamed to ``name``."""

    async def probe() -> dict | None:
        kept = await _intake_db(system).directory_names.find_one({"_id": key})
        return kept if kept and kept.get("applied_name") == name else None

    return await eventually(probe, what=f"{key} renamed to {name} in intake")


def _published_before_the_rename(
    complaint_id: str, before: dict, stored: dict
) -> ComplaintAssigned:
    """Routing's next assignment of the complaint with the names it had before the rename
    (``before``: its assignment as intake showed it; ``stored``: intake's document)."""
    return ComplaintAssigned(
        complaint_id=complaint_id,
        org="demo",
        branch="LZ",
        department="LZ:BILLING",
        department_name=before["department_name"],
        owner_id=before["owner_id"],
        owner_name=before["owner_name"],
        rule_id=before["rule_id"],
        rule_version=before["rule_version"],
        assigned_at=datetime.now(UTC),
        assignment_sequence=stored["assignment_sequence"] + 1,
    )


async def test_a_renamed_department_and_owner_show_on_the_open_complaint_not_the_withdrawn(
    system: System,
) -> None:
    admin = token(system.routing_settings)
    supervisor = token(system.intake_settings, roles=("supervisor",))
    open_one = await _assigned(system, supervisor, subject="账单多扣")
    withdrawn = await _assigned(system, supervisor, subject="账单多扣二")
    await command(system, f"/v1/complaints/{withdrawn['id']}/withdraw", {}, supervisor)
    department = open_one["assignment"]["department"]
    owner = open_one["assignment"]["owner_id"]
    assert (department, owner) == ("LZ:BILLING", "lz-chen")

    await _renamed(system, f"/v1/directory/departments/{department}", "账务中心", admin)
    await _renamed(system, f"/v1/directory/staff/{owner}", "陈静(已改名)", admin)

    shown = await complaint_when(
        system,
        open_one["id"],
        supervisor,
        lambda c: (
            c["assignment"]["owner_name"] == "陈静(已改名)"
            and c["assignment"]["department_name"] == "账务中心"
        ),
        what="the new names on intake's record",
    )
    assert shown["status"] == open_one["status"]
    await _applied(system, "department:demo:LZ:BILLING", "账务中心")
    await _applied(system, "staff:demo:lz-chen", "陈静(已改名)")
    kept = await complaint_of(system, withdrawn["id"], supervisor)
    assert kept["status"] == "withdrawn"
    assert kept["assignment"] == withdrawn["assignment"], "the names it ended with"
    listed = await system.intake.get(
        "/v1/complaints", params={"department": department}, headers=supervisor
    )
    assert {open_one["id"], withdrawn["id"]} <= {item["id"] for item in listed.json()["items"]}


async def test_an_older_announcement_or_assignment_delivered_late_brings_no_old_name_back(
    system: System,
) -> None:
    supervisor = token(system.intake_settings, roles=("supervisor",))
    complaint = await _assigned(system, supervisor)
    before = complaint["assignment"]
    # The rename's announcement is counted once handled to the end, after the record shows it.
    handled = handled_count("intake", EventType.DEPARTMENT_UPDATED)
    renamed = await _billing_renamed_on(system, complaint["id"], supervisor)

    # The announcement of the version before, delivered again after the rename.
    older = DepartmentUpdated(
        org="demo",
        branch="LZ",
        department="LZ:BILLING",
        name=before["department_name"],
        kind=renamed["kind"],
        version=renamed["version"] - 1,
        updated_at=datetime(2026, 1, 1, tzinfo=UTC),
    )
    await publish(system, (EventType.DEPARTMENT_UPDATED, older), service="routing")
    await eventually(
        lambda: handled_count("intake", EventType.DEPARTMENT_UPDATED) >= handled + 2,
        what="the rename's and the older announcement handled",
    )
    kept = await _intake_db(system).directory_names.find_one({"_id": "department:demo:LZ:BILLING"})
    assert (kept["name"], kept["version"]) == ("账务中心", renamed["version"])
    shown = await complaint_of(system, complaint["id"], supervisor)
    assert shown["assignment"]["department_name"] == "账务中心"

    # An assignment routing published before the rename, delivered after it (a complaint's
    # events ride another partition than its department's).
    stored = await _intake_db(system).complaints.find_one({"_id": complaint["id"]})
    late = _published_before_the_rename(complaint["id"], before, stored)
    await publish(system, (EventType.COMPLAINT_ASSIGNED, late), service="routing")

    async def applied() -> dict | None:
        document = await _intake_db(system).complaints.find_one({"_id": complaint["id"]})
        return document if document["assignment_sequence"] == late.assignment_sequence else None

    await eventually(applied, what="the late assignment applied")
    # Corrected right after the write that put the old name on (``directory_names.correct``).
    await complaint_when(
        system,
        complaint["id"],
        supervisor,
        lambda c: c["assignment"]["department_name"] == "账务中心",
        what="the new name shown again after the late assignment",
    )


async def test_a_replica_whose_copy_of_the_names_was_older_is_corrected_when_the_rename_settles(
    system_factory: SystemFactory,
) -> None:
    """A replica keeps the announced names in the process and checks them for a new one every
    ``DIRECTORY_NAMES_FRESH_S`` (no read per assignment event). An assignment published before
    a rename and applied by a replica whose copy was older than the rename shows the old name
    until the rename's complaints are looked over again (``settle_at``): then the new one."""
    fresh_s, skew_s = 15.0, 0.5
    system = await system_factory(
        intake={"directory_names_fresh_s": fresh_s, "directory_names_clock_skew_s": skew_s}
    )
    admin = token(system.routing_settings)
    supervisor = token(system.intake_settings, roles=("supervisor",))
    complaint = await _assigned(system, supervisor)
    before = complaint["assignment"]
    # The other replica: a client of its own, its copy of the names read before the rename.
    other = create_mongo_client(settings=system.intake_settings)
    try:
        other_db = service_database(client=other, settings=system.intake_settings)
        copy = await directory_names.COPIES.names(db=other_db, org="demo", fresh_s=fresh_s)
        assert copy.departments.get("LZ:BILLING") != "账务中心"

        await _renamed(system, "/v1/directory/departments/LZ:BILLING", "账务中心", admin)
        kept = await _applied(system, "department:demo:LZ:BILLING", "账务中心")
        assert kept["settle_at"] > datetime.now(UTC)
        stored = await _intake_db(system).complaints.find_one({"_id": complaint["id"]})
        late = _published_before_the_rename(complaint["id"], before, stored)
        event = CloudEvent.new(event_type=EventType.COMPLAINT_ASSIGNED, source="routing", data=late)
        await projections.apply_assigned(
            db=other_db,
            settings=system.intake_settings,
            event=event,
            data=late,
            now=datetime.now(UTC),
        )
    finally:
        await other.close()
    shown = await complaint_of(system, complaint["id"], supervisor)
    assert shown["assignment"]["department_name"] == before["department_name"], "its copy's"

    settled = await complaint_when(
        system,
        complaint["id"],
        supervisor,
        lambda c: c["assignment"]["department_name"] == "账务中心",
        what="the new name once the rename settled",
        timeout_s=fresh_s + skew_s + 15,
    )
    assert settled["assignment"]["owner_id"] == before["owner_id"]

    async def looked_over() -> dict | None:
        kept = await _intake_db(system).directory_names.find_one(
            {"_id": "department:demo:LZ:BILLING"}
        )
        return kept if "settle_at" not in kept else None

    assert (await eventually(looked_over, what="the look-over done"))["settled_name"] == "账务中心"


async def test_a_rename_applied_by_the_version_before_is_looked_over_at_the_next_start(
    system_factory: SystemFactory,
) -> None:
    """A rolling upgrade: a replica of the version before applied a rename with no look-over
    planned (no ``settle_at``), while a replica of this version, its copy older, wrote the
    old name onto a complaint. The next start of a replica plans the look-over of every
    name no look-over has shown yet, and the complaint shows the new name."""
    system = await system_factory(
        intake={"directory_names_fresh_s": 0.5, "directory_names_clock_skew_s": 0.5}
    )
    supervisor = token(system.intake_settings, roles=("supervisor",))
    complaint = await _assigned(system, supervisor)
    old_name = complaint["assignment"]["department_name"]
    # What the version before left: the announcement applied, nothing planned.
    await _intake_db(system).directory_names.update_one(
        {"_id": "department:demo:LZ:BILLING"},
        {
            "$set": {
                "kind": "department",
                "org": "demo",
                "id": "LZ:BILLING",
                "name": "账务中心",
                "version": 99,
                "applied_name": "账务中心",
            },
            "$unset": {"settle_at": "", "settled_name": ""},
        },
        upsert=True,
    )
    # The running replica has nothing to look over.
    assert await directory_names.settle(db=_intake_db(system), now=datetime.now(UTC)) == 0
    shown = await complaint_of(system, complaint["id"], supervisor)
    assert shown["assignment"]["department_name"] == old_name

    async with AsyncExitStack() as stack:
        await system.serve_extra(stack, create_intake_app(system.intake_settings))
        await complaint_when(
            system,
            complaint["id"],
            supervisor,
            lambda c: c["assignment"]["department_name"] == "账务中心",
            what="the new name once the next start looked it over",
            timeout_s=20,
        )

    async def settled() -> dict | None:
        kept = await _intake_db(system).directory_names.find_one(
            {"_id": "department:demo:LZ:BILLING"}
        )
        return kept if kept.get("settled_name") == "账务中心" and "settle_at" not in kept else None

    await eventually(settled, what="the look-over recorded")


async def test_a_renamed_escalation_target_shows_on_the_escalated_complaint(
    system: System,
) -> None:
    admin = token(system.routing_settings)
    supervisor = token(system.intake_settings, roles=("supervisor",))
    complaint = await _assigned(system, supervisor)
    escalated = ComplaintEscalated(
        complaint_id=complaint["id"],
        org="demo",
        branch="LZ",
        level=1,
        escalated_to_id="lz-gm",
        escalated_to_name="马总经理",
        escalated_to_role="branch_head",
        reason="manual",
        escalated_by="sup1",
        escalated_at=datetime.now(UTC),
    )
    await publish(system, (EventType.COMPLAINT_ESCALATED, escalated), service="routing")
    await complaint_when(
        system, complaint["id"], supervisor, lambda c: c["escalation"], what="the escalation"
    )

    await _renamed(system, "/v1/directory/staff/lz-gm", "马总(新)", admin)

    shown = await complaint_when(
        system,
        complaint["id"],
        supervisor,
        lambda c: c["escalation"]["escalated_to_name"] == "马总(新)",
        what="the escalation target's new name",
    )
    assert shown["escalation_level"] == 1
    steps = (await _intake_db(system).complaints.find_one({"_id": complaint["id"]}))[
        "escalation_steps"
    ]
    assert [step["escalated_to_name"] for step in steps] == ["马总(新)"]


async def test_a_branch_subscription_gets_its_own_branchs_directory_announcements_only(
    system: System,
) -> None:
    admin = token(system.intake_settings)
    async with AsyncExitStack() as stack:
        lanzhou = await stack.enter_async_context(receiver())
        hospital = await stack.enter_async_context(receiver())
        webhooks = await serve_webhooks(stack, system)
        directory = ["org.complaintdesk.department.*", "org.complaintdesk.staff.*"]
        await subscribe(webhooks, admin, url=lanzhou.url, event_types=directory, branch="LZ")
        await subscribe(webhooks, admin, url=hospital.url, event_types=directory, branch="HOSP")
        await _renamed(system, "/v1/directory/departments/LZ:BILLING", "账务中心", admin)
        await _renamed(system, "/v1/directory/staff/lz-chen", "陈静(已改名)", admin)
        await _renamed(system, "/v1/directory/staff/hosp-sun", "孙丽(已改名)", admin)
        await eventually(
            lambda: asyncio.sleep(0, len(lanzhou.delivered_ids()) >= 2 and hospital.requests),
            what="the announcements delivered",
        )
    by_type = {short_type(body["type"]): body for body in lanzhou.bodies()}
    assert set(by_type) == {"department.updated", "staff.updated"}
    assert by_type["department.updated"]["subject"] == "department:demo:LZ:BILLING"
    person = by_type["staff.updated"]["data"]
    assert person["name"] == "陈静(已改名)" and person["department"] == "LZ:BILLING"
    assert not {"capacity", "skills", "status", "languages"} & set(person), "names only"
    [theirs] = hospital.bodies()
    assert (short_type(theirs["type"]), theirs["data"]["staff_id"]) == ("staff.updated", "hosp-sun")


async def _escalated_to_the_team_lead(
    system: System, supervisor: dict, admin: dict, *, subject: str
) -> str:
    """A billing complaint in LZ escalated by hand to its team lead, 高组长 (lz-gao); its id."""
    cid = (await _assigned(system, supervisor, subject=subject))["id"]
    escalated = await system.routing.post(
        f"/v1/assignments/{cid}/escalate", json={"reason": "客户要求主管处理"}, headers=admin
    )
    assert escalated.status_code == 200, escalated.text
    await complaint_when(
        system,
        cid,
        supervisor,
        lambda c: (c.get("escalation") or {}).get("escalated_to_id") == "lz-gao",
        what="the escalation to the team lead",
    )
    return cid


async def test_a_complaint_reopened_after_it_was_closed_shows_the_names_of_now(
    system: System,
) -> None:
    """Closed, a complaint keeps the names it ended with; reopened, it is worked again and
    shows the directory's newest. Routing's announcements after the reopen brought the
    owner's and department's back, but a rung of the escalation none re-announced (the team
    lead climbed past) kept the name renamed while it was closed."""
    admin = token(system.routing_settings)
    supervisor = token(system.intake_settings, roles=("supervisor",))
    cid = await _escalated_to_the_team_lead(system, supervisor, admin, subject="账单多扣三")
    base = f"/v1/complaints/{cid}"
    await command(system, f"{base}/resolve", {"summary": "已退还多收费用"}, supervisor)
    await command(system, f"{base}/close", {"reason": "客户电话确认满意"}, supervisor)

    await _renamed(system, "/v1/directory/staff/lz-gao", "高组长(已改名)", admin)
    await _applied(system, "staff:demo:lz-gao", "高组长(已改名)")
    closed = await _intake_db(system).complaints.find_one({"_id": cid})
    assert closed["status"] == "closed"
    assert [step["escalated_to_name"] for step in closed["escalation_steps"]] == ["高组长"]

    reopened = await command(system, f"{base}/reopen", {"reason": "客户仍被扣费"}, supervisor)
    assert reopened["escalation"]["escalated_to_name"] == "高组长(已改名)"
    # Routing's reopen climbs a rung (the department head); the team lead's stays renamed.
    climbed = await complaint_when(
        system,
        cid,
        supervisor,
        lambda c: (c.get("escalation") or {}).get("escalated_to_id") == "lz-xie",
        what="the reopen's climb",
    )
    assert climbed["escalation_level"] == 2
    stored = await _intake_db(system).complaints.find_one({"_id": cid})
    names = {
        step["escalated_to_id"]: step["escalated_to_name"] for step in stored["escalation_steps"]
    }
    assert names["lz-gao"] == "高组长(已改名)"


async def test_a_complaint_an_unsatisfied_answer_reopens_after_it_was_closed_shows_the_names_of_now(
    system: System,
) -> None:
    """The same through follow-up: closed when the first call reached nobody, reopened by
    the week-later call's "unsatisfied"; the team lead renamed meanwhile."""
    admin = token(system.routing_settings)
    supervisor = token(system.intake_settings, roles=("supervisor",))
    cid = await _escalated_to_the_team_lead(system, supervisor, admin, subject="账单多扣四")
    await command(system, f"/v1/complaints/{cid}/resolve", {"summary": "已退还"}, supervisor)

    def call(sequence: int, outcome: FollowupOutcome) -> FollowupCompleted:
        answered = outcome is FollowupOutcome.UNSATISFIED
        return FollowupCompleted(
            complaint_id=cid,
            org="demo",
            branch="LZ",
            followup_id=f"{cid}:r1:{sequence}",
            resolution_number=1,
            sequence=sequence,
            outcome=outcome,
            score=2 if answered else None,
            problem_solved=False if answered else None,
            completed_at=datetime.now(UTC),
        )

    await publish(
        system,
        (EventType.FOLLOWUP_COMPLETED, call(1, FollowupOutcome.NO_RESPONSE)),
        service="followup",
    )
    await complaint_when(system, cid, supervisor, lambda c: c["status"] == "closed", what="closed")
    await _renamed(system, "/v1/directory/staff/lz-gao", "高组长(回访后改名)", admin)
    await _applied(system, "staff:demo:lz-gao", "高组长(回访后改名)")

    await publish(
        system,
        (EventType.FOLLOWUP_COMPLETED, call(2, FollowupOutcome.UNSATISFIED)),
        service="followup",
    )
    reopened = await complaint_when(
        system, cid, supervisor, lambda c: c["status"] == "reopened", what="reopened"
    )
    assert reopened["reopen_count"] == 1

    async def renamed() -> dict | None:
        stored = await _intake_db(system).complaints.find_one({"_id": cid})
        names = {
            step["escalated_to_id"]: step["escalated_to_name"]
            for step in stored["escalation_steps"]
        }
        return stored if names.get("lz-gao") == "高组长(回访后改名)" else None

    await eventually(renamed, what="the team lead's rung renamed")


async def test_a_name_shown_late_does_not_move_the_complaints_change_time_back(
    system: System,
) -> None:
    """A rename reaches a complaint with the time its pass (or the change it follows)
    started. A resolution written meanwhile had stamped the complaint later; the rename
    stamped it back, and the report's rollup, which reads what changed since its last pass,
    never counted that resolution. The change time now only moves forward."""
    supervisor = token(system.intake_settings, roles=("supervisor",))
    complaint = await _assigned(system, supervisor)
    await _billing_renamed_on(system, complaint["id"], supervisor)
    complaints = _intake_db(system).complaints
    changed_at = datetime.now(UTC).replace(microsecond=0)
    # As a complaint still showing the old name, written by a change made just now.
    await complaints.update_one(
        {"_id": complaint["id"]},
        {
            "$set": {
                "assignment.department_name": complaint["assignment"]["department_name"],
                "updated_at": changed_at,
            },
            "$inc": {"version": 1},
        },
    )
    await directory_names.shown_again_by_id(
        db=_intake_db(system),
        complaint_id=complaint["id"],
        now=changed_at - timedelta(minutes=1),  # when the renaming work began
        settings=system.intake_settings,
    )
    shown = await complaints.find_one({"_id": complaint["id"]})
    assert shown["assignment"]["department_name"] == "账务中心"
    assert shown["updated_at"] == changed_at
