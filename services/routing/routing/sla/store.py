"""SLA policies: stored per organisation, retired and reinstated, deleted when unreferenced.

A policy in use is never changed under an assignment: retiring keeps it for the
assignments that name it, and deleting asks the assignments and the rules first.

A deletion is decided, recorded, then done: the policy is marked (``DELETING``) and is gone
for every reader from then on, its audit record is written and the routing contexts reload,
and only then is the document removed. A deletion broken off after the mark (a 503) is
completed by the client's retry of the DELETE, by the next save under the policy's id, or
by the queue sweep (:func:`finish_left_changes`), so no policy disappears without its audit
record (until 6 December a deletion nobody asked again stayed marked, hidden and unrecorded).
"""

from __future__ import annotations

from datetime import datetime
from functools import partial
from typing import Any

from pymongo import ASCENDING, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from complaints_shared import preconditions
from complaints_shared.auth import Principal
from complaints_shared.failures import is_transient, redacted_error
from complaints_shared.logs import get_logger
from complaints_shared.mongo import as_stored, merge_updates
from complaints_shared.preconditions import IfMatch
from complaints_shared.problems import ProblemError, conflict, invalid, invalid_fields, not_found
from complaints_shared.stored import from_stored
from routing import audit, sole_roles
from routing.sla.models import SlaPolicy, SlaPolicyWrite

log = get_logger(__name__)

SLA_POLICIES = "sla_policies"
# The audit trail's name for a policy.
POLICY_ENTITY = "sla_policy"
# When a deletion was decided, on a policy whose removal has not been completed yet.
DELETING = "deleting_at"
# The policies not being deleted (None matches a missing field).
LIVE = {DELETING: None}
# Asked before a policy is deleted; owned by ``routing.assignments.store`` and
# ``routing.rules.store``, which depend on this module, not the other way round.
ASSIGNMENTS = "assignments"
RULES = "rules"


async def ensure_indexes(*, db: AsyncDatabase) -> None:
    await db[SLA_POLICIES].create_index("org", name="org")
    await sole_roles.ensure_role_index(
        db=db,
        collection=SLA_POLICIES,
        holders={"is_default": True, "retired_at": None, **LIVE},
        role_of=_default_policy_role,
    )
    await audit.ensure_unrecorded_index(db=db, collection=SLA_POLICIES)
    await db[SLA_POLICIES].create_index(DELETING, name=DELETING, sparse=True)
    # Deleting a policy asks whether any assignment still refers to it.
    await db[ASSIGNMENTS].create_index(
        [("org", ASCENDING), ("sla_policy", ASCENDING)], name="org_sla_policy"
    )


def policy_key(org: str, policy_id: str) -> str:
    return f"{org}:{policy_id}"


def _default_policy_role(policy: dict[str, Any]) -> str | None:
    """The organisation has one default policy: the one marked so and not retired."""
    if policy.get("is_default") and policy.get("retired_at") is None:
        return f"default-policy:{policy['org']}"
    return None


async def _lost_race(
    *,
    db: AsyncDatabase,
    key: str,
    if_match: IfMatch | None,
    policy_id: str,
    otherwise: ProblemError,
) -> ProblemError:
    """A write at the version read found the policy moved on (``preconditions.lost_race``)."""
    now_stored = await db[SLA_POLICIES].find_one({"_id": key, **LIVE}, projection={"version": 1})
    return preconditions.lost_race(
        if_match,
        current=None if now_stored is None else now_stored.get("version"),
        what=f"SLA policy {policy_id!r}",
        otherwise=otherwise,
    )


def _role_clash(exc: DuplicateKeyError) -> None:
    """A save refused because another policy became the default meanwhile: a 409."""
    if sole_roles.is_role_clash(exc):
        raise conflict("another policy became the default meanwhile; retry") from None


async def find_policy_document(
    *, db: AsyncDatabase, org: str, policy_id: str
) -> dict[str, Any] | None:
    return await db[SLA_POLICIES].find_one({"_id": policy_key(org, policy_id), **LIVE})


async def _audit(
    *,
    db: AsyncDatabase,
    principal: Principal,
    policy_id: str,
    action: str,
    at: datetime,
    document: dict[str, Any],
) -> None:
    """An administrator's change of a policy, in the audit trail (the stored key left out)."""
    await audit.record_change(
        db=db,
        principal=principal,
        entity=POLICY_ENTITY,
        entity_id=policy_id,
        action=action,
        at=at,
        snapshot={
            key: value
            for key, value in document.items()
            if key not in ("_id", DELETING, "deleting_by", audit.UNRECORDED, sole_roles.ROLE_FIELD)
        },
    )


