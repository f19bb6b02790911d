"""Data access for assignments: the aggregate routing owns per complaint. Persistence only.

One document per complaint holds the handling department and owner, the SLA
clocks and their next timer, the escalation history and the outbox of events
the changes cause. Every change goes through :func:`change`: read, decide,
write conditionally on the version read, together with the events.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.database import AsyncDatabase

from complaints_shared import aggregate
from complaints_shared.aggregate import Aggregate, Decide
from complaints_shared.auth import Principal
from complaints_shared.events import SEVERITY_ORDER, Severity
from complaints_shared.idempotency import CommandKey
from complaints_shared.mongo import as_utc, bson_time, count_each, ensure_index, insert_batched
from complaints_shared.pagination import Page
from complaints_shared.problems import not_found
from complaints_shared.stored import from_stored
from routing import audit
from routing.assignments.models import (
    ACTIVE_STATUSES,
    AssignmentRead,
    AssignmentStatus,
    DepartmentWorkload,
    OwnerWorkload,
    WorkloadRead,
)
from routing.directory import store as directory_store
from routing.directory.departments import list_departments
from routing.directory.models import OpenWork, StaffStatus
from routing.rules import store as rules_store
from routing.settings import RoutingSettings
from routing.sla import store as policy_store

ASSIGNMENTS = "assignments"
# The version of its branch's calendar the clocks are laid out on (the branch's
# ``calendar_version``; missing: laid out before the branch's calendar first changed).
CALENDAR_VERSION = "calendar_version"
# When the customer's clocks last ran again after standing still: a resume, or a reopen
# (whose fresh cycle starts running). A wait that began before it is over.
RAN_AGAIN_AT = "clocks_ran_again_at"
# The number of the latest reclassification applied to the assignment (intake numbers them).
RECLASSIFICATION_NUMBER = "reclassification_number"
# A queued complaint a supervisor took off its owner (a reassignment to the same department
# when nobody else had room): ``{"owner_id", "queued_at"}``, the queue gives it to anyone but
# them while it waits from that queueing on (a later queueing makes it stale).
NOT_FOR_OWNER = "not_for_owner"


def not_for_owner(document: dict[str, Any]) -> str | None:
    """Whom the queue must not give the queued ``document`` to (None: anyone)."""
    not_for = document.get(NOT_FOR_OWNER)
    if not_for and not_for.get("queued_at") == document.get("queued_at"):
        return not_for["owner_id"]
    return None


# The version of the placing rule (``rule_id``) that ``required_skill`` was derived from: set
# at placement, and by each change of the rule's skill applied since (``rule_changes``);
# null once a move to another department cleared the skill (a supervisor's, a reopen's, a
# deactivated department's queue's), which no change of the rule then touches.
SKILL_RULE_VERSION = "skill_rule_version"


def skill_rule_version(document: dict[str, Any]) -> int | None:
    """The version of its rule the assignment's ``required_skill`` follows; None when the
    skill is no rule's any more."""
    if SKILL_RULE_VERSION in document:
        return document[SKILL_RULE_VERSION]
    # Stored before 5 December: only placement set a skill, and every move cleared it.
    return document.get("rule_version") if document.get("required_skill") else None


# When the responsibility on the assignment was set (to the millisecond, as announced): a
# supervisor's setting, or a resolution naming it. Intake keeps the responsibility set
# latest; routing keeps to the same order (``responsibility_stamp``), not to the order of
# its writes: until 6 December a setting made while routing was behind on the resolution
# was overwritten by the older resolution's here and kept in intake, for good.
RESPONSIBILITY_SET_AT = "responsibility_set_at"
_ONE_MS = timedelta(milliseconds=1)


def responsibility_stamp(document: dict[str, Any], *, at: datetime) -> datetime | None:
    """The time a responsibility set at ``at`` is stamped with (to the millisecond), None
    when one set later stands on ``document`` already."""
    stamp = bson_time(at)
    stored = document.get(RESPONSIBILITY_SET_AT)
    return None if stored is not None and as_utc(stored) > stamp else stamp


def setting_stamp(document: dict[str, Any], *, now: datetime) -> datetime:
    """The time a supervisor's setting written now is stamped with: after the one it
    overwrites (a request that began first and commits last is the newest)."""
    stamp = bson_time(now)
    stored = document.get(RESPONSIBILITY_SET_AT)
    return max(stamp, as_utc(stored) + _ONE_MS) if stored is not None else stamp


# A major incident that could not reach the branch head (the branch has none active): true
# until it does, or is finished (``major_incidents``).
AWAITING_BRANCH_HEAD = "awaiting_branch_head"

ASSIGNMENT = Aggregate(collection=ASSIGNMENTS, what="assignment", applied_events_kept=200)
HISTORY_KEPT = 200
MAX_PAGE_SIZE = 200


