"""Finding complaints: filters, Chinese substring search, stable cursor pages, branch scope."""

from __future__ import annotations

import base64
import uuid
from contextlib import AsyncExitStack
from datetime import UTC, datetime

import pytest
from pymongo import AsyncMongoClient

from intake import rollup
from intake.main import create_app as create_intake_app
from intake.settings import IntakeSettings
from tests.support.http import complaint_body, token
from tests.support.system import System, serve, settings_for_test
from tests.support.waits import eventually

pytestmark = pytest.mark.integration

COMPLAINTS = [
    ("LZ", "宽带被停机", "预交年费后宽带仍被停机", "network", "13900000001"),
    ("LZ", "营业员态度差", "营业厅服务态度恶劣", "service_attitude", "13900000002"),
    ("LZ", "套餐捆绑", "被强制办理固话才能装宽带", "policy", "13900000003"),
    ("HOSP", "候诊时间太长", "挂号后等了四个小时", "medical", "13900000004"),
    ("LZ", "Billing error", "Charged twice for the BROADBAND plan", "billing", "13900000005"),
]


async def _seed(system: System) -> dict[str, str]:
    admin = token(system.intake_settings)
    ids = {}
    for branch, subject, description, category, phone in COMPLAINTS:
        body = complaint_body(
            branch=branch,
            subject=subject,
            description=description,
            category=category,
            customer={"name": "客户", "phone": phone},
        )
        response = await system.intake.post("/v1/complaints", json=body, headers=admin)
        assert response.status_code == 201, response.text
        ids[subject] = response.json()["id"]
    return ids


async def _find(system: System, headers: dict, **params) -> list[str]:
    response = await system.intake.get("/v1/complaints", params=params, headers=headers)
    assert response.status_code == 200, response.text
    return [item["subject"] for item in response.json()["items"]]


async def test_a_forged_cursor_far_in_the_past_or_future_is_a_422_naming_cursor(
    system: System,
) -> None:
    await _seed(system)
    admin = token(system.intake_settings)
    for sort_value in ("9999-12-31T23:59:59.999+00:00", "0001-01-01T00:00:00+00:00"):
        raw = f'["{sort_value}", "x"]'.encode()
        cursor = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        for sort in ("-created_at", "created_at"):
            response = await system.intake.get(
                "/v1/complaints", params={"cursor": cursor, "sort": sort}, headers=admin
            )
            assert response.status_code == 422, (sort_value, sort, response.text)
            assert [error["field"] for error in response.json()["errors"]] == ["cursor"]


async def test_substring_search_works_on_chinese_and_ignores_case(system: System) -> None:
    await _seed(system)
    admin = token(system.intake_settings)
    assert set(await _find(system, admin, q="宽带")) == {"宽带被停机", "套餐捆绑"}
    assert await _find(system, admin, q="态度") == ["营业员态度差"]
    assert await _find(system, admin, q="broadband") == ["Billing error"]
    assert await _find(system, admin, q="a.*b") == []  # regex characters are literal


async def test_filters_combine(system: System) -> None:
    await _seed(system)
    admin = token(system.intake_settings)
    assert await _find(system, admin, branch="HOSP") == ["候诊时间太长"]
    assert await _find(system, admin, category=["policy", "billing"], q="宽带") == ["套餐捆绑"]
    assert await _find(system, admin, customer_phone="+86 139 0000 0002") == ["营业员态度差"]
    assert await _find(system, admin, status="closed") == []
    assert len(await _find(system, admin, status=["received", "open"])) == 5
    assert await _find(system, admin, repeat="true") == []
    bad = await system.intake.get("/v1/complaints", params={"status": "lost"}, headers=admin)
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["field"].startswith("status")
    unknown = await system.intake.get("/v1/complaints", params={"colour": "red"}, headers=admin)
    assert unknown.status_code == 422


async def test_cursor_pages_are_stable_and_complete(system: System) -> None:
    ids = await _seed(system)
    admin = token(system.intake_settings)
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = (await system.intake.get("/v1/complaints", params=params, headers=admin)).json()
        seen.extend(item["id"] for item in page["items"])
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert sorted(seen) == sorted(ids.values())
    assert len(seen) == len(set(seen))
    newest_first = (await system.intake.get("/v1/complaints", headers=admin)).json()["items"]
    assert [item["id"] for item in newest_first] == seen
    broken = await system.intake.get("/v1/complaints", params={"cursor": "%%"}, headers=admin)
    assert broken.status_code == 422
    too_many = await system.intake.get("/v1/complaints", params={"limit": 101}, headers=admin)
    assert too_many.status_code == 422


