"""The delivery dispatcher: durable timers claimed with leases, attempts side by side.

Every pending delivery carries ``next_attempt_at`` in MongoDB. Each replica
claims due ones (earliest first) under a lease of the request timeout plus a
margin, one subscription at a time (``webhooks.due``), and runs each attempt as its
own task: at most ``max_concurrent_deliveries`` in flight, and at most
``max_concurrent_per_subscription`` per subscription (a saturated subscription is
not even asked, so no claim reads its backlog), so a slow or dead target only
ever holds its own slots while every attempt is bounded by
``request_timeout_s``. A failing subscription (its last attempt failed, or its
stored failure streak says so) has one attempt in flight at most, and the failing
ones together hold at most ``failing_share`` of the slots: however many targets are
dead, the healthy ones keep the rest. A delivered attempt lifts the limit.

A replica killed mid-attempt loses its leases; the attempts in flight are repeated once
the leases expire, nothing else. A replica shutting down lets its attempts in flight
finish until ``shutdown_release_s`` before the service's shutdown grace ends, then
cancels the others (recording nothing of them) and releases their leases: they are sent
again at once, by another replica or by the next start.

Order: a delivery of an event is claimed only once every event that was in Kafka
before it happened is recorded (``webhooks.watermark``); a claimed delivery with an
earlier pending delivery of the same chain (subscription + subject) then waits
behind it and is woken when that one finishes.
Time is ``runtime.clock.now()``: retry deadlines are compared, never slept on.
A delivery that cannot even be attempted (a broken document, say) is recorded and
postponed with backoff (``complaints_shared.timers``); the others go on.

Held deliveries (of a paused or disabled subscription) have no timer, and no write
leaves one without a timer under an active subscription; should a crash between two
writes do it anyway, the repair pass (every ``stranded_repair_interval_s``) makes it due.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from complaints_shared.failures import is_dependency_unavailable, redacted_error
from complaints_shared.logs import bound_context, get_logger
from complaints_shared.runtime import Runtime
from complaints_shared.timers import record_timer_failure
from complaints_shared.timing import Pacer, wait_event
from webhooks import store
from webhooks.due import DueSubscriptions
from webhooks.metrics import (
    BACKLOG,
    DELIVERIES_FINISHED,
    DELIVERY_ATTEMPTS,
    DELIVERY_LATENCY,
    STRANDED_REPAIRED,
    SUBSCRIPTIONS_PAUSED,
    remove_subscription_series,
    subscriptions_with_series,
)
from webhooks.models import (
    PING_EVENT_TYPE,
    DeliveryStatus,
    SubscriptionStatus,
    event_type_matches,
)
from webhooks.sender import AttemptResult, Sender
from webhooks.settings import WebhooksSettings
from webhooks.signing import signed_headers
from webhooks.watermark import ConsumedWatermark

log = get_logger(__name__)

# How long a failing subscription not attempted since is remembered as failing.
FAILING_KEPT_S = 600.0
# Before the first watermark observation: only deliveries of no event (pings) may go.
NOTHING_RECORDED = datetime(1970, 1, 1, tzinfo=UTC)
# Pending timers read when a claim of a subscription found nothing, to settle when to ask
# again (``DueSubscriptions.settle``): its in-flight and waiting ones come first.
TIMERS_READ_AFTER_EMPTY_CLAIM = 50
# Deliveries one read of a subscription's claimable ones returns, taken one by one by the
# claims that follow: a subscription draining a backlog costs one read per this many
# claims. (The local server reads all of them whatever the limit.)
CANDIDATES_PER_READ = 32


def retry_delay_s(*, settings: WebhooksSettings, retry_index: int, rng: random.Random) -> float:
    """Delay before retry number ``retry_index`` (0-based) with ± jitter."""
    base = settings.retry_schedule_s[retry_index]
    jitter = settings.retry_jitter_ratio
    return base * (1 + rng.uniform(-jitter, jitter)) if jitter else base


# Answers refusing the delivery's content: the receiver is there, this one event is not for it.
REFUSED_CONTENT = frozenset({400, 409, 413, 415, 422})


def _receiver_down(result: AttemptResult) -> bool:
    """Whether a failed attempt says the receiver is away or misconfigured (no answer, a 5xx,
    a redirect, 401, 403, 404, 408, 429...) rather than refusing this one delivery's content
    (``REFUSED_CONTENT``: failed after its attempts as before, and the chain goes on)."""
    return result.response_code not in REFUSED_CONTENT


def _schedule_started_at(delivery: dict[str, Any], *, now: datetime) -> datetime:
    """When the first attempt of the delivery's current retry schedule was made: ``now``
    when this attempt is it. A delivery recorded before ``SCHEDULE_STARTED_AT`` was kept
    takes its log's earliest attempt of the schedule (the log keeps ``ATTEMPTS_KEPT``)."""
    retry_index = delivery.get("retry_index", 0)
    if not retry_index:
        return now
    started = delivery.get(store.SCHEDULE_STARTED_AT)
    if started is not None:
        return started
    log_of = delivery.get("attempt_log") or []
    earlier = log_of[-retry_index:]
    return earlier[0]["at"] if earlier else now


