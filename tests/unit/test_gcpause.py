"""The server's garbage-collector settings: survivors of the older generations' collections are frozen."""

from __future__ import annotations

import gc

from corral.server import gcpause


def test_collections_of_the_older_generations_freeze_their_survivors() -> None:
    callbacks = list(gc.callbacks)
    gcpause.watch()
    try:
        survivors = [[i] for i in range(1000)]
        gc.unfreeze()  # watch() froze what existed: start from nothing frozen
        gc.collect(0)
        assert gc.get_freeze_count() == 0  # the young generation's collections freeze nothing
        gc.collect(1)
        assert gc.get_freeze_count() >= len(survivors)  # the middle one's do: the oldest stays small
        gc.unfreeze()
        gc.collect(2)
        assert gc.get_freeze_count() >= len(survivors)
    finally:
        gc.callbacks[:] = callbacks
        gc.unfreeze()
