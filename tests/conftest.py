"""Shared fixtures: real infrastructure once per session, a fresh system per test.

What the fixtures build (systems, settings, infrastructure) lives in ``tests/support``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.support.infrastructure import Infrastructure, provide_infrastructure
from tests.support.system import System, SystemFactory, delete_test_topics, running_systems
from tests.support.webhooks import Isolation, webhooks_alone


@pytest.fixture(scope="session")
def infrastructure() -> Iterator[Infrastructure]:
    infra = provide_infrastructure()
    yield infra
    delete_test_topics(infra)
    for close in infra.closers:
        close()


@pytest.fixture
async def system_factory(infrastructure: Infrastructure) -> AsyncIterator[SystemFactory]:
    """Builds a running system; keyword arguments override settings per service.

    ``make(routing={"outbox_poll_interval_s": 0.1}, clock=ManualClock())`` — the
    clock, when given, is shared by all three services. Everything is stopped and
    the test's databases dropped afterwards.
    """
    async with running_systems(infrastructure) as make:
        yield make


@pytest.fixture
async def system(system_factory: SystemFactory) -> System:
    """The three services with default test settings and the demo organisation."""
    return await system_factory()


@pytest.fixture
async def alone(infrastructure: Infrastructure) -> AsyncIterator[Isolation]:
    """The webhooks service on its own database and topics, without the other services."""
    async with webhooks_alone(infrastructure) as isolation:
        yield isolation