async def ensure_indexes(*, db: AsyncDatabase) -> None:
    await directory_store.ensure_indexes(db=db)
    await rules_store.ensure_indexes(db=db)
    await policy_store.ensure_indexes(db=db)
    await audit.ensure_indexes(db=db)
    assignments = db[ASSIGNMENTS]
    # One holder per owner slot: the capacity guarantee under concurrent replicas.
    await assignments.create_index("owner_slot", unique=True, sparse=True, name="owner_slot_unique")
    # A finished assignment keeps ``next_timer_at: null``; the timer query's ``$lte`` on a
    # date never reaches those entries. Neither partial nor sparse: SecantusDB reads a whole
    # collection for a range on a partial index (124 ms at 6,000 assignments, against 1 ms
    # here; docs/mongodb-compatibility.md). This replaces the partial index of that name.
    await ensure_index(assignments, "next_timer_at", name="timers_due")
    # The major incidents still to reach a branch head: few, found by an equality on true.
    await ensure_index(assignments, AWAITING_BRANCH_HEAD, name="awaiting_branch_head")
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
    return history_of([history_entry(at=at, action=action, actor=actor, **details)])


def history_of(entries: list[dict[str, Any]]) -> dict[str, Any]:
    """An update appending ``entries`` (``history_entry``) to the bounded history."""
    return {"$push": {"history": {"$each": entries, "$slice": -HISTORY_KEPT}}}


async def change(
    *,
    db: AsyncDatabase,
    settings: RoutingSettings,
    complaint_id: str,
    decide: Decide,
    now: datetime,
    scope: dict[str, Any] | None = None,
    event_id: str | None = None,
    command_key: CommandKey | None = None,
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
        command_key=command_key,
    )


async def open_loads(*, db: AsyncDatabase, org: str, staff_ids: list[str]) -> dict[str, int]:
    """Open complaints per owner, derived from the assignments themselves (never drifts)."""
    return await count_each(
        db[ASSIGNMENTS],
        field="owner_id",
        values=staff_ids,
        query={"org": org, "status": AssignmentStatus.OPEN.value},
    )


async def exists(*, db: AsyncDatabase, complaint_id: str) -> bool:
    return await db[ASSIGNMENTS].find_one({"_id": complaint_id}, projection={"_id": 1}) is not None


async def insert(*, db: AsyncDatabase, document: dict[str, Any]) -> None:
    """Store a new assignment; DuplicateKeyError when its id or its owner slot is taken."""
    await insert_batched(db[ASSIGNMENTS], document)
    aggregate.inserted(db=db, aggregate=ASSIGNMENT, document=document)


# The queue's ``priority`` of a high complaint: it and critical ones are urgent.
URGENT_PRIORITY = SEVERITY_ORDER.index(Severity.HIGH)


async def queued_in_department(
    *,
    db: AsyncDatabase,
    org: str,
    department_id: str,
    limit: int,
    skip: int = 0,
    branch: str | None = None,
    urgent_only: bool = False,
) -> list[dict[str, Any]]:
    """The department's queue in the order it is served: most severe first, then oldest
    (the first ``skip`` left out); only ``branch``'s complaints, or the urgent ones, if asked."""
    query: dict[str, Any] = {
        "org": org,
        "department": department_id,
        "status": AssignmentStatus.QUEUED.value,
    }
    if urgent_only:
        query["priority"] = {"$gte": URGENT_PRIORITY}
    if branch is not None:
        query["branch"] = branch
    cursor = (
        db[ASSIGNMENTS]
        .find(query, projection={"_id": 1, "required_skill": 1, "queued_at": 1, NOT_FOR_OWNER: 1})
        .sort([("priority", DESCENDING), ("queued_at", ASCENDING), ("_id", ASCENDING)])
        .skip(skip)
        .limit(limit)
    )
    return await cursor.to_list(None)


async def active_of_rule(*, db: AsyncDatabase, org: str, rule_id: str) -> list[str]:
    """Ids of the queued and open assignments ``rule_id`` placed: read through
    ``status_org_department`` (status and organisation as equalities), the rule checked by
    the server on the documents found."""
    found: list[str] = []
    for status in (AssignmentStatus.QUEUED, AssignmentStatus.OPEN):
        cursor = db[ASSIGNMENTS].find(
            {"status": status.value, "org": org, "rule_id": rule_id}, projection={"_id": 1}
        )
        found += [document["_id"] async for document in cursor]
    return found


async def queued_by_skill(*, db: AsyncDatabase, org: str, department_id: str) -> dict[str, int]:
    """How many complaints wait in the department's queue for each skill (as stored)."""
    pipeline = [
        {
            "$match": {
                "org": org,
                "department": department_id,
                "status": AssignmentStatus.QUEUED.value,
            }
        },
        {"$group": {"_id": "$required_skill", "n": {"$sum": 1}}},
    ]
    return {
        row["_id"]: row["n"]
        async for row in await db[ASSIGNMENTS].aggregate(pipeline)
        if row["_id"]
    }


