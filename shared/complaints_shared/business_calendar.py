"""Business-time arithmetic in a branch's own time zone.

A calendar knows the opening hours per weekday, the country's public holidays
(from the maintained ``holidays`` library), the organisation's own closed days
and its make-up working days (调休: a weekend day worked to pay for a bridge
holiday). Used by routing for SLA clocks and by follow-up for contact hours.

The field types below check what a request may configure; a calendar stored before a
check existed is read back as stored (``complaints_shared.stored``), so the arithmetic
takes what they would refuse without failing: a zone that no longer loads is counted in
UTC, a holiday country the library does not know has no public holidays (each logged
once per calendar), an offset stored with an opening time is ignored, a closed day
outside the years 1970-2200 closes nothing the closure check walks. Callers degrade on
``BeyondHorizon`` (``routing.sla.clocks``, ``followup.contact_hours``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from functools import cache, cached_property
from typing import Annotated
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import holidays
from pydantic import AfterValidator

from complaints_shared.datetimes import EARLIEST_YEAR, LATEST_YEAR
from complaints_shared.logs import get_logger
from complaints_shared.stored import request_only

# The holidays library names a bridge day "Day off (substituted from MM/DD/YYYY)":
# the date in brackets is the weekend day that is worked instead.
_SUBSTITUTED_FROM = re.compile(r"substituted from (\d{2})/(\d{2})/(\d{4})")
# How far ahead the arithmetic looks for open time before it gives up (``BeyondHorizon``).
MAX_DAYS_SEARCHED = 3 * 366
_DAY = timedelta(days=1)
_SECOND = timedelta(seconds=1)
# The most days in a row a calendar may be closed (``longest_closure``): a longer closure is a
# mistake, and one this long still leaves the arithmetic two years of its horizon.
MAX_CLOSURE_DAYS = 366

OpeningHours = Mapping[int, Sequence[tuple[time, time]]]

log = get_logger(__name__)

WEEKDAYS_9_TO_18: dict[int, list[tuple[time, time]]] = {
    weekday: [(time(9), time(18))] for weekday in range(5)
}


class BeyondHorizon(ValueError):
    """The calendar has not enough open time within ``MAX_DAYS_SEARCHED`` days of a start."""


@cache
def _time_zones() -> frozenset[str]:
    # ``localtime`` is whatever zone the host is set to: not a zone a branch can name.
    return frozenset(available_timezones()) - {"localtime"}


def known_time_zone(name: str) -> str:
    """``name`` when it is an IANA zone, else ValueError.

    Checked against the zone list rather than by loading it: ``ZoneInfo`` answers a
    directory (``Asia``) or an over-long name with an ``OSError``, not a ValueError.
    """
    if name not in _time_zones():
        raise ValueError(f"unknown IANA time zone {name!r}")
    return name


def supported_country(code: str) -> str:
    """``code`` when the ``holidays`` library has its public holidays, else ValueError.

    Checked against the library's list: ``country_holidays`` looks the code up as a module
    attribute, so a name like ``countries`` or ``__init__`` fails with a TypeError.
    """
    if code not in holidays.list_supported_countries():
        raise ValueError(f"no public-holiday calendar for country {code!r}")
    return code


def supported_subdivision(country: str | None, subdivision: str) -> str:
    """``subdivision`` when ``country``'s holiday calendar has it, else ValueError."""
    if country is None:
        raise ValueError("a subdivision needs a country")
    if subdivision not in holidays.list_supported_countries().get(country, []):
        raise ValueError(f"no public-holiday calendar for {country}-{subdivision}")
    return subdivision


def _without_offset(value: time) -> time:
    if value.tzinfo is not None:
        raise ValueError("a local time of day without an offset (the time zone says where)")
    return value


