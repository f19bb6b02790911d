"""MongoDB client factory (PyMongo's AsyncMongoClient) and small helpers."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlsplit

import bson
from bson.codec_options import CodecOptions
from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import (
    AutoReconnect,
    BulkWriteError,
    DuplicateKeyError,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
    WriteConcernError,
    WriteError,
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
# How long the read after a committed change keeps trying (a primary's election takes about
# ten seconds), and the pause between its tries.
COMMITTED_READ_WAIT_S = 30.0
COMMITTED_READ_PAUSE_S = 0.5


def create_mongo_client(*, settings: ServiceSettings) -> AsyncMongoClient:
    """A client that returns timezone-aware UTC datetimes, fails fast when Mongo is away
    and never reuses a connection a peer may have dropped for idleness.

    The driver retries a read once on a network error (``retryReads``) and, where the
    connection string allows it, a write once (``retryWrites``, de-duplicated by the
    server); :func:`retrying` covers the rest of what is idempotent.

    Writes are acknowledged once journaled (``j: true``) unless the connection string says
    otherwise (``journal`` or ``w``): a single server's default acknowledges a write before
    it is on disk, and a crash of that server then lost complaints already answered 201
    (the local address had no ``journal=true`` until 6 December). A replica set's default
    ``w: "majority"`` is journaled already.
    """
    return AsyncMongoClient(
        settings.mongodb_uri,
        **_journaled_unless_configured(settings.mongodb_uri),
        tz_aware=True,
        tzinfo=UTC,
        appname=settings.service_name,
        maxIdleTimeMS=settings.mongodb_max_idle_time_ms,
        heartbeatFrequencyMS=settings.mongodb_heartbeat_frequency_ms,
        serverSelectionTimeoutMS=settings.mongodb_server_selection_timeout_ms,
        connectTimeoutMS=settings.mongodb_connect_timeout_ms,
        retryReads=True,
    )


def _journaled_unless_configured(uri: str) -> dict[str, Any]:
    """``journal=True`` for a connection string that sets no write concern of its own."""
    # Read from the query string (``parse_uri`` would look a ``mongodb+srv`` host up in DNS).
    options = {name.lower() for name, _ in parse_qsl(urlsplit(uri).query)}
    return {} if {"journal", "w"} & options else {"journal": True}


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


# Before any date the services store.
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def any_date() -> dict[str, datetime]:
    """A date field that is set: ``{"$gt": 1970-01-01}``, the same documents as
    ``{"$type": "date"}`` here (no stored date is older).

    ``$exists``, ``$ne: null`` and ``$type`` make SecantusDB (the local MongoDB) scan the
    collection even on the last field of an index whose other fields the query gives as
    equalities; a range is read from the index, there as on MongoDB.
    """
    return {"$gt": _EPOCH}


def more_than_none() -> dict[str, int]:
    """A count above zero. ``{"$gt": 0}`` on a compound index's field followed by other keys
    makes SecantusDB read every entry *equal* to the bound too (all the zeros); for whole
    counts ``$gte: 1`` is the same set of documents."""
    return {"$gte": 1}


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
    # Committed: a dropped connection now must not fail the change, which its caller would
    # then repeat (an HTTP client told 503 sends the command again: a second remedy). The
    # read waits out a failover too (no server to select for a while), for up to
    # ``COMMITTED_READ_WAIT_S``: it gave up at the first server selection timeout.
    waited_until = time.monotonic() + COMMITTED_READ_WAIT_S
    while True:
        try:
            return await retrying(collection.find_one, {"_id": query["_id"]}, projection=projection)
        except AutoReconnect:
            if time.monotonic() >= waited_until:
                raise
            MONGO_RETRIES.inc()
            log.info("mongo_committed_read_retry", collection=collection.name)
            await asyncio.sleep(COMMITTED_READ_PAUSE_S)


async def upsert_and_read(
    collection: AsyncCollection,
    key: Any,
    update: dict[str, Any],
    *,
    only_if: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Apply ``update`` to the document ``_id`` = ``key``, creating it if missing; the
    document as stored after it.

    With ``only_if``, a document that exists but does not match it is left alone (None):
    such as one marked for deletion, which a save must not bring back to life unseen.

    Not ``find_one_and_update(..., upsert=True, AFTER)``: on the local server the loser of
    two such upserts racing to create one document gets None back although its update was
    applied (docs/mongodb-compatibility.md). A racing creation that makes this upsert's
    insert a duplicate is the document now existing: the update is applied to it. None
    also if the document was deleted between the write and the read.
    """
    query = {"_id": key, **(only_if or {})}
    try:
        await collection.update_one(query, update, upsert=True)
    except DuplicateKeyError:
        if not (await collection.update_one(query, update)).matched_count:
            return None
    return await collection.find_one(query)


