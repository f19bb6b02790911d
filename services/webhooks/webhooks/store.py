"""Persistence of webhooks: subscriptions and deliveries (no HTTP, no decisions).

A delivery is one event for one subscription. It is written before any attempt,
with an id derived from (subscription, event), so a redelivered Kafka record
records nothing twice. Its ``next_attempt_at`` is the durable timer the
dispatcher claims under a lease; a delivery without one is delivered, failed,
or held while its subscription is paused or disabled. A pending one without a
timer under an active subscription is stranded (no write leaves one on purpose);
the dispatcher's repair pass makes it due.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pymongo import ASCENDING, DESCENDING, InsertOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from complaints_shared import aggregate, preconditions
from complaints_shared.auth import Principal
from complaints_shared.idempotency import HEADER, CommandKey
from complaints_shared.mongo import (
    any_date,
    as_stored,
    at_or_after,
    at_or_before,
    bulk_write_unless_taken,
    by_ids,
    ensure_index,
    lease_free,
    update_and_read,
)
from complaints_shared.pagination import Page
from complaints_shared.preconditions import IfMatch
from complaints_shared.problems import conflict
from complaints_shared.stored import from_stored
from webhooks.models import (
    DeliveryFilters,
    DeliveryRead,
    DeliveryStatus,
    SubscriptionRead,
    SubscriptionStatus,
    event_type_matches,
)

SUBSCRIPTIONS = "subscriptions"
DELIVERIES = "deliveries"
# The API shows everything of a subscription but its secrets (and their version) and the
# fingerprint of the request that created it.
PUBLIC_SUBSCRIPTION = {
    "signing_secrets": 0,
    "secrets_version": 0,
    "created_by_request": 0,
    "keyed_rotations": 0,
    "keyed_redeliveries": 0,
}
# On a delivery: the keyed requests that queued it again (``CommandKey.event_id``); on a
# subscription: the keyed range redeliveries made of it. The latest ones: retries come
# within minutes.
REDELIVERY_KEYS = "redelivery_keys"
KEYED_REDELIVERIES = "keyed_redeliveries"
REDELIVERY_KEYS_KEPT = 20
# When the first attempt of a delivery's current retry schedule was made: noted by every
# attempt made at the schedule's start (``retry_index`` 0), unset when a held or redelivered
# one starts afresh.
SCHEDULE_STARTED_AT = "schedule_started_at"
# The delivery log never needs the body.
PUBLIC_DELIVERY = {
    "body": 0,
    "lease_owner": 0,
    "lease_until": 0,
    "wakes": 0,
    SCHEDULE_STARTED_AT: 0,
    REDELIVERY_KEYS: 0,
}
# A subscription being deleted (``delete_subscription``) is gone for every reader; a missing
# date is asked as null, a present one as ``any_date()`` (docs/mongodb-compatibility.md).
# On the record a completed deletion leaves in the subscription's place (no ``deleted_at``:
# the ``deleted`` index keeps only deletions not completed): when it completed, and when the
# record goes (a TTL index).
REMOVED_AT = "removed_at"
REMOVED_RECORD_EXPIRES = "removed_record_expires_at"
NOT_DELETED = {"deleted_at": None, REMOVED_AT: None}
# When a delivery was delivered or failed (set by the write that finishes it, unset by a
# redelivery); the retention TTL counts from it.
FINISHED_AT = "finished_at"
FINISHED = [DeliveryStatus.DELIVERED.value, DeliveryStatus.FAILED.value]


async def ensure_indexes(*, db: AsyncDatabase, finished_delivery_kept_s: int) -> None:
    """The indexes of both collections; finished deliveries go ``finished_delivery_kept_s``
    after they finished (a TTL index)."""
    subscriptions = db[SUBSCRIPTIONS]
    await subscriptions.create_index([("org", ASCENDING), ("status", ASCENDING)], name="org_status")
    await subscriptions.create_index(
        [("org", ASCENDING), ("created_at", ASCENDING), ("_id", ASCENDING)], name="org_created"
    )
    # The repair pass's question: which subscriptions are active (of every organisation).
    await subscriptions.create_index([("status", ASCENDING)], name="status")
    # And which deletions a failure cut short (normally none: the index stays empty).
    await subscriptions.create_index([("deleted_at", ASCENDING)], name="deleted", sparse=True)
    # A removed subscription's record goes when its time is up (``complete_deletion``).
    await subscriptions.create_index(
        [(REMOVED_RECORD_EXPIRES, ASCENDING)], name="removed_expiry", expireAfterSeconds=0
    )
    deliveries = db[DELIVERIES]
    # Pending deliveries by due time: the backlog gauge counts the pending ones. (The
    # dispatcher's claims read it until 5 December; they go per subscription now.)
    await deliveries.create_index(
        [("status", ASCENDING), ("next_attempt_at", ASCENDING)], name="status_next_attempt"
    )
    # Order within (subscription, complaint): is an earlier one still pending?
    await deliveries.create_index(
        [
            ("subscription_id", ASCENDING),
            ("chain", ASCENDING),
            ("status", ASCENDING),
            ("order_key", ASCENDING),
        ],
        name="subscription_chain_order",
    )
    await deliveries.create_index(
        [("subscription_id", ASCENDING), ("created_at", DESCENDING), ("_id", DESCENDING)],
        name="subscription_log",
    )
    # A subscription's due deliveries, earliest first (the dispatcher's claims, one
    # subscription at a time), and its held ones (pending, ``next_attempt_at`` missing),
    # which re-activation and the repair pass make due, found without reading its others.
    await deliveries.create_index(
        [("subscription_id", ASCENDING), ("status", ASCENDING), ("next_attempt_at", ASCENDING)],
        name="subscription_held",
    )
    # A finished delivery's body is the event, customer contact included: it goes once its
    # retention is over. Partial: a pending one is never removed, whatever it carries.
    # Redefined (same name) when the retention changes.
    await ensure_index(
        deliveries,
        [(FINISHED_AT, ASCENDING)],
        name="finished_expiry",
        expireAfterSeconds=finished_delivery_kept_s,
        partialFilterExpression={"status": {"$in": FINISHED}},
    )
    # Deliveries finished before that write stamped ``finished_at`` are kept for the
    # retention from now on; none after the first start (docs/mongodb-compatibility.md).
    await deliveries.update_many(
        {"status": {"$in": FINISHED}, FINISHED_AT: None}, {"$currentDate": {FINISHED_AT: True}}
    )


# ---------------------------------------------------------------- subscriptions --


def new_subscription_id() -> str:
    return f"whs_{uuid.uuid4().hex}"


def keyed_subscription_id(*, org: str, subject: str, idempotency_key: str) -> str:
    """The id of the subscription a caller creates under an ``Idempotency-Key``: the same
    for every attempt of that request, so a repeated creation meets the first one's."""
    digest = hashlib.sha256(f"{org}\n{subject}\n{idempotency_key}".encode()).hexdigest()
    return f"whs_{digest[:32]}"


