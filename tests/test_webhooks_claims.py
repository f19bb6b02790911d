"""The dispatcher's claims: one subscription at a time, never reading a saturated one's backlog.

Until 5 December every claim asked for the earliest due delivery of all subscriptions but
the saturated ones (``subscription_id: {$nin: [...]}``), walking the due-time index: each
claim, and the empty one that ends every pass, read every due delivery of a subscription at
its limit. A subscription re-activated with a day's backlog (86,000 deliveries) had every
claim of every organisation read them all, again and again while it drained.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from contextlib import AsyncExitStack
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo.asynchronous.collection import AsyncCollection

from tests.support.http import token
from tests.support.waits import eventually
from tests.support.webhooks import (
    Isolation,
    Webhooks,
    pending_delivery,
    receiver,
    serve_webhooks,
    subscribe,
)
from webhooks import store
from webhooks.due import DueSubscriptions

T = datetime(2026, 12, 5, 8, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)


def _recording_reads(monkeypatch: pytest.MonkeyPatch, database: str) -> list[Mapping[str, Any]]:
    """The filter of every ``find`` and ``find_one`` of ``database``'s deliveries from now on."""
    filters: list[Mapping[str, Any]] = []
    find, find_one = AsyncCollection.find, AsyncCollection.find_one

    def noted(collection: AsyncCollection, arguments: tuple, keywords: dict) -> None:
        if collection.database.name == database and collection.name == store.DELIVERIES:
            filters.append(arguments[0] if arguments else keywords.get("filter") or {})

    def recorded_find(self: AsyncCollection, *arguments: Any, **keywords: Any):
        noted(self, arguments, keywords)
        return find(self, *arguments, **keywords)

    async def recorded_find_one(self: AsyncCollection, *arguments: Any, **keywords: Any):
        noted(self, arguments, keywords)
        return await find_one(self, *arguments, **keywords)

    monkeypatch.setattr(AsyncCollection, "find", recorded_find)
    monkeypatch.setattr(AsyncCollection, "find_one", recorded_find_one)
    return filters


async def _ping(webhooks: Webhooks, headers: dict[str, str], subscription_id: str) -> None:
    path = f"/v1/webhooks/subscriptions/{subscription_id}/ping"
    response = await webhooks.client.post(path, headers=headers)
    assert response.status_code == 202, response.text


async def test_claims_read_nothing_of_the_backlog_of_a_subscription_at_its_limit(
    alone: Isolation, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A subscription with 300 due deliveries holds its one attempt open; another
    subscription's deliveries are claimed beside it. Every read of the deliveries the
    service makes meanwhile (claims, the order check, the empty claims ending each pass,
    the discovery of due work) is confined to another subscription's index range, or to
    one delivery: none can walk the saturated one's backlog, however long it is."""
    backlog = 300
    release = asyncio.Event()

    async def held_open(_: int) -> int:
        await release.wait()
        return 200

    async with AsyncExitStack() as stack:
        stuck = await stack.enter_async_context(receiver(held_open))
        healthy = await stack.enter_async_context(receiver())
        webhooks = await serve_webhooks(
            stack,
            alone,
            max_concurrent_per_subscription=1,
            request_timeout_s=30.0,
            backlog_refresh_s=3600,
            stranded_repair_interval_s=3600,
        )
        stack.callback(release.set)  # first thing at the end: the service stops at once
        admin = token(webhooks.settings)
        db = webhooks.app.state.runtime.db
        saturated = (await subscribe(webhooks, admin, url=stuck.url))["id"]
        other = (await subscribe(webhooks, admin, url=healthy.url))["id"]
        due_since = datetime.now(UTC) - timedelta(minutes=1)
        backlogged = [
            pending_delivery(saturated, next_attempt_at=due_since) for _ in range(backlog)
        ]
        assert await store.insert_deliveries(db=db, deliveries=backlogged) == backlog
        # The ping has the dispatcher look: it claims the backlog's first, which is held open.
        await _ping(webhooks, admin, saturated)
        await eventually(
            lambda: asyncio.sleep(0, len(stuck.requests) == 1), what="an attempt held open"
        )

        reads = _recording_reads(monkeypatch, db.name)
        for sent in range(1, 6):
            await _ping(webhooks, admin, other)
            await eventually(
                lambda sent=sent: asyncio.sleep(0, len(healthy.requests) == sent),
                timeout_s=5,
                what=f"ping {sent} of the other subscription",
            )
        await asyncio.sleep(1.0)  # passes with nothing to claim
        monkeypatch.undo()
        pending = await db[store.DELIVERIES].count_documents(
            {"subscription_id": saturated, "status": "pending"}
        )
    assert pending == backlog + 1
    assert len(stuck.requests) == 1
    assert reads, "the other subscription's deliveries were claimed and checked"
    unconfined = [
        read
        for read in reads
        if "_id" not in read
        and not (isinstance(read.get("subscription_id"), str) and read["subscription_id"] == other)
    ]
    assert unconfined == [], "reads that could walk the saturated subscription's backlog"


def test_a_subscription_whose_claim_found_nothing_is_asked_again_when_its_timers_allow() -> None:
    due = DueSubscriptions()
    now, through = T, T - SECOND

    def ready(at: datetime, watermark: datetime = through) -> bool:
        return due.is_ready("whs_a", now=at, recorded_through=watermark)

    due.settle(
        "whs_a", timers=[{"next_attempt_at": now + 5 * SECOND}], now=now, recorded_through=through
    )
    assert not ready(now) and ready(now + 5 * SECOND), "at its retry"
    in_flight = {"next_attempt_at": now - SECOND, "lease_until": now + 30 * SECOND}
    due.settle("whs_a", timers=[in_flight], now=now, recorded_through=through)
    assert not ready(now) and ready(now + 30 * SECOND), "when its lease runs out"
    waiting = {"next_attempt_at": now - SECOND, "event_time": now - 0.5 * SECOND}
    due.settle("whs_a", timers=[waiting], now=now, recorded_through=through)
    assert not ready(now + 60 * SECOND), "not by time: an earlier event may be on its way"
    assert ready(now, watermark=now), "once the order watermark is past its event"
    due.settle("whs_a", timers=[], now=now, recorded_through=through)
    assert len(due) == 0, "nothing pending with a timer: forgotten until told again"


def test_the_subscription_waiting_longest_goes_first_and_saturated_ones_are_passed_over() -> None:
    due = DueSubscriptions()
    due.due_at("whs_recent", at=T - SECOND)
    due.due_at("whs_oldest", at=T - 60 * SECOND)
    due.due_at("whs_later", at=T + SECOND)
    due.after_watermark("whs_new_event", event_time=T)

    def chosen(skip: set[str]) -> str | None:
        return due.next_ready(now=T, recorded_through=T - SECOND, skip=skip)

    assert chosen(set()) == "whs_oldest"
    assert chosen({"whs_oldest"}) == "whs_recent"
    assert chosen({"whs_oldest", "whs_recent"}) is None
    due.claimed("whs_oldest", at=T)
    assert chosen(set()) == "whs_recent", "claimed from just now, it waits behind the others"
    assert chosen({"whs_recent"}) == "whs_oldest", "and still has deliveries to claim"
