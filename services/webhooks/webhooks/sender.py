"""One HTTP attempt: connect to the checked address, send, read a bounded excerpt.

The whole attempt (resolve, connect, TLS, send, first bytes of the answer) is
bounded by ``request_timeout_s``; the host name is looked up on the resolver's own threads
(``webhooks.resolver``), and an attempt for which no lookup can be started now fails at
once (``lookup deferred``), retried per the schedule; redirects are not followed (a 3xx is a
failure, and could point anywhere). The response body is never stored beyond
``response_excerpt_bytes``.

Whatever goes wrong in an attempt is its result, never an exception for the dispatcher:
an attempt touches no database, so no failure here is a dependency's outage to wait out,
and a target the attempt cannot even address fails like one that does not resolve.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections import OrderedDict
from dataclasses import dataclass

import certifi
import httpx

from complaints_shared.failures import redacted_error
from complaints_shared.logs import get_logger
from webhooks.resolver import HostResolver, LookupDeferred
from webhooks.settings import WebhooksSettings
from webhooks.targets import TargetRefused, parse_target, resolve_checked

log = get_logger(__name__)


@dataclass
class AttemptResult:
    response_code: int | None
    latency_ms: float
    error: str | None = None
    response_excerpt: str | None = None

    @property
    def delivered(self) -> bool:
        return self.response_code is not None and 200 <= self.response_code < 300

    @property
    def gone(self) -> bool:
        return self.response_code == 410


# Host names whose pooled clients a replica keeps; the least recently used beyond are closed,
# at once when idle, else as their last attempt ends.
MAX_POOLED_HOSTS = 256


@dataclass(eq=False)
class _HostPool:
    client: httpx.AsyncClient
    in_use: int = 0
    retired: bool = False


def target_tls(settings: WebhooksSettings) -> ssl.SSLContext:
    """What a target's certificate is verified against: the public CAs (certifi's bundle)
    and an internal CA's certificates (``TARGET_CA_FILE``), if any."""
    context = ssl.create_default_context(cafile=certifi.where())
    if settings.target_ca_file is not None:
        context.load_verify_locations(cafile=str(settings.target_ca_file))
    return context


class Sender:
    """Sends attempts over a pooled client per target host name.

    Attempts connect to the address just checked, so a client's pool knows a connection by
    that address, not by the name its certificate was verified for: one client for every
    subscription sent a second host's deliveries (same address: shared hosting, a CDN, an
    ingress) over a connection verified for the first. A client per host name keeps each
    kept-alive connection to the one name it was verified for.
    """

    def __init__(
        self, *, settings: WebhooksSettings, tls_context: ssl.SSLContext | None = None
    ) -> None:
        self._settings = settings
        # One context for every client (loading the CA bundle per host would cost each one).
        self._tls = tls_context or target_tls(settings)
        self._pools: OrderedDict[str, _HostPool] = OrderedDict()
        self._retired: set[_HostPool] = set()
        self._resolver = HostResolver(
            threads=settings.resolver_threads,
            unproven_share=settings.failing_share,
            failure_kept_s=settings.failed_lookup_kept_s,
        )

    async def close(self) -> None:
        self._resolver.close()
        pools = [*self._pools.values(), *self._retired]
        self._pools.clear()
        self._retired.clear()
        for pool in pools:
            await pool.client.aclose()

    async def _checkout(self, host: str) -> _HostPool:
        pool = self._pools.get(host)
        if pool is None:
            pool = self._pools[host] = _HostPool(client=self._new_client())
        self._pools.move_to_end(host)
        pool.in_use += 1
        while len(self._pools) > MAX_POOLED_HOSTS:
            _, oldest = self._pools.popitem(last=False)
            if oldest.in_use:
                oldest.retired = True
                self._retired.add(oldest)
            else:
                await oldest.client.aclose()
        return pool

    @property
    def pooled_hosts(self) -> int:
        """Clients open: one per recent host name, plus those retired mid-attempt."""
        return len(self._pools) + len(self._retired)

    async def _checkin(self, pool: _HostPool) -> None:
        pool.in_use -= 1
        if pool.retired and pool.in_use == 0:
            self._retired.discard(pool)
            await pool.client.aclose()

    def _new_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            follow_redirects=False,
            trust_env=False,
            verify=self._tls,
            timeout=httpx.Timeout(self._settings.request_timeout_s),
            # Idle connections kept per host as many as one subscription's attempts at once:
            # with a pool per host, the replica's limit on each would keep hundreds idle.
            limits=httpx.Limits(
                max_connections=self._settings.max_concurrent_deliveries,
                max_keepalive_connections=self._settings.max_concurrent_per_subscription,
            ),
        )

    async def send(self, *, url: str, headers: dict[str, str], body: str) -> AttemptResult:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._settings.request_timeout_s):
                return await self._send(url=url, headers=headers, body=body, started=started)
        except TimeoutError:
            return _failed(started, f"no answer within {self._settings.request_timeout_s:g} s")
        except TargetRefused as exc:
            return _failed(started, f"target refused: {exc}")
        except LookupDeferred as exc:
            return _failed(started, f"lookup deferred: {exc}")
        except httpx.HTTPError as exc:
            return _failed(started, f"{type(exc).__name__}: {exc}"[:300])
        except (httpx.InvalidURL, ValueError) as exc:
            # The client refused the URL or the host (UnicodeError from IDNA, say).
            return _failed(started, f"target refused: {type(exc).__name__}: {exc}"[:300])
        except Exception as exc:
            # A fault of ours, not the target's: the attempt fails (and so ends, in time),
            # with an error that quotes nothing of the request.
            error = redacted_error(exc)
            log.error("webhook_attempt_unexpected_error", error=error)
            return _failed(started, f"unexpected error: {error}")

    async def _send(
        self, *, url: str, headers: dict[str, str], body: str, started: float
    ) -> AttemptResult:
        target = parse_target(url, settings=self._settings)
        address = await resolve_checked(target, settings=self._settings, resolver=self._resolver)
        # Connect to the address just checked; Host and TLS (SNI, certificate) keep the name.
        # A name's root dot (``example.com.``) is no part of what certificates name.
        pinned = httpx.URL(url).copy_with(host=address)
        name = target.host.rstrip(".")
        pool = await self._checkout(name)
        try:
            request = pool.client.build_request(
                "POST",
                pinned,
                content=body.encode(),
                headers={**headers, "host": host_header(name, url)},
                extensions={"sni_hostname": name} if target.scheme == "https" else {},
            )
            response = await pool.client.send(request, stream=True)
            try:
                excerpt = await self._excerpt(response)
            finally:
                await response.aclose()
        finally:
            await self._checkin(pool)
        return AttemptResult(
            response_code=response.status_code,
            latency_ms=_elapsed_ms(started),
            response_excerpt=excerpt,
        )

    async def _excerpt(self, response: httpx.Response) -> str | None:
        limit = self._settings.response_excerpt_bytes
        if limit == 0:
            return None
        collected = b""
        async for chunk in response.aiter_raw():
            collected += chunk
            if len(collected) >= limit:
                break
        return collected[:limit].decode("utf-8", "replace") or None


def host_header(host: str, url: str) -> str:
    """The Host header of ``url`` naming ``host``: an IPv6 address in brackets (bare, its
    colons ran into the port's)."""
    shown = f"[{host}]" if ":" in host else host
    port = httpx.URL(url).port
    return f"{shown}:{port}" if port else shown


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


def _failed(started: float, error: str) -> AttemptResult:
    return AttemptResult(response_code=None, latency_ms=_elapsed_ms(started), error=error)
