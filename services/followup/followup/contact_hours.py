"""When customers may be called: contact hours per branch, in the branch's time zone.

Follow-up cannot read routing's directory, so it keeps its own contact-hours
configuration per branch (service defaults from the settings, in the branch's
time zone once routing announced it, overridden per branch through
``PUT /v1/followups/contact-hours/{branch}``) and evaluates it with the shared
business calendar, the same arithmetic (public holidays, 调休 make-up days, the
organisation's closed days) routing uses for SLA clocks.
"""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from functools import cached_property, lru_cache

import holidays

from complaints_shared.business_calendar import (
    BeyondHorizon,
    BusinessCalendar,
    closure_problem,
    known_time_zone,
)
from complaints_shared.logs import get_logger
from complaints_shared.problems import invalid
from followup.models import CheckRule, ContactHours
from followup.settings import FollowupSettings

SATURDAY = 5

log = get_logger(__name__)


def _nearest_weekday(day: date, *, step: int) -> date:
    day += timedelta(days=step)
    while day.weekday() >= SATURDAY:
        day += timedelta(days=step)
    return day


class ContactCalendar(BusinessCalendar):
    """A business calendar that also closes weekend days inside a run of public holidays.

    The holiday tables list only the weekdays of a holiday period, which is all an
    office calendar needs; contact hours often include weekends, and the Sunday in
    the middle of Golden Week is no day to call a customer either.
    """

    @cached_property
    def _holiday_table(self) -> holidays.HolidayBase | None:
        return self.holiday_table()

    def is_working_day(self, day: date) -> bool:
        return super().is_working_day(day) and not self._weekend_inside_holidays(day)

    def _weekend_inside_holidays(self, day: date) -> bool:
        table = self._holiday_table
        if table is None or day.weekday() < SATURDAY or day in self.working_days:
            return False
        before, after = _nearest_weekday(day, step=-1), _nearest_weekday(day, step=1)
        return before in table and after in table


# Branches this process has said it counts in the default zone, so each is logged once.
_defaulted_branches: set[tuple[str, str, str | None]] = set()


def default_contact_hours(
    settings: FollowupSettings, *, time_zone: str | None = None
) -> ContactHours:
    """The contact hours of every branch without its own configuration: the settings' clock
    times and days, in ``time_zone`` (the branch's) or else ``CONTACT_TIME_ZONE``."""
    return ContactHours(
        time_zone=time_zone or settings.contact_time_zone,
        start=settings.contact_hours_start,
        end=settings.contact_hours_end,
        weekdays=settings.contact_weekdays,
        holiday_country=settings.contact_holiday_country,
    )


def branch_default_hours(
    settings: FollowupSettings, *, org: str, branch: str, announced_time_zone: str | None
) -> ContactHours:
    """The default contact hours of a branch without its own: in the time zone routing
    announced for it (``branch.updated``), else in ``CONTACT_TIME_ZONE``, as before follow-up
    knew branch zones (logged once per branch and process: no announcement yet, or one whose
    zone this host does not know, such as a ``localtime`` stored before routing checked)."""
    if announced_time_zone is not None and _usable(announced_time_zone):
        return default_contact_hours(settings, time_zone=announced_time_zone)
    if (org, branch, announced_time_zone) not in _defaulted_branches:
        _defaulted_branches.add((org, branch, announced_time_zone))
        log.info(
            "contact_hours_in_default_time_zone",
            org=org,
            branch=branch,
            time_zone=settings.contact_time_zone,
            announced_time_zone=announced_time_zone,
        )
    return default_contact_hours(settings)


def _usable(time_zone: str) -> bool:
    try:
        known_time_zone(time_zone)
    except ValueError:
        return False
    return True


def calendar_of(hours: ContactHours) -> ContactCalendar:
    """The business calendar for ``hours`` (cached: holiday tables are costly to build)."""
    return _calendar(
        time_zone=hours.time_zone,
        start=hours.start,
        end=hours.end,
        weekdays=tuple(sorted(day.index for day in hours.weekdays)),
        country=hours.holiday_country,
        subdivision=hours.holiday_subdivision,
        closed_days=frozenset(hours.closed_days),
        working_days=frozenset(hours.working_days),
    )


@lru_cache(maxsize=256)
def _calendar(
    *,
    time_zone: str,
    start: time,
    end: time,
    weekdays: tuple[int, ...],
    country: str | None,
    subdivision: str | None,
    closed_days: frozenset,
    working_days: frozenset,
) -> ContactCalendar:
    return ContactCalendar(
        time_zone=time_zone,
        hours={weekday: [(start, end)] for weekday in weekdays},
        country=country,
        subdivision=subdivision,
        closed_days=closed_days,
        working_days=working_days,
        # A make-up working day (调休) on a day without contact hours borrows the first day's.
        working_day_template=weekdays[0],
    )


def check_closures(hours: ContactHours) -> None:
    """A 422 naming ``closed_days`` when they leave customers uncallable for over a year: no
    check could be scheduled and no unreached call retried in such a stretch."""
    problem = closure_problem(calendar_of(hours))
    if problem is not None:
        raise invalid("closed_days", problem)


def next_contact_moment(*, hours: ContactHours, at: datetime) -> datetime:
    """``at`` itself when customers may be called then, else the next moment they may (UTC).

    Contact hours stored before long closures were refused may have no such moment within
    the three years the calendar searches: then ``at`` itself (logged), so the check is
    still scheduled and the call still retried rather than the complaint's event failing.
    """
    calendar = calendar_of(hours)
    try:
        return calendar.next_open(at)
    except BeyondHorizon as exc:
        log.warning("contact_moment_beyond_horizon", time_zone=hours.time_zone, error=str(exc))
        return at


def check_due_times(
    *, resolved_at: datetime, checks: list[CheckRule], hours: ContactHours
) -> list[datetime]:
    """Due time of each check: its offset after resolution, moved into contact hours."""
    return [
        next_contact_moment(hours=hours, at=resolved_at + timedelta(hours=rule.after_hours))
        for rule in checks
    ]


def next_attempt_at(
    *, attempted_at: datetime, spacing_hours: float, hours: ContactHours
) -> datetime:
    """When to call again after an unreached attempt."""
    return next_contact_moment(hours=hours, at=attempted_at + timedelta(hours=spacing_hours))
