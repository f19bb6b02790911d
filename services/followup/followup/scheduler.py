"""Durable timers of follow-up: scheduled checks become due, abandoned claims expire.

Due times live in MongoDB (indexed by status and due time), so a restart loses
none. Each replica polls every ``scheduler_poll_interval_s``, takes one due
check at a time under a lease (a replica that dies mid-way loses its lease and
another one takes over), and fires it with a version-conditional write, so a
check fires once however many replicas run. Time is ``runtime.clock.now()``:
business deadlines are compared, never slept on. A check that fails to fire is
recorded and postponed with backoff (``complaints_shared.timers``); the pass goes on.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase

from complaints_shared.aggregate import Decision
from complaints_shared.events import EventType, RescheduleReason
from complaints_shared.logs import get_logger
from complaints_shared.mongo import at_or_before, claim_first, merge_updates
from complaints_shared.runtime import Runtime
from complaints_shared.timers import FAILURE_FIELDS, record_timer_failure
from complaints_shared.timing import wait_event
from complaints_shared.transitions import InvalidTransition
from followup import store
from followup.contact_hours import next_contact_moment
from followup.lifecycle import (
    CLAIM_FIELDS,
    SYSTEM_ACTOR,
    CheckState,
    Command,
    earlier_calls,
    moved,
    rescheduled_event,
    transition,
)
from followup.models import CheckStatus
from followup.settings import FollowupSettings

log = get_logger(__name__)

# How soon a check waiting for an earlier one of its resolution is asked again, at least.
EARLIER_CHECK_POLL = timedelta(minutes=15)


async def lease_due_check(
    *, db: AsyncDatabase, owner: str, now: datetime, lease_s: float
) -> dict[str, Any] | None:
    """Take the earliest due scheduled check under a lease; its id, organisation, branch and
    place among its resolution's checks, None when none is due."""
    due = {"status": CheckStatus.SCHEDULED.value, "due_at": at_or_before(now)}
    document = await claim_first(
        db[store.CHECKS],
        due,
        {
            "$set": {
                "timer_lease_owner": owner,
                "timer_lease_until": now + timedelta(seconds=lease_s),
            }
        },
        sort=[("due_at", ASCENDING)],
        projection={
            "_id": 1,
            "org": 1,
            "branch": 1,
            "complaint_id": 1,
            "resolution_number": 1,
            "sequence": 1,
        },
        lease=("timer_lease_until", now),
    )
    return document


async def fire_due_check(
    *,
    db: AsyncDatabase,
    settings: FollowupSettings,
    leased: dict[str, Any],
    owner: str,
    now: datetime,
) -> bool:
    """Turn a leased check ``due``; False when it changed meanwhile (cancelled, say), or when
    its customer may not be called now: then it is due again at the next moment they may.

    Due times are put in contact hours when they are scheduled, but a check fired late (the
    scheduler behind, follow-up down overnight, a resolution consumed late) or whose branch's
    hours changed since would otherwise have been put in the agents' queue at night.

    A resolution's checks call the customer one at a time: while an earlier one is open the
    check waits (asked again after the attempt spacing, ``EARLIER_CHECK_POLL`` at least), and
    after the earlier ones' last call it waits out the spacing. Each fell due on its own, so
    a first check left unclaimed or retried met the second: two agents called the customer
    at once, or one a minute after the other.

    A moved due time is announced (``followup.rescheduled``): intake's timeline kept the one
    scheduled. A check asked again while an earlier one stays open announced that wait when
    it began and moves on silently."""
    followup_id = leased["_id"]
    hours = await store.current_contact_hours(
        db=db, settings=settings, org=leased["org"], branch=leased["branch"]
    )
    earlier = earlier_calls(await store.earlier_checks(db=db, check=leased))

    def decide(current: dict[str, Any]) -> Decision | None:
        if current.get("timer_lease_owner") != owner:
            return None  # our lease ran out and another replica took the check over
        spacing_h = current.get("attempt_spacing_hours", settings.attempt_spacing_hours)
        wait_until = now
        if earlier.open is not None:
            wait_until = now + max(timedelta(hours=spacing_h), EARLIER_CHECK_POLL)
        elif (spaced_from := earlier.callable_from(spacing_hours=spacing_h)) is not None:
            wait_until = max(now, spaced_from)
        callable_from = next_contact_moment(hours=hours.contact_hours, at=wait_until)
        reason: RescheduleReason | None = None
        if wait_until > now:
            command = Command.WAIT_FOR_EARLIER_CHECK
            reason = (
                RescheduleReason.EARLIER_CHECK_OPEN
                if earlier.open is not None
                else RescheduleReason.CALLED_RECENTLY
            )
        elif callable_from > now:
            command = Command.WAIT_FOR_CONTACT_HOURS
            reason = RescheduleReason.OUTSIDE_CONTACT_HOURS
        else:
            command = Command.BECOME_DUE
        status = transition(
            state=CheckState.of(current), command=command, actor=SYSTEM_ACTOR, now=now
        )
        fields = {} if reason is None else {"due_at": callable_from}
        # Intake's timeline and webhook subscribers learn a moved due time.
        events = (
            []
            if reason is None
            else [
                (
                    EventType.FOLLOWUP_RESCHEDULED,
                    rescheduled_event(current, due_at=callable_from, reason=reason, now=now),
                )
            ]
        )
        history = current.get("history") or [{}]
        if command is Command.WAIT_FOR_EARLIER_CHECK and history[-1].get("action") == command:
            # Waiting on still: the entry already says so. One per wait filled the history
            # (an earlier check left unclaimed for days, asked again every 15 minutes) until
            # the check took no more claims (``lifecycle.MAX_HISTORY_FOR_CLAIMS``). Asked
            # again while the earlier check is open, it tells the timeline nothing new either.
            if reason is RescheduleReason.EARLIER_CHECK_OPEN:
                events = []
            return Decision({"$set": fields, "$unset": store.TIMER_FIELDS}, events)
        update = merge_updates(
            moved(command=command, status=status, actor=SYSTEM_ACTOR, now=now, **fields),
            {"$unset": store.TIMER_FIELDS},
        )
        return Decision(update, events)

    try:
        document = await store.change(
            db=db, settings=settings, followup_id=followup_id, scope={}, decide=decide, now=now
        )
    except InvalidTransition:
        await db[store.CHECKS].update_one(
            {"_id": followup_id, "timer_lease_owner": owner}, {"$unset": store.TIMER_FIELDS}
        )
        return False
    return document is not None and document["status"] == CheckStatus.DUE.value


