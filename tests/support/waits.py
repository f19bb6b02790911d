"""Waiting for asynchronous outcomes: poll with a deadline, never a long fixed sleep."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class NotYet:
    """A probe's "not yet" that says what it saw, for the message at the deadline."""

    def __init__(self, seen: str) -> None:
        self.seen = seen

    def __bool__(self) -> bool:
        return False

    def __repr__(self) -> str:
        return f"not yet: {self.seen}"


async def eventually(
    probe: Callable[[], Awaitable[T | None] | T | None],
    *,
    timeout_s: float = 10.0,
    interval_s: float = 0.1,
    what: str = "condition",
) -> T:
    """Poll ``probe`` until it returns something truthy; fail with ``what`` at the deadline.

    The probe may be a coroutine function (a read) or a plain one (a metric, a flag).
    """
    deadline = time.monotonic() + timeout_s
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if inspect.isawaitable(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}; last value: {last!r}")
