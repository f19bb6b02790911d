"""Data access for assignments: the aggregate routing owns per complaint. No HTTP here.

One document per complaint holds the handling department and owner, the SLA
clocks and their next timer, the escalation history and the outbox of events
the changes cause. Every change goes through :func:`change`: read, decide,
write conditionally on the version read, together with the events.

An owner's open load is the number of open assignments holding one of the
owner's *slots*. Slots are numbered per owner
and a unique index on ``owner_slot`` lets each number be held once, so two
replicas assigning at the same moment cannot both take an owner's last free
place (the loser's write fails and it chooses again); finishing a complaint
frees its slot in the same write that records the finish, so no decrement can
be lost. The staff document also carries a *load hint*, moved after each of those
writes, so that owner choice ranks people without counting their assignments;
the hint only orders candidates (the slots still decide), owner choice counts
before it queues anything, and a periodic pass corrects hints a crash left
behind.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from complaints_shared import aggregate
from complaints_shared.aggregate import Aggregate, Decide, Decision, Events
from complaints_shared.auth import Principal
from complaints_shared.business_calendar import BusinessCalendar
from complaints_shared.events import (
    SEVERITY_ORDER,
    ComplaintAssigned,
    ComplaintEscalated,
    ComplaintQueued,
    ComplaintReceived,
    EventType,
)
from complaints_shared.logs import get_logger
from complaints_shared.mongo import ensure_index, is_id_clash, merge_updates
from complaints_shared.outbox import outbox_entry, outbox_fields
from complaints_shared.pagination import Page
from complaints_shared.problems import ConcurrentUpdate, not_found
from routing import audit, directory_store, flows, lifecycle, rules_store, sla
from routing.context_cache import ContextCache
from routing.escalation import EscalationTarget, chain_targets, target_at
from routing.metrics import ASSIGNMENTS as ASSIGNED_METRIC
from routing.metrics import LOAD_HINTS_CORRECTED, QUEUED
from routing.models import (
    ACTIVE_STATUSES,
    AssignmentRead,
    AssignmentStatus,
    BranchRead,
    DepartmentRead,
    DepartmentWorkload,
    OpenWork,
    OwnerWorkload,
    RoutingRule,
    SlaPolicy,
    StaffRead,
    StaffStatus,
    WorkloadRead,
)
from routing.settings import RoutingSettings

ASSIGNMENTS = "assignments"
# The assignments that have a timer running (the partial filter of ``timers_due``).
TIMER_DUE = {"next_timer_at": {"$type": "date"}}
ASSIGNMENT = Aggregate(collection=ASSIGNMENTS, what="assignment", applied_events_kept=200)
MAX_WRITE_ATTEMPTS = 10
HISTORY_KEPT = 200
MAX_PAGE_SIZE = 200
DRAIN_BATCH = 100

log = get_logger(__name__)


async def ensure_indexes(*, db: AsyncDatabase) -> None:
    await directory_store.ensure_indexes(db=db)
    await rules_store.ensure_indexes(db=db)
    await audit.ensure_indexes(db=db)
    assignments = db[ASSIGNMENTS]
    # One holder per owner slot: the capacity guarantee under concurrent replicas.
    await assignments.create_index("owner_slot", unique=True, sparse=True, name="owner_slot_unique")
    # Partial, not sparse: a finished assignment keeps ``next_timer_at: null``, which a sparse
    # index would hold forever. The timer query repeats TIMER_DUE so MongoDB may use it.
    await ensure_index(
        assignments, "next_timer_at", name="timers_due", partialFilterExpression=TIMER_DUE
    )
    await assignments.create_index(
        [("org", ASCENDING), ("owner_id", ASCENDING), ("status", ASCENDING)],
        name="org_owner_status",
    )
    # The queue's order, then the ``_id`` tie-break its pages sort on.
    await ensure_index(
        assignments,
        [
            ("org", ASCENDING),
            ("department", ASCENDING),
            ("status", ASCENDING),
            ("priority", DESCENDING),
            ("queued_at", ASCENDING),
            ("_id", ASCENDING),
        ],
        name="org_department_queue",
    )
    # The periodic sweep looks for queued complaints of every organisation.
    await assignments.create_index(
        [("status", ASCENDING), ("org", ASCENDING), ("department", ASCENDING)],
        name="status_org_department",
    )
    await assignments.create_index(
        [("org", ASCENDING), ("created_at", ASCENDING), ("_id", ASCENDING)], name="org_created"
    )


def history_entry(*, at: datetime, action: str, actor: str, **details: Any) -> dict[str, Any]:
    return {"at": at, "action": action, "actor": actor, "details": details}


def history(*, at: datetime, action: str, actor: str, **details: Any) -> dict[str, Any]:
    """An update appending one entry to the assignment's own bounded history."""
    entry = history_entry(at=at, action=action, actor=actor, **details)
    return {"$push": {"history": {"$each": [entry], "$slice": -HISTORY_KEPT}}}