async def expired_claims(*, db: AsyncDatabase, now: datetime, limit: int) -> list[str]:
    """Checks whose agent walked away: the claim's lease ran out (longest ago first; one
    whose expiry failed has its lease moved to its retry time, out of the way)."""
    cursor = (
        db[store.CHECKS]
        .find(
            {"status": CheckStatus.IN_PROGRESS.value, "claim_lease_until": {"$lt": now}},
            projection={"_id": 1},
        )
        .sort("claim_lease_until", ASCENDING)
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
            moved(command=Command.EXPIRE_CLAIM, status=status, actor=SYSTEM_ACTOR, now=now),
            {"$unset": {**CLAIM_FIELDS, **FAILURE_FIELDS}},
        )
        return Decision(update)

    try:
        await store.change(
            db=db, settings=settings, followup_id=followup_id, scope={}, decide=decide, now=now
        )
    except InvalidTransition:
        return False  # renewed or finished meanwhile
    return True


class CheckScheduler:
    """One replica's scheduler loop; it ends after the pass in progress once the runtime stops."""

    def __init__(self, *, settings: FollowupSettings) -> None:
        self._settings = settings
        self._owner = f"{settings.service_name}-{uuid.uuid4().hex[:8]}"

    async def run_scheduler(self, runtime: Runtime) -> None:
        """The background job: a pass, then wait for the next poll (or for shutdown)."""
        while not runtime.stopping.is_set():
            try:
                await self.run_once(runtime)
            except Exception as exc:  # Mongo away or similar: keep the timers alive
                log.error("followup_scheduler_error", error=repr(exc))
            await wait_event(runtime.stopping, timeout_s=self._settings.scheduler_poll_interval_s)

    async def run_once(self, runtime: Runtime) -> tuple[int, int]:
        """Fire due checks and expire abandoned claims; how many of each."""
        now = runtime.clock.now()
        fired = await self._fire_due(runtime, now=now)
        expired = await self._expire_claims(runtime, now=now)
        if fired or expired:
            log.info("followup_scheduler_pass", fired=fired, claims_expired=expired)
        return fired, expired

    async def _fire_due(self, runtime: Runtime, *, now: datetime) -> int:
        fired = 0
        for _ in range(self._settings.scheduler_batch_size):
            if runtime.stopping.is_set():
                break
            leased = await lease_due_check(
                db=runtime.db, owner=self._owner, now=now, lease_s=self._settings.scheduler_lease_s
            )
            if leased is None:
                break
            followup_id = leased["_id"]
            try:
                fired += await fire_due_check(
                    db=runtime.db,
                    settings=self._settings,
                    leased=leased,
                    owner=self._owner,
                    now=now,
                )
            except Exception as exc:
                # Recorded and postponed, so the next due check fires in this pass.
                await record_timer_failure(
                    runtime.db[store.CHECKS],
                    document_id=followup_id,
                    exc=exc,
                    lease_field="timer_lease_until",
                    owner_filter={"timer_lease_owner": self._owner},
                    lease_now=now,
                    settings=self._settings,
                    timer="followup_check",
                )
        return fired

    async def _expire_claims(self, runtime: Runtime, *, now: datetime) -> int:
        expired = 0
        followup_ids = await expired_claims(
            db=runtime.db, now=now, limit=self._settings.scheduler_batch_size
        )
        for followup_id in followup_ids:
            try:
                expired += await expire_claim(
                    db=runtime.db, settings=self._settings, followup_id=followup_id, now=now
                )
            except Exception as exc:
                # Recorded and postponed (its lease moved to the retry time), so a check
                # that cannot expire is not read first by every pass, ahead of the others.
                await record_timer_failure(
                    runtime.db[store.CHECKS],
                    document_id=followup_id,
                    exc=exc,
                    lease_field="claim_lease_until",
                    owner_filter={
                        "status": CheckStatus.IN_PROGRESS.value,
                        "claim_lease_until": {"$lt": now},
                    },
                    lease_now=now,
                    settings=self._settings,
                    timer="followup_claim",
                )
        return expired
