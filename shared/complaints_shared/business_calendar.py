"""Business-time arithmetic in a branch's own time zone.

A calendar knows the opening hours per weekday, the country's public holidays
(from the maintained ``holidays`` library), the organisation's own closed days
and its make-up working days (调休: a weekend day worked to pay for a bridge
holiday). Used by routing for SLA clocks and by follow-up for contact hours.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from functools import cached_property
from zoneinfo import ZoneInfo

import holidays

# The holidays library names a bridge day "Day off (substituted from MM/DD/YYYY)":
# the date in brackets is the weekend day that is worked instead.
_SUBSTITUTED_FROM = re.compile(r"substituted from (\d{2})/(\d{2})/(\d{4})")
MAX_DAYS_SEARCHED = 3 * 366

OpeningHours = Mapping[int, Sequence[tuple[time, time]]]

WEEKDAYS_9_TO_18: dict[int, list[tuple[time, time]]] = {
    weekday: [(time(9), time(18))] for weekday in range(5)
}


@dataclass(frozen=True)
class BusinessCalendar:
    """Opening hours per weekday (0 = Monday) as half-open local [start, end) ranges."""

    time_zone: str = "Asia/Shanghai"
    hours: OpeningHours = field(default_factory=lambda: WEEKDAYS_9_TO_18)
    country: str | None = "CN"
    subdivision: str | None = None
    closed_days: frozenset[date] = frozenset()
    working_days: frozenset[date] = frozenset()
    # Which weekday's hours a make-up working day borrows (Monday by default).
    working_day_template: int = 0

    @cached_property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)

    @cached_property
    def _public_holidays(self) -> holidays.HolidayBase | None:
        if self.country is None:
            return None
        return holidays.country_holidays(self.country, subdiv=self.subdivision, language="en_US")

    @cached_property
    def _working_days_by_year(self) -> dict[int, frozenset[date]]:
        return {}

    def _official_working_days(self, year: int) -> frozenset[date]:
        """Weekend days the country works to make up for bridge holidays (调休)."""
        if self._public_holidays is None:
            return frozenset()
        known = self._working_days_by_year.get(year)
        if known is not None:
            return known
        # A bridge holiday early in January can be paid for by a Saturday of the previous
        # December (2012-01-03 was substituted from 2011-12-31), so look at the next year too.
        for filled_year in (year, year + 1):
            _ = date(filled_year, 1, 1) in self._public_holidays  # the library fills on lookup
        worked = frozenset(
            substituted
            for holiday, name in self._public_holidays.items()
            if holiday.year in (year, year + 1)
            for month, day, at_year in _SUBSTITUTED_FROM.findall(name)
            if (substituted := date(int(at_year), int(month), int(day))).year == year
        )
        self._working_days_by_year[year] = worked
        return worked

    def is_working_day(self, day: date) -> bool:
        if day in self.closed_days:
            return False
        if day in self.working_days or day in self._official_working_days(day.year):
            return True
        if self._public_holidays is not None and day in self._public_holidays:
            return False
        return bool(self.hours.get(day.weekday()))

    def opening_ranges(self, day: date) -> list[tuple[datetime, datetime]]:
        """The day's open ranges as aware datetimes in the calendar's zone."""
        if not self.is_working_day(day):
            return []
        ranges = self.hours.get(day.weekday()) or self.hours.get(self.working_day_template, [])
        return [
            (
                datetime.combine(day, start, tzinfo=self.zone),
                datetime.combine(day, end, tzinfo=self.zone)
                if end != time(0)
                else datetime.combine(day + timedelta(days=1), time(0), tzinfo=self.zone),
            )
            for start, end in sorted(ranges)
        ]

    def _ranges_from(self, at: datetime) -> Iterable[tuple[datetime, datetime]]:
        """Open ranges that end after ``at``, in order, starting on ``at``'s local day.

        Yielded in UTC: Python subtracts and adds aware datetimes sharing a zone in
        wall-clock time, which would count a range spanning a DST change an hour wrong.
        """
        local_day = at.astimezone(self.zone).date()
        for offset in range(MAX_DAYS_SEARCHED):
            for start, end in self.opening_ranges(local_day + timedelta(days=offset)):
                if end > at:
                    yield max(start, at).astimezone(UTC), end.astimezone(UTC)
        raise ValueError(f"calendar {self.time_zone} has no opening hours within 3 years")

    def is_open(self, at: datetime) -> bool:
        first_start, _ = next(iter(self._ranges_from(at)))
        return first_start <= at

    def next_open(self, at: datetime) -> datetime:
        """``at`` itself when open, else the next opening moment (UTC)."""
        start, _ = next(iter(self._ranges_from(at)))
        return start.astimezone(UTC)

    def add_business_time(self, start: datetime, duration: timedelta) -> datetime:
        """The moment when ``duration`` of open time has passed after ``start`` (UTC)."""
        remaining = duration
        for range_start, range_end in self._ranges_from(start):
            available = range_end - range_start
            if remaining <= available:
                return (range_start + remaining).astimezone(UTC)
            remaining -= available
        raise AssertionError("unreachable: _ranges_from raises when exhausted")

    def business_time_between(self, start: datetime, end: datetime) -> timedelta:
        """Open time in [start, end)."""
        if end <= start:
            return timedelta(0)
        total = timedelta(0)
        for range_start, range_end in self._ranges_from(start):
            if range_start >= end:
                break
            total += min(range_end, end) - range_start
        return total

    def end_of_business_day(self, start: datetime) -> datetime:
        """Closing time of the business day ``start`` falls in (or the next one's)."""
        first_start, _ = next(iter(self._ranges_from(start)))
        day = first_start.astimezone(self.zone).date()
        return self.opening_ranges(day)[-1][1].astimezone(UTC)

    def add_business_days(self, start: datetime, days: int) -> datetime:
        """The same local time ``days`` working days later (closing time if it is later)."""
        local = start.astimezone(self.zone)
        day = local.date()
        counted = 0
        for _ in range(MAX_DAYS_SEARCHED):
            day += timedelta(days=1)
            if self.is_working_day(day):
                counted += 1
                if counted == days:
                    ranges = self.opening_ranges(day)
                    wanted = datetime.combine(
                        day, local.timetz().replace(tzinfo=None), tzinfo=self.zone
                    )
                    closing = ranges[-1][1]
                    return min(max(wanted, ranges[0][0]), closing).astimezone(UTC)
        raise ValueError(f"calendar {self.time_zone} has no working day within 3 years")


def warm_up(*, now: datetime) -> None:
    """Load the ``holidays`` library's country rules once, at start.

    The library imports its country modules on first use (compiling their source where no
    bytecode is cached): 0.3–0.8 s measured, which stalled whichever complaint first needed
    a business calendar (``python -m bench.stages``: one stall of ~0.4–0.8 s some seconds
    into the first load). Each calendar still fills its own years on first use (far less).
    """
    BusinessCalendar().is_working_day(now.date())
