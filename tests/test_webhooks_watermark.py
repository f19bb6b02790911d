"""The consumed-through watermark that keeps cross-topic order (pure logic, no Kafka).

``through`` may only become a moment once the consumer group has committed every
partition up to the end offsets that were read at that moment.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from aiokafka import TopicPartition

from webhooks.settings import WebhooksSettings
from webhooks.watermark import ConsumedWatermark

INTAKE = TopicPartition("complaints.intake.v1", 0)
ROUTING = TopicPartition("complaints.routing.v1", 0)
FOLLOWUP = TopicPartition("complaints.followup.v1", 0)
T0 = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)


def _watermark() -> tuple[ConsumedWatermark, list[None]]:
    advanced: list[None] = []
    watermark = ConsumedWatermark(
        settings=WebhooksSettings(), on_advance=lambda: advanced.append(None)
    )
    return watermark, advanced


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def test_nothing_is_released_until_every_partition_is_committed_to_its_end() -> None:
    watermark, advanced = _watermark()
    ends = {INTAKE: 40, ROUTING: 7, FOLLOWUP: 0}
    # Routing is done but intake lags: an earlier intake event may still be unrecorded.
    watermark.advance(ends_at=_at(0), ends=ends, committed={INTAKE: 39, ROUTING: 7})
    assert watermark.through is None and not advanced
    watermark.advance(ends_at=_at(0.1), ends=ends, committed={INTAKE: 40, ROUTING: 7})
    # An empty partition (end 0) needs no commit; the first observation was reached too,
    # and the newest reached one counts.
    assert watermark.through == _at(0.1)
    assert len(advanced) == 1


def test_under_steady_load_each_observation_is_reached_in_turn() -> None:
    watermark, _ = _watermark()
    # The log grows between observations; the group trails one observation behind.
    watermark.advance(ends_at=_at(0), ends={INTAKE: 10}, committed={INTAKE: 5})
    watermark.advance(ends_at=_at(1), ends={INTAKE: 20}, committed={INTAKE: 12})
    assert watermark.through == _at(0)
    watermark.advance(ends_at=_at(2), ends={INTAKE: 30}, committed={INTAKE: 25})
    assert watermark.through == _at(1)
    watermark.advance(ends_at=_at(3), ends={INTAKE: 40}, committed={INTAKE: 40})
    assert watermark.through == _at(3)


def test_a_group_over_a_minute_behind_still_moves_the_watermark() -> None:
    """Observations were kept for a minute of lag (600 at 0.1 s), the oldest dropped: a
    group that stayed 90 s behind never reached one still kept, so ``through`` stood
    still and every delivery waited until the lag fell under a minute. Now the queue is
    thinned and ``through`` trails the lag, give or take the thinned spacing."""
    watermark, _ = _watermark()
    per_second = 100  # records a second on one partition; the group commits 90 s behind
    for step in range(3000):  # 300 s, observed every 0.1 s
        now = step / 10
        watermark.advance(
            ends_at=_at(now),
            ends={INTAKE: round(now * per_second)},
            committed={INTAKE: max(0, round((now - 90) * per_second))},
        )
    assert watermark.through is not None
    trailing_s = (_at(299.9) - watermark.through).total_seconds()
    assert 90 <= trailing_s <= 92, trailing_s


def test_a_partition_the_group_never_committed_holds_the_watermark() -> None:
    watermark, _ = _watermark()
    watermark.advance(ends_at=_at(0), ends={INTAKE: 3, ROUTING: 1}, committed={INTAKE: 3})
    assert watermark.through is None


def test_a_partition_whose_records_are_all_gone_does_not_hold_the_watermark() -> None:
    """Retention deleted every record of the follow-up partition before the group committed
    there (a new group, or one down longer than retention): its consumer fetches nothing
    there and never commits. That partition held every event delivery back until a new
    record happened to land on it; records before the log start are nothing to wait for."""
    watermark, _ = _watermark()
    ends = {INTAKE: 3, FOLLOWUP: 5}
    watermark.advance(ends_at=_at(0), ends=ends, committed={INTAKE: 3}, starts={FOLLOWUP: 5})
    assert watermark.through == _at(0)
    # Only what is gone counts so: a record after the log start still waits for its commit.
    watermark.advance(
        ends_at=_at(1), ends={INTAKE: 3, FOLLOWUP: 6}, committed={INTAKE: 3}, starts={FOLLOWUP: 5}
    )
    assert watermark.through == _at(0)
    watermark.advance(
        ends_at=_at(2), ends={INTAKE: 3, FOLLOWUP: 6}, committed={INTAKE: 3, FOLLOWUP: 6}
    )
    assert watermark.through == _at(2)
