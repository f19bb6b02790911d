"""Intake's events applied to the assignment: clocks stop, pause, resume and restart.

Each function applies one consumed intake event through the aggregate kernel
with the event id, so a redelivered event has no second effect, and asks the
transition table (``routing.lifecycle``) first: an event with nothing to do in
the assignment's status (a late acknowledgement of a resolved complaint) is
remembered as applied and changes nothing. Finishing a complaint frees its owner
slot in the same write, then offers the freed capacity to the department queue.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from complaints_shared.aggregate import Decision
from complaints_shared.envelope import CloudEvent
from complaints_shared.events import (
    ComplaintReopened,
    ComplaintResolved,
    ComplaintResponsibilitySet,
    EventType,
    Severity,
    SlaClock,
)
from complaints_shared.logs import get_logger
from complaints_shared.mongo import merge_updates
from routing import directory_store, flows, lifecycle, rules_store, sla, store
from routing.lifecycle import Command
from routing.models import AssignmentStatus, ClockState, StaffStatus
from routing.settings import RoutingSettings

# Waiting on the customer pauses these; the authority's report deadline keeps running.
CUSTOMER_CLOCKS = (SlaClock.ACKNOWLEDGE.value, SlaClock.RESOLVE.value)
# What each of intake's finishing events does to the assignment.
FINISHING = {
    Command.RESOLVE: AssignmentStatus.RESOLVED,
    Command.REJECT: AssignmentStatus.REJECTED,
    Command.WITHDRAW: AssignmentStatus.WITHDRAWN,
    Command.CLOSE: AssignmentStatus.CLOSED,
}

log = get_logger(__name__)


def _actor(event: CloudEvent) -> str:
    return f"intake:{event.source}"


def _applies(current: dict[str, Any], command: Command, event: CloudEvent) -> bool:
    if lifecycle.applies(current, command):
        return True
    log.info(
        "event_not_applicable",
        event_type=event.type,
        command=command.value,
        status=current["status"],
    )
    return False


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

    def decide(current: dict[str, Any]) -> Decision | None:
        if not _applies(current, Command.ACKNOWLEDGE, event):
            return None
        clocks = sla.load_clocks(current.get("clocks"))
        ack = clocks.get(SlaClock.ACKNOWLEDGE.value)
        if ack is None or ack.state is ClockState.STOPPED:
            return None
        clocks[SlaClock.ACKNOWLEDGE.value] = sla.stop_clock(ack, at=at)
        update = merge_updates(
            lifecycle.moved(current, Command.ACKNOWLEDGE),
            {"$set": {**store.clock_fields(clocks), "acknowledged_at": at}},
            store.history(at=now, action="acknowledged", actor=_actor(event)),
        )
        return Decision(update)

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

    def decide(current: dict[str, Any]) -> Decision | None:
        if not _applies(current, Command.PAUSE, event) or current.get("paused"):
            return None
        clocks = sla.load_clocks(current.get("clocks"))
        for name in CUSTOMER_CLOCKS:
            if name in clocks:
                clocks[name] = sla.pause_clock(clocks[name], at=at)
        update = merge_updates(
            lifecycle.moved(current, Command.PAUSE),
            {"$set": {**store.clock_fields(clocks), "paused": True, "paused_at": at}},
            store.history(at=now, action="paused", actor=_actor(event)),
        )
        return Decision(update)

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

    def decide(current: dict[str, Any]) -> Decision | None:
        if not _applies(current, Command.RESUME, event) or not current.get("paused"):
            return None
        clocks = sla.load_clocks(current.get("clocks"))
        for name in CUSTOMER_CLOCKS:
            if name in clocks:
                clocks[name] = sla.resume_clock(clocks[name], calendar=calendar, at=at)
        fields = store.clock_fields(clocks)
        update = merge_updates(
            lifecycle.moved(current, Command.RESUME),
            {"$set": {**fields, "paused": False, "paused_at": None}},
            store.history(at=now, action="resumed", actor=_actor(event)),
        )
        if current["status"] != AssignmentStatus.OPEN.value:
            return Decision(update)
        announced = store.assigned_event({**current, **fields})
        return Decision(update, [(EventType.COMPLAINT_ASSIGNED, announced)])

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
    command: Command,
    at: datetime,
    now: datetime,
    resolved: ComplaintResolved | None = None,
) -> None:
    """Resolved, rejected, withdrawn or closed: every clock stops and the slot is freed."""

    async def offer(document: dict[str, Any], previous: dict[str, Any]) -> None:
        await offer_freed_capacity(db=db, settings=settings, previous=previous, now=now)

    def decide(current: dict[str, Any]) -> Decision | None:
        if not _applies(current, command, event):
            return None
        clocks = {
            name: sla.stop_clock(clock, at=at)
            for name, clock in sla.load_clocks(current.get("clocks")).items()
        }
        set_fields: dict[str, Any] = store.clock_fields(clocks)
        if current["status"] in lifecycle.UNFINISHED:
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
        update = merge_updates(
            lifecycle.moved(current, command),
            {"$set": set_fields},
            store.FREE_SLOT,
            store.history(at=now, action=FINISHING[command].value, actor=_actor(event)),
        )
        return Decision(update, events, [lambda document: offer(document, current)])

    await store.change(
        db=db,
        settings=settings,
        complaint_id=complaint_id,
        decide=decide,
        now=now,
        event_id=event.id,
    )


async def offer_freed_capacity(
    *, db: AsyncDatabase, settings: RoutingSettings, previous: dict[str, Any], now: datetime
) -> None:
    """The assignment left ``previous``: release its owner's slot (if it held one) in the load
    hint, then the department (and the owner's own one) may take queued work."""
    departments = {previous["department"]} - {None}  # an unroutable one had none
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

    async def count_assignment(document: dict[str, Any]) -> None:
        if document.get("owner_id"):
            await directory_store.record_assignment(
                db=db, org=data.org, staff_id=document["owner_id"], at=now
            )

    async def decide(current: dict[str, Any]) -> Decision | None:
        if not _applies(current, Command.REOPEN, event):
            return None
        if current.get("department") is None:  # it never had a route: wait for one again
            return Decision(
                merge_updates(
                    lifecycle.moved(current, Command.NO_ROUTE),
                    {"$set": {"finished_at": None, "reopen_count": data.reopen_count}},
                    store.history(
                        at=now, action="reopened", actor=_actor(event), reason=data.reason
                    ),
                )
            )
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
        command = Command.REOPEN if owner is not None else Command.REOPEN_TO_QUEUE
        set_fields: dict[str, Any] = {
            **lifecycle.moved(current, command)["$set"],
            **store.clock_fields(clocks),
            "paused": False,
            "finished_at": None,
            "reopen_count": data.reopen_count,
        }
        if owner is None:
            set_fields.update(owner_id=None, owner_name=None, queued_at=now)
        else:
            set_fields.update(
                owner_id=owner.staff.id,
                owner_name=owner.staff.name,
                **store.slot_fields(current["org"], owner.staff.id, owner.slot),
            )
            if owner.staff.id != current.get("owner_id"):
                set_fields["assigned_at"] = now
        reopened = {**current, **set_fields}
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
        return Decision(update, [*escalation_events, announced], [count_assignment])

    await store.change(
        db=db,
        settings=settings,
        complaint_id=data.complaint_id,
        decide=decide,
        now=now,
        event_id=event.id,
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
