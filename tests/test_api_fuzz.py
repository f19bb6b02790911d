"""Never a 5xx for anything a client can send: every operation of every service, fuzzed.

Schemathesis reads each service's own OpenAPI document and generates requests for every
operation: the document's examples if any, its coverage phase (boundary values, each
constraint broken, required parts missing, query parameters and methods the operation does
not declare) and random requests, valid and invalid (``FUZZ_EXAMPLES`` per operation),
derandomized so every run sends the same ones. Each goes to the real services (Kafka, MongoDB)
with an org-wide admin's token and with a Lanzhou agent's; a request naming a resource (a path
parameter) is sent as generated, which mostly names nothing, and again naming one that
exists, so that the handlers behind the lookups are fuzzed too. No answer may be a 5xx, and
every 4xx must be an RFC 9457 problem (README, HTTP API).
"""

from __future__ import annotations

import asyncio
import os
import threading
import uuid
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import httpx
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis import Case

import complaints_shared.http
from complaints_shared.problems import PROBLEM_MEDIA_TYPE
from followup.main import create_app as create_followup_app
from intake.main import create_app as create_intake_app
from routing.main import create_app as create_routing_app
from tests.support.followup import checks_of, resolve_through_intake
from tests.support.http import agent, assigned, complaint_body, token
from tests.support.infrastructure import Infrastructure
from tests.support.system import System, running_systems
from tests.support.waits import eventually
from webhooks.main import create_app as create_webhooks_app

pytestmark = [
    pytest.mark.integration,
    # Schemathesis' own strategies draw from `random`; nothing this module can change.
    pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisDeprecationWarning"),
]

# Random requests per operation after the coverage phase (README, Tests).
FUZZ_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "10"))
# Each service at its port of `make up`: a failing case's curl command runs against it as is.
SERVICES: dict[str, tuple[Callable[[], FastAPI], str]] = {
    "intake": (create_intake_app, "http://127.0.0.1:8001"),
    "routing": (create_routing_app, "http://127.0.0.1:8002"),
    "followup": (create_followup_app, "http://127.0.0.1:8003"),
    "webhooks": (create_webhooks_app, "http://127.0.0.1:8004"),
}
CALLERS = ("admin", "agent")
# Resources of the demo organisation in Lanzhou, the agent's branch (routing.demo).
DEMO_RESOURCES = {
    ("routing", "code"): "LZ",
    ("routing", "department_id"): "LZ:BILLING",
    ("routing", "staff_id"): "lz-chen",
    ("routing", "rule_id"): "demo:billing-category",
    ("routing", "policy_id"): "standard",
    ("followup", "branch"): "LZ",
}
# Webhooks as deployed (not the tests' loopback receivers): https targets, public addresses.
WEBHOOKS_AS_DEPLOYED = {"deployment_environment": "production", "allow_loopback_targets": False}
# A host that never resolves (RFC 2606): a delivery to it fails without leaving the machine.
WEBHOOK_TARGET = "https://receiver.invalid/hooks"
REQUEST_TIMEOUT_S = 30.0
SYSTEM_TIMEOUT_S = 120.0


def openapi_document(create_app: Callable[[], FastAPI]) -> dict:
    """The service's OpenAPI document, from an app never started."""
    # Building an app configures the process' logging; collecting a test must not.
    with mock.patch.object(complaints_shared.http, "configure_logging"):
        return create_app().openapi()


def fuzz_config(base_url: str) -> schemathesis.Config:
    return schemathesis.Config.from_dict(
        {
            "base-url": base_url,
            "phases": {
                "examples": {"enabled": True},
                "coverage": {"enabled": True},
                "fuzzing": {"enabled": True},
                "stateful": {"enabled": False},
            },
            "generation": {
                "mode": "all",
                "max-examples": FUZZ_EXAMPLES,
                "deterministic": True,
                "database": "none",
            },
        }
    )


SCHEMAS = {
    name: schemathesis.openapi.from_dict(openapi_document(create_app), config=fuzz_config(url))
    for name, (create_app, url) in SERVICES.items()
}
SERVICE_AT = {url: name for name, (_, url) in SERVICES.items()}


