"""A received complaint becomes an assignment: the new document, its first events, the write.

The plan is made once; the owner is chosen again only when the slot it picked
went to someone else's complaint between the choice and the insert.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from complaints_shared.aggregate import Events
from complaints_shared.events import SEVERITY_ORDER, ComplaintReceived, EventType, Severity
from complaints_shared.logs import get_logger
from complaints_shared.mongo import is_id_clash
from complaints_shared.outbox import outbox_entry, outbox_fields
from complaints_shared.problems import ConcurrentUpdate
from routing.assignments import (
    lifecycle,
    major_incidents,
    owed_drains,
    owners,
    planning,
    routing_context,
    store,
)
from routing.assignments.models import AssignmentStatus
from routing.context_cache import ContextCache
from routing.directory import store as directory_store
from routing.metrics import ASSIGNMENTS as ASSIGNED_METRIC
from routing.metrics import QUEUED
from routing.settings import RoutingSettings

log = get_logger(__name__)
MAX_WRITE_ATTEMPTS = 10


def received_fields(complaint: ComplaintReceived, *, severity: Severity) -> dict[str, Any]:
    """What every assignment keeps of the complaint as received; ``severity`` as applied."""
    return {
        "_id": complaint.complaint_id,
        "org": complaint.org,
        "branch": complaint.branch,
        "reference": complaint.reference,
        "category": complaint.category.value,
        "channel": complaint.channel.value,
        "received_severity": complaint.severity.value,
        "severity": severity.value,
        "priority": SEVERITY_ORDER.index(severity),
        "flags": sorted(planning.complaint_flags(complaint)),
        "received_at": complaint.received_at,
    }


def fresh_fields(*, now: datetime) -> dict[str, Any]:
    """A new assignment: nothing escalated, paused or breached, no event applied yet."""
    return {
        "escalation_level": 0,
        "escalations": [],
        "paused": False,
        "breached": False,
        "applied_events": [],
        "version": 1,
        "created_at": now,
        "updated_at": now,
    }


def new_document(
    complaint: ComplaintReceived,
    plan: planning.RoutePlan,
    *,
    owner: owners.OwnerChoice | None,
    now: datetime,
) -> dict[str, Any]:
    department = plan.department
    document: dict[str, Any] = {
        **received_fields(complaint, severity=plan.severity),
        "department": department.id,
        "department_name": department.name,
        "rule_id": plan.rule.id,
        "rule_version": plan.rule.version,
        "required_skill": plan.rule.action.required_skill,
        store.SKILL_RULE_VERSION: plan.rule.version,  # the rule's changes follow (rule_changes)
        "sla_policy": plan.policy.id,
        "notify": [target.model_dump(mode="json") for target in plan.notify],
        "clock_starts_at": plan.clock_starts_at,
        "duty_officer": plan.duty_officer is not None,
        "major_incident": plan.major_incident,
        **major_incidents.awaiting(plan.escalation_targets, major_incident=plan.major_incident),
        **lifecycle.clock_fields(plan.clocks),
        store.CALENDAR_VERSION: plan.calendar_version,
        **fresh_fields(now=now),
        "history": [],
    }
    if owner is None:
        document.update(
            status=lifecycle.transition(current=None, command=lifecycle.Command.QUEUE).value,
            owner_id=None,
            owner_name=None,
            assigned_at=None,
            queued_at=now,
        )
    else:
        document.update(
            status=lifecycle.transition(current=None, command=lifecycle.Command.ASSIGN).value,
            owner_id=owner.staff.id,
            owner_name=owner.staff.name,
            assigned_at=now,
            queued_at=None,
            **owners.slot_fields(complaint.org, owner.staff.id, owner.slot),
        )
    return document


def initial_events(
    document: dict[str, Any], plan: planning.RoutePlan, *, now: datetime
) -> tuple[dict[str, Any], Events]:
    """The events of a new assignment; a major incident is escalated in the same write."""
    events: Events = []
    if plan.escalated_to is not None:
        record = lifecycle.escalation_record(
            plan.escalated_to, reason="critical_incident", by="routing", at=now
        )
        document["escalation_level"] = plan.escalation_level
        document["escalations"] = [record]
    document.update(lifecycle.numbered(document))
    if document["status"] == AssignmentStatus.QUEUED.value:
        events.append((EventType.COMPLAINT_QUEUED, lifecycle.queued_event(document)))
    else:
        events.append((EventType.COMPLAINT_ASSIGNED, lifecycle.assigned_event(document)))
    if plan.escalated_to is not None:
        due = document.get("regulatory_report_due_at")
        record = document["escalations"][0]
        events.append(
            (
                EventType.COMPLAINT_ESCALATED,
                lifecycle.escalated_event(document, record, regulatory_due=due),
            )
        )
    return document, events


async def route_received(
    *,
    db: AsyncDatabase,
    settings: RoutingSettings,
    complaint: ComplaintReceived,
    now: datetime,
    contexts: ContextCache[routing_context.RoutingContext] | None = None,
) -> bool:
    """Route a received complaint exactly once; False when it was routed before.

    A redelivery is told by the insert (its ``_id`` is taken), not by a read before it:
    planning reads only, so a complaint routed before costs one refused insert.
    """
    if contexts is None:
        context = await routing_context.load_context(db=db, complaint=complaint)
    else:
        context = await contexts.get(
            db=db,
            org=complaint.org,
            branch=complaint.branch,
            load=lambda: routing_context.load_context(db=db, complaint=complaint),
        )
    plan = routing_context.plan_for(complaint, context, routed_at=now)
    for attempt in range(MAX_WRITE_ATTEMPTS):
        # First the slot the load hint names, unchecked: the insert tells if it is held.
        owner, how = await owners.owner_for_plan(
            db=db, complaint=complaint, plan=plan, trust_hints=attempt == 0
        )
        document, events = initial_events(
            new_document(complaint, plan, owner=owner, now=now), plan, now=now
        )
        document.update(
            outbox_fields(
                [
                    outbox_entry(event_type=event_type, data=data, settings=settings)
                    for event_type, data in events
                ]
            )
        )
        try:
            await store.insert(db=db, document=document)
        except DuplicateKeyError as exc:
            # Which unique index the server names is not which one matters: a redelivery of
            # an assignment made with the same slot clashes on both, and may be named
            # by its slot. Whether the assignment is stored decides; a first try's slot
            # (unchecked, from the hint) is often someone else's, so only a second asks.
            if is_id_clash(exc) or (
                attempt > 0 and await store.exists(db=db, complaint_id=complaint.complaint_id)
            ):
                return False  # a redelivery, or another replica got there first
            continue  # the slot went to someone else's complaint: choose again
        await after_assignment(db=db, document=document, how=how, now=now)
        return True
    # Every free slot went to someone else's complaint, time after time.
    raise ConcurrentUpdate(detail=f"assignment {complaint.complaint_id}: no owner slot held still")


async def after_assignment(
    *, db: AsyncDatabase, document: dict[str, Any], how: str, now: datetime
) -> None:
    if document["status"] == AssignmentStatus.QUEUED.value:
        owed_drains.owe(db=db, org=document["org"], department_id=document["department"])
        QUEUED.labels(document["org"], document["department"]).inc()
        log.info("complaint_queued", department=document["department"])
        return
    ASSIGNED_METRIC.labels(how).inc()
    await directory_store.record_assignment(
        db=db,
        org=document["org"],
        staff_id=document["owner_id"],
        slot=document.get("owner_slot_no"),
        at=now,
    )
    log.info(
        "complaint_assigned",
        department=document["department"],
        owner=document["owner_id"],
        how=how,
    )