async def test_a_cursor_used_with_another_sort_filter_or_list_is_a_422_naming_it(
    system: System,
) -> None:
    """Until 6 December a cursor was taken by any listing of any service as a position in
    its order: with the sort flipped the client silently got the tail of the list."""
    await _seed(system)
    admin = token(system.intake_settings)
    first = await system.intake.get(
        "/v1/complaints", params={"limit": 1, "sort": "created_at"}, headers=admin
    )
    cursor = first.json()["next_cursor"]
    assert cursor
    same = await system.intake.get(
        "/v1/complaints", params={"limit": 1, "sort": "created_at", "cursor": cursor}, headers=admin
    )
    assert same.status_code == 200 and same.json()["items"], same.text
    others = [
        (system.intake, "/v1/complaints", {"sort": "-created_at"}),
        (system.intake, "/v1/complaints", {"sort": "created_at", "status": "received"}),
        (system.intake, "/v1/complaints", {"sort": "created_at", "q": "宽带"}),
        (system.routing, "/v1/assignments", {}),
        (system.followup, "/v1/followups", {}),
    ]
    for client, path, params in others:
        response = await client.get(path, params={**params, "cursor": cursor}, headers=admin)
        assert response.status_code == 422, f"{path} {params}: {response.text[:200]}"
        assert response.headers["content-type"].startswith("application/problem+json")
        assert [e["field"] for e in response.json()["errors"]] == ["cursor"], path


async def test_branch_scoped_token_sees_only_its_branch_on_every_endpoint(
    system: System,
) -> None:
    ids = await _seed(system)
    hosp = token(system.intake_settings, branches=["HOSP"], roles=("agent", "supervisor"))
    assert await _find(system, hosp) == ["候诊时间太长"]
    elsewhere = await system.intake.get("/v1/complaints", params={"branch": "LZ"}, headers=hosp)
    assert (elsewhere.status_code, elsewhere.json()["field"]) == (404, "branch")
    foreign = ids["宽带被停机"]
    assert (await system.intake.get(f"/v1/complaints/{foreign}", headers=hosp)).status_code == 404
    timeline = await system.intake.get(f"/v1/complaints/{foreign}/timeline", headers=hosp)
    assert timeline.status_code == 404
    commands = {
        "acknowledge": {},
        "notes": {"text": "x"},
        "pending-customer": {"reason": "x"},
        "resume": {},
        "resolve": {"summary": "x"},
        "reject": {"reason_code": "other", "explanation": "x"},
        "withdraw": {},
        "reopen": {"reason": "x"},
        "close": {"reason": "x"},
    }
    for path, body in commands.items():
        response = await system.intake.post(
            f"/v1/complaints/{foreign}/{path}", json=body, headers=hosp
        )
        assert response.status_code == 404, path
    report = (await system.intake.get("/v1/reports/summary", headers=hosp)).json()
    assert [group["group"] for group in report["groups"]] == ["HOSP"]


SEARCHABLE = [
    ("LZ", "晚上经常断网", "每天晚上八点以后网速不到1M，经常断网。", "13900000011"),
    ("LZ", "网络时断时续", "断了又连，网速很慢，宽带时好时坏。", "13900000012"),
    ("HOSP", "候诊室断网", "医院的免费WiFi经常断网", "13900000013"),
    ("LZ", "5G套餐降速", "办理的ＶＩＰ５Ｇ套餐每月20GB后降速", "13900000014"),
]


async def _seed_searchable(system: System) -> dict[str, dict]:
    admin = token(system.intake_settings)
    created = {}
    for branch, subject, description, phone in SEARCHABLE:
        body = complaint_body(
            branch=branch,
            subject=subject,
            description=description,
            category="network",
            customer={"name": "客户", "phone": phone},
        )
        response = await system.intake.post("/v1/complaints", json=body, headers=admin)
        assert response.status_code == 201, response.text
        created[subject] = response.json()
    return created


