"""The ingress proxy: a service's published port answers on each host that runs it.

A port published in ``ingress`` mode is not bound to any one container.  The
agent listens on it (all addresses of the host) and hands each new TCP
connection to one of the host's *ready* instances of the service (running,
and healthy if it has a health check), round robin, at the container's own
address.  So several instances on one host can share a published port, and a
start-first update can put the new instance beside the old one: the proxy
sends new connections to whichever are ready, and an instance leaves the
rotation before its container is stopped (the reconciler drains it first).

One asyncio loop in one thread carries every listener and connection (stdlib
only, like the rest of the agent).  :meth:`Ingress.update` is called from the
reconcile thread with the whole routing table; listeners open and close to
match it.  Connections already open when a backend leaves the table are left
to finish.  Until the overlay network exists, a host forwards only to its own
instances, so a host that runs none does not listen.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import threading
from collections.abc import Mapping

log = logging.getLogger("corral.agent.ingress")

Backend = tuple[str, int]  # container address, target port
CONNECT_TIMEOUT = 2.0
CHUNK = 64 * 1024


class Ingress:
    def __init__(self, host: str = "0.0.0.0") -> None:  # published ports answer on every address
        self._host = host
        self._loop = asyncio.new_event_loop()
        self._servers: dict[int, asyncio.Server] = {}
        self._routes: dict[int, list[Backend]] = {}
        self._turn: dict[int, itertools.count[int]] = {}
        self._thread = threading.Thread(target=self._loop.run_forever, name="ingress", daemon=True)
        self._thread.start()

    def update(self, routes: Mapping[int, list[Backend]]) -> None:
        """Make the proxy serve exactly these published TCP ports, each to these backends."""
        table = {port: list(backends) for port, backends in routes.items()}
        future = asyncio.run_coroutine_threadsafe(self._apply(table), self._loop)
        future.result(timeout=10)

    def ports(self) -> dict[int, list[Backend]]:
        return {p: list(b) for p, b in self._routes.items()}

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self._apply({}), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    async def _apply(self, table: dict[int, list[Backend]]) -> None:
        self._routes = table
        for port in [p for p in self._servers if p not in table]:
            server = self._servers.pop(port)
            server.close()
            log.info("ingress: no longer listening on %d", port)
        for port in table:
            if port in self._servers:
                continue
            try:
                self._servers[port] = await asyncio.start_server(
                    functools.partial(self._serve, port=port), self._host, port, reuse_address=True)
                self._turn.setdefault(port, itertools.count())
                log.info("ingress: listening on %d", port)
            except OSError as exc:  # e.g. something else holds the port: say so, retry on the next pass
                log.warning("ingress: cannot listen on %d: %s", port, exc)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, port: int) -> None:
        backends = self._routes.get(port) or []
        upstream = None
        start = next(self._turn[port]) if backends else 0
        for i in range(len(backends)):  # round robin; a backend that refuses is skipped
            address, target = backends[(start + i) % len(backends)]
            with contextlib.suppress(OSError, TimeoutError):
                upstream = await asyncio.wait_for(asyncio.open_connection(address, target), CONNECT_TIMEOUT)
                break
        if upstream is None:
            writer.close()
            return
        up_reader, up_writer = upstream
        writers = (writer, up_writer)
        try:
            await asyncio.gather(_pump(reader, up_writer, writers), _pump(up_reader, writer, writers))
        finally:
            for w in writers:
                w.close()


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                both: tuple[asyncio.StreamWriter, ...]) -> None:
    """Copy one direction until EOF, then half-close; on a broken side, close both."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (OSError, ConnectionError):
        for w in both:
            w.close()
