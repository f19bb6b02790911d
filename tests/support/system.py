"""The system under test: the three services of one test, in-process over ASGI.

Each system gets its own topic prefix and databases (``settings_for_test``), so tests
run in any order and never see each other's events or documents. The fixtures that
hand systems to tests live in ``tests/conftest.py``; this module holds what they build.
"""

from __future__ import annotations

import asyncio
import uuid
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Collection
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass

import httpx
from aiokafka.admin import AIOKafkaAdminClient
from fastapi import FastAPI
from pymongo import AsyncMongoClient

from complaints_shared.clock import Clock
from complaints_shared.settings import ServiceSettings
from followup.main import create_app as create_followup_app
from followup.settings import FollowupSettings
from intake.main import create_app as create_intake_app
from intake.settings import IntakeSettings
from routing.demo import seed_demo_org
from routing.main import create_app as create_routing_app
from routing.settings import RoutingSettings
from tests.support.infrastructure import Infrastructure
from webhooks.main import create_app as create_webhooks_app
from webhooks.settings import WebhooksSettings

# The shared secret of every test's services and tokens (there is no default secret).
TEST_JWT_SECRET = "test-only-secret-0123456789abcdef-0123"


def settings_for_test(
    settings_class: type[ServiceSettings], *, infra: Infrastructure, run_id: str, **overrides
) -> ServiceSettings:
    """Settings for one service of one test: own database and topic prefix, fast retries."""
    service = settings_class.model_fields["service_name"].default
    values = {
        "kafka_bootstrap_servers": infra.kafka_bootstrap_servers,
        "mongodb_uri": infra.mongodb_uri,
        "mongodb_database": f"t_{run_id}_{service}",
        "topic_prefix": f"t{run_id}.",
        "outbox_poll_interval_s": 0.2,
        "consumer_retry_backoff_s": 0.05,
        "consumer_max_attempts": 3,
        "kafka_request_timeout_s": 5.0,
        "jwt_secret": TEST_JWT_SECRET,
        **overrides,
    }
    settings = settings_class(**values)
    TEST_TOPIC_PREFIXES.add(settings.topic_prefix)
    return settings


# Every topic prefix handed to a test's settings: what a system made is deleted as it stops,
# what a test made on its own at the session's end (``delete_test_topics``).
TEST_TOPIC_PREFIXES: set[str] = set()


def delete_test_topics(infrastructure: Infrastructure) -> None:
    """At the session's end: the topics of every test settings built, whoever made them."""
    asyncio.run(_delete_topics(infrastructure, prefixes=sorted(TEST_TOPIC_PREFIXES)))


@dataclass
class System:
    """The three services of one test, reachable in-process over ASGI.

    A service named in ``make(out_of_process=...)`` has its settings here but no app and no
    client (both None): the test runs it as a real process (``support.processes``).
    """

    run_id: str
    infra: Infrastructure
    intake_settings: IntakeSettings
    routing_settings: RoutingSettings
    followup_settings: FollowupSettings
    intake: httpx.AsyncClient
    routing: httpx.AsyncClient
    followup: httpx.AsyncClient
    intake_app: FastAPI
    routing_app: FastAPI
    followup_app: FastAPI
    mongo: AsyncMongoClient
    clock: Clock | None = None
    # The webhooks service runs only when a test asks for it (``make(webhooks={...})``).
    webhooks_settings: WebhooksSettings | None = None
    webhooks: httpx.AsyncClient | None = None

    async def serve_extra(self, stack: AsyncExitStack, app: FastAPI) -> httpx.AsyncClient:
        """Run one more app (a second replica, say) until ``stack`` closes."""
        return await serve(stack, app, "extra")

    def topic(self, name: str) -> str:
        return self.intake_settings.topic(name)


# Webhooks in tests: a receiver on 127.0.0.1 is allowed, retries come fast.
WEBHOOKS_TEST_DEFAULTS = {
    "deployment_environment": "development",
    "allow_loopback_targets": True,
    "retry_schedule_s": [0.2, 0.2, 0.2, 0.2, 0.2],
    "retry_jitter_ratio": 0.0,
    "dispatcher_poll_interval_s": 0.2,
    "request_timeout_s": 3.0,
}


async def serve(stack: AsyncExitStack, app: FastAPI, name: str) -> httpx.AsyncClient:
    """Start ``app``'s lifespan and an ASGI client for it, both closed with ``stack``."""
    await stack.enter_async_context(app.router.lifespan_context(app))
    transport = httpx.ASGITransport(app=app)
    return await stack.enter_async_context(
        httpx.AsyncClient(transport=transport, base_url=f"http://{name}")
    )


SystemFactory = Callable[..., Awaitable[System]]


