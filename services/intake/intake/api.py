"""HTTP routes of intake: registration, lifecycle commands, search, timeline, reports."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import JSONResponse

from complaints_shared.access import Scope, allow
from complaints_shared.auth import Principal, Role
from complaints_shared.datetimes import UtcDatetime
from complaints_shared.failures import is_dependency_unavailable, redacted_error
from complaints_shared.idempotency import (
    REPLAYED_HEADER,
    CommandKey,
    command_key_header,
    key_header,
    request_hash,
)
from complaints_shared.logs import get_logger
from complaints_shared.pagination import Page
from complaints_shared.problems import invalid_fields
from complaints_shared.runtime import runtime_of
from complaints_shared.stored import from_stored
from intake import commands, idempotency, registration, reports, search, store
from intake.lifecycle import Command
from intake.models import (
    AcknowledgeRequest,
    CloseRequest,
    ComplaintCreate,
    ComplaintCreated,
    ComplaintRead,
    NoteCreate,
    PendingCustomerRequest,
    ReclassifyRequest,
    RejectRequest,
    RemedyIn,
    ReopenRequest,
    ResolveRequest,
    ResumeRequest,
    Timeline,
    TimelineEntry,
    WithdrawRequest,
)

log = get_logger(__name__)

router = APIRouter(prefix="/v1/complaints", tags=["complaints"])
reports_router = APIRouter(prefix="/v1/reports", tags=["reports"])

IdempotencyKey = Annotated[
    str | None,
    key_header(description="Retry-safe creation: same key + same body replays the first response."),
]
CommandIdempotencyKey = command_key_header(what="complaint")


Registrar = allow(Role.AGENT, Role.SUPERVISOR, scope=Scope.BRANCH, action="registering a complaint")
Reader = allow(Role.AGENT, Role.SUPERVISOR, scope=Scope.BRANCH, action="reading complaints")
ReportReader = allow(Role.SUPERVISOR, scope=Scope.BRANCH, action="reading complaint reports")


async def _shown(request: Request, principal: Principal, document: dict[str, Any]) -> ComplaintRead:
    """The complaint as the caller may read it (``store.shown_to``)."""
    (complaint,) = await store.shown_to(
        db=runtime_of(request).db, principal=principal, complaints=[store.to_read(document)]
    )
    return complaint


async def _shown_changed(
    request: Request, principal: Principal, document: dict[str, Any]
) -> ComplaintRead:
    """The complaint just stored by this request, as the caller may read it.

    The change is committed: a 503 now would invite a retry that repeats it (a note added
    twice). If the read that checks ``repeat_of`` against the caller's branches fails, the
    answer is the stored complaint with those links withheld (a later read shows them).
    """
    try:
        return await _shown(request, principal, document)
    except Exception as exc:
        if not is_dependency_unavailable(exc):
            raise
        log.warning(
            "repeat_links_unchecked", complaint_id=document["_id"], error=redacted_error(exc)
        )
        return store.to_read(document).model_copy(update={"repeat_of": []})


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=ComplaintCreated,
    summary="Register a complaint (201 once durable; 200 for an exact resubmission)",
    responses={
        200: {
            "model": ComplaintCreated,
            "description": "The same customer's identical complaint within "
            "`RESUBMISSION_WINDOW_S`: the complaint registered then. A retry under the same "
            "`Idempotency-Key` answers as the first request did (201, or this 200), with "
            "`Idempotent-Replayed: true`",
        }
    },
)
async def create_complaint(
    body: ComplaintCreate,
    request: Request,
    principal: Registrar,
    idempotency_key: IdempotencyKey = None,
) -> JSONResponse:
    principal.require_branch(body.branch, field="branch")
    runtime = runtime_of(request)
    reservation = None
    complaint_id = fresh_id = store.new_id()
    if idempotency_key is not None:
        reservation = await idempotency.reserve(
            db=runtime.db,
            settings=runtime.settings,
            principal=principal,
            key=idempotency_key,
            body_hash=request_hash(body.model_dump(mode="json")),
            complaint_id=complaint_id,
        )
        if reservation.replay_body is not None:
            # Stored as the first token could read it; shown as this one may (until
            # 5 December a narrower token's retry saw other branches' complaint ids).
            replay = dict(reservation.replay_body)
            replay["repeat_of"] = await store.repeats_shown_to(
                db=runtime.db, principal=principal, repeat_of=replay.get("repeat_of", [])
            )
            return JSONResponse(
                replay,
                status_code=reservation.replay_status or status.HTTP_201_CREATED,
                headers={REPLAYED_HEADER: "true"},
            )
        complaint_id = reservation.complaint_id
    try:
        # The key stays ours until its response is recorded, however slow the request.
        async with idempotency.held(
            db=runtime.db, settings=runtime.settings, reservation=reservation
        ):
            document, created = await registration.create_complaint(
                db=runtime.db,
                settings=runtime.settings,
                principal=principal,
                request=body,
                complaint_id=complaint_id,
                now=runtime.clock.now(),
                # The id of an earlier request under the key, not the one drawn above.
                taken_over=reservation is not None and complaint_id != fresh_id,
            )
            shown = await _shown_changed(request, principal, document)
            answer = {**shown.model_dump(), "resubmission": not created}
            payload = from_stored(ComplaintCreated, answer).model_dump(mode="json")
            status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
            if reservation is not None:
                await idempotency.complete(
                    db=runtime.db, reservation=reservation, status_code=status_code, body=payload
                )
    except BaseException:
        if reservation is not None:
            await idempotency.release(db=runtime.db, reservation=reservation)
        raise
    return JSONResponse(
        payload, status_code=status_code, headers={"Location": f"/v1/complaints/{document['_id']}"}
    )


@router.get("", response_model=Page[ComplaintRead], summary="Find complaints (cursor pages)")
async def list_complaints(
    request: Request,
    principal: Reader,
    filters: Annotated[search.ComplaintFilters, Query()],
) -> Page[ComplaintRead]:
    db = runtime_of(request).db
    page = await search.search(db=db, principal=principal, filters=filters)
    items = await store.shown_to(db=db, principal=principal, complaints=page.items)
    return page.model_copy(update={"items": items})


@router.get("/{complaint_id}", response_model=ComplaintRead, summary="One complaint of record")
async def get_complaint(complaint_id: str, request: Request, principal: Reader) -> ComplaintRead:
    document = await store.get_visible(
        db=runtime_of(request).db, principal=principal, complaint_id=complaint_id
    )
    return await _shown(request, principal, document)


@router.get(
    "/{complaint_id}/timeline",
    response_model=Timeline,
    summary="Every command and consumed event, with actor, time and details",
)
async def get_timeline(complaint_id: str, request: Request, principal: Reader) -> Timeline:
    document = await store.get_timeline(
        db=runtime_of(request).db, principal=principal, complaint_id=complaint_id
    )
    return Timeline(
        complaint_id=complaint_id,
        reference=document["reference"],
        entries=[from_stored(TimelineEntry, entry) for entry in document.get("timeline", [])],
    )


async def _command(
    *,
    request: Request,
    response: Response,
    principal: Principal,
    complaint_id: str,
    command: Command,
    build: commands.Build,
    details: dict[str, Any],
    idempotency_key: str | None,
) -> ComplaintRead:
    runtime = runtime_of(request)
    asked = {"command": command.value, "complaint_id": complaint_id, "body": details}
    command_key = CommandKey.of(idempotency_key, subject=principal.subject, asked=asked)
    document = await commands.run_command(
        db=runtime.db,
        settings=runtime.settings,
        principal=principal,
        complaint_id=complaint_id,
        command=command,
        build=build,
        now=runtime.clock.now(),
        details=details,
        command_key=command_key,
    )
    if command_key is not None:
        command_key.tell(response)
    return await _shown_changed(request, principal, document)


def _command_route(
    path: str, command: Command, body_model: type, builder: Callable, summary: str
) -> None:
    """Register POST /{id}/<path>: the command's roles, then the body, then the command."""

    async def endpoint(
        complaint_id: str,
        body: Any,
        request: Request,
        response: Response,
        principal: Principal,
        idempotency_key: CommandIdempotencyKey = None,
    ) -> ComplaintRead:
        details = body.model_dump(mode="json", exclude_none=True)
        return await _command(
            request=request,
            response=response,
            principal=principal,
            complaint_id=complaint_id,
            command=command,
            build=builder(body, principal),
            details=details,
            idempotency_key=idempotency_key,
        )

    endpoint.__annotations__["body"] = body_model
    endpoint.__annotations__["principal"] = allow(
        *commands.COMMAND_ROLES[command],
        scope=Scope.BRANCH,
        action=f"the complaint command {command.value!r}",
    )
    endpoint.__name__ = f"{command.value}_complaint"
    router.add_api_route(
        f"/{{complaint_id}}/{path}",
        endpoint,
        methods=["POST"],
        response_model=ComplaintRead,
        summary=summary,
    )


