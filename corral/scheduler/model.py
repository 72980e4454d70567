"""The scheduler's inputs and outputs: frozen values, no behaviour that touches the world.

* :class:`Snapshot` — every host as the scheduler sees it (:class:`HostSnapshot`),
  with the store revision it was read at.  The scheduler never mutates it; it keeps
  derived, purely static facts (host classes, per-service feasibility) in
  ``Snapshot.memo`` so that a snapshot derived with :meth:`Snapshot.with_hosts`
  (or ``placement.apply_plan``) reuses them instead of recomputing them.
* :class:`ServiceRequest` — what a service asks for: constraints, image platforms,
  reservations, ports, affinities, preferences, strategy, mode.
* :class:`Plan` — where instances go, which slots could not be placed and why, and
  the snapshot revision the plan was computed on (the applier checks it).

The textual forms a user writes are parsed here too (``parse_resources``,
``parse_affinity``, ``parse_preference``), raising :class:`SpecError`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from corral.platforms import Platform
from corral.scheduler import constraints as cons
from corral.scheduler.constraints import Constraint
from corral.scheduler.explain import Explanation, fmt_bytes, fmt_cpu
from corral.scheduler.platforms import Choice, HostPlatforms

Mode = Literal["replicated", "global"]
Strategy = Literal["spread", "binpack"]
Availability = Literal["active", "cordoned", "draining"]


class SpecError(ValueError):
    """A service spec the scheduler cannot use; ``errors`` lists every problem found."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("; ".join(errors))
        self.errors = errors


@dataclass(frozen=True, slots=True)
class Resources:
    """CPU in cores, memory in bytes, generic resources (``nvidia.com/gpu``) in units."""

    cpu: float = 0.0
    memory: int = 0
    generic: Mapping[str, int] = field(default_factory=dict)

    def is_zero(self) -> bool:
        return self.cpu <= 0 and self.memory <= 0 and not any(self.generic.values())

    def __add__(self, other: Resources) -> Resources:
        generic = dict(self.generic)
        for k, v in other.generic.items():
            generic[k] = generic.get(k, 0) + v
        return Resources(self.cpu + other.cpu, self.memory + other.memory, generic)

    def times(self, n: int) -> Resources:
        return Resources(self.cpu * n, self.memory * n, {k: v * n for k, v in self.generic.items()})

    def __str__(self) -> str:
        parts = []
        if self.cpu:
            parts.append(f"cpu={fmt_cpu(self.cpu)}")
        if self.memory:
            parts.append(f"memory={fmt_bytes(self.memory)}")
        parts += [f"{k}={v}" for k, v in sorted(self.generic.items())]
        return ", ".join(parts) or "nothing"


def capacity_from_facts(facts: Mapping[str, Any]) -> Resources | None:
    """A host's capacity from its agent's facts (``cpus``, ``memory_bytes``, ``gpus``).

    None (unknown: CPU and memory unlimited, no generic resources) when the agent reported
    neither CPUs nor memory.  Each entry of ``gpus`` (nvidia-smi) is one ``nvidia.com/gpu``.
    """
    cpus, memory = facts.get("cpus"), facts.get("memory_bytes")
    if not cpus and not memory:
        return None
    gpus = len(facts.get("gpus") or [])
    return Resources(float(cpus or 0), int(memory or 0), {"nvidia.com/gpu": gpus} if gpus else {})


@dataclass(frozen=True, slots=True)
class HostSnapshot:
    """One host: static facts (what constraints and platforms see) and dynamic state.

    ``capacity`` None means unknown: CPU and memory are then unlimited and the host
    offers no generic resources.  ``allocated``, ``ports_in_use`` and
    ``service_counts`` cover every instance on the host, of every service.
    ``platform`` is the reported string (used by ``node.platform`` constraints when
    ``platforms`` is None); it defaults to ``platforms.native``.
    """

    id: str
    hostname: str = ""
    role: str = "worker"
    state: str = "ready"
    availability: str = "active"
    platforms: HostPlatforms | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    engine_labels: Mapping[str, str] = field(default_factory=dict)
    capacity: Resources | None = None
    allocated: Resources = field(default_factory=Resources)
    ports_in_use: frozenset[tuple[int, str]] = frozenset()
    images: frozenset[str] = frozenset()
    service_counts: Mapping[str, int] = field(default_factory=dict)
    platform: str = ""
    # instances of every service on the host: derived from service_counts once, here
    instances: int = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "instances", sum(self.service_counts.values()))

    @property
    def platform_text(self) -> str:
        if self.platform:
            return self.platform
        return str(self.platforms.native) if self.platforms is not None else ""

    def facts(self) -> cons.HostFacts:
        return cons.HostFacts(self.id, self.hostname, self.platform_text, self.labels, self.role,
                              self.engine_labels)

    def static_key(self) -> tuple[Any, ...]:
        """Everything but identity and dynamic state: hosts with equal keys form one class."""
        generic = tuple(sorted(k for k, v in self.capacity.generic.items() if v > 0)) if self.capacity else ()
        return (self.state, self.availability, self.platform_text, self.platforms, self.role,
                tuple(sorted(self.labels.items())), tuple(sorted(self.engine_labels.items())), generic)



