"""Time in tests: aware UTC datetimes and a manual clock the services share."""

from __future__ import annotations

from datetime import UTC, datetime

from complaints_shared.clock import ManualClock


def utc(*parts: int) -> datetime:
    """``utc(2026, 11, 23, 2)``: an aware UTC datetime."""
    return datetime(*parts, tzinfo=UTC)


def at(value: str) -> datetime:
    """A datetime a service answered in ISO 8601."""
    return datetime.fromisoformat(value)


def start_clock() -> ManualClock:
    """A manual clock starting at the wall clock's now (intake stamps resolutions with it)."""
    return ManualClock(datetime.now(UTC).replace(microsecond=0))
