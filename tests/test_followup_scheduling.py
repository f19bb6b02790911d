"""Unit: when satisfaction checks fall due (policy, contact hours, time zones) and who may act."""

from __future__ import annotations

from datetime import date, time, timedelta

import pytest
from pydantic import ValidationError

from complaints_shared.events import Category, FollowupOutcome, Severity
from complaints_shared.models import Weekday
from complaints_shared.problems import ProblemError
from followup.contact_hours import (
    check_closures,
    check_due_times,
    default_contact_hours,
    next_attempt_at,
    next_contact_moment,
)
from followup.lifecycle import (
    CheckState,
    ClaimHeld,
    Command,
    InvalidTransition,
    LastClaim,
    NotDueYet,
    judge,
    transition,
    unreached_command,
)
from followup.models import (
    CheckRule,
    CheckStatus,
    ContactHours,
    FollowupPolicy,
    PolicyOverride,
)
from followup.policy import checks_for, default_policy
from followup.settings import FollowupSettings
from tests.support.clock import utc

SETTINGS = FollowupSettings()
SHANGHAI = default_contact_hours(SETTINGS)  # 09:00–20:00 every day, Chinese holidays
LONDON_OFFICE = ContactHours(
    time_zone="Europe/London",
    start=time(10),
    end=time(16),
    weekdays=[Weekday.MON, Weekday.TUE, Weekday.WED, Weekday.THU, Weekday.FRI],
    holiday_country="GB",
)


def hours(*offsets: float) -> list[CheckRule]:
    return [CheckRule(after_hours=offset) for offset in offsets]


# ------------------------------------------------------------ contact hours --


def test_due_time_inside_contact_hours_stays_where_the_policy_puts_it() -> None:
    resolved_tuesday_10_local = utc(2026, 11, 24, 2)
    (due,) = check_due_times(
        resolved_at=resolved_tuesday_10_local, checks=hours(24), hours=SHANGHAI
    )
    assert due == utc(2026, 11, 25, 2)


def test_due_time_in_the_evening_moves_to_the_next_morning() -> None:
    resolved_21_30_local = utc(2026, 11, 24, 13, 30)
    (due,) = check_due_times(resolved_at=resolved_21_30_local, checks=hours(24), hours=SHANGHAI)
    assert due == utc(2026, 11, 26, 1)  # Thursday 09:00 in Shanghai


def test_contact_hours_include_weekends_by_default() -> None:
    saturday_15_local = utc(2026, 11, 28, 7)
    assert next_contact_moment(hours=SHANGHAI, at=saturday_15_local) == saturday_15_local


def test_national_day_holidays_are_skipped_including_the_weekend_inside_them() -> None:
    resolved_sept_30_noon_local = utc(2026, 9, 30, 4)
    (due,) = check_due_times(
        resolved_at=resolved_sept_30_noon_local, checks=hours(24), hours=SHANGHAI
    )
    # 1–7 October are holidays; the library lists only the weekdays, Sunday the 4th is
    # closed because it lies inside the run. The 8th at 09:00 local is the first moment.
    assert due == utc(2026, 10, 8, 1)


def test_make_up_working_saturday_opens_a_weekday_only_calendar() -> None:
    office = SHANGHAI.model_copy(update={"weekdays": [Weekday.MON, Weekday.TUE, Weekday.WED]})
    friday_evening_local = utc(2026, 10, 9, 12)
    assert next_contact_moment(hours=office, at=friday_evening_local) == utc(2026, 10, 10, 1)


def test_branch_closed_days_and_extra_working_days() -> None:
    branch = SHANGHAI.model_copy(
        update={"closed_days": [date(2026, 11, 25)], "working_days": [date(2026, 10, 4)]}
    )
    wednesday_noon_local = utc(2026, 11, 25, 4)
    assert next_contact_moment(hours=branch, at=wednesday_noon_local) == utc(2026, 11, 26, 1)
    assert next_contact_moment(hours=branch, at=utc(2026, 10, 3, 4)) == utc(2026, 10, 4, 1)


def test_the_branch_time_zone_decides_what_is_inside_contact_hours() -> None:
    at = utc(2026, 11, 24, 8, 30)  # 16:30 in Shanghai, 08:30 in London
    assert next_contact_moment(hours=SHANGHAI, at=at) == at
    assert next_contact_moment(hours=LONDON_OFFICE, at=at) == utc(2026, 11, 24, 10)


