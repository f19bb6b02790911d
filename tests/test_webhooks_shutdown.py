"""A webhooks replica shutting down hands its unfinished attempts over at once.

The service's shutdown grace (``SHUTDOWN_GRACE_S``) is shorter than an attempt may take
(the request timeout). An attempt still in flight when the grace is nearly over is cut off:
nothing is recorded of it, its lease is cleared, and the next start (or another replica)
sends it again at once instead of after the lease. Real Kafka, MongoDB and HTTP.
"""

from __future__ import annotations

import asyncio
import time
from contextlib import AsyncExitStack
from datetime import UTC, datetime

import pytest
from pymongo import AsyncMongoClient

import complaints_shared.runtime
from complaints_shared.mongo import STORED_CODEC
from tests.support.http import token
from tests.support.waits import eventually
from tests.support.webhooks import (
    Isolation,
    pending_delivery,
    receiver,
    serve_webhooks,
    subscribe,
    webhooks_database,
)
from webhooks import store

pytestmark = pytest.mark.integration

GRACE_S = 3.0
# Far longer than the grace: the first attempt is still waiting when the service stops.
REQUEST_TIMEOUT_S = 60.0


async def test_an_attempt_cut_off_by_shutdown_records_nothing_and_is_sent_again_at_the_next_start(
    alone: Isolation, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(complaints_shared.runtime, "SHUTDOWN_GRACE_S", GRACE_S)
    answer_first = asyncio.Event()

    async def first_hangs(n: int) -> int:
        if n == 0:
            await answer_first.wait()
        return 200

    mongo = AsyncMongoClient(alone.infra.mongodb_uri, tz_aware=True)
    db = mongo.get_database(webhooks_database(alone), codec_options=STORED_CODEC)
    try:
        async with AsyncExitStack() as stack:
            hooks = await stack.enter_async_context(receiver(first_hangs))
            stack.callback(answer_first.set)  # lets the receiver stop
            async with AsyncExitStack() as service:
                webhooks = await serve_webhooks(
                    service,
                    alone,
                    request_timeout_s=REQUEST_TIMEOUT_S,
                    stranded_repair_interval_s=3600,
                )
                runtime = webhooks.app.state.runtime
                admin = token(webhooks.settings)
                subscription_id = (await subscribe(webhooks, admin, url=hooks.url))["id"]
                delivery = pending_delivery(subscription_id, next_attempt_at=datetime.now(UTC))
                assert await store.insert_deliveries(db=db, deliveries=[delivery]) == 1
                await eventually(
                    lambda: asyncio.sleep(0, len(hooks.requests) == 1), what="the attempt sent"
                )
                stopping = time.monotonic()
            stopped_in_s = time.monotonic() - stopping
            after_stop = await db[store.DELIVERIES].find_one({"_id": delivery["_id"]})
            [dispatching] = [task for task in runtime.tasks if task.get_name() == "run_dispatcher"]
            assert after_stop is not None
            assert "lease_owner" not in after_stop, f"lease released: {after_stop}"
            assert "lease_until" not in after_stop
            assert not dispatching.cancelled(), "the dispatcher returned within the grace"
            assert stopped_in_s < GRACE_S + 1.0
            assert after_stop["status"] == "pending"
            assert after_stop["attempts"] == 0, "nothing recorded of the attempt cut off"
            assert after_stop["attempt_log"] == []
            assert after_stop["next_attempt_at"] <= datetime.now(UTC), "due at once"

            async with AsyncExitStack() as restarted:
                await serve_webhooks(restarted, alone, stranded_repair_interval_s=3600)
                started = time.monotonic()
                await eventually(
                    lambda: asyncio.sleep(0, delivery["_id"] in hooks.delivered_ids()),
                    what="the attempt cut off sent again by the next start",
                )
                sent_again_in_s = time.monotonic() - started
    finally:
        await mongo.close()

    # The lease (request timeout + margin, 90 s) would have held it back this long.
    assert sent_again_in_s < 10.0
    assert [request.webhook_id for request in hooks.requests] == [delivery["_id"]] * 2
