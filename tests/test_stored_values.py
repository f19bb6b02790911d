"""Unit: values stored before a check was tightened are read as stored, and the arithmetic
that consumes them degrades (logging a warning) instead of failing.

Each value here was accepted by the API before the checks of 3 December (the years
1970-2200, IANA zone names from the zone list, offset-free opening times, holiday
countries from the library's list, closures of a year at most) and is refused by it now.
"""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, time, timedelta, timezone

import pytest
from pydantic import ValidationError

from complaints_shared.business_calendar import BusinessCalendar, closure_problem
from complaints_shared.models import StrictModel
from complaints_shared.stored import from_stored
from followup.contact_hours import next_contact_moment
from followup.models import ContactHours
from intake.models import Customer
from intake.store import to_read
from routing.demo import branch_documents
from routing.directory.models import BranchUpdate
from routing.directory.store import branch_read
from routing.sla import clocks as sla
from routing.sla.models import DurationUnit, SlaDuration, TimeBasis
from tests.support.clock import utc

NOW = utc(2026, 11, 23, 2)  # Monday 10:00 in Shanghai
(LZ,) = [document for document in branch_documents("demo", NOW) if document["code"] == "LZ"]
WITHOUT_HOLIDAYS = {"country": None, "subdivision": None, "closed_days": [], "working_days": []}


