"""Kafka event handlers of follow-up, one per consumed event type.

Every handler is idempotent: checks have deterministic ids, a cancellation is a
change through the aggregate kernel carrying the event id, and a branch keeps its
highest announced version, so a redelivered event has no second effect.
"""

from __future__ import annotations

from typing import Any

from complaints_shared.envelope import CloudEvent
from complaints_shared.events import (
    BranchUpdated,
    ClosedVia,
    ComplaintClosed,
    ComplaintReopened,
    ComplaintResolved,
    ComplaintWithdrawn,
    EventType,
)
from complaints_shared.kafka import EventHandler
from complaints_shared.logs import get_logger
from complaints_shared.runtime import Runtime
from followup import projections, store
from followup.settings import FollowupSettings

log = get_logger(__name__)


def build_handlers(runtime: Runtime) -> dict[EventType, EventHandler]:
    settings: FollowupSettings = runtime.settings  # type: ignore[assignment]

    async def cancel_pending(
        *,
        event: CloudEvent,
        org: str,
        complaint_id: str,
        reason: str,
        only: dict[str, Any] | None = None,
    ) -> None:
        # The open checks of the complaint ``only`` selects (every one without it): a
        # reopen's or a close's of the resolutions it undid or ended, not a later
        # resolution's: the event may come again after those (a redelivery after a crash,
        # a dead letter replayed late), whose checks must stand.
        cancelled = await projections.cancel_open_checks(
            db=runtime.db,
            settings=settings,
            org=org,
            complaint_id=complaint_id,
            only=only or {},
            reason=reason,
            now=runtime.clock.now(),
            event_id=event.id,
        )
        if cancelled:
            log.info("followups_cancelled", count=cancelled, reason=reason)

    async def on_complaint_resolved(event: CloudEvent, data: ComplaintResolved) -> None:
        now = runtime.clock.now()
        # A newer resolution replaces the checks of an older one still pending.
        await projections.cancel_open_checks(
            db=runtime.db,
            settings=settings,
            org=data.org,
            complaint_id=data.complaint_id,
            only={"resolution_number": {"$lt": data.resolution_number}},
            reason="superseded by a later resolution",
            now=now,
            event_id=event.id,
        )
        policy = await store.policy_for_branch(
            db=runtime.db, settings=settings, org=data.org, branch=data.branch
        )
        hours = await store.current_contact_hours(
            db=runtime.db, settings=settings, org=data.org, branch=data.branch
        )
        created = await projections.schedule_checks(
            db=runtime.db,
            settings=settings,
            resolved=data,
            policy=policy,
            contact_hours=hours.contact_hours,
            now=now,
        )
        log.info("followups_scheduled", count=created, resolution=data.resolution_number)

    async def on_complaint_reopened(event: CloudEvent, data: ComplaintReopened) -> None:
        # A complaint is reopened only once resolved, each reopen after one resolution more:
        # the reopen's count is the resolutions it ended, also from a producer before
        # ``resolution_count`` (4 December). Read as "every check", such a reopen replayed
        # late cancelled a later resolution's call-backs, and nobody called the customer.
        ended = data.resolution_count if data.resolution_count is not None else data.reopen_count
        await store.record_ended(
            db=runtime.db, org=data.org, complaint_id=data.complaint_id, up_to=ended
        )
        await cancel_pending(
            event=event,
            org=data.org,
            complaint_id=data.complaint_id,
            reason="complaint reopened",
            only=_resolutions_up_to(ended),
        )

    async def on_complaint_withdrawn(event: CloudEvent, data: ComplaintWithdrawn) -> None:
        await store.record_ended(
            db=runtime.db, org=data.org, complaint_id=data.complaint_id, up_to=None, terminal=True
        )
        await cancel_pending(
            event=event, org=data.org, complaint_id=data.complaint_id, reason="complaint withdrawn"
        )

    async def on_complaint_closed(event: CloudEvent, data: ComplaintClosed) -> None:
        # Closing after a satisfied call keeps the later checks (e.g. the one after a week).
        if data.closed_via is not ClosedVia.ADMIN:
            return
        await store.record_ended(
            db=runtime.db,
            org=data.org,
            complaint_id=data.complaint_id,
            up_to=data.resolution_count,
        )
        await cancel_pending(
            event=event,
            org=data.org,
            complaint_id=data.complaint_id,
            reason="complaint closed by an administrator",
            only=(
                _resolutions_up_to(data.resolution_count)
                if data.resolution_count is not None
                else {"resolved_at": {"$lte": data.closed_at}}  # a producer before 4 December
            ),
        )

    async def on_branch_updated(event: CloudEvent, data: BranchUpdated) -> None:
        await projections.apply_branch_updated(db=runtime.db, branch=data)

    return {
        EventType.COMPLAINT_RESOLVED: on_complaint_resolved,
        EventType.COMPLAINT_REOPENED: on_complaint_reopened,
        EventType.COMPLAINT_WITHDRAWN: on_complaint_withdrawn,
        EventType.COMPLAINT_CLOSED: on_complaint_closed,
        EventType.BRANCH_UPDATED: on_branch_updated,
    }


def _resolutions_up_to(count: int | None) -> dict[str, Any]:
    """The checks of the complaint's first ``count`` resolutions (None: every one)."""
    return {} if count is None else {"resolution_number": {"$lte": count}}
