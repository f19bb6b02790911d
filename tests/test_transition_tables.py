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
from followup.lifecycle import CheckState
from followup.models import CheckStatus
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
    (UNROUTABLE, A.CLOSE, CLOSED),
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
    (QUEUED, A.CLOSE, CLOSED),
    (OPEN, A.CLOSE, CLOSED),
    (RESOLVED, A.CLOSE, CLOSED),
    (RESOLVED, A.REOPEN, OPEN),
    (CLOSED, A.REOPEN, OPEN),
    (RESOLVED, A.REOPEN_TO_QUEUE, QUEUED),
    (CLOSED, A.REOPEN_TO_QUEUE, QUEUED),
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
        (CLOSED, A.FIRE_TIMERS),
        (CLOSED, A.CLOSE),
        (REJECTED, A.REOPEN),
        (WITHDRAWN, A.PAUSE),
        (WITHDRAWN, A.REASSIGN_TO_QUEUE),
        (OPEN, A.NO_ROUTE),
        (UNROUTABLE, A.ESCALATE),
        (UNROUTABLE, A.REASSIGN),
        (UNROUTABLE, A.ACKNOWLEDGE),
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


# ------------------------------------------------------------ follow-up check --

C = check_lifecycle.Command
SCHEDULED, DUE, IN_PROGRESS = CheckStatus.SCHEDULED, CheckStatus.DUE, CheckStatus.IN_PROGRESS
COMPLETED, CANCELLED = CheckStatus.COMPLETED, CheckStatus.CANCELLED
NOW = datetime(2026, 11, 25, 2, tzinfo=UTC)
AGENT = "agent-a"

CHECK_LEGAL = [
    (None, C.SCHEDULE, SCHEDULED),
    (SCHEDULED, C.BECOME_DUE, DUE),
    (DUE, C.CLAIM, IN_PROGRESS),
    (IN_PROGRESS, C.CLAIM, IN_PROGRESS),
    (IN_PROGRESS, C.RELEASE, DUE),
    (IN_PROGRESS, C.EXPIRE_CLAIM, DUE),
    (IN_PROGRESS, C.RETRY_LATER, SCHEDULED),
    (IN_PROGRESS, C.GIVE_UP, COMPLETED),
    (IN_PROGRESS, C.RECORD_REACHED, COMPLETED),
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
