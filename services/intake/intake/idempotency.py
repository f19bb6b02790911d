"""Idempotency-Key handling for complaint creation.

The first request with a key records (key → request hash, complaint id, holder)
before doing anything else and renews its lease while it runs; a repeat with the
same body waits for the first to finish and replays its response, or gets a 409
with ``Retry-After`` while the first is still running; a repeat with a different
body is a 422. Only a holder that died (its lease ran out unrenewed) or failed
(it gave its lease up) is taken over, and the next request finishes the job with
the same complaint id, so there is still only one complaint. A holder only ever
changes the reservation while it still holds it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from complaints_shared.auth import Principal
from complaints_shared.idempotency import key_conflict
from complaints_shared.mongo import insert_batched, lease_kept, retrying
from complaints_shared.problems import ProblemError
from intake.settings import IntakeSettings

IDEMPOTENCY_KEYS = "idempotency_keys"
POLL_S = 0.05
# What a request told to come back later is told to wait.
RETRY_AFTER_S = 1


@dataclass
class Reservation:
    """What the caller should do: create with ``complaint_id``, or replay a stored response.

    ``holder`` identifies this request while it holds the key.
    """

    key_id: str
    complaint_id: str
    holder: str = ""
    replay_status: int | None = None
    replay_body: dict[str, Any] | None = None


async def ensure_indexes(*, db: AsyncDatabase) -> None:
    await db[IDEMPOTENCY_KEYS].create_index("expires_at", expireAfterSeconds=0, name="ttl")


def new_holder() -> str:
    return uuid.uuid4().hex


def lease_until(settings: IntakeSettings) -> datetime:
    # Leases are about real time (is the holder still alive?), never the business clock.
    return datetime.now(UTC) + timedelta(seconds=settings.creation_lease_s)


def lease_expired(document: dict[str, Any]) -> bool:
    until = document.get("lease_until")
    return until is None or until <= datetime.now(UTC)


def in_progress(detail: str) -> ProblemError:
    """The same registration is still being processed by another request: come back shortly."""
    return ProblemError(
        status=409,
        title="Request in progress",
        kind="request-in-progress",
        detail=detail,
        headers={"Retry-After": str(RETRY_AFTER_S)},
    )


async def reserve(
    *,
    db: AsyncDatabase,
    settings: IntakeSettings,
    principal: Principal,
    key: str,
    body_hash: str,
    complaint_id: str,
) -> Reservation:
    """Reserve ``key`` for this request, or learn what the earlier request produced."""
    key_id = f"{principal.org}\x1f{principal.subject}\x1f{key}"
    keys = db[IDEMPOTENCY_KEYS]
    holder = new_holder()
    deadline = time.monotonic() + settings.idempotency_wait_s
    while True:
        reservation = {
            "_id": key_id,
            "request_hash": body_hash,
            "complaint_id": complaint_id,
            "state": "pending",
            "holder": holder,
            "lease_until": lease_until(settings),
            "expires_at": datetime.now(UTC) + timedelta(seconds=settings.idempotency_key_ttl_s),
        }
        try:
            await retrying(insert_batched, keys, reservation)
            return Reservation(key_id=key_id, complaint_id=complaint_id, holder=holder)
        except DuplicateKeyError:
            pass
        existing = await keys.find_one({"_id": key_id})
        if existing is None:  # expired between our insert and this read: start afresh
            continue
        if existing.get("holder") == holder:  # ours, stored before a dropped reply
            return Reservation(key_id=key_id, complaint_id=existing["complaint_id"], holder=holder)
        if existing["request_hash"] != body_hash:
            raise key_conflict(key)
        if existing["state"] == "done":
            return Reservation(
                key_id=key_id,
                complaint_id=existing["complaint_id"],
                replay_status=existing["status_code"],
                replay_body=existing["response_body"],
            )
        if await _take_over(db=db, settings=settings, existing=existing, holder=holder):
            return Reservation(key_id=key_id, complaint_id=existing["complaint_id"], holder=holder)
        if time.monotonic() > deadline:
            raise in_progress(
                f"a request with Idempotency-Key {key!r} is still being processed; "
                f"retry in {RETRY_AFTER_S} s"
            )
        await asyncio.sleep(POLL_S)


async def _take_over(
    *, db: AsyncDatabase, settings: IntakeSettings, existing: dict[str, Any], holder: str
) -> bool:
    """Continue the work of a holder that died or gave up: same complaint id, new holder."""
    if not lease_expired(existing):
        return False
    result = await retrying(
        db[IDEMPOTENCY_KEYS].update_one,
        {
            "_id": existing["_id"],
            "state": "pending",
            "holder": existing.get("holder"),
            "lease_until": existing.get("lease_until"),
        },
        {"$set": {"holder": holder, "lease_until": lease_until(settings)}},
    )
    # Repeated after a dropped reply, the update matches nothing: the key is ours anyway.
    return result.modified_count == 1 or await _holds(db=db, key_id=existing["_id"], holder=holder)


async def _holds(*, db: AsyncDatabase, key_id: str, holder: str) -> bool:
    return await db[IDEMPOTENCY_KEYS].find_one({"_id": key_id, "holder": holder}) is not None


@asynccontextmanager
async def held(
    *, db: AsyncDatabase, settings: IntakeSettings, reservation: Reservation | None
) -> AsyncIterator[None]:
    """Keep the reservation's lease (if any) alive while its request runs, however slow."""
    if reservation is None:
        yield
        return
    async with lease_kept(
        db[IDEMPOTENCY_KEYS],
        {"_id": reservation.key_id, "state": "pending", "holder": reservation.holder},
        field="lease_until",
        lease_s=settings.creation_lease_s,
    ):
        yield


async def complete(
    *, db: AsyncDatabase, reservation: Reservation, status_code: int, body: dict[str, Any]
) -> None:
    """Remember the response so a retry with the same key replays it exactly."""
    await retrying(
        db[IDEMPOTENCY_KEYS].update_one,
        {"_id": reservation.key_id, "state": "pending"},
        {
            "$set": {"state": "done", "status_code": status_code, "response_body": body},
            "$unset": {"holder": "", "lease_until": ""},
        },
    )


async def release(*, db: AsyncDatabase, reservation: Reservation) -> None:
    """Give up the lease of a request that failed, so a retry can take over at once.

    The reservation (with its complaint id) stays: the failed request may have stored
    the complaint after all, and the retry must find it rather than create another.
    Only the current holder's lease is given up, never one a retry took over.
    """
    await retrying(
        db[IDEMPOTENCY_KEYS].update_one,
        {"_id": reservation.key_id, "state": "pending", "holder": reservation.holder},
        {"$set": {"lease_until": datetime.now(UTC)}},
    )
