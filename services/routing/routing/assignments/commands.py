"""What supervisors do to an assignment: reassign, escalate, set responsibility, file the report.

Each is one change through the aggregate kernel with its event, so the record and
the announcement cannot disagree, and each asks the transition table first (an
illegal one is a 409 naming the status and the command); a reassignment moves
the owner slot in the same write, which keeps both owners' loads right.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from complaints_shared.aggregate import Decide, Decision, decided
from complaints_shared.auth import Principal
from complaints_shared.events import (
    ComplaintReassigned,
    ComplaintResponsibilitySet,
    EventType,
    SlaClock,
)
from complaints_shared.idempotency import CommandKey
from complaints_shared.mongo import merge_updates
from complaints_shared.problems import conflict, invalid, not_found
from routing.assignments import (
    lifecycle,
    owed_drains,
    owners,
    queue,
    routing_context,
    store,
    unroutable,
)
from routing.assignments.lifecycle import Command
from routing.assignments.models import (
    AssignmentRead,
    AssignmentStatus,
    EscalateRequest,
    ReassignRequest,
    RegulatoryReportRequest,
    ResponsibilityRequest,
)
from routing.directory import store as directory_store
from routing.directory.escalation import vacant_above
from routing.directory.models import DepartmentRead, StaffRead, StaffStatus
from routing.settings import RoutingSettings
from routing.sla import clocks as sla_clocks

# Supervisor actions one assignment takes at most (the regulatory filing aside). Each is
# announced, and intake keeps every announcement on the complaint's timeline: reassigning
# back and forth without end would take that document past the server's 16 MB.
SUPERVISOR_ACTIONS = "supervisor_actions"
MAX_SUPERVISOR_ACTIONS = 500


async def _changed(
    db: AsyncDatabase,
    settings: RoutingSettings,
    principal: Principal,
    complaint_id: str,
    decide: Decide,
    now: datetime,
    /,
    *,
    command_key: CommandKey | None,
    counted: bool = True,
) -> AssignmentRead:
    """One supervisor action within the caller's visibility; another branch's id is a 404.
    A ``counted`` one past ``MAX_SUPERVISOR_ACTIONS`` is a 409. A ``command_key`` applied
    before answers the assignment as it is (``replayed``)."""

    async def bounded(current: dict[str, Any]) -> Decision | None:
        taken = current.get(SUPERVISOR_ACTIONS, 0)
        if counted and taken >= MAX_SUPERVISOR_ACTIONS:
            raise conflict(
                f"complaint {complaint_id} has had {taken} supervisor actions, the most one "
                "may; it can still be finished through intake"
            )
        decision = await decided(decide, current)
        if decision is not None and counted:
            decision.update = merge_updates(decision.update, {"$inc": {SUPERVISOR_ACTIONS: 1}})
        return decision

    document = await store.change(
        db=db,
        settings=settings,
        complaint_id=complaint_id,
        decide=bounded,
        now=now,
        scope=principal.scope_filter(),
        command_key=command_key,
    )
    if document is None:
        raise not_found(what="assignment", identifier=complaint_id)
    return store.to_read(document)


async def _target_department(
    *, db: AsyncDatabase, principal: Principal, request: ReassignRequest, owner: StaffRead | None
) -> DepartmentRead:
    department_id = request.department or (owner.department_id if owner else None)
    assert department_id is not None  # the request model demands owner_id or department
    department = await directory_store.visible_department(
        db=db, principal=principal, department_id=department_id
    )
    # ``active`` says whether it takes work: not while its branch is closed either.
    if department is None or not department.active:
        raise invalid(
            "department",
            f"unknown or inactive department {department_id!r} (or its branch is closed)",
        )
    return department


async def _target_owner(
    *, db: AsyncDatabase, principal: Principal, request: ReassignRequest
) -> StaffRead | None:
    if request.owner_id is None:
        return None
    document = await directory_store.visible_staff(
        db=db, principal=principal, staff_id=request.owner_id
    )
    if document is None:
        raise invalid("owner_id", f"unknown staff member {request.owner_id!r}")
    owner = directory_store.staff_read(document)
    if owner.status is not StaffStatus.ACTIVE:
        raise invalid("owner_id", f"{request.owner_id} is {owner.status.value}: no new work")
    if request.department is not None and owner.department_id != request.department:
        raise invalid("owner_id", f"{request.owner_id} works in {owner.department_id}")
    return owner


async def reassign(
    *,
    db: AsyncDatabase,
    settings: RoutingSettings,
    principal: Principal,
    complaint_id: str,
    request: ReassignRequest,
    now: datetime,
    command_key: CommandKey | None = None,
) -> AssignmentRead:
    """Transfer to a named person, or to a department where it is that owner's turn.

    An unroutable complaint is routed there (clocks, policy and escalation as if a rule
    had chosen that department).
    """
    visible = await store.get_visible(db=db, principal=principal, complaint_id=complaint_id)
    if command_key is not None and command_key.check(visible.get("applied_events", [])):
        # Before the checks of the target: they judge the directory as it is now, and a
        # target gone on leave since the move must not turn its retry into a 422.
        command_key.replayed = True
        return store.to_read(visible)
    owner = await _target_owner(db=db, principal=principal, request=request)
    department = await _target_department(db=db, principal=principal, request=request, owner=owner)
    if visible["status"] == unroutable.STATE:
        routed = await unroutable.leave(
            db=db,
            settings=settings,
            complaint_id=complaint_id,
            now=now,
            actor=principal.subject,
            reason=request.reason,
            department=department,
            owner=owner,
            command_key=command_key,
        )
        if routed is not None:
            return store.to_read(routed)

    async def after_move(document: dict[str, Any], previous: dict[str, Any]) -> None:
        # Owed before any write: a failure below (logged by the kernel) leaves both drains
        # to the queue sweep and the load hints to ``owners.reconcile_load_hints``.
        if previous.get("department"):
            owed_drains.owe(db=db, org=principal.org, department_id=previous["department"])
        if document["status"] == AssignmentStatus.QUEUED.value:
            owed_drains.owe(db=db, org=principal.org, department_id=document["department"])
        if document.get("owner_id"):
            await directory_store.record_assignment(
                db=db,
                org=principal.org,
                staff_id=document["owner_id"],
                slot=document.get("owner_slot_no"),
                at=now,
            )
        await queue.offer_freed_capacity(db=db, settings=settings, previous=previous, now=now)

    async def decide(current: dict[str, Any]) -> Decision:
        # Illegal on finished work whatever the outcome: ask before choosing anyone.
        lifecycle.moved(current, Command.REASSIGN)
        if owner is not None and owner.id == current.get("owner_id"):
            raise conflict(f"complaint {complaint_id} is already with {owner.id}")
        same_department = department.id == current["department"]
        if owner is not None:
            choice = await owners.forced_owner(db=db, org=principal.org, staff=owner)
        else:
            choice = await owners.pick_owner(
                db=db,
                org=principal.org,
                department_id=department.id,
                required_skill=current.get("required_skill") if same_department else None,
                exclude=frozenset({current.get("owner_id") or ""}),
            )
        decision = _reassignment(current, department, choice, principal, request.reason, now)
        decision.effects = [lambda document: after_move(document, current)]
        return decision

    return await _changed(
        db, settings, principal, complaint_id, decide, now, command_key=command_key
    )


def _reassignment(
    current: dict[str, Any],
    department: DepartmentRead,
    choice: owners.OwnerChoice | None,
    principal: Principal,
    reason: str,
    now: datetime,
) -> Decision:
    set_fields: dict[str, Any] = {
        "department": department.id,
        "department_name": department.name,
        "owner_id": choice.staff.id if choice else None,
        "owner_name": choice.staff.name if choice else None,
        # A supervisor's choice, never the out-of-hours rule's (it stayed true until 5 December).
        "duty_officer": False,
    }
    command = Command.REASSIGN if choice is not None else Command.REASSIGN_TO_QUEUE
    set_fields.update(lifecycle.moved(current, command)["$set"])
    if choice is None:
        set_fields.update(queued_at=now)
        slot_update = owners.FREE_SLOT
        if current.get("owner_id") and department.id == current["department"]:
            # Taken off its owner, it must not go straight back to them once their slot is
            # free (until 5 December the drain after this write gave it back at once).
            set_fields[store.NOT_FOR_OWNER] = {"owner_id": current["owner_id"], "queued_at": now}
    else:
        set_fields.update(assigned_at=now)
        set_fields.update(owners.slot_fields(current["org"], choice.staff.id, choice.slot))
        slot_update = {}
    if department.id != current["department"]:
        # The rule's skill was for the department it chose; its later changes no longer apply.
        set_fields.update({"required_skill": None, store.SKILL_RULE_VERSION: None})
    set_fields.update(lifecycle.numbered(current))
    moved = {**current, **set_fields}
    reassigned = ComplaintReassigned(
        complaint_id=current["_id"],
        org=current["org"],
        branch=current["branch"],
        from_department=current["department"],
        from_owner_id=current.get("owner_id"),
        department=department.id,
        department_name=department.name,
        owner_id=set_fields["owner_id"],
        owner_name=set_fields["owner_name"],
        reason=reason,
        reassigned_by=principal.subject,
        reassigned_at=now,
        assignment_sequence=set_fields["assignment_sequence"],
    )
    events = [(EventType.COMPLAINT_REASSIGNED, reassigned)]
    if choice is None:
        set_fields.update(lifecycle.numbered(set_fields))  # the queueing comes after it
        events.append((EventType.COMPLAINT_QUEUED, lifecycle.queued_event(moved | set_fields)))
    update = merge_updates(
        {"$set": set_fields},
        slot_update,
        store.history(
            at=now,
            action="reassigned",
            actor=principal.subject,
            reason=reason,
            from_owner_id=current.get("owner_id"),
            owner_id=set_fields["owner_id"],
            department=department.id,
        ),
    )
    return Decision(update, events)


async def escalate(
    *,
    db: AsyncDatabase,
    settings: RoutingSettings,
    principal: Principal,
    complaint_id: str,
    request: EscalateRequest,
    now: datetime,
    command_key: CommandKey | None = None,
) -> AssignmentRead:
    """One rung up the handling department's chain, by hand."""

    async def decide(current: dict[str, Any]) -> Decision:
        status = lifecycle.moved(current, Command.ESCALATE)
        # The chain of the department handling it now: a reassignment may have landed
        # since the request began, or between a lost write and this retry.
        targets = await routing_context.escalation_targets(
            db=db, org=principal.org, department_id=current["department"]
        )
        update, events = lifecycle.escalate_one_level(
            current,
            targets=targets,
            reason="manual",
            by=principal.subject,
            at=now,
            note=request.reason,
        )
        if not events:
            chain = f"{current['department']}'s chain"
            if vacant_above(targets, reached=lifecycle.reached(current)):
                raise conflict(f"complaint {complaint_id}: nobody above it on {chain} is available")
            raise conflict(f"complaint {complaint_id} is already at the top of {chain}")
        history = store.history(
            at=now, action="escalated", actor=principal.subject, note=request.reason
        )
        return Decision(merge_updates(status, update, history), events)

    return await _changed(
        db, settings, principal, complaint_id, decide, now, command_key=command_key
    )


