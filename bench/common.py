"""What every bench script shares: its error type, SIGTERM handling and progress log.

Bench scripts run as ``python bench/NAME.py`` (the repository root is put on
``sys.path`` first), print their figures on stdout and their progress on stderr.
"""

from __future__ import annotations

import sys
import time


class BenchError(RuntimeError):
    """The bench could not measure what it set out to (a daemon did not start, a wait ran out)."""


def on_sigterm(*_: object) -> None:
    """SIGTERM handler: unwinds like Ctrl-C, so every ``finally`` cleans up (namespaces, daemons)."""
    raise KeyboardInterrupt("SIGTERM")


def log(msg: str) -> None:
    """A progress line on stderr, with the time."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)
