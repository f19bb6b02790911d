"""No lost complaint: intake accepts while the broker is down and delivers afterwards."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.http import BROADBAND_COMPLAINT, assigned, token
from tests.support.system import System
from tests.support.waits import eventually

pytestmark = pytest.mark.integration


async def test_complaint_posted_while_broker_is_down_is_assigned_after_restart(
    system: System,
) -> None:
    broker = system.infra.broker
    if broker is None:
        pytest.skip("the broker comes from KAFKA_BOOTSTRAP_SERVERS; this run cannot stop it")
    admin = token(system.intake_settings)
    # Make sure the pipeline is live before the outage, so the test measures recovery.
    warm = await system.intake.post("/v1/complaints", json=BROADBAND_COMPLAINT, headers=admin)
    await eventually(
        lambda: assigned(system, warm.json()["id"], admin), timeout_s=15, what="warm-up"
    )

    await asyncio.to_thread(broker.stop)
    try:
        during_outage = {**BROADBAND_COMPLAINT, "subject": "宽带停机第二次投诉"}
        created = await system.intake.post("/v1/complaints", json=during_outage, headers=admin)
        assert created.status_code == 201, created.text
        complaint_id = created.json()["id"]
        stored = await system.mongo[system.intake_settings.database_name()].complaints.find_one(
            {"_id": complaint_id}
        )
        assert stored is not None and stored["status"] == "received"
    finally:
        await asyncio.to_thread(broker.start)

    routed = await eventually(
        lambda: assigned(system, complaint_id, admin),
        # The broker restarts, then three consumer groups rejoin and two relays reconnect.
        timeout_s=150,
        interval_s=0.5,
        what="assignment after the broker came back",
    )
    assert routed["assignment"]["department"] == "LZ:BILLING"
    document = await system.mongo[system.intake_settings.database_name()].complaints.find_one(
        {"_id": complaint_id}
    )
    assert document["outbox"] == []
