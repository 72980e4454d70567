"""Output primitives: consoles, JSON, errors, and human formatting of values.

Two rules keep the CLI scriptable:

* ``--output json`` writes plain JSON to stdout and nothing else: it goes
  straight to ``sys.stdout``, never through Rich (no wrapping, no colour).
* Everything for humans that is not the command's result (errors, warnings,
  progress) goes to stderr.

Rich is imported lazily, on first use, so ``corral --help`` and JSON output
do not pay for it.  Consoles are made per call: they follow whatever
``sys.stdout`` is at that moment (which is what CliRunner swaps in tests).
When stdout is not a terminal, tables get a wide canvas instead of 80
columns, so piping ``corral ps`` to grep does not wrap rows.
"""

from __future__ import annotations

import enum
import json
import os
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console
    from rich.text import Text

PIPE_WIDTH = 200


class OutputFormat(str, enum.Enum):
    """Values of ``--output/-o``."""

    table = "table"
    json = "json"


def console(stderr: bool = False) -> Console:
    """A Rich console on the current stdout (or stderr)."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    width = None
    if not (hasattr(stream, "isatty") and stream.isatty()):
        columns = os.environ.get("COLUMNS", "")
        width = int(columns) if columns.isdigit() else PIPE_WIDTH
    return Console(file=stream, width=width, highlight=False, soft_wrap=False)


def show(renderable: Any) -> None:
    """Print a table or panel on stdout; piped, without the padding at line ends."""
    out = console()
    if out.is_terminal:
        out.print(renderable)
        return
    with out.capture() as captured:
        out.print(renderable)
    sys.stdout.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))
    sys.stdout.flush()


def print_json(data: Any) -> None:
    """Plain, pretty JSON on stdout: the API objects exactly as received."""
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def _message(prefix: str, message: str, style: str) -> None:
    from rich.text import Text

    text = Text(prefix, style=f"bold {style}")
    text.append(message, style=style)
    console(stderr=True).print(text, soft_wrap=True)


def error(message: str) -> None:
    """``error: <message>`` in red on stderr."""
    _message("error: ", message, "red")


def warning(message: str) -> None:
    _message("warning: ", message, "yellow")


def info(message: str, style: str = "") -> None:
    """A line for humans on stdout (Rich markup is *not* interpreted)."""
    from rich.text import Text

    console().print(Text(message, style=style), soft_wrap=True)


# -- values -----------------------------------------------------------------


def parse_time(value: str | None) -> datetime | None:
    """Parse the API's ISO 8601 timestamps (``...Z`` or ``+00:00``); None if absent or bad."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except (ValueError, TypeError, AttributeError):
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def ago(value: str | None, now: datetime | None = None) -> str:
    """``"3s ago"``, ``"5m ago"``, ``"2h ago"``, ``"4d ago"``; ``"-"`` when unknown."""
    when = parse_time(value)
    if when is None:
        return "-"
    now = now or datetime.now(UTC)
    seconds = int((now - when).total_seconds())
    if seconds < 1:
        return "just now"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def timestamp(value: str | None, now: datetime | None = None) -> str:
    """``2024-01-01 12:00:00 UTC (3s ago)``; ``-`` when unknown."""
    when = parse_time(value)
    if when is None:
        return "-"
    return f"{when.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC ({ago(value, now)})"


def human_bytes(value: float | None) -> str:
    """``1.9 GiB``; ``"-"`` when unknown."""
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def short_id(value: str | None, length: int = 12) -> str:
    return (value or "-")[:length]


def short_digest(value: str | None, length: int = 19) -> str:
    """``sha256:0123456789ab`` (the algorithm and 12 hex digits), or ``-``."""
    return (value or "-")[:length]


def truncate(value: str, length: int) -> str:
    value = " ".join(value.split())  # one line
    return value if len(value) <= length else value[: length - 1] + "…"


def kv(mapping: dict[str, Any] | None) -> str:
    """``a=1,b=2`` (sorted), or ``-``."""
    if not mapping:
        return "-"
    return ",".join(f"{k}={v}" for k, v in sorted(mapping.items()))


STATE_STYLES = {
    # hosts
    "ready": "green",
    "down": "red",
    "active": "green",
    "cordoned": "yellow",
    "draining": "yellow",
    # instances
    "running": "green",
    "pending": "yellow",
    "pulling": "yellow",
    "starting": "yellow",
    "restarting": "yellow",
    "exited": "",
    "pull_failed": "red",
    "failed": "red",
    "unknown": "magenta",
}


def state_text(state: str | None, exit_code: int | None = None) -> Text:
    """A coloured state; exits show their code, ``exited (1)`` in red."""
    from rich.text import Text

    state = state or "unknown"
    label = state
    style = STATE_STYLES.get(state, "")
    if state == "exited" and exit_code is not None:
        label = f"exited ({exit_code})"
        style = "" if exit_code == 0 else "red"
    return Text(label, style=style)
