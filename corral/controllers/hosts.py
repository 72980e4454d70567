"""Host monitor: marks hosts down after missed heartbeats."""

from __future__ import annotations

from corral.store.store import Store


class HostMonitor:
    def __init__(self, store: Store, down_after: float) -> None:
        self._store = store
        self.down_after = down_after

    def check(self) -> list[str]:
        """Mark silent hosts down; return their ids."""
        return self._store.mark_down(self._store.clock() - self.down_after)