def test_friday_afternoon_in_london_moves_to_monday_across_summer_time() -> None:
    friday_15_bst = utc(2026, 10, 23, 14)
    (due,) = check_due_times(resolved_at=friday_15_bst, checks=hours(24), hours=LONDON_OFFICE)
    # Saturday is closed; the clocks go back on Sunday 25 October: Monday 10:00 is GMT.
    assert due == utc(2026, 10, 26, 10)


def test_second_check_a_week_later_is_also_moved_into_contact_hours() -> None:
    resolved_19_30_local = utc(2026, 11, 24, 11, 30)
    first, second = check_due_times(
        resolved_at=resolved_19_30_local, checks=hours(24, 168), hours=SHANGHAI
    )
    assert first == utc(2026, 11, 25, 11, 30)
    assert second == utc(2026, 12, 1, 11, 30)


def test_next_attempt_is_spaced_then_moved_into_contact_hours() -> None:
    called_17_local = utc(2026, 11, 24, 9)
    assert next_attempt_at(attempted_at=called_17_local, spacing_hours=4, hours=SHANGHAI) == utc(
        2026, 11, 25, 1
    )
    called_10_local = utc(2026, 11, 24, 2)
    assert next_attempt_at(attempted_at=called_10_local, spacing_hours=4, hours=SHANGHAI) == utc(
        2026, 11, 24, 6
    )


def test_midnight_end_means_open_until_the_end_of_the_day() -> None:
    late = SHANGHAI.model_copy(update={"end": time(0)})
    at_23_local = utc(2026, 11, 24, 15)
    assert next_contact_moment(hours=late, at=at_23_local) == at_23_local


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"time_zone": "Mars/Olympus"}, "time_zone"),
        ({"start": "20:00", "end": "09:00"}, "end"),
        ({"start": "09:00+08:00"}, "start"),
        ({"weekdays": []}, "weekdays"),
        ({"weekdays": ["mon", "mon"]}, "weekdays"),
        ({"weekdays": ["funday"]}, "weekdays.0"),
        ({"holiday_country": "XX"}, "holiday_country"),
        ({"colour": "red"}, "colour"),
        # These raised IsADirectoryError, OSError and a TypeError (a 500), not a 422.
        ({"time_zone": "Asia"}, "time_zone"),
        ({"time_zone": "x" * 300}, "time_zone"),
        ({"end": "20:00+01:00"}, "end"),
        ({"holiday_country": "countries"}, "holiday_country"),
        ({"holiday_country": "GB", "holiday_subdivision": "__init__"}, "holiday_subdivision"),
        ({"closed_days": ["2026-12-31", "0001-01-01"]}, "closed_days.1"),
        ({"working_days": ["9999-12-31"]}, "working_days.0"),
    ],
)
def test_invalid_contact_hours_name_the_field(change: dict, field: str) -> None:
    body = {**SHANGHAI.model_dump(mode="json"), **change}
    with pytest.raises(ValidationError) as raised:
        ContactHours.model_validate(body)
    assert field in {".".join(map(str, error["loc"])) for error in raised.value.errors()}


def test_contact_hours_closed_for_over_a_year_are_refused_naming_closed_days() -> None:
    """Mondays only, and every Monday of three years closed: no unreached call could be
    retried (the calendar gave up with a ValueError, a 500)."""
    first_monday = date(2026, 11, 30)
    mondays = [first_monday + timedelta(weeks=week) for week in range(157)]
    closed = SHANGHAI.model_copy(update={"weekdays": [Weekday.MON], "closed_days": mondays})
    with pytest.raises(ProblemError) as raised:
        check_closures(closed)
    assert raised.value.status == 422
    assert [error["field"] for error in raised.value.extensions["errors"]] == ["closed_days"]
    a_season = closed.model_copy(update={"closed_days": mondays[:13]})
    check_closures(a_season)
    assert next_contact_moment(hours=a_season, at=utc(2026, 12, 1)) == utc(2027, 3, 1, 1)


# ------------------------------------------------------------------- policy --


def test_default_policy_gives_serious_complaints_a_second_check_after_a_week() -> None:
    policy = default_policy(SETTINGS)
    for severity in (Severity.LOW, Severity.NORMAL):
        assert checks_for(policy, category=Category.BILLING, severity=severity) == hours(24)
    for severity in (Severity.HIGH, Severity.CRITICAL):
        assert checks_for(policy, category=Category.BILLING, severity=severity) == hours(24, 168)


