"""Data access for satisfaction checks and the versioned configuration: persistence only.

Every change of a check goes through :func:`change`, the check's use of the
aggregate kernel (``complaints_shared.aggregate``): read the document, let the
caller decide (``followup.lifecycle`` holds the transition table and the
decisions), then write conditionally on the version read together with the
check's history entry and the outbox events the change causes, in one atomic
update.

The configuration (follow-up policies, the organisation's default and per-branch
overrides, and contact hours per branch) is versioned: every change inserts a new
immutable version, so the stored versions are the audit trail (who changed what,
when) and a unique index on the version number turns two concurrent changes into
one success and one 409. The organisation's default policy is stored with
``branch: null``; a branch's override with its code, and a branch version whose
``policy`` is null means "follow the organisation's policy again".

Routing's directory owns branches; follow-up keeps what routing announced of each
(``branch.updated``): its time zone, the zone of the default contact hours of a
branch without its own.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from complaints_shared import aggregate, announced_branches, preconditions
from complaints_shared.aggregate import Aggregate, Decide
from complaints_shared.auth import Principal
from complaints_shared.idempotency import CommandKey
from complaints_shared.mongo import as_stored, insert_batched
from complaints_shared.pagination import Page
from complaints_shared.preconditions import IfMatch
from complaints_shared.problems import ProblemError
from complaints_shared.stored import from_stored
from complaints_shared.timers import FAILURE_FIELDS
from followup.contact_hours import branch_default_hours
from followup.models import (
    OPEN_CHECK_STATUSES,
    CheckFilters,
    ContactHours,
    ContactHoursRead,
    FollowupPolicy,
    PolicyRead,
    SatisfactionCheckRead,
)
from followup.policy import default_policy
from followup.settings import FollowupSettings

CHECKS = "satisfaction_checks"
CHECK = Aggregate(collection=CHECKS, what="satisfaction check", max_write_attempts=5)
POLICIES = "followup_policies"
CONTACT_HOURS = "contact_hours"
# A fired or released check also drops the failures its earlier tries recorded.
TIMER_FIELDS = {"timer_lease_owner": "", "timer_lease_until": "", **FAILURE_FIELDS}
OPEN = [status.value for status in OPEN_CHECK_STATUSES]


async def ensure_indexes(*, db: AsyncDatabase) -> None:
    checks = db[CHECKS]
    # The scheduler's two questions: which scheduled checks are due, which claims expired.
    await checks.create_index([("status", ASCENDING), ("due_at", ASCENDING)], name="status_due")
    await checks.create_index(
        [("status", ASCENDING), ("claim_lease_until", ASCENDING)], name="status_claim_lease"
    )
    await checks.create_index(
        [("org", ASCENDING), ("due_at", ASCENDING), ("_id", ASCENDING)], name="org_due"
    )
    await checks.create_index(
        [("org", ASCENDING), ("branch", ASCENDING), ("status", ASCENDING), ("due_at", ASCENDING)],
        name="org_branch_status_due",
    )
    await checks.create_index(
        [("org", ASCENDING), ("complaint_id", ASCENDING), ("resolution_number", ASCENDING)],
        name="org_complaint_resolution",
    )
    await checks.create_index([("org", ASCENDING), ("resolved_at", ASCENDING)], name="org_resolved")
    await _ensure_configuration_indexes(db=db)


def check_id(*, complaint_id: str, resolution_number: int, sequence: int) -> str:
    """Deterministic, so a redelivered ``complaint.resolved`` cannot schedule twice."""
    return f"{complaint_id}:r{resolution_number}:{sequence}"


async def change(
    *,
    db: AsyncDatabase,
    settings: FollowupSettings,
    followup_id: str,
    scope: dict[str, Any],
    decide: Decide,
    event_id: str | None = None,
    command_key: CommandKey | None = None,
    now: datetime,
) -> dict[str, Any] | None:
    """Apply one decided change atomically; the new document, None when not visible."""
    return await aggregate.change(
        db=db,
        settings=settings,
        aggregate=CHECK,
        aggregate_id=followup_id,
        decide=decide,
        now=now,
        scope=scope,
        event_id=event_id,
        command_key=command_key,
    )


async def insert_check(*, db: AsyncDatabase, document: dict[str, Any]) -> bool:
    """Store a new check; False when it exists already (its event was delivered before)."""
    try:
        await insert_batched(db[CHECKS], document)
    except DuplicateKeyError:
        return False
    aggregate.inserted(db=db, aggregate=CHECK, document=document)
    return True


# Per complaint, the resolutions a reopen or an administrator's close ended (``up_to``) and
# whether it was withdrawn (``terminal``): a resolution's ``complaint.resolved`` replayed
# from the dead-letter topic after those schedules no call-backs (its checks would call a
# customer whose complaint is back in progress, or withdrawn).
ENDED_RESOLUTIONS = "ended_resolutions"


async def record_ended(
    *, db: AsyncDatabase, org: str, complaint_id: str, up_to: int | None, terminal: bool = False
) -> None:
    """Note that the complaint's first ``up_to`` resolutions (all, ``terminal``) ended."""
    update: dict[str, Any] = {"$setOnInsert": {"org": org, "complaint_id": complaint_id}}
    if up_to is not None:
        update["$max"] = {"up_to": up_to}
    if terminal:
        update["$set"] = {"terminal": True}
    await db[ENDED_RESOLUTIONS].update_one({"_id": f"{org}:{complaint_id}"}, update, upsert=True)


