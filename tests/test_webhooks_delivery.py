"""Webhook deliveries over real Kafka, MongoDB and HTTP: order, signatures, retries, isolation."""

from __future__ import annotations

import asyncio
import statistics
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from cloudevents.v1.http import from_http
from prometheus_client.parser import text_string_to_metric_families
from standardwebhooks import Webhook, WebhookVerificationError

from complaints_shared.clock import ManualClock
from complaints_shared.envelope import CloudEvent, to_kafka_record
from complaints_shared.events import EventType, Topic
from complaints_shared.kafka import EventProducer
from tests.support.events import received
from tests.support.faults import HeldFirst
from tests.support.http import BROADBAND_COMPLAINT, create_complaint, token
from tests.support.kafka import group_dead_letters, short_type
from tests.support.system import System, SystemFactory
from tests.support.waits import NotYet, eventually
from tests.support.webhooks import (
    Received,
    Receiver,
    Webhooks,
    receiver,
    serve_webhooks,
    silent_target,
    subscribe,
)
from webhooks import sender, store
from webhooks.targets import Target

pytestmark = pytest.mark.integration

LIFE = [
    "complaint.received",
    "complaint.assigned",
    "complaint.resolved",
    "followup.scheduled",
    "followup.completed",
    "complaint.closed",
]


async def _complaint(system, headers: dict, **changes) -> str:
    # A distinct description each time: an identical one would be the same complaint resubmitted.
    description = f"{BROADBAND_COMPLAINT['description']}（{uuid.uuid4().hex[:8]}）"
    body = {**BROADBAND_COMPLAINT, "description": description, **changes}
    return (await create_complaint(system, headers, **body))["id"]


