"""Integration: administrators' changes are retry-safe and never silently undo a colleague's.

Every versioned setting answers with an ``ETag`` (its version) and takes ``If-Match``. A
change the entry already shows (a retry after a lost answer) writes nothing: no version,
no audit record, no event. A change decided on an older version is a 412 naming the
current one, instead of reverting what a colleague changed in between.
"""

from __future__ import annotations

import asyncio

import pytest

from routing import audit
from routing.directory import store as directory_store
from tests.support.faults import FailsFirst
from tests.support.http import token
from tests.support.routing import routing_db
from tests.support.system import System

pytestmark = pytest.mark.integration

BILLING_FAST = {
    "name": "账务快速时限",
    "categories": ["billing"],
    "targets": {
        "normal": {
            "acknowledge": {"amount": 30, "unit": "minutes", "basis": "calendar"},
            "resolve": {"amount": 2, "unit": "days", "basis": "calendar"},
        }
    },
}
FOLLOWUP_POLICY = {
    "checks": [{"after_hours": 48}],
    "overrides": [],
    "max_attempts": 2,
    "attempt_spacing_hours": 1,
    "satisfied_score_threshold": 4,
}
CONTACT_HOURS = {
    "time_zone": "Asia/Shanghai",
    "start": "09:00",
    "end": "18:00",
    "weekdays": ["mon", "tue", "wed", "thu", "fri"],
    "holiday_country": "CN",
    "closed_days": [],
}


def _precondition_failed(response, *, current: int) -> None:
    assert response.status_code == 412, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.headers["etag"] == f'"{current}"'
    problem = response.json()
    assert (problem["current_version"], problem["errors"][0]["field"]) == (current, "If-Match")


async def _trail(system: System, entity: str, entity_id: str) -> list[tuple[str, str]]:
    found = await system.routing.get(
        "/v1/directory/audit",
        params={"entity": entity, "entity_id": entity_id},
        headers=token(system.routing_settings),
    )
    assert found.status_code == 200, found.text
    return [(entry["action"], entry["actor"]) for entry in found.json()]


async def test_a_branch_change_retried_after_a_colleagues_change_is_refused_not_applied(
    system: System,
) -> None:
    """Zhao renames the branch; the answer is lost. Qian renames it again. Zhao's client
    retries: before, the retry wrote Zhao's name back over Qian's, as version 4, with a
    third ``branch.updated``. Now the retry names the version it was decided on and is a
    412; a retry with no colleague in between answers 200 and writes nothing."""
    zhao = token(system.routing_settings, subject="admin-zhao")
    qian = token(system.routing_settings, subject="admin-qian")
    api = system.routing
    path = "/v1/directory/branches/LZ"
    read = await api.get(path, headers=zhao)
    version = read.json()["version"]
    assert read.headers["etag"] == f'"{version}"'

    decided_on = {"If-Match": f'"{version}"', **zhao}
    renamed = await api.patch(path, json={"name": "兰州分公司（一）"}, headers=decided_on)
    assert renamed.status_code == 200, renamed.text
    assert renamed.headers["etag"] == f'"{version + 1}"'
    # The answer was lost; the client retries the same request as it was.
    retried = await api.patch(path, json={"name": "兰州分公司（一）"}, headers=decided_on)
    assert (retried.status_code, retried.json()["version"]) == (200, version + 1), retried.text
    assert retried.json()["name"] == "兰州分公司（一）"

    colleague = await api.patch(path, json={"name": "兰州分公司（二）"}, headers=qian)
    assert colleague.json()["version"] == version + 2
    late = await api.patch(path, json={"name": "兰州分公司（一）"}, headers=decided_on)
    _precondition_failed(late, current=version + 2)
    stored = (await api.get(path, headers=zhao)).json()
    assert (stored["name"], stored["version"]) == ("兰州分公司（二）", version + 2)
    assert await _trail(system, "branch", "LZ") == [
        ("updated", "admin-qian"),
        ("updated", "admin-zhao"),
    ]

    # Deactivating twice (the answer of the first lost) is one change, one event.
    deactivated = await api.post(f"{path}/deactivate", headers=qian)
    assert deactivated.status_code == 200, deactivated.text
    again = await api.post(f"{path}/deactivate", headers={"If-Match": f'"{version + 2}"', **qian})
    assert again.status_code == 200, again.text
    branch = await routing_db(system)[directory_store.BRANCHES].find_one({"_id": "demo:LZ"})
    assert (branch["active"], branch["version"]) == (False, version + 3)


