"""Data access for the complaint of record. No HTTP here.

Every change goes through ``_change``: read the document, let the lifecycle
decide, then write conditionally on the version read (optimistic concurrency)
together with the timeline entry and the outbox events the change causes.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from complaints_shared.auth import Principal
from complaints_shared.envelope import CloudEvent
from complaints_shared.events import (
    ComplaintAssigned,
    ComplaintClosed,
    ComplaintReceived,
    ComplaintReopened,
    ComplaintResolved,
    CustomerContact,
    EventType,
    FollowupCompleted,
    FollowupOutcome,
)
from complaints_shared.mongo import merge_updates
from complaints_shared.outbox import outbox_entry, outbox_update
from complaints_shared.problems import ProblemError, not_found
from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase

from intake.lifecycle import Command, InvalidTransition, Status, transition
from intake.models import ComplaintCreate, ComplaintRead, ResolveRequest
from intake.settings import IntakeSettings

COMPLAINTS = "complaints"
REFERENCE_COUNTERS = "reference_counters"
APPLIED_EVENTS_KEPT = 200
MAX_WRITE_ATTEMPTS = 5

# A decision returns the extra update for the change plus the events it causes.
Decision = tuple[dict[str, Any], list[tuple[EventType, Any]]]


async def ensure_indexes(*, db: AsyncDatabase) -> None:
    complaints = db[COMPLAINTS]
    await complaints.create_index("reference", unique=True, name="reference_unique")
    await complaints.create_index(
        [("org", ASCENDING), ("branch", ASCENDING), ("created_at", DESCENDING)],
        name="org_branch_created",
    )
    await complaints.create_index(
        [("org", ASCENDING), ("status", ASCENDING), ("created_at", DESCENDING)],
        name="org_status_created",
    )


def _now() -> datetime:
    return datetime.now(UTC)


def _timeline_entry(*, actor: str, action: str, at: datetime, **details: Any) -> dict[str, Any]:
    return {"at": at, "actor": actor, "action": action, "details": details}


async def next_reference(*, db: AsyncDatabase, branch: str, at: datetime, time_zone: str) -> str:
    """Reference numbers count per branch and local calendar day: ``LZ-20261123-0007``."""
    day = at.astimezone(ZoneInfo(time_zone)).strftime("%Y%m%d")
    counter = await db[REFERENCE_COUNTERS].find_one_and_update(
        {"_id": f"{branch}-{day}"},
        {"$inc": {"seq": 1}},
        upsert=True,
        return_document=ReturnDocument.AFTER,
    )
    return f"{branch}-{day}-{counter['seq']:04d}"


def _customer_contact(document: dict[str, Any]) -> CustomerContact:
    customer = document["customer"]
    return CustomerContact(
        name=customer["name"],
        phone=customer.get("phone"),
        email=customer.get("email"),
        preferred_channel=customer.get("preferred_contact_channel", "phone"),
        language=customer.get("language", "zh"),
        vip=customer.get("vip", False),
    )


async def create_complaint(
    *,
    db: AsyncDatabase,
    settings: IntakeSettings,
    principal: Principal,
    request: ComplaintCreate,
) -> dict[str, Any]:
    """Store a new complaint with its ``complaint.received`` event in one insert."""
    now = _now()
    complaint_id = str(uuid.uuid4())
    reference = await next_reference(
        db=db, branch=request.branch, at=now, time_zone=settings.reference_time_zone
    )
    document: dict[str, Any] = {
        "_id": complaint_id,
        "reference": reference,
        "org": principal.org,
        **request.model_dump(mode="json"),
        "occurred_at": request.occurred_at,
        "status": Status.RECEIVED.value,
        "version": 1,
        "resolution_count": 0,
        "created_at": now,
        "updated_at": now,
        "applied_events": [],
        "timeline": [
            _timeline_entry(
                actor=principal.subject, action="received", at=now, channel=request.channel.value
            )
        ],
    }
    received = ComplaintReceived(
        complaint_id=complaint_id,
        org=principal.org,
        branch=request.branch,
        reference=reference,
        channel=request.channel,
        category=request.category,
        severity=request.severity,
        flags=[flag.value for flag in request.flags],
        subject=request.subject,
        description=request.description,
        product=request.product,
        customer=_customer_contact(document),
        received_at=now,
    )
    entry = outbox_entry(event_type=EventType.COMPLAINT_RECEIVED, data=received, settings=settings)
    document["outbox"] = [entry]
    document["outbox_pending_since"] = now
    await db[COMPLAINTS].insert_one(document)
    return document


async def get_visible(*, db: AsyncDatabase, principal: Principal, complaint_id: str) -> dict:
    """The complaint if the caller may see it; a foreign one is simply not found."""
    document = await db[COMPLAINTS].find_one(
        {"_id": complaint_id, **principal.scope_filter()}, projection={"outbox": 0}
    )
    if document is None:
        raise not_found(what="complaint", identifier=complaint_id)
    return document


def to_read(document: dict[str, Any]) -> ComplaintRead:
    return ComplaintRead.model_validate({**document, "id": document["_id"]})


async def _change(
    *,
    db: AsyncDatabase,
    settings: IntakeSettings,
    complaint_id: str,
    scope: dict[str, Any],
    actor: str,
    action: str,
    decide: Callable[[dict[str, Any]], Decision],
    event_id: str | None = None,
    details: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Apply one decided change atomically; returns the new document.

    ``event_id`` makes the change idempotent for consumed events: a document
    that already applied it is returned unchanged (None when it does not exist).
    """
    complaints = db[COMPLAINTS]
    for _ in range(MAX_WRITE_ATTEMPTS):
        current = await complaints.find_one({"_id": complaint_id, **scope})
        if current is None:
            return None
        if event_id is not None and event_id in current.get("applied_events", []):
            return current
        extra_update, events = decide(current)
        now = _now()
        entries = [
            outbox_entry(event_type=event_type, data=data, settings=settings)
            for event_type, data in events
        ]
        update = merge_updates(
            extra_update,
            {
                "$set": {"updated_at": now},
                "$inc": {"version": 1},
                "$push": {
                    "timeline": _timeline_entry(
                        actor=actor, action=action, at=now, **(details or {})
                    )
                },
            },
            outbox_update(entries, now=now) if entries else {},
            (
                {"$push": {"applied_events": {"$each": [event_id], "$slice": -APPLIED_EVENTS_KEPT}}}
                if event_id
                else {}
            ),
        )
        updated = await complaints.find_one_and_update(
            {"_id": complaint_id, "version": current["version"]},
            update,
            return_document=ReturnDocument.AFTER,
        )
        if updated is not None:
            return updated
    raise ProblemError(
        status=409,
        title="Concurrent update",
        kind="concurrent-update",
        detail=f"complaint {complaint_id} kept changing underneath this request; retry it",
    )


