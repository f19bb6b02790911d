"""Traditional Chinese characters compare as simplified ones everywhere text is compared:
routing's keyword rules, intake's suggestions and its search, old postings included."""

from __future__ import annotations

import unicodedata
from typing import Any

import pytest

from complaints_shared.clock import ManualClock
from intake import grams, postings
from intake.main import ensure_indexes
from tests.support.http import complaint_body, complaint_of, create_complaint, token
from tests.support.routing import MONDAY_10_SHANGHAI, assignment_when
from tests.support.system import System, SystemFactory

pytestmark = pytest.mark.integration


async def _found(system: System, q: str) -> list[str]:
    response = await system.intake.get(
        "/v1/complaints", params={"q": q}, headers=token(system.intake_settings)
    )
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


async def test_a_traditional_character_complaint_is_routed_by_simplified_keyword_rules(
    system_factory: SystemFactory,
) -> None:
    """The demo's rules are written simplified; the same complaints typed traditional are
    routed as they are (until 5 December a major medical incident typed traditional went to
    the hospital's customer service as a normal complaint)."""
    system = await system_factory(clock=ManualClock(MONDAY_10_SHANGHAI))
    admin = token(system.intake_settings)
    # Severity and flags left out: intake suggests them from the text.
    medical = complaint_body(
        branch="HOSP",
        category="other",
        subject="手術失誤導致醫療事故",
        description="父親手術後出現嚴重併發症，醫院未告知風險。",
    )
    del medical["severity"], medical["flags"]
    response = await system.intake.post("/v1/complaints", json=medical, headers=admin)
    assert response.status_code == 201, response.text
    incident = response.json()
    billing = await create_complaint(
        system,
        admin,
        category="other",
        subject="賬單多扣費",
        description="十月份賬單多扣了三十元。",
    )
    network = await create_complaint(
        system, admin, category="other", subject="寬帶斷網三天", description="每晚八點以後斷網。"
    )

    routed = await assignment_when(system, incident["id"], lambda doc: doc.get("department"))
    assert routed["rule_id"] == "demo:major-medical-incident"
    assert routed["department"] == "HOSP:MED"
    assert routed["severity"] == "critical"
    assert routed["major_incident"] is True
    assert (await assignment_when(system, billing["id"], lambda doc: doc.get("department")))[
        "rule_id"
    ] == "demo:billing-keywords"
    assert (await assignment_when(system, network["id"], lambda doc: doc.get("department")))[
        "rule_id"
    ] == "demo:network-faults"
    record = await complaint_of(system, incident["id"], admin)
    assert record["suggested"]["severity"] == "critical"
    assert "critical-harm" in record["suggested"]["rules"]


async def test_search_finds_traditional_text_by_a_simplified_query_and_the_other_way_round(
    system: System,
) -> None:
    admin = token(system.intake_settings)
    traditional = await create_complaint(
        system, admin, subject="寬帶斷網三天", description="每晚八點以後斷網。"
    )
    simplified = await create_complaint(
        system, admin, subject="话费账单多扣费", description="十月份账单多扣了三十元。"
    )
    assert await _found(system, "宽带断网") == [traditional["id"]]
    assert await _found(system, "斷網三天") == [traditional["id"]]
    assert await _found(system, "網") == [traditional["id"]]  # one character: scanned
    assert await _found(system, "賬單多扣") == [simplified["id"]]
    assert await _found(system, "十月份賬單") == [simplified["id"]]
    assert sorted(await _found(system, "三十元")) == [simplified["id"]]
    assert await _found(system, "断网四天") == []


def _grams_before_simplifying(document: dict[str, Any]) -> list[str]:
    """The search grams version 1 gave a complaint: traditional characters kept."""
    found: set[str] = set()
    for value in grams.searchable_texts(document):
        normal = unicodedata.normalize("NFKC", value).casefold()
        found |= {normal[i : i + 2] for i in range(len(normal) - 1)}
    return sorted(gram for gram in found if grams.indexed(gram))


async def test_a_traditional_complaint_posted_by_an_older_grams_version_is_found_after_start(
    system: System,
) -> None:
    """A posting written before traditional characters were simplified holds ``醫療``, which
    no search looks up now: the start rewrites it, and both spellings find the complaint."""
    created = await create_complaint(
        system,
        token(system.intake_settings),
        branch="HOSP",
        category="medical",
        subject="手術失誤導致醫療事故",
        description="父親手術後出現嚴重併發症。",
    )
    db = system.mongo[system.intake_settings.database_name()]
    complaint = await db.complaints.find_one({"_id": created["id"]})
    assert complaint is not None
    await db[postings.POSTINGS].update_one(
        {"_id": created["id"]},
        {
            "$set": {
                grams.FIELD: _grams_before_simplifying(complaint),
                grams.VERSION_FIELD: grams.VERSION - 1,
            }
        },
    )
    assert await _found(system, "医疗") == []  # the old posting has 醫療, not 医疗

    await ensure_indexes(db=db)  # what every start runs

    posting = await db[postings.POSTINGS].find_one({"_id": created["id"]})
    assert posting is not None
    assert posting[grams.VERSION_FIELD] == grams.VERSION
    assert "医疗" in posting[grams.FIELD] and "醫療" not in posting[grams.FIELD]
    assert await _found(system, "医疗") == [created["id"]]
    assert await _found(system, "醫療") == [created["id"]]
    assert await _found(system, "手术失误") == [created["id"]]
