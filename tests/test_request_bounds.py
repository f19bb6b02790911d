"""Integration: requests a client can send that reached a 500, or a wrong answer, until
5 December: each is now a 4xx problem naming what is wrong, or stored in one form."""

from __future__ import annotations

import importlib
import pkgutil

import pytest
from pydantic import ValidationError

from complaints_shared.http import MAX_QUERY_VALUES
from complaints_shared.models import StrictModel
from tests.support.http import command, complaint_body, create_complaint, token
from tests.support.system import System

pytestmark = pytest.mark.integration


def _named(response, status: int) -> list[str]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    return [error["field"] for error in response.json()["errors"]]


async def test_a_list_filter_repeated_past_the_bound_is_a_422_naming_it(system: System) -> None:
    """A filter repeated a million times (uvicorn bounds no URL) became a database query over
    16 MB: the driver's DocumentTooLarge, a 500. At most ``MAX_QUERY_VALUES`` values each."""
    admin = token(system.intake_settings)
    many = [("status", "received")] * (MAX_QUERY_VALUES + 1) + [("branch", "LZ")]
    refused = await system.intake.get("/v1/complaints", params=many, headers=admin)
    assert _named(refused, 422) == ["status"]
    reports = await system.intake.get(
        "/v1/reports/summary", params=[("branch", "LZ")] * (MAX_QUERY_VALUES + 1), headers=admin
    )
    assert _named(reports, 422) == ["branch"]
    enough = [("status", "received")] * MAX_QUERY_VALUES
    assert (await system.intake.get("/v1/complaints", params=enough, headers=admin)).is_success


