"""Placement constraints in Docker Swarm's syntax.

    node.id==ID            node.hostname==NAME      node.role==manager|worker
    node.labels.KEY==VALUE     engine.labels.KEY==VALUE
    node.platform.os==linux    node.platform.arch==arm64
    node.platform==linux/arm/v7    (Corral's variant-aware form; arm64/v8 == arm64)

Each may use ``!=`` instead of ``==``.  Parsing happens at submit time so a
malformed expression is refused before anything is stored, and
:func:`contradictions` finds sets that no host can ever satisfy
(``node.labels.a==x`` with ``node.labels.a==y``, ``node.platform.arch==arm64``
with ``node.platform==linux/amd64``).

Keys split in two kinds for the scheduler: :data:`HOST_KEYS` (``node.id``,
``node.hostname``) name one host; every other key depends only on facts that
many hosts share, so the scheduler evaluates those once per host class.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from corral.platforms import Platform, PlatformError

_EXPR = re.compile(r"^\s*([A-Za-z0-9_.\-/]+)\s*(==|!=)\s*(.+?)\s*$")
_FIXED_KEYS = ("node.id", "node.hostname", "node.role", "node.platform.os", "node.platform.arch",
               "node.platform")
_PREFIXES = ("node.labels.", "engine.labels.")
HOST_KEYS = frozenset({"node.id", "node.hostname"})


class ConstraintError(ValueError):
    pass


@dataclass(frozen=True)
class HostFacts:
    """What constraints can see of a host."""

    id: str
    hostname: str
    platform: str
    labels: Mapping[str, str]
    role: str = "worker"
    engine_labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Constraint:
    key: str
    op: str
    value: str

    def __str__(self) -> str:
        return f"{self.key}{self.op}{self.value}"

    @property
    def per_host(self) -> bool:
        """True for keys that name a single host (node.id, node.hostname)."""
        return self.key in HOST_KEYS

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
    prefix = next((p for p in _PREFIXES if key.startswith(p)), None)
    if prefix is not None:
        if len(key) == len(prefix):
            raise ConstraintError(f"invalid constraint {expr!r}: label name missing")
    elif key not in _FIXED_KEYS:
        raise ConstraintError(
            f"invalid constraint {expr!r}: unknown key {key!r} "
            f"(known: {', '.join(_FIXED_KEYS)}, node.labels.<name>, engine.labels.<name>)"
        )
    if key == "node.platform":
        try:
            Platform.parse(value)
        except PlatformError as exc:
            raise ConstraintError(f"invalid constraint {expr!r}: {exc}") from None
    return Constraint(key, op, value)


def label_key(key: str) -> str | None:
    """``node.labels.zone`` -> ``zone`` (and engine labels alike); None for other keys."""
    for p in _PREFIXES:
        if key.startswith(p) and len(key) > len(p):
            return key[len(p):]
    return None


def lookup(key: str, host: HostFacts) -> str | None:
    """The value a host has for a constraint key (None: the host has no such label)."""
    return _lookup(key, host)


def _lookup(key: str, host: HostFacts) -> str | None:
    if key.startswith("node.labels."):
        return host.labels.get(key[len("node.labels."):])
    if key.startswith("engine.labels."):
        return host.engine_labels.get(key[len("engine.labels."):])
    if key == "node.id":
        return host.id
    if key == "node.hostname":
        return host.hostname
    if key == "node.role":
        return host.role
    try:
        plat = Platform.parse(host.platform)
    except PlatformError:
        return None
    if key == "node.platform.os":
        return plat.os
    if key == "node.platform.arch":
        return plat.architecture
    return str(plat)


def _norm(c: Constraint) -> str:
    return str(Platform.parse(c.value)) if c.key == "node.platform" else c.value


def contradictions(constraints: Iterable[Constraint]) -> list[str]:
    """Pairs of constraints that no host can satisfy together, in words.

    Same key with two different ``==`` values; ``K==v`` with ``K!=v``; and
    ``node.platform==P`` against ``node.platform.os``/``node.platform.arch``.
    """
    errors: list[str] = []
    eq: dict[str, Constraint] = {}
    ne: dict[tuple[str, str], Constraint] = {}
    for c in constraints:
        v = _norm(c)
        if c.op == "==":
            other = eq.get(c.key)
            if other is not None and _norm(other) != v:
                errors.append(f"{other} contradicts {c}: no host has two values for {c.key}")
            eq.setdefault(c.key, c)
            if (c.key, v) in ne:
                errors.append(f"{c} contradicts {ne[(c.key, v)]}")
        else:
            ne.setdefault((c.key, v), c)
            if c.key in eq and _norm(eq[c.key]) == v:
                errors.append(f"{eq[c.key]} contradicts {c}")
    plat = eq.get("node.platform")
    if plat is not None:
        p = Platform.parse(plat.value)
        for key, part in (("node.platform.os", p.os), ("node.platform.arch", p.architecture)):
            other = eq.get(key)
            if other is not None and other.value != part:
                errors.append(f"{plat} contradicts {other}")
            bad = ne.get((key, part))
            if bad is not None:
                errors.append(f"{plat} contradicts {bad}")
    return errors
