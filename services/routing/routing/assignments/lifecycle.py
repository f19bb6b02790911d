"""The assignment's transition table: every change of an assignment's status is decided here.

```
            ┌──assign──▶ open ◀──assign (from the queue)── queued ◀──queue── (new)
 (new) ─────┤            │  ▲ reassign / reassign_to_queue ▲ │
            └──queue───▶ queued ─────────────────────────────┘
 (new) ──no_route──▶ unroutable ──assign──▶ open     unroutable ──queue──▶ queued
 open / queued / unroutable ──resolve──▶ resolved ──close──▶ closed
 open / queued / unroutable ──reject──▶ rejected   … ──withdraw──▶ withdrawn
 resolved / closed ──reopen──▶ open     resolved / closed ──reopen_to_queue──▶ queued
 resolved / closed ──no_route──▶ unroutable (reopened, it never had a route)
```

Commands that keep the status (acknowledge, pause, resume, escalate, fire_timers,
apply_calendar) are legal while the complaint is being worked (open or queued). An unroutable
complaint has no clocks and no chain yet: it cannot be escalated, but it remembers an
acknowledgement, a pause and a resume for the clocks it gets once routed. A
reclassification is applied to unfinished work only (open, queued, unroutable). A finished
complaint's timers still fire for the regulatory report deadline, which runs until the
report is filed. Responsibility and the regulatory report may be recorded at any time.
``None`` is an assignment not created yet. ``routing.assignments.unroutable`` enters
and leaves ``unroutable``.

Beside the table: the updates every change writes with its status (the clocks and
the due times derived from them, one rung up the escalation chain) and the events
an assignment announces, built from the document as it is after the change.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from complaints_shared.aggregate import Events
from complaints_shared.business_calendar import BusinessCalendar
from complaints_shared.events import (
    ComplaintAssigned,
    ComplaintEscalated,
    ComplaintQueued,
    ComplaintRegulatoryReportFiled,
    ComplaintSlaBreached,
    ComplaintSlaBreachWithdrawn,
    ComplaintSlaStopped,
    ComplaintSlaWarning,
    EscalationStep,
    EventType,
    SlaClock,
)
from complaints_shared.transitions import TransitionTable
from routing.assignments.models import AssignmentStatus, ClockState
from routing.assignments.store import RECLASSIFICATION_NUMBER
from routing.directory.escalation import EscalationTarget, Reached, next_target
from routing.directory.models import StaffRole
from routing.sla import clocks as sla_clocks

QUEUED = AssignmentStatus.QUEUED
OPEN = AssignmentStatus.OPEN
RESOLVED = AssignmentStatus.RESOLVED
CLOSED = AssignmentStatus.CLOSED
REJECTED = AssignmentStatus.REJECTED
WITHDRAWN = AssignmentStatus.WITHDRAWN
UNROUTABLE = AssignmentStatus.UNROUTABLE

ACTIVE = (QUEUED, OPEN)
# Not finished: being worked, or waiting for a rule to route it.
UNFINISHED = (*ACTIVE, UNROUTABLE)
FINISHED = (RESOLVED, CLOSED, REJECTED, WITHDRAWN)


class Command(StrEnum):
    """What can happen to an assignment: from routing itself, a supervisor or intake's events."""

    ASSIGN = "assign"
    QUEUE = "queue"
    NO_ROUTE = "no_route"
    REASSIGN = "reassign"
    REASSIGN_TO_QUEUE = "reassign_to_queue"
    ACKNOWLEDGE = "acknowledge"
    PAUSE = "pause"
    RESUME = "resume"
    ESCALATE = "escalate"
    FIRE_TIMERS = "fire_timers"
    SET_RESPONSIBILITY = "set_responsibility"
    FILE_REGULATORY_REPORT = "file_regulatory_report"
    RESOLVE = "resolve"
    REJECT = "reject"
    WITHDRAW = "withdraw"
    CLOSE = "close"
    REOPEN = "reopen"
    REOPEN_TO_QUEUE = "reopen_to_queue"
    RECLASSIFY = "reclassify"
    APPLY_CALENDAR = "apply_calendar"