async def set_responsibility(
    *,
    db: AsyncDatabase,
    settings: RoutingSettings,
    principal: Principal,
    complaint_id: str,
    request: ResponsibilityRequest,
    now: datetime,
    command_key: CommandKey | None = None,
) -> AssignmentRead:
    """责任部门 set by a supervisor; reported apart from the handling department."""
    await store.get_visible(db=db, principal=principal, complaint_id=complaint_id)
    department = await directory_store.visible_department(
        db=db, principal=principal, department_id=request.responsible_department
    )
    if department is None:
        raise invalid(
            "responsible_department", f"unknown department {request.responsible_department!r}"
        )

    async def decide(current: dict[str, Any]) -> Decision:
        status = lifecycle.moved(current, Command.SET_RESPONSIBILITY)
        party = request.responsible_party
        set_at = store.setting_stamp(current, now=now)
        event = ComplaintResponsibilitySet(
            complaint_id=current["_id"],
            org=current["org"],
            branch=current["branch"],
            responsible_department=department.id,
            responsible_party=party,
            set_by=principal.subject,
            set_at=set_at,
        )
        update = merge_updates(
            status,
            {
                "$set": {
                    "responsible_department": department.id,
                    "responsible_party": party.value if party else None,
                    store.RESPONSIBILITY_SET_AT: set_at,
                }
            },
            store.history(
                at=now,
                action="responsibility_set",
                actor=principal.subject,
                department=department.id,
            ),
        )
        return Decision(update, [(EventType.COMPLAINT_RESPONSIBILITY_SET, event)])

    return await _changed(
        db, settings, principal, complaint_id, decide, now, command_key=command_key
    )


