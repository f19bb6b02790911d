"""Single-document outbox: events ride inside the aggregate they describe.

A write that changes an aggregate pushes the events it causes into that same
document's ``outbox`` array in the same atomic update, so an event exists if
and only if the change was stored (no multi-document transaction needed, which
keeps it correct on a standalone MongoDB too). The relay claims documents with
pending events under a lease, publishes them in order, then pulls exactly the
published ones. If Kafka is down the events simply stay until it is back.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import UpdateOne
from pymongo.asynchronous.database import AsyncDatabase

from complaints_shared.envelope import CloudEvent
from complaints_shared.events import EventData, EventType, topic_of
from complaints_shared.kafka import EventProducer
from complaints_shared.logs import get_logger
from complaints_shared.metrics import EVENTS_PUBLISHED, OUTBOX_PUBLISH_FAILURES
from complaints_shared.mongo import lease_free
from complaints_shared.settings import ServiceSettings
from complaints_shared.timing import wait_event

log = get_logger(__name__)

OUTBOX_FIELD = "outbox"
PENDING_SINCE_FIELD = "outbox_pending_since"
LEASE_UNTIL_FIELD = "outbox_lease_until"
LEASE_OWNER_FIELD = "outbox_lease_owner"


def outbox_entry(*, event_type: EventType, data: EventData, settings: ServiceSettings) -> dict:
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


def outbox_fields(entries: list[dict]) -> dict[str, Any]:
    """The outbox fields of a document inserted together with its first events."""
    return {OUTBOX_FIELD: entries, PENDING_SINCE_FIELD: _relay_time()}


def _relay_time() -> datetime:
    # Outbox bookkeeping runs on the wall clock the relay polls with, never a service's
    # business clock: a test clock set days ahead would otherwise hide events from the relay.
    return datetime.now(UTC)


async def ensure_outbox_index(*, db: AsyncDatabase, collection: str) -> None:
    await db[collection].create_index(PENDING_SINCE_FIELD, sparse=True, name="outbox_pending")


class OutboxRelay:
    """Publishes pending outbox events of the given collections to Kafka.

    One loop per service instance: it claims up to ``outbox_batch_size``
    documents at a time under a lease (so several replicas never publish the
    same document concurrently), sends all their events without waiting on each,
    then removes, per document, the events that were acknowledged in order.
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
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()

    def notify(self) -> None:
        """Tell the relay that a write just added events (publish now, not at the next poll)."""
        self._wake.set()

    async def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        while not self._stopping.is_set():
            self._wake.clear()
            busy = False
            for collection in self._collections:
                try:
                    claimed = await self.publish_batch(collection=collection)
                    busy |= claimed >= self._settings.outbox_batch_size
                except Exception as exc:  # Kafka or Mongo away: keep the events, retry later
                    OUTBOX_PUBLISH_FAILURES.labels(self._settings.service_name).inc()
                    log.warning("outbox_publish_failed", error=repr(exc))
            if not busy:
                await wait_event(self._wake, timeout_s=self._settings.outbox_poll_interval_s)

    async def publish_batch(self, *, collection: str) -> int:
        """Claim, publish and release one batch; returns how many documents were claimed."""
        documents, claim = await self._claim(collection=collection)
        if not documents:
            return 0
        sent: dict[Any, list[str]] = {}
        try:
            sent = await self._send(documents)
        finally:
            await self._release(collection=collection, claim=claim, sent=sent, documents=documents)
        return len(documents)

    async def _claim(self, *, collection: str) -> tuple[list[dict], str]:
        coll = self._db[collection]
        now = datetime.now(UTC)
        unclaimed = {PENDING_SINCE_FIELD: {"$lte": now}, **lease_free(LEASE_UNTIL_FIELD, now)}
        candidates = (
            await coll.find(unclaimed, projection={"_id": 1})
            .sort(PENDING_SINCE_FIELD, 1)
            .limit(self._settings.outbox_batch_size)
            .to_list(None)
        )
        if not candidates:
            return [], ""
        claim = uuid.uuid4().hex
        ids = [candidate["_id"] for candidate in candidates]
        lease_until = now + timedelta(seconds=self._settings.outbox_lease_s)
        # The filter repeats the "unclaimed" test, so a concurrent replica's claim wins cleanly.
        await coll.update_many(
            {"_id": {"$in": ids}, **unclaimed},
            {"$set": {LEASE_UNTIL_FIELD: lease_until, LEASE_OWNER_FIELD: claim}},
        )
        documents = await coll.find(
            {"_id": {"$in": ids}, LEASE_OWNER_FIELD: claim}, projection={OUTBOX_FIELD: 1}
        ).to_list(None)
        return documents, claim

    async def _send(self, documents: list[dict]) -> dict[Any, list[str]]:
        """Send every event; per document, the ids acknowledged in order (a prefix)."""
        pending: list[tuple[Any, str, str, asyncio.Future]] = []
        for document in documents:
            for entry in document.get(OUTBOX_FIELD, []):
                event = CloudEvent.model_validate(entry)
                delivery = await self._producer.send(event, topic=entry["topic"])
                pending.append((document["_id"], event.id, event.type, delivery))
        results = await asyncio.gather(*(item[3] for item in pending), return_exceptions=True)
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

    async def _release(
        self, *, collection: str, claim: str, sent: dict[Any, list[str]], documents: list[dict]
    ) -> None:
        coll = self._db[collection]
        requests = [
            UpdateOne(
                {"_id": document["_id"], LEASE_OWNER_FIELD: claim},
                {
                    "$pull": {OUTBOX_FIELD: {"id": {"$in": sent.get(document["_id"], [])}}},
                    "$unset": {LEASE_UNTIL_FIELD: "", LEASE_OWNER_FIELD: ""},
                },
            )
            for document in documents
        ]
        await coll.bulk_write(requests, ordered=False)
        await coll.update_many(
            {
                "_id": {"$in": [document["_id"] for document in documents]},
                OUTBOX_FIELD: {"$size": 0},
            },
            {"$unset": {PENDING_SINCE_FIELD: ""}},
        )
