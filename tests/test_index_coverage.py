"""Every query the stores issue is served by an index, judged from the index definitions.

The local server's planner is not MongoDB's (docs/mongodb-compatibility.md), so its
``explain`` cannot say whether MongoDB would use an index. Instead the system runs a
complaint's whole life (registration, routing, every search filter and sort, ``q`` through
the search postings, a second page, the report, acknowledgement, resolution, the follow-up
check) with the database profiler on, and each recorded filter and sort is checked against
the indexes the services defined, by MongoDB's rules: equalities (``$in`` and ``$all``
count) on the index's leading fields, then the sort keys in index order (all forward or all
reversed), a range on the field after; a partial index only when the query repeats its
filter.

Collections whose size is the organisation's configuration, not its complaints, may be
scanned; they are named in ``CONFIGURATION``, and the background jobs' bookkeeping bounded by
it in ``BOUNDED_BOOKKEEPING``. Anything else unserved fails the test.
"""

from __future__ import annotations

from typing import Any

import pytest
from pymongo.asynchronous.database import AsyncDatabase

from intake.store import COMPLAINT_INDEXES
from intake.store import ensure_indexes as ensure_intake_indexes
from intake.submissions import ensure_indexes as ensure_submission_indexes
from routing.assignments.store import ensure_indexes as ensure_routing_indexes
from tests.support.http import token
from tests.support.system import System
from tests.support.waits import eventually

pytestmark = pytest.mark.integration

# Collections sized by the organisation (people, departments, rules, policies, branches):
# scanning them costs the same at 100 complaints as at 100 million.
CONFIGURATION = {
    "staff",
    "departments",
    "rules",
    "sla_policies",
    "branches",
    "business_calendars",
    "directory_versions",
    "branch_policies",
    "followup_policies",
    "org_settings",
    "audit_log",
    "rule_versions",
    "contact_hours",
    "outbox_leases",
    "scheduler_leases",
    "reference_counters",
}
# Read whole by a background job that may run while the profiler is on, and bounded by one
# pass, not by the complaints: the report rollup's journal (``intake.rollup``: the changes of
# the pass being applied, dropped once it is).
BOUNDED_BOOKKEEPING = {"report_journal"}
RANGE = {"$lt", "$lte", "$gt", "$gte"}
EQUALITY = {"$eq", "$in", "$all"}

Condition = dict[str, dict[str, Any] | str]


def conditions(query: dict[str, Any]) -> Condition:
    """Per field: "eq", "range" or "other" (``$ne``, ``$not``, ``$regex``...); ``$and`` merged,
    ``$or`` and ``$expr`` left out (checked on what the index fetched)."""
    found: Condition = {}
    for key, value in query.items():
        if key == "$and":
            for part in value:
                for field, kind in conditions(part).items():
                    found[field] = "eq" if "eq" in (kind, found.get(field)) else kind
        elif key.startswith("$"):
            continue
        elif isinstance(value, dict) and value and all(op.startswith("$") for op in value):
            if set(value) <= EQUALITY:
                found.setdefault(key, "eq")
            elif set(value) & RANGE:
                found[key] = found.get(key) if found.get(key) == "eq" else "range"
            else:
                found.setdefault(key, "other")
        else:
            found[key] = "eq"
    return found


def implies(query: dict[str, Any], partial: dict[str, Any]) -> bool:
    """The query repeats each condition of a partial index's filter (what MongoDB needs)."""
    for field, wanted in partial.items():
        given = query.get(field)
        if isinstance(wanted, dict):
            if not isinstance(given, dict) or any(given.get(op) != v for op, v in wanted.items()):
                return False
        elif given != wanted:
            return False
    return True


def serves(index: dict[str, Any], query: dict[str, Any], sort: list[tuple[str, int]]) -> bool:
    keys: list[tuple[str, int]] = [(field, int(direction)) for field, direction in index["key"]]
    if "partialFilterExpression" in index and not implies(query, index["partialFilterExpression"]):
        return False
    found = conditions(query)
    position = 0
    while position < len(keys) and found.get(keys[position][0]) == "eq":
        position += 1
    if position == 0 and found.get(keys[0][0]) != "range":
        return False
    wanted = [(field, direction) for field, direction in sort if found.get(field) != "eq"]
    if not wanted:
        return True
    following = keys[position : position + len(wanted)]
    if [field for field, _ in following] != [field for field, _ in wanted]:
        return False
    same = {given == defined for (_, given), (_, defined) in zip(wanted, following, strict=True)}
    return len(same) == 1


