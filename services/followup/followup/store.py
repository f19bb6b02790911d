"""Data access for satisfaction checks.

Every change of a check goes through the aggregate kernel
(``complaints_shared.aggregate``): read the document, let the state machine
(``followup.lifecycle``) decide, then write conditionally on the version read
together with the check's history entry and the outbox events the change
causes, in one atomic update. Refusals are the table's 409 problems.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from complaints_shared import aggregate
from complaints_shared.aggregate import Aggregate, Decide, Decision
from complaints_shared.auth import Principal
from complaints_shared.events import (
    ComplaintReceived,
    ComplaintResolved,
    EventType,
    FollowupAttempted,
    FollowupCancelled,
    FollowupCompleted,
    FollowupOutcome,
    FollowupScheduled,
)
from complaints_shared.logs import get_logger
from complaints_shared.mongo import at_or_before, claim_first, lease_free, merge_updates
from complaints_shared.outbox import outbox_entry, outbox_fields
from complaints_shared.pagination import Page
from complaints_shared.problems import not_found
from complaints_shared.timers import FAILURE_FIELDS
from followup import config_store
from followup.contact_hours import check_due_times, next_attempt_at
from followup.lifecycle import (
    TABLE,
    CheckState,
    Command,
    InvalidTransition,
    judge,
    transition,
    unreached_command,
)
from followup.models import (
    OPEN_CHECK_STATUSES,
    AttemptCreate,
    CheckFilters,
    CheckStatus,
    ContactHours,
    OutcomeRequest,
    PolicyRead,
    SatisfactionCheckRead,
)
from followup.policy import checks_for
from followup.settings import FollowupSettings

CHECKS = "satisfaction_checks"
CHECK = Aggregate(collection=CHECKS, what="satisfaction check", max_write_attempts=5)
SNAPSHOTS = "complaint_snapshots"
SYSTEM_ACTOR = "followup"
CLAIM_FIELDS = {"claimed_by": "", "claim_lease_until": ""}
# A fired or released check also drops the failures its earlier tries recorded.
TIMER_FIELDS = {"timer_lease_owner": "", "timer_lease_until": "", **FAILURE_FIELDS}
OPEN = [status.value for status in OPEN_CHECK_STATUSES]

log = get_logger(__name__)


async def ensure_indexes(*, db: AsyncDatabase) -> None:
    checks = db[CHECKS]
    # The scheduler's two questions: which scheduled checks are due, which claims expired.
    await checks.create_index([("status", ASCENDING), ("due_at", ASCENDING)], name="status_due")
    await checks.create_index(
        [("status", ASCENDING), ("claim_lease_until", ASCENDING)], name="status_claim_lease"
    )
    await checks.create_index(
        [("org", ASCENDING), ("due_at", ASCENDING), ("_id", ASCENDING)], name="org_due"
    )
    await checks.create_index(
        [("org", ASCENDING), ("branch", ASCENDING), ("status", ASCENDING), ("due_at", ASCENDING)],
        name="org_branch_status_due",
    )
    await checks.create_index(
        [("org", ASCENDING), ("complaint_id", ASCENDING), ("resolution_number", ASCENDING)],
        name="org_complaint_resolution",
    )
    await checks.create_index([("org", ASCENDING), ("resolved_at", ASCENDING)], name="org_resolved")
    await config_store.ensure_indexes(db=db)


def check_id(*, complaint_id: str, resolution_number: int, sequence: int) -> str:
    """Deterministic, so a redelivered ``complaint.resolved`` cannot schedule twice."""
    return f"{complaint_id}:r{resolution_number}:{sequence}"


def _history_entry(*, action: str, status: CheckStatus, actor: str, at: datetime) -> dict:
    return {"at": at, "action": action, "status": status.value, "actor": actor}


def _moved(
    *, command: Command, status: CheckStatus, actor: str, now: datetime, **fields: Any
) -> dict[str, Any]:
    """The update that puts a check in ``status`` and records why in its history."""
    return {
        "$set": {"status": status.value, **fields},
        "$push": {
            "history": _history_entry(action=command.value, status=status, actor=actor, at=now)
        },
    }


def _identity(document: dict[str, Any]) -> dict[str, Any]:
    return {
        "complaint_id": document["complaint_id"],
        "org": document["org"],
        "branch": document["branch"],
        "followup_id": document["_id"],
        "resolution_number": document["resolution_number"],
    }


async def _change(
    *,
    db: AsyncDatabase,
    settings: FollowupSettings,
    followup_id: str,
    scope: dict[str, Any],
    decide: Decide,
    event_id: str | None = None,
    now: datetime,
) -> dict[str, Any] | None:
    """Apply one decided change atomically; the new document, None when not visible."""
    return await aggregate.change(
        db=db,
        settings=settings,
        aggregate=CHECK,
        aggregate_id=followup_id,
        decide=decide,
        now=now,
        scope=scope,
        event_id=event_id,
    )


# ---------------------------------------------------------------- scheduling --


async def remember_received(*, db: AsyncDatabase, received: ComplaintReceived) -> None:
    """Keep the complaint's subject for the call-back, in case the resolution omits it."""
    await db[SNAPSHOTS].update_one(
        {"_id": received.complaint_id},
        {
            "$setOnInsert": {
                "org": received.org,
                "branch": received.branch,
                "reference": received.reference,
                "subject": received.subject,
                "received_at": received.received_at,
            }
        },
        upsert=True,
    )


