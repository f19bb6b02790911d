"""Unroutable complaints: kept in an explicit state until a rule or a supervisor routes them.

A complaint no rule can route (no matching and no default rule leads to an active
department) is not an error to retry or dead-letter: :func:`enter` stores its
assignment in the ``unroutable`` state with the reason and announces
``complaint.unroutable``, so intake shows it and routing's views count it.
:func:`leave` routes it as soon as that is possible: by the rules, when an
administrator adds or changes a rule or department (:func:`retry_org`, also run by
the periodic sweep after any change and at least every ``routing_context_max_age_s``),
or by a supervisor naming a department or owner (reassign).
The clocks then run from the moment the complaint was received, like any other, moved
by what intake reported meanwhile (an acknowledgement, a wait, a resume, a finish and a
reopen, remembered in order: ``projections.REMEMBERED``) and by a regulatory report
already filed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from complaints_shared.aggregate import Decision
from complaints_shared.business_calendar import BusinessCalendar
from complaints_shared.events import ComplaintReceived, ComplaintUnroutable, EventType, SlaClock
from complaints_shared.failures import is_transient, redacted_error
from complaints_shared.idempotency import CommandKey
from complaints_shared.logs import get_logger
from complaints_shared.mongo import is_id_clash, merge_updates
from complaints_shared.outbox import outbox_entry, outbox_fields
from complaints_shared.problems import ConcurrentUpdate
from complaints_shared.runtime import Runtime
from complaints_shared.stored import from_stored
from routing.assignments import (
    lifecycle,
    major_incidents,
    owners,
    placement,
    planning,
    projections,
    routing_context,
    store,
)
from routing.assignments.lifecycle import Command
from routing.assignments.models import AssignmentStatus
from routing.directory import store as directory_store
from routing.directory.models import DepartmentRead, StaffRead
from routing.metrics import UNROUTABLE
from routing.rules.models import RoutingRule, RuleAction
from routing.settings import RoutingSettings
from routing.sla import clocks as sla_clocks

log = get_logger(__name__)

STATE = AssignmentStatus.UNROUTABLE.value
# Unroutable complaints of one organisation an edit's own request retries (the oldest);
# the queue sweep of each replica retries every one after a change.
RETRY_BATCH = 200
# What routing an unroutable complaint keeps of its document (the rest is the new plan's);
# the status moves through the transition table.
KEPT_FIELDS = frozenset(
    {"_id", "status", "history", "applied_events", "version", "created_at", "updated_at"}
)


async def enter(
    *,
    db: AsyncDatabase,
    settings: RoutingSettings,
    complaint: ComplaintReceived,
    no_route: planning.NoRoute,
    now: datetime,
) -> bool:
    """Store the complaint as unroutable with the reason; False when it was stored before."""
    reason = str(no_route)
    document: dict[str, Any] = {
        **placement.received_fields(complaint, severity=complaint.severity),
        "status": lifecycle.transition(current=None, command=Command.NO_ROUTE).value,
        "unroutable": {
            "reason": reason,
            "passed_over_rules": no_route.passed_over,
            "since": now,
        },
        # What routing it later needs: the complaint as it was received.
        "received": complaint.model_dump(mode="json"),
        "department": None,
        "department_name": None,
        "owner_id": None,
        "owner_name": None,
        "rule_id": None,
        "rule_version": None,
        **placement.fresh_fields(now=now),
        "history": [store.history_entry(at=now, action=STATE, actor="routing", reason=reason)],
    }
    event = ComplaintUnroutable(
        complaint_id=complaint.complaint_id,
        org=complaint.org,
        branch=complaint.branch,
        reason=reason,
        passed_over_rules=no_route.passed_over,
        unroutable_at=now,
    )
    document.update(
        outbox_fields(
            [outbox_entry(event_type=EventType.COMPLAINT_UNROUTABLE, data=event, settings=settings)]
        )
    )
    try:
        await store.insert(db=db, document=document)
    except DuplicateKeyError as exc:
        if is_id_clash(exc):
            return False  # a redelivery, or another replica got there first
        raise
    UNROUTABLE.inc()
    log.warning("complaint_unroutable", org=complaint.org, branch=complaint.branch)
    return True


def supervisor_rule(*, org: str, department: DepartmentRead) -> RoutingRule:
    """A supervisor's choice of department, applied as the one rule for this complaint."""
    return RoutingRule(
        id=f"{org}:supervisor-assignment",
        org=org,
        position=0,
        name="supervisor assignment",
        is_default=True,
        action=RuleAction(department_id=department.id),
    )