async def change(
    *,
    db: AsyncDatabase,
    settings: RoutingSettings,
    complaint_id: str,
    decide: Decide,
    now: datetime,
    scope: dict[str, Any] | None = None,
    event_id: str | None = None,
) -> dict[str, Any] | None:
    """One change of an assignment through the aggregate kernel (``complaints_shared.aggregate``).

    A slot taken by someone else between the decision and the write (the unique
    index refuses it) makes the kernel decide again.
    """
    return await aggregate.change(
        db=db,
        settings=settings,
        aggregate=ASSIGNMENT,
        aggregate_id=complaint_id,
        decide=decide,
        now=now,
        scope=scope,
        event_id=event_id,
    )


# ------------------------------------------------------------------- slots --


def slot_key(org: str, owner_id: str, number: int) -> str:
    return f"{org}:{owner_id}#{number}"


def slot_fields(org: str, owner_id: str, number: int) -> dict[str, Any]:
    return {"owner_slot": slot_key(org, owner_id, number), "owner_slot_no": number}


FREE_SLOT = {"$unset": {"owner_slot": "", "owner_slot_no": ""}}


async def open_loads(*, db: AsyncDatabase, org: str, staff_ids: list[str]) -> dict[str, int]:
    """Open complaints per owner, derived from the assignments themselves (never drifts)."""
    pipeline = [
        {
            "$match": {
                "org": org,
                "owner_id": {"$in": staff_ids},
                "status": AssignmentStatus.OPEN.value,
            }
        },
        {"$group": {"_id": "$owner_id", "open": {"$sum": 1}}},
    ]
    loads = dict.fromkeys(staff_ids, 0)
    async for row in await db[ASSIGNMENTS].aggregate(pipeline):
        loads[row["_id"]] = row["open"]
    return loads


async def free_slot(*, db: AsyncDatabase, org: str, owner_id: str, limit: int | None) -> int | None:
    """The owner's lowest free slot number (below ``limit`` for automatic assignment)."""
    cursor = db[ASSIGNMENTS].find(
        {"org": org, "owner_id": owner_id, "status": AssignmentStatus.OPEN.value},
        projection={"owner_slot_no": 1},
    )
    used = {doc.get("owner_slot_no") async for doc in cursor}
    number = 0
    while number in used:
        number += 1
    if limit is not None and number >= limit:
        return None
    return number


async def likely_free_slot(
    *, db: AsyncDatabase, org: str, owner_id: str, guess: int, limit: int | None
) -> int | None:
    """A free slot, trying ``guess`` (the load hint) with one indexed lookup first.

    Without gaps an owner holding n slots holds 0..n-1, so slot n is free; when the
    guess is taken (a gap below, or a stale hint) the owner's slots are scanned.
    """
    if limit is None or guess < limit:
        taken = await db[ASSIGNMENTS].find_one(
            {"owner_slot": slot_key(org, owner_id, guess)}, projection={"_id": 1}
        )
        if taken is None:
            return guess
    return await free_slot(db=db, org=org, owner_id=owner_id, limit=limit)


