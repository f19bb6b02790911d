"""Staff as their branch's administrators keep them: validated writes, scoped reads.

A person belongs to an active department of their branch; naming another branch's
people answers exactly like naming nobody. Every change announces ``staff.updated`` in the
same write (intake shows the person's name on the complaints they own or were escalated to).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase

from complaints_shared.auth import Principal
from complaints_shared.events import EventType, StaffUpdated
from complaints_shared.outbox import outbox_entry, outbox_fields, outbox_update
from complaints_shared.preconditions import IfMatch
from complaints_shared.problems import invalid, not_found
from complaints_shared.settings import ServiceSettings
from routing.directory import store
from routing.directory.models import StaffCreate, StaffRead, StaffStatus, StaffUpdate


async def _check_staff_department(
    *, db: AsyncDatabase, org: str, branch: str, department: str
) -> None:
    document = await db[store.DEPARTMENTS].find_one(
        {"_id": store.department_key(org, f"{branch}:{department}")}
    )
    if document is None or not document.get("active", True):
        raise invalid("department", f"branch {branch} has no active department {department!r}")


def _staff_updated(document: dict[str, Any], *, settings: ServiceSettings) -> dict[str, Any]:
    """The outbox entry announcing the person as ``document`` shows them: their name and
    department only (no capacity, skills or status go out of routing)."""
    event = StaffUpdated(
        org=document["org"],
        branch=document["branch"],
        staff_id=document["id"],
        name=document["name"],
        department=document["department_id"],
        version=document["version"],
        updated_at=document["updated_at"],
    )
    return outbox_entry(event_type=EventType.STAFF_UPDATED, data=event, settings=settings)


def _announced(
    current: dict[str, Any], changes: dict[str, Any], *, settings: ServiceSettings, now: datetime
) -> dict[str, Any]:
    """The update adding ``staff.updated`` of the person after ``changes`` to their outbox,
    for ``store.change_entry`` to make with the change (its version is the next)."""
    after = {**current, **changes, "updated_at": now, "version": current["version"] + 1}
    return outbox_update([_staff_updated(after, settings=settings)])


async def create_staff(
    *,
    db: AsyncDatabase,
    settings: ServiceSettings,
    principal: Principal,
    body: StaffCreate,
    now: datetime,
) -> StaffRead:
    principal.require_branch(body.branch, field="branch")

    async def validate() -> None:
        await store.require_active_branch(db=db, org=principal.org, code=body.branch)
        await _check_staff_department(
            db=db, org=principal.org, branch=body.branch, department=body.department
        )

    document = store.new_entry(
        key=store.staff_key(principal.org, body.id),
        fields={
            "org": principal.org,
            **body.model_dump(mode="json"),
            "department_id": f"{body.branch}:{body.department}",
            "last_assigned_at": None,
        },
        now=now,
    )
    document.update(outbox_fields([_staff_updated(document, settings=settings)]))
    stored = await store.insert_entry(
        db=db,
        principal=principal,
        entry=store.STAFF_MEMBER,
        document=document,
        at=now,
        validate=validate,
    )
    return store.staff_read(stored)


async def _staff_document(*, db: AsyncDatabase, principal: Principal, staff_id: str) -> dict:
    document = await store.visible_staff(db=db, principal=principal, staff_id=staff_id)
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
        # Another branch's department does not exist for the token: a 404, as for ``branch``
        # (until 6 December a quietly empty list).
        department_branch, _ = store.split_department_id(department)
        principal.require_branch(
            department_branch, what="department", identifier=department, field="department"
        )
        query["department_id"] = department
    if status is not None:
        query["status"] = status.value
    return await db[store.STAFF].find(query).sort("_id", ASCENDING).to_list(None)


async def update_staff(
    *,
    db: AsyncDatabase,
    settings: ServiceSettings,
    principal: Principal,
    staff_id: str,
    body: StaffUpdate,
    if_match: IfMatch | None,
    now: datetime,
) -> dict[str, Any]:
    current = await _staff_document(db=db, principal=principal, staff_id=staff_id)
    changes = store.patch_fields(body, nullable=set())
    if body.department is not None:
        changes["department_id"] = f"{current['branch']}:{body.department}"

    async def validate() -> None:
        if body.department is not None:
            await _check_staff_department(
                db=db, org=principal.org, branch=current["branch"], department=body.department
            )

    updated = await store.change_entry(
        db=db,
        principal=principal,
        entry=store.STAFF_MEMBER,
        current=current,
        changes=changes,
        action="updated",
        at=now,
        if_match=if_match,
        validate=validate,
        announce=_announced(current, changes, settings=settings, now=now),
    )
    return updated


async def deactivate_staff(
    *,
    db: AsyncDatabase,
    settings: ServiceSettings,
    principal: Principal,
    staff_id: str,
    if_match: IfMatch | None,
    now: datetime,
) -> dict[str, Any]:
    current = await _staff_document(db=db, principal=principal, staff_id=staff_id)
    changes = {"status": StaffStatus.INACTIVE.value}
    updated = await store.change_entry(
        db=db,
        principal=principal,
        entry=store.STAFF_MEMBER,
        current=current,
        changes=changes,
        action="deactivated",
        at=now,
        if_match=if_match,
        announce=_announced(current, changes, settings=settings, now=now),
    )
    return updated
