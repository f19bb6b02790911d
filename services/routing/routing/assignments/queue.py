"""The department queues: queued complaints get an owner as capacity frees up.

Capacity frees when an assignment finishes or moves away (offered to the
department and to the owner's own one at once), when people are added or come
back, and on the periodic sweep that repairs what a crash may have lost.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from complaints_shared.aggregate import Decision
from complaints_shared.events import EventType
from complaints_shared.mongo import merge_updates
from routing.assignments import lifecycle, owners, placement, store
from routing.assignments.models import AssignmentStatus
from routing.directory import store as directory_store
from routing.settings import RoutingSettings

DRAIN_BATCH = 100


async def assign_from_queue(
    *, db: AsyncDatabase, settings: RoutingSettings, complaint_id: str, now: datetime
) -> bool:
    """Give a queued complaint to whoever has capacity now; False if nobody has."""
    assigned: list[str] = []

    async def after(document: dict[str, Any]) -> None:
        assigned.append(document["owner_id"])
        await placement.after_assignment(db=db, document=document, how="queue", now=now)

    async def decide(current: dict[str, Any]) -> Decision | None:
        if not lifecycle.applies(current, lifecycle.Command.ASSIGN):
            return None
        choice = await owners.pick_owner(
            db=db,
            org=current["org"],
            department_id=current["department"],
            required_skill=current.get("required_skill"),
        )
        if choice is None:
            return None
        owner = {
            "owner_id": choice.staff.id,
            "owner_name": choice.staff.name,
            "assigned_at": now,
        }
        update = merge_updates(
            lifecycle.moved(current, lifecycle.Command.ASSIGN),
            {"$set": {**owner, **owners.slot_fields(current["org"], choice.staff.id, choice.slot)}},
            store.history(
                at=now, action="assigned_from_queue", actor="routing", owner=choice.staff.id
            ),
        )
        announced = lifecycle.assigned_event({**current, **update["$set"]})
        return Decision(update, [(EventType.COMPLAINT_ASSIGNED, announced)], [after])

    await store.change(db=db, settings=settings, complaint_id=complaint_id, decide=decide, now=now)
    return bool(assigned)


async def drain_queue(
    *, db: AsyncDatabase, settings: RoutingSettings, org: str, department_id: str, now: datetime
) -> int:
    """Assign queued complaints of a department, most severe first, while capacity lasts.

    A complaint waiting for a skill nobody free has does not hold up the ones behind it;
    one that needs no skill and still finds nobody means the department is full.

    A department with nobody under capacity is not read at all: the periodic sweep
    offers every department with a queue again, and the local server reads a queue
    whole before its sort and limit, so each sweep cost more the longer a full
    department's queue grew (docs/performance.md).
    """
    if not await owners.has_room(db=db, org=org, department_id=department_id):
        return 0
    queued = await store.queued_in_department(
        db=db, org=org, department_id=department_id, limit=DRAIN_BATCH
    )
    assigned = 0
    for waiting in queued:
        if await assign_from_queue(db=db, settings=settings, complaint_id=waiting["_id"], now=now):
            assigned += 1
        elif not waiting.get("required_skill"):
            break
    return assigned


async def offer_freed_capacity(
    *, db: AsyncDatabase, settings: RoutingSettings, previous: dict[str, Any], now: datetime
) -> None:
    """The assignment left ``previous``: release its owner's slot (if it held one) in the load
    hint, then the department (and the owner's own one) may take queued work."""
    departments = {previous["department"]} - {None}  # an unroutable one had none
    owner_id = previous.get("owner_id")
    if owner_id and previous["status"] == AssignmentStatus.OPEN.value:
        await directory_store.record_release(
            db=db, org=previous["org"], staff_id=owner_id, slot=previous.get("owner_slot_no")
        )
    if owner_id:
        owner = await directory_store.find_staff(db=db, org=previous["org"], staff_id=owner_id)
        if owner is not None:
            departments.add(owner.department_id)
    for department in sorted(departments):
        await drain_queue(
            db=db, settings=settings, org=previous["org"], department_id=department, now=now
        )
