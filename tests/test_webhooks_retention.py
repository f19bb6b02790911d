"""Finished deliveries are removed after DELIVERY_RETENTION_DAYS; pending and held ones never.

Each delivery holds the event it sends (customer name, phone and e-mail included); they used
to be kept forever once delivered or failed. The write that finishes a delivery now stamps
``finished_at``, and a TTL index on it, partial on the finished statuses, removes them. The
test runs against the real database's TTL sweeper (SecantusDB's runs once a minute).
"""

from __future__ import annotations

from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta

import pytest
from pymongo import AsyncMongoClient

from complaints_shared.mongo import STORED_CODEC
from tests.support.http import token
from tests.support.waits import NotYet, eventually
from tests.support.webhooks import (
    Isolation,
    Webhooks,
    pending_delivery,
    receiver,
    serve_webhooks,
    subscribe,
    webhooks_database,
)
from webhooks import store

pytestmark = pytest.mark.integration

# A minute or two: the sweeper's interval and one pass.
SWEEP_TIMEOUT_S = 150.0


async def _pinged(webhooks: Webhooks, admin: dict, subscription_id: str, status: str) -> str:
    """A ping of the subscription once it is ``status``; its delivery id."""
    path = f"/v1/webhooks/subscriptions/{subscription_id}"
    sent = await webhooks.client.post(f"{path}/ping", headers=admin)
    assert sent.status_code == 202, sent.text
    delivery_path = f"{path}/deliveries/{sent.json()['id']}"

    async def finished() -> bool | NotYet:
        shown = (await webhooks.client.get(delivery_path, headers=admin)).json()
        return shown["status"] == status or NotYet(str(shown))

    await eventually(finished, what=f"the ping {status}")
    return sent.json()["id"]


async def test_finished_deliveries_are_removed_after_the_retention_and_pending_ones_kept(
    alone: Isolation,
) -> None:
    day_ago = datetime.now(UTC) - timedelta(days=1)
    # Stored before finished deliveries carried their finishing time.
    legacy = {**pending_delivery("whs_legacy", next_attempt_at=None), "status": "delivered"}
    # Pending ones carrying a stale finishing time: the index covers finished ones only.
    held = {**pending_delivery("whs_held", next_attempt_at=None), "finished_at": day_ago}
    waiting = {
        **pending_delivery("whs_held", next_attempt_at=day_ago + timedelta(days=2)),
        "finished_at": day_ago,
    }
    mongo = AsyncMongoClient(alone.infra.mongodb_uri)
    try:
        db = mongo.get_database(webhooks_database(alone), codec_options=STORED_CODEC)
        await store.insert_deliveries(db=db, deliveries=[legacy])
        async with AsyncExitStack() as stack:
            healthy = await stack.enter_async_context(receiver())
            broken = await stack.enter_async_context(receiver(lambda n: 500))
            webhooks = await serve_webhooks(
                stack, alone, delivery_retention_days=1 / 86_400, stranded_repair_interval_s=3600
            )
            admin = token(webhooks.settings)
            assert await store.insert_deliveries(db=db, deliveries=[held, waiting]) == 2
            delivered_to = (await subscribe(webhooks, admin, url=healthy.url))["id"]
            failed_at = (await subscribe(webhooks, admin, url=broken.url))["id"]
            delivered = await _pinged(webhooks, admin, delivered_to, "delivered")
            failed = await _pinged(webhooks, admin, failed_at, "failed")
            stamped = await db[store.DELIVERIES].find_one({"_id": failed})
            assert stamped is not None and stamped["finished_at"] > day_ago

            async def finished_ones_removed() -> bool | NotYet:
                left = await db[store.DELIVERIES].distinct("_id")
                gone = {legacy["_id"], delivered, failed}.isdisjoint(left)
                return gone or NotYet(f"deliveries left: {left}")

            await eventually(
                finished_ones_removed,
                timeout_s=SWEEP_TIMEOUT_S,
                interval_s=1.0,
                what="the finished deliveries removed by the TTL index",
            )
            kept = set(await db[store.DELIVERIES].distinct("_id"))
            path = f"/v1/webhooks/subscriptions/{delivered_to}/deliveries/{delivered}"
            shown = await webhooks.client.get(path, headers=admin)
            again = await webhooks.client.post(f"{path}/redeliver", headers=admin)
            keyed = {**admin, "Idempotency-Key": "replay-pruned"}
            again_keyed = await webhooks.client.post(f"{path}/redeliver", headers=keyed)
    finally:
        await mongo.close()
    assert kept == {held["_id"], waiting["_id"]}, "pending and held deliveries are kept"
    assert [shown.status_code, again.status_code, again_keyed.status_code] == [404] * 3
    assert again.headers["content-type"] == "application/problem+json"
