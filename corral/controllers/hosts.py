"""Host monitor: marks hosts down after missed heartbeats.

A server that just started has heard from nobody yet, so it waits one full
``down_after`` period before judging: a restart of the server must not mark
every host down.
"""

from __future__ import annotations

from corral.store.store import Store


class HostMonitor:
    def __init__(self, store: Store, down_after: float) -> None:
        self._store = store
        self.down_after = down_after
        self._started = store.clock()

    def check(self) -> list[str]:
        """Mark silent hosts down; return their ids."""
        now = self._store.clock()
        if now - self._started < self.down_after:
            return []
        return self._store.mark_down(now - self.down_after)
