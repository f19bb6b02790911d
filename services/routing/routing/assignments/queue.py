"""The department queues: queued complaints get an owner as capacity frees up.

Capacity frees when an assignment finishes or moves away (offered to the
department and to the owner's own one at once), when people are added or come
back, and on the periodic sweep that repairs what a crash may have lost. Drains run
side by side (each finish starts one, on any replica), so a drain finds complaints of
its queue taken by another since it read them: it passes over those, and only an
owner choice that finds nobody with room ends it.
"""

from __future__ import annotations

from datetime import datetime
from enum import Enum
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from complaints_shared.aggregate import Decision
from complaints_shared.events import ComplaintReassigned, EventType, Severity
from complaints_shared.failures import is_transient, redacted_error
from complaints_shared.logs import get_logger
from complaints_shared.mongo import merge_updates
from complaints_shared.text import folded
from routing.assignments import (
    lifecycle,
    owed_drains,
    owners,
    placement,
    planning,
    routing_context,
    store,
)
from routing.assignments.models import AssignmentStatus
from routing.directory import store as directory_store
from routing.directory.models import DepartmentRead, StaffRead, StaffStatus, UncoveredSkill
from routing.rules import store as rules_store
from routing.rules.models import RoutingRule
from routing.settings import RoutingSettings

log = get_logger(__name__)

DRAIN_BATCH = 100


class Served(Enum):
    """What offering one queued complaint to its department came to."""

    ASSIGNED = "assigned"
    GONE = "gone"  # not waiting any more: another drain took it, or it finished or moved
    NO_ROOM = "no_room"  # nobody with room (and the skill it needs, if any)


async def assign_from_queue(
    *,
    db: AsyncDatabase,
    settings: RoutingSettings,
    complaint_id: str,
    now: datetime,
    department_id: str | None = None,
) -> Served:
    """Give a queued complaint to whoever has capacity now; with ``department_id``, only
    while it still waits there (one moved to another department since a drain read it is
    that department's: until 6 December a full one there ended the drain of this one)."""
    served = [Served.GONE]  # stays so when the complaint is gone or moved

    async def after(document: dict[str, Any]) -> None:
        served[0] = Served.ASSIGNED
        how = "duty_officer" if document.get("duty_officer") else "queue"
        await placement.after_assignment(db=db, document=document, how=how, now=now)

    async def decide(current: dict[str, Any]) -> Decision | None:
        # Decided again on the new version after a lost race, so each decision says anew.
        moved = department_id is not None and current["department"] != department_id
        if moved or not lifecycle.applies(current, lifecycle.Command.ASSIGN):
            served[0] = Served.GONE
            return None
        excluded = frozenset({store.not_for_owner(current)} - {None})
        # The out-of-hours rule, as on arrival: until 5 December the queue gave an urgent
        # complaint to the department's people at night, off shift.
        duty = await routing_context.duty_officer_taking(
            db=db,
            org=current["org"],
            branch=current["branch"],
            severity=Severity(current["severity"]),
            at=now,
        )
        if duty is not None and duty.id not in excluded:
            choice = await owners.forced_owner(db=db, org=current["org"], staff=duty)
        else:
            duty = None
            choice = await owners.pick_owner(
                db=db,
                org=current["org"],
                department_id=current["department"],
                required_skill=current.get("required_skill"),
                exclude=excluded,
            )
        if choice is None:
            served[0] = Served.NO_ROOM
            return None
        owner = {
            "owner_id": choice.staff.id,
            "owner_name": choice.staff.name,
            "assigned_at": now,
            "duty_officer": duty is not None,
        }
        update = merge_updates(
            lifecycle.moved(current, lifecycle.Command.ASSIGN),
            {
                "$set": {
                    **owner,
                    **owners.slot_fields(current["org"], choice.staff.id, choice.slot),
                    **lifecycle.numbered(current),
                }
            },
            store.history(
                at=now, action="assigned_from_queue", actor="routing", owner=choice.staff.id
            ),
        )
        announced = lifecycle.assigned_event({**current, **update["$set"]})
        return Decision(update, [(EventType.COMPLAINT_ASSIGNED, announced)], [after])

    await store.change(db=db, settings=settings, complaint_id=complaint_id, decide=decide, now=now)
    return served[0]