# Commands that leave an active assignment's status as it is.
_WHILE_ACTIVE = (
    Command.ACKNOWLEDGE,
    Command.PAUSE,
    Command.RESUME,
    Command.ESCALATE,
    Command.FIRE_TIMERS,
)
# Facts that may be recorded whatever the status.
_ANY_TIME = (Command.SET_RESPONSIBILITY, Command.FILE_REGULATORY_REPORT)
# Intake's clock events an unroutable complaint remembers for the clocks it gets when routed.
_REMEMBERED_WHILE_UNROUTABLE = (Command.ACKNOWLEDGE, Command.PAUSE, Command.RESUME)

_RULES: dict[tuple[AssignmentStatus | None, Command], AssignmentStatus] = {
    (None, Command.ASSIGN): OPEN,
    (None, Command.QUEUE): QUEUED,
    (QUEUED, Command.ASSIGN): OPEN,
    **{(state, Command.NO_ROUTE): UNROUTABLE for state in (None, RESOLVED, CLOSED)},
    (UNROUTABLE, Command.ASSIGN): OPEN,
    (UNROUTABLE, Command.QUEUE): QUEUED,
    **{(state, Command.REASSIGN): OPEN for state in ACTIVE},
    **{(state, Command.REASSIGN_TO_QUEUE): QUEUED for state in ACTIVE},
    **{(state, command): state for state in ACTIVE for command in _WHILE_ACTIVE},
    **{(UNROUTABLE, command): UNROUTABLE for command in _REMEMBERED_WHILE_UNROUTABLE},
    # The regulatory report deadline outlives the handling: it runs until the report is filed.
    **{(state, Command.FIRE_TIMERS): state for state in FINISHED},
    **{(state, command): state for state in (*UNFINISHED, *FINISHED) for command in _ANY_TIME},
    **{(state, Command.RESOLVE): RESOLVED for state in UNFINISHED},
    **{(state, Command.REJECT): REJECTED for state in UNFINISHED},
    **{(state, Command.WITHDRAW): WITHDRAWN for state in UNFINISHED},
    # A new severity, category or flags re-plan the work still to do; intake refuses them
    # for a finished complaint.
    **{(state, Command.RECLASSIFY): state for state in UNFINISHED},
    # The branch's new calendar re-lays the clocks of work being done (an unroutable
    # complaint has none yet; a finished one's are stopped).
    **{(state, Command.APPLY_CALENDAR): state for state in ACTIVE},
    # Intake closes resolved complaints only (an open one is rejected or withdrawn).
    (RESOLVED, Command.CLOSE): CLOSED,
    **{(state, Command.REOPEN): OPEN for state in (RESOLVED, CLOSED)},
    **{(state, Command.REOPEN_TO_QUEUE): QUEUED for state in (RESOLVED, CLOSED)},
}

TABLE: TransitionTable[AssignmentStatus, Command] = TransitionTable(what="assignment", rules=_RULES)


def status_of(document: dict | None) -> AssignmentStatus | None:
    return AssignmentStatus(document["status"]) if document is not None else None


def transition(*, current: AssignmentStatus | None, command: Command) -> AssignmentStatus:
    """The status after ``command``, or raise InvalidTransition (a 409 naming both)."""
    return TABLE.next(current=current, command=command)


def moved(document: dict, command: Command) -> dict:
    """The update setting the assignment's status after ``command`` (raises when illegal)."""
    return {"$set": {"status": transition(current=status_of(document), command=command).value}}


def applies(document: dict, command: Command) -> bool:
    """Whether an event asking for ``command`` has anything to do with this assignment."""
    return TABLE.allows(current=status_of(document), command=command)


# ------------------------------------------------------ updates and events --


def _base(document: dict[str, Any]) -> dict[str, str]:
    return {"complaint_id": document["_id"], "org": document["org"], "branch": document["branch"]}


