"""Routing service: the app factory and its lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from complaints_shared.clock import Clock
from complaints_shared.events import Topic
from complaints_shared.http import build_app
from complaints_shared.runtime import service_runtime
from fastapi import FastAPI

from routing import api, store
from routing.handlers import build_handlers
from routing.settings import RoutingSettings


def create_app(settings: RoutingSettings | None = None, *, clock: Clock | None = None) -> FastAPI:
    """The ASGI app; ``clock`` lets tests move time instead of sleeping."""
    settings = settings or RoutingSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with service_runtime(
            settings=settings,
            outbox_collections=[store.ASSIGNMENTS],
            consumed_topics=[Topic.INTAKE],
            handlers=build_handlers,
            ensure_indexes=store.ensure_indexes,
            clock=clock,
        ) as runtime:
            app.state.runtime = runtime
            yield

    return build_app(
        settings=settings,
        title="Complaint routing",
        description="Departments, owners, routing rules, due times.",
        lifespan=lifespan,
        routers=[api.router],
    )
