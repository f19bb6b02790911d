"""Webhook subscriptions API: branch scoping, secrets shown once, problem+json on bad input,
creation repeatable under an ``Idempotency-Key``."""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests.support.faults import FailsAfter, HeldFirst
from tests.support.http import token
from tests.support.system import SystemFactory
from tests.support.webhooks import serve_webhooks
from webhooks import api, store

pytestmark = pytest.mark.integration

RECEIVED = "org.complaintdesk.complaint.received.v1"
PATH = "/v1/webhooks/subscriptions"
# A subscription of every event type for the organisation's CRM.
CRM = {"target_url": "https://crm.example.com/h", "event_types": ["*"]}


async def test_branch_admins_see_and_manage_only_their_branchs_subscriptions(
    system_factory: SystemFactory,
) -> None:
    system = await system_factory()
    org_admin = token(system.intake_settings)
    lz_admin = token(system.intake_settings, branches=["LZ"], subject="lz-admin")
    bj_admin = token(system.intake_settings, branches=["BJ"], subject="bj-admin")
    lz_agent = token(system.intake_settings, branches=["LZ"], roles=("agent",))
    other_org = token(system.intake_settings, org="other")
    async with AsyncExitStack() as stack:
        webhooks = await serve_webhooks(stack, system)
        client = webhooks.client
        body = {"target_url": "https://crm.example.com/hooks", "event_types": [RECEIVED]}

        lz = await client.post(PATH, json={**body, "branch": "LZ"}, headers=lz_admin)
        assert lz.status_code == 201, lz.text
        everywhere = await client.post(PATH, json=body, headers=org_admin)
        assert everywhere.status_code == 201, everywhere.text
        lz_id, org_id = lz.json()["id"], everywhere.json()["id"]

        foreign_branch = await client.post(PATH, json={**body, "branch": "BJ"}, headers=lz_admin)
        # Another branch does not exist for the token: a 404 naming the field, as everywhere.
        assert (foreign_branch.status_code, foreign_branch.json()["field"]) == (404, "branch")
        all_branches = await client.post(PATH, json=body, headers=lz_admin)
        assert all_branches.status_code == 422
        assert all_branches.json()["errors"][0]["field"] == "branch"

        listed = (await client.get(PATH, headers=lz_admin)).json()["items"]
        assert [item["id"] for item in listed] == [lz_id]
        assert {
            item["id"] for item in (await client.get(PATH, headers=org_admin)).json()["items"]
        } == {
            lz_id,
            org_id,
        }
        assert (await client.get(PATH, headers=bj_admin)).json()["items"] == []
        assert (await client.get(PATH, headers=other_org)).json()["items"] == []

        for headers, subscription_id in [
            (bj_admin, lz_id),
            (lz_admin, org_id),
            (other_org, lz_id),
        ]:
            for method, suffix in [
                ("GET", ""),
                ("PATCH", ""),
                ("DELETE", ""),
                ("POST", "/secret/rotate"),
                ("POST", "/ping"),
                ("GET", "/deliveries"),
            ]:
                response = await client.request(
                    method,
                    f"{PATH}/{subscription_id}{suffix}",
                    json={"description": "x"} if method == "PATCH" else None,
                    headers=headers,
                )
                assert response.status_code == 404, (method, suffix, response.text)
                assert response.headers["content-type"] == "application/problem+json"

        forbidden = await client.get(PATH, headers=lz_agent)
        assert forbidden.status_code == 403
        assert (await client.get(PATH)).status_code == 401

        paused = await client.patch(f"{PATH}/{lz_id}", json={"status": "paused"}, headers=lz_admin)
        assert paused.status_code == 200 and paused.json()["status"] == "paused"
        deleted = await client.delete(f"{PATH}/{lz_id}", headers=lz_admin)
        assert deleted.status_code == 204
        assert (await client.get(f"{PATH}/{lz_id}", headers=org_admin)).status_code == 404


