"""Unit: business-time arithmetic (weekends, holidays, 调休, time zones)."""

from __future__ import annotations

import subprocess
import sys
from datetime import date, time, timedelta

from complaints_shared.business_calendar import BusinessCalendar
from tests.support.clock import utc

SHANGHAI = BusinessCalendar(time_zone="Asia/Shanghai", country="CN")


def test_friday_afternoon_plus_two_business_hours_lands_on_monday() -> None:
    friday_17_local = utc(2026, 11, 27, 9)
    assert SHANGHAI.add_business_time(friday_17_local, timedelta(hours=2)) == utc(2026, 11, 30, 2)


def test_public_holiday_is_closed_and_make_up_sunday_is_open() -> None:
    assert not SHANGHAI.is_working_day(date(2026, 10, 1))  # National Day
    assert SHANGHAI.is_working_day(date(2026, 10, 10))  # a Saturday worked (调休)
    assert not SHANGHAI.is_working_day(date(2026, 11, 28))  # an ordinary Saturday


def test_organisation_closed_days_and_own_working_days_override() -> None:
    calendar = BusinessCalendar(
        closed_days=frozenset({date(2026, 11, 25)}), working_days=frozenset({date(2026, 11, 29)})
    )
    assert not calendar.is_working_day(date(2026, 11, 25))
    assert calendar.is_working_day(date(2026, 11, 29))
    assert calendar.next_open(utc(2026, 11, 28, 12)) == utc(2026, 11, 29, 1)


def test_time_zone_decides_the_local_day() -> None:
    london = BusinessCalendar(time_zone="Europe/London", country="GB")
    # 08:30 UTC is 08:30 in London (closed) but 16:30 in Shanghai (open).
    at = utc(2026, 11, 24, 8, 30)
    assert SHANGHAI.is_open(at)
    assert not london.is_open(at)
    assert london.next_open(at) == utc(2026, 11, 24, 9)


def test_business_time_between_skips_nights_and_weekends() -> None:
    span = SHANGHAI.business_time_between(utc(2026, 11, 27, 9), utc(2026, 11, 30, 2))
    assert span == timedelta(hours=2)


def test_split_opening_hours_and_end_of_day() -> None:
    calendar = BusinessCalendar(
        country=None, hours={0: [(time(8), time(12)), (time(14), time(18))]}
    )
    monday_11_local = utc(2026, 11, 30, 3)
    assert calendar.add_business_time(monday_11_local, timedelta(hours=2)) == utc(2026, 11, 30, 7)
    assert calendar.end_of_business_day(monday_11_local) == utc(2026, 11, 30, 10)
    assert calendar.add_business_days(monday_11_local, 1) == utc(2026, 12, 7, 3)


def test_warm_up_loads_the_holiday_rules_a_first_complaint_would_otherwise_wait_for() -> None:
    """The holidays library imports its country modules on first use (0.3–0.8 s); a fresh
    interpreter shows it lazy, and loaded once ``warm_up`` has run."""
    probe = (
        "import sys\n"
        "from datetime import UTC, datetime\n"
        "from complaints_shared import business_calendar\n"
        "{warm}\n"
        "print('holidays.countries.china' in sys.modules)\n"
    )
    results = [
        subprocess.run(
            [sys.executable, "-c", probe.format(warm=warm)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        for warm in ("", "business_calendar.warm_up(now=datetime.now(UTC))")
    ]
    assert results == ["False", "True"]
