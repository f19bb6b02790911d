"""A per-process cache of what routing decisions read from the directory, rules and policies.

Every received complaint needs the organisation's rules and SLA policies, the
branch with its calendar, the reachable departments and their people: six
reads that change only when an administrator edits something. Each such edit
bumps the organisation's *directory version* (one small document per
organisation), so a cached context is reused only while that version is
unchanged. The version itself is read at most every ``version_check_s`` per
organisation, not per complaint: a change made through this replica is seen by
its next complaint, one made through another replica within ``version_check_s``.
``max_age_s`` bounds how long a context lives even so (edits made to the
database by hand carry no version, nor one whose bump failed); the queue sweep
tries unroutable complaints again as often for the same reason
(``assignments.scheduler``).

Loads and the "longest since the last assignment" tie-break change with every
assignment: they are not part of a context. Owner choice reads the department's
people through ``directory.store.desk``, which keeps them for a second at most and
applies this process's own assignments to its copy.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from pymongo.asynchronous.database import AsyncDatabase

from routing.metrics import ROUTING_CONTEXT_READS

DIRECTORY_VERSIONS = "directory_versions"

Context = TypeVar("Context")


# Organisations whose directory this process changed, and when (monotonic): their
# versions are read again at once rather than at the next periodic check.
_changed_here: dict[str, float] = {}


async def directory_changed(*, db: AsyncDatabase, org: str) -> None:
    """Call after any directory, rule or policy write: cached contexts of ``org`` go stale."""
    await db[DIRECTORY_VERSIONS].update_one({"_id": org}, {"$inc": {"version": 1}}, upsert=True)
    _changed_here[org] = time.monotonic()


def changed_here_since(*, org: str, since: float) -> bool:
    """Whether this process changed ``org``'s directory after ``since`` (monotonic)."""
    return _changed_here.get(org, float("-inf")) >= since


async def directory_version(*, db: AsyncDatabase, org: str) -> int:
    document = await db[DIRECTORY_VERSIONS].find_one({"_id": org})
    return document["version"] if document else 0


@dataclass
class _Entry(Generic[Context]):
    version: int
    loaded_at: float
    context: Context


@dataclass
class _VersionSeen:
    version: int
    read_at: float


class ContextCache(Generic[Context]):
    """Contexts keyed by (org, branch), valid while the org's directory version holds."""

    def __init__(self, *, max_age_s: float, version_check_s: float) -> None:
        self._max_age_s = max_age_s
        self._version_check_s = version_check_s
        self._entries: dict[tuple[str, str], _Entry[Context]] = {}
        self._versions: dict[str, _VersionSeen] = {}

    async def _version(self, *, db: AsyncDatabase, org: str) -> int:
        seen = self._versions.get(org)
        now = time.monotonic()
        if (
            seen is not None
            and now - seen.read_at < self._version_check_s
            and _changed_here.get(org, float("-inf")) < seen.read_at
        ):
            return seen.version
        version = await directory_version(db=db, org=org)
        self._versions[org] = _VersionSeen(version=version, read_at=now)
        return version

    async def get(
        self,
        *,
        db: AsyncDatabase,
        org: str,
        branch: str,
        load: Callable[[], Awaitable[Context]],
    ) -> Context:
        # The version is read before loading: a change that lands during the load leaves
        # the entry one version behind, so the next complaint loads again.
        version = await self._version(db=db, org=org)
        key = (org, branch)
        entry = self._entries.get(key)
        now = time.monotonic()
        if entry and entry.version == version and now - entry.loaded_at < self._max_age_s:
            ROUTING_CONTEXT_READS.labels("cache").inc()
            return entry.context
        ROUTING_CONTEXT_READS.labels("load").inc()
        context = await load()
        self._entries[key] = _Entry(version=version, loaded_at=now, context=context)
        return context
