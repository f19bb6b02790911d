"""Intake creation semantics: idempotency, resubmission, repeats, references, suggestions."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from pymongo.errors import DuplicateKeyError

from complaints_shared.auth import Principal
from complaints_shared.clock import ManualClock
from complaints_shared.events import EventType, Topic
from intake import filter_keys, postings, reference_numbers, registration, repair
from intake.models import ComplaintCreate
from tests.support.http import assigned, complaint_body, token
from tests.support.kafka import events_of, read_topic
from tests.support.system import System, SystemFactory
from tests.support.waits import eventually

pytestmark = pytest.mark.integration


async def test_concurrent_requests_with_one_idempotency_key_create_one_complaint(
    system: System,
) -> None:
    headers = {**token(system.intake_settings), "Idempotency-Key": "order-7781-attempt"}
    responses = await asyncio.gather(
        *(
            system.intake.post("/v1/complaints", json=complaint_body(), headers=headers)
            for _ in range(6)
        )
    )
    assert {response.status_code for response in responses} == {201}
    assert len({response.json()["id"] for response in responses}) == 1
    assert sum(r.headers.get("Idempotent-Replayed") == "true" for r in responses) == 5
    db = system.mongo[system.intake_settings.database_name()]
    assert await db.complaints.count_documents({}) == 1
    first = responses[0].json()
    replay = await system.intake.post("/v1/complaints", json=complaint_body(), headers=headers)
    assert replay.json() == first


async def test_idempotency_key_reused_with_another_body_is_a_422_naming_the_key(
    system: System,
) -> None:
    headers = {**token(system.intake_settings), "Idempotency-Key": "k-1"}
    first = await system.intake.post("/v1/complaints", json=complaint_body(), headers=headers)
    assert first.status_code == 201
    other = await system.intake.post(
        "/v1/complaints", json=complaint_body(subject="另一件事"), headers=headers
    )
    assert other.status_code == 422
    assert other.json()["errors"][0]["field"] == "Idempotency-Key"
    assert "different request body" in other.json()["detail"]


async def test_two_anonymous_customers_with_the_same_words_are_two_complaints(
    system: System,
) -> None:
    """Without a phone, e-mail or external id the resubmission check went by the name:
    two strangers registered as "匿名" (the hotline, then a walk-in) with the same short
    text were one complaint, the second answered 200 with the first's."""
    headers = token(system.intake_settings)
    anonymous = {"name": "匿名"}
    ids = set()
    for channel in ("phone", "walk_in"):
        words = {"subject": "服务态度差", "description": "柜台人员态度恶劣"}
        body = complaint_body(customer=anonymous, channel=channel, **words)
        response = await system.intake.post("/v1/complaints", json=body, headers=headers)
        assert response.status_code == 201, response.text
        assert response.json()["resubmission"] is False
        ids.add(response.json()["id"])
    assert len(ids) == 2


async def test_exact_resubmission_within_window_returns_the_existing_complaint(
    system_factory: SystemFactory,
) -> None:
    clock = ManualClock(datetime(2026, 11, 23, 2, 0, tzinfo=UTC))
    system = await system_factory(clock=clock)
    headers = token(system.intake_settings)
    first = await system.intake.post("/v1/complaints", json=complaint_body(), headers=headers)
    assert first.status_code == 201 and first.json()["resubmission"] is False

    clock.advance(timedelta(minutes=9))
    again = await system.intake.post("/v1/complaints", json=complaint_body(), headers=headers)
    assert again.status_code == 200
    assert again.json()["resubmission"] is True
    assert again.json()["id"] == first.json()["id"]

    clock.advance(timedelta(minutes=2))  # 11 minutes after the first: a new complaint
    later = await system.intake.post("/v1/complaints", json=complaint_body(), headers=headers)
    assert later.status_code == 201
    assert later.json()["id"] != first.json()["id"]
    assert "repeat" in later.json()["flags"]


