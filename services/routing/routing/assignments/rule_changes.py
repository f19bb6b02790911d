"""Work a rule placed follows the rule's required skill: re-derived when the rule changes.

Placement copies the rule's ``action.required_skill`` onto the assignment, and owner choice
and the queue read that copy. When an administrator changes the rule's skill (a new one, or
none) or deactivates the rule (it requires nothing any more), the queued and open
assignments it placed take the skill the rule has now, each through the aggregate kernel,
and only while the skill is still the rule's (``store.skill_rule_version``: not cleared by
a move to another department since), derived from an older version of the rule and
different (a concurrent change decides again; a repeat, or the change of an older version
applied late, finds nothing to do). The departments where such a complaint waits are owed
a drain before the write and offered their queues at once. Until 5 December the copy
stayed: a VIP complaint queued for a skill nobody active had any more waited, passed by
newer ones the changed rule sent straight to an owner, until its clocks breached.

Run by the rule's ``PATCH`` and ``DELETE`` after the rule is saved; an error midway is the
request's answer, and the same request again (which leaves the rule as it is) applies
the rest. Another replica may still place work with its cached copy of the rule for up to
``routing_context_max_age_s``: the rule's work is looked over once more after that, give or
take the replicas' clocks (``look_over_at``, ``look_over``, by the queue sweep). The write
that saves the version sets that time (``look_over_delay`` after it), so the work is
followed even when the request ends right after it, its process killed or the database
away, and nobody repeats it: until 6 December the request set it after its own pass, and
such a fault left the work on the old skill for good.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from complaints_shared.aggregate import Decision
from complaints_shared.failures import is_transient, redacted_error
from complaints_shared.logs import get_logger
from complaints_shared.mongo import merge_updates
from complaints_shared.stored import from_stored
from complaints_shared.timers import look_over_due
from routing.assignments import lifecycle, owed_drains, queue, store
from routing.assignments.models import AssignmentStatus
from routing.rules import store as rules_store
from routing.rules.models import RoutingRule
from routing.settings import RoutingSettings

log = get_logger(__name__)

# When a changed rule's work is looked over again (real time, as the caches' age is).
LOOK_OVER_AT = rules_store.LOOK_OVER_AT
# Rules one sweep looks over at the most (the earliest due first).
LOOK_OVER_BATCH = 100


def skill_now(rule: RoutingRule) -> str | None:
    """The skill ``rule`` asks of the owners of its complaints now: none once deactivated."""
    return rule.action.required_skill if rule.active else None


async def follow_rule(
    *,
    db: AsyncDatabase,
    settings: RoutingSettings,
    rule: RoutingRule,
    actor: str,
    now: datetime,
) -> int:
    """Give the queued and open work ``rule`` placed the skill the rule has now, then offer
    the queues where such work waits; how many assignments changed."""
    changed = 0
    departments: set[str] = set()
    for complaint_id in await store.active_of_rule(db=db, org=rule.org, rule_id=rule.id):
        try:
            document = await _apply(
                db=db, settings=settings, complaint_id=complaint_id, rule=rule, actor=actor, now=now
            )
        except Exception as exc:
            if is_transient(exc):  # the database away: the request's answer, to repeat
                raise
            # This complaint's own fault: logged, the others go on.
            log.error("rule_skill_not_applied", rule=rule.id, error=redacted_error(exc))
            continue
        if document is None:
            continue
        changed += 1
        if document["status"] == AssignmentStatus.QUEUED.value:
            departments.add(document["department"])
    if changed:
        log.info("rule_skill_applied", rule=rule.id, assignments=changed)
    for department in sorted(departments):
        await queue.drain_queue(
            db=db, settings=settings, org=rule.org, department_id=department, now=now
        )
    return changed


async def _apply(
    *,
    db: AsyncDatabase,
    settings: RoutingSettings,
    complaint_id: str,
    rule: RoutingRule,
    actor: str,
    now: datetime,
) -> dict[str, Any] | None:
    """The assignment with the rule's skill now; None when it needed no change."""
    skill = skill_now(rule)
    applied: list[dict[str, Any]] = []

    async def owe_drain(document: dict[str, Any]) -> None:
        applied.append(document)
        if document["status"] == AssignmentStatus.QUEUED.value:
            owed_drains.owe(db=db, org=document["org"], department_id=document["department"])

    def decide(current: dict[str, Any]) -> Decision | None:
        follows = store.skill_rule_version(current)
        if (
            current["status"] not in lifecycle.ACTIVE
            or current.get("rule_id") != rule.id
            or follows is None  # moved to another department since: no rule's skill
            or follows >= rule.version  # a change as new or newer applied already
            or current.get("required_skill") == skill
        ):
            return None
        update = merge_updates(
            {"$set": {"required_skill": skill, store.SKILL_RULE_VERSION: rule.version}},
            store.history(
                at=now,
                action="required_skill_changed",
                actor=actor,
                rule_id=rule.id,
                rule_version=rule.version,
                required_skill=skill,
                previous=current.get("required_skill"),
            ),
        )
        return Decision(update, [], [owe_drain])

    await store.change(db=db, settings=settings, complaint_id=complaint_id, decide=decide, now=now)
    return applied[0] if applied else None


def look_over_delay(*, settings: RoutingSettings) -> timedelta:
    """How long after its change a rule has its work looked over again: once every
    replica's cached copy of it is renewed."""
    return timedelta(seconds=settings.routing_context_max_age_s + settings.replica_clock_skew_s)


async def look_over(*, db: AsyncDatabase, settings: RoutingSettings, now: datetime) -> int:
    """Follow each rule due a look-over again (``follow_rule``, the rule as stored now): work
    a replica placed with its older copy takes the skill the rule has. How many changed."""
    changed = 0

    async def look(document: dict[str, Any]) -> None:
        nonlocal changed
        rule = from_stored(RoutingRule, {**document, "id": document["_id"]})
        changed += await follow_rule(db=db, settings=settings, rule=rule, actor="routing", now=now)

    await look_over_due(
        db[rules_store.RULES],
        field=LOOK_OVER_AT,
        look=look,
        what="routing_rule",
        defer_s=settings.queue_sweep_interval_s,
        limit=LOOK_OVER_BATCH,
    )
    return changed
