"""The FastAPI app every service starts from: problems, probes, metrics."""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.types import ASGIApp, Receive, Scope, Send

from complaints_shared.logs import configure_logging
from complaints_shared.metrics import HTTP_REQUESTS
from complaints_shared.problems import install_problem_handlers
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


def build_app(
    *,
    settings: ServiceSettings,
    title: str,
    description: str,
    lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]],
    routers: list[APIRouter],
) -> FastAPI:
    configure_logging(service_name=settings.service_name, level=settings.log_level)
    app = FastAPI(title=title, description=description, version="1.0.0", lifespan=lifespan)
    app.state.settings = settings
    install_problem_handlers(app)
    app.add_middleware(RequestMetricsMiddleware, service_name=settings.service_name)

    @app.get("/healthz", tags=["operations"], summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"], summary="Kafka and MongoDB are reachable")
    async def readyz(request: Request) -> JSONResponse:
        checks = await request.app.state.runtime.readiness()
        ready = all(checks.values())
        return JSONResponse(
            {"status": "ready" if ready else "not_ready", "checks": checks},
            status_code=200 if ready else 503,
        )

    @app.get("/metrics", tags=["operations"], summary="Prometheus metrics")
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    for router in routers:
        app.include_router(router)
    return app
