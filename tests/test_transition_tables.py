"""Unit: the transition tables of the assignment and the satisfaction check.

Every legal (state, command) pair is listed here by hand, so a change to a table
shows up as a failing specification; a sample of illegal pairs must be 409s that
name both the state and the command.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from complaints_shared.transitions import InvalidTransition
from followup import lifecycle as check_lifecycle
from followup.lifecycle import CheckState, LastClaim
from followup.models import CheckStatus
from intake import lifecycle as complaint_lifecycle
from intake.lifecycle import Command as I
from intake.lifecycle import Status
from routing.assignments import lifecycle as assignment_lifecycle
from routing.assignments.lifecycle import Command as A
from routing.assignments.models import AssignmentStatus

QUEUED, OPEN = AssignmentStatus.QUEUED, AssignmentStatus.OPEN
RESOLVED, CLOSED = AssignmentStatus.RESOLVED, AssignmentStatus.CLOSED
REJECTED, WITHDRAWN = AssignmentStatus.REJECTED, AssignmentStatus.WITHDRAWN
UNROUTABLE = AssignmentStatus.UNROUTABLE

ASSIGNMENT_LEGAL = [
    (None, A.ASSIGN, OPEN),
    (None, A.QUEUE, QUEUED),
    (QUEUED, A.ASSIGN, OPEN),
    (None, A.NO_ROUTE, UNROUTABLE),
    (RESOLVED, A.NO_ROUTE, UNROUTABLE),
    (CLOSED, A.NO_ROUTE, UNROUTABLE),
    (UNROUTABLE, A.ASSIGN, OPEN),
    (UNROUTABLE, A.QUEUE, QUEUED),
    (UNROUTABLE, A.RESOLVE, RESOLVED),
    (UNROUTABLE, A.REJECT, REJECTED),
    (UNROUTABLE, A.WITHDRAW, WITHDRAWN),
    # Remembered for the clocks it gets once routed.
    (UNROUTABLE, A.ACKNOWLEDGE, UNROUTABLE),
    (UNROUTABLE, A.PAUSE, UNROUTABLE),
    (UNROUTABLE, A.RESUME, UNROUTABLE),
    (QUEUED, A.REASSIGN, OPEN),
    (OPEN, A.REASSIGN, OPEN),
    (QUEUED, A.REASSIGN_TO_QUEUE, QUEUED),
    (OPEN, A.REASSIGN_TO_QUEUE, QUEUED),
    (QUEUED, A.ACKNOWLEDGE, QUEUED),
    (OPEN, A.ACKNOWLEDGE, OPEN),
    (QUEUED, A.PAUSE, QUEUED),
    (OPEN, A.PAUSE, OPEN),
    (QUEUED, A.RESUME, QUEUED),
    (OPEN, A.RESUME, OPEN),
    (QUEUED, A.ESCALATE, QUEUED),
    (OPEN, A.ESCALATE, OPEN),
    (QUEUED, A.FIRE_TIMERS, QUEUED),
    (OPEN, A.FIRE_TIMERS, OPEN),
    # The regulatory report deadline runs until the report is filed.
    *[(state, A.FIRE_TIMERS, state) for state in (RESOLVED, CLOSED, REJECTED, WITHDRAWN)],
    *[
        (state, command, state)
        for state in AssignmentStatus
        for command in (A.SET_RESPONSIBILITY, A.FILE_REGULATORY_REPORT)
    ],
    (QUEUED, A.RESOLVE, RESOLVED),
    (OPEN, A.RESOLVE, RESOLVED),
    (QUEUED, A.REJECT, REJECTED),
    (OPEN, A.REJECT, REJECTED),
    (QUEUED, A.WITHDRAW, WITHDRAWN),
    (OPEN, A.WITHDRAW, WITHDRAWN),
    (RESOLVED, A.CLOSE, CLOSED),
    (RESOLVED, A.REOPEN, OPEN),
    (CLOSED, A.REOPEN, OPEN),
    (RESOLVED, A.REOPEN_TO_QUEUE, QUEUED),
    (CLOSED, A.REOPEN_TO_QUEUE, QUEUED),
    # A reclassification re-plans the work still to do.
    *[(state, A.RECLASSIFY, state) for state in (QUEUED, OPEN, UNROUTABLE)],
    # A branch's new calendar re-lays the clocks of work being done.
    (QUEUED, A.APPLY_CALENDAR, QUEUED),
    (OPEN, A.APPLY_CALENDAR, OPEN),
]


@pytest.mark.parametrize(("current", "command", "expected"), ASSIGNMENT_LEGAL)
def test_every_legal_assignment_transition(
    current: AssignmentStatus | None, command: A, expected: AssignmentStatus
) -> None:
    assert assignment_lifecycle.transition(current=current, command=command) is expected


def test_the_assignment_table_holds_exactly_the_listed_pairs() -> None:
    listed = {(current, command): target for current, command, target in ASSIGNMENT_LEGAL}
    table = {(c, m): t for c, m, t in assignment_lifecycle.TABLE.pairs()}
    assert table == listed


@pytest.mark.parametrize(
    ("current", "command"),
    [
        (None, A.REASSIGN),
        (None, A.RESOLVE),
        (OPEN, A.ASSIGN),
        (OPEN, A.QUEUE),
        (OPEN, A.REOPEN),
        (RESOLVED, A.REASSIGN),
        (RESOLVED, A.ESCALATE),
        (RESOLVED, A.ACKNOWLEDGE),
        (RESOLVED, A.RESOLVE),
        (UNROUTABLE, A.FIRE_TIMERS),
        (CLOSED, A.CLOSE),
        (OPEN, A.CLOSE),
        (QUEUED, A.CLOSE),
        (UNROUTABLE, A.CLOSE),
        (REJECTED, A.REOPEN),
        (WITHDRAWN, A.PAUSE),
        (WITHDRAWN, A.REASSIGN_TO_QUEUE),
        (OPEN, A.NO_ROUTE),
        (UNROUTABLE, A.ESCALATE),
        (UNROUTABLE, A.REASSIGN),
        (CLOSED, A.PAUSE),
        (RESOLVED, A.RECLASSIFY),
        (None, A.RECLASSIFY),
    ],
)
def test_illegal_assignment_transitions_are_409s_naming_state_and_command(
    current: AssignmentStatus | None, command: A
) -> None:
    with pytest.raises(InvalidTransition) as raised:
        assignment_lifecycle.transition(current=current, command=command)
    refusal = raised.value
    assert refusal.status == 409
    assert refusal.kind == "invalid-transition"
    assert refusal.extensions["current_status"] == (current.value if current else "new")
    assert refusal.extensions["command"] == command.value
    assert command.value in refusal.detail
    assert "assignment" in refusal.detail


def test_a_refusal_names_the_assignment_it_concerns() -> None:
    with pytest.raises(InvalidTransition) as raised:
        assignment_lifecycle.transition(current=CLOSED, command=A.ESCALATE)
    named = raised.value.about(what="assignment", identifier="c-1")
    assert named.detail == "assignment c-1: cannot escalate an assignment that is closed"


# ------------------------------------------- the complaint and its assignment --

# Where routing's assignment may stand while intake's complaint has a status.
BEING_WORKED = frozenset({OPEN, QUEUED, UNROUTABLE})
ASSIGNMENT_STATES = {
    **dict.fromkeys(
        (Status.RECEIVED, Status.OPEN, Status.PENDING_CUSTOMER, Status.REOPENED), BEING_WORKED
    ),
    Status.RESOLVED: {RESOLVED},
    Status.CLOSED: {CLOSED},
    Status.REJECTED: {REJECTED},
    Status.WITHDRAWN: {WITHDRAWN},
}
# Intake's status changes routing follows (``routing.handlers``), as routing's commands.
FOLLOWED = {
    I.RESOLVE: {A.RESOLVE},
    I.REJECT: {A.REJECT},
    I.WITHDRAW: {A.WITHDRAW},
    I.CLOSE: {A.CLOSE},
    I.REOPEN: {A.REOPEN, A.REOPEN_TO_QUEUE, A.NO_ROUTE},
}


@pytest.mark.parametrize(
    ("status", "command"),
    [
        (status, command)
        for status, command, _ in complaint_lifecycle.TABLE.pairs()
        if command in FOLLOWED
    ],
)
def test_routing_follows_every_status_change_intake_emits(status: Status, command: I) -> None:
    """A reject while waiting on the customer stops the clocks as one while open does."""
    after = complaint_lifecycle.transition(current=status, command=command)
    for state in ASSIGNMENT_STATES[status]:
        targets = {
            assignment_lifecycle.transition(current=state, command=followed)
            for followed in FOLLOWED[command]
            if assignment_lifecycle.TABLE.allows(current=state, command=followed)
        }
        assert targets, (status, command, state)
        assert targets <= ASSIGNMENT_STATES[after], (status, command, state)


def test_routing_allows_no_status_change_intake_cannot_emit() -> None:
    """Routing's table had an administrator's close of open work no complaint could reach."""
    for state, command, _ in assignment_lifecycle.TABLE.pairs():
        asked = {intake for intake, followed in FOLLOWED.items() if command in followed}
        if state is None or not asked:
            continue
        statuses = {status for status, states in ASSIGNMENT_STATES.items() if state in states}
        assert any(
            complaint_lifecycle.is_legal(current=status, command=intake)
            for status in statuses
            for intake in asked
        ), (state, command)


# ------------------------------------------------------------ follow-up check --

C = check_lifecycle.Command
SCHEDULED, DUE, IN_PROGRESS = CheckStatus.SCHEDULED, CheckStatus.DUE, CheckStatus.IN_PROGRESS
COMPLETED, CANCELLED = CheckStatus.COMPLETED, CheckStatus.CANCELLED
NOW = datetime(2026, 11, 25, 2, tzinfo=UTC)
AGENT = "agent-a"

CHECK_LEGAL = [
    (None, C.SCHEDULE, SCHEDULED),
    (SCHEDULED, C.BECOME_DUE, DUE),
    (SCHEDULED, C.WAIT_FOR_CONTACT_HOURS, SCHEDULED),
    (SCHEDULED, C.WAIT_FOR_EARLIER_CHECK, SCHEDULED),
    (DUE, C.CLAIM, IN_PROGRESS),
    (IN_PROGRESS, C.CLAIM, IN_PROGRESS),
    (IN_PROGRESS, C.RELEASE, DUE),
    (IN_PROGRESS, C.EXPIRE_CLAIM, DUE),
    (IN_PROGRESS, C.RETRY_LATER, SCHEDULED),
    (IN_PROGRESS, C.GIVE_UP, COMPLETED),
    (IN_PROGRESS, C.RECORD_REACHED, COMPLETED),
    # The holder of a claim that lapsed records the call made under it.
    (DUE, C.RETRY_LATER, SCHEDULED),
    (DUE, C.GIVE_UP, COMPLETED),
    (DUE, C.RECORD_REACHED, COMPLETED),
    (SCHEDULED, C.RECORD_OUTCOME, COMPLETED),
    (DUE, C.RECORD_OUTCOME, COMPLETED),
    (IN_PROGRESS, C.RECORD_OUTCOME, COMPLETED),
    (SCHEDULED, C.CANCEL, CANCELLED),
    (DUE, C.CANCEL, CANCELLED),
    (IN_PROGRESS, C.CANCEL, CANCELLED),
]


def test_the_check_table_holds_exactly_the_listed_pairs() -> None:
    listed = {(current, command): target for current, command, target in CHECK_LEGAL}
    assert {(c, m): t for c, m, t in check_lifecycle.TABLE.pairs()} == listed


@pytest.mark.parametrize(
    ("current", "command", "expected"), [row for row in CHECK_LEGAL if row[0] is not None]
)
def test_every_legal_check_transition_for_the_agent_holding_an_expired_claim(
    current: CheckStatus, command: C, expected: CheckStatus
) -> None:
    """The claim holder, with the lease run out and the due time reached: only the table speaks."""
    state = CheckState(
        status=current,
        due_at=NOW - timedelta(hours=1),
        claimed_by=AGENT if current is IN_PROGRESS else None,
        claim_lease_until=NOW - timedelta(minutes=1) if current is IN_PROGRESS else None,
        last_claim=LastClaim(
            claimed_by=AGENT, claimed_at=NOW - timedelta(minutes=16), lapsed_at=NOW
        )
        if current is DUE
        else None,
    )
    assert check_lifecycle.transition(state=state, command=command, actor=AGENT, now=NOW) is (
        expected
    )


@pytest.mark.parametrize(
    ("current", "command"),
    [
        (DUE, C.BECOME_DUE),
        (DUE, C.EXPIRE_CLAIM),
        (IN_PROGRESS, C.SCHEDULE),
        (COMPLETED, C.CANCEL),
        (COMPLETED, C.CLAIM),
        (COMPLETED, C.RECORD_OUTCOME),
        (CANCELLED, C.BECOME_DUE),
        (CANCELLED, C.RECORD_OUTCOME),
    ],
)
def test_illegal_check_transitions_are_409s_naming_state_and_command(
    current: CheckStatus, command: C
) -> None:
    state = CheckState(status=current, due_at=NOW - timedelta(hours=1))
    with pytest.raises(InvalidTransition) as raised:
        check_lifecycle.transition(state=state, command=command, actor=AGENT, now=NOW)
    assert raised.value.status == 409
    assert raised.value.extensions["current_status"] == current.value
    assert raised.value.extensions["command"] == command.value


def test_a_claim_outside_contact_hours_is_refused_naming_when_calls_may_be_made() -> None:
    """A new claim before ``callable_from`` is a 409 naming it; the holder's renewal is not a
    new call and stands."""
    morning = NOW + timedelta(hours=9)
    due = CheckState(status=DUE, due_at=NOW - timedelta(hours=1))
    with pytest.raises(check_lifecycle.OutsideContactHours) as raised:
        check_lifecycle.transition(
            state=due, command=C.CLAIM, actor=AGENT, now=NOW, callable_from=morning
        )
    assert raised.value.status == 409
    assert raised.value.extensions["next_contact_at"] == morning.isoformat()
    held = CheckState(
        status=IN_PROGRESS,
        due_at=NOW - timedelta(hours=1),
        claimed_by=AGENT,
        claim_lease_until=NOW + timedelta(minutes=5),
    )
    renewed = check_lifecycle.transition(
        state=held, command=C.CLAIM, actor=AGENT, now=NOW, callable_from=morning
    )
    assert renewed is IN_PROGRESS
    assert (
        check_lifecycle.transition(
            state=due, command=C.CLAIM, actor=AGENT, now=NOW, callable_from=NOW
        )
        is IN_PROGRESS
    )
