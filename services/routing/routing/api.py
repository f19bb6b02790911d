"""HTTP routes of routing."""

from __future__ import annotations

from complaints_shared.auth import CurrentPrincipal
from fastapi import APIRouter, Request

from routing import store
from routing.models import AssignmentRead

router = APIRouter(prefix="/v1/assignments", tags=["assignments"])


@router.get(
    "/{complaint_id}", response_model=AssignmentRead, summary="Who handles a complaint, by when"
)
async def get_assignment(
    complaint_id: str, request: Request, principal: CurrentPrincipal
) -> AssignmentRead:
    return await store.get_assignment(
        db=request.app.state.runtime.db, principal=principal, complaint_id=complaint_id
    )