async def test_the_secret_is_shown_once_and_never_again(system_factory: SystemFactory) -> None:
    system = await system_factory(seed=False)
    admin = token(system.intake_settings)
    async with AsyncExitStack() as stack:
        webhooks = await serve_webhooks(stack, system)
        created = await webhooks.client.post(PATH, json=CRM, headers=admin)
        secret = created.json()["secret"]
        assert secret.startswith("whsec_")
        subscription_id = created.json()["id"]
        read = await webhooks.client.get(f"{PATH}/{subscription_id}", headers=admin)
        # The creation answers what a read shows, and the secret: times in milliseconds as
        # stored (until 5 December to the microsecond, from the request's own copy).
        assert {k: v for k, v in created.json().items() if k != "secret"} == read.json()
        responses = [
            await webhooks.client.get(PATH, headers=admin),
            read,
            await webhooks.client.patch(
                f"{PATH}/{subscription_id}", json={"description": "CRM"}, headers=admin
            ),
        ]
    for response in responses:
        assert response.status_code == 200
        assert secret not in response.text and 'secret"' not in response.text


async def test_a_creation_repeated_under_its_key_creates_one_subscription(
    system_factory: SystemFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The insert of a new subscription is applied, then its answer is lost (a dropped
    connection: 503). The client's retry used to create a second subscription, one whose
    secret nobody had seen and whose receiver got every event twice. Under an
    ``Idempotency-Key`` the retry answers the first one, once, with the secret that signs;
    another body under the key is a 422 naming the header."""
    system = await system_factory(seed=False)
    admin = token(system.intake_settings)
    body = {"target_url": "https://crm.example.com/h", "event_types": [RECEIVED]}
    keyed = {**admin, "Idempotency-Key": "crm-subscription-1"}
    async with AsyncExitStack() as stack:
        webhooks = await serve_webhooks(stack, system)
        insert = FailsAfter(store.insert_subscription)
        monkeypatch.setattr(store, "insert_subscription", insert)
        lost = await webhooks.client.post(PATH, json=body, headers=keyed)
        assert lost.status_code == 503, lost.text
        monkeypatch.setattr(store, "insert_subscription", insert.function)
        retried = await webhooks.client.post(PATH, json=body, headers=keyed)
        again = await webhooks.client.post(PATH, json=body, headers=keyed)
        other = await webhooks.client.post(
            PATH, json={**body, "description": "另一个"}, headers=keyed
        )
        listed = (await webhooks.client.get(PATH, headers=admin)).json()["items"]
        fresh = await webhooks.client.post(
            PATH, json=body, headers={**admin, "Idempotency-Key": "crm-subscription-2"}
        )
        # The key shows the secret it created, not one rotated in since (it showed the
        # secret signing now to anyone repeating the request, for as long as it existed),
        # and only within a day.
        rotate = f"{PATH}/{fresh.json()['id']}/secret/rotate"
        rotated = await webhooks.client.post(rotate, headers=admin)
        assert rotated.status_code == 200, rotated.text
        after_rotation = await webhooks.client.post(
            PATH, json=body, headers={**admin, "Idempotency-Key": "crm-subscription-2"}
        )
        monkeypatch.setattr(api, "CREATION_REPLAY_WINDOW", timedelta(0))
        a_day_later = await webhooks.client.post(PATH, json=body, headers=keyed)
    assert after_rotation.status_code == 409, after_rotation.text
    assert rotated.json()["secret"] not in after_rotation.text
    assert a_day_later.status_code == 409 and "whsec_" not in a_day_later.text
    assert (retried.status_code, again.status_code) == (201, 201), retried.text
    assert retried.headers["Idempotent-Replayed"] == "true"
    assert retried.json()["id"] == again.json()["id"] == listed[0]["id"]
    assert retried.json()["secret"] == again.json()["secret"]
    assert retried.json()["secret"].startswith("whsec_")
    assert len(listed) == 1
    assert other.status_code == 422, other.text
    assert other.json()["errors"][0]["field"] == "Idempotency-Key"
    assert fresh.status_code == 201 and "Idempotent-Replayed" not in fresh.headers
    assert fresh.json()["id"] != retried.json()["id"]


async def test_a_pause_decided_before_a_410_disabled_the_subscription_does_not_undo_it(
    system_factory: SystemFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A PATCH reads the subscription (active) and decides to pause it; meanwhile a 410
    answer disables it. The pause used to be written over the disabling and its reason,
    so the subscription looked paused by hand and the 410 was gone from the record. The
    status is now written only while it is still the one read: a 409, and the disabling
    stands."""
    system = await system_factory(seed=False)
    admin = token(system.intake_settings)
    async with AsyncExitStack() as stack:
        webhooks = await serve_webhooks(stack, system)
        created = await webhooks.client.post(PATH, json=CRM, headers=admin)
        path = f"{PATH}/{created.json()['id']}"
        held = HeldFirst(store.update_subscription)
        monkeypatch.setattr(store, "update_subscription", held)
        async with asyncio.TaskGroup() as requests:
            pause = requests.create_task(
                webhooks.client.patch(path, json={"status": "paused"}, headers=admin)
            )
            await asyncio.wait_for(held.entered.wait(), timeout=10)
            # A 410 from a target the subscription no longer sends to disables nothing.
            assert not await store.disable(
                db=webhooks.app.state.runtime.db,
                subscription_id=created.json()["id"],
                reason="target answered 410 Gone",
                now=datetime.now(UTC),
                target_url="https://old-crm.example.com/hooks",
            )
            assert await store.disable(
                db=webhooks.app.state.runtime.db,
                subscription_id=created.json()["id"],
                reason="target answered 410 Gone",
                now=datetime.now(UTC),
                target_url=created.json()["target_url"],
            )
            held.release.set()
        shown = (await webhooks.client.get(path, headers=admin)).json()
    assert pause.result().status_code == 409, pause.result().text
    assert "disabled" in pause.result().json()["detail"]
    assert (shown["status"], shown["status_reason"]) == ("disabled", "target answered 410 Gone")


async def test_a_subscription_change_decided_on_an_older_version_is_refused_not_applied(
    system_factory: SystemFactory,
) -> None:
    """Zhao moves the CRM's URL; Qian narrows its event types. Zhao's late change of the
    description, decided on the version before Qian's, used to be applied (and a PATCH
    repeated after a lost answer was written again). A subscription now has a version and
    an ETag: a change decided on another version is a 412, a repeat writes nothing."""
    system = await system_factory(seed=False)
    zhao = token(system.intake_settings, subject="admin-zhao")
    qian = token(system.intake_settings, subject="admin-qian")
    async with AsyncExitStack() as stack:
        webhooks = await serve_webhooks(stack, system)
        client = webhooks.client
        created = await client.post(PATH, json=CRM, headers=zhao)
        assert (created.headers["etag"], created.json()["version"]) == ('"1"', 1)
        path = f"{PATH}/{created.json()['id']}"
        moved = {"target_url": "https://crm2.example.com/h"}
        first = await client.patch(path, json=moved, headers={"If-Match": '"1"', **zhao})
        assert (first.status_code, first.headers["etag"]) == (200, '"2"'), first.text
        repeated = await client.patch(path, json=moved, headers={"If-Match": '"1"', **zhao})
        assert (repeated.status_code, repeated.json()["version"]) == (200, 2), repeated.text
        narrowed = await client.patch(path, json={"event_types": [RECEIVED]}, headers=qian)
        assert narrowed.json()["version"] == 3
        late = await client.patch(
            path,
            json={"event_types": ["*"], "description": "全部事件"},
            headers={"If-Match": '"2"', **zhao},
        )
        assert (late.status_code, late.json()["current_version"]) == (412, 3), late.text
        assert late.json()["errors"][0]["field"] == "If-Match"
        refused_deletion = await client.delete(path, headers={"If-Match": '"2"', **zhao})
        assert refused_deletion.status_code == 412, refused_deletion.text
        shown = await client.get(path, headers=zhao)
        assert shown.headers["etag"] == '"3"'
        assert (shown.json()["event_types"], shown.json()["target_url"]) == (
            [RECEIVED],
            "https://crm2.example.com/h",
        )
        assert (await client.delete(path, headers={"If-Match": '"3"', **zhao})).status_code == 204
        assert (await client.get(path, headers=zhao)).status_code == 404


async def test_the_same_subscription_change_sent_twice_at_once_is_answered_twice(
    system_factory: SystemFactory,
) -> None:
    """Identical PATCHes at once (a gateway's timeout, then the retry): each writes only at
    the version it read, and the second used to be a 409 for a change that was made."""
    system = await system_factory(seed=False)
    admin = token(system.intake_settings)
    async with AsyncExitStack() as stack:
        webhooks = await serve_webhooks(stack, system)
        created = await webhooks.client.post(PATH, json=CRM, headers=admin)
        path = f"{PATH}/{created.json()['id']}"
        change = {"description": "客服系统", "event_types": [RECEIVED]}
        answers = await asyncio.gather(
            *(webhooks.client.patch(path, json=change, headers=admin) for _ in range(4))
        )
    assert [answer.status_code for answer in answers] == [200] * 4, [a.text for a in answers]
    assert {answer.json()["version"] for answer in answers} == {2}


BAD_SUBSCRIPTIONS = [
    ({"target_url": "not a url", "event_types": [RECEIVED]}, "target_url"),
    ({"target_url": "ftp://crm.example.com/h", "event_types": [RECEIVED]}, "target_url"),
    ({"target_url": "http://crm.example.com/h", "event_types": [RECEIVED]}, "target_url"),
    ({"target_url": "https://127.0.0.1/h", "event_types": [RECEIVED]}, "target_url"),
    ({"target_url": "https://localhost/h", "event_types": [RECEIVED]}, "target_url"),
    ({"target_url": "https://169.254.169.254/latest", "event_types": [RECEIVED]}, "target_url"),
    ({"target_url": "https://10.1.2.3/h", "event_types": [RECEIVED]}, "target_url"),
    ({"target_url": "https://[::1]/h", "event_types": [RECEIVED]}, "target_url"),
    ({"target_url": "https://127.0.0.1./h", "event_types": [RECEIVED]}, "target_url"),
    ({"target_url": "https://169.254.169.254./latest", "event_types": [RECEIVED]}, "target_url"),
    ({"target_url": "https://localhost./h", "event_types": [RECEIVED]}, "target_url"),
    ({"target_url": "https://u:p@crm.example.com/h", "event_types": [RECEIVED]}, "target_url"),
    ({"target_url": "https://crm.example.com/h", "event_types": []}, "event_types"),
    (
        {"target_url": "https://crm.example.com/h", "event_types": ["complaint.received"]},
        "event_types.0",
    ),
    (
        {"target_url": "https://crm.example.com/h", "event_types": ["org.example.*"]},
        "event_types.0",
    ),
    (
        {"target_url": "https://crm.example.com/h", "event_types": ["*"], "branch": "lz"},
        "branch",
    ),
    (
        {"target_url": "https://crm.example.com/h", "event_types": ["*"], "status": "disabled"},
        "status",
    ),
    ({"target_url": "https://crm.example.com/h", "event_types": ["*"], "x": 1}, "x"),
    ({"event_types": ["*"]}, "target_url"),
]


async def test_bad_subscriptions_are_refused_with_a_problem_naming_the_field(
    system_factory: SystemFactory,
) -> None:
    system = await system_factory(seed=False)
    admin = token(system.intake_settings)
    async with AsyncExitStack() as stack:
        # Production rules: https only, no loopback, no private ranges.
        webhooks = await serve_webhooks(
            stack, system, deployment_environment="production", allow_loopback_targets=False
        )
        for body, field in BAD_SUBSCRIPTIONS:
            response = await webhooks.client.post(PATH, json=body, headers=admin)
            assert response.status_code == 422, (body, response.text)
            assert response.headers["content-type"] == "application/problem+json"
            problem = response.json()
            assert field in [error["field"] for error in problem["errors"]], (body, problem)
            assert field in problem["detail"]
        listed = await webhooks.client.get(PATH, headers=admin)
    assert listed.json()["items"] == [], "nothing was stored"


async def test_other_bad_inputs_are_4xx_problems(system_factory: SystemFactory) -> None:
    system = await system_factory(seed=False)
    admin = token(system.intake_settings)
    async with AsyncExitStack() as stack:
        webhooks = await serve_webhooks(stack, system)
        client = webhooks.client
        created = await client.post(
            PATH,
            json={"target_url": "https://a.example.com/h", "event_types": ["*"]},
            headers=admin,
        )
        path = f"{PATH}/{created.json()['id']}"
        cases = [
            await client.patch(path, json={"status": "disabled"}, headers=admin),
            await client.patch(path, json={"target_url": "https://10.0.0.1/"}, headers=admin),
            await client.patch(path, json={"event_types": ["nope"]}, headers=admin),
            await client.get(f"{path}/deliveries", params={"limit": 0}, headers=admin),
            await client.get(f"{path}/deliveries", params={"cursor": "%%%"}, headers=admin),
            await client.get(f"{path}/deliveries", params={"status": "lost"}, headers=admin),
            await client.post(
                f"{path}/redeliver",
                json={"from": "2026-01-02T00:00:00", "to": "2026-01-03T00:00:00Z"},
                headers=admin,
            ),
            await client.post(
                f"{path}/redeliver",
                json={"from": "2026-01-03T00:00:00Z", "to": "2026-01-02T00:00:00Z"},
                headers=admin,
            ),
            await client.post(PATH, content=b"{not json", headers=admin),
        ]
        missing = await client.get(f"{PATH}/whs_missing/deliveries/msg_x", headers=admin)
    for response in cases:
        assert response.status_code == 422, (response.request.url, response.text)
        assert response.headers["content-type"] == "application/problem+json"
    assert missing.status_code == 404


MALFORMED_HOSTS = [
    "https://a..example.com/h",
    f"https://{'a' * 64}.example.com/h",
    f"https://{'.'.join(['a' * 60] * 5)}/h",
    "https://☃.example.com/h",
    "https://0x7f.1/h",  # 127.0.0.1 to the resolver
]


async def test_a_target_whose_host_is_no_host_name_is_refused_on_create_and_update(
    system_factory: SystemFactory,
) -> None:
    system = await system_factory(seed=False)
    admin = token(system.intake_settings)
    async with AsyncExitStack() as stack:
        client = (await serve_webhooks(stack, system)).client
        # International host names IDNA encodes are host names like any other.
        created = await client.post(
            PATH,
            json={"target_url": "https://投诉.例子.公司/hooks", "event_types": ["*"]},
            headers=admin,
        )
        assert created.status_code == 201, created.text
        path = f"{PATH}/{created.json()['id']}"
        renamed = {"target_url": "https://客服.中国/h"}
        changed = await client.patch(path, json=renamed, headers=admin)
        assert changed.status_code == 200, changed.text
        answers: dict[str, list] = {}
        for url in MALFORMED_HOSTS:
            create = await client.post(
                PATH, json={"target_url": url, "event_types": ["*"]}, headers=admin
            )
            update = await client.patch(path, json={"target_url": url}, headers=admin)
            answers[url] = [
                (response.status_code, response.headers["content-type"], _fields(response))
                for response in (create, update)
            ]
        listed = await client.get(PATH, headers=admin)
    refused = (422, "application/problem+json", ["target_url"])
    assert answers == {url: [refused, refused] for url in MALFORMED_HOSTS}
    [kept] = listed.json()["items"]
    assert kept["target_url"] == "https://客服.中国/h", "nothing else was stored or changed"


def _fields(response: httpx.Response) -> list[str]:
    problem = response.json()
    return [error["field"] for error in problem.get("errors", [])]
