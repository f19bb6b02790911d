"""Unit: business-time arithmetic (weekends, holidays, 调休, time zones)."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, date, time, timedelta

import pytest
from pydantic import TypeAdapter, ValidationError

from complaints_shared.business_calendar import (
    MAX_CLOSURE_DAYS,
    BeyondHorizon,
    BusinessCalendar,
    HolidayCountry,
    LocalTime,
    TimeZoneName,
    closure_problem,
    supported_subdivision,
)
from followup.settings import FollowupSettings
from intake.settings import IntakeSettings
from routing.sla import clocks
from routing.sla.models import SlaDuration
from tests.support.clock import utc

SHANGHAI = BusinessCalendar(time_zone="Asia/Shanghai", country="CN")


def test_friday_afternoon_plus_two_business_hours_lands_on_monday() -> None:
    friday_17_local = utc(2026, 11, 27, 9)
    assert SHANGHAI.add_business_time(friday_17_local, timedelta(hours=2)) == utc(2026, 11, 30, 2)


def test_public_holiday_is_closed_and_make_up_sunday_is_open() -> None:
    assert not SHANGHAI.is_working_day(date(2026, 10, 1))  # National Day
    assert SHANGHAI.is_working_day(date(2026, 10, 10))  # a Saturday worked (调休)
    assert not SHANGHAI.is_working_day(date(2026, 11, 28))  # an ordinary Saturday


def test_a_make_up_day_without_hours_to_borrow_is_no_business_day() -> None:
    """A shop open Tuesday to Saturday: the country's make-up Sunday (2025-01-26) has no
    hours of its own and none on Monday (the template) either. Counted as a business day,
    the third business day after Thursday 23 January landed on it and the deadline raised
    IndexError (routing dead-lettered the complaint, never routed); now it is skipped, as
    are Monday and the Spring Festival, and the third is Saturday 1 February."""
    shop = BusinessCalendar(
        time_zone="Asia/Shanghai",
        country="CN",
        hours={day: [(time(9), time(18))] for day in range(1, 6)},
    )
    assert not shop.is_working_day(date(2025, 1, 26))
    assert shop.opening_ranges(date(2025, 1, 26)) == []
    thursday_11_local = utc(2025, 1, 23, 3)
    assert shop.add_business_days(thursday_11_local, 3) == utc(2025, 2, 1, 3)
    own_make_up = BusinessCalendar(
        country=None,
        hours={day: [(time(9), time(18))] for day in range(1, 6)},
        working_days=frozenset({date(2026, 11, 30)}),  # a Monday, the branch is closed Mondays
    )
    assert not own_make_up.is_working_day(date(2026, 11, 30))
    assert own_make_up.add_business_days(utc(2026, 11, 28, 3), 1) == utc(2026, 12, 1, 3)


def test_a_january_make_up_day_for_a_december_holiday_is_open() -> None:
    """Vietnam worked Saturday 2019-01-05 for the bridge holiday of Monday 2018-12-31: the
    make-up days were looked for in the holidays of the day's year and the next only, so
    it counted as closed until 5 December (a December one paid for January was found)."""
    weekdays = {day: [(time(8), time(17))] for day in range(5)}
    hanoi = BusinessCalendar(time_zone="Asia/Ho_Chi_Minh", hours=weekdays, country="VN")
    assert hanoi.is_working_day(date(2019, 1, 5))
    assert not hanoi.is_working_day(date(2018, 12, 31))
    shanghai = BusinessCalendar(time_zone="Asia/Shanghai", hours=weekdays, country="CN")
    assert shanghai.is_working_day(date(2011, 12, 31))  # for 2012-01-03, as before


def test_opening_hours_at_a_time_the_clocks_jump_over_end_at_the_jump() -> None:
    """New York's hours 00:00-02:30 and 03:00-08:00 on the Sunday summer time begins (02:00
    is 03:00): 02:30 was taken with winter's offset, half an hour into the next range, so
    seven hours of real time counted seven and a half and a deadline came half an hour early.
    """
    sunday = {6: [(time(0), time(2, 30)), (time(3), time(8))]}
    new_york = BusinessCalendar(time_zone="America/New_York", hours=sunday)
    ranges = [
        (start.astimezone(UTC), end.astimezone(UTC))
        for start, end in new_york.opening_ranges(date(2024, 3, 10))
    ]
    assert ranges == [
        (utc(2024, 3, 10, 5), utc(2024, 3, 10, 7)),  # to the jump (02:00 EST is 03:00 EDT)
        (utc(2024, 3, 10, 7), utc(2024, 3, 10, 12)),
    ]
    midnight, eight = utc(2024, 3, 10, 5), utc(2024, 3, 10, 12)
    assert new_york.business_time_between(midnight, eight) == timedelta(hours=7)
    assert new_york.add_business_time(midnight, timedelta(hours=7)) == eight
    # A range starting in the gap starts at the jump; other days are as they were.
    gap_start = BusinessCalendar(time_zone="America/New_York", hours={6: [(time(2, 30), time(4))]})
    assert gap_start.opening_ranges(date(2024, 3, 10))[0][0] == utc(2024, 3, 10, 7)
    assert gap_start.opening_ranges(date(2024, 3, 17))[0][0] == utc(2024, 3, 17, 6, 30)


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


NIGHT_SHIFT = BusinessCalendar(
    country=None, hours={day: [(time(0), time(2)), (time(18), time(0))] for day in range(7)}
)
ROUND_THE_CLOCK = BusinessCalendar(
    country=None, hours={day: [(time(0), time(0))] for day in range(7)}
)


@pytest.mark.parametrize(
    ("received", "closes"),
    [
        (utc(2026, 12, 7, 15, 50), utc(2026, 12, 7, 18)),  # Monday 23:50: closes 02:00
        (utc(2026, 12, 7, 17), utc(2026, 12, 7, 18)),  # Tuesday 01:00: Monday's shift
        (utc(2026, 12, 7, 2), utc(2026, 12, 7, 18)),  # Monday 10:00, closed: that night's
        (utc(2026, 12, 7, 10), utc(2026, 12, 7, 18)),  # Monday 18:00 sharp: opens then
    ],
)
def test_a_night_shift_across_midnight_is_one_business_day(received, closes) -> None:
    # Shanghai times: 18:00-24:00 and 00:00-02:00 every day. The local day's last range
    # alone put 23:50 due at midnight, and 01:00 due at the next midnight.
    assert NIGHT_SHIFT.end_of_business_day(received) == closes


@pytest.mark.parametrize("received", [utc(2026, 12, 7, 15, 50), utc(2026, 12, 7, 16, 10)])
def test_a_business_day_of_a_branch_that_never_closes_is_a_day(received) -> None:
    # 23:50 and 00:10 local: ten minutes and almost a day, when the local date's end closed it.
    assert ROUND_THE_CLOCK.end_of_business_day(received) == received + timedelta(days=1)
    two_closes = SlaDuration(amount=2, unit="end_of_business_day", basis="business")
    assert clocks.deadline(ROUND_THE_CLOCK, received, two_closes) == received + timedelta(days=2)
    assert clocks.deadline(NIGHT_SHIFT, utc(2026, 12, 7, 17), two_closes) == utc(2026, 12, 8, 18)


def test_time_between_far_apart_moments_is_counted_not_given_up_on() -> None:
    # Five years: beyond the three the calendar searches for a next opening.
    span = SHANGHAI.business_time_between(utc(2026, 1, 1), utc(2031, 1, 1))
    assert timedelta(hours=9 * 240 * 5) < span < timedelta(hours=9 * 260 * 5)


def test_running_out_of_horizon_is_a_value_error_of_its_own() -> None:
    with pytest.raises(BeyondHorizon):
        SHANGHAI.add_business_time(utc(2026, 1, 1), timedelta(hours=10_000))
    with pytest.raises(BeyondHorizon):
        SHANGHAI.add_business_days(utc(2026, 1, 1), 1000)
    assert issubclass(BeyondHorizon, ValueError)


def _mondays(first: date, count: int) -> frozenset[date]:
    return frozenset(first + timedelta(weeks=week) for week in range(count))


def test_closed_days_that_close_a_calendar_for_over_a_year_are_a_problem() -> None:
    mondays_only = {0: [(time(9), time(18))]}
    first_monday = date(2026, 11, 30)
    three_years = BusinessCalendar(
        hours=mondays_only, country=None, closed_days=_mondays(first_monday, 157)
    )
    first, length = three_years.longest_closure()
    assert first == first_monday - timedelta(days=6)  # from the Tuesday after the last opening
    assert length > MAX_CLOSURE_DAYS
    assert "2026-11-24" in closure_problem(three_years)
    with pytest.raises(BeyondHorizon):
        three_years.next_open(utc(2026, 12, 1))

    half_a_year = BusinessCalendar(
        hours=mondays_only, country=None, closed_days=_mondays(first_monday, 26)
    )
    assert half_a_year.longest_closure() == (first_monday - timedelta(days=6), 27 * 7 - 1)
    assert closure_problem(half_a_year) is None
    assert closure_problem(SHANGHAI) is None  # no closed days at all


@pytest.mark.parametrize("zone", ["Asia", "Asia/", "x" * 300, "../etc/passwd", "", "localtime"])
def test_a_time_zone_is_a_known_iana_name_or_a_validation_error(zone: str) -> None:
    # ``ZoneInfo`` itself raises IsADirectoryError for ``Asia`` and OSError for 300 characters.
    with pytest.raises(ValidationError):
        TypeAdapter(TimeZoneName).validate_python(zone)
    assert TypeAdapter(TimeZoneName).validate_python("Europe/London") == "Europe/London"


@pytest.mark.parametrize("country", ["countries", "__init__", "cn", "Germany", "XX"])
def test_a_holiday_country_is_one_the_library_lists_or_a_validation_error(country: str) -> None:
    # ``holidays.country_holidays`` raises TypeError for module attributes like ``countries``.
    with pytest.raises(ValidationError):
        TypeAdapter(HolidayCountry).validate_python(country)
    assert TypeAdapter(HolidayCountry).validate_python("CN") == "CN"
    assert supported_subdivision("GB", "ENG") == "ENG"
    for country_code, subdivision in (("GB", "__init__"), (None, "ENG")):
        with pytest.raises(ValueError):
            supported_subdivision(country_code, subdivision)


def test_a_local_time_has_no_offset() -> None:
    with pytest.raises(ValidationError):
        TypeAdapter(LocalTime).validate_python("12:00+01:00")
    assert TypeAdapter(LocalTime).validate_python("12:00") == time(12)


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


@pytest.mark.parametrize(
    ("settings_class", "field"),
    [(IntakeSettings, "reference_time_zone"), (FollowupSettings, "contact_time_zone")],
)
def test_a_misspelt_time_zone_setting_stops_the_service_naming_it(settings_class, field) -> None:
    """It used to be taken as given: every calendar read then fell back to UTC (a warning
    per read), so references were numbered by the UTC day and calls placed at UTC hours."""
    with pytest.raises(ValidationError, match=f"{field}[\\s\\S]*unknown IANA time zone"):
        settings_class(**{field: "Asia/Shangai"})
    assert getattr(settings_class(**{field: "Europe/London"}), field) == "Europe/London"
