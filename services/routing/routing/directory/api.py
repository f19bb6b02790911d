"""HTTP routes of the directory (admin): branches, departments, staff."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request, Response, status

from complaints_shared.access import Scope, allow
from complaints_shared.auth import Role
from complaints_shared.preconditions import IfMatchHeader, tag
from complaints_shared.runtime import Runtime, runtime_of
from routing import audit
from routing.assignments import queue, store, unroutable
from routing.directory import branches, departments, staff
from routing.directory import store as directory_store
from routing.directory.models import (
    BranchCreate,
    BranchRead,
    BranchUpdate,
    DeactivationReport,
    DepartmentCreate,
    DepartmentRead,
    DepartmentUpdate,
    StaffCreate,
    StaffRead,
    StaffStatus,
    StaffUpdate,
)

router = APIRouter(prefix="/v1/directory", tags=["directory"])

# Opening and closing branches shapes the organisation; a branch's own entry (hours,
# holidays, duty officer), its departments and its people are its admin's business.
BranchOpener = allow(Role.ADMIN, scope=Scope.ORGANISATION, action="opening or closing a branch")
Auditor = allow(Role.ADMIN, scope=Scope.ORGANISATION, action="reading the directory's audit trail")
BranchAdmin = allow(Role.ADMIN, scope=Scope.BRANCH, action="managing a branch's directory")


async def _staff_read(runtime: Runtime, document: dict[str, Any]) -> StaffRead:
    loads = await store.open_loads(db=runtime.db, org=document["org"], staff_ids=[document["id"]])
    return directory_store.staff_read(document, open_load=loads[document["id"]])


async def _offer_queue(runtime: Runtime, *, org: str, department_id: str) -> None:
    """Someone new, more capacity, back from leave: queued work may fit now."""
    await queue.drain_queue(
        db=runtime.db,
        settings=runtime.settings,
        org=org,
        department_id=department_id,
        now=runtime.clock.now(),
    )


# ------------------------------------------------------------------ branches --


@router.post("/branches", status_code=status.HTTP_201_CREATED, response_model=BranchRead)
async def create_branch(
    body: BranchCreate, request: Request, response: Response, principal: BranchOpener
) -> BranchRead:
    runtime = runtime_of(request)
    created = await branches.create_branch(
        db=runtime.db,
        settings=runtime.settings,
        principal=principal,
        body=body,
        now=runtime.clock.now(),
    )
    tag(response, created.version)
    return created


@router.get("/branches", response_model=list[BranchRead])
async def list_branches(
    request: Request, principal: BranchAdmin, include_inactive: bool = False
) -> list[BranchRead]:
    runtime = runtime_of(request)
    return await branches.list_branches(
        db=runtime.db, principal=principal, include_inactive=include_inactive
    )


@router.get("/branches/{code}", response_model=BranchRead)
async def get_branch(
    code: str, request: Request, response: Response, principal: BranchAdmin
) -> BranchRead:
    runtime = runtime_of(request)
    found = await branches.get_branch(db=runtime.db, principal=principal, code=code)
    tag(response, found.version)
    return found


@router.patch("/branches/{code}", response_model=BranchRead)
async def update_branch(
    code: str,
    body: BranchUpdate,
    request: Request,
    response: Response,
    principal: BranchAdmin,
    if_match: IfMatchHeader,
) -> BranchRead:
    runtime = runtime_of(request)
    updated = await branches.update_branch(
        db=runtime.db,
        settings=runtime.settings,
        principal=principal,
        code=code,
        body=body,
        if_match=if_match,
        now=runtime.clock.now(),
    )
    tag(response, updated.version)
    return updated


@router.post("/branches/{code}/deactivate", response_model=DeactivationReport)
async def deactivate_branch(
    code: str,
    request: Request,
    response: Response,
    principal: BranchOpener,
    if_match: IfMatchHeader,
) -> DeactivationReport:
    runtime = runtime_of(request)
    updated = await branches.deactivate_branch(
        db=runtime.db,
        settings=runtime.settings,
        principal=principal,
        code=code,
        if_match=if_match,
        now=runtime.clock.now(),
    )
    work, elsewhere = await store.open_work(
        db=runtime.db, principal=principal, query={"branch": code}
    )
    tag(response, updated.version)
    return DeactivationReport(
        deactivated=code,
        version=updated.version,
        open_work=work,
        open_work_of_other_branches=elsewhere,
    )


@router.post("/branches/{code}/reactivate", response_model=BranchRead)
async def reactivate_branch(
    code: str,
    request: Request,
    response: Response,
    principal: BranchOpener,
    if_match: IfMatchHeader,
) -> BranchRead:
    """Reopen a closed branch: its active departments take work again."""
    runtime = runtime_of(request)
    reopened = await branches.reactivate_branch(
        db=runtime.db,
        settings=runtime.settings,
        principal=principal,
        code=code,
        if_match=if_match,
        now=runtime.clock.now(),
    )
    await unroutable.retry_after_change(runtime, org=principal.org)
    tag(response, reopened.version)
    return reopened


# --------------------------------------------------------------- departments --


@router.post("/departments", status_code=status.HTTP_201_CREATED, response_model=DepartmentRead)
async def create_department(
    body: DepartmentCreate, request: Request, response: Response, principal: BranchAdmin
) -> DepartmentRead:
    runtime = runtime_of(request)
    created = await departments.create_department(
        db=runtime.db,
        settings=runtime.settings,
        principal=principal,
        body=body,
        now=runtime.clock.now(),
    )
    await unroutable.retry_after_change(runtime, org=principal.org)
    tag(response, created.version)
    return created


@router.get("/departments", response_model=list[DepartmentRead])
async def list_departments(
    request: Request,
    principal: BranchAdmin,
    branch: str | None = None,
    include_inactive: bool = False,
) -> list[DepartmentRead]:
    runtime = runtime_of(request)
    return await departments.list_departments(
        db=runtime.db, principal=principal, branch=branch, include_inactive=include_inactive
    )


@router.get("/departments/{department_id}", response_model=DepartmentRead)
async def get_department(
    department_id: str, request: Request, response: Response, principal: BranchAdmin
) -> DepartmentRead:
    runtime = runtime_of(request)
    found = await departments.get_department(
        db=runtime.db, principal=principal, department_id=department_id
    )
    tag(response, found.version)
    return found


@router.patch("/departments/{department_id}", response_model=DepartmentRead)
async def update_department(
    department_id: str,
    body: DepartmentUpdate,
    request: Request,
    response: Response,
    principal: BranchAdmin,
    if_match: IfMatchHeader,
) -> DepartmentRead:
    runtime = runtime_of(request)
    updated = await departments.update_department(
        db=runtime.db,
        settings=runtime.settings,
        principal=principal,
        department_id=department_id,
        body=body,
        if_match=if_match,
        now=runtime.clock.now(),
    )
    await unroutable.retry_after_change(runtime, org=principal.org)
    tag(response, updated.version)
    return updated


@router.post("/departments/{department_id}/deactivate", response_model=DeactivationReport)
async def deactivate_department(
    department_id: str,
    request: Request,
    response: Response,
    principal: BranchAdmin,
    if_match: IfMatchHeader,
) -> DeactivationReport:
    """Refused (409) while an active routing rule names the department."""
    runtime = runtime_of(request)
    updated = await departments.deactivate_department(
        db=runtime.db,
        settings=runtime.settings,
        principal=principal,
        department_id=department_id,
        if_match=if_match,
        now=runtime.clock.now(),
    )
    work, elsewhere = await store.open_work(
        db=runtime.db, principal=principal, query={"department": department_id}
    )
    tag(response, updated.version)
    return DeactivationReport(
        deactivated=department_id,
        version=updated.version,
        open_work=work,
        open_work_of_other_branches=elsewhere,
    )


@router.post("/departments/{department_id}/reactivate", response_model=DepartmentRead)
async def reactivate_department(
    department_id: str,
    request: Request,
    response: Response,
    principal: BranchAdmin,
    if_match: IfMatchHeader,
) -> DepartmentRead:
    """Reopen a deactivated department; refused (409) while its branch is closed or has
    another active department of its kind."""
    runtime = runtime_of(request)
    reopened = await departments.reactivate_department(
        db=runtime.db,
        settings=runtime.settings,
        principal=principal,
        department_id=department_id,
        if_match=if_match,
        now=runtime.clock.now(),
    )
    await unroutable.retry_after_change(runtime, org=principal.org)
    tag(response, reopened.version)
    return reopened


# --------------------------------------------------------------------- staff --


@router.post("/staff", status_code=status.HTTP_201_CREATED, response_model=StaffRead)
async def create_staff(
    body: StaffCreate, request: Request, response: Response, principal: BranchAdmin
) -> StaffRead:
    runtime = runtime_of(request)
    created = await staff.create_staff(
        db=runtime.db,
        settings=runtime.settings,
        principal=principal,
        body=body,
        now=runtime.clock.now(),
    )
    await _offer_queue(runtime, org=principal.org, department_id=created.department_id)
    tag(response, created.version)
    return created


@router.get("/staff", response_model=list[StaffRead])
async def list_staff(
    request: Request,
    principal: BranchAdmin,
    branch: str | None = None,
    department: str | None = None,
    status: StaffStatus | None = None,
) -> list[StaffRead]:
    runtime = runtime_of(request)
    documents = await staff.list_staff(
        db=runtime.db, principal=principal, branch=branch, department=department, status=status
    )
    loads = await store.open_loads(
        db=runtime.db, org=principal.org, staff_ids=[doc["id"] for doc in documents]
    )
    return [directory_store.staff_read(doc, open_load=loads[doc["id"]]) for doc in documents]


@router.get("/staff/{staff_id}", response_model=StaffRead)
async def get_staff(
    staff_id: str, request: Request, response: Response, principal: BranchAdmin
) -> StaffRead:
    runtime = runtime_of(request)
    document = await staff.get_staff_document(db=runtime.db, principal=principal, staff_id=staff_id)
    tag(response, document["version"])
    return await _staff_read(runtime, document)


@router.patch("/staff/{staff_id}", response_model=StaffRead)
async def update_staff(
    staff_id: str,
    body: StaffUpdate,
    request: Request,
    response: Response,
    principal: BranchAdmin,
    if_match: IfMatchHeader,
) -> StaffRead:
    runtime = runtime_of(request)
    document = await staff.update_staff(
        db=runtime.db,
        settings=runtime.settings,
        principal=principal,
        staff_id=staff_id,
        body=body,
        if_match=if_match,
        now=runtime.clock.now(),
    )
    await _offer_queue(runtime, org=principal.org, department_id=document["department_id"])
    tag(response, document["version"])
    return await _staff_read(runtime, document)


@router.post("/staff/{staff_id}/deactivate", response_model=DeactivationReport)
async def deactivate_staff(
    staff_id: str,
    request: Request,
    response: Response,
    principal: BranchAdmin,
    if_match: IfMatchHeader,
) -> DeactivationReport:
    """No new work from now on; the open work still with the person is reported, and the
    skills nobody active of their department has now that its work needs."""
    runtime = runtime_of(request)
    updated = await staff.deactivate_staff(
        db=runtime.db,
        settings=runtime.settings,
        principal=principal,
        staff_id=staff_id,
        if_match=if_match,
        now=runtime.clock.now(),
    )
    work, elsewhere = await store.open_work(
        db=runtime.db, principal=principal, query={"owner_id": staff_id}
    )
    uncovered = await queue.skills_left_uncovered(
        db=runtime.db, org=principal.org, person=directory_store.staff_read(updated)
    )
    tag(response, updated["version"])
    return DeactivationReport(
        deactivated=staff_id,
        version=updated["version"],
        open_work=work,
        open_work_of_other_branches=elsewhere,
        skills_uncovered=uncovered,
    )


@router.get("/audit", summary="Changes to one directory entry, newest first")
async def audit_trail(
    entity: str, entity_id: str, request: Request, principal: Auditor
) -> list[dict[str, Any]]:
    # Entries of every branch sit in one trail: organisation scope.
    runtime = runtime_of(request)
    return await audit.history(db=runtime.db, org=principal.org, entity=entity, entity_id=entity_id)
