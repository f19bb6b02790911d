"""Single-document outbox: events ride inside the aggregate they describe.

A write that changes an aggregate pushes the events it causes into that same
document's ``outbox`` array in the same atomic update, so an event exists if
and only if the change was stored (no multi-document transaction needed, which
keeps it correct on a standalone MongoDB too). The relay of the replica that
holds the collection's lease publishes pending events in order, then removes
exactly the published ones. If Kafka is down the events simply stay until it is back.

Every write that adds events announces the document's outbox as it wrote it
(``record_written``), so the relay of the same process publishes it without reading
the document back; polls find what other replicas wrote and what a failure left.
"""

from __future__ import annotations

import asyncio
import time
import uuid
import weakref
from collections import OrderedDict
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import UpdateMany
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from complaints_shared.envelope import CloudEvent
from complaints_shared.events import EventPayload, EventType, topic_of
from complaints_shared.kafka import EventProducer
from complaints_shared.logs import get_logger
from complaints_shared.metrics import (
    EVENTS_PUBLISHED,
    OUTBOX_DOCUMENTS_RELEASED,
    OUTBOX_PUBLISH_FAILURES,
)
from complaints_shared.mongo import any_date, as_utc, by_ids
from complaints_shared.settings import ServiceSettings
from complaints_shared.stored import from_stored
from complaints_shared.timing import wait_event

log = get_logger(__name__)

OUTBOX_FIELD = "outbox"
PENDING_SINCE_FIELD = "outbox_pending_since"
# One document per outbox collection: which relay replica publishes it, and until when.
LEASES = "outbox_leases"
# How many removed event ids, and for how long, the relay remembers (``_note_removed``).
REMOVED_KEPT = 20_000
REMOVED_KEPT_S = 120.0
# A document a poll finds pending for less than this may be a write of this process whose
# announcement is on its way (under load, seconds after the document was built): only older
# ones make the polls hurry.
IN_FLIGHT_S = 1.0
# A release is written once the longest-waiting document has waited this many delays, and
# takes every document that has waited one: one write per quarter of the delay at most.
RELEASE_DUE_FACTOR = 1.25
# Documents per statement of a release (``OutboxRelay._release``).
RELEASE_STATEMENT_SIZE = 5
# While writes of this process are still taking published events out of a collection's
# documents (``take_published``: one within this many release delays) but have not reached
# documents published this many delays after a document yet, its release waits for them
# (``OutboxRelay._held``): the writes follow several partitions, some further behind.
RELEASE_HELD_MARGIN = 3
# ... up to this many release delays.
RELEASE_HELD_FACTOR = 20
# Once shutdown begins, how much longer a publish waits for the broker's acknowledgements;
# the events then unacknowledged stay in their outbox for the next start. (With the broker
# away aiokafka retries them until it returns, and the wait lasted until the shutdown's
# grace cancelled it.)
STOP_ACK_WAIT_S = 2.0


def outbox_entry(*, event_type: EventType, data: EventPayload, settings: ServiceSettings) -> dict:
    """A pending event, as stored in the aggregate's ``outbox`` array."""
    event = CloudEvent.new(event_type=event_type, source=settings.service_name, data=data)
    return {**event.model_dump(), "topic": settings.topic(topic_of(event_type).value)}


def outbox_update(entries: list[dict]) -> dict[str, Any]:
    """Update operators that append ``entries`` to a document's outbox.

    Merge the result into the update that changes the aggregate so both are
    one atomic write.
    """
    return {
        "$push": {OUTBOX_FIELD: {"$each": entries}},
        "$min": {PENDING_SINCE_FIELD: _relay_time()},
    }


def outbox_after(
    document: dict[str, Any], *, published: list[str], entries: list[dict]
) -> list[dict]:
    """``document``'s outbox (as read) without the ``published`` events, plus ``entries``."""
    gone = set(published)
    kept = [entry for entry in document.get(OUTBOX_FIELD, []) if entry["id"] not in gone]
    return [*kept, *entries]


