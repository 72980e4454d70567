"""Placement constraints in Docker Swarm's syntax.

    node.id==ID            node.hostname==NAME      node.labels.KEY==VALUE
    node.platform.os==linux    node.platform.arch==arm64
    node.platform==linux/arm/v7    (Corral's variant-aware form; arm64/v8 == arm64)

Each may use ``!=`` instead of ``==``.  Parsing happens at submit time so a
malformed expression is refused before anything is stored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from corral.platforms import Platform, PlatformError

_EXPR = re.compile(r"^\s*([A-Za-z0-9_.\-/]+)\s*(==|!=)\s*(.+?)\s*$")
_FIXED_KEYS = ("node.id", "node.hostname", "node.platform.os", "node.platform.arch", "node.platform")


class ConstraintError(ValueError):
    pass


@dataclass(frozen=True)
class HostFacts:
    """What constraints can see of a host."""

    id: str
    hostname: str
    platform: str
    labels: Mapping[str, str]


@dataclass(frozen=True)
class Constraint:
    key: str
    op: str
    value: str

    def __str__(self) -> str:
        return f"{self.key}{self.op}{self.value}"

    def matches(self, host: HostFacts) -> bool:
        actual = _lookup(self.key, host)
        if self.key == "node.platform" and actual is not None:
            equal = actual == str(Platform.parse(self.value))
        else:
            equal = actual is not None and actual == self.value
        return equal if self.op == "==" else not equal


def parse(expr: str) -> Constraint:
    m = _EXPR.match(expr)
    if not m:
        raise ConstraintError(f"invalid constraint {expr!r}: expected KEY==VALUE or KEY!=VALUE")
    key, op, value = m.groups()
    if key.startswith("node.labels."):
        if len(key) == len("node.labels."):
            raise ConstraintError(f"invalid constraint {expr!r}: label name missing")
    elif key not in _FIXED_KEYS:
        raise ConstraintError(
            f"invalid constraint {expr!r}: unknown key {key!r} "
            f"(known: {', '.join(_FIXED_KEYS)}, node.labels.<name>)"
        )
    if key == "node.platform":
        try:
            Platform.parse(value)
        except PlatformError as exc:
            raise ConstraintError(f"invalid constraint {expr!r}: {exc}") from None
    return Constraint(key, op, value)


def _lookup(key: str, host: HostFacts) -> str | None:
    if key.startswith("node.labels."):
        return host.labels.get(key[len("node.labels."):])
    if key == "node.id":
        return host.id
    if key == "node.hostname":
        return host.hostname
    try:
        plat = Platform.parse(host.platform)
    except PlatformError:
        return None
    if key == "node.platform.os":
        return plat.os
    if key == "node.platform.arch":
        return plat.architecture
    return str(plat)
