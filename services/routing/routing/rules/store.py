"""Data access for routing rules: validated on save, versioned, audited.

A rule's id is ``<org>:<slug>``; every save bumps its version and stores the
full rule as it now reads in ``rule_versions``, so an assignment's
``(rule_id, rule_version)`` always points at the exact rule that matched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ASCENDING, DESCENDING, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from complaints_shared import preconditions
from complaints_shared.auth import Principal
from complaints_shared.failures import is_transient, redacted_error
from complaints_shared.logs import get_logger
from complaints_shared.mongo import as_stored, merge_updates
from complaints_shared.preconditions import IfMatch
from complaints_shared.problems import conflict, invalid, not_found
from complaints_shared.stored import from_stored
from routing import audit, context_cache, sole_roles
from routing.directory.store import (
    BRANCHES,
    DEPARTMENTS,
    branch_key,
    closed_branches,
    visible_department,
)
from routing.rules import matching
from routing.rules.models import (
    RoutingRule,
    RuleConditions,
    RuleCreate,
    RuleRead,
    RuleUpdate,
    RuleVersionRead,
)
from routing.sla import store as policy_store

RULES = "rules"
RULE_VERSIONS = "rule_versions"
# When the work a changed rule placed is looked over (``assignments.rule_changes``): set in
# the write that saves the version, so no fault after it leaves the work unfollowed.
LOOK_OVER_AT = "look_over_at"
POSITION_STEP = 10
# The largest integer BSON stores (64 bits, signed).
MAX_BSON_INT = 2**63 - 1

log = get_logger(__name__)


async def ensure_indexes(*, db: AsyncDatabase) -> None:
    await db[RULES].create_index([("org", ASCENDING), ("position", ASCENDING)], name="org_pos")
    await audit.ensure_unrecorded_index(db=db, collection=RULES)
    await sole_roles.ensure_role_index(
        db=db,
        collection=RULES,
        holders={"is_default": True, "active": {"$ne": False}},
        role_of=_default_rule_role,
    )
    await db[RULE_VERSIONS].create_index(
        [("org", ASCENDING), ("rule_id", ASCENDING), ("version", DESCENDING)],
        name="org_rule_version",
    )


def rule_key(org: str, slug: str) -> str:
    return f"{org}:{slug}"


def _default_rule_role(rule: dict[str, Any]) -> str | None:
    """The organisation has one default rule: the active one marked so."""
    if rule.get("is_default") and rule.get("active", True):
        return f"default-rule:{rule['org']}"
    return None


def rule_read(document: dict[str, Any]) -> RuleRead:
    return from_stored(RuleRead, {**document, "id": document["_id"]})


async def load_rules(*, db: AsyncDatabase, org: str) -> list[RoutingRule]:
    """The organisation's active rules in order."""
    cursor = db[RULES].find({"org": org, "active": {"$ne": False}}).sort("position", ASCENDING)
    return [from_stored(RoutingRule, {**doc, "id": doc["_id"]}) async for doc in cursor]


async def list_rules(
    *, db: AsyncDatabase, principal: Principal, include_inactive: bool
) -> list[RuleRead]:
    query: dict[str, Any] = {"org": principal.org}
    if not include_inactive:
        query["active"] = {"$ne": False}
    documents = await db[RULES].find(query).to_list(None)
    return sorted((rule_read(document) for document in documents), key=matching.precedence)


async def _rule_document(*, db: AsyncDatabase, principal: Principal, rule_id: str) -> dict:
    document = await db[RULES].find_one({"_id": rule_id, "org": principal.org})
    if document is None:
        raise not_found(what="routing rule", identifier=rule_id)
    return document


async def get_rule(*, db: AsyncDatabase, principal: Principal, rule_id: str) -> RuleRead:
    return rule_read(await _rule_document(db=db, principal=principal, rule_id=rule_id))