async def resolution_ended(
    *, db: AsyncDatabase, org: str, complaint_id: str, resolution_number: int
) -> bool:
    ended = await db[ENDED_RESOLUTIONS].find_one({"_id": f"{org}:{complaint_id}"})
    if ended is None:
        return False
    return bool(ended.get("terminal")) or resolution_number <= ended.get("up_to", 0)


async def open_check_ids(
    *, db: AsyncDatabase, org: str, complaint_id: str, only: dict[str, Any]
) -> list[str]:
    """The complaint's open checks matching ``only``."""
    query = {"org": org, "complaint_id": complaint_id, "status": {"$in": OPEN}, **only}
    return [doc["_id"] async for doc in db[CHECKS].find(query, projection={"_id": 1})]


async def earlier_checks(*, db: AsyncDatabase, check: dict[str, Any]) -> list[dict[str, Any]]:
    """The checks of ``check``'s resolution before it (lower ``sequence``), as much of each
    as ``lifecycle.earlier_calls`` reads."""
    if not check.get("sequence"):
        return []
    query = {
        "org": check["org"],
        "complaint_id": check["complaint_id"],
        "resolution_number": check.get("resolution_number"),
        "sequence": {"$lt": check["sequence"]},
    }
    projection = {"status": 1, "sequence": 1, "completed_at": 1, "attempts.attempted_at": 1}
    return await db[CHECKS].find(query, projection=projection).to_list(None)


async def has_later_resolution(
    *, db: AsyncDatabase, org: str, complaint_id: str, resolution_number: int
) -> bool:
    """Whether checks of a resolution after ``resolution_number`` exist."""
    later = await db[CHECKS].find_one(
        {
            "org": org,
            "complaint_id": complaint_id,
            "resolution_number": {"$gt": resolution_number},
        },
        projection={"_id": 1},
    )
    return later is not None


# ------------------------------------------------------------------ reading --


async def get_visible(*, db: AsyncDatabase, principal: Principal, followup_id: str) -> dict:
    """The check if the caller may see it; a foreign one is simply not found."""
    return await aggregate.get_visible(
        db=db, aggregate=CHECK, principal=principal, aggregate_id=followup_id
    )


def _list_query(*, principal: Principal, filters: CheckFilters) -> dict[str, Any]:
    query = aggregate.visibility(principal)
    if filters.branch is not None:
        principal.require_branch(filters.branch, field="branch")
    wanted = {
        "branch": filters.branch,
        "status": filters.status.value if filters.status else None,
        "owner_id": filters.owner,
        "claimed_by": filters.claimed_by,
        "complaint_id": filters.complaint_id,
    }
    conditions = [{field: value} for field, value in wanted.items() if value is not None]
    if filters.due_before is not None:
        conditions.append({"due_at": {"$lt": filters.due_before}})
    return {"$and": [query, *conditions]} if conditions else query