def numbered(document: dict[str, Any]) -> dict[str, int]:
    """The number of the next assigned / queued / reassigned event of the assignment, to
    write with it: intake keeps the highest, so a replayed older one cannot bring an earlier
    assignment back, and no replica's clock decides the order."""
    return {"assignment_sequence": document.get("assignment_sequence", 0) + 1}


def assigned_event(document: dict[str, Any]) -> ComplaintAssigned:
    """The full current assignment; re-published unchanged but for new due times."""
    return ComplaintAssigned(
        **_base(document),
        department=document["department"],
        department_name=document["department_name"],
        owner_id=document.get("owner_id"),
        owner_name=document.get("owner_name"),
        rule_id=document["rule_id"],
        rule_version=document["rule_version"],
        assigned_at=document["assigned_at"],
        assignment_sequence=document.get("assignment_sequence"),
        acknowledge_due_at=document.get("acknowledge_due_at"),
        resolve_due_at=document.get("resolve_due_at"),
        regulatory_report_due_at=document.get("regulatory_report_due_at"),
        escalation_level=document.get("escalation_level", 0),
        sla_policy=document.get("sla_policy"),
        clock_starts_at=document.get("clock_starts_at"),
        duty_officer=document.get("duty_officer", False),
        **_applied_classification(document),
    )


def _applied_classification(document: dict[str, Any]) -> dict[str, Any]:
    """Severity and flags as routing applies them, so intake's record tells the same, with
    the reclassification they follow (intake keeps a later one of its own)."""
    return {
        "severity": document.get("severity"),
        "flags": document.get("flags"),
        "major_incident": document.get("major_incident", False),
        "reclassification_number": document.get(RECLASSIFICATION_NUMBER, 0),
    }


def queued_event(document: dict[str, Any]) -> ComplaintQueued:
    return ComplaintQueued(
        **_base(document),
        department=document["department"],
        department_name=document["department_name"],
        rule_id=document["rule_id"],
        rule_version=document["rule_version"],
        queued_at=document["queued_at"],
        acknowledge_due_at=document.get("acknowledge_due_at"),
        resolve_due_at=document.get("resolve_due_at"),
        regulatory_report_due_at=document.get("regulatory_report_due_at"),
        assignment_sequence=document.get("assignment_sequence"),
        **_applied_classification(document),
    )


def _clock_due(document: dict[str, Any], name: str, clock: sla_clocks.Clock) -> dict[str, Any]:
    return {
        **_base(document),
        "clock": SlaClock(name),
        "due_at": clock.due_at,
        "reopen_count": document.get("reopen_count", 0),
    }


def sla_warning_event(
    document: dict[str, Any], *, name: str, clock: sla_clocks.Clock, now: datetime
) -> ComplaintSlaWarning:
    """The clock ``name`` passed its warning threshold."""
    return ComplaintSlaWarning(**_clock_due(document, name, clock), warned_at=now)


def sla_breached_event(
    document: dict[str, Any], *, name: str, clock: sla_clocks.Clock, now: datetime, level: int
) -> ComplaintSlaBreached:
    """The clock ``name`` ran out; ``level`` is the escalation level the breach led to."""
    return ComplaintSlaBreached(
        **_clock_due(document, name, clock), breached_at=now, escalation_level=level
    )


def sla_stopped_events(
    document: dict[str, Any],
    *,
    name: str,
    before: dict[str, sla_clocks.Clock],
    after: dict[str, sla_clocks.Clock],
    resolution_number: int | None = None,
) -> Events:
    """The verdict on the clock ``name`` if this change stopped it (``before`` → ``after``):
    its final due time and whether it was met, which intake records as the truth."""
    was, stopped = before.get(name), after.get(name)
    if was is None or stopped is None or was.state is ClockState.STOPPED:
        return []
    if stopped.state is not ClockState.STOPPED or stopped.stopped_at is None:
        return []
    verdict = ComplaintSlaStopped(
        **_base(document),
        clock=SlaClock(name),
        due_at=stopped.due_at,
        stopped_at=stopped.stopped_at,
        on_time=sla_clocks.met(stopped),
        breached=stopped.breach_count > 0,
        reopen_count=document.get("reopen_count", 0),
        resolution_number=resolution_number,
    )
    return [(EventType.COMPLAINT_SLA_STOPPED, verdict)]


