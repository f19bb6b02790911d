"""/readyz: dependencies reachable and every background loop of the service running."""

from __future__ import annotations

import asyncio
import uuid
from contextlib import AsyncExitStack

import pytest
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from pydantic import ValidationError

from complaints_shared import dlq
from complaints_shared import runtime as runtime_module
from complaints_shared.events import Topic, dead_letter_topic
from complaints_shared.kafka import TopicsNotCreated, ensure_topics
from complaints_shared.metrics import BACKGROUND_LOOP_RESTARTS
from followup.settings import FollowupSettings
from intake.main import create_app as create_intake_app
from intake.settings import IntakeSettings
from routing.settings import RoutingSettings
from tests.support.http import assigned, create_complaint, token
from tests.support.system import System, serve, settings_for_test
from tests.support.waits import eventually
from webhooks.settings import WebhooksSettings

pytestmark = pytest.mark.integration


async def test_a_background_loop_that_dies_fails_readiness_and_is_started_again(
    system: System,
) -> None:
    """A loop that ended before shutdown stayed dead until someone restarted the instance:
    the service kept answering but, with its relay gone, published nothing. It is now
    started again after a pause, and readiness fails until the replacement has run a
    while."""

    async def ready_checks() -> dict | None:
        response = await system.routing.get("/readyz")
        return response.json()["checks"] if response.status_code == 200 else None

    checks = await eventually(ready_checks, what="routing ready")
    assert {"loop:consumer", "loop:outbox-relay", "loop:run_sla_timers"} <= set(checks)

    runtime = system.routing_app.state.runtime
    [relay] = [task for task in runtime.tasks if task.get_name() == "outbox-relay"]
    restarts = BACKGROUND_LOOP_RESTARTS.labels("routing", "outbox-relay")
    restarts_before = restarts._value.get()
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

    # Started again: a new relay task publishes routing's decisions.
    def replaced() -> bool:
        # Not the task itself: ``eventually`` would await what its probe returns.
        [task] = [task for task in runtime.tasks if task.get_name() == "outbox-relay"]
        return task is not relay and not task.done()

    await eventually(replaced, what="the relay started again")
    assert restarts._value.get() == restarts_before + 1
    admin = token(system.intake_settings)
    created = await create_complaint(system, admin)
    await eventually(lambda: assigned(system, created["id"], admin), what="assignment published")
    # Ready again once the replacement has run LOOP_PROVEN_S.
    await eventually(ready_checks, timeout_s=runtime_module.LOOP_PROVEN_S + 10, what="ready again")


