"""In-process wake-ups for agents' long-polls, and the relay for log streams.

An agent holds one long-poll open (``GET /api/v1/agent/channel``).  Whatever
changes a host's desired set calls :meth:`Notifier.notify` (from any thread),
which wakes that host's poll at once; that is how a change reaches an agent in
milliseconds without anything listening on the agent's side.

Log requests ride the same channel: the CLI asks for a service's logs, the
broker queues a request for each instance's host and wakes its poll, and the
agent posts the lines back, which the broker hands to the CLI's stream.
"""

from __future__ import annotations

import asyncio
import secrets
from collections import defaultdict
from dataclasses import dataclass
from typing import Any


class Notifier:
    """Wakes long-polls, and remembers hosts' revisions so that a poll needs no query.

    A remembered revision is dropped whenever its host is notified (the store changed
    it), and the whole table is refreshed from the store every second (changes made
    by another server replica).  A value read before a notification is never stored
    after it: every write into the table checks the host's notification count.
    All methods but :meth:`notify` run on the event loop.
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._seq: dict[str, int] = defaultdict(int)
        self._waiters: dict[str, set[asyncio.Future[None]]] = defaultdict(set)
        self._revisions: dict[str, int] = {}

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def notify(self, host_ids: list[str]) -> None:
        """Wake the polls of these hosts; safe to call from any thread."""
        if self._loop is None or not host_ids:
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            self._wake(host_ids)
        else:
            self._loop.call_soon_threadsafe(self._wake, list(host_ids))

    def _wake(self, host_ids: list[str]) -> None:
        for host_id in host_ids:
            self._seq[host_id] += 1
            self._revisions.pop(host_id, None)
            for fut in self._waiters.pop(host_id, set()):
                if not fut.done():
                    fut.set_result(None)

    def seq(self, host_id: str) -> int:
        return self._seq.get(host_id, 0)

    def revision(self, host_id: str) -> int | None:
        return self._revisions.get(host_id)

    def remember(self, host_id: str, revision: int, seen: int) -> None:
        """Store a revision read while the host's notification count was ``seen``."""
        if self.seq(host_id) == seen:
            self._revisions[host_id] = revision

    def counts(self) -> dict[str, int]:
        return dict(self._seq)

    def remember_all(self, revisions: dict[str, int], seen: dict[str, int]) -> None:
        """Replace the table with a full read made while the counts were ``seen``."""
        self._revisions = {h: r for h, r in revisions.items() if self._seq.get(h, 0) == seen.get(h, 0)}

    async def wait(self, host_id: str, seen: int, timeout: float,
                   also: asyncio.Future[None] | None = None) -> None:
        """Return when host_id is notified after ``seen``, when ``also`` is done, or after timeout."""
        if self._seq[host_id] != seen:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[host_id].add(fut)
        try:
            await asyncio.wait([fut] if also is None else [fut, also], timeout=timeout,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._waiters[host_id].discard(fut)
            if not self._waiters[host_id]:
                del self._waiters[host_id]


@dataclass
class LogRequest:
    id: str
    host_id: str
    instance_id: str
    prefix: str
    follow: bool
    tail: int | None
    queue: asyncio.Queue[str | None]
    open: bool = True

    def wire(self) -> dict[str, Any]:
        return {"id": self.id, "instance_id": self.instance_id, "follow": self.follow, "tail": self.tail}


class LogBroker:
    """Routes log lines from agents to the API clients that asked for them (event-loop only)."""

    def __init__(self, notifier: Notifier) -> None:
        self._notifier = notifier
        self._requests: dict[str, LogRequest] = {}
        self._pending: dict[str, list[LogRequest]] = defaultdict(list)

    def open(self, host_id: str, instance_id: str, prefix: str, follow: bool, tail: int | None,
             queue: asyncio.Queue[str | None]) -> LogRequest:
        """Ask a host for an instance's logs; lines (then None at the end) arrive on ``queue``."""
        req = LogRequest(secrets.token_hex(8), host_id, instance_id, prefix, follow, tail, queue)
        self._requests[req.id] = req
        self._pending[host_id].append(req)
        self._notifier.notify([host_id])
        return req

    def take_pending(self, host_id: str) -> list[dict[str, Any]]:
        return [r.wire() for r in self._pending.pop(host_id, []) if r.open]

    def has_pending(self, host_id: str) -> bool:
        return bool(self._pending.get(host_id))

    def deliver(self, host_id: str, request_id: str, lines: list[str], eof: bool) -> bool:
        """Hand lines to the waiting client; False tells the agent to stop sending."""
        req = self._requests.get(request_id)
        if req is None or req.host_id != host_id or not req.open:
            return False
        for line in lines:
            req.queue.put_nowait(f"{req.prefix} | {line}")
        if eof:
            req.queue.put_nowait(None)
            self.close(request_id)
        return True

    def close(self, request_id: str) -> None:
        req = self._requests.pop(request_id, None)
        if req is not None:
            req.open = False