async def drain_queue(
    *, db: AsyncDatabase, settings: RoutingSettings, org: str, department_id: str, now: datetime
) -> int:
    """Assign queued complaints of a department, most severe first, while capacity lasts.

    A complaint taken meanwhile (by a drain of another finish, here or on another
    replica) is passed over, as is one waiting for a skill nobody free has (or one whose
    assignment fails for a fault of its own); one that needs no skill and still finds
    nobody means the department is full. Ending at a complaint taken meanwhile instead
    lost the room of the finish that started this drain whenever another drain had read
    the same queue first. The queue is read ``DRAIN_BATCH`` at a time, so a batch of
    complaints all waiting for skills nobody free has does not hide those behind it.

    A department with nobody under capacity is not read at all: the periodic sweep
    offers every department with a queue again, and the local server reads a queue
    whole before its sort and limit, so each sweep cost more the longer a full
    department's queue grew (docs/performance.md).
    """
    since = owed_drains.mark()
    try:
        assigned = await _drain(
            db=db, settings=settings, org=org, department_id=department_id, now=now
        )
    except Exception:
        owed_drains.owe(db=db, org=org, department_id=department_id)
        raise
    owed_drains.settle(db=db, org=org, department_id=department_id, since=since)
    return assigned


async def _drain(
    *, db: AsyncDatabase, settings: RoutingSettings, org: str, department_id: str, now: datetime
) -> int:
    if not await owners.has_room(db=db, org=org, department_id=department_id):
        return 0
    assigned = passed_over = 0
    while True:
        # Those passed over are still queued, first in the order: the next batch skips them.
        queued = await store.queued_in_department(
            db=db, org=org, department_id=department_id, limit=DRAIN_BATCH, skip=passed_over
        )
        for waiting in queued:
            try:
                served = await assign_from_queue(
                    db=db,
                    settings=settings,
                    complaint_id=waiting["_id"],
                    now=now,
                    department_id=department_id,
                )
            except Exception as exc:
                if is_transient(exc):  # the database away, a race lost time after time
                    raise
                # This complaint's own fault: it stays queued, the ones behind it go on.
                log.error("queued_assignment_failed", error=redacted_error(exc))
                passed_over += 1
                continue
            if served is Served.ASSIGNED:
                assigned += 1
            elif served is Served.NO_ROOM:
                if not waiting.get("required_skill") and not store.not_for_owner(waiting):
                    return assigned  # nobody has room at all
                passed_over += 1  # the one with room lacks the skill, or it is not for them
        if len(queued) < DRAIN_BATCH:
            return assigned


async def skills_left_uncovered(
    *, db: AsyncDatabase, org: str, person: StaffRead
) -> list[UncoveredSkill]:
    """The skills ``person`` had that nobody active of their department has (now that they
    are gone), where the department's queued work or an active rule sending their branch's
    complaints there needs it: such work waits for nobody until someone gets the skill, the
    rule drops it (``rule_changes``) or a supervisor moves the complaint."""
    department = await directory_store.find_department(
        db=db, org=org, department_id=person.department_id
    )
    if department is None:
        return []
    others = [
        colleague
        for colleague in await directory_store.desk(
            db=db, org=org, department_id=department.id, fresh=True
        )
        if colleague.id != person.id and colleague.status is StaffStatus.ACTIVE
    ]
    queued = await store.queued_by_skill(db=db, org=org, department_id=department.id)
    rules = [
        rule
        for rule in await rules_store.load_rules(db=db, org=org)
        if rule.action.required_skill and _sends_branch_to(rule, department)
    ]
    needed = [*queued, *(rule.action.required_skill for rule in rules)]
    return [
        UncoveredSkill(
            skill=skill,
            department=department.id,
            queued=sum(n for waiting, n in queued.items() if _same_skill(waiting, skill)),
            rules=[rule.id for rule in rules if _same_skill(rule.action.required_skill, skill)],
        )
        for skill in _distinct_skills(needed)
        if planning.has_skill(person, skill)
        and not any(planning.has_skill(colleague, skill) for colleague in others)
    ]