def zone_or_utc(name: str) -> tzinfo:
    """The zone ``name``; UTC (logged at each call, until the name is mended) for a stored
    name that does not load here (a zone the host's time-zone data no longer has, a name
    stored before ``known_time_zone``). ``ZoneInfo`` keeps the zones it loaded."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError) as exc:
        log.warning("calendar_time_zone_unavailable", time_zone=name, error=repr(exc))
        return UTC


# The field types of the APIs that configure calendars (routing's branches, follow-up's
# contact hours): a bad value is a 422 naming the field, never an error in the arithmetic.
# Checks of requests only: a value stored before them is read as stored.
TimeZoneName = Annotated[str, request_only(known_time_zone)]
"""An IANA time zone name (``Asia/Shanghai``)."""

ConfiguredTimeZone = Annotated[str, AfterValidator(known_time_zone)]
"""A setting's IANA time zone: a misspelt one stops the service at start-up, naming it,
instead of every calendar it would read falling back to UTC."""

LocalTime = Annotated[time, request_only(_without_offset)]
"""A time of day in the calendar's own zone: ``09:00``, never ``09:00+01:00`` (an aware
time cannot be compared with a naive one: a TypeError)."""

HolidayCountry = Annotated[str, request_only(supported_country)]
"""A country whose public holidays the ``holidays`` library has (``CN``)."""


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
    def zone(self) -> tzinfo:
        """The calendar's zone; UTC (logged) for a stored name that does not load here."""
        return zone_or_utc(self.time_zone)

    def holiday_table(self, **options: str) -> holidays.HolidayBase | None:
        """The country's public holidays; None without a country, or (logged) for a stored
        one the library does not know (``country_holidays`` raises NotImplementedError, or
        a TypeError for a module attribute that is no country)."""
        if self.country is None:
            return None
        try:
            return holidays.country_holidays(self.country, subdiv=self.subdivision, **options)
        except (NotImplementedError, TypeError, AttributeError) as exc:
            log.warning(
                "calendar_holidays_unavailable",
                country=self.country,
                subdivision=self.subdivision,
                error=repr(exc),
            )
            return None

    @cached_property
    def _public_holidays(self) -> holidays.HolidayBase | None:
        return self.holiday_table(language="en_US")

    @cached_property
    def _local_hours(self) -> dict[int, list[tuple[time, time]]]:
        """The opening hours, sorted, without offsets: the zone says where (an offset
        stored before they were refused, ``09:00+01:00``, is 09:00 in the zone)."""
        return {
            weekday: sorted(
                (start.replace(tzinfo=None), end.replace(tzinfo=None)) for start, end in ranges
            )
            for weekday, ranges in self.hours.items()
        }

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
        # December (2012-01-03 was substituted from 2011-12-31), and one late in December by
        # a Saturday of the next January (Vietnam worked 2019-01-05 for 2018-12-31): look at
        # the years either side too.
        years = (year - 1, year, year + 1)
        for filled_year in years:
            _ = date(filled_year, 1, 1) in self._public_holidays  # the library fills on lookup
        worked = frozenset(
            substituted
            for holiday, name in self._public_holidays.items()
            if holiday.year in years
            for month, day, at_year in _SUBSTITUTED_FROM.findall(name)
            if (substituted := date(int(at_year), int(month), int(day))).year == year
        )
        self._working_days_by_year[year] = worked
        return worked

    def _day_hours(self, day: date) -> list[tuple[time, time]]:
        """The hours ``day`` opens if it is worked: its weekday's, else (a make-up day on a
        day the branch is closed) the template weekday's."""
        hours = self._local_hours
        return hours.get(day.weekday()) or hours.get(self.working_day_template, [])

    def is_working_day(self, day: date) -> bool:
        """Whether ``day`` opens at all. A make-up day (the country's 调休 or the
        organisation's own) without hours to borrow (a branch closed on that weekday and on
        the template's) is not one: counted as a business day, it made a deadline landing on
        it fail (no closing time) and every other deadline across it a day short."""
        if day in self.closed_days:
            return False
        if day in self.working_days or day in self._official_working_days(day.year):
            return bool(self._day_hours(day))
        if self._public_holidays is not None and day in self._public_holidays:
            return False
        return bool(self.hours.get(day.weekday()))

    def opening_ranges(self, day: date) -> list[tuple[datetime, datetime]]:
        """The day's open ranges as aware datetimes in the calendar's zone."""
        if not self.is_working_day(day):
            return []
        ranges = self._day_hours(day)
        return [
            (
                self._local(day, start),
                self._local(day, end) if end != time(0) else self._local(day + _DAY, time(0)),
            )
            for start, end in ranges
        ]

    def _local(self, day: date, moment: time) -> datetime:
        """``moment`` of ``day`` in the calendar's zone. A time the clocks jumped over (02:30
        as summer time begins in New York) is the instant they jumped: every moment the day
        has before it is earlier, every one after later. Taken with the offset before the
        jump, a range ending then ran half an hour into the next one, which counted that
        half hour twice and put deadlines early."""
        local = datetime.combine(day, moment, tzinfo=self.zone)
        if local.utcoffset() == local.replace(fold=1).utcoffset():
            return local  # neither skipped nor repeated: most times of most days
        utc = local.astimezone(UTC)
        if utc.astimezone(self.zone).replace(tzinfo=None) == local.replace(tzinfo=None):
            return local  # repeated as the clocks go back: its first occurrence
        # Between the instant the offset after the jump names and the one before it names.
        before, after = local.replace(fold=1).astimezone(UTC), utc
        offset = before.astimezone(self.zone).utcoffset()
        while after - before > _SECOND:
            middle = before + (after - before) / 2
            if middle.astimezone(self.zone).utcoffset() == offset:
                before = middle
            else:
                after = middle
        return after.astimezone(self.zone).replace(microsecond=0)

    def _ranges_from(
        self, at: datetime, *, until: datetime | None = None
    ) -> Iterable[tuple[datetime, datetime]]:
        """Open ranges that end after ``at``, in order, starting on ``at``'s local day:
        up to ``until``'s local day when given, else for ``MAX_DAYS_SEARCHED`` days, then
        ``BeyondHorizon``.

        Yielded in UTC: Python subtracts and adds aware datetimes sharing a zone in
        wall-clock time, which would count a range spanning a DST change an hour wrong.
        """
        local_day = at.astimezone(self.zone).date()
        days = MAX_DAYS_SEARCHED
        if until is not None:
            days = (until.astimezone(self.zone).date() - local_day).days + 1
        for offset in range(days):
            for start, end in self.opening_ranges(local_day + timedelta(days=offset)):
                if end > at:
                    yield max(start, at).astimezone(UTC), end.astimezone(UTC)
        if until is None:
            raise BeyondHorizon(
                f"calendar {self.time_zone} has not enough opening hours within 3 years of {at}"
            )

    def is_open(self, at: datetime) -> bool:
        try:
            first_start, _ = next(iter(self._ranges_from(at)))
        except BeyondHorizon:
            return False  # no opening for years: closed now too
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
        for range_start, range_end in self._ranges_from(start, until=end):
            if range_start >= end:
                break
            total += min(range_end, end) - range_start
        return total

    def end_of_business_day(self, start: datetime) -> datetime:
        """Closing time of the business day ``start`` falls in (or the next one's).

        A business day is a local day's opening ranges, and a range that runs to midnight
        goes on into the next day's range from midnight: a night shift entered as
        18:00-24:00 and 00:00-02:00 closes at 02:00, for a complaint at 23:50 as for one
        at 01:00 (whose business day began the evening before). Taken as the local day's
        last range alone, the first was due at midnight, ten minutes on, and the second
        at the next midnight. Opening that never stops (a branch open round the clock) has
        no close: its business day is ``_DAY`` from ``start``, not what is left of the
        local date.
        """
        first_start, first_end = next(iter(self._ranges_from(start)))
        day = first_start.astimezone(self.zone).date()
        opened = next(begin for begin, end in self.opening_ranges(day) if end == first_end)
        evening = self.opening_ranges(day - _DAY)
        if opened == self._local(day, time(0)) and evening and evening[-1][1] == opened:
            day -= _DAY  # carried on from the evening before: that business day's close
        cap = first_start + _DAY
        closing = self.opening_ranges(day)[-1][1]
        following = day + _DAY
        while closing < cap:
            carried = self.opening_ranges(following)
            if not carried or carried[0][0] != closing:
                break
            closing = carried[0][1]  # the range from midnight the day's last one runs on in
            following += _DAY
        return min(closing, cap).astimezone(UTC)

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
        raise BeyondHorizon(
            f"calendar {self.time_zone} has no {days} working days within 3 years of {start}"
        )

    def longest_closure(self) -> tuple[date, int] | None:
        """The longest run of days without opening that one of the calendar's own closed
        days is part of: (its first day, its length), or None without closed days.

        Only closed days can close a calendar for long (weekends and holiday periods end
        within weeks), so the runs around them are all that is walked; a run is measured
        only until it is longer than ``MAX_CLOSURE_DAYS``. Closed days outside the years
        1970-2200 (stored before they were refused) are left out: no arithmetic reaches them,
        and walking from year 1 or 9999 would step out of the calendar.
        """
        longest: tuple[date, int] | None = None
        walked_to = date.min
        for closed in sorted(self.closed_days):
            if closed <= walked_to or not EARLIEST_YEAR <= closed.year <= LATEST_YEAR:
                continue  # inside the run measured last, or out of reach
            first = last = closed
            while (closed - first).days <= MAX_CLOSURE_DAYS and not self.is_working_day(
                first - timedelta(days=1)
            ):
                first -= timedelta(days=1)
            while (last - first).days <= MAX_CLOSURE_DAYS and not self.is_working_day(
                last + timedelta(days=1)
            ):
                last += timedelta(days=1)
            walked_to = last
            length = (last - first).days + 1
            if longest is None or length > longest[1]:
                longest = (first, length)
        return longest


def closure_problem(calendar: BusinessCalendar) -> str | None:
    """Why ``calendar``'s closed days cannot be kept (None: they can): a run of more than
    ``MAX_CLOSURE_DAYS`` days without opening, in which no deadline or call time could be
    found (the arithmetic would give up there with ``BeyondHorizon``)."""
    closure = calendar.longest_closure()
    if closure is None or closure[1] <= MAX_CLOSURE_DAYS:
        return None
    first, _ = closure
    return (
        f"with the closed days the calendar has no opening for more than {MAX_CLOSURE_DAYS} "
        f"days in a row from {first.isoformat()}"
    )


def warm_up(*, now: datetime) -> None:
    """Load the ``holidays`` library's country rules once, at start.

    The library imports its country modules on first use (compiling their source where no
    bytecode is cached): 0.3–0.8 s measured, which stalled whichever complaint first needed
    a business calendar (``python -m bench.stages``: one stall of ~0.4–0.8 s some seconds
    into the first load). Each calendar still fills its own years on first use (far less).
    """
    BusinessCalendar().is_working_day(now.date())