async def _validate_target(
    *, db: AsyncDatabase, principal: Principal, rule: dict[str, Any]
) -> None:
    action = rule["action"]
    if action.get("department_id"):
        department = await visible_department(
            db=db, principal=principal, department_id=action["department_id"]
        )
        # ``active`` says whether it takes work: not while its branch is closed either.
        if department is None or not department.active:
            raise invalid(
                "action.department_id",
                f"unknown or inactive department {action['department_id']} "
                "(or its branch is closed)",
            )
        return
    query: dict[str, Any] = {
        **principal.scope_filter(),
        "kind": action["department_kind"],
        "active": True,
    }
    conditions = [{"branch": {"$nin": sorted(await closed_branches(db=db, org=principal.org))}}]
    if rule["branches"]:
        conditions.append({"branch": {"$in": rule["branches"]}})
    if await db[DEPARTMENTS].find_one({**query, "$and": conditions}) is None:
        where = f"branches {rule['branches']}" if rule["branches"] else "the organisation"
        raise invalid(
            "action.department_kind",
            f"no active department of kind {action['department_kind']!r} in {where}",
        )


async def _validate_rule(
    *, db: AsyncDatabase, principal: Principal, rule: dict[str, Any], rule_id: str | None
) -> None:
    """References must exist (for the caller); the default rule must be able to route anything."""
    org = principal.org
    for index, branch in enumerate(rule["branches"]):
        known = principal.can_see(org=org, branch=branch) and await db[BRANCHES].find_one(
            {"_id": branch_key(org, branch)}
        )
        if not known:
            raise invalid(f"branches.{index}", f"unknown branch {branch!r}")
    await _validate_target(db=db, principal=principal, rule=rule)
    policy = rule["action"].get("sla_policy")
    if policy:
        stored = await policy_store.find_policy_document(db=db, org=org, policy_id=policy)
        if stored is None:
            raise invalid("action.sla_policy", f"unknown SLA policy {policy!r}")
        if stored.get("retired_at") is not None:
            raise invalid("action.sla_policy", f"SLA policy {policy!r} is retired")
    if rule.get("is_default"):
        await _validate_default(db=db, org=org, rule=rule, rule_id=rule_id)


async def _validate_default(
    *, db: AsyncDatabase, org: str, rule: dict[str, Any], rule_id: str | None
) -> None:
    if rule["branches"]:
        raise invalid("branches", "the default rule applies to every branch")
    if not RuleConditions.model_validate(rule["conditions"]).is_empty():
        raise invalid("conditions", "the default rule matches everything and takes no conditions")
    if not rule["action"].get("department_id"):
        raise invalid("action.department_id", "the default rule needs one explicit department")
    other = await db[RULES].find_one(
        {"org": org, "is_default": True, "active": {"$ne": False}, "_id": {"$ne": rule_id}}
    )
    if other is not None:
        raise invalid("is_default", f"rule {other['_id']} is already the default rule")


async def _next_position(*, db: AsyncDatabase, org: str) -> int:
    """``POSITION_STEP`` after the last rule; at the last one's (logged) when a position
    stored before positions were bounded leaves no room below BSON's 64-bit limit."""
    last = await db[RULES].find_one(
        {"org": org, "is_default": {"$ne": True}}, sort=[("position", DESCENDING)]
    )
    position = (last["position"] if last else 0) + POSITION_STEP
    if position > MAX_BSON_INT:
        log.warning("rule_position_at_limit", org=org, last_rule=last["_id"])
        return last["position"]
    return position


async def _record_version(
    *, db: AsyncDatabase, document: dict[str, Any], change: str, actor: str, at: datetime
) -> None:
    # As the administrator wrote it: not its claim of the default's role.
    rule = {
        key: value
        for key, value in document.items()
        if key not in ("_id", sole_roles.ROLE_FIELD, LOOK_OVER_AT)
    }
    # Recorded already by the first attempt of a repeated creation (``create_rule``).
    with contextlib.suppress(DuplicateKeyError):
        await db[RULE_VERSIONS].insert_one(
            {
                "_id": f"{document['_id']}@{document['version']}",
                "org": document["org"],
                "rule_id": document["_id"],
                "version": document["version"],
                "change": change,
                "changed_by": actor,
                "changed_at": at,
                "rule": rule,
            }
        )
    await context_cache.directory_changed(db=db, org=document["org"])


