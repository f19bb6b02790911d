"""Submission claims: an identical complaint of the same customer is registered once.

Within ``RESUBMISSION_WINDOW_S`` a submission with the same subject and description from
the same customer (a phone, e-mail or external id in common) finds the complaint the first
one registered instead of creating another. The complaint's own insert is the claim: while
its window is open the complaint holds one claim per customer key
(``identity.submission_claims``) in ``resubmission_key``, under a unique multikey index, so
of identical submissions racing each other the first *stored* wins and the others are
refused by the index and return it. No claim document is written
beside the complaint. A window that has closed is given up by the next identical
submission, which then registers a new complaint; so is the claim of a complaint finished
since (resolved, closed, rejected, withdrawn): a new submission is new work.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from complaints_shared.mongo import ensure_index
from intake import store
from intake.lifecycle import FINISHED_STATUSES, Status
from intake.settings import IntakeSettings

RESUBMISSION_KEY = "resubmission_key"
RESUBMISSION_UNTIL = "resubmission_until"
# Earlier versions kept one claim document per submission here; dropped at start-up.
LEGACY_SUBMISSIONS = "submission_fingerprints"


async def ensure_indexes(*, db: AsyncDatabase) -> None:
    # Sparse, not partial on ``$exists``: the local server reads no partial index whose
    # filter is not a comparison, so every lookup of a resubmission's claim read the whole
    # collection (267 ms at 20,000 complaints, 1.1 ms now; docs/mongodb-compatibility.md).
    # Only claims carry the key (released ones are unset), so on MongoDB the two hold the
    # same entries.
    await ensure_index(
        db[store.COMPLAINTS], RESUBMISSION_KEY, unique=True, sparse=True, name="resubmission_unique"
    )
    # Its claims were hashes of every key of the customer together, which no submission
    # claims any more (one per key since 5 December): they held for ten minutes at most.
    await db[LEGACY_SUBMISSIONS].drop()


def claim_fields(*, settings: IntakeSettings, claims: list[str], now: datetime) -> dict[str, Any]:
    """The fields a new complaint claims its submission with, until its window closes: one
    claim per key of the customer (``identity.submission_claims``), each unique across the
    complaints (a multikey index), so a submission sharing any key collides."""
    return {
        RESUBMISSION_KEY: claims,
        RESUBMISSION_UNTIL: now + timedelta(seconds=settings.resubmission_window_s),
    }


async def earlier_submission(
    *, db: AsyncDatabase, claims: list[str], now: datetime
) -> dict[str, Any] | None:
    """After the index refused a new complaint's claims: the complaint that holds one of
    them while its window is open and it is being worked. A closed window, or a complaint
    finished since (resolved, closed, rejected, withdrawn), is given up here and None
    returned, as when the claim went away meanwhile: the caller inserts again. Until
    5 December a customer who withdrew and called again within the window got the
    withdrawn complaint back, and nothing was registered."""
    complaints = db[store.COMPLAINTS]
    holder = await complaints.find_one(
        {RESUBMISSION_KEY: {"$in": claims}}, projection=store.HIDDEN_FIELDS
    )
    if holder is None:
        return None
    if holder[RESUBMISSION_UNTIL] > now and Status(holder["status"]) not in FINISHED_STATUSES:
        return holder
    await complaints.update_one(
        {"_id": holder["_id"], RESUBMISSION_UNTIL: holder[RESUBMISSION_UNTIL]},
        {"$unset": {RESUBMISSION_KEY: "", RESUBMISSION_UNTIL: ""}},
    )
    return None
