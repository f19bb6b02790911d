"""No lost complaint: intake accepts while the broker is down and delivers afterwards."""

from __future__ import annotations

import asyncio
import time
import uuid
from contextlib import AsyncExitStack

import pytest
from pymongo import AsyncMongoClient

from complaints_shared import kafka, outbox, runtime
from complaints_shared.mongo import service_database
from intake import store
from intake.main import create_app as create_intake_app
from intake.settings import IntakeSettings
from tests.support.http import BROADBAND_COMPLAINT, assigned, token
from tests.support.infrastructure import LocalBroker
from tests.support.system import System, serve, settings_for_test
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
    complaints = system.mongo[system.intake_settings.database_name()].complaints

    async def released() -> bool:
        # A send across the restart can reach routing unacknowledged: the relay sends it
        # again and releases it after the release delay, maybe after routing's answer.
        return (await complaints.find_one({"_id": complaint_id}))["outbox"] == []

    await eventually(released, timeout_s=30, what="the outbox released")


async def test_a_service_stops_within_its_grace_while_the_broker_is_down(infrastructure) -> None:
    """Shutdown with the broker away: the consumer cannot leave its group and the producer
    holds an event the relay handed it that it cannot deliver. The service still stops
    within its grace (compose waits ``stop_grace_period``, 50 s, then kills it), and the
    event stays in the outbox until a start with the broker back publishes it."""
    broker = infrastructure.broker
    if broker is None:
        pytest.skip("the broker comes from KAFKA_BOOTSTRAP_SERVERS; this run cannot stop it")
    # Production's producer timeout, not the suite's shorter one.
    settings = settings_for_test(
        IntakeSettings,
        infra=infrastructure,
        run_id=uuid.uuid4().hex[:10],
        kafka_request_timeout_s=IntakeSettings.model_fields["kafka_request_timeout_s"].default,
    )
    admin = token(settings)
    mongo = AsyncMongoClient(settings.mongodb_uri, tz_aware=True)
    complaints = service_database(client=mongo, settings=settings)[store.COMPLAINTS]

    async def published(complaint_id: str) -> bool:
        document = await complaints.find_one({"_id": complaint_id})
        return document is not None and document["outbox"] == []

    try:
        try:
            async with AsyncExitStack() as stack:
                intake = await serve(stack, create_intake_app(settings), "intake")
                warm = await intake.post("/v1/complaints", json=BROADBAND_COMPLAINT, headers=admin)
                assert warm.status_code == 201, warm.text
                await eventually(lambda: published(warm.json()["id"]), what="the relay publishing")

                await asyncio.to_thread(broker.stop)
                late = {**BROADBAND_COMPLAINT, "subject": "停机时的投诉"}
                created = await intake.post("/v1/complaints", json=late, headers=admin)
                assert created.status_code == 201, created.text
                complaint_id = created.json()["id"]
                await asyncio.sleep(2)  # the relay has handed the event to the producer
                started = time.monotonic()
                await stack.aclose()
            stopped_in_s = time.monotonic() - started
            if isinstance(broker, LocalBroker):
                # Stopped, so refusing connections: the relay waits for acknowledgements
                # a little longer, then the producer gets its own bound (before: the wait
                # lasted until the grace cancelled it, 20 s in all; before that, no end
                # until the broker came back).
                bound_s = outbox.STOP_ACK_WAIT_S + kafka.PRODUCER_STOP_S + 3
            else:
                # Paused (a container): the consumer waits for its group coordinator until
                # the grace cancels it and cuts its close short.
                grace_s = runtime.SHUTDOWN_GRACE_S + kafka.CANCELLED_CONSUMER_CLOSE_S
                bound_s = grace_s + kafka.PRODUCER_STOP_S + 5
            assert stopped_in_s < bound_s, stopped_in_s
            assert not await published(complaint_id)
        finally:
            await asyncio.to_thread(broker.start)

        async with AsyncExitStack() as stack:
            await serve(stack, create_intake_app(settings), "intake")
            await eventually(
                lambda: published(complaint_id),
                timeout_s=120,
                interval_s=0.5,
                what="the event published after the broker came back",
            )
    finally:
        await mongo.drop_database(settings.database_name())
        await mongo.close()
