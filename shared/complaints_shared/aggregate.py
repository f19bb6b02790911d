"""The aggregate kernel: how every service reads and changes the documents it owns.

An aggregate (the complaint of record, an assignment, a satisfaction check) is
one MongoDB document carrying a ``version``, the ids of the consumed events it
has applied and an ``outbox`` of events waiting for the relay. A change is:

1. read the document (within the caller's visibility, if any);
2. skip it when ``event_id`` was applied before (a redelivered event has no
   second effect);
3. ``decide``: the caller's pure-ish function returns a :class:`Decision` (the
   update, the events it causes, the effects to run afterwards) or None for
   "nothing to do"; it may raise (an ``InvalidTransition`` is a 409);
4. write the update, the events and the applied event id in one update
   conditional on the version read; a lost race (or a unique index refusing the
   write, e.g. an owner slot taken meanwhile) decides again on the new version;
5. after the write, run the decision's effects with the stored document.

Every write that adds events to an aggregate's outbox goes through here (or is its
insert), so the version guards the ``outbox`` too. That lets a write also remove the
events the relay of this process has published from the document, instead of the
relay's own write later: a new complaint's ``complaint.received`` leaves its outbox
in the write that records routing's assignment.

A document this process has just inserted (``inserted``) is remembered for a
while as stored where the aggregate allows it (``decide_on_inserted``), and its
first change decides on that copy instead of reading it:
the write is conditional on the version all the same, so a copy another writer has
overtaken costs one refused write and then a read. A new complaint's first change
is routing's assignment, a second or so after its insert.

Effects are what cannot be in the same atomic write and what a periodic pass
repairs if a crash loses them (load hints, offering freed capacity to a queue).
An effect that fails is logged and left to that pass: the change is committed, so
the caller is answered with it (a 503 would invite a retry that repeats the change).

The write is ``update_one`` then a read by ``_id`` (``complaints_shared.mongo.
update_and_read``), not ``find_one_and_update``: the local MongoDB (SecantusDB)
runs findAndModify in time proportional to the collection
(docs/mongodb-compatibility.md). This module is the only place that chooses.
"""

from __future__ import annotations

import inspect
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from complaints_shared.auth import Principal
from complaints_shared.events import EventData, EventType
from complaints_shared.failures import is_transient, redacted_error
from complaints_shared.idempotency import CommandKey
from complaints_shared.logs import get_logger
from complaints_shared.mongo import as_stored, merge_updates, sorted_batches, update_and_read
from complaints_shared.outbox import (
    outbox_after,
    outbox_entry,
    outbox_rewrite,
    outbox_update,
    record_stored,
    record_written,
    settle_published,
    take_published,
)
from complaints_shared.pagination import Page, decode_cursor, encode_cursor, listing_tag
from complaints_shared.problems import ConcurrentUpdate, not_found
from complaints_shared.settings import ServiceSettings
from complaints_shared.transitions import InvalidTransition

log = get_logger(__name__)

Item = TypeVar("Item")
Events = list[tuple[EventType, EventData]]
Effect = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class Decision:
    """What one change does: the update, the events it announces, what runs after the write."""

    update: dict[str, Any]
    events: Sequence[tuple[EventType, EventData]] = ()
    effects: Sequence[Effect] = field(default_factory=list)


Decide = Callable[[dict[str, Any]], "Decision | Awaitable[Decision | None] | None"]


@dataclass(frozen=True)
class Aggregate:
    """A kind of aggregate: where it is stored and how it is named in problems."""

    collection: str
    what: str
    # Consumed event ids remembered per document; older ones are assumed long delivered.
    applied_events_kept: int = 200
    max_write_attempts: int = 10
    # Fields never shown to a reader of the aggregate.
    hidden: Mapping[str, int] = field(default_factory=lambda: {"outbox": 0})
    # Fields no decision reads, left out of the kernel's read (they only grow or are derived).
    unread: tuple[str, ...] = ()
    # The first change after an insert of this process decides on the inserted copy
    # (``inserted``). Only where every write of a field a decision reads goes through
    # ``change`` (and so moves the version): a lease or claim written beside the kernel
    # would leave the copy stale with the version unchanged.
    decide_on_inserted: bool = False