# Lost races in a row before a claimer gives up for this pass (it polls again anyway).
CLAIM_ATTEMPTS = 5


# Candidates a claim reads at once where it checks the lease in the service (local server).
CLAIM_CANDIDATES = 20


async def claim_first(
    collection: AsyncCollection,
    query: dict[str, Any],
    update: dict[str, Any],
    *,
    sort: list[tuple[str, int]],
    projection: dict[str, Any] | None = None,
    lease: tuple[str, datetime] | None = None,
) -> dict[str, Any] | None:
    """Take the first document matching ``query`` (in ``sort`` order) with ``update``.

    Read the candidate, then update it only if it still matches, so of two
    replicas racing for the same document exactly one wins; the loser tries
    the next candidate. The same result as a sorted ``find_one_and_update``
    without findAndModify (see :func:`update_and_read`).

    ``lease`` = (field, now) also requires that lease to be free (``lease_free``). The
    update checks it atomically. On MongoDB the read asks for it too; SecantusDB scans
    the whole collection for a condition on a field outside the index the rest of the
    query runs on (the follow-up timers: 77 ms at 6,000 checks, 0.7 ms without it), so
    there the read leaves it out and the candidates are checked here
    (``_candidates_with_free_lease``).
    """
    free = lease_free(*lease) if lease else {}
    local = lease is not None and await reads_shaped_for_local_server(collection.database.client)
    for _ in range(CLAIM_ATTEMPTS):
        if local:
            assert lease is not None
            candidates = await _candidates_with_free_lease(collection, query, sort, lease)
        else:
            first = await collection.find_one({**query, **free}, projection={"_id": 1}, sort=sort)
            candidates = [first["_id"]] if first else []
        if not candidates:
            return None
        for candidate in candidates:
            claimed = await update_and_read(
                collection, {**query, **free, "_id": candidate}, update, projection=projection
            )
            if claimed is not None:
                return claimed
    return None


async def _candidates_with_free_lease(
    collection: AsyncCollection,
    query: dict[str, Any],
    sort: list[tuple[str, int]],
    lease: tuple[str, datetime],
) -> list[Any]:
    """The first documents ``query`` selects whose lease is free, read
    ``CLAIM_CANDIDATES`` at a time until some are or the documents run out.

    Stopping at the first read instead made every claim come back empty while that many
    documents due first were held: a timer that keeps failing is held until its retry
    (``complaints_shared.timers``), so twenty of them kept every document due after
    them from firing, whatever its organisation.
    """
    field, now = lease
    skipped = 0
    while True:
        found = await collection.find(
            query, projection={"_id": 1, field: 1}, sort=sort, skip=skipped, limit=CLAIM_CANDIDATES
        ).to_list(None)
        free = [c["_id"] for c in found if not _lease_held(c.get(field), now)]
        if free or len(found) < CLAIM_CANDIDATES:
            return free
        skipped += len(found)


def as_utc(moment: datetime) -> datetime:
    """A date as read from MongoDB, in UTC (a client without ``tz_aware`` reads it naive)."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _lease_held(until: Any, now: datetime) -> bool:
    """What ``lease_free`` refuses: a lease until ``now`` or later."""
    return isinstance(until, datetime) and as_utc(until) >= now


def by_ids(ids: list[Any], query: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The documents ``ids`` among those ``query`` selects: the ``_id`` condition first.

    On MongoDB the order of a filter's fields means nothing. SecantusDB answers a filter
    that no compound index serves (``_id: {$in}`` beside equalities or another ``$in``)
    through the first of its fields with an index of its own: ``_id`` first is a point
    lookup per id, ``org`` first reads every document of the organisation (measured, 51
    ids among 4,000 documents: 5 ms against 355 ms).
    """
    rest = {field: condition for field, condition in (query or {}).items() if field != "_id"}
    return {"_id": {"$in": list(ids)}, **rest}


