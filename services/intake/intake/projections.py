"""Applying routing's and follow-up's events to the complaint of record.

Each function is idempotent (the event id is remembered on the document) and
safe against late delivery: assignments keep the highest ``assignment_sequence``
(routing numbers them; a replayed older one changes nothing), the escalation level is
the highest rung reported and not withdrawn (``_escalation``), SLA flags only go from false
to true, and the satisfaction is the latest
resolution's outcome (``_outcome_rank``). The way back for a flag is routing's own
correction: a withdrawn breach (``apply_sla_breach_withdrawn``) clears it and takes back
the escalations it caused, which stay on the timeline marked withdrawn. Events never set a
status of their own: an assignment is intake's ``assign`` command and a
follow-up outcome its ``close`` or ``reopen``, each through the transition table;
everything else routing reports is a fact on the record.

The timeline gives the time the event happened; ``updated_at`` is when intake applied it
(``now``), since what reads the complaints changed since a time (the report rollup, the
reports' corrections) must find an event consumed late, after an outage, too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from complaints_shared.envelope import CloudEvent
from complaints_shared.events import (
    EVENT_TYPE_PREFIX,
    BranchUpdated,
    ClosedVia,
    ComplaintAssigned,
    ComplaintEscalated,
    ComplaintQueued,
    ComplaintReassigned,
    ComplaintRegulatoryReportFiled,
    ComplaintResponsibilitySet,
    ComplaintSlaBreached,
    ComplaintSlaBreachWithdrawn,
    ComplaintSlaStopped,
    ComplaintSlaWarning,
    ComplaintUnroutable,
    DepartmentUpdated,
    EventData,
    Flag,
    FollowupAttempted,
    FollowupCancelled,
    FollowupCompleted,
    FollowupOutcome,
    FollowupRescheduled,
    FollowupScheduled,
    SlaClock,
    StaffUpdated,
)
from complaints_shared.failures import Rejected
from complaints_shared.mongo import as_utc, bson_time, merge_updates
from intake import commands, directory_names, reference_numbers, store
from intake.lifecycle import TERMINAL_STATUSES, Action, Command, Status, is_legal, transition
from intake.settings import IntakeSettings

# Routed at last: the record no longer says it is unroutable.
ROUTED = {"unroutable": ""}


async def _apply(
    *,
    db: AsyncDatabase,
    settings: IntakeSettings,
    event: CloudEvent,
    now: datetime,
    data: EventData,
    action: Action,
    decide: Any,
    details: dict[str, Any] | None = None,
) -> None:
    document = await store.change(
        db=db,
        settings=settings,
        complaint_id=data.complaint_id,
        scope={"org": data.org},
        actor=event.source,
        action=action,
        decide=decide,
        now=now,
        happened_at=event.time,
        cause=cause_of(event),
        event_id=event.id,
        details=details,
        # A consumer needs the change made, not the document: no read after the write.
        read_back=False,
    )
    if document is None:
        # Not ours to guess: the record was lost (restored from an older backup) or the
        # event names another organisation. The DLQ keeps it until an operator replays it.
        raise Rejected(
            f"complaint {data.complaint_id} of organisation {data.org!r} is not on record here"
        )


def cause_of(event: CloudEvent) -> str:
    """The timeline's cause of an event's change: its type without prefix and version."""
    return event.type.removeprefix(EVENT_TYPE_PREFIX).rsplit(".v", 1)[0]


def _status_after(current: dict[str, Any], command: Command) -> Status | None:
    """The status after a command caused by an event; None when the table does not allow it
    (an event already happened elsewhere, so it is recorded without a status change)."""
    status = Status(current["status"])
    if not is_legal(current=status, command=command):
        return None
    return transition(current=status, command=command)


def _classification(
    current: dict[str, Any], data: ComplaintAssigned | ComplaintQueued
) -> dict[str, Any]:
    """Severity and flags as routing applies them (a rule may have raised the severity),
    unless they are from before a reclassification made here since: routing announces a
    reclassification only when it moves a due time or makes a major incident, and until 6
    December an announcement already on its way when a supervisor reclassified (a queue's
    drain, a resume) put the old flags back on the record for good. An announcement from
    an earlier routing version (no number) counts as from before any reclassification."""
    fields: dict[str, Any] = {"major_incident": data.major_incident}
    if (data.reclassification_number or 0) < current.get("reclassification_count", 0):
        return fields
    if data.severity is not None:
        fields["severity"] = data.severity.value
    if data.flags is not None:
        known = {flag.value for flag in Flag}
        fields["flags"] = [flag for flag in data.flags if flag in known]
    return fields


AssignmentEvent = ComplaintAssigned | ComplaintQueued | ComplaintReassigned
Decide = Callable[[dict[str, Any]], store.Decision]


def _in_assignment_order(data: AssignmentEvent, decide: Decide) -> Decide:
    """``decide``, unless a later assignment event was applied already.

    Routing numbers a complaint's assigned / queued / reassigned events
    (``assignment_sequence``, in the write that announces each) and Kafka delivers them in
    order; the number tells a replayed older one (the dead-letter tool) apart. The times on
    them are not compared: they come from different replicas' clocks, which may differ by
    more than the gap between two events (a queue drain right after the queueing). An event
    without a number (an earlier routing version) is applied in the order it arrives.
    """

    def ordered(current: dict[str, Any]) -> store.Decision:
        number, known = data.assignment_sequence, current.get("assignment_sequence")
        if number is not None and known is not None and number <= known:
            return store.UNCHANGED  # superseded by what is on record
        decision = decide(current)
        if number is None:
            return decision
        numbered = merge_updates(decision.update, {"$max": {"assignment_sequence": number}})
        return replace(decision, update=numbered)

    return ordered


def _with_due_times(
    current: dict[str, Any], fields: dict[str, Any], update: dict[str, Any]
) -> dict[str, Any]:
    """``update`` setting ``fields`` (routing's announced due times among them), less the due
    times a wait on the customer leaves unknown (``commands.standing_still``): routing pauses
    those clocks, and announces them again on resume."""
    since = current.get("pending_customer_since")
    if current["status"] == Status.PENDING_CUSTOMER.value and since is not None:
        paused = commands.standing_still({**current, **fields}, since=since)
        if paused:
            fields = {name: value for name, value in fields.items() if name not in paused}
            update = merge_updates(update, {"$unset": dict.fromkeys(paused, "")})
    return merge_updates(update, {"$set": fields})


def _same_cycle(current: dict[str, Any], reopen_count: int | None) -> bool:
    """Whether routing's SLA event is of the record's current cycle (None: an event from
    before they carried it, taken as the current one)."""
    return reopen_count is None or reopen_count == current.get("reopen_count", 0)


def _clock_flags_apply(current: dict[str, Any], clock: SlaClock, reopen_count: int | None) -> bool:
    """Whether an event of ``clock`` sets its flags (``sla.<clock>_…``) on the record: the
    resolve clock's are per cycle (a reopen clears them, ``commands.NEW_CYCLE_SLA``); the
    acknowledge and report clocks run once, and their flags stand across cycles."""
    return clock is not SlaClock.RESOLVE or _same_cycle(current, reopen_count)


# Every rung routing reported climbed (its escalated events) and whether it withdrew it
# since: the escalation level and the highest escalation are derived from them.
ESCALATION_STEPS = "escalation_steps"
STEP_FIELDS = (
    "level",
    "escalated_to_id",
    "escalated_to_name",
    "escalated_to_role",
    "reason",
    "escalated_by",
    "escalated_at",
    "note",
)


def _step_key(step: dict[str, Any]) -> tuple[int, datetime]:
    # Milliseconds: what BSON keeps of a time, so a step read back matches its event's.
    return step["level"], bson_time(step["escalated_at"])


def _escalation(
    current: dict[str, Any],
    *,
    climbed: Sequence[dict[str, Any]] = (),
    withdrawn: Sequence[dict[str, Any]] = (),
    withdrawal: dict[str, Any] | None = None,
    standing_after: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The escalation fields after rungs ``climbed`` and ``withdrawn``, in whatever order
    their events arrive: routing's level is its highest rung not withdrawn (a climb is one
    above the level, a withdrawal falls back to the highest standing), so the record's is
    the same once both have seen the same rungs. A rung's climb arriving after its
    withdrawal (a redelivery, a replay) finds it withdrawn; a withdrawal of an earlier cycle
    arriving after a reopen still takes its rungs back; the level is never set from a
    number an event carries. A record from before the rungs were kept starts from its
    highest escalation; a withdrawal adds the highest rung routing says still stands after
    it (``standing_after``), which such a record may never have kept.
    A withdrawn rung keeps its ``withdrawal`` (when, why, the event) in ``withdrawn``."""
    known = current.get(ESCALATION_STEPS)
    if known is None:
        seed = None if withdrawn else current.get("escalation")
        known = [{**seed, "withdrawn": False}] if seed else []
    steps = {_step_key(step): dict(step) for step in known}
    if standing_after is not None:  # a rung the record may never have kept (seeded above)
        steps.setdefault(_step_key(standing_after), {**standing_after, "withdrawn": False})
    for step in climbed:
        steps.setdefault(_step_key(step), {**step, "withdrawn": False})
    for step in withdrawn:
        marker = withdrawal or True
        steps[_step_key(step)] = {**steps.get(_step_key(step), step), "withdrawn": marker}
    standing = [step for step in steps.values() if not step["withdrawn"]]
    top = max(standing, key=_step_key, default=None)
    fields: dict[str, Any] = {
        ESCALATION_STEPS: sorted(steps.values(), key=lambda step: _step_key(step)[::-1]),
        "escalation_level": top["level"] if top else 0,
    }
    if top is None:
        return {"$set": fields, "$unset": {"escalation": ""}}
    fields["escalation"] = {name: top.get(name) for name in STEP_FIELDS}
    return {"$set": fields}


WITHDRAWN_BREACHES = "withdrawn_breaches"


def _breach_key(clock: str, due_at: datetime) -> tuple[str, datetime]:
    return clock, bson_time(due_at)


def _breach_withdrawal(current: dict[str, Any], clock: str, due_at: datetime) -> dict | None:
    """The withdrawal of the breach of ``clock`` due at ``due_at``, when it came first."""
    key = _breach_key(clock, due_at)
    for withdrawn in current.get(WITHDRAWN_BREACHES) or []:
        if _breach_key(withdrawn["clock"], withdrawn["due_at"]) == key:
            return withdrawn["withdrawal"]
    return None


def _rung_withdrawal(current: dict[str, Any], step: dict[str, Any]) -> dict | None:
    """The withdrawal of the rung ``step``, when it came before the climb."""
    for known in current.get(ESCALATION_STEPS) or []:
        if _step_key(known) == _step_key(step) and isinstance(known["withdrawn"], dict):
            return known["withdrawn"]
    return None


def _announced_again(
    current: dict[str, Any], *, department: str, owner_id: str | None
) -> dict[str, Any]:
    """The timeline action of an assignment routing announces with the department and owner
    (or queue) the record has already: ``due_times_updated``, not another ``assigned`` (each
    wait and resume added one, all for the same owner, until 5 December)."""
    known = current.get("assignment") or {}
    unchanged = (known.get("department"), known.get("owner_id")) == (department, owner_id)
    if not unchanged or known.get("queued", False) != (owner_id is None):
        return {}
    return {"action": Action.DUE_TIMES_UPDATED}


def _routed_by_hand(data: ComplaintAssigned | ComplaintQueued) -> dict[str, Any]:
    """Who routed an unroutable complaint by hand, and why, as the timeline says of a
    reassignment (``by``, ``reason``); nothing when a rule routed it."""
    if data.routed_by is None:
        return {}
    return {"by": data.routed_by, "reason": data.routed_reason}


async def apply_assigned(
    *,
    db: AsyncDatabase,
    settings: IntakeSettings,
    event: CloudEvent,
    data: ComplaintAssigned,
    now: datetime,
) -> None:
    def decide(current: dict[str, Any]) -> store.Decision:
        assignment = data.model_dump(
            include={
                "department",
                "department_name",
                "owner_id",
                "owner_name",
                "rule_id",
                "rule_version",
                "assigned_at",
                "duty_officer",
            }
        )
        fields = {
            "assignment": {**assignment, "queued": False},
            "acknowledge_due_at": data.acknowledge_due_at,
            "resolve_due_at": data.resolve_due_at,
            **_classification(current, data),
        }
        if data.regulatory_report_due_at is not None:
            fields["regulatory_report_due_at"] = data.regulatory_report_due_at
        # The level is the escalated events' (``_escalation``), one of which follows any rung.
        update = _with_due_times(current, fields, {"$unset": ROUTED})
        return store.Decision(
            update,
            status=_status_after(current, Command.ASSIGN),
            **_announced_again(current, department=data.department, owner_id=data.owner_id),
        )

    await _apply(
        db=db,
        settings=settings,
        event=event,
        now=now,
        data=data,
        action=Action.ASSIGNED,
        decide=_in_assignment_order(data, decide),
        details={
            "department": data.department,
            "owner_id": data.owner_id,
            "rule_id": data.rule_id,
            "rule_version": data.rule_version,
            **_routed_by_hand(data),
        },
    )
    await directory_names.correct(
        db=db,
        org=data.org,
        complaint_id=data.complaint_id,
        departments={data.department: data.department_name},
        staff={data.owner_id: data.owner_name},
        now=now,
        settings=settings,
    )


async def apply_queued(
    *,
    db: AsyncDatabase,
    settings: IntakeSettings,
    event: CloudEvent,
    data: ComplaintQueued,
    now: datetime,
) -> None:
    def decide(current: dict[str, Any]) -> store.Decision:
        queued = {
            "department": data.department,
            "department_name": data.department_name,
            "owner_id": None,
            "owner_name": None,
            "rule_id": data.rule_id,
            "rule_version": data.rule_version,
            "assigned_at": data.queued_at,
            "queued": True,
        }
        # The clocks run in the queue too; a queued event published before it carried the
        # due times leaves those known as they are.
        due_times = {
            name: value
            for name in ("acknowledge_due_at", "resolve_due_at", "regulatory_report_due_at")
            if (value := getattr(data, name)) is not None
        }
        fields = {"assignment": queued, **_classification(current, data), **due_times}
        update = _with_due_times(current, fields, {"$unset": ROUTED})
        return store.Decision(
            update,
            status=_status_after(current, Command.ASSIGN),
            **_announced_again(current, department=data.department, owner_id=None),
        )

    await _apply(
        db=db,
        settings=settings,
        event=event,
        now=now,
        data=data,
        action=Action.QUEUED,
        decide=_in_assignment_order(data, decide),
        details={"department": data.department, **_routed_by_hand(data)},
    )
    await directory_names.correct(
        db=db,
        org=data.org,
        complaint_id=data.complaint_id,
        departments={data.department: data.department_name},
        staff={},
        now=now,
        settings=settings,
    )


async def apply_unroutable(
    *,
    db: AsyncDatabase,
    settings: IntakeSettings,
    event: CloudEvent,
    data: ComplaintUnroutable,
    now: datetime,
) -> None:
    """No rule routes the complaint: the record says so (and why) until it is routed."""

    def decide(current: dict[str, Any]) -> store.Decision:
        if current.get("assignment") is not None:
            return store.UNCHANGED  # routed meanwhile (a late, redelivered announcement)
        if Status(current["status"]) in TERMINAL_STATUSES:
            return store.UNCHANGED  # rejected or withdrawn first: it waits for no route
        unroutable = {
            "reason": data.reason,
            "passed_over_rules": data.passed_over_rules,
            "since": data.unroutable_at,
        }
        return store.Decision({"$set": {"unroutable": unroutable}})

    await _apply(
        db=db,
        settings=settings,
        event=event,
        now=now,
        data=data,
        action=Action.FOUND_UNROUTABLE,
        decide=decide,
        details={"reason": data.reason},
    )


async def apply_reassigned(
    *,
    db: AsyncDatabase,
    settings: IntakeSettings,
    event: CloudEvent,
    data: ComplaintReassigned,
    now: datetime,
) -> None:
    def decide(current: dict[str, Any]) -> store.Decision:
        previous = current.get("assignment") or {}
        assignment = {
            **previous,
            "department": data.department,
            "department_name": data.department_name,
            "owner_id": data.owner_id,
            "owner_name": data.owner_name,
            "assigned_at": data.reassigned_at,
            "queued": data.owner_id is None,
            # A reassignment is a person's (or a move's) choice, never the out-of-hours
            # rule's: until 5 December the duty officer's mark stayed on the new owner.
            "duty_officer": False,
        }
        return store.Decision({"$set": {"assignment": assignment}, "$unset": ROUTED})

    await _apply(
        db=db,
        settings=settings,
        event=event,
        now=now,
        data=data,
        action=Action.REASSIGNED,
        decide=_in_assignment_order(data, decide),
        details={
            "from_owner_id": data.from_owner_id,
            "owner_id": data.owner_id,
            "department": data.department,
            "reason": data.reason,
            "by": data.reassigned_by,
        },
    )
    await directory_names.correct(
        db=db,
        org=data.org,
        complaint_id=data.complaint_id,
        departments={data.department: data.department_name},
        staff={data.owner_id: data.owner_name},
        now=now,
        settings=settings,
    )


async def apply_escalated(
    *,
    db: AsyncDatabase,
    settings: IntakeSettings,
    event: CloudEvent,
    data: ComplaintEscalated,
    now: datetime,
) -> None:
    def decide(current: dict[str, Any]) -> store.Decision:
        step = data.model_dump(include=set(STEP_FIELDS))
        update = _escalation(current, climbed=[step])
        if data.regulatory_report_due_at is not None:
            update["$set"]["regulatory_report_due_at"] = data.regulatory_report_due_at
        return store.Decision(update, withdrawn=_rung_withdrawal(current, step))

    await _apply(
        db=db,
        settings=settings,
        event=event,
        now=now,
        data=data,
        action=Action.ESCALATED,
        decide=decide,
        details={
            "level": data.level,
            "to": data.escalated_to_id or data.escalated_to_role,
            "reason": data.reason,
            # Who climbed it, in their words when by hand (until 6 December a supervisor's
            # escalation showed as routing's, with no word of why).
            "by": data.escalated_by,
            **({"note": data.note} if data.note is not None else {}),
            # What a withdrawal of the breach that caused it names it by.
            "escalated_at": data.escalated_at,
        },
    )
    await directory_names.correct(
        db=db,
        org=data.org,
        complaint_id=data.complaint_id,
        departments={},
        staff={data.escalated_to_id: data.escalated_to_name},
        now=now,
        settings=settings,
    )


async def apply_sla_warning(
    *,
    db: AsyncDatabase,
    settings: IntakeSettings,
    event: CloudEvent,
    data: ComplaintSlaWarning,
    now: datetime,
) -> None:
    def decide(current: dict[str, Any]) -> store.Decision:
        if not _clock_flags_apply(current, data.clock, data.reopen_count):
            return store.UNCHANGED  # of a cycle a reopen has ended: on the timeline only
        return store.Decision({"$set": {f"sla.{data.clock.value}_warning": True}})

    await _apply(
        db=db,
        settings=settings,
        event=event,
        now=now,
        data=data,
        action=Action.SLA_WARNED,
        decide=decide,
        details={"clock": data.clock.value, "due_at": data.due_at},
    )


async def apply_sla_breached(
    *,
    db: AsyncDatabase,
    settings: IntakeSettings,
    event: CloudEvent,
    data: ComplaintSlaBreached,
    now: datetime,
) -> None:
    def decide(current: dict[str, Any]) -> store.Decision:
        withdrawal = _breach_withdrawal(current, data.clock.value, data.due_at)
        if withdrawal is not None:  # its withdrawal came first (a replay): no flag
            return store.Decision({}, withdrawn=withdrawal)
        if not _clock_flags_apply(current, data.clock, data.reopen_count):
            return store.UNCHANGED  # of a cycle a reopen has ended: on the timeline only
        fields = {f"sla.{data.clock.value}_breached": True}
        if _same_cycle(current, data.reopen_count):  # ``sla_breached`` tells of this cycle
            fields["sla_breached"] = True
        # The rung it climbed, if any, is the escalated event's that follows it.
        return store.Decision({"$set": fields})

    await _apply(
        db=db,
        settings=settings,
        event=event,
        now=now,
        data=data,
        action=Action.SLA_BREACHED,
        decide=decide,
        details={"clock": data.clock.value, "due_at": data.due_at},
    )


async def apply_sla_stopped(
    *,
    db: AsyncDatabase,
    settings: IntakeSettings,
    event: CloudEvent,
    data: ComplaintSlaStopped,
    now: datetime,
) -> None:
    """Routing's verdict on a stopped clock is the record's: the clock's final due time
    (business hours, pauses left out) and whether it was met replace what intake judged
    when the command ran (``acknowledgement.late``, a resolution's ``on_time``). The
    acknowledge clock's stop is kept (``ACKNOWLEDGE_STOPPED_AT``): a finish before any
    acknowledgement stops it too, and an acknowledgement after that (of a reopened
    complaint) is judged by that stop, as routing judged the clock."""

    def decide(current: dict[str, Any]) -> store.Decision:
        if data.clock is SlaClock.ACKNOWLEDGE:
            fields: dict[str, Any] = {
                "acknowledge_due_at": data.due_at,
                store.ACKNOWLEDGE_STOPPED_AT: data.stopped_at,
            }
            if current.get("acknowledgement") is not None:
                fields["acknowledgement.late"] = not data.on_time
            return store.Decision({"$set": fields})
        if data.clock is SlaClock.REGULATORY_REPORT:
            # A report filed while unroutable: judged once routing laid its deadline out.
            fields = {"regulatory_report_due_at": data.due_at}
            if current.get("regulatory_report") is not None:
                fields["regulatory_report.on_time"] = data.on_time
            return store.Decision({"$set": fields})
        return store.Decision(_resolve_verdict(current, data))

    await _apply(
        db=db,
        settings=settings,
        event=event,
        now=now,
        data=data,
        action=Action.SLA_STOPPED,
        decide=decide,
        details={
            "clock": data.clock.value,
            "due_at": data.due_at,
            "on_time": data.on_time,
            "resolution_number": data.resolution_number,
        },
    )


def _resolve_verdict(current: dict[str, Any], data: ComplaintSlaStopped) -> dict[str, Any]:
    """The resolve clock's verdict on its cycle's resolution, and on the record's due time
    while that cycle is still the current one (a reopen since starts another)."""
    fields: dict[str, Any] = {}
    if _same_cycle(current, data.reopen_count):
        fields["resolve_due_at"] = data.due_at
    judged = {"resolve_due_at": data.due_at, "on_time": data.on_time}
    if data.resolution_number is not None:
        for index, resolution in enumerate(current.get("resolutions") or []):
            if resolution.get("number") == data.resolution_number:
                fields.update({f"resolutions.{index}.{name}": v for name, v in judged.items()})
        if (current.get("resolution") or {}).get("number") == data.resolution_number:
            fields.update({f"resolution.{name}": value for name, value in judged.items()})
    return {"$set": fields} if fields else {}


async def apply_sla_breach_withdrawn(
    *,
    db: AsyncDatabase,
    settings: IntakeSettings,
    event: CloudEvent,
    data: ComplaintSlaBreachWithdrawn,
    now: datetime,
) -> None:
    """A breach routing withdrew (the acknowledgement, wait or resolution was on time; its
    news reached routing after the timer fired): the flags and the escalation level say
    what still stands, and the breach and its escalations stay on the timeline, marked."""
    withdrawal = {"at": data.withdrawn_at, "reason": data.reason, "event_id": event.id}
    await store.mark_withdrawn(
        db=db,
        complaint_id=data.complaint_id,
        org=data.org,
        marks=[
            {
                "action": Action.SLA_BREACHED.value,
                "details.clock": data.clock.value,
                "details.due_at": data.due_at,
                "withdrawn": None,
            },
            # Each rung by its level and time: two rungs one timer climbed share the time.
            *(
                {
                    "action": Action.ESCALATED.value,
                    "details.level": step.level,
                    "details.escalated_at": step.escalated_at,
                    "withdrawn": None,
                }
                for step in data.withdrawn_escalations
            ),
        ],
        withdrawn=withdrawal,
    )

    def decide(current: dict[str, Any]) -> store.Decision:
        withdrawn = [step.model_dump() for step in data.withdrawn_escalations]
        standing = data.escalation.model_dump() if data.escalation is not None else None
        update = (
            _escalation(
                current, withdrawn=withdrawn, withdrawal=withdrawal, standing_after=standing
            )
            if withdrawn
            else {"$set": {}}
        )
        if _breach_withdrawal(current, data.clock.value, data.due_at) is None:
            # Kept, so that the breach itself, delivered again after this, sets no flag.
            breach = {"clock": data.clock.value, "due_at": data.due_at, "withdrawal": withdrawal}
            update["$push"] = {WITHDRAWN_BREACHES: breach}
        if _clock_flags_apply(current, data.clock, data.reopen_count):
            still = {clock.value for clock in data.breached_clocks}
            update["$set"][f"sla.{data.clock.value}_breached"] = data.clock.value in still
            if _same_cycle(current, data.reopen_count):
                update["$set"]["sla_breached"] = bool(still)
        return store.Decision(update)

    await _apply(
        db=db,
        settings=settings,
        event=event,
        now=now,
        data=data,
        action=Action.SLA_BREACH_WITHDRAWN,
        decide=decide,
        details={
            "clock": data.clock.value,
            "due_at": data.due_at,
            "stopped_at": data.stopped_at,
            "reason": data.reason,
            "withdrawn_levels": [step.level for step in data.withdrawn_escalations],
            "escalation_level": data.escalation_level,
        },
    )
    if data.escalation is not None:  # the rung standing after it, as routing named it
        await directory_names.correct(
            db=db,
            org=data.org,
            complaint_id=data.complaint_id,
            departments={},
            staff={data.escalation.escalated_to_id: data.escalation.escalated_to_name},
            now=now,
            settings=settings,
        )


async def apply_responsibility_set(
    *,
    db: AsyncDatabase,
    settings: IntakeSettings,
    event: CloudEvent,
    data: ComplaintResponsibilitySet,
    now: datetime,
) -> None:
    def decide(current: dict[str, Any]) -> store.Decision:
        known_at = (current.get("responsibility") or {}).get("set_at")
        if known_at is not None and as_utc(known_at) > data.set_at:
            # A newer responsibility is on record (a resolution naming it, a later setting):
            # a replayed or late event stays on the timeline only. Until 5 December it
            # overwrote it, and intake disagreed with routing for good.
            return store.UNCHANGED
        party = data.responsible_party.value if data.responsible_party else None
        fields: dict[str, Any] = {
            "responsible_department": data.responsible_department,
            "responsible_party": party,
            "responsibility": {
                "department": data.responsible_department,
                "party": party,
                "set_by": data.set_by,
                "set_at": data.set_at,
            },
        }
        return store.Decision({"$set": fields})

    await _apply(
        db=db,
        settings=settings,
        event=event,
        now=now,
        data=data,
        action=Action.RESPONSIBILITY_SET,
        decide=decide,
        details={
            "responsible_department": data.responsible_department,
            "responsible_party": data.responsible_party,
            "by": data.set_by,
        },
    )


async def apply_regulatory_report_filed(
    *,
    db: AsyncDatabase,
    settings: IntakeSettings,
    event: CloudEvent,
    data: ComplaintRegulatoryReportFiled,
    now: datetime,
) -> None:
    """The major incident's report reached the authority: the record says when, by whom and
    with what reference, and its deadline is done (met or missed, as routing judged it)
    rather than pending. The warning and breach flags stay: they happened."""

    def decide(current: dict[str, Any]) -> store.Decision:
        fields: dict[str, Any] = {
            "regulatory_report": {
                "reference": data.reference,
                "filed_by": data.filed_by,
                "filed_at": data.filed_at,
                "on_time": data.on_time,
            }
        }
        if data.due_at is not None:
            fields["regulatory_report_due_at"] = data.due_at
        return store.Decision({"$set": fields})

    await _apply(
        db=db,
        settings=settings,
        event=event,
        now=now,
        data=data,
        action=Action.REGULATORY_REPORT_FILED,
        decide=decide,
        details={
            "reference": data.reference,
            "by": data.filed_by,
            "due_at": data.due_at,
            "on_time": data.on_time,
        },
    )


async def record_followup_progress(
    *,
    db: AsyncDatabase,
    settings: IntakeSettings,
    event: CloudEvent,
    data: FollowupScheduled | FollowupRescheduled | FollowupAttempted | FollowupCancelled,
    now: datetime,
) -> None:
    """Scheduled, rescheduled, attempted and cancelled checks only go on the timeline (the
    record shows no check's due time), each entry dated when the event happened; a
    redelivered event adds none (its id is kept on the record)."""
    action = Action(cause_of(event).replace(".", "_"))
    details = data.model_dump(mode="json", exclude={"complaint_id", "org", "branch"})

    def decide(current: dict[str, Any]) -> store.Decision:
        return store.UNCHANGED

    await _apply(
        db=db,
        settings=settings,
        event=event,
        now=now,
        data=data,
        action=action,
        decide=decide,
        details=details,
    )


def outcome_rank(satisfaction: dict[str, Any]) -> tuple[int, bool, int]:
    """How current a follow-up outcome is; the record keeps the highest.

    A later resolution's outcome before an earlier one's; within a resolution, the
    customer's answer (satisfied or not) before no answer, so a reached score is never
    replaced by a later check nobody answered; then the later check of the series (the
    call a week later says whether the fix held). Follow-up's statistics count each
    complaint's satisfaction by the same order (``followup.reports``).
    """
    return (
        satisfaction.get("resolution_number") or 0,
        satisfaction.get("outcome") != FollowupOutcome.NO_RESPONSE.value,
        satisfaction.get("sequence") or 0,
    )


def _closed_by_an_administrator_since(current: dict[str, Any], moment: datetime) -> bool:
    """Whether the complaint is closed by an administrator at or after ``moment``, to the
    millisecond: the stored ``closed_at`` is, and a close within the millisecond after the
    answer read as before it (the answer then reopened the closed complaint)."""
    return (
        current["status"] == Status.CLOSED.value
        and current.get("closed_via") == ClosedVia.ADMIN.value
        and current.get("closed_at") is not None
        and current["closed_at"] >= bson_time(moment)
    )


async def apply_followup_completed(
    *,
    db: AsyncDatabase,
    settings: IntakeSettings,
    event: CloudEvent,
    data: FollowupCompleted,
    now: datetime,
) -> None:
    """The outcome of the latest resolution becomes the complaint's satisfaction: satisfied or
    unreachable closes the complaint, unsatisfied reopens it. Any other outcome (an earlier
    resolution's, no answer after a reached one) is on the timeline only."""

    def decide(current: dict[str, Any]) -> store.Decision:
        satisfaction = data.model_dump(
            mode="python",
            include={
                "followup_id",
                "resolution_number",
                "sequence",
                "score",
                "problem_solved",
                "comment",
                "completed_at",
            },
        )
        satisfaction["outcome"] = data.outcome.value
        known = current.get("satisfaction")
        if known is not None and outcome_rank(satisfaction) < outcome_rank(known):
            return store.UNCHANGED  # the record holds a more current outcome
        recorded = store.Decision({"$set": {"satisfaction": satisfaction}})
        if data.resolution_number != current.get("resolution_count"):
            return recorded  # a check of an earlier resolution: no status change
        unsatisfied = data.outcome is FollowupOutcome.UNSATISFIED
        if _closed_by_an_administrator_since(current, data.completed_at):
            # The administrator's close ended the call-backs (follow-up cancels them): an
            # answer consumed after it (from the dead-letter topic, days later) is recorded,
            # and reopened the complaint they had closed until 5 December.
            return recorded
        command = Command.REOPEN if unsatisfied else Command.CLOSE
        new_status = _status_after(current, command)
        if new_status is None:
            return recorded
        if unsatisfied:
            reason = "customer not satisfied at follow-up"
            build = commands.reopen_build(reason=reason, reopened_by="followup")
            entry = (Action.REOPENED, {"reason": reason})
            # Reopened when applied here: the new cycle's clocks start then. Dated at the
            # answer, one consumed days later (the broker away, a replayed dead letter)
            # started a resolve clock breached already, escalating at once.
            changed_at = max(event.time, now)
        else:
            reason = f"follow-up {data.outcome.value}"
            build = commands.close_build(
                reason=reason, closed_by="followup", via=ClosedVia.FOLLOWUP
            )
            entry = (Action.CLOSED, {"reason": reason, "closed_via": ClosedVia.FOLLOWUP.value})
            changed_at = event.time
        update, events = build(current, changed_at)
        update.setdefault("$set", {})["satisfaction"] = satisfaction
        # The outcome's own entry first, then the closure or reopening it caused.
        return store.Decision(update, events, new_status, [entry], entries_at=changed_at)

    await _apply(
        db=db,
        settings=settings,
        event=event,
        now=now,
        data=data,
        action=Action.FOLLOWUP_COMPLETED,
        decide=decide,
        details={
            "followup_id": data.followup_id,
            "outcome": data.outcome.value,
            "score": data.score,
            "attempts": data.attempts,
        },
    )
    if data.outcome is FollowupOutcome.UNSATISFIED:
        # Reopened (maybe from closed): the newest names again, as for a supervisor's reopen.
        await directory_names.shown_again_by_id(
            db=db, complaint_id=data.complaint_id, now=now, settings=settings
        )


async def apply_branch_updated(
    *,
    db: AsyncDatabase,
    settings: IntakeSettings,
    event: CloudEvent,
    data: BranchUpdated,
    now: datetime,
) -> None:
    """Routing's directory owns branches; intake keeps the facts it needs (the time zone).
    The branch is not a complaint: nothing here is stamped with ``now``."""
    await reference_numbers.record_branch(db=db, branch=data)


async def apply_department_updated(
    *,
    db: AsyncDatabase,
    settings: IntakeSettings,
    event: CloudEvent,
    data: DepartmentUpdated,
    now: datetime,
) -> None:
    """Routing's directory owns departments: the complaints not finished for good show the
    department's newest name (``directory_names``). Not a change of any complaint's story:
    nothing goes on a timeline."""
    await directory_names.record(db=db, announcement=data, now=now, settings=settings)


async def apply_staff_updated(
    *,
    db: AsyncDatabase,
    settings: IntakeSettings,
    event: CloudEvent,
    data: StaffUpdated,
    now: datetime,
) -> None:
    """Routing's directory owns staff: the complaints not finished for good that a person
    owns or was escalated to show their newest name (``directory_names``)."""
    await directory_names.record(db=db, announcement=data, now=now, settings=settings)