# Documents this process inserted lately, as stored: (database, collection, id) ->
# (when, document). At most this many, for at most this long.
RECENTLY_INSERTED_KEPT = 1024
RECENTLY_INSERTED_S = 10.0
_recently_inserted: OrderedDict[tuple[str, str, Any], tuple[float, dict[str, Any]]] = OrderedDict()
# A change committed this long after the kernel took it in (its write waited: a database
# failing over, a queue of writes, races decided again) is stamped again with its commit
# time. What reads the changes since a time by ``updated_at`` trusts a stamp to be committed
# soon after it (intake's report rollup reads 30 s behind the present) and would never find
# a change committed after it had read past the stamp.
LATE_COMMIT_S = 10.0


def inserted(*, db: AsyncDatabase, aggregate: Aggregate, document: dict[str, Any]) -> None:
    """Note that ``document`` was just inserted: its events go to the relay as written,
    and (``decide_on_inserted``) its first change decides on this copy instead of
    reading the document."""
    if aggregate.decide_on_inserted:
        _remember(db=db, aggregate=aggregate, document=document)
    record_stored(aggregate.collection, database=db.name, document=document)


def _remember(*, db: AsyncDatabase, aggregate: Aggregate, document: dict[str, Any]) -> None:
    key = (db.name, aggregate.collection, document["_id"])
    now = time.monotonic()
    stored = as_stored({k: v for k, v in document.items() if k not in aggregate.unread})
    _recently_inserted[key] = (now, stored)
    _recently_inserted.move_to_end(key)
    while _recently_inserted and (
        len(_recently_inserted) > RECENTLY_INSERTED_KEPT
        or now - next(iter(_recently_inserted.values()))[0] > RECENTLY_INSERTED_S
    ):
        _recently_inserted.popitem(last=False)


def _just_inserted(
    *, db: AsyncDatabase, aggregate: Aggregate, aggregate_id: str, scope: Mapping[str, Any]
) -> dict[str, Any] | None:
    """The remembered copy of a document inserted lately (once: it is forgotten), if it
    is within ``scope`` (equalities only; anything else is left to the read)."""
    remembered = _recently_inserted.pop((db.name, aggregate.collection, aggregate_id), None)
    if remembered is None or time.monotonic() - remembered[0] > RECENTLY_INSERTED_S:
        return None
    document = remembered[1]
    for name, wanted in scope.items():
        if isinstance(wanted, Mapping) or document.get(name) != wanted:
            return None
    return document


def visibility(principal: Principal) -> dict[str, Any]:
    """The filter that keeps a caller to their organisation and branches."""
    return principal.scope_filter()