@dataclass(frozen=True)
class Snapshot:
    hosts: tuple[HostSnapshot, ...]
    revision: int = 0
    # derived static facts cached by the scheduler (host classes, feasibility per service
    # signature, image locality); never part of equality, never observable in a plan
    memo: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    def with_hosts(self, changed: Mapping[str, HostSnapshot], revision: int | None = None) -> Snapshot:
        """A new snapshot with some hosts replaced (same ids, same order); this one is untouched.

        The cached host classes carry over when the replaced hosts keep their static facts,
        the image index when they also keep their images.
        """
        hosts = list(self.hosts)
        static_same = images_same = True
        positions = self.memo.get("positions")
        if positions is None:
            positions = {h.id: i for i, h in enumerate(hosts)}
        for hid, new in changed.items():
            i = positions[hid]
            old = hosts[i]
            if new.id != hid:
                raise ValueError(f"host {hid} replaced by a host with id {new.id}")
            static_same = static_same and old.static_key() == new.static_key() and old.hostname == new.hostname
            images_same = images_same and old.images == new.images
            hosts[i] = new
        memo: dict[str, Any] = {"positions": positions}
        if static_same and "static" in self.memo:
            memo["static"] = self.memo["static"]
            if images_same and "images" in self.memo:
                memo["images"] = self.memo["images"]
        return Snapshot(tuple(hosts), self.revision + 1 if revision is None else revision, memo)


@dataclass(frozen=True)
class Affinity:
    """Affinity (``anti`` False) or anti-affinity to another service's instances or to host labels.

    ``target`` "service": ``expr`` is a service name (a host qualifies when it runs one
    of its instances).  ``target`` "label": ``expr`` is a constraint expression
    (``node.labels.zone==edge``).  ``hard``: a filter; soft: a score (hosts that satisfy
    more soft affinities are used first), like Rancher 1.x's ``io.rancher.scheduler.
    affinity:*``, ``*_ne`` and ``*_soft``.
    """

    target: Literal["service", "label"]
    expr: str
    anti: bool = False
    hard: bool = True

    def __str__(self) -> str:
        prefix = "" if self.hard else "soft:"
        if self.target == "service":
            return f"{prefix}service{'!=' if self.anti else '=='}{self.expr}"
        c = cons.parse(self.expr)
        op = c.op if not self.anti else ("!=" if c.op == "==" else "==")
        return f"{prefix}{c.key}{op}{c.value}"

    def describe(self) -> str:
        """``service db`` or ``node.labels.zone==edge``: what the filter phrases name."""
        return f"service {self.expr}" if self.target == "service" else self.expr

    def constraint(self) -> Constraint:
        """A label affinity as the constraint a host must match to satisfy it."""
        c = cons.parse(self.expr)
        if self.anti:
            c = Constraint(c.key, "!=" if c.op == "==" else "==", c.value)
        return c


_AFFINITY = re.compile(r"^\s*(soft:)?\s*([A-Za-z0-9_.\-/]+)\s*(==|!=)\s*(.+?)\s*$")


def parse_affinity(text: str) -> Affinity:
    """``service==db``, ``service!=db``, ``node.labels.zone==edge``; prefix ``soft:`` for a preference."""
    m = _AFFINITY.match(text)
    if not m:
        raise SpecError([f"invalid affinity {text!r}: expected [soft:]service==NAME, [soft:]service!=NAME "
                         "or [soft:]node.labels.KEY==VALUE"])
    soft, key, op, value = m.groups()
    if key == "service":
        return Affinity("service", value, anti=op == "!=", hard=not soft)
    try:
        cons.parse(f"{key}=={value}")
    except cons.ConstraintError as exc:
        raise SpecError([f"invalid affinity {text!r}: {exc}"]) from None
    return Affinity("label", f"{key}=={value}", anti=op == "!=", hard=not soft)


def parse_preference(text: str) -> str:
    """``spread=node.labels.zone`` (Swarm's placement preference) -> ``node.labels.zone``."""
    kind, _, key = text.strip().partition("=")
    if kind.strip() != "spread" or cons.label_key(key.strip()) is None:
        raise SpecError([f"invalid placement preference {text!r}: expected spread=node.labels.KEY "
                         "or spread=engine.labels.KEY"])
    return key.strip()


_MEM = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?|b)?\s*$", re.IGNORECASE)
_MEM_UNIT = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
MIN_MEMORY_LIMIT = 4 << 20  # bytes; Docker refuses less than 6 MiB, Corral is a little more lenient
MAX_CPU_LIMIT = 1024.0