async def count_each(
    collection: AsyncCollection, *, field: str, values: list[Any], query: Mapping[str, Any]
) -> dict[Any, int]:
    """How many documents ``query`` selects for each of ``values`` of ``field`` (0 for none).

    On MongoDB one ``$in`` of the values and a ``$group``. SecantusDB answers an ``$in``
    with an equality after it on the same compound index (``{org, owner_id: {$in}, status}``
    on ``(org, owner_id, status)``) by reading every document of the organisation: 446 ms
    against 36 ms for the equality, one owner's 1,000 documents among 13,000
    (docs/mongodb-compatibility.md). There it is one count per value, each an equality.
    """
    wanted = list(dict.fromkeys(values))
    counts = dict.fromkeys(wanted, 0)
    if await reads_shaped_for_local_server(collection.database.client):
        for value in wanted:
            counts[value] = await collection.count_documents({**query, field: value})
        return counts
    pipeline = [
        {"$match": {**query, field: {"$in": wanted}}},
        {"$group": {"_id": f"${field}", "count": {"$sum": 1}}},
    ]
    async for row in await collection.aggregate(pipeline):
        counts[row["_id"]] = row["count"]
    return counts


# Documents one ``insert_many`` of ``insert_batched`` takes at most.
INSERT_BATCH_MAX = 100
# Duplicate key codes a write error may carry (as PyMongo's own insert_one reads them).
_DUPLICATE_KEY_CODES = {11000, 11001, 12582}


@dataclasses.dataclass
class _WaitingInserts:
    """A collection's inserts waiting for the one ``insert_many`` in flight."""

    collection: AsyncCollection
    waiting: list[tuple[dict[str, Any], asyncio.Future[None]]] = dataclasses.field(
        default_factory=list
    )
    sender: asyncio.Task[None] | None = None


# Per event loop, client, collection and the options its documents are sent with; an entry
# lives while its inserts are in flight.
_waiting_inserts: dict[tuple[Any, ...], _WaitingInserts] = {}


async def insert_batched(collection: AsyncCollection, document: dict[str, Any]) -> None:
    """``collection.insert_one(document)``, sent in one ``insert_many`` with the inserts of
    the same collection that arrive while one is in flight (a group commit).

    Each caller gets what its own insert would have given: None, or the
    ``DuplicateKeyError`` / ``WriteError`` of its document alone (the batch is unordered,
    so one document's clash stops no other), or the error of the whole batch (a dropped
    connection: the caller's ``retrying`` repeats its own insert, as with insert_one).
    Nothing waits for company: an insert arriving with none in flight is sent at once, so
    batches only form while the server is busy, and then each document costs it less
    (SecantusDB: 1.2 ms instead of 1.9–2.2 per complaint in batches of 10, since its
    per-statement work on every index is paid once; docs/mongodb-compatibility.md).
    """
    loop = asyncio.get_running_loop()
    key = (
        id(loop),
        id(collection.database.client),
        collection.full_name,
        repr(collection.codec_options),
        repr(collection.write_concern.document),
    )
    inserts = _waiting_inserts.get(key)
    if inserts is None or inserts.sender is None or inserts.sender.done():
        inserts = _waiting_inserts[key] = _WaitingInserts(collection)
        inserts.sender = loop.create_task(_send_inserts(key, inserts))
    done: asyncio.Future[None] = loop.create_future()
    inserts.waiting.append((document, done))
    await done


async def _send_inserts(key: tuple[Any, ...], inserts: _WaitingInserts) -> None:
    """Send what waits, one ``insert_many`` at a time, until nothing does."""
    batch: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
    try:
        while inserts.waiting:
            batch = inserts.waiting[:INSERT_BATCH_MAX]
            del inserts.waiting[: len(batch)]
            await _insert_batch(inserts.collection, batch)
    finally:
        if _waiting_inserts.get(key) is inserts:
            del _waiting_inserts[key]
        # Only when cancelled (the loop is closing): the batch in flight and what waits.
        for _, done in [*batch, *inserts.waiting]:
            if not done.done():
                done.cancel()


async def _insert_batch(
    collection: AsyncCollection, batch: list[tuple[dict[str, Any], asyncio.Future[None]]]
) -> None:
    errors: dict[int, BaseException] = {}
    try:
        await collection.insert_many([document for document, _ in batch], ordered=False)
    except BulkWriteError as exc:
        for error in exc.details.get("writeErrors", []):
            kind = DuplicateKeyError if error.get("code") in _DUPLICATE_KEY_CODES else WriteError
            errors[error["index"]] = kind(error.get("errmsg"), error.get("code"), error)
        if unconcerned := _write_concern_error(exc):
            # Written maybe, unacknowledged as asked (a failover): transient for each caller,
            # also beside duplicates, which would make the whole bulk's error look permanent.
            errors = {index: errors.get(index, unconcerned) for index in range(len(batch))}
    except AutoReconnect as exc:  # the connection or the server went: each caller retries
        errors = dict.fromkeys(range(len(batch)), exc)
    except Exception as exc:
        if len(batch) == 1:
            errors = {0: exc}
        else:  # refused whole (a document that cannot be encoded): each on its own
            await asyncio.gather(*(_insert_one(collection, *waiting) for waiting in batch))
            return
    for index, (_, done) in enumerate(batch):
        _settle(done, errors.get(index))