async def reconcile_load_hints(*, db: AsyncDatabase) -> int:
    """Set load hints that drifted (a crash between two writes) to the counted loads.

    Hints are read before counting and each is replaced only if still the value read,
    so an assignment landing meanwhile is never overwritten with an older count.
    """
    staff = directory_store.STAFF
    hint = directory_store.LOAD_HINT
    people = await db[staff].find({}, projection={"org": 1, "id": 1, hint: 1}).to_list(None)
    pipeline = [
        {"$match": {"status": AssignmentStatus.OPEN.value, "owner_id": {"$ne": None}}},
        {"$group": {"_id": {"org": "$org", "owner": "$owner_id"}, "open": {"$sum": 1}}},
    ]
    counted = {
        (row["_id"]["org"], row["_id"]["owner"]): row["open"]
        async for row in await db[ASSIGNMENTS].aggregate(pipeline)
    }
    corrected = 0
    for person in people:
        actual = counted.get((person["org"], person["id"]), 0)
        if person.get(hint, 0) == actual:
            continue
        seen = person.get(hint, {"$exists": False})
        result = await db[staff].update_one(
            {"_id": person["_id"], hint: seen}, {"$set": {hint: actual}}
        )
        corrected += result.modified_count
    if corrected:
        LOAD_HINTS_CORRECTED.inc(corrected)
        log.warning("load_hints_corrected", count=corrected)
    return corrected


@dataclass(frozen=True)
class OwnerChoice:
    staff: StaffRead
    slot: int


async def ranked_candidates(
    *, db: AsyncDatabase, org: str, department_id: str, required_skill: str | None
) -> list[flows.Candidate]:
    """Exact ranking (loads counted from the assignments): for reports and simulations."""
    staff = await directory_store.desk(db=db, org=org, department_id=department_id)
    loads = await open_loads(db=db, org=org, staff_ids=[person.id for person in staff])
    return flows.rank_candidates(staff, loads=loads, required_skill=required_skill)


async def pick_owner(
    *,
    db: AsyncDatabase,
    org: str,
    department_id: str,
    required_skill: str | None,
    exclude: frozenset[str] = frozenset(),
) -> OwnerChoice | None:
    """The owner whose turn it is, with a free slot under their capacity; None: queue it.

    Candidates are ranked by their load hints first (no counting), and the slot's unique
    index keeps the capacity exact whatever a hint says. Only when the hints find nobody
    are the loads counted from the assignments, so a complaint is never queued on a
    stale hint.
    """
    staff = await directory_store.desk(db=db, org=org, department_id=department_id)
    hints = {person.id: person.open_load for person in staff}
    choice = await _first_with_slot(
        db=db, org=org, staff=staff, loads=hints, required_skill=required_skill, exclude=exclude
    )
    if choice is not None:
        return choice
    loads = await open_loads(db=db, org=org, staff_ids=list(hints))
    if loads == hints:
        return None
    return await _first_with_slot(
        db=db, org=org, staff=staff, loads=loads, required_skill=required_skill, exclude=exclude
    )


async def _first_with_slot(
    *,
    db: AsyncDatabase,
    org: str,
    staff: list[StaffRead],
    loads: dict[str, int],
    required_skill: str | None,
    exclude: frozenset[str],
) -> OwnerChoice | None:
    for candidate in flows.rank_candidates(staff, loads=loads, required_skill=required_skill):
        if not candidate.eligible or candidate.staff.id in exclude:
            continue
        slot = await likely_free_slot(
            db=db,
            org=org,
            owner_id=candidate.staff.id,
            guess=candidate.open_load,
            limit=candidate.staff.capacity,
        )
        if slot is not None:
            return OwnerChoice(candidate.staff, slot)
    return None


async def forced_owner(*, db: AsyncDatabase, org: str, staff: StaffRead) -> OwnerChoice:
    """A slot for a person chosen on purpose (duty officer, supervisor, reopen): no cap."""
    slot = await free_slot(db=db, org=org, owner_id=staff.id, limit=None)
    assert slot is not None
    return OwnerChoice(staff, slot)


# ----------------------------------------------------------------- context --


@dataclass
class RoutingContext:
    """What one routing decision reads from the directory, the rules and the policies."""

    rules: list[RoutingRule]
    departments: list[DepartmentRead]
    calendar: BusinessCalendar
    policies: list[SlaPolicy]
    staff: list[StaffRead]
    duty_officer: StaffRead | None


def default_branch(org: str, code: str) -> BranchRead:
    """A branch missing from the directory still gets business hours (the defaults)."""
    return BranchRead(org=org, code=code, name=code)