async def _deliveries(webhooks, headers, subscription_id: str, **params) -> list[dict]:
    response = await webhooks.client.get(
        f"/v1/webhooks/subscriptions/{subscription_id}/deliveries",
        params={"limit": 200, **params},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    return response.json()["items"]


async def test_a_complaints_whole_life_arrives_in_order_signed_and_as_cloudevents(
    system_factory: SystemFactory,
) -> None:
    system = await system_factory()
    admin = token(system.intake_settings)
    async with AsyncExitStack() as stack:
        hooks = await stack.enter_async_context(receiver())
        webhooks = await serve_webhooks(stack, system)
        subscription = await subscribe(webhooks, admin, url=hooks.url, event_types=["*"])
        complaint_id = await _complaint(system, admin)

        async def assigned() -> bool:
            body = (await system.intake.get(f"/v1/complaints/{complaint_id}", headers=admin)).json()
            return bool(body.get("assignment"))

        await eventually(assigned, what="assignment")
        resolved = await system.intake.post(
            f"/v1/complaints/{complaint_id}/resolve",
            json={"summary": "已恢复宽带并致歉", "customer_accepted": True},
            headers=admin,
        )
        assert resolved.status_code == 200, resolved.text

        async def check_id() -> str | None:
            response = await system.followup.get(
                "/v1/followups", params={"complaint_id": complaint_id}, headers=admin
            )
            items = response.json()["items"]
            return items[0]["id"] if items else None

        followup_id = await eventually(check_id, what="satisfaction check")
        outcome = await system.followup.post(
            f"/v1/followups/{followup_id}/outcome",
            json={"satisfied": True, "score": 5},
            headers=admin,
        )
        assert outcome.status_code == 200, outcome.text

        def types() -> list[str]:
            return [short_type(body["type"]) for body in hooks.bodies()]

        await eventually(
            lambda: asyncio.sleep(0, "complaint.closed" in types()),
            timeout_s=40,
            what="complaint.closed delivered",
        )

        async def all_recorded_delivered() -> list[dict]:
            # The receiver notes a request before the service records its answer.
            entries = await _deliveries(webhooks, admin, subscription["id"])
            done = all(entry["status"] == "delivered" for entry in entries)
            return entries if done and len(entries) >= len(hooks.requests) else []

        log = await eventually(all_recorded_delivered, what="every delivery recorded delivered")

    arrived = types()
    # A high-severity resolution schedules two checks, so types may repeat: compare first arrivals.
    first_arrivals = sorted(LIFE, key=lambda event_type: arrived.index(event_type))
    assert first_arrivals == LIFE, arrived
    # Every event here reacts to the one before it or shares its topic: all in time order.
    times = [datetime.fromisoformat(body["time"]) for body in hooks.bodies()]
    assert times == sorted(times), f"deliveries of one complaint arrive in event order: {arrived}"
    verifier = Webhook(subscription["secret"])
    for request in hooks.requests:
        assert request.headers["content-type"] == "application/cloudevents+json"
        verified = verifier.verify(request.body, request.headers)
        event = from_http(request.headers, request.body)
        assert event["id"] == verified["id"]
        assert event["subject"] == complaint_id
        assert event["specversion"] == "1.0"
        assert event.data["complaint_id"] == complaint_id
    assert len({r.webhook_id for r in hooks.requests}) == len(hooks.requests)
    assert {entry["id"] for entry in log} <= {r.webhook_id for r in hooks.requests}
    assert all(entry["last_response_code"] == 200 for entry in log)


async def test_a_failing_receiver_gets_each_retry_until_it_answers_2xx(
    system_factory: SystemFactory,
) -> None:
    system = await system_factory()
    admin = token(system.intake_settings)
    async with AsyncExitStack() as stack:
        hooks = await stack.enter_async_context(receiver(lambda n: 500 if n < 3 else 200))
        webhooks = await serve_webhooks(stack, system, retry_schedule_s=[0.3, 0.3, 0.3, 0.3])
        subscription = await subscribe(
            webhooks, admin, url=hooks.url, event_types=["org.complaintdesk.complaint.received.v1"]
        )
        await _complaint(system, admin)
        await eventually(lambda: asyncio.sleep(0, hooks.delivered_ids()), what="a 2xx answer")

        async def delivered() -> list[dict]:
            log = await _deliveries(webhooks, admin, subscription["id"])
            return log if log and log[0]["status"] == "delivered" else []

        [entry] = await eventually(delivered, what="delivery recorded as delivered")
    assert [r.status for r in hooks.requests] == [500, 500, 500, 200]
    assert len({r.webhook_id for r in hooks.requests}) == 1, "webhook-id is stable across retries"
    assert len({r.body for r in hooks.requests}) == 1
    assert entry["id"] == hooks.requests[0].webhook_id
    assert entry["attempts"] == 4
    assert entry["last_response_code"] == 200
    assert entry["next_attempt_at"] is None
    assert [a["response_code"] for a in entry["attempt_log"]] == [500, 500, 500, 200]
    gaps = [
        b.arrived_at - a.arrived_at
        for a, b in zip(hooks.requests, hooks.requests[1:], strict=False)
    ]
    assert all(gap >= 0.25 for gap in gaps), f"each retry waits its delay: {gaps}"


async def test_a_410_answer_disables_the_subscription_and_keeps_its_backlog(
    system_factory: SystemFactory,
) -> None:
    system = await system_factory()
    admin = token(system.intake_settings)
    answers = {"status": 410}
    async with AsyncExitStack() as stack:
        hooks = await stack.enter_async_context(receiver(lambda n: answers["status"]))
        webhooks = await serve_webhooks(stack, system)
        subscription = await subscribe(
            webhooks, admin, url=hooks.url, event_types=["org.complaintdesk.complaint.received.v1"]
        )
        path = f"/v1/webhooks/subscriptions/{subscription['id']}"

        async def status() -> str:
            return (await webhooks.client.get(path, headers=admin)).json()["status"]

        first = await _complaint(system, admin)
        await eventually(lambda: _is(status, "disabled"), what="subscription disabled")
        current = (await webhooks.client.get(path, headers=admin)).json()
        assert "410" in current["status_reason"]
        second = await _complaint(system, admin)
        await eventually(lambda: _has_complaint_received(system, admin, second), what="routing")
        assert len(hooks.requests) == 1, "nothing is sent to a disabled subscription"

        async def held_entry() -> dict | None:
            # Recorded due (the subscription disabled first), held at its next claim.
            [entry] = await _deliveries(webhooks, admin, subscription["id"])
            return entry if entry["next_attempt_at"] is None else None

        held = await eventually(held_entry, what="the delivery held")
        assert held["status"] == "pending"
        assert held["last_response_code"] == 410

        answers["status"] = 200
        enabled = await webhooks.client.patch(path, json={"status": "active"}, headers=admin)
        assert enabled.status_code == 200, enabled.text
        await eventually(lambda: asyncio.sleep(0, hooks.delivered_ids()), what="backlog replayed")
    assert [body["subject"] for body in hooks.bodies()] == [first, first]


async def _is(probe, expected: str) -> bool:
    return await probe() == expected


async def _has_complaint_received(system, headers, complaint_id: str) -> bool:
    body = (await system.intake.get(f"/v1/complaints/{complaint_id}", headers=headers)).json()
    return bool(body.get("assignment"))


# How long a silent target holds each attempt (the request timeout): long beside the
# deliveries to a healthy receiver, so that waiting for a slot would show.
DEAD_HOLDS_S = 6.0


async def test_a_dead_target_does_not_delay_a_healthy_one(system_factory: SystemFactory) -> None:
    system = await system_factory()
    admin = token(system.intake_settings)
    received_only = ["org.complaintdesk.complaint.received.v1"]
    async with AsyncExitStack() as stack:
        healthy = await stack.enter_async_context(receiver())
        dead_url = await stack.enter_async_context(silent_target())
        webhooks = await serve_webhooks(
            stack,
            system,
            request_timeout_s=DEAD_HOLDS_S,
            max_concurrent_per_subscription=2,
            retry_schedule_s=[0.1] * 20,
        )
        await subscribe(webhooks, admin, url=healthy.url, event_types=received_only)

        async def latencies(count: int) -> list[float]:
            start = len(healthy.requests)
            for _ in range(count):
                await _complaint(system, admin)
                await asyncio.sleep(0.25)
            await eventually(
                lambda: asyncio.sleep(0, len(healthy.requests) >= start + count),
                timeout_s=20,
                what=f"{count} deliveries to the healthy receiver",
            )
            return [
                request.arrived_at - _event_time(request.body)
                for request in healthy.requests[start:]
            ]

        baseline = await latencies(8)
        dead = await subscribe(webhooks, admin, url=dead_url, event_types=received_only)
        beside_dead = await latencies(12)

        async def timed_out() -> list[dict]:
            log = await _deliveries(webhooks, admin, dead["id"])
            return [entry for entry in log if entry["attempts"] > 0]

        failed = await eventually(timed_out, timeout_s=20, what="dead target attempts")
        dead_log = await _deliveries(webhooks, admin, dead["id"])
    assert len(dead_log) == 12 and all(entry["status"] == "pending" for entry in dead_log)
    assert all("no answer within 6 s" in entry["last_error"] for entry in failed)
    normal = max(statistics.quantiles(baseline, n=10)[-1], 0.2)
    # Each dead attempt holds its slot for 6 s; the healthy receiver must not notice (a
    # busy machine may slow one delivery, not by the seconds of waiting for a slot).
    assert statistics.median(beside_dead) < normal * 3 + 0.5, (baseline, beside_dead)
    assert max(beside_dead) < DEAD_HOLDS_S / 2, beside_dead


async def test_dead_targets_enough_to_fill_every_slot_leave_the_healthy_ones_theirs(
    system_factory: SystemFactory,
) -> None:
    """Two dead targets with backlogs, each allowed 2 of the replica's 4 slots: before,
    they held all 4 (every slot seconds on a silent connection, their retries due again at
    once), and the healthy receiver's deliveries waited behind them, seconds each. Now a
    failing subscription has one attempt in flight and the failing ones half the slots."""
    system = await system_factory()
    admin = token(system.intake_settings)
    received_only = ["org.complaintdesk.complaint.received.v1"]
    async with AsyncExitStack() as stack:
        healthy = await stack.enter_async_context(receiver())
        dead_urls = [await stack.enter_async_context(silent_target()) for _ in range(2)]
        webhooks = await serve_webhooks(
            stack,
            system,
            request_timeout_s=DEAD_HOLDS_S,
            max_concurrent_deliveries=4,
            max_concurrent_per_subscription=2,
            retry_schedule_s=[0.1] * 50,
        )
        dead = [
            await subscribe(webhooks, admin, url=url, event_types=received_only)
            for url in dead_urls
        ]
        # Backlogs for both dead targets, and their first attempts timed out.
        for _ in range(6):
            await _complaint(system, admin)

        async def timed_out() -> bool:
            logs = [await _deliveries(webhooks, admin, each["id"]) for each in dead]
            return all(any(entry["attempts"] > 0 for entry in log) for log in logs)

        await eventually(timed_out, timeout_s=30, what="both dead targets failing")
        await subscribe(webhooks, admin, url=healthy.url, event_types=received_only)
        for _ in range(6):
            await _complaint(system, admin)
            await asyncio.sleep(0.25)
        await eventually(
            lambda: asyncio.sleep(0, len(healthy.requests) >= 6),
            timeout_s=30,
            what="6 deliveries to the healthy receiver",
        )
        beside_dead = [
            request.arrived_at - _event_time(request.body) for request in healthy.requests
        ]
        still_pending = [
            entry["status"]
            for each in dead
            for entry in await _deliveries(webhooks, admin, each["id"])
        ]
    assert len(still_pending) == 24 and set(still_pending) == {"pending"}
    # A dead attempt holds its slot for 6 s: waiting for one would show.
    assert max(beside_dead) < DEAD_HOLDS_S / 2, beside_dead


def _event_time(body: bytes) -> float:
    return datetime.fromisoformat(orjson.loads(body)["time"]).timestamp()


@asynccontextmanager
async def _rotating(
    system: System, clock: ManualClock, admin: dict
) -> AsyncIterator[tuple[Receiver, Webhooks, dict, str]]:
    """A receiver, the webhooks service (secrets overlap for 60 s on ``clock``), a
    subscription of every event to the receiver as created (its first secret included) and
    its path."""
    async with AsyncExitStack() as stack:
        hooks = await stack.enter_async_context(receiver())
        webhooks = await serve_webhooks(stack, system, clock=clock, secret_rotation_overlap_s=60)
        subscription = await subscribe(webhooks, admin, url=hooks.url)
        yield hooks, webhooks, subscription, f"/v1/webhooks/subscriptions/{subscription['id']}"


async def _ping(webhooks: Webhooks, hooks: Receiver, path: str, admin: dict) -> Received:
    """A ping of the subscription at ``path``, as the receiver got it."""
    count = len(hooks.requests)
    response = await webhooks.client.post(f"{path}/ping", headers=admin)
    assert response.status_code == 202, response.text
    await eventually(lambda: asyncio.sleep(0, len(hooks.requests) > count), what="ping")
    return hooks.requests[-1]


async def test_a_rotated_secret_keeps_the_previous_one_valid_for_the_overlap(
    system_factory: SystemFactory,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    system = await system_factory()
    admin, clock = token(system.intake_settings), ManualClock()
    async with _rotating(system, clock, admin) as (hooks, webhooks, subscription, path):
        rotated = await webhooks.client.post(f"{path}/secret/rotate", headers=admin)
        assert rotated.status_code == 200, rotated.text
        new_secret = rotated.json()["secret"]
        assert new_secret != subscription["secret"]
        during = await _ping(webhooks, hooks, path, admin)
        clock.advance(timedelta(seconds=61))
        after = await _ping(webhooks, hooks, path, admin)
        shown = (await webhooks.client.get(path, headers=admin)).json()
    old, new = Webhook(subscription["secret"]), Webhook(new_secret)
    assert new.verify(during.body, during.headers)["type"].endswith("webhook.ping.v1")
    assert old.verify(during.body, during.headers), "the old secret verifies during the overlap"
    assert len(during.headers["webhook-signature"].split(" ")) == 2
    assert new.verify(after.body, after.headers)
    with pytest.raises(WebhookVerificationError):
        old.verify(after.body, after.headers)
    assert "secret" not in shown and "signing_secrets" not in shown
    assert new_secret not in str(shown) and subscription["secret"] not in str(shown)
    captured = capfd.readouterr()
    logged = captured.out + captured.err + caplog.text
    assert "webhook_attempt" in logged, "the service's log lines were captured"
    for secret in (subscription["secret"], new_secret):
        assert secret.removeprefix("whsec_") not in logged, "a secret never appears in logs"


async def test_rotations_close_together_lose_none_of_the_secrets_they_answered(
    system_factory: SystemFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two rotations close together: the first reads the secrets, the second rotates in
    full, then the first writes. It used to write over what it had read: the second's new
    secret, already answered, was never used, and a rotated-out secret lost its overlap to
    any later rotation. Now a rotation is written only over the secrets it was decided on
    (else decided again), and a rotated-out secret signs until its own expiry."""
    system = await system_factory()
    admin, clock = token(system.intake_settings), ManualClock()
    async with _rotating(system, clock, admin) as (hooks, webhooks, subscription, path):
        read_held = HeldFirst(store.get_subscription, holding_answer=True)
        monkeypatch.setattr(store, "get_subscription", read_held)
        async with asyncio.TaskGroup() as rotations:
            first = rotations.create_task(
                webhooks.client.post(f"{path}/secret/rotate", headers=admin)
            )
            await asyncio.wait_for(read_held.entered.wait(), timeout=10)
            second = await webhooks.client.post(f"{path}/secret/rotate", headers=admin)
            read_held.release.set()
        assert (first.result().status_code, second.status_code) == (200, 200)

        during = await _ping(webhooks, hooks, path, admin)
        clock.advance(timedelta(seconds=61))
        after = await _ping(webhooks, hooks, path, admin)
    answered = (subscription["secret"], first.result().json()["secret"], second.json()["secret"])
    original, first_new, second_new = (Webhook(secret) for secret in answered)
    for secret in (original, first_new, second_new):
        assert secret.verify(during.body, during.headers)
    assert len(during.headers["webhook-signature"].split(" ")) == 3
    assert first_new.verify(after.body, after.headers)
    for secret in (original, second_new):
        with pytest.raises(WebhookVerificationError):
            secret.verify(after.body, after.headers)


async def test_a_rotation_retried_under_its_key_answers_its_secret_instead_of_rotating_again(
    system_factory: SystemFactory,
) -> None:
    """A rotation's answer is lost and the client retries. A second rotation made a new
    secret nobody saw sign for the whole overlap, and told the client an expiry the secret
    it holds did not have. Under its key the retry answers the same secret and expiry."""
    system = await system_factory()
    admin, clock = token(system.intake_settings), ManualClock()
    async with _rotating(system, clock, admin) as (hooks, webhooks, subscription, path):
        keyed = {**admin, "Idempotency-Key": "rotate-2026-12"}
        rotated = await webhooks.client.post(f"{path}/secret/rotate", headers=keyed)
        assert rotated.status_code == 200, rotated.text
        clock.advance(timedelta(seconds=5))
        retried = await webhooks.client.post(f"{path}/secret/rotate", headers=keyed)
        assert retried.status_code == 200, retried.text
        assert retried.json() == rotated.json()
        assert retried.headers["Idempotent-Replayed"] == "true"
        during = await _ping(webhooks, hooks, path, admin)
        # Rotated again, under another key and then without one: the first key's secret no
        # longer signs, so its retry is a 409; so is the second's.
        other = {**admin, "Idempotency-Key": "rotate-2027-01"}
        again = await webhooks.client.post(f"{path}/secret/rotate", headers=other)
        assert again.status_code == 200, again.text
        late = await webhooks.client.post(f"{path}/secret/rotate", headers=keyed)
        assert late.status_code == 409, late.text
        plain = await webhooks.client.post(f"{path}/secret/rotate", headers=admin)
        assert plain.status_code == 200, plain.text
        later = await webhooks.client.post(f"{path}/secret/rotate", headers=other)
        assert later.status_code == 409, later.text
    assert len(during.headers["webhook-signature"].split(" ")) == 2  # the new and the original
    Webhook(rotated.json()["secret"]).verify(during.body, during.headers)
    Webhook(subscription["secret"]).verify(during.body, during.headers)


async def test_a_backlog_of_event_types_taken_out_of_the_subscription_is_not_sent(
    system_factory: SystemFactory,
) -> None:
    """Paused, the subscription holds a backlog of received and assigned events; its owner
    narrows it to assigned events and enables it again. The held received events were sent
    all the same: the subscription's types were checked only when events were recorded."""
    system = await system_factory()
    admin = token(system.intake_settings)
    received_type, assigned_type = (
        EventType.COMPLAINT_RECEIVED.value,
        EventType.COMPLAINT_ASSIGNED.value,
    )
    async with AsyncExitStack() as stack:
        hooks = await stack.enter_async_context(receiver(lambda n: 204))
        webhooks = await serve_webhooks(stack, system)
        subscription = await subscribe(
            webhooks, admin, url=hooks.url, event_types=[received_type, assigned_type]
        )
        path = f"/v1/webhooks/subscriptions/{subscription['id']}"
        paused = await webhooks.client.patch(path, json={"status": "paused"}, headers=admin)
        assert paused.status_code == 200, paused.text
        complaint_id = await _complaint(system, admin)

        async def held() -> list[dict]:
            entries = await _deliveries(webhooks, admin, subscription["id"])
            types = {entry["event_type"] for entry in entries}
            return entries if {received_type, assigned_type} <= types else []

        await eventually(held, what="both events held while paused")
        narrowed = await webhooks.client.patch(
            path, json={"event_types": [assigned_type], "status": "active"}, headers=admin
        )
        assert narrowed.status_code == 200, narrowed.text

        async def settled() -> list[dict]:
            entries = await _deliveries(webhooks, admin, subscription["id"])
            done = entries and all(entry["status"] == "delivered" for entry in entries)
            return entries if done else []

        entries = await eventually(settled, timeout_s=15, what="the backlog settled")
    assert {entry["event_type"] for entry in entries} == {assigned_type}
    sent = [orjson.loads(request.body) for request in hooks.requests]
    assert [body["type"] for body in sent if body["subject"] == complaint_id] == [assigned_type]


async def test_a_failing_target_is_paused_automatically_and_replayed_in_order_when_enabled(
    system_factory: SystemFactory,
) -> None:
    system = await system_factory()
    admin = token(system.intake_settings)
    answers = {"status": 503}
    async with AsyncExitStack() as stack:
        hooks = await stack.enter_async_context(receiver(lambda n: answers["status"]))
        webhooks = await serve_webhooks(
            stack,
            system,
            auto_pause_after_failures=3,
            auto_pause_after_s=0,
            backlog_refresh_s=0.2,
        )
        subscription = await subscribe(webhooks, admin, url=hooks.url)
        path = f"/v1/webhooks/subscriptions/{subscription['id']}"
        complaint_id = await _complaint(system, admin)

        async def paused() -> dict | None:
            body = (await webhooks.client.get(path, headers=admin)).json()
            return body if body["status"] == "paused" else None

        stopped = await eventually(paused, what="auto-pause")
        assert "automatically" in stopped["status_reason"]
        await eventually(lambda: _has_complaint_received(system, admin, complaint_id), what="route")

        async def both_recorded() -> list[dict]:
            # Webhooks records the assignment's event on its own, maybe after intake shows it.
            entries = await _deliveries(webhooks, admin, subscription["id"])
            return entries if len(entries) >= 2 else []

        log = await eventually(both_recorded, what="the received and assigned events recorded")
        assert {entry["status"] for entry in log} == {"pending"}

        async def backlog_shown() -> dict[str, float] | None:
            samples = await _subscription_metrics(webhooks, subscription["id"])
            shown = samples.get("complaints_webhook_backlog")
            recorded = await _deliveries(webhooks, admin, subscription["id"])
            return samples if shown == len(recorded) else None

        samples = await eventually(backlog_shown, what="the backlog gauge of the subscription")
        assert samples["complaints_webhook_attempts_total|failed"] >= 3
        answers["status"] = 204
        await webhooks.client.patch(path, json={"status": "active"}, headers=admin)

        async def all_delivered() -> list[dict]:
            entries = await _deliveries(webhooks, admin, subscription["id"])
            done = all(entry["status"] == "delivered" for entry in entries)
            return entries if done and len(entries) >= 2 else []

        await eventually(all_delivered, timeout_s=15, what="backlog delivered")
    delivered = [r for r in hooks.requests if r.status == 204]
    times = [datetime.fromisoformat(orjson.loads(r.body)["time"]) for r in delivered]
    assert times == sorted(times), "the replayed backlog keeps event order"


async def _subscription_metrics(webhooks, subscription_id: str) -> dict[str, float]:
    """The subscription's samples on /metrics: name (``|outcome`` or ``|status``) → value."""
    text = (await webhooks.client.get("/metrics")).text
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.labels.get("subscription") != subscription_id:
                continue
            detail = sample.labels.get("outcome") or sample.labels.get("status")
            samples[f"{sample.name}|{detail}" if detail else sample.name] = sample.value
    return samples


async def test_a_new_target_url_starts_without_the_old_targets_failures(
    system_factory: SystemFactory,
) -> None:
    """The failures counted against a dead URL used to stay after the subscription was
    moved to a new one: its first failure could pause it (ten in a row over a day), for
    failures it never had. A new target starts with a streak of none."""
    system = await system_factory(seed=False)
    admin = token(system.intake_settings)
    async with AsyncExitStack() as stack:
        webhooks = await serve_webhooks(stack, system)
        db = webhooks.app.state.runtime.db
        subscription = await subscribe(webhooks, admin, url="http://127.0.0.1:9/hooks")
        path = f"/v1/webhooks/subscriptions/{subscription['id']}"
        for _ in range(3):
            await store.record_failure_streak(
                db=db, subscription_id=subscription["id"], now=datetime.now(UTC)
            )
        described = await webhooks.client.patch(
            path, json={"description": "CRM 回调"}, headers=admin
        )
        assert described.json()["failure_streak"] == 3, "the same target keeps its failures"
        moved = await webhooks.client.patch(
            path, json={"target_url": "http://127.0.0.1:10/hooks"}, headers=admin
        )
    assert moved.status_code == 200, moved.text
    assert (moved.json()["failure_streak"], moved.json()["failing_since"]) == (0, None)


async def test_an_attempt_to_the_old_target_failing_after_a_move_counts_against_nobody(
    system_factory: SystemFactory,
) -> None:
    """An attempt in flight to a dead URL when the subscription is moved to a new one
    times out after the move: its failure used to be counted against the new target."""
    system = await system_factory()
    admin = token(system.intake_settings)
    async with AsyncExitStack() as stack:
        healthy = await stack.enter_async_context(receiver())
        sent_to_the_dead: list[bytes] = []
        dead_url = await stack.enter_async_context(silent_target(sent_to_the_dead))
        webhooks = await serve_webhooks(stack, system, request_timeout_s=2.0)
        subscription = await subscribe(
            webhooks,
            admin,
            url=dead_url,
            event_types=["org.complaintdesk.complaint.received.v1"],
        )
        path = f"/v1/webhooks/subscriptions/{subscription['id']}"
        await _complaint(system, admin)

        deliveries = webhooks.app.state.runtime.db[store.DELIVERIES]

        async def claimed() -> dict | None:
            return await deliveries.find_one(
                {"subscription_id": subscription["id"], "lease_owner": {"$exists": True}}
            )

        await eventually(claimed, what="the delivery claimed")
        # Then sent: the silent target holds it for 2 s.
        await eventually(lambda: bool(sent_to_the_dead), what="the attempt reaching the old target")
        moved = await webhooks.client.patch(path, json={"target_url": healthy.url}, headers=admin)
        assert moved.status_code == 200, moved.text

        async def timed_out() -> list[dict]:
            log = await _deliveries(webhooks, admin, subscription["id"])
            return [entry for entry in log if entry["attempts"] > 0 and entry["last_error"]]

        await eventually(timed_out, timeout_s=10, what="the old target's attempt timed out")
        shown = (await webhooks.client.get(path, headers=admin)).json()
    assert (shown["failure_streak"], shown["failing_since"]) == (0, None)


async def test_auto_pause_needs_both_the_failures_in_a_row_and_the_time_failing(
    system_factory: SystemFactory,
) -> None:
    system = await system_factory(seed=False)
    admin = token(system.intake_settings)
    async with AsyncExitStack() as stack:
        webhooks = await serve_webhooks(stack, system)
        db = webhooks.app.state.runtime.db
        subscription = await subscribe(webhooks, admin, url="http://127.0.0.1:9/hooks")
        subscription_id = subscription["id"]
        first_failure = datetime.now(UTC)

        async def fail_three_times() -> None:
            # One failed attempt a minute: failing for 2 minutes at the third.
            for minute in range(3):
                await store.record_failure_streak(
                    db=db,
                    subscription_id=subscription_id,
                    now=first_failure + timedelta(minutes=minute),
                )

        await fail_three_times()

        async def pause(*, min_failures: int, window: timedelta) -> bool:
            now = first_failure + timedelta(minutes=3)
            return await store.pause_if_failing(
                db=db,
                subscription_id=subscription_id,
                min_failures=min_failures,
                failing_since_before=now - window,
                reason="test",
                now=now,
            )

        assert not await pause(min_failures=4, window=timedelta(minutes=1)), "too few failures"
        assert not await pause(min_failures=3, window=timedelta(hours=1)), "failing too briefly"
        assert (await store.get_subscription(db=db, scope={}, subscription_id=subscription_id))[
            "status"
        ] == "active"
        # A success of the target the subscription was moved from resets nothing.
        await store.record_success(
            db=db,
            subscription_id=subscription_id,
            now=first_failure,
            target_url="http://127.0.0.1:8/old-hooks",
        )
        assert (await store.get_subscription(db=db, scope={}, subscription_id=subscription_id))[
            "failure_streak"
        ] == 3
        await store.record_success(
            db=db,
            subscription_id=subscription_id,
            now=first_failure,
            target_url=subscription["target_url"],
        )
        assert not await pause(min_failures=3, window=timedelta(minutes=1)), "a success resets"
        await fail_three_times()
        assert await pause(min_failures=3, window=timedelta(minutes=1))
        shown = (
            await webhooks.client.get(
                f"/v1/webhooks/subscriptions/{subscription_id}", headers=admin
            )
        ).json()
    assert shown["status"] == "paused" and shown["failure_streak"] == 3


async def _all_delivered(
    webhooks: Webhooks, headers: dict, subscription_id: str, *, attempts: int
) -> list[dict]:
    """The delivery log once ``attempts`` attempts are recorded and every delivery was
    delivered, else nothing (the receiver notes a request before its answer is recorded)."""
    log = await _deliveries(webhooks, headers, subscription_id)
    done = sum(entry["attempts"] for entry in log) == attempts
    return log if done and {entry["status"] for entry in log} == {"delivered"} else []


async def test_one_delivery_or_a_time_range_can_be_sent_again(
    system_factory: SystemFactory,
) -> None:
    system = await system_factory()
    admin = token(system.intake_settings)
    async with AsyncExitStack() as stack:
        hooks = await stack.enter_async_context(receiver())
        webhooks = await serve_webhooks(stack, system)
        subscription = await subscribe(webhooks, admin, url=hooks.url)
        path = f"/v1/webhooks/subscriptions/{subscription['id']}"

        def recorded(attempts: int) -> Awaitable[list[dict]]:
            return _all_delivered(webhooks, admin, subscription["id"], attempts=attempts)

        # One after the other, so the two are recorded at distinct times.
        for count in (1, 2):
            assert (await webhooks.client.post(f"{path}/ping", headers=admin)).status_code == 202
            await eventually(lambda count=count: recorded(count), what=f"ping {count} delivered")
        [newest, oldest] = await recorded(2)
        again = await webhooks.client.post(
            f"{path}/deliveries/{oldest['id']}/redeliver", headers=admin
        )
        assert again.status_code == 202, again.text
        await eventually(lambda: recorded(3), what="redelivery")
        assert len(hooks.requests) == 3
        assert hooks.requests[-1].webhook_id == oldest["id"]
        assert hooks.requests[-1].body == hooks.requests[0].body

        async def redeliver_range(to: str) -> dict:
            window = await webhooks.client.post(
                f"{path}/redeliver",
                json={"from": oldest["created_at"], "to": to, "statuses": ["delivered"]},
                headers=admin,
            )
            assert window.status_code == 202, window.text
            return window.json()

        # The range ends before the newest ping was recorded: only the oldest goes again.
        assert await redeliver_range(newest["created_at"]) == {"queued": 1}
        await eventually(lambda: recorded(4), what="the range's one delivery")
        assert [r.webhook_id for r in hooks.requests[2:]] == [oldest["id"]] * 2
        assert await redeliver_range("2100-01-01T00:00:00Z") == {"queued": 2}
        await eventually(lambda: recorded(6), what="the range's two deliveries")
        assert {r.webhook_id for r in hooks.requests[4:]} == {oldest["id"], newest["id"]}
        missing = await webhooks.client.post(
            f"{path}/deliveries/msg_unknown/redeliver", headers=admin
        )
        assert missing.status_code == 404


async def test_an_attempt_overtaken_by_a_redelivery_records_nothing_on_the_same_replica(
    system_factory: SystemFactory,
) -> None:
    """A delivery redelivered while its attempt was in flight was claimed again at once by
    the same replica, whose lease named only the replica: the first attempt (503) still
    recorded its result and cleared the lease, and the second one's 2xx was thrown away as
    a lost lease. The log said "not delivered" of an event the receiver had. Each claim has
    a lease of its own now: the overtaken attempt records nothing."""
    system = await system_factory()
    admin = token(system.intake_settings)
    first_answers, second_answers = asyncio.Event(), asyncio.Event()

    async def behaviour(index: int) -> int:
        if index == 0:
            await first_answers.wait()
            return 503
        await second_answers.wait()
        return 204

    async with AsyncExitStack() as stack:
        hooks = await stack.enter_async_context(receiver(behaviour))
        webhooks = await serve_webhooks(stack, system)
        subscription = await subscribe(webhooks, admin, url=hooks.url)
        path = f"/v1/webhooks/subscriptions/{subscription['id']}"
        assert (await webhooks.client.post(f"{path}/ping", headers=admin)).status_code == 202
        await eventually(lambda: asyncio.sleep(0, len(hooks.requests) == 1), what="attempt 1")
        [delivery] = await _deliveries(webhooks, admin, subscription["id"])
        again = await webhooks.client.post(
            f"{path}/deliveries/{delivery['id']}/redeliver", headers=admin
        )
        assert again.status_code == 202, again.text
        await eventually(lambda: asyncio.sleep(0, len(hooks.requests) == 2), what="attempt 2")
        first_answers.set()  # the overtaken attempt ends first, with a 503

        async def answered() -> bool:
            return hooks.requests[0].status == 503

        await eventually(answered, what="the first attempt answered")
        second_answers.set()

        async def delivered() -> list[dict]:
            log = await _deliveries(webhooks, admin, subscription["id"])
            return log if log[0]["status"] == "delivered" else []

        [entry] = await eventually(delivered, what="the redelivery recorded")
        shown = await webhooks.client.get(f"{path}/deliveries/{entry['id']}", headers=admin)
    assert [attempt["response_code"] for attempt in shown.json()["attempt_log"]] == [204]


async def test_pings_and_redeliveries_retried_under_their_key_send_nothing_twice(
    system_factory: SystemFactory,
) -> None:
    """A ping, a redelivery and a range's redelivery whose answers were lost, asked again:
    before, a second test event went out, and a redelivery asked again cut off the attempt
    the first had started and queued it anew (the receiver got it twice). Under an
    ``Idempotency-Key`` the retry answers what the request did, sending nothing more."""
    system = await system_factory()
    admin = token(system.intake_settings)
    async with AsyncExitStack() as stack:
        hooks = await stack.enter_async_context(receiver())
        webhooks = await serve_webhooks(stack, system)
        subscription = await subscribe(webhooks, admin, url=hooks.url)
        path = f"/v1/webhooks/subscriptions/{subscription['id']}"

        def attempts_recorded(count: int) -> Awaitable[list[dict]]:
            return _all_delivered(webhooks, admin, subscription["id"], attempts=count)

        keyed = {"Idempotency-Key": "ping-2026-12-04-1", **admin}
        pinged = await webhooks.client.post(f"{path}/ping", headers=keyed)
        assert pinged.status_code == 202, pinged.text
        repeated = await webhooks.client.post(f"{path}/ping", headers=keyed)
        assert repeated.status_code == 202, repeated.text
        assert repeated.headers["idempotent-replayed"] == "true"
        assert repeated.json()["id"] == pinged.json()["id"]
        [ping] = await eventually(lambda: attempts_recorded(1), what="the ping delivered")

        redeliver = f"{path}/deliveries/{ping['id']}/redeliver"
        again = {"Idempotency-Key": "again-1", **admin}
        first = await webhooks.client.post(redeliver, headers=again)
        retried = await webhooks.client.post(redeliver, headers=again)
        assert (first.status_code, retried.status_code) == (202, 202), retried.text
        assert retried.headers["idempotent-replayed"] == "true"
        await eventually(lambda: attempts_recorded(2), what="the redelivery")

        window = {"from": ping["created_at"], "to": "2100-01-01T00:00:00Z"}
        ranged = {"Idempotency-Key": "range-1", **admin}
        body = {**window, "statuses": ["delivered"]}
        range_first = await webhooks.client.post(f"{path}/redeliver", json=body, headers=ranged)
        range_retried = await webhooks.client.post(f"{path}/redeliver", json=body, headers=ranged)
        assert range_first.json() == range_retried.json() == {"queued": 1}, range_retried.text
        assert range_retried.headers["idempotent-replayed"] == "true"
        await eventually(lambda: attempts_recorded(3), what="the range's redelivery")
        other_range = await webhooks.client.post(
            f"{path}/redeliver", json={**window, "statuses": ["failed"]}, headers=ranged
        )
        await asyncio.sleep(0.5)  # time for a second send, had anything been queued twice
    assert (other_range.status_code, other_range.json()["errors"][0]["field"]) == (
        422,
        "Idempotency-Key",
    )
    assert [request.webhook_id for request in hooks.requests] == [ping["id"]] * 3


async def test_a_broken_delivery_is_recorded_and_postponed_while_the_others_go_out(
    system_factory: SystemFactory,
) -> None:
    system = await system_factory(seed=False)
    admin = token(system.intake_settings)
    async with AsyncExitStack() as stack:
        hooks = await stack.enter_async_context(receiver())
        webhooks = await serve_webhooks(stack, system, timer_retry_backoff_s=30)
        subscription = await subscribe(webhooks, admin, url=hooks.url)
        deliveries = webhooks.app.state.runtime.db["deliveries"]
        await deliveries.insert_one(
            {
                "_id": "msg_broken",
                "subscription_id": subscription["id"],
                "chain": "msg_broken",
                "order_key": "0",
                "event_type": "org.complaintdesk.complaint.received.v1",
                "status": "pending",
                "next_attempt_at": datetime.now(UTC),
                # no body: it cannot be signed or sent
            }
        )
        path = f"/v1/webhooks/subscriptions/{subscription['id']}"
        assert (await webhooks.client.post(f"{path}/ping", headers=admin)).status_code == 202
        await eventually(lambda: asyncio.sleep(0, hooks.delivered_ids()), what="the ping")
        broken = await eventually(
            lambda: deliveries.find_one({"_id": "msg_broken", "timer_failures": 1}),
            what="the broken delivery's failure recorded",
        )
    assert "KeyError" in broken["timer_last_error"]
    assert broken["lease_until"] > datetime.now(UTC) + timedelta(seconds=20), "postponed"
    assert broken["status"] == "pending"


async def test_a_branch_change_is_delivered_as_the_branchs_own_event(
    system_factory: SystemFactory,
) -> None:
    system = await system_factory()
    admin = token(system.intake_settings)
    async with AsyncExitStack() as stack:
        hooks = await stack.enter_async_context(receiver())
        webhooks = await serve_webhooks(stack, system)
        await subscribe(webhooks, admin, url=hooks.url, event_types=["org.complaintdesk.branch.*"])
        created = await system.routing.post(
            "/v1/directory/branches",
            json={"code": "XA", "name": "西安分公司", "time_zone": "Asia/Shanghai"},
            headers=admin,
        )
        assert created.status_code == 201, created.text
        await eventually(lambda: asyncio.sleep(0, hooks.delivered_ids()), what="branch.updated")
    [body] = hooks.bodies()
    assert short_type(body["type"]) == "branch.updated"
    assert body["subject"] == "branch:demo:XA"
    assert body["data"]["name"] == "西安分公司" and body["data"]["time_zone"] == "Asia/Shanghai"


async def test_a_subscription_stored_with_a_malformed_host_fails_its_attempts_and_pauses(
    system_factory: SystemFactory,
) -> None:
    """Each attempt to a malformed host is the target's failure (not a stuck timer); once the
    complaint's first delivery has spent its attempts with nothing but failures the
    subscription is paused, and its events wait (until 6 December each delivery was failed
    in turn, the complaint's later events sent after the first one given up)."""
    system = await system_factory()
    admin = token(system.intake_settings)
    malformed = ["https://a..example.com/h", f"https://{'a' * 64}.example.com/h"]
    complaint_events = ["org.complaintdesk.complaint.*"]
    async with AsyncExitStack() as stack:
        webhooks = await serve_webhooks(stack, system)
        db = webhooks.app.state.runtime.db
        subscription_ids = []
        for url in malformed:
            subscription = await subscribe(
                webhooks, admin, url="https://crm.example.com/h", event_types=complaint_events
            )
            # As a subscription saved before host names were checked holds it.
            await db[store.SUBSCRIPTIONS].update_one(
                {"_id": subscription["id"]}, {"$set": {"target_url": url}}
            )
            subscription_ids.append(subscription["id"])
        await _complaint(system, admin)
        attempts = len(webhooks.settings.retry_schedule_s) + 1

        async def paused_with_both_waiting(subscription_id: str) -> list[dict] | NotYet:
            log = await _deliveries(webhooks, admin, subscription_id)
            seen = [(e["event_type"], e["status"], e["attempts"], e["last_error"]) for e in log]
            by_type = {short_type(entry["event_type"]): entry for entry in log}
            received = by_type.get("complaint.received")
            waiting = {"complaint.received", "complaint.assigned"} <= set(by_type)
            waiting = waiting and all(entry["status"] == "pending" for entry in log)
            spent = received is not None and received["attempts"] == attempts
            held = spent and received["next_attempt_at"] is None
            return log if waiting and held else NotYet(f"deliveries {seen}")

        logs = [
            await eventually(
                lambda subscription_id=subscription_id: paused_with_both_waiting(subscription_id),
                timeout_s=20,
                what="the first delivery spent and held, the subscription paused",
            )
            for subscription_id in subscription_ids
        ]
        shown = [
            (await webhooks.client.get(f"/v1/webhooks/subscriptions/{i}", headers=admin)).json()
            for i in subscription_ids
        ]
        postponed = await db[store.DELIVERIES].count_documents(
            {"subscription_id": {"$in": subscription_ids}, "timer_failures": {"$exists": True}}
        )
    for log, subscription in zip(logs, shown, strict=True):
        [received] = [e for e in log if short_type(e["event_type"]) == "complaint.received"]
        assert received["last_error"].startswith("target refused: the host name"), received
        assert all(attempt["error"] for attempt in received["attempt_log"]), received
        later = [e for e in log if e is not received]
        assert all(entry["attempts"] == 0 for entry in later), "they wait behind it"
        assert subscription["failure_streak"] == attempts, subscription
        assert subscription["status"] == "paused"
        assert f"failed all its {attempts} attempts" in subscription["status_reason"]
    assert postponed == 0, "a malformed host is the target's failure, not a stuck timer"


async def test_an_unexpected_error_in_an_attempt_is_a_failed_attempt_quoting_nothing(
    system_factory: SystemFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    system = await system_factory(seed=False)
    admin = token(system.intake_settings)
    resolve_checked = sender.resolve_checked
    resolved: list[Target] = []

    async def fails_first(target: Target, **arguments) -> str:
        resolved.append(target)
        if len(resolved) == 1:
            raise RuntimeError("bug quoting the customer's phone 13800138000")
        return await resolve_checked(target, **arguments)

    monkeypatch.setattr(sender, "resolve_checked", fails_first)
    async with AsyncExitStack() as stack:
        hooks = await stack.enter_async_context(receiver())
        webhooks = await serve_webhooks(stack, system)
        subscription = await subscribe(webhooks, admin, url=hooks.url)
        path = f"/v1/webhooks/subscriptions/{subscription['id']}"
        assert (await webhooks.client.post(f"{path}/ping", headers=admin)).status_code == 202

        async def delivered() -> dict | NotYet:
            log = await _deliveries(webhooks, admin, subscription["id"])
            done = [entry for entry in log if entry["status"] == "delivered"]
            return done[0] if done else NotYet(f"deliveries {log}")

        ping = await eventually(delivered, what="the ping delivered on its retry")
    assert ping["attempts"] == 2, f"the failure was no recorded attempt: {ping}"
    failed, answered = ping["attempt_log"]
    assert failed["error"].startswith("unexpected error: RuntimeError"), failed
    assert "13800138000" not in failed["error"], "the error is redacted"
    assert answered["response_code"] == 200 and answered["error"] is None


async def test_an_event_whose_time_has_no_offset_is_dead_lettered_and_deliveries_go_on(
    system_factory: SystemFactory,
) -> None:
    """A record whose ``ce_time`` had no offset (a foreign or misconfigured producer) was
    accepted with a naive time; webhooks kept it in memory and every dispatcher pass after
    it failed comparing it with aware ones: no delivery of any subscription left the replica
    until it was restarted. Such a record is now not a CloudEvent of ours: dead-lettered
    ``invalid_envelope`` at once, and the events after it are delivered."""
    system = await system_factory()
    admin = token(system.intake_settings)
    async with AsyncExitStack() as stack:
        hooks = await stack.enter_async_context(receiver())
        webhooks = await serve_webhooks(stack, system)
        await subscribe(webhooks, admin, url=hooks.url, event_types=["*"])
        odd = CloudEvent.new(
            event_type=EventType.COMPLAINT_RECEIVED, source="elsewhere", data=received()
        )
        key, value, headers = to_kafka_record(odd)
        naive = [(n, b"2030-01-01T00:00:00" if n == "ce_time" else raw) for n, raw in headers]
        producer = EventProducer(settings=system.intake_settings)
        try:
            await producer.publish_raw(
                topic=system.topic(Topic.INTAKE), key=key, value=value, headers=naive
            )
        finally:
            await producer.stop()
        later = [await _complaint(system, admin) for _ in range(3)]

        def delivered() -> set[str]:
            subjects = {body["subject"] for body in hooks.bodies()}
            return subjects if set(later) <= subjects else set()

        subjects = await eventually(delivered, timeout_s=30, what="the later events delivered")
        assert odd.subject not in subjects

        [dead] = await eventually(
            lambda: group_dead_letters(
                webhooks.settings, topic=system.topic(Topic.INTAKE), event_id=odd.id
            ),
            what="the record without an offset dead-lettered",
        )
    assert dead.header("dlq_reason") == "invalid_envelope"
    assert "time" in dead.header("dlq_error")
