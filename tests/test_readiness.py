"""/readyz: dependencies reachable and every background loop of the service running."""

from __future__ import annotations

import pytest

from tests.support.system import System
from tests.support.waits import eventually

pytestmark = pytest.mark.integration


async def test_readiness_fails_while_a_background_loop_is_dead(system: System) -> None:
    async def ready_checks() -> dict | None:
        response = await system.routing.get("/readyz")
        return response.json()["checks"] if response.status_code == 200 else None

    checks = await eventually(ready_checks, what="routing ready")
    assert {"loop:consumer", "loop:outbox-relay", "loop:run_sla_timers"} <= set(checks)

    runtime = system.routing_app.state.runtime
    [relay] = [task for task in runtime.tasks if task.get_name() == "outbox-relay"]
    relay.cancel()  # the relay is gone: routing's events would never leave the outbox

    async def not_ready() -> dict | None:
        response = await system.routing.get("/readyz")
        return response.json() if response.status_code == 503 else None

    body = await eventually(not_ready, what="readiness failing")
    assert body["status"] == "not_ready"
    assert body["checks"]["loop:outbox-relay"] is False
    assert body["checks"]["loop:consumer"] is True
    assert body["checks"]["mongodb"] is True
    # Intake's loops are untouched: it stays ready.
    assert (await system.intake.get("/readyz")).status_code == 200
