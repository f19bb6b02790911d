"""Intake's events applied to the assignment: clocks stop, pause, resume and restart.

Each function applies one consumed intake event through the aggregate kernel
with the event id, so a redelivered event has no second effect, and asks the
transition table (``routing.assignments.lifecycle``) first: an event with nothing
to do in the assignment's status (a late acknowledgement of a resolved complaint) is
remembered as applied and changes nothing. Finishing a complaint frees its owner
slot in the same write, then offers the freed capacity to the department queue.

An event that stops or pauses a clock at or before its due time, consumed after the
timer fired, withdraws that breach (``lifecycle.withdraw_breaches``). An unroutable
complaint has no clocks: it remembers the events (``REMEMBERED``) and
``clocks_after_remembered`` applies them to the clocks it gets once routed. An event
for an assignment that does not exist (its ``complaint.received`` was dead-lettered) is
refused (``Rejected``): dead-lettered, to be replayed after the received event.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from complaints_shared.aggregate import Decide, Decision, Events
from complaints_shared.business_calendar import BusinessCalendar
from complaints_shared.envelope import CloudEvent
from complaints_shared.events import (
    SEVERITY_ORDER,
    Category,
    ComplaintReclassified,
    ComplaintReopened,
    ComplaintResolved,
    ComplaintResponsibilitySet,
    ComplaintSlaBreachWithdrawn,
    EventData,
    EventType,
    Severity,
    SlaClock,
)
from complaints_shared.failures import Rejected
from complaints_shared.logs import get_logger
from complaints_shared.mongo import merge_updates
from routing.assignments import (
    calendar_changes,
    lifecycle,
    major_incidents,
    owed_drains,
    owners,
    planning,
    queue,
    routing_context,
    store,
)
from routing.assignments.lifecycle import Command
from routing.assignments.models import AssignmentStatus, ClockState
from routing.directory import calendar_history
from routing.directory import store as directory_store
from routing.directory.escalation import major_incident_target
from routing.directory.models import DepartmentRead, StaffStatus
from routing.rules.models import RuleFlag
from routing.settings import RoutingSettings
from routing.sla import clocks as sla_clocks
from routing.sla import store as policy_store

# Intake's events an unroutable complaint keeps (``{"command", "at"}``, in order) for the
# clocks it gets once routed; ``unroutable.leave`` applies them.
REMEMBERED = "remembered_events"
# What each of intake's finishing events does to the assignment.
FINISHING = {
    Command.RESOLVE: AssignmentStatus.RESOLVED,
    Command.REJECT: AssignmentStatus.REJECTED,
    Command.WITHDRAW: AssignmentStatus.WITHDRAWN,
    Command.CLOSE: AssignmentStatus.CLOSED,
}

Clocks = dict[str, sla_clocks.Clock]

log = get_logger(__name__)


def _actor(event: CloudEvent) -> str:
    return f"intake:{event.source}"


def _applies(current: dict[str, Any], command: Command, event: CloudEvent) -> bool:
    if lifecycle.applies(current, command):
        return True
    log.info(
        "event_not_applicable",
        event_type=event.type,
        command=command.value,
        status=current["status"],
    )
    return False


async def _apply(
    db: AsyncDatabase,
    settings: RoutingSettings,
    event: CloudEvent,
    complaint_id: str,
    decide: Decide,
    now: datetime,
    /,
) -> dict[str, Any]:
    """One consumed event through the aggregate kernel, remembered by its id; the
    assignment after it (as it was, when the event had been applied before)."""
    document = await store.change(
        db=db,
        settings=settings,
        complaint_id=complaint_id,
        decide=decide,
        now=now,
        event_id=event.id,
    )
    if document is None:
        raise _no_assignment(event, complaint_id)
    return document


def _no_assignment(event: CloudEvent, complaint_id: str) -> Rejected:
    # Not a reason to guess: applied to nothing, the event would be lost (the received
    # event's replay would then start clocks for work already acknowledged or finished).
    return Rejected(
        f"assignment {complaint_id} does not exist here: its complaint.received has not been "
        f"applied (dead-lettered?); replay {event.type} after it"
    )


def _remember(
    current: dict[str, Any], command: Command, at: datetime, **details: Any
) -> dict[str, Any]:
    """An unroutable complaint keeps the event for the clocks it gets once routed (a
    resolution with its number, for the verdict on its cycle then)."""
    if current["status"] != AssignmentStatus.UNROUTABLE.value:
        return {}
    return {"$push": {REMEMBERED: {"command": command.value, "at": at, **details}}}


def _withdrawn_breaches(
    current: dict[str, Any],
    before: Clocks,
    clocks: Clocks,
    *,
    command: Command,
    at: datetime,
    now: datetime,
    actor: str,
) -> tuple[dict[str, Any], Events, list[dict[str, Any]]]:
    """The breaches of the clocks this event stopped or paused in time, withdrawn: the
    update, the events announcing it and the history entries recording it."""
    if command not in lifecycle.WITHDRAWAL_REASONS:
        return {}, [], []
    touched = [name for name, clock in clocks.items() if clock.state is not before[name].state]
    update, events = lifecycle.withdraw_breaches(
        current, clocks, names=touched, command=command, at=at, now=now
    )
    update = merge_updates(update, major_incidents.after_withdrawal(current, events, command))
    entries = [
        store.history_entry(
            at=now,
            action="breach_withdrawn",
            actor=actor,
            clock=data.clock.value,
            due_at=data.due_at,
            stopped_at=data.stopped_at,
            reason=data.reason,
            withdrawn_levels=[step.level for step in data.withdrawn_escalations],
        )
        for _, data in events
        if isinstance(data, ComplaintSlaBreachWithdrawn)
    ]
    return update, events, entries


def _stop_acknowledge_clock(
    current: dict[str, Any], clocks: Clocks, *, at: datetime, calendar: BusinessCalendar | None
) -> dict[str, Any] | None:
    """受理 stops the acknowledge clock; the resolve clock runs on."""
    ack = clocks.get(SlaClock.ACKNOWLEDGE.value)
    if ack is None:  # unroutable: no clocks yet, the acknowledgement is remembered
        return None if current.get("acknowledged_at") else {"acknowledged_at": at}
    if ack.state is ClockState.STOPPED:
        return None
    clocks[SlaClock.ACKNOWLEDGE.value] = sla_clocks.stop_clock(ack, at=at, calendar=calendar)
    return {"acknowledged_at": at}


def _pause_customer_clocks(
    current: dict[str, Any], clocks: Clocks, *, at: datetime, calendar: BusinessCalendar | None
) -> dict[str, Any] | None:
    """Waiting on the customer: the customer-facing clocks stand still. Not for a wait that
    ended before the clocks last ran again (a resume or a reopen after it): one replayed from
    the dead-letter topic after its resume froze the clocks for good until 5 December, no
    warning, breach or escalation firing while intake showed the complaint overdue."""
    if current.get("paused") or _before_clocks_ran_again(current, at):
        return None
    for name in sla_clocks.CUSTOMER_CLOCKS:
        if name in clocks:
            clocks[name] = sla_clocks.pause_clock(clocks[name], at=at)
    return {"paused": True, "paused_at": at}


# An assignment not waiting for the customer (a resume, a reopen or a finish ended the wait).
NOT_PAUSED: dict[str, Any] = {"paused": False, "paused_at": None}


def _resume_customer_clocks(
    current: dict[str, Any], clocks: Clocks, *, at: datetime, calendar: BusinessCalendar | None
) -> dict[str, Any] | None:
    """The customer answered: lay the remaining time out again. Announced even with nothing
    paused: intake's record left the due times out for the wait and takes them from the
    announcement."""
    assert calendar is not None
    for name in sla_clocks.CUSTOMER_CLOCKS:
        if name in clocks:
            clocks[name] = sla_clocks.resume_clock(clocks[name], calendar=calendar, at=at)
    return {**NOT_PAUSED, store.RAN_AGAIN_AT: _latest(current, at)}


def _latest(current: dict[str, Any], at: datetime) -> datetime:
    known = current.get(store.RAN_AGAIN_AT)
    return at if known is None or at > known else known


def _before_clocks_ran_again(current: dict[str, Any], at: datetime) -> bool:
    known = current.get(store.RAN_AGAIN_AT)
    return known is not None and at < known


@dataclass(frozen=True)
class ClockEvent:
    """What one of intake's clock events does to the assignment."""

    action: str  # as the assignment's history names it
    # Moves the loaded clocks in place; the other fields to set, or None: nothing to do.
    change: Callable[..., dict[str, Any] | None]
    announces: bool = False  # the assignment announces its new due times
    needs_calendar: bool = False
    judges: tuple[str, ...] = ()  # the clocks it stops, judged (``complaint.sla_stopped``)