async def _insert_one(
    collection: AsyncCollection, document: dict[str, Any], done: asyncio.Future[None]
) -> None:
    try:
        await collection.insert_one(document)
    except Exception as exc:
        _settle(done, exc)
    else:
        _settle(done, None)


def _settle(done: asyncio.Future[None], error: BaseException | None) -> None:
    """Give a waiting caller its insert's outcome (unless it was cancelled meanwhile)."""
    if done.done():
        return
    if error is None:
        done.set_result(None)
    else:
        done.set_exception(error)


async def bulk_write_unless_taken(collection: AsyncCollection, writes: list[Any]) -> list[int]:
    """``writes`` unordered, where a write refused for a duplicate key found its place
    taken (by a conditional upsert's filter, say) and is dropped; any other error raises.
    Answers the positions in ``writes`` of those dropped.

    Writes not acknowledged as the write concern asks (a replica set failing over, say) may
    yet be rolled back: that raises too, as the first such error alone (``WriteConcernError``,
    what a single write raises), so that a step-down or a timeout counts as transient even
    beside duplicates, which would make the whole bulk's error look permanent.
    """
    if not writes:
        return []
    try:
        await collection.bulk_write(writes, ordered=False)
    except BulkWriteError as exc:
        refused = exc.details.get("writeErrors", [])
        if any(error.get("code") not in _DUPLICATE_KEY_CODES for error in refused):
            raise
        if unconcerned := _write_concern_error(exc):
            raise unconcerned from exc
        return sorted(error["index"] for error in refused)
    return []


def _write_concern_error(exc: BulkWriteError) -> WriteConcernError | None:
    """A bulk's first write-concern error alone, as a single write raises it (``failures``
    judges it by its code: a step-down or a timeout is transient); None if it has none."""
    unconcerned = exc.details.get("writeConcernErrors") or []
    if not unconcerned:
        return None
    first = unconcerned[0]
    return WriteConcernError(first.get("errmsg"), first.get("code"), first)


def is_id_clash(exc: DuplicateKeyError) -> bool:
    """The duplicate is the document's ``_id`` (not another unique index)."""
    return clashes_on(exc, "_id")


def clashes_on(exc: DuplicateKeyError, field: str) -> bool:
    """The unique index that refused the write holds ``field``."""
    return field in ((exc.details or {}).get("keyPattern") or {})


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


# ------------------------------------------------------------ sorted reads --
#
# A page is the first N documents of a filter in (date field, _id) order. MongoDB walks an
# index in that order and stops after N. SecantusDB (the local MongoDB) serves a find from
# an index only when the filter is equalities on an index's leading fields plus at most one
# operator field (a range or ``$in``) on the next key, with no top-level ``$and``/``$or``,
# and otherwise falls back to the first field with an index of its own (the organisation:
# every complaint); either way it reads every document the index selects, sorts them and
# only then applies the limit. So on it a page costs what its filter selects, not N.
# ``sorted_batches`` is the one place that shapes reads for it (docs/mongodb-compatibility.md):
# the filter's equalities that lead an index (``$in`` split into one equality read per
# value), the sort key bounded to a window that widens until the page is full, the other
# equalities checked on what was read. On MongoDB it sends the filter whole.

