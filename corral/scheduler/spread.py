"""The spine's placement: spread a service's missing replicas over ready hosts.

Pure function over a snapshot (no I/O, no clock), so the real scheduler can
replace it behind the same call.  Hosts are filtered by state and constraints;
each new replica goes to the eligible host with the fewest instances of this
service, then the fewest instances overall, then the lowest id (deterministic).
When nothing fits, the result carries a reason a person can read.
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from corral.scheduler.constraints import Constraint, HostFacts


@dataclass(frozen=True)
class HostView:
    facts: HostFacts
    state: str

    @property
    def id(self) -> str:
        return self.facts.id


@dataclass(frozen=True)
class Placement:
    slot: int
    host_id: str


@dataclass(frozen=True)
class PlacementResult:
    placements: list[Placement]
    reason: str | None  # why some slots could not be placed; None when all were


def explain(hosts: Sequence[HostView], constraints: Sequence[Constraint]) -> tuple[list[HostView], str | None]:
    """Return the eligible hosts, and when there are none, why."""
    eligible: list[HostView] = []
    why: Counter[str] = Counter()
    for host in hosts:
        if host.state != "ready":
            why[f"is {host.state}"] += 1
            continue
        failed = next((c for c in constraints if not c.matches(host.facts)), None)
        if failed is not None:
            why[f"does not match constraint {failed}"] += 1
            continue
        eligible.append(host)
    if eligible:
        return eligible, None
    if not hosts:
        return [], "no hosts have joined"
    parts = []
    for text, n in sorted(why.items(), key=lambda kv: (-kv[1], kv[0])):
        verb = text if n == 1 else text.replace("does not", "do not").replace("is ", "are ", 1)
        parts.append(f"{n} host{'s' if n != 1 else ''} {verb}")
    return [], f"0 of {len(hosts)} hosts can run it: " + ", ".join(parts)


def place_spread(slots: Sequence[int], hosts: Sequence[HostView], constraints: Sequence[Constraint],
                 service_counts: Mapping[str, int], total_counts: Mapping[str, int],
                 one_per_host: bool = False) -> PlacementResult:
    """Place ``slots`` (replica numbers) on hosts.

    ``one_per_host`` is set for services that publish host ports: a second
    replica on the same host could not bind them.
    """
    eligible, reason = explain(hosts, constraints)
    if not eligible:
        return PlacementResult([], reason if slots else None)
    heap = [(service_counts.get(h.id, 0), total_counts.get(h.id, 0), h.id) for h in eligible
            if not (one_per_host and service_counts.get(h.id, 0))]
    heapq.heapify(heap)
    placements: list[Placement] = []
    for slot in slots:
        if not heap:
            left = len(slots) - len(placements)
            return PlacementResult(placements, f"{left} replica{'s' if left != 1 else ''} not placed: "
                                   f"the service publishes host ports and all {len(eligible)} "
                                   "eligible hosts already run one")
        mine, total, host_id = heapq.heappop(heap)
        placements.append(Placement(slot, host_id))
        if not one_per_host:
            heapq.heappush(heap, (mine + 1, total + 1, host_id))
    return PlacementResult(placements, None)
