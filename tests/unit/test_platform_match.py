"""The platform compatibility rules, as a table."""

from __future__ import annotations

import pytest

from corral.platforms import Platform
from corral.scheduler.platforms import HostPlatforms, choose, host_platforms, runs_emulated, runs_natively

P = Platform.parse


def host(native: str, *emulated: str, arm32: bool = False) -> HostPlatforms:
    hp = host_platforms(native, emulated, arm32)
    assert hp is not None
    return hp


@pytest.mark.parametrize("host_p, arm32, image_p, expected", [
    ("linux/amd64", False, "linux/amd64", "exact"),
    ("linux/amd64", False, "linux/386", "compatible"),
    ("linux/amd64", False, "linux/arm64", None),
    ("linux/386", False, "linux/amd64", None),
    ("linux/arm64", False, "linux/arm64", "exact"),
    ("linux/arm64", False, "linux/arm64/v8", "exact"),
    ("linux/arm64", False, "linux/arm/v7", None),
    ("linux/arm64", True, "linux/arm/v7", "compatible"),
    ("linux/arm64", True, "linux/arm/v6", "compatible"),
    ("linux/arm64", False, "linux/arm/v6", None),
    ("linux/arm64", True, "linux/amd64", None),
    ("linux/arm/v7", False, "linux/arm/v7", "exact"),
    ("linux/arm/v7", False, "linux/arm", "exact"),
    ("linux/arm/v7", False, "linux/arm/v6", "compatible"),
    ("linux/arm/v7", False, "linux/arm/v5", "compatible"),
    ("linux/arm/v7", False, "linux/arm64", None),
    ("linux/arm/v6", False, "linux/arm/v7", None),
    ("linux/arm/v6", False, "linux/arm/v5", "compatible"),
    ("linux/amd64", False, "windows/amd64", None),
    ("linux/riscv64", False, "linux/riscv64", "exact"),
])
def test_native_compatibility(host_p: str, arm32: bool, image_p: str, expected: str | None) -> None:
    assert runs_natively(host(host_p, arm32=arm32), P(image_p)) == expected


@pytest.mark.parametrize("emulated, image_p, expected", [
    (("linux/arm64",), "linux/arm64", True),
    (("linux/arm/v7",), "linux/arm/v6", True),
    (("linux/arm/v6",), "linux/arm/v7", False),
    ((), "linux/arm64", False),
    (("linux/arm64",), "linux/riscv64", False),
])
def test_emulation(emulated: tuple[str, ...], image_p: str, expected: bool) -> None:
    assert runs_emulated(host("linux/amd64", *emulated), P(image_p)) is expected


def offered(*ps: str) -> list[Platform]:
    return [P(p) for p in ps]


def test_exact_beats_compatible() -> None:
    c = choose(offered("linux/arm/v7", "linux/arm64"), host("linux/arm64", arm32=True), False)
    assert c is not None and str(c.platform) == "linux/arm64" and c.kind == "exact"


def test_highest_compatible_arm_variant_wins() -> None:
    c = choose(offered("linux/arm/v5", "linux/arm/v7", "linux/arm/v6"), host("linux/arm64", arm32=True), False)
    assert c is not None and str(c.platform) == "linux/arm/v7" and c.kind == "compatible"


def test_emulation_only_when_allowed_and_no_native_build() -> None:
    h = host("linux/amd64", "linux/arm64", "linux/arm/v7")
    assert choose(offered("linux/arm64"), h, False) is None
    c = choose(offered("linux/arm64"), h, True)
    assert c is not None and c.kind == "emulated"
    c = choose(offered("linux/arm64", "linux/amd64"), h, True)
    assert c is not None and c.kind == "exact" and str(c.platform) == "linux/amd64"


def test_unknown_host_platform() -> None:
    assert host_platforms("", ()) is None
    assert host_platforms("nonsense", ()) is None
