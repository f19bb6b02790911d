"""Follow-up service: the app factory and its lifespan."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from complaints_shared.clock import Clock
from complaints_shared.events import Topic
from complaints_shared.http import build_app
from complaints_shared.runtime import service_runtime
from followup import api, store
from followup.contact_hours import default_contact_hours
from followup.handlers import build_handlers
from followup.scheduler import CheckScheduler
from followup.settings import FollowupSettings


def create_app(settings: FollowupSettings | None = None, *, clock: Clock | None = None) -> FastAPI:
    """The ASGI app; ``clock`` lets tests move time instead of sleeping."""
    settings = settings or FollowupSettings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Fail fast on bad contact-hour settings; off the loop, as the holiday tables load slowly.
        await asyncio.to_thread(default_contact_hours, settings)
        scheduler = CheckScheduler(settings=settings)
        async with service_runtime(
            app=app,
            settings=settings,
            outbox_collections=[store.CHECKS],
            # Intake's resolutions and closures; routing's branch announcements (time zones).
            consumed_topics=[Topic.INTAKE, Topic.ROUTING],
            handlers=build_handlers,
            ensure_indexes=store.ensure_indexes,
            background_jobs=[scheduler.run_scheduler],
            clock=clock,
        ):
            yield

    return build_app(
        settings=settings,
        title="Complaint follow-up",
        description="Satisfaction call-backs after resolution.",
        lifespan=lifespan,
        routers=[api.router],
    )
