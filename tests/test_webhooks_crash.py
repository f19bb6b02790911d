"""The webhooks service killed with SIGKILL mid-delivery loses nothing after a restart.

The service runs as a real separate process (uvicorn) against the test's Kafka
topics and its own database; intake, routing and follow-up run in-process.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx
import orjson
import pytest

from tests.support.http import BROADBAND_COMPLAINT, create_complaint, token
from tests.support.private_infrastructure import free_port
from tests.support.system import System, SystemFactory
from tests.support.waits import eventually
from tests.support.webhooks import receiver

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
COMPLAINTS = 30
PER_SUBSCRIPTION = 4


def _environment(system: System) -> dict[str, str]:
    settings = system.intake_settings
    return {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "MONGODB_URI": settings.mongodb_uri,
        "MONGODB_DATABASE": f"t_{system.run_id}_webhooks",
        "TOPIC_PREFIX": settings.topic_prefix,
        "JWT_SECRET": settings.jwt_secret,
        "DEPLOYMENT_ENVIRONMENT": "development",
        "ALLOW_LOOPBACK_TARGETS": "true",
        "RETRY_SCHEDULE_S": "[0.5, 0.5, 0.5, 0.5, 0.5, 0.5]",
        "RETRY_JITTER_RATIO": "0",
        "REQUEST_TIMEOUT_S": "3",
        "LEASE_MARGIN_S": "1",
        "DISPATCHER_POLL_INTERVAL_S": "0.2",
        "MAX_CONCURRENT_PER_SUBSCRIPTION": str(PER_SUBSCRIPTION),
        "LOG_LEVEL": "WARNING",
    }


class WebhooksProcess:
    """``uvicorn webhooks.main:create_app`` as a child process."""

    def __init__(self, *, env: dict[str, str], port: int, log_path: Path) -> None:
        self.env, self.port, self.log_path = env, port, log_path
        self.process: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "uvicorn",
                "webhooks.main:create_app",
                "--factory",
                "--host=127.0.0.1",
                f"--port={self.port}",
                env=self.env,
                cwd=ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        async with httpx.AsyncClient() as client:

            async def ready() -> bool:
                assert self.process.returncode is None, self.log_path.read_text()[-3000:]
                try:
                    return (await client.get(f"{self.url}/readyz")).status_code == 200
                except httpx.HTTPError:
                    return False

            await eventually(ready, timeout_s=60, interval_s=0.2, what="webhooks process ready")

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signal.SIGKILL)
            await asyncio.wait_for(self.process.wait(), timeout=10)


async def test_a_killed_webhooks_process_delivers_everything_after_restart(
    system_factory: SystemFactory, tmp_path: Path
) -> None:
    system = await system_factory()
    admin = token(system.intake_settings)

    async def slow_ok(_: int) -> int:
        await asyncio.sleep(0.3)
        return 200

    deliveries = system.mongo[f"t_{system.run_id}_webhooks"]["deliveries"]
    service = WebhooksProcess(
        env=_environment(system), port=free_port(), log_path=tmp_path / "webhooks.log"
    )
    async with receiver(slow_ok) as hooks:
        try:
            await service.start()
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
        finally:
            await service.kill()
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