class LoopThread:
    """An event loop in a thread of its own.

    Schemathesis' tests are synchronous: the system runs on this loop meanwhile (consumers,
    relays, timers), and each request is handed to it.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fuzz", daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, Any], *, timeout_s: float) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout_s)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


@dataclass
class FuzzedSystem:
    """The four services, the callers the fuzz sends as, and resources that exist."""

    system: System
    loop: LoopThread
    # (service, path parameter) → id, for resources every test may use up.
    resources: dict[tuple[str, str], str] = field(default_factory=dict)

    def headers(self, caller: str) -> dict[str, str]:
        if caller == "admin":
            return token(self.system.intake_settings)
        return agent(self.system, "fuzz-agent")

    def client(self, service: str) -> httpx.AsyncClient:
        return getattr(self.system, service)

    def send(self, case: Case, *, caller: str) -> httpx.Response:
        base_url = case.operation.base_url
        request = case.as_transport_kwargs(base_url=base_url, headers=self.headers(caller))
        try:
            return self.run(self.client(SERVICE_AT[base_url]).request(**httpx_arguments(request)))
        except Exception as exc:
            # The ASGI transport raises what the service answered a 500 for.
            raise AssertionError(f"{sent(case, caller)}\nraised {exc!r}") from exc

    def run(self, coroutine: Coroutine[Any, Any, Any]) -> Any:
        return self.loop.run(coroutine, timeout_s=REQUEST_TIMEOUT_S)


@pytest.fixture(scope="module")
def fuzzed_system(infrastructure: Infrastructure) -> Iterator[FuzzedSystem]:
    """The four services with the demo organisation, on a loop of their own."""
    loop = LoopThread()
    # The loop is closed however the systems end: should their stop fail or time out, what
    # runs on it (consumers, relays) would otherwise go on in its thread until the process ends.
    try:
        systems = running_systems(infrastructure)
        make = loop.run(systems.__aenter__(), timeout_s=SYSTEM_TIMEOUT_S)
        try:
            system = loop.run(make(webhooks=WEBHOOKS_AS_DEPLOYED), timeout_s=SYSTEM_TIMEOUT_S)
            fuzzed = FuzzedSystem(system=system, loop=loop)
            fuzzed.resources = loop.run(lasting_resources(fuzzed), timeout_s=SYSTEM_TIMEOUT_S)
            yield fuzzed
        finally:
            loop.run(systems.__aexit__(None, None, None), timeout_s=SYSTEM_TIMEOUT_S)
    finally:
        loop.close()


async def lasting_resources(fuzzed: FuzzedSystem) -> dict[tuple[str, str], str]:
    """The demo directory, a routed complaint and a satisfaction check, shared by all tests."""
    system, admin = fuzzed.system, fuzzed.headers("admin")
    routed = await fresh_complaint(fuzzed)
    await eventually(lambda: assigned(system, routed, admin), what=f"assignment of {routed}")
    resolved = await resolve_through_intake(system, admin, severity="normal")
    (check,) = await checks_of(system, resolved, admin)
    return {
        **DEMO_RESOURCES,
        ("routing", "complaint_id"): routed,
        ("followup", "followup_id"): check["id"],
    }


async def fresh_complaint(fuzzed: FuzzedSystem) -> str:
    """A new complaint in Lanzhou (a distinct description: not a resubmission)."""
    body = complaint_body(description=f"十月份账单多扣了三十元增值业务费。{uuid.uuid4().hex}")
    response = await fuzzed.system.intake.post(
        "/v1/complaints", json=body, headers=fuzzed.headers("admin")
    )
    assert response.status_code == 201, response.text
    return response.json()["id"]


async def fresh_subscription(fuzzed: FuzzedSystem) -> dict[tuple[str, str], str]:
    """A subscription of Lanzhou's events and the delivery of its ping."""
    admin, webhooks = fuzzed.headers("admin"), fuzzed.system.webhooks
    created = await webhooks.post(
        "/v1/webhooks/subscriptions",
        json={"target_url": WEBHOOK_TARGET, "event_types": ["*"], "branch": "LZ"},
        headers=admin,
    )
    assert created.status_code == 201, created.text
    subscription_id = created.json()["id"]
    ping = await webhooks.post(f"/v1/webhooks/subscriptions/{subscription_id}/ping", headers=admin)
    assert ping.status_code < 300, ping.text
    return {
        ("webhooks", "subscription_id"): subscription_id,
        ("webhooks", "delivery_id"): ping.json()["id"],
    }


