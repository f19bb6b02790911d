"""No pending delivery is left without a timer under an active subscription.

A delivery held while its subscription is paused or disabled has no ``next_attempt_at``;
only a re-activation makes it due again. These tests drive, against the real database
and broker, the ways one could be stranded: a hold racing a re-activation, a release
that fails after the status was written, a 410 whose disabling fails, and the repair
pass that heals whatever a crash between two writes still leaves; and deliveries never
recorded because the database left their inserts unacknowledged.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import AutoReconnect, BulkWriteError, OperationFailure, PyMongoError

from complaints_shared.failures import is_transient
from complaints_shared.mongo import STORED_CODEC
from tests.support.faults import FailsFirst
from tests.support.http import token
from tests.support.waits import eventually
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
from webhooks.scheduler import NOTHING_RECORDED
from webhooks.settings import WebhooksSettings
from webhooks.signing import new_secret

pytestmark = pytest.mark.integration

RETENTION_S = WebhooksSettings().delivery_retention_s


async def _insert(db: AsyncDatabase, *deliveries: dict[str, Any]) -> list[str]:
    assert await store.insert_deliveries(db=db, deliveries=list(deliveries)) == len(deliveries)
    return [delivery["_id"] for delivery in deliveries]


async def _stored(db: AsyncDatabase, delivery_id: str) -> dict[str, Any]:
    found = await db[store.DELIVERIES].find_one({"_id": delivery_id})
    assert found is not None, delivery_id
    return found


async def _status(webhooks: Webhooks, headers: dict, subscription_id: str) -> str:
    path = f"/v1/webhooks/subscriptions/{subscription_id}"
    return (await webhooks.client.get(path, headers=headers)).json()["status"]


async def _set_status(webhooks: Webhooks, headers: dict, subscription_id: str, status: str):
    return await webhooks.client.patch(
        f"/v1/webhooks/subscriptions/{subscription_id}", json={"status": status}, headers=headers
    )


async def test_a_hold_racing_a_reactivation_leaves_the_delivery_due_and_its_chain_delivered(
    alone: Isolation,
) -> None:
    mongo = AsyncMongoClient(alone.infra.mongodb_uri, tz_aware=True)
    try:
        db = mongo.get_database(webhooks_database(alone), codec_options=STORED_CODEC)
        await store.ensure_indexes(db=db, finished_delivery_kept_s=RETENTION_S)
        async with AsyncExitStack() as stack:
            hooks = await stack.enter_async_context(receiver())
            now = datetime.now(UTC)
            subscription_id = store.new_subscription_id()
            await store.insert_subscription(
                db=db,
                document={
                    "_id": subscription_id,
                    "org": "demo",
                    "branch": None,
                    "target_url": hooks.url,
                    "event_types": ["*"],
                    "description": None,
                    "status": "paused",
                    "status_reason": "paused by tester",
                    "signing_secrets": [
                        {"secret": new_secret(), "created_at": now, "expires_at": None}
                    ],
                    "failure_streak": 0,
                    "created_at": now,
                    "updated_at": now,
                },
            )
            first, later = await _insert(
                db,
                pending_delivery(
                    subscription_id, chain="cmp_1", order_key="1", next_attempt_at=now
                ),
                pending_delivery(
                    subscription_id, chain="cmp_1", order_key="2", next_attempt_at=None
                ),
            )
            # The race, step by step: a dispatcher claims the first delivery and reads the
            # subscription as paused; an admin re-activates it; then the dispatcher holds.
            [claimable] = await store.claimable_ids(
                db=db,
                subscription_id=subscription_id,
                now=now,
                recorded_through=NOTHING_RECORDED,
                limit=10,
            )
            claimed = await store.claim(
                db=db,
                delivery_id=claimable,
                subscription_id=subscription_id,
                owner="dispatcher-a",
                now=now,
                lease_s=60,
                recorded_through=NOTHING_RECORDED,
            )
            assert claimed is not None and claimed["_id"] == first
            assert await store.update_subscription(
                db=db, scope={}, subscription_id=subscription_id, changes={"status": "active"}
            )
            await store.release_held(
                db=db, subscription_id=subscription_id, now=datetime.now(UTC), resumed_at=None
            )
            await store.hold_while_off(
                db=db, delivery=claimed, owner="dispatcher-a", now=datetime.now(UTC)
            )
            after_race = await _stored(db, first)
            assert after_race["status"] == "pending"
            assert after_race.get("next_attempt_at") is not None, "due, not stranded"
            assert "lease_owner" not in after_race

            await serve_webhooks(stack, alone)
            await eventually(
                lambda: asyncio.sleep(0, len(hooks.delivered_ids()) == 2),
                what="the delivery and the rest of its chain delivered",
            )
    finally:
        await mongo.close()
    assert [request.webhook_id for request in hooks.requests] == [first, later]


async def test_asking_again_to_activate_releases_what_a_failed_release_left_held(
    alone: Isolation, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with AsyncExitStack() as stack:
        hooks = await stack.enter_async_context(receiver())
        # No repair pass after the one at start: the second request alone must release.
        webhooks = await serve_webhooks(stack, alone, stranded_repair_interval_s=3600)
        admin = token(webhooks.settings)
        db = webhooks.app.state.runtime.db
        subscription_id = (await subscribe(webhooks, admin, url=hooks.url))["id"]
        assert (await _set_status(webhooks, admin, subscription_id, "paused")).status_code == 200
        retry_at = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
        held, waiting = await _insert(
            db,
            pending_delivery(subscription_id, chain="cmp_1", order_key="1", next_attempt_at=None),
            pending_delivery(
                subscription_id, chain="cmp_2", order_key="1", next_attempt_at=retry_at
            ),
        )
        release_held = FailsFirst(store.release_held)
        monkeypatch.setattr(store, "release_held", release_held)
        failed = await _set_status(webhooks, admin, subscription_id, "active")
        assert failed.status_code == 503, failed.text
        assert await _status(webhooks, admin, subscription_id) == "active"
        assert "next_attempt_at" not in await _stored(db, held), "the set-up: still held"

        again = await _set_status(webhooks, admin, subscription_id, "active")
        assert again.status_code == 200, again.text
        await eventually(lambda: asyncio.sleep(0, held in hooks.delivered_ids()), what="release")
        waiting_after = await _stored(db, waiting)
    assert len(release_held.calls) == 2
    assert waiting_after["next_attempt_at"] == retry_at, "a retry keeps its backoff"
    assert [request.webhook_id for request in hooks.requests] == [held]


async def test_a_released_delivery_starts_its_retries_afresh_and_keeps_its_chains_order(
    alone: Isolation,
) -> None:
    """A delivery held by an automatic pause had spent its attempts on the outage (seven of
    eight by default): one 503 of a receiver still warming up after the resume failed it
    for good, and its complaint's later event went out without it."""
    async with AsyncExitStack() as stack:
        hooks = await stack.enter_async_context(receiver(lambda n: 503 if n == 0 else 200))
        webhooks = await serve_webhooks(stack, alone)
        admin = token(webhooks.settings)
        db = webhooks.app.state.runtime.db
        subscription_id = (await subscribe(webhooks, admin, url=hooks.url))["id"]
        assert (await _set_status(webhooks, admin, subscription_id, "paused")).status_code == 200
        spent = pending_delivery(
            subscription_id, chain="cmp_1", order_key="1", next_attempt_at=None
        )
        spent["retry_index"] = len(webhooks.settings.retry_schedule_s)  # its last attempt left
        later = pending_delivery(
            subscription_id, chain="cmp_1", order_key="2", next_attempt_at=None
        )
        first, second = await _insert(db, spent, later)

        assert (await _set_status(webhooks, admin, subscription_id, "active")).status_code == 200
        await eventually(
            lambda: asyncio.sleep(0, {first, second} <= hooks.delivered_ids()),
            what="both delivered after the resume",
        )
    assert [(r.webhook_id, r.status) for r in hooks.requests] == [
        (first, 503),
        (first, 200),
        (second, 200),
    ]