async def insert_subscription(*, db: AsyncDatabase, document: dict[str, Any]) -> bool:
    """Store a new subscription; False if its id is taken (a creation repeated under its
    ``Idempotency-Key``)."""
    try:
        await db[SUBSCRIPTIONS].insert_one(document)
    except DuplicateKeyError:
        return False
    return True


async def get_subscription(
    *, db: AsyncDatabase, scope: dict[str, Any], subscription_id: str, with_secrets: bool = False
) -> dict[str, Any] | None:
    """The subscription if ``scope`` (a caller's filter, or ``{}``) covers it."""
    return await db[SUBSCRIPTIONS].find_one(
        {**scope, "_id": subscription_id, **NOT_DELETED},
        projection=None if with_secrets else PUBLIC_SUBSCRIPTION,
    )


async def list_subscriptions(
    *, db: AsyncDatabase, principal: Principal, limit: int, cursor: str | None
) -> Page[SubscriptionRead]:
    return await aggregate.page(
        collection=db[SUBSCRIPTIONS],
        query={**principal.scope_filter(), **NOT_DELETED},
        sort_field="created_at",
        limit=limit,
        cursor=cursor,
        to_item=lambda document: from_stored(SubscriptionRead, _with_id(document)),
        projection=PUBLIC_SUBSCRIPTION,
    )