def outbox_rewrite(
    document: dict[str, Any], *, published: list[str], entries: list[dict]
) -> dict[str, Any]:
    """Update operators that drop the ``published`` events from ``document``'s outbox (as
    read) and append ``entries``: only for a write conditional on the version read."""
    outbox = outbox_after(document, published=published, entries=entries)
    if not outbox:
        return {"$set": {OUTBOX_FIELD: []}, "$unset": {PENDING_SINCE_FIELD: ""}}
    if entries:
        return {"$set": {OUTBOX_FIELD: outbox}, "$min": {PENDING_SINCE_FIELD: _relay_time()}}
    return {"$set": {OUTBOX_FIELD: outbox}}


def outbox_fields(entries: list[dict]) -> dict[str, Any]:
    """The outbox fields of a document inserted together with its first events."""
    return {OUTBOX_FIELD: entries, PENDING_SINCE_FIELD: _relay_time()}


# The relays of this process, told when a document whose release they hold gets new events.
_relays: weakref.WeakSet[OutboxRelay] = weakref.WeakSet()


def take_published(*, database: str, collection: str, document_id: Any) -> list[str]:
    """The events of a document a relay of this process published but has not removed yet,
    handed to a write of that document about to happen, which removes them itself (one
    write fewer). The caller must end the hand-over with ``settle_published``."""
    for relay in _relays:
        taken = relay.hand_over(database=database, collection=collection, document_id=document_id)
        if taken:
            return taken
    return []


def settle_published(
    *, database: str, collection: str, document_id: Any, event_ids: list[str], removed: bool
) -> None:
    """End a ``take_published``: the write removed the events, or (``removed=False``) it did
    not happen and the relay removes them as before."""
    for relay in _relays:
        relay.handed_back(
            database=database,
            collection=collection,
            document_id=document_id,
            event_ids=event_ids,
            removed=removed,
        )


def record_written(collection: str, *, database: str, document_id: Any, outbox: list[dict]) -> None:
    """Announce a write that just added events to a document of ``collection``, with the
    document's ``outbox`` as written: this process's relay publishes from it, unread."""
    for relay in _relays:
        relay.document_written(
            database=database, collection=collection, document_id=document_id, outbox=outbox
        )


def record_stored(collection: str, *, database: str, document: dict[str, Any]) -> None:
    """Announce the events a document just written whole (an insert, or as read back after
    its write) carries, if any (``record_written``)."""
    if document.get(OUTBOX_FIELD):
        record_written(
            collection,
            database=database,
            document_id=document["_id"],
            outbox=document[OUTBOX_FIELD],
        )


def _pending_a_while(document: dict[str, Any], *, now: datetime) -> bool:
    """Whether a pending document's stamp says it waits for a poll, not for the
    announcement of a write in flight: stamped ``IN_FLIGHT_S`` before ``now`` or more, or
    as far after it (by a replica whose clock runs ahead: never in flight that long)."""
    stamped = as_utc(document[PENDING_SINCE_FIELD])
    return abs(now - stamped) >= timedelta(seconds=IN_FLIGHT_S)


def _relay_time() -> datetime:
    # Outbox bookkeeping runs on the wall clock the relay polls with, never a service's
    # business clock: a test clock set days ahead would otherwise hide events from the relay.
    return datetime.now(UTC)


async def ensure_outbox_index(*, db: AsyncDatabase, collection: str) -> None:
    await db[collection].create_index(PENDING_SINCE_FIELD, sparse=True, name="outbox_pending")


