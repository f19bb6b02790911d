"""Shared fixtures: real infrastructure once per session, a fresh system per test.

Each test gets its own topic prefix and databases, so tests can run in any order
and never see each other's events or documents.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass

import httpx
import pytest
from complaints_shared.settings import ServiceSettings
from fastapi import FastAPI
from followup.main import create_app as create_followup_app
from followup.settings import FollowupSettings
from intake.main import create_app as create_intake_app
from intake.settings import IntakeSettings
from pymongo import AsyncMongoClient
from routing.demo import seed_demo_org
from routing.main import create_app as create_routing_app
from routing.settings import RoutingSettings

from tests.infrastructure import Infrastructure, provide_infrastructure


@pytest.fixture(scope="session")
def infrastructure() -> Iterator[Infrastructure]:
    infra = provide_infrastructure()
    yield infra
    for close in infra.closers:
        close()


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
        **overrides,
    }
    return settings_class(**values)


@dataclass
class System:
    """The three services of one test, reachable in-process over ASGI."""

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

    def topic(self, name: str) -> str:
        return self.intake_settings.topic(name)


async def _serve(stack: AsyncExitStack, app: FastAPI, name: str) -> httpx.AsyncClient:
    await stack.enter_async_context(app.router.lifespan_context(app))
    transport = httpx.ASGITransport(app=app)
    return await stack.enter_async_context(
        httpx.AsyncClient(transport=transport, base_url=f"http://{name}")
    )


@pytest.fixture
async def system(infrastructure: Infrastructure) -> AsyncIterator[System]:
    run_id = uuid.uuid4().hex[:10]
    intake_settings = settings_for_test(IntakeSettings, infra=infrastructure, run_id=run_id)
    routing_settings = settings_for_test(RoutingSettings, infra=infrastructure, run_id=run_id)
    followup_settings = settings_for_test(FollowupSettings, infra=infrastructure, run_id=run_id)
    mongo = AsyncMongoClient(infrastructure.mongodb_uri, tz_aware=True)
    await seed_demo_org(db=mongo[routing_settings.database_name()])
    apps = {
        "intake": create_intake_app(intake_settings),
        "routing": create_routing_app(routing_settings),
        "followup": create_followup_app(followup_settings),
    }
    async with AsyncExitStack() as stack:
        clients = {name: await _serve(stack, app, name) for name, app in apps.items()}
        yield System(
            run_id=run_id,
            infra=infrastructure,
            intake_settings=intake_settings,
            routing_settings=routing_settings,
            followup_settings=followup_settings,
            intake=clients["intake"],
            routing=clients["routing"],
            followup=clients["followup"],
            intake_app=apps["intake"],
            routing_app=apps["routing"],
            followup_app=apps["followup"],
            mongo=mongo,
        )
    for settings in (intake_settings, routing_settings, followup_settings):
        await mongo.drop_database(settings.database_name())
    await mongo.close()
