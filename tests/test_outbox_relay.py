"""Integration: the outbox relay against real MongoDB and Kafka.

One replica's relay leads a collection's outbox at a time, hands over at
shutdown, never drops an event added while a batch was in flight, and polls
less while its polls find nothing.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from pymongo import AsyncMongoClient, monitoring
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import AutoReconnect

from complaints_shared import aggregate
from complaints_shared import outbox as outbox_module
from complaints_shared.aggregate import Aggregate, Decision
from complaints_shared.events import EventType, Topic
from complaints_shared.kafka import EventProducer, ensure_topics
from complaints_shared.outbox import (
    LEASES,
    OUTBOX_FIELD,
    PENDING_SINCE_FIELD,
    RELEASE_HELD_MARGIN,
    RELEASE_STATEMENT_SIZE,
    OutboxRelay,
    outbox_entry,
    outbox_fields,
    outbox_update,
    record_written,
    settle_published,
    take_published,
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
            # Under the system's own prefix: its topics go with the system's.
            "topic_prefix": f"{system.intake_settings.topic_prefix}relay{uuid.uuid4().hex[:8]}.",
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


async def test_a_standby_takes_a_lease_given_back_at_once(system: System) -> None:
    """A stopping leader gives its lease back so that a peer takes over at once; the peer
    had noted when the lease would run out, as last seen, and stood by until then, so
    nobody published for up to a whole lease on every rolling restart."""
    probe = await _probe(system)
    settings, db, collection = probe.settings, probe.db, probe.collection
    producer = EventProducer(settings=settings)
    leader, standby = (
        OutboxRelay(db=db, collections=[collection.name], producer=producer, settings=settings)
        for _ in range(2)
    )
    try:
        assert await leader._lead(collection.name)
        assert not await standby._lead(collection.name)  # stands by, the lease's end noted
        await leader._give_up_leases()
        assert await standby._lead(collection.name)  # at once, not at the noted end
        lease = await db[LEASES].find_one({"_id": collection.name})
        assert lease["owner"] == standby._owner
    finally:
        await producer.stop()


class _WriterDuringSend(EventProducer):
    """Appends one more event to the document while the first is being sent."""

    def __init__(self, *, settings: ServiceSettings, collection, document_id: str) -> None:
        super().__init__(settings=settings)
        self.added: dict | None = None
        self._collection = collection
        self._document_id = document_id

    async def send_in_order(self, records):
        if self.added is None:
            self.added = _entry(self._settings)
            await self._collection.update_one(
                {"_id": self._document_id}, outbox_update([self.added])
            )
        return await super().send_in_order(records)


class _DiscardedAfterFirstSend(EventProducer):
    """Its producer is discarded right after the first event is queued on it: a delivery
    failing with the producer's state lost (OutOfOrderSequenceNumber, say) while the relay
    waits inside the next send for room in a full batch."""

    def __init__(self, *, settings: ServiceSettings) -> None:
        super().__init__(settings=settings)
        self.producers_used: list[int] = []

    async def _connected(self):
        producer = await super()._connected()
        if getattr(producer, "_discard_hooked", False):
            return producer
        send, owner = producer.send, self

        async def send_then_lose_state(*args, **kwargs):
            delivery = await send(*args, **kwargs)
            owner.producers_used.append(id(producer))
            if len(owner.producers_used) == 1:
                owner._discard(producer, reason="injected")
            return delivery

        producer.send = send_then_lose_state
        producer._discard_hooked = True
        return producer


async def test_a_lease_whose_insert_answer_was_lost_is_taken_as_ours(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The relay's insert of its lease commits and its answer is lost (the connection drops).
    The next pass found the lease stored, took it for another replica's and stood by for the
    whole lease: nobody published that collection's events meanwhile. It is this relay's own,
    and it leads."""
    probe = await _probe(system)
    settings, db, collection = probe.settings, probe.db, probe.collection
    producer = EventProducer(settings=settings)
    relay = OutboxRelay(db=db, collections=[collection.name], producer=producer, settings=settings)
    insert_one = AsyncCollection.insert_one

    async def answer_lost(self: AsyncCollection, document: dict, *args, **kwargs):
        answer = await insert_one(self, document, *args, **kwargs)
        if self.name == LEASES:
            raise AutoReconnect("connection closed after the insert (injected)")
        return answer

    try:
        with monkeypatch.context() as patch:
            patch.setattr(AsyncCollection, "insert_one", answer_lost)
            with pytest.raises(AutoReconnect):
                await relay._lead(collection.name)
        assert (await db[LEASES].find_one({"_id": collection.name}))["owner"] == relay._owner
        assert await relay._lead(collection.name)
    finally:
        await producer.stop()