async def _subject_of(*, db: AsyncDatabase, resolved: ComplaintResolved) -> str | None:
    if resolved.subject is not None:
        return resolved.subject
    snapshot = await db[SNAPSHOTS].find_one(
        {"_id": resolved.complaint_id, "org": resolved.org}, projection={"subject": 1}
    )
    return snapshot.get("subject") if snapshot else None


async def _superseded(*, db: AsyncDatabase, resolved: ComplaintResolved) -> bool:
    """A stale redelivery: checks of a later resolution already exist."""
    later = await db[CHECKS].find_one(
        {
            "org": resolved.org,
            "complaint_id": resolved.complaint_id,
            "resolution_number": {"$gt": resolved.resolution_number},
        },
        projection={"_id": 1},
    )
    return later is not None


# Taken over from ``complaint.resolved`` as is, so the caller needs no other service.
COPIED_FROM_RESOLUTION = (
    "complaint_id",
    "reference",
    "org",
    "branch",
    "category",
    "severity",
    "resolution_number",
    "customer",
    "root_cause",
    "remedies",
    "customer_accepted",
    "responsible_department",
    "responsible_party",
    "department",
    "owner_id",
    "resolved_by",
)


def _new_check(
    *,
    resolved: ComplaintResolved,
    subject: str | None,
    sequence: int,
    due_at: datetime,
    policy: PolicyRead,
    now: datetime,
) -> dict[str, Any]:
    event = resolved.model_dump(mode="json")
    rules = policy.policy
    status = TABLE.next(current=None, command=Command.SCHEDULE)
    return {
        "_id": check_id(
            complaint_id=resolved.complaint_id,
            resolution_number=resolved.resolution_number,
            sequence=sequence,
        ),
        **{field: event.get(field) for field in COPIED_FROM_RESOLUTION},
        "subject": subject,
        "resolution_summary": resolved.summary,
        "resolved_at": resolved.resolved_at,
        "sequence": sequence,
        "status": status.value,
        "due_at": due_at,
        "channel": resolved.customer.preferred_channel.value,
        "policy_version": policy.version,
        "policy_branch": policy.branch,
        "max_attempts": rules.max_attempts,
        "attempt_spacing_hours": rules.attempt_spacing_hours,
        "satisfied_score_threshold": rules.satisfied_score_threshold,
        "attempt_count": 0,
        "attempts": [],
        "history": [
            _history_entry(action=Command.SCHEDULE.value, status=status, actor=SYSTEM_ACTOR, at=now)
        ],
        "version": 1,
        "created_at": now,
    }


