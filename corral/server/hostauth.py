"""Which host a credential belongs to, remembered for a while.

Every agent request carries its host credential, and a fleet of 10,000 hosts
polls once per heartbeat interval each: looking the host up in the store and
hashing the secret on every request would be most of the server's work.  A
credential that checked out is remembered for ``ttl`` seconds (keyed by the
whole token, so a wrong secret never hits the cache); removing a host forgets
it at once on this server; other replicas drop its polls within a second or
two anyway, when the host's revision disappears from their table.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class HostIdentity:
    id: str
    name: str


class HostAuthCache:
    def __init__(self, ttl: float = 600.0, clock: Callable[[], float] = time.monotonic,
                 max_entries: int = 200_000) -> None:
        self.ttl = ttl
        self._clock = clock
        self._max = max_entries
        self._known: dict[str, tuple[HostIdentity, float]] = {}
        self._lock = threading.Lock()

    def get(self, token: str) -> HostIdentity | None:
        hit = self._known.get(token)
        if hit is None or hit[1] < self._clock():
            return None
        return hit[0]

    def put(self, token: str, host: HostIdentity) -> None:
        with self._lock:
            if len(self._known) >= self._max:
                self._known.clear()
            self._known[token] = (host, self._clock() + self.ttl)

    def forget(self, host_id: str) -> None:
        with self._lock:
            for token in [t for t, (h, _) in self._known.items() if h.id == host_id]:
                del self._known[token]
