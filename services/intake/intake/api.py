"""HTTP routes of intake: create, read and resolve complaints."""

from __future__ import annotations

from complaints_shared.auth import CurrentPrincipal, Role, require_role
from complaints_shared.problems import ProblemError
from complaints_shared.runtime import Runtime
from fastapi import APIRouter, Request, status

from intake import store
from intake.models import ComplaintCreate, ComplaintRead, ResolveRequest

router = APIRouter(prefix="/v1/complaints", tags=["complaints"])


def _runtime(request: Request) -> Runtime:
    return request.app.state.runtime


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ComplaintRead,
    summary="Register a complaint (201 once it is durably stored)",
)
async def create_complaint(
    body: ComplaintCreate, request: Request, principal: CurrentPrincipal
) -> ComplaintRead:
    require_role(principal, Role.AGENT, action="registering a complaint")
    if not principal.can_see(org=principal.org, branch=body.branch):
        raise ProblemError(
            status=403,
            title="Forbidden",
            kind="forbidden",
            detail=f"the token may not register complaints for branch {body.branch!r}",
            field="branch",
        )
    runtime = _runtime(request)
    document = await store.create_complaint(
        db=runtime.db, settings=runtime.settings, principal=principal, request=body
    )
    runtime.relay.notify()
    return store.to_read(document)


@router.get("/{complaint_id}", response_model=ComplaintRead, summary="One complaint of record")
async def get_complaint(
    complaint_id: str, request: Request, principal: CurrentPrincipal
) -> ComplaintRead:
    document = await store.get_visible(
        db=_runtime(request).db, principal=principal, complaint_id=complaint_id
    )
    return store.to_read(document)


@router.post(
    "/{complaint_id}/resolve",
    response_model=ComplaintRead,
    summary="Resolve a complaint; a satisfaction check follows",
)
async def resolve_complaint(
    complaint_id: str, body: ResolveRequest, request: Request, principal: CurrentPrincipal
) -> ComplaintRead:
    require_role(principal, Role.AGENT, Role.SUPERVISOR, action="resolving a complaint")
    runtime = _runtime(request)
    document = await store.resolve(
        db=runtime.db,
        settings=runtime.settings,
        principal=principal,
        complaint_id=complaint_id,
        request=body,
    )
    runtime.relay.notify()
    return store.to_read(document)