def policy_read(document: dict[str, Any]) -> SlaPolicy:
    return from_stored(SlaPolicy, document)


async def load_policies(*, db: AsyncDatabase, org: str) -> list[SlaPolicy]:
    return [policy_read(doc) async for doc in db[SLA_POLICIES].find({"org": org, **LIVE})]


async def list_policies(*, db: AsyncDatabase, principal: Principal) -> list[SlaPolicy]:
    policies = await load_policies(db=db, org=principal.org)
    return sorted(policies, key=lambda policy: policy.id)


async def get_policy(*, db: AsyncDatabase, principal: Principal, policy_id: str) -> SlaPolicy:
    document = await find_policy_document(db=db, org=principal.org, policy_id=policy_id)
    if document is None:
        raise not_found(what="SLA policy", identifier=policy_id)
    return policy_read(document)


async def put_policy(
    *,
    db: AsyncDatabase,
    principal: Principal,
    policy_id: str,
    body: SlaPolicyWrite,
    if_match: IfMatch | None,
    now: datetime,
) -> SlaPolicy:
    """Create or replace a policy; its version counts the saves. The same policy again
    saves nothing; a replacement is held to ``if_match`` (a 412 when the policy moved on,
    or does not exist)."""
    if errors := body.field_errors():
        raise invalid_fields(errors)
    key = policy_key(principal.org, policy_id)
    stored = await db[SLA_POLICIES].find_one({"_id": key})
    if stored is not None and stored.get(DELETING) is not None:
        # Created again under the id of a deletion broken off: that one is completed first.
        await _complete_deletion(db=db, principal=principal, policy_id=policy_id, current=stored)
        stored = None
    elif stored is not None:
        stored = await _settle_audit(
            db=db, principal=principal, policy_id=policy_id, document=stored
        )
    fields = body.model_dump(mode="json")
    shown = stored if stored is not None and preconditions.shows(stored, fields) else None
    if not preconditions.write_needed(
        if_match,
        current=None if stored is None else stored.get("version"),
        already_shown=shown is not None,
        what=f"SLA policy {policy_id!r}",
    ):
        return policy_read(shown)
    if body.is_default:
        other = await db[SLA_POLICIES].find_one(
            {"org": principal.org, "is_default": True, "retired_at": None, "_id": {"$ne": key}}
        )
        if other is not None:
            raise invalid("is_default", f"policy {other['id']!r} is already the default")
    update = {
        "$set": {
            **fields,
            "id": policy_id,
            "org": principal.org,
            "updated_at": now,
            "updated_by": principal.subject,
            **audit.unrecorded(action="saved", actor=principal.subject, at=now),
        },
        "$inc": {"version": 1},
    }
    document = await _write_save(db=db, key=key, update=update, stored=stored, now=now)
    if document is None:
        # Created or saved meanwhile: by this same save, retried beside it (a gateway's
        # timeout), if it says the same; it is not saved a second time.
        meanwhile = await find_policy_document(db=db, org=principal.org, policy_id=policy_id)
        if meanwhile is not None and preconditions.shows(meanwhile, fields):
            document = meanwhile
    if document is None:
        raise await _lost_race(
            db=db,
            key=key,
            if_match=if_match,
            policy_id=policy_id,
            otherwise=conflict(
                f"SLA policy {policy_id!r} changed or was deleted while saved; retry"
            ),
        )
    document = await _settle_audit(
        db=db, principal=principal, policy_id=policy_id, document=document
    )
    return policy_read(document)


async def _write_save(
    *,
    db: AsyncDatabase,
    key: str,
    update: dict[str, Any],
    stored: dict[str, Any] | None,
    now: datetime,
) -> dict[str, Any] | None:
    """Apply a save decided on ``stored``; the policy after it, None if it changed since.

    A deletion decided since is not undone by the save, nor does the save (answered and
    recorded) vanish with the policy when the deletion completes. A policy found is
    saved only at the version read: a save or retirement since is not overwritten. None
    found, it is created as version 1, unless another save created it meanwhile.
    """
    if stored is None:
        # ``created_at`` tells a policy created again after a deletion from the one before.
        created = {**update["$set"], "_id": key, "version": 1, "created_at": now}
        created = sole_roles.claimed(created, role=_default_policy_role(created))
        try:
            await db[SLA_POLICIES].insert_one(created)
        except DuplicateKeyError as exc:
            # Created meanwhile (by this same save, its claim clashing too: either index
            # may answer), unless another policy became the default.
            if await db[SLA_POLICIES].find_one({"_id": key}, projection={"_id": 1}) is None:
                _role_clash(exc)
            return None
        return as_stored(created)  # as a later read has it (times in milliseconds)
    claim = sole_roles.claim_update(role=_default_policy_role({**stored, **update["$set"]}))
    try:
        return await db[SLA_POLICIES].find_one_and_update(
            {"_id": key, "version": stored.get("version"), **LIVE},
            merge_updates(update, claim),
            return_document=ReturnDocument.AFTER,
        )
    except DuplicateKeyError as exc:
        _role_clash(exc)
        raise


