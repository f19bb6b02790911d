"""The complaint's workflow: one table decides every status change.

The status is the workflow only. What happened along the way (acknowledged,
escalated, work started, responsibility, SLA breaches) are facts on the record,
never statuses, so they cannot block a later command: acknowledging an
escalated or breached complaint is as legal as acknowledging a fresh one.
Routing's events map onto intake's own commands (an assignment is ``assign``);
escalations, SLA warnings and breaches, responsibility are facts only. Beside the
table: the fields every event of a complaint carries (``event_base``, ``customer_contact``).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from complaints_shared.events import CustomerContact
from complaints_shared.transitions import TransitionTable


class Status(StrEnum):
    RECEIVED = "received"
    OPEN = "open"
    PENDING_CUSTOMER = "pending_customer"
    RESOLVED = "resolved"
    CLOSED = "closed"
    REOPENED = "reopened"
    REJECTED = "rejected"
    WITHDRAWN = "withdrawn"


class Command(StrEnum):
    """What can happen to a complaint, from an HTTP command or a consumed event."""

    ASSIGN = "assign"
    ACKNOWLEDGE = "acknowledge"
    NOTE = "note"
    WAIT_FOR_CUSTOMER = "pending_customer"
    RESUME = "resume"
    # The table's word for resuming a complaint that was paused while reopened (``table_command``).
    RESUME_REOPENED = "resume_reopened"
    # ... and for one paused before anyone took it up (neither routed nor acknowledged).
    RESUME_RECEIVED = "resume_received"
    RESOLVE = "resolve"
    RECORD_REMEDY = "record_remedy"
    CLOSE = "close"
    REOPEN = "reopen"
    REJECT = "reject"
    WITHDRAW = "withdraw"
    RECLASSIFY = "reclassify"


OPEN_STATUSES = frozenset({Status.RECEIVED, Status.OPEN, Status.PENDING_CUSTOMER, Status.REOPENED})
TERMINAL_STATUSES = frozenset({Status.CLOSED, Status.REJECTED, Status.WITHDRAWN})
# Finished for now: the complaint left the open states (resolved may still reopen).
FINISHED_STATUSES = frozenset({Status.RESOLVED}) | TERMINAL_STATUSES

_R, _O, _P, _RE = Status.RECEIVED, Status.OPEN, Status.PENDING_CUSTOMER, Status.REOPENED


def _stay(command: Command, states: frozenset[Status]) -> dict[tuple[Status, Command], Status]:
    return {(state, command): state for state in states}


# (state, command) -> next state. A pair that is not here is illegal (409).
TRANSITIONS: dict[tuple[Status, Command], Status] = {
    # Routing took the complaint: a received one is now being handled.
    (_R, Command.ASSIGN): _O,
    **_stay(Command.ASSIGN, frozenset({_O, _P, _RE})),
    # 受理 from any open state; the acknowledgement itself is a fact (once, see commands).
    (_R, Command.ACKNOWLEDGE): _O,
    **_stay(Command.ACKNOWLEDGE, frozenset({_O, _P, _RE})),
    # Notes never change the workflow; they may be added even to a finished complaint.
    **_stay(Command.NOTE, frozenset(Status)),
    # 补正: the customer is asked for what is missing, before the complaint is taken up too
    # (refused until 5 December while it was received: unroutable, or not routed yet).
    **{(state, Command.WAIT_FOR_CUSTOMER): _P for state in (_R, _O, _RE)},
    # Back to the status the wait began in.
    (_P, Command.RESUME): _O,
    (_P, Command.RESUME_REOPENED): _RE,
    (_P, Command.RESUME_RECEIVED): _R,
    **{(state, Command.RESOLVE): Status.RESOLVED for state in OPEN_STATUSES},
    # A remedy given later (a goodwill payment) is a fact of the latest resolution, no reopen.
    **_stay(Command.RECORD_REMEDY, frozenset({Status.RESOLVED, Status.CLOSED})),
    # Closing confirms a resolution; an open complaint ends by resolve, reject or withdraw.
    (Status.RESOLVED, Command.CLOSE): Status.CLOSED,
    (Status.RESOLVED, Command.REOPEN): _RE,
    (Status.CLOSED, Command.REOPEN): _RE,
    # 不予受理 may be found at any point before a resolution: while waiting on the customer's
    # evidence, or for what a reopen asks.
    **{(state, Command.REJECT): Status.REJECTED for state in OPEN_STATUSES},
    **{(state, Command.WITHDRAW): Status.WITHDRAWN for state in OPEN_STATUSES},
    # Severity, category and flags change while the complaint is worked (a later call reveals
    # a medical error); a finished one keeps the classification it was finished under.
    **_stay(Command.RECLASSIFY, OPEN_STATUSES),
}


TABLE: TransitionTable[Status, Command] = TransitionTable(what="complaint", rules=TRANSITIONS)


def transition(*, current: Status, command: Command) -> Status:
    """The status after ``command``, or InvalidTransition (a 409 naming both)."""
    return TABLE.next(current=current, command=command)


def is_legal(*, current: Status, command: Command) -> bool:
    return TABLE.allows(current=current, command=command)


def table_command(document: dict[str, Any], command: Command) -> Command:
    """The table's command for ``command`` asked of ``document``.

    Resuming returns the complaint to the status the wait began in. Waiting is legal from
    ``received``, ``open`` and ``reopened``, and no transition leads a reopened complaint
    back to ``open``: a complaint reopened before is waiting from ``reopened``; one neither
    routed nor acknowledged (a routing or an acknowledgement during the wait takes it up,
    as it would have before) from ``received``.
    """
    if command is not Command.RESUME or document["status"] != Status.PENDING_CUSTOMER.value:
        return command
    if document.get("reopen_count", 0) > 0:
        return Command.RESUME_REOPENED
    if document.get("assignment") is None and document.get("acknowledged_at") is None:
        return Command.RESUME_RECEIVED
    return command


class Action(StrEnum):
    """The timeline's vocabulary: what happened, past tense, words joined by ``_``."""

    RECEIVED = "received"
    ACKNOWLEDGED = "acknowledged"
    NOTE_ADDED = "note_added"
    PAUSED_FOR_CUSTOMER = "paused_for_customer"
    RESUMED = "resumed"
    RESOLVED = "resolved"
    REJECTED = "rejected"
    WITHDRAWN = "withdrawn"
    REOPENED = "reopened"
    CLOSED = "closed"
    REMEDY_RECORDED = "remedy_recorded"
    RECLASSIFIED = "reclassified"
    ASSIGNED = "assigned"
    QUEUED = "queued"
    # Routing announced the assignment again, unchanged, with new due times (a resume, a
    # reopen, a reclassification).
    DUE_TIMES_UPDATED = "due_times_updated"
    FOUND_UNROUTABLE = "found_unroutable"
    REASSIGNED = "reassigned"
    ESCALATED = "escalated"
    SLA_WARNED = "sla_warned"
    SLA_BREACHED = "sla_breached"
    SLA_STOPPED = "sla_stopped"
    SLA_BREACH_WITHDRAWN = "sla_breach_withdrawn"
    RESPONSIBILITY_SET = "responsibility_set"
    REGULATORY_REPORT_FILED = "regulatory_report_filed"
    FOLLOWUP_SCHEDULED = "followup_scheduled"
    FOLLOWUP_RESCHEDULED = "followup_rescheduled"
    FOLLOWUP_ATTEMPTED = "followup_attempted"
    FOLLOWUP_CANCELLED = "followup_cancelled"
    FOLLOWUP_COMPLETED = "followup_completed"


