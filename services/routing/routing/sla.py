"""Due times for acknowledgement and resolution (calendar time per severity)."""

from __future__ import annotations

from datetime import datetime, timedelta

from complaints_shared.events import Severity

# (acknowledge within, resolve within); business-hour calendars refine these per branch.
DEFAULT_DUE_WITHIN: dict[Severity, tuple[timedelta, timedelta]] = {
    Severity.CRITICAL: (timedelta(hours=1), timedelta(hours=24)),
    Severity.HIGH: (timedelta(hours=4), timedelta(days=3)),
    Severity.NORMAL: (timedelta(hours=8), timedelta(days=7)),
    Severity.LOW: (timedelta(days=2), timedelta(days=15)),
}


def due_times(*, severity: Severity, received_at: datetime) -> tuple[datetime, datetime]:
    acknowledge_within, resolve_within = DEFAULT_DUE_WITHIN[severity]
    return received_at + acknowledge_within, received_at + resolve_within
