"""What a service keeps of routing's branches: the newest ``branch.updated`` of each.

Routing's directory owns branches; intake (reference numbers) and follow-up (contact
hours) count in a branch's time zone, so each keeps the announcements in a collection of
its own database, one document per branch (``<org>:<code>``).
"""

from __future__ import annotations

from contextlib import suppress
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from complaints_shared.events import BranchUpdated

BRANCHES = "branches"


def branch_key(org: str, code: str) -> str:
    return f"{org}:{code}"


async def keep_newest(*, db: AsyncDatabase, branch: BranchUpdated) -> None:
    """Keep the newest version of a branch routing announced; older or repeated ones are no-ops.

    The upsert only matches an older version: a newer or equal one already stored makes
    it try an insert of the same ``_id``, which the unique ``_id`` refuses.
    """
    with suppress(DuplicateKeyError):
        await db[BRANCHES].update_one(
            {"_id": branch_key(branch.org, branch.branch), "version": {"$lt": branch.version}},
            {
                "$set": {
                    "org": branch.org,
                    "code": branch.branch,
                    "time_zone": branch.time_zone,
                    "active": branch.active,
                    "version": branch.version,
                    "updated_at": branch.updated_at,
                }
            },
            upsert=True,
        )


async def announced_time_zone(*, db: AsyncDatabase, org: str, branch: str) -> str | None:
    """The branch's time zone as routing last announced it; None before any announcement."""
    known = await announced(db=db, org=org, branch=branch)
    return known.get("time_zone") if known else None


async def announced(*, db: AsyncDatabase, org: str, branch: str) -> dict[str, Any] | None:
    """The branch's ``time_zone`` and ``active`` as routing last announced them; None before
    any announcement."""
    return await db[BRANCHES].find_one(
        {"_id": branch_key(org, branch)}, projection={"time_zone": 1, "active": 1}
    )
