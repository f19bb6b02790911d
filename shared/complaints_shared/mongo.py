"""MongoDB client factory (PyMongo's AsyncMongoClient) and small helpers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import bson
from bson.codec_options import CodecOptions
from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import (
    AutoReconnect,
    DuplicateKeyError,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
)

from complaints_shared.logs import get_logger
from complaints_shared.metrics import MONGO_RETRIES
from complaints_shared.settings import ServiceSettings

T = TypeVar("T")
log = get_logger(__name__)

# Tries of an idempotent operation whose connection dropped; the driver has replaced
# the pool's connections by the second.
RETRY_ATTEMPTS = 3
RETRY_DELAY_S = 0.05


def create_mongo_client(*, settings: ServiceSettings) -> AsyncMongoClient:
    """A client that returns timezone-aware UTC datetimes, fails fast when Mongo is away
    and never reuses a connection a peer may have dropped for idleness.

    The driver retries a read once on a network error (``retryReads``) and, where the
    connection string allows it, a write once (``retryWrites``, de-duplicated by the
    server); :func:`retrying` covers the rest of what is idempotent.
    """
    return AsyncMongoClient(
        settings.mongodb_uri,
        tz_aware=True,
        tzinfo=UTC,
        appname=settings.service_name,
        maxIdleTimeMS=settings.mongodb_max_idle_time_ms,
        heartbeatFrequencyMS=settings.mongodb_heartbeat_frequency_ms,
        serverSelectionTimeoutMS=settings.mongodb_server_selection_timeout_ms,
        connectTimeoutMS=settings.mongodb_connect_timeout_ms,
        retryReads=True,
    )


STORED_CODEC = CodecOptions(tz_aware=True, tzinfo=UTC)


# createIndex refusing a name that exists with other keys or options.
_INDEX_CONFLICTS = {85, 86}  # IndexOptionsConflict, IndexKeySpecsConflict


async def ensure_index(
    collection: AsyncCollection, keys: Any, *, name: str, **options: Any
) -> None:
    """Create the index ``name``, replacing one of that name defined differently before.

    Redefining an index (a tie-break added, sparse made partial) keeps its name, which
    ``create_index`` refuses on a database that has the old definition.
    """
    try:
        await collection.create_index(keys, name=name, **options)
    except OperationFailure as exc:
        if exc.code not in _INDEX_CONFLICTS:
            raise
        log.info("index_redefined", collection=collection.name, index=name)
        await collection.drop_index(name)
        await collection.create_index(keys, name=name, **options)


def as_stored(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` exactly as the database will return it (BSON dates keep milliseconds).

    A response built from a document just written must equal a later read of it,
    field for field, so the writer answers from this round trip, not its own copy.
    """
    return bson.decode(bson.encode(document), codec_options=STORED_CODEC)


async def retrying(operation: Callable[..., Awaitable[T]], /, *args: Any, **kwargs: Any) -> T:
    """``await operation(*args, **kwargs)`` (idempotent by construction), again if its
    connection dropped.

    For reads and for writes that have the same effect when repeated: an insert with a
    deterministic ``_id`` (the repeat is a duplicate key the caller recognises), an
    update conditional on a version, holder or state it sets itself, a ``$set`` of the
    same values. A connection that a server, balancer or failover closed fails the
    operation before or after the server applied it; repeating it is right either way.
    A server selection timeout has already waited and is not repeated; what still
    fails propagates and the request answers 503 with ``Retry-After``. Anything not
    idempotent must not go through here (it becomes that 503 at once).
    """
    attempt = 1
    while True:
        try:
            return await operation(*args, **kwargs)
        except AutoReconnect as exc:
            if attempt == RETRY_ATTEMPTS or isinstance(exc, ServerSelectionTimeoutError):
                raise
            MONGO_RETRIES.inc()
            log.info("mongo_retry", attempt=attempt, error=type(exc).__name__)
        await asyncio.sleep(RETRY_DELAY_S * attempt)
        attempt += 1


def service_database(*, client: AsyncMongoClient, settings: ServiceSettings) -> AsyncDatabase:
    return client.get_database(settings.database_name(), codec_options=STORED_CODEC)


async def ping(*, client: AsyncMongoClient) -> bool:
    await client.admin.command("ping")
    return True