async def branch_calendar(*, db: AsyncDatabase, org: str, branch: str) -> BusinessCalendar:
    found = await directory_store.find_branch(db=db, org=org, code=branch)
    return sla.branch_calendar(found or default_branch(org, branch))


async def load_context(*, db: AsyncDatabase, complaint: ComplaintReceived) -> RoutingContext:
    """Everything a routing decision reads, fetched in two concurrent rounds."""
    org = complaint.org
    rules, branch, policies = await asyncio.gather(
        rules_store.load_rules(db=db, org=org),
        directory_store.find_branch(db=db, org=org, code=complaint.branch),
        rules_store.load_policies(db=db, org=org),
    )
    branch = branch or default_branch(org, complaint.branch)
    explicit = sorted({r.action.department_id for r in rules if r.action.department_id})
    # A department id starts with its branch code, so the people can be fetched alongside.
    branches = [complaint.branch, *(department_id.split(":")[0] for department_id in explicit)]
    departments, staff, duty_officer = await asyncio.gather(
        directory_store.departments_for_routing(
            db=db, org=org, branch=complaint.branch, department_ids=explicit
        ),
        directory_store.staff_of_branches(db=db, org=org, branches=branches),
        _duty_officer(db=db, org=org, branch=branch),
    )
    return RoutingContext(
        rules=rules,
        departments=departments,
        calendar=sla.branch_calendar(branch),
        policies=policies,
        staff=staff,
        duty_officer=duty_officer,
    )


async def _duty_officer(*, db: AsyncDatabase, org: str, branch: BranchRead) -> StaffRead | None:
    if branch.duty_officer_id is None:
        return None
    return await directory_store.find_staff(db=db, org=org, staff_id=branch.duty_officer_id)


def plan_for(complaint: ComplaintReceived, context: RoutingContext) -> flows.RoutePlan:
    return flows.plan_route(
        complaint,
        rules=context.rules,
        departments=context.departments,
        calendar=context.calendar,
        policies=context.policies,
        staff=context.staff,
        duty_officer=context.duty_officer,
    )


async def escalation_targets(
    *, db: AsyncDatabase, org: str, department_id: str
) -> list[EscalationTarget]:
    department = await directory_store.find_department(db=db, org=org, department_id=department_id)
    if department is None:
        return []
    staff = await directory_store.staff_of_branches(db=db, org=org, branches=[department.branch])
    return chain_targets(
        department.escalation_chain, department_code=department.code, branch_staff=staff
    )


# ------------------------------------------------------------------ events --


def _base(document: dict[str, Any]) -> dict[str, str]:
    return {"complaint_id": document["_id"], "org": document["org"], "branch": document["branch"]}


def assigned_event(document: dict[str, Any]) -> ComplaintAssigned:
    """The full current assignment; re-published unchanged but for new due times."""
    return ComplaintAssigned(
        **_base(document),
        department=document["department"],
        department_name=document["department_name"],
        owner_id=document.get("owner_id"),
        owner_name=document.get("owner_name"),
        rule_id=document["rule_id"],
        rule_version=document["rule_version"],
        assigned_at=document["assigned_at"],
        acknowledge_due_at=document.get("acknowledge_due_at"),
        resolve_due_at=document.get("resolve_due_at"),
        regulatory_report_due_at=document.get("regulatory_report_due_at"),
        escalation_level=document.get("escalation_level", 0),
        sla_policy=document.get("sla_policy"),
        clock_starts_at=document.get("clock_starts_at"),
        duty_officer=document.get("duty_officer", False),
        **_applied_classification(document),
    )


def _applied_classification(document: dict[str, Any]) -> dict[str, Any]:
    """Severity and flags as routing applies them, so intake's record tells the same."""
    return {
        "severity": document.get("severity"),
        "flags": document.get("flags"),
        "major_incident": document.get("major_incident", False),
    }


def queued_event(document: dict[str, Any]) -> ComplaintQueued:
    return ComplaintQueued(
        **_base(document),
        department=document["department"],
        department_name=document["department_name"],
        rule_id=document["rule_id"],
        rule_version=document["rule_version"],
        queued_at=document["queued_at"],
        **_applied_classification(document),
    )