# Beyond this many equality reads per window (the product of the split ``$in`` lists) the
# ``$in`` values are checked on what was read instead.
MAX_SPLIT_READS = 12
# How much a window may widen from one read to the next.
WINDOW_GROWTH = (2.0, 16.0)
# Descending windows stop at this date and read what remains unbounded; ascending ones at
# this far past the present.
WINDOWS_FROM = datetime(1970, 1, 1, tzinfo=UTC)
WINDOWS_AHEAD = timedelta(days=3660)
# A windowed read returns up to this many times the batch (see ``span``).
WINDOW_READ_FACTOR = 8
# Per read shape (collection, sort key and equality reads): the most documents a millisecond
# of the sort key held in a window of the shape's last page. The next page's first window
# is sized to hold about a page at that density (never below ``MIN_FIRST_WINDOW``, never
# above the caller's ``window``): a fixed first window read everything written within it,
# whatever the rate (two hours of complaints at 20/s is 144,000; docs/performance.md).
# Denser than it was, a first window reads more than a page; sparser, it is widened.
DENSITIES_KEPT = 1000
MIN_FIRST_WINDOW = timedelta(seconds=1)
_densities: OrderedDict[str, float] = OrderedDict()
_RANGE_OPERATORS = {"$gt", "$gte", "$lt", "$lte"}
_local_planner: dict[int, bool] = {}


async def reads_shaped_for_local_server(client: AsyncMongoClient) -> bool:
    """Whether ``client`` talks to SecantusDB (``buildInfo`` names its version)."""
    known = _local_planner.get(id(client))
    if known is None:
        info = await client.admin.command("buildInfo")
        known = _local_planner[id(client)] = "secantusVersion" in info
    return known


def bson_time(moment: datetime) -> datetime:
    """``moment`` as BSON stores it: UTC, to the millisecond."""
    moment = as_utc(moment)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


class _Reversed:
    """A sort key in reverse order."""

    __slots__ = ("key",)

    def __init__(self, key: Any) -> None:
        self.key = key

    def __lt__(self, other: _Reversed) -> bool:
        return other.key < self.key

    def __le__(self, other: _Reversed) -> bool:
        return other.key <= self.key

    def __gt__(self, other: _Reversed) -> bool:
        return other.key > self.key


class Batch(list[dict[str, Any]]):
    """The documents one read of ``sorted_batches`` kept, and ``reached``: the (sort value,
    ``_id``) of the last document it read, kept or not (the checked equalities may have
    refused every one): a caller that stops there goes on from it."""

    reached: tuple[datetime, Any]

    def __init__(self, documents: list[dict[str, Any]], *, reached: tuple[datetime, Any]):
        super().__init__(documents)
        self.reached = reached


def _order_key(document: dict[str, Any], field: str) -> tuple[datetime, Any]:
    return bson_time(document[field]), document["_id"]


def _path(document: Any, path: str) -> list[Any]:
    """The values at a dotted ``path``, through arrays as MongoDB reads them."""
    values = [document]
    for part in path.split("."):
        found = []
        for value in values:
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, dict):
                    found.append(item.get(part))
        values = found
    flat = []
    for value in values:
        flat += [value, *value] if isinstance(value, list) else [value]
    return flat or [None]


def _same(left: Any, right: Any) -> bool:
    # MongoDB tells a boolean from a number; Python's ``False == 0`` does not.
    if isinstance(left, bool) or isinstance(right, bool):
        return type(left) is type(right) and left == right
    return left == right


def _holds(document: dict[str, Any], residual: dict[str, list[Any]]) -> bool:
    return all(
        any(_same(value, wanted) for value in _path(document, path) for wanted in allowed)
        for path, allowed in residual.items()
    )


def equality_values(condition: Any) -> list[Any] | None:
    """The values an equality-like condition accepts (``x``, ``$eq``, ``$in``, a one-value
    ``$all``), or None for anything else."""
    scalar = (str, int, float, bool, type(None))
    if isinstance(condition, scalar):
        return [condition]
    if not isinstance(condition, dict) or len(condition) != 1:
        return None
    ((operator, operand),) = condition.items()
    if operator == "$eq" and isinstance(operand, scalar):
        return [operand]
    if operator == "$in" and isinstance(operand, list):
        return operand if all(isinstance(v, scalar) for v in operand) else None
    if operator == "$all" and isinstance(operand, list) and len(operand) == 1:
        return operand if isinstance(operand[0], scalar) else None
    return None


def _bounds(condition: Any) -> tuple[datetime | None, datetime | None, dict[str, Any]] | None:
    """(strictly after, strictly before, the rest) of a condition on the date sort key;
    None if it is not ranges over dates."""
    if condition is None:
        return None, None, {}
    if not isinstance(condition, dict):
        return None
    after = before = None
    rest = {}
    for operator, operand in condition.items():
        if operator not in _RANGE_OPERATORS:
            rest[operator] = operand
            continue
        if not isinstance(operand, datetime):
            return None
        moment = bson_time(operand)
        if operator in ("$gt", "$gte"):
            moment = moment - _ONE_MS if operator == "$gte" else moment
            after = moment if after is None else max(after, moment)
        else:
            moment = moment + _ONE_MS if operator == "$lte" else moment
            before = moment if before is None else min(before, moment)
    return after, before, rest


