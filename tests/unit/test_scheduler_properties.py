"""Properties of the scheduler on random fleets and requests (hypothesis).

An independent oracle (:func:`may_take`, written here from the README's rules, not from the
scheduler's code) says whether a host may take one more instance.  Every plan is replayed
placement by placement against it; and when slots fail, no host may still pass it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from corral.platforms import Platform
from corral.scheduler import constraints as cons
from corral.scheduler.model import Affinity, HostSnapshot, Resources, ServiceRequest, Snapshot
from corral.scheduler.placement import apply_plan, plan, plan_global
from corral.scheduler.platforms import choose, host_platforms

GiB = 1 << 30
GPU = "nvidia.com/gpu"
NAME = "web"
PLATFORMS = ("linux/amd64", "linux/arm64", "linux/arm/v7")
PORT = (80, "tcp")


@st.composite
def hosts(draw: Any, n: int) -> HostSnapshot:
    plat = draw(st.sampled_from(PLATFORMS))
    emulated = draw(st.sampled_from(((), ("linux/arm64", "linux/arm/v7")))) if plat == "linux/amd64" else ()
    cpu = draw(st.sampled_from((None, 1.0, 2.0, 4.0)))
    gpus = draw(st.sampled_from((0, 0, 1, 2)))
    cap = None if cpu is None else Resources(cpu, draw(st.sampled_from((GiB, 2 * GiB))), {GPU: gpus} if gpus else {})
    alloc = Resources()
    if cap is not None:
        alloc = Resources(draw(st.sampled_from((0.0, 0.5, 1.0))), draw(st.sampled_from((0, GiB // 2))),
                          {GPU: draw(st.integers(0, gpus))} if gpus else {})
    counts = draw(st.dictionaries(st.sampled_from((NAME, "db", "cache")), st.integers(1, 3), max_size=2))
    ports = frozenset([PORT]) if draw(st.booleans()) and draw(st.booleans()) else frozenset()
    labels = {"zone": z} if (z := draw(st.sampled_from(("a", "b", "c", None)))) else {}
    return HostSnapshot(
        id=f"h{n:03d}", hostname=f"node-{n}", role=draw(st.sampled_from(("worker", "worker", "manager"))),
        state=draw(st.sampled_from(("ready", "ready", "ready", "down"))),
        availability=draw(st.sampled_from(("active",) * 6 + ("cordoned", "draining"))),
        platforms=host_platforms(plat, emulated, draw(st.booleans())), labels=labels,
        engine_labels={"storage": draw(st.sampled_from(("ssd", "sd")))}, capacity=cap, allocated=alloc,
        ports_in_use=ports, images=frozenset(["sha256:a"]) if draw(st.booleans()) else frozenset(),
        service_counts=counts)


@st.composite
def fleets(draw: Any, lo: int = 1, hi: int = 14) -> list[HostSnapshot]:
    n = draw(st.integers(lo, hi))
    return [draw(hosts(i)) for i in range(n)]


AFFINITIES = (Affinity("service", "db", anti=True), Affinity("service", "cache"),
              Affinity("service", NAME, anti=True), Affinity("service", "db", anti=True, hard=False),
              Affinity("service", "cache", hard=False), Affinity("label", "node.labels.zone==a", hard=False),
              Affinity("label", "node.labels.zone==c", anti=True))
CONSTRAINTS = ("node.labels.zone!=b", "node.platform.arch!=arm", "node.role==worker", "engine.labels.storage==ssd",
               "node.id!=h001", "node.hostname==node-2")


@st.composite
def requests(draw: Any, mode: str = "replicated") -> ServiceRequest:
    offered = draw(st.sampled_from((PLATFORMS, ("linux/arm64",), ("linux/arm/v7",), None)))
    return ServiceRequest(
        name=NAME, mode=mode,  # type: ignore[arg-type]
        constraints=tuple(cons.parse(c) for c in draw(st.lists(st.sampled_from(CONSTRAINTS), max_size=2,
                                                                unique=True))),
        image_platforms=None if offered is None else tuple(Platform.parse(p) for p in offered),
        allow_emulation=draw(st.booleans()),
        reservations=Resources(draw(st.sampled_from((0.0, 0.5, 1.0))), draw(st.sampled_from((0, GiB // 2))),
                               {GPU: 1} if draw(st.integers(0, 4)) == 0 else {}),
        ports=(PORT,) if draw(st.integers(0, 3)) == 0 else (),
        max_replicas_per_node=draw(st.sampled_from((None, None, 1, 2))),
        affinities=tuple(draw(st.lists(st.sampled_from(AFFINITIES), max_size=2, unique=True))),
        preferences=draw(st.sampled_from(((), ("node.labels.zone",)))),
        strategy=draw(st.sampled_from(("spread", "binpack"))),
        digests={"linux/arm64": "sha256:a"} if draw(st.booleans()) else {},
    )


# -- the oracle --------------------------------------------------------------------------------


def static_ok(h: HostSnapshot, r: ServiceRequest) -> str | None:
    """The build kind this host would run (\"-\" when the image is unknown), None if it may not."""
    if h.state != "ready" or h.availability != "active":
        return None
    facts = h.facts()
    if not all(c.matches(facts) for c in r.constraints):
        return None
    if any(a.target == "label" and a.hard and not a.constraint().matches(facts) for a in r.affinities):
        return None
    if r.image_platforms is None:
        return "-"
    if h.platforms is None:
        return None
    c = choose(r.image_platforms, h.platforms, r.allow_emulation)
    return None if c is None else c.kind


def may_take(h: HostSnapshot, r: ServiceRequest) -> bool:
    """May this host take one more instance, as it is now (its counts include the plan's own)?"""
    if static_ok(h, r) is None:
        return False
    mine = h.service_counts.get(r.name, 0)
    for a in r.affinities:
        if a.target == "service" and a.hard:
            runs = h.service_counts.get(a.expr, 0)
            if a.anti and runs:
                return False
            if not a.anti and a.expr != r.name and not runs:
                return False
    if r.max_replicas_per_node is not None and mine >= r.max_replicas_per_node:
        return False
    if r.ports and (mine or any(p in h.ports_in_use for p in r.ports)):
        return False
    res = r.reservations
    if res.is_zero():
        return True
    cap = h.capacity
    if cap is None:
        return not any(res.generic.values())
    a = h.allocated
    return (a.cpu + res.cpu <= cap.cpu + 1e-9 and a.memory + res.memory <= cap.memory
            and all(a.generic.get(k, 0) + v <= cap.generic.get(k, 0) for k, v in res.generic.items()))


def place_one(h: HostSnapshot, r: ServiceRequest) -> HostSnapshot:
    counts = dict(h.service_counts)
    counts[r.name] = counts.get(r.name, 0) + 1
    return replace(h, allocated=h.allocated + r.reservations, ports_in_use=h.ports_in_use | set(r.ports),
                   service_counts=counts)


def native_can_take(fleet: dict[str, HostSnapshot], r: ServiceRequest) -> bool:
    return any(static_ok(h, r) not in (None, "emulated") and may_take(h, r) for h in fleet.values())


# -- properties --------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(fleets(), requests(), st.integers(1, 12))
def test_every_placement_is_allowed_and_nothing_is_left_that_fits(fleet: list[HostSnapshot], r: ServiceRequest,
                                                                 k: int) -> None:
    snapshot = Snapshot(tuple(fleet), revision=3)
    copy = Snapshot(tuple(fleet), revision=3)
    p = plan(r, snapshot, range(1, k + 1))
    assert snapshot == copy  # never mutated
    assert p.revision == 3
    assert [x.slot for x in p.placements] + [f.slot for f in p.failures] == list(range(1, k + 1))
    state = {h.id: h for h in fleet}
    for x in p.placements:
        h = state[x.host_id]
        assert may_take(h, r), (x, h)  # hard constraints, anti-affinity, max per node, ports, capacity
        if x.choice is not None and x.choice.kind == "emulated":
            assert not native_can_take(state, r)  # emulated only when no native host can
        state[x.host_id] = place_one(h, r)
    if p.failures:
        assert p.reason and not any(may_take(h, r) for h in state.values())
    # the applied plan is the oracle's state: nothing over capacity, no port twice
    after = {h.id: h for h in apply_plan(snapshot, r, p).hosts}
    for hid, h in after.items():
        assert h.service_counts == state[hid].service_counts and h.allocated == state[hid].allocated
        cap, a = h.capacity, h.allocated
        if cap is not None and state[hid] is not fleet[int(hid[1:])]:
            assert a.cpu <= cap.cpu + 1e-9 and a.memory <= cap.memory
            assert all(v <= cap.generic.get(g, 0) for g, v in a.generic.items())


@settings(max_examples=20, deadline=None)
@given(fleets(20, 60), requests(), st.integers(1, 90))
def test_larger_fleets_sampled_windows_keep_the_invariants(fleet: list[HostSnapshot], r: ServiceRequest,
                                                           k: int) -> None:
    p = plan(r, Snapshot(tuple(fleet)), range(1, k + 1))
    state = {h.id: h for h in fleet}
    for x in p.placements:
        assert may_take(state[x.host_id], r)
        state[x.host_id] = place_one(state[x.host_id], r)
    if p.failures:
        assert not any(may_take(h, r) for h in state.values())


@settings(max_examples=50, deadline=None)
@given(fleets(1, 24), requests(), st.integers(1, 30), st.randoms(use_true_random=False))
def test_plans_are_stable_under_reordering_of_the_host_list(fleet: list[HostSnapshot], r: ServiceRequest, k: int,
                                                            rnd: Any) -> None:
    shuffled = list(fleet)
    rnd.shuffle(shuffled)
    assert plan(r, Snapshot(tuple(fleet)), range(1, k + 1)) == plan(r, Snapshot(tuple(shuffled)), range(1, k + 1))
    assert plan_global(r, Snapshot(tuple(fleet))) == plan_global(r, Snapshot(tuple(shuffled)))


@settings(max_examples=100, deadline=None)
@given(fleets(), requests("global"))
def test_global_services_run_exactly_one_per_eligible_host(fleet: list[HostSnapshot], r: ServiceRequest) -> None:
    p = plan_global(r, Snapshot(tuple(fleet)), 1)
    kinds = {h.id: static_ok(h, r) for h in fleet}
    native = any(k not in (None, "emulated") and _affine(h, r) for h, k in zip(fleet, kinds.values(), strict=True))
    by_id = {h.id: h for h in fleet}
    eligible = {hid for hid, k in kinds.items() if k is not None and not (native and k == "emulated")
                and _affine(by_id[hid], r) and _fits_ever(by_id[hid], r)}
    placed = Counter(x.host_id for x in p.placements)
    assert all(n == 1 for n in placed.values())
    for h in fleet:
        runs = h.service_counts.get(NAME, 0) > 0
        if h.id in placed:
            assert h.id in eligible and not runs and may_take(h, r)
        elif h.id in eligible and not runs:
            assert not may_take(h, r) and p.reason  # blocked by a dynamic filter, and said so
    assert eligible <= p.eligible
    assert [x.slot for x in p.placements] == list(range(1, len(placed) + 1))


def _fits_ever(h: HostSnapshot, r: ServiceRequest) -> bool:
    """Could the host's whole capacity hold one instance? (If not, it is never eligible.)"""
    res, cap = r.reservations, h.capacity
    if cap is None:
        return not any(res.generic.values())
    return (res.cpu <= cap.cpu + 1e-9 and res.memory <= cap.memory
            and all(v <= cap.generic.get(k, 0) for k, v in res.generic.items()))


def _affine(h: HostSnapshot, r: ServiceRequest) -> bool:
    """Hard affinity to another service: the host runs it."""
    return all(h.service_counts.get(a.expr) for a in r.affinities
               if a.target == "service" and a.hard and not a.anti and a.expr != r.name)


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 80), st.integers(1, 300), st.lists(st.integers(0, 9), min_size=80, max_size=80),
       st.sampled_from(((), ("node.labels.zone",))), st.text("abcxyz", min_size=1, max_size=6))
