"""What every service runs: Mongo, producer, outbox relay, consumers, background jobs.

``service_runtime`` wires them up at start-up and takes them down gracefully:
stop taking new messages, let in-flight handlers finish and commit, flush the
outbox relay's current publish, then close the clients. It keeps the runtime on
the app it serves, where routes find it (``runtime_of``).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field

from fastapi import FastAPI, Request
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from complaints_shared.clock import Clock, SystemClock
from complaints_shared.events import EventType, Topic
from complaints_shared.failures import is_transient, redacted_error
from complaints_shared.kafka import (
    EventConsumer,
    EventHandler,
    EventProducer,
    TopicsNotCreated,
    ensure_topics,
)
from complaints_shared.logs import bind_context, get_logger
from complaints_shared.metrics import BACKGROUND_LOOP_RESTARTS, DEPENDENCY_UP
from complaints_shared.mongo import create_mongo_client, ping, service_database
from complaints_shared.outbox import OutboxRelay, ensure_outbox_index
from complaints_shared.settings import ServiceSettings
from complaints_shared.timing import wait_event

log = get_logger(__name__)

# How long background jobs get to return once shutdown begins; then they are cancelled.
SHUTDOWN_GRACE_S = 15.0
# A background loop that ends before shutdown is started again after a pause: the first
# one this long, doubling while it keeps dying, up to the maximum. A loop that ran for
# ``LOOP_PROVEN_S`` before it died starts again after the first pause.
LOOP_RESTART_FIRST_S = 1.0
LOOP_RESTART_MAX_S = 60.0
# A restarted loop counts for readiness once it has run this long: a loop that dies at
# once each time stays not ready instead of flickering.
LOOP_PROVEN_S = 10.0


@dataclass
class Runtime:
    """Clients and workers of one running service instance."""

    settings: ServiceSettings
    mongo: AsyncMongoClient
    db: AsyncDatabase
    producer: EventProducer
    relay: OutboxRelay
    clock: Clock
    consumer: EventConsumer | None = None
    topics_ready: asyncio.Event = field(default_factory=asyncio.Event)
    # Set first thing at shutdown: background jobs finish their pass and return.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    # Set with ``stopping``: the event loop's time (``loop.time()``) by which every background
    # job must have returned; one still running then is cancelled.
    stop_deadline: float | None = None
    # The running task of each background loop (replaced when a loop is restarted).
    tasks: list[asyncio.Task] = field(default_factory=list)
    # How each background loop is started, by name (``_start_loop``).
    loop_starters: dict[str, Callable[[], Awaitable[None]]] = field(default_factory=dict)
    # Loops that died, by name: the event loop's time their replacement started (None while
    # it waits to start), and the pause before the next restart should it die again.
    restarted_at: dict[str, float | None] = field(default_factory=dict)
    restart_pause_s: dict[str, float] = field(default_factory=dict)

    async def readiness(self) -> dict[str, bool]:
        """Probe MongoDB and Kafka at once, each bounded by the readiness timeout: one after
        the other, two slow answers (up to 2 s each) outlasted the 3 s the compose
        healthcheck waits, and a service whose dependencies were both up showed unhealthy."""
        timeout_s = self.settings.readiness_timeout_s

        async def reachable(probe: Callable[[], Awaitable[bool]]) -> bool:
            try:
                return bool(await asyncio.wait_for(probe(), timeout=timeout_s))
            except Exception:
                return False

        mongodb, kafka = await asyncio.gather(
            reachable(lambda: ping(client=self.mongo)), reachable(self.producer.is_reachable)
        )
        results: dict[str, bool] = {"mongodb": mongodb, "kafka": kafka}
        for name in ("mongodb", "kafka"):
            DEPENDENCY_UP.labels(self.settings.service_name, name).set(int(results[name]))
        results["topics"] = self.topics_ready.is_set()
        if self.consumer is not None:
            results["consumer"] = not self.consumer.failing
        results.update(self.loops_alive())
        return results

    def loops_alive(self) -> dict[str, bool]:
        """Each background loop (consumer, outbox relay, schedulers): running?

        A loop returns only at shutdown; one that ended earlier (crashed, cancelled) leaves
        the service unable to do its work, so readiness fails until its replacement
        (``_restart_loop``) has run ``LOOP_PROVEN_S``.
        """
        now = asyncio.get_running_loop().time()
        alive: dict[str, bool] = {}
        for task in self.tasks:
            name = task.get_name()
            if self.stopping.is_set():
                alive[f"loop:{name}"] = True
                continue
            proven = True
            if name in self.restarted_at:  # it died: its replacement must have run a while
                restarted_at = self.restarted_at[name]
                proven = restarted_at is not None and now - restarted_at >= LOOP_PROVEN_S
            alive[f"loop:{name}"] = not task.done() and proven
        return alive


HandlersFactory = Callable[[Runtime], dict[EventType, EventHandler]]
# A background job runs until ``runtime.stopping`` is set, then returns.
BackgroundJob = Callable[[Runtime], Awaitable[None]]


async def _prepare_topics_then_consume(runtime: Runtime) -> None:
    """Create topics (retrying while Kafka is away or refuses them: not ready meanwhile),
    then run the consumer."""
    delay_s = 0.5
    while True:
        try:
            await ensure_topics(
                settings=runtime.settings,
                topics=[runtime.settings.topic(topic.value) for topic in Topic],
            )
            break
        except TopicsNotCreated as exc:  # settings to mend (the replication factor, say)
            log.error("topics_refused", error=str(exc), retry_in_s=delay_s)
        except Exception as exc:
            log.warning("topics_not_ready", error=repr(exc), retry_in_s=delay_s)
        if await wait_event(runtime.stopping, timeout_s=delay_s):
            return
        delay_s = min(delay_s * 2, 10.0)
    runtime.topics_ready.set()
    if runtime.consumer is not None:
        await runtime.consumer.run()


async def _prepare_database(
    *,
    db: AsyncDatabase,
    settings: ServiceSettings,
    outbox_collections: list[str],
    prepare: Callable[..., Awaitable[None]],
) -> None:
    """The service's indexes and start-up repairs, waiting up to
    ``startup_dependency_wait_s`` for a database that is away (a host starting up, a
    restart): start-up used to fail at the first refused connection. Every step is
    repeatable, so a try cut short is simply made again. The wait counts from the failure,
    not from the start: a repair that ran longer than the wait (intake's, over many
    complaints) then met one dropped connection used to end start-up at once, to begin
    again from nothing after the restart."""
    loop = asyncio.get_running_loop()
    failing_since: float | None = None
    delay_s = 0.5
    # A try that ran longer than this before it failed got going (the database answered):
    # the wait counts again from its failure.
    got_going_s = 2 * settings.mongodb_server_selection_timeout_ms / 1000
    while True:
        started = loop.time()
        try:
            for collection in outbox_collections:
                await ensure_outbox_index(db=db, collection=collection)
            await prepare(db=db)
            return
        except Exception as exc:
            if failing_since is None or loop.time() - started > got_going_s:
                failing_since = loop.time()
            left_s = failing_since + settings.startup_dependency_wait_s - loop.time()
            if not is_transient(exc) or left_s <= 0:
                raise
            pause_s = min(delay_s, left_s)
            log.warning(
                "startup_waiting_for_database", error=redacted_error(exc), retry_in_s=pause_s
            )
        await asyncio.sleep(pause_s)
        delay_s = min(delay_s * 2, 10.0)


@asynccontextmanager
async def service_runtime(
    *,
    app: FastAPI,
    settings: ServiceSettings,
    outbox_collections: list[str],
    consumed_topics: list[Topic],
    handlers: HandlersFactory,
    ensure_indexes: Callable[..., Awaitable[None]],
    background_jobs: list[BackgroundJob] = (),  # type: ignore[assignment]
    clock: Clock | None = None,
) -> AsyncIterator[Runtime]:
    app.state.token_verifier.check_configuration()
    # Background tasks copy this context, so their logs name the service even in-process.
    bind_context(service=settings.service_name)
    mongo = create_mongo_client(settings=settings)
    db = service_database(client=mongo, settings=settings)
    producer = EventProducer(settings=settings)
    relay = OutboxRelay(db=db, collections=outbox_collections, producer=producer, settings=settings)
    runtime = Runtime(
        settings=settings,
        mongo=mongo,
        db=db,
        producer=producer,
        relay=relay,
        clock=clock or SystemClock(),
    )
    try:
        await _prepare_database(
            db=db, settings=settings, outbox_collections=outbox_collections, prepare=ensure_indexes
        )
    except BaseException:
        await mongo.close()
        raise
    event_handlers = handlers(runtime)
    if event_handlers:
        runtime.consumer = EventConsumer(
            settings=settings,
            topics=[settings.topic(topic.value) for topic in consumed_topics],
            handlers=event_handlers,
            producer=producer,
        )
    runtime.loop_starters = {
        "consumer": lambda: _prepare_topics_then_consume(runtime),
        "outbox-relay": relay.run,
        **{job.__name__: (lambda job=job: job(runtime)) for job in background_jobs},
    }
    for name in runtime.loop_starters:
        _start_loop(runtime, name)
    log.info("service_started", database=settings.database_name())
    app.state.runtime = runtime
    try:
        yield runtime
    finally:
        await _shutdown(runtime)


def runtime_of(request: Request) -> Runtime:
    """The runtime of the service answering ``request`` (kept on its app by ``service_runtime``)."""
    return request.app.state.runtime


def _start_loop(runtime: Runtime, name: str) -> None:
    """Run background loop ``name`` as a task of its own, in place of the one it had."""
    task = asyncio.create_task(runtime.loop_starters[name](), name=name)
    runtime.tasks = [other for other in runtime.tasks if other.get_name() != name] + [task]
    task.add_done_callback(lambda done: _restart_loop(runtime, done))


def _restart_loop(runtime: Runtime, task: asyncio.Task) -> None:
    """A loop that ended before shutdown (an error it did not handle, a cancellation, a
    return) is started again after a pause that doubles while it keeps dying. Until
    5 December it stayed dead: the service answered requests but, say, published no event
    or fired no timer until someone restarted it."""
    if runtime.stopping.is_set():
        return
    loop = asyncio.get_running_loop()
    name = task.get_name()
    restarted_at = runtime.restarted_at.get(name)
    pause_s = runtime.restart_pause_s.get(name, LOOP_RESTART_FIRST_S)
    if restarted_at is not None and loop.time() - restarted_at >= LOOP_PROVEN_S:
        pause_s = LOOP_RESTART_FIRST_S
    error = None if task.cancelled() else task.exception()
    log.error(
        "background_loop_died",
        task=name,
        error=redacted_error(error) if error else "cancelled" if task.cancelled() else "returned",
        restart_in_s=pause_s,
    )
    BACKGROUND_LOOP_RESTARTS.labels(runtime.settings.service_name, name).inc()
    runtime.restarted_at[name] = None
    runtime.restart_pause_s[name] = min(pause_s * 2, LOOP_RESTART_MAX_S)

    def restart() -> None:
        if runtime.stopping.is_set():
            return
        runtime.restarted_at[name] = loop.time()
        _start_loop(runtime, name)

    loop.call_later(pause_s, restart)


async def _shutdown(runtime: Runtime) -> None:
    loop = asyncio.get_running_loop()
    runtime.stop_deadline = loop.time() + SHUTDOWN_GRACE_S
    runtime.stopping.set()
    if runtime.consumer is not None:
        await runtime.consumer.stop()
    await runtime.relay.stop()
    grace_s = max(0.0, runtime.stop_deadline - loop.time())
    done, pending = await asyncio.wait(runtime.tasks, timeout=grace_s)
    for task in pending:
        task.cancel()
    for task in pending:
        with suppress(asyncio.CancelledError, Exception):
            await task
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            log.error("background_task_failed", task=task.get_name(), error=repr(task.exception()))
    await runtime.producer.stop()
    await runtime.mongo.close()
    log.info("service_stopped")
