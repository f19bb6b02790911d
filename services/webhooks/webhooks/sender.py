"""One HTTP attempt: connect to the checked address, send, read a bounded excerpt.

The whole attempt (resolve, connect, TLS, send, first bytes of the answer) is
bounded by ``request_timeout_s``; redirects are not followed (a 3xx is a
failure, and could point anywhere). The response body is never stored beyond
``response_excerpt_bytes``.

Whatever goes wrong in an attempt is its result, never an exception for the dispatcher:
an attempt touches no database, so no failure here is a dependency's outage to wait out,
and a target the attempt cannot even address fails like one that does not resolve.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import httpx

from complaints_shared.failures import redacted_error
from complaints_shared.logs import get_logger
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


class Sender:
    """Sends attempts over one pooled client (one replica, all subscriptions)."""

    def __init__(self, *, settings: WebhooksSettings) -> None:
        self._settings = settings
        self._client = httpx.AsyncClient(
            follow_redirects=False,
            trust_env=False,
            timeout=httpx.Timeout(settings.request_timeout_s),
            limits=httpx.Limits(
                max_connections=settings.max_concurrent_deliveries,
                max_keepalive_connections=settings.max_concurrent_deliveries,
            ),
        )

    async def close(self) -> None:
        await self._client.aclose()

    async def send(self, *, url: str, headers: dict[str, str], body: str) -> AttemptResult:
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._settings.request_timeout_s):
                return await self._send(url=url, headers=headers, body=body, started=started)
        except TimeoutError:
            return _failed(started, f"no answer within {self._settings.request_timeout_s:g} s")
        except TargetRefused as exc:
            return _failed(started, f"target refused: {exc}")
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
        address = await resolve_checked(target, settings=self._settings)
        # Connect to the address just checked; Host and TLS (SNI, certificate) keep the name.
        pinned = httpx.URL(url).copy_with(host=address)
        request = self._client.build_request(
            "POST",
            pinned,
            content=body.encode(),
            headers={**headers, "host": _host_header(target.host, url)},
            extensions={"sni_hostname": target.host} if target.scheme == "https" else {},
        )
        response = await self._client.send(request, stream=True)
        try:
            excerpt = await self._excerpt(response)
        finally:
            await response.aclose()
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


def _host_header(host: str, url: str) -> str:
    port = httpx.URL(url).port
    return f"{host}:{port}" if port else host


def _elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)


def _failed(started: float, error: str) -> AttemptResult:
    return AttemptResult(response_code=None, latency_ms=_elapsed_ms(started), error=error)