async def update_subscription(
    *,
    db: AsyncDatabase,
    scope: dict[str, Any],
    subscription_id: str,
    changes: dict[str, Any],
    unset: dict[str, Any] | None = None,
    read: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Apply ``changes`` as the subscription's next version; with ``read``, only while it is
    still at the version read (a change decided on a read is not written over a colleague's
    change, a 410's disabling or an automatic pause since). None if nothing matched."""
    update: dict[str, Any] = {"$set": changes, "$inc": {"version": 1}}
    if unset:
        update["$unset"] = unset
    # A subscription stored before versions has none: asked as null, it matches.
    as_read = {} if read is None else {"version": read.get("version")}
    result = await db[SUBSCRIPTIONS].update_one(
        {**scope, "_id": subscription_id, **NOT_DELETED, **as_read}, update
    )
    if result.matched_count == 0:
        return None
    return await get_subscription(db=db, scope=scope, subscription_id=subscription_id)


# Rotations of one subscription that may overtake a rotation before it gives up (409).
ROTATION_ATTEMPTS = 5
# Keyed rotations a subscription remembers (``rotate_secrets``): retries come within minutes.
KEYED_ROTATIONS_KEPT = 20
# Secrets rotated out that still sign beside the current one (each until its own expiry):
# every one adds a signature to ``webhook-signature``, and proxies refuse a header past 8 KB.
PREVIOUS_SECRETS_SIGNING = 2


@dataclass(frozen=True)
class Rotation:
    """A rotation's answer: the secret that signs now, until when the one before it signs,
    and whether this was a retry of a rotation already made (nothing new done)."""

    secret: str
    previous_expires_at: datetime
    replayed: bool = False


def rotation_key(*, subject: str, idempotency_key: str) -> str:
    """How a rotation under ``Idempotency-Key`` is remembered: the caller's key, hashed."""
    return hashlib.sha256(f"{subject}\n{idempotency_key}".encode()).hexdigest()[:32]


async def rotate_secrets(
    *,
    db: AsyncDatabase,
    scope: dict[str, Any],
    subscription_id: str,
    secret: str,
    now: datetime,
    overlap_until: datetime,
    key: str | None = None,
) -> Rotation | bool | None:
    """Make ``secret`` the one that signs: the secret that signed so far goes on signing
    until ``overlap_until``, one rotated out earlier until its own expiry (as its rotation
    answered), one past it is dropped, and so is one older than the latest
    ``PREVIOUS_SECRETS_SIGNING`` rotated out (it stops signing before its expiry). Written
    only over the secrets it was decided on (``secrets_version``): a rotation overtaken by
    another is decided again on what that one left, so neither's new secret is lost. The
    rotation once stored, None if there is no such subscription, False if other rotations
    kept overtaking it.

    Under ``key`` (``rotation_key``) the rotation is remembered in the same write, and a
    retry of it (its answer lost) answers the secret it made instead of rotating again: a
    second rotation told the client an expiry its secret did not have and signed for a day
    with a secret nobody saw. A retry after another rotation is a 409."""
    # As the database keeps it: the first answer and a retry's name the same instant.
    overlap_until = as_stored({"at": overlap_until})["at"]
    for _ in range(ROTATION_ATTEMPTS):
        current = await get_subscription(
            db=db, scope=scope, subscription_id=subscription_id, with_secrets=True
        )
        if current is None:
            return None
        if key is not None:
            earlier = next(
                (entry for entry in current.get("keyed_rotations", []) if entry["key"] == key),
                None,
            )
            if earlier is not None:
                return _rotation_again(current, earlier)
        kept = [
            {**entry, "expires_at": overlap_until} if entry.get("expires_at") is None else entry
            for entry in _signing(current, now=now)
        ][:PREVIOUS_SECRETS_SIGNING]
        result = await db[SUBSCRIPTIONS].update_one(
            {
                **scope,
                "_id": subscription_id,
                **NOT_DELETED,
                # None matches a subscription never rotated since this field exists.
                "secrets_version": current.get("secrets_version"),
            },
            {
                "$set": {
                    "signing_secrets": [
                        {"secret": secret, "created_at": now, "expires_at": None},
                        *kept,
                    ],
                    "secret_rotated_at": now,
                    "previous_secret_expires_at": overlap_until,
                    "updated_at": now,
                },
                "$inc": {"secrets_version": 1},
                # The latest keyed ones, so that the retry of one another rotation has
                # followed since (keyed or not) finds its secret no longer signing (409).
                **(
                    {
                        "$push": {
                            "keyed_rotations": {
                                "$each": [
                                    {
                                        "key": key,
                                        "secret": _fingerprint(secret),
                                        "overlap_until": overlap_until,
                                    }
                                ],
                                "$slice": -KEYED_ROTATIONS_KEPT,
                            }
                        }
                    }
                    if key is not None
                    else {}
                ),
            },
        )
        if result.matched_count == 1:
            return Rotation(secret=secret, previous_expires_at=overlap_until)
    return False


def _fingerprint(secret: str) -> str:
    """Which secret a keyed rotation made, without keeping it twice."""
    return hashlib.sha256(secret.encode()).hexdigest()[:32]


def _rotation_again(current: dict[str, Any], last: dict[str, Any]) -> Rotation:
    signing = next(
        (entry for entry in current.get("signing_secrets", []) if entry.get("expires_at") is None),
        None,
    )
    if signing is None or _fingerprint(signing["secret"]) != last["secret"]:
        raise conflict(
            f"subscription {current['_id']!r} was rotated again since the rotation under this "
            f"{HEADER}: its secret no longer signs"
        )
    return Rotation(
        secret=signing["secret"], previous_expires_at=last["overlap_until"], replayed=True
    )


async def delete_subscription(
    *,
    db: AsyncDatabase,
    scope: dict[str, Any],
    subscription_id: str,
    if_match: IfMatch | None,
    now: datetime,
    record_kept_s: float,
) -> bool:
    """Delete a subscription and its deliveries; False when ``scope`` sees no such one.

    Marked deleted first: from then on no reader sees it, no event records a delivery for
    it, and a delivery of it the dispatcher claims is dropped. Then its deliveries go, and
    the subscription last, so a failure between the writes leaves it marked: asking again
    (a subscription being deleted is found for that) or the repair pass completes it.
    The subscription's place keeps a record of the deletion for ``record_kept_s``, so the
    same DELETE repeated after a lost answer is answered as the first (whatever its
    ``If-Match``: a deletion already made writes nothing), and a creation repeated under
    its ``Idempotency-Key`` does not bring it back.
    With ``if_match``, a deletion not decided yet is made only at the version named (a 412).
    """
    as_read: dict[str, Any] = {}
    if if_match is not None:
        found = await db[SUBSCRIPTIONS].find_one({**scope, "_id": subscription_id})
        if found is None:
            return False
        if found.get(REMOVED_AT) is not None:
            return True  # deleted already: a repeat writes nothing
        if found.get("deleted_at") is None:
            preconditions.write_needed(
                if_match,
                current=found.get("version", 0),
                already_shown=False,
                what=f"subscription {subscription_id!r}",
            )
            # As checked (a deletion decided meanwhile leaves the version as it was).
            as_read = {"version": found.get("version")}
    marked = await db[SUBSCRIPTIONS].update_one(
        {**scope, "_id": subscription_id, REMOVED_AT: None, **as_read},
        {"$min": {"deleted_at": now}},
    )
    if marked.matched_count == 0:
        removed = {**scope, "_id": subscription_id, REMOVED_AT: any_date()}
        if await db[SUBSCRIPTIONS].find_one(removed, projection={"_id": 1}) is not None:
            return True
        changed = as_read and await get_subscription(
            db=db, scope=scope, subscription_id=subscription_id
        )
        if changed:
            raise preconditions.precondition_failed(
                what=f"subscription {subscription_id!r}", current=changed.get("version", 0)
            )
        return False
    await complete_deletion(
        db=db, subscription_id=subscription_id, now=now, record_kept_s=record_kept_s
    )
    return True


async def complete_deletion(
    *, db: AsyncDatabase, subscription_id: str, now: datetime, record_kept_s: float
) -> None:
    """Remove a subscription marked deleted and its deliveries, leaving the record of its
    deletion in its place (its scope, no target and no secret) for ``record_kept_s``
    (harmless to repeat: a completed one is left as it is)."""
    await db[DELIVERIES].delete_many({"subscription_id": subscription_id})
    marked = {"_id": subscription_id, "deleted_at": any_date(), REMOVED_AT: None}
    found = await db[SUBSCRIPTIONS].find_one(marked, projection={"org": 1, "branch": 1})
    if found is None:
        return
    await db[SUBSCRIPTIONS].replace_one(
        marked,
        {
            **found,
            REMOVED_AT: now,
            REMOVED_RECORD_EXPIRES: now + timedelta(seconds=record_kept_s),
        },
    )


async def deleted_subscription_ids(*, db: AsyncDatabase) -> list[str]:
    """Subscriptions marked deleted whose deletion is not complete (for the repair pass)."""
    found = db[SUBSCRIPTIONS].find({"deleted_at": any_date()}, projection={"_id": 1})
    return [document["_id"] async for document in found]


def live_secrets(subscription: dict[str, Any], *, now: datetime) -> list[str]:
    """Secrets that still sign: the current one and the latest ``PREVIOUS_SECRETS_SIGNING``
    rotated out whose overlap is not over."""
    return [entry["secret"] for entry in _signing(subscription, now=now)]


def _signing(subscription: dict[str, Any], *, now: datetime) -> list[dict[str, Any]]:
    """The entries of the secrets that sign, the current one first. Rotations store them
    newest first; a subscription rotated many times before the cap may hold more."""
    entries = subscription.get("signing_secrets", [])
    current = [entry for entry in entries if entry.get("expires_at") is None]
    previous = [
        entry
        for entry in entries
        if entry.get("expires_at") is not None and entry["expires_at"] > now
    ]
    return [*current, *previous[:PREVIOUS_SECRETS_SIGNING]]


async def subscriptions_for_event(
    *, db: AsyncDatabase, org: str, branch: str, event_type: str
) -> list[dict[str, Any]]:
    """Subscriptions that record this event: active or paused (their backlog is kept)."""
    candidates = await (
        db[SUBSCRIPTIONS]
        .find(
            {
                "org": org,
                "status": {
                    "$in": [SubscriptionStatus.ACTIVE.value, SubscriptionStatus.PAUSED.value]
                },
                **NOT_DELETED,
            },
            projection={"branch": 1, "event_types": 1},
        )
        .to_list()
    )
    return [
        candidate
        for candidate in candidates
        if candidate.get("branch") in (None, branch)
        and any(event_type_matches(pattern, event_type) for pattern in candidate["event_types"])
    ]


async def record_failure_streak(
    *, db: AsyncDatabase, subscription_id: str, now: datetime, target_url: str | None = None
) -> None:
    """Count a failed attempt; with ``target_url``, only while the subscription still sends
    there (an attempt to the target it was moved from counts against nobody)."""
    target = {} if target_url is None else {"target_url": target_url}
    await db[SUBSCRIPTIONS].update_one(
        {"_id": subscription_id, **target, **NOT_DELETED},
        {"$inc": {"failure_streak": 1}, "$min": {"failing_since": now}},
    )


async def record_success(
    *, db: AsyncDatabase, subscription_id: str, now: datetime, target_url: str
) -> None:
    """End the failure streak while the subscription still sends to ``target_url``: a 2xx
    from the target it was moved from says nothing of the new one's health."""
    await db[SUBSCRIPTIONS].update_one(
        {
            "_id": subscription_id,
            "target_url": target_url,
            "failure_streak": {"$gt": 0},
            **NOT_DELETED,
        },
        {"$set": {"failure_streak": 0, "last_success_at": now}, "$unset": {"failing_since": ""}},
    )


async def pause_if_failing(
    *,
    db: AsyncDatabase,
    subscription_id: str,
    min_failures: int,
    failing_since_before: datetime,
    reason: str,
    now: datetime,
) -> bool:
    """Pause an active subscription past the auto-pause threshold; True when this paused it."""
    result = await db[SUBSCRIPTIONS].update_one(
        {
            "_id": subscription_id,
            "status": SubscriptionStatus.ACTIVE.value,
            "failure_streak": {"$gte": min_failures},
            "failing_since": at_or_before(failing_since_before),
        },
        {
            "$set": {"status": SubscriptionStatus.PAUSED.value, "status_reason": reason},
            "$inc": {"version": 1},
        },
    )
    return result.modified_count == 1


async def disable(
    *, db: AsyncDatabase, subscription_id: str, reason: str, now: datetime, target_url: str
) -> bool:
    """Disable the subscription while it still sends to ``target_url``: a 410 from the
    target it was just moved from (an attempt in flight across the change) disables nothing."""
    result = await db[SUBSCRIPTIONS].update_one(
        {
            "_id": subscription_id,
            "target_url": target_url,
            "status": {"$ne": SubscriptionStatus.DISABLED.value},
            **NOT_DELETED,
        },
        {
            "$set": {
                "status": SubscriptionStatus.DISABLED.value,
                "status_reason": reason,
                "updated_at": now,
            },
            "$inc": {"version": 1},
        },
    )
    return result.modified_count == 1


# ------------------------------------------------------------------ deliveries --


def delivery_id(*, subscription_id: str, event_id: str) -> str:
    """Deterministic (a redelivered event records nothing twice); also the webhook-id."""
    digest = hashlib.sha256(f"{subscription_id}|{event_id}".encode()).hexdigest()
    return f"msg_{digest[:32]}"


def new_delivery(
    *,
    delivery_id: str,
    subscription: dict[str, Any],
    org: str,
    branch: str | None,
    event_id: str,
    event_type: str,
    event_time: datetime | None,
    subject: str | None,
    complaint_id: str | None,
    body: str,
    order_key: str,
    now: datetime,
) -> dict[str, Any]:
    """A pending delivery, due now; one of an event (``event_time``) waits for the watermark."""
    document: dict[str, Any] = {
        "_id": delivery_id,
        "org": org,
        "branch": branch,
        "subscription_id": subscription["_id"],
        # Deliveries of one chain (a subject: complaint or branch) go out one at a time,
        # in order_key order; a test ping is a chain of its own.
        "chain": subject or delivery_id,
        "order_key": order_key,
        "event_id": event_id,
        "event_type": event_type,
        "complaint_id": complaint_id,
        "body": body,
        "status": DeliveryStatus.PENDING.value,
        "attempts": 0,
        "retry_index": 0,
        "next_attempt_at": now,
        "wakes": 0,
        "attempt_log": [],
        "created_at": now,
    }
    if event_time is not None:
        document["event_time"] = event_time
    return document


async def insert_deliveries(*, db: AsyncDatabase, deliveries: list[dict[str, Any]]) -> int:
    """Insert what is not recorded yet; how many were new. Inserts the server did not
    acknowledge as the write concern asks raise (transient): the event is handled again."""
    writes = [InsertOne(delivery) for delivery in deliveries]
    already_recorded = await bulk_write_unless_taken(db[DELIVERIES], writes)
    return len(deliveries) - len(already_recorded)


def _claimable(
    *, subscription_id: str, now: datetime, recorded_through: datetime
) -> dict[str, Any]:
    """The subscription's deliveries a claim may take now: pending, due, under no lease, and
    of no event (test pings) or of one before ``recorded_through`` (``webhooks.watermark``),
    since an earlier event of a later one may still be on its way. Strictly before, at the
    millisecond precision dates are stored with."""
    return {
        "subscription_id": subscription_id,
        "status": DeliveryStatus.PENDING.value,
        "next_attempt_at": at_or_before(now),
        "event_time": {"$not": {"$gte": recorded_through}},
        **lease_free("lease_until", now),
    }


async def claimable_ids(
    *,
    db: AsyncDatabase,
    subscription_id: str,
    now: datetime,
    recorded_through: datetime,
    limit: int,
) -> list[str]:
    """The first ``limit`` deliveries of the subscription a claim may take now, earliest due
    first; read through the index on (subscription, status, next attempt), so no other
    subscription's deliveries. Each is then taken with ``claim``, which checks it again."""
    found = db[DELIVERIES].find(
        _claimable(subscription_id=subscription_id, now=now, recorded_through=recorded_through),
        projection={"_id": 1},
        sort=[("next_attempt_at", ASCENDING)],
        limit=limit,
    )
    return [document["_id"] async for document in found]


async def claim(
    *,
    db: AsyncDatabase,
    delivery_id: str,
    subscription_id: str,
    owner: str,
    now: datetime,
    lease_s: float,
    recorded_through: datetime,
) -> dict[str, Any] | None:
    """Take the delivery under a lease while a claim may (``claimable_ids``): of replicas
    racing for it, one does. The delivery as taken, or None."""
    claimable = _claimable(
        subscription_id=subscription_id, now=now, recorded_through=recorded_through
    )
    return await update_and_read(
        db[DELIVERIES],
        by_ids([delivery_id], claimable),
        {"$set": {"lease_owner": owner, "lease_until": now + timedelta(seconds=lease_s)}},
    )


async def pending_timers(
    *, db: AsyncDatabase, subscription_id: str, limit: int
) -> list[dict[str, Any]]:
    """The subscription's first ``limit`` pending deliveries with a timer, earliest first:
    when each is due (``next_attempt_at``), its lease and its event's time, nothing else."""
    return await (
        db[DELIVERIES]
        .find(
            {
                "subscription_id": subscription_id,
                "status": DeliveryStatus.PENDING.value,
                "next_attempt_at": any_date(),
            },
            projection={"_id": 0, "next_attempt_at": 1, "lease_until": 1, "event_time": 1},
            sort=[("next_attempt_at", ASCENDING)],
            limit=limit,
        )
        .to_list(None)
    )


async def earlier_pending(*, db: AsyncDatabase, delivery: dict[str, Any]) -> dict[str, Any] | None:
    """An earlier delivery of the same chain that is still pending (it goes first)."""
    return await db[DELIVERIES].find_one(
        {
            "subscription_id": delivery["subscription_id"],
            "chain": delivery["chain"],
            "status": DeliveryStatus.PENDING.value,
            "order_key": {"$lt": delivery["order_key"]},
        },
        projection={"next_attempt_at": 1},
        sort=[("order_key", ASCENDING)],
    )


def _leased(delivery: dict[str, Any], owner: str) -> dict[str, Any]:
    return {"_id": delivery["_id"], "lease_owner": owner, "status": DeliveryStatus.PENDING.value}


def _not_woken(delivery: dict[str, Any]) -> dict[str, Any]:
    """``wakes`` as the claim read it: nothing woke or released the delivery since."""
    return {"wakes": delivery.get("wakes", {"$exists": False})}


_RELEASE = {"lease_owner": "", "lease_until": ""}


async def hold_behind(
    *, db: AsyncDatabase, delivery: dict[str, Any], owner: str, until: datetime, now: datetime
) -> None:
    """Wait behind an earlier pending delivery of the chain until it finishes (or ``until``).

    Written only if no finisher woke the chain since the claim (``wakes`` unchanged);
    otherwise the earlier one has just finished and the delivery is due at once.
    """
    result = await db[DELIVERIES].update_one(
        {**_leased(delivery, owner), **_not_woken(delivery)},
        {"$set": {"next_attempt_at": until, "blocked": True}, "$unset": _RELEASE},
    )
    if result.matched_count == 0:
        await _due_now(db=db, delivery=delivery, owner=owner, now=now)


async def hold_while_off(
    *, db: AsyncDatabase, delivery: dict[str, Any], owner: str, now: datetime
) -> None:
    """Keep a delivery of a paused or disabled subscription for replay (no timer).

    Written only if nothing woke the delivery since the claim (``wakes`` unchanged): a
    re-activation marks the deliveries with a timer (every one under a lease) before it
    releases the held ones (``release_held``), so a hold decided on the subscription as
    read before that makes the delivery due instead of leaving it without a timer under
    an active subscription.
    """
    result = await db[DELIVERIES].update_one(
        {**_leased(delivery, owner), **_not_woken(delivery)},
        {"$unset": {**_RELEASE, "next_attempt_at": "", "blocked": ""}},
    )
    if result.matched_count == 0:
        await _due_now(db=db, delivery=delivery, owner=owner, now=now)


async def drop_orphan(*, db: AsyncDatabase, delivery: dict[str, Any], owner: str) -> bool:
    """Delete a claimed delivery nobody wants: its subscription is deleted (or being
    deleted), or no longer takes its event type.

    What a deletion leaves: a delivery an event recorded while it ran, or all of them when
    the deletion failed after marking the subscription. True when this removed it.
    """
    result = await db[DELIVERIES].delete_one(_leased(delivery, owner))
    return result.deleted_count == 1


async def _due_now(
    *, db: AsyncDatabase, delivery: dict[str, Any], owner: str, now: datetime
) -> None:
    await db[DELIVERIES].update_one(
        _leased(delivery, owner),
        {"$set": {"next_attempt_at": now}, "$unset": {**_RELEASE, "blocked": ""}},
    )


def _attempt_update(
    *, attempt: dict[str, Any], keep: int, set_fields: dict[str, Any], unset: dict[str, Any]
) -> dict[str, Any]:
    return {
        "$set": {
            "last_response_code": attempt.get("response_code"),
            "last_latency_ms": attempt.get("latency_ms"),
            "last_error": attempt.get("error"),
            "last_attempt_at": attempt["at"],
            **set_fields,
        },
        "$unset": {**_RELEASE, "blocked": "", **unset},
        "$inc": {"attempts": 1},
        "$push": {"attempt_log": {"$each": [attempt], "$slice": -keep}},
    }


async def finish_attempt(
    *,
    db: AsyncDatabase,
    delivery: dict[str, Any],
    owner: str,
    attempt: dict[str, Any],
    keep: int,
    status: DeliveryStatus,
    next_attempt_at: datetime | None,
    retry_index: int,
    now: datetime,
) -> bool:
    """Record an attempt's outcome; False when the lease was lost (another replica repeats it).

    The first attempt of a retry schedule (``retry_index`` 0 before it: new, resumed or
    sent again) is noted as ``SCHEDULE_STARTED_AT``; the attempt log may have dropped it.
    """
    set_fields: dict[str, Any] = {"status": status.value, "retry_index": retry_index}
    if delivery.get("retry_index", 0) == 0:
        set_fields[SCHEDULE_STARTED_AT] = attempt["at"]
    unset: dict[str, Any] = {}
    if status is DeliveryStatus.DELIVERED:
        set_fields["delivered_at"] = now
    if status is not DeliveryStatus.PENDING:
        set_fields[FINISHED_AT] = now
    if next_attempt_at is None:
        unset["next_attempt_at"] = ""
    else:
        set_fields["next_attempt_at"] = next_attempt_at
    result = await db[DELIVERIES].update_one(
        _leased(delivery, owner),
        _attempt_update(attempt=attempt, keep=keep, set_fields=set_fields, unset=unset),
    )
    return result.modified_count == 1


async def release_leases(*, db: AsyncDatabase, leases: list[str]) -> int:
    """Give up these leases (``lease_owner``: one claim each) of attempts cut off at
    shutdown; how many.

    Their timers were due when they were claimed and are left as they are, so any replica
    claims them again at once. Nothing is recorded of the attempts cut off.
    """
    result = await db[DELIVERIES].update_many(
        {"lease_owner": {"$in": leases}, "status": DeliveryStatus.PENDING.value},
        {"$unset": _RELEASE},
    )
    return result.modified_count


async def wake_chain(*, db: AsyncDatabase, delivery: dict[str, Any], now: datetime) -> bool:
    """After a delivery finished: the later ones of its chain may go now; whether there are.

    First mark every later pending one as woken (so one deciding to wait right
    now notices), then make the waiting ones due.
    """
    later = {
        "subscription_id": delivery["subscription_id"],
        "chain": delivery["chain"],
        "status": DeliveryStatus.PENDING.value,
        "order_key": {"$gt": delivery["order_key"]},
    }
    woken = await db[DELIVERIES].update_many(later, {"$inc": {"wakes": 1}})
    if woken.matched_count == 0:
        return False  # the chain's last one: nobody waits (the usual case)
    await db[DELIVERIES].update_many(
        {**later, "blocked": True},
        {"$set": {"next_attempt_at": now}, "$unset": {"blocked": ""}},
    )
    return True


# A resume's release still owed (``release_held``): its ``resumed_at``, written with the
# status and unset once the release ran, so the repair pass finishes a release a fault cut
# short (until 6 December it only made held deliveries due: retries waiting at the resume
# kept the attempts the outage had spent when nobody asked to resume again).
RELEASE_OWED = "release_owed_since"


async def releases_owed(*, db: AsyncDatabase) -> list[tuple[str, datetime]]:
    """Active subscriptions whose resume's release is owed: (id, ``resumed_at``)."""
    found = db[SUBSCRIPTIONS].find(
        {"status": SubscriptionStatus.ACTIVE.value, RELEASE_OWED: {"$ne": None}, **NOT_DELETED},
        projection={RELEASE_OWED: 1},
    )
    return [(document["_id"], document[RELEASE_OWED]) async for document in found]


async def release_settled(
    *, db: AsyncDatabase, subscription_id: str, resumed_at: datetime | None
) -> None:
    """The release of the resume at ``resumed_at`` ran: nothing is owed for it (a later
    resume owes its own)."""
    if resumed_at is None:
        return
    await db[SUBSCRIPTIONS].update_one(
        {"_id": subscription_id, RELEASE_OWED: resumed_at}, {"$unset": {RELEASE_OWED: ""}}
    )


async def release_held(
    *, db: AsyncDatabase, subscription_id: str, now: datetime, resumed_at: datetime | None
) -> int:
    """A re-activated subscription's held backlog becomes due (order is kept by the chains).

    Called once the status is active. First its deliveries with a timer, which include every
    one under a lease, are marked woken, so a dispatcher that read the subscription as
    paused and is about to hold one makes it due instead (``hold_while_off``); then the held
    ones get their timer. Retries waiting for their backoff keep their time; those not
    attempted since the subscription's last resume (``resumed_at``, from paused or disabled)
    start their schedule afresh, as the held ones: until 6 December one whose timer fell
    after the resume kept the attempts the outage had spent, and a single 503 of a receiver
    still warming up failed it for good. Harmless to repeat: asking again (or the repair
    pass) completes a release that a failure or a crash cut short, and restarts no schedule
    of a delivery tried since the resume.
    """
    waiting = {
        "subscription_id": subscription_id,
        "status": DeliveryStatus.PENDING.value,
        "next_attempt_at": any_date(),
    }
    await db[DELIVERIES].update_many(waiting, {"$inc": {"wakes": 1}})
    if resumed_at is not None:
        await db[DELIVERIES].update_many(
            {**waiting, "last_attempt_at": {"$not": {"$gte": resumed_at}}},
            {"$set": {"retry_index": 0}},
        )
    return await make_held_due(db=db, subscription_id=subscription_id, now=now)


async def make_held_due(*, db: AsyncDatabase, subscription_id: str, now: datetime) -> int:
    """The subscription's pending deliveries without a timer become due, each with its
    retry schedule afresh (as a redelivery): how many.

    A delivery held by an automatic pause had spent most of its attempts on the outage
    that paused it (seven of eight by default), so one 503 of a receiver still warming up
    after the resume failed it for good, and its complaint's later events went out
    without it."""
    result = await db[DELIVERIES].update_many(
        {
            "subscription_id": subscription_id,
            "status": DeliveryStatus.PENDING.value,
            "next_attempt_at": None,  # null or missing: a held delivery has it unset
        },
        {"$set": {"next_attempt_at": now, "retry_index": 0}, "$unset": {SCHEDULE_STARTED_AT: ""}},
    )
    return result.modified_count


async def existing_subscription_ids(*, db: AsyncDatabase, among: list[str]) -> set[str]:
    """Which of ``among`` are subscriptions not deleted (nor being deleted)."""
    found = db[SUBSCRIPTIONS].find({"_id": {"$in": among}, **NOT_DELETED}, projection={"_id": 1})
    return {document["_id"] async for document in found}


async def subscription_ids(*, db: AsyncDatabase) -> list[str]:
    """Every subscription stored, of every organisation and status, the record a completed
    deletion leaves included (a delivery recorded while its subscription was deleted is
    claimed to be dropped)."""
    found = db[SUBSCRIPTIONS].find({}, projection={"_id": 1})
    return [document["_id"] async for document in found]


async def active_subscription_ids(*, db: AsyncDatabase) -> list[str]:
    """Every active subscription, of every organisation (for the repair pass)."""
    found = db[SUBSCRIPTIONS].find(
        {"status": SubscriptionStatus.ACTIVE.value, **NOT_DELETED}, projection={"_id": 1}
    )
    return [document["_id"] async for document in found]


async def list_deliveries(
    *, db: AsyncDatabase, subscription_id: str, filters: DeliveryFilters
) -> Page[DeliveryRead]:
    query: dict[str, Any] = {"subscription_id": subscription_id}
    if filters.status is not None:
        query["status"] = filters.status.value
    return await aggregate.page(
        collection=db[DELIVERIES],
        query=query,
        sort_field="created_at",
        limit=filters.limit,
        cursor=filters.cursor,
        to_item=lambda document: from_stored(DeliveryRead, _with_id(document)),
        descending=True,
        projection=PUBLIC_DELIVERY,
    )


async def get_delivery(
    *, db: AsyncDatabase, subscription_id: str, delivery_id: str
) -> dict[str, Any] | None:
    return await db[DELIVERIES].find_one(
        {"_id": delivery_id, "subscription_id": subscription_id}, projection=PUBLIC_DELIVERY
    )


def _requeue(now: datetime, key: CommandKey | None) -> dict[str, Any]:
    # Dropping the lease too: an attempt in flight then records nothing (its lease is
    # gone) instead of overwriting the request to send again.
    update: dict[str, Any] = {
        "$set": {"status": DeliveryStatus.PENDING.value, "next_attempt_at": now, "retry_index": 0},
        "$unset": {"blocked": "", FINISHED_AT: "", SCHEDULE_STARTED_AT: "", **_RELEASE},
        "$inc": {"redeliveries": 1},
    }
    if key is not None:
        update["$push"] = {REDELIVERY_KEYS: _latest(key.event_id)}
    return update


def _latest(entry: Any) -> dict[str, Any]:
    return {"$each": [entry], "$slice": -REDELIVERY_KEYS_KEPT}


async def redeliver_one(
    *,
    db: AsyncDatabase,
    subscription_id: str,
    delivery_id: str,
    key: CommandKey | None,
    now: datetime,
) -> bool:
    """Queue one delivery again; False if there is no such delivery. Under ``key`` a retry
    of the same request (``key.replayed`` set) queues nothing: the attempt the first one
    queued is not cut off and sent twice; the key used for another request is a 422."""
    query: dict[str, Any] = {"_id": delivery_id, "subscription_id": subscription_id}
    if key is not None:
        found = await db[DELIVERIES].find_one(query, projection={REDELIVERY_KEYS: 1})
        if found is None:
            return False
        if key.check(found.get(REDELIVERY_KEYS, [])):
            key.replayed = True
            return True
        query[REDELIVERY_KEYS] = {"$ne": key.event_id}
    result = await db[DELIVERIES].update_one(query, _requeue(now, key))
    if result.matched_count == 0 and key is not None:
        # The same request beside this one queued it (or the delivery went meanwhile).
        key.replayed = True
        return await db[DELIVERIES].count_documents({"_id": delivery_id}, limit=1) == 1
    return result.matched_count == 1


async def redeliver_range(
    *,
    db: AsyncDatabase,
    subscription_id: str,
    created_from: datetime,
    created_to: datetime,
    statuses: list[DeliveryStatus],
    key: CommandKey | None,
    now: datetime,
) -> int:
    """Queue again the deliveries of the range in ``statuses``; how many. Under ``key`` a
    retry of the same request queues nothing again (``key.replayed`` set) and answers how
    many the request queued; one cut short is completed by its retry (the deliveries it
    queued carry the key). The key used for another range is a 422."""
    query: dict[str, Any] = {
        "subscription_id": subscription_id,
        "created_at": {**at_or_after(created_from), "$lt": created_to},
        "status": {"$in": [status.value for status in statuses]},
    }
    if key is None:
        return (await db[DELIVERIES].update_many(query, _requeue(now, None))).modified_count
    subscription = await db[SUBSCRIPTIONS].find_one(
        {"_id": subscription_id}, projection={KEYED_REDELIVERIES: 1}
    )
    if key.check((subscription or {}).get(KEYED_REDELIVERIES, [])):
        key.replayed = True
    else:
        await db[DELIVERIES].update_many(
            {**query, REDELIVERY_KEYS: {"$ne": key.event_id}}, _requeue(now, key)
        )
        await db[SUBSCRIPTIONS].update_one(
            {"_id": subscription_id, **NOT_DELETED},
            {"$push": {KEYED_REDELIVERIES: _latest(key.event_id)}},
        )
    return await db[DELIVERIES].count_documents(
        {"subscription_id": subscription_id, REDELIVERY_KEYS: key.event_id}
    )


async def backlog_by_subscription(*, db: AsyncDatabase) -> dict[str, int]:
    """Pending deliveries per subscription (for the backlog gauge)."""
    rows = await (
        await db[DELIVERIES].aggregate(
            [
                {"$match": {"status": DeliveryStatus.PENDING.value}},
                {"$group": {"_id": "$subscription_id", "count": {"$sum": 1}}},
            ]
        )
    ).to_list()
    return {row["_id"]: row["count"] for row in rows}


def _with_id(document: dict[str, Any]) -> dict[str, Any]:
    return {**document, "id": document["_id"]}


def public(document: dict[str, Any]) -> dict[str, Any]:
    """A stored document with ``id`` for the API models."""
    return _with_id(document)
