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

from aiokafka.errors import KafkaError
from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase

from complaints_shared.envelope import CloudEvent
from complaints_shared.events import EventData, EventType, topic_of
from complaints_shared.kafka import EventProducer
from complaints_shared.logs import get_logger
from complaints_shared.metrics import EVENTS_PUBLISHED, OUTBOX_PUBLISH_FAILURES
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


def outbox_update(entries: list[dict], *, now: datetime) -> dict[str, Any]:
    """Update operators that append ``entries`` to a document's outbox.

    Merge the result into the update that changes the aggregate so both are
    one atomic write.
    """
    return {
        "$push": {OUTBOX_FIELD: {"$each": entries}},
        "$min": {PENDING_SINCE_FIELD: now},
    }


async def ensure_outbox_index(*, db: AsyncDatabase, collection: str) -> None:
    await db[collection].create_index(PENDING_SINCE_FIELD, sparse=True, name="outbox_pending")


class OutboxRelay:
    """Publishes pending outbox events of the given collections to Kafka."""

    def __init__(
        self,
        *,
        db: AsyncDatabase,
        collections: list[str],
        producer: EventProducer,
        settings: ServiceSettings,
        workers: int = 4,
    ) -> None:
        self._db = db
        self._collections = collections
        self._producer = producer
        self._settings = settings
        self._workers = workers
        self._owner = f"{settings.service_name}-{uuid.uuid4().hex[:8]}"
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()

    def notify(self) -> None:
        """Tell the relay that a write just added events (publish now, not at the next poll)."""
        self._wake.set()

    async def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        await asyncio.gather(*(self._work() for _ in range(self._workers)))

    async def _work(self) -> None:
        while not self._stopping.is_set():
            published_any = False
            for collection in self._collections:
                try:
                    published_any |= await self.publish_one(collection=collection)
                except KafkaError as exc:
                    OUTBOX_PUBLISH_FAILURES.labels(self._settings.service_name).inc()
                    log.warning("outbox_publish_failed", error=repr(exc))
                    await self._idle()
                except Exception as exc:  # Mongo away or similar: keep the relay alive
                    OUTBOX_PUBLISH_FAILURES.labels(self._settings.service_name).inc()
                    log.error("outbox_relay_error", error=repr(exc))
                    await self._idle()
            if not published_any:
                await self._idle()

    async def _idle(self) -> None:
        await wait_event(self._wake, timeout_s=self._settings.outbox_poll_interval_s)
        self._wake.clear()

    async def publish_one(self, *, collection: str) -> bool:
        """Claim one document with pending events, publish them, pull them; False if none."""
        now = datetime.now(UTC)
        lease_until = now + timedelta(seconds=self._settings.outbox_lease_s)
        document = await self._db[collection].find_one_and_update(
            {
                PENDING_SINCE_FIELD: {"$lte": now},
                "$or": [
                    {LEASE_UNTIL_FIELD: {"$exists": False}},
                    {LEASE_UNTIL_FIELD: None},
                    {LEASE_UNTIL_FIELD: {"$lt": now}},
                ],
            },
            {"$set": {LEASE_UNTIL_FIELD: lease_until, LEASE_OWNER_FIELD: self._owner}},
            sort=[(PENDING_SINCE_FIELD, 1)],
            projection={OUTBOX_FIELD: 1},
            return_document=ReturnDocument.AFTER,
        )
        if document is None:
            return False
        published: list[str] = []
        try:
            for entry in document.get(OUTBOX_FIELD, []):
                event = CloudEvent.model_validate(entry)
                await self._producer.publish(event, topic=entry["topic"])
                EVENTS_PUBLISHED.labels(self._settings.service_name, event.type).inc()
                published.append(event.id)
        finally:
            await self._release(collection=collection, document_id=document["_id"], sent=published)
        return True

    async def _release(self, *, collection: str, document_id: Any, sent: list[str]) -> None:
        coll = self._db[collection]
        await coll.update_one(
            {"_id": document_id, LEASE_OWNER_FIELD: self._owner},
            {
                "$pull": {OUTBOX_FIELD: {"id": {"$in": sent}}},
                "$unset": {LEASE_UNTIL_FIELD: "", LEASE_OWNER_FIELD: ""},
            },
        )
        await coll.update_one(
            {"_id": document_id, OUTBOX_FIELD: {"$size": 0}},
            {"$unset": {PENDING_SINCE_FIELD: ""}},
        )
