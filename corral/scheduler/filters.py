"""Filters: which hosts can take an instance, and the first reason each other host cannot.

Two kinds, evaluated in this order for every host:

static (depend only on facts many hosts share; evaluated once per *host class*)
    1. state: the host is ready;
    2. availability: not draining, not cordoned (a cordoned host keeps what it runs);
    3. constraints, in the order given (``node.id``/``node.hostname`` are per host);
    4. image platform: exact, compatible, or emulated when the service allows it
       (:mod:`corral.scheduler.platforms`);
    5. hard label affinities / anti-affinities.

dynamic (depend on what runs on the host; evaluated per visited host)
    6. hard affinity to a service (the host runs one of its instances) / anti-affinity
       (it runs none);
    7. max_replicas_per_node (and the legacy one-per-host of a service with ports);
    8. published ports already in use on the host, by any instance;
    9. resources: CPU, memory, generic resources (``nvidia.com/gpu``) free.

Host classes (as in Nomad): hosts whose static facts are identical — state,
availability, platform, emulation, arm32, role, labels, engine labels, generic
resource kinds — share one :class:`HostClass`.  :class:`StaticIndex` groups a
snapshot's hosts into classes once (it is kept in ``Snapshot.memo`` and carried to
snapshots derived from it) and caches, per service *signature* (constraints, image
platforms, emulation, hard label affinities), which classes fit and with which
build, and how many hosts of each class fail which static filter.  So a fleet of
5,000 hosts with a few hundred classes costs a few hundred evaluations per new
signature and nothing per placement.

Dynamic filters run against the snapshot plus the plan's own placements so far
(``added``: host position -> instances of this service placed by this plan); the
snapshot itself is never written.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from corral.platforms import Platform
from corral.scheduler import explain as ex
from corral.scheduler.constraints import Constraint, HostFacts
from corral.scheduler.constraints import lookup as cons_lookup
from corral.scheduler.explain import Reason
from corral.scheduler.model import HostSnapshot, Resources, ServiceRequest, Snapshot
from corral.scheduler.platforms import Choice, choose

_SENTINEL_ID = "\x00generic-host"
_CACHE_SIZE = 128


@dataclass(eq=False)
class HostClass:
    id: int
    members: tuple[int, ...]  # positions in Snapshot.hosts, sorted by host id
    rep: HostSnapshot  # a representative (static facts only)
    label: str  # for explanations: "linux/arm64", "linux/amd64 with nvidia.com/gpu"


@dataclass(eq=False, slots=True)
class ClassFit:
    """Hosts of one class that pass every static filter, and the build they run."""

    cls: HostClass
    members: tuple[int, ...]
    choice: Choice | None
    emulated: bool = False
    whole: bool = True  # every member of the class (no node.id/hostname exception)


@dataclass(eq=False)
class Layout:
    """Feasible hosts cut into groups of equal (emulation tier, soft label score) and preference values."""

    groups: dict[tuple[Any, ...], tuple[int, ...]]  # ((emulated, -soft), pref values) -> members
    group_of: dict[int, tuple[Any, ...]]  # class id -> its group


@dataclass(eq=False)
class StaticResult:
    fits: list[ClassFit]
    failures: list[tuple[Reason, str, int]]  # (reason, class label, hosts)
    emulation_would_help: tuple[str, ...]
    kept: tuple[int, ...]  # cordoned hosts that pass every other static filter
    fit_by_class: dict[int, ClassFit] = field(default_factory=dict)
    choice_of: dict[int, Choice | None] = field(default_factory=dict)  # class id -> build
    platform_of: dict[int, str] = field(default_factory=dict)  # class id -> build's platform, when known
    _layouts: dict[Any, Layout] = field(default_factory=dict)
    _hosts: int = -1

    def layout(self, prefs: tuple[str, ...], soft: tuple[Constraint, ...], facts: Sequence[HostFacts]) -> Layout:
        """Feasible hosts grouped by (tier, preference values): cached per (prefs, soft label affinities)."""
        key = (prefs, soft)
        hit = self._layouts.get(key)
        if hit is None:
            parts: dict[tuple[Any, ...], list[tuple[int, ...]]] = {}
            group_of: dict[int, tuple[Any, ...]] = {}
            for f in self.fits:
                cf = facts[f.cls.id]
                tier = (1 if f.emulated else 0, -sum(1 for c in soft if c.matches(cf)))
                g = (tier, tuple(cons_lookup(k, cf) for k in prefs))
                group_of[f.cls.id] = g
                parts.setdefault(g, []).append(f.members)
            groups = {g: ps[0] if len(ps) == 1 else tuple(p for part in ps for p in part)
                      for g, ps in parts.items()}
            hit = Layout(groups, group_of)
            if len(self._layouts) > 16:
                self._layouts.clear()
            self._layouts[key] = hit
        return hit

    @property
    def any_native(self) -> bool:
        return any(not f.emulated for f in self.fits)

    def hosts(self) -> int:
        """Hosts that pass every static filter."""
        if self._hosts < 0:
            self._hosts = sum(len(f.members) for f in self.fits)
        return self._hosts

    def fit_of(self, pos: int, cls_id: int) -> ClassFit | None:
        f = self.fit_by_class.get(cls_id)
        if f is None or (not f.whole and pos not in f.members):
            return None
        return f


def _class_label(h: HostSnapshot) -> str:
    label = h.platform_text or "unknown platform"
    if h.capacity is not None:
        kinds = sorted(k for k, v in h.capacity.generic.items() if v > 0)
        if kinds:
            label += " with " + ", ".join(kinds)
    return label


class StaticIndex:
    """Host classes of a snapshot and a cache of static feasibility per service signature."""

    def __init__(self, hosts: Sequence[HostSnapshot]) -> None:
        order = sorted(range(len(hosts)), key=lambda i: hosts[i].id)
        self.rank = [0] * len(hosts)
        self.by_id: dict[str, int] = {}
        by_hostname: dict[str, list[int]] = {}
        groups: dict[tuple[Any, ...], list[int]] = {}
        for r, i in enumerate(order):
            h = hosts[i]
            if h.id in self.by_id:
                raise ValueError(f"host id {h.id!r} appears twice in the snapshot")
            self.rank[i] = r
            self.by_id[h.id] = i
            by_hostname.setdefault(h.hostname, []).append(i)
            groups.setdefault(h.static_key(), []).append(i)
        # tuples, not lists: the garbage collector stops looking at tuples of ints
        self.by_hostname = {k: tuple(v) for k, v in by_hostname.items()}
        self.classes: list[HostClass] = []
        self.class_of = [0] * len(hosts)
        for cid, members in enumerate(groups.values()):
            rep = hosts[members[0]]
            self.classes.append(HostClass(cid, tuple(members), rep, _class_label(rep)))
            for i in members:
                self.class_of[i] = cid
        self.facts = [c.rep.facts() for c in self.classes]
        # what per-host keys (node.id, node.hostname) see of a class's "generic" member
        self.generic = [HostFacts(_SENTINEL_ID, _SENTINEL_ID, f.platform, f.labels, f.role, f.engine_labels)
                        for f in self.facts]
        self.label_sizes: Counter[str] = Counter()
        for c in self.classes:
            self.label_sizes[c.label] += len(c.members)
        self._cache: dict[tuple[Any, ...], StaticResult] = {}

    def __len__(self) -> int:
        return len(self.rank)

    def feasibility(self, req: ServiceRequest, hosts: Sequence[HostSnapshot]) -> StaticResult:
        pre = tuple(req.constraints)
        post = tuple((a.constraint(), a) for a in req.affinities if a.target == "label" and a.hard)
        key = (pre, req.image_platforms, req.allow_emulation, tuple(c for c, _ in post))
        hit = self._cache.pop(key, None)
        if hit is None:
            hit = self._evaluate(pre, req.image_platforms, req.allow_emulation,
                                 [(c, ex.affinity_reason(a.expr, a.anti)) for c, a in post], hosts)
            if len(self._cache) >= _CACHE_SIZE:
                self._cache.pop(next(iter(self._cache)))
        self._cache[key] = hit  # most recently used last
        return hit

    def _evaluate(self, pre: tuple[Constraint, ...], offered: tuple[Platform, ...] | None, allow_emulation: bool,
                  post: list[tuple[Constraint, Reason]], hosts: Sequence[HostSnapshot]) -> StaticResult:
        checks = [(c, ex.constraint_reason(str(c))) for c in pre]
        # hosts named by node.id / node.hostname constraints are evaluated one by one;
        # every other host of a class behaves like the class's "generic" member
        special: set[int] = set()
        for c, _ in [*checks, *post]:
            if c.key == "node.id" and c.value in self.by_id:
                special.add(self.by_id[c.value])
            elif c.key == "node.hostname":
                special.update(self.by_hostname.get(c.value, ()))
        special_by_class: dict[int, list[int]] = {}
        for pos in special:
            special_by_class.setdefault(self.class_of[pos], []).append(pos)
        fits: list[ClassFit] = []
        failures: Counter[tuple[Reason, str]] = Counter()
        kept: list[int] = []
        emu_help: set[str] = set()
        choices: dict[Choice, Choice] = {}  # one object per distinct build choice
        memo: _Platforms = {}  # choose() once per distinct HostPlatforms, platform constraints per platform
        for cls in self.classes:
            facts = self.facts[cls.id]
            generic = self.generic[cls.id]
            reason, choice, cordoned, helps = _check(cls.rep, generic, checks, offered, allow_emulation, post, memo)
            specials = special_by_class.get(cls.id, [])
            if helps:
                emu_help.add(helps)
            n_generic = len(cls.members) - len(specials)
            if reason is None:
                members: tuple[int, ...] = cls.members
            else:
                members = ()
                if n_generic:
                    failures[(reason, cls.label)] += n_generic
                    if cordoned:
                        spec_set = set(specials)
                        kept.extend(i for i in cls.members if i not in spec_set)
            if specials:
                passing: list[int] = []
                failing: set[int] = set()
                special_choice = choice
                for pos in specials:
                    h = hosts[pos]
                    r, ch, cord, _ = _check(cls.rep, HostFacts(h.id, h.hostname, facts.platform, facts.labels,
                                                              facts.role, facts.engine_labels),
                                           checks, offered, allow_emulation, post, memo)
                    if r is None:
                        passing.append(pos)
                        special_choice = ch
                    else:
                        failing.add(pos)
                        failures[(r, cls.label)] += 1
                        if cord:
                            kept.append(pos)
                if reason is None:
                    members = tuple(i for i in cls.members if i not in failing)
                else:
                    ok = set(passing)
                    members = tuple(i for i in cls.members if i in ok)
                    choice = special_choice
            if members:
                if choice is not None:
                    choice = choices.setdefault(choice, choice)
                fits.append(ClassFit(cls, members, choice, choice is not None and choice.kind == "emulated",
                                     members is cls.members))
        result = StaticResult(
            fits,
            [(r, label, n) for (r, label), n in failures.items()],
            tuple(sorted(emu_help)),
            tuple(sorted(kept, key=lambda i: self.rank[i])),
        )
        for f in fits:
            result.fit_by_class[f.cls.id] = f
            result.choice_of[f.cls.id] = f.choice
            if f.choice is not None:
                result.platform_of[f.cls.id] = str(f.choice.platform)
        return result


_Platforms = dict[Any, tuple["Choice | None", bool]]


def _choose(memo: _Platforms, offered: tuple[Platform, ...], platforms: Any,
            allow_emulation: bool) -> tuple[Choice | None, bool]:
    """(the build, whether emulation would have helped), once per distinct HostPlatforms."""
    hit = memo.get(platforms)
    if hit is None:
        choice = choose(offered, platforms, allow_emulation)
        helps = choice is None and not allow_emulation and choose(offered, platforms, True) is not None
        hit = memo[platforms] = (choice, helps)
    return hit


def _matches(c: Constraint, facts: HostFacts, memo: _Platforms | None) -> bool:
    """``c.matches(facts)``; platform keys memoised per platform string (parsing is the cost)."""
    if memo is None or not c.key.startswith("node.platform"):
        return c.matches(facts)
    k = (c, facts.platform)
    hit = memo.get(k)
    if hit is None:
        hit = memo[k] = (None, c.matches(facts))
    return hit[1]


def _check(rep: HostSnapshot, facts: HostFacts, checks: list[tuple[Constraint, Reason]],
           offered: tuple[Platform, ...] | None, allow_emulation: bool,
           post: list[tuple[Constraint, Reason]],
           memo: _Platforms | None = None) -> tuple[Reason | None, Choice | None, bool, str | None]:
    """(first failing static filter, chosen build, cordoned-but-otherwise-fine, emulation-would-help)."""
    if rep.state != "ready":
        return ex.state_reason(rep.state), None, False, None
    first: Reason | None = None
    if rep.availability != "active":
        first = ex.availability_reason(rep.availability)
    for c, reason in checks:
        if not _matches(c, facts, memo):
            return first or reason, None, False, None
    choice: Choice | None = None
    helps = None
    if offered is not None:
        if rep.platforms is None:
            return first or ex.NO_PLATFORM, None, False, None
        choice, would = _choose({} if memo is None else memo, offered, rep.platforms, allow_emulation)
        if choice is None:
            own = str(rep.platforms.native)
            if would and first is None:
                helps = own
            return first or ex.no_build_reason(own), None, False, helps
    for c, reason in post:
        if not _matches(c, facts, memo):
            return first or reason, None, False, None
    if first is not None:
        return first, choice, rep.availability == "cordoned", None
    return None, choice, False, None


def static_index(snapshot: Snapshot) -> StaticIndex:
    """The snapshot's host classes, built on first use and kept in its memo."""
    idx = snapshot.memo.get("static")
    if idx is None or len(idx) != len(snapshot.hosts):
        idx = StaticIndex(snapshot.hosts)
        snapshot.memo["static"] = idx
        snapshot.memo.setdefault("positions", {h.id: i for i, h in enumerate(snapshot.hosts)})
    return idx


