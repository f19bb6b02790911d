"""A scratch database whose ``find`` commands are recorded, for tests of how reads are shaped."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from pymongo import AsyncMongoClient, monitoring
from pymongo.asynchronous.database import AsyncDatabase

from complaints_shared.mongo import STORED_CODEC
from tests.support.infrastructure import Infrastructure


class Finds(monitoring.CommandListener):
    """The filter of every ``find`` command sent, in order."""

    def __init__(self) -> None:
        self.filters: list[dict[str, Any]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "find":
            self.filters.append(dict(event.command.get("filter") or {}))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@asynccontextmanager
async def scratch_database(
    infrastructure: Infrastructure, finds: Finds, *, prefix: str
) -> AsyncIterator[AsyncDatabase]:
    """A database of its own, read as the services read theirs, dropped afterwards."""
    client = AsyncMongoClient(infrastructure.mongodb_uri, tz_aware=True, event_listeners=[finds])
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    try:
        yield client.get_database(name, codec_options=STORED_CODEC)
    finally:
        await client.drop_database(name)
        await client.close()