CLOCK_EVENTS = {
    Command.ACKNOWLEDGE: ClockEvent(
        "acknowledged", _stop_acknowledge_clock, judges=(SlaClock.ACKNOWLEDGE.value,)
    ),
    Command.PAUSE: ClockEvent("paused", _pause_customer_clocks),
    Command.RESUME: ClockEvent(
        "resumed", _resume_customer_clocks, announces=True, needs_calendar=True
    ),
}


async def change_clocks(
    *,
    db: AsyncDatabase,
    settings: RoutingSettings,
    event: CloudEvent,
    data: EventData,
    command: Command,
    at: datetime,
    now: datetime,
) -> None:
    """Apply one of intake's clock events (acknowledged, pending customer, resumed)."""
    clock_event = CLOCK_EVENTS[command]
    calendar_of = _calendar_reader(db)

    async def decide(current: dict[str, Any]) -> Decision | None:
        if not _applies(current, command, event):
            return None
        before = sla_clocks.load_clocks(current.get("clocks"))
        clocks = dict(before)
        # Laying time out (a resume, or a stop of a paused clock) needs the branch's hours.
        lays_out = clock_event.needs_calendar or _any_paused(before, clock_event.judges)
        calendar = await calendar_of(current) if lays_out else None
        fields = clock_event.change(current, clocks, at=at, calendar=calendar)
        if fields is None:
            return None
        withdrawal, events, entries = _withdrawn_breaches(
            current, before, clocks, command=command, at=at, now=now, actor=_actor(event)
        )
        remembered = _remember(current, command, at)
        # An unroutable complaint has no clocks to write yet, only what it remembers.
        due_times = {} if remembered else lifecycle.clock_fields(clocks)
        update = merge_updates(
            lifecycle.moved(current, command),
            {"$set": {**due_times, **fields}},
            withdrawal,
            remembered,
            store.history_of(
                [
                    store.history_entry(at=now, action=clock_event.action, actor=_actor(event)),
                    *entries,
                ]
            ),
        )
        for name in clock_event.judges:
            events += lifecycle.sla_stopped_events(current, name=name, before=before, after=clocks)
        if clock_event.announces and not remembered:  # nothing routed to announce yet
            number = lifecycle.numbered(current)
            update = merge_updates(update, {"$set": number})
            events += _announced({**current, **due_times, **number})
        return Decision(update, events)

    await _apply(db, settings, event, data.complaint_id, decide, now)


