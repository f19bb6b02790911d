"""The list filters' keys (``intake.filter_keys``): derived from the complaint on every write,
given at start to complaints stored without them, and what every list by value reads."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from pymongo.asynchronous.database import AsyncDatabase

from intake import filter_keys, repair, store
from intake.main import ensure_indexes
from tests.support.http import complaint_body, token
from tests.support.system import System
from tests.support.waits import eventually

COMPLAINT = {
    "branch": "LZ",
    "status": "open",
    "category": "network",
    "severity": "high",
    "channel": "phone",
    "flags": ["repeat", "vip"],
    "assignment": {"department": "LZ:NETWORK", "owner_id": "lz-o1", "queued": False},
    "sla_breached": False,
    "repeat_count": 2,
    "customer_keys": ["phone:13900001111"],
}


def test_a_complaints_keys_name_each_value_a_list_selects_it_by() -> None:
    assert filter_keys.keys_of(COMPLAINT) == [
        "b:LZ",
        "bs:LZ|open",
        "c:network",
        "ch:phone",
        "d:LZ:NETWORK",
        "ds:LZ:NETWORK|open",
        "f:repeat",
        "f:vip",
        "k:phone:13900001111",
        "o:lz-o1",
        "os:lz-o1|open",
        "r:repeat",
        "s:open",
        "v:high",
    ]
    queued = {**COMPLAINT, "assignment": {"department": "LZ:NETWORK", "owner_id": None}}
    assert not any(key.startswith("o") for key in filter_keys.keys_of(queued))
    assert "x:breached" in filter_keys.keys_of({**COMPLAINT, "sla_breached": True})
    handled = {**COMPLAINT, "acknowledged_at": datetime(2026, 12, 1, tzinfo=UTC)}
    assert {"a:acknowledged", "e:escalated"} <= set(
        filter_keys.keys_of({**handled, "escalation_level": 1})
    )
    assert not {"a:acknowledged", "e:escalated"} & set(filter_keys.keys_of(COMPLAINT))


def test_a_write_that_moves_a_source_field_sets_the_keys_of_the_document_it_makes() -> None:
    current = {**COMPLAINT, **filter_keys.stored_fields(COMPLAINT)}
    update = {
        "$set": {"status": "resolved", "assignment.owner_id": "lz-o2"},
        "$push": {"timeline": {"$each": []}},
    }
    written = filter_keys.with_keys(current, update)
    after = {**COMPLAINT, "status": "resolved", "assignment": {**COMPLAINT["assignment"]}}
    after["assignment"]["owner_id"] = "lz-o2"
    assert written["$set"][filter_keys.FIELD] == filter_keys.keys_of(after)
    assert "os:lz-o2|resolved" in written["$set"][filter_keys.FIELD]
    assert written["$push"] == update["$push"]
    assert current["assignment"]["owner_id"] == "lz-o1"  # the caller's copy is left alone
    unassigned = filter_keys.with_keys(current, {"$unset": {"assignment": ""}})
    assert "d:LZ:NETWORK" not in unassigned["$set"][filter_keys.FIELD]
    escalated = filter_keys.with_keys(current, {"$max": {"escalation_level": 2}})
    assert "e:escalated" in escalated["$set"][filter_keys.FIELD]
    assert escalated["$max"] == {"escalation_level": 2}
    # A write that moves none of them (a note) leaves the keys alone.
    note = {"$push": {"notes": {"text": "回访"}}}
    assert filter_keys.with_keys(current, note) == note
    # Keys of an older version are rewritten by the next write.
    old = {**current, filter_keys.VERSION_FIELD: filter_keys.VERSION - 1}
    assert filter_keys.with_keys(old, note)["$set"][filter_keys.VERSION_FIELD] == (
        filter_keys.VERSION
    )


def test_a_list_reads_through_the_key_of_its_most_selective_filter() -> None:
    def key(query: dict[str, Any]) -> Any:
        return filter_keys.narrowed({"org": "o", **query}).get(filter_keys.FIELD)

    assert key({}) is None
    assert key({"branch": {"$in": ["LZ", "SZ"]}}) == {"$in": ["b:LZ", "b:SZ"]}
    assert key({"branch": {"$in": ["LZ"]}, "status": {"$in": ["open", "resolved"]}}) == {
        "$in": ["bs:LZ|open", "bs:LZ|resolved"]
    }
    assert key({"branch": {"$in": []}, "status": {"$in": ["open"]}}) == {"$in": []}
    # Past the pairs the local server's reads split over, the branches alone.
    branches = [f"B{n}" for n in range(4)]
    statuses = ["received", "open", "pending_customer", "reopened"]
    assert key({"branch": {"$in": branches}, "status": {"$in": statuses}}) == {
        "$in": [f"b:{branch}" for branch in branches]
    }
    assert key({"category": {"$in": ["network"]}, "severity": {"$in": ["high"]}}) == {
        "$in": ["c:network"]
    }
    assert key({"assignment.owner_id": "lz-o1", "branch": {"$in": ["LZ"]}}) == {"$in": ["o:lz-o1"]}
    assert key({"assignment.department": "D", "status": {"$in": ["open"]}}) == {
        "$in": ["ds:D|open"]
    }
    assert key({"flags": {"$all": ["vip", "repeat"]}}) == {"$in": ["f:vip"]}
    assert key({"customer_keys": {"$all": ["phone:1"]}, "category": {"$in": ["x"]}}) == {
        "$in": ["k:phone:1"]
    }
    assert key({"sla_breached": True}) == {"$in": ["x:breached"]}
    assert key({"sla_breached": False}) is None
    # A condition other than an equality is replaced by its key, whatever else is asked.
    for condition, wanted in (
        ({"repeat_count": {"$gte": 1}}, "r:repeat"),
        ({"escalation_level": {"$gte": 1}}, "e:escalated"),
        ({"acknowledged_at": {"$ne": None}}, "a:acknowledged"),
    ):
        query = {"org": "o", "branch": {"$in": ["LZ"]}, **condition}
        assert filter_keys.narrowed(query) == {
            "org": "o",
            "branch": {"$in": ["LZ"]},
            filter_keys.FIELD: wanted,
        }
    assert key({"escalation_level": 0, "acknowledged_at": None}) is None
    assert key({"repeat_count": 0}) is None
    assert key({"status": {"$in": ["open"]}, "channel": {"$in": ["web"]}}) == {"$in": ["ch:web"]}
    # The conditions themselves stay: the key only chooses the index.
    query = {"org": "o", "branch": {"$in": ["LZ"]}, "category": {"$in": ["network"]}}
    assert filter_keys.narrowed(query) == {**query, filter_keys.FIELD: {"$in": ["b:LZ"]}}


def _db(system: System) -> AsyncDatabase:
    return system.mongo[system.intake_settings.database_name()]


async def _ids(system: System, **params: Any) -> list[str]:
    response = await system.intake.get(
        "/v1/complaints", params=params, headers=token(system.intake_settings)
    )
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


async def _keys_agree(db: AsyncDatabase) -> None:
    async for complaint in db[store.COMPLAINTS].find({}):
        assert complaint[filter_keys.FIELD] == filter_keys.keys_of(complaint), complaint["_id"]
        assert complaint[filter_keys.VERSION_FIELD] == filter_keys.VERSION


@pytest.mark.integration
async def test_the_keys_follow_a_complaint_through_its_life(system: System) -> None:
    admin = token(system.intake_settings)
    agent = token(system.intake_settings, branches=["LZ"], roles=("agent", "supervisor"))
    created = await system.intake.post(
        "/v1/complaints", json=complaint_body(category="network"), headers=admin
    )
    assert created.status_code == 201, created.text
    complaint_id = created.json()["id"]
    base = f"/v1/complaints/{complaint_id}"

    async def assigned() -> dict[str, Any] | None:
        read = (await system.intake.get(base, headers=admin)).json()
        return read if (read.get("assignment") or {}).get("owner_id") else None

    complaint = await eventually(assigned, timeout_s=30, what="the complaint assigned")
    owner, department = complaint["assignment"]["owner_id"], complaint["assignment"]["department"]
    db = _db(system)
    await _keys_agree(db)
    assert await _ids(system, owner=owner, status="open") == [complaint_id]
    assert await _ids(system, department=department) == [complaint_id]
    for path, body in (
        ("acknowledge", {}),
        ("resolve", {"summary": "已修复线路", "customer_accepted": True}),
    ):
        response = await system.intake.post(f"{base}/{path}", json=body, headers=agent)
        assert response.status_code == 200, response.text
        await _keys_agree(db)
    assert await _ids(system, owner=owner, status="open") == []
    assert await _ids(system, owner=owner, status="resolved") == [complaint_id]
    assert await _ids(system, branch="LZ", status="resolved", category="network") == [complaint_id]
    assert await _ids(system, branch="LZ", status="open") == []


@pytest.mark.integration
async def test_complaints_stored_without_keys_get_them_at_start_and_the_old_indexes_go(
    system: System,
) -> None:
    admin = token(system.intake_settings)
    ids = []
    for index, branch in enumerate(["LZ", "HOSP", "LZ"]):
        body = complaint_body(
            branch=branch, customer={"name": "客户", "phone": f"1391111{index:04d}"}
        )
        response = await system.intake.post("/v1/complaints", json=body, headers=admin)
        assert response.status_code == 201, response.text
        ids.append(response.json()["id"])
    db = _db(system)
    complaints = db[store.COMPLAINTS]

    async def settled() -> bool:  # routing's assignments projected: nothing writes them now
        return await complaints.count_documents({"assignment.owner_id": {"$type": "string"}}) == 3

    await eventually(settled, timeout_s=30, what="the three complaints assigned")
    # As an earlier version stored them: no keys, an index per filter.
    await complaints.update_many(
        {}, {"$unset": {filter_keys.FIELD: "", filter_keys.VERSION_FIELD: ""}}
    )
    await complaints.create_index(
        [("org", 1), ("branch", 1), ("created_at", -1), ("_id", -1)], name="org_branch_created"
    )
    versions = {c["_id"]: c["version"] async for c in complaints.find({}, {"version": 1})}
    assert await _ids(system, branch="LZ") == []
    await ensure_indexes(db=db)  # what every start runs
    await _keys_agree(db)
    assert await _ids(system, branch="LZ") == [ids[2], ids[0]]
    assert await _ids(system, branch="HOSP", channel="phone") == [ids[1]]
    indexes = await complaints.index_information()
    assert not set(store.RETIRED_INDEXES) & set(indexes)
    assert indexes["org_filter_keys_created"]["key"] == filter_keys.INDEX
    # Not a change of the complaints: their versions stay; a second start writes nothing.
    assert versions == {c["_id"]: c["version"] async for c in complaints.find({}, {"version": 1})}
    assert await repair.at_start(db=db) == {
        "customer_keys": 0,
        "postings": 0,
        "filter_keys": 0,
        "repeat_keys": 0,
    }
