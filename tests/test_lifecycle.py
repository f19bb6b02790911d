"""Unit: the complaint state machine."""

from __future__ import annotations

import pytest

from intake.lifecycle import OPEN_STATUSES, Command, InvalidTransition, Status, transition


@pytest.mark.parametrize(
    ("current", "command", "expected"),
    [
        (Status.RECEIVED, Command.ASSIGN, Status.ASSIGNED),
        (Status.ACKNOWLEDGED, Command.ASSIGN, Status.ACKNOWLEDGED),
        (Status.REOPENED, Command.ASSIGN, Status.ASSIGNED),
        (Status.RECEIVED, Command.ACKNOWLEDGE, Status.ACKNOWLEDGED),
        (Status.ASSIGNED, Command.ACKNOWLEDGE, Status.ACKNOWLEDGED),
        (Status.IN_PROGRESS, Command.WAIT_FOR_CUSTOMER, Status.PENDING_CUSTOMER),
        (Status.PENDING_CUSTOMER, Command.RESUME, Status.IN_PROGRESS),
        (Status.ASSIGNED, Command.ESCALATE, Status.ESCALATED),
        (Status.ESCALATED, Command.RESOLVE, Status.RESOLVED),
        (Status.PENDING_CUSTOMER, Command.RESOLVE, Status.RESOLVED),
        (Status.RESOLVED, Command.CLOSE, Status.CLOSED),
        (Status.RESOLVED, Command.REOPEN, Status.REOPENED),
        (Status.CLOSED, Command.REOPEN, Status.REOPENED),
        (Status.RECEIVED, Command.REJECT, Status.REJECTED),
        (Status.IN_PROGRESS, Command.WITHDRAW, Status.WITHDRAWN),
    ],
)
def test_legal_transitions(current: Status, command: Command, expected: Status) -> None:
    assert transition(current=current, command=command) is expected


@pytest.mark.parametrize(
    ("current", "command"),
    [
        (Status.CLOSED, Command.RESOLVE),
        (Status.RECEIVED, Command.CLOSE),
        (Status.IN_PROGRESS, Command.REJECT),
        (Status.REJECTED, Command.REOPEN),
        (Status.WITHDRAWN, Command.ASSIGN),
        (Status.RESOLVED, Command.ACKNOWLEDGE),
        (Status.IN_PROGRESS, Command.RESUME),
        (Status.PENDING_CUSTOMER, Command.ESCALATE),
    ],
)
def test_illegal_transitions_name_state_and_command(current: Status, command: Command) -> None:
    with pytest.raises(InvalidTransition) as raised:
        transition(current=current, command=command)
    assert current.value in str(raised.value)
    assert command.value in str(raised.value)


def test_every_open_complaint_can_be_resolved_and_withdrawn() -> None:
    for status in OPEN_STATUSES:
        assert transition(current=status, command=Command.RESOLVE) is Status.RESOLVED
        assert transition(current=status, command=Command.WITHDRAW) is Status.WITHDRAWN


def test_rejected_and_withdrawn_accept_only_notes() -> None:
    for status in (Status.REJECTED, Status.WITHDRAWN):
        assert transition(current=status, command=Command.NOTE) is status
        for command in set(Command) - {Command.NOTE}:
            with pytest.raises(InvalidTransition):
                transition(current=status, command=command)


def test_a_note_starts_work_on_an_acknowledged_complaint_only() -> None:
    assert transition(current=Status.ACKNOWLEDGED, command=Command.NOTE) is Status.IN_PROGRESS
    assert transition(current=Status.RECEIVED, command=Command.NOTE) is Status.RECEIVED
    assert transition(current=Status.ESCALATED, command=Command.NOTE) is Status.ESCALATED
