"""Every datetime the APIs accept is offset-aware and of the years 1970 to 2200 (UTC), or
refused with a 422 naming the field.

The datetime inputs are found by walking each service's OpenAPI document, so a
query parameter or body field added later is covered without touching this test.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from complaints_shared.datetimes import CalendarDay, UtcDatetime
from tests.support.http import complaint_body, token
from tests.support.system import System, SystemFactory

pytestmark = pytest.mark.integration

NAIVE = "2026-01-01T00:00:00"
# Each overflowed (OverflowError: a 500) or was accepted and overflowed later, in arithmetic.
OUT_OF_RANGE = [
    "9999-12-31T23:00:00-05:00",  # year 10000 in UTC
    "0001-01-01T00:00:00+05:00",  # year 0 in UTC
    "9999-12-31T23:59:59.999Z",
    "0001-01-01T00:00:00Z",
    "2201-01-01T00:00:00Z",
    "1970-01-01T07:59:59+08:00",  # 1969 in UTC
]
Location = tuple[str, str, str, tuple[str | int, ...]]  # method, path, "query"/"body", field


def _resolve(spec: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        schema = spec["components"]["schemas"][name]
    return schema


def _is_datetime(spec: dict[str, Any], schema: dict[str, Any]) -> bool:
    schema = _resolve(spec, schema)
    if schema.get("format") == "date-time":
        return True
    return any(_is_datetime(spec, option) for option in schema.get("anyOf", []))


def _datetime_fields(
    spec: dict[str, Any], schema: dict[str, Any], prefix: tuple[str | int, ...], seen: frozenset
) -> Iterator[tuple[str | int, ...]]:
    """Paths to every date-time leaf of a request body schema (array items as index 0)."""
    if _is_datetime(spec, schema):
        yield prefix
        return
    ref = schema.get("$ref")
    if ref in seen:
        return
    seen = seen | {ref} if ref else seen
    schema = _resolve(spec, schema)
    for option in [*schema.get("anyOf", []), *schema.get("allOf", [])]:
        yield from _datetime_fields(spec, option, prefix, seen)
    for name, child in schema.get("properties", {}).items():
        yield from _datetime_fields(spec, child, (*prefix, name), seen)
    if "items" in schema:
        yield from _datetime_fields(spec, schema["items"], (*prefix, 0), seen)


def datetime_inputs(spec: dict[str, Any]) -> Iterator[Location]:
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for parameter in operation.get("parameters", []):
                if parameter["in"] == "query" and _is_datetime(spec, parameter["schema"]):
                    yield method, path, "query", (parameter["name"],)
            body = operation.get("requestBody", {}).get("content", {}).get("application/json")
            if body is not None:
                for field in _datetime_fields(spec, body["schema"], (), frozenset()):
                    yield method, path, "body", field


def _nest(field: tuple[str | int, ...], value: Any) -> Any:
    """A JSON value holding ``value`` at ``field``."""
    for part in reversed(field):
        value = [value] if isinstance(part, int) else {part: value}
    return value


@pytest.mark.parametrize("value", OUT_OF_RANGE)
def test_datetimes_outside_1970_to_2200_utc_are_refused(value: str) -> None:
    with pytest.raises(ValidationError) as raised:
        TypeAdapter(UtcDatetime).validate_python(value)
    assert "1970" in raised.value.errors()[0]["msg"]


def test_the_range_ends_are_accepted_and_converted_to_utc() -> None:
    adapter = TypeAdapter(UtcDatetime)
    assert adapter.validate_python("1970-01-01T08:00:00+08:00") == datetime(1970, 1, 1, tzinfo=UTC)
    latest = adapter.validate_python("2200-12-31T18:59:59.999999-05:00")
    assert latest == datetime(2200, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)


def test_calendar_days_are_of_the_same_years() -> None:
    adapter = TypeAdapter(CalendarDay)
    assert adapter.validate_python("2200-12-31") == date(2200, 12, 31)
    for day in ("0001-01-01", "1969-12-31", "2201-01-01", "9999-12-31"):
        with pytest.raises(ValidationError):
            adapter.validate_python(day)


async def test_naive_datetimes_are_refused_on_every_input_of_the_three_services(
    system: System,
) -> None:
    checked: set[tuple[str, str, str]] = set()
    for name, client, settings in (
        ("intake", system.intake, system.intake_settings),
        ("routing", system.routing, system.routing_settings),
        ("followup", system.followup, system.followup_settings),
    ):
        headers = token(settings)
        spec = (await client.get("/openapi.json")).json()
        for method, path, where, field in datetime_inputs(spec):
            url = path.replace("{", "").replace("}", "")  # any id: validation comes first
            if where == "query":
                response = await client.request(
                    method, url, params={field[0]: NAIVE}, headers=headers
                )
            else:
                response = await client.request(
                    method, url, json=_nest(field, NAIVE), headers=headers
                )
            dotted = ".".join(str(part) for part in field)
            assert response.status_code == 422, (name, method, path, dotted, response.text)
            problem = response.json()
            assert response.headers["content-type"].startswith("application/problem+json")
            timezone_errors = [
                error
                for error in problem["errors"]
                if error["field"] == dotted and "timezone" in error["message"]
            ]
            assert timezone_errors, (name, method, path, dotted, problem)
            checked.add((name, path, dotted))
    # The walk really found the known inputs (a broken walk would check nothing).
    assert {
        ("intake", "/v1/reports/summary", "from"),
        ("intake", "/v1/reports/summary", "to"),
        ("intake", "/v1/complaints", "created_from"),
        ("intake", "/v1/complaints", "occurred_at"),
        ("intake", "/v1/complaints/{complaint_id}/acknowledge", "promised_response_at"),
        ("routing", "/v1/routing/simulate", "received_at"),
        ("followup", "/v1/followups", "due_before"),
        ("followup", "/v1/followups/stats", "resolved_from"),
    } <= checked


async def test_aware_datetimes_are_normalised_to_utc(system: System) -> None:
    headers = token(system.intake_settings)
    body = {**complaint_body(), "occurred_at": "2026-01-01T08:00:00+08:00"}
    created = await system.intake.post("/v1/complaints", json=body, headers=headers)
    assert created.status_code == 201, created.text
    assert created.json()["occurred_at"].startswith("2026-01-01T00:00:00")
    stored = await system.intake.get(f"/v1/complaints/{created.json()['id']}", headers=headers)
    assert stored.json()["occurred_at"].startswith("2026-01-01T00:00:00")
    report = await system.intake.get(
        "/v1/reports/summary",
        params={"from": "2026-01-01T00:00:00+08:00", "to": "2030-01-01T00:00:00Z"},
        headers=headers,
    )
    assert report.status_code == 200, report.text
    assert report.json()["from"].startswith("2025-12-31T16:00:00")


async def test_out_of_range_datetimes_are_refused_on_every_input_of_the_four_services(
    system_factory: SystemFactory,
) -> None:
    system = await system_factory(webhooks={})
    checked: set[tuple[str, str, str]] = set()
    for name, client, settings in (
        ("intake", system.intake, system.intake_settings),
        ("routing", system.routing, system.routing_settings),
        ("followup", system.followup, system.followup_settings),
        ("webhooks", system.webhooks, system.webhooks_settings),
    ):
        headers = token(settings)
        spec = (await client.get("/openapi.json")).json()
        for method, path, where, field in datetime_inputs(spec):
            url = path.replace("{", "").replace("}", "")  # any id: validation comes first
            dotted = ".".join(str(part) for part in field)
            for value in OUT_OF_RANGE:
                if where == "query":
                    response = await client.request(
                        method, url, params={field[0]: value}, headers=headers
                    )
                else:
                    response = await client.request(
                        method, url, json=_nest(field, value), headers=headers
                    )
                assert response.status_code == 422, (name, path, dotted, value, response.text)
                assert response.headers["content-type"].startswith("application/problem+json")
                named = [
                    error
                    for error in response.json()["errors"]
                    if error["field"] == dotted and "1970" in error["message"]
                ]
                assert named, (name, path, dotted, value, response.json())
            checked.add((name, path, dotted))
    assert {
        ("intake", "/v1/complaints", "created_from"),
        ("intake", "/v1/reports/summary", "to"),
        ("routing", "/v1/routing/simulate", "received_at"),
        ("followup", "/v1/followups/stats", "resolved_to"),
        ("webhooks", "/v1/webhooks/subscriptions/{subscription_id}/redeliver", "from"),
    } <= checked