async def test_a_resubmission_sharing_one_contact_detail_is_the_same_complaint(
    system: System,
) -> None:
    """The same words from the same customer within the window are one complaint when they
    share any one of phone, e-mail or external id (docs/intake.md). The claim was one hash of
    all the keys together: sent again with an e-mail added, the complaint was registered a
    second time, and counted as the customer's repeat."""
    headers = token(system.intake_settings)
    phone_only = complaint_body(subject="宽带断网", description="三天没有网络")
    first = await system.intake.post("/v1/complaints", json=phone_only, headers=headers)
    assert first.status_code == 201, first.text
    customer = {**phone_only["customer"], "email": "wang@example.com"}
    with_email = {**phone_only, "customer": customer}
    again = await system.intake.post("/v1/complaints", json=with_email, headers=headers)
    assert again.status_code == 200, again.text
    assert again.json()["resubmission"] is True and again.json()["id"] == first.json()["id"]


async def test_the_same_words_after_the_complaint_was_finished_are_a_new_complaint(
    system: System,
) -> None:
    """A customer withdrew (or had the complaint rejected, or resolved) and called again
    with the same words within the window: until 5 December they got the finished
    complaint back with 200, nothing open and nobody assigned. A finished complaint holds
    its submission no longer; the new one is the customer's repeat."""
    headers = token(system.intake_settings)
    for finish, body in (
        ("withdraw", {"reason": "客户撤回"}),
        ("reject", {"reason_code": "insufficient_information", "explanation": "信息不全"}),
        ("resolve", {"summary": "已解释"}),
    ):
        words = complaint_body(subject=f"宽带断网（{finish}）", description="三天没有网络")
        first = await system.intake.post("/v1/complaints", json=words, headers=headers)
        assert first.status_code == 201, first.text
        first_id = first.json()["id"]
        finished = await system.intake.post(
            f"/v1/complaints/{first_id}/{finish}", json=body, headers=headers
        )
        assert finished.status_code == 200, finished.text
        again = await system.intake.post("/v1/complaints", json=words, headers=headers)
        assert again.status_code == 201, (finish, again.text)
        assert again.json()["id"] != first_id and again.json()["status"] == "received"
        assert first_id in again.json()["repeat_of"]
        # The new complaint holds the submission now: sent once more, it is returned.
        third = await system.intake.post("/v1/complaints", json=words, headers=headers)
        assert (third.status_code, third.json()["id"]) == (200, again.json()["id"])


async def test_other_words_split_otherwise_are_another_submission(system: System) -> None:
    """Subject and description were joined with a space before hashing: "宽带 断网" + "三天"
    and "宽带" + "断网 三天" were one submission, and the second complaint's subject was
    dropped."""
    headers = token(system.intake_settings)
    ids = set()
    for subject, description in (("宽带 断网", "三天"), ("宽带", "断网 三天")):
        body = complaint_body(subject=subject, description=description)
        response = await system.intake.post("/v1/complaints", json=body, headers=headers)
        assert response.status_code == 201, response.text
        assert response.json()["subject"] == subject
        ids.add(response.json()["id"])
    assert len(ids) == 2


async def test_repeat_complaints_link_the_same_customer_across_phone_formats(
    system_factory: SystemFactory,
) -> None:
    clock = ManualClock(datetime(2026, 11, 2, 2, 0, tzinfo=UTC))
    system = await system_factory(clock=clock)
    admin = token(system.intake_settings)
    first = (
        await system.intake.post("/v1/complaints", json=complaint_body(), headers=admin)
    ).json()
    other_customer = complaint_body(
        customer={"name": "赵先生", "phone": "13700000000"}, subject="宽带断网"
    )
    unrelated = await system.intake.post("/v1/complaints", json=other_customer, headers=admin)
    assert unrelated.json()["repeat_count"] == 0

    second = await system.intake.post(
        "/v1/complaints",
        json=complaint_body(
            customer={"name": "王女士", "phone": "13900001111"}, subject="第二次投诉：仍然多扣费"
        ),
        headers=admin,
    )
    body = second.json()
    assert body["repeat_count"] == 1
    assert body["repeat_of"] == [first["id"]]
    assert "repeat" in body["flags"]

    received = await read_topic(
        bootstrap_servers=system.infra.kafka_bootstrap_servers,
        topic=system.topic(Topic.INTAKE),
        until=lambda records: len(records) >= 3,
    )
    routed = [
        event
        for event in events_of(received, event_type=EventType.COMPLAINT_RECEIVED)
        if event.subject == body["id"]
    ]
    assert routed[0].data["repeat_count"] == 1  # routing and reports can see it
    # Which branch each earlier complaint is of, so a branch's webhook can leave others' out.
    assert routed[0].data["repeat_links"] == [{"complaint_id": first["id"], "branch": "LZ"}]