async def test_two_character_chinese_search_is_one_gram_and_combines_with_branch(
    system: System,
) -> None:
    await _seed_searchable(system)
    admin = token(system.intake_settings)
    assert set(await _find(system, admin, q="断网")) == {"晚上经常断网", "候诊室断网"}
    assert await _find(system, admin, q="断网", branch="LZ") == ["晚上经常断网"]
    hosp = token(system.intake_settings, branches=["HOSP"], roles=("agent",))
    assert await _find(system, hosp, q="断网") == ["候诊室断网"]
    assert await _find(system, admin, q="停机") == []


async def test_longer_queries_match_only_the_whole_substring(system: System) -> None:
    await _seed_searchable(system)
    admin = token(system.intake_settings)
    assert await _find(system, admin, q="经常断网。") == ["晚上经常断网"]
    # 网速 and 很慢 are in more than one text; only one holds 网速很慢 whole.
    assert await _find(system, admin, q="网速很慢") == ["网络时断时续"]
    assert await _find(system, admin, q="时好时坏，") == []
    assert await _find(system, admin, q="免费wifi经常") == ["候诊室断网"]


async def test_queries_across_punctuation_are_found_though_postings_leave_those_grams_out(
    system: System,
) -> None:
    created = await _seed_searchable(system)
    admin = token(system.intake_settings)
    # Looked up by 经常, the last window postings hold (m，and ，经 are left out), verified whole.
    assert await _find(system, admin, q="1M，经常") == ["晚上经常断网"]
    assert await _find(system, admin, q="连，网速") == ["网络时断时续"]
    # No indexed window at all: verified on what the other filters select.
    assert await _find(system, admin, q="M，") == ["晚上经常断网"]
    assert await _find(system, admin, q="。，") == []
    assert set(await _find(system, admin, q="，")) == {"晚上经常断网", "网络时断时续"}
    reference = created["候诊室断网"]["reference"]
    assert await _find(system, admin, q=reference.rsplit("-", 1)[0] + "-") == ["候诊室断网"]


async def test_search_mixes_latin_and_digits_and_folds_full_width(system: System) -> None:
    await _seed_searchable(system)
    admin = token(system.intake_settings)
    assert await _find(system, admin, q="不到1m") == ["晚上经常断网"]
    # The description says ＶＩＰ５Ｇ in full-width letters: both forms find it.
    assert await _find(system, admin, q="vip5g") == ["5G套餐降速"]
    assert await _find(system, admin, q="ＶＩＰ５") == ["5G套餐降速"]
    assert await _find(system, admin, q="20GB后") == ["5G套餐降速"]


async def test_search_finds_reference_numbers_and_customer_phones(system: System) -> None:
    created = await _seed_searchable(system)
    admin = token(system.intake_settings)
    reference = created["候诊室断网"]["reference"]
    assert await _find(system, admin, q=reference) == ["候诊室断网"]
    assert await _find(system, admin, q=reference.rsplit("-", 1)[-1] + "x") == []
    assert await _find(system, admin, q="13900000014") == ["5G套餐降速"]
    # As a person writes a phone: the keys hold digits only, and until 5 December these
    # found nothing. A part of it still finds the customer.
    for written in ("139-0000-0014", "+86 139 0000 0014", "+8613900000014", "0000 0014"):
        assert await _find(system, admin, q=written) == ["5G套餐降速"], written
    # As pasted, with a space at either end: the same answers (they used to be none).
    assert await _find(system, admin, q=f" {reference}\t") == ["候诊室断网"]
    assert await _find(system, admin, reference=f"{reference} ") == ["候诊室断网"]
    blank = await system.intake.get("/v1/complaints", params={"q": "   "}, headers=admin)
    assert (blank.status_code, blank.json()["errors"][0]["field"]) == (422, "q"), blank.text
    # An empty lookup was no condition: the newest complaints of every branch answered it.
    for field in ("reference", "customer_phone", "customer_email", "department", "owner"):
        empty = await system.intake.get("/v1/complaints", params={field: " "}, headers=admin)
        assert (empty.status_code, empty.json()["errors"][0]["field"]) == (422, field), field


