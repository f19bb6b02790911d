"""HTTP routes of follow-up: the checks agents work, policy, contact hours, statistics."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response
from pydantic import Field

from complaints_shared.access import Scope, allow
from complaints_shared.auth import Principal, Role
from complaints_shared.idempotency import (
    REPLAYED_HEADER,
    CommandKey,
    command_key_header,
    key_header,
)
from complaints_shared.models import StrictModel
from complaints_shared.pagination import Page
from complaints_shared.preconditions import IfMatchHeader, tag
from complaints_shared.problems import invalid_fields, not_found
from complaints_shared.runtime import runtime_of
from followup import commands, reports, store
from followup.contact_hours import check_closures
from followup.models import (
    AttemptCreate,
    BranchPolicyRead,
    CheckFilters,
    Code,
    ContactHours,
    ContactHoursRead,
    FollowupPolicy,
    FollowupStats,
    History,
    OutcomeRequest,
    PolicyRead,
    SatisfactionCheckRead,
    StatsFilters,
)

router = APIRouter(prefix="/v1/followups", tags=["followups"])

BranchPath = Annotated[Code, Path(description="Branch code, e.g. LZ")]
IdempotencyKey = Annotated[
    str | None,
    key_header(description="Retry-safe call recording: the same key and body record it once."),
]
CommandIdempotencyKey = command_key_header(what="check")


class HistoryQuery(StrictModel):
    limit: int = Field(20, ge=1, le=100)


# Access is answered before anything about the body or query (``access.refusal``).
Agent = allow(Role.AGENT, Role.SUPERVISOR, scope=Scope.BRANCH, action="working follow-ups")
Supervisor = allow(
    Role.SUPERVISOR, scope=Scope.BRANCH, action="reading follow-up statistics and audit trails"
)
BranchAdmin = allow(Role.ADMIN, scope=Scope.BRANCH, action="changing a branch's contact hours")
# The follow-up policy governs every branch: reading and changing it is organisation scope.
PolicyReader = allow(
    Role.AGENT, Role.SUPERVISOR, scope=Scope.ORGANISATION, action="reading the follow-up policy"
)
PolicyAuditor = allow(
    Role.SUPERVISOR, scope=Scope.ORGANISATION, action="reading the follow-up policy's history"
)
PolicyAdmin = allow(Role.ADMIN, scope=Scope.ORGANISATION, action="changing the follow-up policy")
# A branch's own policy departs from the organisation's: the organisation decides that too.
BranchPolicyAdmin = allow(
    Role.ADMIN, scope=Scope.ORGANISATION, action="changing a branch's follow-up policy"
)


async def _command(
    request: Request,
    response: Response,
    principal: Principal,
    followup_id: str,
    command: Callable[..., Awaitable[dict[str, Any] | None]],
    idempotency_key: str | None,
    /,
    **arguments: Any,
) -> SatisfactionCheckRead:
    """Run one of the check's commands for the caller; a check it cannot see is a 404.
    Under an ``Idempotency-Key`` the same command again changes nothing (``CommandKey``)."""
    runtime = runtime_of(request)
    asked = {
        "command": command.__name__,
        "followup_id": followup_id,
        "body": {name: value.model_dump(mode="json") for name, value in arguments.items()},
    }
    command_key = CommandKey.of(idempotency_key, subject=principal.subject, asked=asked)
    document = await command(
        db=runtime.db,
        settings=runtime.settings,
        principal=principal,
        followup_id=followup_id,
        now=runtime.clock.now(),
        command_key=command_key,
        **arguments,
    )
    if document is None:
        raise not_found(what="satisfaction check", identifier=followup_id)
    if command_key is not None:
        command_key.tell(response)
    return store.to_read(document)


# ----------------------------------------------------------------- listing --


@router.get(
    "",
    response_model=Page[SatisfactionCheckRead],
    summary="Satisfaction checks to work, ordered by due time",
)
async def list_followups(
    request: Request, principal: Agent, filters: Annotated[CheckFilters, Query()]
) -> Page[SatisfactionCheckRead]:
    return await store.list_checks(db=runtime_of(request).db, principal=principal, filters=filters)


@router.get(
    "/stats",
    response_model=FollowupStats,
    summary="Response rate, satisfaction and time to first contact, by branch/department/owner",
)
async def followup_stats(
    request: Request, principal: Supervisor, filters: Annotated[StatsFilters, Query()]
) -> FollowupStats:
    return await reports.followup_stats(
        db=runtime_of(request).db, principal=principal, filters=filters
    )


# ------------------------------------------------------------------ policy --


@router.get("/policy", response_model=PolicyRead, summary="The organisation's follow-up policy")
async def get_policy(request: Request, response: Response, principal: PolicyReader) -> PolicyRead:
    runtime = runtime_of(request)
    found = await store.current_policy(db=runtime.db, settings=runtime.settings, org=principal.org)
    tag(response, found.version)
    return found


@router.put(
    "/policy",
    response_model=PolicyRead,
    summary="Replace the organisation's follow-up policy (a new audited version)",
)
async def put_policy(
    body: FollowupPolicy,
    request: Request,
    response: Response,
    principal: PolicyAdmin,
    if_match: IfMatchHeader,
) -> PolicyRead:
    runtime = runtime_of(request)
    saved = await store.save_policy(
        db=runtime.db, principal=principal, policy=body, if_match=if_match, now=runtime.clock.now()
    )
    tag(response, saved.version)
    return saved


@router.get(
    "/policy/history",
    response_model=History[PolicyRead],
    summary="Stored policy versions, newest first (the audit trail)",
)
async def policy_history(
    request: Request, principal: PolicyAuditor, query: Annotated[HistoryQuery, Query()]
) -> History[PolicyRead]:
    items = await store.policy_history(
        db=runtime_of(request).db, org=principal.org, limit=query.limit
    )
    return History[PolicyRead](items=items)


@router.get(
    "/policy/branches/{branch}",
    response_model=BranchPolicyRead,
    summary="The policy a branch's resolutions get: its own, else the organisation's rules",
)
async def get_branch_policy(
    branch: BranchPath, request: Request, response: Response, principal: Agent
) -> BranchPolicyRead:
    """Its ``ETag`` is the version of the branch's own setting (0: never set), and while it
    follows the organisation's, that policy's version too (``"0.3"``)."""
    principal.require_branch(branch)
    runtime = runtime_of(request)
    in_force, current_tag = await store.branch_policy(
        db=runtime.db, settings=runtime.settings, org=principal.org, branch=branch
    )
    tag(response, current_tag)
    return BranchPolicyRead.in_force(in_force, branch=branch)


@router.put(
    "/policy/branches/{branch}",
    response_model=BranchPolicyRead,
    summary="Give the branch its own follow-up policy (a new audited version)",
)
async def put_branch_policy(
    branch: BranchPath,
    body: FollowupPolicy,
    request: Request,
    response: Response,
    principal: BranchPolicyAdmin,
    if_match: IfMatchHeader,
) -> BranchPolicyRead:
    """Answered as ``GET`` answers it (with ``inherited: false``; until 5 December the
    organisation policy's shape, without ``inherited``)."""
    principal.require_branch(branch)
    runtime = runtime_of(request)
    saved = await store.save_policy(
        db=runtime.db,
        principal=principal,
        policy=body,
        if_match=if_match,
        now=runtime.clock.now(),
        branch=branch,
    )
    tag(response, saved.version)
    return BranchPolicyRead.in_force(saved, branch=branch)


@router.delete(
    "/policy/branches/{branch}",
    response_model=BranchPolicyRead,
    summary="The branch follows the organisation's policy again; answers the policy now in force",
)
async def delete_branch_policy(
    branch: BranchPath,
    request: Request,
    response: Response,
    principal: BranchPolicyAdmin,
    if_match: IfMatchHeader,
) -> BranchPolicyRead:
    principal.require_branch(branch)
    runtime = runtime_of(request)
    in_force, current_tag = await store.follow_organisation_policy(
        db=runtime.db,
        settings=runtime.settings,
        principal=principal,
        branch=branch,
        if_match=if_match,
        now=runtime.clock.now(),
    )
    tag(response, current_tag)
    return BranchPolicyRead.in_force(in_force, branch=branch)


@router.get(
    "/policy/branches/{branch}/history",
    response_model=History[PolicyRead],
    summary="The branch's own policy versions, newest first (null policy: back to the default)",
)
async def branch_policy_history(
    branch: BranchPath,
    request: Request,
    principal: Supervisor,
    query: Annotated[HistoryQuery, Query()],
) -> History[PolicyRead]:
    principal.require_branch(branch)
    items = await store.policy_history(
        db=runtime_of(request).db, org=principal.org, limit=query.limit, branch=branch
    )
    return History[PolicyRead](items=items)


# ----------------------------------------------------------- contact hours --


@router.get(
    "/contact-hours/{branch}",
    response_model=ContactHoursRead,
    summary="When the branch's customers may be called",
)
async def get_contact_hours(
    branch: BranchPath, request: Request, response: Response, principal: Agent
) -> ContactHoursRead:
    principal.require_branch(branch)
    runtime = runtime_of(request)
    found = await store.current_contact_hours(
        db=runtime.db, settings=runtime.settings, org=principal.org, branch=branch
    )
    tag(response, found.version)
    return found


@router.put(
    "/contact-hours/{branch}",
    response_model=ContactHoursRead,
    summary="Replace the branch's contact hours (a new audited version)",
)
async def put_contact_hours(
    branch: BranchPath,
    body: ContactHours,
    request: Request,
    response: Response,
    principal: BranchAdmin,
    if_match: IfMatchHeader,
) -> ContactHoursRead:
    principal.require_branch(branch)
    check_closures(body)
    runtime = runtime_of(request)
    saved = await store.save_contact_hours(
        db=runtime.db,
        principal=principal,
        branch=branch,
        contact_hours=body,
        if_match=if_match,
        now=runtime.clock.now(),
    )
    tag(response, saved.version)
    return saved


@router.get(
    "/contact-hours/{branch}/history",
    response_model=History[ContactHoursRead],
    summary="Stored contact-hour versions of the branch, newest first",
)
async def contact_hours_history(
    branch: BranchPath,
    request: Request,
    principal: Supervisor,
    query: Annotated[HistoryQuery, Query()],
) -> History[ContactHoursRead]:
    principal.require_branch(branch)
    items = await store.contact_hours_history(
        db=runtime_of(request).db, org=principal.org, branch=branch, limit=query.limit
    )
    return History[ContactHoursRead](items=items)


# ------------------------------------------------------------ one check --


@router.get("/{followup_id}", response_model=SatisfactionCheckRead, summary="One check")
async def get_followup(
    followup_id: str, request: Request, principal: Agent
) -> SatisfactionCheckRead:
    document = await store.get_visible(
        db=runtime_of(request).db, principal=principal, followup_id=followup_id
    )
    return store.to_read(document)


@router.post(
    "/{followup_id}/claim",
    response_model=SatisfactionCheckRead,
    summary="Take a due check for a while, so nobody else calls the customer meanwhile",
)
async def claim_followup(
    followup_id: str,
    request: Request,
    response: Response,
    principal: Agent,
    idempotency_key: CommandIdempotencyKey = None,
) -> SatisfactionCheckRead:
    return await _command(
        request, response, principal, followup_id, commands.claim, idempotency_key
    )


@router.delete(
    "/{followup_id}/claim",
    response_model=SatisfactionCheckRead,
    summary="Give a claimed check back to the queue",
)
async def release_followup(
    followup_id: str,
    request: Request,
    response: Response,
    principal: Agent,
    idempotency_key: CommandIdempotencyKey = None,
) -> SatisfactionCheckRead:
    return await _command(
        request, response, principal, followup_id, commands.release, idempotency_key
    )


@router.post(
    "/{followup_id}/attempts",
    response_model=SatisfactionCheckRead,
    summary="Record a call: unreached schedules the next one, reached ends the check",
)
async def record_attempt(
    followup_id: str,
    body: AttemptCreate,
    request: Request,
    principal: Agent,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> SatisfactionCheckRead:
    errors = body.field_errors()
    if errors:
        raise invalid_fields(errors)
    runtime = runtime_of(request)
    document, replayed = await commands.record_attempt(
        db=runtime.db,
        settings=runtime.settings,
        principal=principal,
        followup_id=followup_id,
        request=body,
        idempotency_key=idempotency_key,
        now=runtime.clock.now(),
    )
    if document is None:
        raise not_found(what="satisfaction check", identifier=followup_id)
    if replayed:
        response.headers[REPLAYED_HEADER] = "true"
    return store.to_read(document)


@router.post(
    "/{followup_id}/outcome",
    response_model=SatisfactionCheckRead,
    summary="Shortcut: record a reached call's verdict; closes or reopens the complaint",
)
async def record_outcome(
    followup_id: str,
    body: OutcomeRequest,
    request: Request,
    response: Response,
    principal: Agent,
    idempotency_key: CommandIdempotencyKey = None,
) -> SatisfactionCheckRead:
    return await _command(
        request,
        response,
        principal,
        followup_id,
        commands.record_outcome,
        idempotency_key,
        request=body,
    )