async def test_a_complaint_finished_outside_the_window_is_not_a_repeat(
    system_factory: SystemFactory,
) -> None:
    clock = ManualClock(datetime(2026, 9, 1, 2, 0, tzinfo=UTC))
    system = await system_factory(clock=clock)
    admin = token(system.intake_settings)
    first = (
        await system.intake.post("/v1/complaints", json=complaint_body(), headers=admin)
    ).json()
    await system.intake.post(
        f"/v1/complaints/{first['id']}/withdraw", json={"reason": "已自行解决"}, headers=admin
    )
    clock.advance(timedelta(days=31))
    later = await system.intake.post(
        "/v1/complaints", json=complaint_body(subject="新的问题"), headers=admin
    )
    assert later.json()["repeat_count"] == 0
    assert "repeat" not in later.json()["flags"]


async def test_keys_stored_by_day_before_weeks_still_find_the_customer_after_a_start(
    system_factory: SystemFactory,
) -> None:
    """Finished complaints were found by the day they finished, now by the week: the start-up
    repair rewrites what an earlier version stored, so its customers' repeats are still seen."""
    clock = ManualClock(datetime(2026, 11, 2, 2, 0, tzinfo=UTC))
    system = await system_factory(clock=clock)
    admin = token(system.intake_settings)
    db = system.mongo[system.intake_settings.database_name()]
    first = (
        await system.intake.post("/v1/complaints", json=complaint_body(), headers=admin)
    ).json()
    withdrawn = await system.intake.post(
        f"/v1/complaints/{first['id']}/withdraw", json={"reason": "已自行解决"}, headers=admin
    )
    assert withdrawn.status_code == 200, withdrawn.text
    weekly = (await db.complaints.find_one({"_id": first["id"]}))["repeat_keys"]
    assert weekly and all(key.endswith("|w20261102") for key in weekly)
    by_day = [key.rsplit("|", 1)[0] + "|20261102" for key in weekly]
    await db.complaints.update_one({"_id": first["id"]}, {"$set": {"repeat_keys": by_day}})

    assert (await repair.at_start(db=db))["repeat_keys"] == 1
    assert (await db.complaints.find_one({"_id": first["id"]}))["repeat_keys"] == weekly
    assert (await repair.at_start(db=db))["repeat_keys"] == 0  # done once

    clock.advance(timedelta(days=20))
    later = await system.intake.post(
        "/v1/complaints", json=complaint_body(subject="又是同样的问题"), headers=admin
    )
    assert later.status_code == 201, later.text
    assert later.json()["repeat_count"] == 1 and later.json()["repeat_of"] == [first["id"]]


