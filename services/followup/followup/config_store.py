"""Versioned configuration: follow-up policies (organisation default and per-branch
overrides) and contact hours per branch.

Every change inserts a new immutable version, so the stored versions are the
audit trail (who changed what, when) and a unique index on the version number
turns two concurrent changes into one success and one 409. The organisation's
default policy is stored with ``branch: null``; a branch's override with its
code, and a branch version whose ``policy`` is null means "follow the
organisation's policy again".
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
    # Before per-branch policies the version was unique per organisation alone.
    if "org_version" in await db[POLICIES].index_information():
        await db[POLICIES].drop_index("org_version")
    await db[POLICIES].create_index(
        [("org", ASCENDING), ("branch", ASCENDING), ("version", DESCENDING)],
        unique=True,
        name="org_branch_version",
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
    value: dict[str, Any] | None,
    principal: Principal,
    now: datetime,
) -> dict[str, Any]:
    latest = await _latest(collection, key)
    version = (latest["version"] if latest else 0) + 1
    document = {
        "_id": ":".join([*(str(part) for part in key.values() if part is not None), f"v{version}"]),
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


def _policy_key(org: str, branch: str | None) -> dict[str, Any]:
    # ``branch: None`` also matches the organisation's versions stored before branches had any.
    return {"org": org, "branch": branch}


async def current_policy(*, db: AsyncDatabase, settings: FollowupSettings, org: str) -> PolicyRead:
    """The organisation's latest stored policy, or the built-in default (version 0)."""
    stored = await _latest(db[POLICIES], _policy_key(org, None))
    if stored is None:
        return PolicyRead(org=org, version=0, policy=default_policy(settings))
    return PolicyRead.model_validate(stored)


async def policy_for_branch(
    *, db: AsyncDatabase, settings: FollowupSettings, org: str, branch: str
) -> PolicyRead:
    """The policy a branch's resolutions are scheduled under: its own, else the organisation's."""
    stored = await _latest(db[POLICIES], _policy_key(org, branch))
    if stored is None or stored.get("policy") is None:
        return await current_policy(db=db, settings=settings, org=org)
    return PolicyRead.model_validate(stored)


async def save_policy(
    *,
    db: AsyncDatabase,
    principal: Principal,
    policy: FollowupPolicy | None,
    now: datetime,
    branch: str | None = None,
) -> PolicyRead:
    """Store a new version of the organisation's policy, or of a branch's (None: inherit)."""
    document = await _insert_next_version(
        db[POLICIES],
        key=_policy_key(principal.org, branch),
        field="policy",
        value=policy.model_dump(mode="json") if policy is not None else None,
        principal=principal,
        now=now,
    )
    return PolicyRead.model_validate(document)


async def follow_organisation_policy(
    *,
    db: AsyncDatabase,
    settings: FollowupSettings,
    principal: Principal,
    branch: str,
    now: datetime,
) -> PolicyRead:
    """The branch gives up its own policy (recorded as a version); the policy now in force."""
    own = await _latest(db[POLICIES], _policy_key(principal.org, branch))
    if own is not None and own.get("policy") is not None:
        await save_policy(db=db, principal=principal, policy=None, now=now, branch=branch)
    return await policy_for_branch(db=db, settings=settings, org=principal.org, branch=branch)


async def policy_history(
    *, db: AsyncDatabase, org: str, limit: int, branch: str | None = None
) -> list[PolicyRead]:
    documents = await _history(db[POLICIES], key=_policy_key(org, branch), limit=limit)
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