class OutboxRelay:
    """Publishes pending outbox events of the given collections to Kafka.

    One loop per service instance. Of several replicas, one at a time publishes
    a collection: the one holding that collection's lease in ``outbox_leases``
    (renewed while it runs, given up at shutdown, taken over by another replica
    once it expires). The leader reads up to ``outbox_batch_size`` documents with
    pending events and sends all their events without waiting on each. The
    events acknowledged (in order, per document) are removed later, together: a
    document's published events wait ``outbox_release_delay_s`` from their
    publication, and one write releases every document that has waited that long
    (all of them once ``outbox_release_max_documents`` wait), instead of one write
    per batch; until then those documents are left out of the relay's reads, and a
    relay that stops releases them first. Most never need it: a document's next
    write (a complaint's is routing's decision) takes its published events out with
    it. The delay covers that next write when the pipeline runs a second or two
    behind, and while such writes keep coming but have not reached a document yet,
    it waits for them longer (``_held``): a release of its own rewrites every index
    entry of the document on the local server (docs/mongodb-compatibility.md), which
    would make every complaint dearer just when the database is behind. Releases run
    beside publication, never in its way.
    (A crash before the release only publishes them again, which the idempotent
    consumers absorb.) A write of this process hands it the document's outbox as
    written (``record_written``): the leader publishes that at once without reading
    the document; events written by a standby replica or left by a failure are found
    by polling, and ``notify`` asks for a read now.
    A poll costs a read even when it finds nothing, so each empty poll of a
    collection doubles its pause from ``outbox_poll_interval_s`` up to
    ``outbox_idle_poll_interval_s``, and a poll that finds events nobody
    announced (or a failure) brings it back to the shortest. Events pending for
    less than ``IN_FLIGHT_S`` count as nothing found: under load they are mostly
    writes of this process whose announcement is on its way. A leader that
    stalls past its lease can overlap with its successor; that only
    duplicates deliveries, which the idempotent consumers absorb.
    """

    def __init__(
        self,
        *,
        db: AsyncDatabase,
        collections: list[str],
        producer: EventProducer,
        settings: ServiceSettings,
    ) -> None:
        self._db = db
        self._collections = collections
        self._producer = producer
        self._settings = settings
        self._owner = f"{settings.service_name}-{uuid.uuid4().hex[:12]}"
        self._lease = timedelta(seconds=settings.outbox_lease_s)
        self._held_until: dict[str, datetime] = {}
        self._standby_until: dict[str, datetime] = {}
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        # Done once ``stop`` is called: what an acknowledgement's wait watches (``_answers``).
        self._stopped: asyncio.Future[None] | None = None
        # Collections to read at the next wake-up, and those a write of ours announced.
        self._dirty: set[str] = set(collections)
        self._announced: set[str] = set()
        # Per collection: the pause between polls, and when the next poll is due.
        self._poll_interval_s = {c: settings.outbox_poll_interval_s for c in collections}
        self._next_poll = {c: time.monotonic() for c in collections}
        # Per collection: documents the last poll found that were pending for a while.
        self._surprises: dict[str, int] = {}
        # Per collection: events published but not yet removed (document id -> event ids),
        # since when (monotonic) each document waits, in that order, and when a release
        # that failed is tried again.
        self._unreleased: dict[str, dict[Any, list[str]]] = {c: {} for c in collections}
        self._unreleased_since: dict[str, dict[Any, float]] = {c: {} for c in collections}
        self._release_retry_at: dict[str, float] = {}
        # Collections whose every published event goes at the next release (the cap
        # reached, or no delay), and the release running in the background, if any.
        self._release_all: set[str] = set()
        self._releasing: asyncio.Task | None = None
        # Documents whose published events writes of this process are removing right now
        # (several writers of one document each hold what they were handed).
        self._handed_over: dict[str, dict[Any, list[str]]] = {c: {} for c in collections}
        # Per collection: the publication time (monotonic) of the latest-published document
        # a write took events from, and when that happened (``_held``).
        self._taken_up_to: dict[str, float] = {}
        self._taken_at: dict[str, float] = {}
        # Per collection: documents written by this process (id -> outbox as written), to
        # publish without reading them.
        self._written: dict[str, dict[Any, list[dict]]] = {c: {} for c in collections}
        # Events removed lately (id -> when): an announcement that still lists one (its
        # writer read the document before the removal) does not send it again.
        self._removed: OrderedDict[str, float] = OrderedDict()
        _relays.add(self)

    def notify(self, *collections: str) -> None:
        """Ask for a read of ``collections`` (all when none are named) now, not at the next
        poll: for events written without an announcement (``record_written``), such as
        documents a test or a repair stored directly."""
        named = collections or self._collections
        self._dirty.update(named)
        self._announced.update(named)
        self._wake.set()

    def poll_interval_s(self, *, collection: str) -> float:
        """The pause before the relay's next poll of ``collection``."""
        return self._poll_interval_s[collection]

    def owed(self, *, collection: str) -> int:
        """Documents of ``collection`` whose published events this relay still removes."""
        return len(self._unreleased.get(collection, {}))

    def hand_over(self, *, database: str, collection: str, document_id: Any) -> list[str]:
        """Give a writer of the document the published events it will remove (see
        ``take_published``); the document stays out of reads until it is settled."""
        waiting = self._unreleased.get(collection)
        if database != self._db.name or not waiting or document_id not in waiting:
            return []
        event_ids = waiting.pop(document_id)
        published_at = self._unreleased_since[collection].pop(document_id, None)
        if published_at is not None:
            self._taken_up_to[collection] = max(
                published_at, self._taken_up_to.get(collection, published_at)
            )
            self._taken_at[collection] = time.monotonic()
        self._handed_over[collection].setdefault(document_id, []).extend(event_ids)
        return event_ids

    def handed_back(
        self,
        *,
        database: str,
        collection: str,
        document_id: Any,
        event_ids: list[str],
        removed: bool,
    ) -> None:
        handed = self._handed_over.get(collection)
        if database != self._db.name or not handed or document_id not in handed:
            return
        held = handed[document_id]
        if any(event_id not in held for event_id in event_ids):
            return  # handed over by another relay of this process (a second replica)
        for event_id in event_ids:
            held.remove(event_id)
        if not held:
            del handed[document_id]
        if removed:
            OUTBOX_DOCUMENTS_RELEASED.labels(self._settings.service_name, "write").inc()
            self._note_removed(event_ids)
        else:
            self._owe(collection, {document_id: event_ids})
            self._wake.set()

    def document_written(
        self, *, database: str, collection: str, document_id: Any, outbox: list[dict]
    ) -> None:
        """A write of this process added events to a document: publish its ``outbox`` as
        written (the events not published yet) without reading the document."""
        if database == self._db.name and collection in self._written:
            self._written[collection][document_id] = outbox
            self._wake.set()

    async def stop(self) -> None:
        self._stopping.set()
        if not self._stop_signal().done():
            self._stop_signal().set_result(None)
        self._wake.set()

    def _stop_signal(self) -> asyncio.Future[None]:
        if self._stopped is None:
            self._stopped = asyncio.get_running_loop().create_future()
        return self._stopped

    async def run(self) -> None:
        try:
            while not self._stopping.is_set():
                self._wake.clear()
                self._start_release()
                now = time.monotonic()
                polled = {c for c in self._collections if now >= self._next_poll[c]}
                self._dirty.update(polled)
                due = [c for c in self._collections if c in self._dirty]
                announced = self._announced & set(due)
                self._dirty.difference_update(due)
                self._announced.difference_update(due)
                for collection in self._collections:
                    if self._written[collection]:
                        try:
                            await self.publish_written(collection=collection)
                        except Exception as exc:  # the events stay stored: read them soon
                            OUTBOX_PUBLISH_FAILURES.labels(self._settings.service_name).inc()
                            log.warning("outbox_publish_failed", error=repr(exc))
                            self._poll_again(collection, found_unannounced=True)
                for collection in due:
                    try:
                        published = await self.publish_batch(collection=collection)
                    except Exception as exc:  # Kafka or Mongo away: keep the events, retry later
                        OUTBOX_PUBLISH_FAILURES.labels(self._settings.service_name).inc()
                        log.warning("outbox_publish_failed", error=repr(exc))
                        self._poll_again(collection, found_unannounced=True)
                        continue
                    if published >= self._settings.outbox_batch_size:
                        self._dirty.add(collection)
                    if collection in polled:
                        surprises = self._surprises.pop(collection, 0)
                        self._poll_again(
                            collection,
                            found_unannounced=surprises > 0 and collection not in announced,
                            empty=surprises == 0,
                        )
                if not self._dirty:
                    wake_at = min(
                        self._next_poll.values(),
                        default=time.monotonic() + self._settings.outbox_idle_poll_interval_s,
                    )
                    release_at = self._next_release_at()
                    if release_at is not None:
                        wake_at = min(wake_at, release_at)
                    await wait_event(self._wake, timeout_s=max(0.0, wake_at - time.monotonic()))
        finally:
            if self._releasing is not None:
                await self._releasing
            await self._release_each({c: None for c in self._collections if self._unreleased[c]})
            await self._give_up_leases()

    def _owe(self, collection: str, sent: dict[Any, list[str]]) -> None:
        """Note published events to remove; each document waits from its first of them."""
        waiting = self._unreleased[collection]
        since = self._unreleased_since[collection]
        now = time.monotonic()
        for document_id, event_ids in sent.items():
            waiting.setdefault(document_id, []).extend(event_ids)
            since.setdefault(document_id, now)

    def _held(self, collection: str, *, published_at: float, now: float) -> bool:
        """Whether a document published at ``published_at`` that waited the release delay
        still waits for its next write, because the pipeline runs behind.

        Writes of this process that take published events out (a complaint's is
        routing's decision) reach documents roughly in the order they were published.
        While they keep coming and have not yet reached documents published well after
        this one (``RELEASE_HELD_MARGIN``), its next write is most likely on its way, only
        late: a release of its own now would be one more write of the document for every
        complaint exactly while the database is the bottleneck, which keeps the pipeline
        behind (docs/performance.md). Once the writes have passed it by, or stopped
        (routing down, or a collection whose documents are seldom written again), or it
        waited ``RELEASE_HELD_FACTOR`` delays, it is released as before;
        ``outbox_release_max_documents`` bounds how many wait.
        """
        delay = self._settings.outbox_release_delay_s
        taken_at = self._taken_at.get(collection)
        margin = RELEASE_HELD_MARGIN * delay
        return (
            taken_at is not None
            and now - taken_at < margin
            and self._taken_up_to[collection] < published_at + margin
            and now - published_at < RELEASE_HELD_FACTOR * delay
        )

    def _release_due_at(self, collection: str, *, now: float) -> float | None:
        """When ``collection``'s next release is due (None: nothing owed): at once for a
        full release (``_release_all``), else once the longest-waiting document has waited
        the delay and a quarter, so one write takes all that waited the delay; while that
        document is held (``_held``), a quarter of the delay later, to look again; never
        before the retry time of a release that failed."""
        since = self._unreleased_since[collection]
        if not since:
            return None
        delay = self._settings.outbox_release_delay_s
        if collection in self._release_all:
            due = now
        else:
            oldest = next(iter(since.values()))
            due = oldest + RELEASE_DUE_FACTOR * delay
            if due <= now and self._held(collection, published_at=oldest, now=now):
                due = now + (RELEASE_DUE_FACTOR - 1) * delay
        return max(due, self._release_retry_at.get(collection, due))

    def _next_release_at(self) -> float | None:
        """When the relay must wake for a release; None while one runs (its end wakes the
        relay) or when nothing is owed."""
        if self._releasing is not None and not self._releasing.done():
            return None
        now = time.monotonic()
        times = [self._release_due_at(c, now=now) for c in self._collections]
        return min((t for t in times if t is not None), default=None)

    def _start_release(self) -> None:
        """Start the releases that are due, in the background, unless one still runs: the
        relay goes on publishing while a release waits for the database (under load a
        release of hundreds of documents held publication up for seconds)."""
        if self._releasing is not None and not self._releasing.done():
            return
        now = time.monotonic()
        due: dict[str, float | None] = {}
        for collection in self._collections:
            due_at = self._release_due_at(collection, now=now)
            if due_at is None:
                self._release_all.discard(collection)
            elif due_at <= now:
                full = collection in self._release_all
                due[collection] = None if full else self._settings.outbox_release_delay_s
        self._release_all.difference_update(due)
        if due:
            self._releasing = asyncio.create_task(self._release_each(due))
            self._releasing.add_done_callback(lambda _: self._wake.set())

    async def _release_each(self, due: dict[str, float | None]) -> None:
        """Per collection, release what waited the time given (None: everything)."""
        for collection, waited_s in due.items():
            try:
                await self.release_published(collection=collection, waited_s=waited_s)
            except Exception as exc:  # Mongo away: try again after another delay
                delay = self._settings.outbox_release_delay_s
                self._release_retry_at[collection] = time.monotonic() + delay
                if waited_s is None:
                    self._release_all.add(collection)
                log.warning("outbox_release_failed", error=repr(exc))

    async def release_published(self, *, collection: str, waited_s: float | None = None) -> None:
        """Remove the published, not yet removed events of ``collection`` in one write: of
        the documents that waited ``waited_s`` or longer and are not held (all when None)."""
        waiting = self._unreleased[collection]
        since = self._unreleased_since[collection]
        now = time.monotonic()
        released = {
            document_id: list(event_ids)
            for document_id, event_ids in waiting.items()
            if waited_s is None
            or (
                now - since[document_id] >= waited_s
                and not self._held(collection, published_at=since[document_id], now=now)
            )
        }
        self._release_retry_at.pop(collection, None)
        if not released:
            return
        await self._release(collection=collection, sent=released)
        OUTBOX_DOCUMENTS_RELEASED.labels(self._settings.service_name, "relay").inc(len(released))
        for document_id, event_ids in released.items():
            # Events noted meanwhile (a writer gave back what it could not remove) stay.
            left = [e for e in waiting.get(document_id, ()) if e not in event_ids]
            if left:
                waiting[document_id] = left
            else:
                waiting.pop(document_id, None)
                since.pop(document_id, None)
            self._note_removed(event_ids)

    def _poll_again(self, collection: str, *, found_unannounced: bool, empty: bool = False) -> None:
        """Schedule the next poll: soon after a surprise, later after each empty poll."""
        shortest = self._settings.outbox_poll_interval_s
        if found_unannounced:
            interval = shortest
        elif empty:
            interval = min(
                self._poll_interval_s[collection] * 2, self._settings.outbox_idle_poll_interval_s
            )
        else:
            interval = self._poll_interval_s[collection]
        self._poll_interval_s[collection] = max(interval, shortest)
        self._next_poll[collection] = time.monotonic() + self._poll_interval_s[collection]

    async def publish_batch(self, *, collection: str) -> int:
        """Publish one batch read from the database if this replica leads; how many
        documents it held. Their release follows after ``outbox_release_delay_s`` (at
        once when it is 0)."""
        if not await self._lead(collection):
            return 0
        pending = self._db[collection]
        # Every pending document, whatever its stamp: a replica whose clock runs ahead of
        # this one's stamps its writes in this relay's future, and until 6 December they
        # waited that far behind (its own relay, a standby, drops its announcements).
        query: dict[str, Any] = {PENDING_SINCE_FIELD: any_date()}
        batch = self._settings.outbox_batch_size
        # Documents published already (their removal still to come) are left out here, not
        # by a ``$nin`` of hundreds of ids (the local server compares every document with
        # the whole list), and their outboxes are read only when they hold an event this
        # relay has not sent: one another replica added since (``_owed_only``).
        published = {*self._unreleased[collection], *self._handed_over[collection]}
        if not published:
            documents = await (
                pending.find(query, projection={OUTBOX_FIELD: 1, PENDING_SINCE_FIELD: 1})
                .sort(PENDING_SINCE_FIELD, 1)
                .limit(batch)
                .to_list(None)
            )
        else:
            oldest = await (
                pending.find(query, projection={"_id": 1, f"{OUTBOX_FIELD}.id": 1})
                .sort(PENDING_SINCE_FIELD, 1)
                .limit(batch + len(published))
                .to_list(None)
            )
            ids = [
                found["_id"]
                for found in oldest
                if found["_id"] not in published or not self._owed_only(collection, found)
            ][:batch]
            found = (
                await pending.find(
                    by_ids(ids, query), projection={OUTBOX_FIELD: 1, PENDING_SINCE_FIELD: 1}
                ).to_list(None)
                if ids
                else []
            )
            by_id = {document["_id"]: document for document in found}
            documents = [
                self._unsent(collection, by_id[document_id])
                for document_id in ids
                if document_id in by_id
            ]
        self._surprises[collection] = sum(
            1 for document in documents if _pending_a_while(document, now=_relay_time())
        )
        await self._publish(collection=collection, documents=documents)
        return len(documents)

    def _owed_only(self, collection: str, document: dict[str, Any]) -> bool:
        """Whether every event of ``document``'s outbox (ids read) is one this relay sent
        and still owes the removal of. A write of another replica may have added one since
        this relay published the document, and that replica's relay, a standby, drops its
        announcement: until 5 December such an event waited for the document's release (up
        to 20 release delays, a minute, under load) before a poll saw it."""
        known = self._sent_of(collection, document["_id"])
        return all(entry["id"] in known for entry in document.get(OUTBOX_FIELD, ()))

    def _sent_of(self, collection: str, document_id: Any) -> set[str]:
        """The events of a document this relay sent whose removal is still to come."""
        return {
            *self._unreleased[collection].get(document_id, ()),
            *self._handed_over[collection].get(document_id, ()),
        }

    def _unsent(self, collection: str, document: dict[str, Any]) -> dict[str, Any]:
        """``document`` with only the outbox events this relay has not sent or removed."""
        known = self._sent_of(collection, document["_id"])
        entries = [
            entry
            for entry in document.get(OUTBOX_FIELD, [])
            if entry["id"] not in known and entry["id"] not in self._removed
        ]
        return {**document, OUTBOX_FIELD: entries}

    async def publish_written(self, *, collection: str) -> int:
        """Publish what writes of this process announced (``document_written``) if this
        replica leads, leaving out what was published or removed already; how many
        documents had events to send. A standby drops the announcements: the leader's
        polls find those events."""
        announced, self._written[collection] = self._written[collection], {}
        if not await self._lead(collection):
            return 0
        documents = []
        for document_id, outbox in announced.items():
            unsent = self._unsent(collection, {"_id": document_id, OUTBOX_FIELD: outbox})
            if unsent[OUTBOX_FIELD]:
                documents.append(unsent)
        await self._publish(collection=collection, documents=documents)
        return len(documents)

    async def _publish(self, *, collection: str, documents: list[dict]) -> None:
        """Send the events of ``documents`` and note what to release."""
        if not documents:
            return
        sent: dict[Any, list[str]] = {}
        try:
            sent = await self._send(documents)
        finally:
            self._owe(collection, sent)
            if self._settings.outbox_release_delay_s == 0 or (
                len(self._unreleased[collection]) >= self._settings.outbox_release_max_documents
            ):
                self._release_all.add(collection)
                self._wake.set()

    def _note_removed(self, event_ids: list[str]) -> None:
        now = time.monotonic()
        for event_id in event_ids:
            self._removed[event_id] = now
            self._removed.move_to_end(event_id)
        # A writer's read is older than its write by far less than this.
        while self._removed and (
            len(self._removed) > REMOVED_KEPT
            or now - next(iter(self._removed.values())) > REMOVED_KEPT_S
        ):
            self._removed.popitem(last=False)

    async def _lead(self, collection: str) -> bool:
        """Whether this replica publishes ``collection`` now (holds, renews or takes its lease)."""
        now = _relay_time()
        held = self._held_until.get(collection)
        if held is not None and held - now > self._lease / 2:
            return True
        leases = self._db[LEASES]
        standby = self._standby_until.get(collection)
        if held is None and standby is not None and now < standby:
            # The leader's lease, as last seen, still runs: unless it was given up (a leader
            # stopping hands it back at once, and waiting out the lease as seen left nobody
            # publishing for up to a whole lease on every rolling restart).
            current = await leases.find_one({"_id": collection}, projection={"until": 1})
            if current is not None and current["until"] >= now:
                self._standby_until[collection] = current["until"]
                return False
        until = now + self._lease
        lease = {"$set": {"owner": self._owner, "until": until}}
        if held is not None:
            renewed = await leases.update_one({"_id": collection, "owner": self._owner}, lease)
            if renewed.matched_count:
                self._held_until[collection] = until
                return True
        self._held_until.pop(collection, None)
        taken = await leases.update_one({"_id": collection, "until": {"$lt": now}}, lease)
        if not taken.matched_count:
            try:
                await leases.insert_one({"_id": collection, "owner": self._owner, "until": until})
            except DuplicateKeyError:
                current = await leases.find_one({"_id": collection})
                if current is not None and current.get("owner") == self._owner:
                    # Ours: an insert whose answer was lost, stored all the same. Taken for
                    # another's, it left every relay standing by for a whole lease. Renewed,
                    # as it may have run out meanwhile.
                    renewed = await leases.update_one(
                        {"_id": collection, "owner": self._owner}, lease
                    )
                    if renewed.matched_count:
                        self._held_until[collection] = until
                        return True
                    current = await leases.find_one({"_id": collection})
                # Someone else leads: ask again when their lease would run out.
                self._standby_until[collection] = current["until"] if current else now
                return False
        log.info("outbox_lead_taken", collection=collection, owner=self._owner)
        self._held_until[collection] = until
        return True

    async def _give_up_leases(self) -> None:
        """At shutdown: let a peer take over at once instead of after the lease runs out."""
        for collection in list(self._held_until):
            try:
                await self._db[LEASES].delete_one({"_id": collection, "owner": self._owner})
            except Exception as exc:  # Mongo away: the lease simply expires
                log.warning("outbox_lease_not_released", error=repr(exc))
        self._held_until.clear()

    async def _send(self, documents: list[dict]) -> dict[Any, list[str]]:
        """Send every event, in order through one producer; per document, the ids
        acknowledged in order (a prefix). Events a discarded producer left unsent are sent
        again by a later round (``EventProducer.send_in_order``)."""
        queued: list[tuple[Any, CloudEvent, str]] = [
            (document["_id"], from_stored(CloudEvent, entry), entry["topic"])
            for document in documents
            for entry in document.get(OUTBOX_FIELD, [])
        ]
        deliveries = await self._producer.send_in_order(
            [(event, topic) for _, event, topic in queued]
        )
        if len(deliveries) < len(queued):
            log.warning("outbox_send_cut_short", sent=len(deliveries), queued=len(queued))
        pending = [
            (document_id, event.id, event.type, delivery)
            for (document_id, event, _), delivery in zip(queued, deliveries, strict=False)
        ]
        results = await self._answers([item[3] for item in pending])
        acknowledged: dict[Any, list[str]] = {}
        broken: set[Any] = set()
        for (document_id, event_id, event_type, _), result in zip(pending, results, strict=True):
            if isinstance(result, BaseException):
                broken.add(document_id)
                log.warning("outbox_event_not_acknowledged", event_id=event_id, error=repr(result))
                continue
            EVENTS_PUBLISHED.labels(self._settings.service_name, event_type).inc()
            if document_id not in broken:  # keep order: nothing after a failed event is dropped
                acknowledged.setdefault(document_id, []).append(event_id)
        return acknowledged

    async def _answers(self, deliveries: list[asyncio.Future]) -> list[Any]:
        """Each delivery's acknowledgement, or its error. Once shutdown begins, one still
        unanswered after ``STOP_ACK_WAIT_S`` counts as not acknowledged."""
        answers = asyncio.gather(*deliveries, return_exceptions=True)
        stopped = self._stop_signal()
        if not stopped.done():
            await asyncio.wait({answers, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not answers.done():
            await asyncio.wait({answers}, timeout=STOP_ACK_WAIT_S)
        if answers.done():
            return answers.result()
        # Left to the producer (its stop is bounded): the gather takes what they end with.
        unanswered = TimeoutError("not acknowledged before the relay stopped")
        return [
            unanswered
            if not delivery.done() or delivery.cancelled()
            else delivery.exception() or delivery.result()
            for delivery in deliveries
        ]

    async def _release(self, *, collection: str, sent: dict[Any, list[str]]) -> None:
        """Remove the acknowledged events from every document of the batch in one command.

        Per document the update keeps what was not sent (events added while the batch
        was in flight among them) and stops pending only where nothing is left, each
        document atomically. The command holds one statement per ``RELEASE_STATEMENT_SIZE``
        documents: the local server locks a collection's writes for a whole statement, and
        one statement for a batch of 25 held routing's assignment inserts up by 40–60 ms
        (150–440 ms under load; docs/performance.md).
        """
        if not sent:
            return
        documents = list(sent.items())
        statements = []
        for start in range(0, len(documents), RELEASE_STATEMENT_SIZE):
            part = documents[start : start + RELEASE_STATEMENT_SIZE]
            published = [event_id for _, event_ids in part for event_id in event_ids]
            statements.append(
                UpdateMany(
                    {"_id": {"$in": [document_id for document_id, _ in part]}}, _released(published)
                )
            )
        await self._db[collection].bulk_write(statements, ordered=False)


def _released(published: list[str]) -> list[dict[str, Any]]:
    """The pipeline update dropping the ``published`` events from a document's outbox."""
    kept = {
        "$filter": {
            "input": f"${OUTBOX_FIELD}",
            "cond": {"$not": [{"$in": ["$$this.id", published]}]},
        }
    }
    still_pending = {
        "$cond": [
            {"$eq": [{"$size": f"${OUTBOX_FIELD}"}, 0]},
            "$$REMOVE",
            f"${PENDING_SINCE_FIELD}",
        ]
    }
    return [{"$set": {OUTBOX_FIELD: kept}}, {"$set": {PENDING_SINCE_FIELD: still_pending}}]
