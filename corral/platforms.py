"""OCI platform strings and the `uname -m` mapping.

Everything in Corral names a platform the way the OCI image index does:
``linux/amd64``, ``linux/arm64``, ``linux/arm/v7``.  This module is the one
place that parses, normalises and prints them.  Stdlib only: the agent uses it.
"""

from __future__ import annotations

from dataclasses import dataclass

# uname -m -> (architecture, variant)
_UNAME: dict[str, tuple[str, str]] = {
    "x86_64": ("amd64", ""),
    "amd64": ("amd64", ""),
    "i386": ("386", ""),
    "i486": ("386", ""),
    "i586": ("386", ""),
    "i686": ("386", ""),
    "aarch64": ("arm64", ""),
    "arm64": ("arm64", ""),
    "armv8l": ("arm", "v7"),  # 32-bit userland on an ARMv8 core
    "armv7l": ("arm", "v7"),
    "armv7": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "armv5tel": ("arm", "v5"),
    "riscv64": ("riscv64", ""),
    "ppc64le": ("ppc64le", ""),
    "s390x": ("s390x", ""),
    "mips64": ("mips64", ""),
}

# Architectures as Docker's `docker version` / `docker info` report them, to OCI.
_ENGINE_ARCH: dict[str, str] = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "arm": "arm",
}


class PlatformError(ValueError):
    """A platform string that is not ``os/arch[/variant]``."""


@dataclass(frozen=True, order=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    @classmethod
    def parse(cls, text: str) -> Platform:
        parts = text.strip().lower().split("/")
        if len(parts) not in (2, 3) or not all(parts):
            raise PlatformError(f"invalid platform {text!r}: expected os/arch[/variant], e.g. linux/arm/v7")
        os_, arch = parts[0], parts[1]
        variant = parts[2] if len(parts) == 3 else ""
        return cls(os_, arch, variant).normalized()

    def normalized(self) -> Platform:
        """Apply the OCI conventions: arm64 is v8 by default, arm is v7 by default."""
        arch, variant = self.architecture, self.variant
        if arch == "aarch64":
            arch = "arm64"
        if arch in ("x86_64", "x86-64"):
            arch = "amd64"
        if arch == "arm64" and variant == "v8":
            variant = ""
        if arch == "arm" and not variant:
            variant = "v7"
        return Platform(self.os, arch, variant)

    def __str__(self) -> str:
        base = f"{self.os}/{self.architecture}"
        return f"{base}/{self.variant}" if self.variant else base


def from_uname(machine: str, os_name: str = "linux") -> Platform:
    """Map ``uname -m`` (x86_64, aarch64, armv7l, ...) to an OCI platform."""
    arch, variant = _UNAME.get(machine.strip().lower(), (machine.strip().lower(), ""))
    return Platform(os_name.lower(), arch, variant).normalized()


def from_engine(arch: str, os_name: str = "linux") -> Platform:
    """Map the Arch field of the Docker Engine's version report to an OCI platform."""
    machine = arch.strip().lower()
    if machine in _UNAME:
        return from_uname(machine, os_name)
    return Platform(os_name.lower(), _ENGINE_ARCH.get(machine, machine), "").normalized()