def _best_index(
    equalities: dict[str, list[Any]], field: str, indexes: list[list[str]]
) -> list[str]:
    """The most equality fields some index has before ``field`` whose values make at most
    ``MAX_SPLIT_READS`` equality reads (none: empty)."""
    best: list[str] = []
    for keys in indexes:
        if field not in keys:
            continue
        leading = keys[: keys.index(field)]
        if not leading or not all(key in equalities for key in leading):
            continue
        reads = math.prod(len(equalities[key]) for key in leading)
        if len(leading) > len(best) and reads <= MAX_SPLIT_READS:
            best = leading
    return best


async def sorted_batches(
    collection: AsyncCollection,
    query: dict[str, Any],
    *,
    field: str,
    descending: bool,
    after: tuple[datetime, Any] | None,
    batch: int,
    window: timedelta | None = None,
    indexes: list[list[str]] | None = None,
    projection: dict[str, Any] | None = None,
    max_time_ms: int | None = None,
    floor: Callable[[], Awaitable[datetime | None]] | None = None,
    wanted: Callable[[dict[str, Any]], bool] | None = None,
) -> AsyncIterator[Batch]:
    """The documents of ``query`` in (``field``, ``_id``) order strictly after ``after``,
    batch by batch (each in order, about ``batch`` long, one per read that returned
    anything, empty when the checked equalities refused all it returned: ``Batch``); the
    caller stops reading when it has enough. ``field`` holds dates.

    The position is a range on ``field`` (ties at the cursor's millisecond are dropped
    here), never an ``$or`` on the tie-break. On the local server (see above) a query
    whose equalities lead one of ``indexes`` (key field lists) is read in windows of
    ``field`` starting ``window`` wide from the position or the present; an ascending read
    from the start needs ``floor``, which gives a date no document's ``field`` is below
    (None: unknown, and the read is one read of everything the filter selects). ``wanted``
    says which documents the caller kept of those yielded (asked once it has had them):
    windows widen by how many of those each found.
    """
    conditions = dict(query)
    bounds = _bounds(conditions.pop(field, None))
    if bounds is None:
        raise ValueError(f"the sort key {field} may only be bounded by dates")
    lower, upper, rest = bounds
    if after is not None:
        at = bson_time(after[0])
        if descending:
            upper = at + _ONE_MS if upper is None else min(upper, at + _ONE_MS)
        else:
            lower = at - _ONE_MS if lower is None else max(lower, at - _ONE_MS)
    position = (bson_time(after[0]), after[1]) if after is not None else None
    reads: list[dict[str, Any]] = [{**conditions, **({field: rest} if rest else {})}]
    residual: dict[str, list[Any]] = {}
    spans = [(lower, upper, True)]
    database = collection.database
    if window is not None and await reads_shaped_for_local_server(database.client):
        planned = _plan(conditions, rest, field=field, indexes=indexes or [])
        if planned is not None:
            reads, residual = planned
            spans = None
    # The residual equalities are checked on the documents, so their fields are read (and
    # hidden again after the check when the projection hides them).
    hidden_again = set()
    if projection and any(projection.values()):
        projection = {**projection, field: 1, **{path: 1 for path in residual}}
    elif projection:
        hidden_again = {path for path in residual if path in projection}
        projection = {path: 0 for path in projection if path not in hidden_again} or None
    if not reads:
        return  # an empty ``$in``
    order = -1 if descending else 1
    seen: set[Any] = set()

    def rank(key: tuple[datetime, Any]) -> Any:
        """Sorts in the read's order."""
        return _Reversed(key) if descending else key

    async def span(low: datetime | None, high: datetime | None) -> AsyncIterator[Batch]:
        """Everything in (low, high) after ``position``, in order."""
        nonlocal position
        # The local server reads the whole window whatever the limit, so a window is taken
        # in one read; the limit only bounds what comes back.
        limit = batch if spans is not None else WINDOW_READ_FACTOR * batch
        while True:
            window_range = {
                **({"$gt": low} if low is not None else {}),
                **({"$lt": high} if high is not None else {}),
            }
            results = []
            for read in reads:
                # A planned read holds equalities only: the sort key's own condition (a
                # ``$ne: null``) is added here, where no range implies it.
                own = {**(rest or {}), **read.get(field, {}), **window_range}
                if window_range and own.get("$ne", False) is None:
                    del own["$ne"]  # a range over dates excludes null already
                found = collection.find(
                    {**read, **({field: own} if own else {})},
                    projection=projection,
                    sort=[(field, order), ("_id", order)],
                    limit=limit,
                )
                if max_time_ms is not None:
                    found = found.max_time_ms(max_time_ms)
                results.append(await found.to_list(None))
            merged = {doc["_id"]: doc for documents in results for doc in documents}
            ordered = sorted(
                merged.values(), key=lambda d: _order_key(d, field), reverse=descending
            )
            # A read that hit its limit has more beyond its last document: what the
            # other reads returned past that point waits for the next read.
            full = [documents[-1] for documents in results if len(documents) == limit]
            if full:
                stop = min((_order_key(doc, field) for doc in full), key=rank)
                ordered = [d for d in ordered if rank(_order_key(d, field)) <= rank(stop)]
            fresh = [
                d
                for d in ordered
                if d["_id"] not in seen
                and (position is None or rank(_order_key(d, field)) > rank(position))
            ]
            if fresh:
                position = _order_key(fresh[-1], field)
                seen.update(d["_id"] for d in fresh)
                kept = Batch([d for d in fresh if _holds(d, residual)], reached=position)
                for document in kept:
                    for path in hidden_again:
                        document.pop(path, None)
                yield kept
            if not full:
                return
            if not fresh:
                limit *= 4  # more documents share one millisecond than a read returns
                continue
            if descending:
                high = position[0] + _ONE_MS
            else:
                low = position[0] - _ONE_MS

    if spans is not None:
        for low, high, _ in spans:
            async for documents in span(low, high):
                yield documents
        return
    now = bson_time(datetime.now(UTC))
    shape = f"{collection.full_name}|{field}|{reads!r}"
    width = _first_width(shape, window=window, batch=batch)
    near = upper if descending else lower
    if not descending and near is None and floor is not None:
        lowest = await floor()
        near = bson_time(lowest) - _ONE_MS if lowest is not None else None
    if not descending and near is None:
        # No lower anchor for an ascending read: one read of what the filter selects.
        async for documents in span(None, upper):
            yield documents
        return
    gathered = 0
    # The densest window of this page, including the one the caller stopped reading in
    # (up to the last document it was given: it stops once it has enough).
    densest, read, start, reached = 0.0, 0, None, None
    try:
        while True:
            last = False
            # The width grows sixteenfold a window, so the end is compared before it is
            # computed: ``start - width`` could fall before year 1 (an OverflowError).
            if descending:
                start = near if near is not None else now  # open upwards: counted from now
                if lower is not None and width >= start - lower:
                    far, last = lower, True
                elif lower is None and width > start - WINDOWS_FROM:
                    far, last = None, True
                else:
                    far = start - width
                low, high = far, near
            else:
                start = near
                if upper is not None and width >= upper - near:
                    far, last = upper, True
                elif upper is None and width > now + WINDOWS_AHEAD - near:
                    far, last = None, True
                else:
                    far = near + width
                low, high = near, far
            found, read, reached = 0, 0, None
            async for documents in span(low, high):
                read += len(documents)
                reached = documents[-1].get(field) if documents else reached
                yield documents
                # Asked once the caller has had them: what it keeps may depend on what it did.
                found += len(documents) if wanted is None else sum(map(wanted, documents))
            densest = max(densest, _density(read, start, far))
            read = 0
            if last:
                return
            gathered += found
            # Wide enough for what is still missing at this window's density, and a quarter.
            growth = WINDOW_GROWTH[1] if found == 0 else 1.25 * max(batch - gathered, 1) / found
            width *= min(max(growth, WINDOW_GROWTH[0]), WINDOW_GROWTH[1])
            near = far + _ONE_MS if descending else far - _ONE_MS
    finally:
        densest = max(densest, _density(read, start, reached))
        if densest:
            _remember_density(shape, densest)