async def list_checks(
    *, db: AsyncDatabase, principal: Principal, filters: CheckFilters
) -> Page[SatisfactionCheckRead]:
    """Checks the caller may see, ordered by due time."""
    return await aggregate.page(
        collection=db[CHECKS],
        query=_list_query(principal=principal, filters=filters),
        sort_field="due_at",
        limit=filters.limit,
        cursor=filters.cursor,
        to_item=to_read,
        projection=CHECK.hidden,
    )


def to_read(document: dict[str, Any]) -> SatisfactionCheckRead:
    return from_stored(SatisfactionCheckRead, {**document, "id": document["_id"]})


# ------------------------------------------------- versioned configuration --


async def _ensure_configuration_indexes(*, db: AsyncDatabase) -> None:
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
    if_match: IfMatch | None,
    now: datetime,
    inherited_version: int | None = None,
) -> dict[str, Any]:
    """Store ``value`` as the next version, unless the latest already says it (a retry after
    a lost answer): then that version, and nothing is stored. Nothing stored reads as
    version 0 with a null value. A new version is held to ``if_match`` (a 412) naming the
    setting's tag (``_tag``)."""
    latest = await _latest(collection, key)
    if not preconditions.write_needed(
        if_match,
        current=_tag(latest, field=field, inherited_version=inherited_version),
        already_shown=(latest or {}).get(field) == value,
        what=f"{collection.name} of {_described(key)}",
    ):
        return latest or {**key, "version": 0, field: None}
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
        # Another change took this version number meanwhile: the same one (a retry beside
        # this request) is answered as stored, another is the 412 an ``If-Match`` promises
        # or a 409 to retry.
        latest = await _latest(collection, key)
        if latest is not None and latest.get(field) == value:
            return latest
        raise preconditions.lost_race(
            if_match,
            current=_tag(latest, field=field, inherited_version=inherited_version),
            what=f"{collection.name} of {_described(key)}",
            otherwise=ProblemError(
                status=409,
                title="Concurrent change",
                kind="concurrent-update",
                detail=f"{collection.name} of {_described(key)} changed while this request "
                "ran; read it and retry",
            ),
        ) from None
    return as_stored(document)  # as a later read has it (times in milliseconds)


def _tag(latest: dict[str, Any] | None, *, field: str, inherited_version: int | None) -> int | str:
    """A setting's entity tag: its version (0: never stored). While it follows another
    setting (a branch without a policy of its own: the organisation's, at
    ``inherited_version``), what it shows is that one's, so the tag names both, e.g.
    ``3.5``: a change decided on what it showed is refused once either moved on."""
    version = latest["version"] if latest else 0
    following = latest is None or latest.get(field) is None
    if inherited_version is not None and following:
        return f"{version}.{inherited_version}"
    return version


def _described(key: dict[str, Any]) -> str:
    """``{"org": "acme", "branch": "HZ"}`` as ``acme, branch HZ`` (the organisation's own:
    ``acme``)."""
    return ", ".join(
        value if name == "org" else f"{name} {value}"
        for name, value in key.items()
        if value is not None
    )


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
    return from_stored(PolicyRead, stored)


async def policy_for_branch(
    *, db: AsyncDatabase, settings: FollowupSettings, org: str, branch: str
) -> PolicyRead:
    """The policy a branch's resolutions are scheduled under: its own, else the organisation's."""
    stored = await _latest(db[POLICIES], _policy_key(org, branch))
    if stored is None or stored.get("policy") is None:
        return await current_policy(db=db, settings=settings, org=org)
    return from_stored(PolicyRead, stored)