def _logged(capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> str:
    captured = capfd.readouterr()
    return captured.out + captured.err + caplog.text


# ------------------------------------------------------------------ reading --


@pytest.mark.parametrize(
    "stored",
    [
        {"time_zone": "localtime"},
        {"time_zone": "Asia/../Asia/Shanghai"},
        {"hours": {"mon": [{"start": "09:00:00+08:00", "end": "18:00:00+08:00"}]}},
        {"holidays": {**WITHOUT_HOLIDAYS, "country": "China"}},
        {"holidays": {**WITHOUT_HOLIDAYS, "country": "GB", "subdivision": "England"}},
        {"holidays": {**WITHOUT_HOLIDAYS, "subdivision": "GD"}},
        {"holidays": {**WITHOUT_HOLIDAYS, "closed_days": ["2500-01-01", "0001-01-01"]}},
        {"holidays": {**WITHOUT_HOLIDAYS, "working_days": ["9999-12-31"]}},
    ],
)
def test_a_branch_stored_before_the_calendar_checks_is_read_as_stored(stored: dict) -> None:
    branch = branch_read({**LZ, **stored})
    assert branch.model_dump(mode="json", include=set(stored)) == stored
    with pytest.raises(ValidationError):
        BranchUpdate.model_validate(stored)  # still refused at the door


STORED_COMPLAINT = {
    "_id": "c-1",
    "reference": "LZ-20261123-0001",
    "org": "demo",
    "branch": "LZ",
    "status": "open",
    "channel": "phone",
    "category": "billing",
    "severity": "normal",
    "flags": [],
    "customer": {"name": "王女士"},
    "subject": "话费账单多扣费",
    "description": "十月份账单多扣了三十元",
    "acknowledgement": {"acknowledged_by": "lz-chen", "acknowledged_at": NOW},
    "created_at": NOW,
    "updated_at": NOW,
}


@pytest.mark.parametrize(
    ("occurred_at", "promised_response_at"),
    [
        (datetime(1, 1, 1, tzinfo=UTC), None),
        (datetime(2999, 6, 1, 12, tzinfo=UTC), None),
        (None, datetime(9999, 12, 31, tzinfo=UTC)),
        (None, datetime(1969, 12, 31, 23, 59, tzinfo=UTC)),
    ],
)
def test_a_complaint_stored_before_the_date_range_is_read_as_stored(
    occurred_at: datetime | None, promised_response_at: datetime | None
) -> None:
    acknowledgement = {
        **STORED_COMPLAINT["acknowledgement"],
        "promised_response_at": promised_response_at,
    }
    complaint = to_read(
        {**STORED_COMPLAINT, "occurred_at": occurred_at, "acknowledgement": acknowledgement}
    )
    assert complaint.occurred_at == occurred_at
    assert complaint.acknowledgement.promised_response_at == promised_response_at


@pytest.mark.parametrize("phone", ["12-34", "(   )", "+1 ( ) -"])
def test_a_phone_stored_before_the_digit_count_is_read_as_stored(phone: str) -> None:
    """Phones with fewer than five digits passed the pattern before 4 December: the complaint
    must still read (its GET, every list page holding it, the answer to each command)."""
    customer = {"name": "王女士", "phone": phone}
    assert to_read({**STORED_COMPLAINT, "customer": customer}).customer.phone == phone
    with pytest.raises(ValidationError, match="at least 5 digits"):
        Customer.model_validate(customer)


def test_the_text_check_of_strict_models_is_one_of_requests() -> None:
    """Stored text was encoded once (BSON cannot hold a lone surrogate): it is not walked."""

    class Note(StrictModel):
        text: str

    assert from_stored(Note, {"text": "\ud800"}).text == "\ud800"
    with pytest.raises(ValidationError):
        Note.model_validate({"text": "\ud800"})


def test_contact_hours_stored_before_the_checks_are_read_as_stored() -> None:
    stored = {
        "time_zone": "localtime",
        "start": "09:00:00",
        "end": "20:00:00",
        "weekdays": ["mon", "tue"],
        "holiday_country": None,
        "holiday_subdivision": None,
        "closed_days": ["2500-01-01"],
        "working_days": ["0001-01-01"],
    }
    assert from_stored(ContactHours, stored).model_dump(mode="json") == stored
    with pytest.raises(ValidationError):
        ContactHours.model_validate(stored)


# -------------------------------------------------------------- arithmetic --


def test_an_offset_stored_with_an_opening_time_is_ignored_the_zone_says_where() -> None:
    plus_one = timezone(timedelta(hours=1))
    calendar = BusinessCalendar(
        time_zone="Europe/London",
        country=None,
        hours={0: [(time(9, tzinfo=plus_one), time(0, tzinfo=plus_one))]},  # 00:00: midnight
    )
    monday_8 = utc(2026, 11, 23, 8)
    assert calendar.next_open(monday_8) == utc(2026, 11, 23, 9)
    assert calendar.end_of_business_day(monday_8) == utc(2026, 11, 24, 0)
    stored = branch_read({**LZ, "hours": {"mon": [{"start": "09:00+01:00", "end": "12:00+01:00"}]}})
    assert sla.branch_calendar(stored).end_of_business_day(NOW) == utc(2026, 11, 23, 4)


def test_a_stored_zone_that_no_longer_loads_is_counted_in_utc_with_a_warning(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    calendar = BusinessCalendar(time_zone="Mars/Olympus_Mons", country=None)
    assert calendar.next_open(utc(2026, 11, 23, 2)) == utc(2026, 11, 23, 9)
    assert "calendar_time_zone_unavailable" in _logged(capfd, caplog)


def test_a_stored_holiday_country_the_library_refuses_means_no_public_holidays(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    calendar = BusinessCalendar(country="XX")
    assert calendar.is_working_day(date(2026, 10, 1))  # a Thursday; National Day in CN
    assert "calendar_holidays_unavailable" in _logged(capfd, caplog)


def test_closed_days_outside_the_supported_years_close_nothing_the_closure_check_walks() -> None:
    calendar = BusinessCalendar(
        country="CN", closed_days=frozenset({date(1, 1, 1), date(9999, 12, 31), date(2500, 1, 1)})
    )
    assert closure_problem(calendar) is None
    assert calendar.next_open(NOW) == NOW


def _closed_for_years(first: date, days: int) -> frozenset[date]:
    return frozenset(first + timedelta(days=offset) for offset in range(days))


def test_a_calendar_without_opening_within_its_horizon_is_closed_not_an_error() -> None:
    shut = BusinessCalendar(country=None, closed_days=_closed_for_years(date(2026, 11, 1), 1200))
    assert not shut.is_open(NOW)


def test_a_branch_closed_beyond_the_horizon_still_gets_deadlines_at_the_horizon(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    shut = BusinessCalendar(country=None, closed_days=_closed_for_years(date(2026, 11, 1), 1200))
    for duration in (
        SlaDuration(amount=1, unit=DurationUnit.END_OF_BUSINESS_DAY, basis=TimeBasis.BUSINESS),
        SlaDuration(amount=3, unit=DurationUnit.DAYS, basis=TimeBasis.BUSINESS),
        SlaDuration(amount=0, unit=DurationUnit.DAYS, basis=TimeBasis.BUSINESS),
        SlaDuration(amount=4, unit=DurationUnit.HOURS, basis=TimeBasis.BUSINESS),
    ):
        clock = sla.start_clock(shut, start=NOW, duration=duration, warning_share=0.8)
        assert clock.due_at == NOW + sla.HORIZON, duration
    assert sla.clock_start(shut, NOW) == NOW
    assert "sla_deadline_at_horizon" in _logged(capfd, caplog)


def test_contact_hours_without_opening_within_the_horizon_keep_a_check_at_its_own_time(
    capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    first_monday = date(2026, 11, 23)
    mondays_closed = from_stored(
        ContactHours,
        {
            "time_zone": "Asia/Shanghai",
            "start": "09:00",
            "end": "20:00",
            "weekdays": ["mon"],
            "closed_days": [first_monday + timedelta(weeks=week) for week in range(160)],
        },
    )
    assert next_contact_moment(hours=mondays_closed, at=NOW) == NOW
    assert "contact_moment_beyond_horizon" in _logged(capfd, caplog)


def test_skills_stored_before_their_checks_are_read_as_stored() -> None:
    """An empty ``required_skill`` (any string was taken) and a skill of a space were stored
    before 5 December; the checks are of requests, so the rules and the staff still load."""
    from routing.directory.models import StaffCreate, StaffRead
    from routing.rules.models import RuleAction

    action = from_stored(RuleAction, {"department_kind": "billing", "required_skill": ""})
    assert action.required_skill == ""
    person = {"id": "lz-x", "branch": "LZ", "department": "BILLING", "name": "某人"}
    stored = from_stored(
        StaffRead,
        {
            **person,
            "org": "demo",
            "department_id": "LZ:BILLING",
            "skills": [" ", "x" * 80],
            "languages": [""],
        },
    )
    assert stored.skills == [" ", "x" * 80]
    with pytest.raises(ValidationError):
        StaffCreate.model_validate({**person, "skills": [" "]})
    with pytest.raises(ValidationError):
        RuleAction(department_kind="billing", required_skill="x" * 65)