class Dispatcher:
    """One replica's dispatcher loop; at shutdown it lets attempts in flight finish within
    the grace and releases the leases of those it cuts off."""

    def __init__(self, *, settings: WebhooksSettings) -> None:
        self._settings = settings
        # Deliveries of events are held until the consumer group has recorded every
        # topic past their time; until the first observation, none is.
        self.watermark = ConsumedWatermark(settings=settings, on_advance=self.notify)
        self._owner = f"{settings.service_name}-{uuid.uuid4().hex[:8]}"
        self._sender = Sender(settings=settings)
        self._wake = asyncio.Event()
        # Attempts in flight by their lease (``_claimed``): one claim each, so a delivery
        # redelivered and claimed again while its first attempt runs is two entries.
        self._in_flight: dict[str, asyncio.Task] = {}
        self._per_subscription: Counter[str] = Counter()
        # Subscriptions whose last attempt here failed, or stored as failing when read, and
        # when that was seen (monotonic): one not attempted for FAILING_KEPT_S is forgotten
        # (deleted, paused, healed elsewhere), and marked again by its next attempt.
        self._failing: dict[str, float] = {}
        self._failing_slots = max(
            1, int(settings.max_concurrent_deliveries * settings.failing_share)
        )
        self._rng = random.Random()
        self._lease_s = settings.request_timeout_s + settings.lease_margin_s
        # The subscriptions with deliveries to claim, as this replica knows them, and the
        # deliveries of each its last read found claimable and no claim has taken yet.
        self._due = DueSubscriptions()
        self._candidates: dict[str, deque[str]] = {}

    def notify(self) -> None:
        """Look for due work now, not at the next poll (the order watermark moved)."""
        self._wake.set()

    def deliveries_due(self, *, subscription_ids: Iterable[str], at: datetime) -> None:
        """Deliveries of these subscriptions were made due at ``at`` (queued, queued again,
        released, woken): claim them now."""
        for subscription_id in subscription_ids:
            self._due.due_at(subscription_id, at=at)
        self._wake.set()

    def deliveries_recorded(self, *, subscription_ids: Iterable[str], event_time: datetime) -> None:
        """Deliveries of an event of ``event_time`` were recorded for these subscriptions:
        claim them once the order watermark is past it."""
        for subscription_id in subscription_ids:
            self._due.after_watermark(subscription_id, event_time=event_time)
        self._wake.set()

    async def run_dispatcher(self, runtime: Runtime) -> None:
        """The background job: claim due deliveries while there are free slots, then wait."""
        try:
            while not runtime.stopping.is_set():
                self._wake.clear()
                try:
                    await self._claim_and_start(runtime)
                except Exception as exc:  # Mongo away or similar: keep the timers alive
                    log.error("webhook_dispatcher_error", error=repr(exc))
                await wait_event(self._wake, timeout_s=self._settings.dispatcher_poll_interval_s)
        finally:
            await self._drain(runtime)

    async def run_backlog_gauge(self, runtime: Runtime) -> None:
        """The background job keeping the per-subscription series current
        (``refresh_subscription_series``) every ``backlog_refresh_s``."""
        while not runtime.stopping.is_set():
            try:
                await self.refresh_subscription_series(runtime)
            except Exception as exc:
                log.warning("webhook_backlog_gauge_failed", error=repr(exc))
            await wait_event(runtime.stopping, timeout_s=self._settings.backlog_refresh_s)

    async def run_due_discovery(self, runtime: Runtime) -> None:
        """The background job: ``discover_due`` at start and every
        ``due_discovery_interval_s``."""
        while not runtime.stopping.is_set():
            try:
                pacer = Pacer(share=self._settings.background_work_share, stopping=runtime.stopping)
                await self.discover_due(runtime, pacer=pacer)
            except Exception as exc:  # Mongo away or similar: the next pass looks again
                log.error("webhook_due_discovery_failed", error=redacted_error(exc))
            await wait_event(runtime.stopping, timeout_s=self._settings.due_discovery_interval_s)

    async def discover_due(self, runtime: Runtime, *, pacer: Pacer | None = None) -> int:
        """Learn when each subscription not about to be claimed from has a delivery due:
        what other replicas recorded, made due or left when they stopped. One index probe
        per such subscription (none for one ready to claim from, however long its backlog);
        how many have one due now."""
        pacer = pacer or Pacer(share=1)
        found = 0
        for subscription_id in await store.subscription_ids(db=runtime.db):
            now = runtime.clock.now()
            through = self.watermark.through or NOTHING_RECORDED
            if self._due.is_ready(subscription_id, now=now, recorded_through=through):
                continue
            earliest = await store.pending_timers(
                db=runtime.db, subscription_id=subscription_id, limit=1
            )
            await pacer.pause()
            if not earliest:
                continue
            due_at = earliest[0]["next_attempt_at"]
            self._due.due_at(subscription_id, at=due_at)
            found += due_at <= now
        if found:
            self._wake.set()
        return found

    async def refresh_subscription_series(self, runtime: Runtime) -> None:
        """Set the backlog gauge of every subscription with a series or a backlog (0 for
        none), and remove every series of one deleted since: the series stay as many as
        the subscriptions, not as many as were ever made."""
        counts = await store.backlog_by_subscription(db=runtime.db)
        labelled = subscriptions_with_series() | counts.keys()
        existing = await store.existing_subscription_ids(db=runtime.db, among=sorted(labelled))
        for subscription_id in labelled - existing:
            remove_subscription_series(subscription_id)
        for subscription_id in existing:
            BACKLOG.labels(subscription_id).set(counts.get(subscription_id, 0))

    async def run_stranded_repair(self, runtime: Runtime) -> None:
        """The background job: a repair pass at start and every ``stranded_repair_interval_s``."""
        while not runtime.stopping.is_set():
            try:
                await self.complete_deletions(runtime)
                pacer = Pacer(share=self._settings.background_work_share, stopping=runtime.stopping)
                await self.repair_stranded(runtime, pacer=pacer)
            except Exception as exc:  # Mongo away or similar: the next pass repairs
                log.error("webhook_stranded_repair_failed", error=repr(exc))
            await wait_event(runtime.stopping, timeout_s=self._settings.stranded_repair_interval_s)

    async def complete_deletions(self, runtime: Runtime) -> int:
        """Complete the deletions a failure cut short after marking the subscription; how many.

        Normally none (one probe of an empty index): a deletion finishes in its request, and
        asking again completes one that failed. This covers a client that never asks again.
        """
        deleted = await store.deleted_subscription_ids(db=runtime.db)
        for subscription_id in deleted:
            await store.complete_deletion(
                db=runtime.db,
                subscription_id=subscription_id,
                now=runtime.clock.now(),
                record_kept_s=self._settings.deleted_subscription_record_kept_s,
            )
            log.warning("webhook_subscription_deletion_completed", subscription_id=subscription_id)
        return len(deleted)

    async def repair_stranded(self, runtime: Runtime, *, pacer: Pacer | None = None) -> int:
        """Make due the pending deliveries without a timer of active subscriptions; how many.

        None should exist: a re-activation releases its held deliveries, and a hold racing
        with it makes the delivery due instead. This heals what a crash or a database error
        between two writes leaves (a re-activation whose release never ran), within one
        interval: a release still owed runs whole (``store.release_held``, retries waiting
        at the resume start afresh too), then every active subscription is probed for held
        deliveries, one index probe each, which finds nothing normally. A subscription that
        fails is logged and the others go on.
        """
        pacer = pacer or Pacer(share=1)
        repaired = 0
        owed = dict(await store.releases_owed(db=runtime.db))
        for subscription_id in await store.active_subscription_ids(db=runtime.db):
            try:
                released = await self._repair_one(runtime, subscription_id, owed=owed)
            except Exception as exc:
                if is_dependency_unavailable(exc):
                    raise  # every subscription would fail alike: the next pass repairs
                log.error(
                    "webhook_stranded_repair_failed",
                    subscription_id=subscription_id,
                    error=redacted_error(exc),
                )
                continue
            finally:
                await pacer.pause()
            if released:
                STRANDED_REPAIRED.inc(released)
                log.warning(
                    "webhook_stranded_deliveries_due",
                    subscription_id=subscription_id,
                    count=released,
                )
                repaired += released
                self.deliveries_due(subscription_ids=[subscription_id], at=runtime.clock.now())
        return repaired

    @staticmethod
    async def _repair_one(
        runtime: Runtime, subscription_id: str, *, owed: dict[str, datetime]
    ) -> int:
        """The subscription's owed release run whole, or its held deliveries made due."""
        now = runtime.clock.now()
        if subscription_id not in owed:
            return await store.make_held_due(
                db=runtime.db, subscription_id=subscription_id, now=now
            )
        resumed_at = owed[subscription_id]
        released = await store.release_held(
            db=runtime.db, subscription_id=subscription_id, now=now, resumed_at=resumed_at
        )
        await store.release_settled(
            db=runtime.db, subscription_id=subscription_id, resumed_at=resumed_at
        )
        log.warning("webhook_owed_release_completed", subscription_id=subscription_id)
        return released

    async def _claim_and_start(self, runtime: Runtime) -> None:
        """Claim and start due deliveries while there are free slots: one delivery of the
        subscription waiting the longest among those with slots left (its earliest due, as
        of its last read), again and again. One whose claim found nothing is not asked
        again in this pass."""
        found_nothing: set[str] = set()
        while (
            len(self._in_flight) < self._settings.max_concurrent_deliveries
            and not runtime.stopping.is_set()
        ):
            now = runtime.clock.now()
            through = self.watermark.through or NOTHING_RECORDED
            subscription_id = self._due.next_ready(
                now=now, recorded_through=through, skip=self._saturated() | found_nothing
            )
            if subscription_id is None:
                return
            lease = self._claimed()
            delivery = await self._claim_from(
                runtime, subscription_id, owner=lease, now=now, recorded_through=through
            )
            if delivery is None:
                found_nothing.add(subscription_id)
                timers = await store.pending_timers(
                    db=runtime.db,
                    subscription_id=subscription_id,
                    limit=TIMERS_READ_AFTER_EMPTY_CLAIM,
                )
                self._due.settle(subscription_id, timers=timers, now=now, recorded_through=through)
                continue
            self._due.claimed(subscription_id, at=now)
            self._start(runtime, {**delivery, "lease_owner": lease})

    async def _claim_from(
        self,
        runtime: Runtime,
        subscription_id: str,
        *,
        owner: str,
        now: datetime,
        recorded_through: datetime,
    ) -> dict[str, Any] | None:
        """Claim the subscription's next claimable delivery: the first its last read found
        that a claim can still take, else the first of a new read; None if there is none."""
        candidates = self._candidates.pop(subscription_id, deque())
        for read_now in (False, True):
            if read_now:
                candidates = deque(
                    await store.claimable_ids(
                        db=runtime.db,
                        subscription_id=subscription_id,
                        now=now,
                        recorded_through=recorded_through,
                        limit=CANDIDATES_PER_READ,
                    )
                )
            while candidates:
                claimed = await store.claim(
                    db=runtime.db,
                    delivery_id=candidates.popleft(),
                    subscription_id=subscription_id,
                    owner=owner,
                    now=now,
                    lease_s=self._lease_s,
                    recorded_through=recorded_through,
                )
                if claimed is not None:
                    if candidates:
                        self._candidates[subscription_id] = candidates
                    return claimed
        return None

    def _claimed(self) -> str:
        """The lease of one claim: the replica and the claim. Every write of its attempt
        holds to it, so an attempt whose delivery was redelivered meanwhile (its lease
        cleared, a fresh retry schedule) records nothing, even when this replica has
        claimed the delivery again; a lease naming only the replica let the first attempt
        record its stale result (a retry schedule ended early, "failed") and the second's
        be thrown away as a lost lease."""
        return f"{self._owner}/{uuid.uuid4().hex[:12]}"

    def _saturated(self) -> set[str]:
        """The subscriptions not to claim for now: those with all the attempts in flight
        they may have, and every failing one once the failing hold their share."""
        forgotten = time.monotonic() - FAILING_KEPT_S
        for subscription_id, seen in list(self._failing.items()):
            if seen < forgotten and not self._per_subscription[subscription_id]:
                del self._failing[subscription_id]
        failing_in_flight = sum(self._per_subscription[each] for each in self._failing)
        saturated = {
            subscription_id
            for subscription_id, count in self._per_subscription.items()
            if count
            >= (
                1
                if subscription_id in self._failing
                else self._settings.max_concurrent_per_subscription
            )
        }
        if failing_in_flight >= self._failing_slots:
            saturated |= self._failing.keys()
        return saturated

    def _health(self, subscription_id: str, *, failing: bool) -> None:
        if failing:
            self._failing[subscription_id] = time.monotonic()
        else:
            self._failing.pop(subscription_id, None)

    def _start(self, runtime: Runtime, delivery: dict[str, Any]) -> None:
        subscription_id = delivery["subscription_id"]
        self._per_subscription[subscription_id] += 1
        task = asyncio.create_task(self._attempt_safely(runtime, delivery))
        self._in_flight[delivery["lease_owner"]] = task

        def finished(_: asyncio.Task) -> None:
            self._in_flight.pop(delivery["lease_owner"], None)
            self._per_subscription[subscription_id] -= 1
            if self._per_subscription[subscription_id] <= 0:
                del self._per_subscription[subscription_id]
            self._wake.set()  # a slot is free

        task.add_done_callback(finished)

    async def _drain(self, runtime: Runtime) -> None:
        """Let attempts in flight finish while the shutdown grace allows, release the rest.

        The runtime cancels a job still running when its grace ends, so this returns before
        then: attempts may finish until ``shutdown_release_s`` before that moment, the others
        are cancelled (an attempt cut off records nothing) and their leases cleared, so they
        are due at once for any replica instead of after their lease. Without a deadline
        (not a shutdown) the attempts get their lease.
        """
        loop = asyncio.get_running_loop()
        stop_by = runtime.stop_deadline
        if stop_by is None:
            stop_by = loop.time() + self._lease_s
        try:
            if self._in_flight:
                finish_by = stop_by - self._settings.shutdown_release_s
                await asyncio.wait(
                    list(self._in_flight.values()), timeout=max(0.0, finish_by - loop.time())
                )
            cut_off = [lease for lease, task in self._in_flight.items() if not task.done()]
            await self._cancel_in_flight()
            if cut_off:
                await self._release(runtime, leases=cut_off, by=stop_by)
        finally:
            await self._cancel_in_flight()  # the drain cancelled itself: none outlives it
            await self._sender.close()

    async def _cancel_in_flight(self) -> None:
        tasks = list(self._in_flight.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _release(self, runtime: Runtime, *, leases: list[str], by: float) -> None:
        try:
            async with asyncio.timeout_at(by):
                released = await store.release_leases(db=runtime.db, leases=leases)
        except Exception as exc:  # the database away or slow: the leases run out by themselves
            log.warning("webhook_leases_not_released", count=len(leases), error=redacted_error(exc))
            return
        log.info("webhook_attempts_cut_off_released", count=released)

    async def _attempt_safely(self, runtime: Runtime, delivery: dict[str, Any]) -> None:
        with bound_context(
            delivery_id=delivery["_id"],
            subscription_id=delivery["subscription_id"],
            complaint_id=delivery.get("complaint_id"),
        ):
            try:
                await self._attempt(runtime, delivery)
            except Exception as exc:
                await self._postpone(runtime, delivery, exc)

    async def _postpone(self, runtime: Runtime, delivery: dict[str, Any], exc: Exception) -> None:
        """Record why this delivery could not be handled; it is tried again after a backoff."""
        try:
            await record_timer_failure(
                runtime.db[store.DELIVERIES],
                document_id=delivery["_id"],
                exc=exc,
                lease_field="lease_until",
                owner_filter={"lease_owner": delivery["lease_owner"]},
                lease_now=runtime.clock.now(),
                settings=self._settings,
                timer="webhook_delivery",
            )
        except Exception as unrecorded:  # the database is away: the lease runs out by itself
            log.warning("webhook_attempt_unrecorded", error=redacted_error(unrecorded))

    async def _attempt(self, runtime: Runtime, delivery: dict[str, Any]) -> None:
        db = runtime.db
        lease = delivery["lease_owner"]
        subscription = await store.get_subscription(
            db=db, scope={}, subscription_id=delivery["subscription_id"], with_secrets=True
        )
        is_ping = delivery["event_type"] == PING_EVENT_TYPE
        if subscription is None:
            # Deleted (or being deleted): its deletion missed this one, so it goes now.
            self._health(delivery["subscription_id"], failing=False)
            if await store.drop_orphan(db=db, delivery=delivery, owner=lease):
                log.info("webhook_delivery_of_deleted_subscription_dropped")
            return
        # As stored: failing on another replica or before this one started, or since healed.
        self._health(subscription["_id"], failing=subscription.get("failure_streak", 0) > 0)
        now = runtime.clock.now()
        if not is_ping and not any(
            event_type_matches(pattern, delivery["event_type"])
            for pattern in subscription["event_types"]
        ):
            # Its type was taken out of the subscription since it was recorded (a backlog
            # held while paused, retries pending): the subscriber no longer wants it. The
            # later ones of its chain go on, as after a delivery that finished.
            if await store.drop_orphan(db=db, delivery=delivery, owner=lease):
                log.info("webhook_delivery_unsubscribed_dropped")
                await self._wake_chain(runtime, delivery)
            return
        if subscription["status"] != SubscriptionStatus.ACTIVE.value and not is_ping:
            await store.hold_while_off(db=db, delivery=delivery, owner=lease, now=now)
            return
        earlier = await store.earlier_pending(db=db, delivery=delivery)
        if earlier is not None:
            recheck = now + timedelta(seconds=self._lease_s)
            until = max(earlier.get("next_attempt_at") or recheck, recheck)
            await store.hold_behind(db=db, delivery=delivery, owner=lease, until=until, now=now)
            # Woken when the earlier one finishes (here: at once); else looked at again then.
            self._due.due_at(delivery["subscription_id"], at=until)
            return
        headers = signed_headers(
            webhook_id=delivery["_id"],
            body=delivery["body"],
            live_secrets=store.live_secrets(subscription, now=now),
            at=now,
        )
        result = await self._sender.send(
            url=subscription["target_url"], headers=headers, body=delivery["body"]
        )
        DELIVERY_LATENCY.observe(result.latency_ms / 1000)
        await self._record(runtime, delivery, subscription, result, is_ping=is_ping)

    async def _record(
        self,
        runtime: Runtime,
        delivery: dict[str, Any],
        subscription: dict[str, Any],
        result: AttemptResult,
        *,
        is_ping: bool,
    ) -> None:
        db = runtime.db
        settings = self._settings
        now = runtime.clock.now()
        subscription_id = subscription["_id"]
        attempt = {
            "at": now,
            "response_code": result.response_code,
            "latency_ms": result.latency_ms,
            "error": result.error,
            "response_excerpt": result.response_excerpt,
        }
        if result.gone and not is_ping:
            # Disabled before the attempt is recorded, and the delivery keeps a timer (due
            # now): its next claim finds the subscription disabled and holds it. A crash or
            # an error between the writes leaves it under lease with its timer, never
            # without one under an active subscription (it is held or sent again).
            await self._disable(
                runtime,
                subscription_id=subscription_id,
                target_url=subscription["target_url"],
                now=now,
            )
        retry_index = delivery.get("retry_index", 0)
        if result.delivered:
            status, next_at = DeliveryStatus.DELIVERED, None
        elif result.gone and is_ping:
            status, next_at = DeliveryStatus.FAILED, None  # a test: nothing to replay
        elif result.gone:
            status, next_at = DeliveryStatus.PENDING, now
        elif retry_index < len(settings.retry_schedule_s):
            delay_s = retry_delay_s(settings=settings, retry_index=retry_index, rng=self._rng)
            status, next_at = DeliveryStatus.PENDING, now + timedelta(seconds=delay_s)
            retry_index += 1
        elif (
            not is_ping
            and _receiver_down(result)
            and await self._held_for_the_outage(runtime, subscription, delivery, now=now)
        ):
            # Due now: its next claim finds the subscription paused and holds it, as after
            # a 410 (a crash between the writes leaves it with a timer, never stranded).
            status, next_at = DeliveryStatus.PENDING, now
        else:
            status, next_at = DeliveryStatus.FAILED, None
        recorded = await store.finish_attempt(
            db=db,
            delivery=delivery,
            owner=delivery["lease_owner"],
            attempt=attempt,
            keep=settings.attempts_kept,
            status=status,
            next_attempt_at=next_at,
            retry_index=retry_index,
            now=now,
        )
        if not recorded:
            log.warning("webhook_lease_lost", response_code=result.response_code)
            return
        outcome = "delivered" if result.delivered else "gone" if result.gone else "failed"
        DELIVERY_ATTEMPTS.labels(subscription_id, outcome).inc()
        log.info(
            "webhook_attempt",
            outcome=outcome,
            response_code=result.response_code,
            latency_ms=result.latency_ms,
            error=result.error,
            next_attempt_at=next_at.isoformat() if next_at else None,
        )
        if next_at is not None:
            self._due.due_at(subscription_id, at=next_at)  # its retry (after a 410: at once)
        if status is not DeliveryStatus.PENDING:
            DELIVERIES_FINISHED.labels(subscription_id, status.value).inc()
            await self._wake_chain(runtime, delivery)
        if is_ping:
            return  # a test ping says nothing about the subscription's health
        self._health(subscription_id, failing=not result.delivered)
        if result.delivered:
            if subscription.get("failure_streak", 0) > 0:  # else there is nothing to reset
                await store.record_success(
                    db=db,
                    subscription_id=subscription_id,
                    now=now,
                    target_url=subscription["target_url"],
                )
        elif not result.gone:  # a 410 disabled the subscription above
            await self._count_failure(
                runtime,
                subscription_id=subscription_id,
                target_url=subscription["target_url"],
                now=now,
            )

    async def _held_for_the_outage(
        self,
        runtime: Runtime,
        subscription: dict[str, Any],
        delivery: dict[str, Any],
        *,
        now: datetime,
    ) -> bool:
        """Whether a delivery whose last attempt found the receiver away is held instead of
        failed: when the subscription has failed every attempt since this delivery's first
        it is paused, and resumed the delivery starts its schedule afresh; one whose
        subscription is paused or disabled already is held too. Until 6 December it failed
        for good after its eighth attempt (about 28 h) and its subject's later events went
        out without it: a quiet subscription's never reached the auto-pause's ten failures,
        and a busy one's could fail just before it paused."""
        subscription_id = subscription["_id"]
        attempts = len(self._settings.retry_schedule_s) + 1
        first_at = _schedule_started_at(delivery, now=now)
        paused = await store.pause_if_failing(
            db=runtime.db,
            subscription_id=subscription_id,
            min_failures=1,
            # Failing since then at the latest: no attempt of the subscription succeeded since.
            failing_since_before=first_at,
            reason=f"paused automatically: a delivery failed all its {attempts} attempts, "
            "and no attempt succeeded meanwhile; resume once the receiver answers",
            now=now,
        )
        if paused:
            SUBSCRIPTIONS_PAUSED.labels("auto_paused").inc()
            log.warning("webhook_subscription_auto_paused", failures=attempts, retries="spent")
            return True
        current = await store.get_subscription(
            db=runtime.db, scope={}, subscription_id=subscription_id
        )
        return current is not None and current["status"] != SubscriptionStatus.ACTIVE.value

    async def _wake_chain(self, runtime: Runtime, delivery: dict[str, Any]) -> None:
        """The delivery is done with: the later ones of its chain are due now, if any."""
        now = runtime.clock.now()
        if await store.wake_chain(db=runtime.db, delivery=delivery, now=now):
            self.deliveries_due(subscription_ids=[delivery["subscription_id"]], at=now)

    async def _disable(
        self, runtime: Runtime, *, subscription_id: str, target_url: str, now: datetime
    ) -> None:
        disabled = await store.disable(
            db=runtime.db,
            subscription_id=subscription_id,
            reason="the receiver answered 410 Gone",
            now=now,
            target_url=target_url,
        )
        if disabled:
            SUBSCRIPTIONS_PAUSED.labels("disabled").inc()
            log.warning("webhook_subscription_disabled", reason="410 Gone")

    async def _count_failure(
        self, runtime: Runtime, *, subscription_id: str, target_url: str, now: datetime
    ) -> None:
        await store.record_failure_streak(
            db=runtime.db, subscription_id=subscription_id, now=now, target_url=target_url
        )
        threshold = self._settings.auto_pause_after_failures
        window_s = self._settings.auto_pause_after_s
        paused = await store.pause_if_failing(
            db=runtime.db,
            subscription_id=subscription_id,
            min_failures=threshold,
            failing_since_before=now - timedelta(seconds=window_s),
            reason=f"paused automatically: {threshold}+ failed attempts in a row over "
            f"{window_s:g} s or more",
            now=now,
        )
        if paused:
            SUBSCRIPTIONS_PAUSED.labels("auto_paused").inc()
            log.warning("webhook_subscription_auto_paused", failures=threshold)