async def schedule_checks(
    *,
    db: AsyncDatabase,
    settings: FollowupSettings,
    resolved: ComplaintResolved,
    policy: PolicyRead,
    contact_hours: ContactHours,
    now: datetime,
) -> int:
    """Create the resolution's checks (each with its ``followup.scheduled``); how many are new."""
    if await _superseded(db=db, resolved=resolved):
        return 0
    rules = checks_for(policy.policy, category=resolved.category, severity=resolved.severity)
    due_times = check_due_times(resolved_at=resolved.resolved_at, checks=rules, hours=contact_hours)
    subject = await _subject_of(db=db, resolved=resolved)
    created = 0
    for sequence, due_at in enumerate(due_times, start=1):
        document = _new_check(
            resolved=resolved,
            subject=subject,
            sequence=sequence,
            due_at=due_at,
            policy=policy,
            now=now,
        )
        scheduled = FollowupScheduled(
            **_identity(document),
            sequence=sequence,
            due_at=due_at,
            channel=resolved.customer.preferred_channel,
        )
        entry = outbox_entry(
            event_type=EventType.FOLLOWUP_SCHEDULED, data=scheduled, settings=settings
        )
        document |= outbox_fields([entry])
        try:
            await db[CHECKS].insert_one(document)
        except DuplicateKeyError:
            continue  # delivered before: this check exists already
        created += 1
    return created


async def cancel_open_checks(
    *,
    db: AsyncDatabase,
    settings: FollowupSettings,
    org: str,
    complaint_id: str,
    only: dict[str, Any],
    reason: str,
    now: datetime,
    event_id: str | None = None,
) -> int:
    """Cancel the complaint's open checks matching ``only``; each announces its cancellation.

    ``event_id`` (the consumed event causing it) makes a redelivery change nothing.
    """
    query = {"org": org, "complaint_id": complaint_id, "status": {"$in": OPEN}, **only}
    followup_ids = [doc["_id"] async for doc in db[CHECKS].find(query, projection={"_id": 1})]
    cancelled: list[str] = []

    async def counted(document: dict[str, Any]) -> None:
        cancelled.append(document["_id"])

    def decide(current: dict[str, Any]) -> Decision | None:
        if not TABLE.allows(current=CheckStatus(current["status"]), command=Command.CANCEL):
            return None  # finished meanwhile: nothing left to cancel
        status = transition(
            state=CheckState.of(current), command=Command.CANCEL, actor=SYSTEM_ACTOR, now=now
        )
        update = merge_updates(
            _moved(
                command=Command.CANCEL,
                status=status,
                actor=SYSTEM_ACTOR,
                now=now,
                cancelled_at=now,
                cancel_reason=reason,
            ),
            {"$unset": {**CLAIM_FIELDS, **TIMER_FIELDS}},
        )
        announced = FollowupCancelled(**_identity(current), reason=reason, cancelled_at=now)
        return Decision(update, [(EventType.FOLLOWUP_CANCELLED, announced)], [counted])

    for followup_id in followup_ids:
        await _change(
            db=db,
            settings=settings,
            followup_id=followup_id,
            scope={},
            decide=decide,
            event_id=event_id,
            now=now,
        )
    return len(cancelled)


# ------------------------------------------------------------------ reading --


async def get_visible(*, db: AsyncDatabase, principal: Principal, followup_id: str) -> dict:
    """The check if the caller may see it; a foreign one is simply not found."""
    return await aggregate.get_visible(
        db=db, aggregate=CHECK, principal=principal, aggregate_id=followup_id
    )


def _list_query(*, principal: Principal, filters: CheckFilters) -> dict[str, Any]:
    query = aggregate.visibility(principal)
    wanted = {
        "branch": filters.branch,
        "status": filters.status.value if filters.status else None,
        "owner_id": filters.owner,
        "claimed_by": filters.claimed_by,
        "complaint_id": filters.complaint_id,
    }
    conditions = [{field: value} for field, value in wanted.items() if value is not None]
    if filters.due_before is not None:
        conditions.append({"due_at": {"$lt": filters.due_before}})
    return {"$and": [query, *conditions]} if conditions else query


async def list_checks(
    *, db: AsyncDatabase, principal: Principal, filters: CheckFilters
) -> Page[SatisfactionCheckRead]:
    """Checks the caller may see, ordered by due time."""
    return await aggregate.page(
        collection=db[CHECKS],
        query=_list_query(principal=principal, filters=filters),
        sort_field="due_at",
        limit=filters.limit,
        cursor=filters.cursor,
        to_item=to_read,
        projection=CHECK.hidden,
    )