def escalation_record(
    target: EscalationTarget, *, reason: str, by: str, at: datetime, note: str | None = None
) -> dict[str, Any]:
    return {
        "level": target.level,
        "escalated_to_id": target.staff_id,
        "escalated_to_name": target.name,
        "escalated_to_role": target.role.value if target.role else None,
        "reason": reason,
        "note": note,
        "escalated_by": by,
        "escalated_at": at,
    }


def escalated_event(
    document: dict[str, Any], record: dict[str, Any], *, regulatory_due: datetime | None = None
) -> ComplaintEscalated:
    return ComplaintEscalated(
        **_base(document),
        level=record["level"],
        escalated_to_id=record["escalated_to_id"],
        escalated_to_name=record["escalated_to_name"],
        escalated_to_role=record["escalated_to_role"],
        reason=record["reason"],
        escalated_by=record["escalated_by"],
        escalated_at=record["escalated_at"],
        regulatory_report_due_at=regulatory_due,
    )


def escalate_one_level(
    current: dict[str, Any],
    *,
    targets: list[EscalationTarget],
    reason: str,
    by: str,
    at: datetime,
    note: str | None = None,
) -> tuple[dict[str, Any], Events]:
    """The update and event taking the complaint one rung up its chain; nothing at the top."""
    level = current.get("escalation_level", 0) + 1
    target = target_at(targets, level)
    if target is None:
        return {}, []
    record = escalation_record(target, reason=reason, by=by, at=at, note=note)
    update = {"$set": {"escalation_level": level}, "$push": {"escalations": record}}
    return update, [(EventType.COMPLAINT_ESCALATED, escalated_event(current, record))]


def clock_fields(clocks: dict[str, sla.Clock]) -> dict[str, Any]:
    """The clocks and what is derived from them, always written together."""

    def due(name: str) -> datetime | None:
        clock = clocks.get(name)
        return clock.due_at if clock is not None else None

    return {
        "clocks": {name: clock.stored() for name, clock in clocks.items()},
        "next_timer_at": sla.next_timer_at(clocks),
        "acknowledge_due_at": due("acknowledge"),
        "resolve_due_at": due("resolve"),
        "regulatory_report_due_at": due("regulatory_report"),
    }


# ---------------------------------------------------------------- routing --


def new_document(
    complaint: ComplaintReceived,
    plan: flows.RoutePlan,
    *,
    owner: OwnerChoice | None,
    now: datetime,
) -> dict[str, Any]:
    department = plan.department
    document: dict[str, Any] = {
        "_id": complaint.complaint_id,
        "org": complaint.org,
        "branch": complaint.branch,
        "reference": complaint.reference,
        "category": complaint.category.value,
        "channel": complaint.channel.value,
        "received_severity": complaint.severity.value,
        "severity": plan.severity.value,
        "priority": SEVERITY_ORDER.index(plan.severity),
        "flags": sorted(flows.complaint_flags(complaint)),
        "department": department.id,
        "department_name": department.name,
        "rule_id": plan.rule.id,
        "rule_version": plan.rule.version,
        "required_skill": plan.rule.action.required_skill,
        "sla_policy": plan.policy.id,
        "notify": [target.model_dump(mode="json") for target in plan.notify],
        "received_at": complaint.received_at,
        "clock_starts_at": plan.clock_starts_at,
        "duty_officer": plan.duty_officer is not None,
        "major_incident": plan.major_incident,
        "escalation_level": 0,
        "escalations": [],
        "paused": False,
        "breached": False,
        **clock_fields(plan.clocks),
        "history": [],
        "applied_events": [],
        "version": 1,
        "created_at": now,
        "updated_at": now,
    }
    if owner is None:
        document.update(
            status=lifecycle.transition(current=None, command=lifecycle.Command.QUEUE).value,
            owner_id=None,
            owner_name=None,
            assigned_at=None,
            queued_at=now,
        )
    else:
        document.update(
            status=lifecycle.transition(current=None, command=lifecycle.Command.ASSIGN).value,
            owner_id=owner.staff.id,
            owner_name=owner.staff.name,
            assigned_at=now,
            queued_at=None,
            **slot_fields(complaint.org, owner.staff.id, owner.slot),
        )
    return document