def _sends_branch_to(rule: RoutingRule, department: DepartmentRead) -> bool:
    """Whether ``rule`` routes complaints of the department's branch to it."""
    if rule.branches and department.branch not in rule.branches:
        return False
    if rule.action.department_id is not None:
        return rule.action.department_id == department.id
    return rule.action.department_kind == department.kind


def _same_skill(one: str | None, other: str) -> bool:
    return one is not None and folded(one.strip()) == folded(other.strip())


def _distinct_skills(skills: list[str | None]) -> list[str]:
    """One of each skill as owner choice compares them (``VIP`` and ``vip`` are one)."""
    kept: dict[str, str] = {}
    for skill in skills:
        if skill:
            kept.setdefault(folded(skill.strip()), skill)
    return sorted(kept.values())


async def offer_freed_capacity(
    *, db: AsyncDatabase, settings: RoutingSettings, previous: dict[str, Any], now: datetime
) -> None:
    """The assignment left ``previous``: release its owner's slot (if it held one) in the load
    hint, then the department (and the owner's own one) may take queued work.

    The department is owed its drain before anything is written, and the owner's own as soon
    as it is read, so that an error in a later step leaves them to the next queue sweep
    (``owed_drains``); one in the owner's read leaves theirs to the census."""
    departments = {previous["department"]} - {None}  # an unroutable one had none
    for department in departments:
        owed_drains.owe(db=db, org=previous["org"], department_id=department)
    owner_id = previous.get("owner_id")
    if owner_id and previous["status"] == AssignmentStatus.OPEN.value:
        await directory_store.record_release(
            db=db, org=previous["org"], staff_id=owner_id, slot=previous.get("owner_slot_no")
        )
    if owner_id:
        owner = await directory_store.find_staff_with_load(
            db=db, org=previous["org"], staff_id=owner_id
        )
        if owner is not None:
            # Owed before the overflow's writes too (a duty officer of another department:
            # until 6 December an error there left that department's room to the census).
            departments.add(owner.department_id)
            owed_drains.owe(db=db, org=previous["org"], department_id=owner.department_id)
            slot = previous.get("owner_slot_no")
            if previous["status"] == AssignmentStatus.OPEN.value and slot is not None:
                await owners.fill_from_overflow(
                    db=db,
                    settings=settings,
                    org=previous["org"],
                    staff=owner,
                    load_hint=owner.open_load,
                    slot=slot,
                    now=now,
                )
    for department in sorted(departments):
        await drain_queue(
            db=db, settings=settings, org=previous["org"], department_id=department, now=now
        )


async def offer_to_duty_officer(
    *,
    db: AsyncDatabase,
    settings: RoutingSettings,
    org: str,
    department_id: str,
    branch: str,
    now: datetime,
) -> int:
    """While ``branch`` is closed, its urgent complaints waiting in the department's queue go
    to its duty officer (``assign_from_queue`` asks the out-of-hours rule), whether or not
    anyone of the department has room: one queued before closing time waited all evening,
    then went to whoever freed a slot, off shift, until 5 December."""
    if await routing_context.duty_officer_on_duty(db=db, org=org, branch=branch, at=now) is None:
        return 0
    assigned = passed_over = 0
    while True:
        urgent = await store.queued_in_department(
            db=db,
            org=org,
            department_id=department_id,
            limit=DRAIN_BATCH,
            skip=passed_over,
            branch=branch,
            urgent_only=True,
        )
        for waiting in urgent:
            try:
                served = await assign_from_queue(
                    db=db,
                    settings=settings,
                    complaint_id=waiting["_id"],
                    now=now,
                    department_id=department_id,
                )
            except Exception as exc:
                if is_transient(exc):
                    raise
                log.error("queued_assignment_failed", error=redacted_error(exc))
                served = Served.NO_ROOM
            if served is Served.ASSIGNED:
                assigned += 1
            elif served is Served.NO_ROOM:  # not for the duty officer (taken off them)
                passed_over += 1
        if len(urgent) < DRAIN_BATCH:
            return assigned


