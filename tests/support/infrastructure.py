"""Where the tests get Kafka and MongoDB from, in this order:

1. ``KAFKA_BOOTSTRAP_SERVERS`` and ``MONGODB_URI`` from the environment;
2. testcontainers (``apache/kafka``, ``mongo``) when a Docker engine answers;
3. the project's local infrastructure (``deploy/local/infra.sh up``).

Each source may also offer a broker control (stop/start) for outage tests.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

ROOT = Path(__file__).resolve().parents[2]
INFRA_SCRIPT = ROOT / "deploy" / "local" / "infra.sh"


def _versions() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "deploy" / "versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            pins[key.strip()] = value.strip()
    return pins


class BrokerControl(Protocol):
    def stop(self) -> None: ...
    def start(self) -> None: ...


@dataclass(frozen=True)
class SaslDoor:
    """A listener of the same broker that asks for SASL PLAIN credentials."""

    bootstrap_servers: str
    username: str
    password: str


def _sasl_door(values: Mapping[str, str]) -> SaslDoor | None:
    """The local infrastructure's SASL listener, as its env file names it (none elsewhere)."""
    servers = values.get("LOCAL_KAFKA_SASL_BOOTSTRAP_SERVERS")
    if not servers:
        return None
    return SaslDoor(
        bootstrap_servers=servers,
        username=values["LOCAL_KAFKA_SASL_USERNAME"],
        password=values["LOCAL_KAFKA_SASL_PASSWORD"],
    )


@dataclass
class Infrastructure:
    kafka_bootstrap_servers: str
    mongodb_uri: str
    source: str
    broker: BrokerControl | None
    closers: list
    kafka_sasl: SaslDoor | None = None


class LocalBroker:
    """Stops and starts the broker of the project's local infrastructure."""

    def stop(self) -> None:
        subprocess.run(["bash", str(INFRA_SCRIPT), "stop-kafka"], check=True)

    def start(self) -> None:
        subprocess.run(["bash", str(INFRA_SCRIPT), "start-kafka"], check=True)


class ContainerBroker:
    """Pauses the Kafka container: clients see a broker that stopped answering."""

    def __init__(self, container) -> None:
        self._container = container

    def stop(self) -> None:
        self._container.get_wrapped_container().pause()

    def start(self) -> None:
        self._container.get_wrapped_container().unpause()


def _docker_available() -> bool:
    try:
        import docker

        docker.from_env(timeout=3).ping()
        return True
    except Exception:
        return False


def _from_containers() -> Infrastructure:
    from testcontainers.kafka import KafkaContainer
    from testcontainers.mongodb import MongoDbContainer

    version = _versions()["KAFKA_VERSION"]
    kafka = KafkaContainer(f"apache/kafka:{version}").with_kraft()
    mongo = MongoDbContainer("mongo:8.0")
    kafka.start()
    mongo.start()
    return Infrastructure(
        kafka_bootstrap_servers=kafka.get_bootstrap_server(),
        mongodb_uri=mongo.get_connection_url(),
        source="testcontainers",
        broker=ContainerBroker(kafka),
        closers=[kafka.stop, mongo.stop],
    )


def _from_local_scripts() -> Infrastructure:
    subprocess.run(["bash", str(INFRA_SCRIPT), "up"], check=True)
    env_lines = subprocess.run(
        ["bash", str(INFRA_SCRIPT), "env"], check=True, capture_output=True, text=True
    ).stdout.splitlines()
    values = dict(line.split("=", 1) for line in env_lines if "=" in line)
    return Infrastructure(
        kafka_bootstrap_servers=values["KAFKA_BOOTSTRAP_SERVERS"],
        mongodb_uri=values["MONGODB_URI"],
        source="local",
        broker=LocalBroker(),
        closers=[],
        kafka_sasl=_sasl_door(values),
    )


def provide_infrastructure() -> Infrastructure:
    kafka = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    mongo = os.environ.get("MONGODB_URI")
    if kafka and mongo:
        return Infrastructure(
            kafka_bootstrap_servers=kafka,
            mongodb_uri=mongo,
            source="environment",
            broker=None,
            closers=[],
            kafka_sasl=_sasl_door(os.environ),
        )
    if _docker_available():
        return _from_containers()
    return _from_local_scripts()
