"""Routing service: the app factory and its lifespan."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

from fastapi import FastAPI
from pymongo.asynchronous.database import AsyncDatabase

from complaints_shared import business_calendar
from complaints_shared.clock import Clock
from complaints_shared.events import Topic
from complaints_shared.http import build_app
from complaints_shared.runtime import service_runtime
from routing.assignments import api as assignment_api
from routing.assignments import major_incidents, store
from routing.assignments.scheduler import SlaScheduler
from routing.directory import api as directory_api
from routing.directory import store as directory_store
from routing.handlers import build_handlers
from routing.rules import api as rules_api
from routing.settings import RoutingSettings
from routing.sla import api as policy_api


async def prepare(*, db: AsyncDatabase) -> None:
    """The indexes, then the start-up repair of work older releases left."""
    await store.ensure_indexes(db=db)
    await major_incidents.mark_unmarked(db=db)


def create_app(settings: RoutingSettings | None = None, *, clock: Clock | None = None) -> FastAPI:
    """The ASGI app; ``clock`` lets tests move time instead of sleeping."""
    settings = settings or RoutingSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # The holiday tables load slowly: at start and off the loop, not in a complaint's routing.
        await asyncio.to_thread(business_calendar.warm_up, now=datetime.now(UTC))
        scheduler = SlaScheduler(settings=settings)
        async with service_runtime(
            app=app,
            settings=settings,
            outbox_collections=[
                store.ASSIGNMENTS,
                directory_store.BRANCHES,
                directory_store.DEPARTMENTS,
                directory_store.STAFF,
            ],
            consumed_topics=[Topic.INTAKE],
            handlers=build_handlers,
            ensure_indexes=prepare,
            background_jobs=[
                scheduler.run_sla_timers,
                scheduler.run_queue_sweeper,
                scheduler.run_load_hint_reconciler,
            ],
            clock=clock,
        ):
            yield

    return build_app(
        settings=settings,
        title="Complaint routing",
        description="Directory, routing rules, owners, SLA clocks, timers and escalation.",
        lifespan=lifespan,
        routers=[assignment_api.router, directory_api.router, rules_api.router, policy_api.router],
    )