async def change(
    *,
    db: AsyncDatabase,
    settings: ServiceSettings,
    aggregate: Aggregate,
    aggregate_id: str,
    decide: Decide,
    now: datetime,
    scope: Mapping[str, Any] | None = None,
    event_id: str | None = None,
    command_key: CommandKey | None = None,
    read_back: bool = True,
) -> dict[str, Any] | None:
    """Apply one decided change atomically with its events; the stored document after it.

    Returns the document as read when there was nothing to do (``decide`` said None,
    or ``event_id`` was applied before), None when no document matches ``scope``.
    ``command_key`` (a client's ``Idempotency-Key`` on the command) is remembered like an
    applied event: a request already applied is not decided again, and is marked
    ``replayed``.
    ``read_back=False`` (a consumer that only needs the change made) saves the read
    after the write: the document as read before the change is returned instead,
    unless the decision has effects, which are given the stored document.

    ``now`` is stamped as the document's ``updated_at``: give the time of this write, not
    the time a consumed event happened, so that a reader of what changed since a time
    (intake's report rollup) finds a change made late, after an outage, too. A change
    committed ``LATE_COMMIT_S`` or more after this call began is stamped again, with ``now``
    plus that delay.
    """
    if command_key is not None:
        event_id = command_key.event_id
    collection = db[aggregate.collection]
    entered = time.monotonic()
    where = {"database": db.name, "collection": aggregate.collection, "document_id": aggregate_id}
    published: list[str] | None = None  # taken over from the relay at the first write
    written = False
    remembered = _just_inserted(
        db=db, aggregate=aggregate, aggregate_id=aggregate_id, scope=scope or {}
    )
    try:
        for _ in range(aggregate.max_write_attempts):
            from_copy = remembered is not None
            current = remembered or await collection.find_one(
                {"_id": aggregate_id, **(scope or {})},
                projection={name: 0 for name in aggregate.unread} or None,
            )
            remembered = None
            if current is None:
                return None
            applied = current.get("applied_events", [])
            if command_key is not None and command_key.check(applied):
                command_key.replayed = True
                return _shown(current, aggregate)
            if event_id is not None and event_id in applied:
                return _shown(current, aggregate)
            try:
                decision = await decided(decide, current)
            except Exception as exc:
                # The copy may be out of date (another replica changed the document): a
                # refusal or a "nothing to do" on it is decided again on what is stored.
                if from_copy:
                    continue
                if isinstance(exc, InvalidTransition):
                    raise exc.about(what=aggregate.what, identifier=aggregate_id) from None
                raise
            if decision is None:
                if from_copy:
                    continue
                return _shown(current, aggregate)
            if published is None:
                published = take_published(**where)
            update, outbox = _with_bookkeeping(
                decision,
                aggregate=aggregate,
                settings=settings,
                now=now,
                event_id=event_id,
                current=current,
                published=published,
            )
            try:
                # Versions missing on documents stored before versioning match None.
                condition = {"_id": aggregate_id, "version": current.get("version")}
                if read_back or decision.effects:
                    updated = await update_and_read(
                        collection, condition, update, projection=dict(aggregate.hidden)
                    )
                else:
                    result = await collection.update_one(condition, update)
                    updated = _shown(current, aggregate) if result.matched_count else None
            except DuplicateKeyError:
                continue
            if updated is None:
                continue
            written = True
            updated = await stamped_if_late(
                collection,
                updated,
                version=(current.get("version") or 0) + 1,
                stamped=now,
                entered=entered,
            )
            if decision.events:
                record_written(
                    aggregate.collection, database=db.name, document_id=aggregate_id, outbox=outbox
                )
            await _run_effects(decision.effects, updated, aggregate=aggregate)
            return updated
        raise ConcurrentUpdate(
            detail=f"{aggregate.what} {aggregate_id} kept changing underneath this request; "
            "retry it"
        )
    finally:
        if published:
            settle_published(**where, event_ids=published, removed=written)


async def stamped_if_late(
    collection: AsyncCollection,
    document: dict[str, Any],
    *,
    version: int | None,
    stamped: datetime,
    entered: float,
) -> dict[str, Any]:
    """A change (or an insert) stamped ``stamped`` that left ``document`` at ``version``,
    committed ``LATE_COMMIT_S`` or more after ``entered`` (``time.monotonic()`` as the
    writer took ``stamped``): stamped again, with ``stamped`` plus the seconds it took on
    this writer's clock; ``document`` with the new stamp if it is that version. A later
    change has a stamp of its own and is left alone. The change is committed whatever
    happens here: a failure is logged."""
    late_s = time.monotonic() - entered
    if late_s < LATE_COMMIT_S:
        return document
    stamp = stamped + timedelta(seconds=late_s)
    try:
        result = await collection.update_one(
            {"_id": document["_id"], "version": version}, {"$set": {"updated_at": stamp}}
        )
    except Exception as exc:
        log.warning("late_change_not_stamped_again", error=redacted_error(exc))
        return document
    log.info("late_change_stamped_again", late_s=round(late_s, 1))
    if result.modified_count and document.get("version") == version:
        return {**document, "updated_at": as_stored({"at": stamp})["at"]}
    return document