def parse_memory(value: Any) -> int:
    """Bytes from an int or ``512Mi``/``512m``/``512MiB``/``1g`` (binary units, as Docker)."""
    if isinstance(value, bool):
        raise SpecError([f"invalid memory {value!r}"])
    if isinstance(value, int):
        if value < 0:
            raise SpecError([f"invalid memory {value!r}: negative"])
        return value
    m = _MEM.match(str(value))
    if not m:
        raise SpecError([f"invalid memory {value!r}: expected bytes or a number with k, m, g, t (or Ki, Mi, Gi, Ti)"])
    unit = (m.group(2) or "").lower().rstrip("b").rstrip("i")
    return int(float(m.group(1)) * _MEM_UNIT[unit])


def parse_cpu(value: Any) -> float:
    """Cores from a number or ``500m`` (millicores)."""
    if isinstance(value, bool):
        raise SpecError([f"invalid cpu {value!r}"])
    try:
        text = str(value).strip()
        cpu = float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    except ValueError:
        raise SpecError([f"invalid cpu {value!r}: expected cores (0.5) or millicores (500m)"]) from None
    if cpu < 0 or not math.isfinite(cpu):
        raise SpecError([f"invalid cpu {value!r}"])
    return cpu


_GENERIC = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,126}[A-Za-z0-9])?$")


def parse_resources(value: Mapping[str, Any] | None) -> Resources:
    """``{"cpu": 0.5, "memory": "512Mi", "generic": {"nvidia.com/gpu": 1}}``; ``generic`` may
    also be a list of ``NAME=COUNT`` strings."""
    if not value:
        return Resources()
    errors: list[str] = []
    cpu, memory, generic = 0.0, 0, {}
    for key in value:
        if key not in ("cpu", "memory", "generic"):
            errors.append(f"unknown reservation {key!r} (known: cpu, memory, generic)")
    try:
        cpu = parse_cpu(value.get("cpu", 0))
    except SpecError as exc:
        errors += exc.errors
    try:
        memory = parse_memory(value.get("memory", 0))
    except SpecError as exc:
        errors += exc.errors
    raw = value.get("generic") or {}
    items: list[tuple[str, Any]]
    if isinstance(raw, Mapping):
        items = list(raw.items())
    else:
        items = []
        for entry in raw:
            name, sep, count = str(entry).partition("=")
            if not sep:
                errors.append(f"invalid generic resource {entry!r}: expected NAME=COUNT (nvidia.com/gpu=1)")
                continue
            items.append((name.strip(), count.strip()))
    for name, count in items:
        try:
            n = int(count)
        except (TypeError, ValueError):
            errors.append(f"invalid generic resource {name}={count!r}: count must be a whole number")
            continue
        if not _GENERIC.match(name) or n < 0:
            errors.append(f"invalid generic resource {name}={count!r}")
            continue
        if n:
            generic[name] = n
    if errors:
        raise SpecError(errors)
    return Resources(cpu, memory, generic)


@dataclass(frozen=True)
class ServiceRequest:
    """What a service asks of the scheduler.

    The first five fields are the original ones (same names, same defaults).
    ``one_per_host`` is the legacy "publishes host ports" flag: it caps replicas at one
    per host when ``ports`` is empty; with ``ports`` given, the port filter does that job
    (a host whose ports are taken, by this service or another, is skipped).
    """

    constraints: tuple[Constraint, ...] = ()
    image_platforms: tuple[Platform, ...] | None = None  # None: the image's platforms are not known
    allow_emulation: bool = False
    one_per_host: bool = False  # the service publishes host ports
    mode: Mode = "replicated"
    name: str = ""
    reservations: Resources = field(default_factory=Resources)
    ports: tuple[tuple[int, str], ...] = ()  # published (port, protocol)
    max_replicas_per_node: int | None = None
    affinities: tuple[Affinity, ...] = ()
    preferences: tuple[str, ...] = ()  # label keys to spread over, outermost first: node.labels.zone
    strategy: Strategy = "spread"
    digests: Mapping[str, str] = field(default_factory=dict)  # platform -> digest, for image locality


@dataclass(frozen=True)
class Placement:
    slot: int
    host_id: str
    choice: Choice | None  # the build this host runs; None when image platforms are unknown
    digest: str | None = None  # the digest of that build, when the request names it


@dataclass(frozen=True)
class SlotFailure:
    slot: int
    explanation: Explanation

    @property
    def reason(self) -> str:
        return self.explanation.summary()


@dataclass(frozen=True)
class Plan:
    """Where a service's missing instances go, computed on ``revision`` of the store.

    ``failures`` has one entry per slot that could not be placed (replicated mode); they
    share ``explanation``.  ``eligible`` lists the hosts that may run an instance (for a
    global service: where one belongs; cordoned hosts keep theirs, draining hosts do not).
    """

    service: str
    revision: int
    placements: tuple[Placement, ...]
    failures: tuple[SlotFailure, ...] = ()
    explanation: Explanation | None = None
    eligible: frozenset[str] = frozenset()

    @property
    def reason(self) -> str | None:
        return self.explanation.summary() if self.explanation is not None else None