def test_most_specific_override_wins() -> None:
    policy = FollowupPolicy(
        checks=hours(48),
        overrides=[
            PolicyOverride(severity=Severity.CRITICAL, checks=hours(2, 24)),
            PolicyOverride(category=Category.MEDICAL, checks=hours(12)),
            PolicyOverride(category=Category.MEDICAL, severity=Severity.CRITICAL, checks=hours(1)),
        ],
        max_attempts=3,
        attempt_spacing_hours=4,
        satisfied_score_threshold=4,
    )
    assert checks_for(policy, category=Category.BILLING, severity=Severity.LOW) == hours(48)
    assert checks_for(policy, category=Category.BILLING, severity=Severity.CRITICAL) == hours(2, 24)
    assert checks_for(policy, category=Category.MEDICAL, severity=Severity.LOW) == hours(12)
    assert checks_for(policy, category=Category.MEDICAL, severity=Severity.CRITICAL) == hours(1)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"checks": []}, "checks"),
        ({"checks": [{"after_hours": 48}, {"after_hours": 24}]}, "checks"),
        ({"checks": [{"after_hours": -1}]}, "checks.0.after_hours"),
        ({"overrides": [{"checks": [{"after_hours": 1}]}]}, "overrides.0"),
        (
            {
                "overrides": [
                    {"severity": "high", "checks": [{"after_hours": 1}]},
                    {"severity": "high", "checks": [{"after_hours": 2}]},
                ]
            },
            "overrides",
        ),
        ({"max_attempts": 0}, "max_attempts"),
        ({"satisfied_score_threshold": 6}, "satisfied_score_threshold"),
        ({"escalate": True}, "escalate"),
    ],
)
def test_invalid_policy_names_the_field(body: dict, field: str) -> None:
    valid = default_policy(SETTINGS).model_dump(mode="json")
    with pytest.raises(ValidationError) as raised:
        FollowupPolicy.model_validate({**valid, **body})
    assert field in {".".join(map(str, error["loc"])) for error in raised.value.errors()}


# ----------------------------------------------------------- state machine --

NOW = utc(2026, 11, 25, 2)


def state(status: CheckStatus, **fields) -> CheckState:
    return CheckState(status=status, due_at=fields.pop("due_at", NOW), **fields)


def test_scheduled_check_becomes_due_only_when_its_time_has_come() -> None:
    scheduled = state(CheckStatus.SCHEDULED)
    due = transition(state=scheduled, command=Command.BECOME_DUE, actor="s", now=NOW)
    assert due is CheckStatus.DUE
    later = state(CheckStatus.SCHEDULED, due_at=NOW + timedelta(minutes=1))
    with pytest.raises(InvalidTransition):
        transition(state=later, command=Command.BECOME_DUE, actor="s", now=NOW)
    with pytest.raises(NotDueYet):
        transition(state=later, command=Command.CLAIM, actor="agent-a", now=NOW)


def test_a_live_claim_keeps_other_agents_out_until_it_expires() -> None:
    held = state(
        CheckStatus.IN_PROGRESS, claimed_by="agent-a", claim_lease_until=NOW + timedelta(minutes=5)
    )
    for command in (Command.CLAIM, Command.RECORD_REACHED, Command.RECORD_OUTCOME):
        with pytest.raises(ClaimHeld) as raised:
            transition(state=held, command=command, actor="agent-b", now=NOW)
        assert raised.value.holder == "agent-a"
    renewed = transition(state=held, command=Command.CLAIM, actor="agent-a", now=NOW)
    assert renewed is CheckStatus.IN_PROGRESS
    expired_at = NOW + timedelta(minutes=6)
    taken_over = transition(state=held, command=Command.CLAIM, actor="agent-b", now=expired_at)
    assert taken_over is CheckStatus.IN_PROGRESS
    with pytest.raises(InvalidTransition):
        transition(state=held, command=Command.EXPIRE_CLAIM, actor="s", now=NOW)
    expired = transition(state=held, command=Command.EXPIRE_CLAIM, actor="s", now=expired_at)
    assert expired is CheckStatus.DUE


def test_attempts_need_the_claim() -> None:
    with pytest.raises(ClaimHeld) as raised:
        transition(state=state(CheckStatus.DUE), command=Command.RETRY_LATER, actor="a", now=NOW)
    assert raised.value.holder is None