# The timeline word of each HTTP command.
COMMAND_ACTIONS: dict[Command, Action] = {
    Command.ACKNOWLEDGE: Action.ACKNOWLEDGED,
    Command.NOTE: Action.NOTE_ADDED,
    Command.WAIT_FOR_CUSTOMER: Action.PAUSED_FOR_CUSTOMER,
    Command.RESUME: Action.RESUMED,
    Command.RESOLVE: Action.RESOLVED,
    Command.REJECT: Action.REJECTED,
    Command.WITHDRAW: Action.WITHDRAWN,
    Command.REOPEN: Action.REOPENED,
    Command.CLOSE: Action.CLOSED,
    Command.RECORD_REMEDY: Action.REMEDY_RECORDED,
    Command.RECLASSIFY: Action.RECLASSIFIED,
}


def customer_contact(document: dict[str, Any]) -> CustomerContact:
    """The customer as the complaint's events carry them."""
    customer = document["customer"]
    return CustomerContact(
        name=customer["name"],
        phone=customer.get("phone"),
        email=customer.get("email"),
        external_id=customer.get("external_id"),
        preferred_channel=customer.get("preferred_contact_channel", "phone"),
        language=customer.get("language", "zh"),
        vip=customer.get("vip", False),
    )


def event_base(document: dict[str, Any]) -> dict[str, str]:
    """The fields every event of a complaint starts with."""
    return {"complaint_id": document["_id"], "org": document["org"], "branch": document["branch"]}
