"""Versioned configuration: follow-up policies per organisation, contact hours per branch.

Every change inserts a new immutable version, so the stored versions are the
audit trail (who changed what, when) and a unique index on the version number
turns two concurrent changes into one success and one 409.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from complaints_shared.auth import Principal
from complaints_shared.problems import ProblemError
from followup.contact_hours import default_contact_hours
from followup.models import ContactHours, ContactHoursRead, FollowupPolicy, PolicyRead
from followup.policy import default_policy
from followup.settings import FollowupSettings

POLICIES = "followup_policies"
CONTACT_HOURS = "contact_hours"


async def ensure_indexes(*, db: AsyncDatabase) -> None:
    await db[POLICIES].create_index(
        [("org", ASCENDING), ("version", DESCENDING)], unique=True, name="org_version"
    )
    await db[CONTACT_HOURS].create_index(
        [("org", ASCENDING), ("branch", ASCENDING), ("version", DESCENDING)],
        unique=True,
        name="org_branch_version",
    )


async def _latest(collection: AsyncCollection, key: dict[str, Any]) -> dict[str, Any] | None:
    return await collection.find_one(key, sort=[("version", DESCENDING)])


async def _insert_next_version(
    collection: AsyncCollection,
    *,
    key: dict[str, Any],
    field: str,
    value: dict[str, Any],
    principal: Principal,
    now: datetime,
) -> dict[str, Any]:
    latest = await _latest(collection, key)
    version = (latest["version"] if latest else 0) + 1
    document = {
        "_id": ":".join([*map(str, key.values()), f"v{version}"]),
        **key,
        "version": version,
        "changed_by": principal.subject,
        "changed_at": now,
        field: value,
    }
    try:
        await collection.insert_one(document)
    except DuplicateKeyError:
        raise ProblemError(
            status=409,
            title="Concurrent change",
            kind="concurrent-update",
            detail=f"{collection.name} of {key} changed while this request ran; read it and retry",
        ) from None
    return document


async def _history(
    collection: AsyncCollection, *, key: dict[str, Any], limit: int
) -> list[dict[str, Any]]:
    cursor = collection.find(key, projection={"_id": 0}).sort("version", DESCENDING).limit(limit)
    return await cursor.to_list(None)


# ----------------------------------------------------------------- policies --


async def current_policy(*, db: AsyncDatabase, settings: FollowupSettings, org: str) -> PolicyRead:
    """The organisation's latest stored policy, or the built-in default (version 0)."""
    stored = await _latest(db[POLICIES], {"org": org})
    if stored is None:
        return PolicyRead(org=org, version=0, policy=default_policy(settings))
    return PolicyRead.model_validate(stored)


async def save_policy(
    *, db: AsyncDatabase, principal: Principal, policy: FollowupPolicy, now: datetime
) -> PolicyRead:
    """Store a new version of the caller's organisation's policy."""
    document = await _insert_next_version(
        db[POLICIES],
        key={"org": principal.org},
        field="policy",
        value=policy.model_dump(mode="json"),
        principal=principal,
        now=now,
    )
    return PolicyRead.model_validate(document)


async def policy_history(*, db: AsyncDatabase, org: str, limit: int) -> list[PolicyRead]:
    documents = await _history(db[POLICIES], key={"org": org}, limit=limit)
    return [PolicyRead.model_validate(document) for document in documents]


# ------------------------------------------------------------ contact hours --


async def current_contact_hours(
    *, db: AsyncDatabase, settings: FollowupSettings, org: str, branch: str
) -> ContactHoursRead:
    """The branch's latest stored contact hours, or the service defaults (version 0)."""
    stored = await _latest(db[CONTACT_HOURS], {"org": org, "branch": branch})
    if stored is None:
        return ContactHoursRead(
            org=org, branch=branch, version=0, contact_hours=default_contact_hours(settings)
        )
    return ContactHoursRead.model_validate(stored)


async def save_contact_hours(
    *,
    db: AsyncDatabase,
    principal: Principal,
    branch: str,
    contact_hours: ContactHours,
    now: datetime,
) -> ContactHoursRead:
    document = await _insert_next_version(
        db[CONTACT_HOURS],
        key={"org": principal.org, "branch": branch},
        field="contact_hours",
        value=contact_hours.model_dump(mode="json"),
        principal=principal,
        now=now,
    )
    return ContactHoursRead.model_validate(document)


async def contact_hours_history(
    *, db: AsyncDatabase, org: str, branch: str, limit: int
) -> list[ContactHoursRead]:
    key = {"org": org, "branch": branch}
    documents = await _history(db[CONTACT_HOURS], key=key, limit=limit)
    return [ContactHoursRead.model_validate(document) for document in documents]
