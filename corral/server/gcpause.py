"""Short garbage-collector pauses for a server holding many open long-polls."""

from __future__ import annotations

import gc
import logging
import time

log = logging.getLogger("corral.server")


def watch(slow: float = 0.2) -> None:
    """Keep the garbage collector's pauses short, and log any that are not.

    10,000 agents' open long-polls are about two million live objects; a full
    collection looks at every one of them (1.4 s here, every few seconds), and
    every request waits meanwhile.  So what survives a collection of the older
    generations is moved out of the collector's sight (``gc.freeze``): later
    collections look only at what is new.  Freezing after the middle generation's
    collections too, not only the oldest's, keeps the oldest small: the polls
    renewed since the last freeze (each renews once every 55 s) otherwise
    reach it and make each of its collections a 0.3-0.4 s pause.  Objects frozen
    that later die are freed as usual unless they sit in a reference cycle;
    :func:`full_collection` (every 10 minutes) brings those back.
    """
    started: list[float] = [0.0]

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
            return
        took = time.perf_counter() - started[0]
        if info["generation"] >= 1:
            gc.freeze()
        if took >= slow:
            log.warning("garbage collection of generation %d paused the server %.2f s", info["generation"], took)

    gc.freeze()  # what the server's start left behind
    gc.callbacks.append(callback)


def full_collection() -> None:
    """Collect everything once, cycles among frozen objects included (a pause of about a
    second with a 10,000-host fleet), then freeze the survivors again."""
    gc.unfreeze()
    gc.collect()
