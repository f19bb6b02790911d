"""Unit: a decision that compares a time read from MongoDB with one held in memory compares
them to the millisecond, as BSON keeps a time.

A stored ``.898000`` was ``.898xxx`` when it was written: against an in-memory ``.898118``
it read as earlier. Until 5 December that reopened a complaint an administrator had closed
(a follow-up answer in the close's millisecond), judged a clock stopped within its due
time's millisecond late (while the reports, comparing stored with stored, counted it on
time), and sorted a subject's webhook deliveries by whether the relay had read the event
back from MongoDB.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from complaints_shared.envelope import CloudEvent
from complaints_shared.events import ClosedVia, EventType, FollowupCompleted, FollowupOutcome
from intake.commands import standing_still
from intake.lifecycle import Status
from intake.projections import _closed_by_an_administrator_since
from routing.sla import clocks as sla
from routing.sla.models import TimeBasis
from webhooks.due import _Due
from webhooks.handlers import order_key

# A time as stored (whole milliseconds) and moments within its millisecond.
STORED = datetime(2026, 12, 5, 18, 29, 8, 898_000, tzinfo=UTC)


def within(micros: int) -> datetime:
    return STORED + timedelta(microseconds=micros)


def test_a_follow_up_answer_in_the_millisecond_of_an_administrators_close_is_before_it() -> None:
    closed = {"status": Status.CLOSED.value, "closed_via": ClosedVia.ADMIN.value}
    assert _closed_by_an_administrator_since({**closed, "closed_at": STORED}, within(118))
    assert not _closed_by_an_administrator_since(
        {**closed, "closed_at": STORED}, STORED + timedelta(milliseconds=1)
    )


def _clock(*, due_at: datetime, breach_count: int = 0) -> sla.Clock:
    return sla.Clock(
        basis=TimeBasis.CALENDAR,
        started_at=due_at - timedelta(hours=4),
        due_at=due_at,
        span_s=4 * 3600,
        breach_count=breach_count,
    )


def test_a_clock_stopped_within_its_due_times_millisecond_was_met() -> None:
    """Due at .898700 when laid out, .898000 as stored; stopped at .898300."""
    stored = _clock(due_at=STORED)
    assert sla.met(sla.stop_clock(stored, at=within(300)))
    assert not sla.met(sla.stop_clock(stored, at=STORED + timedelta(milliseconds=1)))
    laid_out = _clock(due_at=within(700))  # before it was stored: the same verdict
    assert sla.met(sla.stop_clock(laid_out, at=within(900)))


def test_a_breach_timer_fired_in_the_due_times_millisecond_is_withdrawn_by_a_stop_in_it() -> None:
    breached = _clock(due_at=STORED, breach_count=1)
    assert sla.breach_withdrawable(breached, at=within(600))
    assert not sla.breach_withdrawable(breached, at=STORED + timedelta(milliseconds=1))


def _event(at: datetime) -> CloudEvent:
    data = FollowupCompleted(
        complaint_id="c-1",
        org="demo",
        branch="LZ",
        followup_id="c-1:r1:1",
        resolution_number=1,
        sequence=1,
        outcome=FollowupOutcome.SATISFIED,
        completed_at=at,
    )
    event = CloudEvent.new(event_type=EventType.FOLLOWUP_COMPLETED, source="followup", data=data)
    return event.model_copy(update={"time": at})


def test_webhook_deliveries_of_one_millisecond_keep_the_order_they_were_recorded_in() -> None:
    """The first event published from the outbox's copy in memory (.898800), the second read
    back from MongoDB first (.898900 as .898000): the first sorts first all the same."""
    first = order_key(_event(within(800)), recorded_ns=1)
    second = order_key(_event(STORED), recorded_ns=2)
    assert first < second
    later = order_key(_event(STORED + timedelta(milliseconds=1)), recorded_ns=0)
    assert second < later


def test_a_wait_begun_in_the_due_times_millisecond_leaves_the_due_time_unknown() -> None:
    """Due at .898700, stored as .898000; the wait began at .898500, stored as .898000.
    Routing judges the pause in time at that millisecond and moves the clock by the wait:
    the record drops the due time until it is announced again, whether read back or as
    routing announced it. Until 5 December the stored one stayed, overdue, while routing's
    clock stood still. One passed a millisecond before the wait stays."""
    document = {"resolve_due_at": STORED, "acknowledged_at": STORED}
    assert standing_still(document, since=STORED) == ["resolve_due_at"]
    announced = {**document, "resolve_due_at": within(700)}
    assert standing_still(announced, since=STORED) == ["resolve_due_at"]
    passed = {**document, "resolve_due_at": STORED - timedelta(microseconds=300)}
    assert standing_still(passed, since=STORED) == []


def test_a_delivery_waits_for_the_watermark_to_leave_its_millisecond() -> None:
    """The claim compares the stored event time with the watermark as BSON keeps it."""
    due = _Due(at=None, after_event_time=STORED)
    assert due.ready_at(now=within(900), recorded_through=within(900)) is None
    moved_on = STORED + timedelta(milliseconds=1)
    assert due.ready_at(now=moved_on, recorded_through=moved_on) == STORED
