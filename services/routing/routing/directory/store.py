"""Data access for the organisation directory: branches, departments, staff. No HTTP here.

Every write validates its references first (unknown branch, department or
person; cyclic or empty escalation chains) and answers a 422 naming the field;
ids outside the caller's organisation or branches are simply not found.
"""

from __future__ import annotations

from datetime import datetime, time
from itertools import pairwise
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import holidays
from pymongo import ASCENDING, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from complaints_shared.auth import Principal
from complaints_shared.events import BranchUpdated, EventType
from complaints_shared.models import Weekday
from complaints_shared.mongo import merge_updates
from complaints_shared.outbox import (
    OUTBOX_FIELD,
    PENDING_SINCE_FIELD,
    outbox_entry,
    outbox_fields,
    outbox_update,
)
from complaints_shared.problems import conflict, invalid, not_found
from complaints_shared.settings import ServiceSettings
from routing import audit
from routing.directory.models import (
    ROLE_RANK,
    BranchCreate,
    BranchRead,
    BranchUpdate,
    DepartmentCreate,
    DepartmentRead,
    DepartmentUpdate,
    EscalationStep,
    HolidayCalendar,
    OpeningRange,
    StaffCreate,
    StaffRead,
    StaffStatus,
    StaffUpdate,
)

BRANCHES = "branches"
DEPARTMENTS = "departments"
STAFF = "staff"
# Staff field: open slots as last counted by routing; a ranking hint, never the capacity check.
LOAD_HINT = "load_hint"


async def ensure_indexes(*, db: AsyncDatabase) -> None:
    await db[BRANCHES].create_index([("org", ASCENDING), ("code", ASCENDING)], name="org_code")
    await db[DEPARTMENTS].create_index(
        [("org", ASCENDING), ("branch", ASCENDING), ("kind", ASCENDING)], name="org_branch_kind"
    )
    await db[STAFF].create_index(
        [("org", ASCENDING), ("branch", ASCENDING), ("department", ASCENDING)],
        name="org_branch_department",
    )


def branch_key(org: str, code: str) -> str:
    return f"{org}:{code}"


def department_key(org: str, department_id: str) -> str:
    return f"{org}:{department_id}"


def staff_key(org: str, staff_id: str) -> str:
    return f"{org}:{staff_id}"


def split_department_id(department_id: str) -> tuple[str, str]:
    branch, _, code = department_id.partition(":")
    return branch, code