def _any_paused(clocks: Clocks, names: Iterable[str]) -> bool:
    return any(clocks[name].state is ClockState.PAUSED for name in names if name in clocks)


def _announced(document: dict[str, Any]) -> Events:
    """The assignment with its due times as they now stand, whether owned or queued."""
    if document["status"] == AssignmentStatus.QUEUED.value:
        return [(EventType.COMPLAINT_QUEUED, lifecycle.queued_event(document))]
    return [(EventType.COMPLAINT_ASSIGNED, lifecycle.assigned_event(document))]


def _calendar_reader(db: AsyncDatabase) -> Callable[[dict[str, Any]], Awaitable[BusinessCalendar]]:
    """An assignment's branch calendar, the one its clocks are laid out on (until they are
    re-laid on a new one, ``calendar_changes``), read once however often the kernel decides
    again."""
    read: dict[tuple[str, str, int], BusinessCalendar] = {}

    async def calendar_of(current: dict[str, Any]) -> BusinessCalendar:
        key = (current["org"], current["branch"], current.get(store.CALENDAR_VERSION) or 0)
        if key not in read:
            read[key] = await routing_context.branch_calendar(
                db=db, org=key[0], branch=key[1], version=key[2]
            )
        return read[key]

    return calendar_of


def _responsibility(current: dict[str, Any], department: str | None) -> str | None:
    """Normalise a responsible department given as a code of the complaint's branch."""
    if department is None:
        return None
    if ":" in department:
        return department
    return f"{current['branch']}:{department}"


# The number of the latest resolution applied to the assignment (intake numbers them).
RESOLUTION_NUMBER = "resolution_number"
RESOLVED, CLOSED = AssignmentStatus.RESOLVED.value, AssignmentStatus.CLOSED.value