@dataclass
class ExistingResources:
    """Ids of resources that exist, for a case's path parameters; made afresh per test where
    an operation would use them up (a complaint's lifecycle, a subscription) and cheap."""

    fuzzed: FuzzedSystem
    fresh: dict[tuple[str, str], str] = field(default_factory=dict)

    def path_parameters(self, case: Case) -> dict[str, str]:
        service = SERVICE_AT[case.operation.base_url]
        return {name: self.id_of(service, name) for name in case.path_parameters}

    def id_of(self, service: str, name: str) -> str:
        key = (service, name)
        if key in self.fuzzed.resources:
            return self.fuzzed.resources[key]
        if key not in self.fresh:
            if key == ("intake", "complaint_id"):
                self.fresh[key] = self.fuzzed.run(fresh_complaint(self.fuzzed))
            elif service == "webhooks":
                self.fresh.update(self.fuzzed.run(fresh_subscription(self.fuzzed)))
        if key not in self.fresh:
            pytest.fail(f"no existing resource for {service}'s path parameter {name!r}: add one")
        return self.fresh[key]


@pytest.fixture
def existing(fuzzed_system: FuzzedSystem) -> ExistingResources:
    return ExistingResources(fuzzed=fuzzed_system)


def httpx_arguments(request: dict[str, Any]) -> dict[str, Any]:
    """Schemathesis' request (``requests`` keywords) as ``httpx.AsyncClient.request`` takes it."""
    assert not request.get("cookies"), "no operation declares a cookie"
    arguments = {
        "method": request["method"],
        "url": request["url"],
        "params": request.get("params"),
        # As requests sends them: a header value may be any Latin-1 text on the wire.
        "headers": {name: value.encode("latin-1") for name, value in request["headers"].items()},
    }
    if "json" in request:
        arguments["json"] = request["json"]
    elif isinstance(request.get("data"), bytes | str):
        arguments["content"] = request["data"]
    elif request.get("data") is not None:
        arguments["data"] = request["data"]
    return arguments


@schemathesis.pytest.parametrize(**SCHEMAS)
@pytest.mark.parametrize("caller", CALLERS)
# `existing` lives as long as the test of one operation, across its cases on purpose; how fast
# cases are generated on a busy machine is no property of the API.
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
def test_no_request_gets_a_server_error(
    case: Case, caller: str, fuzzed_system: FuzzedSystem, existing: ExistingResources
) -> None:
    """Below 500 whatever the request, and a 4xx is a problem; see the module docstring."""
    check_answer(case, caller, fuzzed_system.send(case, caller=caller))
    if case.path_parameters:
        naming_existing = case.derive()
        naming_existing.path_parameters = existing.path_parameters(case)
        check_answer(naming_existing, caller, fuzzed_system.send(naming_existing, caller=caller))


def check_answer(case: Case, caller: str, response: httpx.Response) -> None:
    assert response.status_code < 500, answered(case, caller, response)
    if response.status_code >= 400:
        content_type = response.headers.get("content-type", "")
        assert content_type.startswith(PROBLEM_MEDIA_TYPE), answered(case, caller, response)


def sent(case: Case, caller: str) -> str:
    """The request, as Schemathesis generated it, and how to send it again."""
    return (
        f"{case.method} {case.formatted_path} as {caller}\n"
        f"query: {case.query!r}\nheaders: {case.headers!r}\nbody: {case.body!r}\n"
        f"again (add the caller's token): {case.as_curl_command()}"
    )


def answered(case: Case, caller: str, response: httpx.Response) -> str:
    return (
        f"{sent(case, caller)}\nanswered {response.status_code} "
        f"({response.headers.get('content-type')}): {response.text[:500]}"
    )


def test_the_fuzz_sends_requests_the_services_accept(fuzzed_system: FuzzedSystem) -> None:
    """The way every fuzzed case goes out reaches the handlers as each caller, with a body."""
    operation = SCHEMAS["intake"]["/v1/complaints"]["POST"]
    for caller in CALLERS:
        body = complaint_body(subject=f"话费账单多扣费（{caller}）")
        created = fuzzed_system.send(operation.Case(body=body), caller=caller)
        assert created.status_code == 201, created.text
        read = SCHEMAS["intake"]["/v1/complaints/{complaint_id}"]["GET"].Case(
            path_parameters={"complaint_id": created.json()["id"]}
        )
        assert fuzzed_system.send(read, caller=caller).status_code == 200
