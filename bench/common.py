"""What every bench script shares: its error type, SIGTERM handling, progress log, Engine API and
docker CLI calls, and the machine's busy CPU.

Bench scripts run as ``python bench/NAME.py`` (the repository root is put on
``sys.path`` first), print their figures on stdout and their progress on stderr.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.parse
from typing import Any

from testbed.daemons import docker_request

API = "/v1.41"  # the Engine API version the benches speak (Debian 12's docker.io serves it)
DOCKER_CLI = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else "docker"


def busy_core_seconds() -> float:
    """Core-seconds the whole machine has spent busy since boot (all but idle and iowait): every
    process and the kernel's own work, which runc, the shims and network namespaces are mostly."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """The bench could not measure what it set out to (a daemon did not start, a wait ran out)."""


def on_sigterm(*_: object) -> None:
    """SIGTERM handler: unwinds like Ctrl-C, so every ``finally`` cleans up (namespaces, daemons)."""
    raise KeyboardInterrupt("SIGTERM")


def log(msg: str) -> None:
    """A progress line on stderr, with the time."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def engine(host: str, method: str, path: str, body: Any = None, timeout: float = 30) -> Any:
    """One Engine API call (stdlib, over the unix socket): the decoded JSON, or None for 404."""
    status, raw = docker_request(host, method, API + path, body, timeout=timeout)
    if status == 404:
        return None
    if status >= 400:
        raise BenchError(f"{method} {path}: HTTP {status}: {raw[:300]!r}")
    return json.loads(raw) if raw.strip() else None


def q(filters: dict[str, list[str]], **extra: str) -> str:
    """``?filters=...`` (and any other parameters) for an Engine API path."""
    return "?" + urllib.parse.urlencode({"filters": json.dumps(filters), **extra})


def containers(host: str, label: str) -> list[dict[str, Any]]:
    """The engine's containers (running or not) with this label (``key=value`` or ``key``)."""
    return engine(host, "GET", "/containers/json" + q({"label": [label]}, all="1")) or []


def cli(host: str, *args: str, timeout: float = 120) -> str:
    """``docker -H HOST ARGS...``: its stdout, or BenchError with its stderr."""
    res = subprocess.run([DOCKER_CLI, "-H", host, *args], capture_output=True, text=True,
                         timeout=timeout, check=False)
    if res.returncode != 0:
        raise BenchError(f"docker {' '.join(args[:3])}...: {res.stderr.strip()}")
    return res.stdout.strip()