async def test_a_410_whose_disabling_fails_is_sent_again_until_the_subscription_is_disabled(
    alone: Isolation, monkeypatch: pytest.MonkeyPatch
) -> None:
    answers = {"status": 410}
    async with AsyncExitStack() as stack:
        hooks = await stack.enter_async_context(receiver(lambda n: answers["status"]))
        webhooks = await serve_webhooks(
            stack,
            alone,
            request_timeout_s=1.0,
            lease_margin_s=0.5,
            stranded_repair_interval_s=3600,
        )
        admin = token(webhooks.settings)
        db = webhooks.app.state.runtime.db
        subscription_id = (await subscribe(webhooks, admin, url=hooks.url))["id"]
        disable = FailsFirst(store.disable)
        monkeypatch.setattr(store, "disable", disable)
        [delivery_id] = await _insert(
            db,
            pending_delivery(
                subscription_id, chain="cmp_1", order_key="1", next_attempt_at=datetime.now(UTC)
            ),
        )

        async def disabled() -> bool:
            return await _status(webhooks, admin, subscription_id) == "disabled"

        await eventually(disabled, what="the subscription disabled after the 410 sent again")

        async def held() -> dict[str, Any] | None:
            stored = await _stored(db, delivery_id)
            return stored if "next_attempt_at" not in stored else None

        stored = await eventually(held, what="the delivery held for a re-activation")
        assert stored["status"] == "pending" and stored["last_response_code"] == 410
        assert "lease_owner" not in stored
        assert [request.status for request in hooks.requests] == [410, 410]

        answers["status"] = 200
        enabled = await _set_status(webhooks, admin, subscription_id, "active")
        assert enabled.status_code == 200, enabled.text
        await eventually(
            lambda: asyncio.sleep(0, delivery_id in hooks.delivered_ids()), what="replayed"
        )
    assert len(disable.calls) == 2


