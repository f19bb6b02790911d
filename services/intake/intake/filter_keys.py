"""The list filters of complaints as one multikey field, indexed once.

Every complaint carries ``filter_keys``: one string per value a list filter of
GET /v1/complaints selects it by (``b:LZ`` its branch, ``s:open`` its status, ``bs:LZ|open``
both, ``d:<department>``, ``f:<flag>``, ``a:acknowledged``, ...). One index ``(org,
filter_keys, created_at, _id)`` serves each of those filters in date order, where an index
per filter did before (MongoDB's attribute pattern). On the local server every update of a
complaint rewrites every index entry it has and walks the index catalogue per statement:
the twelve indexes the keys replaced cost about 4 ms of a complaint's 25–35 ms of database
work (docs/performance.md). On MongoDB one index instead of twelve is less to keep in
memory and to write.

The keys are derived: ``store.change`` recomputes them in every write of the kernel
(``with_keys``), registration stores them with the new complaint, and ``backfill_batch`` gives
them to complaints stored before they existed (or under an older ``VERSION``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

from pymongo import UpdateOne
from pymongo.asynchronous.database import AsyncDatabase

from complaints_shared.mongo import MAX_SPLIT_READS, equality_values, more_than_none, retrying

FIELD = "filter_keys"
VERSION_FIELD = "filter_keys_version"
# Raised whenever ``keys_of`` changes: the next start then rewrites every complaint's keys.
VERSION = 2
INDEX = [("org", 1), (FIELD, 1), ("created_at", -1), ("_id", -1)]
# The fields the keys are derived from (what ``backfill_batch`` reads).
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
    "acknowledged_at",
    "escalation_level",
)


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
        keys.add("x:breached")  # ``breached=false`` (most complaints) is not worth a key
    if document.get("repeat_count"):
        keys.add("r:repeat")
    if document.get("acknowledged_at") is not None:
        keys.add("a:acknowledged")
    if document.get("escalation_level"):
        keys.add("e:escalated")
    keys.update(f"k:{key}" for key in document.get("customer_keys") or [])
    return sorted(keys)


def stored_fields(document: dict[str, Any]) -> dict[str, Any]:
    """The keys' fields for a complaint about to be inserted."""
    return {FIELD: keys_of(document), VERSION_FIELD: VERSION}


def with_keys(current: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """``update`` (of the document ``current``) with the keys of the document it makes
    set too, when they differ from the stored ones. The sources are written with ``$set``,
    ``$unset`` or (top-level counters such as the escalation level) ``$max`` and ``$inc``,
    never by position in an array, so the result is known here."""
    after = dict(current)
    for path, value in update.get("$set", {}).items():
        _put(after, path, value)
    for path in update.get("$unset", {}):
        _put(after, path, None)
    for path, value in update.get("$max", {}).items():
        if "." not in path:
            after[path] = value if after.get(path) is None else max(after[path], value)
    for path, value in update.get("$inc", {}).items():
        if "." not in path:
            after[path] = (after.get(path) or 0) + value
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
    one of its filters said as filter keys, so the keys' index serves it: a condition that
    is not an equality (escalated, acknowledged, repeat) is replaced by its key, which says
    it whole; else the most selective equality is said as keys too and stays as it is
    (checked on what the index selects; an empty ``$in`` selects nothing either way)."""
    # The local server plans no second operator (a range, ``$ne``) beside the keys' ``$in``
    # and the page's date range: it would read every complaint of the organisation.
    for path, condition, key in _REPLACED:
        if query.get(path) == condition:
            return {**{k: v for k, v in query.items() if k != path}, FIELD: key}
    status = _asked(query, "status")
    for path, prefix in _MOST_SELECTIVE_FIRST:
        values = _asked(query, path)
        if values is None:
            continue
        # Paired with the statuses while the local server's reads split over the pairs.
        if prefix in _WITH_STATUS and status and len(values) * len(status) <= MAX_SPLIT_READS:
            pairs = itertools.product(values, status)
            return {**query, FIELD: _in(f"{prefix}s:{value}|{s}" for value, s in pairs)}
        return {**query, FIELD: _in(f"{prefix}:{value}" for value in values)}
    return query


# Conditions said whole by a key: (field, condition, key).
_REPLACED = (
    ("escalation_level", more_than_none(), "e:escalated"),
    ("acknowledged_at", {"$ne": None}, "a:acknowledged"),
    ("repeat_count", more_than_none(), "r:repeat"),
)
# The equalities ``narrowed`` says as keys, the most selective first: (field, key prefix).
_MOST_SELECTIVE_FIRST = (
    ("customer_keys", "k"),
    ("assignment.owner_id", "o"),
    ("assignment.department", "d"),
    ("sla_breached", "x"),
    ("flags", "f"),
    ("branch", "b"),
    ("category", "c"),
    ("severity", "v"),
    ("channel", "ch"),
    ("status", "s"),
)
# Prefixes whose keys come paired with the status too (``os:<owner>|open``).
_WITH_STATUS = {"o", "d", "b"}


def _asked(query: dict[str, Any], path: str) -> list[Any] | None:
    """The values ``query`` asks ``path`` to have as an equality, ``$in`` or ``$all`` (of
    ``$all``, one that every match has); None if it asks none that way."""
    condition = query.get(path)
    if path == "sla_breached":
        return ["breached"] if condition is True else None
    if isinstance(condition, dict) and set(condition) == {"$all"} and condition["$all"]:
        return condition["$all"][:1]
    return None if condition is None else equality_values(condition)


def _in(keys: Iterable[str]) -> dict[str, list[str]]:
    return {"$in": list(dict.fromkeys(keys))}


async def backfill_batch(*, db: AsyncDatabase, collection: str, batch: list[dict[str, Any]]) -> int:
    """Of a batch of complaints (``_id`` and ``VERSION_FIELD``, read by the start-up pass
    ``intake.repair.at_start``), give those without current keys theirs; how many it wrote.

    Each write is conditional on the version read, so a change meanwhile (which writes the
    keys itself) wins. Not a change of the complaint: ``updated_at`` and the version stay.
    """
    stale = [complaint["_id"] for complaint in batch if complaint.get(VERSION_FIELD) != VERSION]
    if not stale:
        return 0
    complaints = db[collection]
    sources = await complaints.find(
        {"_id": {"$in": stale}}, projection={"version": 1, **dict.fromkeys(SOURCE_FIELDS, 1)}
    ).to_list(None)
    if not sources:
        return 0
    writes = [
        UpdateOne({"_id": c["_id"], "version": c["version"]}, {"$set": stored_fields(c)})
        for c in sources
    ]
    return (await retrying(complaints.bulk_write, writes, ordered=False)).modified_count
