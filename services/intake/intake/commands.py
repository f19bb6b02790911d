"""Lifecycle commands from the HTTP API: each is one transition, one event, one timeline entry."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from complaints_shared.auth import Principal, Role
from complaints_shared.events import (
    ClosedVia,
    ComplaintAcknowledged,
    ComplaintClosed,
    ComplaintNoteAdded,
    ComplaintPendingCustomer,
    ComplaintReclassified,
    ComplaintRejected,
    ComplaintRemedyRecorded,
    ComplaintReopened,
    ComplaintResolved,
    ComplaintResumed,
    ComplaintWithdrawn,
    EventData,
    EventType,
    Remedy,
)
from complaints_shared.failures import redacted_error
from complaints_shared.idempotency import CommandKey
from complaints_shared.logs import get_logger
from complaints_shared.mongo import bson_time, merge_updates
from complaints_shared.problems import invalid, invalid_fields, not_found
from complaints_shared.transitions import InvalidTransition
from intake import directory_names, store
from intake.lifecycle import (
    COMMAND_ACTIONS,
    Command,
    Status,
    customer_contact,
    event_base,
    table_command,
    transition,
)
from intake.models import (
    MAX_NOTES,
    MAX_RECORD_BYTES,
    MAX_REMEDIES,
    MAX_RESOLUTIONS,
    MAX_TIMELINE_FOR_COMMANDS,
    AcknowledgeRequest,
    CloseRequest,
    NoteCreate,
    PendingCustomerRequest,
    ReclassifyRequest,
    RejectRequest,
    RemedyIn,
    ReopenRequest,
    ResolveRequest,
    ResumeRequest,
    WithdrawRequest,
)
from intake.settings import IntakeSettings

log = get_logger(__name__)

# Who may run which command (admins may run all). Documented in docs/intake.md.
COMMAND_ROLES: dict[Command, tuple[Role, ...]] = {
    Command.ACKNOWLEDGE: (Role.AGENT, Role.SUPERVISOR),
    Command.NOTE: (Role.AGENT, Role.SUPERVISOR),
    Command.WAIT_FOR_CUSTOMER: (Role.AGENT, Role.SUPERVISOR),
    Command.RESUME: (Role.AGENT, Role.SUPERVISOR),
    Command.RESOLVE: (Role.AGENT, Role.SUPERVISOR),
    Command.REJECT: (Role.AGENT, Role.SUPERVISOR),
    Command.WITHDRAW: (Role.AGENT, Role.SUPERVISOR),
    Command.REOPEN: (Role.SUPERVISOR,),
    Command.CLOSE: (Role.SUPERVISOR,),
    Command.RECORD_REMEDY: (Role.AGENT, Role.SUPERVISOR),
    Command.RECLASSIFY: (Role.SUPERVISOR,),
}

Outcome = tuple[dict[str, Any], list[tuple[EventType, EventData]]]
# An outcome with what the command found on the record, added to its timeline entry.
RecordedOutcome = tuple[dict[str, Any], list[tuple[EventType, EventData]], dict[str, Any]]
Build = Callable[[dict[str, Any], datetime], Outcome | RecordedOutcome]

# What a complaint whose timeline is full may still be asked: to end it.
ENDING_COMMANDS = frozenset({Command.REJECT, Command.WITHDRAW, Command.CLOSE})


def _within_bounds(current: dict[str, Any], command: Command) -> None:
    """A command taking a full timeline or record further is a 409
    (``MAX_TIMELINE_FOR_COMMANDS``, ``MAX_RECORD_BYTES``)."""
    if command in ENDING_COMMANDS:
        return
    length = current.get(store.TIMELINE_LENGTH, 0)
    if length >= MAX_TIMELINE_FOR_COMMANDS:
        full = f"timeline holds {length} entries, the most commands may add to"
    elif current.get(store.RECORD_BYTES, 0) >= MAX_RECORD_BYTES:
        full = f"record holds about {MAX_RECORD_BYTES // 2**20} MB, the most commands may add to"
    else:
        return
    raise _refused(
        current,
        command,
        f"complaint {current.get('reference')}'s {full}; it may still be rejected, withdrawn "
        "or closed",
    )


def _refused(current: dict[str, Any], command: Command, reason: str) -> InvalidTransition:
    """``command`` refused for ``reason`` although the table allows it (a 409 naming both)."""
    return InvalidTransition(
        current=Status(current["status"]), command=command, what="complaint", reason=reason
    )


async def run_command(
    *,
    db: AsyncDatabase,
    settings: IntakeSettings,
    principal: Principal,
    complaint_id: str,
    command: Command,
    build: Build,
    now: datetime,
    details: dict[str, Any] | None = None,
    command_key: CommandKey | None = None,
) -> dict[str, Any]:
    """Check the transition, apply ``build``'s update and events atomically, or raise 409/404.
    A ``command_key`` applied before answers the complaint as it is (``replayed``)."""

    def decide(current: dict[str, Any]) -> store.Decision:
        asked = table_command(current, command)
        status = transition(current=Status(current["status"]), command=asked)
        _within_bounds(current, command)
        update, events, *found = build(current, now)
        return store.Decision(update, events, status, details=found[0] if found else {})

    try:
        document = await store.change(
            db=db,
            settings=settings,
            complaint_id=complaint_id,
            scope=principal.scope_filter(),
            actor=principal.subject,
            action=COMMAND_ACTIONS[command],
            decide=decide,
            now=now,
            details=details,
            command_key=command_key,
        )
    except InvalidTransition as exc:
        raise exc.about(what="complaint", identifier=complaint_id) from None
    if document is None:
        raise not_found(what="complaint", identifier=complaint_id)
    if command is Command.REOPEN:
        document = await _names_shown_again(db=db, settings=settings, document=document, now=now)
    return document


async def _names_shown_again(
    *, db: AsyncDatabase, settings: IntakeSettings, document: dict[str, Any], now: datetime
) -> dict[str, Any]:
    """The reopened complaint with the directory's newest names (closed, it kept those it
    ended with). After the reopen is committed: a failure here is logged, not the answer
    (a 503 would invite a retry), and the names wait for the next rename of their own."""
    try:
        renamed = await directory_names.shown_again(
            db=db, complaint=document, now=now, settings=settings
        )
    except Exception as exc:
        log.warning("names_not_shown_after_reopen", error=redacted_error(exc))
        return document
    return renamed or document


def _work_started(now: datetime) -> dict[str, Any]:
    """The first note, wait or resolution is when work on the complaint visibly started."""
    return {"$min": {"work_started_at": now}}


def standing_still(document: dict[str, Any], *, since: datetime) -> list[str]:
    """The due times of ``document`` that a wait on the customer from ``since`` leaves
    unknown: routing pauses the acknowledge (unless acknowledged: then it is stopped) and
    resolve clocks, so a due time still to come then moves by however long the customer
    takes. The record drops it until routing announces it again on resume, and a complaint
    waiting on the customer is not overdue in the due-time lists or the reports. One that
    had passed before the wait stays: that clock was overdue already."""
    names = ["resolve_due_at"]
    if (
        document.get("acknowledged_at") is None
        and document.get(store.ACKNOWLEDGE_STOPPED_AT) is None
    ):
        names.insert(0, "acknowledge_due_at")
    # To the millisecond, as ``since`` is stored and as routing judges the pause: one in the
    # due time's millisecond is in time, and that clock moves by the wait.
    return [
        name
        for name in names
        if (due := document.get(name)) is not None and bson_time(due) >= bson_time(since)
    ]


def _wait_ended() -> dict[str, Any]:
    """A complaint resolved, rejected or withdrawn while waiting on the customer waits no more."""
    return {"$unset": {"pending_customer_since": ""}}


def _ended_for_good() -> dict[str, Any]:
    """A complaint rejected or withdrawn waits for nothing any more: neither the customer nor
    a route (``unroutable`` stayed on the record of one no rule routed, for good, while
    routing had finished it)."""
    return {"$unset": {"pending_customer_since": "", "unroutable": ""}}


# How far before the acknowledgement a promised response time may lie: a client's clock a
# little behind ours, not a promise broken as it is made.
PROMISE_CLOCK_SKEW = timedelta(minutes=1)


def acknowledge(request: AcknowledgeRequest, principal: Principal) -> Build:
    def build(current: dict[str, Any], now: datetime) -> Outcome:
        if current.get("acknowledged_at") is not None:
            raise _refused(
                current,
                Command.ACKNOWLEDGE,
                f"the complaint was already acknowledged at "
                f"{current['acknowledged_at'].isoformat()}",
            )
        promised = request.promised_response_at
        if promised is not None and promised < now - PROMISE_CLOCK_SKEW:
            # 时间承诺: stored until 5 December, a commitment broken the moment it was recorded.
            raise invalid(
                "promised_response_at",
                f"the promised response time {promised.isoformat()} has passed "
                f"(it is now {now.isoformat()})",
            )
        due = current.get("acknowledge_due_at")
        breached = (current.get("sla") or {}).get("acknowledge_breached", False)
        # A finish stopped the clock before anyone acknowledged (this is a reopened
        # complaint): the clock was answered then, and routing's verdict stands.
        stopped = current.get(store.ACKNOWLEDGE_STOPPED_AT)
        answered = stopped if stopped is not None else now
        acknowledgement = {
            "acknowledged_by": principal.subject,
            "acknowledged_at": now,
            "promised_response_at": request.promised_response_at,
            "message_to_customer": request.message_to_customer,
            # Late still counts: it stops routing's acknowledge clock all the same. Provisional:
            # routing's verdict on its clock (complaint.sla_stopped) replaces it.
            "late": (breached and stopped is None)
            or (due is not None and bson_time(answered) > bson_time(due)),
        }
        event = ComplaintAcknowledged(**event_base(current), **acknowledgement)
        return (
            {"$set": {"acknowledgement": acknowledgement, "acknowledged_at": now}},
            [(EventType.COMPLAINT_ACKNOWLEDGED, event)],
        )

    return build


def add_note(request: NoteCreate, principal: Principal) -> Build:
    def build(current: dict[str, Any], now: datetime) -> Outcome:
        if len(current.get("notes") or []) >= MAX_NOTES:
            raise _refused(
                current,
                Command.NOTE,
                f"complaint {current.get('reference')} holds {MAX_NOTES} notes, the most one may",
            )
        note = {
            "id": store.new_id(),
            "author": principal.subject,
            "visibility": request.visibility.value,
            "text": request.text,
            "added_at": now,
        }
        event = ComplaintNoteAdded(
            **event_base(current),
            note_id=note["id"],
            author=note["author"],
            visibility=note["visibility"],
            text=note["text"],
            added_at=now,
        )
        update = merge_updates({"$push": {"notes": note}}, _work_started(now))
        return update, [(EventType.COMPLAINT_NOTE_ADDED, event)]

    return build


def wait_for_customer(request: PendingCustomerRequest, principal: Principal) -> Build:
    def build(current: dict[str, Any], now: datetime) -> Outcome:
        event = ComplaintPendingCustomer(
            **event_base(current),
            reason=request.reason,
            paused_by=principal.subject,
            paused_at=now,
        )
        update = merge_updates({"$set": {"pending_customer_since": now}}, _work_started(now))
        paused = standing_still(current, since=now)
        if paused:
            update["$unset"] = dict.fromkeys(paused, "")
        return update, [(EventType.COMPLAINT_PENDING_CUSTOMER, event)]

    return build


def resume(request: ResumeRequest, principal: Principal) -> Build:
    def build(current: dict[str, Any], now: datetime) -> Outcome:
        event = ComplaintResumed(
            **event_base(current), resumed_by=principal.subject, resumed_at=now
        )
        return {"$unset": {"pending_customer_since": ""}}, [(EventType.COMPLAINT_RESUMED, event)]

    return build


def _stored_remedy(remedy: RemedyIn) -> dict[str, Any]:
    stored: dict[str, Any] = remedy.model_dump(mode="json")
    if remedy.amount is not None:
        stored["currency"] = remedy.currency or "CNY"
        # Integer minor units so reports can sum amounts exactly in MongoDB.
        stored["amount_cents"] = int(remedy.amount * 100)
    return stored


def _stored_remedies(request: ResolveRequest) -> list[dict[str, Any]]:
    return [_stored_remedy(remedy) for remedy in request.remedies]


def _check_responsible_department(request: ResolveRequest, principal: Principal) -> None:
    """A department named as ``BRANCH:CODE`` must be of a branch the token covers: another
    branch's is answered like an unknown one, as routing's responsibility route answers it
    (docs/security.md). Intake does not hold the directory; routing keeps what it is sent."""
    named = request.responsible_department or ""
    branch, colon, _ = named.partition(":")
    if colon and not principal.can_see(org=principal.org, branch=branch):
        raise invalid("responsible_department", f"unknown department {named!r}")


def resolve(request: ResolveRequest, principal: Principal) -> Build:
    _check_responsible_department(request, principal)

    def build(current: dict[str, Any], now: datetime) -> Outcome:
        if current.get("resolution_count", 0) >= MAX_RESOLUTIONS:
            raise _refused(
                current,
                Command.RESOLVE,
                f"complaint {current.get('reference')} was resolved {MAX_RESOLUTIONS} times, "
                "the most one may; it may still be rejected or withdrawn",
            )
        number = current.get("resolution_count", 0) + 1
        remedies = _stored_remedies(request)
        due = current.get("resolve_due_at")
        resolution = {
            "number": number,
            "summary": request.summary,
            "root_cause": request.root_cause,
            "responsible_department": request.responsible_department,
            "responsible_party": request.responsible_party,
            "remedies": remedies,
            "customer_accepted": request.customer_accepted,
            "resolved_by": principal.subject,
            "resolved_at": now,
            # This cycle's deadline (from registration, or from the reopen): the on-time
            # figure of each cycle is judged against its own due time. Provisional (unknown
            # while the clock is paused): routing's verdict (complaint.sla_stopped) replaces
            # both with its clock's final due time and whether it was met.
            "resolve_due_at": due,
            "on_time": None if due is None else bson_time(now) <= bson_time(due),
        }
        assignment = current.get("assignment") or {}
        named = bool(request.responsible_department or request.responsible_party)
        event = ComplaintResolved(
            **event_base(current),
            reference=current["reference"],
            category=current["category"],
            severity=current["severity"],
            resolution_number=number,
            summary=request.summary,
            root_cause=request.root_cause,
            responsible_department=request.responsible_department,
            responsible_party=request.responsible_party,
            remedies=[Remedy.model_validate(remedy) for remedy in remedies],
            customer_accepted=request.customer_accepted,
            department=assignment.get("department"),
            owner_id=assignment.get("owner_id"),
            resolved_by=principal.subject,
            customer=customer_contact(current),
            subject=current["subject"],
            resolved_at=now,
            responsibility_set_at=_responsibility_stamp(current, now=now) if named else None,
        )
        fields: dict[str, Any] = {
            "resolution": resolution,
            "resolution_count": number,
            "resolved_at": now,
            "finished_at": now,
        }
        # Named at resolution, responsibility is a fact of the record like one set in routing.
        # Either half given sets it whole, the other half as it stood: a party named alone
        # left ``responsibility`` telling routing's earlier party, by routing, against the
        # ``responsible_party`` the reports count.
        if named:
            department = request.responsible_department or current.get("responsible_department")
            party = (
                request.responsible_party.value
                if request.responsible_party
                else current.get("responsible_party")
            )
            fields["responsible_party"] = party
            if department:  # ``responsibility`` names a department (a party alone has none)
                fields["responsible_department"] = department
                fields["responsibility"] = {
                    "department": department,
                    "party": party,
                    "set_by": principal.subject,
                    "set_at": event.responsibility_set_at,
                }
        update = merge_updates(
            {
                "$set": fields,
                "$push": {"resolutions": resolution},
                "$min": {"first_resolved_at": now},
            },
            _work_started(now),
            _wait_ended(),
        )
        return update, [(EventType.COMPLAINT_RESOLVED, event)]

    return build


def _responsibility_stamp(current: dict[str, Any], *, now: datetime) -> datetime:
    """When a responsibility named at resolution now is set: after the one on record (a
    supervisor's in routing, stamped by routing's clock), which it overwrites here. Routing
    orders them by these stamps too (``responsibility_set_at``), so both keep the same one
    whatever their clocks; ``now`` alone, behind routing's clock, left routing on the
    setting and intake on the resolution."""
    stamp = bson_time(now)
    known = (current.get("responsibility") or {}).get("set_at")
    if known is None:
        return stamp
    return max(stamp, bson_time(known) + timedelta(milliseconds=1))


def record_remedy(request: RemedyIn, principal: Principal) -> Build:
    """A remedy given after the resolution joins the latest resolution's remedies; the
    complaint stays resolved or closed (no reopen, no new follow-up calls)."""

    def build(current: dict[str, Any], now: datetime) -> Outcome:
        number = current["resolution"]["number"]
        if len(current["resolution"].get("remedies") or []) >= MAX_REMEDIES:
            raise _refused(
                current,
                Command.RECORD_REMEDY,
                f"resolution {number} holds {MAX_REMEDIES} remedies, the most it may",
            )
        stored = {**_stored_remedy(request), "recorded_by": principal.subject, "recorded_at": now}
        pushed = {"resolution.remedies": stored}
        for index, resolution in enumerate(current.get("resolutions") or []):
            if resolution.get("number") == number:
                pushed[f"resolutions.{index}.remedies"] = stored  # what the reports count
        event = ComplaintRemedyRecorded(
            **event_base(current),
            resolution_number=number,
            remedy=Remedy.model_validate(stored),
            recorded_by=principal.subject,
            recorded_at=now,
        )
        return {"$push": pushed}, [(EventType.COMPLAINT_REMEDY_RECORDED, event)]

    return build


def _classification(document: dict[str, Any]) -> dict[str, Any]:
    """Severity, category and flags as the record holds them (flags sorted)."""
    return {
        "severity": document["severity"],
        "category": document["category"],
        "flags": sorted(document.get("flags") or []),
    }


def _check_reclassification_asked(request: ReclassifyRequest) -> None:
    """A reclassification names at least one of severity, category and flags (a 422 naming
    the three)."""
    if request.severity is None and request.category is None and request.flags is None:
        message = "give at least one of severity, category and flags"
        raise invalid_fields(
            [{"field": name, "message": message} for name in ("severity", "category", "flags")]
        )


def reclassify(request: ReclassifyRequest, principal: Principal) -> Build:
    """The classification the request gives (what it leaves out stays), recorded with the
    one before it. Routing re-plans on ``complaint.reclassified`` and announces the due
    times, escalation and major incident that follow from it."""
    _check_reclassification_asked(request)

    def build(current: dict[str, Any], now: datetime) -> RecordedOutcome:
        before = _classification(current)
        after = {
            "severity": request.severity.value if request.severity else before["severity"],
            "category": request.category.value if request.category else before["category"],
            "flags": (
                before["flags"]
                if request.flags is None
                else sorted({flag.value for flag in request.flags})
            ),
        }
        if after == before:
            raise _refused(
                current,
                Command.RECLASSIFY,
                f"complaint {current.get('reference')} is already {after['severity']} "
                f"{after['category']} with flags {after['flags']}",
            )
        number = current.get("reclassification_count", 0) + 1
        event = ComplaintReclassified(
            **event_base(current),
            reclassification_number=number,
            **after,
            previous_severity=before["severity"],
            previous_category=before["category"],
            previous_flags=before["flags"],
            reason=request.reason,
            reclassified_by=principal.subject,
            reclassified_at=now,
        )
        update = {"$set": {**after, "reclassification_count": number}}
        return (
            update,
            [(EventType.COMPLAINT_RECLASSIFIED, event)],
            {"before": before, "after": after},
        )

    return build


def reject(request: RejectRequest, principal: Principal) -> Build:
    def build(current: dict[str, Any], now: datetime) -> Outcome:
        rejection = {
            "reason_code": request.reason_code.value,
            "explanation": request.explanation,
            "rejected_by": principal.subject,
            "rejected_at": now,
        }
        event = ComplaintRejected(**event_base(current), **rejection)
        return (
            {"$set": {"rejection": rejection, "finished_at": now}, **_ended_for_good()},
            [(EventType.COMPLAINT_REJECTED, event)],
        )

    return build


def withdraw(request: WithdrawRequest, principal: Principal) -> Build:
    def build(current: dict[str, Any], now: datetime) -> Outcome:
        event = ComplaintWithdrawn(
            **event_base(current),
            reason=request.reason,
            withdrawn_by=principal.subject,
            withdrawn_at=now,
        )
        return (
            {
                "$set": {"withdrawal_reason": request.reason, "finished_at": now},
                **_ended_for_good(),
            },
            [(EventType.COMPLAINT_WITHDRAWN, event)],
        )

    return build


def reopen(request: ReopenRequest, principal: Principal) -> Build:
    return reopen_build(reason=request.reason, reopened_by=principal.subject)


# A reopen starts a cycle with a fresh resolve clock: ``sla_breached`` (the ``breached``
# filter) tells of the current cycle, as routing's ``breached`` does (docs/intake.md).
NEW_CYCLE_SLA = {"sla_breached": False, "sla.resolve_warning": False, "sla.resolve_breached": False}


def reopen_build(*, reason: str, reopened_by: str) -> Build:
    """Shared by the supervisor command and an unsatisfied follow-up."""

    def build(current: dict[str, Any], now: datetime) -> Outcome:
        event = ComplaintReopened(
            **event_base(current),
            reason=reason,
            reopened_by=reopened_by,
            reopened_at=now,
            reopen_count=current.get("reopen_count", 0) + 1,
            resolution_count=current.get("resolution_count", 0),
        )
        return (
            {
                "$inc": {"reopen_count": 1},
                "$set": {"last_reopen_reason": reason, **NEW_CYCLE_SLA},
                # The new cycle's resolve deadline is routing's to announce.
                "$unset": {
                    "finished_at": "",
                    "closed_at": "",
                    "closed_via": "",
                    "resolve_due_at": "",
                },
            },
            [(EventType.COMPLAINT_REOPENED, event)],
        )

    return build


def close(request: CloseRequest, principal: Principal) -> Build:
    return close_build(reason=request.reason, closed_by=principal.subject, via=ClosedVia.ADMIN)


def close_build(*, reason: str, closed_by: str, via: ClosedVia) -> Build:
    def build(current: dict[str, Any], now: datetime) -> Outcome:
        event = ComplaintClosed(
            **event_base(current),
            reason=reason,
            closed_by=closed_by,
            closed_via=via,
            closed_at=now,
            resolution_count=current.get("resolution_count", 0),
        )
        return (
            {"$set": {"closed_at": now, "finished_at": now, "closed_via": via.value}},
            [(EventType.COMPLAINT_CLOSED, event)],
        )

    return build
