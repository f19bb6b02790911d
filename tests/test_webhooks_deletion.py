"""Deleting a subscription removes its deliveries, even when a write fails half-way.

A deletion is three writes: the subscription marked deleted, its deliveries removed, the
subscription replaced by the record of its deletion. These tests make the removal of the
deliveries fail once against the real database (the request answers 503) and check that
asking again, or the repair pass when nobody asks, completes the deletion; that a delivery
an event records while its subscription is being deleted is dropped by the dispatcher
instead of claimed forever; and that a DELETE or a keyed creation repeated after the
deletion neither fails nor brings the subscription back.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from prometheus_client.parser import text_string_to_metric_families
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import AutoReconnect

from complaints_shared.envelope import CloudEvent, to_kafka_record
from complaints_shared.events import EventType, Topic
from tests.support.events import received
from tests.support.http import token
from tests.support.waits import NotYet, eventually
from tests.support.webhooks import (
    Isolation,
    Webhooks,
    pending_delivery,
    receiver,
    serve_webhooks,
    subscribe,
)
from webhooks import store

pytestmark = pytest.mark.integration

RECEIVED = EventType.COMPLAINT_RECEIVED.value


async def _left(db: AsyncDatabase, subscription_id: str) -> tuple[int, int]:
    """(subscription documents other than the record of its deletion, deliveries) of
    ``subscription_id`` still stored."""
    return (
        await db[store.SUBSCRIPTIONS].count_documents(
            {"_id": subscription_id, store.REMOVED_AT: None}
        ),
        await db[store.DELIVERIES].count_documents({"subscription_id": subscription_id}),
    )


def _delivery_removal_fails_once(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The next ``delete_many`` on the deliveries drops its connection; the filters asked."""
    delete_many = AsyncCollection.delete_many
    asked: list[dict[str, Any]] = []

    async def fails_once(self: AsyncCollection, filter: dict[str, Any], *args, **kwargs):
        if self.name == store.DELIVERIES:
            asked.append(filter)
            if len(asked) == 1:
                raise AutoReconnect("connection closed (injected)")
        return await delete_many(self, filter, *args, **kwargs)

    monkeypatch.setattr(AsyncCollection, "delete_many", fails_once)
    return asked


async def _paused_with_deliveries(webhooks: Webhooks, headers: dict, url: str) -> str:
    """A paused subscription with a held delivery and one waiting an hour for its retry."""
    subscription_id = (await subscribe(webhooks, headers, url=url))["id"]
    paused = await webhooks.client.patch(
        f"/v1/webhooks/subscriptions/{subscription_id}", json={"status": "paused"}, headers=headers
    )
    assert paused.status_code == 200, paused.text
    retry_at = datetime.now(UTC) + timedelta(hours=1)
    deliveries = [
        pending_delivery(subscription_id, next_attempt_at=None),
        pending_delivery(subscription_id, next_attempt_at=retry_at),
    ]
    db = webhooks.app.state.runtime.db
    assert await store.insert_deliveries(db=db, deliveries=deliveries) == 2
    return subscription_id