async def _settle_audit(
    *, db: AsyncDatabase, principal: Principal, policy_id: str, document: dict[str, Any]
) -> dict[str, Any]:
    """Record the change that left ``document`` at its version if its writer could not."""
    write = audit.as_recorded_by(partial(_audit, db=db, policy_id=policy_id), principal=principal)
    return await audit.settle(db=db, collection=SLA_POLICIES, document=document, write=write)


async def _policy_document(*, db: AsyncDatabase, org: str, policy_id: str) -> dict[str, Any]:
    document = await find_policy_document(db=db, org=org, policy_id=policy_id)
    if document is None:
        raise not_found(what="SLA policy", identifier=policy_id)
    return document


async def _set_retirement(
    *,
    db: AsyncDatabase,
    principal: Principal,
    policy_id: str,
    retired: bool,
    if_match: IfMatch | None,
    now: datetime,
) -> SlaPolicy:
    action = "retired" if retired else "reinstated"
    found = await _policy_document(db=db, org=principal.org, policy_id=policy_id)
    current = await _settle_audit(db=db, principal=principal, policy_id=policy_id, document=found)
    if not preconditions.write_needed(
        if_match,
        current=current.get("version"),
        already_shown=(current.get("retired_at") is not None) == retired,
        what=f"SLA policy {policy_id!r}",
    ):
        # Already so: a repeated request changes nothing. The change's record and the
        # directory bump ran just now if they had failed (a 503); a change stored without
        # the record it would carry (before 4 December) has them run again.
        if audit.UNRECORDED not in found:
            await _audit(
                db=db,
                principal=principal,
                policy_id=policy_id,
                action=action,
                at=now,
                document=current,
            )
        return policy_read(current)
    if not retired and current.get("is_default"):
        other = await db[SLA_POLICIES].find_one(
            {"org": principal.org, "is_default": True, "retired_at": None}
        )
        if other is not None:
            raise conflict(f"policy {other['id']!r} is the default now; {policy_id!r} cannot be")
    fields = (
        {"retired_at": now, "retired_by": principal.subject}
        if retired
        else {"retired_at": None, "retired_by": None}
    )
    recorded = audit.unrecorded(action=action, actor=principal.subject, at=now)
    claim = sole_roles.claim_update(role=_default_policy_role({**current, **fields}))
    try:
        changed = await db[SLA_POLICIES].update_one(
            {"_id": current["_id"], "version": current.get("version"), **LIVE},
            merge_updates({"$set": {**fields, **recorded}, "$inc": {"version": 1}}, claim),
        )
    except DuplicateKeyError as exc:
        _role_clash(exc)
        raise
    if not changed.matched_count:
        raise await _lost_race(
            db=db,
            key=current["_id"],
            if_match=if_match,
            policy_id=policy_id,
            otherwise=conflict(
                f"SLA policy {policy_id!r} changed while it was being {action}; retry"
            ),
        )
    document = await _policy_document(db=db, org=principal.org, policy_id=policy_id)
    document = await _settle_audit(
        db=db, principal=principal, policy_id=policy_id, document=document
    )
    return policy_read(document)


async def retire_policy(
    *,
    db: AsyncDatabase,
    principal: Principal,
    policy_id: str,
    if_match: IfMatch | None,
    now: datetime,
) -> SlaPolicy:
    """No new assignment uses the policy from now on; assignments that have it keep it."""
    return await _set_retirement(
        db=db,
        principal=principal,
        policy_id=policy_id,
        retired=True,
        if_match=if_match,
        now=now,
    )


async def reinstate_policy(
    *,
    db: AsyncDatabase,
    principal: Principal,
    policy_id: str,
    if_match: IfMatch | None,
    now: datetime,
) -> SlaPolicy:
    """Undo a retirement: new complaints may be given the policy again."""
    return await _set_retirement(
        db=db,
        principal=principal,
        policy_id=policy_id,
        retired=False,
        if_match=if_match,
        now=now,
    )