def to_read(document: dict[str, Any]) -> SatisfactionCheckRead:
    return SatisfactionCheckRead.model_validate({**document, "id": document["_id"]})


# ------------------------------------------------------------ working checks --


async def _change_visible(
    *,
    db: AsyncDatabase,
    settings: FollowupSettings,
    principal: Principal,
    followup_id: str,
    decide: Decide,
    now: datetime,
) -> dict[str, Any]:
    document = await _change(
        db=db,
        settings=settings,
        followup_id=followup_id,
        scope=aggregate.visibility(principal),
        decide=decide,
        now=now,
    )
    if document is None:
        raise not_found(what="satisfaction check", identifier=followup_id)
    return document


async def claim(
    *,
    db: AsyncDatabase,
    settings: FollowupSettings,
    principal: Principal,
    followup_id: str,
    now: datetime,
) -> dict[str, Any]:
    """Give the caller the check for ``claim_lease_s`` (renewed when they claim again)."""

    def decide(current: dict[str, Any]) -> Decision:
        status = transition(
            state=CheckState.of(current), command=Command.CLAIM, actor=principal.subject, now=now
        )
        lease_until = now + timedelta(seconds=settings.claim_lease_s)
        update = _moved(
            command=Command.CLAIM,
            status=status,
            actor=principal.subject,
            now=now,
            claimed_by=principal.subject,
            claim_lease_until=lease_until,
        )
        return Decision(update)

    return await _change_visible(
        db=db,
        settings=settings,
        principal=principal,
        followup_id=followup_id,
        decide=decide,
        now=now,
    )


async def release(
    *,
    db: AsyncDatabase,
    settings: FollowupSettings,
    principal: Principal,
    followup_id: str,
    now: datetime,
) -> dict[str, Any]:
    """Give a claimed check back to the queue before the lease runs out."""

    def decide(current: dict[str, Any]) -> Decision:
        status = transition(
            state=CheckState.of(current), command=Command.RELEASE, actor=principal.subject, now=now
        )
        update = merge_updates(
            _moved(command=Command.RELEASE, status=status, actor=principal.subject, now=now),
            {"$unset": CLAIM_FIELDS},
        )
        return Decision(update)

    return await _change_visible(
        db=db,
        settings=settings,
        principal=principal,
        followup_id=followup_id,
        decide=decide,
        now=now,
    )


def _attempt(
    *,
    current: dict[str, Any],
    actor: str,
    now: datetime,
    reached: bool,
    channel: str | None,
    idempotency_key: str | None,
    **details: Any,
) -> dict[str, Any]:
    return {
        "number": current.get("attempt_count", 0) + 1,
        "reached": reached,
        "channel": channel or current.get("channel", "phone"),
        "attempted_by": actor,
        "attempted_at": now,
        "idempotency_key": idempotency_key,
        **details,
    }


def _attempted_event(current: dict[str, Any], attempt: dict[str, Any]) -> FollowupAttempted:
    return FollowupAttempted(
        **_identity(current),
        attempt_number=attempt["number"],
        reached=attempt["reached"],
        channel=attempt["channel"],
        attempted_by=attempt["attempted_by"],
        attempted_at=attempt["attempted_at"],
        next_attempt_at=attempt.get("next_attempt_at"),
    )


def _complete(
    *,
    current: dict[str, Any],
    command: Command,
    attempt: dict[str, Any],
    outcome: FollowupOutcome,
    now: datetime,
) -> Decision:
    """Finish the check with ``outcome``: the attempt, then the completion, in one write."""
    status = transition(
        state=CheckState.of(current), command=command, actor=attempt["attempted_by"], now=now
    )
    verdict = {
        "outcome": outcome.value,
        "score": attempt.get("score"),
        "problem_solved": attempt.get("problem_solved"),
        "comment": attempt.get("comment"),
    }
    update = merge_updates(
        _moved(
            command=command,
            status=status,
            actor=attempt["attempted_by"],
            now=now,
            completed_at=now,
            completed_by=attempt["attempted_by"],
            **verdict,
        ),
        {"$push": {"attempts": attempt}, "$inc": {"attempt_count": 1}},
        {"$unset": CLAIM_FIELDS},
        {"$min": {"first_contact_at": now}} if attempt["reached"] else {},
    )
    completed = FollowupCompleted(
        **_identity(current),
        **verdict,
        attempts=attempt["number"],
        channel=attempt["channel"],
        completed_at=now,
    )
    return Decision(
        update,
        [
            (EventType.FOLLOWUP_ATTEMPTED, _attempted_event(current, attempt)),
            (EventType.FOLLOWUP_COMPLETED, completed),
        ],
    )