async def finish(
    *,
    db: AsyncDatabase,
    settings: RoutingSettings,
    event: CloudEvent,
    complaint_id: str,
    command: Command,
    at: datetime,
    now: datetime,
    resolved: ComplaintResolved | None = None,
) -> None:
    """Resolved, rejected, withdrawn or closed: the customer's clocks stop (the regulatory
    report deadline runs until the report is filed) and the slot is freed."""

    offered: list[bool] = []

    async def offer(document: dict[str, Any], previous: dict[str, Any]) -> None:
        offered.append(True)
        await queue.offer_freed_capacity(db=db, settings=settings, previous=previous, now=now)

    calendar_of = _calendar_reader(db)

    async def decide(current: dict[str, Any]) -> Decision | None:
        if resolved is not None and resolved.resolution_number <= current.get(RESOLUTION_NUMBER, 0):
            # A resolution older than one applied here (replayed from the dead-letter topic
            # after a later one): it finished an open cycle it never belonged to.
            return None
        resolved_here = current["status"] in (RESOLVED, CLOSED)
        if resolved_here and command in (Command.REJECT, Command.WITHDRAW):
            # Intake rejects or withdraws work still open: this one was reopened there, and
            # that reopen never reached this assignment (dead-lettered). Dropped as not
            # applicable, the reopen's replay then reopened for good a complaint intake
            # had withdrawn; refused too, both are replayed in order.
            raise Rejected(
                f"complaint {complaint_id} is {current['status']} here: the reopen this "
                f"{command.value} follows was not applied; replay it, then this"
            )
        if not _applies(current, command, event):
            if resolved is not None and current["status"] in lifecycle.FINISHED:
                # A later resolution, whose reopen never reached this finished assignment
                # (dead-lettered): noted, so the reopen's replay finds its cycle ended. Until
                # 6 December it was dropped, and that replay reopened for good (owner, clock,
                # a rung up) a complaint intake had resolved again and closed.
                number = resolved.resolution_number
                return Decision({"$set": {RESOLUTION_NUMBER: number}}, [])
            return None
        before = sla_clocks.load_clocks(current.get("clocks"))
        # Paused clocks are laid out again to the stop (no waiting time counts): the hours.
        paused = _any_paused(before, sla_clocks.CUSTOMER_CLOCKS)
        calendar = await calendar_of(current) if paused else None
        clocks = dict(before)
        stop_customer_clocks(clocks, at=at, calendar=calendar)
        withdrawal, events, entries = _withdrawn_breaches(
            current, before, clocks, command=command, at=at, now=now, actor=_actor(event)
        )
        # No longer waiting for the customer: the wait ended with the complaint (the
        # assignment said ``paused: true`` until a reopen).
        set_fields: dict[str, Any] = {**lifecycle.clock_fields(clocks), **NOT_PAUSED}
        if current["status"] in lifecycle.UNFINISHED:
            set_fields["finished_at"] = at
        if resolved is not None:
            set_fields[RESOLUTION_NUMBER] = resolved.resolution_number
        # The verdicts after any withdrawal: a breach the stop overtook is no breach. The
        # acknowledge clock's too when the finish is what stopped it (nobody acknowledged
        # first): the finish answered the customer, and intake learns the clock's final due
        # time (one a wait had left unknown) and that a later acknowledgement changes nothing.
        events += lifecycle.sla_stopped_events(
            current, name=SlaClock.ACKNOWLEDGE.value, before=before, after=clocks
        )
        events += lifecycle.sla_stopped_events(
            current,
            name=SlaClock.RESOLVE.value,
            before=before,
            after=clocks,
            resolution_number=resolved.resolution_number if resolved is not None else None,
        )
        # Either half named at resolution sets the responsibility, the other half as it
        # stood (a party named alone was left off the assignment), unless a supervisor set it
        # after the resolution (a setting made while this event waited here): intake keeps
        # that one too. Announced when there is a department to name.
        named = resolved is not None and bool(
            resolved.responsible_department or resolved.responsible_party
        )
        stamp = (
            store.responsibility_stamp(current, at=resolved.responsibility_set_at or at)
            if resolved is not None and named
            else None
        )
        if resolved is not None and stamp is not None:
            department = _responsibility(current, resolved.responsible_department) or current.get(
                "responsible_department"
            )
            party = (
                resolved.responsible_party.value
                if resolved.responsible_party
                else current.get("responsible_party")
            )
            set_fields.update(
                responsible_department=department,
                responsible_party=party,
                **{store.RESPONSIBILITY_SET_AT: stamp},
            )
        if resolved is not None and stamp is not None and set_fields.get("responsible_department"):
            responsibility = ComplaintResponsibilitySet(
                complaint_id=current["_id"],
                org=current["org"],
                branch=current["branch"],
                responsible_department=set_fields["responsible_department"],
                responsible_party=set_fields["responsible_party"],
                set_by=resolved.resolved_by or _actor(event),
                set_at=stamp,
            )
            events.append((EventType.COMPLAINT_RESPONSIBILITY_SET, responsibility))
        finished = store.history_entry(at=now, action=FINISHING[command].value, actor=_actor(event))
        update = merge_updates(
            lifecycle.moved(current, command),
            {"$set": set_fields},
            withdrawal,
            _remember(
                current,
                command,
                at,
                **({"resolution_number": resolved.resolution_number} if resolved else {}),
            ),
            owners.FREE_SLOT,
            store.history_of([finished, *entries]),
        )
        return Decision(update, events, [lambda document: offer(document, current)])

    document = await _apply(db, settings, event, complaint_id, decide, now)
    applied_before = not offered and event.id in document.get("applied_events", [])
    if applied_before and document.get("department"):
        # Found applied: a redelivery, most likely after the process that freed the slot
        # died before offering it (the ledger of drains owed died with it). The next queue
        # sweep offers the department, instead of the census up to a minute later, on
        # loads counted after the slot came free.
        org, department = document["org"], document["department"]
        directory_store.end_counts(db=db, org=org, department_id=department)
        owed_drains.owe(db=db, org=org, department_id=department)