async def test_staff_and_department_changes_take_if_match(system: System) -> None:
    admin = token(system.routing_settings, subject="admin-zhao")
    api = system.routing
    staff = "/v1/directory/staff/lz-chen"
    version = (await api.get(staff, headers=admin)).json()["version"]
    stale = {"If-Match": f'"{version}"', **admin}
    assert (await api.patch(staff, json={"capacity": 9}, headers=admin)).status_code == 200
    # Decided on the version before: a capacity of 5 would undo the 9 set meanwhile.
    _precondition_failed(
        await api.patch(staff, json={"capacity": 5}, headers=stale), current=version + 1
    )
    # The change the entry already shows answers 200 whatever the header names.
    shown = await api.patch(staff, json={"capacity": 9}, headers=stale)
    assert (shown.status_code, shown.json()["version"]) == (200, version + 1), shown.text
    # Any of a list, or ``*``, matches; a weak tag never does (If-Match compares strongly).
    listed = {"If-Match": f'"{version}", "{version + 1}"', **admin}
    assert (await api.patch(staff, json={"capacity": 8}, headers=listed)).status_code == 200
    star = await api.patch(staff, json={"capacity": 7}, headers={"If-Match": "*", **admin})
    assert star.json()["version"] == version + 3
    weak = {"If-Match": f'W/"{version + 3}"', **admin}
    _precondition_failed(
        await api.patch(staff, json={"capacity": 6}, headers=weak), current=version + 3
    )
    assert await _trail(system, "staff", "lz-chen") == [("updated", "admin-zhao")] * 3

    department = "/v1/directory/departments/LZ:BILLING"
    read = await api.get(department, headers=admin)
    etag = read.headers["etag"]
    assert etag == f'"{read.json()["version"]}"'
    malformed = await api.patch(
        department, json={"name": "计费部"}, headers={"If-Match": "3", **admin}
    )
    assert malformed.status_code == 422, malformed.text
    assert malformed.json()["errors"][0]["field"] == "If-Match"
    changed = await api.patch(
        department, json={"name": "计费部"}, headers={"If-Match": etag, **admin}
    )
    assert changed.status_code == 200, changed.text
    _precondition_failed(
        await api.post(f"{department}/deactivate", headers={"If-Match": etag, **admin}),
        current=changed.json()["version"],
    )


