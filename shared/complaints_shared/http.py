"""The FastAPI app every service starts from: problems, probes, metrics."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from types import UnionType
from typing import Annotated, Any, Union, get_args, get_origin

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.dependencies.models import Dependant
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from complaints_shared.access import public, refusal
from complaints_shared.auth import TokenVerifier
from complaints_shared.logs import configure_logging
from complaints_shared.metrics import HTTP_REQUESTS
from complaints_shared.problems import (
    BodyTooLarge,
    body_too_large_response,
    document_problems,
    install_problem_handlers,
)
from complaints_shared.runtime import runtime_of
from complaints_shared.settings import ServiceSettings


class RequestMetricsMiddleware:
    """Pure ASGI middleware recording latency by route template (not raw path)."""

    def __init__(self, app: ASGIApp, *, service_name: str) -> None:
        self.app = app
        self.service_name = service_name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status_holder = {"status": 500}

        async def send_with_status(message: dict) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = scope.get("route")
            HTTP_REQUESTS.labels(
                self.service_name,
                scope["method"],
                getattr(route, "path", "unmatched"),
                str(status_holder["status"]),
            ).observe(time.perf_counter() - started)


class HeadAsGetMiddleware:
    """``HEAD`` answered as ``GET`` without the body (RFC 9110 §9.3.2), on every route that
    answers ``GET``: the routes declare ``GET`` alone, and a ``HEAD`` (a monitor's probe of
    ``/healthz``, a client checking a complaint exists) was a 405 until 5 December."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def without_body(message: Message) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, without_body)


class BodySizeLimitMiddleware:
    """Refuse bodies over the limit with a 413 problem before any handler reads them."""

    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await self._too_large(scope, receive, send)
            return
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:
                # Passed on by FastAPI's body reader (which answered any other error 400).
                raise BodyTooLarge(limit=self.max_body_bytes)
            return message

        try:
            await self.app(scope, counting_receive, send)
        except BodyTooLarge:  # read outside a route's body reader
            await self._too_large(scope, receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        response = body_too_large_response(request=request, limit=self.max_body_bytes)
        await response(scope, receive, send)


_QUERY_NAMES_ATTRIBUTE = "declared_query_names"


def _declared_query_names(route: APIRoute) -> dict[str, bool]:
    """Every query parameter a route declares, its dependencies' and query models' included,
    each with whether it takes several values (a list).

    Worked out once per route and kept on it (routes are not hashable).
    """
    known = getattr(route, _QUERY_NAMES_ATTRIBUTE, None)
    if known is not None:
        return known
    names: dict[str, bool] = {}
    pending: list[Dependant] = [route.dependant]
    while pending:
        current = pending.pop()
        pending.extend(current.dependencies)
        for param in current.query_params:
            annotation = param.field_info.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                for name, field in annotation.model_fields.items():
                    names[field.alias or name] = _takes_many(field.annotation)
            else:
                names[param.alias] = _takes_many(annotation)
    setattr(route, _QUERY_NAMES_ATTRIBUTE, names)
    return names


def _takes_many(annotation: Any) -> bool:
    """Whether a parameter of this type is a list (``list[str] | None`` is)."""
    origin = get_origin(annotation)
    if origin in (Union, UnionType, Annotated):
        return any(_takes_many(argument) for argument in get_args(annotation))
    return (origin or annotation) in (list, set, frozenset, tuple)


# The most values one query parameter may be given (``?branch=A&branch=B...``).
MAX_QUERY_VALUES = 100


async def check_query_parameters(request: Request) -> None:
    """A query parameter no route declares is a 422 naming it, never silently ignored, and
    so is one given more than ``MAX_QUERY_VALUES`` times.

    ``?branch=LZ`` on a route without a branch filter would otherwise answer for every
    branch, which the caller cannot tell from a filtered answer. And a list filter repeated
    a million times (a long URL, which uvicorn does not bound) became a database query over
    16 MB, a 500 until 5 December.
    """
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    declared = _declared_query_names(route)
    unknown = sorted(set(request.query_params) - set(declared))
    counts: dict[str, int] = {}
    for name, _ in request.query_params.multi_items():
        counts[name] = counts.get(name, 0) + 1
    repeated = sorted(name for name, count in counts.items() if count > MAX_QUERY_VALUES)
    # Given twice where one value is taken: the framework kept the last, so
    # ``?status=due&status=completed`` answered for "completed" alone until 5 December.
    doubled = sorted(
        name
        for name, count in counts.items()
        if count > 1 and name in declared and not declared[name]
    )
    errors = (
        [
            {"type": "extra_forbidden", "loc": ("query", name), "msg": "unknown parameter"}
            for name in unknown
        ]
        + [
            {
                "type": "too_long",
                "loc": ("query", name),
                "msg": f"given {counts[name]} times: at most {MAX_QUERY_VALUES} values",
            }
            for name in repeated
            if name not in unknown
        ]
        + [
            {
                "type": "too_long",
                "loc": ("query", name),
                "msg": f"given {counts[name]} times: it takes one value",
            }
            for name in doubled
        ]
    )
    if errors:
        raise RequestValidationError(errors)


def build_app(
    *,
    settings: ServiceSettings,
    title: str,
    description: str,
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]],
    routers: list[APIRouter],
) -> FastAPI:
    configure_logging(service_name=settings.service_name, level=settings.log_level)
    app = FastAPI(
        title=title,
        description=description,
        version="1.0.0",
        lifespan=lifespan,
        dependencies=[Depends(check_query_parameters)],
    )
    app.state.settings = settings
    app.state.token_verifier = TokenVerifier(settings)
    install_problem_handlers(app, refusal=refusal)
    app.add_middleware(BodySizeLimitMiddleware, max_body_bytes=settings.max_body_bytes)
    app.add_middleware(RequestMetricsMiddleware, service_name=settings.service_name)
    app.add_middleware(HeadAsGetMiddleware)

    @app.get(
        "/healthz",
        tags=["operations"],
        summary="The process is alive",
        dependencies=[public("liveness probe of the orchestrator")],
    )
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        tags=["operations"],
        summary="Kafka and MongoDB are reachable and every background loop is running",
        dependencies=[public("readiness probe of the orchestrator")],
        responses={
            503: {
                "description": "Not ready: `checks` says which dependency or loop is not",
                "content": {"application/json": {}},
            }
        },
    )
    async def readyz(request: Request) -> JSONResponse:
        checks = await runtime_of(request).readiness()
        ready = all(checks.values())
        return JSONResponse(
            {"status": "ready" if ready else "not_ready", "checks": checks},
            status_code=200 if ready else 503,
        )

    @app.get(
        "/metrics",
        tags=["operations"],
        summary="Prometheus metrics",
        dependencies=[
            public(
                "Prometheus scrape: counts and latencies labelled by route, department and "
                "webhook subscription, no complaint data; the gateway does not route it "
                "(internal network only)"
            )
        ],
    )
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    for router in routers:
        app.include_router(router)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_problems(FastAPI.openapi(app))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app
