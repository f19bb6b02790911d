"""The complaint's life as routing follows it: clocks stop, pause, resume and restart.

Each function applies one consumed intake event to the assignment through
``store.change`` with the event id, so a redelivered event has no second
effect. Finishing a complaint frees its owner slot in the same write, then
offers the freed capacity to the department queue.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from complaints_shared.envelope import CloudEvent
from complaints_shared.events import (
    ComplaintReopened,
    ComplaintResolved,
    ComplaintResponsibilitySet,
    EventType,
    Severity,
    SlaClock,
)
from complaints_shared.mongo import merge_updates
from routing import directory_store, flows, rules_store, sla, store
from routing.models import ACTIVE_STATUSES, AssignmentStatus, ClockState, StaffStatus
from routing.settings import RoutingSettings
from routing.store import Decision

# Waiting on the customer pauses these; the authority's report deadline keeps running.
CUSTOMER_CLOCKS = (SlaClock.ACKNOWLEDGE.value, SlaClock.RESOLVE.value)
ACTIVE = {status.value for status in ACTIVE_STATUSES}


def _actor(event: CloudEvent) -> str:
    return f"intake:{event.source}"


async def acknowledge(
    *,
    db: AsyncDatabase,
    settings: RoutingSettings,
    event: CloudEvent,
    complaint_id: str,
    at: datetime,
    now: datetime,
) -> None:
    """受理 stops the acknowledge clock; the resolve clock runs on."""

    async def decide(current: dict[str, Any]) -> Decision:
        clocks = sla.load_clocks(current.get("clocks"))
        ack = clocks.get(SlaClock.ACKNOWLEDGE.value)
        if ack is None or ack.state is ClockState.STOPPED:
            return None
        clocks[SlaClock.ACKNOWLEDGE.value] = sla.stop_clock(ack, at=at)
        update = merge_updates(
            {"$set": {**store.clock_fields(clocks), "acknowledged_at": at}},
            store.history(at=now, action="acknowledged", actor=_actor(event)),
        )
        return update, []

    await store.change(
        db=db,
        settings=settings,
        complaint_id=complaint_id,
        decide=decide,
        now=now,
        event_id=event.id,
    )


async def pause(
    *,
    db: AsyncDatabase,
    settings: RoutingSettings,
    event: CloudEvent,
    complaint_id: str,
    at: datetime,
    now: datetime,
) -> None:
    """Waiting on the customer: the customer-facing clocks stand still."""

    async def decide(current: dict[str, Any]) -> Decision:
        if current["status"] not in ACTIVE or current.get("paused"):
            return None
        clocks = sla.load_clocks(current.get("clocks"))
        for name in CUSTOMER_CLOCKS:
            if name in clocks:
                clocks[name] = sla.pause_clock(clocks[name], at=at)
        update = merge_updates(
            {"$set": {**store.clock_fields(clocks), "paused": True, "paused_at": at}},
            store.history(at=now, action="paused", actor=_actor(event)),
        )
        return update, []

    await store.change(
        db=db,
        settings=settings,
        complaint_id=complaint_id,
        decide=decide,
        now=now,
        event_id=event.id,
    )


async def resume(
    *,
    db: AsyncDatabase,
    settings: RoutingSettings,
    event: CloudEvent,
    complaint_id: str,
    org: str,
    branch: str,
    at: datetime,
    now: datetime,
) -> None:
    """The customer answered: lay the remaining time out again and announce the new due times."""
    calendar = await store.branch_calendar(db=db, org=org, branch=branch)

    async def decide(current: dict[str, Any]) -> Decision:
        if not current.get("paused"):
            return None
        clocks = sla.load_clocks(current.get("clocks"))
        for name in CUSTOMER_CLOCKS:
            if name in clocks:
                clocks[name] = sla.resume_clock(clocks[name], calendar=calendar, at=at)
        fields = store.clock_fields(clocks)
        update = merge_updates(
            {"$set": {**fields, "paused": False, "paused_at": None}},
            store.history(at=now, action="resumed", actor=_actor(event)),
        )
        if current["status"] != AssignmentStatus.OPEN.value:
            return update, []
        announced = store.assigned_event({**current, **fields})
        return update, [(EventType.COMPLAINT_ASSIGNED, announced)]

    await store.change(
        db=db,
        settings=settings,
        complaint_id=complaint_id,
        decide=decide,
        now=now,
        event_id=event.id,
    )


def _responsibility(current: dict[str, Any], department: str | None) -> str | None:
    """Normalise a responsible department given as a code of the complaint's branch."""
    if department is None:
        return None
    if ":" in department:
        return department
    return f"{current['branch']}:{department}"


