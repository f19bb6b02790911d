"""HTTP routes of assignments: read, list, workload, reassign, escalate, responsibility."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from pydantic import BaseModel

from complaints_shared.access import Scope, allow
from complaints_shared.auth import Principal, Role
from complaints_shared.idempotency import CommandKey, command_key_header
from complaints_shared.pagination import Page
from complaints_shared.runtime import runtime_of
from routing.assignments import commands, store
from routing.assignments.models import (
    AssignmentRead,
    AssignmentStatus,
    EscalateRequest,
    ReassignRequest,
    RegulatoryReportRequest,
    ResponsibilityRequest,
    WorkloadRead,
)

router = APIRouter(prefix="/v1/assignments", tags=["assignments"])

Reader = allow(Role.AGENT, Role.SUPERVISOR, scope=Scope.BRANCH, action="reading assignments")
Supervisor = allow(Role.SUPERVISOR, scope=Scope.BRANCH, action="moving or annotating assignments")
# 特事特办: the handler escalates what is beyond their authority or capacity (design notes
# §1.4); until 5 December only a supervisor could, so the agent had to find one first.
Handler = allow(Role.AGENT, Role.SUPERVISOR, scope=Scope.BRANCH, action="escalating assignments")


IdempotencyKey = command_key_header(what="assignment")


async def _supervisor_action(
    request: Request,
    response: Response,
    principal: Principal,
    complaint_id: str,
    body: BaseModel,
    action: Callable[..., Awaitable[AssignmentRead]],
    idempotency_key: str | None,
) -> AssignmentRead:
    """Run one action on an assignment (its events go to the relay as written)."""
    runtime = runtime_of(request)
    asked = {
        "action": action.__name__,
        "complaint_id": complaint_id,
        "body": body.model_dump(mode="json"),
    }
    command_key = CommandKey.of(idempotency_key, subject=principal.subject, asked=asked)
    read = await action(
        db=runtime.db,
        settings=runtime.settings,
        principal=principal,
        complaint_id=complaint_id,
        request=body,
        now=runtime.clock.now(),
        command_key=command_key,
    )
    if command_key is not None:
        command_key.tell(response)
    return read


@router.get("", response_model=Page[AssignmentRead], summary="Assignments, oldest first")
async def list_assignments(
    request: Request,
    principal: Reader,
    department: str | None = None,
    owner_id: str | None = None,
    status: AssignmentStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=store.MAX_PAGE_SIZE)] = 50,
    cursor: str | None = None,
) -> Page[AssignmentRead]:
    return await store.list_assignments(
        db=runtime_of(request).db,
        principal=principal,
        department=department,
        owner_id=owner_id,
        status=status,
        limit=limit,
        cursor=cursor,
    )


@router.get("/workload", response_model=WorkloadRead, summary="Open work per department and owner")
async def workload(
    request: Request,
    principal: Reader,
    branch: str | None = None,
    department: str | None = None,
) -> WorkloadRead:
    return await store.workload(
        db=runtime_of(request).db, principal=principal, branch=branch, department=department
    )


@router.get(
    "/{complaint_id}", response_model=AssignmentRead, summary="Who handles a complaint, by when"
)
async def get_assignment(complaint_id: str, request: Request, principal: Reader) -> AssignmentRead:
    return await store.get_assignment(
        db=runtime_of(request).db, principal=principal, complaint_id=complaint_id
    )


@router.post(
    "/{complaint_id}/reassign",
    response_model=AssignmentRead,
    summary="Move to another owner or department (reason required)",
)
async def reassign(
    complaint_id: str,
    body: ReassignRequest,
    request: Request,
    response: Response,
    principal: Supervisor,
    idempotency_key: IdempotencyKey = None,
) -> AssignmentRead:
    return await _supervisor_action(
        request, response, principal, complaint_id, body, commands.reassign, idempotency_key
    )


@router.post(
    "/{complaint_id}/escalate",
    response_model=AssignmentRead,
    summary="One level up the handling department's escalation chain",
)
async def escalate(
    complaint_id: str,
    body: EscalateRequest,
    request: Request,
    response: Response,
    principal: Handler,
    idempotency_key: IdempotencyKey = None,
) -> AssignmentRead:
    return await _supervisor_action(
        request, response, principal, complaint_id, body, commands.escalate, idempotency_key
    )


@router.post(
    "/{complaint_id}/responsibility",
    response_model=AssignmentRead,
    summary="Record the responsible department (责任部门)",
)
async def set_responsibility(
    complaint_id: str,
    body: ResponsibilityRequest,
    request: Request,
    response: Response,
    principal: Supervisor,
    idempotency_key: IdempotencyKey = None,
) -> AssignmentRead:
    return await _supervisor_action(
        request,
        response,
        principal,
        complaint_id,
        body,
        commands.set_responsibility,
        idempotency_key,
    )


@router.post(
    "/{complaint_id}/regulatory-report",
    response_model=AssignmentRead,
    summary="The report to the authority was filed: stop its deadline",
)
async def file_regulatory_report(
    complaint_id: str,
    body: RegulatoryReportRequest,
    request: Request,
    response: Response,
    principal: Supervisor,
    idempotency_key: IdempotencyKey = None,
) -> AssignmentRead:
    return await _supervisor_action(
        request,
        response,
        principal,
        complaint_id,
        body,
        commands.file_regulatory_report,
        idempotency_key,
    )
