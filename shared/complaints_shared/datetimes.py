"""The one datetime type every API accepts: offset-aware, normalised to UTC, in a sane range.

A timestamp without an offset is ambiguous (the caller's local time? UTC?), so
it is refused with a 422 naming the field instead of being guessed at; an aware
one is converted to UTC so stored values and comparisons never mix offsets.

Only the years 1970 to 2200 (UTC) are accepted, dates included. Nothing the services
handle lies outside them, and the arithmetic done on accepted values (a millisecond
either side of a cursor, thirty days before a report's end, a deadline years after a
receipt in business time) stays far from Python's year 1 and 9999, where it would
overflow into a 500.

The range is a check of requests (``stored.request_only``): a date an earlier version
stored outside it is read back as stored, converted to UTC (``stored.from_stored``).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Annotated

from pydantic import AfterValidator, AwareDatetime, ValidationInfo

from complaints_shared.stored import is_stored, request_only

EARLIEST_YEAR = 1970
LATEST_YEAR = 2200
EARLIEST = datetime(EARLIEST_YEAR, 1, 1, tzinfo=UTC)
# The first moment after the range.
AFTER_LATEST = datetime(LATEST_YEAR + 1, 1, 1, tzinfo=UTC)
RANGE = f"between {EARLIEST_YEAR}-01-01T00:00:00Z and {LATEST_YEAR}-12-31T23:59:59Z"


def in_range(moment: datetime) -> datetime:
    """``moment`` in UTC (a naive one is taken as UTC), or ValueError outside the range."""
    try:
        utc = moment.astimezone(UTC) if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    except OverflowError:  # an offset that crosses year 1 or 9999
        utc = None
    if utc is None or not EARLIEST <= utc < AFTER_LATEST:
        raise ValueError(f"must be {RANGE} (after conversion to UTC)")
    return utc


def _day_in_range(day: date) -> date:
    if not EARLIEST_YEAR <= day.year <= LATEST_YEAR:
        raise ValueError(f"must be a day of the years {EARLIEST_YEAR} to {LATEST_YEAR}")
    return day


def _as_utc(moment: datetime) -> datetime:
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # stored with an offset that crosses year 1 or 9999: kept as is
        return moment


UtcDatetime = Annotated[AwareDatetime, request_only(in_range), AfterValidator(_as_utc)]
"""An aware datetime converted to UTC; in a request, of the years 1970 to 2200."""

EventDatetime = Annotated[AwareDatetime, AfterValidator(_as_utc)]
"""A datetime in an event's data: with an offset, converted to UTC. A producer's time
without one is refused (the record is dead-lettered as invalid): consumers compare event
times with their own, which carry offsets, and a naive one raised in the middle of that."""


def _event_time(moment: datetime, info: ValidationInfo) -> datetime:
    if moment.tzinfo is None and is_stored(info):
        # An outbox entry read by a client without ``tz_aware``: BSON dates are UTC.
        return moment.replace(tzinfo=UTC)
    if moment.tzinfo is None:
        raise ValueError("must have an offset (Z or +08:00)")
    return in_range(moment)


EventTime = Annotated[datetime, AfterValidator(_event_time)]
"""An event's own time (``ce_time``): with an offset, of the years 1970 to 2200, in UTC.
One read back from an outbox (``stored.from_stored``) is UTC as stored."""

CalendarDay = Annotated[date, request_only(_day_in_range)]
"""A calendar day (a branch's closed or make-up working day); in a request, of the years
1970 to 2200."""


def window_end(end: datetime | None, start: datetime | None, *, start_name: str) -> datetime | None:
    """``end`` of a time window whose start is ``start`` (a query's ``..._to`` field): a
    ValueError (a 422 naming the field) unless after the start. A window given backwards
    answered as empty, which a caller cannot tell from a window without matches."""
    if end is not None and start is not None and end <= start:
        raise ValueError(f"must be after {start_name}")
    return end