async def finish(
    *,
    db: AsyncDatabase,
    settings: RoutingSettings,
    event: CloudEvent,
    complaint_id: str,
    status: AssignmentStatus,
    at: datetime,
    now: datetime,
    resolved: ComplaintResolved | None = None,
) -> None:
    """Resolved, rejected, withdrawn or closed: every clock stops and the slot is freed."""
    freed: list[dict[str, Any]] = []

    async def decide(current: dict[str, Any]) -> Decision:
        freed.clear()
        clocks = {
            name: sla.stop_clock(clock, at=at)
            for name, clock in sla.load_clocks(current.get("clocks")).items()
        }
        set_fields: dict[str, Any] = {**store.clock_fields(clocks), "status": status.value}
        if status is not AssignmentStatus.CLOSED or current["status"] in ACTIVE:
            set_fields["finished_at"] = at
        events = []
        if resolved is not None and resolved.responsible_department:
            department = _responsibility(current, resolved.responsible_department)
            set_fields["responsible_department"] = department
            set_fields["responsible_party"] = (
                resolved.responsible_party.value if resolved.responsible_party else None
            )
            responsibility = ComplaintResponsibilitySet(
                complaint_id=current["_id"],
                org=current["org"],
                branch=current["branch"],
                responsible_department=department,
                responsible_party=resolved.responsible_party,
                set_by=resolved.resolved_by or _actor(event),
                set_at=at,
            )
            events.append((EventType.COMPLAINT_RESPONSIBILITY_SET, responsibility))
        if current["status"] == status.value and not events:
            return None
        freed.append(current)
        update = merge_updates(
            {"$set": set_fields},
            store.FREE_SLOT,
            store.history(at=now, action=status.value, actor=_actor(event)),
        )
        return update, events

    await store.change(
        db=db,
        settings=settings,
        complaint_id=complaint_id,
        decide=decide,
        now=now,
        event_id=event.id,
    )
    for current in freed:
        await offer_freed_capacity(db=db, settings=settings, previous=current, now=now)


async def offer_freed_capacity(
    *, db: AsyncDatabase, settings: RoutingSettings, previous: dict[str, Any], now: datetime
) -> None:
    """The assignment left ``previous``: release its owner's slot (if it held one) in the load
    hint, then the department (and the owner's own one) may take queued work."""
    departments = {previous["department"]}
    owner_id = previous.get("owner_id")
    if owner_id and previous["status"] == AssignmentStatus.OPEN.value:
        await directory_store.record_release(db=db, org=previous["org"], staff_id=owner_id)
    if owner_id:
        owner = await directory_store.find_staff(db=db, org=previous["org"], staff_id=owner_id)
        if owner is not None:
            departments.add(owner.department_id)
    for department in sorted(departments):
        await store.drain_queue(
            db=db, settings=settings, org=previous["org"], department_id=department, now=now
        )


async def reopen(
    *,
    db: AsyncDatabase,
    settings: RoutingSettings,
    event: CloudEvent,
    data: ComplaintReopened,
    now: datetime,
) -> None:
    """Open again: back to the owner, a fresh resolve clock, and one level up the chain."""
    current = await db[store.ASSIGNMENTS].find_one({"_id": data.complaint_id})
    if current is None:
        return
    calendar = await store.branch_calendar(db=db, org=data.org, branch=data.branch)
    policies = await rules_store.load_policies(db=db, org=data.org)
    targets = await store.escalation_targets(
        db=db, org=data.org, department_id=current["department"]
    )

    taken: list[store.OwnerChoice] = []

    async def decide(current: dict[str, Any]) -> Decision:
        taken.clear()
        if current["status"] in ACTIVE:
            return None
        policy = sla.select_policy(
            policies,
            org=data.org,
            requested=current.get("sla_policy"),
            category=current["category"],
        )
        clocks = sla.load_clocks(current.get("clocks"))
        clocks[SlaClock.RESOLVE.value] = flows.restart_resolve_clock(
            calendar=calendar,
            policy=policy,
            severity=Severity(current["severity"]),
            start=data.reopened_at,
        )
        owner = await _reopen_owner(db=db, current=current)
        if owner is not None:
            taken.append(owner)
        reopened = {**current, **store.clock_fields(clocks), "paused": False}
        set_fields: dict[str, Any] = {
            **store.clock_fields(clocks),
            "paused": False,
            "finished_at": None,
            "reopen_count": data.reopen_count,
        }
        if owner is None:
            set_fields.update(status=AssignmentStatus.QUEUED.value, owner_id=None, owner_name=None)
            set_fields["queued_at"] = now
        else:
            set_fields.update(
                status=AssignmentStatus.OPEN.value,
                owner_id=owner.staff.id,
                owner_name=owner.staff.name,
                **store.slot_fields(current["org"], owner.staff.id, owner.slot),
            )
            if owner.staff.id != current.get("owner_id"):
                set_fields["assigned_at"] = now
        reopened.update(set_fields)
        escalation_update, escalation_events = store.escalate_one_level(
            reopened, targets=targets, reason="reopened", by=data.reopened_by, at=now
        )
        reopened["escalation_level"] = escalation_update.get("$set", {}).get(
            "escalation_level", reopened.get("escalation_level", 0)
        )
        announced = (
            (EventType.COMPLAINT_QUEUED, store.queued_event(reopened))
            if owner is None
            else (EventType.COMPLAINT_ASSIGNED, store.assigned_event(reopened))
        )
        update = merge_updates(
            {"$set": set_fields},
            escalation_update,
            store.history(at=now, action="reopened", actor=_actor(event), reason=data.reason),
        )
        return update, [*escalation_events, announced]

    await store.change(
        db=db,
        settings=settings,
        complaint_id=data.complaint_id,
        decide=decide,
        now=now,
        event_id=event.id,
    )
    for owner in taken:
        await directory_store.record_assignment(
            db=db, org=data.org, staff_id=owner.staff.id, at=now
        )


async def _reopen_owner(*, db: AsyncDatabase, current: dict[str, Any]) -> store.OwnerChoice | None:
    """The previous owner if still active (they know the case), else whoever's turn it is."""
    owner_id = current.get("owner_id")
    if owner_id:
        owner = await directory_store.find_staff(db=db, org=current["org"], staff_id=owner_id)
        if owner is not None and owner.status is StaffStatus.ACTIVE:
            return await store.forced_owner(db=db, org=current["org"], staff=owner)
    return await store.pick_owner(
        db=db,
        org=current["org"],
        department_id=current["department"],
        required_skill=current.get("required_skill"),
    )