def test_the_holder_of_a_lapsed_claim_records_a_call_made_under_it_and_nobody_else() -> None:
    """A check back in the queue because its claim lapsed (at 20:05, after contact hours, when
    no new claim may be taken) still takes the call its holder made under it, while nobody
    has claimed it since; not a call made before or after that claim, nor anyone else's."""
    claim = LastClaim(
        claimed_by="agent-a",
        claimed_at=NOW - timedelta(minutes=16),
        lapsed_at=NOW - timedelta(minutes=1),
    )
    lapsed = state(CheckStatus.DUE, last_claim=claim)
    during = NOW - timedelta(minutes=10)
    for command, after in (
        (Command.RETRY_LATER, CheckStatus.SCHEDULED),
        (Command.GIVE_UP, CheckStatus.COMPLETED),
        (Command.RECORD_REACHED, CheckStatus.COMPLETED),
    ):
        moved = transition(
            state=lapsed, command=command, actor="agent-a", now=NOW, attempted_at=during
        )
        assert moved is after, command
    before_the_claim = claim.claimed_at - timedelta(minutes=1)
    for actor, attempted_at in (
        ("agent-b", during),
        ("agent-a", NOW),
        ("agent-a", before_the_claim),
    ):
        with pytest.raises(ClaimHeld):
            transition(
                state=lapsed,
                command=Command.RETRY_LATER,
                actor=actor,
                now=NOW,
                attempted_at=attempted_at,
            )
    held = state(
        CheckStatus.IN_PROGRESS,
        claimed_by="agent-a",
        claim_lease_until=NOW + timedelta(minutes=5),
        last_claim=LastClaim(claimed_by="agent-a", claimed_at=NOW - timedelta(minutes=10)),
    )
    with pytest.raises(ClaimHeld):  # called before claiming: not under the claim
        transition(
            state=held,
            command=Command.RETRY_LATER,
            actor="agent-a",
            now=NOW,
            attempted_at=NOW - timedelta(minutes=11),
        )


def test_a_claim_has_lapsed_while_its_expiry_is_the_last_move_of_the_check() -> None:
    """Read from the history: a release, or a claim since, ends what the lapse allowed."""

    def history(*moves: tuple[str, str]) -> list[dict]:
        return [
            {"action": action, "actor": actor, "at": NOW + timedelta(minutes=minute), "status": ""}
            for minute, (action, actor) in enumerate(moves)
        ]

    claimed = [("schedule", "followup"), ("become_due", "followup"), ("claim", "agent-a")]
    expired = CheckState.of(
        {"status": "due", "due_at": NOW, "history": history(*claimed, ("expire_claim", "followup"))}
    )
    assert expired.last_claim == LastClaim(
        claimed_by="agent-a",
        claimed_at=NOW + timedelta(minutes=2),
        lapsed_at=NOW + timedelta(minutes=3),
    )
    released = CheckState.of(
        {"status": "due", "due_at": NOW, "history": history(*claimed, ("release", "agent-a"))}
    )
    assert released.last_claim is not None and released.last_claim.lapsed_at is None
    taken_over = CheckState.of(
        {
            "status": "in_progress",
            "due_at": NOW,
            "history": history(*claimed, ("expire_claim", "followup"), ("claim", "agent-b")),
        }
    )
    assert taken_over.last_claim == LastClaim(
        claimed_by="agent-b", claimed_at=NOW + timedelta(minutes=4)
    )


def test_finished_checks_cannot_change_any_more() -> None:
    for status in (CheckStatus.COMPLETED, CheckStatus.CANCELLED):
        for command in (Command.CANCEL, Command.RECORD_OUTCOME, Command.CLAIM):
            with pytest.raises(InvalidTransition):
                transition(state=state(status), command=command, actor="a", now=NOW)


def test_third_unreached_attempt_gives_up_and_satisfaction_needs_score_and_solution() -> None:
    assert unreached_command(attempt_number=2, max_attempts=3) is Command.RETRY_LATER
    assert unreached_command(attempt_number=3, max_attempts=3) is Command.GIVE_UP
    assert judge(score=4, problem_solved=True, threshold=4) is FollowupOutcome.SATISFIED
    assert judge(score=5, problem_solved=False, threshold=4) is FollowupOutcome.UNSATISFIED
    assert judge(score=3, problem_solved=True, threshold=4) is FollowupOutcome.UNSATISFIED