def regulatory_report_filed_event(
    document: dict[str, Any],
    *,
    reference: str | None,
    filed_by: str,
    filed_at: datetime,
    report: sla_clocks.Clock | None,
) -> ComplaintRegulatoryReportFiled:
    """The filing and, when the complaint carries a report deadline, the verdict on it:
    ``report`` is its clock as the filing stopped it (None: no deadline known, as while the
    complaint is unroutable)."""
    return ComplaintRegulatoryReportFiled(
        **_base(document),
        reference=reference,
        filed_by=filed_by,
        filed_at=filed_at,
        due_at=report.due_at if report is not None else None,
        on_time=sla_clocks.met(report) if report is not None else None,
        breached=report is not None and report.breach_count > 0,
    )


def escalation_record(
    target: EscalationTarget,
    *,
    reason: str,
    by: str,
    at: datetime,
    note: str | None = None,
    breach: tuple[str, datetime] | None = None,
) -> dict[str, Any]:
    """One rung climbed; ``breach`` (clock, due time) names the breach that caused it."""
    record = {
        "level": target.level,
        "escalated_to_id": target.staff_id,
        "escalated_to_name": target.name,
        "escalated_to_role": target.role.value if target.role else None,
        "reason": reason,
        "note": note,
        "escalated_by": by,
        "escalated_at": at,
    }
    if breach is not None:
        record["clock"], record["breach_due_at"] = breach
    return record


def escalated_event(
    document: dict[str, Any], record: dict[str, Any], *, regulatory_due: datetime | None = None
) -> ComplaintEscalated:
    return ComplaintEscalated(
        **_base(document),
        level=record["level"],
        escalated_to_id=record["escalated_to_id"],
        escalated_to_name=record["escalated_to_name"],
        escalated_to_role=record["escalated_to_role"],
        reason=record["reason"],
        escalated_by=record["escalated_by"],
        escalated_at=record["escalated_at"],
        note=record.get("note"),
        regulatory_report_due_at=regulatory_due,
    )


def escalate_one_level(
    current: dict[str, Any],
    *,
    targets: list[EscalationTarget],
    reason: str,
    by: str,
    at: datetime,
    note: str | None = None,
    breach: tuple[str, datetime] | None = None,
) -> tuple[dict[str, Any], Events]:
    """The update and event taking the complaint one rung up its chain, from what it
    reached to the next step above that finds a person; nothing when nobody is above."""
    target = next_target(targets, reached=reached(current))
    if target is None:
        return {}, []
    record = escalation_record(target, reason=reason, by=by, at=at, note=note, breach=breach)
    update = {"$set": {"escalation_level": target.level}, "$push": {"escalations": record}}
    return update, [(EventType.COMPLAINT_ESCALATED, escalated_event(current, record))]


def reached(document: dict[str, Any]) -> Reached:
    """What the complaint's escalations reached: the level, with the person and role of
    the escalation standing at it (only the level when no record stands there)."""
    level = document.get("escalation_level", 0)
    standing = _standing(document.get("escalations") or [])
    if level == 0 or standing is None or standing["level"] != level:
        return Reached(level=level)
    role = standing.get("escalated_to_role")
    return Reached(
        level=level,
        staff_id=standing.get("escalated_to_id"),
        role=StaffRole(role) if role else None,
    )


