"""Placement: where a service's instances go, and why the rest cannot go anywhere.

A pure function over a snapshot (no I/O, no clock, no store, no randomness: the same
input gives the same plan, whatever the order of the host list)::

    plan(request, snapshot, slots) -> Plan          # replicated
    plan_global(request, snapshot, first_slot) -> Plan   # one per eligible host
    validate(spec, snapshot=None) -> list[str]     # errors, at submit time

Filters (:mod:`filters`) decide which hosts can take an instance; scores
(:mod:`scores`) decide which of them gets it; :mod:`explain` says why instances
could not be placed, e.g.

    0 of 3 hosts can run it: image offers linux/amd64, linux/arm64;
    1 host is linux/arm/v7 (no build), 2 hosts do not match constraint node.labels.zone==edge

A :class:`~corral.scheduler.model.Plan` carries the snapshot revision it was computed
on; :func:`apply_plan` (for tests and benchmarks; the controller does the same in one
store transaction) refuses a plan computed on another revision.

The original API — ``feasible``, ``place_replicated``, ``place_global`` over
:class:`HostView` — is kept as thin wrappers: a ``HostView`` becomes a
``HostSnapshot`` with unknown (unlimited) capacity, and ties go to the lowest host id
as before.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from corral.platforms import Platform, PlatformError
from corral.scheduler import constraints as cons
from corral.scheduler import explain as ex
from corral.scheduler.constraints import Constraint, HostFacts
from corral.scheduler.explain import Explanation, Reason
from corral.scheduler.filters import (
    RESOURCES,
    ClassFit,
    Shortfall,
    StaticIndex,
    StaticResult,
    dynamic_filter,
    fill,
    image_index,
    static_index,
)
from corral.scheduler.model import (
    Affinity,
    HostSnapshot,
    Mode,
    Placement,
    Plan,
    Resources,
    ServiceRequest,
    SlotFailure,
    Snapshot,
    SpecError,
    parse_affinity,
    parse_preference,
    parse_resources,
)
from corral.scheduler.platforms import Choice, HostPlatforms
from corral.scheduler.scores import Bucket, Chooser, Context, Key, seed, subseed, walk

T = TypeVar("T")

__all__ = [
    "Fit", "HostView", "Mode", "Placement", "PlacementResult", "Plan", "ServiceRequest", "StalePlan",
    "apply_plan", "feasible", "place_global", "place_replicated", "plan", "plan_global",
    "request_from_spec", "validate",
]

ONLY_EMULATED = Reason("could only run it emulated (native hosts are used)",
                       "could only run it emulated (native hosts are used)", "platform")


class StalePlan(RuntimeError):
    """A plan computed on another revision than the snapshot it is applied to."""


# -- the original API ------------------------------------------------------------------------


@dataclass(frozen=True)
class HostView:
    facts: HostFacts
    state: str
    platforms: HostPlatforms | None = None

    @property
    def id(self) -> str:
        return self.facts.id


@dataclass(frozen=True)
class Fit:
    host_id: str
    choice: Choice | None  # the build this host runs; None when image platforms are unknown


@dataclass(frozen=True)
class PlacementResult:
    placements: list[Placement]
    reason: str | None  # why some instances could not be placed; None when all were


_OTHERS = "\x00other services"


def _host_snapshot(view: HostView, name: str, mine: int = 0, total: int = 0) -> HostSnapshot:
    counts = {}
    if mine:
        counts[name] = mine
    if total > mine:
        counts[_OTHERS] = total - mine
    f = view.facts
    return HostSnapshot(id=f.id, hostname=f.hostname, role=f.role, state=view.state, platforms=view.platforms,
                        labels=f.labels, engine_labels=f.engine_labels, platform=f.platform,
                        service_counts=counts)


def feasible(req: ServiceRequest, hosts: Sequence[HostView]) -> tuple[list[Fit], str | None]:
    """The hosts that can run the service, and when there are none, why not.

    Emulated hosts count only when no host runs the image natively.
    """
    snap = Snapshot(tuple(_host_snapshot(h, req.name) for h in hosts))
    idx = static_index(snap)
    st = idx.feasibility(req, snap.hosts)
    fits = _usable(st)
    by_pos: dict[int, Choice | None] = {}
    for f in fits:
        for pos in f.members:
            by_pos[pos] = f.choice
    out = [Fit(h.id, by_pos[i]) for i, h in enumerate(hosts) if i in by_pos]
    if out:
        return out, None
    return [], _static_explanation(req, idx, st, len(hosts)).summary()


def place_replicated(slots: Sequence[int], req: ServiceRequest, hosts: Sequence[HostView],
                     service_counts: Mapping[str, int], total_counts: Mapping[str, int]) -> PlacementResult:
    """Spread: fewest instances of this service, then fewest overall, then lowest host id."""
    snap = Snapshot(tuple(_host_snapshot(h, req.name, service_counts.get(h.id, 0), total_counts.get(h.id, 0))
                          for h in hosts))
    p = _plan_replicated(req, snap, slots, legacy=True)
    return PlacementResult(list(p.placements), p.reason if slots else None)


def place_global(req: ServiceRequest, hosts: Sequence[HostView], has_instance: set[str],
                 first_free_slot: int) -> tuple[PlacementResult, set[str]]:
    """One instance per feasible host.  Returns the new placements and the feasible host ids."""
    snap = Snapshot(tuple(_host_snapshot(h, req.name, 1 if h.id in has_instance else 0) for h in hosts))
    p = plan_global(req, snap, first_free_slot)
    return PlacementResult(list(p.placements), p.reason), set(p.eligible)


# -- plans ---------------------------------------------------------------------------------


def plan(request: ServiceRequest, snapshot: Snapshot, slots: Sequence[int]) -> Plan:
    """Place the instances ``slots`` of a replicated service.  Never mutates ``snapshot``.

    ``snapshot`` must already count every instance that keeps running (of this service and
    of every other); the plan adds to it.  Slots that cannot be placed get a
    :class:`SlotFailure` sharing one :class:`Explanation`.
    """
    return _plan_replicated(request, snapshot, slots, legacy=False)


def _usable(st: StaticResult) -> list[ClassFit]:
    """Static fits, natives only when there are any (the original rule; global mode)."""
    return [f for f in st.fits if not f.emulated] if st.any_native else list(st.fits)


def _scan(hosts: Sequence[HostSnapshot], name: str, targets: Iterable[str]) -> tuple[dict[int, int],
                                                                                     dict[str, set[int]]]:
    """This service's instances per host position, and the hosts running each target service."""
    tl = [t for t in dict.fromkeys(targets) if t != name]
    if not tl:
        return {i: c for i, h in enumerate(hosts) if (c := h.service_counts.get(name))}, {}
    existing: dict[int, int] = {}
    runs: dict[str, set[int]] = {t: set() for t in tl}
    for i, h in enumerate(hosts):
        sc = h.service_counts
        if not sc:
            continue
        c = sc.get(name)
        if c:
            existing[i] = c
        for t in tl:
            if sc.get(t):
                runs[t].add(i)
    return existing, runs


