"""A TCP proxy in front of the real database that a test can sever, like an idle-closing peer.

Real servers, load balancers and firewalls close connections that stayed idle too
long (SecantusDB after 300 s); the proxy does the same after ``idle_close_s`` (or
on ``sever_all()``), closing the client side cleanly as a server would, while new
connections keep working. The database itself is untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field


@dataclass(eq=False)
class _Link:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter
    last_active: float = field(default_factory=time.monotonic)

    def close(self) -> None:
        for writer in (self.client, self.server):
            with contextlib.suppress(Exception):
                writer.close()


class TcpProxy:
    def __init__(
        self, *, target_host: str, target_port: int, idle_close_s: float | None = None
    ) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.idle_close_s = idle_close_s
        self.links: set[_Link] = set()
        self.closed_idle = 0
        # Connections the client closed itself (a driver pruning its idle pool).
        self.closed_by_client = 0
        self.severed = 0
        self._server: asyncio.Server | None = None
        self._reaper: asyncio.Task | None = None

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    async def start(self, *, port: int = 0) -> TcpProxy:
        """Listen on ``port`` (0: any free one)."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", port)
        if self.idle_close_s is not None:
            self._reaper = asyncio.create_task(self._close_idle())
        return self

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper  # ended, not merely asked to end, when the test moves on
        self.sever_all()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def sever_all(self) -> int:
        """Close every open connection (the database restarted, a balancer failed over)."""
        links, self.links = list(self.links), set()
        for link in links:
            link.close()
        self.severed += len(links)
        return len(links)

    async def _close_idle(self) -> None:
        while True:
            await asyncio.sleep(0.1)
            now = time.monotonic()
            for link in [ln for ln in self.links if now - ln.last_active > self.idle_close_s]:
                self.links.discard(link)
                link.close()
                self.closed_idle += 1

    async def _accept(self, client_reader, client_writer) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(
                self.target_host, self.target_port
            )
        except OSError:
            client_writer.close()
            return
        link = _Link(client_writer, server_writer)
        self.links.add(link)
        await asyncio.gather(
            self._pipe(link, client_reader, server_writer, from_client=True),
            self._pipe(link, server_reader, client_writer),
        )
        self.links.discard(link)
        link.close()

    async def _pipe(self, link: _Link, reader, writer, *, from_client: bool = False) -> None:
        with contextlib.suppress(Exception):
            while chunk := await reader.read(65536):
                link.last_active = time.monotonic()
                writer.write(chunk)
                await writer.drain()
        if from_client and link in self.links:  # the client ended it, not the proxy
            self.links.discard(link)
            self.closed_by_client += 1
        link.close()