def test_spread_is_within_one_of_even_where_nothing_else_differs(n: int, k: int, others: list[int],
                                                                  prefs: tuple[str, ...], name: str) -> None:
    # hosts differ only in how many instances of *other* services they run (and, with a
    # preference, every host has the same zone): spread must stay within one of even
    fleet = [HostSnapshot(id=f"h{i:03d}", platforms=host_platforms("linux/arm64"), labels={"zone": "a"},
                          service_counts={"other": others[i]} if others[i] else {}) for i in range(n)]
    p = plan(ServiceRequest(name=name, preferences=prefs), Snapshot(tuple(fleet)), range(1, k + 1))
    counts = Counter(x.host_id for x in p.placements)
    assert len(p.placements) == k
    per_host = [counts.get(h.id, 0) for h in fleet]
    assert max(per_host) - min(per_host) <= 1


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 40), st.integers(1, 60), st.lists(st.integers(0, 3), min_size=40, max_size=40))
def test_scaling_up_evens_out_existing_instances(n: int, k: int, mine: list[int]) -> None:
    fleet = [HostSnapshot(id=f"h{i:03d}", platforms=host_platforms("linux/amd64"),
                          service_counts={NAME: mine[i]} if mine[i] else {}) for i in range(n)]
    p = plan(ServiceRequest(name=NAME), Snapshot(tuple(fleet)), range(1, k + 1))
    counts = Counter(x.host_id for x in p.placements)
    after = [mine[i] + counts.get(h.id, 0) for i, h in enumerate(fleet)]
    # new instances only ever go to the emptiest hosts: either the old maximum still stands
    # and no host got above it, or everything is within one of even
    assert max(after) - min(after) <= 1 or max(after) == max(mine[:n])
    assert min(after) >= min(mine[:n]) + min(k // n, max(mine[:n]) - min(mine[:n]))