def merge_updates(*updates: dict[str, Any]) -> dict[str, Any]:
    """Combine update documents operator by operator into one atomic update.

    Two updates may not touch the same field under the same operator.
    """
    merged: dict[str, dict[str, Any]] = {}
    for update in updates:
        for operator, fields in update.items():
            target = merged.setdefault(operator, {})
            clash = target.keys() & fields.keys()
            if clash:
                raise ValueError(f"update operator {operator} sets {sorted(clash)} twice")
            target.update(fields)
    return merged


# BSON dates have millisecond precision, so ">= t" is exactly "> t - 1 ms". We write
# inclusive date bounds as strict ones: SecantusDB (the local MongoDB) drops documents
# equal to an inclusive bound when a compound index has another field after the date.
_ONE_MS = timedelta(milliseconds=1)


def at_or_after(moment: datetime) -> dict[str, datetime]:
    return {"$gt": moment - _ONE_MS}


def at_or_before(moment: datetime) -> dict[str, datetime]:
    return {"$lt": moment + _ONE_MS}


def lease_free(field: str, now: datetime) -> dict[str, Any]:
    """Matches a lease that is missing, null or expired: ``field`` is not at or after ``now``.

    The same documents as ``$or: [missing, null, < now]``, without an ``$or``:
    SecantusDB (the local MongoDB) answers any top-level ``$or`` with a full
    collection scan, whatever the other, indexed, conditions.
    """
    return {field: {"$not": {"$gte": now}}}


async def update_and_read(
    collection: AsyncCollection,
    query: dict[str, Any],
    update: dict[str, Any],
    *,
    projection: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Apply ``update`` to the document ``query`` pins by ``_id``, then read it back.

    Used instead of ``find_one_and_update(..., AFTER)``: SecantusDB runs
    findAndModify in time proportional to the collection while ``update_one``
    by ``_id`` is constant. The conditions in ``query`` (a version, a lease)
    are checked atomically by the update; the document read back is the one
    written or, if another writer came in between, a later version of it.
    None when nothing matched.
    """
    result = await collection.update_one(query, update)
    if result.matched_count == 0:
        return None
    return await collection.find_one({"_id": query["_id"]}, projection=projection)


# Lost races in a row before a claimer gives up for this pass (it polls again anyway).
CLAIM_ATTEMPTS = 5


async def claim_first(
    collection: AsyncCollection,
    query: dict[str, Any],
    update: dict[str, Any],
    *,
    sort: list[tuple[str, int]],
    projection: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Take the first document matching ``query`` (in ``sort`` order) with ``update``.

    Read the candidate, then update it only if it still matches, so of two
    replicas racing for the same document exactly one wins; the loser tries
    the next candidate. The same result as a sorted ``find_one_and_update``
    without findAndModify (see :func:`update_and_read`).
    """
    for _ in range(CLAIM_ATTEMPTS):
        candidate = await collection.find_one(query, projection={"_id": 1}, sort=sort)
        if candidate is None:
            return None
        claimed = await update_and_read(
            collection, {**query, "_id": candidate["_id"]}, update, projection=projection
        )
        if claimed is not None:
            return claimed
    return None


def is_id_clash(exc: DuplicateKeyError) -> bool:
    """The duplicate is the document's ``_id`` (not another unique index)."""
    return "_id" in ((exc.details or {}).get("keyPattern") or {})


@asynccontextmanager
async def lease_kept(
    collection: AsyncCollection, query: dict[str, Any], *, field: str, lease_s: float
) -> AsyncIterator[None]:
    """Renew the lease ``field`` of the document ``query`` matches while the body runs.

    A slow holder keeps its claim instead of having a retry take it over; a holder
    that died stops renewing, and its lease runs out after at most ``lease_s``.
    ``query`` should name the holder, so a lease taken over is never renewed.
    """

    async def renew() -> None:
        while True:
            await asyncio.sleep(lease_s / 3)
            # A missed renewal is made up by the next; the lease covers two of them.
            with suppress(PyMongoError):
                until = datetime.now(UTC) + timedelta(seconds=lease_s)
                await collection.update_one(query, {"$set": {field: until}})

    renewal = asyncio.create_task(renew())
    try:
        yield
    finally:
        renewal.cancel()
        with suppress(asyncio.CancelledError):
            await renewal