def initial_events(
    document: dict[str, Any], plan: flows.RoutePlan, *, now: datetime
) -> tuple[dict[str, Any], Events]:
    """The events of a new assignment; a major incident is escalated in the same write."""
    events: Events = []
    if plan.escalated_to is not None:
        record = escalation_record(
            plan.escalated_to, reason="critical_incident", by="routing", at=now
        )
        document["escalation_level"] = plan.escalation_level
        document["escalations"] = [record]
    if document["status"] == AssignmentStatus.QUEUED.value:
        events.append((EventType.COMPLAINT_QUEUED, queued_event(document)))
    else:
        events.append((EventType.COMPLAINT_ASSIGNED, assigned_event(document)))
    if plan.escalated_to is not None:
        due = document.get("regulatory_report_due_at")
        record = document["escalations"][0]
        events.append(
            (EventType.COMPLAINT_ESCALATED, escalated_event(document, record, regulatory_due=due))
        )
    return document, events


async def owner_for_plan(
    *, db: AsyncDatabase, complaint: ComplaintReceived, plan: flows.RoutePlan
) -> tuple[OwnerChoice | None, str]:
    if plan.duty_officer is not None:
        return await forced_owner(db=db, org=complaint.org, staff=plan.duty_officer), "duty_officer"
    choice = await pick_owner(
        db=db,
        org=complaint.org,
        department_id=plan.department.id,
        required_skill=plan.rule.action.required_skill,
    )
    return choice, "rule" if choice else "queue"


async def route_received(
    *,
    db: AsyncDatabase,
    settings: RoutingSettings,
    complaint: ComplaintReceived,
    now: datetime,
    contexts: ContextCache[RoutingContext] | None = None,
) -> bool:
    """Route a received complaint exactly once; False when it was routed before.

    A redelivery is told by the insert (its ``_id`` is taken), not by a read before it:
    planning reads only, so a complaint routed before costs one refused insert.
    """
    assignments = db[ASSIGNMENTS]
    if contexts is None:
        context = await load_context(db=db, complaint=complaint)
    else:
        context = await contexts.get(
            db=db,
            org=complaint.org,
            branch=complaint.branch,
            load=lambda: load_context(db=db, complaint=complaint),
        )
    plan = plan_for(complaint, context)
    for _ in range(MAX_WRITE_ATTEMPTS):
        owner, how = await owner_for_plan(db=db, complaint=complaint, plan=plan)
        document, events = initial_events(
            new_document(complaint, plan, owner=owner, now=now), plan, now=now
        )
        document.update(
            outbox_fields(
                [
                    outbox_entry(event_type=event_type, data=data, settings=settings)
                    for event_type, data in events
                ]
            )
        )
        try:
            await assignments.insert_one(document)
        except DuplicateKeyError as exc:
            if is_id_clash(exc):
                return False  # a redelivery, or another replica got there first
            continue  # the slot went to someone else's complaint: choose again
        await after_assignment(db=db, document=document, how=how, now=now)
        return True
    # Every free slot went to someone else's complaint, time after time.
    raise ConcurrentUpdate(detail=f"assignment {complaint.complaint_id}: no owner slot held still")


async def after_assignment(
    *, db: AsyncDatabase, document: dict[str, Any], how: str, now: datetime
) -> None:
    if document["status"] == AssignmentStatus.QUEUED.value:
        QUEUED.labels(document["department"]).inc()
        log.info("complaint_queued", department=document["department"])
        return
    ASSIGNED_METRIC.labels(how).inc()
    await directory_store.record_assignment(
        db=db, org=document["org"], staff_id=document["owner_id"], at=now
    )
    log.info(
        "complaint_assigned",
        department=document["department"],
        owner=document["owner_id"],
        how=how,
    )