async def create_rule(
    *, db: AsyncDatabase, principal: Principal, body: RuleCreate, now: datetime
) -> RuleRead:
    """Store a new rule as version 1. The same creation again (a retry after a 503 or a
    lost answer) answers the stored rule, recognised before the rule is checked (an SLA
    policy it names may have been retired since); its version record is carried on the
    rule until written (``audit.unrecorded``), here, by the repeat or by the next change."""
    rule_id = rule_key(principal.org, body.id)
    fields = body.model_dump(mode="json", exclude={"id", "position"})
    stored = await db[RULES].find_one({"_id": rule_id})
    if stored is None:
        await _validate_rule(db=db, principal=principal, rule=fields, rule_id=rule_id)
        position = body.position
        if position is None:
            position = await _next_position(db=db, org=principal.org)
        document = {
            "_id": rule_id,
            "org": principal.org,
            **fields,
            "position": position,
            "version": 1,
            "active": True,
            "created_at": now,
            "updated_at": now,
            "updated_by": principal.subject,
            **audit.unrecorded(action="created", actor=principal.subject, at=now),
        }
        try:
            await db[RULES].insert_one(
                sole_roles.claimed(document, role=_default_rule_role(document))
            )
        except DuplicateKeyError as exc:
            # The same creation, beside this one (its claim clashes too: either index may
            # answer); otherwise another rule became the default.
            stored = await db[RULES].find_one({"_id": rule_id})
            if stored is None:
                if sole_roles.is_role_clash(exc):
                    raise conflict("another rule became the default meanwhile; retry") from None
                raise
        else:
            # As a later read has it (times in milliseconds), not this request's copy.
            return rule_read(await _settle_version(db=db, document=as_stored(document)))
    repeated = _repeat_of(stored, rule_id=rule_id, body=body, fields=fields)
    if audit.UNRECORDED in repeated:
        return rule_read(await _settle_version(db=db, document=repeated))
    # Recorded already (kept once), or created before creations carried their record.
    await _record_version(
        db=db, document=repeated, change="created", actor=principal.subject, at=now
    )
    return rule_read(repeated)


def _repeat_of(
    stored: dict[str, Any] | None, *, rule_id: str, body: RuleCreate, fields: dict[str, Any]
) -> dict[str, Any]:
    """The stored rule when ``body`` repeats its creation. A rule of that id created
    differently (or changed since) is a 409."""
    if (
        stored is None
        or stored["version"] != 1
        or any(stored.get(key) != value for key, value in fields.items())
        or body.position not in (None, stored["position"])
    ):
        raise conflict(f"routing rule {rule_id!r} already exists")
    return stored


async def _save_version(
    *,
    db: AsyncDatabase,
    current: dict[str, Any],
    changes: dict[str, Any],
    change: str,
    actor: str,
    if_match: IfMatch | None,
    now: datetime,
    look_over_after: timedelta,
    validate: Callable[[], Awaitable[None]] | None = None,
) -> dict[str, Any]:
    """Apply ``changes`` as a new version and record it; the version ``current`` is at is
    recorded first if the change that made it could not be (``audit.settle``).

    Changes the rule already shows make no version and are not checked again (what they
    refer to may have changed since); others are held to ``if_match``, then ``validate``d.
    A new version is due a look-over of its work ``look_over_after`` its write (real time,
    as the caches' age is)."""
    settled = await _settle_version(db=db, document=current)
    if not await preconditions.change_needed(
        if_match,
        current=current,
        changes=changes,
        what=f"routing rule {current['_id']!r}",
        validate=validate,
    ):
        return settled
    recorded = audit.unrecorded(action=change, actor=actor, at=now)
    update = merge_updates(
        {
            "$set": {
                **changes,
                "updated_at": now,
                "updated_by": actor,
                LOOK_OVER_AT: datetime.now(UTC) + look_over_after,
                **recorded,
            },
            "$inc": {"version": 1},
        },
        sole_roles.claim_update(role=_default_rule_role({**current, **changes})),
    )
    try:
        updated = await db[RULES].find_one_and_update(
            {"_id": current["_id"], "version": current["version"]},
            update,
            return_document=ReturnDocument.AFTER,
        )
    except DuplicateKeyError as exc:
        if not sole_roles.is_role_clash(exc):
            raise
        raise conflict("another rule became the default meanwhile; retry") from None
    if updated is None:
        now_stored = await db[RULES].find_one({"_id": current["_id"]}, projection={"version": 1})
        raise preconditions.lost_race(
            if_match,
            current=None if now_stored is None else now_stored["version"],
            what=f"routing rule {current['_id']!r}",
            otherwise=conflict(f"routing rule {current['_id']!r} changed concurrently; retry"),
        )
    return await _settle_version(db=db, document=updated)


