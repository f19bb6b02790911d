"""Integration: the services reach a broker that asks for credentials, as a managed one does.

Until 6 December every producer, consumer and admin client connected in plaintext with no
way to say otherwise, so a cluster that asks for SASL credentials (or TLS) could not be
used. ``KAFKA_SECURITY_PROTOCOL``, ``KAFKA_SASL_*`` and ``KAFKA_SSL_CAFILE`` now reach
every client (``kafka.connection_options``). The local infrastructure's broker has a
second listener asking for SASL PLAIN credentials; elsewhere (testcontainers, a broker
from the environment) there is none, and the integration tests here are skipped.
"""

from __future__ import annotations

import asyncio
import ssl
import uuid
from pathlib import Path

import pytest
from aiokafka.errors import KafkaConnectionError
from pydantic import SecretStr, ValidationError

from complaints_shared.kafka import connection_options, create_missing_topics
from intake.settings import IntakeSettings
from tests.support.http import BROADBAND_COMPLAINT, assigned, token
from tests.support.infrastructure import Infrastructure, SaslDoor
from tests.support.system import SystemFactory, settings_for_test
from tests.support.waits import eventually


def _door(infrastructure: Infrastructure) -> SaslDoor:
    if infrastructure.kafka_sasl is None:
        pytest.skip("this broker has no listener asking for SASL credentials (the local one has)")
    return infrastructure.kafka_sasl


def _through(door: SaslDoor, *, password: str | None = None) -> dict:
    return {
        "kafka_bootstrap_servers": door.bootstrap_servers,
        "kafka_security_protocol": "SASL_PLAINTEXT",
        "kafka_sasl_mechanism": "PLAIN",
        "kafka_sasl_username": door.username,
        "kafka_sasl_password": SecretStr(password or door.password),
    }


@pytest.mark.integration
async def test_a_complaint_goes_the_whole_way_through_a_broker_that_asks_for_credentials(
    infrastructure: Infrastructure, system_factory: SystemFactory
) -> None:
    """Intake, routing, follow-up and webhooks create their topics, publish, consume and
    watch their offsets through the listener that asks for credentials: a complaint
    posted is assigned, as through the plaintext one."""
    sasl = _through(_door(infrastructure))
    system = await system_factory(intake=sasl, routing=sasl, followup=sasl, webhooks=sasl)
    admin = token(system.intake_settings)
    created = await system.intake.post("/v1/complaints", json=BROADBAND_COMPLAINT, headers=admin)
    assert created.status_code == 201, created.text
    routed = await eventually(
        lambda: assigned(system, created.json()["id"], admin),
        timeout_s=30,
        what="the complaint assigned through the SASL listener",
    )
    assert routed["assignment"]["department"] == "LZ:BILLING"


@pytest.mark.integration
async def test_a_wrong_password_is_refused_by_the_broker(infrastructure: Infrastructure) -> None:
    """The credentials are the broker's to check: with another password the service's
    admin client cannot create its topics (the service is not ready, the refusal in its log)."""
    door = _door(infrastructure)
    host, port = door.bootstrap_servers.rsplit(":", 1)
    # The listener answers: a refusal below is the credentials', not a closed port's.
    _, writer = await asyncio.open_connection(host, int(port))
    writer.close()
    settings = settings_for_test(
        IntakeSettings,
        infra=infrastructure,
        run_id=uuid.uuid4().hex[:10],
        **_through(door, password="not-the-password"),
    )
    with pytest.raises(KafkaConnectionError):
        await asyncio.wait_for(create_missing_topics(settings=settings, topics=[]), timeout=60)


def test_a_sasl_protocol_needs_its_credentials() -> None:
    with pytest.raises(ValidationError, match="kafka_sasl_username and kafka_sasl_password"):
        IntakeSettings(kafka_security_protocol="SASL_SSL", kafka_sasl_username="complaints")
    with pytest.raises(ValidationError, match="kafka_security_protocol"):
        IntakeSettings(kafka_security_protocol="SASL")


def test_the_brokers_ca_file_must_hold_certificates(tmp_path: Path) -> None:
    (tmp_path / "empty.pem").write_text("")
    for missing in (tmp_path / "nowhere.pem", tmp_path / "empty.pem"):
        with pytest.raises(ValidationError, match="kafka_ssl_cafile"):
            IntakeSettings(kafka_security_protocol="SSL", kafka_ssl_cafile=str(missing))


def test_every_client_gets_the_security_the_settings_ask_for() -> None:
    """Plaintext carries no credentials; SASL over TLS carries both the credentials and a
    TLS context that checks the brokers' names against the system's CAs."""
    plain = connection_options(IntakeSettings(kafka_bootstrap_servers="kafka:9092"))
    assert plain == {"bootstrap_servers": "kafka:9092", "security_protocol": "PLAINTEXT"}

    managed = connection_options(
        IntakeSettings(
            kafka_bootstrap_servers="b-1.kafka.example.cn:9096",
            kafka_security_protocol="SASL_SSL",
            kafka_sasl_mechanism="SCRAM-SHA-512",
            kafka_sasl_username="complaints",
            kafka_sasl_password="s3cret-密码",
        )
    )
    context = managed.pop("ssl_context")
    assert isinstance(context, ssl.SSLContext)
    assert context.check_hostname and context.verify_mode is ssl.CERT_REQUIRED
    assert managed == {
        "bootstrap_servers": "b-1.kafka.example.cn:9096",
        "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "complaints",
        "sasl_plain_password": "s3cret-密码",
    }
    shown = repr(IntakeSettings(kafka_sasl_password="s3cret-密码"))
    assert "s3cret" not in shown
    # Refused settings name the field, never quote the input.
    with pytest.raises(ValidationError) as refused:
        IntakeSettings(kafka_security_protocol="SASL_SSL", kafka_sasl_password="s3cret-密码")
    assert "s3cret" not in str(refused.value)
