"""The database connection survives idleness and dropped connections: no 5xx afterwards.

Intake talks to the real database through a TCP proxy the test controls: the proxy
closes connections idle longer than its limit (as SecantusDB does after 300 s and
balancers and firewalls do after a few minutes), or severs all of them at once (a
restart, a failover). A burst of 40 concurrent registrations follows; none may fail.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack

import pytest
from pymongo.errors import AutoReconnect
from pymongo.uri_parser import parse_uri

from complaints_shared import runtime as runtime_module
from complaints_shared.mongo import create_mongo_client
from complaints_shared.settings import ServiceSettings
from intake import postings
from intake.main import create_app as create_intake_app
from intake.settings import IntakeSettings
from tests.support.http import complaint_body, complaint_count, token
from tests.support.system import System, SystemFactory, serve, settings_for_test
from tests.support.tcp_proxy import TcpProxy
from tests.support.waits import eventually

pytestmark = pytest.mark.integration

BURST = 40


async def _proxy(mongodb_uri: str, **options) -> TcpProxy:
    host, port = parse_uri(mongodb_uri)["nodelist"][0]
    return await TcpProxy(target_host=host, target_port=port, **options).start()


def _through(proxy: TcpProxy, mongodb_uri: str) -> str:
    """The same connection string, reaching the database only through the proxy."""
    return _through_port(proxy.port, mongodb_uri)


async def _burst(system: System, label: str) -> list[int]:
    headers = token(system.intake_settings)
    responses = await asyncio.gather(
        *(
            system.intake.post(
                "/v1/complaints",
                json=complaint_body(
                    customer={"name": "客户", "phone": f"1390000{number:04d}"},
                    subject=f"{label} 第{number}件",
                ),
                headers=headers,
            )
            for number in range(BURST)
        )
    )
    return [response.status_code for response in responses]


@pytest.fixture
async def idle_closing_proxy(infrastructure) -> AsyncIterator[TcpProxy]:
    proxy = await _proxy(infrastructure.mongodb_uri, idle_close_s=1.5)
    yield proxy
    await proxy.stop()


@pytest.fixture
async def severable_proxy(infrastructure) -> AsyncIterator[TcpProxy]:
    proxy = await _proxy(infrastructure.mongodb_uri)
    yield proxy
    await proxy.stop()


async def test_a_burst_after_an_idle_spell_longer_than_the_peer_idle_limit_has_no_5xx(
    idle_closing_proxy: TcpProxy, system_factory: SystemFactory, infrastructure
) -> None:
    # The documented rule: the client's idle limit and heartbeat stay below the peer's.
    system = await system_factory(
        intake={
            "mongodb_uri": _through(idle_closing_proxy, infrastructure.mongodb_uri),
            "mongodb_max_idle_time_ms": 1000,
            "mongodb_heartbeat_frequency_ms": 500,
        }
    )
    assert await _burst(system, "第一批") == [201] * BURST  # fills the pool
    # The idle spell: the pooled connections go, closed by whichever limit strikes first
    # (the driver's own pruning at 1 s races the peer's 1.5 s; either must leave no 5xx).
    await eventually(
        lambda: idle_closing_proxy.closed_idle + idle_closing_proxy.closed_by_client > 0,
        timeout_s=10,
        what="idle connections closed",
    )
    assert await _burst(system, "安静之后") == [201] * BURST
    assert await complaint_count(system) == 2 * BURST


async def test_connections_the_peer_closed_before_the_driver_pruned_them_cost_no_5xx(
    idle_closing_proxy: TcpProxy, system_factory: SystemFactory, infrastructure
) -> None:
    """The rule broken: the driver keeps idle connections longer than the peer does, so
    every pooled one is closed under it; the driver finds them dead and opens new ones."""
    system = await system_factory(
        intake={
            "mongodb_uri": _through(idle_closing_proxy, infrastructure.mongodb_uri),
            "mongodb_max_idle_time_ms": 60_000,
            "mongodb_heartbeat_frequency_ms": 500,
        }
    )
    assert await _burst(system, "第一批") == [201] * BURST
    await eventually(
        lambda: idle_closing_proxy.closed_idle > 0,
        timeout_s=10,
        what="the proxy closing idle connections",
    )
    assert idle_closing_proxy.closed_by_client == 0  # the peer, not the driver, closed them
    assert await _burst(system, "被关之后") == [201] * BURST
    assert await complaint_count(system) == 2 * BURST


async def test_a_burst_after_every_connection_was_severed_has_no_5xx(
    severable_proxy: TcpProxy, system_factory: SystemFactory, infrastructure
) -> None:
    system = await system_factory(
        intake={"mongodb_uri": _through(severable_proxy, infrastructure.mongodb_uri)}
    )
    assert await _burst(system, "第一批") == [201] * BURST
    assert severable_proxy.sever_all() > 0
    assert await _burst(system, "断开之后") == [201] * BURST
    assert await complaint_count(system) == 2 * BURST
    # Each complaint's search posting too: its write after the insert is repeated as well.
    db = system.mongo[system.intake_settings.database_name()]
    assert await db[postings.POSTINGS].count_documents({}) == 2 * BURST


async def test_a_service_started_while_the_database_is_away_waits_for_it(
    infrastructure,
) -> None:
    """A host starting the services before the database is up (a reboot, where compose's
    start order does not hold), or a database restarting: start-up used to fail at the
    first refused connection (its index creation), and only a supervisor brought the
    service back. It now waits for the database, up to ``STARTUP_DEPENDENCY_WAIT_S``."""
    with socket.socket() as probe:  # a port nothing listens on yet
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    host, target = parse_uri(infrastructure.mongodb_uri)["nodelist"][0]
    proxy = TcpProxy(target_host=host, target_port=target)
    uri = _through_port(port, infrastructure.mongodb_uri)
    settings = settings_for_test(
        IntakeSettings,
        infra=infrastructure,
        run_id=uuid.uuid4().hex[:10],
        mongodb_uri=uri,
        mongodb_server_selection_timeout_ms=300,
    )
    async with AsyncExitStack() as stack:
        starting = asyncio.create_task(serve(stack, create_intake_app(settings), "intake"))
        await asyncio.sleep(2.0)  # several refused tries
        assert not starting.done(), "start-up waits for the database"
        await proxy.start(port=port)
        stack.push_async_callback(proxy.stop)
        client = await asyncio.wait_for(starting, timeout=30)
        created = await client.post(
            "/v1/complaints", json=complaint_body(), headers=token(settings)
        )
    assert created.status_code == 201, created.text


def _through_port(port: int, mongodb_uri: str) -> str:
    """The same connection string, reaching the database only through ``port``."""
    host, target = parse_uri(mongodb_uri)["nodelist"][0]
    uri = mongodb_uri.replace(f"{host}:{target}", f"127.0.0.1:{port}", 1)
    # Talk to this address only: a replica-set member list would bypass the proxy.
    separator = "&" if "?" in uri else ("?" if uri.count("/") > 2 else "/?")
    return f"{uri}{separator}directConnection=true"


async def test_a_long_start_up_repair_meeting_a_dropped_connection_is_tried_again() -> None:
    """The start-up wait counted from the start: a repair that ran longer than the wait
    (intake's over many complaints, minutes after an upgrade) and then met one dropped
    connection ended start-up at once, to begin again from nothing after the restart. The
    wait now counts from the failure."""
    settings = IntakeSettings(startup_dependency_wait_s=0.2)
    tries: list[float] = []

    async def repair(*, db: object) -> None:
        tries.append(asyncio.get_running_loop().time())
        if len(tries) == 1:
            await asyncio.sleep(0.3)  # longer than the whole wait
            raise AutoReconnect("connection closed (injected)")

    await runtime_module._prepare_database(
        db=None, settings=settings, outbox_collections=[], prepare=repair
    )
    assert len(tries) == 2


async def test_a_long_repair_after_the_database_came_back_waits_again_from_its_failure() -> None:
    """The database away at the first try, then a long repair meeting one dropped
    connection: the wait still counted from that first failure, long past, and start-up
    ended at once. A try that got going before it failed starts the wait again."""
    settings = IntakeSettings(startup_dependency_wait_s=0.2, mongodb_server_selection_timeout_ms=50)
    tries: list[float] = []

    async def repair(*, db: object) -> None:
        tries.append(asyncio.get_running_loop().time())
        if len(tries) == 1:
            raise AutoReconnect("connection refused (injected)")  # away at the start
        if len(tries) == 2:
            await asyncio.sleep(0.3)  # a repair longer than the whole wait
            raise AutoReconnect("connection closed (injected)")

    await runtime_module._prepare_database(
        db=None, settings=settings, outbox_collections=[], prepare=repair
    )
    assert len(tries) == 3


@pytest.mark.parametrize(
    ("query", "write_concern"),
    [
        ("?retryWrites=false", {"j": True}),  # infra.sh's local address
        ("", {"j": True}),
        ("?journal=false", {"j": False}),  # the operator's own choice stands
        ("?w=majority&replicaSet=rs0", {"w": "majority"}),
    ],
)
def test_writes_are_journaled_unless_the_connection_string_says_otherwise(
    query: str, write_concern: dict
) -> None:
    """Until 6 December the local address acknowledged writes before they were on disk: a
    database killed then lost complaints already answered 201 (docs/operations.md)."""
    settings = ServiceSettings(service_name="probe", mongodb_uri=f"mongodb://127.0.0.1:1/{query}")
    client = create_mongo_client(settings=settings)
    assert client.write_concern.document == write_concern