async def test_events_after_a_producer_is_discarded_wait_for_the_next_round(
    system: System,
) -> None:
    """A complaint's two events in a round; the producer is discarded once the first is queued
    on it. The relay sent the second through a new producer in the same round, which could
    deliver it before the first still in the old one (a reopen before its resolution: routing
    refused it). Now the round ends there and the next sends the rest, in order."""
    probe = await _probe(system)
    settings, db, collection = probe.settings, probe.db, probe.collection
    # One complaint's two events: one key, one partition, whose order the topic keeps.
    complaint = received()
    first, second = (
        outbox_entry(event_type=EventType.COMPLAINT_RECEIVED, data=data, settings=settings)
        for data in (complaint, complaint.model_copy(update={"subject": "又来了"}))
    )
    await collection.insert_one({"_id": "one", **outbox_fields([first, second])})
    producer = _DiscardedAfterFirstSend(settings=settings)
    relay = OutboxRelay(db=db, collections=[collection.name], producer=producer, settings=settings)
    try:
        await relay.publish_batch(collection=collection.name)
        assert len(producer.producers_used) == 1, "nothing more through a new producer"
        await relay.release_published(collection=collection.name)
        stored = await collection.find_one({"_id": "one"})
        assert second["id"] in [entry["id"] for entry in stored[OUTBOX_FIELD]]

        async def all_sent() -> bool:
            await relay.publish_batch(collection=collection.name)
            await relay.release_published(collection=collection.name)
            return (await collection.find_one({"_id": "one"}))[OUTBOX_FIELD] == []

        await eventually(all_sent, what="the rest sent by later rounds")
        assert len(set(producer.producers_used[1:])) == 1  # the rest through one producer
        records = await read_topic(
            bootstrap_servers=settings.kafka_bootstrap_servers,
            topic=probe.topic,
            until=lambda records: False,
            timeout_s=1.0,
        )
        ids = [dict(record.headers)["ce_id"].decode() for record in records]
        assert second["id"] in ids
        assert ids.index(first["id"]) < ids.index(second["id"])
    finally:
        await producer.stop()


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
        await relay.release_published(collection=collection.name)
        document = await collection.find_one({"_id": document_id})
        assert producer.added is not None
        assert [entry["id"] for entry in document[OUTBOX_FIELD]] == [producer.added["id"]]
        assert PENDING_SINCE_FIELD in document  # still pending: the relay comes back for it

        assert await relay.publish_batch(collection=collection.name) == 1
        await relay.release_published(collection=collection.name)
        document = await collection.find_one({"_id": document_id})
        assert document[OUTBOX_FIELD] == [] and PENDING_SINCE_FIELD not in document
    finally:
        await producer.stop()