async def test_search_finds_a_customer_by_name_in_chinese(system: System) -> None:
    """A front desk looks a caller up by name; until 5 December no filter or ``q`` could."""
    admin = token(system.intake_settings)
    for name, subject in (
        ("欧阳娜娜", "电梯停运三天"),
        ("歐陽明", "水管漏水"),
        ("张三", "网费多扣"),
    ):
        body = complaint_body(customer={"name": name, "phone": "13900000999"}, subject=subject)
        response = await system.intake.post("/v1/complaints", json=body, headers=admin)
        assert response.status_code == 201, response.text
    assert await _find(system, admin, q="欧阳娜娜") == ["电梯停运三天"]
    # Two characters (one gram), one (a bounded scan), and a traditional name found simplified.
    assert sorted(await _find(system, admin, q="欧阳")) == sorted(["电梯停运三天", "水管漏水"])
    assert await _find(system, admin, q="娜") == ["电梯停运三天"]
    assert await _find(system, admin, q="张三") == ["网费多扣"]


async def test_a_query_of_digits_and_dashes_finds_the_text_in_every_order(
    system: System,
) -> None:
    """Such a ``q`` may be a phone, and until 5 December it was looked up by the last two
    digits of its phone form: ``2024-12-1`` by ``21``, which ``2024-12-1起`` does not hold,
    so the newest-first list found nothing where a due-time order found it."""
    admin = token(system.intake_settings)
    written = ("2024-12-1", "0931-8460000-1", "12345-6")
    for n, date_or_number in enumerate(written):
        body = complaint_body(
            subject=f"停机投诉{n}",
            description=f"{date_or_number}起宽带被停机",
            customer={"name": "客户", "phone": f"1390000002{n}"},
        )
        response = await system.intake.post("/v1/complaints", json=body, headers=admin)
        assert response.status_code == 201, response.text
    for n, q in enumerate(written):
        assert await _find(system, admin, q=q) == [f"停机投诉{n}"], q
        assert await _find(system, admin, q=q, sort="created_at") == [f"停机投诉{n}"], q
    assert await _find(system, admin, q="13900000021") == ["停机投诉1"]


async def test_a_query_or_reference_of_invisible_characters_alone_is_a_422_naming_it(
    system: System,
) -> None:
    """Search leaves format characters out, so a ``q`` of those alone was empty once folded:
    until 5 December it passed validation and listed every complaint."""
    await _seed_searchable(system)
    admin = token(system.intake_settings)
    for value in ("\u200b", "\ufeff", "\u00ad", "\u200b\u200d", " \u2060 \u200b"):
        for field in ("q", "reference"):
            response = await system.intake.get(
                "/v1/complaints", params={field: value}, headers=admin
            )
            assert response.status_code == 422, (field, value, response.text)
            assert response.json()["errors"][0]["field"] == field, (field, value)
    found = await _find(system, admin, q="\u200b 断网\ufeff")
    assert set(found) == {"晚上经常断网", "候诊室断网"}


async def test_a_reference_is_found_in_either_case_and_in_full_width_forms(
    system: System,
) -> None:
    """Reference numbers are ASCII in upper case; the filter compared the value as typed,
    so ``lz-…`` or a full-width ``ＬＺ－…`` (a Chinese input method) found nothing until
    5 December."""
    created = await _seed_searchable(system)
    admin = token(system.intake_settings)
    reference = created["候诊室断网"]["reference"]
    full_width = "".join(chr(ord(character) + 0xFEE0) for character in reference)
    for written in (reference.lower(), full_width, f" {full_width.lower()}\u200b"):
        assert await _find(system, admin, reference=written) == ["候诊室断网"], written
    assert await _find(system, admin, reference=reference + "1") == []


async def test_customer_filters_find_what_registration_normalised(system: System) -> None:
    """The e-mail filter compared the value as typed, registration the address as
    normalised: a Chinese domain in punycode (how ASCII-only CRMs hold it), a full-width
    address, found nothing. A phone in full-width digits was a 422 at registration, and a
    landline in international form was another customer than in its domestic form."""
    admin = token(system.intake_settings)
    customers = [
        {"name": "张先生", "email": "zhang@xn--fsqu00a.xn--fiqs8s"},
        {"name": "李女士", "email": "li@ＥＸＡＭＰＬＥ.com"},
        {"name": "王先生", "phone": "（010）6552－1234"},
    ]
    made = []
    for n, customer in enumerate(customers):
        body = complaint_body(customer=customer, description=f"查询客户过滤 {n}")
        response = await system.intake.post("/v1/complaints", json=body, headers=admin)
        assert response.status_code == 201, response.text
        made.append(response.json())
    assert made[2]["customer"]["phone"] == "(010)6552-1234"

    async def found(**params: str) -> list[str]:
        response = await system.intake.get("/v1/complaints", params=params, headers=admin)
        assert response.status_code == 200, response.text
        return [item["id"] for item in response.json()["items"]]

    assert await found(customer_email="zhang@xn--fsqu00a.xn--fiqs8s") == [made[0]["id"]]
    assert await found(customer_email="zhang@例子.中国") == [made[0]["id"]]
    assert await found(customer_email="LI@example.com") == [made[1]["id"]]
    assert await found(customer_phone="+86 10 6552 1234") == [made[2]["id"]]
    again = complaint_body(customer={"name": "王先生", "phone": "+86 10 6552 1234"})
    repeat = await system.intake.post("/v1/complaints", json=again, headers=admin)
    assert repeat.status_code == 201, repeat.text
    assert repeat.json()["repeat_count"] == 1, repeat.text