def climbed(document: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``document`` with ``escalate_one_level``'s ``update`` applied: where the next climb
    of the same decision starts."""
    if not update:
        return document
    record = update["$push"]["escalations"]
    escalations = [*(document.get("escalations") or []), record]
    return {**document, "escalation_level": record["level"], "escalations": escalations}


# Breaches of these clocks climb the department's chain; the report deadline is already at the top.
ESCALATING_CLOCKS = (SlaClock.ACKNOWLEDGE.value, SlaClock.RESOLVE.value)
TIMED_CLOCKS = (
    SlaClock.ACKNOWLEDGE.value,
    SlaClock.RESOLVE.value,
    SlaClock.REGULATORY_REPORT.value,
)


@dataclass
class FiredTimers:
    """What firing the timers due at one instant did: the clocks after it, the escalation
    level and the records of the rungs climbed, the events, and whether a clock breached."""

    clocks: dict[str, sla_clocks.Clock]
    level: int
    records: list[dict[str, Any]] = field(default_factory=list)
    events: Events = field(default_factory=list)
    breached: bool = False


def fire_timers(
    document: dict[str, Any],
    *,
    clocks: dict[str, sla_clocks.Clock],
    calendar: BusinessCalendar,
    targets: list[EscalationTarget],
    now: datetime,
) -> FiredTimers:
    """Fire every timer of ``clocks`` due at ``now`` (at most one per clock): warnings,
    breaches, and the rungs breaches of the customer's clocks climb from what
    ``document``'s escalations reached. ``clocks`` is left as it was."""
    fired = FiredTimers(clocks=dict(clocks), level=document.get("escalation_level", 0))
    escalated = document
    for name in TIMED_CLOCKS:
        clock = fired.clocks.get(name)
        if clock is None:
            continue
        may_climb = (
            name in ESCALATING_CLOCKS
            and next_target(targets, reached=reached(escalated)) is not None
        )
        # Only the resolve clock re-arms, one allowed span later, whatever the level: a
        # complaint left overdue keeps going up the chain, also once a rung above it stands
        # free again (a late acknowledgement withdrew the rung its breach took, it moved
        # to a department with a longer chain, a vacant post above was filled). It was
        # switched off at the top, and never armed again. A repeat with no rung to climb
        # changes nothing and says nothing.
        repeat = name == SlaClock.RESOLVE.value
        before = clock
        clock, kind = sla_clocks.fire_due(clock, calendar=calendar, now=now, repeat=repeat)
        if kind is None:
            continue
        if kind is sla_clocks.TimerKind.BREACH and before.breach_count and not may_climb:
            fired.clocks[name] = before.model_copy(update={"next_breach_at": clock.next_breach_at})
            continue
        if kind is sla_clocks.TimerKind.BREACH:  # which cycle ``breached`` tells of
            clock = clock.model_copy(update={"breached_in_cycle": document.get("reopen_count", 0)})
        fired.clocks[name] = clock
        if kind is sla_clocks.TimerKind.WARNING:
            warning = sla_warning_event(document, name=name, clock=clock, now=now)
            fired.events.append((EventType.COMPLAINT_SLA_WARNING, warning))
            continue
        fired.breached = True
        if may_climb:
            update, escalation = escalate_one_level(
                escalated,
                targets=targets,
                reason="sla_breach",
                by="routing",
                at=now,
                breach=(name, clock.due_at),
            )
            if escalation:
                escalated = climbed(escalated, update)
                fired.level = escalated["escalation_level"]
                fired.records.append(update["$push"]["escalations"])
                breach = sla_breached_event(
                    document, name=name, clock=clock, now=now, level=fired.level
                )
                fired.events.extend([(EventType.COMPLAINT_SLA_BREACHED, breach), *escalation])
                continue
        breach = sla_breached_event(document, name=name, clock=clock, now=now, level=fired.level)
        fired.events.append((EventType.COMPLAINT_SLA_BREACHED, breach))
    return fired


# The due times an assignment's clocks give, as ``clock_fields`` writes them.
DUE_TIME_FIELDS = ("acknowledge_due_at", "resolve_due_at", "regulatory_report_due_at")


def clock_fields(clocks: dict[str, sla_clocks.Clock]) -> dict[str, Any]:
    """The clocks and what is derived from them, always written together."""

    def due(name: str) -> datetime | None:
        clock = clocks.get(name)
        return clock.due_at if clock is not None else None

    return {
        "clocks": {name: clock.stored() for name, clock in clocks.items()},
        "next_timer_at": sla_clocks.next_timer_at(clocks),
        "acknowledge_due_at": due("acknowledge"),
        "resolve_due_at": due("resolve"),
        "regulatory_report_due_at": due("regulatory_report"),
    }


# Why a breach is withdrawn, by the intake event that stopped or paused its clock in time.
WITHDRAWAL_REASONS = {
    Command.ACKNOWLEDGE: "acknowledged_on_time",
    Command.PAUSE: "paused_on_time",
    Command.RESOLVE: "resolved_on_time",
    Command.REJECT: "rejected_on_time",
    Command.WITHDRAW: "withdrawn_on_time",
}


def _caused_by_breach(record: dict[str, Any], name: str, clock: sla_clocks.Clock) -> bool:
    """An escalation still standing that a breach of this cycle of the clock caused."""
    return (
        record.get("withdrawn_at") is None
        and record.get("clock") == name
        and record.get("breach_due_at") == clock.due_at
    )


def _breached_in(name: str, clock: sla_clocks.Clock, cycle: int) -> bool:
    """Whether ``clock`` breached in the complaint's cycle ``cycle`` (``breached`` is per
    cycle). A breach from before the clocks kept their cycle: the resolve clock is fresh
    each cycle, the others breached in the first."""
    if clock.breach_count == 0:
        return False
    if clock.breached_in_cycle is not None:
        return clock.breached_in_cycle == cycle
    return name == SlaClock.RESOLVE.value or cycle == 0


def _standing(escalations: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The highest escalation not withdrawn (the latest of equals)."""
    standing = [record for record in escalations if record.get("withdrawn_at") is None]
    return max(reversed(standing), key=lambda record: record["level"], default=None)


def withdraw_breaches(
    current: dict[str, Any],
    clocks: dict[str, sla_clocks.Clock],
    *,
    names: Iterable[str],
    command: Command,
    at: datetime,
    now: datetime,
) -> tuple[dict[str, Any], Events]:
    """Withdraw the breaches fired for the clocks ``names`` that ``command`` stopped or
    paused at ``at``, at or before their due time: intake's event reached routing only
    after the timer fired (a broker outage, a consumer behind).

    ``clocks`` (already stopped or paused) lose those breaches in place. The escalations
    the breaches caused stay in ``escalations`` marked withdrawn (their notifications were
    sent), the level falls back to the highest escalation still standing, and ``breached``
    says whether a clock is still breached in this cycle. Nothing to withdraw: ``({}, [])``.
    """
    reason = WITHDRAWAL_REASONS[command]
    escalations = [dict(record) for record in current.get("escalations") or []]
    level = current.get("escalation_level", 0)
    cycle = current.get("reopen_count", 0)
    fields: dict[str, Any] = {}
    events: Events = []
    for name in names:
        clock = clocks.get(name)
        if clock is None or not sla_clocks.breach_withdrawable(clock, at=at):
            continue
        withdrawn = []
        for record in escalations:
            if _caused_by_breach(record, name, clock):
                record.update(withdrawn_at=now, withdrawn_reason=reason)
                withdrawn.append(record)
        standing = _standing(escalations)
        if withdrawn:
            level = standing["level"] if standing else 0
            fields.update(escalations=escalations, escalation_level=level)
        clocks[name] = sla_clocks.without_breaches(clock)
        still = sorted(other for other, c in clocks.items() if _breached_in(other, c, cycle))
        fields["breached"] = bool(still)
        event = ComplaintSlaBreachWithdrawn(
            **_base(current),
            clock=SlaClock(name),
            due_at=clock.due_at,
            stopped_at=at,
            reason=reason,
            withdrawn_breaches=clock.breach_count,
            withdrawn_at=now,
            withdrawn_escalations=[EscalationStep.model_validate(r) for r in withdrawn],
            escalation_level=level,
            escalation=EscalationStep.model_validate(standing) if standing else None,
            breached_clocks=[SlaClock(other) for other in still],
            reopen_count=cycle,
        )
        events.append((EventType.COMPLAINT_SLA_BREACH_WITHDRAWN, event))
    return ({"$set": fields} if fields else {}), events