async def assign_from_queue(
    *, db: AsyncDatabase, settings: RoutingSettings, complaint_id: str, now: datetime
) -> bool:
    """Give a queued complaint to whoever has capacity now; False if nobody has."""
    assigned: list[str] = []

    async def after(document: dict[str, Any]) -> None:
        assigned.append(document["owner_id"])
        await after_assignment(db=db, document=document, how="queue", now=now)

    async def decide(current: dict[str, Any]) -> Decision | None:
        if not lifecycle.applies(current, lifecycle.Command.ASSIGN):
            return None
        choice = await pick_owner(
            db=db,
            org=current["org"],
            department_id=current["department"],
            required_skill=current.get("required_skill"),
        )
        if choice is None:
            return None
        owner = {
            "owner_id": choice.staff.id,
            "owner_name": choice.staff.name,
            "assigned_at": now,
        }
        update = merge_updates(
            lifecycle.moved(current, lifecycle.Command.ASSIGN),
            {"$set": {**owner, **slot_fields(current["org"], choice.staff.id, choice.slot)}},
            history(at=now, action="assigned_from_queue", actor="routing", owner=choice.staff.id),
        )
        announced = assigned_event({**current, **update["$set"]})
        return Decision(update, [(EventType.COMPLAINT_ASSIGNED, announced)], [after])

    await change(db=db, settings=settings, complaint_id=complaint_id, decide=decide, now=now)
    return bool(assigned)


async def drain_queue(
    *, db: AsyncDatabase, settings: RoutingSettings, org: str, department_id: str, now: datetime
) -> int:
    """Assign queued complaints of a department, most severe first, while capacity lasts.

    A complaint waiting for a skill nobody free has does not hold up the ones behind it;
    one that needs no skill and still finds nobody means the department is full.
    """
    queued = (
        await db[ASSIGNMENTS]
        .find(
            {"org": org, "department": department_id, "status": AssignmentStatus.QUEUED.value},
            projection={"_id": 1, "required_skill": 1},
        )
        .sort([("priority", DESCENDING), ("queued_at", ASCENDING), ("_id", ASCENDING)])
        .limit(DRAIN_BATCH)
        .to_list(None)
    )
    assigned = 0
    for waiting in queued:
        if await assign_from_queue(db=db, settings=settings, complaint_id=waiting["_id"], now=now):
            assigned += 1
        elif not waiting.get("required_skill"):
            break
    return assigned


async def queued_departments(*, db: AsyncDatabase) -> list[tuple[str, str]]:
    """(org, department) pairs with complaints waiting, for the periodic sweep."""
    pipeline = [
        {"$match": {"status": AssignmentStatus.QUEUED.value}},
        {"$group": {"_id": {"org": "$org", "department": "$department"}}},
    ]
    return [
        (row["_id"]["org"], row["_id"]["department"])
        async for row in await db[ASSIGNMENTS].aggregate(pipeline)
    ]


# ------------------------------------------------------------------- reads --


async def get_visible(*, db: AsyncDatabase, principal: Principal, complaint_id: str) -> dict:
    return await aggregate.get_visible(
        db=db, aggregate=ASSIGNMENT, principal=principal, aggregate_id=complaint_id
    )


def to_read(document: dict[str, Any]) -> AssignmentRead:
    return AssignmentRead.model_validate({**document, "complaint_id": document["_id"]})


async def get_assignment(
    *, db: AsyncDatabase, principal: Principal, complaint_id: str
) -> AssignmentRead:
    return to_read(await get_visible(db=db, principal=principal, complaint_id=complaint_id))


async def list_assignments(
    *,
    db: AsyncDatabase,
    principal: Principal,
    department: str | None,
    owner_id: str | None,
    status: AssignmentStatus | None,
    limit: int,
    cursor: str | None,
) -> Page[AssignmentRead]:
    query: dict[str, Any] = aggregate.visibility(principal)
    for field, value in (("department", department), ("owner_id", owner_id)):
        if value is not None:
            query[field] = value
    if status is not None:
        query["status"] = status.value
    return await aggregate.page(
        collection=db[ASSIGNMENTS],
        query=query,
        sort_field="created_at",
        limit=min(limit, MAX_PAGE_SIZE),
        cursor=cursor,
        to_item=to_read,
        projection=ASSIGNMENT.hidden,
    )


