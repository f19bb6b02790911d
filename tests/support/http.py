"""Talking to the services over HTTP: bearer tokens and complaint request bodies."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from complaints_shared.auth import mint_token
from complaints_shared.settings import ServiceSettings
from tests.support.system import System
from tests.support.waits import eventually


def token(
    settings: ServiceSettings,
    *,
    org: str = "demo",
    branches: list[str] | str = "*",
    roles: tuple[str, ...] = ("admin",),
    subject: str = "tester",
) -> dict[str, str]:
    """Authorization headers of a bearer token the services accept (org-wide admin by default)."""
    jwt = mint_token(
        secret=settings.jwt_secret,
        subject=subject,
        org=org,
        branches=branches,
        roles=list(roles),
        issuer=settings.jwt_issuer,
        audience=settings.jwt_audience,
    )
    return {"Authorization": f"Bearer {jwt}"}


def agent(system: System, subject: str, *, branches: tuple[str, ...] | str = ("LZ",)) -> dict:
    """Headers of an agent of ``branches`` (Lanzhou by default)."""
    return token(
        system.intake_settings,
        branches=branches if branches == "*" else list(branches),
        roles=("agent",),
        subject=subject,
    )


def complaint_body(**overrides: Any) -> dict:
    """A ``POST /v1/complaints`` body: a normal billing complaint in Lanzhou unless overridden."""
    body = {
        "branch": "LZ",
        "channel": "phone",
        "category": "billing",
        "severity": "normal",
        "flags": [],
        "customer": {"name": "王女士", "phone": "+86 139-0000-1111"},
        "subject": "话费账单多扣费",
        "description": "十月份账单多扣了三十元增值业务费，我从未订购。",
    }
    body.update(overrides)
    return body


# The walk-through's complaint (README): a high-severity broadband billing complaint.
BROADBAND_COMPLAINT = complaint_body(
    severity="high",
    customer={
        "name": "马先生",
        "phone": "+86 138 0931 0000",
        "preferred_contact_channel": "phone",
    },
    subject="预交年费后宽带仍被停机",
    description=(
        "我已预交全年宽带年费，营业员没有打印第二张欠费单，结果宽带被停，要求恢复并道歉。"
    ),
    desired_outcomes=["apology", "explanation"],
)


async def create_complaint(system: System, headers: dict, **overrides: Any) -> dict:
    """A complaint registered through intake's API (``complaint_body`` with ``overrides``)."""
    response = await system.intake.post(
        "/v1/complaints", json=complaint_body(**overrides), headers=headers
    )
    assert response.status_code == 201, response.text
    return response.json()


async def complaint_of(system: System, complaint_id: str, headers: dict) -> dict:
    """The complaint of record as intake answers it."""
    return (await system.intake.get(f"/v1/complaints/{complaint_id}", headers=headers)).json()


async def complaint_when(
    system: System,
    complaint_id: str,
    headers: dict,
    holds: Callable[[dict], Any],
    *,
    what: str,
    timeout_s: float = 10.0,
) -> dict:
    """The complaint of record once ``holds`` is true of it."""

    async def probe() -> dict | None:
        body = await complaint_of(system, complaint_id, headers)
        return body if holds(body) else None

    return await eventually(probe, timeout_s=timeout_s, what=what)


async def assigned(system: System, complaint_id: str, headers: dict) -> dict | None:
    """The complaint once routing's assignment reached it, else None (a probe to poll)."""
    body = await complaint_of(system, complaint_id, headers)
    return body if body.get("assignment") else None


async def command(system: System, path: str, body: dict, headers: dict) -> dict:
    """POST a command to intake (``/v1/complaints/{id}/resolve``, say); it must succeed."""
    response = await system.intake.post(path, json=body, headers=headers)
    assert response.status_code == 200, response.text
    return response.json()


async def complaint_count(system: System) -> int:
    """How many complaints intake's database holds."""
    return await system.mongo[system.intake_settings.database_name()].complaints.count_documents({})
