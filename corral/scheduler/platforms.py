"""Which image build a host can run, and how: natively, compatibly, or only emulated.

The rules, written once (tested as a table in tests/unit/test_platform_match.py):

- exact: the host's own platform (``linux/arm64`` runs ``linux/arm64``).
- compatible natively:
  * amd64 runs 386;
  * arm/v7 runs arm/v6 and arm/v5, arm/v6 runs arm/v5 (older ARM ISAs are subsets);
  * arm64 runs arm/v7, arm/v6 and arm/v5 only where the host reports that it executes
    32-bit ARM code (many ARMv8 server chips cannot: no AArch32 at EL0).
- emulated: a platform the host can only run through qemu (binfmt_misc).  An emulated
  arm/vN entry covers the lower variants too (qemu-arm runs them all).

A host gets the best build the image offers: exact, then compatible (highest ARM variant
first), then emulated, which only counts when the service allows emulation.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from corral.platforms import Platform, PlatformError

Kind = Literal["exact", "compatible", "emulated"]

_ARM_ORDER = {"v5": 5, "v6": 6, "v7": 7, "v8": 8}


@dataclass(frozen=True)
class HostPlatforms:
    native: Platform
    emulated: frozenset[Platform] = frozenset()
    arm32: bool = False  # an arm64 host that executes 32-bit ARM code


@dataclass(frozen=True)
class Choice:
    platform: Platform
    kind: Kind


def host_platforms(native: str, emulated: Iterable[str] = (), arm32: bool = False) -> HostPlatforms | None:
    """Parse a host's reported platforms; None when its own platform is unknown or malformed."""
    try:
        own = Platform.parse(native)
    except PlatformError:
        return None
    emu = set()
    for text in emulated:
        try:
            emu.add(Platform.parse(text))
        except PlatformError:
            continue
    return HostPlatforms(own, frozenset(emu), arm32)


def _arm_level(p: Platform) -> int:
    return _ARM_ORDER.get(p.variant, 0)


def runs_natively(host: HostPlatforms, image: Platform) -> Kind | None:
    own = host.native
    if image.os != own.os:
        return None
    if image == own:
        return "exact"
    if own.architecture == "amd64" and image.architecture == "386":
        return "compatible"
    if image.architecture == "arm":
        if own.architecture == "arm" and _arm_level(image) <= _arm_level(own):
            return "compatible"
        if own.architecture == "arm64" and host.arm32:
            return "compatible"
    return None


def runs_emulated(host: HostPlatforms, image: Platform) -> bool:
    if image in host.emulated:
        return True
    if image.architecture == "arm":
        return any(e.os == image.os and e.architecture == "arm" and _arm_level(image) <= _arm_level(e)
                   for e in host.emulated)
    return False


def choose(offered: Sequence[Platform], host: HostPlatforms, allow_emulation: bool) -> Choice | None:
    """The build this host should run, or None when it can run none of them."""
    native = [(p, kind) for p in offered if (kind := runs_natively(host, p)) is not None]
    exact = [p for p, kind in native if kind == "exact"]
    if exact:
        return Choice(exact[0], "exact")
    if native:
        best = max((p for p, _ in native), key=lambda p: (_arm_level(p), str(p)))
        return Choice(best, "compatible")
    if allow_emulation:
        emulated = sorted((p for p in offered if runs_emulated(host, p)), key=lambda p: (-_arm_level(p), str(p)))
        if emulated:
            return Choice(emulated[0], "emulated")
    return None
