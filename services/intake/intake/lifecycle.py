"""The complaint lifecycle: one function decides every state change."""

from __future__ import annotations

from enum import StrEnum


class Status(StrEnum):
    RECEIVED = "received"
    ACKNOWLEDGED = "acknowledged"
    ASSIGNED = "assigned"
    IN_PROGRESS = "in_progress"
    ESCALATED = "escalated"
    PENDING_CUSTOMER = "pending_customer"
    RESOLVED = "resolved"
    CLOSED = "closed"
    REOPENED = "reopened"
    REJECTED = "rejected"
    WITHDRAWN = "withdrawn"


class Command(StrEnum):
    """What can happen to a complaint, from an HTTP command or a consumed event."""

    ASSIGN = "assign"
    NOTE = "note"
    ACKNOWLEDGE = "acknowledge"
    ESCALATE = "escalate"
    WAIT_FOR_CUSTOMER = "pending_customer"
    RESUME = "resume"
    RESOLVE = "resolve"
    CLOSE = "close"
    REOPEN = "reopen"
    REJECT = "reject"
    WITHDRAW = "withdraw"


OPEN_STATUSES = frozenset(
    {
        Status.RECEIVED,
        Status.ACKNOWLEDGED,
        Status.ASSIGNED,
        Status.IN_PROGRESS,
        Status.ESCALATED,
        Status.PENDING_CUSTOMER,
        Status.REOPENED,
    }
)
TERMINAL_STATUSES = frozenset({Status.CLOSED, Status.REJECTED, Status.WITHDRAWN})

_WORKING = OPEN_STATUSES - {Status.PENDING_CUSTOMER}

# command -> (statuses it is legal from, resulting status; None keeps the current one)
_RULES: dict[Command, tuple[frozenset[Status], Status | None]] = {
    Command.ACKNOWLEDGE: (
        frozenset({Status.RECEIVED, Status.ASSIGNED, Status.REOPENED}),
        Status.ACKNOWLEDGED,
    ),
    Command.ESCALATE: (_WORKING, Status.ESCALATED),
    Command.WAIT_FOR_CUSTOMER: (_WORKING - {Status.RECEIVED}, Status.PENDING_CUSTOMER),
    Command.RESUME: (frozenset({Status.PENDING_CUSTOMER}), Status.IN_PROGRESS),
    Command.RESOLVE: (OPEN_STATUSES, Status.RESOLVED),
    Command.CLOSE: (frozenset({Status.RESOLVED}), Status.CLOSED),
    Command.REOPEN: (frozenset({Status.RESOLVED, Status.CLOSED}), Status.REOPENED),
    Command.REJECT: (
        frozenset({Status.RECEIVED, Status.ACKNOWLEDGED, Status.ASSIGNED}),
        Status.REJECTED,
    ),
    Command.WITHDRAW: (OPEN_STATUSES, Status.WITHDRAWN),
}


class InvalidTransition(Exception):
    def __init__(self, *, current: Status, command: Command) -> None:
        super().__init__(f"cannot {command.value} a complaint that is {current.value}")
        self.current = current
        self.command = command


def transition(*, current: Status, command: Command) -> Status:
    """Return the status after ``command``, or raise InvalidTransition.

    Assignment moves a just-received (or reopened) complaint to ``assigned`` and
    otherwise leaves a still-open complaint's status alone. A note may be added
    at any time; on an acknowledged, assigned or reopened complaint it marks the
    work as started (``in_progress``).
    """
    if command is Command.NOTE:
        if current in {Status.ACKNOWLEDGED, Status.ASSIGNED, Status.REOPENED}:
            return Status.IN_PROGRESS
        return current
    if command is Command.ASSIGN:
        if current not in OPEN_STATUSES:
            raise InvalidTransition(current=current, command=command)
        if current in {Status.RECEIVED, Status.REOPENED}:
            return Status.ASSIGNED
        return current
    allowed_from, target = _RULES[command]
    if current not in allowed_from:
        raise InvalidTransition(current=current, command=command)
    return target or current
