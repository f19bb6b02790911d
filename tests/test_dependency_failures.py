"""An unavailable dependency is a 503 with Retry-After, never a 500; failures are described
without field values."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
from aiokafka.errors import KafkaConnectionError
from fastapi import APIRouter, FastAPI
from pydantic import BaseModel, ValidationError
from pymongo import AsyncMongoClient
from pymongo.errors import (
    AutoReconnect,
    BulkWriteError,
    CursorNotFound,
    DuplicateKeyError,
    NetworkTimeout,
    WriteConcernError,
)

from complaints_shared.failures import (
    Rejected,
    TransientFailure,
    is_dependency_unavailable,
    is_transient,
    redacted_error,
)
from complaints_shared.http import build_app
from complaints_shared.settings import ServiceSettings
from tests.support.private_infrastructure import free_port
from tests.support.system import TEST_JWT_SECRET

PHONE = "13800138000"


@asynccontextmanager
async def _no_runtime(app: FastAPI) -> AsyncIterator[None]:
    yield


def _app_raising(exc_by_path: dict[str, BaseException], **settings: object) -> FastAPI:
    router = APIRouter()
    for path, exc in exc_by_path.items():
        router.add_api_route(path, _raiser(exc), methods=["POST"])
    return build_app(
        settings=ServiceSettings(service_name="probe", jwt_secret=TEST_JWT_SECRET, **settings),
        title="probe",
        description="",
        lifespan=_no_runtime,
        routers=[router],
    )


def _raiser(exc: BaseException):
    async def fail() -> None:
        raise exc

    return fail


async def _post(app: FastAPI, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://probe") as client:
        return await client.post(path)


def _assert_unavailable(response: httpx.Response, *, retry_after: str = "5") -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.headers["retry-after"] == retry_after
    body = response.json()
    assert body["type"].endswith("/dependency-unavailable")
    assert body["status"] == 503


async def test_unreachable_database_answers_503_with_retry_after() -> None:
    client = AsyncMongoClient(f"mongodb://127.0.0.1:{free_port()}", serverSelectionTimeoutMS=300)
    router = APIRouter()

    @router.post("/v1/things")
    async def create_thing() -> dict:
        await client.probe.things.insert_one({"phone": PHONE})
        return {}

    app = build_app(
        settings=ServiceSettings(
            service_name="probe", jwt_secret=TEST_JWT_SECRET, unavailable_retry_after_s=7
        ),
        title="probe",
        description="",
        lifespan=_no_runtime,
        routers=[router],
    )
    try:
        response = await _post(app, "/v1/things")
    finally:
        await client.close()
    _assert_unavailable(response, retry_after="7")
    assert PHONE not in response.text


@pytest.mark.parametrize(
    "exc",
    [
        AutoReconnect("connection is already closed"),
        NetworkTimeout("timed out"),
        WriteConcernError("Primary stepped down", code=189),
        WriteConcernError("waiting for replication timed out", code=64),
        KafkaConnectionError("no broker"),
        TimeoutError(),
        CursorNotFound("cursor id 42 not found", code=43),
        BulkWriteError({"writeErrors": [{"index": 0, "code": 10107}], "writeConcernErrors": []}),
        BulkWriteError({"writeErrors": [], "writeConcernErrors": [{"code": 64}]}),
    ],
    ids=[
        "auto-reconnect",
        "network-timeout",
        "step-down",
        "wtimeout",
        "kafka",
        "timeout",
        "cursor-lost-in-a-restart",
        "bulk-refused-by-a-former-primary",
        "bulk-wtimeout",
    ],
)
async def test_dependency_errors_answer_503_not_500(exc: BaseException) -> None:
    response = await _post(_app_raising({"/x": exc}), "/x")
    _assert_unavailable(response)


async def test_a_wrapped_outage_still_answers_503() -> None:
    try:
        try:
            raise AutoReconnect("connection reset")
        except AutoReconnect as cause:
            raise RuntimeError("could not store the complaint") from cause
    except RuntimeError as wrapped:
        exc = wrapped
    _assert_unavailable(await _post(_app_raising({"/x": exc}), "/x"))


async def test_other_errors_answer_500_without_promising_nothing_changed() -> None:
    duplicate = DuplicateKeyError(f"E11000 duplicate key dup key: {{ phone: {PHONE!r} }}", 11000)
    app = _app_raising({"/dup": duplicate, "/bug": ValueError("bug")})
    for path in ("/dup", "/bug"):
        response = await _post(app, path)
        assert response.status_code == 500
        assert "retry-after" not in response.headers
        detail = response.json()["detail"]
        assert "nothing was changed" not in detail
        assert "may already be stored" in detail
        assert PHONE not in response.text


def test_classification_separates_transient_from_permanent() -> None:
    assert is_transient(AutoReconnect("x"))
    assert is_transient(TransientFailure("assignment kept changing"))
    assert not is_dependency_unavailable(TransientFailure("assignment kept changing"))
    assert not is_transient(WriteConcernError("bad write concern", code=100))
    assert not is_transient(DuplicateKeyError("dup", 11000))
    duplicate_in_bulk = {"writeErrors": [{"index": 0, "code": 11000}], "writeConcernErrors": []}
    assert not is_transient(BulkWriteError(duplicate_in_bulk))
    mixed = {"writeErrors": [{"index": 0, "code": 11000}, {"index": 1, "code": 189}]}
    assert not is_transient(BulkWriteError(mixed))
    assert not is_transient(Rejected("no such department"))
    assert not is_transient(ValueError("x"))


class _Caller(BaseModel):
    phone: int
    name: str


def test_redacted_error_keeps_locations_and_types_never_values() -> None:
    with pytest.raises(ValidationError) as caught:
        _Caller.model_validate({"phone": PHONE + "x", "name": None})
    text = redacted_error(caught.value)
    assert "phone: int_parsing" in text
    assert "name: string_type" in text
    assert PHONE not in text

    duplicate = DuplicateKeyError(f"dup key: {{ phone: {PHONE!r} }}", 11000, {"codeName": "Dup"})
    text = redacted_error(duplicate)
    assert text == "DuplicateKeyError code=11000 (Dup)"  # never raised, so no frame
    assert PHONE not in text

    assert redacted_error(Rejected("department d-9 is closed")) == (
        "Rejected: department d-9 is closed"
    )
    assert len(redacted_error(Rejected("x" * 5000))) == 500