def _rules(current: dict[str, Any], settings: FollowupSettings) -> dict[str, Any]:
    """The policy values a check was scheduled under (the defaults for checks stored before)."""
    return {
        "max_attempts": current.get("max_attempts", settings.max_attempts),
        "attempt_spacing_hours": current.get(
            "attempt_spacing_hours", settings.attempt_spacing_hours
        ),
        "satisfied_score_threshold": current.get(
            "satisfied_score_threshold", settings.satisfied_score_threshold
        ),
    }


def _retry_later(
    *,
    current: dict[str, Any],
    attempt: dict[str, Any],
    hours: ContactHours,
    now: datetime,
    spacing_hours: float,
) -> Decision:
    """Unreached, attempts left: back to the schedule at the next allowed moment."""
    status = transition(
        state=CheckState.of(current),
        command=Command.RETRY_LATER,
        actor=attempt["attempted_by"],
        now=now,
    )
    attempt["next_attempt_at"] = next_attempt_at(
        attempted_at=now, spacing_hours=spacing_hours, hours=hours
    )
    update = merge_updates(
        _moved(
            command=Command.RETRY_LATER,
            status=status,
            actor=attempt["attempted_by"],
            now=now,
            due_at=attempt["next_attempt_at"],
        ),
        {"$push": {"attempts": attempt}, "$inc": {"attempt_count": 1}},
        {"$unset": CLAIM_FIELDS},
    )
    return Decision(update, [(EventType.FOLLOWUP_ATTEMPTED, _attempted_event(current, attempt))])


def _already_recorded(current: dict[str, Any], idempotency_key: str | None) -> bool:
    if idempotency_key is None:
        return False
    return any(a.get("idempotency_key") == idempotency_key for a in current.get("attempts", []))


async def record_attempt(
    *,
    db: AsyncDatabase,
    settings: FollowupSettings,
    principal: Principal,
    followup_id: str,
    request: AttemptCreate,
    idempotency_key: str | None,
    now: datetime,
) -> dict[str, Any]:
    """Record one call by the agent holding the claim; ends the check when it can."""
    visible = await get_visible(db=db, principal=principal, followup_id=followup_id)
    hours = await config_store.current_contact_hours(
        db=db, settings=settings, org=visible["org"], branch=visible["branch"]
    )

    def decide(current: dict[str, Any]) -> Decision | None:
        if _already_recorded(current, idempotency_key):
            return None
        rules = _rules(current, settings)
        attempt = _attempt(
            current=current,
            actor=principal.subject,
            now=now,
            reached=request.reached,
            channel=request.channel,
            idempotency_key=idempotency_key,
            note=request.note,
        )
        if request.reached:
            assert request.score is not None and request.problem_solved is not None
            attempt |= request.model_dump(include={"score", "problem_solved", "comment"})
            outcome = judge(
                score=request.score,
                problem_solved=request.problem_solved,
                threshold=rules["satisfied_score_threshold"],
            )
            return _complete(
                current=current,
                command=Command.RECORD_REACHED,
                attempt=attempt,
                outcome=outcome,
                now=now,
            )
        command = unreached_command(
            attempt_number=attempt["number"], max_attempts=rules["max_attempts"]
        )
        if command is Command.GIVE_UP:
            return _complete(
                current=current,
                command=command,
                attempt=attempt,
                outcome=FollowupOutcome.NO_RESPONSE,
                now=now,
            )
        return _retry_later(
            current=current,
            attempt=attempt,
            hours=hours.contact_hours,
            now=now,
            spacing_hours=rules["attempt_spacing_hours"],
        )

    return await _change_visible(
        db=db,
        settings=settings,
        principal=principal,
        followup_id=followup_id,
        decide=decide,
        now=now,
    )