def _density(read: int, start: datetime | None, end: datetime | None) -> float:
    """Documents per millisecond of the sort key between ``start`` and ``end`` (either way;
    0 when unknown)."""
    if not read or not isinstance(start, datetime) or not isinstance(end, datetime):
        return 0.0
    if end.tzinfo is None:  # a document read without ``STORED_CODEC``
        end = end.replace(tzinfo=UTC)
    spanned = abs(start - end) / _ONE_MS
    return read / spanned if spanned else 0.0


def _first_width(shape: str, *, window: timedelta, batch: int) -> timedelta:
    """The first window of a read of ``shape``: about a page at its last known density."""
    density = _densities.get(shape)
    if density is None:
        return window
    holding_a_page = timedelta(milliseconds=1.25 * batch / density)
    return min(window, max(MIN_FIRST_WINDOW, holding_a_page))


def _remember_density(shape: str, density: float) -> None:
    _densities[shape] = density
    _densities.move_to_end(shape)
    while len(_densities) > DENSITIES_KEPT:
        _densities.popitem(last=False)


def _plan(
    conditions: dict[str, Any],
    rest: dict[str, Any],
    *,
    field: str,
    indexes: list[list[str]],
) -> tuple[list[dict[str, Any]], dict[str, list[Any]]] | None:
    """The equality reads (one per combination of split ``$in`` values) of a windowed read
    and the equalities checked on what they return; None when the local server cannot
    serve the query windowed (an operator other than equalities, no fitting index)."""
    if any(key.startswith("$") for key in conditions) or set(rest) - {"$ne"}:
        return None
    if rest and rest["$ne"] is not None:
        return None  # ``$ne: null`` is implied by a range over dates; nothing else is
    equalities: dict[str, list[Any]] = {}
    for path, condition in conditions.items():
        values = equality_values(condition)
        if values is None:
            return None
        equalities[path] = values
    leading = _best_index(equalities, field, indexes)
    covering = any(
        field not in keys and set(keys[: len(equalities)]) == set(equalities) for keys in indexes
    )
    if not leading or (covering and len(leading) < len(equalities)):
        # An index that holds every equality but not the date (a reference number) selects
        # fewer documents than windows over a shorter prefix would read.
        return None
    if any(not equalities[path] for path in leading):
        return [], {}  # an empty ``$in``
    reads: list[dict[str, Any]] = [{}]
    for path in leading:
        reads = [{**read, path: value} for read in reads for value in equalities[path]]
    residual = {path: values for path, values in equalities.items() if path not in leading}
    return reads, residual


