"""Owner choice: slots, load hints and the owner whose turn it is.

An owner's open load is the number of open assignments holding one of the
owner's *slots*. Slots are numbered per owner
and a unique index on ``owner_slot`` lets each number be held once, so two
replicas assigning at the same moment cannot both take an owner's last free
place (the loser's write fails and it chooses again); finishing a complaint
frees its slot in the same write that records the finish, so no decrement can
be lost. The staff document also carries a *load hint*, moved after each of those
writes, so that owner choice ranks people without counting their assignments;
the hint only orders candidates (the slots still decide), owner choice counts
before it queues anything, and a periodic pass corrects hints a crash left
behind.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pymongo import DESCENDING
from pymongo.asynchronous.database import AsyncDatabase

from complaints_shared.aggregate import Decision
from complaints_shared.events import ComplaintReceived
from complaints_shared.logs import get_logger
from complaints_shared.timing import Pacer
from routing.assignments import planning, store
from routing.assignments.models import AssignmentStatus
from routing.directory import store as directory_store
from routing.directory.models import StaffRead
from routing.metrics import LOAD_HINTS_CORRECTED
from routing.settings import RoutingSettings

log = get_logger(__name__)


def slot_key(org: str, owner_id: str, number: int) -> str:
    return f"{org}:{owner_id}#{number}"


def slot_fields(org: str, owner_id: str, number: int) -> dict[str, Any]:
    return {"owner_slot": slot_key(org, owner_id, number), "owner_slot_no": number}


FREE_SLOT = {"$unset": {"owner_slot": "", "owner_slot_no": ""}}


async def free_slot(*, db: AsyncDatabase, org: str, owner_id: str, limit: int | None) -> int | None:
    """The owner's lowest free slot number (below ``limit`` for automatic assignment)."""
    cursor = db[store.ASSIGNMENTS].find(
        {"org": org, "owner_id": owner_id, "status": AssignmentStatus.OPEN.value},
        projection={"owner_slot_no": 1},
    )
    used = {doc.get("owner_slot_no") async for doc in cursor}
    number = 0
    while number in used:
        number += 1
    if limit is not None and number >= limit:
        return None
    return number


# Slots from the load hint up that one indexed read tries before the owner's slots are read.
LIKELY_SLOTS = 4


async def likely_free_slot(
    *,
    db: AsyncDatabase,
    org: str,
    owner_id: str,
    guess: int,
    freed: list[int],
    limit: int | None,
) -> int | None:
    """The lowest free slot among those freed lately (``freed``), ``guess`` (the load hint)
    and the few above it, tried in one indexed read first.

    Without gaps an owner holding n slots holds 0..n-1, so slot n is free. But work
    finishes out of order, so an owner's free slots are mostly gaps below the hint: those
    the staff document recorded as they came free (``directory_store.FREED_SLOTS``). A
    hint that is behind (another replica took the next slots since this one read the
    desk) is behind by a few: the slots above it are tried in the same read. Only when
    all of them are taken (more gaps than were recorded, or hints far off) are the owner's
    open assignments read, every one.
    """
    tried = {*freed, *range(guess, guess + LIKELY_SLOTS)}
    numbers = sorted(n for n in tried if limit is None or n < limit)
    if numbers:
        keys = {slot_key(org, owner_id, n): n for n in numbers}
        taken = {
            doc["owner_slot"]
            async for doc in db[store.ASSIGNMENTS].find(
                {"owner_slot": {"$in": list(keys)}}, projection={"owner_slot": 1, "_id": 0}
            )
        }
        free = [n for key, n in keys.items() if key not in taken]
        if free:
            return free[0]
    return await free_slot(db=db, org=org, owner_id=owner_id, limit=limit)


async def reconcile_load_hints(*, db: AsyncDatabase, pacer: Pacer | None = None) -> int:
    """Set load hints that drifted (a crash between two writes) to the counted loads.

    Each hint is read before its person's open assignments are counted and replaced only
    if still the value read, so an assignment landing meanwhile is never overwritten with
    an older count. One count per person, with ``pacer``'s pause after each: a count of
    every open assignment at once held the database for as long as it took.
    """
    pacer = pacer or Pacer(share=1)
    staff = directory_store.STAFF
    hint = directory_store.LOAD_HINT
    people = await db[staff].find({}, projection={"org": 1, "id": 1, hint: 1}).to_list(None)
    corrected = 0
    for person in people:
        actual = await db[store.ASSIGNMENTS].count_documents(
            {"org": person["org"], "owner_id": person["id"], "status": AssignmentStatus.OPEN.value}
        )
        await pacer.pause()
        if person.get(hint, 0) == actual:
            continue
        seen = person.get(hint, {"$exists": False})
        result = await db[staff].update_one(
            {"_id": person["_id"], hint: seen}, {"$set": {hint: actual}}
        )
        corrected += result.modified_count
    if corrected:
        directory_store.forget_desks()
        LOAD_HINTS_CORRECTED.inc(corrected)
        log.warning("load_hints_corrected", count=corrected)
    return corrected