class _UpdateStatements(monitoring.CommandListener):
    """The statements of each ``update`` command the server receives."""

    def __init__(self) -> None:
        self.commands: list[list[dict]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "update":
            self.commands.append(list(event.command["updates"]))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


async def test_a_release_is_one_command_of_short_statements(system: System) -> None:
    """The local server locks a collection's writes for a whole statement: a release of
    many documents is one command whose statements each take a few of them."""
    probe = await _probe(system)
    statements = _UpdateStatements()
    client = AsyncMongoClient(
        system.intake_settings.mongodb_uri, tz_aware=True, event_listeners=[statements]
    )
    collection = client[probe.db.name][probe.collection.name]
    producer = EventProducer(settings=probe.settings)
    relay = OutboxRelay(
        db=client[probe.db.name],
        collections=[collection.name],
        producer=producer,
        settings=probe.settings,
    )
    try:
        ids = [str(uuid.uuid4()) for _ in range(2 * RELEASE_STATEMENT_SIZE + 2)]
        await collection.insert_many(
            [{"_id": document_id, **outbox_fields([_entry(probe.settings)])} for document_id in ids]
        )
        assert await relay.publish_batch(collection=collection.name) == len(ids)
        # One document gets an event after the batch was sent: it must stay pending.
        added = _entry(probe.settings)
        await collection.update_one({"_id": ids[7]}, outbox_update([added]))
        statements.commands.clear()
        await relay.release_published(collection=collection.name)
        assert len(statements.commands) == 1
        assert [len(statement["q"]["_id"]["$in"]) for statement in statements.commands[0]] == [
            RELEASE_STATEMENT_SIZE,
            RELEASE_STATEMENT_SIZE,
            2,
        ]
        documents = {d["_id"]: d async for d in collection.find({})}
        for document_id in ids:
            document = documents[document_id]
            if document_id == ids[7]:
                assert [entry["id"] for entry in document[OUTBOX_FIELD]] == [added["id"]]
                assert PENDING_SINCE_FIELD in document
            else:
                assert document[OUTBOX_FIELD] == [] and PENDING_SINCE_FIELD not in document
    finally:
        await producer.stop()
        await client.close()


class _CommandCounter(monitoring.CommandListener):
    """Counts the relay's reads and writes of one collection, as the server receives them."""

    def __init__(self, collection: str) -> None:
        self.collection = collection
        self.finds = 0
        self.updates = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "find" and event.command.get("find") == self.collection:
            self.finds += 1
        if event.command_name == "update" and event.command.get("update") == self.collection:
            self.updates += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


# ``await counted_relay(probe, outbox_release_delay_s=3.0)``: a relay of the probe's collection
# on a client of its own, with settings overridden, and the counter of that client's commands.
CountedRelay = Callable[..., Awaitable[tuple[OutboxRelay, _CommandCounter]]]


@pytest.fixture
async def counted_relay(system: System) -> AsyncIterator[CountedRelay]:
    """Makes relays whose reads and writes are counted; after the test, whatever happened in
    it, every producer they were given is stopped and every client closed.

    It depends on ``system`` so that this happens before the system's topics are deleted:
    a producer left running kept asking for the metadata of its deleted topic for the
    rest of the session (``Topic ... not found in cluster metadata`` in later tests).
    The test itself still stops the relay and awaits its task.
    """
    producers: list[EventProducer] = []
    clients: list[AsyncMongoClient] = []

    async def make(probe: Probe, **settings: float) -> tuple[OutboxRelay, _CommandCounter]:
        counter = _CommandCounter(probe.collection.name)
        client = AsyncMongoClient(probe.settings.mongodb_uri, event_listeners=[counter])
        clients.append(client)
        producer = EventProducer(settings=probe.settings)
        producers.append(producer)
        relay = OutboxRelay(
            db=client[probe.db.name],
            collections=[probe.collection.name],
            producer=producer,
            settings=probe.settings.model_copy(update=settings),
        )
        return relay, counter

    try:
        yield make
    finally:
        async with AsyncExitStack() as closing:  # each one, even when another fails
            for producer in producers:
                closing.push_async_callback(producer.stop)
            for client in clients:
                closing.push_async_callback(client.close)


async def test_idle_polls_back_off_yet_find_an_unannounced_event(system: System) -> None:
    """Polls that find nothing space out up to the idle interval; an event written by
    another replica (no notify) is still published within that interval."""
    probe = await _probe(system)
    settings = probe.settings.model_copy(update={"outbox_idle_poll_interval_s": 0.8})
    counter = _CommandCounter(probe.collection.name)
    client = AsyncMongoClient(settings.mongodb_uri, event_listeners=[counter])
    db = client[probe.db.name]
    producer = EventProducer(settings=settings)
    relay = OutboxRelay(
        db=db, collections=[probe.collection.name], producer=producer, settings=settings
    )
    task = asyncio.create_task(relay.run())
    try:
        started = time.monotonic()
        await eventually(
            lambda: relay.poll_interval_s(collection=probe.collection.name) == 0.8,
            what="polls backed off to the idle interval",
        )
        # Empty polls after 0, 0.1, 0.3, 0.7 s: at the shortest interval it would be one per 0.1 s.
        idle_polls = counter.finds
        assert idle_polls <= 6, idle_polls
        assert time.monotonic() - started < 3
        await asyncio.sleep(0.8 * 2)  # two idle intervals: two more polls, not sixteen
        assert counter.finds - idle_polls <= 3, counter.finds

        written_at = time.monotonic()
        unannounced = _entry(settings)
        await probe.collection.insert_one(
            {"_id": str(uuid.uuid4()), **outbox_fields([unannounced])}
        )
        await eventually(
            lambda: _count_published(probe, 1), what="unannounced event published", interval_s=0.05
        )
        assert time.monotonic() - written_at < 0.8 + 0.7  # the idle interval, plus a send
        assert await _published_ids(settings, probe.topic, expected=1) == [unannounced["id"]]
    finally:
        await relay.stop()
        await task
        await producer.stop()
        await client.close()


async def test_an_event_stamped_by_a_replica_whose_clock_runs_ahead_goes_out_at_the_next_poll(
    system: System,
) -> None:
    """Each writer stamps its pending documents with its own clock, and its relay, a standby,
    drops its announcements. The leader polled for documents pending since its own now at
    the latest: those of a replica two minutes ahead waited two minutes."""
    probe = await _probe(system)
    producer = EventProducer(settings=probe.settings)
    relay = OutboxRelay(
        db=probe.db, collections=[probe.collection.name], producer=producer, settings=probe.settings
    )
    task = asyncio.create_task(relay.run())
    try:
        ahead = _entry(probe.settings)
        await probe.collection.insert_one(
            {
                "_id": str(uuid.uuid4()),
                **outbox_fields([ahead]),
                PENDING_SINCE_FIELD: datetime.now(UTC) + timedelta(minutes=2),
            }
        )
        assert await _published_ids(probe.settings, probe.topic, expected=1) == [ahead["id"]]
    finally:
        await relay.stop()
        await task
        await producer.stop()


async def test_only_events_pending_a_while_make_the_polls_hurry(
    system: System, counted_relay: CountedRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A poll that finds a document written a moment ago (under load mostly a write of this
    process whose announcement is on its way) publishes it and keeps backing off; one pending
    for longer than ``IN_FLIGHT_S`` was left by someone else, and the polls hurry."""
    # Long enough for the next poll to find the young one within it on a busy machine.
    monkeypatch.setattr(outbox_module, "IN_FLIGHT_S", 4.0)
    probe = await _probe(system)
    relay, _ = await counted_relay(probe, outbox_idle_poll_interval_s=0.5)
    name = probe.collection.name
    task = asyncio.create_task(relay.run())
    try:
        await eventually(lambda: relay.poll_interval_s(collection=name) == 0.5, what="backed off")
        young = _entry(probe.settings)
        await probe.collection.insert_one({"_id": str(uuid.uuid4()), **outbox_fields([young])})
        await eventually(lambda: _count_published(probe, 1), what="the young one published")
        assert relay.poll_interval_s(collection=name) == 0.5

        left = _entry(probe.settings)
        fields = {
            **outbox_fields([left]),
            PENDING_SINCE_FIELD: datetime.now(UTC)
            - timedelta(seconds=outbox_module.IN_FLIGHT_S + 5),
        }
        await probe.collection.insert_one({"_id": str(uuid.uuid4()), **fields})
        shortest = probe.settings.outbox_poll_interval_s
        await eventually(
            lambda: relay.poll_interval_s(collection=name) == shortest, what="the polls hurry"
        )
        published = await _published_ids(probe.settings, probe.topic, expected=2)
        assert sorted(published) == sorted([young["id"], left["id"]])  # once each
    finally:
        await relay.stop()
        await task


async def test_published_events_are_released_together_and_before_stopping(
    system: System, counted_relay: CountedRelay
) -> None:
    """Events published within ``outbox_release_delay_s`` leave their documents in one
    write; a relay that stops releases what it published first."""
    probe = await _probe(system)
    # Long enough for the six, published one by one, to fall within one release.
    relay, counter = await counted_relay(probe, outbox_release_delay_s=8.0)
    task = asyncio.create_task(relay.run())
    try:
        entries = [_entry(probe.settings) for _ in range(6)]
        for entry in entries:  # one at a time, each announced: six reads, six sends
            await probe.collection.insert_one({"_id": str(uuid.uuid4()), **outbox_fields([entry])})
            relay.notify()
            await asyncio.sleep(0.05)
        published = await _published_ids(probe.settings, probe.topic, expected=len(entries))
        assert sorted(published) == sorted(entry["id"] for entry in entries)  # once each
        await eventually(lambda: outbox_sent(probe.collection), timeout_s=20, what="all released")
        assert counter.updates == 1  # one write released the six documents

        last = _entry(probe.settings)
        await probe.collection.insert_one({"_id": str(uuid.uuid4()), **outbox_fields([last])})
        relay.notify()
        await eventually(
            lambda: _count_published(probe, len(entries) + 1), what="the last one published"
        )
    finally:
        await relay.stop()
        await task
    assert await outbox_sent(probe.collection)  # released at shutdown, not left to the delay
    assert counter.updates == 2


async def test_each_document_waits_the_release_delay_from_its_own_publication(
    system: System,
    counted_relay: CountedRelay,
) -> None:
    """A release takes the documents whose events went out the delay ago or earlier, not
    the younger ones beside them: a document's next write (routing's decision, for a
    complaint) keeps the whole delay to take its events out itself. The relay's polls
    meanwhile send none of the owed events again."""
    probe = await _probe(system)
    relay, counter = await counted_relay(probe, outbox_release_delay_s=4.0)
    task = asyncio.create_task(relay.run())
    name = probe.collection.name

    async def released(document_id: str) -> bool:
        stored = await probe.collection.find_one({"_id": document_id})
        return PENDING_SINCE_FIELD not in stored

    try:
        older, younger = str(uuid.uuid4()), str(uuid.uuid4())
        entries = [_entry(probe.settings) for _ in range(2)]
        await probe.collection.insert_one({"_id": older, **outbox_fields([entries[0]])})
        relay.notify()
        await eventually(lambda: relay.owed(collection=name) == 1, what="the older published")
        await asyncio.sleep(3.0)
        await probe.collection.insert_one({"_id": younger, **outbox_fields([entries[1]])})
        relay.notify()
        await eventually(lambda: relay.owed(collection=name) == 2, what="the younger published")

        await eventually(lambda: released(older), timeout_s=10, what="the older released")
        assert not await released(younger)  # out for about 1 s of its 4
        assert counter.updates == 1 and relay.owed(collection=name) == 1
        await eventually(lambda: released(younger), timeout_s=10, what="the younger released")
        assert counter.updates == 2
        published = await _published_ids(probe.settings, probe.topic, expected=2)
        assert sorted(published) == sorted(entry["id"] for entry in entries)  # once each
    finally:
        await relay.stop()
        await task


async def test_written_events_go_out_from_the_announcement_without_a_read(
    system: System,
    counted_relay: CountedRelay,
) -> None:
    """A write hands the relay the document's outbox as written: the relay publishes the
    new events at once without reading the document, leaves out what it published
    already (its release still to come) and what it removed lately, and releases the
    document's events together later."""
    probe = await _probe(system)
    # Polls as rare as they come: after the first, every read would be one too many.
    relay, counter = await counted_relay(
        probe, outbox_release_delay_s=3.0, outbox_poll_interval_s=60, outbox_idle_poll_interval_s=60
    )
    task = asyncio.create_task(relay.run())
    try:
        await eventually(lambda: counter.finds >= 1, what="the first poll")
        document_id = str(uuid.uuid4())
        first = _entry(probe.settings)
        document = {"_id": document_id, **outbox_fields([first])}
        await probe.collection.insert_one(document)
        record_written(
            probe.collection.name, database=probe.db.name, document_id=document_id, outbox=[first]
        )
        await eventually(lambda: _count_published(probe, 1), what="the first event published")

        second = _entry(probe.settings)
        await probe.collection.update_one({"_id": document_id}, outbox_update([second]))
        # What the aggregate kernel does after such a write: the outbox as it wrote it.
        record_written(
            probe.collection.name,
            database=probe.db.name,
            document_id=document_id,
            outbox=[first, second],
        )
        await eventually(lambda: _count_published(probe, 2), what="the second event published")
        await eventually(lambda: outbox_sent(probe.collection), what="both released")
        assert counter.updates == 1  # one write released both

        # A stale announcement (its writer read the document before the release) sends
        # nothing again.
        record_written(
            probe.collection.name,
            database=probe.db.name,
            document_id=document_id,
            outbox=[first, second],
        )
        published = await _published_ids(probe.settings, probe.topic, expected=2)
        assert sorted(published) == sorted([first["id"], second["id"]])  # once each
        assert counter.finds == 1  # the first poll only: nothing was read back
    finally:
        await relay.stop()
        await task


async def test_two_writers_handed_one_documents_events_keep_them_from_being_sent_again(
    system: System,
    counted_relay: CountedRelay,
) -> None:
    """Writes of one document running together (a command and a projection) are each
    handed what the relay had published when they asked; one settling first leaves the
    other's events known, so an announcement that still lists them sends nothing twice."""
    probe = await _probe(system)
    relay, _ = await counted_relay(probe, outbox_release_delay_s=30)
    task = asyncio.create_task(relay.run())
    where = {
        "database": probe.db.name,
        "collection": probe.collection.name,
        "document_id": str(uuid.uuid4()),
    }

    def announce(*outbox: dict) -> None:
        record_written(
            where["collection"],
            database=where["database"],
            document_id=where["document_id"],
            outbox=list(outbox),
        )

    try:
        first, second, third = (_entry(probe.settings) for _ in range(3))
        await probe.collection.insert_one({"_id": where["document_id"], **outbox_fields([first])})
        announce(first)
        await eventually(lambda: relay.owed(collection=probe.collection.name) == 1, what="first")
        held_by_one = take_published(**where)  # a writer still deciding
        assert held_by_one == [first["id"]]
        announce(first, second)  # another write (handed nothing) added the second
        await eventually(lambda: _count_published(probe, 2), what="the second published")
        held_by_other = take_published(**where)
        assert held_by_other == [second["id"]]
        settle_published(**where, event_ids=held_by_other, removed=True)  # it wrote first
        announce(first, third)  # a write that read the document before the first's removal
        await eventually(lambda: _count_published(probe, 3), what="the third published")
        settle_published(**where, event_ids=held_by_one, removed=False)  # its write failed
        published = await _published_ids(probe.settings, probe.topic, expected=3)
        assert sorted(published) == sorted(entry["id"] for entry in (first, second, third))
        assert relay.owed(collection=probe.collection.name) == 1  # the first, to release
    finally:
        await relay.stop()
        await task


async def test_the_next_write_of_a_document_removes_what_the_relay_published(
    system: System,
    counted_relay: CountedRelay,
) -> None:
    """A kernel write of a document drops the events the relay already published from its
    outbox in the same write, so the relay owes no write of its own for them."""
    probe = await _probe(system)
    relay, counter = await counted_relay(probe, outbox_release_delay_s=30)
    kind = Aggregate(collection=probe.collection.name, what="probe")
    task = asyncio.create_task(relay.run())
    try:
        document_id = str(uuid.uuid4())
        first = _entry(probe.settings)
        await probe.collection.insert_one(
            {"_id": document_id, "version": 1, **outbox_fields([first])}
        )
        relay.notify()
        await eventually(
            lambda: relay.owed(collection=probe.collection.name) == 1, what="first published"
        )

        def decide(current: dict) -> Decision:
            return Decision(
                {"$set": {"seen": True}}, events=[(EventType.COMPLAINT_RECEIVED, received())]
            )

        await aggregate.change(
            db=probe.db,
            settings=probe.settings,
            aggregate=kind,
            aggregate_id=document_id,
            decide=decide,
            now=datetime.now(UTC),
        )
        stored = await probe.collection.find_one({"_id": document_id})
        (second,) = stored[OUTBOX_FIELD]  # the first is gone, the new one waits
        assert second["id"] != first["id"] and PENDING_SINCE_FIELD in stored
        assert relay.owed(collection=probe.collection.name) == 0

        relay.notify()
        await eventually(lambda: _count_published(probe, 2), what="the new event published")
        assert counter.updates == 0  # the relay wrote nothing for the first event
    finally:
        await relay.stop()
        await task
    assert counter.updates == 1  # the second one, released at shutdown
    assert await outbox_sent(probe.collection)
    published = await _published_ids(probe.settings, probe.topic, expected=2)
    assert sorted(published) == sorted([first["id"], second["id"]])  # once each


async def test_a_document_whose_next_write_runs_behind_waits_for_it(
    system: System, counted_relay: CountedRelay
) -> None:
    """While writes of this process keep taking published events out of the collection's
    documents, one at a time and each later than the release delay (a pipeline running
    behind), the relay writes nothing of its own for the documents they have not reached:
    each leaves with its own next write. A document no write takes is released once the
    writes stop coming, not before."""
    probe = await _probe(system)
    delay = 1.0
    relay, counter = await counted_relay(probe, outbox_release_delay_s=delay)
    name = probe.collection.name
    task = asyncio.create_task(relay.run())

    async def pending(document_id: str) -> bool:
        stored = await probe.collection.find_one({"_id": document_id})
        return PENDING_SINCE_FIELD in stored

    try:
        taken_by_writes = [str(uuid.uuid4()) for _ in range(5)]
        left_alone = str(uuid.uuid4())
        for document_id in [*taken_by_writes, left_alone]:
            entry = _entry(probe.settings)
            await probe.collection.insert_one({"_id": document_id, **outbox_fields([entry])})
            record_written(name, database=probe.db.name, document_id=document_id, outbox=[entry])
        await eventually(lambda: relay.owed(collection=name) == 6, what="all six published")

        for document_id in taken_by_writes:  # the last one 4 s after its publication
            await asyncio.sleep(0.8)
            where = {"database": probe.db.name, "collection": name, "document_id": document_id}
            taken = take_published(**where)
            assert len(taken) == 1, "the relay released it before its write"
            (event_id,) = taken
            await probe.collection.update_one(
                {"_id": document_id},
                {"$set": {OUTBOX_FIELD: []}, "$unset": {PENDING_SINCE_FIELD: ""}},
            )
            settle_published(**where, event_ids=[event_id], removed=True)
            assert counter.updates == 0  # the relay waited for every write
        writes_stopped = time.monotonic()
        assert await pending(left_alone)

        await eventually(lambda: relay.owed(collection=name) == 0, timeout_s=8, what="released")
        assert not await pending(left_alone)
        assert counter.updates == 1  # the one document no write took
        # Released once the writes had stopped for the margin, not as soon as it was due.
        assert time.monotonic() - writes_stopped >= (RELEASE_HELD_MARGIN - 0.5) * delay
        published = await _published_ids(probe.settings, probe.topic, expected=6)
        assert len(published) == len(set(published)) == 6  # once each
    finally:
        await relay.stop()
        await task


async def _count_published(probe: Probe, expected: int) -> bool:
    records = await read_topic(
        bootstrap_servers=probe.settings.kafka_bootstrap_servers,
        topic=probe.topic,
        until=lambda records: len(records) >= expected,
        timeout_s=0.5,
    )
    return len(records) >= expected


async def test_an_event_another_replica_adds_to_a_published_document_goes_out_at_the_next_poll(
    system: System,
) -> None:
    """The leader published document X and owes its release (10 s here). Another replica,
    whose relay is a standby (it drops its own announcements), then adds an event to X: a
    second request about the complaint, a timer firing there. Polls left owed documents out,
    so the event waited for X's release (up to 20 delays, a minute, under load). The poll
    now reads the owed documents' event ids and sends what the relay has not: once each."""
    probe = await _probe(system)
    settings = probe.settings.model_copy(
        update={"outbox_release_delay_s": 10.0, "outbox_idle_poll_interval_s": 1.0}
    )
    producer = EventProducer(settings=settings)
    relay = OutboxRelay(
        db=probe.db, collections=[probe.collection.name], producer=producer, settings=settings
    )
    task = asyncio.create_task(relay.run())
    name = probe.collection.name
    try:
        first, added = _entry(settings), _entry(settings)
        await probe.collection.insert_one({"_id": "X", **outbox_fields([first])})
        record_written(name, database=probe.db.name, document_id="X", outbox=[first])
        await eventually(lambda: relay.owed(collection=name) == 1, what="X published")
        # The other replica's write: no announcement reaches this relay.
        await probe.collection.update_one({"_id": "X"}, outbox_update([added]))
        started = time.monotonic()
        published = await _published_ids(settings, probe.topic, expected=2)
        assert time.monotonic() - started < 5, "waited for the release"
        assert sorted(published) == sorted([first["id"], added["id"]])  # once each
        assert relay.owed(collection=name) == 1
        stored = await probe.collection.find_one({"_id": "X"})
        assert [entry["id"] for entry in stored[OUTBOX_FIELD]] == [first["id"], added["id"]]
    finally:
        await relay.stop()
        await task
        await producer.stop()  # before the system's topics are deleted
