"""Transition tables: ``(state, command) → next state``, the one place an aggregate's state moves.

Each aggregate (complaint, assignment, follow-up check) declares its table with
:class:`TransitionTable`; every change of the aggregate asks the table first.
An illegal pair is an :class:`InvalidTransition`, which is also the 409 problem
naming both the state and the command (an HTTP caller gets it as is; an event
consumer catches it and records the event as inapplicable).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from enum import StrEnum
from typing import Any, Generic, TypeVar

from complaints_shared.problems import ProblemError

State = TypeVar("State", bound=StrEnum)
Command = TypeVar("Command", bound=StrEnum)


class InvalidTransition(ProblemError):
    """``command`` is not legal in ``current``: a 409 naming both."""

    def __init__(
        self,
        *,
        current: StrEnum | None,
        command: StrEnum,
        what: str = "aggregate",
        reason: str = "",
        title: str = "Invalid transition",
        kind: str = "invalid-transition",
        **extensions: Any,
    ) -> None:
        state = current.value if current is not None else "new"
        detail = reason or f"cannot {command.value} {_article(what)} {what} that is {state}"
        super().__init__(
            status=409,
            title=title,
            kind=kind,
            detail=detail,
            current_status=state,
            command=command.value,
            **extensions,
        )
        self.current = current
        self.command = command

    def about(self, *, what: str, identifier: str) -> InvalidTransition:
        """The same refusal, its detail naming the aggregate it concerns."""
        prefix = f"{what} {identifier}: "
        if not self.detail.startswith(prefix):
            self.detail = prefix + self.detail
            self.args = (self.detail,)
        return self


def _article(noun: str) -> str:
    return "an" if noun[:1].lower() in "aeiou" else "a"


class TransitionTable(Generic[State, Command]):
    """An aggregate's legal moves. ``None`` as a state means "not created yet"."""

    def __init__(self, *, what: str, rules: Mapping[tuple[State | None, Command], State]) -> None:
        self.what = what
        self._rules = dict(rules)

    def next(self, *, current: State | None, command: Command) -> State:
        """The state after ``command`` in ``current``, or raise InvalidTransition."""
        try:
            return self._rules[(current, command)]
        except KeyError:
            raise InvalidTransition(current=current, command=command, what=self.what) from None

    def allows(self, *, current: State | None, command: Command) -> bool:
        return (current, command) in self._rules

    def pairs(self) -> Iterator[tuple[State | None, Command, State]]:
        """Every legal ``(state, command, next state)``: for documentation and tests."""
        for (current, command), target in self._rules.items():
            yield current, command, target
