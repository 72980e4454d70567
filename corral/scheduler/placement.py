"""Placement: which hosts can run a service, where its instances go, and why not.

A pure function over a snapshot (no I/O, no clock, no store).  For each host it
checks, in order: state (ready), the service's constraints, and the image's
platforms (corral.scheduler.platforms: exact, compatible, or emulated when the
service allows it).  Emulated hosts only count when no host can run the image
natively.  Replicated services spread over the feasible hosts (fewest instances
of this service, then fewest overall, then host id); global services get one
instance per feasible host.

When nothing fits, the reason reads like a person wrote it:

    0 of 3 hosts can run it: image offers linux/amd64, linux/arm64;
    1 host is linux/arm/v7 (no build), 2 hosts do not match constraint node.labels.zone==edge
"""

from __future__ import annotations

import heapq
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from corral.platforms import Platform
from corral.scheduler.constraints import Constraint, HostFacts
from corral.scheduler.platforms import Choice, HostPlatforms, choose

Mode = Literal["replicated", "global"]


@dataclass(frozen=True)
class HostView:
    facts: HostFacts
    state: str
    platforms: HostPlatforms | None = None

    @property
    def id(self) -> str:
        return self.facts.id


@dataclass(frozen=True)
class ServiceRequest:
    constraints: tuple[Constraint, ...] = ()
    image_platforms: tuple[Platform, ...] | None = None  # None: the image's platforms are not known
    allow_emulation: bool = False
    one_per_host: bool = False  # the service publishes host ports
    mode: Mode = "replicated"


@dataclass(frozen=True)
class Fit:
    host_id: str
    choice: Choice | None  # the build this host runs; None when image platforms are unknown


@dataclass(frozen=True)
class Placement:
    slot: int
    host_id: str
    choice: Choice | None


@dataclass(frozen=True)
class PlacementResult:
    placements: list[Placement]
    reason: str | None  # why some instances could not be placed; None when all were


def _plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def feasible(req: ServiceRequest, hosts: Sequence[HostView]) -> tuple[list[Fit], str | None]:
    """The hosts that can run the service, and when there are none, why not."""
    fits: list[Fit] = []
    why: Counter[tuple[str, str]] = Counter()  # (said of one host, said of several) -> hosts
    emulation_would_help: set[str] = set()
    for host in hosts:
        if host.state != "ready":
            why[(f"is {host.state}", f"are {host.state}")] += 1
            continue
        failed = next((c for c in req.constraints if not c.matches(host.facts)), None)
        if failed is not None:
            why[(f"does not match constraint {failed}", f"do not match constraint {failed}")] += 1
            continue
        if req.image_platforms is None:
            fits.append(Fit(host.id, None))
            continue
        if host.platforms is None:
            why[("reports no platform", "report no platform")] += 1
            continue
        choice = choose(req.image_platforms, host.platforms, req.allow_emulation)
        if choice is None:
            own = str(host.platforms.native)
            why[(f"is {own} (no build)", f"are {own} (no build)")] += 1
            if not req.allow_emulation and choose(req.image_platforms, host.platforms, True) is not None:
                emulation_would_help.add(own)
            continue
        fits.append(Fit(host.id, choice))
    native = [f for f in fits if f.choice is None or f.choice.kind != "emulated"]
    if native or fits:
        return native or fits, None
    if not hosts:
        return [], "no hosts have joined"
    parts = [f"{_plural(n, 'host', 'hosts')} {one if n == 1 else many}"
             for (one, many), n in sorted(why.items(), key=lambda kv: (-kv[1], kv[0]))]
    text = f"0 of {_plural(len(hosts), 'host', 'hosts')} can run it: "
    if req.image_platforms is not None:
        text += "image offers " + ", ".join(dict.fromkeys(str(p) for p in req.image_platforms)) + "; "
    text += ", ".join(parts)
    if emulation_would_help:
        text += ("; " + ", ".join(sorted(emulation_would_help))
                 + " could run it emulated (allow emulation to use it)")
    return [], text


def place_replicated(slots: Sequence[int], req: ServiceRequest, hosts: Sequence[HostView],
                     service_counts: Mapping[str, int], total_counts: Mapping[str, int]) -> PlacementResult:
    fits, reason = feasible(req, hosts)
    if not fits:
        return PlacementResult([], reason if slots else None)
    by_host = {f.host_id: f for f in fits}
    heap = [(service_counts.get(f.host_id, 0), total_counts.get(f.host_id, 0), f.host_id) for f in fits
            if not (req.one_per_host and service_counts.get(f.host_id, 0))]
    heapq.heapify(heap)
    placements: list[Placement] = []
    for slot in slots:
        if not heap:
            left = len(slots) - len(placements)
            return PlacementResult(placements, f"{_plural(left, 'replica', 'replicas')} not placed: the service "
                                   f"publishes host ports and all {len(fits)} eligible hosts already run one")
        mine, total, host_id = heapq.heappop(heap)
        placements.append(Placement(slot, host_id, by_host[host_id].choice))
        if not req.one_per_host:
            heapq.heappush(heap, (mine + 1, total + 1, host_id))
    return PlacementResult(placements, None)


def place_global(req: ServiceRequest, hosts: Sequence[HostView], has_instance: set[str],
                 first_free_slot: int) -> tuple[PlacementResult, set[str]]:
    """One instance per feasible host.  Returns the new placements and the feasible host ids."""
    fits, reason = feasible(req, hosts)
    slot = first_free_slot
    placements = []
    for fit in sorted(fits, key=lambda f: f.host_id):
        if fit.host_id not in has_instance:
            placements.append(Placement(slot, fit.host_id, fit.choice))
            slot += 1
    return PlacementResult(placements, reason), {f.host_id for f in fits}
