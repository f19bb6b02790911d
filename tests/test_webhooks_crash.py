"""The webhooks service killed with SIGKILL mid-delivery loses nothing after a restart.

The service runs as a real separate process (uvicorn) against the test's Kafka
topics and its own database; intake, routing and follow-up run in-process.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import httpx
import orjson
import pytest

from tests.support.http import BROADBAND_COMPLAINT, create_complaint, token
from tests.support.processes import ServiceProcess
from tests.support.system import SystemFactory
from tests.support.waits import eventually
from tests.support.webhooks import receiver

pytestmark = pytest.mark.integration

COMPLAINTS = 30
PER_SUBSCRIPTION = 4
# Fast retries against the test's receiver; at most this many attempts in flight at the kill.
WEBHOOKS_PROCESS_SETTINGS = {
    "retry_schedule_s": [0.5] * 6,
    "retry_jitter_ratio": 0,
    "request_timeout_s": 3,
    "lease_margin_s": 1,
    "dispatcher_poll_interval_s": 0.2,
    "max_concurrent_per_subscription": PER_SUBSCRIPTION,
    "log_level": "WARNING",
}


async def test_a_killed_webhooks_process_delivers_everything_after_restart(
    system_factory: SystemFactory, tmp_path: Path
) -> None:
    system = await system_factory()
    admin = token(system.intake_settings)

    async def slow_ok(_: int) -> int:
        await asyncio.sleep(0.3)
        return 200

    service = ServiceProcess.of(system, "webhooks", log_dir=tmp_path, **WEBHOOKS_PROCESS_SETTINGS)
    deliveries = system.mongo[service.settings.database_name()]["deliveries"]
    async with receiver(slow_ok) as hooks, service.running_until_done():
        async with httpx.AsyncClient(base_url=service.url) as client:
            created = await client.post(
                "/v1/webhooks/subscriptions",
                json={
                    "target_url": hooks.url,
                    "event_types": ["org.complaintdesk.complaint.received.v1"],
                },
                headers=admin,
            )
            assert created.status_code == 201, created.text
        complaint_ids = []
        for number in range(COMPLAINTS):
            body = {**BROADBAND_COMPLAINT, "description": f"第{number}号：宽带被停"}
            complaint_ids.append((await create_complaint(system, admin, **body))["id"])
        await eventually(
            lambda: asyncio.sleep(0, len(hooks.requests) >= 5),
            timeout_s=20,
            what="deliveries under way",
        )
        await service.kill()
        killed_at = time.monotonic()
        answered_before_kill = len(hooks.requests)
        pending_at_kill = await deliveries.count_documents({"status": "pending"})
        assert answered_before_kill < COMPLAINTS, "the kill must catch deliveries pending"

        await service.start()

        def delivered_complaints() -> set[str]:
            return {
                orjson.loads(request.body)["subject"]
                for request in hooks.requests
                if request.status == 200
            }

        await eventually(
            lambda: asyncio.sleep(0, delivered_complaints() >= set(complaint_ids)),
            timeout_s=60,
            what="every complaint delivered after the restart",
        )
        recovery_s = time.monotonic() - killed_at

        async def all_recorded() -> bool:
            statuses = await deliveries.distinct("status")
            return statuses == ["delivered"]

        await eventually(all_recorded, what="every delivery recorded as delivered")
        recorded = await deliveries.count_documents({})
    repeats = {
        webhook_id: count
        for webhook_id, count in Counter(r.webhook_id for r in hooks.requests).items()
        if count > 1
    }
    assert recorded == COMPLAINTS
    assert len({r.webhook_id for r in hooks.requests}) == COMPLAINTS
    # Only attempts in flight at the kill are repeated: at most the per-subscription limit.
    assert sum(count - 1 for count in repeats.values()) <= PER_SUBSCRIPTION, repeats
    assert pending_at_kill > 0
    assert recovery_s < 60, recovery_s
