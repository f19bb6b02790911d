"""Durable timers: one document that fails to fire never holds up the others.

A scheduler pass claims due documents one at a time under a lease. When firing one
fails, :func:`record_timer_failure` writes the failure on the document (a count, the
redacted error, the retry time) and moves its lease to that retry time, so the pass
takes the next due document and this one is tried again after a capped, growing
delay. A transient failure (concurrent change) only postpones it briefly, uncounted;
a dependency that is away ends the pass (every document would fail alike) and marks
nothing: the leases run out by themselves.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection

from complaints_shared.failures import is_dependency_unavailable, is_transient, redacted_error
from complaints_shared.logs import get_logger
from complaints_shared.metrics import TIMER_FAILURES
from complaints_shared.settings import ServiceSettings

log = get_logger(__name__)

FAILURES = "timer_failures"
LAST_ERROR = "timer_last_error"
RETRY_AT = "timer_retry_at"
# Unset together with the lease when a document fires: a fired timer carries no failure.
FAILURE_FIELDS = {FAILURES: "", LAST_ERROR: "", RETRY_AT: ""}


def failure_delay_s(*, failures: int, settings: ServiceSettings) -> float:
    """Capped exponential delay before a failing document is tried again."""
    first_s, max_s = settings.timer_retry_backoff_s, settings.timer_retry_backoff_max_s
    return min(max_s, first_s * 2 ** min(failures - 1, 30))


async def record_timer_failure(
    collection: AsyncCollection,
    *,
    document_id: str,
    exc: Exception,
    lease_field: str,
    owner_filter: dict[str, Any],
    lease_now: datetime,
    settings: ServiceSettings,
    timer: str,
) -> None:
    """Note why ``document_id`` did not fire and when it is tried again.

    ``lease_now`` is "now" on the clock the scheduler compares ``lease_field`` with.
    Re-raises when the database itself is away: the pass must stop.
    """
    if is_dependency_unavailable(exc):
        raise exc
    error = redacted_error(exc)
    if is_transient(exc):
        retry_at = lease_now + timedelta(seconds=settings.timer_retry_backoff_s)
        await collection.update_one(
            {"_id": document_id, **owner_filter}, {"$set": {lease_field: retry_at}}
        )
        log.info("timer_postponed", timer=timer, document_id=document_id, error=error)
        return
    current = await collection.find_one({"_id": document_id}, projection={FAILURES: 1})
    failures = int((current or {}).get(FAILURES, 0)) + 1
    retry_at = lease_now + timedelta(seconds=failure_delay_s(failures=failures, settings=settings))
    await collection.update_one(
        {"_id": document_id, **owner_filter},
        {
            "$set": {
                FAILURES: failures,
                LAST_ERROR: error,
                RETRY_AT: retry_at,
                lease_field: retry_at,
            }
        },
    )
    TIMER_FAILURES.labels(settings.service_name, timer).inc()
    log.error(
        "timer_failed",
        timer=timer,
        document_id=document_id,
        failures=failures,
        retry_at=retry_at.isoformat(),
        error=error,
    )