async def open_work(*, db: AsyncDatabase, query: dict[str, Any]) -> list[OpenWork]:
    """Complaints still queued or open that match ``query`` (reported on deactivation)."""
    cursor = db[ASSIGNMENTS].find(
        {**query, "status": {"$in": [status.value for status in ACTIVE_STATUSES]}},
        projection={"status": 1, "department": 1, "owner_id": 1, "assigned_at": 1},
    )
    return [
        OpenWork(
            complaint_id=doc["_id"],
            status=doc["status"],
            department=doc["department"],
            owner_id=doc.get("owner_id"),
            assigned_at=doc.get("assigned_at"),
        )
        async for doc in cursor.sort("_id", ASCENDING)
    ]


async def _department_counts(
    *, db: AsyncDatabase, org: str, department_ids: list[str]
) -> dict[str, dict[str, int]]:
    def count_if(condition: Any) -> dict[str, Any]:
        return {"$sum": {"$cond": [condition, 1, 0]}}

    open_status = {"$eq": ["$status", AssignmentStatus.OPEN.value]}
    active = {"$in": ["$status", [status.value for status in ACTIVE_STATUSES]]}
    pipeline = [
        {"$match": {"org": org, "department": {"$in": department_ids}}},
        {
            "$group": {
                "_id": "$department",
                "open": count_if(open_status),
                "queued": count_if({"$eq": ["$status", AssignmentStatus.QUEUED.value]}),
                "paused": count_if({"$and": [active, {"$eq": ["$paused", True]}]}),
                "breached": count_if({"$and": [active, {"$eq": ["$breached", True]}]}),
                "escalated": count_if({"$and": [active, {"$gt": ["$escalation_level", 0]}]}),
            }
        },
    ]
    counts = {row["_id"]: row async for row in await db[ASSIGNMENTS].aggregate(pipeline)}
    responsible = [
        {"$match": {"org": org, "responsible_department": {"$in": department_ids}}},
        {"$group": {"_id": "$responsible_department", "n": {"$sum": 1}}},
    ]
    async for row in await db[ASSIGNMENTS].aggregate(responsible):
        counts.setdefault(row["_id"], {})["responsible_for"] = row["n"]
    return counts


async def workload(
    *, db: AsyncDatabase, principal: Principal, branch: str | None, department: str | None
) -> WorkloadRead:
    """Open, queued, paused, breached and escalated complaints per department and owner."""
    departments = await directory_store.list_departments(
        db=db, principal=principal, branch=branch, include_inactive=False
    )
    if department is not None:
        departments = [d for d in departments if d.id == department]
        if not departments:
            raise not_found(what="department", identifier=department)
    ids = [d.id for d in departments]
    counts = await _department_counts(db=db, org=principal.org, department_ids=ids)
    people = [
        directory_store.staff_read(doc)
        async for doc in db[directory_store.STAFF].find(
            {"org": principal.org, "department_id": {"$in": ids}}
        )
    ]
    loads = await open_loads(db=db, org=principal.org, staff_ids=[p.id for p in people])
    result = []
    for dept in departments:
        row = counts.get(dept.id, {})
        owners = [
            OwnerWorkload(
                id=p.id,
                name=p.name,
                role=p.role,
                status=p.status,
                capacity=p.capacity,
                open_load=loads[p.id],
                spare=max(p.capacity - loads[p.id], 0) if p.status is StaffStatus.ACTIVE else 0,
                last_assigned_at=p.last_assigned_at,
            )
            for p in sorted(people, key=lambda person: person.id)
            if p.department_id == dept.id
        ]
        result.append(
            DepartmentWorkload(
                department=dept.id,
                department_name=dept.name,
                branch=dept.branch,
                open=row.get("open", 0),
                queued=row.get("queued", 0),
                paused=row.get("paused", 0),
                breached=row.get("breached", 0),
                escalated=row.get("escalated", 0),
                responsible_for=row.get("responsible_for", 0),
                owners=owners,
            )
        )
    return WorkloadRead(
        departments=result,
        unroutable=0
        if department is not None
        else await _unroutable_count(db=db, principal=principal, branch=branch),
    )


async def _unroutable_count(*, db: AsyncDatabase, principal: Principal, branch: str | None) -> int:
    """Complaints waiting for a rule, which no department's row shows."""
    query = {**principal.scope_filter(), "status": AssignmentStatus.UNROUTABLE.value}
    if branch is not None:
        query = {"$and": [query, {"branch": branch}]}
    return await db[ASSIGNMENTS].count_documents(query)
