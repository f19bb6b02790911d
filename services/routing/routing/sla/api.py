"""HTTP routes of SLA policies (admin, token for all branches)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from complaints_shared.access import Scope, allow
from complaints_shared.auth import Role
from complaints_shared.preconditions import IfMatchHeader, tag
from complaints_shared.runtime import runtime_of
from routing.models import Slug
from routing.sla import store as policy_store
from routing.sla.models import SlaPolicy, SlaPolicyWrite

router = APIRouter(prefix="/v1/routing", tags=["SLA policies"])

PolicyAdmin = allow(Role.ADMIN, scope=Scope.ORGANISATION, action="managing SLA policies")


@router.get("/sla-policies", response_model=list[SlaPolicy])
async def list_policies(request: Request, principal: PolicyAdmin) -> list[SlaPolicy]:
    runtime = runtime_of(request)
    return await policy_store.list_policies(db=runtime.db, principal=principal)


@router.get("/sla-policies/{policy_id}", response_model=SlaPolicy)
async def get_policy(
    policy_id: str, request: Request, response: Response, principal: PolicyAdmin
) -> SlaPolicy:
    runtime = runtime_of(request)
    found = await policy_store.get_policy(db=runtime.db, principal=principal, policy_id=policy_id)
    tag(response, found.version)
    return found


@router.put("/sla-policies/{policy_id}", response_model=SlaPolicy, summary="Create or replace")
async def put_policy(
    policy_id: Slug,
    body: SlaPolicyWrite,
    request: Request,
    response: Response,
    principal: PolicyAdmin,
    if_match: IfMatchHeader,
) -> SlaPolicy:
    runtime = runtime_of(request)
    saved = await policy_store.put_policy(
        db=runtime.db,
        principal=principal,
        policy_id=policy_id,
        body=body,
        if_match=if_match,
        now=runtime.clock.now(),
    )
    tag(response, saved.version)
    return saved


@router.post(
    "/sla-policies/{policy_id}/retire",
    response_model=SlaPolicy,
    summary="Retire: kept for history, never given to a new complaint",
)
async def retire_policy(
    policy_id: str,
    request: Request,
    response: Response,
    principal: PolicyAdmin,
    if_match: IfMatchHeader,
) -> SlaPolicy:
    runtime = runtime_of(request)
    changed = await policy_store.retire_policy(
        db=runtime.db,
        principal=principal,
        policy_id=policy_id,
        if_match=if_match,
        now=runtime.clock.now(),
    )
    tag(response, changed.version)
    return changed


@router.post(
    "/sla-policies/{policy_id}/reinstate",
    response_model=SlaPolicy,
    summary="Undo a retirement",
)
async def reinstate_policy(
    policy_id: str,
    request: Request,
    response: Response,
    principal: PolicyAdmin,
    if_match: IfMatchHeader,
) -> SlaPolicy:
    runtime = runtime_of(request)
    changed = await policy_store.reinstate_policy(
        db=runtime.db,
        principal=principal,
        policy_id=policy_id,
        if_match=if_match,
        now=runtime.clock.now(),
    )
    tag(response, changed.version)
    return changed


@router.delete(
    "/sla-policies/{policy_id}",
    status_code=204,
    summary="Delete a retired policy no assignment or rule refers to (else 409)",
)
async def delete_policy(
    policy_id: str, request: Request, principal: PolicyAdmin, if_match: IfMatchHeader
) -> Response:
    runtime = runtime_of(request)
    await policy_store.delete_policy(
        db=runtime.db,
        principal=principal,
        policy_id=policy_id,
        if_match=if_match,
        now=runtime.clock.now(),
    )
    return Response(status_code=204)