def _existing(snapshot: Snapshot, name: str, targets: Iterable[str]) -> tuple[Mapping[int, int],
                                                                              dict[str, set[int]]]:
    """Like :func:`_scan`, from the snapshot's service index when :func:`apply_plan` keeps one."""
    by_service = snapshot.memo.get("by_service")
    if by_service is None:
        return _scan(snapshot.hosts, name, targets)
    return by_service.get(name, {}), {t: set(by_service.get(t, ())) for t in targets if t != name}


LOCAL_CAP = 2


def _sample(items: Sequence[int], cap: int, s: int) -> Iterable[int]:
    """All of ``items`` if there are at most ``cap``, else ``cap`` of them along a seeded walk."""
    n = len(items)
    if n <= cap:
        return items
    start, stride = walk(n, s)
    return [items[(start + i * stride) % n] for i in range(cap)]


def _plan_replicated(req: ServiceRequest, snapshot: Snapshot, slots: Sequence[int], legacy: bool) -> Plan:
    hosts = snapshot.hosts
    name = req.name
    if not slots:
        return Plan(name, snapshot.revision, ())
    idx = static_index(snapshot)
    st = idx.feasibility(req, hosts)
    class_of = idx.class_of
    rank = idx.rank

    soft_label = tuple(a.constraint() for a in req.affinities if a.target == "label" and not a.hard)
    soft_svc = [a for a in req.affinities if a.target == "service" and not a.hard and a.expr != name]
    hard_aff = [a.expr for a in req.affinities if a.target == "service" and a.hard and not a.anti
                and a.expr != name]
    prefs = tuple(req.preferences)
    existing, runs = _existing(snapshot, name, [*hard_aff, *(a.expr for a in soft_svc)])
    layout = st.layout(prefs, soft_label, idx.facts)
    choice_of = st.choice_of
    digests = req.digests
    platform_of = st.platform_of if digests and not legacy else {}

    added: dict[int, int] = {}
    dead: dict[int, Reason] = {}
    owner: dict[int, int] = {}
    shortfall = Shortfall()
    check = dynamic_filter(req, hosts, added, shortfall)
    spread = req.strategy != "binpack"

    def local(pos: int) -> int:
        plat = platform_of.get(class_of[pos])
        return 1 if plat is not None and digests.get(plat, "") in hosts[pos].images else 0

    if spread:
        if legacy:
            def key(pos: int, mine: int, i: int) -> Key:
                return (mine, 0, hosts[pos].instances + added.get(pos, 0), rank[pos])
        elif platform_of:
            def key(pos: int, mine: int, i: int) -> Key:
                return (mine, -local(pos), hosts[pos].instances + added.get(pos, 0), i)
        else:
            def key(pos: int, mine: int, i: int) -> Key:
                return (mine, 0, hosts[pos].instances + added.get(pos, 0), i)
    else:
        def key(pos: int, mine: int, i: int) -> Key:
            h = hosts[pos]
            n = added.get(pos, 0)
            return (-fill(h, req, n), -local(pos) if platform_of else 0, -(h.instances + n),
                    rank[pos] if legacy else i)

    ctx = Context(dict(existing) if not isinstance(existing, dict) else existing, added, dead, owner, check,
                  key, spread)
    buckets: list[Bucket] = []
    by_group: dict[tuple[Any, ...], Bucket] = {}
    parts: dict[int, list[Sequence[int]]] = {}

    def bucket(group: tuple[Any, ...]) -> Bucket:
        b = by_group.get(group)
        if b is None:
            tier, pv = group
            b = Bucket(len(buckets), tier, tuple(pv[:j + 1] for j in range(len(pv))), ctx)
            buckets.append(b)
            by_group[group] = b
            parts[b.bid] = []
        return b

    def group_of(pos: int) -> tuple[Any, ...] | None:
        cid = class_of[pos]
        g = layout.group_of.get(cid)
        if g is None or st.fit_of(pos, cid) is None:
            return None
        return g

    allowed: set[int] | None = None
    if hard_aff:
        allowed = set.intersection(*(runs[t] for t in hard_aff))
        for pos in sorted(allowed, key=rank.__getitem__):
            g = group_of(pos)
            if g is not None:
                parts[bucket(g).bid].append((pos,))
    else:
        for g, members in layout.groups.items():
            parts[bucket(g).bid].append(members)
    n_static = st.hosts()

    # soft affinities to other services move single hosts to another tier
    if soft_svc:
        delta: Counter[int] = Counter()
        for a in soft_svc:
            for pos in runs[a.expr]:
                delta[pos] += -1 if a.anti else 1
        for pos in sorted((p for p, v in delta.items() if v), key=rank.__getitem__):
            g = group_of(pos)
            if g is None or (allowed is not None and pos not in allowed):
                continue
            (emul, soft), pv = g
            b = bucket(((emul, soft - delta[pos]), pv))
            owner[pos] = b.bid
            parts[b.bid].append((pos,))

    # image locality: hosts holding the digest are walked first within their bucket; at most
    # LOCAL_CAP per slot (plus a margin) of them, picked along a seeded walk of the digest's
    # hosts, so that this stays bounded by the demand rather than by the fleet
    fronts: dict[int, list[int]] = {}
    if platform_of:
        index = image_index(snapshot)
        cap = LOCAL_CAP * len(slots) + 64
        for plat, digest in digests.items():
            for pos in _sample(index.get(digest, ()), cap, seed(name, digest)):
                if platform_of.get(class_of[pos]) != plat or (allowed is not None and pos not in allowed):
                    continue
                g = group_of(pos)
                if g is None:
                    continue
                bid = owner.get(pos)
                fronts.setdefault(by_group[g].bid if bid is None else bid, []).append(pos)
    demand = -(-len(slots) // max(1, len(buckets)))  # instances per bucket if spread evenly
    base = seed(name)
    for b in buckets:
        ps = parts[b.bid]
        walked: Sequence[int] = ps[0] if len(ps) == 1 else [p for part in ps for p in part]
        front = sorted(fronts.get(b.bid, ()), key=rank.__getitem__) if b.bid in fronts else []
        b.ready(walked, front, subseed(base, repr((b.key, b.prefixes[-1] if b.prefixes else ()))),
                None if legacy else demand, ordered=legacy)

    # preference counts: instances of the service per preference value prefix
    pcount: Counter[tuple[Any, ...]] = Counter()
    if prefs:
        for pos, c in existing.items():
            facts = idx.facts[class_of[pos]]
            pv = tuple(cons.lookup(k, facts) for k in prefs)
            for j in range(len(pv)):
                pcount[pv[:j + 1]] += c

    placements: list[Placement] = []
    n_slots = len(slots)
    chooser = Chooser(buckets, pcount) if len(buckets) > 1 else None
    only = buckets[0] if len(buckets) == 1 else None
    for slot in slots:
        if only is not None:
            b = only
            if b.peek() is None:
                break
        else:
            picked = chooser.pick() if chooser is not None else None
            if picked is None:
                break
            b = picked
        pos, tb = b.take()
        n = added.get(pos, 0) + 1
        added[pos] = n
        b.placed(pos, existing.get(pos, 0) + n, tb)
        if chooser is not None:
            for p in b.prefixes:
                pcount[p] += 1
            chooser.update(b)
        cid = class_of[pos]
        built = st.platform_of.get(cid) if digests else None
        placements.append(Placement(slot, hosts[pos].id, choice_of[cid], digests.get(built) if built else None))
    explanation = None
    failures: tuple[SlotFailure, ...] = ()
    if len(placements) < n_slots:
        explanation = _dynamic_explanation(req, idx, st, len(hosts), dead, shortfall, n_slots - len(placements),
                                           started=bool(n_static) and bool(existing or placements),
                                           n_static=n_static, allowed=allowed, runs=runs, hard_aff=hard_aff)
        failures = tuple(SlotFailure(s, explanation) for s in slots[len(placements):])
    return Plan(name, snapshot.revision, tuple(placements), failures, explanation)


def plan_global(request: ServiceRequest, snapshot: Snapshot, first_free_slot: int = 1) -> Plan:
    """One instance on every eligible host that has none; slots from ``first_free_slot`` in host-id order.

    ``Plan.eligible`` is where an instance belongs (hosts that pass every static filter, and
    cordoned hosts that would); the controller removes instances from ready hosts outside it.
    Eligible hosts that fail a dynamic filter (resources, ports, anti-affinity) are explained.
    """
    req = request
    hosts = snapshot.hosts
    name = req.name
    idx = static_index(snapshot)
    st = idx.feasibility(req, hosts)
    hard_aff = [a.expr for a in req.affinities if a.target == "service" and a.hard and not a.anti
                and a.expr != name]
    existing, runs = _existing(snapshot, name, hard_aff)
    allowed = set.intersection(*(runs[t] for t in hard_aff)) if hard_aff else None
    # emulated hosts are left out only if a native host passes the hard affinities too
    fits = [f for f in st.fits if not f.emulated and (allowed is None or not allowed.isdisjoint(f.members))] \
        or list(st.fits)
    choice_of = {f.cls.id: f.choice for f in fits}
    positions = sorted((p for f in fits for p in f.members if allowed is None or p in allowed),
                       key=idx.rank.__getitem__)
    added: dict[int, int] = {}
    dead: dict[int, Reason] = {}
    shortfall = Shortfall()
    check = dynamic_filter(req, hosts, added, shortfall)
    placements: list[Placement] = []
    slot = first_free_slot
    for pos in positions:
        if existing.get(pos):
            continue
        reason = check(pos, 0)
        if reason is not None:
            dead[pos] = reason
            continue
        added[pos] = 1
        cid = idx.class_of[pos]
        choice = choice_of[cid]
        digest = req.digests.get(str(choice.platform)) if choice is not None else None
        placements.append(Placement(slot, hosts[pos].id, choice, digest))
        slot += 1
    eligible = frozenset(hosts[p].id for p in positions) | frozenset(hosts[p].id for p in st.kept)
    explanation = None
    if not positions:
        explanation = _dynamic_explanation(req, idx, st, len(hosts), dead, shortfall, 0, started=False,
                                           n_static=sum(len(f.members) for f in st.fits), allowed=allowed,
                                           runs=runs, hard_aff=hard_aff, noun=("instance", "instances"))
    elif dead:
        explanation = _dynamic_explanation(req, idx, st, len(hosts), dead, shortfall, len(dead), started=True,
                                           n_static=len(positions), allowed=allowed, runs=runs,
                                           hard_aff=hard_aff, noun=("instance", "instances"),
                                           emulated_aside=[f for f in st.fits if f not in fits])
    return Plan(name, snapshot.revision, tuple(placements), (), explanation, eligible)


# -- explanations ----------------------------------------------------------------------------


def _static_explanation(req: ServiceRequest, idx: StaticIndex, st: StaticResult, n_hosts: int) -> Explanation:
    return _dynamic_explanation(req, idx, st, n_hosts, {}, Shortfall(), 0, started=False,
                                n_static=0, allowed=None, runs={}, hard_aff=[])


def _dynamic_explanation(req: ServiceRequest, idx: StaticIndex, st: StaticResult, n_hosts: int,
                         dead: Mapping[int, Reason], shortfall: Shortfall, unplaced: int, *, started: bool,
                         n_static: int, allowed: set[int] | None, runs: Mapping[str, set[int]],
                         hard_aff: Sequence[str], noun: tuple[str, str] = ("replica", "replicas"),
                         emulated_aside: Sequence[ClassFit] = ()) -> Explanation:
    counts: Counter[tuple[Reason, str]] = Counter()
    for reason, label, n in st.failures:
        counts[(reason, label)] += n
    if allowed is not None:
        for f in st.fits:
            for pos in f.members:
                if pos not in allowed:
                    t = next(t for t in hard_aff if pos not in runs[t])
                    counts[(ex.affinity_reason(f"service {t}", False), f.cls.label)] += 1
    for f in emulated_aside:
        counts[(ONLY_EMULATED, f.cls.label)] += len(f.members)
    res_reason = shortfall.reason() if shortfall.need else RESOURCES
    classes = idx.classes
    class_of = idx.class_of
    for pos, reason in dead.items():
        counts[(res_reason if reason is RESOURCES else reason, classes[class_of[pos]].label)] += 1
    ports_only = None
    if dead and n_static and len(dead) == n_static and all(r is ex.OWN_PORTS for r in dead.values()) \
            and allowed is None:
        ports_only = n_static
    offers = tuple(str(p) for p in req.image_platforms) if req.image_platforms is not None else None
    return Explanation(
        hosts=n_hosts,
        unplaced=unplaced,
        counts=tuple((r, label, n) for (r, label), n in sorted(counts.items(), key=lambda kv: (kv[0][0], kv[0][1]))),
        offers=offers,
        emulation_would_help=st.emulation_would_help,
        started=started,
        noun=noun,
        ports_only_eligible=ports_only,
        class_sizes=tuple(sorted(idx.label_sizes.items())),
    )


# -- applying a plan (what the controller does in the store) ---------------------------------


_HOST_FIELDS = tuple(f.name for f in fields(HostSnapshot))
_set = object.__setattr__


def _derive(h: HostSnapshot, n: int, **changes: Any) -> HostSnapshot:
    """A copy of ``h`` with some fields changed and ``n`` more instances (``replace`` without
    re-summing its service counts: a new value, ``h`` untouched)."""
    new = object.__new__(HostSnapshot)
    for f in _HOST_FIELDS:
        _set(new, f, changes[f] if f in changes else getattr(h, f))
    _set(new, "instances", h.instances + n)
    return new


def apply_plan(snapshot: Snapshot, request: ServiceRequest, plan: Plan) -> Snapshot:
    """The snapshot after ``plan``'s placements, at revision + 1; the input is untouched.

    Raises :class:`StalePlan` if the plan was computed on another revision.
    """
    if plan.revision != snapshot.revision:
        raise StalePlan(f"plan for {plan.service} computed on revision {plan.revision}, "
                        f"snapshot is at {snapshot.revision}")
    per_host = Counter(p.host_id for p in plan.placements)
    positions = snapshot.memo.get("positions")
    if positions is None:
        positions = {h.id: i for i, h in enumerate(snapshot.hosts)}
    hosts = list(snapshot.hosts)
    res = request.reservations
    ports = frozenset(request.ports)
    name = request.name
    zero = res.is_zero()
    for hid, n in per_host.items():
        i = positions[hid]
        h = hosts[i]
        counts = dict(h.service_counts)
        counts[name] = counts.get(name, 0) + n
        hosts[i] = _derive(h, n, allocated=h.allocated if zero else h.allocated + res.times(n),
                           ports_in_use=h.ports_in_use | ports if ports else h.ports_in_use,
                           service_counts=counts)
    memo: dict[str, Any] = {"positions": positions}
    for k in ("static", "images"):
        if k in snapshot.memo:
            memo[k] = snapshot.memo[k]
    # the service index (service -> {host position: instances}) is kept up to date here, so
    # that planning on the derived snapshot need not scan every host
    by_service = snapshot.memo.get("by_service")
    if by_service is None:
        by_service = {}
        for i, h in enumerate(snapshot.hosts):
            for svc, c in h.service_counts.items():
                if c:
                    by_service.setdefault(svc, {})[i] = c
    if per_host:
        by_service = dict(by_service)
        mine = dict(by_service.get(name, {}))
        for hid, n in per_host.items():
            i = positions[hid]
            mine[i] = mine.get(i, 0) + n
        by_service[name] = mine
    memo["by_service"] = by_service
    return Snapshot(tuple(hosts), snapshot.revision + 1, memo)


# -- submit-time validation ----------------------------------------------------------------


def _parse_ports(raw: Any, errors: list[str]) -> tuple[tuple[int, str], ...]:
    out: list[tuple[int, str]] = []
    for p in raw or []:
        try:
            port = (int(p["published"]), str(p.get("protocol") or "tcp"))
        except (KeyError, TypeError, ValueError):
            errors.append(f"invalid port {p!r}")
            continue
        if port in out:
            errors.append(f"port {port[0]}/{port[1]} is published twice")
        out.append(port)
    return tuple(out)


def _parse_each(items: Any, parse: Callable[[str], T], errors: list[str]) -> tuple[T, ...]:
    """Parse every item, collecting all errors rather than stopping at the first."""
    parsed = []
    for text in items or []:
        try:
            parsed.append(parse(text))
        except SpecError as exc:
            errors += exc.errors
    return tuple(parsed)


def _parse_spec(name: str, spec: Mapping[str, Any], errors: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name}
    constraints = []
    for text in spec.get("constraints") or []:
        try:
            constraints.append(cons.parse(text))
        except cons.ConstraintError as exc:
            errors.append(str(exc))
    out["constraints"] = tuple(constraints)
    try:
        out["reservations"] = parse_resources(spec.get("reservations"))
    except SpecError as exc:
        errors += exc.errors
    out["affinities"] = _parse_each(spec.get("affinities"), parse_affinity, errors)
    out["preferences"] = _parse_each(spec.get("preferences"), parse_preference, errors)
    strategy = spec.get("strategy") or "spread"
    if strategy not in ("spread", "binpack"):
        errors.append(f"invalid strategy {strategy!r}: expected spread or binpack")
        strategy = "spread"
    out["strategy"] = strategy
    mrpn = spec.get("max_replicas_per_node")
    if mrpn is not None and (isinstance(mrpn, bool) or not isinstance(mrpn, int) or mrpn < 1):
        errors.append(f"invalid max_replicas_per_node {mrpn!r}: expected a whole number >= 1")
        mrpn = None
    out["max_replicas_per_node"] = mrpn
    # only ports bound on the host take the host's port (ingress ports go through the agent's proxy)
    bound = [p for p in spec.get("ports") or [] if not isinstance(p, Mapping) or p.get("mode", "host") == "host"]
    out["ports"] = _parse_ports(bound, errors)
    out["one_per_host"] = bool(bound)
    out["allow_emulation"] = bool(spec.get("allow_emulation"))
    out["mode"] = "global" if spec.get("mode") == "global" else "replicated"
    return out


def request_from_spec(name: str, spec: Mapping[str, Any], image_platforms: Sequence[str] | None = None,
                      digests: Mapping[str, str] | None = None) -> ServiceRequest:
    """A :class:`ServiceRequest` from a stored service spec (the API's JSON shape).

    Keys: ``constraints``, ``ports`` (``[{"published", "protocol"}]``), ``mode``,
    ``allow_emulation``, ``reservations`` (``{"cpu": 0.5, "memory": "512Mi",
    "generic": {"nvidia.com/gpu": 1}}``), ``max_replicas_per_node``, ``affinities``
    (``["service!=db", "soft:node.labels.zone==edge"]``), ``preferences``
    (``["spread=node.labels.zone"]``), ``strategy`` (``spread``|``binpack``).
    Raises :class:`SpecError` listing every error.
    """
    errors: list[str] = []
    fields = _parse_spec(name, spec, errors)
    platforms: tuple[Platform, ...] | None = None
    if image_platforms is not None:
        try:
            platforms = tuple(Platform.parse(p) for p in image_platforms)
        except PlatformError as exc:
            errors.append(str(exc))
    if errors:
        raise SpecError(errors)
    return ServiceRequest(image_platforms=platforms, digests=dict(digests or {}), **fields)


def validate(spec: Mapping[str, Any], snapshot: Snapshot | None = None, name: str = "") -> list[str]:
    """Every error in a service spec that can be known at submit time ([] when none).

    Malformed or unknown constraints, affinities, preferences, reservations; contradictory
    constraints (``node.labels.a==x`` with ``node.labels.a==y``), affinity and anti-affinity
    to the same service, positive affinity to the service itself; and, given a snapshot,
    reservations larger than any host (matching the constraints) could ever offer.
    What depends on the moment (hosts down, full, ports taken) is a pending reason instead.
    """
    errors: list[str] = []
    fields = _parse_spec(name or str(spec.get("name") or ""), spec, errors)
    affinities: tuple[Affinity, ...] = fields["affinities"]
    constraints: list[Constraint] = list(fields["constraints"])
    constraints += [a.constraint() for a in affinities if a.target == "label" and a.hard]
    errors += cons.contradictions(constraints)
    svc_name = fields["name"]
    hard: dict[str, bool] = {}
    for a in affinities:
        if a.target != "service" or not a.hard:
            continue
        if a.expr == svc_name and svc_name and not a.anti:
            errors.append(f"affinity to itself ({a}): the first instance could never be placed")
        if hard.get(a.expr, a.anti) != a.anti:
            errors.append(f"service=={a.expr} contradicts service!={a.expr}")
        hard[a.expr] = a.anti
    res: Resources | None = fields.get("reservations")
    if snapshot is not None and res is not None and not res.is_zero() and snapshot.hosts:
        errors += _too_big(res, constraints, snapshot)
    return errors


def _too_big(res: Resources, constraints: list[Constraint], snapshot: Snapshot) -> list[str]:
    """Reservations no host (among those matching the constraints, whatever their state) could hold."""
    matching = [h for h in snapshot.hosts if all(c.matches(h.facts()) for c in constraints)]
    scope = "matching host" if matching and constraints else "host"
    pool = matching or list(snapshot.hosts)
    if any(h.capacity is None for h in pool) and not res.generic:
        return []
    errors = []
    caps = [h.capacity for h in pool if h.capacity is not None]

    def largest(get: Any) -> float:
        return max((get(c) for c in caps), default=0)

    if res.cpu and res.cpu > largest(lambda c: c.cpu) and not any(h.capacity is None for h in pool):
        errors.append(f"reservation cpu={ex.fmt_cpu(res.cpu)} exceeds every {scope}: the largest has "
                      f"{ex.fmt_cpu(largest(lambda c: c.cpu))} CPUs")
    if res.memory and res.memory > largest(lambda c: c.memory) and not any(h.capacity is None for h in pool):
        errors.append(f"reservation memory={ex.fmt_bytes(res.memory)} exceeds every {scope}: the largest has "
                      f"{ex.fmt_bytes(largest(lambda c: c.memory))}")
    for k, v in sorted(res.generic.items()):
        most = largest(lambda c, k=k: c.generic.get(k, 0))
        if v > most:
            errors.append(f"reservation {k}={v} exceeds every {scope}: "
                          + (f"the largest offers {int(most)}" if most else f"none offers {k}"))
    return errors
