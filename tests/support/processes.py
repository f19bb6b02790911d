"""A service as a real child process (uvicorn), for fault tests that kill or stop it.

``ServiceProcess.of(system, "routing", log_dir=tmp_path)`` runs
``uvicorn routing.main:create_app --factory`` with the environment the test's system would
give that service in-process: its Kafka, MongoDB, database, topic prefix, JWT secret and the
test suite's fast retries (``settings_for_test``), plus per-test overrides. The test reads
the same database and topics as the in-process services. The process's output goes to a
file under the test's ``tmp_path``; the ``running`` context manager kills the process
whatever happens and adds the end of that file to the failure.
"""

from __future__ import annotations

import asyncio
import atexit
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import httpx
import orjson

from complaints_shared.settings import ServiceSettings
from followup.settings import FollowupSettings
from intake.settings import IntakeSettings
from routing.settings import RoutingSettings
from tests.support.private_infrastructure import free_port
from tests.support.system import WEBHOOKS_TEST_DEFAULTS, System, settings_for_test
from tests.support.waits import eventually
from webhooks.settings import WebhooksSettings

ROOT = Path(__file__).resolve().parents[2]
SETTINGS_CLASSES: dict[str, type[ServiceSettings]] = {
    "intake": IntakeSettings,
    "routing": RoutingSettings,
    "followup": FollowupSettings,
    "webhooks": WebhooksSettings,
}
# As deployed (docker-compose.yml): uvicorn drains requests for 20 s on SIGTERM.
GRACEFUL_SHUTDOWN_S = 20
READY_TIMEOUT_S = 60.0
LOG_TAIL_CHARS = 4000

# Every child still running, killed when the interpreter exits should a test's cleanup
# never run (the event loop torn down under it).
_LIVE: set[subprocess.Popen | asyncio.subprocess.Process] = set()


@atexit.register
def _kill_leftovers() -> None:
    for process in list(_LIVE):
        if process.returncode is None:
            with suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)


def environment_of(settings: ServiceSettings) -> dict[str, str]:
    """Environment variables that make a process read ``settings`` as a test built them."""
    fields = settings.model_fields_set - {"service_name"}
    values = settings.model_dump(mode="json", include=fields)
    return {
        name.upper(): value if isinstance(value, str) else orjson.dumps(value).decode()
        for name, value in values.items()
    }


class ServiceProcess:
    """``uvicorn <service>.main:create_app --factory`` as a child process of the test."""

    def __init__(
        self, service: str, *, settings: ServiceSettings, log_path: Path, port: int | None = None
    ) -> None:
        self.service, self.settings, self.log_path = service, settings, log_path
        self.port = port or free_port()
        self.process: asyncio.subprocess.Process | None = None
        self.starts = 0

    @classmethod
    def of(cls, system: System, service: str, *, log_dir: Path, **overrides: Any) -> ServiceProcess:
        """``service`` of ``system``: the settings the system gave it (its database, topics and
        the test suite's fast retries; webhooks' test defaults when the system has none),
        with ``overrides`` on top."""
        settings_class = SETTINGS_CLASSES[service]
        base = getattr(system, f"{service}_settings", None) or settings_for_test(
            settings_class,
            infra=system.infra,
            run_id=system.run_id,
            **(WEBHOOKS_TEST_DEFAULTS if service == "webhooks" else {}),
        )
        given = base.model_dump(include=base.model_fields_set - {"service_name"})
        settings = settings_class(**{**given, **overrides})
        return cls(service, settings=settings, log_path=log_dir / f"{service}.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def client(self, **kwargs: Any) -> httpx.AsyncClient:
        """An HTTP client of this process (close it, or use it in ``async with``)."""
        return httpx.AsyncClient(base_url=self.url, **kwargs)

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return self.log_path.read_text(errors="replace")[-chars:]

    async def start(self) -> float:
        """Start the process and wait until ``/readyz`` answers 200; seconds it took."""
        assert not self.running, f"{self.service} is already running"
        self.starts += 1
        started = time.monotonic()
        env = {
            **os.environ,
            **environment_of(self.settings),
            "MONGODB_DATABASE": self.settings.database_name(),
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONUNBUFFERED": "1",
        }
        with self.log_path.open("ab") as log:
            log.write(f"\n==== start {self.starts} of {self.service}\n".encode())
            log.flush()
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "uvicorn",
                f"{self.service}.main:create_app",
                "--factory",
                "--host=127.0.0.1",
                f"--port={self.port}",
                "--no-access-log",
                f"--timeout-graceful-shutdown={GRACEFUL_SHUTDOWN_S}",
                env=env,
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        _LIVE.add(self.process)
        async with httpx.AsyncClient(timeout=2) as client:

            async def ready() -> bool:
                assert self.running, f"{self.service} exited at start-up:\n{self.log_tail()}"
                try:
                    return (await client.get(f"{self.url}/readyz")).status_code == 200
                except httpx.HTTPError:
                    return False

            await eventually(
                ready, timeout_s=READY_TIMEOUT_S, interval_s=0.2, what=f"{self.service} ready"
            )
        return time.monotonic() - started

    async def kill(self) -> None:
        """SIGKILL: the process dies at once, whatever it holds."""
        await self._signal(signal.SIGKILL, timeout_s=10)

    async def terminate(self, *, timeout_s: float = 90) -> float:
        """SIGTERM and wait for the exit; seconds from the signal to the exit."""
        assert self.running, f"{self.service} is not running"
        started = time.monotonic()
        await self._signal(signal.SIGTERM, timeout_s=timeout_s)
        return time.monotonic() - started

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.returncode

    async def _signal(self, number: int, *, timeout_s: float) -> None:
        process = self.process
        if process is None or process.returncode is not None:
            return
        process.send_signal(number)
        try:
            await asyncio.wait_for(process.wait(), timeout=timeout_s)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise AssertionError(
                f"{self.service} did not exit within {timeout_s} s of signal {number}"
            ) from None
        finally:
            if process.returncode is not None:
                _LIVE.discard(process)

    @asynccontextmanager
    async def running_until_done(self) -> AsyncIterator[ServiceProcess]:
        """Started here, killed on the way out; a failure inside carries the log's end."""
        try:
            await self.start()
            yield self
        except BaseException as failure:
            failure.add_note(
                f"--- {self.service} process log ({self.log_path}):\n{self.log_tail()}"
            )
            raise
        finally:
            await self.kill()


@asynccontextmanager
async def service_process(
    system: System, service: str, *, log_dir: Path, **overrides: Any
) -> AsyncIterator[ServiceProcess]:
    """``service`` of ``system`` as a running child process, killed when the block ends."""
    process = ServiceProcess.of(system, service, log_dir=log_dir, **overrides)
    async with process.running_until_done():
        yield process