async def settle_left_unrecorded(*, db: AsyncDatabase) -> int:
    """Record the rule versions whose writers failed or died before recording them (the
    queue sweep's; a read of the rule's versions does too); how many. One rule's failure is
    logged and the others go on."""
    settled = 0
    for document in await audit.left_unrecorded(db=db, collection=RULES):
        try:
            await _settle_version(db=db, document=document)
        except Exception as exc:
            if is_transient(exc):
                raise
            log.error("rule_version_not_settled", rule=document["_id"], error=redacted_error(exc))
            continue
        settled += 1
    return settled


async def _settle_version(*, db: AsyncDatabase, document: dict[str, Any]) -> dict[str, Any]:
    """Record the version ``document`` is at if its change left that to be done."""

    async def write(change: dict[str, Any], rule: dict[str, Any]) -> None:
        await _record_version(
            db=db, document=rule, change=change["action"], actor=change["actor"], at=change["at"]
        )

    return await audit.settle(db=db, collection=RULES, document=document, write=write)


async def update_rule(
    *,
    db: AsyncDatabase,
    principal: Principal,
    rule_id: str,
    body: RuleUpdate,
    if_match: IfMatch | None,
    now: datetime,
    look_over_after: timedelta,
) -> RuleRead:
    current = await _rule_document(db=db, principal=principal, rule_id=rule_id)
    # Each field set whole as stored (a nested object with its defaults).
    changes = body.model_dump(mode="json", include=body.model_fields_set)
    for field, value in changes.items():
        if value is None:
            raise invalid(field, "may not be null")

    async def validate() -> None:
        merged = {**current, **changes}
        await _validate_rule(db=db, principal=principal, rule=merged, rule_id=rule_id)

    updated = await _save_version(
        db=db,
        current=current,
        changes=changes,
        change="updated",
        actor=principal.subject,
        if_match=if_match,
        now=now,
        look_over_after=look_over_after,
        validate=validate,
    )
    return rule_read(updated)


async def deactivate_rule(
    *,
    db: AsyncDatabase,
    principal: Principal,
    rule_id: str,
    if_match: IfMatch | None,
    now: datetime,
    look_over_after: timedelta,
) -> RuleRead:
    current = await _rule_document(db=db, principal=principal, rule_id=rule_id)
    if current.get("is_default") and current.get("active", True):
        raise conflict(f"{rule_id} is the default rule; the organisation must keep one")
    updated = await _save_version(
        db=db,
        current=current,
        changes={"active": False},
        change="deactivated",
        actor=principal.subject,
        if_match=if_match,
        now=now,
        look_over_after=look_over_after,
    )
    return rule_read(updated)


async def rule_versions(
    *, db: AsyncDatabase, principal: Principal, rule_id: str
) -> list[RuleVersionRead]:
    await _settle_version(
        db=db, document=await _rule_document(db=db, principal=principal, rule_id=rule_id)
    )
    cursor = db[RULE_VERSIONS].find({"org": principal.org, "rule_id": rule_id})
    documents = await cursor.sort("version", DESCENDING).to_list(None)
    return [from_stored(RuleVersionRead, document) for document in documents]
