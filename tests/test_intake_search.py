"""Finding complaints: filters, Chinese substring search, stable cursor pages, branch scope."""

from __future__ import annotations

import pytest

from tests.support.http import complaint_body, token
from tests.support.system import System

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


async def test_branch_scoped_token_sees_only_its_branch_on_every_endpoint(
    system: System,
) -> None:
    ids = await _seed(system)
    hosp = token(system.intake_settings, branches=["HOSP"], roles=("agent", "supervisor"))
    assert await _find(system, hosp) == ["候诊时间太长"]
    assert await _find(system, hosp, branch="LZ") == []
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