async def test_rules_and_sla_policies_take_if_match(system: System) -> None:
    admin = token(system.routing_settings, subject="admin-zhao")
    api = system.routing
    rule = "/v1/routing/rules/demo:billing-keywords"
    read = await api.get(rule, headers=admin)
    version = read.json()["version"]
    assert read.headers["etag"] == f'"{version}"'
    stale = {"If-Match": read.headers["etag"], **admin}
    assert (await api.patch(rule, json={"name": "账单关键词"}, headers=stale)).status_code == 200
    _precondition_failed(
        await api.patch(rule, json={"position": 3}, headers=stale), current=version + 1
    )
    _precondition_failed(await api.delete(rule, headers=stale), current=version + 1)
    deactivated = await api.delete(rule, headers=admin)
    assert deactivated.json()["version"] == version + 2
    # A deactivation repeated (its answer lost) makes no version of its own.
    assert (await api.delete(rule, headers=stale)).json()["version"] == version + 2
    versions = (await api.get(f"{rule}/versions", headers=admin)).json()
    assert [entry["version"] for entry in versions][:3] == [version + 2, version + 1, version]

    # An action sent back exactly as read is no change: no version (its nested defaults
    # used to be dropped from the comparison and the stored action).
    keywords = "/v1/routing/rules/demo:billing-category"
    shown = await api.get(keywords, headers=admin)
    same = await api.patch(keywords, json={"action": shown.json()["action"]}, headers=admin)
    assert (same.status_code, same.json()["version"]) == (200, shown.json()["version"]), same.text

    # A change stored, whose answer was lost, retried after what it names was retired:
    # the retry answers 200 (it used to be a 422 for a change already made).
    assert (
        await api.put("/v1/routing/sla-policies/p1", json=BILLING_FAST, headers=admin)
    ).status_code == 200
    named = {"action": {**shown.json()["action"], "sla_policy": "p1"}}
    first = await api.patch(keywords, json=named, headers=admin)
    assert first.status_code == 200, first.text
    assert (await api.post("/v1/routing/sla-policies/p1/retire", headers=admin)).status_code == 200
    retried = await api.patch(keywords, json=named, headers=admin)
    assert (retried.status_code, retried.json()["version"]) == (200, first.json()["version"])
    changed_again = await api.patch(
        keywords, json={"action": {**named["action"], "required_skill": "billing"}}, headers=admin
    )
    assert changed_again.status_code == 422, "a change naming a retired policy is refused"

    policy = "/v1/routing/sla-policies/billing-fast"
    # If-Match on a policy that does not exist yet: no version of it is current.
    missing = await api.put(policy, json=BILLING_FAST, headers={"If-Match": "*", **admin})
    assert missing.status_code == 412, missing.text
    assert (await api.get(policy, headers=admin)).status_code == 404
    created = await api.put(policy, json=BILLING_FAST, headers=admin)
    assert (created.status_code, created.headers["etag"]) == (200, '"1"')
    renamed = {**BILLING_FAST, "name": "账务加急时限"}
    assert (
        await api.put(policy, json=renamed, headers={"If-Match": '"1"', **admin})
    ).status_code == 200
    # Decided on version 1, the first name would undo the rename.
    _precondition_failed(
        await api.put(policy, json=BILLING_FAST, headers={"If-Match": '"1"', **admin}),
        current=2,
    )
    _precondition_failed(
        await api.post(f"{policy}/retire", headers={"If-Match": '"1"', **admin}), current=2
    )
    retired = await api.post(f"{policy}/retire", headers={"If-Match": '"2"', **admin})
    assert (retired.status_code, retired.headers["etag"]) == (200, '"3"')
    _precondition_failed(await api.delete(policy, headers={"If-Match": '"2"', **admin}), current=3)
    assert (await api.delete(policy, headers={"If-Match": '"3"', **admin})).status_code == 204
    # The same DELETE again after a lost 204: answered as the first (it used to be a 404).
    repeated = await api.delete(policy, headers={"If-Match": '"3"', **admin})
    assert repeated.status_code == 204, repeated.text
    never = await api.delete("/v1/routing/sla-policies/never-was", headers=admin)
    assert never.status_code == 404, never.text
    assert [action for action, _ in await _trail(system, "sla_policy", "billing-fast")] == [
        "deleted",
        "retired",
        "saved",
        "saved",
    ]