def _invalid(exc: InvalidTransition, *, complaint_id: str) -> ProblemError:
    return ProblemError(
        status=409,
        title="Invalid transition",
        kind="invalid-transition",
        detail=f"complaint {complaint_id}: {exc}",
        current_status=exc.current.value,
        command=exc.command.value,
    )


async def resolve(
    *,
    db: AsyncDatabase,
    settings: IntakeSettings,
    principal: Principal,
    complaint_id: str,
    request: ResolveRequest,
) -> dict[str, Any]:
    """Resolve the complaint and announce it (follow-up schedules the call-back)."""

    def decide(current: dict[str, Any]) -> Decision:
        status = transition(current=Status(current["status"]), command=Command.RESOLVE)
        now = _now()
        number = current.get("resolution_count", 0) + 1
        resolution = {
            "number": number,
            "summary": request.summary,
            "customer_accepted": request.customer_accepted,
            "resolved_by": principal.subject,
            "resolved_at": now,
        }
        assignment = current.get("assignment") or {}
        resolved = ComplaintResolved(
            complaint_id=complaint_id,
            org=current["org"],
            branch=current["branch"],
            reference=current["reference"],
            category=current["category"],
            severity=current["severity"],
            resolution_number=number,
            summary=request.summary,
            department=assignment.get("department"),
            owner_id=assignment.get("owner_id"),
            customer=_customer_contact(current),
            resolved_at=now,
        )
        update = {
            "$set": {"status": status.value, "resolution": resolution, "resolution_count": number}
        }
        return update, [(EventType.COMPLAINT_RESOLVED, resolved)]

    try:
        document = await _change(
            db=db,
            settings=settings,
            complaint_id=complaint_id,
            scope=principal.scope_filter(),
            actor=principal.subject,
            action="resolved",
            decide=decide,
            details={"summary": request.summary},
        )
    except InvalidTransition as exc:
        raise _invalid(exc, complaint_id=complaint_id) from None
    if document is None:
        raise not_found(what="complaint", identifier=complaint_id)
    return document


