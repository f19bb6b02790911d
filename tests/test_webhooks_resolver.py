"""Unit: target host names looked up without letting slow name servers hold anyone else up.

``socket.getaddrinfo`` is replaced by one that answers ``healthy.test`` at once (the local
receiver's address) and blocks for every ``*.slow.test`` name, as a lookup does whose name
servers never answer, until the test lets it go.
"""

from __future__ import annotations

import asyncio
import http.server
import socket
import threading
import time
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass, field

import pytest

from webhooks.resolver import AddressInfo, HostResolver, LookupDeferred
from webhooks.sender import Sender
from webhooks.settings import WebhooksSettings

# How long a blocked lookup waits at most for the test to let it go (a test that fails
# must not leave threads blocked for the rest of the session).
BLOCKED_AT_MOST_S = 30.0


@dataclass
class NameServers:
    """Lookups as the test has them answer: the blocked ones wait for ``released``."""

    released: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    blocked_now: int = 0
    blocked_most: int = 0
    asked: list[str] = field(default_factory=list)

    def lookup(self, host: str) -> list[AddressInfo]:
        with self.lock:
            self.asked.append(host)
        if host == "healthy.test":
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", 0))]
        if host.endswith(".slow.test"):
            with self.lock:
                self.blocked_now += 1
                self.blocked_most = max(self.blocked_most, self.blocked_now)
            try:
                self.released.wait(BLOCKED_AT_MOST_S)
            finally:
                with self.lock:
                    self.blocked_now -= 1
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


@pytest.fixture
def name_servers(monkeypatch: pytest.MonkeyPatch) -> Iterator[NameServers]:
    servers = NameServers()
    system = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        if isinstance(host, str) and host.endswith(".test"):
            return servers.lookup(host)
        return system(host, port, *args, **kwargs)  # Kafka, MongoDB, the loop's own

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    try:
        yield servers
    finally:
        servers.released.set()


@pytest.fixture
def receiver_port() -> Iterator[int]:
    """A local receiver answering 204."""

    class Receiver(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", 0)))
            self.send_response(204)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


async def test_targets_whose_name_servers_do_not_answer_hold_up_no_other_lookup(
    name_servers: NameServers, receiver_port: int
) -> None:
    """Forty subscriptions' hosts whose name servers never answer. Looked up with the
    loop's ``getaddrinfo``, each attempt's timeout left its thread blocked in the shared
    default executor; with the pool full, the healthy subscription's lookup queued behind
    them and its attempt timed out, and so did anything else run on a thread. Now the
    slow names take a bounded share of the resolver's own threads, the rest fail at once,
    and the healthy delivery goes out at once."""
    settings = WebhooksSettings(
        deployment_environment="development", allow_loopback_targets=True, request_timeout_s=1.0
    )
    healthy_url = f"http://healthy.test:{receiver_port}/hook"
    sender = Sender(settings=settings)
    try:
        before = await sender.send(url=healthy_url, headers={}, body="{}")
        assert before.response_code == 204, before.error
        slow = [
            asyncio.create_task(
                sender.send(url=f"http://t{n}.slow.test/hook", headers={}, body="{}")
            )
            for n in range(40)
        ]
        await asyncio.sleep(0.2)  # every slow attempt has begun its lookup
        started = time.monotonic()
        beside_slow = await sender.send(url=healthy_url, headers={}, body="{}")
        took_s = time.monotonic() - started
        # Another job of the service that runs on a thread (the identity provider's keys).
        other_thread_job = await _finishes_within(asyncio.to_thread(int), timeout_s=0.5)
        slow_results = await asyncio.gather(*slow)
        after = await sender.send(url=healthy_url, headers={}, body="{}")
    finally:
        name_servers.released.set()
        await sender.close()
    assert beside_slow.response_code == 204, beside_slow.error
    assert took_s < 0.5, took_s
    assert other_thread_job, "the event loop's default executor is not the resolver's"
    assert after.response_code == 204, after.error
    assert all(result.response_code is None for result in slow_results)
    deferred = [result for result in slow_results if result.error.startswith("lookup deferred")]
    assert deferred, "beyond their share, the slow names' attempts failed at once"
    assert all(result.latency_ms < 500 for result in deferred), deferred
    assert name_servers.blocked_most <= settings.resolver_threads * settings.failing_share


async def _finishes_within(job: Awaitable[object], *, timeout_s: float) -> bool:
    try:
        await asyncio.wait_for(job, timeout=timeout_s)
    except TimeoutError:
        return False
    return True


async def test_lookups_attempts_gave_up_on_never_take_more_threads_than_the_resolver_has() -> None:
    """An attempt's timeout abandons its wait, not the lookup's thread: attempt after
    attempt to names that never answer must not start lookup after lookup."""
    name_servers = NameServers()
    resolver = HostResolver(
        threads=4, unproven_share=0.5, failure_kept_s=30, lookup=name_servers.lookup
    )
    try:
        await resolver.resolve("healthy.test")  # proven
        outcomes: list[str] = []
        for round_number in range(5):
            for n in range(20):
                try:
                    async with asyncio.timeout(0.02):
                        await resolver.resolve(f"t{n}.slow.test")
                except TimeoutError:
                    outcomes.append("timed out")
                except LookupDeferred:
                    outcomes.append("deferred")
            assert resolver.lookups_in_flight <= 4, round_number
        # Two proven names still find threads beside the slow ones (which hold two).
        answered = await asyncio.gather(
            resolver.resolve("healthy.test"), resolver.resolve("healthy.test")
        )
    finally:
        name_servers.released.set()
        resolver.close()
    assert outcomes.count("timed out") == 2, "one lookup per thread of the unproven share"
    assert outcomes.count("deferred") == 98
    assert name_servers.blocked_most == 2
    assert all(info[0][4][0] == "127.0.0.1" for info in answered)


async def test_a_failed_lookup_is_answered_from_memory_until_it_is_worth_asking_again() -> None:
    name_servers = NameServers()
    resolver = HostResolver(
        threads=4, unproven_share=0.5, failure_kept_s=30, lookup=name_servers.lookup
    )
    forgetful = HostResolver(
        threads=4, unproven_share=0.5, failure_kept_s=0, lookup=name_servers.lookup
    )
    try:
        for each in (resolver, forgetful):
            for _ in range(3):
                with pytest.raises(socket.gaierror, match="not known"):
                    await each.resolve("gone.test")
    finally:
        resolver.close()
        forgetful.close()
    assert name_servers.asked == ["gone.test"] * 4, "once, then three times without memory"
