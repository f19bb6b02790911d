"""Audit trail of directory, rule and policy changes: who changed what, when, to what."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.database import AsyncDatabase

from complaints_shared.auth import Principal
from routing import context_cache

AUDIT_LOG = "audit_log"


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
    """Append one change; the snapshot is the entity as it was after the change."""
    await db[AUDIT_LOG].insert_one(
        {
            "org": org,
            "entity": entity,
            "entity_id": entity_id,
            "action": action,
            "actor": actor,
            "at": at,
            "snapshot": snapshot,
        }
    )


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
