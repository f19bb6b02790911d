"""Roles one document of a scope holds at most: the organisation's default routing rule,
its default SLA policy, a branch's active department of each kind.

Saves check the role by reading first (their 422 names the holder), but two saves at once
both read "free" and both stored a holder until 5 December. The role is now also claimed
on the document: a field naming the role and its scope while the document holds it,
absent otherwise, under a sparse unique index, so the database refuses a second holder
whatever the timing. A save that loses that race is a 409 to retry, which then meets the
read check.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from complaints_shared.logs import get_logger
from complaints_shared.mongo import clashes_on

log = get_logger(__name__)

ROLE_FIELD = "sole_role"


async def ensure_role_index(
    *,
    db: AsyncDatabase,
    collection: str,
    holders: dict[str, Any],
    role_of: Callable[[dict[str, Any]], str | None],
) -> None:
    """The unique index, and the claims of the documents holding a role (``holders``, a
    filter; ``role_of`` names a document's role) stored before claims existed; of two
    holders the old race stored, the second stays unclaimed, logged
    (``sole_role_held_twice``) for an administrator to settle."""
    await db[collection].create_index(ROLE_FIELD, name=ROLE_FIELD, unique=True, sparse=True)
    async for document in db[collection].find({**holders, ROLE_FIELD: {"$exists": False}}):
        role = role_of(document)
        if role is None:
            continue
        try:
            await db[collection].update_one(
                {"_id": document["_id"], ROLE_FIELD: {"$exists": False}},
                {"$set": {ROLE_FIELD: role}},
            )
        except DuplicateKeyError:
            log.warning(
                "sole_role_held_twice", collection=collection, id=document["_id"], role=role
            )


def claimed(document: dict[str, Any], *, role: str | None) -> dict[str, Any]:
    """``document`` (to be inserted) claiming ``role``, if it holds one."""
    return {**document, ROLE_FIELD: role} if role is not None else document


def claim_update(*, role: str | None) -> dict[str, Any]:
    """The update operators leaving the document claiming ``role`` (none: no claim), to
    merge into the update that gives or takes the role."""
    return {"$set": {ROLE_FIELD: role}} if role is not None else {"$unset": {ROLE_FIELD: ""}}


def is_role_clash(exc: DuplicateKeyError) -> bool:
    """The write was refused because another document holds the role."""
    return clashes_on(exc, ROLE_FIELD)
