"""Time in tests: aware UTC datetimes and a manual clock the services share."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from complaints_shared.clock import ManualClock
from followup.contact_hours import calendar_of, default_contact_hours
from followup.settings import FollowupSettings

# A test's own moves of the clock after a check fell due (a claim's lease run out, a few
# minutes) stay inside the default contact hours from a start this far before they end.
CONTACT_SLACK = timedelta(hours=2)


def utc(*parts: int) -> datetime:
    """``utc(2026, 11, 23, 2)``: an aware UTC datetime."""
    return datetime(*parts, tzinfo=UTC)


def at(value: str) -> datetime:
    """A datetime a service answered in ISO 8601."""
    return datetime.fromisoformat(value)


def start_clock() -> ManualClock:
    """A manual clock starting at the wall clock's now (intake stamps resolutions with it),
    or, when customers may not be called then by the default contact hours (09:00–20:00 in
    Shanghai, China's public holidays closed) for a while yet, at the next moment they may:
    checks are claimed, and fire, only inside contact hours, so a test run at night would
    otherwise find its checks out of reach."""
    calendar = calendar_of(default_contact_hours(FollowupSettings()))
    moment = datetime.now(UTC).replace(microsecond=0)
    while not (calendar.is_open(moment) and calendar.is_open(moment + CONTACT_SLACK)):
        moment = calendar.next_open(moment + timedelta(minutes=30))
    return ManualClock(moment)
