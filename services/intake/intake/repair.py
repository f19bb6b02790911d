"""What every start repairs: the parts of a complaint derived from it and kept apart or
beside it (its customer keys, search posting, filter keys and repeat keys), missing or from
an older version.

One read of every complaint's ``_id``, customer, keys and derived versions (a scan, in
batches), whatever the number of things repaired: on the local server one such scan of
100,000 complaints took about 6 s with less read of each (docs/performance.md).
"""

from __future__ import annotations

from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from complaints_shared.failures import is_transient, redacted_error
from complaints_shared.logs import get_logger
from intake import filter_keys, grams, postings, repeats, store

log = get_logger(__name__)

BATCH = 500


async def at_start(*, db: AsyncDatabase) -> dict[str, int]:
    """Repair every complaint (after the indexes are in place: ``main.ensure_indexes``);
    how many customer keys, search postings, filter keys and repeat keys it wrote. The
    service serves nothing before this ends, so no list, search or repeat lookup sees a
    complaint without them."""
    written = {"customer_keys": 0, "postings": 0, "filter_keys": 0, "repeat_keys": 0}
    fields = {
        "_id": 1,
        "updated_at": 1,
        **dict.fromkeys(repeats.KEY_SOURCES, 1),
        grams.VERSION_FIELD: 1,
        filter_keys.VERSION_FIELD: 1,
    }
    batch: list[dict[str, Any]] = []

    async def repair(complaints: list[dict[str, Any]]) -> None:
        # First the customer keys: the filter keys, the posting and the repeat keys derive
        # from them, so those of a complaint whose keys changed are rebuilt after.
        rekeyed = await repeats.rederive_customer_keys(
            db=db, collection=store.COMPLAINTS, batch=complaints
        )
        written["customer_keys"] += len(rekeyed)
        for complaint in complaints:
            if complaint["_id"] in rekeyed:
                complaint[filter_keys.VERSION_FIELD] = None
        written["postings"] += await postings.backfill_batch(
            db=db, batch=complaints, rebuild=rekeyed
        )
        written["filter_keys"] += await filter_keys.backfill_batch(
            db=db, collection=store.COMPLAINTS, batch=complaints
        )
        written["repeat_keys"] += await repeats.backfill_batch(
            db=db, collection=store.COMPLAINTS, batch=complaints
        )

    async def repair_isolated(complaints: list[dict[str, Any]]) -> None:
        """``repair``, and when the batch fails for other than the database, each complaint
        on its own: one the code cannot read (a status unknown to it after a rollback, a
        field edited by hand) is logged and left as it is. It failed every start, and
        intake with it, on every replica."""
        try:
            # On copies: the steps note what they derived in the complaints they are given,
            # which the one-by-one pass must see as read.
            await repair([dict(complaint) for complaint in complaints])
            return
        except Exception as exc:
            if is_transient(exc):
                raise
        for complaint in complaints:
            try:
                await repair([complaint])
            except Exception as exc:
                if is_transient(exc):
                    raise
                log.error(
                    "repair_skipped_complaint",
                    complaint_id=complaint["_id"],
                    error=redacted_error(exc),
                )

    async for complaint in db[store.COMPLAINTS].find({}, projection=fields):
        batch.append(complaint)
        if len(batch) == BATCH:
            await repair_isolated(batch)
            batch = []
    if batch:
        await repair_isolated(batch)
    return written