async def reopen(
    *,
    db: AsyncDatabase,
    settings: RoutingSettings,
    event: CloudEvent,
    data: ComplaintReopened,
    now: datetime,
) -> None:
    """Open again: back to the owner, a fresh resolve clock, and one level up the chain."""
    current = await db[store.ASSIGNMENTS].find_one({"_id": data.complaint_id})
    if current is None:
        raise _no_assignment(event, data.complaint_id)
    policies = await policy_store.load_policies(db=db, org=data.org)
    # The fresh cycle runs on the branch's calendar now, whichever its last one ran on: a
    # complaint finished before a calendar change was not re-laid with the open work.
    calendars = await calendar_history.branch_calendars(db=db, org=data.org, code=current["branch"])

    async def count_assignment(document: dict[str, Any]) -> None:
        if document["status"] == AssignmentStatus.QUEUED.value:
            owed_drains.owe(db=db, org=data.org, department_id=document["department"])
        if document.get("owner_id"):
            await directory_store.record_assignment(
                db=db,
                org=data.org,
                staff_id=document["owner_id"],
                slot=document.get("owner_slot_no"),
                at=now,
            )

    # The resolutions it undid: a complaint is reopened only once resolved, each reopen after
    # one resolution more (a producer before 4 December sent only the reopen count).
    undone = data.resolution_count if data.resolution_count is not None else data.reopen_count

    async def decide(current: dict[str, Any]) -> Decision | None:
        if current.get(RESOLUTION_NUMBER, 0) > undone:
            # It undid a resolution older than one applied here since (replayed from the
            # dead-letter topic): it reopened a complaint resolved again, for good.
            return None
        if (
            current["status"] in lifecycle.UNFINISHED
            and current.get("reopen_count", 0) < data.reopen_count
        ):
            # The finish it undoes never reached this assignment (dead-lettered): taken as
            # applied, the finish's replay would leave the complaint finished here for good.
            raise Rejected(
                f"complaint {data.complaint_id} is {current['status']} here: the finish "
                f"reopen {data.reopen_count} undoes was not applied; replay it, then this"
            )
        if not _applies(current, Command.REOPEN, event):
            return None
        if current.get("department") is None:  # it never had a route: wait for one again
            return Decision(
                merge_updates(
                    lifecycle.moved(current, Command.NO_ROUTE),
                    # Not waiting any more, as a routed reopen: a wait from now on counts.
                    {
                        "$set": {
                            "finished_at": None,
                            "reopen_count": data.reopen_count,
                            "paused": False,
                            "paused_at": None,
                            store.RAN_AGAIN_AT: _latest(current, data.reopened_at),
                        }
                    },
                    # The fresh resolve clock starts here once it is routed.
                    {
                        "$push": {
                            REMEMBERED: {
                                "command": Command.REOPEN.value,
                                "at": data.reopened_at,
                                "by": data.reopened_by,
                            }
                        }
                    },
                    store.history(
                        at=now, action="reopened", actor=_actor(event), reason=data.reason
                    ),
                )
            )
        # Decided on the document this decision writes over (read again on a lost race).
        moved_to = await _department_after_reopen(db=db, current=current)
        department_id = moved_to.id if moved_to is not None else current["department"]
        targets = await routing_context.escalation_targets(
            db=db, org=data.org, department_id=department_id
        )
        policy = sla_clocks.select_policy(
            policies,
            org=data.org,
            requested=current.get("sla_policy"),
            category=current["category"],
        )
        clocks = calendar_changes.relaid_clocks(current, calendars)
        clocks[SlaClock.RESOLVE.value] = planning.restart_resolve_clock(
            calendar=calendars.calendar,
            policy=policy,
            severity=Severity(current["severity"]),
            start=data.reopened_at,
        )
        moving = moved_to is not None and moved_to.id != current["department"]
        owner, by_duty_officer = await _reopen_owner(
            db=db, current=current, department_id=department_id, now=now
        )
        command = Command.REOPEN if owner is not None else Command.REOPEN_TO_QUEUE
        set_fields: dict[str, Any] = {
            **lifecycle.moved(current, command)["$set"],
            **lifecycle.clock_fields(clocks),
            "paused": False,
            store.RAN_AGAIN_AT: _latest(current, data.reopened_at),
            # A new cycle: ``breached`` tells of this one's clocks (docs/routing.md).
            "breached": False,
            "finished_at": None,
            "reopen_count": data.reopen_count,
            store.CALENDAR_VERSION: calendars.version,
            **lifecycle.numbered(current),
            # Unmarked when it was finished: a major incident still without a head waits again.
            **major_incidents.awaiting(targets, major_incident=bool(current.get("major_incident"))),
        }
        if moving:
            assert moved_to is not None
            set_fields.update(
                {
                    "department": moved_to.id,
                    "department_name": moved_to.name,
                    "required_skill": None,
                    store.SKILL_RULE_VERSION: None,
                }
            )
        if owner is None:
            set_fields.update(owner_id=None, owner_name=None, queued_at=now, duty_officer=False)
        else:
            set_fields.update(
                owner_id=owner.staff.id,
                owner_name=owner.staff.name,
                duty_officer=by_duty_officer,
                **owners.slot_fields(current["org"], owner.staff.id, owner.slot),
            )
            if owner.staff.id != current.get("owner_id"):
                set_fields["assigned_at"] = now
        reopened = {**current, **set_fields}
        escalation_update, escalation_events = major_incidents.reopen_escalation(
            reopened, targets=targets, by=data.reopened_by, at=now
        )
        reopened["escalation_level"] = escalation_update.get("$set", {}).get(
            "escalation_level", reopened.get("escalation_level", 0)
        )
        announced = (
            (EventType.COMPLAINT_QUEUED, lifecycle.queued_event(reopened))
            if owner is None
            else (EventType.COMPLAINT_ASSIGNED, lifecycle.assigned_event(reopened))
        )
        moved_from = {"moved_from": current["department"]} if moving else {}
        update = merge_updates(
            {"$set": set_fields},
            escalation_update,
            store.history(
                at=now, action="reopened", actor=_actor(event), reason=data.reason, **moved_from
            ),
        )
        return Decision(update, [*escalation_events, announced], [count_assignment])

    await _apply(db, settings, event, data.complaint_id, decide, now)