async def test_a_ping_answered_410_fails_and_leaves_the_subscription_active(
    alone: Isolation,
) -> None:
    async with AsyncExitStack() as stack:
        hooks = await stack.enter_async_context(receiver(lambda n: 410))
        webhooks = await serve_webhooks(stack, alone)
        admin = token(webhooks.settings)
        subscription_id = (await subscribe(webhooks, admin, url=hooks.url))["id"]
        path = f"/v1/webhooks/subscriptions/{subscription_id}"
        assert (await webhooks.client.post(f"{path}/ping", headers=admin)).status_code == 202

        async def finished() -> dict[str, Any] | None:
            response = await webhooks.client.get(f"{path}/deliveries", headers=admin)
            [entry] = response.json()["items"]
            return entry if entry["status"] != "pending" else None

        entry = await eventually(finished, what="the ping's outcome recorded")
        status = await _status(webhooks, admin, subscription_id)
    assert entry["status"] == "failed" and entry["last_response_code"] == 410
    assert entry["next_attempt_at"] is None
    assert status == "active", "a test ping says nothing about the subscription"


async def test_the_repair_pass_makes_stranded_deliveries_due_and_leaves_held_ones_held(
    alone: Isolation,
) -> None:
    async with AsyncExitStack() as stack:
        hooks = await stack.enter_async_context(receiver())
        webhooks = await serve_webhooks(stack, alone, stranded_repair_interval_s=0.3)
        admin = token(webhooks.settings)
        db = webhooks.app.state.runtime.db
        active_id = (await subscribe(webhooks, admin, url=hooks.url))["id"]
        paused_id = (await subscribe(webhooks, admin, url=hooks.url))["id"]
        assert (await _set_status(webhooks, admin, paused_id, "paused")).status_code == 200
        retry_at = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
        # What a crash between two writes leaves: pending, no timer, subscription active.
        stranded, held, waiting = await _insert(
            db,
            pending_delivery(active_id, chain="cmp_1", order_key="1", next_attempt_at=None),
            pending_delivery(paused_id, chain="cmp_2", order_key="1", next_attempt_at=None),
            pending_delivery(active_id, chain="cmp_3", order_key="1", next_attempt_at=retry_at),
        )
        await eventually(
            lambda: asyncio.sleep(0, stranded in hooks.delivered_ids()),
            what="the stranded delivery made due by the background pass and delivered",
        )
        # The pass that released it went through every active subscription's deliveries.
        after = {delivery_id: await _stored(db, delivery_id) for delivery_id in (held, waiting)}
    assert "next_attempt_at" not in after[held], "a paused subscription's delivery stays held"
    assert after[waiting]["next_attempt_at"] == retry_at, "a retry keeps its backoff"
    assert [request.webhook_id for request in hooks.requests] == [stranded]