async def test_two_slow_dependencies_answer_readiness_within_the_healthchecks_wait(
    system: System, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MongoDB and Kafka each answering in 1.6 s (within the 2 s probe timeout): probed one
    after the other, /readyz took 3.2 s, past the 3 s compose's healthcheck waits, and a
    service whose dependencies were both up showed unhealthy."""
    runtime = system.intake_app.state.runtime
    slow_s = 1.6

    def slowed(probe):
        async def slow(*args, **kwargs):
            await asyncio.sleep(slow_s)
            return await probe(*args, **kwargs)

        return slow

    monkeypatch.setattr(runtime_module, "ping", slowed(runtime_module.ping))
    monkeypatch.setattr(runtime.producer, "is_reachable", slowed(runtime.producer.is_reachable))
    started = asyncio.get_running_loop().time()
    response = await system.intake.get("/readyz")
    took_s = asyncio.get_running_loop().time() - started
    assert response.status_code == 200, response.text
    assert response.json()["checks"]["mongodb"] and response.json()["checks"]["kafka"]
    assert took_s < 2 * slow_s, took_s


async def test_topics_the_broker_refuses_leave_the_service_not_ready_and_say_why(
    infrastructure, monkeypatch: pytest.MonkeyPatch
) -> None:
    """aiokafka answers a refused topic creation with an error code per topic instead of
    raising: a replication factor above the brokers was logged ``topics_created``, readiness
    said ready, and the service took complaints whose events could never be published.
    The refusal now names the topic and the broker's reason, and the service stays not
    ready, trying again."""
    settings = settings_for_test(
        IntakeSettings,
        infra=infrastructure,
        run_id=uuid.uuid4().hex[:10],
        topic_replication_factor=3,  # one local broker
    )
    topic = settings.topic(Topic.INTAKE.value)
    with pytest.raises(TopicsNotCreated, match=f"{topic}: InvalidReplicationFactorError"):
        await ensure_topics(settings=settings, topics=[topic])
    refusals: list[str] = []

    async def counted(**arguments) -> None:
        try:
            await ensure_topics(**arguments)
        except TopicsNotCreated as exc:
            refusals.append(str(exc))
            raise

    monkeypatch.setattr(runtime_module, "ensure_topics", counted)
    async with AsyncExitStack() as stack:
        client = await serve(stack, create_intake_app(settings), "intake")
        await eventually(
            lambda: asyncio.sleep(0, len(refusals) >= 2), what="the refusal met and tried again"
        )
        response = await client.get("/readyz")
    assert response.status_code == 503, response.text
    assert response.json()["checks"]["topics"] is False


@pytest.mark.parametrize("retention_ms", [0, 1, 3_600_000])
def test_a_dead_letter_retention_shorter_than_a_day_is_refused(retention_ms: int) -> None:
    with pytest.raises(ValidationError, match="dead_letter_retention_ms"):
        IntakeSettings(dead_letter_retention_ms=retention_ms)
    assert IntakeSettings(dead_letter_retention_ms=86_400_000).dead_letter_retention_ms > 0


def test_a_service_name_in_the_environment_moves_no_service_into_another_ones_group(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``SERVICE_NAME`` was read like any setting, and it names the consumer group and the
    default database: set on every container (a logging convention), it put intake,
    routing, follow-up and webhooks in one group, splitting the partitions each must read
    whole. Each service's name is now its class's."""
    monkeypatch.setenv("SERVICE_NAME", "complaint-desk")
    monkeypatch.setenv("LOG_LEVEL", "DEBUG")  # the environment still sets the others
    named = [
        (settings.service_name, settings.consumer_group(), settings.database_name())
        for settings in (
            IntakeSettings(),
            RoutingSettings(),
            FollowupSettings(),
            WebhooksSettings(),
        )
    ]
    assert [name for name, _, _ in named] == ["intake", "routing", "followup", "webhooks"]
    assert len({group for _, group, _ in named}) == 4 and len({db for _, _, db in named}) == 4
    assert IntakeSettings().log_level == "DEBUG"


async def test_dead_letter_topics_keep_their_records_until_deleted(infrastructure) -> None:
    """Dead-letter topics were created with the broker's default retention (7 days), so a
    dead letter nobody replayed in time was deleted with the work it stood for. The tool's
    ledger of replays is kept the same way (a replay run after it expired would send
    everything again)."""
    settings = settings_for_test(IntakeSettings, infra=infrastructure, run_id=uuid.uuid4().hex[:10])
    topic = settings.topic(Topic.INTAKE.value)
    await ensure_topics(settings=settings, topics=[topic])
    ledger = dead_letter_topic(topic) + dlq.REPLAYED_SUFFIX
    await dlq._ensure_topics(settings=settings, topics=[ledger])
    names = (topic, dead_letter_topic(topic), ledger)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()

    async def retention_of_each() -> dict[str, str] | None:
        # A topic just created may be described without its configuration for a moment.
        described = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, name) for name in names]
        )
        found = {
            name: value
            for response in described
            for _, _, _, name, entries in response.resources
            for key, value, *_ in entries
            if key == "retention.ms"
        }
        return found if set(names) <= set(found) else None

    try:
        retention = await eventually(retention_of_each, what="the topics' retention")
    finally:
        await admin.close()
    assert retention[dead_letter_topic(topic)] == "-1"
    assert retention[ledger] == "-1"
    assert retention[topic] != "-1", "the service's own topics keep the broker's retention"