async def _run_effects(
    effects: Sequence[Effect], updated: dict[str, Any], *, aggregate: Aggregate
) -> None:
    """Run a committed change's effects; a failure is logged and left to its repair pass.

    The change is stored and its events are on their way: raising now would tell an HTTP
    caller to send the request again (a 503), which repeats the change, and would make a
    consumer retry an event whose redelivery finds it applied. Each effect is one a
    periodic pass repairs (module docstring), so the next one still runs.
    """
    for effect in effects:
        try:
            await effect(updated)
        except Exception as exc:
            transient = is_transient(exc)
            # A dependency away a moment is expected now and then; anything else is a bug.
            report = log.warning if transient else log.error
            report(
                "effect_after_commit_failed",
                aggregate=aggregate.what,
                effect=getattr(effect, "__qualname__", type(effect).__name__),
                transient=transient,
                error=redacted_error(exc),
            )


async def decided(decide: Decide, current: dict[str, Any]) -> Decision | None:
    """What ``decide`` (synchronous or not) decided about ``current``."""
    decision = decide(current)
    if inspect.isawaitable(decision):
        decision = await decision
    return decision


def _with_bookkeeping(
    decision: Decision,
    *,
    aggregate: Aggregate,
    settings: ServiceSettings,
    now: datetime,
    event_id: str | None,
    current: dict[str, Any],
    published: list[str],
) -> tuple[dict[str, Any], list[dict]]:
    """The update of the change with its bookkeeping, and the outbox it leaves (as far as
    this writer knows: the relay may have removed some of it meanwhile)."""
    entries = [
        outbox_entry(event_type=event_type, data=data, settings=settings)
        for event_type, data in decision.events
    ]
    if published:  # the document's outbox is rewritten without what the relay published
        outbox = outbox_rewrite(current, published=published, entries=entries)
    else:
        outbox = outbox_update(entries) if entries else {}
    applied = {"$each": [event_id], "$slice": -aggregate.applied_events_kept}
    update = merge_updates(
        decision.update,
        {"$set": {"updated_at": now}, "$inc": {"version": 1}},
        outbox,
        {"$push": {"applied_events": applied}} if event_id else {},
    )
    return update, outbox_after(current, published=published, entries=entries)


def _shown(document: dict[str, Any], aggregate: Aggregate) -> dict[str, Any]:
    hidden = {name for name, shown in aggregate.hidden.items() if not shown}
    return {name: value for name, value in document.items() if name not in hidden}


# -------------------------------------------------------------------- reads --