def stop_customer_clocks(
    clocks: Clocks, *, at: datetime, calendar: BusinessCalendar | None
) -> None:
    """A finished complaint's acknowledge and resolve clocks stop at ``at`` (a paused one
    laid out again to the stop first, with the branch's ``calendar``)."""
    for name in sla_clocks.CUSTOMER_CLOCKS:
        if name in clocks:
            clocks[name] = sla_clocks.stop_clock(clocks[name], at=at, calendar=calendar)


def clocks_after_remembered(
    clocks: Clocks,
    remembered: list[dict[str, Any]],
    *,
    calendar: BusinessCalendar,
    restart_resolve: Callable[[datetime], sla_clocks.Clock],
    before: Callable[[dict[str, Any]], None] | None = None,
    after: Callable[[dict[str, Any], Clocks], None] | None = None,
) -> dict[str, Any]:
    """The clocks of a complaint routed at last, moved in place by the intake events it
    remembered while unroutable, in order (``REMEMBERED``); the fields they leave set.

    An acknowledgement stops the acknowledge clock, a wait pauses and a resume lays out
    again the customer's clocks, a finish stops them, and a reopen starts a fresh resolve
    clock at its instant, as they would have had the complaint been routed all along.
    ``before`` sees each entry before it is applied (to fire the timers due by then),
    ``after`` each entry once applied, with the clocks as they were before it.
    """
    state: dict[str, Any] = dict(NOT_PAUSED)
    for entry in remembered:
        if before is not None:
            before(entry)
        was = dict(clocks)
        command, at = Command(entry["command"]), entry["at"]
        if command is Command.REOPEN:
            clocks[SlaClock.RESOLVE.value] = restart_resolve(at)
            state.update(NOT_PAUSED)
        elif command in FINISHING:
            stop_customer_clocks(clocks, at=at, calendar=calendar)
            state.update(NOT_PAUSED)
        elif command in CLOCK_EVENTS:
            changed = CLOCK_EVENTS[command].change(state, clocks, at=at, calendar=calendar)
            state.update(changed or {})
        if after is not None:
            after(entry, was)
    return {"paused": state["paused"], "paused_at": state["paused_at"]}


