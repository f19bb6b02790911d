"""SLA policies and clocks: pure arithmetic over a branch's business calendar.

A clock is stored inside the complaint's assignment document. Its timers are
instants (``warn_at``, ``next_breach_at``) compared with the injected clock by
the scheduler, so nothing here sleeps. Pausing keeps the remaining time in the
clock's own basis (business or calendar) and resuming lays it out again from
the resume instant, so a pause over a weekend costs no business time.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import date, datetime, time, timedelta
from enum import StrEnum
from functools import lru_cache

from pydantic import BaseModel, ConfigDict

from complaints_shared.business_calendar import MAX_DAYS_SEARCHED, BeyondHorizon, BusinessCalendar
from complaints_shared.events import Category, Severity, SlaClock
from complaints_shared.logs import get_logger
from complaints_shared.models import Weekday
from complaints_shared.mongo import bson_time
from complaints_shared.stored import from_stored
from routing.assignments.models import ClockState
from routing.directory.models import BranchBase
from routing.rules.matching import severity_at_least
from routing.sla.models import DurationUnit, SeverityTargets, SlaDuration, SlaPolicy, TimeBasis

BUILTIN_POLICY_ID = "builtin"
# The furthest a deadline is laid out: business time the branch's calendar has no room for
# within the days it searches (a target stored before ``sla.models.MAX_AMOUNTS`` existed, a
# branch open a few hours a week) is due this long after its start instead of failing every
# complaint that gets it (the consumer would retry, then dead-letter each one).
HORIZON = timedelta(days=MAX_DAYS_SEARCHED)
# The fields of a branch its business calendar is made of.
CALENDAR_FIELDS = frozenset({"time_zone", "hours", "holidays"})
# Waiting on the customer pauses these, and finishing the complaint stops them; the
# authority's report deadline keeps running until the report is filed.
CUSTOMER_CLOCKS = (SlaClock.ACKNOWLEDGE.value, SlaClock.RESOLVE.value)

log = get_logger(__name__)


def _duration(amount: float, unit: str, basis: str) -> SlaDuration:
    return SlaDuration(amount=amount, unit=DurationUnit(unit), basis=TimeBasis(basis))


# The defaults: critical 1 h / 24 h calendar; high 4 h / 3 business days;
# normal same business day / 7 business days; low 2 / 15 business days.
BUILTIN_TARGETS: dict[Severity, SeverityTargets] = {
    Severity.CRITICAL: SeverityTargets(
        acknowledge=_duration(1, "hours", "calendar"), resolve=_duration(24, "hours", "calendar")
    ),
    Severity.HIGH: SeverityTargets(
        acknowledge=_duration(4, "hours", "business"), resolve=_duration(3, "days", "business")
    ),
    Severity.NORMAL: SeverityTargets(
        acknowledge=_duration(1, "end_of_business_day", "business"),
        resolve=_duration(7, "days", "business"),
    ),
    Severity.LOW: SeverityTargets(
        acknowledge=_duration(2, "days", "business"), resolve=_duration(15, "days", "business")
    ),
}


def builtin_policy(org: str) -> SlaPolicy:
    return SlaPolicy(
        id=BUILTIN_POLICY_ID, org=org, name="Built-in defaults", is_default=True, version=0
    )


def select_policy(
    policies: Iterable[SlaPolicy], *, org: str, requested: str | None, category: Category
) -> SlaPolicy:
    """The named policy (a rule's, or the one a reopened complaint already has; retired or
    not), else one in force overriding the category, else the org default in force."""
    by_id = {policy.id: policy for policy in policies}
    if requested is not None and requested in by_id:
        return by_id[requested]
    if requested == BUILTIN_POLICY_ID:  # the defaults, unless the org named one of its own so
        return builtin_policy(org)
    by_id = {policy.id: policy for policy in by_id.values() if policy.in_force}
    for policy in sorted(by_id.values(), key=lambda p: p.id):
        if category in policy.categories:
            return policy
    defaults = sorted((p for p in by_id.values() if p.is_default), key=lambda p: p.id)
    return defaults[0] if defaults else builtin_policy(org)


def targets_for(policy: SlaPolicy, severity: Severity) -> SeverityTargets:
    return policy.targets.get(severity) or BUILTIN_TARGETS[severity]


def is_major_incident(
    policy: SlaPolicy, *, severity: Severity, category: Category, flags: set[str]
) -> bool:
    """Critical, medical or safety complaints, as the policy defines them."""
    criteria = policy.major_incident
    if criteria.min_severity is not None and severity_at_least(severity, criteria.min_severity):
        return True
    if category in criteria.categories:
        return True
    return bool({str(flag) for flag in criteria.flags} & flags)


# ---------------------------------------------------------------- calendars --


@lru_cache(maxsize=512)
def _calendar_from_key(key: str) -> BusinessCalendar:
    spec = json.loads(key)
    hours = {
        Weekday(weekday).index: [
            (time.fromisoformat(slot["start"]), time.fromisoformat(slot["end"])) for slot in ranges
        ]
        for weekday, ranges in spec["hours"].items()
    }
    holidays = spec["holidays"]
    return BusinessCalendar(
        time_zone=spec["time_zone"],
        hours=hours,
        country=holidays["country"],
        subdivision=holidays["subdivision"],
        closed_days=frozenset(_dates(holidays["closed_days"])),
        working_days=frozenset(_dates(holidays["working_days"])),
    )


def _dates(values: list[str]) -> Iterable[date]:
    return (date.fromisoformat(value) for value in values)


def branch_calendar(branch: BranchBase) -> BusinessCalendar:
    """The branch's calendar; cached per distinct definition (holiday tables are costly)."""
    spec = branch.model_dump(mode="json", include=CALENDAR_FIELDS)
    return _calendar_from_key(json.dumps(spec, sort_keys=True))