@dataclass(frozen=True)
class OwnerChoice:
    staff: StaffRead
    slot: int


async def ranked_candidates(
    *, db: AsyncDatabase, org: str, department_id: str, required_skill: str | None
) -> list[planning.Candidate]:
    """Exact ranking (loads counted from the assignments): for reports and simulations."""
    staff = await directory_store.desk(db=db, org=org, department_id=department_id, fresh=True)
    loads = await store.open_loads(db=db, org=org, staff_ids=[person.id for person in staff])
    return planning.rank_candidates(staff, loads=loads, required_skill=required_skill)


async def pick_owner(
    *,
    db: AsyncDatabase,
    org: str,
    department_id: str,
    required_skill: str | None,
    exclude: frozenset[str] = frozenset(),
    trust_hints: bool = False,
) -> OwnerChoice | None:
    """The owner whose turn it is, with a free slot under their capacity; None: queue it.

    Candidates are ranked by their load hints first (no counting), and the slot's unique
    index keeps the capacity exact whatever a hint says. Only when the hints find nobody
    are the loads counted from the assignments, so a complaint is never queued on a
    stale hint. The counts then stand in this process's desk for up to
    ``directory_store.COUNTED_LOADS_KEPT_S`` (``count_into_desk``), so while the department
    stays full its next complaints are queued without counting every open assignment
    again for each. Capacity freed anywhere drains the queue at once
    (``queue.offer_freed_capacity``) and ends the counts.
    ``trust_hints``: take the lowest slot the hints name (a freed one, else the load
    hint's) without looking it up, for a caller whose insert chooses again when that slot
    turns out to be held.
    """
    staff = await directory_store.desk(db=db, org=org, department_id=department_id)
    hints = {person.id: person.open_load for person in staff}
    choice = await _first_with_slot(
        db=db,
        org=org,
        staff=staff,
        loads=hints,
        required_skill=required_skill,
        exclude=exclude,
        trust_hints=trust_hints,
    )
    if choice is not None:
        return choice
    loads = await _counted_loads(db=db, org=org, department_id=department_id, hints=hints)
    if loads is None:
        return None
    return await _first_with_slot(
        db=db, org=org, staff=staff, loads=loads, required_skill=required_skill, exclude=exclude
    )


async def has_room(*, db: AsyncDatabase, org: str, department_id: str) -> bool:
    """Whether anyone of the department is active and under capacity, as ``pick_owner``
    sees it (the load hints, else the loads counted from the assignments, which then
    stand). False means no queued complaint of the department can be assigned now,
    whatever skill it needs; True only that one may be."""
    staff = await directory_store.desk(db=db, org=org, department_id=department_id)
    hints = {person.id: person.open_load for person in staff}
    if _anyone_eligible(staff, hints):
        return True
    loads = await _counted_loads(db=db, org=org, department_id=department_id, hints=hints)
    return loads is not None and _anyone_eligible(staff, loads)


def _anyone_eligible(staff: list[StaffRead], loads: dict[str, int]) -> bool:
    candidates = planning.rank_candidates(staff, loads=loads, required_skill=None)
    return any(candidate.eligible for candidate in candidates)


async def _counted_loads(
    *, db: AsyncDatabase, org: str, department_id: str, hints: dict[str, int]
) -> dict[str, int] | None:
    """The department's loads counted from its open assignments, once the hints found
    nobody with room; None when they were counted lately (the desk already holds those
    counts) or agree with the hints."""
    if directory_store.desk_counted(db=db, org=org, department_id=department_id):
        return None
    since = directory_store.releases_mark()
    loads = await store.open_loads(db=db, org=org, staff_ids=list(hints))
    directory_store.count_into_desk(
        db=db, org=org, department_id=department_id, loads=loads, since=since
    )
    return None if loads == hints else loads


async def _first_with_slot(
    *,
    db: AsyncDatabase,
    org: str,
    staff: list[StaffRead],
    loads: dict[str, int],
    required_skill: str | None,
    exclude: frozenset[str],
    trust_hints: bool = False,
) -> OwnerChoice | None:
    for candidate in planning.rank_candidates(staff, loads=loads, required_skill=required_skill):
        if not candidate.eligible or candidate.staff.id in exclude:
            continue
        freed = directory_store.freed_slots(db=db, person=candidate.staff)
        if trust_hints:  # eligible: the hint is under the capacity
            return OwnerChoice(candidate.staff, min([*freed, candidate.open_load]))
        slot = await likely_free_slot(
            db=db,
            org=org,
            owner_id=candidate.staff.id,
            guess=candidate.open_load,
            freed=freed,
            limit=candidate.staff.capacity,
        )
        if slot is not None:
            return OwnerChoice(candidate.staff, slot)
    return None


