"""Integration: the outbox relay against real MongoDB and Kafka.

One replica's relay leads a collection's outbox at a time, hands over at
shutdown, and never drops an event added while a batch was in flight.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

import pytest
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase

from complaints_shared.events import EventType, Topic
from complaints_shared.kafka import EventProducer, ensure_topics
from complaints_shared.outbox import (
    LEASES,
    OUTBOX_FIELD,
    PENDING_SINCE_FIELD,
    OutboxRelay,
    outbox_entry,
    outbox_fields,
    outbox_update,
)
from complaints_shared.settings import ServiceSettings
from tests.support.events import received
from tests.support.kafka import outbox_sent, read_topic
from tests.support.system import System
from tests.support.waits import eventually

pytestmark = pytest.mark.integration


@dataclass
class Probe:
    """Settings, topic, database and collection of one test alone."""

    settings: ServiceSettings
    topic: str
    db: AsyncDatabase
    collection: AsyncCollection


async def _probe(system: System) -> Probe:
    settings = system.intake_settings.model_copy(
        update={
            "service_name": "relay-probe",
            "topic_prefix": f"relay{uuid.uuid4().hex[:8]}.",
            "outbox_poll_interval_s": 0.1,
            "outbox_lease_s": 5,
        }
    )
    topic = settings.topic(Topic.INTAKE.value)
    await ensure_topics(settings=settings, topics=[topic])
    db = system.mongo[settings.database_name()]
    return Probe(settings, topic, db, db[f"relay_{uuid.uuid4().hex[:8]}"])


def _entry(settings: ServiceSettings) -> dict:
    """A pending complaint.received, as intake would store it."""
    return outbox_entry(event_type=EventType.COMPLAINT_RECEIVED, data=received(), settings=settings)


async def _published_ids(settings: ServiceSettings, topic: str, expected: int) -> list[str]:
    records = await read_topic(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        topic=topic,
        until=lambda records: len(records) >= expected,
    )
    # Anything published twice would show up within a moment of the last expected record.
    records = await read_topic(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        topic=topic,
        until=lambda _: False,
        timeout_s=1.5,
    )
    return [dict(record.headers)["ce_id"].decode() for record in records]


async def test_one_replica_leads_and_hands_over_at_shutdown(system: System) -> None:
    probe = await _probe(system)
    settings, topic, db, collection = probe.settings, probe.topic, probe.db, probe.collection
    producers = [EventProducer(settings=settings) for _ in range(2)]
    relays = [
        OutboxRelay(db=db, collections=[collection.name], producer=producer, settings=settings)
        for producer in producers
    ]
    tasks = [asyncio.create_task(relay.run()) for relay in relays]
    try:
        first = [_entry(settings) for _ in range(20)]
        for entry in first:
            await collection.insert_one({"_id": str(uuid.uuid4()), **outbox_fields([entry])})
            for relay in relays:  # both replicas are woken, as writers on each would do
                relay.notify()
        await eventually(lambda: outbox_sent(collection), what="first batch published")
        lease = await db[LEASES].find_one({"_id": collection.name})
        assert lease is not None
        published = await _published_ids(settings, topic, expected=len(first))
        assert sorted(published) == sorted(entry["id"] for entry in first)  # once each

        leader = next(i for i, relay in enumerate(relays) if relay._owner == lease["owner"])
        await relays[leader].stop()
        await tasks[leader]
        assert await db[LEASES].find_one({"_id": collection.name}) is None  # given up at shutdown

        later = _entry(settings)
        await collection.insert_one({"_id": str(uuid.uuid4()), **outbox_fields([later])})
        await eventually(lambda: outbox_sent(collection), what="the standby took over")
        published = await _published_ids(settings, topic, expected=len(first) + 1)
        assert published.count(later["id"]) == 1
        lease = await db[LEASES].find_one({"_id": collection.name})
        assert lease["owner"] == relays[1 - leader]._owner
    finally:
        for relay in relays:
            await relay.stop()
        await asyncio.gather(*tasks)
        for producer in producers:
            await producer.stop()


class _WriterDuringSend(EventProducer):
    """Appends one more event to the document while the first is being sent."""

    def __init__(self, *, settings: ServiceSettings, collection, document_id: str) -> None:
        super().__init__(settings=settings)
        self.added: dict | None = None
        self._collection = collection
        self._document_id = document_id

    async def send(self, event, *, topic):
        if self.added is None:
            self.added = _entry(self._settings)
            await self._collection.update_one(
                {"_id": self._document_id}, outbox_update([self.added])
            )
        return await super().send(event, topic=topic)


async def test_an_event_added_while_a_batch_is_sent_stays_pending(system: System) -> None:
    probe = await _probe(system)
    settings, db, collection = probe.settings, probe.db, probe.collection
    document_id = str(uuid.uuid4())
    first = _entry(settings)
    await collection.insert_one({"_id": document_id, **outbox_fields([first])})
    producer = _WriterDuringSend(settings=settings, collection=collection, document_id=document_id)
    relay = OutboxRelay(db=db, collections=[collection.name], producer=producer, settings=settings)
    try:
        assert await relay.publish_batch(collection=collection.name) == 1
        document = await collection.find_one({"_id": document_id})
        assert producer.added is not None
        assert [entry["id"] for entry in document[OUTBOX_FIELD]] == [producer.added["id"]]
        assert PENDING_SINCE_FIELD in document  # still pending: the relay comes back for it

        assert await relay.publish_batch(collection=collection.name) == 1
        document = await collection.find_one({"_id": document_id})
        assert document[OUTBOX_FIELD] == [] and PENDING_SINCE_FIELD not in document
    finally:
        await producer.stop()
