"""Host monitor: who is alive, and who has gone silent.

Agents prove they are alive with every request, and for as long as they hold
their channel long-poll open (the server's kernel probes that connection with
TCP keepalive, so a dead host's poll ends within seconds).  Recording that in the database on every request would be the
busiest write of a large fleet, so :meth:`HostMonitor.seen` only notes the
time in memory, and :meth:`HostMonitor.check` (once a second) writes the
batch in one transaction, then marks down the hosts not heard from for
``down_after``.  Other server replicas read the same ``last_seen`` column, so
a host polling one replica is alive for all of them, a second late at most.

A server that just started has heard from nobody yet, so it waits one full
``down_after`` period before judging: a restart of the server must not mark
every host down.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from corral.store.store import Store


@dataclass(frozen=True)
class HostChanges:
    down: list[str]
    back: list[str]
    late: float = 0.0  # seconds this check came after it was due
    skipped: bool = False  # so late that nobody was marked down


class HostMonitor:
    def __init__(self, store: Store, down_after: float) -> None:
        self._store = store
        self.down_after = down_after
        self._started = store.clock()
        self._seen: dict[str, float] = {}
        self._holding: Counter[str] = Counter()  # open long-polls per host
        self._lock = threading.Lock()
        self._last_check: float | None = None
        self._holders_written = 0.0

    def seen(self, host_id: str) -> None:
        """The host just spoke to us (cheap: memory only until the next check)."""
        now = self._store.clock()
        with self._lock:
            self._seen[host_id] = now

    @contextlib.contextmanager
    def holding(self, host_id: str) -> Iterator[None]:
        """The host's agent holds a poll open: it counts as seen for as long as it does."""
        self.seen(host_id)
        with self._lock:
            self._holding[host_id] += 1
        try:
            yield
        finally:
            with self._lock:
                self._holding[host_id] -= 1
                if self._holding[host_id] <= 0:
                    del self._holding[host_id]
            self.seen(host_id)

    def check(self, every: float = 1.0) -> HostChanges:
        """Write who was seen; mark silent hosts down, unless this check itself is late.

        A server too busy to run its checks on time is also too busy to read its
        agents' polls on time: silence then says nothing about the hosts.
        """
        now = self._store.clock()
        with self._lock:
            batch, self._seen = self._seen, {}
            # hosts holding a poll are written now and then, not every second: enough for
            # other replicas (and a restart of this one) to see them alive
            if now - self._holders_written >= self.down_after / 3:
                batch.update(dict.fromkeys(self._holding, now))
                self._holders_written = now
            held = set(self._holding)
        back = self._store.touch_hosts(batch)
        now = self._store.clock()
        previous, self._last_check = self._last_check, now
        late = 0.0 if previous is None else max(0.0, now - previous - every)
        if now - self._started < self.down_after:
            return HostChanges([], back, late)
        if late > min(5.0, self.down_after / 3):
            return HostChanges([], back, late, skipped=True)
        return HostChanges(self._store.mark_down(now - self.down_after, spare=held), back)
