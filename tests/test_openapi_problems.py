"""Unit: what each service's OpenAPI document says about errors is what the service sends.

FastAPI documents every ``422`` as its own ``{"detail": [{"loc", "msg"}]}`` in
``application/json``, which the services never send (their handlers answer RFC 9457
problems with ``errors[].field``), and no other error at all: a client generated from
``/openapi.json`` could not read the very answer that names the wrong field.
"""

from __future__ import annotations

import importlib
import json

import httpx
import jsonschema
import pytest

from complaints_shared.problems import PROBLEM_MEDIA_TYPE
from intake.main import create_app as create_intake_app
from intake.settings import IntakeSettings
from tests.support.http import token
from tests.support.system import TEST_JWT_SECRET

SERVICES = ["intake", "routing", "followup", "webhooks"]


@pytest.mark.parametrize("service", SERVICES)
def test_every_operation_documents_its_errors_as_problems(
    service: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JWT_SECRET", TEST_JWT_SECRET)
    document = importlib.import_module(f"{service}.main").create_app().openapi()
    assert "HTTPValidationError" not in json.dumps(document)
    operations = [
        (path, method, operation)
        for path, item in document["paths"].items()
        for method, operation in item.items()
    ]
    for path, method, operation in operations:
        responses = operation["responses"]
        where = f"{method.upper()} {path}"
        assert PROBLEM_MEDIA_TYPE in responses["default"]["content"], where
        # Every operation: an undeclared query parameter is a 422 on any route (until 5
        # December the routes without parameters of their own documented none).
        schema = responses["422"]["content"][PROBLEM_MEDIA_TYPE]["schema"]
        assert schema == {"$ref": "#/components/schemas/ValidationProblem"}, where
        if operation.get("security"):
            assert {"401", "403"} <= set(responses), where
        assert "503" in responses, where
        if path != "/readyz":
            assert "Retry-After" in responses["503"]["headers"], where


async def test_a_422_the_service_sends_matches_the_schema_it_documents() -> None:
    settings = IntakeSettings(jwt_secret=TEST_JWT_SECRET)
    app = create_intake_app(settings)
    document = app.openapi()
    documented = document["paths"]["/v1/complaints"]["post"]["responses"]
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://intake") as client:
        answer = await client.post("/v1/complaints", json={"branch": "LZ"}, headers=token(settings))
    assert answer.status_code == 422
    assert answer.headers["content-type"] == PROBLEM_MEDIA_TYPE
    schema = documented["422"]["content"][PROBLEM_MEDIA_TYPE]["schema"]
    jsonschema.validate(answer.json(), {**schema, "components": document["components"]})
    assert "channel" in [error["field"] for error in answer.json()["errors"]]
    # A 422 refusing the request as a whole (a reused Idempotency-Key, a simulation nothing
    # routes) names no field, and fits the same schema.
    whole = {
        "type": "https://complaint-desk.dev/problems/unroutable",
        "title": "Unroutable",
        "status": 422,
        "detail": "no routing rule matches",
        "instance": "/v1/routing/simulate",
    }
    jsonschema.validate(whole, {**schema, "components": document["components"]})
    assert set(documented) >= {"200", "201"}  # an exact resubmission is a 200