def image_index(snapshot: Snapshot) -> dict[str, list[int]]:
    """digest -> positions of the hosts that hold it (built on first use, kept in the memo)."""
    images = snapshot.memo.get("images")
    if images is None:
        images = {}
        for i, h in enumerate(snapshot.hosts):
            for d in h.images:
                images.setdefault(d, []).append(i)
        snapshot.memo["images"] = images
    return images


# -- dynamic filters ----------------------------------------------------------------------

RESOURCES = Reason("lacks resources", "lack resources", "resources")


@dataclass
class Shortfall:
    """What hosts lacking resources had free, per dimension (for the explanation)."""

    need: dict[str, float] = field(default_factory=dict)
    most_free: dict[str, float] = field(default_factory=dict)

    def note(self, dim: str, need: float, free: float) -> None:
        self.need[dim] = need
        if free > self.most_free.get(dim, float("-inf")):
            self.most_free[dim] = free

    def reason(self) -> Reason:
        return ex.resources_reason(ex.resource_detail(self.need, self.most_free))


Check = Callable[[int, int], "Reason | None"]


def dynamic_filter(req: ServiceRequest, hosts: Sequence[HostSnapshot], added: Mapping[int, int],
                   shortfall: Shortfall) -> Check:
    """``check(pos, mine)`` -> the first dynamic filter host ``pos`` fails, or None.

    ``mine`` is the number of this service's instances on the host, this plan's included.
    Every dynamic filter is monotone within a plan: once a host fails, it keeps failing.
    """
    name = req.name
    anti = [(a.expr, ex.affinity_reason(a.describe(), True)) for a in req.affinities
            if a.target == "service" and a.hard and a.anti and a.expr != name]
    cap = req.max_replicas_per_node
    cap_reason = ex.max_reason(cap) if cap is not None else None
    if any(a.target == "service" and a.hard and a.anti and a.expr == name for a in req.affinities) \
            and (cap is None or cap > 1):
        cap, cap_reason = 1, ex.affinity_reason(f"service {name}", True)
    ports = tuple(req.ports)
    if req.one_per_host and not ports:
        cap, cap_reason = 1, ex.OWN_PORTS
    port_reasons = {p: ex.port_reason(*p) for p in ports}
    res: Resources | None = None if req.reservations.is_zero() else req.reservations
    r_cpu = res.cpu if res is not None else 0.0
    r_mem = res.memory if res is not None else 0
    r_gen = [(k, v) for k, v in res.generic.items() if v] if res is not None else []
    eps = 1e-9

    def check(pos: int, mine: int) -> Reason | None:
        h = hosts[pos]
        if anti:
            sc = h.service_counts
            for target, reason in anti:
                if sc.get(target):
                    return reason
        if cap is not None and mine >= cap:
            return cap_reason
        if ports:
            if mine:
                return ex.OWN_PORTS
            used = h.ports_in_use
            if used:
                for p in ports:
                    if p in used:
                        return port_reasons[p]
        if res is None:
            return None
        n = added.get(pos, 0)
        capacity = h.capacity
        short = False
        if capacity is None:
            for k, v in r_gen:
                shortfall.note(k, v, 0)
                short = True
            return RESOURCES if short else None
        alloc = h.allocated
        if r_cpu:
            free = capacity.cpu - alloc.cpu - n * r_cpu
            if free + eps < r_cpu:
                shortfall.note("cpu", r_cpu, free)
                short = True
        if r_mem:
            free_m = capacity.memory - alloc.memory - n * r_mem
            if free_m < r_mem:
                shortfall.note("memory", r_mem, free_m)
                short = True
        for k, v in r_gen:
            free_g = capacity.generic.get(k, 0) - alloc.generic.get(k, 0) - n * v
            if free_g < v:
                shortfall.note(k, v, free_g)
                short = True
        return RESOURCES if short else None

    return check


def fill(h: HostSnapshot, req: ServiceRequest, n: int) -> float:
    """The host's dominant share (CPU or memory) once it holds ``n`` more of this service; 0 if unknown."""
    cap = h.capacity
    if cap is None:
        return 0.0
    res = req.reservations
    share = 0.0
    if cap.cpu > 0:
        share = (h.allocated.cpu + n * res.cpu) / cap.cpu
    if cap.memory > 0:
        share = max(share, (h.allocated.memory + n * res.memory) / cap.memory)
    return share