def queries_of(entry: dict[str, Any]) -> list[tuple[dict[str, Any], list[tuple[str, int]]]]:
    """(filter, sort) of every query one profiled command ran."""
    command = entry.get("command") or {}
    if "find" in command:
        return [(command.get("filter") or {}, list((command.get("sort") or {}).items()))]
    if "update" in command:
        return [(update["q"], []) for update in command.get("updates", [])]
    if "delete" in command:
        return [(delete["q"], []) for delete in command.get("deletes", [])]
    if "findAndModify" in command:
        return [(command.get("query") or {}, list((command.get("sort") or {}).items()))]
    if "distinct" in command or "count" in command:
        return [(command.get("query") or {}, [])]
    if "aggregate" in command:
        pipeline = command.get("pipeline") or [{}]
        first = pipeline[0].get("$match", {})
        sort = pipeline[1].get("$sort", {}) if len(pipeline) > 1 else {}
        return [(first, list(sort.items()))]
    return []


def shape(query: Any) -> str:
    if isinstance(query, dict):
        inner = ", ".join(
            f"{key}: {shape(value)}" if isinstance(value, dict | list) else key
            for key, value in query.items()
        )
        return "{" + inner + "}"
    if isinstance(query, list):
        return "[" + ", ".join(shape(item) for item in query[:1]) + "]"
    return "·"


def test_the_index_rules_match_mongodb_for_the_shapes_in_the_docs() -> None:
    index = {"key": [("org", 1), ("branch", 1), ("created_at", -1), ("_id", -1)]}
    newest = [("created_at", -1), ("_id", -1)]
    assert serves(index, {"org": "o", "branch": {"$in": ["LZ"]}}, newest)
    assert serves(index, {"org": "o", "branch": "LZ"}, [("created_at", 1), ("_id", 1)])
    assert not serves(index, {"org": "o", "branch": "LZ"}, [("created_at", -1), ("_id", 1)])
    assert not serves(index, {"org": "o"}, newest)  # branch not given: the sort cannot walk
    assert not serves(index, {"branch": "LZ"}, [])  # org not given
    ranged = {"org": "o", "branch": "LZ", "created_at": {"$lt": 1}, "$and": [{"$or": []}]}
    assert serves(index, ranged, newest)
    partial = {"key": [("next_timer_at", 1)], "partialFilterExpression": {"x": {"$type": "date"}}}
    assert not serves(partial, {"next_timer_at": {"$lte": 1}}, [])
    assert serves(partial, {"next_timer_at": {"$lte": 1}, "x": {"$type": "date"}}, [])


async def _indexes(db: AsyncDatabase) -> dict[str, list[dict[str, Any]]]:
    found = {}
    for name in await db.list_collection_names():
        if not name.startswith("system."):
            found[name] = list((await db[name].index_information()).values())
    return found


async def test_every_query_a_complaints_life_issues_is_served_by_an_index(system: System) -> None:
    databases = [
        system.mongo[settings.database_name()]
        for settings in (system.intake_settings, system.routing_settings, system.followup_settings)
    ]
    for db in databases:
        await db.command("profile", 2)
    try:
        await _a_complaints_life(system)
    finally:
        for db in databases:
            await db.command("profile", 0)
    unserved: set[str] = set()
    checked = 0
    collections_seen: set[str] = set()
    for db in databases:
        indexes = await _indexes(db)
        async for entry in db["system.profile"].find({}):
            collection = entry.get("ns", "").split(".", 1)[-1]
            if (
                collection.startswith("system.")
                or collection in CONFIGURATION | BOUNDED_BOOKKEEPING
            ):
                continue
            for query, sort in queries_of(entry):
                checked += 1
                collections_seen.add(collection)
                if not query and not sort:
                    unserved.add(f"{db.name}.{collection} everything (a scan)")
                elif "_id" in conditions(query) and conditions(query)["_id"] == "eq":
                    continue
                elif not any(serves(i, query, sort) for i in indexes.get(collection, [])):
                    unserved.add(f"{collection} {shape(query)} sort {sort}")
    # The profiler saw the whole life: every collection that grows with complaints was queried
    # (about 90 queries in all since the write path was trimmed; 100+ before).
    assert {"complaints", "search_postings", "assignments", "satisfaction_checks"} <= (
        collections_seen
    )
    assert checked > 60
    assert not unserved, "\n".join(sorted(unserved))


