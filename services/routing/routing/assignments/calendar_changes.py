"""Open work moved to its branch's new calendar: clocks re-laid after a calendar change.

A branch's calendar change is recorded on the branch with the calendar it replaced
(``directory.calendar_history``). Each assignment says which calendar version its clocks
are laid out on (``calendar_version``), and every lay-out reads that version's calendar
until the assignment is re-laid: the business time its clocks used up to the change stays
used as the old calendar measured it, and what was left is laid out on the new one
(``sla.clocks.relay_clock``). Calendar-basis clocks, stopped and breached clocks stay as
they are; paused clocks keep what they had left for their resume.

The queue sweep re-lays the work of each branch marked ``calendar_change_pending``: it
takes the branch under a lease (replicas take different branches), re-lays up to
``calendar_change_batch_size`` of its open and queued assignments behind the branch's
version, each through the aggregate kernel and only while it is still behind (a
concurrent change decides again, a second replica finds nothing to do), and clears the
mark once none is left and every replica's cached copy of the branch is renewed: another
replica may place work with the calendar it cached for up to ``routing_context_max_age_s``
(give or take the replicas' clocks), and a pass after that looks once more and re-lays it.
Until 6 December the mark went at the first pass finding none, and such work kept the old
calendar until its first timer (a correction to an earlier deadline, hours late). A crash
leaves the mark and the assignments not yet re-laid for the next sweep. The SLA timer pass
re-lays an assignment that is behind before it fires anything (``scheduler``), so no timer
fires on a calendar the branch replaced. Finished work is not re-laid: a reopen lays its
fresh cycle out on the calendar in force (``projections``).
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from complaints_shared.aggregate import Decision, Events
from complaints_shared.events import EventType
from complaints_shared.failures import is_dependency_unavailable, redacted_error
from complaints_shared.logs import get_logger
from complaints_shared.mongo import as_utc, claim_first, merge_updates
from routing.assignments import lifecycle, store
from routing.assignments.lifecycle import Command
from routing.assignments.models import AssignmentStatus
from routing.directory import calendar_history
from routing.directory import store as directory_store
from routing.directory.calendar_history import BranchCalendars
from routing.settings import RoutingSettings
from routing.sla import clocks as sla_clocks

log = get_logger(__name__)

DUE_TIMES = ("acknowledge_due_at", "resolve_due_at", "regulatory_report_due_at")


def laid_out_on(document: dict[str, Any]) -> int:
    """The calendar version the assignment's clocks are laid out on."""
    return document.get(store.CALENDAR_VERSION) or 0


def behind(document: dict[str, Any], calendars: BranchCalendars) -> bool:
    """Whether the assignment is work being done laid out on a calendar the branch replaced."""
    return laid_out_on(document) < calendars.version and lifecycle.applies(
        document, Command.APPLY_CALENDAR
    )


def relaid_clocks(
    current: dict[str, Any], calendars: BranchCalendars
) -> dict[str, sla_clocks.Clock]:
    """``current``'s clocks laid out on the branch's calendar now, through each change since
    the one they are laid out on (the same clocks when it is laid out on it already)."""
    clocks = sla_clocks.load_clocks(current.get("clocks"))
    ran_again_at = current.get(store.RAN_AGAIN_AT)
    for change in calendars.changes_since(laid_out_on(current)):
        for name, clock in clocks.items():
            clocks[name] = sla_clocks.relay_clock(
                clock,
                previous=change.previous,
                calendar=change.calendar,
                changed_at=change.changed_at,
                ran_again_at=ran_again_at if name in sla_clocks.CUSTOMER_CLOCKS else None,
            )
    return clocks


def relaid(
    current: dict[str, Any], calendars: BranchCalendars, *, now: datetime
) -> tuple[dict[str, Any], Events]:
    """The update laying ``current``'s clocks out on the branch's calendar now
    (``relaid_clocks``), and the announcement of the new due times (none when they stay:
    intake's record agrees already)."""
    clocks = relaid_clocks(current, calendars)
    fields = {**lifecycle.clock_fields(clocks), store.CALENDAR_VERSION: calendars.version}
    events: Events = []
    if any(fields[name] != current.get(name) for name in DUE_TIMES):
        fields.update(lifecycle.numbered(current))
        document = {**current, **fields}
        if document["status"] == AssignmentStatus.QUEUED.value:
            events.append((EventType.COMPLAINT_QUEUED, lifecycle.queued_event(document)))
        else:
            events.append((EventType.COMPLAINT_ASSIGNED, lifecycle.assigned_event(document)))
    update = merge_updates(
        lifecycle.moved(current, Command.APPLY_CALENDAR),
        {"$set": fields},
        store.history(
            at=now, action="calendar_applied", actor="routing", calendar_version=calendars.version
        ),
    )
    return update, events


async def apply_to_assignment(
    *,
    db: AsyncDatabase,
    settings: RoutingSettings,
    complaint_id: str,
    calendars: BranchCalendars,
    now: datetime,
) -> bool:
    """Re-lay one assignment on ``calendars``; False when it was not behind (any more)."""
    applied: list[bool] = []

    async def decide(current: dict[str, Any]) -> Decision | None:
        if not behind(current, calendars):
            return None  # re-laid meanwhile (another replica, the timer pass) or finished
        update, events = relaid(current, calendars, now=now)
        return Decision(update, events, [note_applied])

    async def note_applied(document: dict[str, Any]) -> None:
        applied.append(True)

    await store.change(db=db, settings=settings, complaint_id=complaint_id, decide=decide, now=now)
    return bool(applied)