async def test_followup_settings_take_if_match_and_repeat_nothing(system: System) -> None:
    admin = token(system.followup_settings, subject="admin-zhao")
    api = system.followup
    default = await api.get("/v1/followups/policy", headers=admin)
    assert default.headers["etag"] == '"0"'
    # Version 0 is the built-in default: a change decided on it.
    saved = await api.put(
        "/v1/followups/policy", json=FOLLOWUP_POLICY, headers={"If-Match": '"0"', **admin}
    )
    assert (saved.status_code, saved.headers["etag"]) == (200, '"1"'), saved.text
    retried = await api.put(
        "/v1/followups/policy", json=FOLLOWUP_POLICY, headers={"If-Match": '"0"', **admin}
    )
    assert (retried.status_code, retried.json()["version"]) == (200, 1), retried.text
    _precondition_failed(
        await api.put(
            "/v1/followups/policy",
            json={**FOLLOWUP_POLICY, "max_attempts": 3},
            headers={"If-Match": '"0"', **admin},
        ),
        current=1,
    )

    hours = "/v1/followups/contact-hours/LZ"
    assert (await api.get(hours, headers=admin)).headers["etag"] == '"0"'
    first = await api.put(hours, json=CONTACT_HOURS, headers={"If-Match": '"0"', **admin})
    assert first.json()["version"] == 1, first.text
    later = {**CONTACT_HOURS, "end": "17:00"}
    assert (await api.put(hours, json=later, headers=admin)).json()["version"] == 2
    _precondition_failed(
        await api.put(hours, json=CONTACT_HOURS, headers={"If-Match": '"1"', **admin}),
        current=2,
    )
    history = (await api.get(f"{hours}/history", headers=admin)).json()["items"]
    assert [entry["version"] for entry in history] == [2, 1]

    # A branch following the organisation's policy (version 1) shows its rules: the tag
    # names both. A copy decided on them is refused once the organisation's moved on.
    branch = "/v1/followups/policy/branches/LZ"
    inherited = await api.get(branch, headers=admin)
    assert inherited.headers["etag"] == '"0.1"'
    organisation_change = {**FOLLOWUP_POLICY, "satisfied_score_threshold": 3}
    assert (await api.put("/v1/followups/policy", json=organisation_change, headers=admin)).json()[
        "version"
    ] == 2
    copied = {**inherited.json()["policy"], "max_attempts": 3}
    stale_copy = await api.put(branch, json=copied, headers={"If-Match": '"0.1"', **admin})
    assert (stale_copy.status_code, stale_copy.headers["etag"]) == (412, '"0.2"'), stale_copy.text
    own = await api.put(branch, json=FOLLOWUP_POLICY, headers={"If-Match": '"0.2"', **admin})
    assert (own.json()["version"], own.headers["etag"]) == (1, '"1"'), own.text
    colleague = await api.put(branch, json={**FOLLOWUP_POLICY, "max_attempts": 4}, headers=admin)
    assert colleague.json()["version"] == 2
    # Giving up the branch's policy decided on version 1 would drop the colleague's.
    _precondition_failed(await api.delete(branch, headers={"If-Match": '"1"', **admin}), current=2)
    given_up = await api.delete(branch, headers={"If-Match": '"2"', **admin})
    assert (given_up.status_code, given_up.json()["inherited"]) == (200, True), given_up.text
    assert given_up.headers["etag"] == '"3.2"'
    repeated = await api.delete(branch, headers={"If-Match": '"2"', **admin})
    assert (repeated.status_code, repeated.headers["etag"]) == (200, '"3.2"'), repeated.text
    branch_history = (await api.get(f"{branch}/history", headers=admin)).json()["items"]
    assert [entry["version"] for entry in branch_history] == [3, 2, 1]


