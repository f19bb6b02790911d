"""Durable SLA timers, the queue sweeper and the load-hint recount: routing's background jobs.

Timers live in the assignment documents (``clocks`` with ``warn_at`` and
``next_breach_at``), and each document carries its earliest pending instant in
the indexed ``next_timer_at``. A pass claims due documents one at a time under a
lease (``claim_first``, so replicas share the work), fires what is due against
``runtime.clock.now()`` and writes the new clock state, the escalation and the
events in one version-checked change through the aggregate kernel (the
transition table's ``fire_timers``: while the complaint is worked, and once it is finished
for the regulatory report deadline, which runs until the report is filed). Exactly once: a
replica whose lease ran out loses the version race and fires nothing. Nothing
is held in memory, so a restart loses no timer. The loop only polls at a short
interval; no business deadline is ever slept on. A document that fails to fire is
recorded and postponed with backoff (``complaints_shared.timers``); the pass goes on.
A document laid out on a calendar its branch replaced is re-laid first, and fires at the
next pass what is still due then (``calendar_changes``, whose sweep runs with the queue's).
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from complaints_shared.aggregate import Decision, Events
from complaints_shared.business_calendar import BusinessCalendar
from complaints_shared.events import ComplaintSlaBreached, ComplaintSlaWarning
from complaints_shared.failures import is_dependency_unavailable, redacted_error
from complaints_shared.logs import get_logger
from complaints_shared.mongo import claim_first, merge_updates
from complaints_shared.runtime import Runtime
from complaints_shared.timers import FAILURE_FIELDS, record_timer_failure
from complaints_shared.timing import Pacer, wait_event
from routing import context_cache
from routing.assignments import (
    calendar_changes,
    lifecycle,
    major_incidents,
    owed_drains,
    owners,
    queue,
    routing_context,
    rule_changes,
    store,
    unroutable,
)
from routing.assignments.lifecycle import Command
from routing.directory import calendar_history
from routing.directory import store as directory_store
from routing.directory.escalation import EscalationTarget
from routing.directory.models import DepartmentRead
from routing.metrics import TIMERS_FIRED
from routing.rules import store as rules_store
from routing.settings import RoutingSettings
from routing.sla import clocks as sla_clocks
from routing.sla import store as sla_store

log = get_logger(__name__)

LEASE_UNTIL = "timer_lease_until"
LEASE_OWNER = "timer_lease_owner"


def _wall_now() -> datetime:
    # Leases guard against a crashed replica, a matter of real elapsed time, not business time.
    return datetime.now(UTC)


class SlaScheduler:
    """The background jobs; each finishes its pass and returns once the runtime stops."""

    def __init__(self, *, settings: RoutingSettings) -> None:
        self._settings = settings
        self._owner = f"{settings.service_name}-{uuid.uuid4().hex[:8]}"
        # Directory version per organisation when its unroutable complaints were last tried,
        # and when (monotonic).
        self._directory_seen: dict[str, int] = {}
        self._unroutable_tried_at: dict[str, float] = {}
        # Unroutable complaints per organisation the last try deferred (a conflict).
        self._unroutable_deferred: dict[str, list[str]] = {}
        # The departments the last census found with a queue (each with the branches whose
        # urgent complaints wait there), and when (monotonic).
        self._queued_departments: dict[tuple[str, str], frozenset[str]] = {}
        self._census_at: float | None = None
        self._calendar_changes = calendar_changes.CalendarChangeSweep(
            settings=settings, owner=self._owner
        )

    async def run_sla_timers(self, runtime: Runtime) -> None:
        while not runtime.stopping.is_set():
            try:
                claimed = await self.fire_due_timers(runtime)
            except Exception as exc:  # Mongo away or similar: keep the loop alive
                log.error("sla_timer_pass_failed", error=repr(exc))
                claimed = 0
            if not claimed:
                await wait_event(
                    runtime.stopping, timeout_s=self._settings.scheduler_poll_interval_s
                )

    async def run_queue_sweeper(self, runtime: Runtime) -> None:
        while not runtime.stopping.is_set():
            try:
                await self.sweep_queues(runtime)
            except Exception as exc:
                log.error("queue_sweep_failed", error=repr(exc))
            try:
                await self.apply_calendar_changes(runtime)
            except Exception as exc:
                log.error("calendar_change_sweep_failed", error=repr(exc))
            try:
                await rule_changes.look_over(
                    db=runtime.db, settings=self._settings, now=runtime.clock.now()
                )
            except Exception as exc:
                log.error("rule_look_over_pass_failed", error=repr(exc))
            try:
                await major_incidents.follow_up(
                    db=runtime.db, settings=self._settings, now=runtime.clock.now()
                )
            except Exception as exc:
                log.error("major_incident_follow_up_failed", error=repr(exc))
            try:
                await self.finish_left_changes(runtime)
            except Exception as exc:
                log.error("left_changes_pass_failed", error=repr(exc))
            await wait_event(runtime.stopping, timeout_s=self._settings.queue_sweep_interval_s)

    @staticmethod
    async def finish_left_changes(runtime: Runtime) -> int:
        """Finish the administrators' changes whose requests were cut short after their write
        (the audit records of directory entries, rules and policies, a policy's deletion):
        one index probe per collection, which finds nothing normally; how many."""
        return (
            await directory_store.settle_left_unrecorded(db=runtime.db)
            + await rules_store.settle_left_unrecorded(db=runtime.db)
            + await sla_store.finish_left_changes(db=runtime.db)
        )

    async def run_load_hint_reconciler(self, runtime: Runtime) -> None:
        while not runtime.stopping.is_set():
            await wait_event(
                runtime.stopping, timeout_s=self._settings.load_hint_reconcile_interval_s
            )
            if runtime.stopping.is_set():
                return
            try:
                pacer = Pacer(share=self._settings.background_work_share, stopping=runtime.stopping)
                await owners.reconcile_load_hints(db=runtime.db, pacer=pacer)
            except Exception as exc:
                log.error("load_hint_reconcile_failed", error=repr(exc))

    async def fire_due_timers(self, runtime: Runtime) -> int:
        """One pass: claim and fire due documents until none is due or the batch is full;
        how many were claimed. The loop goes on at once after a pass that claimed any: until
        6 December it waited its poll interval after one whose documents fired no event (a
        calendar re-lay, a breach with no rung left, one finished meanwhile), so a backlog
        after an outage drained a batch per poll interval."""
        handled = 0
        for _ in range(self._settings.scheduler_batch_size):
            if runtime.stopping.is_set():
                break
            claimed = await self._claim(runtime, now=runtime.clock.now())
            if claimed is None:
                break
            try:
                if not await self._fire(runtime, claimed):
                    break  # given back untouched (still due): the next poll's
                handled += 1
            except Exception as exc:
                # Recorded and postponed, so the next due document fires in this pass.
                handled += 1
                await record_timer_failure(
                    runtime.db[store.ASSIGNMENTS],
                    document_id=claimed["_id"],
                    exc=exc,
                    lease_field=LEASE_UNTIL,
                    owner_filter={LEASE_OWNER: self._owner},
                    lease_now=_wall_now(),
                    settings=self._settings,
                    timer="sla",
                )
        return handled

    async def sweep_queues(self, runtime: Runtime) -> int:
        """Offer each department with a queue its queue again: the repair for a drain a
        crash or an error lost (freed capacity and directory changes drain at once).

        Which departments have a queue is looked up (the census) every
        ``queue_census_interval_s``, not at every sweep: the look reads every queued
        complaint on the local server, 0.3 s of its time at 10,000 queued (a major
        incident's backlog), and the sweep ran every 10 s. Between looks the sweep offers
        the departments last found, and those this process owes a drain since
        (``owed_drains``: a drain an error cut short, a complaint just queued), so that
        room left unused is taken at the next sweep, not the next census; a full
        department costs no read (``queue.drain_queue``).

        The queue of a deactivated department moves to its successor first
        (``queue.rehome_queue``), and a closed branch's urgent complaints the census found
        queued go to its duty officer whether or not anyone has room
        (``queue.offer_to_duty_officer``).
        """
        census_due = self._census_at is None or (
            time.monotonic() - self._census_at >= self._settings.queue_census_interval_s
        )
        if census_due:
            self._queued_departments = await store.queued_departments(db=runtime.db)
            self._census_at = time.monotonic()
        offered = sorted({*self._queued_departments, *owed_drains.departments(db=runtime.db)})
        inactive = {
            (department.org, department.id): department
            for department in await directory_store.inactive_departments(
                db=runtime.db, departments=offered
            )
        }
        assigned = 0
        for org, department in offered:
            try:
                if (org, department) in inactive:
                    assigned += await self._rehome(runtime, inactive[(org, department)])
                assigned += await queue.drain_queue(
                    db=runtime.db,
                    settings=self._settings,
                    org=org,
                    department_id=department,
                    now=runtime.clock.now(),
                )
                for branch in sorted(self._queued_departments.get((org, department), ())):
                    assigned += await queue.offer_to_duty_officer(
                        db=runtime.db,
                        settings=self._settings,
                        org=org,
                        department_id=department,
                        branch=branch,
                        now=runtime.clock.now(),
                    )
            except Exception as exc:
                if is_dependency_unavailable(exc):  # every department would fail alike
                    raise
                # One department's failure leaves the others their turn.
                log.error("queue_drain_failed", department=department, error=redacted_error(exc))
        return assigned + await self._retry_unroutable(runtime)

    async def apply_calendar_changes(self, runtime: Runtime) -> int:
        """Re-lay a batch of the open work of each branch whose calendar changed
        (``calendar_changes``); the assignments re-laid."""
        return await self._calendar_changes.sweep(db=runtime.db, now=runtime.clock.now())

    async def _rehome(self, runtime: Runtime, department: DepartmentRead) -> int:
        """Move the inactive department's queue to its successor, then offer it there."""
        successor = await queue.rehome_queue(
            db=runtime.db, settings=self._settings, department=department, now=runtime.clock.now()
        )
        if successor is None:
            return 0
        return await queue.drain_queue(
            db=runtime.db,
            settings=self._settings,
            org=successor.org,
            department_id=successor.id,
            now=runtime.clock.now(),
        )

    async def _retry_unroutable(self, runtime: Runtime) -> int:
        """Every unroutable complaint of organisations whose rules or directory changed since
        the last look (an edit's own request retries the oldest ``unroutable.RETRY_BATCH``,
        and may have been cut short by a crash), or were last tried
        ``routing_context_max_age_s`` ago: a change whose version bump failed, or one made
        to the database by hand, bumps nothing, and its complaints would wait for the next
        edit."""
        routed = 0
        for org in await unroutable.unroutable_orgs(db=runtime.db):
            version = await context_cache.directory_version(db=runtime.db, org=org)
            started = time.monotonic()
            tried_at = self._unroutable_tried_at.get(org, float("-inf"))
            # Those that kept changing under the last try are tried again at this sweep,
            # alone (until 6 December they waited ``routing_context_max_age_s``).
            deferred = self._unroutable_deferred.pop(org, [])
            try:
                if (
                    self._directory_seen.get(org) == version
                    and started - tried_at < self._settings.routing_context_max_age_s
                ):
                    if deferred:
                        outcome = await unroutable.retry_deferred(
                            db=runtime.db,
                            settings=self._settings,
                            complaint_ids=deferred,
                            now=runtime.clock.now(),
                        )
                        routed += self._note_deferred(org, outcome)
                    continue
                outcome = await unroutable.retry_org(
                    db=runtime.db, settings=self._settings, org=org, now=runtime.clock.now()
                )
            except Exception as exc:
                if is_dependency_unavailable(exc):
                    self._unroutable_deferred.setdefault(org, deferred)
                    raise
                # Tried again at the next sweep (the try is not noted, what it deferred is
                # kept); other orgs go on.
                self._unroutable_deferred.setdefault(org, deferred)
                log.error("unroutable_retry_failed", org=org, error=redacted_error(exc))
                continue
            routed += self._note_deferred(org, outcome)
            self._directory_seen[org] = version
            self._unroutable_tried_at[org] = started
        return routed

    def _note_deferred(self, org: str, outcome: unroutable.RetryOutcome) -> int:
        """Keep the complaints ``outcome`` deferred for the next sweep; how many it routed."""
        if outcome.deferred:
            self._unroutable_deferred[org] = outcome.deferred
        return outcome.routed

    async def _claim(self, runtime: Runtime, *, now: datetime) -> dict[str, Any] | None:
        wall_now = _wall_now()
        return await claim_first(
            runtime.db[store.ASSIGNMENTS],
            {"next_timer_at": {"$lte": now}},
            {
                "$set": {
                    LEASE_UNTIL: wall_now + timedelta(seconds=self._settings.scheduler_lease_s),
                    LEASE_OWNER: self._owner,
                }
            },
            sort=[("next_timer_at", 1)],
            projection={"_id": 1, "org": 1, "branch": 1, "department": 1},
            lease=(LEASE_UNTIL, wall_now),
        )

    async def _fire(self, runtime: Runtime, claimed: dict[str, Any]) -> bool:
        """Fire the claimed document's due timers (or re-lay its clocks first); False when it
        was given back untouched (finished or gone meanwhile)."""
        db = runtime.db
        calendars = await calendar_history.branch_calendars(
            db=db, org=claimed["org"], code=claimed["branch"]
        )
        targets = await routing_context.escalation_targets(
            db=db, org=claimed["org"], department_id=claimed["department"]
        )
        fired: Events = []
        released: list[bool] = []

        async def decide(current: dict[str, Any]) -> Decision | None:
            if not lifecycle.applies(current, Command.FIRE_TIMERS):
                return None  # finished meanwhile: its clocks are stopped
            release = {"$unset": {LEASE_UNTIL: "", LEASE_OWNER: "", **FAILURE_FIELDS}}
            if calendar_changes.behind(current, calendars):
                # Laid out on a calendar the branch replaced: re-laid first, and what is
                # still due then fires at the next pass.
                fired.clear()
                update, events = calendar_changes.relaid(
                    current, calendars, now=runtime.clock.now()
                )
                return Decision(merge_updates(update, release), events, [note_release])
            calendar = calendars.at_version(calendar_changes.laid_out_on(current))
            chain = targets
            if current["department"] != claimed["department"]:  # reassigned since the claim
                chain = await routing_context.escalation_targets(
                    db=db, org=current["org"], department_id=current["department"]
                )
            update, events = fire_clocks(
                current, calendar=calendar, targets=chain, now=runtime.clock.now()
            )
            fired[:] = events
            status = lifecycle.moved(current, Command.FIRE_TIMERS)
            return Decision(merge_updates(status, update, release), events, [note_release])

        async def note_release(document: dict[str, Any]) -> None:
            released.append(True)

        await store.change(
            db=db,
            settings=self._settings,
            complaint_id=claimed["_id"],
            decide=decide,
            now=runtime.clock.now(),
        )
        if not released:  # finished or gone meanwhile: nothing fired, give the lease back
            await self._release(runtime, claimed["_id"])
            return False
        for _, data in fired:
            kind = "warning" if isinstance(data, ComplaintSlaWarning) else "breach"
            if isinstance(data, ComplaintSlaWarning | ComplaintSlaBreached):
                TIMERS_FIRED.labels(data.clock.value, kind).inc()
        return True

    async def _release(self, runtime: Runtime, complaint_id: str) -> None:
        await runtime.db[store.ASSIGNMENTS].update_one(
            {"_id": complaint_id, LEASE_OWNER: self._owner},
            {"$unset": {LEASE_UNTIL: "", LEASE_OWNER: ""}},
        )


def fire_clocks(
    current: dict[str, Any],
    *,
    calendar: BusinessCalendar,
    targets: list[EscalationTarget],
    now: datetime,
) -> tuple[dict[str, Any], Events]:
    """Fire every timer due at ``now``: warnings, breaches, the escalations breaches cause."""
    fired = lifecycle.fire_timers(
        current,
        clocks=sla_clocks.load_clocks(current.get("clocks")),
        calendar=calendar,
        targets=targets,
        now=now,
    )
    fields = lifecycle.clock_fields(fired.clocks)
    if fired.breached:
        fields["breached"] = True
    escalations = (
        [
            {
                "$set": {"escalation_level": fired.level},
                "$push": {"escalations": {"$each": fired.records}},
            }
        ]
        if fired.records
        else []
    )
    return merge_updates({"$set": fields}, *escalations), fired.events
