#!/usr/bin/env python3
"""Scheduler throughput on a *simulated* fleet: the pure scheduler, one core, no I/O.

Nothing here touches a real host: the fleet is generated (it is named "simulated" in
the output), every host is a ``HostSnapshot``.  The mix, per 100 hosts:

* 60 arm64 boards (Raspberry Pi 4/5 class: 4 CPUs, 4 or 8 GiB; most run 32-bit ARM too),
* 10 arm/v7 boards (4 CPUs, 1 GiB),
* 25 amd64 VMs (8/16/32 CPUs, 32/64/128 GiB; half emulate arm64 and arm/v7 through qemu),
* 5 amd64 GPU hosts (32 CPUs, 256 GiB, 4 x ``nvidia.com/gpu``).

Labels: ``zone`` (4 edge zones for the boards, 2 cloud zones for the VMs) and ``rack``
(about 20 hosts per rack: many values); engine label ``storage``.  About 1 % of the hosts
are down, 1 % cordoned, 0.5 % draining; each host holds a few image digests.

Services (until the instance target is reached): multi-arch spread services (some with
zone or zone+rack placement preferences, constraints, soft or hard anti-affinity,
max_replicas_per_node, published ports, image digests for locality), ARM-only
services, amd64 binpack batch jobs, GPU services (``nvidia.com/gpu=1``), an arm64-only
service that must run emulated, sidecars with hard affinity to another service, and a
few global services.  Each service is placed by one ``plan()`` call (``plan_global``
for global ones) and the plan applied with ``apply_plan`` (what the controller does
in the store), so later services see earlier ones.

Runs (each in its own child process, so that its peak RSS, ``ru_maxrss``, is its own):

* full workloads, with global services: 5,000 hosts / 1,000,000 instances (the goal:
  >= 10,000 placements/s) and 50,000 hosts / 1,000,000 instances;
* a fleet-size series: the *same* 100,000-instance workload (same services, same replica
  counts, no global services, whose size is the fleet's) on 500, 5,000 and 50,000 hosts,
  for how time per placement grows with the fleet (goal: sub-linear).

Figures: placements/s of the scheduler alone (``plan`` time) and with ``apply_plan``;
time per placement, also without the garbage collector's pauses inside ``plan()``
(CPython's cyclic GC walks every live object, so its pauses grow with the fleet held in
memory; they are measured with ``gc.callbacks`` and reported, not hidden); peak RSS;
instances per host; spread evenness, sampled right after placing a plain spread service:
max - min instances per host (max over the hosts that passed the static filters, min over
those that still have room for one more).  The final state is checked: no host over
capacity, constraints and hard anti-affinity respected, max_replicas_per_node respected,
no port published twice on a host, nothing on down/cordoned/draining hosts; a violation
exits 1.

    /opt/corral-venv/bin/python bench/scheduler.py                 # all of the above, about 2 minutes
    /opt/corral-venv/bin/python bench/scheduler.py --hosts 5000 --instances 1000000   # one run
    /opt/corral-venv/bin/python bench/scheduler.py --quick         # CI smoke: a few seconds, exit 1 on a violation
    ... --json                                                     # the figures as JSON too
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import random
import resource
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from corral.platforms import Platform  # noqa: E402
from corral.scheduler import constraints as cons  # noqa: E402
from corral.scheduler.filters import static_index  # noqa: E402
from corral.scheduler.model import (  # noqa: E402
    Affinity,
    HostSnapshot,
    Resources,
    ServiceRequest,
    Snapshot,
)
from corral.scheduler.placement import apply_plan, plan, plan_global  # noqa: E402
from corral.scheduler.platforms import host_platforms  # noqa: E402

GiB, MiB = 1 << 30, 1 << 20
EDGE_ZONES = ("edge-1", "edge-2", "edge-3", "edge-4")
CLOUD_ZONES = ("cloud-1", "cloud-2")
MULTI = ("linux/amd64", "linux/arm64", "linux/arm/v7")
N_IMAGES = 60


def digest(image: int, platform: str) -> str:
    return f"sha256:{image:04d}{platform.replace('/', '')}"


# -- the simulated fleet -------------------------------------------------------------------


def make_fleet(n: int, rng: random.Random) -> list[HostSnapshot]:
    hosts = []
    shared: dict[tuple[str, tuple[str, ...], bool], Any] = {}  # one HostPlatforms per kind, as a server would
    racks_per_zone = max(1, n // 20 // 6)
    for i in range(n):
        r = rng.random()
        if r < 0.60:
            kind, plat, zone = "arm64", "linux/arm64", rng.choice(EDGE_ZONES)
            cap = Resources(4.0, rng.choice((4, 8)) * GiB)
            arm32, emu = rng.random() < 0.8, ()
        elif r < 0.70:
            kind, plat, zone = "armv7", "linux/arm/v7", rng.choice(EDGE_ZONES)
            cap, arm32, emu = Resources(4.0, 1 * GiB), False, ()
        elif r < 0.95:
            kind, plat, zone = "amd64", "linux/amd64", rng.choice(CLOUD_ZONES)
            c = rng.choice((8, 16, 32))
            cap, arm32 = Resources(float(c), c * 4 * GiB), False
            emu = ("linux/arm64", "linux/arm/v7") if rng.random() < 0.5 else ()
        else:
            kind, plat, zone = "gpu", "linux/amd64", rng.choice(CLOUD_ZONES)
            cap, arm32, emu = Resources(32.0, 256 * GiB, {"nvidia.com/gpu": 4}), False, ()
        s = rng.random()
        state = "down" if s < 0.01 else "ready"
        a = rng.random()
        availability = "cordoned" if a < 0.01 else "draining" if a < 0.015 else "active"
        rack = f"{zone}-r{rng.randrange(racks_per_zone):03d}"
        images = frozenset(digest(rng.randrange(N_IMAGES), plat) for _ in range(rng.randrange(0, 6)))
        hosts.append(HostSnapshot(
            id=f"sim-{i:06d}", hostname=f"sim-{kind}-{i:06d}",
            role="manager" if i < 3 else "worker", state=state, availability=availability,
            platforms=shared.setdefault((plat, emu, arm32), host_platforms(plat, emu, arm32)),
            labels={"zone": zone, "rack": rack, "kind": kind},
            engine_labels={"storage": rng.choice(("sd", "ssd", "nvme") if kind in ("arm64", "armv7")
                                                 else ("ssd", "nvme"))},
            capacity=cap, images=images))
    return hosts


# -- the simulated workload ----------------------------------------------------------------


def platforms(*ps: str) -> tuple[Platform, ...]:
    return tuple(Platform.parse(p) for p in ps)


def make_services(target: int, n_hosts: int, rng: random.Random,
                  series: bool = False) -> list[tuple[ServiceRequest, int]]:
    """(request, replicas) until ``target`` instances; replicas -1 marks a global service.

    ``series``: the same services whatever the fleet size (no global services, whose size is
    the fleet's; replica counts not scaled to the fleet), to compare fleet sizes fairly.
    """
    out: list[tuple[ServiceRequest, int]] = []
    total = 0
    names: list[str] = []
    scale = 1.0 if series else max(0.1, min(1.0, n_hosts / 5000))
    n_global = 3 if series else 0
    port = 8000
    while total < target:
        k = len(out)
        r = rng.random()
        image = rng.randrange(N_IMAGES)
        small = Resources(rng.choice((0.005, 0.01, 0.01, 0.02)), rng.choice((8, 16, 16, 32)) * MiB)
        req: dict[str, Any] = {"name": f"s{k:06d}", "image_platforms": platforms(*MULTI),
                               "digests": {p: digest(image, p) for p in MULTI}}
        if n_global < 3 and k % 400 == 7:
            req.update(name=f"s{k:06d}-global", reservations=Resources(0.005, 8 * MiB))
            n_global += 1
            out.append((ServiceRequest(mode="global", **req), -1))
            total += int(n_hosts * 0.95)
            continue
        if r < 0.45:  # web: plain spread, some with constraints / anti-affinity / max per node
            replicas = int(rng.randint(50, 600) * scale) + 1
            req.update(name=f"s{k:06d}-web", reservations=small if rng.random() < 0.7 else Resources())
            x = rng.random()
            if x < 0.15:
                req["constraints"] = (cons.parse(rng.choice(("node.labels.zone!=cloud-2",
                                                             "engine.labels.storage!=sd",
                                                             "node.platform.arch!=amd64"))),)
            elif x < 0.30 and names:
                req["affinities"] = (Affinity("service", rng.choice(names[-50:]), anti=True, hard=False),)
            elif x < 0.38 and names:
                req["affinities"] = (Affinity("service", rng.choice(names[-50:]), anti=True, hard=True),)
            elif x < 0.48:
                req["max_replicas_per_node"] = 2
        elif r < 0.60:  # spread over zones (and racks)
            replicas = int(rng.randint(100, 800) * scale) + 1
            prefs = ("node.labels.zone",) if rng.random() < 0.6 else ("node.labels.zone", "node.labels.rack")
            req.update(name=f"s{k:06d}-zoned", reservations=small, preferences=prefs)
        elif r < 0.72:  # ARM-only fleet service
            replicas = int(rng.randint(100, 1000) * scale) + 1
            req.update(name=f"s{k:06d}-edge", image_platforms=platforms("linux/arm64", "linux/arm/v7"),
                       reservations=small, constraints=(cons.parse("node.labels.kind!=gpu"),))
            if rng.random() < 0.3:
                req["affinities"] = (Affinity("label", "node.labels.zone==edge-1", hard=False),)
        elif r < 0.82:  # amd64 batch, binpack
            replicas = int(rng.randint(200, 3000) * scale) + 1
            req.update(name=f"s{k:06d}-batch", image_platforms=platforms("linux/amd64"), strategy="binpack",
                       reservations=Resources(0.05, 128 * MiB))
        elif r < 0.84:  # GPU
            replicas = int(rng.randint(4, 40) * scale) + 1
            req.update(name=f"s{k:06d}-gpu", image_platforms=platforms("linux/amd64"),
                       strategy=rng.choice(("spread", "binpack")),
                       reservations=Resources(2.0, 8 * GiB, {"nvidia.com/gpu": 1}))
        elif r < 0.90:  # published ports
            replicas = int(rng.randint(20, 200) * scale) + 1
            port += 1
            req.update(name=f"s{k:06d}-port", reservations=small, ports=((port, "tcp"),), one_per_host=True)
        elif r < 0.92:  # arm64-only image, allowed emulated, constrained to the cloud
            replicas = int(rng.randint(10, 80) * scale) + 1
            req.update(name=f"s{k:06d}-emu", image_platforms=platforms("linux/arm64"), allow_emulation=True,
                       reservations=small, constraints=(cons.parse("node.labels.zone==cloud-1"),))
        else:  # sidecar: hard affinity to a recent web service
            webs = [n for n in names[-200:] if n.endswith("-web")]
            if not webs:
                continue
            replicas = int(rng.randint(20, 200) * scale) + 1
            req.update(name=f"s{k:06d}-side", reservations=small,
                       affinities=(Affinity("service", rng.choice(webs)),))
        names.append(req["name"])
        replicas = min(replicas, target - total) if target - total > 0 else replicas
        out.append((ServiceRequest(**req), replicas))
        total += replicas
    return out


# -- one run (in a child process) ----------------------------------------------------------


def is_plain_spread(req: ServiceRequest) -> bool:
    return (req.mode == "replicated" and req.strategy == "spread" and not req.preferences
            and not req.affinities and not req.ports and req.max_replicas_per_node is None)


class GcTimer:
    """Time spent in Python's cyclic garbage collector (it runs inside plan() and apply_plan())."""

    def __init__(self) -> None:
        self.total = 0.0
        self.full = 0
        self._t = 0.0
        gc.callbacks.append(self)

    def __call__(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t = time.perf_counter()
        else:
            self.total += time.perf_counter() - self._t
            self.full += info.get("generation") == 2


def run(n_hosts: int, n_instances: int, seed: int, series: bool) -> dict[str, Any]:
    gct = GcTimer()
    t0 = time.perf_counter()
    snap = Snapshot(tuple(make_fleet(n_hosts, random.Random(seed))), revision=1)
    services = make_services(n_instances, n_hosts, random.Random(seed + 1), series)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    static_index(snap)
    index_s = time.perf_counter() - t0
    rss_fleet = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    plan_s = apply_s = plan_gc_s = 0.0
    placed = failed = calls = 0
    slow_calls: list[tuple[float, str, int]] = []
    reasons: Counter[str] = Counter()
    spread_eval: list[tuple[str, int, int, int]] = []
    for req, replicas in services:
        t, g = time.perf_counter(), gct.total
        p = plan_global(req, snap, 1) if replicas < 0 else plan(req, snap, range(1, replicas + 1))
        dt = time.perf_counter() - t
        plan_s += dt
        plan_gc_s += gct.total - g
        calls += 1
        slow_calls.append((dt, req.name, len(p.placements)))
        placed += len(p.placements)
        if replicas >= 0:
            failed += len(p.failures)
        elif p.explanation is not None:
            failed += p.explanation.unplaced
        if p.explanation is not None:
            reasons[p.reason.split(": ")[1].split(" (")[0] if p.reason else ""] += 1
        t = time.perf_counter()
        snap = apply_plan(snap, req, p)
        apply_s += time.perf_counter() - t
        if replicas > 0 and is_plain_spread(req) and calls % 5 == 0:  # a sample, outside the timers
            spread_eval.append((req.name, *gap(snap, req)))
    rss_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    gc_s, gc_full = gct.total, gct.full
    slow_calls.sort(reverse=True)
    violations = verify(snap, services)
    return {
        "hosts": n_hosts, "instances_requested": n_instances, "series": series, "plan_gc_s": plan_gc_s,
        "us_per_placement_no_gc": (plan_s - plan_gc_s) / max(1, placed) * 1e6, "services": len(services), "calls": calls,
        "placed": placed, "failed": failed, "plan_s": plan_s, "apply_s": apply_s, "build_s": build_s,
        "index_s": index_s, "classes": len(static_index(snap).classes), "gc_s": gc_s, "gc_full": gc_full,
        "placements_per_s": placed / plan_s if plan_s else 0.0,
        "placements_per_s_with_apply": placed / (plan_s + apply_s) if plan_s else 0.0,
        "us_per_placement": plan_s / max(1, placed) * 1e6,
        "us_per_attempt": plan_s / max(1, placed + failed) * 1e6,
        "rss_fleet_mib": rss_fleet / 1024, "rss_peak_mib": rss_peak / 1024,
        "slowest_calls": [(round(d * 1000, 2), n, k) for d, n, k in slow_calls[:3]],
        "failure_reasons": reasons.most_common(4),
        "evenness": summarize_gaps(spread_eval),
        "per_host": per_host(snap),
        "violations": violations,
    }


def gap(snap: Snapshot, req: ServiceRequest) -> tuple[int, int, int]:
    """(max - min, max, min) instances of a plain spread service per host, right after it was placed:
    max over the hosts that passed the static filters, min over those that still have room for one
    more (a host that ran out of CPU or memory is full, not uneven)."""
    idx = static_index(snap)
    hosts = snap.hosts
    st = idx.feasibility(req, hosts)
    fits = [f for f in st.fits if not f.emulated] or st.fits
    pairs = [(p, hosts[p].service_counts.get(req.name, 0)) for f in fits for p in f.members]
    if not pairs:
        return 0, 0, 0
    hi = max(c for _, c in pairs)
    room = [c for p, c in pairs if _has_room(hosts[p], req.reservations)]
    lo = min(room) if room else hi
    return hi - lo, hi, lo


def summarize_gaps(gaps: list[tuple[str, int, int, int]]) -> dict[str, Any]:
    hist = Counter(min(g, 3) for _, g, _, _ in gaps)
    worst = max(gaps, key=lambda x: (x[1], x[0]), default=("", 0, 0, 0))
    return {"services": len(gaps), "gap_le_1": hist[0] + hist[1], "gap_2": hist[2], "gap_ge_3": hist[3],
            "worst": {"service": worst[0], "gap": worst[1], "max": worst[2], "min": worst[3]}}


def _has_room(h: HostSnapshot, res: Resources) -> bool:
    cap = h.capacity
    if cap is None:
        return True
    return (cap.cpu - h.allocated.cpu >= res.cpu - 1e-9 and cap.memory - h.allocated.memory >= res.memory
            and all(cap.generic.get(k, 0) - h.allocated.generic.get(k, 0) >= v for k, v in res.generic.items()))


def per_host(snap: Snapshot) -> dict[str, Any]:
    by_kind: dict[str, list[int]] = defaultdict(list)
    for h in snap.hosts:
        if h.state == "ready" and h.availability == "active":
            by_kind[h.labels["kind"]].append(h.instances)
    return {k: {"hosts": len(v), "min": min(v), "max": max(v), "mean": round(sum(v) / len(v), 1)}
            for k, v in sorted(by_kind.items())}


def verify(snap: Snapshot, services: list[tuple[ServiceRequest, int]]) -> list[str]:
    """Invariants of the final state; every violation is a bug."""
    bad: list[str] = []
    reqs = {r.name: r for r, _ in services}
    order = {name: i for i, name in enumerate(reqs)}
    for h in snap.hosts:
        cap, a = h.capacity, h.allocated
        if cap is not None and (a.cpu > cap.cpu + 1e-6 or a.memory > cap.memory
                                or any(v > cap.generic.get(k, 0) for k, v in a.generic.items())):
            bad.append(f"{h.id} over capacity: {a} > {cap}")
        ports: Counter[tuple[int, str]] = Counter()
        facts = h.facts()
        for name, n in h.service_counts.items():
            r = reqs[name]
            for p in r.ports:
                ports[p] += n
            if r.max_replicas_per_node is not None and n > r.max_replicas_per_node:
                bad.append(f"{h.id} runs {n} of {name} (max {r.max_replicas_per_node})")
            for c in r.constraints:
                if not c.matches(facts):
                    bad.append(f"{h.id} runs {name} against {c}")
            for aff in r.affinities:
                # (only against a target placed earlier: a target placed later does not check it)
                if aff.hard and aff.target == "service" and aff.anti and h.service_counts.get(aff.expr) \
                        and order[aff.expr] < order[name]:
                    bad.append(f"{h.id} runs {name} next to {aff.expr} (hard anti-affinity)")
            if h.state != "ready" or h.availability != "active":
                bad.append(f"{h.id} ({h.state}/{h.availability}) got {name}")
        bad += [f"{h.id} publishes {p} {n} times" for p, n in ports.items() if n > 1]
    return bad[:20]


# -- the parent: one child per fleet size ------------------------------------------------------


def child(n_hosts: int, n_instances: int, seed: int, series: bool = False) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", "--hosts", str(n_hosts), "--instances", str(n_instances),
           "--seed", str(seed)] + (["--series"] if series else [])
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def table(title: str, results: list[dict[str, Any]]) -> None:
    print(title)
    print(f"{'hosts':>7} {'classes':>7} {'services':>8} {'placed':>9} {'failed':>8} {'plan s':>7} "
          f"{'placements/s':>12} {'+apply/s':>9} {'µs/place':>8} {'w/o GC':>7} {'peak RSS':>9}")
    for r in results:
        print(f"{r['hosts']:>7} {r['classes']:>7} {r['services']:>8} {r['placed']:>9} {r['failed']:>8} "
              f"{r['plan_s']:>7.1f} {r['placements_per_s']:>12,.0f} {r['placements_per_s_with_apply']:>9,.0f} "
              f"{r['us_per_placement']:>8.1f} {r['us_per_placement_no_gc']:>7.1f} {r['rss_peak_mib']:>7.0f}Mi")


def growth(results: list[dict[str, Any]]) -> None:
    base = min(results, key=lambda r: r["hosts"])
    print("  time per placement vs the smallest fleet (same services):")
    for r in sorted(results, key=lambda r: r["hosts"]):
        if r is base:
            continue
        hr = r["hosts"] / base["hosts"]
        tr = r["us_per_placement"] / base["us_per_placement"]
        tn = r["us_per_placement_no_gc"] / base["us_per_placement_no_gc"]
        print(f"    {base['hosts']} -> {r['hosts']} hosts (x{hr:g}): x{tr:.2f} with GC, x{tn:.2f} without "
              f"({'sub-linear' if tr < hr else 'NOT sub-linear'}; log-log slope "
              f"{math.log(max(tr, 1e-9)) / math.log(hr):.2f}, {math.log(max(tn, 1e-9)) / math.log(hr):.2f} "
              "without GC; 1.0 would be linear)")


def details(r: dict[str, Any]) -> None:
    e, ph = r["evenness"], r["per_host"]
    print(f"\n{r['hosts']} hosts / {r['instances_requested']:,} instances requested"
          f"{' (series workload)' if r['series'] else ''}:")
    print(f"  scheduler {r['placements_per_s']:,.0f} placements/s (goal >= 10,000), with apply_plan "
          f"{r['placements_per_s_with_apply']:,.0f}/s; {r['us_per_attempt']:.1f} µs per attempt; "
          f"GC pauses {r['plan_gc_s']:.1f} s inside plan(), {r['gc_s']:.1f} s in all "
          f"({r['gc_full']} full collections); class index {r['index_s'] * 1000:.0f} ms; "
          f"RSS after building the fleet {r['rss_fleet_mib']:.0f} MiB, peak {r['rss_peak_mib']:.0f} MiB")
    print(f"  spread evenness ({e['services']} sampled plain spread services; max over eligible hosts, "
          f"min over those with room): max-min <= 1: {e['gap_le_1']}, = 2: {e['gap_2']}, >= 3: {e['gap_ge_3']}; "
          f"worst {e['worst']['service'] or '-'} max {e['worst']['max']} min {e['worst']['min']}")
    print("  instances per ready, active host: " + "; ".join(
        f"{k} ({v['hosts']}): min {v['min']} max {v['max']} mean {v['mean']}" for k, v in ph.items()))
    print(f"  slowest plan() calls (ms, service, placed): {r['slowest_calls']}")
    if r["failure_reasons"]:
        print(f"  most common pending reasons: {r['failure_reasons']}")
    print(f"  invariants: {'all hold' if not r['violations'] else r['violations']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--hosts", type=str, default=None, help="fleet size(s), comma separated (skips the series)")
    ap.add_argument("--instances", type=str, default=None, help="instances per size, comma separated")
    ap.add_argument("--series-instances", type=int, default=None,
                    help="instances of the fleet-size series (default 100,000; --quick 10,000)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="CI smoke: small fleets, seconds")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--series", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(run(int(args.hosts), int(args.instances), args.seed, args.series)))
        return 0
    print("Corral scheduler benchmark: simulated fleet (generated hosts, no real machines), "
          "pure scheduler on one core, one child process per run\n")
    if args.hosts is not None:
        sizes = [int(x) for x in args.hosts.split(",")]
        counts = [int(x) for x in (args.instances or "1000000").split(",")]
        counts += [counts[-1]] * (len(sizes) - len(counts))
        headline = [child(h, n, args.seed) for h, n in zip(sizes, counts, strict=True)]
        series: list[dict[str, Any]] = []
    else:
        main_runs = [(300, 20_000)] if args.quick else [(5000, 1_000_000), (50_000, 1_000_000)]
        headline = [child(h, n, args.seed) for h, n in main_runs]
        n_series = args.series_instances or (10_000 if args.quick else 100_000)
        sizes = [100, 1000, 5000] if args.quick else [500, 5000, 50_000]
        series = [child(h, n_series, args.seed, series=True) for h in sizes]
    table("full workloads (with global services):", headline)
    if series:
        print()
        table(f"fleet-size series: the same {series[0]['instances_requested']:,}-instance workload "
              "(no global services):", series)
        growth(series)
    for r in headline + series:
        details(r)
    results = headline + series
    if args.json:
        print(json.dumps(results, indent=1))
    ok = all(not r["violations"] for r in results)
    if args.quick:
        ok = ok and all(r["placed"] > 0 for r in results)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
