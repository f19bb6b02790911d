"""The assignment's transition table: every change of an assignment's status is decided here.

```
            ┌──assign──▶ open ◀──assign (from the queue)── queued ◀──queue── (new)
 (new) ─────┤            │  ▲ reassign / reassign_to_queue ▲ │
            └──queue───▶ queued ─────────────────────────────┘
 (new) ──no_route──▶ unroutable ──assign──▶ open     unroutable ──queue──▶ queued
 open / queued / unroutable ──resolve──▶ resolved ──close──▶ closed
 open / queued / unroutable ──reject──▶ rejected   … ──withdraw──▶ withdrawn
 open / queued / unroutable ──close──▶ closed (an administrator's close)
 resolved / closed ──reopen──▶ open     resolved / closed ──reopen_to_queue──▶ queued
 resolved / closed ──no_route──▶ unroutable (reopened, it never had a route)
```

Commands that keep the status (acknowledge, pause, resume, escalate, fire_timers)
are legal only while the complaint is being worked (open or queued); an unroutable
complaint has no clocks and no chain yet, so they have nothing to do there.
Responsibility and the regulatory report may be recorded at any time. ``None`` is an
assignment not created yet. ``routing.unroutable`` enters and leaves ``unroutable``.
"""

from __future__ import annotations

from enum import StrEnum

from complaints_shared.transitions import TransitionTable
from routing.models import AssignmentStatus

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
    **{(state, command): state for state in (*UNFINISHED, *FINISHED) for command in _ANY_TIME},
    **{(state, Command.RESOLVE): RESOLVED for state in UNFINISHED},
    **{(state, Command.REJECT): REJECTED for state in UNFINISHED},
    **{(state, Command.WITHDRAW): WITHDRAWN for state in UNFINISHED},
    **{(state, Command.CLOSE): CLOSED for state in (*UNFINISHED, RESOLVED)},
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
