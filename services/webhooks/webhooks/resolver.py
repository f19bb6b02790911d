"""Target host names looked up on threads of the webhooks' own, never more at once than those.

The system resolver (``getaddrinfo``: ``/etc/hosts``, then DNS) holds a thread until the
host's name servers answer or it gives up, seconds to tens of seconds later; an attempt's
timeout abandons the wait, never the thread. Run on the event loop's shared pool (the
default executor; libuv's four threads under uvloop), a few targets whose name servers do
not answer filled it, and every other delivery's lookup, and whatever else the service runs
on threads (the identity provider's key fetches), queued behind them. So here:

- lookups run on ``resolver_threads`` threads of their own and never queue: with every
  thread busy, no lookup is started and the attempt fails at once (``LookupDeferred``),
  retried per the schedule like any failed attempt;
- one lookup of a name at a time: attempts to a name being looked up wait for that lookup,
  and once one of them has given up on it (its timeout), the others fail at once until the
  thread returns;
- a name whose lookup failed is answered with that failure for ``failed_lookup_kept_s``
  without asking the resolver again;
- names not proven (not looked up here yet, or whose last lookup failed or outlasted an
  attempt) hold at most ``failing_share`` of the threads together: the others stay free
  for names that answer.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

# What ``getaddrinfo`` answers: (family, type, proto, canonname, sockaddr) per address.
AddressInfo = tuple[Any, ...]
Lookup = Callable[[str], list[AddressInfo]]

# Host names whose last outcome (answered, or failed) is remembered; the least recently
# looked up beyond are forgotten (and count as not proven again).
REMEMBERED_HOSTS = 4096


def system_lookup(host: str) -> list[AddressInfo]:
    """The system resolver, asked as the event loop's ``getaddrinfo`` asks it (blocking)."""
    return socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)


class LookupDeferred(Exception):
    """No lookup was started for this attempt (the resolver's threads are taken, or the
    name's lookup has outlasted an attempt already): not a property of the target."""


@dataclass(eq=False)
class _Lookup:
    host: str
    answer: asyncio.Future[list[AddressInfo]]
    started: float  # time.monotonic()
    proven: bool
    abandoned: bool = False


class HostResolver:
    """One replica's lookups of target host names; see the module docstring."""

    def __init__(
        self,
        *,
        threads: int,
        unproven_share: float,
        failure_kept_s: float,
        lookup: Lookup | None = None,
    ) -> None:
        self._threads = threads
        self._unproven_threads = max(1, int(threads * unproven_share))
        self._failure_kept_s = failure_kept_s
        self._lookup = lookup if lookup is not None else system_lookup
        self._executor = ThreadPoolExecutor(
            max_workers=threads, thread_name_prefix="webhooks-resolver"
        )
        self._in_flight: dict[str, _Lookup] = {}
        self._proven: OrderedDict[str, None] = OrderedDict()
        # Host name → (until, as time.monotonic(); errno; the resolver's message).
        self._failed: OrderedDict[str, tuple[float, int, str]] = OrderedDict()

    @property
    def lookups_in_flight(self) -> int:
        """Threads taken by lookups, those attempts gave up on included."""
        return len(self._in_flight)

    def close(self) -> None:
        """Stop taking lookups; threads still blocked in the resolver end on their own."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def resolve(self, host: str) -> list[AddressInfo]:
        """``getaddrinfo(host)`` for a stream socket; raises ``socket.gaierror`` (as the
        resolver did, or as it did within ``failure_kept_s``), ``ValueError`` for a name it
        cannot encode, or ``LookupDeferred``."""
        self._refuse_failed_recently(host)
        lookup = self._in_flight.get(host)
        if lookup is None:
            lookup = self._start(host)
        elif lookup.abandoned:
            raise LookupDeferred(
                f"the lookup of {host} started {time.monotonic() - lookup.started:.1f} s ago "
                "has not answered yet"
            )
        try:
            return await asyncio.shield(lookup.answer)
        except asyncio.CancelledError:
            if not lookup.answer.done():
                # The attempt's timeout: the thread goes on, and no other attempt waits for it.
                lookup.abandoned = True
                self._proven.pop(host, None)
            raise

    def _refuse_failed_recently(self, host: str) -> None:
        failed = self._failed.get(host)
        if failed is None:
            return
        until, errno, message = failed
        left_s = until - time.monotonic()
        if left_s <= 0:
            del self._failed[host]
            return
        raise socket.gaierror(errno, f"{message} (a lookup within {self._failure_kept_s:g} s)")

    def _start(self, host: str) -> _Lookup:
        if len(self._in_flight) >= self._threads:
            raise LookupDeferred(f"all {self._threads} resolver threads are taken")
        proven = host in self._proven
        unproven = sum(not lookup.proven for lookup in self._in_flight.values())
        if not proven and unproven >= self._unproven_threads:
            raise LookupDeferred(
                f"{host} has not answered a lookup here yet, and such names hold their "
                f"{self._unproven_threads} resolver threads"
            )
        answer = asyncio.get_running_loop().run_in_executor(self._executor, self._lookup, host)
        lookup = _Lookup(host=host, answer=answer, started=time.monotonic(), proven=proven)
        self._in_flight[host] = lookup
        answer.add_done_callback(lambda _: self._finished(lookup))
        return lookup

    def _finished(self, lookup: _Lookup) -> None:
        host = lookup.host
        if self._in_flight.get(host) is lookup:
            del self._in_flight[host]
        if lookup.answer.cancelled():
            return  # closed
        error = lookup.answer.exception()  # retrieved even when every waiter gave up
        if error is None:
            if not lookup.abandoned:
                _remember(self._proven, host, None)
            self._failed.pop(host, None)
            return
        self._proven.pop(host, None)
        if isinstance(error, socket.gaierror):
            until = time.monotonic() + self._failure_kept_s
            _remember(self._failed, host, (until, error.errno, error.strerror))


def _remember(kept: OrderedDict[str, Any], host: str, value: Any) -> None:
    kept[host] = value
    kept.move_to_end(host)
    while len(kept) > REMEMBERED_HOSTS:
        kept.popitem(last=False)