async def test_keys_derived_before_the_phone_rule_changed_find_the_customer_after_a_start(
    system_factory: SystemFactory,
) -> None:
    """A landline given in international form (``+86 10 6552 1234``) was the key
    ``phone:861065521234`` until 5 December, another customer than ``010-6552-1234``. The
    rule changed, but complaints stored before kept the old key (and one stored before repeat
    keys existed had none): the customer's next complaint was no repeat of them, and their
    phone did not find them. The start-up repair derives stored keys again."""
    clock = ManualClock(datetime(2026, 11, 23, 2, 0, tzinfo=UTC))
    system = await system_factory(clock=clock)
    admin = token(system.intake_settings)
    db = system.mongo[system.intake_settings.database_name()]
    international = {"name": "赵先生", "phone": "+86 10 6552 1234"}
    mobile = {"name": "钱女士", "phone": "13900002222"}
    old, keyless = [
        (
            await system.intake.post(
                "/v1/complaints", json=complaint_body(customer=customer), headers=admin
            )
        ).json()["id"]
        for customer in (international, mobile)
    ]
    for complaint_id in (old, keyless):  # routed: nothing else writes them meanwhile
        await eventually(lambda c=complaint_id: assigned(system, c, admin), what="assignment")
    # As an earlier version stored them, with the filter keys and posting derived from them.
    stale = {
        **await db.complaints.find_one({"_id": old}),
        "customer_keys": ["phone:861065521234"],
        "repeat_keys": ["phone:861065521234|open"],
    }
    await db.complaints.update_one(
        {"_id": old},
        {
            "$set": {
                "customer_keys": stale["customer_keys"],
                "repeat_keys": stale["repeat_keys"],
                **filter_keys.stored_fields(stale),
            }
        },
    )
    await db.search_postings.replace_one({"_id": old}, postings.posting(stale))
    await db.complaints.update_one({"_id": keyless}, {"$unset": {"repeat_keys": ""}})

    repaired = await repair.at_start(db=db)
    assert repaired == {"customer_keys": 1, "postings": 1, "filter_keys": 1, "repeat_keys": 0}
    stored = await db.complaints.find_one({"_id": old})
    assert stored["customer_keys"] == ["phone:01065521234"]
    assert stored["repeat_keys"] == ["phone:01065521234|open"]
    assert (await db.complaints.find_one({"_id": keyless}))["repeat_keys"] == [
        "phone:13900002222|open"
    ]
    assert (await repair.at_start(db=db))["customer_keys"] == 0  # done once

    for customer, earlier in (
        ({"name": "赵先生", "phone": "010-6552-1234"}, old),
        (mobile, keyless),
    ):
        later = await system.intake.post(
            "/v1/complaints",
            json=complaint_body(customer=customer, subject="又多扣了"),
            headers=admin,
        )
        assert later.status_code == 201, later.text
        assert earlier in later.json()["repeat_of"], later.json()
    found = await system.intake.get(
        "/v1/complaints", params={"customer_phone": "010 6552 1234"}, headers=admin
    )
    assert old in [item["id"] for item in found.json()["items"]]
    searched = await system.intake.get("/v1/complaints", params={"q": "01065521234"}, headers=admin)
    assert old in [item["id"] for item in searched.json()["items"]]


async def test_a_complaint_the_repair_cannot_read_is_left_and_the_others_repaired(
    system: System,
) -> None:
    """A complaint whose status this version does not know (after a rollback, a hand edit)
    and whose keys needed deriving again made the start-up repair raise: every start of
    intake failed, on every replica. It is now logged and left, and the rest repaired."""
    admin = token(system.intake_settings)
    db = system.mongo[system.intake_settings.database_name()]
    ids = []
    for number in range(3):
        body = complaint_body(
            customer={"name": "孙先生", "phone": "+86 (0)10 6552 1234"}, subject=f"第{number}次"
        )
        created = await system.intake.post("/v1/complaints", json=body, headers=admin)
        assert created.status_code == 201, created.text
        ids.append(created.json()["id"])
    for complaint_id in ids:  # routed: nothing else writes them meanwhile
        await eventually(lambda c=complaint_id: assigned(system, c, admin), what="assignment")
    # As a version before 5 December keyed them, and one with a status unknown here.
    await db.complaints.update_many(
        {"_id": {"$in": ids}}, {"$set": {"customer_keys": ["phone:8601065521234"]}}
    )
    unreadable = ids[1]
    await db.complaints.update_one({"_id": unreadable}, {"$set": {"status": "escalated_v2"}})
    repaired = await repair.at_start(db=db)
    assert repaired["customer_keys"] >= 2
    keys = {c["_id"]: c["customer_keys"] async for c in db.complaints.find({"_id": {"$in": ids}})}
    assert keys == {
        ids[0]: ["phone:01065521234"],
        unreadable: ["phone:8601065521234"],
        ids[2]: ["phone:01065521234"],
    }


