"""Submission fingerprints: an identical complaint of the same customer is registered once.

Within ``RESUBMISSION_WINDOW_S`` a submission with the same fingerprint
(``identity.submission_fingerprint``) finds the complaint the first one registered
instead of creating another. The claim document holds the complaint id and, while
the complaint is being stored, a holder's lease (as ``idempotency`` keys do).
"""

from __future__ import annotations

import asyncio
import time
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from complaints_shared.mongo import ensure_index, lease_kept, retrying
from intake import idempotency, store
from intake.settings import IntakeSettings

SUBMISSIONS = "submission_fingerprints"


async def ensure_indexes(*, db: AsyncDatabase) -> None:
    await ensure_index(db[SUBMISSIONS], "expires_at", name="expires_at")


@dataclass
class SubmissionClaim:
    """Create the complaint ``complaint_id`` (as ``holder``), or return ``existing``."""

    complaint_id: str
    holder: str | None = None
    existing: dict[str, Any] | None = None


async def claim_submission(
    *,
    db: AsyncDatabase,
    settings: IntakeSettings,
    fingerprint: str,
    complaint_id: str,
    now: datetime,
) -> SubmissionClaim:
    """Claim a submission fingerprint for ``complaint_id``, or find the complaint that has it.

    The claim is one atomic upsert: of identical concurrent submissions only one can
    insert the fingerprint document, the others see a duplicate key and wait for the
    winner's complaint (a 409 with Retry-After if it takes longer than
    ``IDEMPOTENCY_WAIT_S``). A winner that died or failed before storing it (its lease
    ran out or was given up) is taken over *with its complaint id*, so however the
    winner ended, one complaint exists.
    """
    claims = db[SUBMISSIONS]
    holder = idempotency.new_holder()
    deadline = time.monotonic() + settings.idempotency_wait_s
    while True:
        claim = {
            "complaint_id": complaint_id,
            "holder": holder,
            "lease_until": idempotency.lease_until(settings),
            "expires_at": now + timedelta(seconds=settings.resubmission_window_s),
        }
        try:
            await retrying(
                claims.update_one,
                {"_id": fingerprint, "expires_at": {"$lte": now}},
                {"$set": claim},
                upsert=True,
            )
            return SubmissionClaim(complaint_id=complaint_id, holder=holder)
        except DuplicateKeyError:
            pass
        live = await claims.find_one({"_id": fingerprint})
        if live is None:  # expired and removed meanwhile: claim afresh
            continue
        if live.get("holder") == holder:  # our own claim, stored before a dropped reply
            return SubmissionClaim(complaint_id=live["complaint_id"], holder=holder)
        existing = await store.find(db=db, complaint_id=live["complaint_id"])
        if existing is not None:
            return SubmissionClaim(complaint_id=live["complaint_id"], existing=existing)
        if idempotency.lease_expired(live):
            taken = await retrying(
                claims.update_one,
                {
                    "_id": fingerprint,
                    "holder": live.get("holder"),
                    "lease_until": live.get("lease_until"),
                },
                {"$set": {"holder": holder, "lease_until": idempotency.lease_until(settings)}},
            )
            if taken.modified_count == 1:
                return SubmissionClaim(complaint_id=live["complaint_id"], holder=holder)
            continue  # lost the race, or ours already (the next read tells)
        if time.monotonic() > deadline:
            raise idempotency.in_progress(
                "an identical complaint of this customer is still being registered; "
                f"retry in {idempotency.RETRY_AFTER_S} s"
            )
        await asyncio.sleep(idempotency.POLL_S)


async def release_submission(*, db: AsyncDatabase, fingerprint: str, holder: str) -> None:
    """Give up the claim's lease after a failure; the claim and its complaint id stay."""
    await retrying(
        db[SUBMISSIONS].update_one,
        {"_id": fingerprint, "holder": holder},
        {"$set": {"lease_until": datetime.now(UTC)}},
    )


def held(
    *, db: AsyncDatabase, settings: IntakeSettings, fingerprint: str, holder: str
) -> AbstractAsyncContextManager[None]:
    """The claim's lease renewed while the complaint is being stored (``lease_kept``)."""
    return lease_kept(
        db[SUBMISSIONS],
        {"_id": fingerprint, "holder": holder},
        field="lease_until",
        lease_s=settings.creation_lease_s,
    )
