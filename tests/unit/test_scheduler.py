"""Constraints and the spine's spread placement (pure code)."""

from __future__ import annotations

import pytest

from corral.scheduler import constraints as cons
from corral.scheduler.placement import HostView, PlacementResult, ServiceRequest, place_replicated


def place_spread(slots: list[int], hosts: list[HostView], constraints: list[cons.Constraint],
                 service_counts: dict[str, int], total_counts: dict[str, int]) -> PlacementResult:
    req = ServiceRequest(constraints=tuple(constraints))
    return place_replicated(slots, req, hosts, service_counts, total_counts)


def host(hid: str, platform: str = "linux/amd64", state: str = "ready", **labels: str) -> HostView:
    return HostView(cons.HostFacts(id=hid, hostname=f"host-{hid}", platform=platform, labels=labels), state)


@pytest.mark.parametrize("expr, platform, labels, expected", [
    ("node.labels.zone==edge", "linux/amd64", {"zone": "edge"}, True),
    ("node.labels.zone==edge", "linux/amd64", {"zone": "cloud"}, False),
    ("node.labels.zone==edge", "linux/amd64", {}, False),
    ("node.labels.zone!=edge", "linux/amd64", {}, True),
    ("node.labels.zone!=edge", "linux/amd64", {"zone": "edge"}, False),
    ("node.platform.arch==arm64", "linux/arm64", {}, True),
    ("node.platform.arch==arm64", "linux/arm/v7", {}, False),
    ("node.platform.arch==arm", "linux/arm/v7", {}, True),
    ("node.platform.os==linux", "linux/arm/v7", {}, True),
    ("node.platform==linux/arm/v7", "linux/arm/v7", {}, True),
    ("node.platform==linux/arm/v6", "linux/arm/v7", {}, False),
    ("node.platform==linux/arm64/v8", "linux/arm64", {}, True),
    ("node.platform!=linux/amd64", "linux/arm64", {}, True),
    ("node.hostname==host-a", "linux/amd64", {}, True),
    ("node.id==a", "linux/amd64", {}, True),
    ("node.id != a", "linux/amd64", {}, False),
])
def test_constraint_table(expr: str, platform: str, labels: dict[str, str], expected: bool) -> None:
    assert cons.parse(expr).matches(host("a", platform, **labels).facts) is expected


@pytest.mark.parametrize("expr, fragment", [
    ("node.labels.zone=edge", "expected KEY==VALUE"),
    ("zone==edge", "unknown key"),
    ("node.labels.==x", "label name missing"),
    ("node.platform==linux", "invalid platform"),
    ("", "expected KEY==VALUE"),
])
def test_bad_constraints(expr: str, fragment: str) -> None:
    with pytest.raises(cons.ConstraintError, match=fragment):
        cons.parse(expr)


def test_spread_is_even_and_deterministic() -> None:
    hosts = [host(h) for h in "abc"]
    result = place_spread(list(range(1, 8)), hosts, [], {}, {})
    counts = {h: sum(1 for p in result.placements if p.host_id == h) for h in "abc"}
    assert sorted(counts.values()) == [2, 2, 3] and result.reason is None
    assert result == place_spread(list(range(1, 8)), hosts, [], {}, {})


def test_spread_fills_the_emptiest_hosts_first() -> None:
    hosts = [host(h) for h in "abc"]
    result = place_spread([4, 5], hosts, [], {"a": 2, "b": 1}, {"c": 9})
    assert [p.host_id for p in result.placements] == ["c", "b"]


def test_down_and_unmatched_hosts_explained() -> None:
    hosts = [host("a", state="down"), host("b", zone="cloud"), host("c", zone="cloud")]
    result = place_spread([1], hosts, [cons.parse("node.labels.zone==edge")], {}, {})
    assert result.placements == []
    assert result.reason == ("0 of 3 hosts can run it: 2 hosts do not match constraint node.labels.zone==edge, "
                             "1 host is down")


def test_no_hosts() -> None:
    assert place_spread([1], [], [], {}, {}).reason == "no hosts have joined"
    assert place_spread([], [], [], {}, {}).reason is None


def test_scheduler_is_pure() -> None:
    """No I/O, no clock, no store: checked on the source, as the import-linter contract does in CI."""
    import ast
    import pathlib

    import corral.scheduler

    banned = {"time", "datetime", "os", "socket", "subprocess", "random", "sqlalchemy", "httpx", "corral.store",
              "corral.api", "corral.agent", "corral.controllers"}
    for path in pathlib.Path(corral.scheduler.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                assert not any(name == b or name.startswith(b + ".") for b in banned), f"{path.name} imports {name}"
