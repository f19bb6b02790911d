"""Repeat detection's keys: how a customer's earlier complaints are found again.

A complaint carries ``repeat_keys``: each of its customer keys with the bucket it is in,
``open`` while it is open, else the UTC day it finished. "Open, or finished within the
window" is then one equality ``$in`` on a multikey index (``store.find_earlier_complaints``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from intake.lifecycle import OPEN_STATUSES, Status

# Earlier complaints named in ``repeat_of`` (newest first); ``repeat_count`` counts them all.
MAX_REPEAT_LINKS = 20
# The ``repeat_keys`` bucket of an open complaint (a finished one: the day it finished).
REPEAT_OPEN = "open"


def repeat_keys(customer_keys: list[str], *, status: Status, at: datetime) -> list[str]:
    """The keys repeat detection finds a complaint by: ``<customer key>|open`` while it is
    open, ``<customer key>|<UTC day it finished>`` once resolved, closed, rejected or
    withdrawn (a reopen makes it open again)."""
    bucket = REPEAT_OPEN if status in OPEN_STATUSES else at.astimezone(UTC).strftime("%Y%m%d")
    return [f"{key}|{bucket}" for key in customer_keys]


def repeat_buckets(*, since: datetime, now: datetime) -> list[str]:
    """The buckets of complaints open now or finished on a UTC day from ``since`` to ``now``."""
    first, last = since.astimezone(UTC).date(), now.astimezone(UTC).date()
    days = [(first + timedelta(days=n)).strftime("%Y%m%d") for n in range((last - first).days + 1)]
    return [REPEAT_OPEN, *days]
