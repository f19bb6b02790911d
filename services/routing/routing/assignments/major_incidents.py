"""A major incident reaches the branch head, once the branch has one.

A major incident goes to its chain's branch head at once (``planning``, and
``projections`` for one found major later). While the branch has no active head (the post
vacant, the head on leave) it goes to the most senior person the chain finds instead, and
the assignment is marked ``awaiting_branch_head`` (again at a reopen, while the branch still
has none, and when a withdrawn breach takes back an escalation: ``after_withdrawal``).
The queue sweep looks at every marked one (``follow_up``) and escalates it, reason
``critical_incident``, to someone more senior as soon as the chain finds one: the head
(appointed, or back from leave), which ends the mark, or while there is none a more senior
stand-in than the one reached. One finished, no longer a major incident, or standing at the
head already is unmarked. Until 5 December such an incident was escalated to nobody at
once, and reached the head only by a later climb (a breach, a reopen, a supervisor's
escalation) once there was one.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from complaints_shared.aggregate import Decision, Events
from complaints_shared.events import EventType
from complaints_shared.failures import is_dependency_unavailable, redacted_error
from complaints_shared.logs import get_logger
from complaints_shared.mongo import merge_updates
from routing.assignments import lifecycle, routing_context, store
from routing.assignments.lifecycle import Command
from routing.directory.escalation import (
    EscalationTarget,
    branch_head_target,
    has_branch_head,
    major_incident_target,
)
from routing.directory.models import StaffRole
from routing.settings import RoutingSettings

log = get_logger(__name__)

AWAITING = store.AWAITING_BRANCH_HEAD
REASON = "critical_incident"
# What the sweep reads of a marked assignment to tell whether there is anything to do.
MARKED_FIELDS = {
    "org": 1,
    "department": 1,
    "status": 1,
    "major_incident": 1,
    "escalation_level": 1,
    "escalations": 1,
}


def awaiting(targets: list[EscalationTarget], *, major_incident: bool) -> dict[str, bool]:
    """The mark of a major incident whose chain finds no branch head (else nothing)."""
    return {AWAITING: True} if major_incident and not has_branch_head(targets) else {}


def after_withdrawal(current: dict[str, Any], withdrawals: Events, command: Command) -> dict:
    """The mark again for a major incident still being worked whose escalations a withdrawn
    breach took back: it may stand below the head now, and the sweep takes it up again (to
    the head, reason ``critical_incident``) or unmarks it. Until 6 December a breach that
    climbed to the head before the sweep did ended the mark; withdrawn, it left the
    incident below the head for good, the head told of a breach and its withdrawal only."""
    took_back = any(data.withdrawn_escalations for _, data in withdrawals)
    if not (took_back and current.get("major_incident")):
        return {}
    still_worked = lifecycle.transition(current=lifecycle.status_of(current), command=command)
    return {"$set": {AWAITING: True}} if still_worked in lifecycle.ACTIVE else {}


def escalation(
    document: dict[str, Any],
    target: EscalationTarget,
    *,
    now: datetime,
    reason: str = REASON,
    by: str = "routing",
) -> tuple[dict[str, Any], Events]:
    """The update and event taking a major incident to ``target`` (reason ``critical_incident``
    unless said)."""
    record = lifecycle.escalation_record(target, reason=reason, by=by, at=now)
    escalated = lifecycle.escalated_event(
        document, record, regulatory_due=document.get("regulatory_report_due_at")
    )
    return (
        {"$set": {"escalation_level": target.level}, "$push": {"escalations": record}},
        [(EventType.COMPLAINT_ESCALATED, escalated)],
    )


def reopen_escalation(
    document: dict[str, Any], *, targets: list[EscalationTarget], by: str, at: datetime
) -> tuple[dict[str, Any], Events]:
    """A reopen's climb: one rung up the chain, and for a major incident standing below a
    head its chain finds, to the head at once. Until 6 December it was one rung for every
    complaint: a major incident finished below the head (nobody above it then, or its
    rungs taken back) went back to a team lead, unmarked since the branch had a head."""
    if document.get("major_incident"):
        head = branch_head_target(targets, reached=lifecycle.reached(document))
        if head is not None:
            return escalation(document, head, now=at, reason="reopened", by=by)
    return lifecycle.escalate_one_level(document, targets=targets, reason="reopened", by=by, at=at)


async def follow_up(*, db: AsyncDatabase, settings: RoutingSettings, now: datetime) -> int:
    """Escalate the marked major incidents whose chain finds someone more senior now (the
    head, else a stand-in above the one reached); how many. Every marked one, each chain
    read once; one with nobody more senior costs no further read."""
    chains: dict[tuple[str, str], list[EscalationTarget]] = {}
    escalated = 0
    async for document in db[store.ASSIGNMENTS].find({AWAITING: True}, projection=MARKED_FIELDS):
        try:
            key = (document["org"], document["department"])
            if key not in chains:
                chains[key] = await routing_context.escalation_targets(
                    db=db, org=key[0], department_id=key[1]
                )
            targets = chains[key]
            if (
                _still_awaiting(document)
                and not has_branch_head(targets)
                and major_incident_target(targets, reached=lifecycle.reached(document)) is None
            ):
                continue  # nobody more senior yet: still awaiting
            escalated += await _escalate_marked(
                db=db, settings=settings, marked=document, targets=targets, now=now
            )
        except Exception as exc:
            if is_dependency_unavailable(exc):  # the database away: the next sweep tries again
                raise
            # This complaint's own (a conflict, a fault): logged, the others go on (it stays
            # marked for the next sweep).
            log.error(
                "major_incident_not_escalated",
                complaint_id=document["_id"],
                error=redacted_error(exc),
            )
    if escalated:
        log.info("major_incidents_escalated", complaints=escalated)
    return escalated


async def mark_unmarked(*, db: AsyncDatabase) -> int:
    """At start: mark the major incidents being worked that stand below a branch head and
    carry no mark, for the sweep to judge (``follow_up``); how many. A release before 5
    December escalated one whose branch had no head to nobody and marked nothing, and one
    before the evening of 5 December left one whose head rung a withdrawn breach took back
    unmarked: each stayed below the head. So may an older replica that stopped before this
    one started. One read of the work being done (its escalations), one write."""
    found = db[store.ASSIGNMENTS].find(
        {"status": {"$in": list(lifecycle.ACTIVE)}, "major_incident": True, AWAITING: None},
        projection={"escalation_level": 1, "escalations": 1},
    )
    below = [
        document["_id"]
        async for document in found
        if lifecycle.reached(document).role is not StaffRole.BRANCH_HEAD
    ]
    if not below:
        return 0
    marked = await db[store.ASSIGNMENTS].update_many(
        {"_id": {"$in": below}, AWAITING: None}, {"$set": {AWAITING: True}}
    )
    log.info("major_incidents_marked_at_start", complaints=marked.modified_count)
    return marked.modified_count


def _still_awaiting(document: dict[str, Any]) -> bool:
    """Whether a marked assignment is a major incident still being worked (else unmarked:
    marked again should it be reopened)."""
    return bool(document.get("major_incident")) and lifecycle.applies(document, Command.ESCALATE)


async def _escalate_marked(
    *,
    db: AsyncDatabase,
    settings: RoutingSettings,
    marked: dict[str, Any],
    targets: list[EscalationTarget],
    now: datetime,
) -> int:
    escalated = {"written": False}  # by the decision written (it may be taken again)

    def decide(current: dict[str, Any]) -> Decision | None:
        escalated["written"] = False
        if current.get(AWAITING) is not True:
            return None
        if current["department"] != marked["department"]:
            return None  # moved since it was read: the next sweep reads its new chain
        unmark = {"$unset": {AWAITING: ""}}
        if not _still_awaiting(current):
            return Decision(unmark, [])
        head = has_branch_head(targets)
        target = major_incident_target(targets, reached=lifecycle.reached(current))
        if target is None:
            # At the head or above already; without a head, nobody more senior yet.
            return Decision(unmark, []) if head else None
        update, events = escalation(current, target, now=now)
        escalated["written"] = True
        return Decision(merge_updates(update, unmark) if head else update, events)

    await store.change(db=db, settings=settings, complaint_id=marked["_id"], decide=decide, now=now)
    return int(escalated["written"])
