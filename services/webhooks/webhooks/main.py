"""Webhooks service: the app factory and its lifespan."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from fastapi import FastAPI

from complaints_shared.clock import Clock
from complaints_shared.events import Topic
from complaints_shared.http import build_app
from complaints_shared.runtime import service_runtime
from webhooks import api, store
from webhooks.handlers import build_handlers
from webhooks.scheduler import Dispatcher
from webhooks.settings import WebhooksSettings


def create_app(settings: WebhooksSettings | None = None, *, clock: Clock | None = None) -> FastAPI:
    """The ASGI app; ``clock`` lets tests move time instead of sleeping."""
    settings = settings or WebhooksSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        dispatcher = Dispatcher(settings=settings)
        app.state.dispatcher = dispatcher
        async with service_runtime(
            app=app,
            settings=settings,
            outbox_collections=[],
            consumed_topics=list(Topic),
            handlers=partial(build_handlers, dispatcher=dispatcher),
            ensure_indexes=partial(
                store.ensure_indexes, finished_delivery_kept_s=settings.delivery_retention_s
            ),
            background_jobs=[
                dispatcher.run_dispatcher,
                dispatcher.run_due_discovery,
                dispatcher.run_backlog_gauge,
                dispatcher.run_stranded_repair,
                dispatcher.watermark.run_watermark,
            ],
            clock=clock,
        ):
            yield

    return build_app(
        settings=settings,
        title="Complaint webhooks",
        description="Every complaint event pushed to integrators over HTTP: signed "
        "(Standard Webhooks), retried, in order per complaint, never lost.",
        lifespan=lifespan,
        routers=[api.router],
    )
