"""Test support for webhooks: real HTTP receivers on 127.0.0.1 and the service under test."""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI
from pymongo import AsyncMongoClient
from starlette.requests import Request
from starlette.responses import Response

from complaints_shared.events import EventType
from tests.support.infrastructure import Infrastructure
from tests.support.system import WEBHOOKS_TEST_DEFAULTS, System, serve, settings_for_test
from tests.support.waits import eventually
from webhooks import store
from webhooks.main import create_app
from webhooks.settings import WebhooksSettings

EVENTS = "org.complaintdesk."


@dataclass
class Received:
    """One request as the receiver saw it."""

    headers: dict[str, str]
    body: bytes
    arrived_at: float  # time.time() when the request reached the receiver
    status: int

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]


# Decides the answer to the n-th request (0-based): a status code.
Behaviour = Callable[[int], Awaitable[int] | int]


@dataclass
class Receiver:
    """A real HTTP server on 127.0.0.1 recording every request it gets."""

    url: str
    behaviour: Behaviour
    requests: list[Received] = field(default_factory=list)

    def bodies(self) -> list[dict]:
        import orjson

        return [orjson.loads(request.body) for request in self.requests]

    def delivered_ids(self) -> set[str]:
        return {r.webhook_id for r in self.requests if 200 <= r.status < 300}


def _free_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    sock.setblocking(False)
    return sock


@asynccontextmanager
async def receiver(behaviour: Behaviour = lambda n: 200) -> AsyncIterator[Receiver]:
    """Serve a recording receiver with uvicorn in this event loop until the block ends."""
    sock = _free_socket()
    port = sock.getsockname()[1]
    state = Receiver(url=f"http://127.0.0.1:{port}/hooks", behaviour=behaviour)
    app = FastAPI()

    @app.post("/hooks")
    async def hooks(request: Request) -> Response:
        arrived_at = time.time()
        body = await request.body()
        index = len(state.requests)
        state.requests.append(Received(dict(request.headers), body, arrived_at, 0))
        status = state.behaviour(index)
        if asyncio.iscoroutine(status):
            status = await status
        state.requests[index].status = status
        return Response(status_code=status, content=b'{"ok": true}' if status < 300 else b"nope")

    server = uvicorn.Server(
        uvicorn.Config(app, log_level="warning", lifespan="off", access_log=False)
    )
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        await eventually(lambda: asyncio.sleep(0, server.started), interval_s=0.01, what="receiver")
        yield state
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout=10)


@asynccontextmanager
async def silent_target(received: list[bytes] | None = None) -> AsyncIterator[str]:
    """A target that accepts connections and never answers (requests time out); what it
    reads is appended to ``received``, if given (a request has reached it)."""
    connections: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        while chunk := await reader.read(65536):
            if received is not None:
                received.append(chunk)

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/hooks"
    finally:
        for writer in connections:
            writer.close()
        server.close()


@dataclass
class Isolation:
    """What a test's services share: the infrastructure and a run id (topics, databases).

    A ``System`` is one; a test of the webhooks service alone makes one of its own.
    """

    infra: Infrastructure
    run_id: str


def webhooks_database(system: System | Isolation) -> str:
    """The database of the webhooks service of ``system``'s test."""
    return f"t_{system.run_id}_webhooks"


@asynccontextmanager
async def webhooks_alone(infra: Infrastructure) -> AsyncIterator[Isolation]:
    """An isolation for the webhooks service tested on its own (no other service consumes
    its topics); its database is dropped afterwards."""
    isolation = Isolation(infra=infra, run_id=uuid.uuid4().hex[:10])
    try:
        yield isolation
    finally:
        mongo = AsyncMongoClient(infra.mongodb_uri)
        try:
            await mongo.drop_database(webhooks_database(isolation))
        finally:
            await mongo.close()


def pending_delivery(
    subscription_id: str,
    *,
    next_attempt_at: datetime | None,
    chain: str | None = None,
    order_key: str = "1",
) -> dict[str, Any]:
    """A pending delivery of a ``complaint.received`` of no event time (the dispatcher need
    not wait for the order watermark), in ``chain`` (a fresh one if None), as the service
    stores it; ``next_attempt_at`` None: held (no timer)."""
    chain = chain or str(uuid.uuid4())
    document = store.new_delivery(
        delivery_id=f"msg_{uuid.uuid4().hex}",
        subscription={"_id": subscription_id},
        org="demo",
        branch="LZ",
        event_id=str(uuid.uuid4()),
        event_type=EventType.COMPLAINT_RECEIVED.value,
        event_time=None,
        subject=chain,
        complaint_id=chain,
        body=f'{{"chain": "{chain}", "order": "{order_key}"}}',
        order_key=order_key,
        now=datetime.now(UTC),
    )
    if next_attempt_at is None:
        del document["next_attempt_at"]
    else:
        document["next_attempt_at"] = next_attempt_at
    return document


def webhooks_settings(system: System | Isolation, **overrides) -> WebhooksSettings:
    """The webhooks service of ``system``'s test: its topics, its own database, fast retries."""
    values = {**WEBHOOKS_TEST_DEFAULTS, **overrides}
    return settings_for_test(WebhooksSettings, infra=system.infra, run_id=system.run_id, **values)


@dataclass
class Webhooks:
    settings: WebhooksSettings
    client: httpx.AsyncClient
    app: FastAPI


async def serve_webhooks(
    stack: AsyncExitStack, system: System | Isolation, *, clock=None, **overrides
) -> Webhooks:
    settings = webhooks_settings(system, **overrides)
    app = create_app(settings, clock=clock)
    client = await serve(stack, app, "webhooks")
    # Subscriptions made before the consumer holds its partitions would still see every
    # event (it reads from the earliest offset), but waiting keeps timings honest.
    runtime = app.state.runtime
    await eventually(
        lambda: asyncio.sleep(0, runtime.consumer.assigned.is_set()),
        timeout_s=30,
        what="webhooks consumer assigned",
    )
    return Webhooks(settings=settings, client=client, app=app)


async def subscribe(
    webhooks: Webhooks, headers: dict[str, str], *, url: str, event_types=("*",), **fields
) -> dict:
    response = await webhooks.client.post(
        "/v1/webhooks/subscriptions",
        json={"target_url": url, "event_types": list(event_types), **fields},
        headers=headers,
    )
    assert response.status_code == 201, response.text
    return response.json()