async def rehome_queue(
    *, db: AsyncDatabase, settings: RoutingSettings, department: DepartmentRead, now: datetime
) -> DepartmentRead | None:
    """The queue of an inactive ``department`` moves to its branch's active department of
    the same kind (its successor, as for a reopen: ``projections._department_after_reopen``);
    None when there is none yet (logged; the next sweep tries again). Nobody can join an
    inactive department, so until 5 December its queue waited for good."""
    successor = await directory_store.active_department_of_kind(
        db=db, org=department.org, branch=department.branch, kind=department.kind
    )
    if successor is None:
        log.warning("queued_in_inactive_department", department=department.id)
        return None
    passed_over = 0
    while True:
        queued = await store.queued_in_department(
            db=db,
            org=department.org,
            department_id=department.id,
            limit=DRAIN_BATCH,
            skip=passed_over,
        )
        for waiting in queued:
            try:
                await _move_queued(
                    db=db,
                    settings=settings,
                    complaint_id=waiting["_id"],
                    department=department,
                    successor=successor,
                    now=now,
                )
            except Exception as exc:
                if is_transient(exc):
                    raise
                log.error("queued_move_failed", error=redacted_error(exc))
                passed_over += 1
        if len(queued) < DRAIN_BATCH:
            return successor


async def _move_queued(
    *,
    db: AsyncDatabase,
    settings: RoutingSettings,
    complaint_id: str,
    department: DepartmentRead,
    successor: DepartmentRead,
    now: datetime,
) -> None:
    """Move one complaint waiting in ``department``'s queue to ``successor``'s, announced as a
    supervisor's move to a department's queue is (``complaint.reassigned``, then
    ``complaint.queued``). It keeps its place in the line (``queued_at``)."""

    async def owe_drain(document: dict[str, Any]) -> None:
        owed_drains.owe(db=db, org=successor.org, department_id=successor.id)

    async def decide(current: dict[str, Any]) -> Decision | None:
        waiting = current["status"] == AssignmentStatus.QUEUED.value
        if not waiting or current["department"] != department.id:
            return None  # assigned, finished or moved meanwhile
        moved = {
            **lifecycle.moved(current, lifecycle.Command.REASSIGN_TO_QUEUE)["$set"],
            "department": successor.id,
            "department_name": successor.name,
            # The skill was the rule's for the old department, as on a supervisor's move.
            "required_skill": None,
            store.SKILL_RULE_VERSION: None,
            "owner_id": None,
            "owner_name": None,
            "duty_officer": False,
            **lifecycle.numbered(current),
        }
        reason = f"department {department.id} deactivated"
        reassigned = ComplaintReassigned(
            complaint_id=current["_id"],
            org=current["org"],
            branch=current["branch"],
            from_department=department.id,
            from_owner_id=None,
            department=successor.id,
            department_name=successor.name,
            owner_id=None,
            owner_name=None,
            reason=reason,
            reassigned_by="routing",
            reassigned_at=now,
            assignment_sequence=moved["assignment_sequence"],
        )
        moved.update(lifecycle.numbered(moved))  # the queueing comes after it
        queued = lifecycle.queued_event({**current, **moved})
        update = merge_updates(
            {"$set": moved},
            {"$unset": {store.NOT_FOR_OWNER: ""}},
            store.history(
                at=now,
                action="reassigned",
                actor="routing",
                reason=reason,
                department=successor.id,
                moved_from=department.id,
            ),
        )
        events = [
            (EventType.COMPLAINT_REASSIGNED, reassigned),
            (EventType.COMPLAINT_QUEUED, queued),
        ]
        return Decision(update, events, [owe_drain])

    await store.change(db=db, settings=settings, complaint_id=complaint_id, decide=decide, now=now)