async def get_visible(
    *,
    db: AsyncDatabase,
    aggregate: Aggregate,
    principal: Principal,
    aggregate_id: str,
    projection: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The aggregate if the caller may see it; another organisation's or branch's is a 404."""
    document = await db[aggregate.collection].find_one(
        {"_id": aggregate_id, **visibility(principal)},
        projection=dict(projection or aggregate.hidden),
    )
    if document is None:
        raise not_found(what=aggregate.what, identifier=aggregate_id)
    return document


# Reads of one page whose condition is partly checked in the service (``page``'s ``keep``).
MAX_FILTERED_READS = 10


async def page(
    *,
    collection: AsyncCollection,
    query: Mapping[str, Any],
    sort_field: str,
    limit: int,
    cursor: str | None,
    to_item: Callable[[dict[str, Any]], Item],
    descending: bool = False,
    projection: Mapping[str, Any] | None = None,
    keep: Callable[[dict[str, Any]], bool] | None = None,
    max_time_ms: int | None = None,
    window: timedelta | None = None,
    indexes: list[list[str]] | None = None,
    floor: Callable[[], Awaitable[datetime | None]] | None = None,
    expand: Callable[[list[dict[str, Any]]], Awaitable[list[dict[str, Any]]]] | None = None,
    read_factor: int = 1,
    expand_factor: int = 1,
    listing: Any = None,
) -> Page[Item]:
    """One cursor page of ``query`` in (``sort_field``, ``_id``) order (a date field).

    Its cursor is a position in this listing only (``pagination``): the collection, the sort
    and the ``query``, or ``listing`` when the read's query is not what is listed (a search
    over postings whose filters and substring are checked on the complaints); another
    listing's cursor is a 422 naming ``cursor``.

    ``keep`` is a condition the query cannot say (a substring verified in the service):
    documents it refuses are skipped and the page is filled from further reads; after
    ``MAX_FILTERED_READS`` reads (each counts, one whose documents were all refused too) the
    page ends short, its cursor after the last document read (a page may hold fewer items
    than ``limit``, none even; only a missing cursor means the end).
    ``max_time_ms`` bounds every read (``ExecutionTimeout`` beyond it). ``window`` and
    ``indexes`` let the reads be shaped for the local server
    (``complaints_shared.mongo.sorted_batches``).

    ``expand`` pages over another collection in the same order: ``query`` selects small
    documents (``sort_field`` and ``_id``, e.g. search postings) and ``expand`` turns a
    run of them into the documents they stand for, in the same order, leaving out those
    it does not find (a condition only they hold); the items are those, the cursor their
    position. What a read returns is expanded a page's worth at a time, as far as the
    page needs. Like ``keep``, it may end a page short after ``MAX_FILTERED_READS`` reads.
    ``read_factor``: pages' worth of documents a read takes, for a caller that expects
    ``keep`` or ``expand`` to refuse most of them. ``expand_factor``: pages' worth of
    documents one call of ``expand`` is given, for an ``expand`` that refuses most of them
    before reading anything (each call is at least one read).
    """
    tag = listing_tag(
        collection=collection.name,
        sort_field=sort_field,
        descending=descending,
        listing=query if listing is None else listing,
    )
    kept: list[dict[str, Any]] = []
    kept_ids: set[Any] = set()
    # The sort value each expanded document had in the read that ordered the page: the
    # cursor's position. The expanded document is read later and its date may have moved
    # meanwhile (a due time routing changed): a cursor at the moved date skipped every
    # document between the two. (One moved later may be listed again on a later page.)
    positions: dict[Any, Any] = {}
    reads = 0
    # Reads sized to the page; when ``keep`` or ``expand`` refuses some, later reads fill it.
    batch = (limit + 1) * read_factor
    batches = sorted_batches(
        collection,
        dict(query),
        field=sort_field,
        descending=descending,
        after=decode_cursor(cursor, tag=tag) if cursor is not None else None,
        batch=batch,
        window=window,
        indexes=indexes,
        projection=dict(projection) if projection else None,
        max_time_ms=max_time_ms,
        floor=floor,
        # Windows widen by what the page keeps (of expanded documents: once expanded).
        wanted=keep if expand is None else (lambda document: document["_id"] in kept_ids),
    )
    filtered = keep is not None or expand is not None
    async with aclosing(batches):
        async for documents in batches:
            reads += 1
            if expand is None:
                kept += documents if keep is None else [d for d in documents if keep(d)]
            else:
                positions.update((document["_id"], document[sort_field]) for document in documents)
                run = (limit + 1) * expand_factor
                for start in range(0, len(documents), run):
                    found = await expand(documents[start : start + run])
                    found = found if keep is None else [d for d in found if keep(d)]
                    kept += found
                    kept_ids.update(document["_id"] for document in found)
                    if len(kept) > limit:
                        break
            if len(kept) > limit:
                break
            if filtered and reads == MAX_FILTERED_READS:
                # After every document read, those refused included: until 5 December a read
                # that kept none was not stopped at, and the reads went on to the end.
                sort_value, document_id = documents.reached
                next_cursor = encode_cursor(sort_value=sort_value, document_id=document_id, tag=tag)
                return Page(items=[to_item(document) for document in kept], next_cursor=next_cursor)
    next_cursor = None
    if len(kept) > limit:
        kept = kept[:limit]
        last = kept[-1]
        position = positions.get(last["_id"], last[sort_field])
        next_cursor = encode_cursor(sort_value=position, document_id=last["_id"], tag=tag)
    return Page(items=[to_item(document) for document in kept], next_cursor=next_cursor)