async def test_reference_numbers_count_per_branch_and_local_day(
    system_factory: SystemFactory,
) -> None:
    # 23:30 UTC is already 07:30 the next day in Asia/Shanghai.
    clock = ManualClock(datetime(2026, 11, 23, 23, 30, tzinfo=UTC))
    system = await system_factory(clock=clock)
    admin = token(system.intake_settings)
    references = []
    for branch, subject in [("LZ", "一"), ("LZ", "二"), ("HOSP", "三")]:
        response = await system.intake.post(
            "/v1/complaints", json=complaint_body(branch=branch, subject=subject), headers=admin
        )
        references.append(response.json()["reference"])
    assert references == ["LZ-20261124-0001", "LZ-20261124-0002", "HOSP-20261124-0001"]
    found = await system.intake.get(
        "/v1/complaints", params={"reference": references[1]}, headers=admin
    )
    assert [item["reference"] for item in found.json()["items"]] == [references[1]]


async def test_the_first_complaints_of_a_day_racing_each_get_their_own_number(
    system: System,
) -> None:
    """Creating a day's counter is a race between its first requests; none may fail."""
    db = system.mongo[system.intake_settings.database_name()]
    at = datetime(2026, 12, 1, 2, 0, tzinfo=UTC)
    branches = [f"RACE{n}" for n in range(20)]

    async def first_of_the_day(branch: str) -> list[str]:
        return await asyncio.gather(
            *(
                reference_numbers.next_reference(
                    db=db, org="demo", branch=branch, at=at, time_zone="Asia/Shanghai"
                )
                for _ in range(8)
            )
        )

    numbered = await asyncio.gather(*(first_of_the_day(branch) for branch in branches))
    for branch, references in zip(branches, numbered, strict=True):
        assert sorted(references) == [f"{branch}-20261201-{n:04d}" for n in range(1, 9)]


async def test_each_organisation_numbers_its_own_complaints(system_factory: SystemFactory) -> None:
    """Two organisations with a branch of the same code register complaints on one day. The
    counter was the branch-day's alone, so each organisation's numbers jumped by the other's
    registrations in between: one tenant's volume, readable by another. Now each counts its
    own; a counter of the old shared key left behind is not read again."""
    clock = ManualClock(datetime(2026, 11, 23, 2, 0, tzinfo=UTC))
    system = await system_factory(clock=clock)
    db = system.mongo[system.intake_settings.database_name()]
    await db[reference_numbers.REFERENCE_COUNTERS].insert_one({"_id": "LZ-20261123", "seq": 40})

    async def reference(org: str, number: int) -> str:
        headers = token(system.intake_settings, org=org)
        body = complaint_body(subject=f"第{number}次投诉：话费多扣")
        response = await system.intake.post("/v1/complaints", json=body, headers=headers)
        assert response.status_code == 201, response.text
        return response.json()["reference"]

    orgs = ("demo", "acme", "demo", "acme", "demo")
    numbered = [await reference(org, number) for number, org in enumerate(orgs)]
    assert numbered == [
        "LZ-20261123-0001",
        "LZ-20261123-0001",
        "LZ-20261123-0002",
        "LZ-20261123-0002",
        "LZ-20261123-0003",
    ]


async def test_a_customer_key_that_normalises_to_nothing_makes_no_strangers_repeats(
    system: System,
) -> None:
    """A phone of separators only (``(   )``, a blank of a fixed-width form) passed the phone
    pattern and became the key ``phone:``, shared by every such complaint: strangers were
    each other's repeats. It is a 422 naming the field now, and an external id of spaces is
    no key. A phone filter typed with full-width digits (a Chinese input method) finds the
    customer, as ``q`` does."""
    admin = token(system.intake_settings)

    async def post(customer: dict, subject: str):
        body = complaint_body(customer=customer, subject=subject)
        return await system.intake.post("/v1/complaints", json=body, headers=admin)

    blank = await post({"name": "张先生", "phone": "(   )"}, "宽带断了")
    assert blank.status_code == 422, blank.text
    assert [error["field"] for error in blank.json()["errors"]] == ["customer.phone"]
    first = await post({"name": "甲先生", "external_id": "   "}, "话费多扣")
    second = await post({"name": "乙女士", "external_id": "   "}, "网速太慢")
    assert (first.status_code, second.status_code) == (201, 201), second.text
    assert (second.json()["repeat_count"], second.json()["repeat_of"]) == (0, [])
    phoned = await post({"name": "李女士", "phone": "138 0013 8000"}, "路由器坏了")
    assert phoned.status_code == 201, phoned.text
    found = await system.intake.get(
        "/v1/complaints", params={"customer_phone": "＋８６ １３８００１３８０００"}, headers=admin
    )
    assert [item["id"] for item in found.json()["items"]] == [phoned.json()["id"]]