# --------------------------------------------------------------- arithmetic --


def _unit_delta(duration: SlaDuration) -> timedelta:
    if duration.unit is DurationUnit.MINUTES:
        return timedelta(minutes=duration.amount)
    if duration.unit is DurationUnit.HOURS:
        return timedelta(hours=duration.amount)
    return timedelta(days=duration.amount)


def _at_horizon(calendar: BusinessCalendar, start: datetime, exc: BeyondHorizon) -> datetime:
    log.warning("sla_deadline_at_horizon", time_zone=calendar.time_zone, error=str(exc))
    return start + HORIZON


def clock_start(calendar: BusinessCalendar, at: datetime) -> datetime:
    """The next opening from ``at`` (``at`` itself when open); ``at`` (logged) when the
    calendar has none within its horizon (a branch stored closed for years)."""
    try:
        return calendar.next_open(at)
    except BeyondHorizon as exc:
        log.warning("sla_clock_start_without_opening", time_zone=calendar.time_zone, error=str(exc))
        return at


def deadline(calendar: BusinessCalendar, start: datetime, duration: SlaDuration) -> datetime:
    """When ``duration`` has passed after ``start`` in its basis (``HORIZON`` at most, also
    when the calendar has no opening within it)."""
    try:
        return _deadline(calendar, start, duration)
    except BeyondHorizon as exc:
        return _at_horizon(calendar, start, exc)


def _deadline(calendar: BusinessCalendar, start: datetime, duration: SlaDuration) -> datetime:
    if duration.unit is DurationUnit.END_OF_BUSINESS_DAY:
        # The close of the ``amount``-th business day, the one the clock starts in first;
        # ``HORIZON`` at most, as every target (each search below has a horizon of its own).
        closing = calendar.end_of_business_day(start)
        for _ in range(int(duration.amount) - 1):
            closing = calendar.end_of_business_day(calendar.next_open(closing))
            if closing - start > HORIZON:
                raise BeyondHorizon(f"{duration.amount:g} business days' closes from {start}")
        return closing
    if duration.basis is TimeBasis.CALENDAR:
        return start + _unit_delta(duration)
    if duration.unit is not DurationUnit.DAYS:
        return calendar.add_business_time(start, _unit_delta(duration))
    # Counted from the opening the clock really starts at, so Friday night + 3 days
    # is Thursday morning, not Wednesday's closing time.
    start_at = calendar.next_open(start)
    if not duration.amount:
        return start_at
    try:
        return calendar.add_business_days(start_at, int(duration.amount))
    except BeyondHorizon as exc:
        return _at_horizon(calendar, start_at, exc)


def advance(
    calendar: BusinessCalendar, basis: TimeBasis, start: datetime, amount: timedelta
) -> datetime:
    """``amount`` of time in ``basis`` after ``start`` (``HORIZON`` at most)."""
    if basis is TimeBasis.CALENDAR:
        return start + amount
    try:
        return calendar.add_business_time(start, amount)
    except BeyondHorizon as exc:
        return _at_horizon(calendar, start, exc)


def between(
    calendar: BusinessCalendar, basis: TimeBasis, start: datetime, end: datetime
) -> timedelta:
    """Time in the basis from ``start`` to ``end`` (zero when ``end`` is not later)."""
    if end <= start:
        return timedelta(0)
    if basis is TimeBasis.CALENDAR:
        return end - start
    return calendar.business_time_between(start, end)


# ------------------------------------------------------------------- clocks --


class TimerKind(StrEnum):
    WARNING = "warning"
    BREACH = "breach"