_command_route(
    "acknowledge",
    Command.ACKNOWLEDGE,
    AcknowledgeRequest,
    commands.acknowledge,
    "受理: accept the complaint and record the promise made to the customer",
)
_command_route("notes", Command.NOTE, NoteCreate, commands.add_note, "Add a note")
_command_route(
    "pending-customer",
    Command.WAIT_FOR_CUSTOMER,
    PendingCustomerRequest,
    commands.wait_for_customer,
    "Wait on the customer (SLA clocks pause)",
)
_command_route(
    "resume", Command.RESUME, ResumeRequest, commands.resume, "The customer answered: resume"
)
_command_route(
    "resolve",
    Command.RESOLVE,
    ResolveRequest,
    commands.resolve,
    "Resolve with summary, root cause, responsibility and remedies",
)
_command_route(
    "reject", Command.REJECT, RejectRequest, commands.reject, "不予受理: reject with a reason"
)
_command_route(
    "withdraw", Command.WITHDRAW, WithdrawRequest, commands.withdraw, "The customer withdrew"
)
_command_route("reopen", Command.REOPEN, ReopenRequest, commands.reopen, "Reopen (supervisor)")
_command_route("close", Command.CLOSE, CloseRequest, commands.close, "Close (supervisor)")
_command_route(
    "remedies",
    Command.RECORD_REMEDY,
    RemedyIn,
    commands.record_remedy,
    "Record a remedy given after the resolution (resolved or closed; no reopen)",
)
_command_route(
    "reclassify",
    Command.RECLASSIFY,
    ReclassifyRequest,
    commands.reclassify,
    "Change severity, category or flags with a reason (supervisor; unfinished complaints); "
    "routing re-plans the clocks, major incident and escalation",
)


@reports_router.get(
    "/summary", response_model=reports.SummaryReport, summary="Complaint figures per group"
)
async def summary_report(
    request: Request,
    principal: ReportReader,
    group_by: reports.GroupBy = reports.GroupBy.BRANCH,
    from_: Annotated[UtcDatetime | None, Query(alias="from")] = None,
    to: UtcDatetime | None = None,
    branch: Annotated[list[str], Query(description="Only these branches (repeatable)")] = [],  # noqa: B006
) -> reports.SummaryReport:
    runtime = runtime_of(request)
    now = runtime.clock.now()
    created_to = to or now
    created_from = from_ or created_to - timedelta(days=30)
    if created_from >= created_to:
        raise invalid_fields([{"field": "from", "message": "must be before 'to'"}])
    return await reports.summary(
        db=runtime.db,
        principal=principal,
        created_from=created_from,
        created_to=created_to,
        group_by=group_by,
        branches=branch,
        now=now,
    )