async def test_a_counter_behind_the_stored_numbers_costs_no_complaint(
    system_factory: SystemFactory,
) -> None:
    """A reference counter lost or restored from an older backup hands out numbers that are
    stored already: each complaint still gets 201 with a free number, which its record, its
    event and its search posting carry."""
    clock = ManualClock(datetime(2026, 11, 23, 2, 0, tzinfo=UTC))
    system = await system_factory(clock=clock)
    admin = token(system.intake_settings)
    db = system.mongo[system.intake_settings.database_name()]

    async def post(subject: str) -> dict:
        body = complaint_body(subject=subject)
        response = await system.intake.post("/v1/complaints", json=body, headers=admin)
        assert response.status_code == 201, response.text
        return response.json()

    before = [await post(subject) for subject in ("宽带断了", "电话没人接", "账单多扣了钱")]
    assert [c["reference"] for c in before] == [f"LZ-20261123-000{n}" for n in (1, 2, 3)]
    # The counter as an older backup had it, and a process started since (no block held).
    await db[reference_numbers.REFERENCE_COUNTERS].update_one(
        {"_id": "demo:LZ-20261123"}, {"$set": {"seq": 0}}
    )
    reference_numbers._blocks.clear()

    after = await asyncio.gather(*(post(subject) for subject in ("路由器坏了", "网速很慢")))
    references = [c["reference"] for c in before + after]
    assert len(set(references)) == 5
    assert all(int(c["reference"].rsplit("-", 1)[1]) > 3 for c in after)
    assert await db.complaints.count_documents({}) == 5
    counter = await db[reference_numbers.REFERENCE_COUNTERS].find_one({"_id": "demo:LZ-20261123"})
    assert counter["seq"] >= max(int(r.rsplit("-", 1)[1]) for r in references)
    for complaint in after:
        stored = await db.complaints.find_one({"_id": complaint["id"]})
        assert stored["reference"] == complaint["reference"]
        assert stored["timeline"][0]["details"]["reference"] == complaint["reference"]
        found = await system.intake.get(
            "/v1/complaints", params={"q": complaint["reference"]}, headers=admin
        )
        assert [item["id"] for item in found.json()["items"]] == [complaint["id"]]

    def numbered(records: list) -> dict[str, str]:
        received = events_of(records, event_type=EventType.COMPLAINT_RECEIVED)
        return {event.subject: event.data["reference"] for event in received}

    records = await read_topic(
        bootstrap_servers=system.infra.kafka_bootstrap_servers,
        topic=system.topic(Topic.INTAKE),
        until=lambda records: {c["id"] for c in after} <= numbered(records).keys(),
    )
    assert all(numbered(records)[c["id"]] == c["reference"] for c in after)
    # Numbers go on from where the counter now stands: the next one is free at once.
    assert int((await post("又断网了"))["reference"].rsplit("-", 1)[1]) > max(
        int(r.rsplit("-", 1)[1]) for r in references
    )


