"""Follow-up in tests: satisfaction checks read over HTTP, a clock to make them due."""

from __future__ import annotations

from datetime import timedelta

from complaints_shared.clock import ManualClock
from followup.contact_hours import default_contact_hours
from followup.settings import FollowupSettings
from tests.support.clock import at
from tests.support.http import BROADBAND_COMPLAINT, assigned, command, create_complaint
from tests.support.system import System
from tests.support.waits import eventually

FAST_SCHEDULER = {"scheduler_poll_interval_s": 0.1}
DEFAULT_HOURS = default_contact_hours(FollowupSettings())


async def checks_of(
    system: System, complaint_id: str, headers: dict, *, count: int = 1, **params
) -> list[dict]:
    """The complaint's checks once ``count`` exist, by resolution and sequence."""

    async def listed() -> list[dict] | None:
        response = await system.followup.get(
            "/v1/followups", params={"complaint_id": complaint_id, **params}, headers=headers
        )
        items = response.json()["items"]
        return items if len(items) >= count else None

    items = await eventually(listed, what=f"{count} check(s) of {complaint_id}")
    return sorted(items, key=lambda item: (item["resolution_number"], item["sequence"]))


async def wait_status(system: System, followup_id: str, status: str, headers: dict) -> dict:
    async def reached() -> dict | None:
        body = (await system.followup.get(f"/v1/followups/{followup_id}", headers=headers)).json()
        return body if body.get("status") == status else None

    return await eventually(reached, what=f"check {followup_id} {status}")


async def make_due(system: System, clock: ManualClock, check: dict, headers: dict) -> dict:
    """Move the clock to the check's due time and let the scheduler fire it."""
    clock.set(max(clock.now(), at(check["due_at"])) + timedelta(seconds=1))
    return await wait_status(system, check["id"], "due", headers)


async def resolve_through_intake(
    system: System, headers: dict, *, severity: str, **overrides: object
) -> str:
    """A complaint created, routed and resolved through intake's API; its id."""
    created = await create_complaint(
        system, headers, **{**BROADBAND_COMPLAINT, "severity": severity, **overrides}
    )
    complaint_id = created["id"]

    await eventually(lambda: assigned(system, complaint_id, headers), what="assignment")
    await command(
        system,
        f"/v1/complaints/{complaint_id}/resolve",
        {"summary": "已恢复宽带，补打欠费单并当面致歉", "customer_accepted": True},
        headers,
    )
    return complaint_id
