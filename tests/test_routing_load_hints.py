"""Integration: owner choice on load hints and cached contexts stays exact (Kafka, Mongo).

Routing ranks people by a load hint kept on the staff document, reuses the
directory it read for earlier complaints and keeps a department's people for a
second, applying its own assignments to that copy; none may change a decision: a hint
that drifted never queues a complaint someone has room for nor overfills an
owner, and a directory change is seen by the very next complaint.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from pymongo import AsyncMongoClient, monitoring
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import AutoReconnect

from complaints_shared.clock import SystemClock
from complaints_shared.events import ComplaintReceived, EventType
from routing.assignments import owed_drains, owners, queue
from routing.assignments.scheduler import SlaScheduler
from routing.directory import store as directory_store
from routing.directory.models import StaffRead
from tests.support.events import received, resolved
from tests.support.faults import FailsFirst
from tests.support.http import token
from tests.support.kafka import handled_count, intake_producer
from tests.support.routing import FAST_TIMERS, assignment_when, routing_db
from tests.support.system import System, SystemFactory
from tests.support.waits import eventually

pytestmark = pytest.mark.integration


class Finds(monitoring.CommandListener):
    """The filters of the finds a client sends to one collection (``command="aggregate"``:
    the first ``$match`` of its aggregations)."""

    def __init__(self, collection: str, *, command: str = "find") -> None:
        self.collection = collection
        self.command = command
        self.filters: list[dict] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        sent = event.command
        if event.command_name != self.command or sent.get(self.command) != self.collection:
            return
        if self.command == "aggregate":
            self.filters.append((sent.get("pipeline") or [{}])[0].get("$match", {}))
        else:
            self.filters.append(sent.get("filter", {}))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


# ``watched(system, listener)``: routing's database, on a client whose commands ``listener`` sees.
Watched = Callable[[System, Finds], AsyncDatabase]


@pytest.fixture
async def watched(system_factory: SystemFactory) -> AsyncIterator[Watched]:
    """Gives watched clients of routing's database; each is closed after the test, whatever
    happened in it, and before the systems stop (it depends on ``system_factory``)."""
    clients: list[AsyncMongoClient] = []

    def watch(system: System, listener: Finds) -> AsyncDatabase:
        client = AsyncMongoClient(
            system.routing_settings.mongodb_uri, tz_aware=True, event_listeners=[listener]
        )
        clients.append(client)
        return client[routing_db(system).name]

    try:
        yield watch
    finally:
        for client in clients:
            await client.close()


def _open_assignment(assignment_id: str, *, owner_id: str, slot: int) -> dict[str, Any]:
    """An open assignment of ``owner_id`` holding their slot ``slot``, as a test stores it."""
    return {
        "_id": assignment_id,
        "org": "demo",
        "owner_id": owner_id,
        "status": "open",
        **owners.slot_fields("demo", owner_id, slot),
    }


async def _duty_officer_holding(db: AsyncDatabase, held: int, *, prefix: str) -> StaffRead:
    """The hospital's duty officer with ``held`` open assignments in slots 0..held-1 (ids
    ``<prefix>-<n>``) and a load hint that says so; no desk kept."""
    await db.assignments.insert_many(
        [_open_assignment(f"{prefix}-{n}", owner_id="hosp-duty", slot=n) for n in range(held)]
    )
    await db.staff.update_one({"_id": "demo:hosp-duty"}, {"$set": {"load_hint": held}})
    directory_store.forget_desks()
    duty = await directory_store.find_staff(db=db, org="demo", staff_id="hosp-duty")
    assert duty is not None
    return duty


def _hotel(description: str):
    return received(branch="HOTEL", category="service_attitude", description=description)


async def _queued_behind_a_full_desk(system: System, *descriptions: str) -> list[ComplaintReceived]:
    """hotel-ma (the hotel front desk's one person with capacity) at capacity 1 with one open
    complaint, and a complaint of each description queued behind it at the front desk."""
    await _set_capacity(system, "hotel-ma", 1)
    first, waiting = _hotel("前台态度冷淡"), [_hotel(text) for text in descriptions]
    async with intake_producer(system) as publish:
        await publish(EventType.COMPLAINT_RECEIVED, first)
        await assignment_when(system, first.complaint_id, lambda d: d["status"] == "open")
        for complaint in waiting:
            await publish(EventType.COMPLAINT_RECEIVED, complaint)
            queued = await assignment_when(system, complaint.complaint_id)
            assert (queued["status"], queued["owner_id"]) == ("queued", None)
            assert queued["department"] == "HOTEL:FRONT"
    return waiting


async def _owed_a_drain(system: System) -> None:
    """Wait for the front desk owed a drain: noted just after a complaint is stored queued
    (and taken by the service's own sweeper unless it waits, as ``ONLY_THE_TESTS_SWEEPS``)."""
    db = routing_db(system)
    await eventually(
        lambda: ("demo", "HOTEL:FRONT") in owed_drains.departments(db=db), what="a drain owed"
    )


async def _hint_becomes(system: System, staff_id: str, expected: int) -> None:
    async def reached() -> bool:
        return await _hint(system, staff_id) == expected

    await eventually(reached, timeout_s=10, what=f"load hint of {staff_id} at {expected}")


async def _hint(system: System, staff_id: str) -> int | None:
    document = await routing_db(system).staff.find_one({"_id": f"demo:{staff_id}"})
    return document.get("load_hint")


async def _set_capacity(system: System, staff_id: str, capacity: int) -> None:
    patched = await system.routing.patch(
        f"/v1/directory/staff/{staff_id}",
        json={"capacity": capacity},
        headers=token(system.routing_settings),
    )
    assert patched.status_code == 200, patched.text


async def _context_reads(system: System) -> dict[str, float]:
    text = (await system.routing.get("/metrics")).text
    pattern = r'complaints_routing_context_reads_total\{source="(\w+)"\} ([0-9.e+]+)'
    return {source: float(value) for source, value in re.findall(pattern, text)}


async def test_hints_follow_assignments_and_finishes(system_factory: SystemFactory) -> None:
    system = await system_factory(routing=FAST_TIMERS)
    first, second = _hotel("前台态度冷淡"), _hotel("房间没有打扫")
    async with intake_producer(system) as publish:
        for complaint in (first, second):
            await publish(EventType.COMPLAINT_RECEIVED, complaint)
            document = await assignment_when(
                system, complaint.complaint_id, lambda d: d["status"] == "open"
            )
            assert document["owner_id"] == "hotel-ma"
        # The hint is counted just after the assignment is stored, so it may trail it a moment.
        await _hint_becomes(system, "hotel-ma", 2)
        await publish(EventType.COMPLAINT_RESOLVED, resolved(first))
        await assignment_when(system, first.complaint_id, lambda d: d["status"] == "resolved")
    await _hint_becomes(system, "hotel-ma", 1)
    # Nothing drifted, so the recount changes nothing.
    assert await owners.reconcile_load_hints(db=routing_db(system)) == 0


async def test_slots_freed_out_of_order_are_taken_again_first(
    system_factory: SystemFactory,
) -> None:
    """Work finishes out of order, so an owner's free slots are gaps below the load hint.
    Each finish records its slot on the staff document and the next assignments take those
    slots, lowest first, so an owner's slot numbers stay 0..load-1."""
    system = await system_factory(routing=FAST_TIMERS)
    complaints = [_hotel(f"第{n}次投诉：热水不热") for n in range(5)]
    slots: dict[str, int] = {}
    async with intake_producer(system) as publish:
        for complaint in complaints:
            await publish(EventType.COMPLAINT_RECEIVED, complaint)
            document = await assignment_when(
                system, complaint.complaint_id, lambda d: d["status"] == "open"
            )
            assert document["owner_id"] == "hotel-ma"
            slots[complaint.complaint_id] = document["owner_slot_no"]
        assert sorted(slots.values()) == [0, 1, 2, 3, 4]
        finished = [c for c in complaints if slots[c.complaint_id] in (3, 1)]
        for complaint in finished:
            await publish(EventType.COMPLAINT_RESOLVED, resolved(complaint))
            await assignment_when(
                system, complaint.complaint_id, lambda d: d["status"] == "resolved"
            )
        await _hint_becomes(system, "hotel-ma", 3)
        staff = await routing_db(system).staff.find_one({"_id": "demo:hotel-ma"})
        assert staff["freed_slots"] == [1, 3]

        later = [_hotel("空调一直在响"), _hotel("早餐供应不足")]
        taken = []
        for complaint in later:
            await publish(EventType.COMPLAINT_RECEIVED, complaint)
            document = await assignment_when(
                system, complaint.complaint_id, lambda d: d["status"] == "open"
            )
            taken.append((document["owner_id"], document["owner_slot_no"]))
    assert taken == [("hotel-ma", 1), ("hotel-ma", 3)]
    await _hint_becomes(system, "hotel-ma", 5)
    staff = await routing_db(system).staff.find_one({"_id": "demo:hotel-ma"})
    assert staff["freed_slots"] == []


async def test_a_hint_stuck_high_does_not_queue_work_someone_has_room_for(
    system_factory: SystemFactory,
) -> None:
    system = await system_factory(routing=FAST_TIMERS)
    await _set_capacity(system, "hotel-ma", 1)
    # As if routing crashed after counting five assignments that never happened.
    await routing_db(system).staff.update_one({"_id": "demo:hotel-ma"}, {"$set": {"load_hint": 5}})
    complaint = _hotel("空调坏了没人修")
    async with intake_producer(system) as publish:
        await publish(EventType.COMPLAINT_RECEIVED, complaint)
        document = await assignment_when(system, complaint.complaint_id)
    assert (document["status"], document["owner_id"]) == ("open", "hotel-ma")
    await _hint_becomes(system, "hotel-ma", 6)  # counted just after the assignment is stored
    assert await owners.reconcile_load_hints(db=routing_db(system)) == 1
    assert await _hint(system, "hotel-ma") == 1


async def test_a_hint_stuck_low_does_not_overfill_an_owner(system_factory: SystemFactory) -> None:
    system = await system_factory(routing=FAST_TIMERS)
    await _set_capacity(system, "hotel-ma", 1)
    first, second = _hotel("前台态度冷淡"), _hotel("早餐太差")
    async with intake_producer(system) as publish:
        await publish(EventType.COMPLAINT_RECEIVED, first)
        await assignment_when(system, first.complaint_id, lambda d: d["status"] == "open")
        await _hint_becomes(system, "hotel-ma", 1)
        # As if the count of the first assignment had been lost.
        await routing_db(system).staff.update_one(
            {"_id": "demo:hotel-ma"}, {"$set": {"load_hint": 0}}
        )
        await publish(EventType.COMPLAINT_RECEIVED, second)
        queued = await assignment_when(system, second.complaint_id)
    assert (queued["status"], queued["owner_id"]) == ("queued", None)
    open_slots = await routing_db(system).assignments.count_documents(
        {"owner_id": "hotel-ma", "status": "open"}
    )
    assert open_slots == 1


async def test_a_rule_change_reaches_the_next_complaint_through_the_cache(
    system_factory: SystemFactory,
) -> None:
    system = await system_factory()

    def by_keyword(description: str):
        # "话费" matches the keyword rule; category "other" keeps the category rule out.
        return received(category="other", description=f"{description}，话费不对")

    before = await _context_reads(system)
    first, second, third = by_keyword("上个月"), by_keyword("这个月"), by_keyword("下个月")
    async with intake_producer(system) as publish:
        await publish(EventType.COMPLAINT_RECEIVED, first)
        routed = await assignment_when(system, first.complaint_id)
        assert routed["department"] == "LZ:BILLING"

        changed = await system.routing.patch(
            "/v1/routing/rules/demo:billing-keywords",
            json={"action": {"department_kind": "sales"}},
            headers=token(system.routing_settings),
        )
        assert changed.status_code == 200, changed.text
        await publish(EventType.COMPLAINT_RECEIVED, second)
        routed = await assignment_when(system, second.complaint_id)
        assert (routed["department"], routed["rule_version"]) == ("LZ:SALES", 2)

        await publish(EventType.COMPLAINT_RECEIVED, third)
        routed = await assignment_when(system, third.complaint_id)
        assert routed["department"] == "LZ:SALES"
    after = await _context_reads(system)
    # Loaded for the first complaint and again after the change; the third one reused it.
    assert after.get("load", 0) - before.get("load", 0) == 2
    assert after.get("cache", 0) - before.get("cache", 0) == 1


async def test_the_desk_is_kept_a_moment_and_follows_this_processs_own_assignments(
    system_factory: SystemFactory,
    watched: Watched,
) -> None:
    """Owner choice reads a department's people at most once per ``DESK_MAX_AGE_S``; the
    kept copy takes this process's assignments at once (loads and the tie-break stay
    exact here), and a directory change made here is read at once."""
    system = await system_factory()
    staff_finds = Finds("staff")
    db = watched(system, staff_finds)
    person = await db.staff.find_one({"_id": "demo:hotel-ma"})
    department = person["department_id"]
    staff_finds.filters.clear()

    def desk_reads() -> int:
        return sum("department_id" in condition for condition in staff_finds.filters)

    directory_store.forget_desks()
    desk = await directory_store.desk(db=db, org="demo", department_id=department)
    hint = next(p for p in desk if p.id == "hotel-ma").open_load
    assert desk_reads() == 1
    now = datetime.now(UTC)
    await directory_store.record_assignment(
        db=db, org="demo", staff_id="hotel-ma", slot=hint, at=now
    )
    kept = await directory_store.desk(db=db, org="demo", department_id=department)
    assert desk_reads() == 1  # the kept copy, with the assignment applied as the database has it
    ma = next(p for p in kept if p.id == "hotel-ma")
    assert (ma.open_load, ma.last_assigned_at) == (hint + 1, now)
    stored = await db.staff.find_one({"_id": "demo:hotel-ma"})
    assert stored["load_hint"] == hint + 1

    # A directory change made here is read at once: by this call, or already by the
    # service offering the department's queue the room (the same process keeps one copy).
    await _set_capacity(system, "hotel-ma", 7)
    changed = await directory_store.desk(db=db, org="demo", department_id=department)
    assert next(p for p in changed if p.id == "hotel-ma").capacity == 7
    reads = desk_reads()
    await asyncio.sleep(directory_store.DESK_MAX_AGE_S)  # the copy's age is the point here
    await directory_store.desk(db=db, org="demo", department_id=department)
    assert desk_reads() == reads + 1  # too old: read again (other replicas' assignments show)


async def test_a_hint_behind_tries_the_slots_above_it_before_reading_every_assignment(
    system_factory: SystemFactory,
    watched: Watched,
) -> None:
    """Another replica took the next slots since this one read its desk: the slots above
    the hint are tried in the same indexed read; only when they are all taken are the
    owner's open assignments read, and a gap below is then found."""
    system = await system_factory()
    assignment_finds = Finds("assignments")
    finds = assignment_finds.filters
    db = watched(system, assignment_finds)

    async def hold(*numbers: int) -> None:
        await db.assignments.insert_many(
            [_open_assignment(f"held-{n}", owner_id="owner-x", slot=n) for n in numbers]
        )

    await hold(0, 1, 2)  # the hint says 1: slots 1 and 2 went to another replica meanwhile
    slot = await owners.likely_free_slot(
        db=db, org="demo", owner_id="owner-x", guess=1, freed=[], limit=9
    )
    assert slot == 3
    assert len(finds) == 1 and "owner_slot" in finds[0]

    await hold(3, 4, 5, 6)
    await db.assignments.delete_one({"_id": "held-0"})  # a gap below the hint
    finds.clear()
    slot = await owners.likely_free_slot(
        db=db, org="demo", owner_id="owner-x", guess=3, freed=[], limit=9
    )
    assert slot == 0
    assert len(finds) == 2 and finds[1].get("owner_id") == "owner-x"

    # Never at or beyond the capacity, whatever the hints say.
    async def likely(guess: int, freed: list[int]) -> int | None:
        return await owners.likely_free_slot(
            db=db, org="demo", owner_id="owner-x", guess=guess, freed=freed, limit=7
        )

    assert await likely(7, [8]) == 0
    await hold(0)
    assert await likely(5, [7, 9]) is None


async def test_a_duty_officers_slot_is_found_without_reading_their_open_assignments(
    system_factory: SystemFactory,
    watched: Watched,
) -> None:
    """A person chosen on purpose (the duty officer of the night, a supervisor, a reopen)
    has no cap and may hold hundreds of open complaints: their slot is found at their load
    hint in one indexed read, as for automatic choice, and their open assignments are read
    only when the hint is off. Reading them every time made each night-time complaint dearer
    than the last (docs/performance.md)."""
    system = await system_factory()
    assignment_finds = Finds("assignments")
    finds = assignment_finds.filters
    db = watched(system, assignment_finds)
    held = 300
    duty = await _duty_officer_holding(db, held, prefix="night")

    choice = await owners.forced_owner(db=db, org="demo", staff=duty)
    assert (choice.staff.id, choice.slot) == ("hosp-duty", held)
    assert len(finds) == 1 and "owner_slot" in finds[0]  # the slots at the hint, no more

    # A hint that is off (a crash between two writes): the open assignments are read and
    # the lowest free slot is still found, never one that is held.
    await db.assignments.delete_one({"_id": "night-7"})
    await db.staff.update_one({"_id": "demo:hosp-duty"}, {"$set": {"load_hint": 0}})
    directory_store.forget_desks()
    finds.clear()
    choice = await owners.forced_owner(db=db, org="demo", staff=duty)
    assert choice.slot == 7
    assert len(finds) == 2 and finds[1].get("owner_id") == "hosp-duty"


async def test_a_gap_below_the_hint_is_found_without_reading_the_owners_assignments(
    system_factory: SystemFactory,
    watched: Watched,
) -> None:
    """An owner with 300 open complaints finishes some out of order. Trying the slots at the
    load hint found none of those gaps, so nearly every assignment read all 300 open
    assignments (docs/performance.md); the slots freed lately are tried in the same indexed
    read instead, both by this process's copy of the desk and by one read afresh, and only
    the lowest ``FREED_SLOTS_KEPT`` are kept."""
    system = await system_factory()
    assignment_finds = Finds("assignments")
    finds = assignment_finds.filters
    db = watched(system, assignment_finds)
    held = 300
    duty = await _duty_officer_holding(db, held, prefix="busy")
    await directory_store.desk(db=db, org="demo", department_id=duty.department_id)

    async def finish(*numbers: int) -> None:
        for n in numbers:
            await db.assignments.update_one(
                {"_id": f"busy-{n}"}, {"$set": {"status": "resolved"}, **owners.FREE_SLOT}
            )
            await directory_store.record_release(db=db, org="demo", staff_id="hosp-duty", slot=n)

    async def take() -> int:
        choice = await owners.forced_owner(db=db, org="demo", staff=duty)
        await db.assignments.insert_one(
            _open_assignment(f"new-{choice.slot}", owner_id="hosp-duty", slot=choice.slot)
        )
        await directory_store.record_assignment(
            db=db, org="demo", staff_id="hosp-duty", slot=choice.slot, at=datetime.now(UTC)
        )
        return choice.slot

    await finish(170, 42, 255)
    stored = await db.staff.find_one({"_id": "demo:hosp-duty"})
    assert (stored["freed_slots"], stored["load_hint"]) == ([42, 170, 255], held - 3)
    finds.clear()
    assert await take() == 42  # from this process's copy of the desk
    directory_store.forget_desks()
    assert await take() == 170  # from the staff document, read afresh
    assert len(finds) == 2 and all("owner_slot" in f for f in finds)  # one indexed read each
    stored = await db.staff.find_one({"_id": "demo:hosp-duty"})
    assert stored["freed_slots"] == [255]

    # Another replica took 255 meanwhile: the slots at the hint are tried in the same read.
    await db.assignments.insert_one(_open_assignment("elsewhere", owner_id="hosp-duty", slot=255))
    finds.clear()
    choice = await owners.forced_owner(db=db, org="demo", staff=duty)
    assert choice.slot == held and len(finds) == 1

    # Only the lowest are kept; a gap dropped from the list is still found by the full read.
    await finish(*range(100, 120))
    stored = await db.staff.find_one({"_id": "demo:hosp-duty"})
    assert stored["freed_slots"] == list(range(100, 100 + directory_store.FREED_SLOTS_KEPT))


async def test_a_full_department_is_counted_now_and_then_not_for_every_complaint(
    system_factory: SystemFactory, watched: Watched, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When every hint says full, the open assignments are counted so that nothing is queued
    on a hint that drifted; the counts then stand in the desk, across its reads, for up to
    ``COUNTED_LOADS_KEPT_S``, so the next complaints of a full department are queued without
    counting every open assignment again. A load that moves (a slot taken or freed, here or
    elsewhere) ends the counts at once or at the next read of the desk, a count that has
    stood its time is made again, and a drift that comes after the count lasts until then
    or until the reconcile pass mends it."""
    system = await system_factory()
    aggregations = Finds("assignments", command="aggregate")
    db = watched(system, aggregations)
    department = (await db.staff.find_one({"_id": "demo:hotel-ma"}))["department_id"]
    people = [p["id"] async for p in db.staff.find({"org": "demo", "department_id": department})]
    assert "hotel-ma" in people

    def counted() -> list[str]:
        """The owners whose open assignments were counted, once per count (one aggregation
        with an ``$in`` of them, or one count each on the local server)."""
        owners_counted: list[str] = []
        for condition in aggregations.filters:
            owner = condition.get("owner_id")
            owners_counted += owner["$in"] if isinstance(owner, dict) else [owner]
        return owners_counted

    def counts() -> int:
        """How many times the department's open assignments were counted."""
        return len(counted()) // len(people)

    await db.staff.update_many(
        {"org": "demo", "department_id": department}, {"$set": {"capacity": 1, "load_hint": 1}}
    )

    async def hold(person: str) -> None:
        await db.assignments.insert_one(_open_assignment(f"full-{person}", owner_id=person, slot=0))

    for person in people:
        await hold(person)
    directory_store.forget_desks()

    async def pick() -> owners.OwnerChoice | None:
        return await owners.pick_owner(
            db=db, org="demo", department_id=department, required_skill=None
        )

    assert await pick() is None
    assert counts() == 1  # every hint said full: counted, and they were right
    assert sorted(counted()) == sorted(people)  # the department's people
    for _ in range(5):
        assert await pick() is None
    await asyncio.sleep(directory_store.DESK_MAX_AGE_S)  # the desk is read again: nothing freed
    assert await pick() is None
    assert counts() == 1  # the counts stand

    await db.assignments.delete_one({"_id": "full-hotel-ma"})  # hotel-ma finishes one here
    await directory_store.record_release(db=db, org="demo", staff_id="hotel-ma", slot=0)
    choice = await pick()
    assert choice is not None and (choice.staff.id, choice.slot) == ("hotel-ma", 0)
    await hold("hotel-ma")
    await directory_store.record_assignment(
        db=db, org="demo", staff_id="hotel-ma", slot=0, at=datetime.now(UTC)
    )
    assert await pick() is None
    assert counts() == 2  # the assignment moved a load: counted once more, then standing
    assert await pick() is None
    assert counts() == 2

    # Another replica frees hotel-ma's slot: the hint goes down, seen at the next read.
    await db.assignments.delete_one({"_id": "full-hotel-ma"})
    await db.staff.update_one({"_id": "demo:hotel-ma"}, {"$inc": {"load_hint": -1}})
    await asyncio.sleep(directory_store.DESK_MAX_AGE_S)
    choice = await pick()
    assert choice is not None and (choice.staff.id, choice.slot) == ("hotel-ma", 0)
    assert counts() == 2

    # Full again (taken elsewhere): counted again, and again once the counts stood their time.
    await hold("hotel-ma")
    await db.staff.update_one({"_id": "demo:hotel-ma"}, {"$inc": {"load_hint": 1}})
    monkeypatch.setattr(directory_store, "COUNTED_LOADS_KEPT_S", directory_store.DESK_MAX_AGE_S)
    await asyncio.sleep(directory_store.DESK_MAX_AGE_S)
    assert await pick() is None
    assert await pick() is None
    assert counts() == 3
    await asyncio.sleep(directory_store.COUNTED_LOADS_KEPT_S)
    assert await pick() is None
    assert counts() == 4

    # A process dies between its two writes: the slot is freed, the hint is not moved. The
    # counts agree with a hint that is now wrong, so they queue work until they have stood
    # their time or the reconcile pass corrects the hint, whichever comes first.
    monkeypatch.setattr(directory_store, "COUNTED_LOADS_KEPT_S", 60.0)
    await db.assignments.delete_one({"_id": "full-hotel-ma"})
    await asyncio.sleep(directory_store.DESK_MAX_AGE_S)  # the desk is read again: no move
    assert await pick() is None
    assert counts() == 4
    assert await owners.reconcile_load_hints(db=db) == 1
    choice = await pick()
    assert choice is not None and (choice.staff.id, choice.slot) == ("hotel-ma", 0)


async def test_an_assignment_committed_while_a_count_ran_leaves_no_freed_slot_unseen(
    system_factory: SystemFactory,
) -> None:
    """Two drains of one process: one's assignment into hotel-ma's freed slot is committed,
    but its bookkeeping (``record_assignment``) has not run yet, when the other, finding
    the slot taken, counts the department. The count holds that assignment; the
    bookkeeping then added it once more, and the desk held hotel-ma at 2 of 1 for
    ``COUNTED_LOADS_KEPT_S``: the slot her next finish freed was held as taken, the drain
    of that finish found nobody with room and settled, and the queue waited beside her
    free slot until the next census of queues (once in CI with two replicas)."""
    system = await system_factory()
    db = routing_db(system)
    department = "HOTEL:FRONT"
    people = [p["id"] async for p in db.staff.find({"org": "demo", "department_id": department})]
    await db.staff.update_many(
        {"org": "demo", "department_id": department}, {"$set": {"capacity": 1, "load_hint": 1}}
    )
    await db.assignments.insert_many(
        [_open_assignment(f"race-{person}", owner_id=person, slot=0) for person in people]
    )
    directory_store.forget_desks()

    async def pick() -> owners.OwnerChoice | None:
        return await owners.pick_owner(
            db=db, org="demo", department_id=department, required_skill=None
        )

    assert await pick() is None  # full, counted
    # hotel-ma finishes; the first drain takes her slot, its bookkeeping not yet run.
    await db.assignments.delete_one({"_id": "race-hotel-ma"})
    await directory_store.record_release(db=db, org="demo", staff_id="hotel-ma", slot=0)
    await db.assignments.insert_one(_open_assignment("race-q1", owner_id="hotel-ma", slot=0))
    await asyncio.sleep(directory_store.DESK_MAX_AGE_S)  # the desk is read again
    assert await pick() is None  # the second drain: her slot is taken, counted: full
    await directory_store.record_assignment(
        db=db, org="demo", staff_id="hotel-ma", slot=0, at=datetime.now(UTC)
    )
    # She finishes that one too: her slot is free, and the next drain must see it.
    await db.assignments.delete_one({"_id": "race-q1"})
    await directory_store.record_release(db=db, org="demo", staff_id="hotel-ma", slot=0)
    choice = await pick()
    assert choice is not None and (choice.staff.id, choice.slot) == ("hotel-ma", 0)
    assert await owners.has_room(db=db, org="demo", department_id=department)


async def test_a_slot_freed_under_the_capacity_of_an_owner_over_it_is_not_room(
    system_factory: SystemFactory,
) -> None:
    """hotel-ma, capacity 2, holds slots 0 and 1, and slots 2 to 4 past her capacity: duty
    officer's complaints, given on purpose. She finishes slot 0's, then slot 1's. With a
    slot under her capacity free, owner choice on a hint a moment behind (another
    replica's assignment not seen yet) gave her one more in it, past her capacity. Now the
    work past her capacity moves down into each slot freed under it, and that slot is no
    longer offered as freed."""
    system = await system_factory()
    db = routing_db(system)
    department = "HOTEL:FRONT"
    await db.staff.update_many(
        {"org": "demo", "department_id": department}, {"$set": {"capacity": 0, "load_hint": 0}}
    )
    await db.staff.update_one({"_id": "demo:hotel-ma"}, {"$set": {"capacity": 2, "load_hint": 5}})
    held = [_open_assignment(f"over-{n}", owner_id="hotel-ma", slot=n) for n in range(5)]
    for document in held:
        document.update(department=department, version=1)
    await db.assignments.insert_many(held)
    directory_store.forget_desks()

    for finishing in ("over-0", "over-1"):  # as ``projections.finish`` writes and offers it
        finished = await db.assignments.find_one_and_update(
            {"_id": finishing},
            {"$set": {"status": "resolved"}, "$unset": {"owner_slot": "", "owner_slot_no": ""}},
        )
        await queue.offer_freed_capacity(
            db=db, settings=system.routing_settings, previous=finished, now=datetime.now(UTC)
        )
    slots = {
        document["_id"]: document["owner_slot_no"]
        async for document in db.assignments.find({"owner_id": "hotel-ma", "status": "open"})
    }
    assert slots == {"over-4": 0, "over-3": 1, "over-2": 2}
    staff = await db.staff.find_one({"_id": "demo:hotel-ma"})
    assert (staff["load_hint"], staff.get("freed_slots", [])) == (3, [])
    # A hint behind by two says room; the slots under her capacity say none.
    await db.staff.update_one({"_id": "demo:hotel-ma"}, {"$set": {"load_hint": 1}})
    directory_store.forget_desks()
    assert (
        await owners.pick_owner(
            db=db, org="demo", department_id=department, required_skill=None, trust_hints=False
        )
        is None
    )


async def test_a_full_departments_queue_is_not_read_until_someone_has_room(
    system_factory: SystemFactory,
    watched: Watched,
) -> None:
    """The sweep offers every department with a queue again. Where nobody is under capacity
    nothing can be assigned, so the queue is not read (on the local server, a read of the
    whole queue at every sweep, longer as a full department's queue grew); more capacity
    drains it at once."""
    system = await system_factory()
    waiting = await _queued_behind_a_full_desk(system, "房间没有打扫", "早餐供应太少")
    department = "HOTEL:FRONT"
    finds = Finds("assignments")
    db = watched(system, finds)
    directory_store.forget_desks()
    for _ in range(3):  # as three sweeps would
        drained = await queue.drain_queue(
            db=db,
            settings=system.routing_settings,
            org="demo",
            department_id=department,
            now=datetime.now(UTC),
        )
        assert drained == 0
    assert [f for f in finds.filters if f.get("status") == "queued"] == []
    assert not await owners.has_room(db=db, org="demo", department_id=department)

    await _set_capacity(system, "hotel-ma", 3)  # the directory's change offers the queue
    for complaint in waiting:
        taken = await assignment_when(
            system, complaint.complaint_id, lambda d: d["status"] == "open", what="drained"
        )
        assert taken["owner_id"] == "hotel-ma"
    held = {"department": department, "owner_id": "hotel-ma", "status": "open"}
    assert await db.assignments.count_documents(held) == 3


async def test_the_sweep_looks_for_queues_now_and_then_and_drains_those_it_knows(
    system_factory: SystemFactory,
) -> None:
    """Which departments have a queue (a read of every queued complaint) is looked up every
    ``queue_census_interval_s``; the sweeps between offer the departments found, so room
    that nothing drained (a crash between a finish and its drain) is still used."""
    system = await system_factory()
    (waiting,) = await _queued_behind_a_full_desk(system, "房间没有打扫")
    censuses, finds = Finds("assignments", command="aggregate"), Finds("assignments")
    client = AsyncMongoClient(
        system.routing_settings.mongodb_uri, tz_aware=True, event_listeners=[censuses, finds]
    )
    db = client[routing_db(system).name]
    settings = system.routing_settings.model_copy(update={"queue_census_interval_s": 3600.0})
    scheduler = SlaScheduler(settings=settings)
    runtime = SimpleNamespace(db=db, clock=SystemClock())

    def looked(listener: Finds) -> int:
        return sum(condition.get("status") == "queued" for condition in listener.filters)

    try:
        directory_store.forget_desks()
        for _ in range(3):
            assert await scheduler.sweep_queues(runtime) == 0
        assert looked(censuses) == 1  # at the first sweep only
        assert looked(finds) == 0  # the department is full: its queue is not read

        # Room that no drain was told of: the directory changed behind routing's back.
        await db.staff.update_one({"_id": "demo:hotel-ma"}, {"$set": {"capacity": 2}})
        directory_store.forget_desks()
        assert await scheduler.sweep_queues(runtime) == 1
        assert looked(censuses) == 1
        taken = await assignment_when(system, waiting.complaint_id, lambda d: d["status"] == "open")
        assert taken["owner_id"] == "hotel-ma"
    finally:
        await client.close()


async def test_a_drain_passes_over_complaints_another_drain_took_since_it_read_the_queue(
    system_factory: SystemFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each finish drains its department, so drains run side by side (on two replicas, or
    one replica's handlers). A drain whose first queued complaints another drain has taken
    since it read the queue goes on with the rest: the room of the finish that started it
    is used, not left until a census finds the queue."""
    system = await system_factory()
    first, second, third = await _queued_behind_a_full_desk(
        system, "房间没有打扫", "早餐供应太少", "空调坏了"
    )
    db = routing_db(system)
    # Room for two that no drain was told of: one for the other drain, one for this one.
    await db.staff.update_one({"_id": "demo:hotel-ma"}, {"$set": {"capacity": 3}})
    directory_store.forget_desks()
    read_queue = queue.store.queued_in_department
    raced: list[queue.Served] = []

    async def read_then_lose_the_first(**kwargs: Any) -> list[dict[str, Any]]:
        waiting = await read_queue(**kwargs)
        if not raced:  # the other drain takes the head of the queue just read
            raced.append(
                await queue.assign_from_queue(
                    db=db,
                    settings=system.routing_settings,
                    complaint_id=first.complaint_id,
                    now=datetime.now(UTC),
                )
            )
        return waiting

    monkeypatch.setattr(queue.store, "queued_in_department", read_then_lose_the_first)
    drained = await queue.drain_queue(
        db=db,
        settings=system.routing_settings,
        org="demo",
        department_id="HOTEL:FRONT",
        now=datetime.now(UTC),
    )
    assert raced == [queue.Served.ASSIGNED]
    assert drained == 1
    states = {
        doc["_id"]: (doc["status"], doc.get("owner_slot"))
        async for doc in db.assignments.find(
            {"_id": {"$in": [c.complaint_id for c in (first, second, third)]}}
        )
    }
    assert states[second.complaint_id][0] == "open"
    assert states[third.complaint_id] == ("queued", None)  # hotel-ma is at 3 again
    held = {states[c.complaint_id][1] for c in (first, second)}
    assert held == {"demo:hotel-ma#1", "demo:hotel-ma#2"}


# The service's own queue sweeper waits an hour: only the test's sweeps look.
ONLY_THE_TESTS_SWEEPS = {"queue_sweep_interval_s": 3600}


async def _swept_before_any_queue(system: System) -> tuple[SlaScheduler, SimpleNamespace]:
    """A queue sweeper of the system's database whose census (one an hour) found no queue."""
    settings = system.routing_settings.model_copy(update={"queue_census_interval_s": 3600.0})
    scheduler = SlaScheduler(settings=settings)
    runtime = SimpleNamespace(db=routing_db(system), clock=SystemClock())
    assert await scheduler.sweep_queues(runtime) == 0
    return scheduler, runtime


async def test_a_drain_an_error_cut_short_is_offered_again_at_the_next_sweep(
    system_factory: SystemFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A finish's drain that fails (the database away) is not run again with its event,
    whose change is already stored. The next sweep of the process offers that department
    again, though the census, which last looked before the queue formed, does not know it."""
    system = await system_factory(routing=ONLY_THE_TESTS_SWEEPS)
    db = routing_db(system)
    scheduler, runtime = await _swept_before_any_queue(system)
    (waiting,) = await _queued_behind_a_full_desk(system, "房间没有打扫")
    # As if queued by another replica: this process owes the department nothing yet.
    monkeypatch.setattr(owed_drains, "_owed", {})
    await db.staff.update_one({"_id": "demo:hotel-ma"}, {"$set": {"capacity": 2}})
    directory_store.forget_desks()
    monkeypatch.setattr(
        queue.store, "queued_in_department", FailsFirst(queue.store.queued_in_department)
    )
    with pytest.raises(AutoReconnect):
        await queue.drain_queue(
            db=db,
            settings=system.routing_settings,
            org="demo",
            department_id="HOTEL:FRONT",
            now=datetime.now(UTC),
        )
    assert owed_drains.departments(db=db) == [("demo", "HOTEL:FRONT")]
    assert (await db.assignments.find_one({"_id": waiting.complaint_id}))["status"] == "queued"

    assert await scheduler.sweep_queues(runtime) == 1
    taken = await db.assignments.find_one({"_id": waiting.complaint_id})
    assert (taken["status"], taken["owner_id"]) == ("open", "hotel-ma")
    assert owed_drains.departments(db=db) == []


async def test_a_complaint_queued_after_a_drain_looked_is_offered_at_the_next_sweep(
    system_factory: SystemFactory,
) -> None:
    """Owner choice found the department full, and a slot freed (on another replica) was
    drained a moment before the complaint was stored as queued: nothing else would offer
    it before the next census. The process that queued it owes the department a drain."""
    system = await system_factory(routing=ONLY_THE_TESTS_SWEEPS)
    db = routing_db(system)
    scheduler, runtime = await _swept_before_any_queue(system)
    (waiting,) = await _queued_behind_a_full_desk(system, "房间没有打扫")
    await _owed_a_drain(system)
    # The room the other replica's drain found nothing to fill with.
    await db.staff.update_one({"_id": "demo:hotel-ma"}, {"$set": {"capacity": 2}})
    directory_store.forget_desks()

    assert await scheduler.sweep_queues(runtime) == 1
    taken = await db.assignments.find_one({"_id": waiting.complaint_id})
    assert (taken["status"], taken["owner_id"]) == ("open", "hotel-ma")
    assert owed_drains.departments(db=db) == []


async def test_a_finish_redelivered_after_the_slot_was_freed_but_not_offered_owes_a_drain(
    system_factory: SystemFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The process that applied a finish died after its write (the slot freed) and before
    offering the slot to the queue; its ledger of drains owed died with it. The finish,
    redelivered to another process, is found applied and does nothing more: the queue
    waited beside the free slot for the next census of queues (a minute). Now a finish
    found applied owes its department a drain, which the next sweep runs."""
    system = await system_factory(routing=ONLY_THE_TESTS_SWEEPS)
    db = routing_db(system)
    scheduler, runtime = await _swept_before_any_queue(system)
    await _set_capacity(system, "hotel-ma", 1)
    first, waiting = _hotel("前台态度冷淡"), _hotel("房间没有打扫")
    async with intake_producer(system) as publish:
        await publish(EventType.COMPLAINT_RECEIVED, first)
        await assignment_when(system, first.complaint_id, lambda d: d["status"] == "open")
        await publish(EventType.COMPLAINT_RECEIVED, waiting)
        await assignment_when(system, waiting.complaint_id, lambda d: d["status"] == "queued")
        await _owed_a_drain(system)
        monkeypatch.setattr(owed_drains, "_owed", {})  # as if queued by another replica

        async def died_before_offering(**_: Any) -> None:
            return None

        monkeypatch.setattr(queue, "offer_freed_capacity", died_before_offering)
        applied = handled_count("routing", EventType.COMPLAINT_RESOLVED)
        finished = await publish(EventType.COMPLAINT_RESOLVED, resolved(first))
        # Handled to the end (the offer comes after the write), then the process "dies".
        await eventually(
            lambda: handled_count("routing", EventType.COMPLAINT_RESOLVED) > applied,
            what="the finish handled",
        )
        assert (await db.assignments.find_one({"_id": first.complaint_id}))["status"] == "resolved"
        monkeypatch.undo()
        monkeypatch.setattr(owed_drains, "_owed", {})  # the ledger died with the process
        before = handled_count("routing", EventType.COMPLAINT_RESOLVED)
        await publish.replay(finished)
        await eventually(
            lambda: handled_count("routing", EventType.COMPLAINT_RESOLVED) > before,
            what="the finish redelivered",
        )
    assert (await db.assignments.find_one({"_id": waiting.complaint_id}))["status"] == "queued"
    assert owed_drains.departments(db=db) == [("demo", "HOTEL:FRONT")]
    assert await scheduler.sweep_queues(runtime) == 1
    taken = await db.assignments.find_one({"_id": waiting.complaint_id})
    assert (taken["status"], taken["owner_id"]) == ("open", "hotel-ma")


async def test_complaints_waiting_for_a_skill_nobody_free_has_hide_none_behind_them(
    system_factory: SystemFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The queue is read a batch at a time; a whole batch passed over (skills nobody with
    room has, or a complaint whose assignment fails for a fault of its own) is followed by
    the next, so a complaint behind it that anyone could take is taken."""
    monkeypatch.setattr(queue, "DRAIN_BATCH", 2)
    system = await system_factory()
    db = routing_db(system)
    cantonese, broken, anyone = await _queued_behind_a_full_desk(
        system, "房间没有打扫", "早餐供应太少", "空调坏了"
    )
    await db.assignments.update_one(
        {"_id": cantonese.complaint_id}, {"$set": {"required_skill": "粤语"}}
    )
    # A queued complaint that cannot be announced (its branch lost): its own fault only.
    await db.assignments.update_one({"_id": broken.complaint_id}, {"$unset": {"branch": ""}})
    await db.staff.update_one({"_id": "demo:hotel-ma"}, {"$set": {"capacity": 2}})
    directory_store.forget_desks()

    drained = await queue.drain_queue(
        db=db,
        settings=system.routing_settings,
        org="demo",
        department_id="HOTEL:FRONT",
        now=datetime.now(UTC),
    )
    assert drained == 1
    states = {
        doc["_id"]: doc["status"]
        async for doc in db.assignments.find(
            {"_id": {"$in": [c.complaint_id for c in (cantonese, broken, anyone)]}}
        )
    }
    assert states == {
        cantonese.complaint_id: "queued",
        broken.complaint_id: "queued",
        anyone.complaint_id: "open",
    }


async def test_a_finish_whose_release_fails_still_owes_its_department_a_drain(
    system_factory: SystemFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The department is owed its drain before the finish's first write after the change
    (the load hint's release), so a failure there too leaves it to the next sweep."""
    system = await system_factory()
    db = routing_db(system)
    monkeypatch.setattr(owed_drains, "_owed", {})
    monkeypatch.setattr(
        queue.directory_store, "record_release", FailsFirst(queue.directory_store.record_release)
    )
    previous = _open_assignment("finished-1", owner_id="hotel-ma", slot=0)
    with pytest.raises(AutoReconnect):
        await queue.offer_freed_capacity(
            db=db,
            settings=system.routing_settings,
            previous={**previous, "department": "HOTEL:FRONT"},
            now=datetime.now(UTC),
        )
    assert owed_drains.departments(db=db) == [("demo", "HOTEL:FRONT")]


class _HeldAnswers:
    """Wraps ``read`` (a read of the real database) so that its answer, read at once, is
    handed back only once ``gate`` is set: a read in flight while something else writes."""

    def __init__(self, read) -> None:
        self.read = read
        self.gate = asyncio.Event()
        self.started = asyncio.Event()

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        answer = await self.read(*args, **kwargs)
        self.started.set()
        await self.gate.wait()
        return answer


async def _hotel_front_full(db: AsyncDatabase) -> tuple[str, list[str]]:
    """Everyone of the hotel front desk at capacity 1 with one open assignment in slot 0,
    hints saying so, no desk kept: the department and its people."""
    department = (await db.staff.find_one({"_id": "demo:hotel-ma"}))["department_id"]
    people = [p["id"] async for p in db.staff.find({"org": "demo", "department_id": department})]
    await db.staff.update_many(
        {"org": "demo", "department_id": department}, {"$set": {"capacity": 1, "load_hint": 1}}
    )
    await db.assignments.insert_many(
        [_open_assignment(f"full-{person}", owner_id=person, slot=0) for person in people]
    )
    directory_store.forget_desks()
    return department, people


async def _finish_here(db: AsyncDatabase, staff_id: str) -> None:
    """This process finishes ``staff_id``'s open assignment: the slot freed, then the hint."""
    await db.assignments.delete_one({"_id": f"full-{staff_id}"})
    await directory_store.record_release(db=db, org="demo", staff_id=staff_id, slot=0)


async def test_a_slot_freed_here_while_the_desk_was_being_read_is_not_lost(
    system_factory: SystemFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read of the desk that began before this process freed a slot, and ended after,
    may not hold the release. Installed as read, it hid the room behind loads counted as
    full moments before: the drain of that very finish found nobody with room and settled,
    and the room stood unused until the next census (a minute), seen as a queue not refilled
    with two replicas (CI on a6e143b). The release reaches the copy and ends the counts."""
    system = await system_factory()
    db = routing_db(system)
    department, _ = await _hotel_front_full(db)

    async def pick() -> owners.OwnerChoice | None:
        return await owners.pick_owner(
            db=db, org="demo", department_id=department, required_skill=None
        )

    assert await pick() is None  # every hint says full: counted, and the counts stand
    assert directory_store.desk_counted(db=db, org="demo", department_id=department)
    await asyncio.sleep(directory_store.DESK_MAX_AGE_S)  # the next look reads the desk again

    held = _HeldAnswers(directory_store._staff_of_department)
    monkeypatch.setattr(directory_store, "_staff_of_department", held)
    # Should the test fail meanwhile, the group cancels the read and awaits it (and should
    # the read fail, the wait for it ends).
    async with asyncio.TaskGroup() as running:
        reading = running.create_task(
            directory_store.desk(db=db, org="demo", department_id=department)
        )
        await held.started.wait()  # read: hotel-ma still at 1
        await _finish_here(db, "hotel-ma")
        held.gate.set()
        await reading

    assert await owners.has_room(db=db, org="demo", department_id=department)
    choice = await pick()
    assert choice is not None and (choice.staff.id, choice.slot) == ("hotel-ma", 0)


async def test_a_slot_freed_here_while_the_loads_were_being_counted_is_not_lost(
    system_factory: SystemFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A count of the open assignments that began before this process freed a slot, and
    ended after, holds that slot as taken: it answers its own question (the choice in
    progress), but is not kept to stand for the next ones."""
    system = await system_factory()
    db = routing_db(system)
    department, _ = await _hotel_front_full(db)

    async def pick() -> owners.OwnerChoice | None:
        return await owners.pick_owner(
            db=db, org="demo", department_id=department, required_skill=None
        )

    held = _HeldAnswers(owners.store.open_loads)
    monkeypatch.setattr(owners.store, "open_loads", held)
    # Should the test fail meanwhile, the group cancels the choice and awaits it (and should
    # the choice fail, the wait for it ends).
    async with asyncio.TaskGroup() as running:
        choosing = running.create_task(pick())
        await held.started.wait()  # counted: everyone at 1
        await _finish_here(db, "hotel-ma")
        held.gate.set()
        assert await choosing is None  # as counted

    assert not directory_store.desk_counted(db=db, org="demo", department_id=department)
    assert await owners.has_room(db=db, org="demo", department_id=department)
    choice = await pick()
    assert choice is not None and (choice.staff.id, choice.slot) == ("hotel-ma", 0)


async def test_a_reassignment_whose_drain_fails_is_answered_once_and_the_sweep_drains(
    system_factory: SystemFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reassignment is stored and announced; offering hotel-ma's freed room to the
    queue then meets a dropped connection. The answer is the committed reassignment (a 503
    invited a retry that moved the complaint again); the department is owed its drain, so
    the next sweep gives the waiting complaint to hotel-ma."""
    # The service's own sweeper waits an hour after its first pass: only this test's sweep
    # settles what is owed.
    system = await system_factory(routing={"queue_sweep_interval_s": 3600})
    db = routing_db(system)
    scheduler, runtime = await _swept_before_any_queue(system)
    (waiting,) = await _queued_behind_a_full_desk(system, "房间没有打扫")
    held = await db.assignments.find_one({"owner_id": "hotel-ma", "status": "open"})
    monkeypatch.setattr(owed_drains, "_owed", {})
    monkeypatch.setattr(
        queue.directory_store, "record_release", FailsFirst(queue.directory_store.record_release)
    )
    supervisor = token(system.routing_settings, roles=("supervisor",))
    path = f"/v1/assignments/{held['_id']}/reassign"
    body = {"owner_id": "hotel-gm", "reason": "总经理亲自处理"}

    moved = await system.routing.post(path, json=body, headers=supervisor)
    if moved.status_code == 503:  # the client does as told
        moved = await system.routing.post(path, json=body, headers=supervisor)
    assert moved.status_code == 200, moved.text
    assert moved.json()["owner_id"] == "hotel-gm"
    stored = await db.assignments.find_one({"_id": held["_id"]})
    assert [entry["action"] for entry in stored["history"]].count("reassigned") == 1
    assert ("demo", "HOTEL:FRONT") in owed_drains.departments(db=db)

    directory_store.forget_desks()  # the desk is kept a second; a sweep comes later
    await scheduler.sweep_queues(runtime)
    taken = await db.assignments.find_one({"_id": waiting.complaint_id})
    assert (taken["status"], taken["owner_id"]) == ("open", "hotel-ma")


async def test_room_freed_by_an_owner_of_another_department_is_owed_before_anything_is_written(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A duty officer of the front desk finished a billing complaint: both departments may
    take queued work. The owner's own was noted only once the overflow's writes were done,
    so an error there (the database away) left its room unused until the census."""
    db = routing_db(system)
    monkeypatch.setattr(owed_drains, "_owed", {})
    monkeypatch.setattr(owners, "fill_from_overflow", FailsFirst(owners.fill_from_overflow))
    finished_here = {
        "_id": "cmp-duty-officer",
        "org": "demo",
        "department": "LZ:BILLING",
        "owner_id": "hotel-ma",
        "owner_slot_no": 1,
        "status": "open",
    }
    with pytest.raises(AutoReconnect):
        await queue.offer_freed_capacity(
            db=db, settings=system.routing_settings, previous=finished_here, now=datetime.now(UTC)
        )
    assert owed_drains.departments(db=db) == [("demo", "HOTEL:FRONT"), ("demo", "LZ:BILLING")]


async def test_a_drain_goes_on_past_a_complaint_moved_to_a_full_department_meanwhile(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The drain read the front desk's queue; a supervisor then moved its first complaint to
    a department with nobody free. Its owner was looked for there, none was found, and the
    drain took that for the front desk being full: the complaint behind it stayed queued
    beside room, until the census."""
    db = routing_db(system)
    admin = token(system.routing_settings)
    nobody = {"branch": "HOTEL", "code": "SPA", "name": "水疗中心", "kind": "spa"}
    made = await system.routing.post("/v1/directory/departments", json=nobody, headers=admin)
    assert made.status_code == 201, made.text
    moved, behind = await _queued_behind_a_full_desk(system, "房间没有打扫", "早餐太差")
    await db.staff.update_one({"_id": "demo:hotel-ma"}, {"$set": {"capacity": 3}})
    directory_store.forget_desks()
    queued_in_department = queue.store.queued_in_department

    async def read_then_moved(**arguments: Any) -> list[dict[str, Any]]:
        read = await queued_in_department(**arguments)
        # The supervisor's move, written between the drain's read and its turn.
        await db.assignments.update_one(
            {"_id": moved.complaint_id}, {"$set": {"department": "HOTEL:SPA"}}
        )
        return read

    monkeypatch.setattr(queue.store, "queued_in_department", read_then_moved)
    assigned = await queue.drain_queue(
        db=db,
        settings=system.routing_settings,
        org="demo",
        department_id="HOTEL:FRONT",
        now=datetime.now(UTC),
    )
    assert assigned == 1
    taken = await db.assignments.find_one({"_id": behind.complaint_id})
    assert (taken["status"], taken["owner_id"]) == ("open", "hotel-ma")
    left = await db.assignments.find_one({"_id": moved.complaint_id})
    assert (left["status"], left["department"]) == ("queued", "HOTEL:SPA")