async def _a_complaints_life(system: System) -> None:
    admin = token(system.intake_settings)
    agent = token(system.intake_settings, branches=["LZ"], roles=("agent", "supervisor"))
    ids = []
    for index, (branch, subject) in enumerate([("LZ", "晚上经常断网"), ("HOSP", "候诊时间太长")]):
        body = {
            "branch": branch,
            "channel": "phone",
            "category": "network",
            "customer": {"name": "王女士", "phone": f"+86 139-0000-111{index}"},
            "subject": subject,
            "description": "每天晚上八点以后网速不到1M，经常断网。",
        }
        response = await system.intake.post("/v1/complaints", json=body, headers=admin)
        assert response.status_code == 201, response.text
        ids.append(response.json())
        # The same again: the claim refuses it, and the earlier complaint is looked up.
        again = await system.intake.post("/v1/complaints", json=body, headers=admin)
        assert again.status_code == 200 and again.json()["id"] == ids[-1]["id"], again.text

    async def assigned() -> bool:
        for complaint in ids:
            read = await system.intake.get(f"/v1/complaints/{complaint['id']}", headers=admin)
            if not (read.json().get("assignment") or {}).get("owner_id"):
                return False
        return True

    await eventually(assigned, timeout_s=30, what="both complaints assigned")
    first = (await system.intake.get(f"/v1/complaints/{ids[0]['id']}", headers=admin)).json()
    searches: list[dict[str, Any]] = [
        {},
        {"branch": "LZ"},
        {"status": "open"},
        {"branch": "LZ", "status": ["received", "open"]},
        {"category": "network"},
        {"severity": "high"},
        {"channel": "phone"},
        {"flag": "repeat"},
        {"department": first["assignment"]["department"]},
        {"owner": first["assignment"]["owner_id"]},
        {"breached": "true"},
        {"repeat": "true"},
        {"reference": first["reference"]},
        {"customer_phone": "13900001110"},
        {"q": "断网"},
        {"q": "断网", "branch": "LZ"},
        {"q": "经常断网"},
        {"q": "断"},
        {"created_from": "2020-01-01T00:00:00Z"},
        {"sort": "created_at"},
        {"sort": "acknowledge_due_at"},
        {"sort": "resolve_due_at"},
        {"acknowledge_due_before": "2100-01-01T00:00:00Z", "sort": "acknowledge_due_at"},
        {"resolve_due_before": "2100-01-01T00:00:00Z", "sort": "resolve_due_at"},
    ]
    for params in searches:
        response = await system.intake.get("/v1/complaints", params=params, headers=admin)
        assert response.status_code == 200, (params, response.text)
    page = await system.intake.get("/v1/complaints", params={"limit": 1}, headers=admin)
    cursor = page.json()["next_cursor"]
    for params in ({}, {"branch": "LZ"}, {"sort": "acknowledge_due_at"}):
        response = await system.intake.get(
            "/v1/complaints", params={**params, "limit": 1, "cursor": cursor}, headers=admin
        )
        assert response.status_code in (200, 422), response.text
    for group_by in ("branch", "department", "owner"):
        report = await system.intake.get(
            "/v1/reports/summary", params={"group_by": group_by}, headers=admin
        )
        assert report.status_code == 200, report.text
    base = f"/v1/complaints/{ids[0]['id']}"
    for path, body in (
        ("acknowledge", {}),
        ("resolve", {"summary": "已修复线路", "customer_accepted": True}),
    ):
        response = await system.intake.post(f"{base}/{path}", json=body, headers=agent)
        assert response.status_code == 200, response.text

    async def checked() -> bool:
        response = await system.followup.get(
            "/v1/followups", params={"complaint_id": ids[0]["id"]}, headers=admin
        )
        return response.status_code == 200 and bool(response.json().get("items"))

    await eventually(checked, timeout_s=30, what="the follow-up check of the resolution")
    for params in (
        {},
        {"branch": "LZ"},
        {"status": "scheduled"},
        {"due_before": "2100-01-01T00:00:00Z"},
    ):
        response = await system.followup.get("/v1/followups", params=params, headers=admin)
        assert response.status_code == 200, (params, response.text)
    stats = await system.followup.get("/v1/followups/stats", headers=admin)
    assert stats.status_code == 200, stats.text


async def test_an_index_redefined_under_its_name_replaces_the_old_one(system: System) -> None:
    intake_db = system.mongo[system.intake_settings.database_name()]
    routing_db = system.mongo[system.routing_settings.database_name()]
    # As an earlier version defined them: no tie-break; sparse over stored nulls.
    await intake_db.complaints.drop_index("org_ack_due")
    await intake_db.complaints.create_index(
        [("org", 1), ("acknowledge_due_at", 1)], name="org_ack_due"
    )
    await routing_db.assignments.drop_index("timers_due")
    await routing_db.assignments.create_index("next_timer_at", sparse=True, name="timers_due")
    # The claim's index was partial on ``$exists``, which the local server reads by a scan.
    await intake_db.complaints.drop_index("resubmission_unique")
    await intake_db.complaints.create_index(
        "resubmission_key",
        unique=True,
        name="resubmission_unique",
        partialFilterExpression={"resubmission_key": {"$exists": True}},
    )
    await ensure_intake_indexes(db=intake_db)
    await ensure_submission_indexes(db=intake_db)
    await ensure_routing_indexes(db=routing_db)
    complaints = await intake_db.complaints.index_information()
    assert complaints["org_ack_due"]["key"] == COMPLAINT_INDEXES["org_ack_due"]
    claims = complaints["resubmission_unique"]
    assert claims["unique"] and claims["sparse"] and "partialFilterExpression" not in claims
    timers = (await routing_db.assignments.index_information())["timers_due"]
    assert timers["key"] == [("next_timer_at", 1)]
    assert "sparse" not in timers and "partialFilterExpression" not in timers
