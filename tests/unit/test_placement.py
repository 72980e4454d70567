"""Placement over platforms, constraints and modes, with explanations (pure)."""

from __future__ import annotations

from corral.platforms import Platform
from corral.scheduler import constraints as cons
from corral.scheduler.placement import HostView, ServiceRequest, feasible, place_global, place_replicated
from corral.scheduler.platforms import host_platforms


def host(hid: str, platform: str = "linux/amd64", state: str = "ready", emulated: tuple[str, ...] = (),
         arm32: bool = False, **labels: str) -> HostView:
    return HostView(cons.HostFacts(hid, f"h-{hid}", platform, labels), state,
                    host_platforms(platform, emulated, arm32))


def image(*ps: str) -> tuple[Platform, ...]:
    return tuple(Platform.parse(p) for p in ps)


FLEET = [host("x86", "linux/amd64", emulated=("linux/arm64", "linux/arm/v7"), zone="cloud"),
         host("pi4", "linux/arm64", zone="edge"),
         host("pi3", "linux/arm/v7", zone="edge")]


def test_each_host_gets_its_own_build() -> None:
    req = ServiceRequest(image_platforms=image("linux/amd64", "linux/arm64", "linux/arm/v7"), mode="global")
    result, hosts = place_global(req, FLEET, set(), 1)
    got = {p.host_id: (str(p.choice.platform), p.choice.kind) for p in result.placements if p.choice}
    assert got == {"x86": ("linux/amd64", "exact"), "pi4": ("linux/arm64", "exact"),
                   "pi3": ("linux/arm/v7", "exact")}
    assert [p.slot for p in result.placements] == [1, 2, 3] and hosts == {"x86", "pi4", "pi3"}


def test_arm64_only_image_lands_only_on_arm64() -> None:
    req = ServiceRequest(image_platforms=image("linux/arm64"))
    result = place_replicated([1, 2], req, FLEET, {}, {})
    assert {p.host_id for p in result.placements} == {"pi4"}


def test_emulation_is_opt_in_and_only_without_native_hosts() -> None:
    fleet = [FLEET[0], FLEET[2]]  # no arm64 host
    req = ServiceRequest(image_platforms=image("linux/arm64"))
    fits, reason = feasible(req, fleet)
    assert fits == []
    assert reason == ("0 of 2 hosts can run it: image offers linux/arm64; 1 host is linux/amd64 (no build), "
                      "1 host is linux/arm/v7 (no build); linux/amd64 could run it emulated "
                      "(allow emulation to use it)")
    fits, reason = feasible(ServiceRequest(image_platforms=image("linux/arm64"), allow_emulation=True), fleet)
    assert [(f.host_id, f.choice.kind if f.choice else None) for f in fits] == [("x86", "emulated")]
    # with a native arm64 host present, the emulated one is not used
    fits, _ = feasible(ServiceRequest(image_platforms=image("linux/arm64"), allow_emulation=True), FLEET)
    assert [f.host_id for f in fits] == ["pi4"]


def test_the_example_explanation() -> None:
    fleet = [host("a", "linux/arm/v7", zone="edge"), host("b", zone="cloud"), host("c", zone="cloud")]
    req = ServiceRequest(constraints=(cons.parse("node.labels.zone==edge"),),
                         image_platforms=image("linux/arm64", "linux/amd64"))
    _, reason = feasible(req, fleet)
    assert reason == ("0 of 3 hosts can run it: image offers linux/arm64, linux/amd64; 2 hosts do not match "
                      "constraint node.labels.zone==edge, 1 host is linux/arm/v7 (no build)")


def test_arm64_with_32bit_support_takes_armv7_builds() -> None:
    fleet = [host("srv", "linux/arm64"), host("pi", "linux/arm64", arm32=True)]
    result = place_replicated([1], ServiceRequest(image_platforms=image("linux/arm/v7")), fleet, {}, {})
    assert [(p.host_id, p.choice.kind if p.choice else "") for p in result.placements] == [("pi", "compatible")]


def test_unknown_image_platforms_place_anywhere_ready() -> None:
    fleet = [*FLEET, host("gone", state="down")]
    result = place_replicated([1, 2, 3, 4], ServiceRequest(), fleet, {}, {})
    assert sorted(p.host_id for p in result.placements) == ["pi3", "pi3", "pi4", "x86"]  # ties go to the lowest id


def test_global_skips_hosts_that_have_one_and_explains_none() -> None:
    req = ServiceRequest(image_platforms=image("linux/amd64"), mode="global")
    result, hosts = place_global(req, FLEET, {"x86"}, 2)
    assert result.placements == [] and hosts == {"x86"}
    result, hosts = place_global(ServiceRequest(image_platforms=image("linux/riscv64")), FLEET, set(), 1)
    assert hosts == set() and result.reason and "image offers linux/riscv64" in result.reason