# Plans made again for one routing of an unroutable complaint reclassified meanwhile.
PLAN_ATTEMPTS = 5


class _Reclassified(Exception):
    """The complaint was reclassified between its plan and the write: plan again."""


async def leave(
    *,
    db: AsyncDatabase,
    settings: RoutingSettings,
    complaint_id: str,
    now: datetime,
    actor: str = "routing",
    reason: str | None = None,
    department: DepartmentRead | None = None,
    owner: StaffRead | None = None,
    contexts: dict[str, routing_context.RoutingContext] | None = None,
    command_key: CommandKey | None = None,
) -> dict[str, Any] | None:
    """Route an unroutable complaint: by the rules, or to ``department`` (and ``owner``).
    By the rules, the context of its branch is read once per ``contexts`` (one try of many).

    Returns the routed assignment, or None when it is not unroutable (any more) or
    still no rule routes it. The same plan as a complaint routed on arrival: SLA
    policy, clocks from its receipt, major-incident escalation, owner by turn; the clocks
    moved by what it remembered while unroutable (:func:`_clocks_of`). A reclassification
    applied between the plan and its write makes a new plan (until 6 December the write
    put the old severity, category and flags back, for good).
    """
    for _ in range(PLAN_ATTEMPTS):
        try:
            return await _leave_once(
                db=db,
                settings=settings,
                complaint_id=complaint_id,
                now=now,
                actor=actor,
                reason=reason,
                department=department,
                owner=owner,
                contexts=contexts,
                command_key=command_key,
            )
        except _Reclassified:
            continue
    raise ConcurrentUpdate(
        detail=f"complaint {complaint_id} kept being reclassified while it was routed; retry"
    )


