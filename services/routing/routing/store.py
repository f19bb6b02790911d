"""Data access for routing: directory, rules, assignments. No HTTP here."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from complaints_shared.auth import Principal
from complaints_shared.envelope import CloudEvent
from complaints_shared.events import ComplaintAssigned, ComplaintReceived, EventType
from complaints_shared.logs import get_logger
from complaints_shared.outbox import outbox_entry
from complaints_shared.problems import not_found
from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from routing.models import (
    AssignmentRead,
    AssignmentStatus,
    Department,
    RoutingRule,
    Staff,
    StaffStatus,
)
from routing.rules import matching_rules
from routing.settings import RoutingSettings
from routing.sla import due_times

BRANCHES = "branches"
DEPARTMENTS = "departments"
STAFF = "staff"
RULES = "rules"
ASSIGNMENTS = "assignments"

log = get_logger(__name__)


async def ensure_indexes(*, db: AsyncDatabase) -> None:
    await db[DEPARTMENTS].create_index(
        [("org", ASCENDING), ("branch", ASCENDING), ("kind", ASCENDING)], name="org_branch_kind"
    )
    await db[STAFF].create_index(
        [("org", ASCENDING), ("branch", ASCENDING), ("department", ASCENDING)],
        name="org_branch_department",
    )
    await db[RULES].create_index([("org", ASCENDING), ("position", ASCENDING)], name="org_pos")
    await db[ASSIGNMENTS].create_index(
        [("owner_id", ASCENDING), ("status", ASCENDING)], name="owner_status"
    )


async def load_rules(*, db: AsyncDatabase, org: str) -> list[RoutingRule]:
    cursor = db[RULES].find({"org": org}).sort("position", ASCENDING)
    return [RoutingRule.model_validate({**doc, "id": doc["_id"]}) async for doc in cursor]


async def find_department(
    *, db: AsyncDatabase, org: str, branch: str, rule: RoutingRule
) -> Department | None:
    """Resolve a rule's target in the complaint's branch (or the explicit department)."""
    if rule.action.department_id is not None:
        target_branch, _, code = rule.action.department_id.partition(":")
        query = {"org": org, "branch": target_branch, "code": code}
    else:
        query = {"org": org, "branch": branch, "kind": rule.action.department_kind}
    document = await db[DEPARTMENTS].find_one(query)
    return Department.model_validate(document) if document else None


async def open_loads(*, db: AsyncDatabase, staff_ids: list[str]) -> dict[str, int]:
    """Open assignments per owner, derived from the assignments themselves (never drifts)."""
    pipeline = [
        {"$match": {"owner_id": {"$in": staff_ids}, "status": AssignmentStatus.OPEN.value}},
        {"$group": {"_id": "$owner_id", "open": {"$sum": 1}}},
    ]
    loads = {staff_id: 0 for staff_id in staff_ids}
    async for row in await db[ASSIGNMENTS].aggregate(pipeline):
        loads[row["_id"]] = row["open"]
    return loads


async def choose_owner(*, db: AsyncDatabase, department: Department) -> Staff | None:
    """Least open load first; ties go to whoever waited longest since their last assignment."""
    documents = (
        await db[STAFF]
        .find(
            {
                "org": department.org,
                "branch": department.branch,
                "department": department.code,
                "status": StaffStatus.ACTIVE.value,
            }
        )
        .to_list(None)
    )
    if not documents:
        return None
    loads = await open_loads(db=db, staff_ids=[doc["_id"] for doc in documents])
    never = datetime.min.replace(tzinfo=UTC)
    available = [doc for doc in documents if loads[doc["_id"]] < doc.get("capacity", 0)]
    if not available:
        return None
    chosen = min(
        available,
        key=lambda doc: (loads[doc["_id"]], doc.get("last_assigned_at") or never, doc["_id"]),
    )
    return Staff.model_validate({**chosen, "id": chosen["_id"]})


async def assign_received(
    *, db: AsyncDatabase, settings: RoutingSettings, complaint: ComplaintReceived
) -> bool:
    """Route a received complaint once; False when it was already assigned."""
    if await db[ASSIGNMENTS].find_one({"_id": complaint.complaint_id}, projection={"_id": 1}):
        return False
    rules = await load_rules(db=db, org=complaint.org)
    department: Department | None = None
    matched: RoutingRule | None = None
    for rule in matching_rules(rules, complaint):
        department = await find_department(
            db=db, org=complaint.org, branch=complaint.branch, rule=rule
        )
        if department is not None:
            matched = rule
            break
    if matched is None or department is None:
        raise LookupError(
            f"no routing rule with an existing department matches complaint "
            f"{complaint.complaint_id} of org {complaint.org!r}; add a default rule"
        )
    owner = await choose_owner(db=db, department=department)
    now = datetime.now(UTC)
    acknowledge_due_at, resolve_due_at = due_times(
        severity=complaint.severity, received_at=complaint.received_at
    )
    assigned = ComplaintAssigned(
        complaint_id=complaint.complaint_id,
        org=complaint.org,
        branch=complaint.branch,
        department=department.department_id,
        department_name=department.name,
        owner_id=owner.id if owner else None,
        owner_name=owner.name if owner else None,
        rule_id=matched.id,
        rule_version=matched.version,
        assigned_at=now,
        acknowledge_due_at=acknowledge_due_at,
        resolve_due_at=resolve_due_at,
    )
    document: dict[str, Any] = {
        "_id": complaint.complaint_id,
        **assigned.model_dump(exclude={"complaint_id"}),
        "severity": complaint.severity.value,
        "category": complaint.category.value,
        "status": AssignmentStatus.OPEN.value,
        "outbox": [
            outbox_entry(event_type=EventType.COMPLAINT_ASSIGNED, data=assigned, settings=settings)
        ],
        "outbox_pending_since": now,
    }
    try:
        await db[ASSIGNMENTS].insert_one(document)
    except DuplicateKeyError:
        return False  # a redelivery or another replica got there first
    if owner is not None:
        await db[STAFF].update_one({"_id": owner.id}, {"$set": {"last_assigned_at": now}})
    log.info("complaint_assigned", department=department.department_id, owner=assigned.owner_id)
    return True


async def set_assignment_status(
    *, db: AsyncDatabase, event: CloudEvent, complaint_id: str, status: AssignmentStatus
) -> None:
    """Follow the complaint's life so open loads stay right; older events never win."""
    await db[ASSIGNMENTS].update_one(
        {
            "_id": complaint_id,
            "$or": [
                {"status_changed_at": {"$exists": False}},
                {"status_changed_at": {"$lt": event.time}},
            ],
        },
        {"$set": {"status": status.value, "status_changed_at": event.time}},
    )


async def get_assignment(
    *, db: AsyncDatabase, principal: Principal, complaint_id: str
) -> AssignmentRead:
    document = await db[ASSIGNMENTS].find_one(
        {"_id": complaint_id, **principal.scope_filter()}, projection={"outbox": 0}
    )
    if document is None:
        raise not_found(what="assignment", identifier=complaint_id)
    return AssignmentRead.model_validate({**document, "complaint_id": document["_id"]})