async def record_outcome(
    *,
    db: AsyncDatabase,
    settings: FollowupSettings,
    principal: Principal,
    followup_id: str,
    request: OutcomeRequest,
    now: datetime,
) -> dict[str, Any]:
    """Shortcut: a reached attempt with the agent's verdict, on an open check nobody else holds."""

    def decide(current: dict[str, Any]) -> Decision:
        attempt = _attempt(
            current=current,
            actor=principal.subject,
            now=now,
            reached=True,
            channel=None,
            idempotency_key=None,
            score=request.score,
            problem_solved=request.problem_solved,
            comment=request.comment,
        )
        outcome = FollowupOutcome.SATISFIED if request.satisfied else FollowupOutcome.UNSATISFIED
        return _complete(
            current=current,
            command=Command.RECORD_OUTCOME,
            attempt=attempt,
            outcome=outcome,
            now=now,
        )

    return await _change_visible(
        db=db,
        settings=settings,
        principal=principal,
        followup_id=followup_id,
        decide=decide,
        now=now,
    )


# ---------------------------------------------------------------- scheduler --


async def lease_due_check(
    *, db: AsyncDatabase, owner: str, now: datetime, lease_s: float
) -> str | None:
    """Take the earliest due scheduled check under a lease; its id, None when none is due."""
    due = {
        "status": CheckStatus.SCHEDULED.value,
        "due_at": at_or_before(now),
        **lease_free("timer_lease_until", now),
    }
    document = await claim_first(
        db[CHECKS],
        due,
        {
            "$set": {
                "timer_lease_owner": owner,
                "timer_lease_until": now + timedelta(seconds=lease_s),
            }
        },
        sort=[("due_at", ASCENDING)],
        projection={"_id": 1},
    )
    return document["_id"] if document else None


async def fire_due_check(
    *, db: AsyncDatabase, settings: FollowupSettings, followup_id: str, owner: str, now: datetime
) -> bool:
    """Turn a leased check ``due``; False when it changed meanwhile (cancelled, say)."""

    def decide(current: dict[str, Any]) -> Decision | None:
        if current.get("timer_lease_owner") != owner:
            return None  # our lease ran out and another replica took the check over
        status = transition(
            state=CheckState.of(current), command=Command.BECOME_DUE, actor=SYSTEM_ACTOR, now=now
        )
        update = merge_updates(
            _moved(command=Command.BECOME_DUE, status=status, actor=SYSTEM_ACTOR, now=now),
            {"$unset": TIMER_FIELDS},
        )
        return Decision(update)

    try:
        document = await _change(
            db=db, settings=settings, followup_id=followup_id, scope={}, decide=decide, now=now
        )
    except InvalidTransition:
        await db[CHECKS].update_one(
            {"_id": followup_id, "timer_lease_owner": owner}, {"$unset": TIMER_FIELDS}
        )
        return False
    return document is not None and document["status"] == CheckStatus.DUE.value


async def expired_claims(*, db: AsyncDatabase, now: datetime, limit: int) -> list[str]:
    """Checks whose agent walked away: the claim's lease ran out."""
    cursor = db[CHECKS].find(
        {"status": CheckStatus.IN_PROGRESS.value, "claim_lease_until": {"$lt": now}},
        projection={"_id": 1},
    )
    return [document["_id"] for document in await cursor.limit(limit).to_list(None)]


async def expire_claim(
    *, db: AsyncDatabase, settings: FollowupSettings, followup_id: str, now: datetime
) -> bool:
    """Put an abandoned check back in the queue (``due``) for any agent to claim."""

    def decide(current: dict[str, Any]) -> Decision:
        status = transition(
            state=CheckState.of(current),
            command=Command.EXPIRE_CLAIM,
            actor=SYSTEM_ACTOR,
            now=now,
        )
        update = merge_updates(
            _moved(command=Command.EXPIRE_CLAIM, status=status, actor=SYSTEM_ACTOR, now=now),
            {"$unset": CLAIM_FIELDS},
        )
        return Decision(update)

    try:
        await _change(
            db=db, settings=settings, followup_id=followup_id, scope={}, decide=decide, now=now
        )
    except InvalidTransition:
        return False  # renewed or finished meanwhile
    return True