async def _leave_once(
    *,
    db: AsyncDatabase,
    settings: RoutingSettings,
    complaint_id: str,
    now: datetime,
    actor: str,
    reason: str | None,
    department: DepartmentRead | None,
    owner: StaffRead | None,
    contexts: dict[str, routing_context.RoutingContext] | None,
    command_key: CommandKey | None,
) -> dict[str, Any] | None:
    current = await db[store.ASSIGNMENTS].find_one({"_id": complaint_id, "status": STATE})
    if current is None:
        return None
    complaint = from_stored(ComplaintReceived, current["received"])
    if department is None and contexts is not None and complaint.branch in contexts:
        context = contexts[complaint.branch]
    else:
        context = await routing_context.load_context(db=db, complaint=complaint)
        if department is None and contexts is not None:
            contexts[complaint.branch] = context
    if department is not None:
        context.rules = [supervisor_rule(org=complaint.org, department=department)]
        context.departments = [department]
        context.staff += await directory_store.staff_of_branches(
            db=db, org=complaint.org, branches=[department.branch]
        )
    try:
        # A supervisor's reclassification while it waited is the later judgement: a rule's
        # severity override took it back once a rule routed the complaint.
        reclassified = current.get(store.RECLASSIFICATION_NUMBER, 0) > 0
        plan = routing_context.plan_for(
            complaint, context, routed_at=now, severity_decided=reclassified
        )
    except planning.NoRoute:
        return None
    if department is not None:
        # A supervisor chose the department: its people by turn, not the branch's duty officer.
        plan = dataclasses.replace(plan, duty_officer=None)
    routed: list[dict[str, Any]] = []

    planned_from = current.get(store.RECLASSIFICATION_NUMBER, 0)

    async def decide(current: dict[str, Any]) -> Decision | None:
        if current["status"] != STATE:
            return None  # routed meanwhile, by another replica or a supervisor
        if current.get(store.RECLASSIFICATION_NUMBER, 0) != planned_from:
            raise _Reclassified
        if owner is not None:
            choice, how = await owners.forced_owner(db=db, org=complaint.org, staff=owner), "manual"
        else:
            choice, how = await owners.owner_for_plan(db=db, complaint=complaint, plan=plan)
        caught_up = _caught_up(current, plan, calendar=context.calendar, now=now)
        clocks = caught_up.clocks
        # ``duty_officer`` on the record says how the owner was chosen: not so by a supervisor.
        duty_officer = plan.duty_officer if how == "duty_officer" else None
        routed_plan = dataclasses.replace(plan, clocks=clocks, duty_officer=duty_officer)
        fresh = placement.new_document(complaint, routed_plan, owner=choice, now=now)
        # A supervisor's department is no rule's: a rule's later changes do not reach it.
        if department is not None:
            fresh[store.SKILL_RULE_VERSION] = None
        # Numbered after whatever the assignment announced before it was found unroutable.
        fresh["assignment_sequence"] = current.get("assignment_sequence", 0)
        # Its announcement tells the reclassification it was planned with (intake keeps a
        # classification only from one as new as its own).
        fresh[store.RECLASSIFICATION_NUMBER] = planned_from
        planned, events = placement.initial_events(
            {**fresh, **caught_up.paused}, routed_plan, now=now
        )
        if department is not None:
            # Its announcement names the supervisor and the reason (until 6 December intake's
            # timeline showed a rule's assignment, by nobody, for no reason).
            kind, announced = events[0]
            events[0] = (
                kind,
                announced.model_copy(update={"routed_by": actor, "routed_reason": reason}),
            )
        # What the timers and reopens of its time unroutable did, after its major-incident
        # escalation (which a complaint routed on arrival gets first).
        planned["escalations"] = [*planned.get("escalations", []), *caught_up.records]
        planned["escalation_level"] = max(planned["escalation_level"], caught_up.level)
        planned["breached"] = caught_up.breached
        events += caught_up.events
        fields = {key: value for key, value in planned.items() if key not in KEPT_FIELDS}
        # An acknowledgement made while unroutable is judged like any (complaint.sla_stopped);
        # so is a report filed then, whose announcement knew no deadline yet.
        for name in (SlaClock.ACKNOWLEDGE.value, SlaClock.REGULATORY_REPORT.value):
            events += lifecycle.sla_stopped_events(
                {**current, **fields}, name=name, before=plan.clocks, after=clocks
            )

        async def after(document: dict[str, Any]) -> None:
            routed.append(document)
            await placement.after_assignment(db=db, document=document, how=how, now=now)
            log.info("unroutable_routed", department=document["department"], how=how)

        update = merge_updates(
            lifecycle.moved(current, Command.ASSIGN if choice else Command.QUEUE),
            {"$set": fields},
            {"$unset": {"unroutable": "", projections.REMEMBERED: ""}},
            store.history(
                at=now,
                action="routed",
                actor=actor,
                reason=reason,
                rule_id=plan.rule.id,
                department=plan.department.id,
            ),
        )
        return Decision(update, events, [after])

    await store.change(
        db=db,
        settings=settings,
        complaint_id=complaint_id,
        decide=decide,
        now=now,
        command_key=command_key,
    )
    return routed[0] if routed else None


@dataclasses.dataclass
class _CaughtUp:
    """A complaint routed at last, as if it had been routed all along: its clocks and the
    pause fields they leave, the rungs climbed meanwhile (level and records), the events of
    the timers that fired and the rungs climbed, and whether its present cycle breached."""

    clocks: dict[str, sla_clocks.Clock]
    paused: dict[str, Any]
    level: int
    records: list[dict[str, Any]]
    events: list[Any]
    breached: bool


# Timers one catch-up fires at the most: a resolve clock overdue for long re-arms one
# allowed span after each breach while there is a rung above, a few dozen at worst.
MAX_TIMERS_CAUGHT_UP = 1000