async def test_a_window_given_backwards_is_a_422_naming_its_end(system: System) -> None:
    """It answered 200 and empty, which a caller cannot tell from a window without matches
    (the summary report already refused it)."""
    backwards = {"from": "2026-12-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}
    listed = await system.intake.get(
        "/v1/complaints",
        params={"created_from": backwards["from"], "created_to": backwards["to"]},
        headers=token(system.intake_settings),
    )
    assert _named(listed, 422) == ["created_to"]
    stats = await system.followup.get(
        "/v1/followups/stats",
        params={"resolved_from": backwards["from"], "resolved_to": backwards["to"]},
        headers=token(system.followup_settings),
    )
    assert _named(stats, 422) == ["resolved_to"]


async def test_a_body_that_is_no_json_names_the_body(system: System) -> None:
    """Broken JSON named the byte offset as the field (``"13"``); JSON nested a thousand deep
    or an integer of thousands of digits was a 400 naming nothing."""
    admin = token(system.intake_settings)
    complaint_id = (await create_complaint(system, admin))["id"]
    url = f"/v1/complaints/{complaint_id}/notes"
    headers = {**admin, "content-type": "application/json"}
    broken = await system.intake.post(url, content=b'{"text": "a",,}', headers=headers)
    assert _named(broken, 422) == ["body"]
    deep = await system.intake.post(url, content=b"[" * 5000 + b"]" * 5000, headers=headers)
    long = await system.intake.post(url, content=b'{"text": ' + b"9" * 5000 + b"}", headers=headers)
    for unreadable in (deep, long):
        assert _named(unreadable, 400) == ["body"]


async def test_a_zero_amount_however_written_is_stored_as_zero(system: System) -> None:
    """``0E+999999999`` passed the digit bounds and was stored and sent on as given."""
    admin = token(system.intake_settings)
    complaint_id = (await create_complaint(system, admin))["id"]
    await command(
        system,
        f"/v1/complaints/{complaint_id}/resolve",
        {"summary": "致歉", "remedies": [{"type": "refund", "amount": "0E+999999999"}]},
        admin,
    )
    shown = (await system.intake.get(f"/v1/complaints/{complaint_id}", headers=admin)).json()
    assert shown["resolution"]["remedies"][0]["amount"] == "0.00"


async def test_text_of_invisible_characters_alone_is_a_422_naming_it(system: System) -> None:
    """A subject, a note, a branch's name or a rule's keyword of a zero-width space or a
    byte-order mark (pasted from a spreadsheet) was accepted until 5 December: it says
    nothing, and a keyword of it matched every complaint of its branches."""
    admin = token(system.intake_settings)
    blank = complaint_body(subject="\u200b", description="\ufeff\u200b")
    refused = await system.intake.post("/v1/complaints", json=blank, headers=admin)
    assert sorted(_named(refused, 422)) == ["description", "subject"]
    complaint_id = (await create_complaint(system, admin))["id"]
    note = await system.intake.post(
        f"/v1/complaints/{complaint_id}/notes", json={"text": "\u00ad"}, headers=admin
    )
    assert _named(note, 422) == ["text"]
    routing_admin = token(system.routing_settings)
    branch = await system.routing.post(
        "/v1/directory/branches", json={"code": "ZW", "name": "\u200b"}, headers=routing_admin
    )
    assert _named(branch, 422) == ["name"]
    rule = await system.routing.post(
        "/v1/routing/rules",
        json={
            "id": "zw",
            "name": "零宽",
            "conditions": {"keywords_any": ["\u200b"]},
            "action": {"department_kind": "sales"},
            "branches": ["LZ"],
        },
        headers=routing_admin,
    )
    assert _named(rule, 422) == ["conditions.keywords_any.0"]


async def test_a_parameter_that_takes_one_value_given_twice_is_a_422_naming_it(
    system: System,
) -> None:
    """The framework kept the last of a repeated single-valued parameter:
    ``?status=due&status=completed`` answered for completed checks alone, a filter narrowed
    silently (integrators repeat ``status`` on ``/v1/complaints``, where it is a list)."""
    admin = token(system.intake_settings)
    await create_complaint(system, admin)
    both = await system.intake.get(
        "/v1/complaints", params=[("status", "received"), ("status", "open")], headers=admin
    )
    assert both.status_code == 200, both.text
    limit = await system.intake.get(
        "/v1/complaints", params=[("limit", "1"), ("limit", "3")], headers=admin
    )
    assert _named(limit, 422) == ["limit"]
    checks = await system.followup.get(
        "/v1/followups",
        params=[("status", "due"), ("status", "completed")],
        headers=token(system.followup_settings),
    )
    assert _named(checks, 422) == ["status"]
    assignments = await system.routing.get(
        "/v1/assignments",
        params=[("status", "queued"), ("status", "resolved")],
        headers=token(system.routing_settings),
    )
    assert _named(assignments, 422) == ["status"]


async def test_a_body_not_sent_as_json_is_a_415_and_a_422_lists_at_most_50_errors(
    system: System,
) -> None:
    """A body sent as ``text/plain`` was a 422 "not a valid dictionary" naming ``body``; a
    rule of 40,000 bad branch codes was answered with 40,000 errors (4.4 MB)."""
    admin = token(system.intake_settings)
    complaint_id = (await create_complaint(system, admin))["id"]
    plain = await system.intake.post(
        f"/v1/complaints/{complaint_id}/notes",
        content=b'{"text": "a"}',
        headers={**admin, "content-type": "text/plain"},
    )
    assert _named(plain, 415) == ["Content-Type"]
    charset = await system.intake.post(
        f"/v1/complaints/{complaint_id}/notes",
        content='{"text": "客户来电"}'.encode(),
        headers={**admin, "content-type": "application/json; charset=utf-8"},
    )
    assert charset.status_code == 200, charset.text
    routing_admin = token(system.routing_settings)
    many = await system.routing.post(
        "/v1/routing/rules",
        json={
            "id": "many",
            "name": "许多",
            "branches": ["lz"] * 40_000,
            "action": {"department_kind": "billing"},
        },
        headers=routing_admin,
    )
    fields = _named(many, 422)
    assert len(fields) == 50 and fields[0] == "branches.0"
    assert many.json()["errors_omitted"] == 40_000 - 50
    assert len(many.content) < 20_000


async def test_head_answers_as_get_without_a_body_and_a_405_names_every_method(
    system: System,
) -> None:
    """``HEAD`` was a 405 on every route (monitors probe ``/healthz`` so), and a 405 named
    the methods of the first route of the path alone: ``PUT /v1/complaints`` said
    ``Allow: POST``, though ``GET`` answers there too."""
    admin = token(system.intake_settings)
    await create_complaint(system, admin)
    alive = await system.intake.head("/healthz")
    assert (alive.status_code, alive.content) == (200, b"")
    listed = await system.intake.get("/v1/complaints", headers=admin)
    head = await system.intake.head("/v1/complaints", headers=admin)
    assert (head.status_code, head.content) == (200, b"")
    assert head.headers["content-length"] == listed.headers["content-length"]
    assert (await system.intake.head("/v1/complaints")).status_code == 401
    put = await system.intake.put("/v1/complaints", json={}, headers=admin)
    assert put.status_code == 405
    assert put.headers["allow"] == "GET, HEAD, POST"
    assert put.headers["content-type"].startswith("application/problem+json")
    rules = await system.routing.delete("/v1/routing/rules", headers=token(system.routing_settings))
    assert (rules.status_code, rules.headers["allow"]) == (405, "GET, HEAD, POST")


def _request_models() -> list[type[StrictModel]]:
    for package in ("intake", "routing", "followup", "webhooks"):
        root = importlib.import_module(package)
        for module in pkgutil.walk_packages(root.__path__, f"{package}."):
            importlib.import_module(module.name)
    found, waiting = [], [StrictModel]
    while waiting:
        for subclass in waiting.pop().__subclasses__():
            found.append(subclass)
            waiting.append(subclass)
    return found


def test_true_or_false_for_a_number_is_refused_in_every_request_model() -> None:
    """pydantic reads ``true`` as 1: a follow-up answer ``"score": true`` was stored as the
    lowest score and reopened the complaint. Every number field of every body refuses it;
    a field that takes true or false (or text) is not told so."""
    refused_for = set()
    for model in _request_models():
        for name, field in model.model_fields.items():
            try:
                model.model_validate({name: True})
            except ValidationError as error:
                errors = error.errors()
            else:
                errors = []
            here = [e for e in errors if e["loc"][:1] == (field.alias or name,)]
            if any("a number, not true or false" in e["msg"] for e in here):
                refused_for.add(f"{model.__name__}.{name}")
    numbers = {
        "AttemptCreate.score",
        "OutcomeRequest.score",
        "StaffCreate.capacity",
        "StaffUpdate.capacity",
        "FollowupPolicy.max_attempts",
        "FollowupPolicy.attempt_spacing_hours",
        "SlaDuration.amount",
        "SlaPolicyWrite.warning_share",
        "Attachment.size_bytes",
        "RuleCreate.position",
    }
    assert numbers <= refused_for
    assert not refused_for & {"AttemptCreate.reached", "Customer.vip", "RuleCreate.is_default"}
