"""Small time helpers for background loops (never used for business deadlines)."""

from __future__ import annotations

import asyncio
import time
from contextlib import suppress


async def wait_event(event: asyncio.Event, *, timeout_s: float) -> bool:
    """Wait until ``event`` is set or ``timeout_s`` passes; True when it was set."""
    with suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout=timeout_s)
    return event.is_set()


class Pacer:
    """Keeps a background job's work to ``share`` of the wall time while it runs.

    The job calls ``pause`` between its steps (a page read, a day's writes). Each pause
    waits so that the step just ended took ``share`` of the time since the previous pause
    ended; a step slowed by a busy database makes the pause longer too. Requests and event
    handlers then queue behind one step at most, never a whole pass: on the local server a
    pass of the report rollup read in one go held routing up by 2 s (docs/performance.md).
    Once ``stopping`` is set the pauses end at once, so a pass finishes quickly.
    """

    def __init__(self, *, share: float, stopping: asyncio.Event | None = None) -> None:
        if not 0 < share <= 1:
            raise ValueError("share must be in (0, 1]")
        self._share = share
        self._stopping = stopping or asyncio.Event()
        self._step_started = time.monotonic()

    def rest_after(self, worked_s: float) -> float:
        """The pause owed after a step of ``worked_s`` seconds."""
        return max(0.0, worked_s) * (1 - self._share) / self._share

    async def pause(self) -> None:
        rest = self.rest_after(time.monotonic() - self._step_started)
        if rest > 0:
            await wait_event(self._stopping, timeout_s=rest)
        self._step_started = time.monotonic()