def _caught_up(
    current: dict[str, Any],
    plan: planning.RoutePlan,
    *,
    calendar: BusinessCalendar,
    now: datetime,
) -> _CaughtUp:
    """The plan's clocks taken through what the complaint went through unroutable, in
    order: an acknowledgement made then stops the acknowledge clock, a wait pauses the
    customer's clocks, a reopen restarts the resolve clock and climbs a rung, a report
    filed then stops its deadline; and between them, at their instants, the warnings and
    breaches a scheduler would have fired (a breach climbing a rung), so an acknowledgement
    made late is a breach as it is for any complaint."""
    clocks, targets = dict(plan.clocks), plan.escalation_targets
    remembered = current.get(projections.REMEMBERED) or []
    reopens = sum(entry["command"] == Command.REOPEN.value for entry in remembered)
    # Climbs start from the major-incident escalation, which a routed complaint gets first.
    major = plan.escalated_to
    document = {
        **current,
        "escalation_level": plan.escalation_level if major is not None else 0,
        "escalations": (
            [lifecycle.escalation_record(major, reason="critical_incident", by="routing", at=now)]
            if major is not None
            else []
        ),
        "reopen_count": current.get("reopen_count", 0) - reopens,
        "major_incident": plan.major_incident,  # a reopen takes one below its head there
    }
    caught = _CaughtUp(
        clocks=clocks,
        paused={},
        level=document["escalation_level"],
        records=[],
        events=[],
        breached=False,
    )

    def fire_before(moment: datetime) -> None:
        moment = min(moment, now)  # an event stamped by a clock ahead of this one's
        for _ in range(MAX_TIMERS_CAUGHT_UP):
            due = sla_clocks.next_timer_at(clocks)
            if due is None or due >= moment:
                return
            fired = lifecycle.fire_timers(
                document, clocks=clocks, calendar=calendar, targets=targets, now=due
            )
            clocks.update(fired.clocks)
            caught.records += fired.records
            caught.events += fired.events
            caught.breached = caught.breached or fired.breached
            caught.level = document["escalation_level"] = fired.level
            document["escalations"] = [*document["escalations"], *fired.records]

    filed_at = current.get("regulatory_report_filed_at")

    def file_report_by(moment: datetime) -> None:
        """A report filed while unroutable stops its deadline at the filing, in its turn."""
        nonlocal filed_at
        report = clocks.get(SlaClock.REGULATORY_REPORT.value)
        if filed_at is None or filed_at > moment or report is None:
            return
        fire_before(filed_at)
        clocks[SlaClock.REGULATORY_REPORT.value] = sla_clocks.stop_clock(report, at=filed_at)
        filed_at = None

    def before(entry: dict[str, Any]) -> None:
        file_report_by(entry["at"])
        fire_before(entry["at"])
        if entry["command"] != Command.REOPEN.value:
            return
        # A new cycle, one rung up, as ``projections.reopen`` takes a routed complaint.
        document["reopen_count"] += 1
        caught.breached = False
        update, escalation = major_incidents.reopen_escalation(
            document, targets=targets, by=entry.get("by") or "routing", at=entry["at"]
        )
        if escalation:
            document.update(lifecycle.climbed(document, update))
            caught.level = document["escalation_level"]
            caught.records.append(update["$push"]["escalations"])
            caught.events += escalation

    def restart_resolve(at: datetime) -> sla_clocks.Clock:
        return planning.restart_resolve_clock(
            calendar=calendar, policy=plan.policy, severity=plan.severity, start=at
        )

    resolutions = 0

    def after(entry: dict[str, Any], was: dict[str, sla_clocks.Clock]) -> None:
        """A finish then stopped the cycle's resolve clock: its verdict, as a finish of a
        routed complaint announces it (a later reopen starts another cycle, whose clock
        is the one the record reads now)."""
        nonlocal resolutions
        command = Command(entry["command"])
        if command not in projections.FINISHING:
            return
        if command is Command.RESOLVE:
            resolutions = entry.get("resolution_number") or resolutions + 1
        caught.events += lifecycle.sla_stopped_events(
            document,
            name=SlaClock.RESOLVE.value,
            before=was,
            after=clocks,
            resolution_number=resolutions if command is Command.RESOLVE else None,
        )

    caught.paused = projections.clocks_after_remembered(
        clocks,
        remembered,
        calendar=calendar,
        restart_resolve=restart_resolve,
        before=before,
        after=after,
    )
    file_report_by(now)
    fire_before(now)
    return caught


