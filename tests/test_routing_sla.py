"""Unit: SLA due times in business time (weekends, holidays, 调休, time zones, pauses)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from complaints_shared.events import Category, Severity
from complaints_shared.models import Weekday
from routing.assignments.models import ClockState
from routing.directory.models import BranchRead, HolidayCalendar, OpeningRange
from routing.sla import clocks as sla
from routing.sla.models import (
    MAX_AMOUNTS,
    DurationUnit,
    SlaDuration,
    SlaPolicy,
    SlaPolicyWrite,
    TimeBasis,
)

NINE_TO_SIX = {
    day: [OpeningRange(start="09:00", end="18:00")]
    for day in (Weekday.MON, Weekday.TUE, Weekday.WED, Weekday.THU, Weekday.FRI)
}


def branch(**overrides) -> BranchRead:
    values = {"org": "demo", "code": "LZ", "name": "兰州", "hours": NINE_TO_SIX, **overrides}
    return BranchRead(**values)


SHANGHAI = sla.branch_calendar(branch())


def shanghai(year: int, month: int, day: int, hour: int, minute: int = 0) -> datetime:
    """A Shanghai wall-clock time as UTC (Shanghai is UTC+8 all year)."""
    return datetime(year, month, day, hour, minute, tzinfo=UTC) - timedelta(hours=8)


def due(severity: Severity, start: datetime, calendar=SHANGHAI) -> tuple[datetime, datetime]:
    targets = sla.BUILTIN_TARGETS[severity]
    return (
        sla.deadline(calendar, start, targets.acknowledge),
        sla.deadline(calendar, start, targets.resolve),
    )


MONDAY_10 = shanghai(2026, 11, 23, 10)


@pytest.mark.parametrize(
    ("severity", "acknowledge_by", "resolve_by"),
    [
        (Severity.CRITICAL, shanghai(2026, 11, 23, 11), shanghai(2026, 11, 24, 10)),
        (Severity.HIGH, shanghai(2026, 11, 23, 14), shanghai(2026, 11, 26, 10)),
        (Severity.NORMAL, shanghai(2026, 11, 23, 18), shanghai(2026, 12, 2, 10)),
        (Severity.LOW, shanghai(2026, 11, 25, 10), shanghai(2026, 12, 14, 10)),
    ],
)
def test_default_policy_due_times_from_a_monday_morning(
    severity: Severity, acknowledge_by: datetime, resolve_by: datetime
) -> None:
    assert due(severity, MONDAY_10) == (acknowledge_by, resolve_by)


def test_business_hours_carry_over_the_weekend() -> None:
    friday_17 = shanghai(2026, 11, 27, 17)
    acknowledge_by, resolve_by = due(Severity.HIGH, friday_17)
    assert acknowledge_by == shanghai(2026, 11, 30, 12)  # 1 h on Friday, 3 h on Monday
    assert resolve_by == shanghai(2026, 12, 2, 17)  # the same time three working days on
    saturday = shanghai(2026, 11, 28, 11)
    assert due(Severity.HIGH, saturday)[1] == shanghai(2026, 12, 3, 9)  # from Monday's opening


def test_golden_week_is_skipped_and_the_make_up_saturday_counts() -> None:
    before_national_day = shanghai(2026, 9, 30, 17)
    assert due(Severity.HIGH, before_national_day)[0] == shanghai(2026, 10, 8, 12)
    # Saturday 10 October 2026 is worked to pay for the bridge day (调休): Monday's hours.
    friday_before_make_up_day = shanghai(2026, 10, 9, 17)
    assert due(Severity.HIGH, friday_before_make_up_day)[0] == shanghai(2026, 10, 10, 12)


def test_make_up_day_across_the_new_year_is_a_working_day() -> None:
    # 2012-01-03 was a day off paid for by Saturday 2011-12-31 (a bug fixed in the calendar).
    assert SHANGHAI.is_working_day(date(2011, 12, 31))
    assert not SHANGHAI.is_working_day(date(2012, 1, 3))


def test_organisation_closed_day_and_own_working_day() -> None:
    calendar = sla.branch_calendar(
        branch(
            holidays=HolidayCalendar(
                country="CN", closed_days=[date(2026, 11, 30)], working_days=[date(2026, 11, 29)]
            )
        )
    )
    friday_17 = shanghai(2026, 11, 27, 17)
    two_hours = SlaDuration(amount=2, unit=DurationUnit.HOURS, basis=TimeBasis.BUSINESS)
    assert sla.deadline(calendar, friday_17, two_hours) == shanghai(2026, 11, 29, 10)
    one_day = SlaDuration(amount=1, unit=DurationUnit.DAYS, basis=TimeBasis.BUSINESS)
    assert sla.deadline(calendar, shanghai(2026, 11, 29, 11), one_day) == shanghai(2026, 12, 1, 11)


def test_the_branch_time_zone_decides_the_hours() -> None:
    london = sla.branch_calendar(
        branch(
            time_zone="Europe/London",
            holidays=HolidayCalendar(country="GB", subdivision="ENG"),
            hours={day: [OpeningRange(start="09:00", end="17:30")] for day in NINE_TO_SIX},
        )
    )
    eight_utc = datetime(2026, 11, 23, 8, tzinfo=UTC)  # 08:00 in London, 16:00 in Shanghai
    assert due(Severity.HIGH, eight_utc, london)[0] == datetime(2026, 11, 23, 13, tzinfo=UTC)
    assert due(Severity.HIGH, eight_utc, SHANGHAI)[0] == shanghai(2026, 11, 24, 11)


def test_business_hours_across_a_daylight_saving_change_are_real_hours() -> None:
    around_the_clock = {day: [OpeningRange(start="00:00", end="00:00")] for day in Weekday}
    london = sla.branch_calendar(
        branch(
            time_zone="Europe/London",
            holidays=HolidayCalendar(country=None),
            hours=around_the_clock,
        )
    )
    before_clocks_go_back = datetime(2026, 10, 24, 23, tzinfo=UTC)  # midnight BST, 25-hour day
    day = SlaDuration(amount=24, unit=DurationUnit.HOURS, basis=TimeBasis.BUSINESS)
    assert sla.deadline(london, before_clocks_go_back, day) == before_clocks_go_back + timedelta(
        hours=24
    )


def test_calendar_hours_ignore_closing_time() -> None:
    late_friday = shanghai(2026, 11, 27, 23)
    assert due(Severity.CRITICAL, late_friday) == (
        shanghai(2026, 11, 28, 0),
        shanghai(2026, 11, 28, 23),
    )


def _high_clock(start: datetime, duration_days: int = 3) -> sla.Clock:
    duration = SlaDuration(amount=duration_days, unit=DurationUnit.DAYS, basis=TimeBasis.BUSINESS)
    return sla.start_clock(SHANGHAI, start=start, duration=duration, warning_share=0.8)


def test_warning_at_eighty_percent_of_business_time() -> None:
    clock = _high_clock(MONDAY_10)
    assert clock.due_at == shanghai(2026, 11, 26, 10)
    assert clock.span_s == timedelta(hours=27).total_seconds()
    # 80% of 27 business hours is 21.6 h: Monday 8 h, Tuesday 9 h, Wednesday 4.6 h.
    assert clock.warn_at == shanghai(2026, 11, 25, 13, 36)


def test_a_pause_over_the_weekend_costs_no_business_time() -> None:
    clock = _high_clock(MONDAY_10)
    paused = sla.pause_clock(clock, at=shanghai(2026, 11, 24, 12))
    assert paused.state is ClockState.PAUSED
    assert paused.next_timer() is None
    resumed = sla.resume_clock(paused, calendar=SHANGHAI, at=shanghai(2026, 11, 30, 9))
    # 16 business hours were left (Tue 6 h, Wed 9 h, Thu 1 h): Monday 9 h + Tuesday 7 h.
    assert resumed.due_at == shanghai(2026, 12, 1, 16)
    assert resumed.warn_at == shanghai(2026, 12, 1, 10, 36)
    assert resumed.state is ClockState.RUNNING


def test_a_calendar_clock_pauses_by_the_hour() -> None:
    duration = SlaDuration(amount=24, unit=DurationUnit.HOURS, basis=TimeBasis.CALENDAR)
    clock = sla.start_clock(SHANGHAI, start=MONDAY_10, duration=duration, warning_share=0.5)
    paused = sla.pause_clock(clock, at=MONDAY_10 + timedelta(hours=10))
    resumed = sla.resume_clock(paused, calendar=SHANGHAI, at=MONDAY_10 + timedelta(hours=18))
    assert resumed.due_at == MONDAY_10 + timedelta(hours=32)
    assert resumed.warn_at == MONDAY_10 + timedelta(hours=18, minutes=120)


def test_a_calendar_clock_paused_before_it_started_keeps_its_whole_time() -> None:
    """Received Friday 20:00, its 24-hour calendar clock starts at Monday's opening. A wait
    on the customer from Friday 21:00 to Monday 07:00 ran while no SLA time did: the clock is
    due Tuesday 09:00 as before, not 58 hours later (measured from the pause, the night and
    the weekend were added to the deadline, and a Wednesday resolution counted on time)."""
    duration = SlaDuration(amount=24, unit=DurationUnit.HOURS, basis=TimeBasis.CALENDAR)
    start = sla.clock_start(SHANGHAI, shanghai(2026, 11, 27, 20))
    assert start == shanghai(2026, 11, 30, 9)
    clock = sla.start_clock(SHANGHAI, start=start, duration=duration, warning_share=0.8)
    paused = sla.pause_clock(clock, at=shanghai(2026, 11, 27, 21))
    resumed = sla.resume_clock(paused, calendar=SHANGHAI, at=shanghai(2026, 11, 30, 7))
    assert (resumed.due_at, resumed.warn_at) == (clock.due_at, clock.warn_at)
    # Resumed after the start: the time from the start to the resume was the wait's.
    late = sla.resume_clock(paused, calendar=SHANGHAI, at=shanghai(2026, 11, 30, 10))
    assert late.due_at == shanghai(2026, 12, 1, 10)
    # Resolved on Wednesday after that resume: late.
    assert not sla.met(sla.stop_clock(resumed, at=shanghai(2026, 12, 2, 9)))


def test_a_clock_stopped_while_paused_is_met_and_due_with_the_wait_left_out() -> None:
    clock = _high_clock(MONDAY_10)  # due Thursday 10:00
    paused = sla.pause_clock(clock, at=shanghai(2026, 11, 24, 12))
    # The customer answers three weeks later and the complaint is resolved at once.
    stopped = sla.stop_clock(paused, at=shanghai(2026, 12, 15, 9), calendar=SHANGHAI)
    assert stopped.state is ClockState.STOPPED and stopped.paused_at is None
    # 16 business hours were left at the pause: Tuesday 15 December 9 h + Wednesday 7 h.
    assert stopped.due_at == shanghai(2026, 12, 16, 16)
    assert sla.met(stopped)
    with pytest.raises(ValueError, match="calendar"):
        sla.stop_clock(paused, at=shanghai(2026, 12, 15, 9))


def test_a_due_time_passed_before_the_pause_stays_passed() -> None:
    clock = _high_clock(MONDAY_10)
    # Paused a minute after its due time, before the scheduler fired the breach.
    paused = sla.pause_clock(clock, at=clock.due_at + timedelta(minutes=1))
    resumed = sla.resume_clock(paused, calendar=SHANGHAI, at=shanghai(2026, 12, 7, 9))
    assert resumed.due_at == clock.due_at
    assert resumed.next_breach_at == clock.due_at  # the breach fires at once
    stopped = sla.stop_clock(paused, at=shanghai(2026, 12, 7, 9), calendar=SHANGHAI)
    assert stopped.due_at == clock.due_at and not sla.met(stopped)


def test_a_breach_wins_over_a_due_warning_and_re_arms_only_when_asked() -> None:
    clock = _high_clock(MONDAY_10)
    late = clock.due_at + timedelta(minutes=1)
    breached, kind = sla.fire_due(clock, calendar=SHANGHAI, now=late, repeat=True)
    assert kind is sla.TimerKind.BREACH
    assert breached.breach_count == 1
    assert breached.warned and breached.warn_at is None
    assert breached.next_breach_at == shanghai(2026, 12, 1, 10)  # another 27 business hours
    final, _ = sla.fire_due(clock, calendar=SHANGHAI, now=late, repeat=False)
    assert final.next_breach_at is None and final.next_timer() is None


def test_warning_fires_once_before_the_breach() -> None:
    clock = _high_clock(MONDAY_10)
    warned, kind = sla.fire_due(clock, calendar=SHANGHAI, now=clock.warn_at, repeat=False)
    assert kind is sla.TimerKind.WARNING
    again, kind = sla.fire_due(warned, calendar=SHANGHAI, now=clock.warn_at, repeat=False)
    assert kind is None
    assert again.next_timer() == clock.due_at


def test_stopped_clocks_have_no_timers() -> None:
    clocks = {"acknowledge": _high_clock(MONDAY_10), "resolve": _high_clock(MONDAY_10, 7)}
    assert sla.next_timer_at(clocks) == clocks["acknowledge"].warn_at
    clocks["acknowledge"] = sla.stop_clock(clocks["acknowledge"], at=MONDAY_10)
    assert sla.next_timer_at(clocks) == clocks["resolve"].warn_at


def test_a_target_the_calendar_has_no_room_for_is_due_at_the_horizon() -> None:
    """A policy stored before the limits (10,000 business hours is over four years of
    Shanghai's) still gives complaints clocks instead of failing each one."""
    stored = SlaDuration(amount=10_000, unit=DurationUnit.HOURS, basis=TimeBasis.BUSINESS)
    clock = sla.start_clock(SHANGHAI, start=MONDAY_10, duration=stored, warning_share=0.8)
    assert clock.due_at == MONDAY_10 + sla.HORIZON
    assert MONDAY_10 < clock.warn_at < clock.due_at
    breached, kind = sla.fire_due(clock, calendar=SHANGHAI, now=clock.due_at, repeat=True)
    assert kind is sla.TimerKind.BREACH
    assert clock.due_at < breached.next_breach_at <= clock.due_at + sla.HORIZON
    days = SlaDuration(amount=2000, unit=DurationUnit.DAYS, basis=TimeBasis.BUSINESS)
    assert sla.deadline(SHANGHAI, MONDAY_10, days) == MONDAY_10 + sla.HORIZON
    # So are business days' closes: each day's search has a horizon of its own, so 10,000
    # closes came out in 2067.
    closes = SlaDuration(amount=10_000, unit=DurationUnit.END_OF_BUSINESS_DAY, basis="business")
    assert sla.deadline(SHANGHAI, MONDAY_10, closes) == MONDAY_10 + sla.HORIZON


@pytest.mark.parametrize(("unit", "basis"), list(MAX_AMOUNTS))
def test_the_longest_target_a_policy_may_set_is_laid_out_by_a_working_calendar(
    unit: DurationUnit, basis: TimeBasis
) -> None:
    longest = SlaDuration(amount=MAX_AMOUNTS[unit, basis], unit=unit, basis=basis)
    assert sla.deadline(SHANGHAI, MONDAY_10, longest) < MONDAY_10 + sla.HORIZON


def test_policy_targets_beyond_the_limits_name_their_amount() -> None:
    def target(amount: float, unit: str, basis: str = "business") -> dict:
        return {"amount": amount, "unit": unit, "basis": basis}

    policy = SlaPolicyWrite.model_validate(
        {
            "name": "太长",
            "targets": {
                "high": {"acknowledge": target(2000, "hours"), "resolve": target(10_000, "hours")},
                "low": {"acknowledge": target(365, "days"), "resolve": target(366, "days")},
            },
            "regulatory_report_within": target(367, "days", "calendar"),
        }
    )
    assert policy.field_errors() == [
        {"field": "targets.high.resolve.amount", "message": "at most 2000 hours in business time"},
        {"field": "targets.low.resolve.amount", "message": "at most 365 days in business time"},
        {
            "field": "regulatory_report_within.amount",
            "message": "at most 366 days in calendar time",
        },
    ]
    # A stored policy is read as it was saved, whatever the limits.
    assert SlaPolicy.model_validate({**policy.model_dump(), "id": "long", "org": "demo"})


def test_end_of_business_day_counts_business_days() -> None:
    def closes(amount: int, start: datetime) -> datetime:
        duration = SlaDuration(
            amount=amount, unit=DurationUnit.END_OF_BUSINESS_DAY, basis="business"
        )
        return sla.deadline(SHANGHAI, start, duration)

    assert closes(1, MONDAY_10) == shanghai(2026, 11, 23, 18)
    # The amount was ignored until 5 December: every target meant that day's close.
    assert closes(3, MONDAY_10) == shanghai(2026, 11, 25, 18)
    # Friday night: the first business day is Monday.
    assert closes(2, shanghai(2026, 11, 27, 20)) == shanghai(2026, 12, 1, 18)
    refused = SlaPolicyWrite.model_validate(
        {
            "name": "当日",
            "targets": {
                "normal": {
                    "acknowledge": {
                        "amount": 0,
                        "unit": "end_of_business_day",
                        "basis": "business",
                    },
                    "resolve": {"amount": 1.5, "unit": "end_of_business_day", "basis": "business"},
                }
            },
        }
    ).field_errors()
    assert [error["field"] for error in refused] == [
        "targets.normal.acknowledge.amount",
        "targets.normal.resolve.amount",
    ]


def test_a_reopened_complaint_keeps_the_built_in_policy_and_retired_ones_are_not_chosen() -> None:
    """A complaint routed before the organisation had policies has ``builtin``. Reopened, it
    got a category policy added since, or a retired default, while its record said builtin."""
    retired = SlaPolicy(
        id="old-default", org="demo", name="旧", is_default=True, retired_at=MONDAY_10
    )
    billing = SlaPolicy(id="billing", org="demo", name="账单", categories=[Category.BILLING])
    policies = [retired, billing]

    def chosen(requested: str | None, category: Category) -> str:
        return sla.select_policy(policies, org="demo", requested=requested, category=category).id

    assert chosen(sla.BUILTIN_POLICY_ID, Category.BILLING) == sla.BUILTIN_POLICY_ID
    # Unless the organisation has a policy of that id: then it is theirs.
    own = SlaPolicy(id=sla.BUILTIN_POLICY_ID, org="demo", name="自己的", categories=[])
    assert (
        sla.select_policy(
            [*policies, own], org="demo", requested=sla.BUILTIN_POLICY_ID, category=Category.BILLING
        )
        is own
    )
    assert chosen("old-default", Category.BILLING) == "old-default"  # its own, retired since
    assert chosen(None, Category.NETWORK) == sla.BUILTIN_POLICY_ID


def test_policy_choice_rule_then_category_then_default() -> None:
    default = SlaPolicy(id="standard", org="demo", name="标准", is_default=True)
    medical = SlaPolicy(id="medical", org="demo", name="医疗", categories=[Category.MEDICAL])
    vip = SlaPolicy(id="vip", org="demo", name="VIP")
    policies = [default, medical, vip]

    def chosen(requested: str | None, category: Category) -> str:
        return sla.select_policy(policies, org="demo", requested=requested, category=category).id

    assert chosen("vip", Category.MEDICAL) == "vip"
    assert chosen(None, Category.MEDICAL) == "medical"
    assert chosen(None, Category.BILLING) == "standard"
    assert sla.select_policy([], org="demo", requested=None, category=Category.BILLING).id == (
        sla.BUILTIN_POLICY_ID
    )


def test_major_incident_criteria() -> None:
    policy = SlaPolicy(id="standard", org="demo", name="标准")

    def major(severity: str, category: str, flags: set[str]) -> bool:
        return sla.is_major_incident(
            policy, severity=Severity(severity), category=Category(category), flags=flags
        )

    assert major("critical", "billing", set())
    assert major("normal", "medical", set())
    assert major("low", "other", {"safety_risk"})
    assert not major("high", "billing", {"media_risk"})