async def file_regulatory_report(
    *,
    db: AsyncDatabase,
    settings: RoutingSettings,
    principal: Principal,
    complaint_id: str,
    request: RegulatoryReportRequest,
    now: datetime,
    command_key: CommandKey | None = None,
) -> AssignmentRead:
    """The report reached the authority: the filing is recorded and its deadline stops,
    whatever the assignment's status (the obligation outlives the handling), and
    ``complaint.regulatory_report_filed`` announces both in the same write.

    An unroutable complaint records it too; its deadline, if routing finds it a major
    incident, stops at the filing once routed (whose verdict ``unroutable.leave`` announces).
    The same filing again (a retried request) is on record and announced already; another
    one is a 409 naming the first.
    """

    async def decide(current: dict[str, Any]) -> Decision | None:
        status = lifecycle.moved(current, Command.FILE_REGULATORY_REPORT)
        filed_at = current.get("regulatory_report_filed_at")
        if filed_at is not None:
            if current.get("regulatory_report_reference") == request.reference:
                return None
            raise conflict(
                f"complaint {complaint_id}: the regulatory report was filed at "
                f"{filed_at.isoformat()} (reference {current.get('regulatory_report_reference')!r})"
            )
        clocks = sla_clocks.load_clocks(current.get("clocks"))
        report = clocks.get(SlaClock.REGULATORY_REPORT.value)
        clock_fields: dict[str, Any] = {}
        if report is not None:
            # A deadline a finish stopped (before it ran on to the filing) keeps that stop.
            report = sla_clocks.stop_clock(report, at=now)
            clocks[SlaClock.REGULATORY_REPORT.value] = report
            clock_fields = lifecycle.clock_fields(clocks)
        elif current["status"] != unroutable.STATE:
            raise conflict(f"complaint {complaint_id} carries no regulatory report deadline")
        filed = lifecycle.regulatory_report_filed_event(
            current,
            reference=request.reference,
            filed_by=principal.subject,
            filed_at=now,
            report=report,
        )
        update = merge_updates(
            status,
            {
                "$set": {
                    **clock_fields,
                    "regulatory_report_reference": request.reference,
                    "regulatory_report_filed_at": now,
                    "regulatory_report_filed_by": principal.subject,
                }
            },
            store.history(
                at=now,
                action="regulatory_report_filed",
                actor=principal.subject,
                reference=request.reference,
            ),
        )
        return Decision(update, [(EventType.COMPLAINT_REGULATORY_REPORT_FILED, filed)])

    # A legal obligation's record: filed whatever else the complaint went through.
    return await _changed(
        db, settings, principal, complaint_id, decide, now, command_key=command_key, counted=False
    )