async def _department_after_reopen(
    *, db: AsyncDatabase, current: dict[str, Any]
) -> DepartmentRead | None:
    """Where a reopened complaint goes when its department was deactivated after it was
    resolved (None: where it was). Its queue there would never drain (nobody can join an
    inactive department) and its chain's people are gone: the previous owner's department
    if they are still active (they know the case), else the branch's active department of
    the same kind (its successor). Neither: it stays, and a warning says so."""
    if not current.get("department"):
        return None
    org = current["org"]
    department = await directory_store.find_department(
        db=db, org=org, department_id=current["department"]
    )
    if department is None or department.active:
        return None
    owner_id = current.get("owner_id")
    owner = None
    if owner_id:
        owner = await directory_store.find_staff(db=db, org=org, staff_id=owner_id)
    if owner is not None and owner.status is StaffStatus.ACTIVE:
        theirs = await directory_store.find_department(
            db=db, org=org, department_id=owner.department_id
        )
        if theirs is not None and theirs.active:
            return theirs
    successor = await directory_store.active_department_of_kind(
        db=db, org=org, branch=department.branch, kind=department.kind
    )
    if successor is None:
        log.warning(
            "reopened_into_inactive_department",
            complaint_id=current["_id"],
            department=department.id,
        )
    return successor


async def _reopen_owner(
    *, db: AsyncDatabase, current: dict[str, Any], department_id: str, now: datetime
) -> tuple[owners.OwnerChoice | None, bool]:
    """The branch's duty officer when the out-of-hours rule says so (an urgent complaint
    reopened while the branch is closed: until 5 December the people of the day took it,
    off shift); else the previous owner if still active and of ``department_id`` (they know
    the case), else whoever's turn it is there. One who moved to another department since
    (or the duty officer who took it at night) is not given it: until 5 December they were,
    over their capacity, while the complaint stayed on the department's chain and its people
    with room were passed over. Also whether the duty officer was chosen."""
    org = current["org"]
    duty = await routing_context.duty_officer_taking(
        db=db, org=org, branch=current["branch"], severity=Severity(current["severity"]), at=now
    )
    if duty is not None:
        return await owners.forced_owner(db=db, org=org, staff=duty), True
    staying = department_id == current["department"]
    owner_id = current.get("owner_id")
    if owner_id:
        owner = await directory_store.find_staff(db=db, org=org, staff_id=owner_id)
        if (
            owner is not None
            and owner.status is StaffStatus.ACTIVE
            and owner.department_id == department_id
        ):
            return await owners.forced_owner(db=db, org=org, staff=owner), False
    choice = await owners.pick_owner(
        db=db,
        org=org,
        department_id=department_id,
        required_skill=current.get("required_skill") if staying else None,
    )
    return choice, False


def _classification_fields(current: dict[str, Any], data: ComplaintReclassified) -> dict[str, Any]:
    """Severity, category and flags as the reclassification gives them (the customer's VIP
    mark, routing's own flag, kept), with the queue priority the severity has."""
    flags = set(data.flags)
    if RuleFlag.VIP.value in (current.get("flags") or []):
        flags.add(RuleFlag.VIP.value)
    return {
        "severity": data.severity.value,
        "priority": SEVERITY_ORDER.index(data.severity),
        "category": data.category.value,
        "flags": sorted(flags),
        store.RECLASSIFICATION_NUMBER: data.reclassification_number,
    }


