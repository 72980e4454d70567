"""Why instances could not be placed, in words a person reads.

The scheduler counts, for every host, the *first* filter it fails (state,
availability, constraints, image platform, label affinity, service affinity,
max_replicas_per_node, ports, resources: the order of :mod:`filters`), per host
class.  An :class:`Explanation` holds those counts; :meth:`Explanation.summary`
is the one line stored as a service's ``pending_reason``::

    0 of 3 hosts can run it: image offers linux/arm64, linux/amd64; 2 hosts do not
    match constraint node.labels.zone==edge, 1 host is linux/arm/v7 (no build)

    2 replicas not placed: 4000 hosts do not match constraint node.platform.arch==arm64,
    990 hosts lack resources (cpu: need 2, most free 1.5; memory: need 4 GiB, most free
    3.5 GiB), 10 hosts already run max_replicas_per_node=1

and :meth:`Explanation.detail` adds the same counts grouped by host class (the
platform, plus the generic resources a host offers), as Nomad's "Placement
Failure" block does.  Parts are ordered by how many hosts they concern, then
alphabetically, so the text is stable.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


def plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


@dataclass(frozen=True, order=True)
class Reason:
    """One failing filter, as said of one host (``is down``) and of several (``are down``)."""

    one: str
    many: str
    filter: str = ""  # state, availability, constraint, platform, affinity, anti-affinity, max, ports, resources

    def of(self, n: int) -> str:
        return f"{plural(n, 'host', 'hosts')} {self.one if n == 1 else self.many}"


# phrases shared by the scheduler and its tests
def state_reason(state: str) -> Reason:
    return Reason(f"is {state}", f"are {state}", "state")


def availability_reason(availability: str) -> Reason:
    return Reason(f"is {availability}", f"are {availability}", "availability")


def constraint_reason(text: str) -> Reason:
    return Reason(f"does not match constraint {text}", f"do not match constraint {text}", "constraint")


def no_build_reason(platform: str) -> Reason:
    return Reason(f"is {platform} (no build)", f"are {platform} (no build)", "platform")


NO_PLATFORM = Reason("reports no platform", "report no platform", "platform")


def affinity_reason(what: str, anti: bool) -> Reason:
    word = "anti-affinity" if anti else "affinity"
    return Reason(f"fails {word} to {what}", f"fail {word} to {what}", word)


def max_reason(n: int) -> Reason:
    return Reason(f"already runs max_replicas_per_node={n}", f"already run max_replicas_per_node={n}", "max")


OWN_PORTS = Reason("already runs one (the service publishes host ports)",
                   "already run one (the service publishes host ports)", "ports")


def port_reason(port: int, proto: str) -> Reason:
    return Reason(f"has port {port}/{proto} in use", f"have port {port}/{proto} in use", "ports")


def resources_reason(detail: str) -> Reason:
    return Reason(f"lacks resources ({detail})", f"lack resources ({detail})", "resources")


def fmt_cpu(x: float) -> str:
    return f"{round(x, 3):g}"


def fmt_bytes(n: float) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{round(n / size, 2):g} {unit}"
    return f"{int(n)} B"


def resource_detail(need: Mapping[str, float], most_free: Mapping[str, float]) -> str:
    """``cpu: need 2, most free 1.5; memory: need 4 GiB, most free 3.5 GiB``."""
    parts = []
    for dim in sorted(most_free, key=lambda d: (d != "cpu", d != "memory", d)):
        fmt = fmt_cpu if dim == "cpu" else fmt_bytes if dim == "memory" else (lambda v: f"{int(v)}")
        parts.append(f"{dim}: need {fmt(need[dim])}, most free {fmt(max(0.0, most_free[dim]))}")
    return "; ".join(parts)


@dataclass(frozen=True)
class Explanation:
    """Counts of hosts per failing filter and host class, for instances that could not be placed."""

    hosts: int  # hosts in the snapshot
    unplaced: int  # instances this plan could not place
    counts: tuple[tuple[Reason, str, int], ...]  # (reason, host class, hosts)
    offers: tuple[str, ...] | None = None  # the image's platforms, when known
    emulation_would_help: tuple[str, ...] = ()  # native platforms that could run it emulated
    started: bool = False  # some instance of the service runs or was placed by this plan
    noun: tuple[str, str] = ("replica", "replicas")
    ports_only_eligible: int | None = None  # legacy sentence: every eligible host already runs one
    class_sizes: tuple[tuple[str, int], ...] = ()

    def by_reason(self) -> list[tuple[Reason, int]]:
        total: Counter[Reason] = Counter()
        for reason, _, n in self.counts:
            total[reason] += n
        return sorted(total.items(), key=lambda kv: (-kv[1], kv[0].one, kv[0].many))

    def _parts(self, counts: Iterable[tuple[Reason, int]]) -> str:
        return ", ".join(reason.of(n) for reason, n in counts)

    def _emulation(self) -> str:
        if not self.emulation_would_help:
            return ""
        return "; " + ", ".join(self.emulation_would_help) + " could run it emulated (allow emulation to use it)"

    def summary(self) -> str:
        if self.hosts == 0:
            return "no hosts have joined"
        if self.ports_only_eligible is not None:
            return (f"{plural(self.unplaced, *self.noun)} not placed: the service publishes host ports and "
                    f"all {self.ports_only_eligible} eligible hosts already run one")
        parts = self._parts(self.by_reason())
        if not self.started:
            text = f"0 of {plural(self.hosts, 'host', 'hosts')} can run it: "
            if self.offers is not None:
                text += "image offers " + ", ".join(dict.fromkeys(self.offers)) + "; "
            return text + parts + self._emulation()
        return f"{plural(self.unplaced, *self.noun)} not placed: {parts}{self._emulation()}"

    def detail(self) -> str:
        """The summary, then the same counts per host class (one line each)."""
        lines = [self.summary()]
        per_class: dict[str, Counter[Reason]] = {}
        for reason, cls, n in self.counts:
            per_class.setdefault(cls, Counter())[reason] += n
        sizes = dict(self.class_sizes)
        if per_class:
            lines.append("  by host class:")
        for cls in sorted(per_class, key=lambda c: (-sum(per_class[c].values()), c)):
            counts = sorted(per_class[cls].items(), key=lambda kv: (-kv[1], kv[0].one))
            size = sizes.get(cls)
            head = f"{cls} ({plural(size, 'host', 'hosts')})" if size is not None else cls
            lines.append(f"    {head}: {self._parts(counts)}")
        return "\n".join(lines)