async def test_a_creation_retried_after_what_it_names_changed_answers_the_entry_it_made(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A person and a rule are created; the answers are lost. Meanwhile the person's
    department is closed and the rule's SLA policy retired. The retries were checked
    before they found their entries stored: a 422 for entries that exist. And a creation
    whose audit record failed (a 503) and was never retried had no "created" record at
    all. Now a repeat is recognised first, and a creation carries its record until the
    next change writes it."""
    admin = token(system.routing_settings, subject="admin-zhao")
    api = system.routing
    department = {"branch": "LZ", "code": "NIGHT", "name": "夜间值班组", "kind": "night_desk"}
    assert (
        await api.post("/v1/directory/departments", json=department, headers=admin)
    ).status_code == 201
    person = {
        "id": "lz-night-1",
        "name": "夜班一号",
        "branch": "LZ",
        "department": "NIGHT",
        "role": "agent",
        "skills": ["billing"],
        "languages": ["zh"],
        "capacity": 3,
    }
    created = await api.post("/v1/directory/staff", json=person, headers=admin)
    assert created.status_code == 201, created.text
    assert (
        await api.put("/v1/routing/sla-policies/night", json=BILLING_FAST, headers=admin)
    ).status_code == 200
    rule = {
        "id": "night-billing",
        "name": "夜间计费",
        "position": 7,
        "conditions": {"categories": ["billing"]},
        # By kind: a department a rule names by id is not closed (a 409) while it does.
        "action": {"department_kind": "night_desk", "sla_policy": "night"},
    }
    made = await api.post("/v1/routing/rules", json=rule, headers=admin)
    assert made.status_code == 201, made.text
    assert (
        await api.post("/v1/routing/sla-policies/night/retire", headers=admin)
    ).status_code == 200
    closed = await api.post("/v1/directory/departments/LZ:NIGHT/deactivate", headers=admin)
    assert closed.status_code == 200, closed.text

    person_again = await api.post("/v1/directory/staff", json=person, headers=admin)
    assert (person_again.status_code, person_again.json()["version"]) == (201, 1), person_again.text
    rule_again = await api.post("/v1/routing/rules", json=rule, headers=admin)
    assert (rule_again.status_code, rule_again.json()["version"]) == (201, 1), rule_again.text
    # Another entry under a taken id is still refused.
    other = await api.post("/v1/directory/staff", json={**person, "capacity": 4}, headers=admin)
    assert other.status_code == 409, other.text
    assert await _trail(system, "staff", "lz-night-1") == [("created", "admin-zhao")]
    versions = (
        await api.get("/v1/routing/rules/demo:night-billing/versions", headers=admin)
    ).json()
    assert [(entry["version"], entry["change"]) for entry in versions] == [(1, "created")]

    # A creation whose record failed, never retried: the next change records it first.
    monkeypatch.setattr(audit, "record", FailsFirst(audit.record))
    second = {**person, "id": "lz-night-2", "department": "BILLING"}
    failed = await api.post("/v1/directory/staff", json=second, headers=admin)
    assert failed.status_code == 503, failed.text
    changed = await api.patch("/v1/directory/staff/lz-night-2", json={"capacity": 2}, headers=admin)
    assert changed.status_code == 200, changed.text
    assert await _trail(system, "staff", "lz-night-2") == [
        ("updated", "admin-zhao"),
        ("created", "admin-zhao"),
    ]


async def test_the_same_change_sent_twice_at_once_is_answered_twice_and_made_once(
    system: System,
) -> None:
    """A gateway times out and the client sends the request again while the first still
    runs. Identical creations of a department answered the second with a 422 (its kind was
    taken, by itself); identical replacements of an SLA policy with a 409. Both now answer
    the entry the first made, and it is made once."""
    admin = token(system.routing_settings, subject="admin-zhao")
    api = system.routing
    department = {"branch": "LZ", "code": "VIP", "name": "贵宾服务组", "kind": "vip_desk"}
    answers = await asyncio.gather(
        *(api.post("/v1/directory/departments", json=department, headers=admin) for _ in range(4))
    )
    assert [answer.status_code for answer in answers] == [201] * 4, [a.text for a in answers]
    assert await _trail(system, "department", "LZ:VIP") == [("created", "admin-zhao")]

    policy = "/v1/routing/sla-policies/twice"
    assert (await api.put(policy, json=BILLING_FAST, headers=admin)).status_code == 200
    renamed = {**BILLING_FAST, "name": "两次保存"}
    saves = await asyncio.gather(*(api.put(policy, json=renamed, headers=admin) for _ in range(4)))
    assert [save.status_code for save in saves] == [200] * 4, [save.text for save in saves]
    assert {save.json()["version"] for save in saves} == {2}
    assert [action for action, _ in await _trail(system, "sla_policy", "twice")] == [
        "saved",
        "saved",
    ]


async def test_changes_racing_under_one_if_match_lose_with_a_412_not_a_409(
    system: System,
) -> None:
    """Ten changes at once, each with ``If-Match: "1"``: one wins. Those that read version 1
    before the winner wrote answered a 409 "retry" (``branche 'demo:…' changed``), whose retry
    then met the 412; the losers are now the 412 the precondition promises, naming the
    current tag."""
    admin = token(system.routing_settings, subject="admin-zhao")
    api = system.routing
    created = await api.post(
        "/v1/directory/branches", json={"code": "RACE", "name": "并发"}, headers=admin
    )
    assert created.status_code == 201, created.text
    matched = {"If-Match": '"1"', **admin}

    async def renames(path: str, method: str, body_of) -> list[int]:
        answers = await asyncio.gather(
            *(api.request(method, path, json=body_of(n), headers=matched) for n in range(10))
        )
        for answer in answers:
            if answer.status_code == 412:
                assert answer.json()["current_etag"] == answer.headers["etag"], answer.text
        return sorted(answer.status_code for answer in answers)

    codes = await renames("/v1/directory/branches/RACE", "PATCH", lambda n: {"name": f"并发{n}"})
    assert codes == [200] + [412] * 9, codes

    policy = "/v1/routing/sla-policies/racing"
    assert (await api.put(policy, json=BILLING_FAST, headers=admin)).status_code == 200
    codes = await renames(policy, "PUT", lambda n: {**BILLING_FAST, "name": f"并发{n}"})
    assert codes == [200] + [412] * 9, codes

    followup_admin = token(system.followup_settings, subject="admin-zhao")
    followups = system.followup
    saved = await followups.put(
        "/v1/followups/policy", json=FOLLOWUP_POLICY, headers=followup_admin
    )
    assert (saved.status_code, saved.headers["etag"]) == (200, '"1"'), saved.text
    answers = await asyncio.gather(
        *(
            followups.put(
                "/v1/followups/policy",
                json={**FOLLOWUP_POLICY, "max_attempts": 3 + n},
                headers={"If-Match": '"1"', **followup_admin},
            )
            for n in range(6)
        )
    )
    assert sorted(a.status_code for a in answers) == [200] + [412] * 5, [a.text for a in answers]


async def test_a_settings_answer_equals_a_later_read_field_for_field(system: System) -> None:
    """Creations and saves answered with the request's own copy: times to the microsecond
    (``…30.870691Z``) where every later read has milliseconds (``…30.870000Z``), and a
    branch's follow-up policy without the ``inherited`` its ``GET`` shows. They now answer
    as stored (intake's registration did since 1 December)."""
    admin = token(system.routing_settings, subject="admin-zhao")
    api = system.routing

    async def same_as_read(answer, path: str, client=api, headers=admin) -> None:
        assert answer.status_code in (200, 201), answer.text
        read = await client.get(path, headers=headers)
        assert read.status_code == 200, read.text
        assert answer.json() == read.json()

    await same_as_read(
        await api.post(
            "/v1/directory/branches", json={"code": "ECHO", "name": "回声"}, headers=admin
        ),
        "/v1/directory/branches/ECHO",
    )
    department = {"branch": "ECHO", "code": "CS", "name": "客服", "kind": "customer_service"}
    await same_as_read(
        await api.post("/v1/directory/departments", json=department, headers=admin),
        "/v1/directory/departments/ECHO:CS",
    )
    person = {"id": "echo-li", "branch": "ECHO", "department": "CS", "name": "李", "capacity": 3}
    await same_as_read(
        await api.post("/v1/directory/staff", json=person, headers=admin),
        "/v1/directory/staff/echo-li",
    )
    rule = {
        "id": "echo-billing",
        "name": "回声账务",
        "branches": ["ECHO"],
        "conditions": {"keywords_any": ["账单"]},
        "action": {"department_kind": "customer_service"},
    }
    await same_as_read(
        await api.post("/v1/routing/rules", json=rule, headers=admin),
        "/v1/routing/rules/demo:echo-billing",
    )
    await same_as_read(
        await api.put("/v1/routing/sla-policies/echo", json=BILLING_FAST, headers=admin),
        "/v1/routing/sla-policies/echo",
    )

    followup_admin = token(system.followup_settings, subject="admin-zhao")
    followups = system.followup
    for path, body in (
        ("/v1/followups/policy", FOLLOWUP_POLICY),
        ("/v1/followups/policy/branches/LZ", FOLLOWUP_POLICY),
        ("/v1/followups/contact-hours/LZ", CONTACT_HOURS),
    ):
        await same_as_read(
            await followups.put(path, json=body, headers=followup_admin),
            path,
            client=followups,
            headers=followup_admin,
        )
