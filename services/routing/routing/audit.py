"""Audit trail of directory, rule and policy changes: who changed what, when, to what.

A change is recorded once: its record's ``_id`` names the entity and the version the change
left it at (:func:`change_id`), so a request repeated after a failure further on (a 503,
then the client's retry) finds its record there and adds none.

A change's record is decided with its write: the write leaves it on the entity
(:func:`unrecorded`) until it is recorded (:func:`settle`). A writer that fails or dies
between the two leaves it to the entity's next change (and a rule's to the next read of its
versions) to record, or to the queue sweep (:func:`left_unrecorded`), whichever comes first:
until 6 December only the next change did, and a person deactivated by a request cut short
there was never deactivated in the audit trail (nobody changes them again). Before that, a
later change went ahead and the version it superseded was never recorded.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from complaints_shared.auth import Principal
from complaints_shared.mongo import as_utc
from routing import context_cache

AUDIT_LOG = "audit_log"
# The action of a change that removes the entity: it leaves no version of its own.
DELETED = "deleted"
# On an entity: the record of the change that left it at its version, not written yet.
UNRECORDED = "unrecorded_change"
# Writes a change's record: the change (action, actor, at) and the entity after it.
RecordWriter = Callable[[dict[str, Any], dict[str, Any]], Awaitable[None]]


def as_recorded_by(record: Callable[..., Awaitable[None]], *, principal: Principal) -> RecordWriter:
    """A writer for :func:`settle` from a store's ``record`` (keywords ``principal``,
    ``action``, ``at``, ``document``): the change recorded as the one of its own actor."""

    async def write(change: dict[str, Any], entity: dict[str, Any]) -> None:
        await record(
            principal=principal.model_copy(update={"subject": change["actor"]}),
            action=change["action"],
            at=change["at"],
            document=entity,
        )

    return write


def unrecorded(*, action: str, actor: str, at: datetime) -> dict[str, Any]:
    """The field a change's write sets: its record, until :func:`settle` writes it."""
    return {UNRECORDED: {"action": action, "actor": actor, "at": at}}


async def settle(
    *, db: AsyncDatabase, collection: str, document: dict[str, Any], write: RecordWriter
) -> dict[str, Any]:
    """Write the record ``document`` (an entity of ``collection``) still carries, if any, then
    drop it from the entity, only at the version it names (a later change carries its own);
    ``document`` without it."""
    change = document.get(UNRECORDED)
    entity = {key: value for key, value in document.items() if key != UNRECORDED}
    if change is None:
        return entity
    await write(change, entity)
    await db[collection].update_one(
        {"_id": document["_id"], "version": document.get("version"), UNRECORDED: {"$exists": True}},
        {"$unset": {UNRECORDED: ""}},
    )
    return entity


# Entities carrying a record one sweep writes at the most, per collection.
SETTLE_BATCH = 100


async def ensure_unrecorded_index(*, db: AsyncDatabase, collection: str) -> None:
    """The entities of ``collection`` carrying an unrecorded change, found without a scan."""
    await db[collection].create_index(f"{UNRECORDED}.at", name=UNRECORDED, sparse=True)


async def left_unrecorded(*, db: AsyncDatabase, collection: str) -> list[dict[str, Any]]:
    """Entities of ``collection`` whose change's record is still on them (its writer failed
    or died after the change): the oldest changes first."""
    found = db[collection].find({f"{UNRECORDED}.at": {"$exists": True}})
    return await found.sort(f"{UNRECORDED}.at", ASCENDING).limit(SETTLE_BATCH).to_list(None)


def recorder(document: dict[str, Any]) -> Principal:
    """Who records an entity's change left unrecorded: written as its own actor's."""
    change = document.get(UNRECORDED) or {}
    return Principal(
        subject=change.get("actor") or "routing", org=document["org"], branches="*", roles=()
    )


async def ensure_indexes(*, db: AsyncDatabase) -> None:
    await db[AUDIT_LOG].create_index(
        [("org", ASCENDING), ("entity", ASCENDING), ("entity_id", ASCENDING), ("at", DESCENDING)],
        name="org_entity_at",
    )


async def record(
    *,
    db: AsyncDatabase,
    org: str,
    entity: str,
    entity_id: str,
    action: str,
    actor: str,
    at: datetime,
    snapshot: dict[str, Any],
) -> None:
    """Append one change, unless it is recorded already; the snapshot is the entity as it
    was after the change (as a deletion found it), with its ``version``."""
    record_id = change_id(
        org=org, entity=entity, entity_id=entity_id, action=action, snapshot=snapshot
    )
    # Recorded by an earlier attempt of the same request, whose later step failed.
    with contextlib.suppress(DuplicateKeyError):
        await db[AUDIT_LOG].insert_one(
            {
                "_id": record_id,
                "org": org,
                "entity": entity,
                "entity_id": entity_id,
                "action": action,
                "actor": actor,
                "at": at,
                "snapshot": snapshot,
            }
        )


def change_id(
    *, org: str, entity: str, entity_id: str, action: str, snapshot: dict[str, Any]
) -> str:
    """The audit record's key of one change, e.g.
    ``acme:department:HZ:SVC/2026-12-04T07:02:21.123+00:00@2``.

    Every change an administrator makes counts the entity's ``version`` up, so the version
    it left names the change; a deletion counts nothing and is named after the version it
    removed. The entity's creation time tells apart an SLA policy deleted and created
    again under its id, whose versions count from 1 again (a policy stored before it kept
    one is named without it).
    """
    created = snapshot.get("created_at")
    since = f"/{_as_stored(created)}" if created else ""
    suffix = f":{DELETED}" if action == DELETED else ""
    return f"{org}:{entity}:{entity_id}{since}@{snapshot['version']}{suffix}"


def _as_stored(moment: datetime) -> str:
    # To the millisecond, as the database keeps it: a creation's first attempt names the
    # change from the document it wrote, a repeat from the one it reads back.
    return as_utc(moment).astimezone(UTC).isoformat(timespec="milliseconds")


async def record_change(
    *,
    db: AsyncDatabase,
    principal: Principal,
    entity: str,
    entity_id: str,
    action: str,
    at: datetime,
    snapshot: dict[str, Any],
) -> None:
    """An administrator's change: recorded, and every replica's routing contexts reload."""
    await record(
        db=db,
        org=principal.org,
        entity=entity,
        entity_id=entity_id,
        action=action,
        actor=principal.subject,
        at=at,
        snapshot=snapshot,
    )
    await context_cache.directory_changed(db=db, org=principal.org)


async def history(
    *, db: AsyncDatabase, org: str, entity: str, entity_id: str, limit: int = 100
) -> list[dict[str, Any]]:
    cursor = (
        db[AUDIT_LOG]
        .find({"org": org, "entity": entity, "entity_id": entity_id}, projection={"_id": 0})
        .sort("at", DESCENDING)
        .limit(limit)
    )
    return await cursor.to_list(None)