async def behind_calendar(
    *, db: AsyncDatabase, org: str, branch: str, version: int, limit: int
) -> list[str]:
    """Up to ``limit`` ids of the branch's open and queued assignments whose clocks are laid
    out on a calendar older than ``version``.

    Read through ``status_org_department`` (status and organisation as equalities), the
    branch and version checked here: a pass over the organisation's open work after a rare
    calendar change, where an index of its own cost every assignment's every write (an
    update rewrites each index entry on SecantusDB, docs/mongodb-compatibility.md).
    """
    found: list[str] = []
    for status in (AssignmentStatus.OPEN, AssignmentStatus.QUEUED):
        cursor = db[ASSIGNMENTS].find(
            {"status": status.value, "org": org},
            projection={"_id": 1, "branch": 1, CALENDAR_VERSION: 1},
        )
        async for document in cursor:
            laid_out_on = document.get(CALENDAR_VERSION) or 0
            if document.get("branch") == branch and laid_out_on < version:
                found.append(document["_id"])
                if len(found) >= limit:
                    await cursor.close()
                    return found
    return found


async def queued_departments(*, db: AsyncDatabase) -> dict[tuple[str, str], frozenset[str]]:
    """(org, department) pairs with complaints waiting, for the periodic sweep; each with
    the branches whose urgent complaints wait there (for their duty officers at night)."""
    pipeline = [
        {"$match": {"status": AssignmentStatus.QUEUED.value}},
        {
            "$group": {
                "_id": {"org": "$org", "department": "$department", "branch": "$branch"},
                "priority": {"$max": "$priority"},
            }
        },
    ]
    urgent: dict[tuple[str, str], set[str]] = {}
    async for row in await db[ASSIGNMENTS].aggregate(pipeline):
        key = row["_id"]
        branches = urgent.setdefault((key["org"], key["department"]), set())
        if row["priority"] >= URGENT_PRIORITY:
            branches.add(key["branch"])
    return {department: frozenset(branches) for department, branches in urgent.items()}


async def get_visible(*, db: AsyncDatabase, principal: Principal, complaint_id: str) -> dict:
    return await aggregate.get_visible(
        db=db, aggregate=ASSIGNMENT, principal=principal, aggregate_id=complaint_id
    )


def to_read(document: dict[str, Any]) -> AssignmentRead:
    return from_stored(AssignmentRead, {**document, "complaint_id": document["_id"]})


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


async def open_work(
    *, db: AsyncDatabase, principal: Principal, query: dict[str, Any]
) -> tuple[list[OpenWork], int]:
    """Complaints still queued or open that match ``query`` (reported on deactivation): those
    of ``principal``'s branches, and how many of other branches' (counts only)."""
    active = {**query, "org": principal.org, "status": {"$in": [s.value for s in ACTIVE_STATUSES]}}
    scope = principal.scope_filter()
    both = any(key in active and active[key] != value for key, value in scope.items())
    cursor = db[ASSIGNMENTS].find(
        {"$and": [active, scope]} if both else {**active, **scope},
        projection={"status": 1, "department": 1, "owner_id": 1, "assigned_at": 1},
    )
    listed = [
        OpenWork(
            complaint_id=doc["_id"],
            status=doc["status"],
            department=doc["department"],
            owner_id=doc.get("owner_id"),
            assigned_at=doc.get("assigned_at"),
        )
        async for doc in cursor.sort("_id", ASCENDING)
    ]
    if principal.all_branches:
        return listed, 0
    return listed, max(0, await db[ASSIGNMENTS].count_documents(active) - len(listed))


async def _department_counts(
    *, db: AsyncDatabase, principal: Principal, department_ids: list[str]
) -> dict[str, dict[str, int]]:
    """Per department: the work it handles (whichever branch a rule sent it from: its people
    carry it), and how many complaints of the caller's branches name it responsible."""

    def count_if(condition: Any) -> dict[str, Any]:
        return {"$sum": {"$cond": [condition, 1, 0]}}

    open_status = {"$eq": ["$status", AssignmentStatus.OPEN.value]}
    active = {"$in": ["$status", [status.value for status in ACTIVE_STATUSES]]}
    pipeline = [
        {"$match": {"org": principal.org, "department": {"$in": department_ids}}},
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
        # Another branch's complaints blaming the department are that branch's business.
        {"$match": {**principal.scope_filter(), "responsible_department": {"$in": department_ids}}},
        {"$group": {"_id": "$responsible_department", "n": {"$sum": 1}}},
    ]
    async for row in await db[ASSIGNMENTS].aggregate(responsible):
        counts.setdefault(row["_id"], {})["responsible_for"] = row["n"]
    return counts


async def workload(
    *, db: AsyncDatabase, principal: Principal, branch: str | None, department: str | None
) -> WorkloadRead:
    """Open, queued, paused, breached and escalated complaints per department and owner.

    A deactivated department is shown while it still holds open or queued work (until
    5 December it was left out, and with it a queue nobody could join)."""
    departments = await list_departments(
        db=db, principal=principal, branch=branch, include_inactive=True
    )
    if department is not None:
        departments = [d for d in departments if d.id == department]
    counts = await _department_counts(
        db=db, principal=principal, department_ids=[d.id for d in departments]
    )
    departments = [
        d
        for d in departments
        if d.active or counts.get(d.id, {}).get("open") or counts.get(d.id, {}).get("queued")
    ]
    if department is not None and not departments:
        problem = not_found(what="department", identifier=department)
        problem.extensions["field"] = "department"
        raise problem
    ids = [d.id for d in departments]
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
                active=dept.active,
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