async def branch_policy(
    *, db: AsyncDatabase, settings: FollowupSettings, org: str, branch: str
) -> tuple[PolicyRead, int | str]:
    """``policy_for_branch`` and its entity tag (``_tag``: the branch's own version, and
    the organisation's while the branch follows it), which a change of the branch's policy
    is conditional on (``If-Match``)."""
    stored = await _latest(db[POLICIES], _policy_key(org, branch))
    organisation = await current_policy(db=db, settings=settings, org=org)
    tag = _tag(stored, field="policy", inherited_version=organisation.version)
    if stored is None or stored.get("policy") is None:
        return organisation, tag
    return from_stored(PolicyRead, stored), tag


async def save_policy(
    *,
    db: AsyncDatabase,
    principal: Principal,
    policy: FollowupPolicy | None,
    if_match: IfMatch | None,
    now: datetime,
    branch: str | None = None,
) -> PolicyRead:
    """Store a new version of the organisation's policy, or of a branch's (None: inherit)."""
    inherited_version = None
    if branch is not None:
        organisation = await _latest(db[POLICIES], _policy_key(principal.org, None))
        inherited_version = organisation["version"] if organisation else 0
    document = await _insert_next_version(
        db[POLICIES],
        key=_policy_key(principal.org, branch),
        field="policy",
        value=policy.model_dump(mode="json") if policy is not None else None,
        principal=principal,
        if_match=if_match,
        now=now,
        inherited_version=inherited_version,
    )
    return from_stored(PolicyRead, document)


async def follow_organisation_policy(
    *,
    db: AsyncDatabase,
    settings: FollowupSettings,
    principal: Principal,
    branch: str,
    if_match: IfMatch | None,
    now: datetime,
) -> tuple[PolicyRead, int | str]:
    """The branch gives up its own policy (recorded as a version, unless it has none); the
    policy now in force and its tag, as ``branch_policy``."""
    await save_policy(
        db=db, principal=principal, policy=None, if_match=if_match, now=now, branch=branch
    )
    return await branch_policy(db=db, settings=settings, org=principal.org, branch=branch)


async def policy_history(
    *, db: AsyncDatabase, org: str, limit: int, branch: str | None = None
) -> list[PolicyRead]:
    documents = await _history(db[POLICIES], key=_policy_key(org, branch), limit=limit)
    return [from_stored(PolicyRead, document) for document in documents]


# ------------------------------------------------------------ contact hours --


async def current_contact_hours(
    *, db: AsyncDatabase, settings: FollowupSettings, org: str, branch: str
) -> ContactHoursRead:
    """The branch's latest stored contact hours, or the service defaults in the branch's time
    zone as routing announced it (version 0).

    Read at every use (scheduling, firing, claiming, the next attempt), not kept per process:
    every replica counts in a zone as soon as the replica that consumed its announcement
    stored it.
    """
    stored = await _latest(db[CONTACT_HOURS], {"org": org, "branch": branch})
    if stored is not None:
        return from_stored(ContactHoursRead, stored)
    announced = await announced_branches.announced_time_zone(db=db, org=org, branch=branch)
    hours = branch_default_hours(settings, org=org, branch=branch, announced_time_zone=announced)
    return ContactHoursRead(org=org, branch=branch, version=0, contact_hours=hours)


async def save_contact_hours(
    *,
    db: AsyncDatabase,
    principal: Principal,
    branch: str,
    contact_hours: ContactHours,
    if_match: IfMatch | None,
    now: datetime,
) -> ContactHoursRead:
    document = await _insert_next_version(
        db[CONTACT_HOURS],
        key={"org": principal.org, "branch": branch},
        field="contact_hours",
        value=contact_hours.model_dump(mode="json"),
        principal=principal,
        if_match=if_match,
        now=now,
    )
    return from_stored(ContactHoursRead, document)


async def contact_hours_history(
    *, db: AsyncDatabase, org: str, branch: str, limit: int
) -> list[ContactHoursRead]:
    key = {"org": org, "branch": branch}
    documents = await _history(db[CONTACT_HOURS], key=key, limit=limit)
    return [from_stored(ContactHoursRead, document) for document in documents]
