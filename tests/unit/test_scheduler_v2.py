"""The scheduler's filters, scores, explanations and validation, as tables (pure code)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest

from corral.platforms import Platform
from corral.scheduler import constraints as cons
from corral.scheduler.model import (
    Affinity,
    HostSnapshot,
    Resources,
    ServiceRequest,
    Snapshot,
    SpecError,
    parse_affinity,
    parse_memory,
    parse_preference,
    parse_resources,
)
from corral.scheduler.placement import (
    StalePlan,
    apply_plan,
    plan,
    plan_global,
    request_from_spec,
    validate,
)
from corral.scheduler.platforms import host_platforms

GiB, MiB = 1 << 30, 1 << 20
GPU = "nvidia.com/gpu"


def host(hid: str, platform: str = "linux/arm64", *, cpu: float | None = 4.0, mem: int = 4 * GiB, gpus: int = 0,
         emulated: tuple[str, ...] = (), arm32: bool = False, state: str = "ready", availability: str = "active",
         role: str = "worker", engine: dict[str, str] | None = None, alloc: Resources | None = None,
         ports: Sequence[tuple[int, str]] = (), images: Sequence[str] = (),
         counts: dict[str, int] | None = None, **labels: str) -> HostSnapshot:
    cap = None if cpu is None else Resources(cpu, mem, {GPU: gpus} if gpus else {})
    return HostSnapshot(id=hid, hostname=f"n-{hid}", role=role, state=state, availability=availability,
                        platforms=host_platforms(platform, emulated, arm32), labels=labels,
                        engine_labels=engine or {}, capacity=cap, allocated=alloc or Resources(),
                        ports_in_use=frozenset(ports), images=frozenset(images), service_counts=counts or {})


def image(*ps: str) -> tuple[Platform, ...]:
    return tuple(Platform.parse(p) for p in ps)


MULTI = image("linux/arm64", "linux/amd64")


def req(name: str = "web", **kw: Any) -> ServiceRequest:
    kw.setdefault("image_platforms", MULTI)
    if "constraints" in kw:
        kw["constraints"] = tuple(cons.parse(c) for c in kw["constraints"])
    if "affinities" in kw:
        kw["affinities"] = tuple(parse_affinity(a) for a in kw["affinities"])
    return ServiceRequest(name=name, **kw)


def snap(*hosts: HostSnapshot, revision: int = 5) -> Snapshot:
    return Snapshot(tuple(hosts), revision)


def where(p: Any) -> Counter[str]:
    return Counter(x.host_id for x in p.placements)


# -- filters ---------------------------------------------------------------------------------


@pytest.mark.parametrize("fleet, request_, reason", [
    ([host("a", state="down"), host("b", availability="cordoned"), host("c", availability="cordoned")],
     req(), "0 of 3 hosts can run it: image offers linux/arm64, linux/amd64; 2 hosts are cordoned, 1 host is down"),
    ([host("a", availability="draining")], req(),
     "0 of 1 host can run it: image offers linux/arm64, linux/amd64; 1 host is draining"),
    ([host("a", role="manager"), host("b")], req(constraints=["node.role==manager", "node.hostname!=n-a"]),
     "0 of 2 hosts can run it: image offers linux/arm64, linux/amd64; 1 host does not match constraint "
     "node.hostname!=n-a, 1 host does not match constraint node.role==manager"),
    ([host("a", engine={"storage": "sd"}), host("b", engine={"storage": "sd"})],
     req(constraints=["engine.labels.storage==ssd"]),
     "0 of 2 hosts can run it: image offers linux/arm64, linux/amd64; 2 hosts do not match constraint "
     "engine.labels.storage==ssd"),
    ([host("a", cpu=2, alloc=Resources(0.5, GiB)), host("b", cpu=1), host("c", mem=GiB)],
     req(reservations=Resources(2, 2 * GiB)),
     "0 of 3 hosts can run it: image offers linux/arm64, linux/amd64; 3 hosts lack resources "
     "(cpu: need 2, most free 1.5; memory: need 2 GiB, most free 1 GiB)"),
    ([host("a", "linux/amd64", gpus=1, alloc=Resources(0, 0, {GPU: 1})), host("b")],
     req(reservations=Resources(1, GiB, {GPU: 1})),
     "0 of 2 hosts can run it: image offers linux/arm64, linux/amd64; 2 hosts lack resources "
     "(nvidia.com/gpu: need 1, most free 0)"),
    ([host("a", ports=[(8080, "tcp")])], req(ports=((8080, "tcp"),)),
     "0 of 1 host can run it: image offers linux/arm64, linux/amd64; 1 host has port 8080/tcp in use"),
    ([host(h, counts={"db": 1}) for h in "abcd"], req(affinities=["service!=db"]),
     "0 of 4 hosts can run it: image offers linux/arm64, linux/amd64; 4 hosts fail anti-affinity to service db"),
    ([host("a"), host("b")], req(affinities=["service==db"]),
     "0 of 2 hosts can run it: image offers linux/arm64, linux/amd64; 2 hosts fail affinity to service db"),
    ([host("a", zone="edge"), host("b", zone="cloud")], req(affinities=["node.labels.zone!=edge",
                                                                          "node.labels.zone!=cloud"]),
     "0 of 2 hosts can run it: image offers linux/arm64, linux/amd64; 1 host fails anti-affinity to "
     "node.labels.zone==cloud, 1 host fails anti-affinity to node.labels.zone==edge"),
    ([host("a", "linux/riscv64")], req(), "0 of 1 host can run it: image offers linux/arm64, linux/amd64; "
                                          "1 host is linux/riscv64 (no build)"),
    ([], req(), "no hosts have joined"),
])
def test_filter_explanations(fleet: list[HostSnapshot], request_: ServiceRequest, reason: str) -> None:
    p = plan(request_, snap(*fleet), [1])
    assert p.placements == () and p.reason == reason
    assert [f.slot for f in p.failures] == [1] and p.failures[0].reason == reason


def test_partial_placement_explains_what_is_left() -> None:
    fleet = snap(*(host(h) for h in "abc"), host("d", "linux/riscv64"))
    p = plan(req(max_replicas_per_node=1), fleet, [1, 2, 3, 4, 5])
    assert sorted(where(p).values()) == [1, 1, 1]
    assert p.reason == ("2 replicas not placed: 3 hosts already run max_replicas_per_node=1, "
                        "1 host is linux/riscv64 (no build)")
    assert [f.slot for f in p.failures] == [4, 5]


def test_own_ports_keep_the_original_sentence() -> None:
    p = plan(req(ports=((8080, "tcp"),)), snap(host("a"), host("b")), [1, 2, 3])
    assert len(p.placements) == 2 and len(where(p)) == 2
    assert p.reason == "1 replica not placed: the service publishes host ports and all 2 eligible hosts already run one"


def test_ports_are_free_again_on_other_protocols() -> None:
    p = plan(req(ports=((53, "udp"),)), snap(host("a", ports=[(53, "tcp")])), [1])
    assert [x.host_id for x in p.placements] == ["a"]


def test_resources_count_this_plans_own_placements() -> None:
    p = plan(req(reservations=Resources(1.5, GiB)), snap(host("a", cpu=4), host("b", cpu=2)), [1, 2, 3, 4])
    assert where(p) == {"a": 2, "b": 1}
    assert p.reason == "1 replica not placed: 2 hosts lack resources (cpu: need 1.5, most free 1)"


def test_unknown_capacity_is_unlimited_but_offers_no_gpus() -> None:
    fleet = snap(host("a", cpu=None))
    assert len(plan(req(reservations=Resources(64, 512 * GiB)), fleet, range(1, 11)).placements) == 10
    assert plan(req(reservations=Resources(0, 0, {GPU: 1})), fleet, [1]).placements == ()


def test_gpu_services_go_to_gpu_hosts() -> None:
    fleet = snap(host("pi"), host("gpu", "linux/amd64", cpu=32, mem=64 * GiB, gpus=2))
    p = plan(req(reservations=Resources(2, GiB, {GPU: 1})), fleet, [1, 2, 3])
    assert where(p) == {"gpu": 2} and "nvidia.com/gpu: need 1, most free 0" in (p.reason or "")


def test_hard_affinity_follows_the_other_service() -> None:
    fleet = snap(host("a"), host("b", counts={"db": 1}), host("c", counts={"db": 2}))
    p = plan(req(affinities=["service==db"]), fleet, [1, 2, 3, 4])
    assert set(where(p)) == {"b", "c"} and sorted(where(p).values()) == [2, 2]


def test_anti_affinity_to_itself_is_one_per_host() -> None:
    p = plan(req(affinities=["service!=web"]), snap(host("a"), host("b", counts={"web": 1})), [2, 3])
    assert where(p) == {"a": 1}
    assert p.reason == "1 replica not placed: 2 hosts fail anti-affinity to service web"


def test_soft_anti_affinity_prefers_but_does_not_forbid() -> None:
    fleet = snap(host("a", counts={"cache": 1}), host("b"), host("c", counts={"cache": 1}))
    p = plan(req(affinities=["soft:service!=cache"], max_replicas_per_node=1), fleet, [1, 2, 3])
    assert [x.host_id for x in p.placements][0] == "b" and set(where(p)) == {"a", "b", "c"}


def test_soft_label_affinity_orders_hosts() -> None:
    fleet = snap(host("a", zone="cloud"), host("b", zone="edge"), host("c", zone="cloud"))
    p = plan(req(affinities=["soft:node.labels.zone==edge"]), fleet, [1, 2])
    assert where(p) == {"b": 2}  # preferred first, whatever spread says


def test_global_mode_one_per_eligible_host() -> None:
    fleet = snap(host("a"), host("b", counts={"exp": 1}), host("c", availability="cordoned"),
                 host("d", availability="draining"), host("e", state="down"), host("f", "linux/riscv64"),
                 host("g", cpu=0.1))
    p = plan_global(req("exp", reservations=Resources(0.5, MiB)), fleet, 7)
    assert [(x.slot, x.host_id) for x in p.placements] == [(7, "a")]
    assert p.eligible == {"a", "b", "c", "g"}  # c (cordoned) keeps what it runs
    assert p.reason == "1 instance not placed: 1 host is cordoned, 1 host is down, 1 host is draining, " \
                       "1 host is linux/riscv64 (no build), 1 host lacks resources (cpu: need 0.5, most free 0.1)"


# -- scores ----------------------------------------------------------------------------------


def test_spread_fewest_of_the_service_then_fewest_overall() -> None:
    fleet = snap(host("a", counts={"web": 1}), host("b", counts={"x": 5}), host("c", counts={"x": 1}))
    p = plan(req(), fleet, [2, 3, 4])
    # level 0: c (1 instance overall) before b (5); level 1: a (1 overall) before c (now 2) and b
    assert [x.host_id for x in p.placements] == ["c", "b", "a"]


def test_binpack_fills_the_fullest_host_first() -> None:
    fleet = snap(host("a", cpu=4, alloc=Resources(1, 0)), host("b", cpu=4, alloc=Resources(2, 0)), host("c"))
    p = plan(req(strategy="binpack", reservations=Resources(1, 0)), fleet, [1, 2, 3, 4])
    assert [x.host_id for x in p.placements] == ["b", "b", "a", "a"]


def test_preferences_spread_over_label_values_first() -> None:
    fleet = snap(host("e1", zone="edge"), *(host(f"c{i}", zone="cloud") for i in range(5)), host("n"))
    p = plan(req(preferences=("node.labels.zone",)), fleet, range(1, 10))
    by_zone = Counter({"e1": "edge", "n": None}.get(x.host_id, "cloud") for x in p.placements)
    assert by_zone == {"edge": 3, "cloud": 3, None: 3}  # hosts without the label are one more value


def test_preferences_count_instances_already_running() -> None:
    fleet = snap(host("e1", zone="edge", counts={"web": 2}), host("c1", zone="cloud"))
    assert where(plan(req(preferences=("node.labels.zone",)), fleet, [3, 4])) == {"c1": 2}


def test_image_locality_among_equals() -> None:
    fleet = snap(host("a"), host("b", images=["sha256:arm"]), host("c", "linux/amd64", images=["sha256:arm"]))
    p = plan(req(digests={"linux/arm64": "sha256:arm", "linux/amd64": "sha256:x86"}), fleet, [1])
    assert [(x.host_id, x.digest) for x in p.placements] == [("b", "sha256:arm")]


def test_emulated_hosts_only_after_native_ones_are_full() -> None:
    fleet = snap(host("x86", "linux/amd64", emulated=("linux/arm64",), cpu=8), host("pi", cpu=1))
    p = plan(req(image_platforms=image("linux/arm64"), allow_emulation=True, reservations=Resources(1, 0)),
             fleet, [1, 2])
    assert [(x.host_id, x.choice.kind if x.choice else "") for x in p.placements] == [("pi", "exact"),
                                                                                     ("x86", "emulated")]


def test_emulation_hint_without_opt_in() -> None:
    fleet = snap(host("x86", "linux/amd64", emulated=("linux/arm64",)))
    assert plan(req(image_platforms=image("linux/arm64")), fleet, [1]).reason == (
        "0 of 1 host can run it: image offers linux/arm64; 1 host is linux/amd64 (no build); "
        "linux/amd64 could run it emulated (allow emulation to use it)")


def test_ties_are_seeded_by_the_service_name() -> None:
    fleet = snap(*(host(f"h{i:02d}") for i in range(40)))
    firsts = {plan(req(f"svc{i}"), fleet, [1]).placements[0].host_id for i in range(20)}
    assert len(firsts) > 5  # services do not all start on the same host
    assert plan(req("svc1"), fleet, [1, 2]) == plan(req("svc1"), fleet, [1, 2])


def test_large_fleet_spread_is_exact_per_level() -> None:
    fleet = snap(*(host(f"h{i:04d}", cpu=None, counts={"other": i % 7}) for i in range(500)))
    p = plan(req(), fleet, range(1, 1201))
    counts = Counter(where(p))
    assert len(counts) == 500 and set(counts.values()) == {2, 3}


# -- explanations ------------------------------------------------------------------------------


def test_detail_groups_by_host_class() -> None:
    fleet = snap(host("a", cpu=1), host("b", cpu=1), host("g", "linux/amd64", cpu=1, gpus=1),
                 host("r", "linux/riscv64"))
    p = plan(req(reservations=Resources(2, 0)), fleet, [1])
    assert p.explanation is not None
    assert p.explanation.detail().splitlines() == [
        "0 of 4 hosts can run it: image offers linux/arm64, linux/amd64; 3 hosts lack resources "
        "(cpu: need 2, most free 1), 1 host is linux/riscv64 (no build)",
        "  by host class:",
        "    linux/arm64 (2 hosts): 2 hosts lack resources (cpu: need 2, most free 1)",
        "    linux/amd64 with nvidia.com/gpu (1 host): 1 host lacks resources (cpu: need 2, most free 1)",
        "    linux/riscv64 (1 host): 1 host is linux/riscv64 (no build)",
    ]


# -- plans, snapshots, revisions ---------------------------------------------------------------


def test_plan_carries_the_revision_and_never_mutates_the_snapshot() -> None:
    fleet = snap(host("a", counts={"x": 1}), host("b"), revision=41)
    before = Snapshot(tuple(fleet.hosts), fleet.revision)
    r = req(reservations=Resources(1, GiB), ports=((80, "tcp"),))
    p = plan(r, fleet, [1, 2])
    assert p.revision == 41 and fleet == before
    after = apply_plan(fleet, r, p)
    assert after.revision == 42 and fleet == before
    a = {h.id: h for h in after.hosts}
    assert a["b"].allocated == Resources(1, GiB) and a["b"].ports_in_use == {(80, "tcp")}
    assert a["a"].service_counts == {"x": 1, "web": 1} and a["a"].instances == 2
    with pytest.raises(StalePlan):
        apply_plan(after, r, p)


def test_derived_snapshots_see_earlier_plans() -> None:
    s = snap(host("a", cpu=2), host("b", cpu=2))
    r = req(reservations=Resources(1, 0))
    for _ in range(2):
        s = apply_plan(s, r, plan(r, s, [1, 2]))
    assert plan(r, s, [1]).reason == "1 replica not placed: 2 hosts lack resources (cpu: need 1, most free 0)"
    relabeled = s.with_hosts({"a": HostSnapshot(**{**{f: getattr(s.hosts[0], f) for f in (
        "id", "hostname", "platforms", "capacity", "allocated", "service_counts")}, "labels": {"zone": "x"}})})
    assert relabeled.revision == s.revision + 1
    assert plan(req("z", constraints=["node.labels.zone==x"]), relabeled, [1]).placements[0].host_id == "a"


def test_plans_do_not_depend_on_host_order() -> None:
    hosts = [host(f"h{i}", zone=f"z{i % 3}", counts={"web": i % 2}, cpu=1 + i % 4) for i in range(30)]
    r = req(reservations=Resources(1, 0), preferences=("node.labels.zone",))
    a = plan(r, snap(*hosts), range(1, 40))
    b = plan(r, snap(*reversed(hosts)), range(1, 40))
    assert a == b


# -- parsing and validation --------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("service==db", Affinity("service", "db")),
    ("service!=db", Affinity("service", "db", anti=True)),
    ("soft:service!=db", Affinity("service", "db", anti=True, hard=False)),
    ("node.labels.zone==edge", Affinity("label", "node.labels.zone==edge")),
    ("soft: engine.labels.gpu!=yes", Affinity("label", "engine.labels.gpu==yes", anti=True, hard=False)),
])
def test_parse_affinity(text: str, expected: Affinity) -> None:
    assert parse_affinity(text) == expected
    assert parse_affinity(str(expected)) == expected


@pytest.mark.parametrize("value, expected", [
    (1024, 1024), ("512Mi", 512 * MiB), ("512m", 512 * MiB), ("1g", GiB), ("1.5GiB", 3 * GiB // 2), ("64", 64),
])
def test_parse_memory(value: Any, expected: int) -> None:
    assert parse_memory(value) == expected


def test_parse_resources_and_preferences() -> None:
    assert parse_resources({"cpu": "500m", "memory": "1Gi", "generic": ["nvidia.com/gpu=1"]}) == \
        Resources(0.5, GiB, {GPU: 1})
    assert parse_preference("spread=node.labels.zone") == "node.labels.zone"
    with pytest.raises(SpecError, match="cpu"):
        parse_resources({"cpu": "lots"})
    with pytest.raises(SpecError, match="placement preference"):
        parse_preference("binpack=node.labels.zone")


@pytest.mark.parametrize("spec, fragment", [
    ({"constraints": ["node.labels.a==x", "node.labels.a==y"]}, "node.labels.a==x contradicts node.labels.a==y"),
    ({"constraints": ["node.platform.arch==arm64", "node.platform.arch==amd64"]}, "contradicts"),
    ({"constraints": ["node.platform==linux/arm64/v8", "node.platform.arch!=arm64"]},
     "node.platform==linux/arm64/v8 contradicts node.platform.arch!=arm64"),
    ({"constraints": ["node.role==manager", "node.role!=manager"]}, "contradicts"),
    ({"constraints": ["node.colour==red"]}, "unknown key"),
    ({"constraints": ["node.labels.zone=edge"]}, "expected KEY==VALUE"),
    ({"affinities": ["service==db", "service!=db"]}, "service==db contradicts service!=db"),
    ({"name": "web", "affinities": ["service==web"]}, "affinity to itself"),
    ({"affinities": ["nearby db"]}, "invalid affinity"),
    ({"affinities": ["node.labels.zone==edge"], "constraints": ["node.labels.zone==cloud"]}, "contradicts"),
    ({"preferences": ["spread=zone"]}, "invalid placement preference"),
    ({"strategy": "random"}, "invalid strategy"),
    ({"max_replicas_per_node": 0}, "max_replicas_per_node"),
    ({"reservations": {"gpu": 1}}, "unknown reservation 'gpu'"),
    ({"ports": [{"published": 80}, {"published": 80, "protocol": "tcp"}]}, "published twice"),
])
def test_validate_refuses_bad_specs(spec: dict[str, Any], fragment: str) -> None:
    errors = validate(spec)
    assert any(fragment in e for e in errors), errors


def test_validate_accepts_a_full_spec() -> None:
    spec = {"name": "web", "constraints": ["node.labels.zone!=cloud", "engine.labels.storage==ssd"],
            "reservations": {"cpu": 0.5, "memory": "256Mi", "generic": {GPU: 1}},
            "affinities": ["service!=db", "soft:node.labels.zone==edge"], "preferences": ["spread=node.labels.zone"],
            "strategy": "binpack", "max_replicas_per_node": 2, "ports": [{"published": 80, "target": 80}]}
    assert validate(spec) == []
    r = request_from_spec("web", spec, ["linux/arm64"], {"linux/arm64": "sha256:a"})
    assert r.reservations == Resources(0.5, 256 * MiB, {GPU: 1}) and r.ports == ((80, "tcp"),)
    assert r.strategy == "binpack" and r.max_replicas_per_node == 2 and r.preferences == ("node.labels.zone",)
    assert r.one_per_host and r.image_platforms == image("linux/arm64")


def test_validate_reservations_against_the_fleet() -> None:
    fleet = snap(host("pi", cpu=4, mem=4 * GiB), host("vm", "linux/amd64", cpu=16, mem=64 * GiB, gpus=2))
    assert validate({"reservations": {"cpu": 8}}, fleet) == []
    assert validate({"reservations": {"cpu": 8}, "constraints": ["node.platform.arch==arm64"]}, fleet) == [
        "reservation cpu=8 exceeds every matching host: the largest has 4 CPUs"]
    assert validate({"reservations": {"memory": "128Gi", "generic": {GPU: 4, "fpga": 1}}}, fleet) == [
        "reservation memory=128 GiB exceeds every host: the largest has 64 GiB",
        "reservation fpga=1 exceeds every host: none offers fpga",
        "reservation nvidia.com/gpu=4 exceeds every host: the largest offers 2"]


def test_request_from_spec_lists_every_error() -> None:
    with pytest.raises(SpecError) as info:
        request_from_spec("web", {"constraints": ["x==1"], "reservations": {"cpu": -1}})
    assert len(info.value.errors) == 2


@pytest.mark.parametrize("exprs, n", [
    (["node.labels.a==x", "node.labels.a==x"], 0),
    (["node.labels.a==x", "node.labels.b==y"], 0),
    (["node.labels.a!=x", "node.labels.a!=y"], 0),
    (["node.platform==linux/arm64/v8", "node.platform==linux/arm64"], 0),
    (["node.platform==linux/arm/v7", "node.platform.arch==arm", "node.platform.os==linux"], 0),
    (["node.platform==linux/arm/v7", "node.platform.os==windows"], 1),
    (["node.id==a", "node.id==b"], 1),
    (["engine.labels.x==1", "engine.labels.x!=1"], 1),
])
def test_contradictions(exprs: list[str], n: int) -> None:
    assert len(cons.contradictions([cons.parse(e) for e in exprs])) == n


@pytest.mark.parametrize("expr, expected", [
    ("node.role==manager", True), ("node.role!=worker", True), ("engine.labels.storage==ssd", True),
    ("engine.labels.storage==sd", False), ("engine.labels.gpu!=yes", True), ("node.labels.storage==ssd", False),
])
def test_new_constraint_keys(expr: str, expected: bool) -> None:
    h = host("a", role="manager", engine={"storage": "ssd"})
    assert cons.parse(expr).matches(h.facts()) is expected