class CalendarChangeSweep:
    """Re-lays the open work of branches whose calendar changed, a batch per branch a pass."""

    def __init__(self, *, settings: RoutingSettings, owner: str | None = None) -> None:
        self._settings = settings
        self._owner = owner or f"{settings.service_name}-{uuid.uuid4().hex[:8]}"

    async def sweep(self, *, db: AsyncDatabase, now: datetime) -> int:
        """One pass over the branches with a change pending; the assignments re-laid."""
        relaid_count = 0
        taken: list[str] = []
        while (branch := await self._claim_branch(db, taken)) is not None:
            taken.append(branch["_id"])
            try:
                relaid_count += await self._relay_branch(db, branch, now=now)
            except Exception as exc:
                if is_dependency_unavailable(exc):
                    raise
                # The branch stays marked for the next pass; other branches have their turn.
                log.error("calendar_change_failed", branch=branch["_id"], error=redacted_error(exc))
            finally:
                await self._release(db, branch["_id"])
        return relaid_count

    async def _claim_branch(self, db: AsyncDatabase, taken: list[str]) -> dict[str, Any] | None:
        # Leases guard against a crashed replica, a matter of real elapsed time.
        wall_now = datetime.now(UTC)
        lease_until = wall_now + timedelta(seconds=self._settings.scheduler_lease_s)
        return await claim_first(
            db[directory_store.BRANCHES],
            {directory_store.CALENDAR_CHANGE_PENDING: True, "_id": {"$nin": taken}},
            {
                "$set": {
                    directory_store.CALENDAR_LEASE_UNTIL: lease_until,
                    directory_store.CALENDAR_LEASE_OWNER: self._owner,
                }
            },
            sort=[("_id", 1)],
            lease=(directory_store.CALENDAR_LEASE_UNTIL, wall_now),
        )

    async def _relay_branch(
        self, db: AsyncDatabase, branch: dict[str, Any], *, now: datetime
    ) -> int:
        scanned_at = datetime.now(UTC)  # caches age in real time, whatever the business clock
        settle_at = branch.get(directory_store.CALENDAR_SETTLE_AT)
        if settle_at is not None and as_utc(settle_at) > scanned_at:
            return 0  # re-laid; one more look once every replica's copy is renewed
        calendars = calendar_history.calendars_of(branch)
        batch = self._settings.calendar_change_batch_size
        ids = await store.behind_calendar(
            db=db, org=calendars.org, branch=calendars.code, version=calendars.version, limit=batch
        )
        relaid_count, failed = 0, False
        for complaint_id in ids:
            try:
                relaid_count += await apply_to_assignment(
                    db=db,
                    settings=self._settings,
                    complaint_id=complaint_id,
                    calendars=calendars,
                    now=now,
                )
            except Exception as exc:
                if is_dependency_unavailable(exc):
                    raise
                failed = True  # tried again at the next pass; the others go on
                log.error(
                    "calendar_relay_failed", complaint_id=complaint_id, error=redacted_error(exc)
                )
        if len(ids) < batch and not failed:
            await self._settled(db, branch, version=calendars.version, scanned_at=scanned_at)
        log.info(
            "calendar_change_applied",
            branch=branch["_id"],
            calendar_version=calendars.version,
            relaid=relaid_count,
        )
        return relaid_count

    async def _settled(
        self, db: AsyncDatabase, branch: dict[str, Any], *, version: int, scanned_at: datetime
    ) -> None:
        """No work behind at ``scanned_at``: the mark goes once every replica's cached
        calendar is renewed (``CALENDAR_SETTLE_AT``, set by the first pass that finds none);
        a pass after that time looks once more, for work a replica placed with its older
        copy, and clears it."""
        # Only at the version re-laid: a change made meanwhile keeps the branch marked.
        at_version = {
            "_id": branch["_id"],
            directory_store.CALENDAR_VERSION: version,
            directory_store.CALENDAR_LEASE_OWNER: self._owner,
        }
        if branch.get(directory_store.CALENDAR_SETTLE_AT) is None:
            renewed = timedelta(
                seconds=self._settings.routing_context_max_age_s
                + self._settings.replica_clock_skew_s
            )
            settle_at = {directory_store.CALENDAR_SETTLE_AT: scanned_at + renewed}
            await db[directory_store.BRANCHES].update_one(at_version, {"$set": settle_at})
            return
        # Its time had come at the scan (``_relay_branch`` looks only then).
        await db[directory_store.BRANCHES].update_one(
            at_version,
            {
                "$unset": {
                    directory_store.CALENDAR_CHANGE_PENDING: "",
                    directory_store.CALENDAR_SETTLE_AT: "",
                }
            },
        )

    async def _release(self, db: AsyncDatabase, branch_id: str) -> None:
        await db[directory_store.BRANCHES].update_one(
            {"_id": branch_id, directory_store.CALENDAR_LEASE_OWNER: self._owner},
            {
                "$unset": {
                    directory_store.CALENDAR_LEASE_UNTIL: "",
                    directory_store.CALENDAR_LEASE_OWNER: "",
                }
            },
        )
