"""Repeat detection's buckets (pure): a finished complaint's week, the weeks a lookup names,
and keys stored by day in today's form."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from intake.lifecycle import Status
from intake.repeats import current_keys, finished_bucket, repeat_buckets, repeat_keys

KEYS = ["p:+8613900001111", "n:王女士"]


def test_a_finished_complaint_is_found_by_the_monday_of_its_utc_week() -> None:
    # The UTC day decides (not a branch's): Sunday 29 November is in the week of the 23rd.
    sunday = datetime(2026, 11, 29, 17, 0, tzinfo=UTC)
    assert repeat_keys(KEYS, status=Status.CLOSED, at=sunday) == [
        "p:+8613900001111|w20261123",
        "n:王女士|w20261123",
    ]
    monday = datetime(2026, 11, 30, 0, 0, tzinfo=UTC)
    assert repeat_keys(KEYS, status=Status.WITHDRAWN, at=monday)[0].endswith("|w20261130")
    assert repeat_keys(KEYS, status=Status.OPEN, at=monday)[0].endswith("|open")


def test_a_lookup_names_open_and_every_week_of_the_window_and_no_more() -> None:
    now = datetime(2026, 12, 2, 3, 0, tzinfo=UTC)  # a Wednesday
    buckets = repeat_buckets(since=now - timedelta(days=30), now=now)
    # 2 November (a Monday) to the week of 30 November: five weeks, where days were 31.
    assert buckets == ["open", "w20261102", "w20261109", "w20261116", "w20261123", "w20261130"]
    for days in range(0, 60):
        for hour in (0, 23):
            since = datetime(2026, 11, 1, hour, tzinfo=UTC) + timedelta(days=days)
            until = since + timedelta(days=30)
            weeks = repeat_buckets(since=since, now=until)[1:]
            # Every day of the window is in one of the weeks named, and nothing else is.
            every_day = {
                finished_bucket(since.date() + timedelta(days=n))
                for n in range((until.date() - since.date()).days + 1)
            }
            assert set(weeks) == every_day and len(weeks) <= 6


def test_keys_stored_by_day_are_rewritten_by_week_and_current_ones_left_alone() -> None:
    stored = ["p:+8613900001111|20261129", "e:a|b@example.com|20261130", "n:王女士|open"]
    assert current_keys(stored) == [
        "p:+8613900001111|w20261123",
        "e:a|b@example.com|w20261130",
        "n:王女士|open",
    ]
    assert current_keys(["p:1|w20261123", "n:x|open"]) is None
    assert current_keys([]) is None
    assert finished_bucket(date(2026, 1, 1)) == "w20251229"  # across a year
