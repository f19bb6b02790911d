"""Private Kafka and MongoDB processes for fault tests that kill, stop and restart them.

The shared infrastructure of a test session is never touched: a fault test starts its own
pair with ``deploy/local/infra.sh`` in a temporary state directory on free ports, kills or
stops exactly the processes recorded there, and removes everything afterwards. It works
the same in CI, where the session's own infrastructure comes from infra.sh as well.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.infrastructure import INFRA_SCRIPT

# Enough for a single-node broker of a test; the shared sets keep their own heap.
PRIVATE_KAFKA_HEAP = "384m"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class PrivateInfrastructure:
    """One Kafka broker and one SecantusDB server that this test run owns."""

    state_dir: Path
    kafka_port: int = field(default_factory=free_port)
    controller_port: int = field(default_factory=free_port)
    sasl_port: int = field(default_factory=free_port)
    mongo_port: int = field(default_factory=free_port)

    @property
    def kafka_bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    @property
    def mongodb_uri(self) -> str:
        # retryWrites=false as infra.sh writes it (docs/mongodb-compatibility.md), and no
        # journal=true: the services ask for journaled writes themselves
        # (``complaints_shared.mongo.create_mongo_client``), which the tests that SIGKILL the
        # server prove (with j:false SecantusDB, like a standalone mongod, may lose the last
        # acknowledged writes: a complaint answered 201 missing after the restart, a routed
        # complaint's assignment vanished and it was routed a second time).
        return f"mongodb://127.0.0.1:{self.mongo_port}/?retryWrites=false"

    def _infra(self, *args: str) -> None:
        env = {
            **os.environ,
            "LOCAL_STATE_DIR": str(self.state_dir),
            "LOCAL_KAFKA_PORT": str(self.kafka_port),
            "LOCAL_KAFKA_CONTROLLER_PORT": str(self.controller_port),
            "LOCAL_KAFKA_SASL_PORT": str(self.sasl_port),
            "LOCAL_MONGO_PORT": str(self.mongo_port),
            "KAFKA_HEAP": os.environ.get("PRIVATE_KAFKA_HEAP", PRIVATE_KAFKA_HEAP),
        }
        subprocess.run(
            ["bash", str(INFRA_SCRIPT), *args],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
            timeout=300,
        )

    def up(self) -> None:
        """Start whatever of the two is not running and wait until both answer."""
        self._infra("up")

    def down(self) -> None:
        self._infra("down")

    def kill_database(self) -> None:
        """SIGKILL the database server: no shutdown, open connections just break."""
        pid_file = self.state_dir / "pids" / "mongo.pid"
        pid = int(pid_file.read_text().strip())
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)

    def stop_broker(self) -> None:
        self._infra("stop-kafka")

    def start_broker(self) -> None:
        self._infra("start-kafka")


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def start_private_infrastructure() -> PrivateInfrastructure:
    infra = PrivateInfrastructure(state_dir=Path(tempfile.mkdtemp(prefix="complaints-fault-")))
    try:
        infra.up()
    except BaseException:
        stop_private_infrastructure(infra)
        raise
    return infra


def stop_private_infrastructure(infra: PrivateInfrastructure) -> None:
    try:
        infra.down()
    finally:
        shutil.rmtree(infra.state_dir, ignore_errors=True)