@dataclasses.dataclass(frozen=True)
class RetryOutcome:
    """What a retry of unroutable complaints did: how many it ``routed``, and the ids of
    those it ``deferred`` (they kept changing under it: a transient conflict, tried again
    at the next sweep)."""

    routed: int
    deferred: list[str]


async def retry_org(
    *,
    db: AsyncDatabase,
    settings: RoutingSettings,
    org: str,
    now: datetime,
    limit: int | None = None,
) -> RetryOutcome:
    """Route what the organisation's rules and departments now allow, oldest first: every
    unroutable complaint of it, or the first ``limit``.

    Every one, not a batch of the oldest: those may stay unroutable (a category no rule
    covers yet) while newer ones are covered now, and a sweep that tried only them found
    nothing to route after every change.
    """
    waiting = (
        db[store.ASSIGNMENTS]
        .find({"status": STATE, "org": org}, projection={"_id": 1})
        .sort([("created_at", 1), ("_id", 1)])
        .batch_size(RETRY_BATCH)
    )
    if limit is not None:
        waiting = waiting.limit(limit)
    async with waiting:
        ids = (document["_id"] async for document in waiting)
        return await _retry_each(ids, db=db, settings=settings, now=now)


async def retry_deferred(
    *, db: AsyncDatabase, settings: RoutingSettings, complaint_ids: list[str], now: datetime
) -> RetryOutcome:
    """Route the complaints a retry deferred, those still unroutable (alone: the rest of
    their organisation was tried, and is tried again at its next change)."""

    async def ids() -> AsyncIterator[str]:
        for complaint_id in complaint_ids:
            yield complaint_id

    return await _retry_each(ids(), db=db, settings=settings, now=now)


async def _retry_each(
    complaint_ids: AsyncIterator[str],
    *,
    db: AsyncDatabase,
    settings: RoutingSettings,
    now: datetime,
) -> RetryOutcome:
    routed, deferred = 0, []
    # Read once per branch for this try, not per complaint: the sweep tries every one.
    contexts: dict[str, routing_context.RoutingContext] = {}
    async for complaint_id in complaint_ids:
        try:
            if await leave(
                db=db, settings=settings, complaint_id=complaint_id, now=now, contexts=contexts
            ):
                routed += 1
        except ConcurrentUpdate as exc:
            # This complaint kept changing (reclassified again and again): the next sweep
            # routes it; the others go on, and an edit's request is not failed.
            log.warning("unroutable_retry_deferred", error=redacted_error(exc))
            deferred.append(complaint_id)
        except Exception as exc:
            if is_transient(exc):
                raise
            # This complaint's own fault: it stays unroutable, the others go on.
            log.error("unroutable_retry_failed", error=redacted_error(exc))
    return RetryOutcome(routed=routed, deferred=deferred)


async def retry_after_change(runtime: Runtime, *, org: str) -> None:
    """After a rule or department edit: route what it now covers, the oldest
    ``RETRY_BATCH`` within the request; the queue sweep retries every one since the
    edit changed the organisation's directory version (or, if the bump failed,
    ``routing_context_max_age_s`` after it last tried them).

    Staff edits do not make a route appear (a rule leads to a department, whoever works
    there; an empty department queues), so they do not call this.
    """
    await retry_org(
        db=runtime.db,
        settings=runtime.settings,
        org=org,
        now=runtime.clock.now(),
        limit=RETRY_BATCH,
    )


async def unroutable_orgs(*, db: AsyncDatabase) -> list[str]:
    """Organisations with unroutable complaints, for the periodic sweep."""
    return sorted(await db[store.ASSIGNMENTS].distinct("org", {"status": STATE}))
