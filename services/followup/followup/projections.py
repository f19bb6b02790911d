"""Other services' events applied to follow-up's state.

Intake's: a resolution schedules its checks (deterministic ids, so a redelivery
creates none twice); a reopening, a withdrawal or an administrator's closing
cancels the open ones, each a change through the aggregate kernel carrying the
consumed event's id, so a redelivered event has no second effect.

Routing's: a branch's announcement (``branch.updated``) is kept, newest version
only, for the time zone of its default contact hours.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from complaints_shared import announced_branches
from complaints_shared.aggregate import Decision
from complaints_shared.events import (
    BranchUpdated,
    ComplaintResolved,
    EventType,
    FollowupCancelled,
    FollowupScheduled,
)
from complaints_shared.logs import get_logger
from complaints_shared.mongo import merge_updates
from complaints_shared.outbox import outbox_entry, outbox_fields
from followup import store
from followup.contact_hours import check_due_times
from followup.lifecycle import (
    CLAIM_FIELDS,
    SYSTEM_ACTOR,
    TABLE,
    CheckState,
    Command,
    history_entry,
    identity,
    moved,
    transition,
)
from followup.models import CheckStatus, ContactHours, PolicyRead
from followup.policy import checks_for
from followup.settings import FollowupSettings

log = get_logger(__name__)

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
        "_id": store.check_id(
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
            history_entry(action=Command.SCHEDULE.value, status=status, actor=SYSTEM_ACTOR, at=now)
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
    if await store.has_later_resolution(
        db=db,
        org=resolved.org,
        complaint_id=resolved.complaint_id,
        resolution_number=resolved.resolution_number,
    ):
        return 0  # a stale redelivery: a later resolution has its checks already
    if await store.resolution_ended(
        db=db,
        org=resolved.org,
        complaint_id=resolved.complaint_id,
        resolution_number=resolved.resolution_number,
    ):
        # Replayed late: a reopen, an administrator's close or a withdrawal came first.
        log.info("followups_not_scheduled_resolution_ended", resolution=resolved.resolution_number)
        return 0
    rules = checks_for(policy.policy, category=resolved.category, severity=resolved.severity)
    due_times = check_due_times(resolved_at=resolved.resolved_at, checks=rules, hours=contact_hours)
    subject = resolved.subject
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
            **identity(document),
            sequence=sequence,
            due_at=due_at,
            channel=resolved.customer.preferred_channel,
        )
        entry = outbox_entry(
            event_type=EventType.FOLLOWUP_SCHEDULED, data=scheduled, settings=settings
        )
        created += await store.insert_check(db=db, document=document | outbox_fields([entry]))
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
    followup_ids = await store.open_check_ids(db=db, org=org, complaint_id=complaint_id, only=only)
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
            moved(
                command=Command.CANCEL,
                status=status,
                actor=SYSTEM_ACTOR,
                now=now,
                cancelled_at=now,
                cancel_reason=reason,
            ),
            {"$unset": {**CLAIM_FIELDS, **store.TIMER_FIELDS}},
        )
        announced = FollowupCancelled(**identity(current), reason=reason, cancelled_at=now)
        return Decision(update, [(EventType.FOLLOWUP_CANCELLED, announced)], [counted])

    for followup_id in followup_ids:
        await store.change(
            db=db,
            settings=settings,
            followup_id=followup_id,
            scope={},
            decide=decide,
            event_id=event_id,
            now=now,
        )
    return len(cancelled)


async def apply_branch_updated(*, db: AsyncDatabase, branch: BranchUpdated) -> None:
    """Keep the branch's time zone for its default contact hours. Checks already scheduled
    keep their due times; the scheduler and claims hold them to the hours in the zone known
    when they come due."""
    await announced_branches.keep_newest(db=db, branch=branch)