async def test_one_character_search_is_a_bounded_substring_scan(system: System) -> None:
    await _seed_searchable(system)
    admin = token(system.intake_settings)
    assert set(await _find(system, admin, q="续")) == {"网络时断时续"}
    assert set(await _find(system, admin, q="断")) == {"晚上经常断网", "网络时断时续", "候诊室断网"}
    assert await _find(system, admin, q="断", branch="HOSP") == ["候诊室断网"]
    # Verified on the searchable texts, then read whole: pages of one hold every field,
    # and the cursor walks past the complaints the character is not in.
    seen, cursor = [], None
    while True:
        params = {"q": "断", "limit": 1, **({"cursor": cursor} if cursor else {})}
        response = await system.intake.get("/v1/complaints", params=params, headers=admin)
        assert response.status_code == 200, response.text
        page = response.json()
        assert all(item["customer"]["name"] == "客户" and item["status"] for item in page["items"])
        seen += [item["subject"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(["晚上经常断网", "网络时断时续", "候诊室断网"])


async def test_a_search_page_fills_past_documents_that_hold_the_grams_but_not_the_text(
    system: System,
) -> None:
    admin = token(system.intake_settings)
    # 网速 and 很慢 and 速很 are in every one of these; only two hold 网速很慢.
    texts = ["网速很慢", "网速很快，不是很慢", "网速很慢啊", "网速很好，很慢的是客服"]
    for index, text in enumerate(texts * 3):
        body = complaint_body(
            branch="LZ",
            subject=f"投诉{index}",
            description=text,
            customer={"name": "客户", "phone": f"1390000{index:04d}"},
        )
        response = await system.intake.post("/v1/complaints", json=body, headers=admin)
        assert response.status_code == 201, response.text
    seen: list[str] = []
    cursor = None
    while True:
        params = {"q": "网速很慢", "limit": 1, **({"cursor": cursor} if cursor else {})}
        page = (await system.intake.get("/v1/complaints", params=params, headers=admin)).json()
        seen += [item["description"] for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(["网速很慢", "网速很慢啊"] * 3)


async def test_lists_read_from_the_floor_and_branches(
    system: System,
) -> None:
    """Ascending lists on the local server start at the organisation's floor
    (``intake.rollup.floor``: ``intake.floors``, known once the rollup's first pass has read
    every complaint), and a search without a branch filter asks for every branch it has
    complaints in; they list the same complaints in the same order as before the rollup's
    first pass, page after page."""
    ids = await _seed(system)
    admin = token(system.intake_settings)
    db = system.mongo[system.intake_settings.database_name()]

    async def walk(**params) -> list[str]:
        seen, cursor = [], None
        while True:
            asked = {**params, "limit": 2, **({"cursor": cursor} if cursor else {})}
            page = (await system.intake.get("/v1/complaints", params=asked, headers=admin)).json()
            seen += [item["id"] for item in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                return seen

    newest_first = await walk()
    assert sorted(newest_first) == sorted(ids.values())
    broadband = await walk(q="宽带")
    await _rollup_passed(db)
    # Every branch with complaints, each read in date order: the same complaints.
    assert await rollup.known_branches(db=db, org="demo") == ["HOSP", "LZ"]
    assert await walk(q="宽带") == broadband
    assert await rollup.floor(db=db, org="demo", field="created_at") is not None
    assert await walk(sort="created_at") == newest_first[::-1]
    await eventually_assigned(system, admin, ids.values())
    documents = await db.complaints.find({}, {"acknowledge_due_at": 1}).to_list(None)
    by_due = sorted(documents, key=lambda d: (d["acknowledge_due_at"], d["_id"]))
    assert await walk(sort="acknowledge_due_at") == [d["_id"] for d in by_due]
    # A q in a due-time order is verified on narrow reads that carry the due time: the
    # same complaints as the q alone, in due-time order, page after page.
    broadband_by_due = [d["_id"] for d in by_due if d["_id"] in set(broadband)]
    assert len(broadband_by_due) == 2
    assert await walk(q="宽带", sort="acknowledge_due_at") == broadband_by_due


async def test_a_complaint_stored_after_the_rollups_pass_is_listed_at_once(
    system_factory,
) -> None:
    """Every write of a complaint lowers the floors first where needed (``intake.floors``):
    a complaint in a branch the rollup's pass has not seen is found by a ``q`` without a
    branch filter and listed oldest-first at once, with no pass in between."""
    system = await system_factory(intake={"report_rollup_interval_s": 3600})
    ids = await _seed(system)
    admin = token(system.intake_settings)
    db = system.mongo[system.intake_settings.database_name()]
    await _rollup_passed(db)
    passed = await rollup.watermark(db=db)
    assert await rollup.known_branches(db=db, org="demo") == ["HOSP", "LZ"]

    body = complaint_body(
        branch="XJ",
        subject="乌鲁木齐宽带断网",
        description="宽带断网三天",
        customer={"name": "客户", "phone": "13900000009"},
    )
    response = await system.intake.post("/v1/complaints", json=body, headers=admin)
    assert response.status_code == 201, response.text
    new_id = response.json()["id"]

    assert await rollup.known_branches(db=db, org="demo") == ["HOSP", "LZ", "XJ"]
    found = await system.intake.get("/v1/complaints", params={"q": "宽带"}, headers=admin)
    assert new_id in [item["id"] for item in found.json()["items"]]
    oldest_first = await system.intake.get(
        "/v1/complaints", params={"sort": "created_at", "limit": 100}, headers=admin
    )
    assert [item["id"] for item in oldest_first.json()["items"]][-1] == new_id
    assert len(oldest_first.json()["items"]) == len(ids) + 1
    assert await rollup.watermark(db=db) == passed  # no pass of the job in between


async def test_due_time_lists_answer_before_any_due_time_is_known(infrastructure) -> None:
    """Intake alone (no routing: no complaint gets a due time), asked for due-time lists
    before and after the rollup's first pass: 200 and empty (it answered 500: the one read
    a list without a floor makes lost its ``due time present`` condition)."""
    settings = settings_for_test(IntakeSettings, infra=infrastructure, run_id=uuid.uuid4().hex[:10])
    mongo = AsyncMongoClient(settings.mongodb_uri, tz_aware=True)
    async with AsyncExitStack() as stack:
        stack.push_async_callback(mongo.close)
        stack.push_async_callback(mongo.drop_database, settings.database_name())
        client = await serve(stack, create_intake_app(settings), "intake")
        admin = token(settings)
        body = complaint_body(branch="LZ", customer={"name": "客户", "phone": "13900000007"})
        assert (await client.post("/v1/complaints", json=body, headers=admin)).status_code == 201
        db = mongo[settings.database_name()]
        for passed in (False, True):
            if passed:
                await _rollup_passed(db)
            for sort in ("acknowledge_due_at", "resolve_due_at"):
                response = await client.get("/v1/complaints", params={"sort": sort}, headers=admin)
                assert response.status_code == 200, (sort, passed, response.text)
                assert response.json()["items"] == [], sort


async def _rollup_passed(db) -> None:
    """A pass of the report rollup beside the service's own job: once the job's first pass
    (a build, which a build of the test's own would overtake) is done, and again should the
    job pass meanwhile (``PassOvertaken``: the job's pass counted the same changes)."""
    await eventually(lambda: rollup.state(db=db), what="the service's first rollup pass")
    try:
        await rollup.refresh(db=db, now=datetime.now(UTC))
    except rollup.PassOvertaken:
        await rollup.refresh(db=db, now=datetime.now(UTC))


async def eventually_assigned(system: System, admin: dict, ids) -> None:
    async def assigned() -> bool:
        for complaint_id in ids:
            body = (await system.intake.get(f"/v1/complaints/{complaint_id}", headers=admin)).json()
            if body["acknowledge_due_at"] is None:
                return False
        return True

    await eventually(assigned, what="every complaint assigned")
