"""Search postings (``intake.postings``): a complaint's grams in their own collection,
written once after its insert, repaired at start, and read page by page by ``q`` searches."""

from __future__ import annotations

from typing import Any

import pytest
from pymongo.asynchronous.database import AsyncDatabase

from intake import grams, postings, repair
from intake.main import ensure_indexes
from tests.support.http import complaint_body, token
from tests.support.system import System

pytestmark = pytest.mark.integration


def _db(system: System) -> AsyncDatabase:
    return system.mongo[system.intake_settings.database_name()]


async def _post(system: System, index: int, **overrides: Any) -> dict[str, Any]:
    body = complaint_body(
        subject=f"宽带断网{index}",
        description="每天晚上八点以后经常断网。",
        customer={"name": "客户", "phone": f"1391111{index:04d}"},
        **overrides,
    )
    response = await system.intake.post(
        "/v1/complaints", json=body, headers=token(system.intake_settings)
    )
    assert response.status_code == 201, response.text
    return response.json()


async def _found(system: System, **params: Any) -> list[str]:
    response = await system.intake.get(
        "/v1/complaints", params=params, headers=token(system.intake_settings)
    )
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


async def test_a_registered_complaint_has_its_posting_and_no_grams_of_its_own(
    system: System,
) -> None:
    created = await _post(system, 1, branch="HOSP")
    db = _db(system)
    complaint = await db.complaints.find_one({"_id": created["id"]})
    assert complaint is not None
    assert grams.FIELD not in complaint and grams.VERSION_FIELD not in complaint
    posting = await db[postings.POSTINGS].find_one({"_id": created["id"]})
    assert posting == {
        "_id": created["id"],
        "org": "demo",
        "branch": "HOSP",
        "created_at": complaint["created_at"],
        grams.FIELD: grams.document_grams(complaint),
        grams.VERSION_FIELD: grams.VERSION,
    }
    assert "断网" in posting[grams.FIELD]
    assert "org_grams_branch_created" not in await db.complaints.index_information()
    keys = (await db[postings.POSTINGS].index_information())["org_grams_branch_created"]["key"]
    assert keys == postings.POSTING_INDEX


async def test_a_lost_posting_is_restored_at_start_and_a_resubmission_leaves_none(
    system: System,
) -> None:
    first = await _post(system, 1)
    second = await _post(system, 2)
    db = _db(system)
    # Lost postings (deleted by hand, or from before postings existed) are written at start.
    await db[postings.POSTINGS].delete_many({})
    assert await _found(system, q="断网") == []
    await ensure_indexes(db=db)  # what every start runs
    assert await _found(system, q="断网") == [second["id"], first["id"]]
    assert (await repair.at_start(db=db))["postings"] == 0
    # A resubmission's posting is written before its insert finds the earlier complaint,
    # then removed: only stored complaints keep one.
    body = complaint_body(
        subject="宽带断网1",
        description="每天晚上八点以后经常断网。",
        customer={"name": "客户", "phone": "13911110001"},
    )
    again = await system.intake.post(
        "/v1/complaints", json=body, headers=token(system.intake_settings)
    )
    assert again.status_code == 200, again.text
    assert again.json()["id"] == first["id"]
    stored = await db[postings.POSTINGS].distinct("_id")
    assert sorted(stored) == sorted([first["id"], second["id"]])


async def test_complaints_with_grams_of_their_own_are_moved_to_postings_at_start(
    system: System,
) -> None:
    created = [await _post(system, index) for index in range(3)]
    db = _db(system)
    # As an earlier version stored them: the grams in the complaint, indexed there.
    async for complaint in db.complaints.find({}):
        await db.complaints.update_one(
            {"_id": complaint["_id"]}, {"$set": grams.search_fields(complaint)}
        )
    await db.complaints.create_index(
        [("org", 1), (grams.FIELD, 1), ("branch", 1), ("created_at", -1), ("_id", -1)],
        name=postings.LEGACY_COMPLAINT_INDEX,
    )
    await db[postings.POSTINGS].delete_many({})
    await ensure_indexes(db=db)
    assert await db.complaints.count_documents({grams.FIELD: {"$exists": True}}) == 0
    assert await db.complaints.count_documents({grams.VERSION_FIELD: {"$exists": True}}) == 0
    assert postings.LEGACY_COMPLAINT_INDEX not in await db.complaints.index_information()
    assert await db[postings.POSTINGS].count_documents({grams.VERSION_FIELD: grams.VERSION}) == 3
    newest_first = [complaint["id"] for complaint in reversed(created)]
    assert await _found(system, q="断网") == newest_first
    assert await _found(system, q="经常断网") == newest_first
    # A posting of an older grams version is rewritten.
    await db[postings.POSTINGS].update_many({}, {"$set": {grams.VERSION_FIELD: 0}})
    assert (await repair.at_start(db=db))["postings"] == 3
    assert (await repair.at_start(db=db))["postings"] == 0


async def _walk(system: System, **params: Any) -> list[list[str]]:
    pages: list[list[str]] = []
    cursor = None
    while True:
        asked = {**params, **({"cursor": cursor} if cursor else {})}
        response = await system.intake.get(
            "/v1/complaints", params=asked, headers=token(system.intake_settings)
        )
        assert response.status_code == 200, response.text
        page = response.json()
        pages.append([item["id"] for item in page["items"]])
        cursor = page["next_cursor"]
        if cursor is None:
            return pages


async def test_a_search_with_a_status_filter_fills_its_page_past_postings_it_filters_out(
    system: System,
) -> None:
    """The newest postings of the gram name complaints of another status: the page reads
    on until it is full, and its cursor continues after its last complaint."""
    admin = token(system.intake_settings)
    withdrawn = []
    for index in range(4):
        complaint = await _post(system, index)
        response = await system.intake.post(
            f"/v1/complaints/{complaint['id']}/withdraw", json={}, headers=admin
        )
        assert response.status_code == 200, response.text
        withdrawn.append(complaint["id"])
    # More newer ones than the local server's first windowed read returns for a page of 2.
    for index in range(4, 30):
        await _post(system, index)
    newest_first = withdrawn[::-1]
    for q in ("断网", "经常断网"):
        for branch in ({}, {"branch": "LZ"}):  # reads of every branch, or windowed by one
            pages = await _walk(system, q=q, status="withdrawn", limit=2, **branch)
            assert pages[0] == newest_first[:2], (q, branch)
            assert [i for page in pages for i in page] == newest_first, (q, branch)
        oldest_first = await _walk(system, q=q, status="withdrawn", limit=3, sort="created_at")
        assert [i for page in oldest_first for i in page] == withdrawn, q
    assert await _found(system, q="断网", status="withdrawn", branch="HOSP") == []
