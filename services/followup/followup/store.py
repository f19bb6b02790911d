"""Data access for satisfaction checks. No HTTP here."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from complaints_shared.auth import Principal
from complaints_shared.events import (
    ComplaintResolved,
    EventType,
    FollowupCompleted,
    FollowupOutcome,
)
from complaints_shared.mongo import merge_updates
from complaints_shared.outbox import outbox_entry, outbox_update
from complaints_shared.pagination import Page, after_cursor, encode_cursor
from complaints_shared.problems import ProblemError, not_found
from pymongo import ASCENDING, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from followup.models import (
    OPEN_CHECK_STATUSES,
    CheckStatus,
    OutcomeRequest,
    SatisfactionCheckRead,
)
from followup.settings import FollowupSettings

CHECKS = "satisfaction_checks"
MAX_PAGE_SIZE = 100


async def ensure_indexes(*, db: AsyncDatabase) -> None:
    await db[CHECKS].create_index(
        [("org", ASCENDING), ("complaint_id", ASCENDING), ("due_at", ASCENDING)],
        name="org_complaint_due",
    )
    await db[CHECKS].create_index(
        [("org", ASCENDING), ("status", ASCENDING), ("due_at", ASCENDING)],
        name="org_status_due",
    )


def check_id(*, complaint_id: str, resolution_number: int, sequence: int) -> str:
    """Deterministic, so a redelivered ``complaint.resolved`` cannot schedule twice."""
    return f"{complaint_id}:r{resolution_number}:{sequence}"


async def schedule_checks(
    *, db: AsyncDatabase, settings: FollowupSettings, resolved: ComplaintResolved
) -> bool:
    """Create the satisfaction check for a resolution; False if it already exists."""
    now = datetime.now(UTC)
    sequence = 1
    document = {
        "_id": check_id(
            complaint_id=resolved.complaint_id,
            resolution_number=resolved.resolution_number,
            sequence=sequence,
        ),
        "complaint_id": resolved.complaint_id,
        "reference": resolved.reference,
        "org": resolved.org,
        "branch": resolved.branch,
        "resolution_number": resolved.resolution_number,
        "sequence": sequence,
        "status": CheckStatus.SCHEDULED.value,
        "due_at": resolved.resolved_at + timedelta(hours=settings.first_check_after_hours),
        "customer": resolved.customer.model_dump(mode="json"),
        "resolution_summary": resolved.summary,
        "category": resolved.category.value,
        "severity": resolved.severity.value,
        "department": resolved.department,
        "owner_id": resolved.owner_id,
        "created_at": now,
    }
    try:
        await db[CHECKS].insert_one(document)
    except DuplicateKeyError:
        return False
    return True


async def list_checks(
    *,
    db: AsyncDatabase,
    principal: Principal,
    complaint_id: str | None,
    limit: int,
    cursor: str | None,
) -> Page[SatisfactionCheckRead]:
    """Checks the caller may see, ordered by due time."""
    query: dict[str, Any] = {
        **principal.scope_filter(),
        **after_cursor(field="due_at", cursor=cursor),
    }
    if complaint_id is not None:
        query["complaint_id"] = complaint_id
    page_size = min(limit, MAX_PAGE_SIZE)
    documents = (
        await db[CHECKS]
        .find(query, projection={"outbox": 0})
        .sort([("due_at", ASCENDING), ("_id", ASCENDING)])
        .limit(page_size + 1)
        .to_list(None)
    )
    next_cursor = None
    if len(documents) > page_size:
        documents = documents[:page_size]
        last = documents[-1]
        next_cursor = encode_cursor(sort_value=last["due_at"], document_id=last["_id"])
    return Page[SatisfactionCheckRead](
        items=[to_read(document) for document in documents], next_cursor=next_cursor
    )


def to_read(document: dict[str, Any]) -> SatisfactionCheckRead:
    return SatisfactionCheckRead.model_validate({**document, "id": document["_id"]})


async def record_outcome(
    *,
    db: AsyncDatabase,
    settings: FollowupSettings,
    principal: Principal,
    followup_id: str,
    request: OutcomeRequest,
) -> SatisfactionCheckRead:
    """Complete an open check and announce the outcome in the same write."""
    checks = db[CHECKS]
    scope = {"_id": followup_id, **principal.scope_filter()}
    current = await checks.find_one(scope, projection={"outbox": 0})
    if current is None:
        raise not_found(what="satisfaction check", identifier=followup_id)
    now = datetime.now(UTC)
    outcome = FollowupOutcome.SATISFIED if request.satisfied else FollowupOutcome.UNSATISFIED
    completed = FollowupCompleted(
        complaint_id=current["complaint_id"],
        org=current["org"],
        branch=current["branch"],
        followup_id=followup_id,
        resolution_number=current["resolution_number"],
        outcome=outcome,
        score=request.score,
        comment=request.comment,
        attempts=current.get("attempt_count", 0) + 1,
        completed_at=now,
    )
    entry = outbox_entry(event_type=EventType.FOLLOWUP_COMPLETED, data=completed, settings=settings)
    update = merge_updates(
        {
            "$set": {
                "status": CheckStatus.COMPLETED.value,
                "outcome": outcome.value,
                "score": request.score,
                "comment": request.comment,
                "completed_by": principal.subject,
                "completed_at": now,
            },
            "$inc": {"attempt_count": 1},
        },
        outbox_update([entry], now=now),
    )
    updated = await checks.find_one_and_update(
        {**scope, "status": {"$in": [status.value for status in OPEN_CHECK_STATUSES]}},
        update,
        projection={"outbox": 0},
        return_document=ReturnDocument.AFTER,
    )
    if updated is None:
        raise ProblemError(
            status=409,
            title="Check already finished",
            kind="invalid-transition",
            detail=f"satisfaction check {followup_id} is {current['status']}; "
            "an outcome can be recorded only once",
            current_status=current["status"],
            command="outcome",
        )
    return to_read(updated)