class Clock(BaseModel):
    """One SLA clock as stored in the assignment document (``clocks.<name>``)."""

    model_config = ConfigDict(extra="ignore")

    basis: TimeBasis
    state: ClockState = ClockState.RUNNING
    started_at: datetime
    due_at: datetime
    warn_at: datetime | None = None
    next_breach_at: datetime | None = None
    span_s: float
    warned: bool = False
    breach_count: int = 0
    # The complaint's cycle (``reopen_count``) at the last breach; None: before it was kept.
    breached_in_cycle: int | None = None
    paused_at: datetime | None = None
    stopped_at: datetime | None = None

    def next_timer(self) -> datetime | None:
        if self.state is not ClockState.RUNNING:
            return None
        pending = [at for at in (self.warn_at, self.next_breach_at) if at is not None]
        return min(pending, default=None)

    def stored(self) -> dict:
        return self.model_dump(mode="python")


def start_clock(
    calendar: BusinessCalendar, *, start: datetime, duration: SlaDuration, warning_share: float
) -> Clock:
    """A running clock with its warning at ``warning_share`` of the allowed time."""
    due_at = deadline(calendar, start, duration)
    basis = duration.basis
    span = between(calendar, basis, start, due_at)
    warn_at = advance(calendar, basis, start, span * warning_share) if span else None
    return Clock(
        basis=basis,
        started_at=start,
        due_at=due_at,
        warn_at=warn_at if warn_at is not None and warn_at < due_at else None,
        next_breach_at=due_at,
        span_s=span.total_seconds(),
    )


# Less than this between a clock's span and the time from its start to its due time is
# rounding, not time waited on the customer.
WAITED_AT_LEAST = timedelta(seconds=1)


def retarget_clock(
    clock: Clock, *, calendar: BusinessCalendar, duration: SlaDuration, warning_share: float
) -> Clock:
    """The clock with another target (a new severity's), measured from the clock's own
    start: the cycle's, so a target shorter than the time gone by is due, and breaches,
    at once. The time the clock already stood still waiting on the customer is still left
    out, a paused clock stays paused, a warning given is not given again. A stopped clock
    (its verdict was given) and one that breached (its breach and the escalation it caused
    stand) are returned as they are."""
    if clock.state is ClockState.STOPPED or clock.breach_count:
        return clock
    fresh = start_clock(
        calendar, start=clock.started_at, duration=duration, warning_share=warning_share
    )
    waited = between(calendar, clock.basis, clock.started_at, clock.due_at) - timedelta(
        seconds=clock.span_s
    )
    update: dict[str, object] = {}
    if waited >= WAITED_AT_LEAST:
        for name in ("due_at", "warn_at", "next_breach_at"):
            moment = getattr(fresh, name)
            if moment is not None:
                update[name] = advance(calendar, fresh.basis, moment, waited)
    if clock.warned:
        update.update(warned=True, warn_at=None)
    if clock.state is ClockState.PAUSED:
        update.update(state=ClockState.PAUSED, paused_at=clock.paused_at)
    return fresh.model_copy(update=update)


def pause_clock(clock: Clock, *, at: datetime) -> Clock:
    if clock.state is not ClockState.RUNNING:
        return clock
    return clock.model_copy(update={"state": ClockState.PAUSED, "paused_at": at})


def resume_clock(clock: Clock, *, calendar: BusinessCalendar, at: datetime) -> Clock:
    """Lay the time that was left at the pause out again from ``at``.

    A clock paused before it started (a complaint received out of hours, waiting on the
    customer before the opening its clock starts at) had all its time left: it is laid out
    from the later of the resume and the start, not from the pause, which in calendar time
    added the hours before the start to the deadline."""
    if clock.state is not ClockState.PAUSED or clock.paused_at is None:
        return clock
    paused_at = clock.paused_at
    running_from = max(paused_at, clock.started_at)

    def shifted(moment: datetime | None) -> datetime | None:
        # A moment passed before the pause stays passed (its timer had yet to fire).
        if moment is None or moment < paused_at:
            return moment
        left = between(calendar, clock.basis, running_from, moment)
        return advance(calendar, clock.basis, max(at, running_from), left)

    return clock.model_copy(
        update={
            "state": ClockState.RUNNING,
            "paused_at": None,
            "due_at": shifted(clock.due_at) if clock.breach_count == 0 else clock.due_at,
            "warn_at": shifted(clock.warn_at),
            "next_breach_at": shifted(clock.next_breach_at),
        }
    )