async def delete_policy(
    *,
    db: AsyncDatabase,
    principal: Principal,
    policy_id: str,
    if_match: IfMatch | None,
    now: datetime,
) -> None:
    """Remove a retired policy no assignment and no rule refers to any more; a DELETE
    repeated after a deletion was broken off completes it, and one repeated after the
    deletion (its answer lost) writes nothing and is answered as the first, whatever its
    ``If-Match`` (a change already made, as everywhere)."""
    key = policy_key(principal.org, policy_id)
    current = await db[SLA_POLICIES].find_one({"_id": key})
    if current is None:
        if await _deleted_last(db=db, org=principal.org, policy_id=policy_id):
            return
        raise not_found(what="SLA policy", identifier=policy_id)
    if current.get(DELETING) is None:
        preconditions.write_needed(
            if_match,
            current=current.get("version"),
            already_shown=False,
            what=f"SLA policy {policy_id!r}",
        )
        await _refuse_unless_deletable(
            db=db, org=principal.org, policy_id=policy_id, policy=current
        )
        marked = await db[SLA_POLICIES].update_one(
            # As it was checked: still retired, at the version read, not being deleted.
            {"_id": key, "version": current.get("version"), "retired_at": {"$ne": None}, **LIVE},
            {"$set": {DELETING: now, "deleting_by": principal.subject}},
        )
        if not marked.matched_count:
            raise await _lost_race(
                db=db,
                key=key,
                if_match=if_match,
                policy_id=policy_id,
                otherwise=conflict(f"SLA policy {policy_id!r} changed while it was deleted; retry"),
            )
        current = {**current, DELETING: now, "deleting_by": principal.subject}
    await _complete_deletion(db=db, principal=principal, policy_id=policy_id, current=current)


async def finish_left_changes(*, db: AsyncDatabase) -> int:
    """Record the policy changes whose writers failed or died before recording them, and
    complete the deletions decided whose requests were cut short after the mark (the queue
    sweep's); how many. One policy's failure is logged and the others go on."""
    finished = 0
    unrecorded = await audit.left_unrecorded(db=db, collection=SLA_POLICIES)
    deleting = (
        await db[SLA_POLICIES]
        .find({DELETING: {"$ne": None}})
        .sort(DELETING, ASCENDING)
        .limit(audit.SETTLE_BATCH)
        .to_list(None)
    )
    # A policy both unrecorded and marked is completed once: its deletion records both.
    left = {document["_id"]: document for document in [*unrecorded, *deleting]}
    for document in left.values():
        principal = audit.recorder(document)
        policy_id = document["_id"].removeprefix(f"{document['org']}:")
        try:
            if document.get(DELETING) is None:
                await _settle_audit(
                    db=db, principal=principal, policy_id=policy_id, document=document
                )
            else:
                await _complete_deletion(
                    db=db, principal=principal, policy_id=policy_id, current=document
                )
        except Exception as exc:
            if is_transient(exc):
                raise
            log.error("policy_change_not_finished", policy=policy_id, error=redacted_error(exc))
            continue
        finished += 1
    return finished


async def _deleted_last(*, db: AsyncDatabase, org: str, policy_id: str) -> bool:
    """Whether the last change recorded of the policy is its deletion (it is gone)."""
    last = await audit.history(db=db, org=org, entity=POLICY_ENTITY, entity_id=policy_id, limit=1)
    return bool(last) and last[0]["action"] == audit.DELETED


async def _refuse_unless_deletable(
    *, db: AsyncDatabase, org: str, policy_id: str, policy: dict[str, Any]
) -> None:
    if policy.get("retired_at") is None:
        raise conflict(
            f"SLA policy {policy_id!r} is in force: retire it first", kind="policy-in-force"
        )
    referring = await db[ASSIGNMENTS].count_documents({"org": org, "sla_policy": policy_id})
    if referring:
        raise conflict(
            f"SLA policy {policy_id!r} is referred to by {referring} assignment(s); "
            "it stays (retired) for their history",
            kind="policy-in-use",
        )
    rule = await db[RULES].find_one(
        {"org": org, "action.sla_policy": policy_id}, projection={"_id": 1}
    )
    if rule is not None:
        raise conflict(
            f"SLA policy {policy_id!r} is named by rule {rule['_id']!r}", kind="policy-in-use"
        )


async def _complete_deletion(
    *, db: AsyncDatabase, principal: Principal, policy_id: str, current: dict[str, Any]
) -> None:
    """Record the deletion decided on ``current`` (once, however often it is completed, and
    as the deletion of the administrator who decided it), then remove the policy. A change
    before it that its writer could not record is recorded first."""
    current = await _settle_audit(db=db, principal=principal, policy_id=policy_id, document=current)
    await _audit(
        db=db,
        principal=principal.model_copy(update={"subject": current["deleting_by"]}),
        policy_id=policy_id,
        action=audit.DELETED,
        at=current[DELETING],
        document=current,
    )
    await db[SLA_POLICIES].delete_one({"_id": current["_id"], DELETING: {"$ne": None}})