async def _write_versioned(
    *,
    db: AsyncDatabase,
    collection: str,
    current: dict[str, Any],
    changes: dict[str, Any],
    announce: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Apply ``changes`` only if nobody changed the document since it was read.

    ``announce`` is the outbox update of the events the change causes, in the same write.
    """
    updated = await db[collection].find_one_and_update(
        {"_id": current["_id"], "version": current["version"]},
        merge_updates({"$set": changes, "$inc": {"version": 1}}, announce or {}),
        return_document=ReturnDocument.AFTER,
    )
    if updated is None:
        raise conflict(
            f"{collection[:-1]} {current['_id']!r} changed while this request was validated; retry"
        )
    return updated


def _without_nulls(changes: dict[str, Any], *, nullable: set[str]) -> dict[str, Any]:
    """A PATCH may clear only the fields that are optional; ``null`` elsewhere is a 422."""
    for field, value in changes.items():
        if value is None and field not in nullable:
            raise invalid(field, "may not be null")
    return changes


def _audit_snapshot(document: dict[str, Any]) -> dict[str, Any]:
    # The load hint and the outbox are bookkeeping, not part of what an administrator changed.
    bookkeeping = {"_id", LOAD_HINT, OUTBOX_FIELD, PENDING_SINCE_FIELD}
    return {key: value for key, value in document.items() if key not in bookkeeping}


# ------------------------------------------------------------------ branches --


def _check_time_zone(time_zone: str) -> None:
    try:
        ZoneInfo(time_zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise invalid("time_zone", f"unknown IANA time zone {time_zone!r}") from None


def _check_holidays(calendar: HolidayCalendar) -> None:
    if calendar.country is None:
        return
    try:
        holidays.country_holidays(calendar.country, subdiv=calendar.subdivision, language="en_US")
    except NotImplementedError as exc:
        field = "holidays.subdivision" if "subdivision" in str(exc) else "holidays.country"
        raise invalid(field, str(exc)) from None
    both = set(calendar.closed_days) & set(calendar.working_days)
    if both:
        days = ", ".join(sorted(day.isoformat() for day in both))
        raise invalid("holidays.working_days", f"{days} also listed as closed days")


def _check_hours(hours: dict[Weekday, list[OpeningRange]]) -> None:
    if not any(hours.values()):
        raise invalid("hours", "a branch needs opening hours on at least one weekday")
    for weekday, ranges in hours.items():
        ordered = sorted(ranges, key=lambda slot: slot.start)
        for earlier, later in pairwise(ordered):
            if earlier.end == time(0) or later.start < earlier.end:
                raise invalid(f"hours.{weekday.value}", "opening ranges overlap")


async def visible_staff(
    *, db: AsyncDatabase, principal: Principal, staff_id: str
) -> dict[str, Any] | None:
    """The staff member, if the caller's branches cover them; otherwise as if unknown.

    Every reference to a person in a write goes through here, so naming another branch's
    people answers exactly like naming nobody: the id's existence elsewhere never shows.
    """
    document = await db[STAFF].find_one({"_id": staff_key(principal.org, staff_id)})
    if document is None or not principal.can_see(org=principal.org, branch=document["branch"]):
        return None
    return document


async def visible_department(
    *, db: AsyncDatabase, principal: Principal, department_id: str
) -> DepartmentRead | None:
    """The department, if the caller's branches cover it; otherwise as if unknown."""
    document = await db[DEPARTMENTS].find_one({"_id": department_key(principal.org, department_id)})
    if document is None or not principal.can_see(org=principal.org, branch=document["branch"]):
        return None
    return department_read(document)


async def _check_duty_officer(
    *, db: AsyncDatabase, principal: Principal, staff_id: str | None
) -> None:
    if staff_id is None:
        return
    person = await visible_staff(db=db, principal=principal, staff_id=staff_id)
    if person is None:
        raise invalid("duty_officer_id", f"unknown staff member {staff_id!r}")
    if person["status"] == StaffStatus.INACTIVE.value:
        raise invalid("duty_officer_id", f"staff member {staff_id!r} is inactive")


def branch_read(document: dict[str, Any]) -> BranchRead:
    return BranchRead.model_validate(document)


def _branch_updated(document: dict[str, Any], *, settings: ServiceSettings) -> dict[str, Any]:
    """The outbox entry announcing the branch as ``document`` shows it (intake numbers
    references in the branch's time zone from it)."""
    event = BranchUpdated(
        org=document["org"],
        branch=document["code"],
        name=document["name"],
        time_zone=document["time_zone"],
        active=document.get("active", True),
        version=document["version"],
        updated_at=document["updated_at"],
    )
    return outbox_entry(event_type=EventType.BRANCH_UPDATED, data=event, settings=settings)


async def create_branch(
    *,
    db: AsyncDatabase,
    settings: ServiceSettings,
    principal: Principal,
    body: BranchCreate,
    now: datetime,
) -> BranchRead:
    _check_time_zone(body.time_zone)
    _check_hours(body.hours)
    _check_holidays(body.holidays)
    await _check_duty_officer(db=db, principal=principal, staff_id=body.duty_officer_id)
    document = {
        "_id": branch_key(principal.org, body.code),
        "org": principal.org,
        **body.model_dump(mode="json"),
        "active": True,
        "version": 1,
        "created_at": now,
        "updated_at": now,
    }
    document.update(outbox_fields([_branch_updated(document, settings=settings)]))
    try:
        await db[BRANCHES].insert_one(document)
    except DuplicateKeyError:
        raise conflict(f"branch {body.code!r} already exists") from None
    await _audit(db, principal, "branch", body.code, "created", now, document)
    return branch_read(document)


async def _branch_document(*, db: AsyncDatabase, principal: Principal, code: str) -> dict:
    principal.require_branch(code)
    document = await db[BRANCHES].find_one({"_id": branch_key(principal.org, code)})
    if document is None:
        raise not_found(what="branch", identifier=code)
    return document


async def get_branch(*, db: AsyncDatabase, principal: Principal, code: str) -> BranchRead:
    return branch_read(await _branch_document(db=db, principal=principal, code=code))


async def list_branches(
    *, db: AsyncDatabase, principal: Principal, include_inactive: bool
) -> list[BranchRead]:
    query: dict[str, Any] = {"org": principal.org}
    if not principal.all_branches:
        query["code"] = {"$in": list(principal.branches)}
    if not include_inactive:
        query["active"] = True
    documents = await db[BRANCHES].find(query).sort("code", ASCENDING).to_list(None)
    return [branch_read(document) for document in documents]


async def update_branch(
    *,
    db: AsyncDatabase,
    settings: ServiceSettings,
    principal: Principal,
    code: str,
    body: BranchUpdate,
    now: datetime,
) -> BranchRead:
    current = await _branch_document(db=db, principal=principal, code=code)
    changes = _without_nulls(
        body.model_dump(mode="json", exclude_unset=True), nullable={"duty_officer_id"}
    )
    merged = BranchRead.model_validate({**current, **changes})
    _check_time_zone(merged.time_zone)
    _check_hours(merged.hours)
    _check_holidays(merged.holidays)
    if "duty_officer_id" in changes:
        await _check_duty_officer(db=db, principal=principal, staff_id=merged.duty_officer_id)
    changes = {**changes, "updated_at": now}
    announced = {**current, **changes, "version": current["version"] + 1}
    updated = await _write_versioned(
        db=db,
        collection=BRANCHES,
        current=current,
        changes=changes,
        announce=outbox_update([_branch_updated(announced, settings=settings)]),
    )
    await _audit(db, principal, "branch", code, "updated", now, updated)
    return branch_read(updated)


async def deactivate_branch(
    *,
    db: AsyncDatabase,
    settings: ServiceSettings,
    principal: Principal,
    code: str,
    now: datetime,
) -> BranchRead:
    current = await _branch_document(db=db, principal=principal, code=code)
    changes = {"active": False, "updated_at": now}
    announced = {**current, **changes, "version": current["version"] + 1}
    updated = await _write_versioned(
        db=db,
        collection=BRANCHES,
        current=current,
        changes=changes,
        announce=outbox_update([_branch_updated(announced, settings=settings)]),
    )
    await _audit(db, principal, "branch", code, "deactivated", now, updated)
    return branch_read(updated)


# --------------------------------------------------------------- departments --


def department_read(document: dict[str, Any]) -> DepartmentRead:
    return DepartmentRead.model_validate(document)


async def _check_chain(
    *, db: AsyncDatabase, principal: Principal, chain: list[EscalationStep]
) -> None:
    """Chains go up: no person or role twice (a cycle), never back down a rank."""
    if not chain:
        raise invalid("escalation_chain", "an escalation chain needs at least one step")
    seen: set[str] = set()
    highest_rank = 0
    for index, step in enumerate(chain):
        field = f"escalation_chain.{index}"
        if step.staff_id is not None:
            person = await visible_staff(db=db, principal=principal, staff_id=step.staff_id)
            if person is None:
                raise invalid(f"{field}.staff_id", f"unknown staff member {step.staff_id!r}")
            key, rank = f"staff:{step.staff_id}", ROLE_RANK[person["role"]]
        else:
            assert step.role is not None  # the model guarantees one of the two
            key, rank = f"role:{step.role.value}", ROLE_RANK[step.role]
        if key in seen:
            raise invalid(field, f"{key} appears twice: the chain would loop")
        if rank < highest_rank:
            raise invalid(field, f"{key} ranks below an earlier step: escalation would go down")
        seen.add(key)
        highest_rank = max(highest_rank, rank)


async def _check_kind_free(
    *, db: AsyncDatabase, org: str, branch: str, kind: str, except_code: str | None = None
) -> None:
    query: dict[str, Any] = {"org": org, "branch": branch, "kind": kind, "active": True}
    if except_code is not None:
        query["code"] = {"$ne": except_code}
    other = await db[DEPARTMENTS].find_one(query)
    if other is not None:
        raise invalid(
            "kind", f"branch {branch} already has department {other['id']} of kind {kind!r}"
        )


async def create_department(
    *, db: AsyncDatabase, principal: Principal, body: DepartmentCreate, now: datetime
) -> DepartmentRead:
    principal.require_branch(body.branch, field="branch")
    branch = await db[BRANCHES].find_one({"_id": branch_key(principal.org, body.branch)})
    if branch is None or not branch.get("active", True):
        raise invalid("branch", f"unknown or inactive branch {body.branch!r}")
    await _check_chain(db=db, principal=principal, chain=body.escalation_chain)
    await _check_kind_free(db=db, org=principal.org, branch=body.branch, kind=body.kind)
    department_id = f"{body.branch}:{body.code}"
    document = {
        "_id": department_key(principal.org, department_id),
        "id": department_id,
        "org": principal.org,
        **body.model_dump(mode="json"),
        "active": True,
        "version": 1,
        "created_at": now,
        "updated_at": now,
    }
    try:
        await db[DEPARTMENTS].insert_one(document)
    except DuplicateKeyError:
        raise conflict(f"department {department_id!r} already exists") from None
    await _audit(db, principal, "department", department_id, "created", now, document)
    return department_read(document)


async def _department_document(
    *, db: AsyncDatabase, principal: Principal, department_id: str
) -> dict[str, Any]:
    branch, _ = split_department_id(department_id)
    principal.require_branch(branch, what="department", identifier=department_id)
    document = await db[DEPARTMENTS].find_one({"_id": department_key(principal.org, department_id)})
    if document is None:
        raise not_found(what="department", identifier=department_id)
    return document


async def get_department(
    *, db: AsyncDatabase, principal: Principal, department_id: str
) -> DepartmentRead:
    document = await _department_document(db=db, principal=principal, department_id=department_id)
    return department_read(document)


async def list_departments(
    *, db: AsyncDatabase, principal: Principal, branch: str | None, include_inactive: bool
) -> list[DepartmentRead]:
    query: dict[str, Any] = principal.scope_filter()
    if branch is not None:
        principal.require_branch(branch, field="branch")
        query["branch"] = branch
    if not include_inactive:
        query["active"] = True
    documents = await db[DEPARTMENTS].find(query).sort("_id", ASCENDING).to_list(None)
    return [department_read(document) for document in documents]


async def update_department(
    *,
    db: AsyncDatabase,
    principal: Principal,
    department_id: str,
    body: DepartmentUpdate,
    now: datetime,
) -> DepartmentRead:
    current = await _department_document(db=db, principal=principal, department_id=department_id)
    changes = _without_nulls(body.model_dump(mode="json", exclude_unset=True), nullable=set())
    if body.escalation_chain is not None:
        await _check_chain(db=db, principal=principal, chain=body.escalation_chain)
    if body.kind is not None:
        await _check_kind_free(
            db=db,
            org=principal.org,
            branch=current["branch"],
            kind=body.kind,
            except_code=current["code"],
        )
    updated = await _write_versioned(
        db=db, collection=DEPARTMENTS, current=current, changes={**changes, "updated_at": now}
    )
    await _audit(db, principal, "department", department_id, "updated", now, updated)
    return department_read(updated)


async def deactivate_department(
    *, db: AsyncDatabase, principal: Principal, department_id: str, now: datetime
) -> DepartmentRead:
    current = await _department_document(db=db, principal=principal, department_id=department_id)
    updated = await _write_versioned(
        db=db, collection=DEPARTMENTS, current=current, changes={"active": False, "updated_at": now}
    )
    await _audit(db, principal, "department", department_id, "deactivated", now, updated)
    return department_read(updated)


# --------------------------------------------------------------------- staff --


def staff_read(document: dict[str, Any], *, open_load: int = 0) -> StaffRead:
    return StaffRead.model_validate({**document, "open_load": open_load})


async def _check_staff_department(
    *, db: AsyncDatabase, org: str, branch: str, department: str
) -> None:
    document = await db[DEPARTMENTS].find_one(
        {"_id": department_key(org, f"{branch}:{department}")}
    )
    if document is None or not document.get("active", True):
        raise invalid("department", f"branch {branch} has no active department {department!r}")


async def create_staff(
    *, db: AsyncDatabase, principal: Principal, body: StaffCreate, now: datetime
) -> StaffRead:
    principal.require_branch(body.branch, field="branch")
    branch = await db[BRANCHES].find_one({"_id": branch_key(principal.org, body.branch)})
    if branch is None or not branch.get("active", True):
        raise invalid("branch", f"unknown or inactive branch {body.branch!r}")
    await _check_staff_department(
        db=db, org=principal.org, branch=body.branch, department=body.department
    )
    document = {
        "_id": staff_key(principal.org, body.id),
        "org": principal.org,
        **body.model_dump(mode="json"),
        "department_id": f"{body.branch}:{body.department}",
        "last_assigned_at": None,
        "version": 1,
        "created_at": now,
        "updated_at": now,
    }
    try:
        await db[STAFF].insert_one(document)
    except DuplicateKeyError:
        raise conflict(f"staff member {body.id!r} already exists") from None
    await _audit(db, principal, "staff", body.id, "created", now, document)
    return staff_read(document)


async def _staff_document(*, db: AsyncDatabase, principal: Principal, staff_id: str) -> dict:
    document = await visible_staff(db=db, principal=principal, staff_id=staff_id)
    if document is None:
        raise not_found(what="staff member", identifier=staff_id)
    return document


async def get_staff_document(*, db: AsyncDatabase, principal: Principal, staff_id: str) -> dict:
    return await _staff_document(db=db, principal=principal, staff_id=staff_id)


async def list_staff(
    *,
    db: AsyncDatabase,
    principal: Principal,
    branch: str | None,
    department: str | None,
    status: StaffStatus | None,
) -> list[dict[str, Any]]:
    query: dict[str, Any] = principal.scope_filter()
    if branch is not None:
        principal.require_branch(branch, field="branch")
        query["branch"] = branch
    if department is not None:
        query["department_id"] = department
    if status is not None:
        query["status"] = status.value
    return await db[STAFF].find(query).sort("_id", ASCENDING).to_list(None)


async def update_staff(
    *, db: AsyncDatabase, principal: Principal, staff_id: str, body: StaffUpdate, now: datetime
) -> dict[str, Any]:
    current = await _staff_document(db=db, principal=principal, staff_id=staff_id)
    changes = _without_nulls(body.model_dump(mode="json", exclude_unset=True), nullable=set())
    if body.department is not None:
        await _check_staff_department(
            db=db, org=principal.org, branch=current["branch"], department=body.department
        )
        changes["department_id"] = f"{current['branch']}:{body.department}"
    updated = await _write_versioned(
        db=db, collection=STAFF, current=current, changes={**changes, "updated_at": now}
    )
    await _audit(db, principal, "staff", staff_id, "updated", now, updated)
    return updated


async def deactivate_staff(
    *, db: AsyncDatabase, principal: Principal, staff_id: str, now: datetime
) -> dict[str, Any]:
    current = await _staff_document(db=db, principal=principal, staff_id=staff_id)
    updated = await _write_versioned(
        db=db,
        collection=STAFF,
        current=current,
        changes={"status": StaffStatus.INACTIVE.value, "updated_at": now},
    )
    await _audit(db, principal, "staff", staff_id, "deactivated", now, updated)
    return updated


# ------------------------------------------------------- lookups for routing --


async def find_branch(*, db: AsyncDatabase, org: str, code: str) -> BranchRead | None:
    document = await db[BRANCHES].find_one({"_id": branch_key(org, code)})
    return branch_read(document) if document else None


async def find_department(
    *, db: AsyncDatabase, org: str, department_id: str
) -> DepartmentRead | None:
    document = await db[DEPARTMENTS].find_one({"_id": department_key(org, department_id)})
    return department_read(document) if document else None


async def departments_for_routing(
    *, db: AsyncDatabase, org: str, branch: str, department_ids: list[str]
) -> list[DepartmentRead]:
    """Active departments a rule can reach from ``branch``: its own and explicit targets."""
    query = {
        "org": org,
        "active": True,
        "$or": [{"branch": branch}, {"id": {"$in": department_ids}}],
    }
    return [department_read(document) async for document in db[DEPARTMENTS].find(query)]


async def staff_of_branches(*, db: AsyncDatabase, org: str, branches: list[str]) -> list[StaffRead]:
    query = {"org": org, "branch": {"$in": sorted(set(branches))}}
    return [staff_read(doc) async for doc in db[STAFF].find(query)]


async def find_staff(*, db: AsyncDatabase, org: str, staff_id: str) -> StaffRead | None:
    document = await db[STAFF].find_one({"_id": staff_key(org, staff_id)})
    return staff_read(document) if document else None


async def visible_staff_ids(
    *, db: AsyncDatabase, principal: Principal, staff_ids: list[str]
) -> set[str]:
    """Those of ``staff_ids`` the caller's branches cover."""
    query = {**principal.scope_filter(), "id": {"$in": sorted(set(staff_ids))}}
    return {doc["id"] async for doc in db[STAFF].find(query, projection={"id": 1})}


async def record_assignment(*, db: AsyncDatabase, org: str, staff_id: str, at: datetime) -> None:
    """Someone took one of the owner's slots: tie-break time and load hint, in one write.

    ``load_hint`` only ranks candidates cheaply; the slots themselves stay the truth
    (see ``routing.assignments.owners``), and ``owners.reconcile_load_hints`` corrects
    any drift.
    """
    await db[STAFF].update_one(
        {"_id": staff_key(org, staff_id)},
        {"$max": {"last_assigned_at": at}, "$inc": {LOAD_HINT: 1}},
    )


async def record_release(*, db: AsyncDatabase, org: str, staff_id: str) -> None:
    """One of the owner's slots came free (finished or moved away)."""
    await db[STAFF].update_one(
        {"_id": staff_key(org, staff_id), LOAD_HINT: {"$gt": 0}}, {"$inc": {LOAD_HINT: -1}}
    )


async def desk(*, db: AsyncDatabase, org: str, department_id: str) -> list[StaffRead]:
    """The department's people with ``open_load`` set to their load *hint* (not exact)."""
    query = {"org": org, "department_id": department_id}
    return [
        staff_read(doc, open_load=doc.get(LOAD_HINT, 0))
        async for doc in db[STAFF].find(query).sort("_id", ASCENDING)
    ]


async def _audit(
    db: AsyncDatabase,
    principal: Principal,
    entity: str,
    entity_id: str,
    action: str,
    at: datetime,
    document: dict[str, Any],
) -> None:
    await audit.record_change(
        db=db,
        principal=principal,
        entity=entity,
        entity_id=entity_id,
        action=action,
        at=at,
        snapshot=_audit_snapshot(document),
    )
