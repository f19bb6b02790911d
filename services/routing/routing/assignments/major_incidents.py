"""A major incident reaches the branch head, once the branch has one.

A major incident goes to its chain's branch head at once (``planning``, and
``projections`` for one found major later). While the branch has no active head (the post
vacant, the head on leave) it goes to the most senior person the chain finds instead, and
the assignment is marked ``awaiting_branch_head``. The queue sweep looks at the marked ones
(``follow_up``) and escalates each to the head as soon as the chain finds one (a head
appointed, or back from leave), reason ``critical_incident``; one finished, no longer a
major incident, or standing at the head already is unmarked. Until 5 December a major
incident in a branch without a head reached nobody, and nobody once a head came.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from complaints_shared.aggregate import Decision, Events
from complaints_shared.events import EventType
from complaints_shared.failures import is_transient, redacted_error
from complaints_shared.logs import get_logger
from complaints_shared.mongo import merge_updates
from routing.assignments import lifecycle, routing_context, store
from routing.assignments.lifecycle import Command
from routing.directory.escalation import EscalationTarget, branch_head_target, has_branch_head
from routing.settings import RoutingSettings

log = get_logger(__name__)

AWAITING = store.AWAITING_BRANCH_HEAD
# Marked assignments looked at per sweep (the oldest marks first come again next time).
BATCH = 100
REASON = "critical_incident"


def awaiting(major_incident: bool, targets: list[EscalationTarget]) -> dict[str, bool]:
    """The mark of a major incident whose chain finds no branch head (else nothing)."""
    return {AWAITING: True} if major_incident and not has_branch_head(targets) else {}


def escalation(
    document: dict[str, Any], target: EscalationTarget, *, now: datetime
) -> tuple[dict[str, Any], Events]:
    """The update and event taking a major incident to ``target`` (reason ``critical_incident``)."""
    record = lifecycle.escalation_record(target, reason=REASON, by="routing", at=now)
    escalated = lifecycle.escalated_event(
        document, record, regulatory_due=document.get("regulatory_report_due_at")
    )
    return (
        {"$set": {"escalation_level": target.level}, "$push": {"escalations": record}},
        [(EventType.COMPLAINT_ESCALATED, escalated)],
    )


async def follow_up(*, db: AsyncDatabase, settings: RoutingSettings, now: datetime) -> int:
    """Escalate the marked major incidents whose chain finds a branch head now; how many."""
    marked = db[store.ASSIGNMENTS].find(
        {AWAITING: True}, projection={"_id": 1, "org": 1, "department": 1}
    )
    escalated = 0
    for document in await marked.limit(BATCH).to_list(None):
        try:
            escalated += await _to_head(db=db, settings=settings, marked=document, now=now)
        except Exception as exc:
            if is_transient(exc):  # the database away: the next sweep tries again
                raise
            # This complaint's own fault: logged, the others go on (it stays marked).
            log.error(
                "major_incident_head_not_reached",
                complaint_id=document["_id"],
                error=redacted_error(exc),
            )
    if escalated:
        log.info("major_incidents_reached_branch_head", complaints=escalated)
    return escalated


async def _to_head(
    *, db: AsyncDatabase, settings: RoutingSettings, marked: dict[str, Any], now: datetime
) -> int:
    targets = await routing_context.escalation_targets(
        db=db, org=marked["org"], department_id=marked["department"]
    )
    climbed = {"to_head": False}  # by the decision written (it may be taken again)

    def decide(current: dict[str, Any]) -> Decision | None:
        climbed["to_head"] = False
        if current.get(AWAITING) is not True:
            return None
        if current["department"] != marked["department"]:
            return None  # moved since it was read: the next sweep reads its new chain
        unmark = {"$unset": {AWAITING: ""}}
        if not current.get("major_incident") or not lifecycle.applies(current, Command.ESCALATE):
            return Decision(unmark, [])
        if not has_branch_head(targets):
            return None  # still no head: it stays marked
        target = branch_head_target(targets, reached=lifecycle.reached(current))
        if target is None:
            return Decision(unmark, [])  # at the head or above already
        update, events = escalation(current, target, now=now)
        climbed["to_head"] = True
        return Decision(merge_updates(update, unmark), events)

    await store.change(db=db, settings=settings, complaint_id=marked["_id"], decide=decide, now=now)
    return int(climbed["to_head"])