@asynccontextmanager
async def running_systems(infrastructure: Infrastructure) -> AsyncIterator[SystemFactory]:
    """A factory of running systems; everything it made is stopped and dropped on exit.

    ``make(routing={"outbox_poll_interval_s": 0.1}, clock=ManualClock())`` — keyword
    arguments override settings per service; the clock, when given, is shared by all
    three services. ``make(out_of_process={"routing"})`` leaves a service out: its settings
    (database, topics) are made but its app is not run here (``support.processes``).
    """
    stack = AsyncExitStack()
    mongo = AsyncMongoClient(infrastructure.mongodb_uri, tz_aware=True)
    run_ids: list[str] = []

    async def make(
        *,
        intake: dict | None = None,
        routing: dict | None = None,
        followup: dict | None = None,
        webhooks: dict | None = None,
        clock: Clock | None = None,
        seed: bool = True,
        out_of_process: Collection[str] = (),
    ) -> System:
        run_id = uuid.uuid4().hex[:10]
        run_ids.append(run_id)
        intake_settings = settings_for_test(
            IntakeSettings, infra=infrastructure, run_id=run_id, **(intake or {})
        )
        routing_settings = settings_for_test(
            RoutingSettings, infra=infrastructure, run_id=run_id, **(routing or {})
        )
        followup_settings = settings_for_test(
            FollowupSettings, infra=infrastructure, run_id=run_id, **(followup or {})
        )
        if seed:
            await seed_demo_org(db=mongo[routing_settings.database_name()])
        apps = {
            "intake": create_intake_app(intake_settings, clock=clock),
            "routing": create_routing_app(routing_settings, clock=clock),
            "followup": create_followup_app(followup_settings, clock=clock),
        }
        webhooks_settings = None
        if webhooks is not None:
            webhooks_settings = settings_for_test(
                WebhooksSettings,
                infra=infrastructure,
                run_id=run_id,
                **{**WEBHOOKS_TEST_DEFAULTS, **webhooks},
            )
            apps["webhooks"] = create_webhooks_app(webhooks_settings, clock=clock)
        unknown = set(out_of_process) - set(apps)
        assert not unknown, f"out_of_process names no service of this system: {unknown}"
        apps = {name: app for name, app in apps.items() if name not in out_of_process}
        clients = {name: await serve(stack, app, name) for name, app in apps.items()}
        return System(
            run_id=run_id,
            infra=infrastructure,
            intake_settings=intake_settings,
            routing_settings=routing_settings,
            followup_settings=followup_settings,
            intake=clients.get("intake"),
            routing=clients.get("routing"),
            followup=clients.get("followup"),
            intake_app=apps.get("intake"),
            routing_app=apps.get("routing"),
            followup_app=apps.get("followup"),
            mongo=mongo,
            clock=clock,
            webhooks_settings=webhooks_settings,
            webhooks=clients.get("webhooks"),
        )

    async def drop_databases() -> None:
        for run_id in run_ids:
            for name in await mongo.list_database_names():
                if name.startswith(f"t_{run_id}_"):
                    await mongo.drop_database(name)

    async def delete_topics() -> None:
        await _delete_topics(infrastructure, prefixes=[f"t{run_id}." for run_id in run_ids])

    # On exit the stack runs these last (``make`` enters the services after them), each one
    # even when a step before it failed: a service whose stop raised, or a drop that failed,
    # would otherwise leave this client open and the systems' topics in place.
    stack.push_async_callback(delete_topics)
    stack.push_async_callback(mongo.close)
    stack.push_async_callback(drop_databases)
    async with stack:
        yield make


# Topic deletion is tidying: a broker a fault test left stopped must not hold up the run.
TOPIC_DELETION_TIMEOUT_S = 10.0


async def _delete_topics(infrastructure: Infrastructure, *, prefixes: list[str]) -> None:
    """Delete the topics of these systems (each service's topics and dead-letter topics).

    A broker keeps files open for every partition it holds: left behind, one run of the
    suite's topics (about 7,000 partitions) made a second run on the same broker fail
    with "Too many open files".
    """
    if not prefixes:
        return
    admin = AIOKafkaAdminClient(bootstrap_servers=infrastructure.kafka_bootstrap_servers)
    try:
        async with asyncio.timeout(TOPIC_DELETION_TIMEOUT_S):
            await admin.start()
            names = [name for name in await admin.list_topics() if name.startswith(tuple(prefixes))]
            if names:
                await admin.delete_topics(names)
    except Exception as exc:  # the broker away: the next run's topics are its own anyway
        warnings.warn(f"topics of {prefixes} not deleted: {exc!r}", stacklevel=1)
    finally:
        await admin.close()
