"""The list filters of complaints as one multikey field, indexed once.

Every complaint carries ``filter_keys``: one string per value a list filter of
GET /v1/complaints selects it by (``b:LZ`` its branch, ``s:open`` its status, ``bs:LZ|open``
both, ``d:<department>``, ``f:<flag>``, ...). One index ``(org, filter_keys, created_at,
_id)`` serves each of those filters in date order, where an index per filter did before.
On the local server every update of a complaint rewrites every index entry it has and
walks the index catalogue per statement, so the twelve indexes the keys replace cost
about a tenth of a complaint's database work (docs/performance.md); on MongoDB one index
instead of twelve is less to keep in memory.

The keys are derived: ``store.change`` recomputes them in every write of the kernel
(``with_keys``), registration stores them with the new complaint, and ``backfill`` gives
them to complaints stored before they existed (or under an older ``VERSION``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

from pymongo import UpdateOne
from pymongo.asynchronous.database import AsyncDatabase

from complaints_shared.mongo import retrying

FIELD = "filter_keys"
VERSION_FIELD = "filter_keys_version"
# Raised whenever ``keys_of`` changes: the backfill then rewrites every complaint's keys.
VERSION = 1
INDEX = [("org", 1), (FIELD, 1), ("created_at", -1), ("_id", -1)]
# The fields the keys are derived from (what the backfill reads).
SOURCE_FIELDS = (
    "branch",
    "status",
    "category",
    "severity",
    "channel",
    "flags",
    "assignment",
    "sla_breached",
    "repeat_count",
    "customer_keys",
)
BACKFILL_BATCH = 500


def keys_of(document: dict[str, Any]) -> list[str]:
    """The filter keys of a complaint as stored (sorted, no repeats)."""
    branch, status = document["branch"], document["status"]
    keys = {f"b:{branch}", f"s:{status}", f"bs:{branch}|{status}"}
    for prefix, name in (("c", "category"), ("v", "severity"), ("ch", "channel")):
        if document.get(name) is not None:
            keys.add(f"{prefix}:{document[name]}")
    keys.update(f"f:{flag}" for flag in document.get("flags") or [])
    assignment = document.get("assignment") or {}
    for prefix, name in (("d", "department"), ("o", "owner_id")):
        if assignment.get(name):
            keys.add(f"{prefix}:{assignment[name]}")
            keys.add(f"{prefix}s:{assignment[name]}|{status}")
    if document.get("sla_breached"):
        keys.add("x:breached")
    if document.get("repeat_count"):
        keys.add("r:repeat")
    keys.update(f"k:{key}" for key in document.get("customer_keys") or [])
    return sorted(keys)


def stored_fields(document: dict[str, Any]) -> dict[str, Any]:
    """The keys' fields for a complaint about to be inserted."""
    return {FIELD: keys_of(document), VERSION_FIELD: VERSION}


def with_keys(current: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` (of the document ``current``) with the keys of the document it makes
    set too, when they differ from the stored ones. The sources are only ever ``$set`` or
    ``$unset`` (never ``$inc``, ``$push``...), so the result is known here."""
    after = dict(current)
    for path, value in update.get("$set", {}).items():
        _put(after, path, value)
    for path in update.get("$unset", {}):
        _put(after, path, None)
    keys = keys_of(after)
    if keys == current.get(FIELD) and current.get(VERSION_FIELD) == VERSION:
        return update
    return {**update, "$set": {**update.get("$set", {}), FIELD: keys, VERSION_FIELD: VERSION}}


def _put(document: dict[str, Any], path: str, value: Any) -> None:
    """Set a dotted ``path`` in ``document``, copying the dicts on the way (the caller's
    document is not changed)."""
    head, _, rest = path.partition(".")
    if not rest:
        document[head] = value
        return
    inner = document.get(head)
    inner = dict(inner) if isinstance(inner, dict) else {}
    _put(inner, rest, value)
    document[head] = inner


def narrowed(query: dict[str, Any]) -> dict[str, Any]:
    """``query`` (conditions on the complaint's own fields: a list, a report's read) with
    the most selective of its filters also said as filter keys, so the keys' index serves
    it; the conditions stay as they are (checked on what the index selects; an empty
    ``$in`` selects nothing either way)."""
    given = {path: _values(query.get(path)) for path in _PATHS}
    given = {path: values for path, values in given.items() if values is not None}
    status = given.get("status")
    for path, prefix in (
        ("customer_keys", "k"),
        ("assignment.owner_id", "o"),
        ("assignment.department", "d"),
    ):
        if path in given:
            if status is None or path == "customer_keys":
                return {**query, FIELD: _in(f"{prefix}:{value}" for value in given[path])}
            pairs = itertools.product(given[path], status)
            return {**query, FIELD: _in(f"{prefix}s:{value}|{s}" for value, s in pairs)}
    if "branch" in given and status is not None:
        pairs = itertools.product(given["branch"], status)
        return {**query, FIELD: _in(f"bs:{branch}|{s}" for branch, s in pairs)}
    if query.get("sla_breached") is True:
        return {**query, FIELD: "x:breached"}
    if query.get("repeat_count", 0) != 0:
        return {**query, FIELD: "r:repeat"}
    for path, prefix in (
        ("flags", "f"),
        ("branch", "b"),
        ("category", "c"),
        ("severity", "v"),
        ("channel", "ch"),
        ("status", "s"),
    ):
        if path in given:
            return {**query, FIELD: _in(f"{prefix}:{value}" for value in given[path])}
    return query


# The fields ``narrowed`` can say as keys by their values.
_PATHS = (
    "branch",
    "status",
    "category",
    "severity",
    "channel",
    "flags",
    "customer_keys",
    "assignment.department",
    "assignment.owner_id",
)


def _values(condition: Any) -> list[Any] | None:
    """The values an equality (``x``, ``$in``) accepts; for ``$all``, one of the values
    every match holds (its first). None for anything else."""
    if isinstance(condition, str):
        return [condition]
    if isinstance(condition, dict) and len(condition) == 1:
        ((operator, operand),) = condition.items()
        if operator == "$in" and isinstance(operand, list):
            return operand
        if operator == "$all" and isinstance(operand, list) and operand:
            return operand[:1]
    return None


def _in(keys: Iterable[str]) -> dict[str, list[str]]:
    return {"$in": list(dict.fromkeys(keys))}


async def backfill(*, db: AsyncDatabase, collection: str) -> int:
    """Give every complaint without current keys its keys; how many it wrote.

    Runs at every start: one read of the complaints whose ``VERSION_FIELD`` is not
    ``VERSION`` (a scan on the local server; none once done). Each write is conditional on
    the version read, so a change meanwhile (which writes the keys itself) wins. Not a
    change of the complaint: ``updated_at`` and the version stay.
    """
    complaints = db[collection]
    written = 0
    batch: list[UpdateOne] = []
    found = complaints.find(
        {VERSION_FIELD: {"$ne": VERSION}},
        projection={"version": 1, FIELD: 1, **{name: 1 for name in SOURCE_FIELDS}},
    )
    async for complaint in found:
        batch.append(
            UpdateOne(
                {"_id": complaint["_id"], "version": complaint["version"]},
                {"$set": stored_fields(complaint)},
            )
        )
        if len(batch) == BACKFILL_BATCH:
            written += (await retrying(complaints.bulk_write, batch, ordered=False)).modified_count
            batch = []
    if batch:
        written += (await retrying(complaints.bulk_write, batch, ordered=False)).modified_count
    return written
