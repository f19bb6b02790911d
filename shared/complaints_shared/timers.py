"""Durable timers: one document that fails to fire never holds up the others.

A scheduler pass claims due documents one at a time under a lease. When firing one
fails, :func:`record_timer_failure` writes the failure on the document (a count, the
redacted error, the retry time) and moves its lease to that retry time, so the pass
takes the next due document and this one is tried again after a capped, growing
delay. A transient failure (concurrent change) only postpones it briefly, uncounted;
a dependency that is away ends the pass (every document would fail alike) and marks
nothing: the leases run out by themselves.

A look-over (:func:`look_over_due`) is a lighter timer: a due time on a document that a
later pass of any replica acts on once, then unsets unless it was moved meanwhile.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
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


async def look_over_due(
    collection: AsyncCollection,
    *,
    field: str,
    look: Callable[[dict[str, Any]], Awaitable[dict[str, Any] | None]],
    what: str,
    defer_s: float,
    limit: int,
) -> int:
    """Act once on the documents of ``collection`` whose look-over time ``field`` has
    passed (at most ``limit``, the earliest first), then unset it; how many were looked over.

    ``look`` gets the document and returns fields to set with the unset (or None). The
    unset is conditional on the time read: a document planned again meanwhile keeps its
    next look-over. A transient failure (a busy document, the database away) moves the
    look-over ``defer_s`` on, after the others' turn; a permanent one is logged and the
    look-over dropped, so one document cannot hold the rest up for good. The times are
    the database's wall clock (``datetime.now``), never a test's clock: they are set so.
    """
    due = collection.find({field: {"$lte": datetime.now(UTC)}}).sort(field, 1).limit(limit)
    looked = 0
    for document in await due.to_list(None):
        planned = {"_id": document["_id"], field: document[field]}
        try:
            fields = await look(document) or {}
        except Exception as exc:
            error = redacted_error(exc)
            if is_transient(exc):
                log.warning("look_over_deferred", what=what, id=document["_id"], error=error)
                later = datetime.now(UTC) + timedelta(seconds=defer_s)
                await collection.update_one(planned, {"$set": {field: later}})
                continue
            log.error("look_over_dropped", what=what, id=document["_id"], error=error)
            fields = {}
        update: dict[str, Any] = {"$unset": {field: ""}}
        if fields:
            update["$set"] = fields
        await collection.update_one(planned, update)
        looked += 1
    return looked
