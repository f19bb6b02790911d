"""Intake service: the app factory and its lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from pymongo.asynchronous.database import AsyncDatabase

from complaints_shared.clock import Clock
from complaints_shared.events import Topic
from complaints_shared.http import build_app
from complaints_shared.runtime import service_runtime
from intake import (
    api,
    directory_names,
    idempotency,
    postings,
    repair,
    rollup,
    store,
    submissions,
)
from intake.handlers import build_handlers
from intake.settings import IntakeSettings


async def ensure_indexes(*, db: AsyncDatabase) -> None:
    await store.ensure_indexes(db=db)
    await postings.ensure_indexes(db=db)
    await submissions.ensure_indexes(db=db)
    await idempotency.ensure_indexes(db=db)
    await rollup.ensure_indexes(db=db)
    await directory_names.ensure_indexes(db=db)
    await repair.at_start(db=db)


def create_app(settings: IntakeSettings | None = None, *, clock: Clock | None = None) -> FastAPI:
    """The ASGI app; ``clock`` lets tests move time instead of sleeping."""
    settings = settings or IntakeSettings()

    async def prepare(*, db: AsyncDatabase) -> None:
        await ensure_indexes(db=db)
        await directory_names.at_start(db=db, settings=settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with service_runtime(
            app=app,
            settings=settings,
            outbox_collections=[store.COMPLAINTS],
            consumed_topics=[Topic.ROUTING, Topic.FOLLOWUP],
            handlers=build_handlers,
            ensure_indexes=prepare,
            background_jobs=[rollup.run_rollup, directory_names.run_settling],
            clock=clock,
        ):
            yield

    return build_app(
        settings=settings,
        title="Complaint intake",
        description="The complaint of record: registration, lifecycle, timeline.",
        lifespan=lifespan,
        routers=[api.router, api.reports_router],
    )