async def test_a_subscription_the_repair_pass_fails_on_does_not_stop_the_others(
    alone: Isolation, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with AsyncExitStack() as stack:
        hooks = await stack.enter_async_context(receiver())
        webhooks = await serve_webhooks(stack, alone, stranded_repair_interval_s=3600)
        admin = token(webhooks.settings)
        runtime = webhooks.app.state.runtime
        broken_id = (await subscribe(webhooks, admin, url=hooks.url))["id"]
        healthy_id = (await subscribe(webhooks, admin, url=hooks.url))["id"]
        [stranded] = await _insert(
            runtime.db,
            pending_delivery(healthy_id, chain="cmp_1", order_key="1", next_attempt_at=None),
        )
        active_subscription_ids = store.active_subscription_ids
        make_held_due = store.make_held_due

        async def broken_first(**arguments: Any) -> list[str]:
            found = await active_subscription_ids(**arguments)
            assert set(found) == {broken_id, healthy_id}
            return [broken_id, healthy_id]

        async def broken_for_one(**arguments: Any) -> int:
            if arguments["subscription_id"] == broken_id:
                raise OperationFailure("injected")
            return await make_held_due(**arguments)

        monkeypatch.setattr(store, "active_subscription_ids", broken_first)
        monkeypatch.setattr(store, "make_held_due", broken_for_one)
        repaired = await webhooks.app.state.dispatcher.repair_stranded(runtime)
        await eventually(
            lambda: asyncio.sleep(0, stranded in hooks.delivered_ids()), what="the healthy one"
        )
    assert repaired == 1


async def test_deliveries_the_database_left_unacknowledged_are_not_taken_for_recorded(
    alone: Isolation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A replica set failing over can leave inserts without their write concern, then roll
    them back. Recording an event's deliveries took that for success when the only write
    errors were duplicates (a redelivery's): the consumer committed the event and the new
    deliveries were never recorded, nor sent. Now it raises, transient: the consumer
    handles the event again, and the insert then records what is missing."""
    mongo = AsyncMongoClient(alone.infra.mongodb_uri, tz_aware=True)
    try:
        db = mongo.get_database(webhooks_database(alone), codec_options=STORED_CODEC)
        await store.ensure_indexes(db=db, finished_delivery_kept_s=RETENTION_S)
        subscription_id = store.new_subscription_id()
        now = datetime.now(UTC)
        recorded_before = pending_delivery(subscription_id, next_attempt_at=now)
        missing = pending_delivery(subscription_id, next_attempt_at=now)
        await _insert(db, recorded_before)
        # The server's answer: the first a duplicate, the second inserted without its write
        # concern (and, the test says, rolled back: nothing is written).
        answer = {
            "writeErrors": [{"index": 0, "code": 11000, "errmsg": "E11000 duplicate key"}],
            "writeConcernErrors": [{"code": 64, "errmsg": "waiting for replication timed out"}],
            "nInserted": 1,
        }

        async def unacknowledged(self: AsyncCollection, *arguments: Any, **keywords: Any):
            raise BulkWriteError(answer)

        for method in ("insert_many", "bulk_write"):
            monkeypatch.setattr(AsyncCollection, method, unacknowledged)
        with pytest.raises(PyMongoError) as raised:
            await store.insert_deliveries(db=db, deliveries=[recorded_before, missing])
        assert is_transient(raised.value), raised.value
        monkeypatch.undo()
        assert await store.insert_deliveries(db=db, deliveries=[recorded_before, missing]) == 1
        assert await _stored(db, missing["_id"])
    finally:
        await mongo.close()


async def test_a_retry_waiting_at_the_resume_starts_its_attempts_afresh_too(
    alone: Isolation,
) -> None:
    """Only the held deliveries started afresh at a resume: one whose retry timer fell after
    it kept the attempts the outage had spent, and a single 503 of a receiver still warming
    up failed it for good while its complaint's later event went out without it."""
    async with AsyncExitStack() as stack:
        hooks = await stack.enter_async_context(receiver(lambda n: 503 if n == 0 else 200))
        webhooks = await serve_webhooks(stack, alone, retry_schedule_s=[0.2] * 7)
        admin = token(webhooks.settings)
        db = webhooks.app.state.runtime.db
        subscription_id = (await subscribe(webhooks, admin, url=hooks.url))["id"]
        assert (await _set_status(webhooks, admin, subscription_id, "paused")).status_code == 200
        retry_at = datetime.now(UTC) + timedelta(hours=1)
        waiting = pending_delivery(
            subscription_id, chain="cmp_1", order_key="1", next_attempt_at=retry_at
        )
        last = len(webhooks.settings.retry_schedule_s)
        waiting["retry_index"] = last  # its last attempt left
        later = pending_delivery(
            subscription_id, chain="cmp_1", order_key="2", next_attempt_at=None
        )
        first, second = await _insert(db, waiting, later)

        assert (await _set_status(webhooks, admin, subscription_id, "active")).status_code == 200
        released = await _stored(db, first)
        assert released["retry_index"] == 0
        assert abs(released["next_attempt_at"] - retry_at) < timedelta(milliseconds=1)
        # Tried since the resume, then asked again once active (a client's routine check):
        # its schedule is not started afresh again.
        await db[store.DELIVERIES].update_one(
            {"_id": first}, {"$set": {"retry_index": 3, "last_attempt_at": datetime.now(UTC)}}
        )
        assert (await _set_status(webhooks, admin, subscription_id, "active")).status_code == 200
        assert (await _stored(db, first))["retry_index"] == 3
        await db[store.DELIVERIES].update_one(
            {"_id": first}, {"$set": {"retry_index": last, "next_attempt_at": retry_at}}
        )
        await _set_status(webhooks, admin, subscription_id, "paused")
        assert (await _set_status(webhooks, admin, subscription_id, "active")).status_code == 200
        # The backoff it kept runs out (its hour, moved here to now).
        await db[store.DELIVERIES].update_one(
            {"_id": first}, {"$set": {"next_attempt_at": datetime.now(UTC)}}
        )
        await eventually(
            lambda: asyncio.sleep(0, {first, second} <= hooks.delivered_ids()),
            what="both delivered after the resume",
        )
    assert [(r.webhook_id, r.status) for r in hooks.requests] == [
        (first, 503),
        (first, 200),
        (second, 200),
    ]


async def _two_due_of_one_chain(db: AsyncDatabase, subscription_id: str) -> list[str]:
    """Two deliveries of one complaint (``cmp_1``), due now, in order; their ids."""
    now = datetime.now(UTC)
    return await _insert(
        db,
        pending_delivery(subscription_id, chain="cmp_1", order_key="1", next_attempt_at=now),
        pending_delivery(subscription_id, chain="cmp_1", order_key="2", next_attempt_at=now),
    )


async def test_a_delivery_that_spent_its_attempts_on_an_outage_pauses_its_subscription(
    alone: Isolation,
) -> None:
    """A quiet subscription (fewer failures than the auto-pause's ten) whose receiver was
    down longer than a delivery's retries: the delivery was failed for good, and its
    complaint's next event went out without it once the receiver answered. Now the
    subscription is paused, both wait, and the resume sends them in order."""
    answers = {"status": 503}
    async with AsyncExitStack() as stack:
        hooks = await stack.enter_async_context(receiver(lambda n: answers["status"]))
        webhooks = await serve_webhooks(stack, alone, retry_schedule_s=[0.2] * 3)
        admin = token(webhooks.settings)
        db = webhooks.app.state.runtime.db
        subscription_id = (await subscribe(webhooks, admin, url=hooks.url))["id"]
        first, second = await _two_due_of_one_chain(db, subscription_id)

        async def held() -> dict | None:
            stored = await _stored(db, first)
            return stored if stored.get("next_attempt_at") is None else None

        spent = await eventually(held, what="the delivery held")
        shown = await webhooks.client.get(
            f"/v1/webhooks/subscriptions/{subscription_id}", headers=admin
        )
        assert shown.json()["status"] == "paused"
        assert "failed all its 4 attempts" in shown.json()["status_reason"]
        assert (spent["status"], spent["attempts"]) == ("pending", 4)
        assert (await _stored(db, second))["status"] == "pending"
        assert [r.webhook_id for r in hooks.requests] == [first] * 4

        answers["status"] = 200
        assert (await _set_status(webhooks, admin, subscription_id, "active")).status_code == 200
        await eventually(
            lambda: asyncio.sleep(0, {first, second} <= hooks.delivered_ids()),
            what="both delivered after the resume",
        )
    assert [(r.webhook_id, r.status) for r in hooks.requests][4:] == [(first, 200), (second, 200)]


async def test_an_event_the_receiver_refuses_on_a_quiet_subscription_fails_and_the_chain_goes_on(
    alone: Isolation,
) -> None:
    """A 4xx other than 408 and 429 is the receiver refusing this one event, not being away:
    the delivery is failed after its attempts, as before, and its subject's next event is
    sent; the subscription stays active (paused, it would be held again at every resume)."""
    async with AsyncExitStack() as stack:
        hooks = await stack.enter_async_context(receiver(lambda n: 422 if n < 4 else 200))
        webhooks = await serve_webhooks(stack, alone, retry_schedule_s=[0.2] * 3)
        admin = token(webhooks.settings)
        db = webhooks.app.state.runtime.db
        subscription_id = (await subscribe(webhooks, admin, url=hooks.url))["id"]
        first, second = await _two_due_of_one_chain(db, subscription_id)
        await eventually(
            lambda: asyncio.sleep(0, second in hooks.delivered_ids()), what="the next event sent"
        )
        refused = await _stored(db, first)
        assert (refused["status"], refused["attempts"]) == ("failed", 4)
        assert await _status(webhooks, admin, subscription_id) == "active"


async def test_a_delivery_whose_receiver_answered_others_meanwhile_fails_though_its_log_kept_less(
    alone: Isolation,
) -> None:
    """A receiver that chokes on one event (500) while it takes the others is not away: the
    delivery fails after its attempts and its chain goes on. With ``ATTEMPTS_KEPT`` below
    the schedule's length the check read the schedule's first attempt from the log, which
    had dropped it, took a later one for it, missed the success in between and paused the
    whole subscription."""
    choked: set[str] = set()
    async with AsyncExitStack() as stack:
        hooks = await stack.enter_async_context(
            receiver(lambda n: 500 if hooks.requests[n].webhook_id in choked else 200)
        )
        webhooks = await serve_webhooks(
            stack,
            alone,
            retry_schedule_s=[5.0, 0.2, 0.2],
            attempts_kept=1,
            due_discovery_interval_s=0.2,
        )
        admin = token(webhooks.settings)
        db = webhooks.app.state.runtime.db
        subscription_id = (await subscribe(webhooks, admin, url=hooks.url))["id"]
        first, after_it = await _two_due_of_one_chain(db, subscription_id)
        choked.add(first)
        await eventually(
            lambda: asyncio.sleep(0, any(r.webhook_id == first for r in hooks.requests)),
            what="the first attempt refused",
        )
        # While the first waits for its retry, the receiver takes another complaint's event.
        [other] = await _insert(
            db,
            pending_delivery(
                subscription_id, chain="cmp_2", order_key="1", next_attempt_at=datetime.now(UTC)
            ),
        )
        await eventually(
            lambda: asyncio.sleep(0, after_it in hooks.delivered_ids()),
            timeout_s=20,
            what="the complaint's next event sent after the choked one failed",
        )
        failed = await _stored(db, first)
        assert (failed["status"], failed["attempts"], len(failed["attempt_log"])) == (
            "failed",
            4,
            1,
        )
        assert await _status(webhooks, admin, subscription_id) == "active"
    sent = [r.webhook_id for r in hooks.requests]
    tries = [at for at, webhook_id in enumerate(sent) if webhook_id == first]
    assert tries[0] < sent.index(other) < tries[-1]  # taken between its first and last


async def test_a_resume_cut_short_after_its_status_is_released_whole_by_the_repair_pass(
    alone: Isolation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The resume's status is written, then its release fails (the database away; the
    process could as well have died) and nobody asks to resume again. The repair pass made
    the held deliveries due, but a retry waiting at the resume kept the attempts the outage
    had spent (the last one here), so one 503 of a receiver still warming up would have
    failed it for good. The release is owed from the status's write now, and the repair
    pass runs it whole."""
    async with AsyncExitStack() as stack:
        hooks = await stack.enter_async_context(receiver())
        webhooks = await serve_webhooks(stack, alone, stranded_repair_interval_s=0.3)
        admin = token(webhooks.settings)
        db = webhooks.app.state.runtime.db
        subscription_id = (await subscribe(webhooks, admin, url=hooks.url))["id"]
        assert (await _set_status(webhooks, admin, subscription_id, "paused")).status_code == 200
        retry_at = datetime.now(UTC).replace(microsecond=0) + timedelta(hours=1)
        waiting = pending_delivery(
            subscription_id, chain="cmp_1", order_key="1", next_attempt_at=retry_at
        )
        waiting["retry_index"] = len(webhooks.settings.retry_schedule_s)  # its last attempt left
        held = pending_delivery(subscription_id, chain="cmp_2", order_key="1", next_attempt_at=None)
        first, second = await _insert(db, waiting, held)
        # The release fails until the request has answered (the repair pass's meanwhile too).
        release_held = store.release_held
        failing = True

        async def fails_until_answered(**arguments: Any) -> int:
            if failing:
                raise AutoReconnect("connection closed (injected)")
            return await release_held(**arguments)

        monkeypatch.setattr(store, "release_held", fails_until_answered)
        failed = await _set_status(webhooks, admin, subscription_id, "active")
        assert failed.status_code == 503, failed.text
        failing = False

        async def released() -> dict | None:
            found = await _stored(db, first)
            return found if found["retry_index"] == 0 else None

        restarted = await eventually(released, what="the waiting retry's schedule afresh")
        assert restarted["next_attempt_at"] == retry_at, "a retry keeps its backoff"
        await eventually(lambda: asyncio.sleep(0, second in hooks.delivered_ids()), what="held")

        async def settled() -> bool:
            subscription = await db[store.SUBSCRIPTIONS].find_one({"_id": subscription_id})
            return store.RELEASE_OWED not in subscription

        await eventually(settled, what="the owed release settled")
