"""Small time helpers for background loops (never used for business deadlines)."""

from __future__ import annotations

import asyncio
from contextlib import suppress


async def wait_event(event: asyncio.Event, *, timeout_s: float) -> bool:
    """Wait until ``event`` is set or ``timeout_s`` passes; True when it was set."""
    with suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout=timeout_s)
    return event.is_set()