async def reclassify(
    *,
    db: AsyncDatabase,
    settings: RoutingSettings,
    event: CloudEvent,
    data: ComplaintReclassified,
    now: datetime,
) -> None:
    """A new severity, category or flags: the plan of the work still to do follows them.

    Routed (open or queued): a new severity re-lays the acknowledge and resolve clocks
    (``planning.replan_classification``); a complaint that now meets the major-incident
    criteria of its SLA policy, or of the policy its new category would be given, gets the
    report deadline from the reclassification and goes at once to its chain's branch-head
    rung (reason ``critical_incident``), as one routed so on arrival does. When a due time
    moved or it became a major incident, the assignment is announced again
    (``complaint.assigned`` / ``complaint.queued``) with its due times, severity, flags and
    ``major_incident``. The department, owner and SLA policy stay. Unroutable: the
    classification it is routed with once a rule covers it, its severity over the rule's
    override. Applied in order of ``reclassification_number``: an older one replayed after a
    newer one changes nothing.
    """
    policies = await policy_store.load_policies(db=db, org=data.org)
    calendar_of = _calendar_reader(db)

    async def decide(current: dict[str, Any]) -> Decision | None:
        if data.reclassification_number <= current.get(store.RECLASSIFICATION_NUMBER, 0):
            return None
        if not _applies(current, Command.RECLASSIFY, event):
            return None
        fields = _classification_fields(current, data)
        entry = store.history(
            at=now,
            action="reclassified",
            actor=_actor(event),
            reason=data.reason,
            severity=[current["severity"], fields["severity"]],
            category=[current["category"], fields["category"]],
            flags=[current.get("flags") or [], fields["flags"]],
        )
        if current["status"] == AssignmentStatus.UNROUTABLE.value:
            received = {
                **current["received"],
                **{name: fields[name] for name in ("severity", "category")},
                "flags": list(data.flags),
            }
            return Decision(merge_updates({"$set": {**fields, "received": received}}, entry))
        policy = sla_clocks.select_policy(
            policies,
            org=data.org,
            requested=current.get("sla_policy"),
            category=Category(current["category"]),
        )
        # The major-incident criteria of the policy the new category would be given too: a
        # billing complaint found a medical error stayed under its billing policy, whose
        # criteria knew nothing of medical ones.
        by_category = sla_clocks.select_policy(
            [candidate for candidate in policies if candidate.in_force],
            org=data.org,
            requested=None,
            category=data.category,
        )
        planned = planning.replan_classification(
            sla_clocks.load_clocks(current.get("clocks")),
            calendar=await calendar_of(current),
            policy=policy,
            major_criteria=(policy, by_category),
            severity_before=Severity(current["severity"]),
            severity=data.severity,
            category=data.category,
            flags=set(fields["flags"]),
            major_before=current.get("major_incident", False),
            reclassified_at=data.reclassified_at,
        )
        clocks = dict(planned.clocks)
        filed_at = current.get("regulatory_report_filed_at")
        report = clocks.get(SlaClock.REGULATORY_REPORT.value)
        if planned.became_major and filed_at is not None and report is not None:
            # Filed while unroutable, before anyone knew it was major: met at the filing.
            clocks[SlaClock.REGULATORY_REPORT.value] = sla_clocks.stop_clock(report, at=filed_at)
        set_fields = {
            **fields,
            **lifecycle.clock_fields(clocks),
            "major_incident": planned.major_incident,
            **lifecycle.numbered(current),
        }
        after = {**current, **set_fields}
        escalation_update: dict[str, Any] = {}
        escalation_events: Events = []
        if planned.became_major:
            escalation_update, escalation_events = await _major_incident_escalation(
                db, after, now=now
            )
            after["escalation_level"] = escalation_update.get("$set", {}).get(
                "escalation_level", after.get("escalation_level", 0)
            )
        update = merge_updates({"$set": set_fields}, escalation_update, entry)
        # Announced when it tells intake something new (intake took the classification
        # from its own command): due times moved, or a major incident.
        moved = any(set_fields[name] != current.get(name) for name in lifecycle.DUE_TIME_FIELDS)
        announced = _announced(after) if moved or planned.became_major else []
        # The verdict on that filing, after the deadline it is judged by (until 6 December
        # intake's record kept ``on_time`` unknown for good).
        verdict = lifecycle.sla_stopped_events(
            after, name=SlaClock.REGULATORY_REPORT.value, before=planned.clocks, after=clocks
        )
        return Decision(update, [*announced, *escalation_events, *verdict])

    await _apply(db, settings, event, data.complaint_id, decide, now)


async def _major_incident_escalation(
    db: AsyncDatabase, document: dict[str, Any], *, now: datetime
) -> tuple[dict[str, Any], Events]:
    """A complaint found a major incident goes at once to its chain's branch-head rung
    (reason ``critical_incident``), unless it stands there or higher already; without a
    head, to the most senior person the chain finds, and to the head once there is one."""
    targets = await routing_context.escalation_targets(
        db=db, org=document["org"], department_id=document["department"]
    )
    flag = major_incidents.awaiting(targets, major_incident=True)
    awaiting = {"$set": flag} if flag else {}
    target = major_incident_target(targets, reached=lifecycle.reached(document))
    if target is None:
        return awaiting, []
    update, events = major_incidents.escalation(document, target, now=now)
    return merge_updates(update, awaiting), events
