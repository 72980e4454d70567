"""``corral run`` without ``--detach``: watch a new service until it settles.

:func:`wait_for_service` polls ``GET /services/{name}`` and returns an
:class:`Outcome` as soon as one of these holds, checked in this order:

1. an instance that should run is ``pull_failed`` or ``failed``  -> "failed"
2. ``running == desired`` (global: and ``desired > 0``)          -> "converged"
3. the service has a ``pending_reason`` (nothing can place it)   -> "pending"
4. the time is up                                                -> "timeout"

A global service's ``desired`` is the number of hosts that can run it, which
the server works out after the service is created: until it is more than 0
(or a ``pending_reason`` says why no host can), the service has not settled.

The clock and sleep are parameters, so tests run it instantly.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from corral.cli.client import CorralClient
from corral.cli.render import converged

JSONDict = dict[str, Any]
FAILED_STATES = ("pull_failed", "failed")


@dataclass(frozen=True)
class Outcome:
    kind: Literal["converged", "pending", "failed", "timeout"]
    service: JSONDict
    message: str


def progress_line(service: JSONDict) -> str:
    """``web: 1/3 running (2 pulling)``."""
    desired = service.get("desired", service.get("replicas", 0))
    line = f"{service.get('name', '?')}: {service.get('running', 0)}/{desired} running"
    states = Counter(
        i.get("state", "unknown")
        for i in service.get("instances") or []
        if i.get("state") != "running" and i.get("desired_state", "running") == "running"
    )
    if states:
        line += (
            " (" + ", ".join(f"{n} {s.replace('_', ' ')}" for s, n in sorted(states.items())) + ")"
        )
    return line


def failures(service: JSONDict) -> list[str]:
    """One line per instance that failed to pull or start."""
    lines = []
    for inst in service.get("instances") or []:
        if inst.get("state") in FAILED_STATES and inst.get("desired_state", "running") == "running":
            where = inst.get("host_name") or inst.get("host_id") or "?"
            what = str(inst["state"]).replace("_", " ")
            lines.append(
                f"{inst.get('name', '?')} on {where}: {what}: {inst.get('error') or 'no detail'}"
            )
    return lines


def wait_for_service(
    client: CorralClient,
    name: str,
    *,
    timeout: float = 60.0,
    interval: float = 0.2,
    on_poll: Callable[[JSONDict], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Outcome:
    deadline = clock() + timeout
    while True:
        svc = client.get_service(name)
        if on_poll:
            on_poll(svc)
        failed = failures(svc)
        if failed:
            return Outcome("failed", svc, "\n".join(failed))
        if converged(svc):
            return Outcome("converged", svc, progress_line(svc))
        if svc.get("pending_reason"):
            return Outcome(
                "pending", svc, f"{progress_line(svc)}; pending: {svc['pending_reason']}"
            )
        if clock() >= deadline:
            return Outcome(
                "timeout",
                svc,
                f"{progress_line(svc)} after {timeout:g}s; the service stays and keeps "
                f"converging (see `corral ps {name}`)",
            )
        sleep(interval)