async def apply_assignment(
    *, db: AsyncDatabase, settings: IntakeSettings, event: CloudEvent, data: ComplaintAssigned
) -> None:
    """Record routing's decision; a later assignment never overwrites a newer one."""

    def decide(current: dict[str, Any]) -> Decision:
        known = current.get("assignment")
        if known is not None and known["assigned_at"] > data.assigned_at:
            return {}, []  # out of order: keep the newer assignment, still log the event
        try:
            status = transition(current=Status(current["status"]), command=Command.ASSIGN)
        except InvalidTransition:
            status = Status(current["status"])  # already finished: record, do not reopen
        assignment = data.model_dump(
            include={
                "department",
                "department_name",
                "owner_id",
                "owner_name",
                "rule_id",
                "rule_version",
                "assigned_at",
            }
        )
        update = {
            "$set": {
                "status": status.value,
                "assignment": assignment,
                "acknowledge_due_at": data.acknowledge_due_at,
                "resolve_due_at": data.resolve_due_at,
            }
        }
        return update, []

    await _change(
        db=db,
        settings=settings,
        complaint_id=data.complaint_id,
        scope={"org": data.org},
        actor=f"routing:{event.source}",
        action="assigned",
        decide=decide,
        event_id=event.id,
        details={"department": data.department, "owner_id": data.owner_id},
    )


async def apply_followup_outcome(
    *, db: AsyncDatabase, settings: IntakeSettings, event: CloudEvent, data: FollowupCompleted
) -> None:
    """Satisfied or unreachable closes the complaint; unsatisfied reopens it."""

    def decide(current: dict[str, Any]) -> Decision:
        satisfaction = data.model_dump(
            include={
                "followup_id",
                "resolution_number",
                "outcome",
                "score",
                "comment",
                "completed_at",
            },
            mode="python",
        )
        satisfaction["outcome"] = data.outcome.value
        set_fields: dict[str, Any] = {"satisfaction": satisfaction}
        if data.resolution_number != current.get("resolution_count"):
            return {"$set": set_fields}, []  # a check of an earlier resolution: record only
        now = _now()
        command = Command.REOPEN if data.outcome is FollowupOutcome.UNSATISFIED else Command.CLOSE
        try:
            status = transition(current=Status(current["status"]), command=command)
        except InvalidTransition:
            return {"$set": set_fields}, []
        set_fields["status"] = status.value
        base = {"complaint_id": current["_id"], "org": current["org"], "branch": current["branch"]}
        if command is Command.CLOSE:
            set_fields["closed_at"] = now
            closed = ComplaintClosed(
                **base,
                reason=f"follow-up {data.outcome.value}",
                closed_by="followup",
                closed_at=now,
            )
            return {"$set": set_fields}, [(EventType.COMPLAINT_CLOSED, closed)]
        reopened = ComplaintReopened(
            **base,
            reason="customer not satisfied at follow-up",
            reopened_by="followup",
            reopened_at=now,
            reopen_count=current.get("reopen_count", 0) + 1,
        )
        return (
            {"$set": set_fields, "$inc": {"reopen_count": 1}},
            [(EventType.COMPLAINT_REOPENED, reopened)],
        )

    await _change(
        db=db,
        settings=settings,
        complaint_id=data.complaint_id,
        scope={"org": data.org},
        actor=f"followup:{event.source}",
        action=f"followup_{data.outcome.value}",
        decide=decide,
        event_id=event.id,
        details={"followup_id": data.followup_id, "score": data.score},
    )