async def test_severity_and_flags_are_suggested_from_chinese_text_when_left_out(
    system: System,
) -> None:
    admin = token(system.intake_settings)
    body = complaint_body(
        description="已经向12315投诉，如果还不处理我就找媒体曝光，并请律师起诉你们。",
    )
    del body["severity"], body["flags"]
    suggested = (await system.intake.post("/v1/complaints", json=body, headers=admin)).json()
    assert suggested["severity"] == "high"
    assert set(suggested["flags"]) == {"regulator_involved", "media_risk", "legal_threat"}
    assert suggested["suggested"]["severity"] == "high"
    assert set(suggested["suggested"]["rules"]) == {"regulator", "media", "legal"}

    harm = complaint_body(
        branch="HOSP",
        subject="手术后重伤",
        description="怀疑医疗事故",
        severity="low",
        customer={"name": "患者家属", "phone": "13811112222"},
    )
    del harm["flags"]
    given = (await system.intake.post("/v1/complaints", json=harm, headers=admin)).json()
    assert given["severity"] == "low"  # given values are never overridden
    assert given["suggested"]["severity"] is None
    assert given["flags"] == ["safety_risk"]


async def test_a_failed_write_publishes_no_event(system: System) -> None:
    admin = token(system.intake_settings)
    stored = (
        await system.intake.post("/v1/complaints", json=complaint_body(), headers=admin)
    ).json()
    runtime = system.intake_app.state.runtime
    principal = Principal(subject="tester", org="demo", branches="*", roles=["admin"])
    with pytest.raises(DuplicateKeyError):
        await registration.create_complaint(
            db=runtime.db,
            settings=system.intake_settings,
            principal=principal,
            request=ComplaintCreate.model_validate(complaint_body(subject="撞号的投诉")),
            complaint_id=stored["id"],  # the write fails: the id is taken
            now=datetime.now(UTC),
        )

    async def received_ids() -> list[str]:
        records = await read_topic(
            bootstrap_servers=system.infra.kafka_bootstrap_servers,
            topic=system.topic(Topic.INTAKE),
            until=lambda rs: False,
            timeout_s=1.5,
        )
        return [e.subject for e in events_of(records, event_type=EventType.COMPLAINT_RECEIVED)]

    ids = await eventually(received_ids, what="the stored complaint's event")
    assert ids == [stored["id"]]
    db = system.mongo[system.intake_settings.database_name()]
    assert await db.complaints.count_documents({}) == 1


async def test_invalid_input_is_rejected_without_storing_anything(system: System) -> None:
    admin = token(system.intake_settings)
    cases = {
        "customer.phone": complaint_body(customer={"name": "甲", "phone": "call me"}),
        "description": complaint_body(description="长" * 10_001),
        "channel": complaint_body(channel="pigeon"),
        "attachments.0.url": complaint_body(
            attachments=[
                {"name": "a.jpg", "media_type": "image/jpeg", "size_bytes": 1, "url": "ftp://x"}
            ]
        ),
        "disputed_amount.amount": complaint_body(
            disputed_amount={"amount": "-5", "currency": "CNY"}
        ),
    }
    for field, body in cases.items():
        response = await system.intake.post("/v1/complaints", json=body, headers=admin)
        assert response.status_code == 422, field
        assert field in [error["field"] for error in response.json()["errors"]], response.json()
    too_big = await system.intake.post(
        "/v1/complaints",
        content=b'{"x": "' + b"a" * 300_000 + b'"}',
        headers={**admin, "Content-Type": "application/json"},
    )
    assert too_big.status_code == 413
    assert too_big.headers["content-type"].startswith("application/problem+json")

    async def chunks():  # no Content-Length: the size shows only as the body is read
        yield b'{"x": "'
        for _ in range(30):
            yield b"a" * 10_000
        yield b'"}'

    chunked = await system.intake.post(
        "/v1/complaints", content=chunks(), headers={**admin, "Content-Type": "application/json"}
    )
    assert "content-length" not in chunked.request.headers
    assert chunked.status_code == 413, chunked.text  # was a 400 "error parsing the body"
    assert chunked.json()["errors"] == [{"field": "body", "message": "over 262144 bytes"}]
    not_utf8 = await system.intake.post(
        "/v1/complaints",
        content=b'{"subject": "\xff\xfe"}',
        headers={**admin, "Content-Type": "application/json"},
    )
    assert not_utf8.status_code == 400, not_utf8.text
    assert not_utf8.json()["errors"][0]["field"] == "body"
    db = system.mongo[system.intake_settings.database_name()]
    assert await db.complaints.count_documents({}) == 0
