"""Faults injected into one function of the code under test (the rest runs for real)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from pymongo.errors import AutoReconnect


class FailsFirst:
    """``function`` whose first ``times`` calls raise a dropped database connection; every
    call's keyword arguments are kept in ``calls``. Set it in place with ``monkeypatch``."""

    def __init__(self, function: Callable[..., Awaitable[Any]], *, times: int = 1) -> None:
        self.function = function
        self.times = times
        self.calls: list[dict[str, Any]] = []

    async def __call__(self, **arguments: Any) -> Any:
        self.calls.append(arguments)
        if len(self.calls) <= self.times:
            raise AutoReconnect("connection closed (injected)")
        return await self.function(**arguments)


class FailsAfter:
    """``function`` whose first call runs, then raises a dropped database connection: a
    write applied whose answer was lost. Set it in place with ``monkeypatch``."""

    def __init__(self, function: Callable[..., Awaitable[Any]]) -> None:
        self.function = function
        self.calls = 0

    async def __call__(self, *arguments: Any, **keywords: Any) -> Any:
        self.calls += 1
        answer = await self.function(*arguments, **keywords)
        if self.calls == 1:
            raise AutoReconnect("connection closed after the write (injected)")
        return answer


class HeldFirst:
    """``function`` whose first call waits, once it is reached (``entered``), until
    ``release`` is set: before it runs, or with ``holding_answer`` after it ran, before its
    answer is handed back (a read in flight while something else writes). That call is
    overtaken by whatever the test does meanwhile. Set it in place with ``monkeypatch``."""

    def __init__(
        self, function: Callable[..., Awaitable[Any]], *, holding_answer: bool = False
    ) -> None:
        self.function = function
        self.holding_answer = holding_answer
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, *arguments: Any, **keywords: Any) -> Any:
        if self.entered.is_set():
            return await self.function(*arguments, **keywords)
        answer = await self.function(*arguments, **keywords) if self.holding_answer else None
        self.entered.set()
        await asyncio.wait_for(self.release.wait(), timeout=30)
        return answer if self.holding_answer else await self.function(*arguments, **keywords)
