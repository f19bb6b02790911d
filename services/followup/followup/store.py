"""Data access for satisfaction checks: persistence only.

Every change of a check goes through :func:`change`, the check's use of the
aggregate kernel (``complaints_shared.aggregate``): read the document, let the
caller decide (``followup.lifecycle`` holds the transition table and the
decisions), then write conditionally on the version read together with the
check's history entry and the outbox events the change causes, in one atomic
update.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from complaints_shared import aggregate
from complaints_shared.aggregate import Aggregate, Decide
from complaints_shared.auth import Principal
from complaints_shared.events import ComplaintReceived
from complaints_shared.pagination import Page
from complaints_shared.timers import FAILURE_FIELDS
from followup import config_store
from followup.models import OPEN_CHECK_STATUSES, CheckFilters, SatisfactionCheckRead
from followup.settings import FollowupSettings

CHECKS = "satisfaction_checks"
CHECK = Aggregate(collection=CHECKS, what="satisfaction check", max_write_attempts=5)
SNAPSHOTS = "complaint_snapshots"
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
    await config_store.ensure_indexes(db=db)


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
    )


async def insert_check(*, db: AsyncDatabase, document: dict[str, Any]) -> bool:
    """Store a new check; False when it exists already (its event was delivered before)."""
    try:
        await db[CHECKS].insert_one(document)
    except DuplicateKeyError:
        return False
    return True


async def open_check_ids(
    *, db: AsyncDatabase, org: str, complaint_id: str, only: dict[str, Any]
) -> list[str]:
    """The complaint's open checks matching ``only``."""
    query = {"org": org, "complaint_id": complaint_id, "status": {"$in": OPEN}, **only}
    return [doc["_id"] async for doc in db[CHECKS].find(query, projection={"_id": 1})]


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


# ------------------------------------------------------- complaint snapshots --


async def remember_received(*, db: AsyncDatabase, received: ComplaintReceived) -> None:
    """Keep the complaint's subject for the call-back, in case the resolution omits it."""
    await db[SNAPSHOTS].update_one(
        {"_id": received.complaint_id},
        {
            "$setOnInsert": {
                "org": received.org,
                "branch": received.branch,
                "reference": received.reference,
                "subject": received.subject,
                "received_at": received.received_at,
            }
        },
        upsert=True,
    )


async def remembered_subject(*, db: AsyncDatabase, org: str, complaint_id: str) -> str | None:
    snapshot = await db[SNAPSHOTS].find_one(
        {"_id": complaint_id, "org": org}, projection={"subject": 1}
    )
    return snapshot.get("subject") if snapshot else None


# ------------------------------------------------------------------ reading --


async def get_visible(*, db: AsyncDatabase, principal: Principal, followup_id: str) -> dict:
    """The check if the caller may see it; a foreign one is simply not found."""
    return await aggregate.get_visible(
        db=db, aggregate=CHECK, principal=principal, aggregate_id=followup_id
    )


def _list_query(*, principal: Principal, filters: CheckFilters) -> dict[str, Any]:
    query = aggregate.visibility(principal)
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
    return SatisfactionCheckRead.model_validate({**document, "id": document["_id"]})