async def test_a_deletion_whose_delivery_removal_failed_is_completed_by_asking_again(
    alone: Isolation, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with AsyncExitStack() as stack:
        hooks = await stack.enter_async_context(receiver())
        # No repair pass after the one at start: the second request alone must complete it.
        webhooks = await serve_webhooks(stack, alone, stranded_repair_interval_s=3600)
        admin = token(webhooks.settings)
        db = webhooks.app.state.runtime.db
        subscription_id = await _paused_with_deliveries(webhooks, admin, hooks.url)
        asked = _delivery_removal_fails_once(monkeypatch)
        path = f"/v1/webhooks/subscriptions/{subscription_id}"

        failed = await webhooks.client.delete(path, headers=admin)
        assert failed.status_code == 503, failed.text
        shown = await webhooks.client.get(path, headers=admin)
        listed = await webhooks.client.get("/v1/webhooks/subscriptions", headers=admin)
        again = await webhooks.client.delete(path, headers=admin)
        left = await _left(db, subscription_id)
    assert again.status_code == 204, f"asking again completes the deletion: {again.text}"
    assert left == (0, 0), "neither the subscription nor any of its deliveries is left"
    assert shown.status_code == 404, "a subscription being deleted is gone to readers"
    assert subscription_id not in {item["id"] for item in listed.json()["items"]}
    assert len(asked) == 2
    assert hooks.requests == []


async def test_the_repair_pass_completes_a_deletion_nobody_asks_again(
    alone: Isolation, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with AsyncExitStack() as stack:
        hooks = await stack.enter_async_context(receiver())
        webhooks = await serve_webhooks(stack, alone, stranded_repair_interval_s=0.3)
        admin = token(webhooks.settings)
        db = webhooks.app.state.runtime.db
        subscription_id = await _paused_with_deliveries(webhooks, admin, hooks.url)
        asked = _delivery_removal_fails_once(monkeypatch)

        failed = await webhooks.client.delete(
            f"/v1/webhooks/subscriptions/{subscription_id}", headers=admin
        )
        assert failed.status_code == 503, failed.text

        async def removed() -> bool | NotYet:
            left = await _left(db, subscription_id)
            return left == (0, 0) or NotYet(f"(subscriptions, deliveries) left: {left}")

        await eventually(removed, what="the repair pass completing the deletion")
    assert len(asked) >= 2
    assert hooks.requests == []


async def test_a_delivery_recorded_while_its_subscription_is_deleted_is_dropped(
    alone: Isolation, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with AsyncExitStack() as stack:
        hooks = await stack.enter_async_context(receiver())
        # Short leases: a delivery claimed and left alone would be claimed again within 1.5 s.
        webhooks = await serve_webhooks(
            stack, alone, request_timeout_s=1.0, lease_margin_s=0.5, stranded_repair_interval_s=3600
        )
        admin = token(webhooks.settings)
        db = webhooks.app.state.runtime.db
        subscription_id = (await subscribe(webhooks, admin, url=hooks.url))["id"]
        subscriptions_for_event = store.subscriptions_for_event
        insert_deliveries = store.insert_deliveries
        deleted: list[int] = []
        recorded: list[int] = []

        async def deleted_after_reading(**arguments: Any) -> list[dict[str, Any]]:
            # The race: the handler has read the subscription, then an admin deletes it.
            found = await subscriptions_for_event(**arguments)
            response = await webhooks.client.delete(
                f"/v1/webhooks/subscriptions/{subscription_id}", headers=admin
            )
            deleted.append(response.status_code)
            return found

        async def spied_insert(**arguments: Any) -> int:
            recorded.append(await insert_deliveries(**arguments))
            return recorded[-1]

        monkeypatch.setattr(store, "subscriptions_for_event", deleted_after_reading)
        monkeypatch.setattr(store, "insert_deliveries", spied_insert)
        event = CloudEvent.new(
            event_type=EventType.COMPLAINT_RECEIVED, source="intake", data=received()
        )
        producer = AIOKafkaProducer(bootstrap_servers=webhooks.settings.kafka_bootstrap_servers)
        stack.push_async_callback(producer.stop)  # even when its start fails half-way
        await producer.start()
        key, value, headers = to_kafka_record(event)
        topic = webhooks.settings.topic(Topic.INTAKE.value)
        await producer.send_and_wait(topic, value, key=key, headers=headers)
        await eventually(
            lambda: asyncio.sleep(0, recorded == [1]), timeout_s=30, what="the delivery recorded"
        )

        async def dropped() -> bool | NotYet:
            left = await _left(db, subscription_id)
            return left == (0, 0) or NotYet(f"(subscriptions, deliveries) left: {left}")

        await eventually(dropped, what="the deleted subscription's delivery dropped")
    assert deleted == [204]
    assert hooks.requests == []


async def test_a_deletion_repeated_after_its_answer_is_answered_again_and_stays_made(
    alone: Isolation,
) -> None:
    """A gateway loses the 204 and the client sends the DELETE again: it used to be a 404
    for a deletion that was made, and the creation's own retry under its Idempotency-Key
    (an integrator replaying its log) created the deleted subscription again."""
    async with AsyncExitStack() as stack:
        hooks = await stack.enter_async_context(receiver())
        webhooks = await serve_webhooks(stack, alone)
        admin = token(webhooks.settings)
        keyed = {**admin, "Idempotency-Key": "crm-subscription-7"}
        body = {"target_url": hooks.url, "event_types": [RECEIVED]}
        db = webhooks.app.state.runtime.db
        created = await webhooks.client.post("/v1/webhooks/subscriptions", json=body, headers=keyed)
        assert created.status_code == 201, created.text
        subscription_id = created.json()["id"]
        path = f"/v1/webhooks/subscriptions/{subscription_id}"
        other_branch = token(webhooks.settings, branches=["HZ"], subject="hz-admin")

        first = await webhooks.client.delete(path, headers={"If-Match": '"1"', **admin})
        repeated = await webhooks.client.delete(path, headers={"If-Match": '"1"', **admin})
        unconditional = await webhooks.client.delete(path, headers=admin)
        foreign = await webhooks.client.delete(path, headers=other_branch)
        missing = await webhooks.client.delete("/v1/webhooks/subscriptions/whs_none", headers=admin)
        created_again = await webhooks.client.post(
            "/v1/webhooks/subscriptions", json=body, headers=keyed
        )
        shown = await webhooks.client.get(path, headers=admin)
        listed = await webhooks.client.get("/v1/webhooks/subscriptions", headers=admin)
        record = await db[store.SUBSCRIPTIONS].find_one({"_id": subscription_id})
        left = await _left(db, subscription_id)
    assert [first.status_code, repeated.status_code, unconditional.status_code] == [204] * 3, (
        repeated.text
    )
    assert foreign.status_code == 404, "another branch's admin learns nothing of it"
    assert missing.status_code == 404, "a subscription that never was is still a 404"
    assert created_again.status_code == 409, created_again.text
    assert created_again.json()["type"].endswith("idempotency-key-conflict")
    assert shown.status_code == 404
    assert listed.json()["items"] == []
    assert left == (0, 0)
    # The record of the deletion keeps the scope, nothing to send with or to.
    assert record is not None and "target_url" not in record and "signing_secrets" not in record
    assert record[store.REMOVED_RECORD_EXPIRES] > record[store.REMOVED_AT]
    assert "deleted_at" not in record, "the repair pass's index keeps deletions not completed"
    assert hooks.requests == []


async def _series_of(webhooks: Webhooks, subscription_id: str) -> dict[str, float]:
    """The subscription's samples on /metrics: name (``|`` and its other label) → value."""
    text = (await webhooks.client.get("/metrics")).text
    return {
        "|".join([sample.name, *(v for k, v in sample.labels.items() if k != "subscription")]): (
            sample.value
        )
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.labels.get("subscription") == subscription_id
    }


async def test_a_deleted_subscriptions_metric_series_are_removed_and_the_others_kept(
    alone: Isolation,
) -> None:
    """Each subscription has series of its own (attempts, finished deliveries, backlog);
    the backlog job's set of them only grew, and a deleted subscription's series were kept
    for the life of the process, each deletion adding to what every scrape carries."""
    async with AsyncExitStack() as stack:
        hooks = await stack.enter_async_context(receiver())
        webhooks = await serve_webhooks(stack, alone, backlog_refresh_s=0.1)
        admin = token(webhooks.settings)
        db = webhooks.app.state.runtime.db
        deleted, kept = [(await subscribe(webhooks, admin, url=hooks.url))["id"] for _ in "ab"]
        for subscription_id in (deleted, kept):
            path = f"/v1/webhooks/subscriptions/{subscription_id}"
            assert (await webhooks.client.post(f"{path}/ping", headers=admin)).status_code == 202
            # A retry waiting for its time: a backlog of one.
            later = datetime.now(UTC) + timedelta(hours=1)
            waiting = pending_delivery(subscription_id, next_attempt_at=later)
            assert await store.insert_deliveries(db=db, deliveries=[waiting]) == 1

        async def every_series_shown() -> bool | NotYet:
            shown = {name: await _series_of(webhooks, name) for name in (deleted, kept)}
            complete = all(
                series.get("complaints_webhook_backlog") == 1
                and series.get("complaints_webhook_attempts_total|delivered") == 1
                and series.get("complaints_webhook_deliveries_total|delivered") == 1
                for series in shown.values()
            )
            return complete or NotYet(str(shown))

        await eventually(every_series_shown, what="both subscriptions' series")
        removed = await webhooks.client.delete(
            f"/v1/webhooks/subscriptions/{deleted}", headers=admin
        )
        assert removed.status_code == 204, removed.text

        async def deleted_series_gone() -> bool | NotYet:
            left = await _series_of(webhooks, deleted)
            return not left or NotYet(str(left))

        await eventually(deleted_series_gone, what="the deleted subscription's series removed")
        others = await _series_of(webhooks, kept)
    assert others.get("complaints_webhook_backlog") == 1, others
    assert others.get("complaints_webhook_attempts_total|delivered") == 1, others