def relay_clock(
    clock: Clock,
    *,
    previous: BusinessCalendar,
    calendar: BusinessCalendar,
    changed_at: datetime,
    ran_again_at: datetime | None = None,
) -> Clock:
    """The clock moved from its branch's ``previous`` calendar to ``calendar``, which took
    its place at ``changed_at``: the business time used before the change stays used (as
    ``previous`` measured it), what was left is laid out on ``calendar`` from the change,
    or from the later start or resume (``ran_again_at``) the clock ran again from.

    A paused clock keeps the time it had left at its pause, laid out on ``calendar`` from
    there so that its resume, measuring on the calendar then in force, finds it whole. A
    calendar-basis clock, a stopped one and one that breached are returned as they are: a
    closure does not take back a breach and the escalation it caused."""
    if clock.basis is not TimeBasis.BUSINESS or clock.state is ClockState.STOPPED:
        return clock
    if clock.breach_count:
        return clock
    if clock.state is ClockState.PAUSED:
        passed_before = clock.paused_at or changed_at
        anchor = max(passed_before, clock.started_at)
    else:
        passed_before = changed_at
        anchor = max(changed_at, clock.started_at, ran_again_at or changed_at)

    def moved(moment: datetime | None) -> datetime | None:
        # A moment passed before the change (or pause) stays passed: its timer fires at once.
        if moment is None or moment < passed_before:
            return moment
        left = between(previous, TimeBasis.BUSINESS, anchor, moment)
        return advance(calendar, TimeBasis.BUSINESS, anchor, left)

    return clock.model_copy(
        update={
            "due_at": moved(clock.due_at),
            "warn_at": moved(clock.warn_at),
            "next_breach_at": moved(clock.next_breach_at),
        }
    )


def stop_clock(clock: Clock, *, at: datetime, calendar: BusinessCalendar | None = None) -> Clock:
    """Stop the clock at ``at``. A paused one is first laid out again from ``at`` (with the
    branch's ``calendar``), so a stopped clock's ``due_at`` is final: its target with every
    pause left out, and it was met when ``stopped_at <= due_at`` (:func:`met`)."""
    if clock.state is ClockState.STOPPED:
        return clock
    if clock.state is ClockState.PAUSED:
        if calendar is None:
            raise ValueError("stopping a paused clock needs the branch's calendar")
        clock = resume_clock(clock, calendar=calendar, at=at)
    return clock.model_copy(
        update={"state": ClockState.STOPPED, "stopped_at": at, "paused_at": None}
    )


def met(clock: Clock) -> bool:
    """Whether a stopped clock stopped by its due time (time paused never counts), to the
    millisecond as the due time is stored and its timer fires: a stop within the due time's
    millisecond was late against the stored one, and on time in the reports."""
    return clock.stopped_at is not None and bson_time(clock.stopped_at) <= bson_time(clock.due_at)


def breach_withdrawable(clock: Clock, *, at: datetime) -> bool:
    """Whether the breaches fired for ``clock`` are void: it stopped or paused at ``at``, at
    or before its due time (the news of it reached routing after the timer had fired), to the
    millisecond as ``met``."""
    return clock.breach_count > 0 and bson_time(at) <= bson_time(clock.due_at)


def without_breaches(clock: Clock) -> Clock:
    """The clock as if its timer had not fired: no breach counted, the breach due again at
    the due time (a paused clock lays it out anew on resume)."""
    return clock.model_copy(
        update={"breach_count": 0, "breached_in_cycle": None, "next_breach_at": clock.due_at}
    )


def fire_due(
    clock: Clock, *, calendar: BusinessCalendar, now: datetime, repeat: bool
) -> tuple[Clock, TimerKind | None]:
    """Fire at most one timer of the clock that is due at ``now``.

    A breach wins over a warning that is also due (the warning would be moot).
    With ``repeat`` the breach timer re-arms one allowed span later, so a
    complaint left overdue keeps climbing the escalation chain.
    """
    if clock.state is not ClockState.RUNNING:
        return clock, None
    if clock.next_breach_at is not None and clock.next_breach_at <= now:
        span = timedelta(seconds=clock.span_s)
        next_breach_at = (
            advance(calendar, clock.basis, clock.next_breach_at, span)
            if repeat and clock.span_s > 0
            else None
        )
        updated = clock.model_copy(
            update={
                "breach_count": clock.breach_count + 1,
                "warned": True,
                "warn_at": None,
                "next_breach_at": next_breach_at,
            }
        )
        return updated, TimerKind.BREACH
    if clock.warn_at is not None and clock.warn_at <= now:
        return clock.model_copy(update={"warned": True, "warn_at": None}), TimerKind.WARNING
    return clock, None


def next_timer_at(clocks: Mapping[str, Clock]) -> datetime | None:
    """The earliest pending timer of all running clocks (indexed for the scheduler)."""
    pending = [at for clock in clocks.values() if (at := clock.next_timer()) is not None]
    return min(pending, default=None)


def load_clocks(stored: Mapping[str, dict] | None) -> dict[str, Clock]:
    return {name: from_stored(Clock, value) for name, value in (stored or {}).items()}
