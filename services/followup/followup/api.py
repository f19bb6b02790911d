"""HTTP routes of follow-up."""

from __future__ import annotations

from typing import Annotated

from complaints_shared.auth import CurrentPrincipal, Role, require_role
from complaints_shared.pagination import Page
from fastapi import APIRouter, Query, Request

from followup import store
from followup.models import OutcomeRequest, SatisfactionCheckRead

router = APIRouter(prefix="/v1/followups", tags=["followups"])


@router.get(
    "",
    response_model=Page[SatisfactionCheckRead],
    summary="Satisfaction checks, ordered by due time",
)
async def list_followups(
    request: Request,
    principal: CurrentPrincipal,
    complaint_id: str | None = None,
    limit: Annotated[int, Query(ge=1, le=store.MAX_PAGE_SIZE)] = 50,
    cursor: str | None = None,
) -> Page[SatisfactionCheckRead]:
    return await store.list_checks(
        db=request.app.state.runtime.db,
        principal=principal,
        complaint_id=complaint_id,
        limit=limit,
        cursor=cursor,
    )


@router.post(
    "/{followup_id}/outcome",
    response_model=SatisfactionCheckRead,
    summary="Record the customer's satisfaction; closes or reopens the complaint",
)
async def record_outcome(
    followup_id: str, body: OutcomeRequest, request: Request, principal: CurrentPrincipal
) -> SatisfactionCheckRead:
    require_role(principal, Role.AGENT, Role.SUPERVISOR, action="recording a follow-up outcome")
    runtime = request.app.state.runtime
    check = await store.record_outcome(
        db=runtime.db,
        settings=runtime.settings,
        principal=principal,
        followup_id=followup_id,
        request=body,
    )
    runtime.relay.notify()
    return check