async def forced_owner(*, db: AsyncDatabase, org: str, staff: StaffRead) -> OwnerChoice:
    """A slot for a person chosen on purpose (duty officer, supervisor, reopen): no cap.

    Found as for automatic choice (``likely_free_slot``, with the person's hints as this
    process's copy of their desk has them), in one indexed read. Reading every open
    assignment of theirs instead made each complaint dearer than the last for a duty
    officer who takes every urgent complaint of the night (docs/performance.md).
    """
    desk = await directory_store.desk(db=db, org=org, department_id=staff.department_id)
    kept = next((person for person in desk if person.id == staff.id), staff)
    slot = await likely_free_slot(
        db=db,
        org=org,
        owner_id=staff.id,
        guess=kept.open_load,
        freed=directory_store.freed_slots(db=db, person=kept),
        limit=None,
    )
    assert slot is not None
    return OwnerChoice(staff, slot)


# Assignments past the capacity a freed slot tries to move down (more: they move already).
OVERFLOW_TRIES = 3


async def fill_from_overflow(
    *,
    db: AsyncDatabase,
    settings: RoutingSettings,
    org: str,
    staff: StaffRead,
    load_hint: int,
    slot: int,
    now: datetime,
) -> bool:
    """Slot ``slot`` of ``staff``, under their capacity, came free while they hold work in a
    slot at or above it (given on purpose past their capacity: a duty officer, a
    supervisor's choice, a reopen): their highest such assignment moves down into it.

    A slot under the capacity being free means room to automatic choice, which fills it
    on a hint a moment behind (and ``trust_hints`` without looking): an owner at capacity
    with a free slot below it took one more, past the capacity. Moved down, the owner's
    slots under the capacity are all taken while their open work is at or above it.

    Only an owner whose ``load_hint`` (after the release) is still at the capacity can hold
    work past it, so only theirs is read; any other finish costs nothing more. One moved
    down by a finish beside this one is passed over for the next. False when there is
    nothing to move, or the slot was taken meanwhile (the owner had room after all)."""
    if slot >= staff.capacity or load_hint < staff.capacity:
        return False
    above = (
        db[store.ASSIGNMENTS]
        .find(
            {
                "org": org,
                "owner_id": staff.id,
                "status": AssignmentStatus.OPEN.value,
                "owner_slot_no": {"$gte": staff.capacity},
            },
            projection={"_id": 1},
        )
        .sort("owner_slot_no", DESCENDING)
        .limit(OVERFLOW_TRIES)
    )
    for candidate in await above.to_list(None):
        outcome = await _move_down(
            db=db,
            settings=settings,
            org=org,
            staff=staff,
            slot=slot,
            assignment_id=candidate["_id"],
            now=now,
        )
        if outcome == "moved":
            # The slot the release offered as freed is held again.
            await directory_store.record_slot_taken(db=db, org=org, staff_id=staff.id, slot=slot)
            return True
        if outcome == "taken":
            return False
    return False


async def _move_down(
    *,
    db: AsyncDatabase,
    settings: RoutingSettings,
    org: str,
    staff: StaffRead,
    slot: int,
    assignment_id: str,
    now: datetime,
) -> str | None:
    """Move one assignment of ``staff`` past their capacity into ``slot``: "moved", "taken"
    (the slot was taken meanwhile), or None (it is not past the capacity any more)."""
    outcome: list[str] = []

    async def decide(current: dict[str, Any]) -> Decision | None:
        outcome.clear()  # decided again after a lost race: this decision says
        held = current.get("owner_slot_no")
        if current["status"] != AssignmentStatus.OPEN.value or current.get("owner_id") != staff.id:
            return None
        if held is None or held < staff.capacity:
            return None  # finished, moved away or moved down meanwhile: the next one
        if await db[store.ASSIGNMENTS].find_one({"owner_slot": slot_key(org, staff.id, slot)}):
            outcome.append("taken")
            return None
        outcome.append("moved")
        update = {
            "$set": slot_fields(org, staff.id, slot),
            **store.history(at=now, action="slot_moved_down", actor="routing", slot=slot),
        }
        return Decision(update)

    await store.change(db=db, settings=settings, complaint_id=assignment_id, decide=decide, now=now)
    return outcome[0] if outcome else None


async def owner_for_plan(
    *,
    db: AsyncDatabase,
    complaint: ComplaintReceived,
    plan: planning.RoutePlan,
    trust_hints: bool = False,
) -> tuple[OwnerChoice | None, str]:
    if plan.duty_officer is not None:
        return await forced_owner(db=db, org=complaint.org, staff=plan.duty_officer), "duty_officer"
    choice = await pick_owner(
        db=db,
        org=complaint.org,
        department_id=plan.department.id,
        required_skill=plan.rule.action.required_skill,
        trust_hints=trust_hints,
    )
    return choice, "rule" if choice else "queue"
