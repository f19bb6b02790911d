"""RFC 9457 problem details for every error a service returns."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka.errors import KafkaError
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from pymongo.errors import PyMongoError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match

from complaints_shared.failures import TransientFailure, is_dependency_unavailable, redacted_error
from complaints_shared.logs import get_logger

PROBLEM_MEDIA_TYPE = "application/problem+json"
PROBLEM_TYPE_BASE = "https://complaint-desk.dev/problems/"

log = get_logger(__name__)


class ProblemError(Exception):
    """An error that becomes a problem+json response.

    ``kind`` becomes the problem ``type`` URI suffix, e.g. ``invalid-transition``;
    ``headers`` go on the response as they are (``Retry-After``).
    """

    def __init__(
        self,
        *,
        status: int,
        title: str,
        detail: str,
        kind: str,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.kind = kind
        self.headers = headers or {}
        self.extensions = extensions


class ConcurrentUpdate(ProblemError, TransientFailure):
    """A document kept changing under an optimistic write.

    A 409 problem for an HTTP caller; a transient failure the consumer loop retries.
    """

    def __init__(self, *, detail: str) -> None:
        super().__init__(
            status=409, title="Concurrent update", detail=detail, kind="concurrent-update"
        )


def not_found(*, what: str, identifier: str) -> ProblemError:
    return ProblemError(
        status=404,
        title="Not found",
        detail=f"{what} {identifier!r} was not found",
        kind="not-found",
    )


def invalid(field: str, message: str) -> ProblemError:
    """A body that is well-formed but refers to something wrong (unknown, cyclic, empty)."""
    return invalid_fields([{"field": field, "message": message}], detail=f"{field}: {message}")


def invalid_fields(errors: list[dict[str, str]], *, detail: str | None = None) -> ProblemError:
    """A 422 naming each offending field (``{"field": ..., "message": ...}``) as validation does."""
    named = detail or ", ".join(error["field"] for error in errors)
    return ProblemError(
        status=422,
        title="Invalid request",
        kind="validation-error",
        detail=f"invalid field(s): {named}",
        errors=errors,
    )


def conflict(detail: str, *, kind: str = "conflict") -> ProblemError:
    """A request that contradicts what is stored (a duplicate, a reference still in use)."""
    return ProblemError(status=409, title="Conflict", kind=kind, detail=detail)


def problem_response(
    *, request: Request, status: int, title: str, detail: str, kind: str, **extensions: Any
) -> JSONResponse:
    body = {
        "type": f"{PROBLEM_TYPE_BASE}{kind}",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
        **extensions,
    }
    return JSONResponse(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE)


class Problem(BaseModel):
    """An RFC 9457 problem: the body of every error answer (``application/problem+json``).
    Members beyond these (``current_status``, ``claimed_by``, ...) depend on the ``type``."""

    model_config = ConfigDict(extra="allow")

    type: str = Field(description="URI naming the kind of problem; stable, for code to match")
    title: str
    status: int
    detail: str = Field(description="What went wrong with this request, for a person")
    instance: str = Field(description="The request's path")


class FieldProblem(BaseModel):
    field: str = Field(description="Dotted path of the field (``customer.phone``, ``limit``)")
    message: str


class ValidationProblem(Problem):
    """A ``422``: the request's fields that are wrong, each named in ``errors``; a request
    refused as a whole (an ``Idempotency-Key`` reused for another request, a simulation
    that nothing routes) has none."""

    errors: list[FieldProblem] = Field(
        default_factory=list,
        description="Each field that is wrong, the first 50 (absent: none is named)",
    )
    errors_omitted: int | None = Field(
        None, description="How many more errors there were than `errors` lists"
    )


# Answers every operation may give besides its own (``document_problems``).
_UNAVAILABLE = {
    "description": "MongoDB or Kafka is unreachable, or the service is not ready: retry "
    "after `Retry-After` seconds; nothing was stored unless the operation says so",
    "headers": {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds"}},
}
_SECURED = {
    "401": "No bearer token, or one that is invalid or expired",
    "403": "The token's roles or branches do not allow this",
}


def document_problems(document: dict[str, Any]) -> dict[str, Any]:
    """``document`` (a service's OpenAPI) saying what its errors are: FastAPI documents a
    ``422`` as its own ``{"detail": [...]}``, which the services never send, and no other
    error. Every operation gets a ``422`` as a ``ValidationProblem``, ``401``/``403`` when
    it takes a token, ``503`` with ``Retry-After``, and any other error as a ``Problem``."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    for model in (Problem, FieldProblem, ValidationProblem):
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        schemas.update(schema.pop("$defs", {}))
        schemas[model.__name__] = schema

    def answer(description: str, model: type[Problem] = Problem, **extra: Any) -> dict:
        reference = {"$ref": f"#/components/schemas/{model.__name__}"}
        return {
            "description": description,
            "content": {PROBLEM_MEDIA_TYPE: {"schema": reference}},
            **extra,
        }

    for path_item in document.get("paths", {}).values():
        for operation in path_item.values():
            responses = operation.setdefault("responses", {})
            # Every operation, not only those FastAPI gives one: a query parameter the route
            # does not take (or one given too often) is a 422 anywhere (``http``).
            responses["422"] = answer(
                "A field is missing or invalid (`errors` names each, the first 50, "
                "`errors_omitted` counting the rest; a query parameter the operation does "
                "not take is one), or the request is refused as a whole",
                ValidationProblem,
            )
            if "requestBody" in operation:
                responses["415"] = answer("The body is sent as something other than JSON")
            if operation.get("security"):
                for status, description in _SECURED.items():
                    responses.setdefault(status, answer(description))
            if "503" not in responses:
                responses["503"] = answer(**_UNAVAILABLE)
            responses.setdefault(
                "default",
                answer(
                    "Any other refusal (404, 409, 412, 413, 428, ...), as a problem; the "
                    "operation's description names those it gives"
                ),
            )
    return document


def _field_path(location: tuple | list) -> str:
    # Drop the "body"/"query" prefix FastAPI adds; keep the rest as a dotted path.
    parts = [str(part) for part in location]
    if parts and parts[0] in {"body", "query", "path", "header"}:
        parts = parts[1:] or parts
    return ".".join(parts)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route of the path answers (RFC 9110 §15.5.6), ``HEAD`` with
    ``GET`` (``http.HeadAsGetMiddleware``). The framework named those of the first route
    matching the path alone: ``PUT /v1/complaints`` said ``Allow: POST``, not ``GET``."""
    routes = [route for route in request.app.router.routes if isinstance(route, BaseRoute)]
    methods = {
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes
        )
    }
    if "GET" in methods:
        methods.add("HEAD")
    return sorted(methods)


_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _field_of(error: dict[str, Any]) -> str:
    """The field an error names; a body that is no JSON at all names ``body`` (its location
    holds the byte offset, which was named as the field until 5 December)."""
    if error.get("type") == "json_invalid":
        return "body"
    return _field_path(error.get("loc", ()))


# The errors one 422 lists at most (``errors_omitted`` counts the rest): a body of 40,000
# bad list items was answered with all of them, 4.4 MB, until 5 December.
MAX_ERRORS_LISTED = 50


def _unsupported_media_type(request: Request, errors: list[dict[str, Any]]) -> JSONResponse | None:
    """A 415 for a body sent as something other than JSON (``text/plain``, a form), which
    the framework leaves unparsed and then finds "not a valid dictionary" (a 422 naming
    ``body`` until 5 December)."""
    content_type = request.headers.get("content-type")
    if content_type is None or not any(error.get("loc", ())[:1] == ("body",) for error in errors):
        return None
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type == "application/json" or media_type.endswith("+json"):
        return None
    return problem_response(
        request=request,
        status=415,
        title="Unsupported media type",
        detail=f"the body is sent as {media_type!r}; send it as application/json",
        kind="unsupported-media-type",
        errors=[{"field": "Content-Type", "message": "must be application/json"}],
    )


def install_problem_handlers(
    app: FastAPI,
    *,
    refusal: Callable[[Request], Awaitable[ProblemError | None]] | None = None,
) -> None:
    """Answer every error as a problem. ``refusal`` (``access.refusal``) is asked first
    for the request's form: a caller the route refuses gets that 401 or 403, not a 422
    or 400 about a body or query it may not send."""

    def _answer(request: Request, exc: ProblemError) -> JSONResponse:
        response = problem_response(
            request=request,
            status=exc.status,
            title=exc.title,
            detail=exc.detail,
            kind=exc.kind,
            **exc.extensions,
        )
        response.headers.update(exc.headers)
        return response

    async def _refused(request: Request) -> JSONResponse | None:
        refused = await refusal(request) if refusal is not None else None
        return _answer(request, refused) if refused is not None else None

    @app.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> JSONResponse:
        return _answer(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        if (refused := await _refused(request)) is not None:
            return refused
        found = exc.errors()
        if (unsupported := _unsupported_media_type(request, found)) is not None:
            return unsupported
        errors = [
            {"field": _field_of(error), "message": error.get("msg", "invalid")}
            for error in found[:MAX_ERRORS_LISTED]
        ]
        fields = ", ".join(error["field"] for error in errors)
        omitted = len(found) - len(errors)
        more = {"errors_omitted": omitted} if omitted else {}
        return problem_response(
            request=request,
            status=422,
            title="Invalid request",
            detail=f"invalid field(s): {fields}" + (f" and {omitted} more" if omitted else ""),
            kind="validation-error",
            errors=errors,
            **more,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code in (400, 413) and (refused := await _refused(request)) is not None:
            return refused
        if isinstance(exc, BodyTooLarge):
            return body_too_large_response(request=request, limit=exc.limit)
        if isinstance(exc.__cause__, UnicodeDecodeError):  # FastAPI's "error parsing the body"
            at = exc.__cause__.start
            return problem_response(
                request=request,
                status=400,
                title="Invalid request",
                detail=f"the body is not UTF-8: an invalid byte at offset {at}",
                kind="body-not-utf8",
                errors=[{"field": "body", "message": f"not UTF-8 (byte {at})"}],
            )
        if exc.status_code == 400 and isinstance(exc.__cause__, ValueError | RecursionError):
            # FastAPI's "error parsing the body" for JSON Python will not read: an integer of
            # thousands of digits, arrays nested a thousand deep.
            return problem_response(
                request=request,
                status=400,
                title="Invalid request",
                detail="the body could not be read as JSON: nested too deep or a number too long",
                kind="body-unreadable",
                errors=[{"field": "body", "message": "nested too deep or a number too long"}],
            )
        response = problem_response(
            request=request,
            status=exc.status_code,
            title=_reason(exc.status_code),
            detail=str(exc.detail),
            kind=_reason(exc.status_code).lower().replace(" ", "-"),
        )
        for name, value in (exc.headers or {}).items():
            response.headers[name] = value
        if exc.status_code == 405:
            response.headers["Allow"] = ", ".join(_allowed_methods(request))
        return response

    async def _dependency_error(request: Request, exc: Exception) -> JSONResponse:
        if is_dependency_unavailable(exc):
            return unavailable_response(request=request, exc=exc)
        return _internal_error(request=request, exc=exc)

    # Registered per class so the response is final (the catch-all below is Starlette's
    # last resort, which re-raises after answering).
    app.add_exception_handler(PyMongoError, _dependency_error)
    app.add_exception_handler(KafkaError, _dependency_error)
    app.add_exception_handler(TimeoutError, _dependency_error)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return await _dependency_error(request, exc)


class BodyTooLarge(StarletteHTTPException):
    """A body read past ``limit`` bytes (one sent without a length, in chunks). An HTTP
    exception, so that FastAPI's body reader passes it on instead of answering 400."""

    def __init__(self, *, limit: int) -> None:
        super().__init__(status_code=413)
        self.limit = limit


def body_too_large_response(*, request: Request, limit: int) -> JSONResponse:
    return problem_response(
        request=request,
        status=413,
        title="Request body too large",
        kind="body-too-large",
        detail=f"request bodies are limited to {limit} bytes",
        errors=[{"field": "body", "message": f"over {limit} bytes"}],
    )


def unavailable_response(*, request: Request, exc: BaseException) -> JSONResponse:
    """503 with ``Retry-After``: a dependency is away; the same request can be sent again."""
    retry_after_s = _retry_after_s(request)
    log.warning(
        "dependency_unavailable",
        path=request.url.path,
        method=request.method,
        error=redacted_error(exc),
    )
    response = problem_response(
        request=request,
        status=503,
        title="Service unavailable",
        detail="a service this request needs (database or message broker) is unreachable "
        f"right now; retry after {retry_after_s} seconds",
        kind="dependency-unavailable",
    )
    response.headers["Retry-After"] = str(retry_after_s)
    return response


def _internal_error(*, request: Request, exc: Exception) -> JSONResponse:
    log.error(
        "unhandled_error",
        path=request.url.path,
        method=request.method,
        exc_info=(type(exc), exc, exc.__traceback__),
    )
    return problem_response(
        request=request,
        status=500,
        title="Internal error",
        # The failure may come after a write, so we cannot promise nothing changed.
        detail="an unexpected error stopped the request; part of it may already be stored. "
        "Read the resource's current state before repeating a change (a creation retried "
        "with the same Idempotency-Key is safe)",
        kind="internal-error",
    )


def _retry_after_s(request: Request) -> int:
    settings = getattr(request.app.state, "settings", None)
    return int(getattr(settings, "unavailable_retry_after_s", 5))


def _reason(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
