"""Idempotency-Key handling for complaint creation.

The first request with a key records (key → request hash, complaint id) before
doing anything else; a repeat with the same body waits for the first to finish
and replays its response; a repeat with a different body is a 422. If the first
request died half-way, its lease runs out and the next one finishes the job
with the same complaint id, so there is still only one complaint.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from complaints_shared.auth import Principal
from complaints_shared.problems import ProblemError
from intake.settings import IntakeSettings

IDEMPOTENCY_KEYS = "idempotency_keys"
LEASE_S = 30.0
POLL_S = 0.05


@dataclass
class Reservation:
    """What the caller should do: create with ``complaint_id``, or replay a stored response."""

    key_id: str
    complaint_id: str
    replay_status: int | None = None
    replay_body: dict[str, Any] | None = None


async def ensure_indexes(*, db: AsyncDatabase) -> None:
    await db[IDEMPOTENCY_KEYS].create_index("expires_at", expireAfterSeconds=0, name="ttl")


def request_hash(body: dict[str, Any]) -> str:
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).hexdigest()


def _conflict(key: str) -> ProblemError:
    return ProblemError(
        status=422,
        title="Idempotency-Key reused",
        kind="idempotency-key-conflict",
        detail=f"Idempotency-Key {key!r} was already used with a different request body",
        errors=[{"field": "Idempotency-Key", "message": "already used with another body"}],
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
    now = datetime.now(UTC)
    keys = db[IDEMPOTENCY_KEYS]
    try:
        await keys.insert_one(
            {
                "_id": key_id,
                "request_hash": body_hash,
                "complaint_id": complaint_id,
                "state": "pending",
                "lease_until": now + timedelta(seconds=LEASE_S),
                "expires_at": now + timedelta(seconds=settings.idempotency_key_ttl_s),
            }
        )
        return Reservation(key_id=key_id, complaint_id=complaint_id)
    except DuplicateKeyError:
        pass
    deadline = time.monotonic() + settings.idempotency_wait_s
    while True:
        existing = await keys.find_one({"_id": key_id})
        if existing is None:  # expired between our insert and this read: start afresh
            return await reserve(
                db=db,
                settings=settings,
                principal=principal,
                key=key,
                body_hash=body_hash,
                complaint_id=complaint_id,
            )
        if existing["request_hash"] != body_hash:
            raise _conflict(key)
        if existing["state"] == "done":
            return Reservation(
                key_id=key_id,
                complaint_id=existing["complaint_id"],
                replay_status=existing["status_code"],
                replay_body=existing["response_body"],
            )
        taken = await _take_over_abandoned(db=db, existing=existing)
        if taken:
            return Reservation(key_id=key_id, complaint_id=existing["complaint_id"])
        if time.monotonic() > deadline:
            raise ProblemError(
                status=409,
                title="Request in progress",
                kind="idempotency-key-in-progress",
                detail=f"a request with Idempotency-Key {key!r} is still being processed; "
                "retry shortly",
            )
        await asyncio.sleep(POLL_S)


async def _take_over_abandoned(*, db: AsyncDatabase, existing: dict[str, Any]) -> bool:
    now = datetime.now(UTC)
    if existing["lease_until"] > now:
        return False
    result = await db[IDEMPOTENCY_KEYS].update_one(
        {"_id": existing["_id"], "state": "pending", "lease_until": existing["lease_until"]},
        {"$set": {"lease_until": now + timedelta(seconds=LEASE_S)}},
    )
    return result.modified_count == 1


async def complete(
    *, db: AsyncDatabase, reservation: Reservation, status_code: int, body: dict[str, Any]
) -> None:
    """Remember the response so a retry with the same key replays it exactly."""
    await db[IDEMPOTENCY_KEYS].update_one(
        {"_id": reservation.key_id},
        {"$set": {"state": "done", "status_code": status_code, "response_body": body}},
    )


async def release(*, db: AsyncDatabase, reservation: Reservation) -> None:
    """Forget a reservation whose request failed, so a retry can start at once."""
    await db[IDEMPOTENCY_KEYS].delete_one({"_id": reservation.key_id, "state": "pending"})