# ``windows_of``: how much a window may shrink or widen from one read to the next, and how
# much it widens after an empty one.
SCAN_WINDOW_CHANGE = (0.25, 4.0)
SCAN_WINDOW_EMPTY_GROWTH = 4.0


async def windows_of(
    collection: AsyncCollection,
    query: dict[str, Any],
    *,
    field: str,
    batch: int,
    width: timedelta,
    start: datetime | None = None,
    end: datetime | None = None,
    projection: dict[str, Any] | None = None,
) -> AsyncIterator[list[dict[str, Any]]]:
    """Every document of ``query`` whose date ``field`` is in [``start``, ``end``) (None:
    unbounded), in reads of about ``batch`` documents each: a background job pacing itself
    between reads (``timing.Pacer``) then never holds the database for long.

    Each read is a window of ``field`` (its index serves it, after ``query``'s equalities),
    from the end down: ``width`` wide at first, then sized by what the last one held. A
    sort with a limit would not do: the local server reads all that the filter selects
    before it applies the limit (docs/mongodb-compatibility.md). Without ``end`` the first
    read takes everything from the present on (dates set by a clock running ahead). A
    document whose ``field`` changes during the scan may be read twice or not at all:
    callers read changes again from a watermark set before they started.
    """
    if field in query:
        raise ValueError(f"{field} is bounded by start and end, not by the query")

    async def read(bounds: dict[str, datetime]) -> list[dict[str, Any]]:
        return await collection.find({**query, field: bounds}, projection=projection).to_list(None)

    high = bson_time(end) if end is not None else bson_time(datetime.now(UTC))
    lowest = bson_time(start) if start is not None else WINDOWS_FROM
    if end is None:
        ahead = await read(at_or_after(max(high, lowest)))
        if ahead:
            yield ahead
    while high > lowest:
        last = width >= high - lowest  # (never a date before year 1 from a wide window)
        low = lowest if last else high - width
        # Strict bounds only: inclusive ones drop documents on the bound on the local server.
        bounds = {"$lt": high} if last and start is None else {**at_or_after(low), "$lt": high}
        found = await read(bounds)
        if found:
            yield found
        if last:
            return
        if found:
            shrink, widen = SCAN_WINDOW_CHANGE
            width *= min(max(batch / len(found), shrink), widen)
        else:
            width *= SCAN_WINDOW_EMPTY_GROWTH
        width = max(width, _ONE_MS)
        high = low
