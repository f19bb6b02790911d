"""Unit: the complaint's transition table, written out pair by pair as the specification."""

from __future__ import annotations

import pytest

from complaints_shared.transitions import InvalidTransition
from intake.lifecycle import (
    COMMAND_ACTIONS,
    OPEN_STATUSES,
    TRANSITIONS,
    Action,
    Command,
    Status,
    table_command,
    transition,
)

R, OP, P = Status.RECEIVED, Status.OPEN, Status.PENDING_CUSTOMER
RS, C, RO = Status.RESOLVED, Status.CLOSED, Status.REOPENED
RJ, W = Status.REJECTED, Status.WITHDRAWN

# Every legal (state, command) pair and where it leads; anything else is a 409.
LEGAL: list[tuple[Status, Command, Status]] = [
    (R, Command.ASSIGN, OP),
    (OP, Command.ASSIGN, OP),
    (P, Command.ASSIGN, P),
    (RO, Command.ASSIGN, RO),
    (R, Command.ACKNOWLEDGE, OP),
    (OP, Command.ACKNOWLEDGE, OP),
    (P, Command.ACKNOWLEDGE, P),
    (RO, Command.ACKNOWLEDGE, RO),
    *[(state, Command.NOTE, state) for state in Status],
    (R, Command.WAIT_FOR_CUSTOMER, P),
    (OP, Command.WAIT_FOR_CUSTOMER, P),
    (RO, Command.WAIT_FOR_CUSTOMER, P),
    (P, Command.RESUME, OP),
    (P, Command.RESUME_REOPENED, RO),
    (P, Command.RESUME_RECEIVED, R),
    (R, Command.RESOLVE, RS),
    (OP, Command.RESOLVE, RS),
    (P, Command.RESOLVE, RS),
    (RO, Command.RESOLVE, RS),
    (RS, Command.CLOSE, C),
    (RS, Command.REOPEN, RO),
    (C, Command.REOPEN, RO),
    (RS, Command.RECORD_REMEDY, RS),
    (C, Command.RECORD_REMEDY, C),
    (R, Command.REJECT, RJ),
    (OP, Command.REJECT, RJ),
    (P, Command.REJECT, RJ),
    (RO, Command.REJECT, RJ),
    (R, Command.WITHDRAW, W),
    (OP, Command.WITHDRAW, W),
    (P, Command.WITHDRAW, W),
    (RO, Command.WITHDRAW, W),
    # A supervisor's new severity, category or flags: while the complaint is worked.
    *[(state, Command.RECLASSIFY, state) for state in (R, OP, P, RO)],
]


@pytest.mark.parametrize(("current", "command", "expected"), LEGAL)
def test_legal_transitions(current: Status, command: Command, expected: Status) -> None:
    assert transition(current=current, command=command) is expected


def test_the_table_holds_exactly_the_legal_pairs() -> None:
    assert {(current, command): after for current, command, after in LEGAL} == TRANSITIONS


ILLEGAL = [
    (C, Command.RESOLVE),
    (R, Command.CLOSE),
    (P, Command.CLOSE),
    (RO, Command.CLOSE),
    (RS, Command.REJECT),
    (OP, Command.RECORD_REMEDY),
    (RO, Command.RECORD_REMEDY),
    (W, Command.RECORD_REMEDY),
    (OP, Command.RESUME_REOPENED),
    (RJ, Command.REOPEN),
    (W, Command.ASSIGN),
    (RS, Command.ACKNOWLEDGE),
    (C, Command.ACKNOWLEDGE),
    (OP, Command.RESUME),
    (OP, Command.RESUME_RECEIVED),
    (P, Command.WAIT_FOR_CUSTOMER),
    (OP, Command.CLOSE),
    (RO, Command.REOPEN),
    (RS, Command.WITHDRAW),
    (RS, Command.RECLASSIFY),
    (C, Command.RECLASSIFY),
]


@pytest.mark.parametrize(("current", "command"), ILLEGAL)
def test_illegal_transitions_name_state_and_command(current: Status, command: Command) -> None:
    with pytest.raises(InvalidTransition) as raised:
        transition(current=current, command=command)
    assert (raised.value.current, raised.value.command) == (current, command)
    assert current.value in str(raised.value)
    assert command.value in str(raised.value)


def test_acknowledge_is_legal_from_every_open_state_and_never_after() -> None:
    for status in Status:
        legal = (status, Command.ACKNOWLEDGE) in TRANSITIONS
        assert legal is (status in OPEN_STATUSES), status


def test_rejected_and_withdrawn_accept_only_notes() -> None:
    for status in (RJ, W):
        assert transition(current=status, command=Command.NOTE) is status
        for command in set(Command) - {Command.NOTE}:
            with pytest.raises(InvalidTransition):
                transition(current=status, command=command)


def test_an_open_complaint_is_not_closed_but_rejected_or_withdrawn() -> None:
    """Closing confirms a resolution; a duplicate is rejected, a customer's change of mind
    (by phone too) withdrawn, from every open status."""
    for status in OPEN_STATUSES:
        assert (status, Command.CLOSE) not in TRANSITIONS, status
        assert transition(current=status, command=Command.REJECT) is RJ
        assert transition(current=status, command=Command.WITHDRAW) is W


@pytest.mark.parametrize(
    ("taken_up", "reopen_count", "resumed_to"),
    [
        ({"assignment": {"department": "LZ:BILLING"}}, 0, OP),
        ({"acknowledged_at": "2026-12-05T01:00:00Z"}, 0, OP),
        ({}, 0, R),
        ({"assignment": {"department": "LZ:BILLING"}}, 1, RO),
        ({"assignment": {"department": "LZ:BILLING"}}, 3, RO),
    ],
    ids=["routed", "acknowledged", "neither", "reopened", "3x"],
)
def test_resuming_returns_to_the_status_the_wait_began_in(
    taken_up: dict, reopen_count: int, resumed_to: Status
) -> None:
    """Waiting starts from received, open or reopened, and a reopened complaint never becomes
    open again, so a complaint reopened before was waiting from reopened; one neither routed
    nor acknowledged (补正 before it was taken up) from received."""
    waiting = {"status": P.value, "reopen_count": reopen_count, **taken_up}
    asked = table_command(waiting, Command.RESUME)
    assert transition(current=P, command=asked) is resumed_to
    into_open = {before for (before, _), after in TRANSITIONS.items() if after is OP}
    assert into_open == {R, OP, P}  # nothing leads a reopened complaint back to open


def test_table_command_leaves_other_commands_and_statuses_alone() -> None:
    assert table_command({"status": OP.value, "reopen_count": 2}, Command.RESUME) is (
        Command.RESUME
    )
    assert table_command({"status": P.value, "reopen_count": 2}, Command.RESOLVE) is (
        Command.RESOLVE
    )


def test_every_http_command_has_one_timeline_word_in_the_past_tense() -> None:
    assert set(COMMAND_ACTIONS) == set(Command) - {
        Command.ASSIGN,
        Command.RESUME_REOPENED,
        Command.RESUME_RECEIVED,
    }
    for action in Action:
        assert action.value == action.value.lower() and " " not in action.value
        assert "." not in action.value and "-" not in action.value
