"""Submission claims: an identical complaint of the same customer is registered once.

Within ``RESUBMISSION_WINDOW_S`` a submission with the same fingerprint
(``identity.submission_fingerprint``) finds the complaint the first one registered
instead of creating another. The complaint's own insert is the claim: while its
window is open the complaint holds the fingerprint in ``resubmission_key``, under a
unique index, so of identical submissions racing each other the first *stored* wins
and the others are refused by the index and return it. No claim document is written
beside the complaint. A window that has closed is given up by the next identical
submission, which then registers a new complaint.
"""

from __future__ import annotations

from contextlib import suppress
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from complaints_shared.mongo import ensure_index
from intake import store
from intake.settings import IntakeSettings

RESUBMISSION_KEY = "resubmission_key"
RESUBMISSION_UNTIL = "resubmission_until"
# Earlier versions kept one claim document per submission here; carried over at start-up.
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
    await carry_over_legacy_claims(db=db)


def claim_fields(*, settings: IntakeSettings, fingerprint: str, now: datetime) -> dict[str, Any]:
    """The fields a new complaint claims its submission with, until its window closes."""
    return {
        RESUBMISSION_KEY: fingerprint,
        RESUBMISSION_UNTIL: now + timedelta(seconds=settings.resubmission_window_s),
    }


async def earlier_submission(
    *, db: AsyncDatabase, fingerprint: str, now: datetime
) -> dict[str, Any] | None:
    """After the index refused a new complaint's claim: the complaint that holds it while
    its window is open. A closed window is given up here and None returned, as when the
    claim went away meanwhile: the caller inserts again."""
    complaints = db[store.COMPLAINTS]
    holder = await complaints.find_one(
        {RESUBMISSION_KEY: fingerprint}, projection=store.HIDDEN_FIELDS
    )
    if holder is None:
        return None
    if holder[RESUBMISSION_UNTIL] > now:
        return holder
    await complaints.update_one(
        {"_id": holder["_id"], RESUBMISSION_KEY: fingerprint},
        {"$unset": {RESUBMISSION_KEY: "", RESUBMISSION_UNTIL: ""}},
    )
    return None


async def carry_over_legacy_claims(*, db: AsyncDatabase) -> int:
    """Move the open claims of the former ``submission_fingerprints`` collection onto their
    complaints, then drop it; how many moved. A no-op once done (the collection is gone)."""
    legacy = db[LEGACY_SUBMISSIONS]
    moved = 0
    async for claim in legacy.find({"expires_at": {"$gt": datetime.now(UTC)}}):
        with suppress(DuplicateKeyError):  # claimed already by a complaint stored since
            result = await db[store.COMPLAINTS].update_one(
                {"_id": claim["complaint_id"], RESUBMISSION_KEY: {"$exists": False}},
                {"$set": {RESUBMISSION_KEY: claim["_id"], RESUBMISSION_UNTIL: claim["expires_at"]}},
            )
            moved += result.modified_count
    await legacy.drop()
    return moved
