"""Integration: follow-up schedules survive restarts and fire once across replicas."""

from __future__ import annotations

from contextlib import AsyncExitStack
from datetime import timedelta

import pytest

from complaints_shared.events import EventType
from followup.main import create_app as create_followup_app
from tests.support.clock import at, start_clock
from tests.support.events import resolved
from tests.support.followup import checks_of
from tests.support.http import token
from tests.support.kafka import publish
from tests.support.system import SystemFactory
from tests.support.waits import eventually

pytestmark = pytest.mark.integration


async def test_schedules_survive_a_restart_and_fire_once_with_two_replicas(
    system_factory: SystemFactory,
) -> None:
    clock = start_clock()
    # The fixture's own follow-up app polls once an hour (once at start-up, before anything
    # exists), so every check below is fired by the replicas this test starts and stops.
    system = await system_factory(clock=clock, followup={"scheduler_poll_interval_s": 3600})
    admin = token(system.intake_settings)
    events = [resolved(resolved_at=clock.now() - timedelta(hours=20)) for _ in range(3)]
    await publish(system, *((EventType.COMPLAINT_RESOLVED, event) for event in events))
    checks = [(await checks_of(system, event.complaint_id, admin))[0] for event in events]
    replica_settings = system.followup_settings.model_copy(
        update={"scheduler_poll_interval_s": 0.1}
    )

    # A replica runs and stops while nothing is due yet: the schedule is only in MongoDB.
    async with AsyncExitStack() as stack:
        replica = await system.serve_extra(
            stack, create_followup_app(replica_settings, clock=clock)
        )
        listed = await replica.get("/v1/followups", params={"status": "scheduled"}, headers=admin)
        assert len(listed.json()["items"]) == 3

    clock.set(max(at(check["due_at"]) for check in checks) + timedelta(minutes=1))
    db = system.mongo[system.followup_settings.database_name()]
    # A replica that crashed while firing the first check still holds its lease.
    crashed_lease_until = clock.now() + timedelta(seconds=replica_settings.scheduler_lease_s)
    await db.satisfaction_checks.update_one(
        {"_id": checks[0]["id"]},
        {"$set": {"timer_lease_owner": "crashed", "timer_lease_until": crashed_lease_until}},
    )

    async with AsyncExitStack() as stack:
        first = await system.serve_extra(stack, create_followup_app(replica_settings, clock=clock))
        await system.serve_extra(stack, create_followup_app(replica_settings, clock=clock))

        async def statuses() -> dict[str, str]:
            response = await first.get("/v1/followups", headers=admin)
            return {item["id"]: item["status"] for item in response.json()["items"]}

        async def others_due() -> dict | None:
            current = await statuses()
            return current if all(current[c["id"]] == "due" for c in checks[1:]) else None

        current = await eventually(others_due, what="restarted replicas fire the due checks")
        assert current[checks[0]["id"]] == "scheduled"  # its lease has not run out yet

        clock.set(crashed_lease_until + timedelta(seconds=1))

        async def all_due() -> bool:
            return set((await statuses()).values()) == {"due"}

        await eventually(all_due, what="the abandoned lease taken over")

    async for document in db.satisfaction_checks.find({}):
        fired = [entry for entry in document["history"] if entry["action"] == "become_due"]
        assert len(fired) == 1, document["history"]
        assert "timer_lease_owner" not in document
