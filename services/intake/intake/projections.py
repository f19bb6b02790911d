"""Applying routing's and follow-up's events to the complaint of record.

Each function is idempotent (the event id is remembered on the document) and
safe against late delivery: assignments keep the newest, escalation levels only
rise, SLA flags only go from false to true, and a follow-up outcome for an
earlier resolution is recorded without changing the status.
"""

from __future__ import annotations

from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from complaints_shared.envelope import CloudEvent
from complaints_shared.events import (
    ClosedVia,
    ComplaintAssigned,
    ComplaintEscalated,
    ComplaintQueued,
    ComplaintReassigned,
    ComplaintResponsibilitySet,
    ComplaintSlaBreached,
    ComplaintSlaWarning,
    EventData,
    FollowupAttempted,
    FollowupCancelled,
    FollowupCompleted,
    FollowupOutcome,
    FollowupScheduled,
)
from complaints_shared.failures import Rejected
from intake import commands, store
from intake.lifecycle import Command, InvalidTransition, Status, transition
from intake.settings import IntakeSettings


async def _apply(
    *,
    db: AsyncDatabase,
    settings: IntakeSettings,
    event: CloudEvent,
    data: EventData,
    action: str,
    decide: Any,
    details: dict[str, Any] | None = None,
) -> None:
    document = await store.change(
        db=db,
        settings=settings,
        complaint_id=data.complaint_id,
        scope={"org": data.org},
        actor=event.source,
        action=action,
        decide=decide,
        now=event.time,
        event_id=event.id,
        details=details,
    )
    if document is None:
        # Not ours to guess: the record was lost (restored from an older backup) or the
        # event names another organisation. The DLQ keeps it until an operator replays it.
        raise Rejected(
            f"complaint {data.complaint_id} of organisation {data.org!r} is not on record here"
        )


def _status_after(current: dict[str, Any], command: Command) -> Status:
    """The status after a command caused by an event; an inapplicable one changes nothing."""
    status = Status(current["status"])
    try:
        return transition(current=status, command=command)
    except InvalidTransition:
        return status


def _is_newer(current: dict[str, Any], at: Any) -> bool:
    known = current.get("assignment")
    return known is None or known["assigned_at"] <= at


async def apply_assigned(
    *, db: AsyncDatabase, settings: IntakeSettings, event: CloudEvent, data: ComplaintAssigned
) -> None:
    def decide(current: dict[str, Any]) -> store.Decision:
        if not _is_newer(current, data.assigned_at):
            return {}, []  # a reassignment already superseded this
        assignment = data.model_dump(
            include={
                "department",
                "department_name",
                "owner_id",
                "owner_name",
                "rule_id",
                "rule_version",
                "assigned_at",
                "duty_officer",
            }
        )
        fields = {
            "status": _status_after(current, Command.ASSIGN).value,
            "assignment": {**assignment, "queued": False},
            "acknowledge_due_at": data.acknowledge_due_at,
            "resolve_due_at": data.resolve_due_at,
        }
        if data.regulatory_report_due_at is not None:
            fields["regulatory_report_due_at"] = data.regulatory_report_due_at
        return {"$set": fields, "$max": {"escalation_level": data.escalation_level}}, []

    await _apply(
        db=db,
        settings=settings,
        event=event,
        data=data,
        action="assigned",
        decide=decide,
        details={
            "department": data.department,
            "owner_id": data.owner_id,
            "rule_id": data.rule_id,
            "rule_version": data.rule_version,
        },
    )


async def apply_queued(
    *, db: AsyncDatabase, settings: IntakeSettings, event: CloudEvent, data: ComplaintQueued
) -> None:
    def decide(current: dict[str, Any]) -> store.Decision:
        if not _is_newer(current, data.queued_at):
            return {}, []
        queued = {
            "department": data.department,
            "department_name": data.department_name,
            "owner_id": None,
            "owner_name": None,
            "rule_id": data.rule_id,
            "rule_version": data.rule_version,
            "assigned_at": data.queued_at,
            "queued": True,
        }
        return {"$set": {"assignment": queued}}, []

    await _apply(
        db=db,
        settings=settings,
        event=event,
        data=data,
        action="queued",
        decide=decide,
        details={"department": data.department},
    )


async def apply_reassigned(
    *, db: AsyncDatabase, settings: IntakeSettings, event: CloudEvent, data: ComplaintReassigned
) -> None:
    def decide(current: dict[str, Any]) -> store.Decision:
        if not _is_newer(current, data.reassigned_at):
            return {}, []
        previous = current.get("assignment") or {}
        assignment = {
            **previous,
            "department": data.department,
            "department_name": data.department_name,
            "owner_id": data.owner_id,
            "owner_name": data.owner_name,
            "assigned_at": data.reassigned_at,
            "queued": data.owner_id is None,
        }
        return {"$set": {"assignment": assignment}}, []

    await _apply(
        db=db,
        settings=settings,
        event=event,
        data=data,
        action="reassigned",
        decide=decide,
        details={
            "from_owner_id": data.from_owner_id,
            "owner_id": data.owner_id,
            "department": data.department,
            "reason": data.reason,
            "by": data.reassigned_by,
        },
    )


