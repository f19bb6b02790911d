"""What every start repairs: the parts of a complaint derived from it and kept apart or
beside it (its search posting, its filter keys, its repeat keys), missing or from an older
version.

One read of every complaint's ``_id`` and derived versions (a scan, in batches), whatever
the number of things repaired: on the local server one such scan of 100,000 complaints
takes about 6 s (docs/performance.md).
"""

from __future__ import annotations

from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from intake import filter_keys, grams, postings, repeats, store

BATCH = 500


async def at_start(*, db: AsyncDatabase) -> dict[str, int]:
    """Repair every complaint (after the indexes are in place: ``main.ensure_indexes``);
    how many search postings, filter keys and repeat keys it wrote. The service serves
    nothing before this ends, so no list, search or repeat lookup sees a complaint without
    them."""
    written = {"postings": 0, "filter_keys": 0, "repeat_keys": 0}
    fields = {
        "_id": 1,
        "version": 1,
        "repeat_keys": 1,
        grams.VERSION_FIELD: 1,
        filter_keys.VERSION_FIELD: 1,
    }
    batch: list[dict[str, Any]] = []

    async def repair(complaints: list[dict[str, Any]]) -> None:
        written["postings"] += await postings.backfill_batch(db=db, batch=complaints)
        written["filter_keys"] += await filter_keys.backfill_batch(
            db=db, collection=store.COMPLAINTS, batch=complaints
        )
        written["repeat_keys"] += await repeats.backfill_batch(
            db=db, collection=store.COMPLAINTS, batch=complaints
        )

    async for complaint in db[store.COMPLAINTS].find({}, projection=fields):
        batch.append(complaint)
        if len(batch) == BATCH:
            await repair(batch)
            batch = []
    if batch:
        await repair(batch)
    return written