async def apply_escalated(
    *, db: AsyncDatabase, settings: IntakeSettings, event: CloudEvent, data: ComplaintEscalated
) -> None:
    def decide(current: dict[str, Any]) -> store.Decision:
        fields: dict[str, Any] = {"status": _status_after(current, Command.ESCALATE).value}
        if data.regulatory_report_due_at is not None:
            fields["regulatory_report_due_at"] = data.regulatory_report_due_at
        return {"$set": fields, "$max": {"escalation_level": data.level}}, []

    await _apply(
        db=db,
        settings=settings,
        event=event,
        data=data,
        action="escalated",
        decide=decide,
        details={
            "level": data.level,
            "to": data.escalated_to_id or data.escalated_to_role,
            "reason": data.reason,
        },
    )


async def apply_sla_warning(
    *, db: AsyncDatabase, settings: IntakeSettings, event: CloudEvent, data: ComplaintSlaWarning
) -> None:
    def decide(current: dict[str, Any]) -> store.Decision:
        return {"$set": {f"sla.{data.clock.value}_warning": True}}, []

    await _apply(
        db=db,
        settings=settings,
        event=event,
        data=data,
        action="sla_warning",
        decide=decide,
        details={"clock": data.clock.value, "due_at": data.due_at},
    )


async def apply_sla_breached(
    *, db: AsyncDatabase, settings: IntakeSettings, event: CloudEvent, data: ComplaintSlaBreached
) -> None:
    def decide(current: dict[str, Any]) -> store.Decision:
        fields = {f"sla.{data.clock.value}_breached": True, "sla_breached": True}
        update: dict[str, Any] = {"$set": fields}
        if data.escalation_level is not None:
            update["$max"] = {"escalation_level": data.escalation_level}
        return update, []

    await _apply(
        db=db,
        settings=settings,
        event=event,
        data=data,
        action="sla_breached",
        decide=decide,
        details={"clock": data.clock.value, "due_at": data.due_at},
    )


async def apply_responsibility_set(
    *,
    db: AsyncDatabase,
    settings: IntakeSettings,
    event: CloudEvent,
    data: ComplaintResponsibilitySet,
) -> None:
    def decide(current: dict[str, Any]) -> store.Decision:
        fields: dict[str, Any] = {"responsible_department": data.responsible_department}
        if data.responsible_party is not None:
            fields["responsible_party"] = data.responsible_party.value
        return {"$set": fields}, []

    await _apply(
        db=db,
        settings=settings,
        event=event,
        data=data,
        action="responsibility_set",
        decide=decide,
        details={"responsible_department": data.responsible_department, "by": data.set_by},
    )


async def record_followup_progress(
    *,
    db: AsyncDatabase,
    settings: IntakeSettings,
    event: CloudEvent,
    data: FollowupScheduled | FollowupAttempted | FollowupCancelled,
) -> None:
    """Scheduled, attempted and cancelled checks only go on the timeline."""
    action = event.type.removeprefix("org.complaintdesk.").removesuffix(".v1")
    details = data.model_dump(mode="json", exclude={"complaint_id", "org", "branch"})

    def decide(current: dict[str, Any]) -> store.Decision:
        return {}, []

    await _apply(
        db=db,
        settings=settings,
        event=event,
        data=data,
        action=action,
        decide=decide,
        details=details,
    )


async def apply_followup_completed(
    *, db: AsyncDatabase, settings: IntakeSettings, event: CloudEvent, data: FollowupCompleted
) -> None:
    """Satisfied or unreachable closes the complaint; unsatisfied reopens it."""

    def decide(current: dict[str, Any]) -> store.Decision:
        satisfaction = data.model_dump(
            mode="python",
            include={
                "followup_id",
                "resolution_number",
                "score",
                "problem_solved",
                "comment",
                "completed_at",
            },
        )
        satisfaction["outcome"] = data.outcome.value
        recorded: store.Decision = ({"$set": {"satisfaction": satisfaction}}, [])
        if data.resolution_number != current.get("resolution_count"):
            return recorded  # a check of an earlier resolution: record only
        unsatisfied = data.outcome is FollowupOutcome.UNSATISFIED
        command = Command.REOPEN if unsatisfied else Command.CLOSE
        status = Status(current["status"])
        try:
            new_status = transition(current=status, command=command)
        except InvalidTransition:
            return recorded
        if unsatisfied:
            build = commands.reopen_build(
                reason="customer not satisfied at follow-up", reopened_by="followup"
            )
        else:
            build = commands.close_build(
                reason=f"follow-up {data.outcome.value}",
                closed_by="followup",
                via=ClosedVia.FOLLOWUP,
            )
        update, events = build(current, event.time)
        update.setdefault("$set", {}).update(
            {"status": new_status.value, "satisfaction": satisfaction}
        )
        return update, events

    await _apply(
        db=db,
        settings=settings,
        event=event,
        data=data,
        action=f"followup_{data.outcome.value}",
        decide=decide,
        details={"followup_id": data.followup_id, "score": data.score, "attempts": data.attempts},
    )
