"""IPAM: the cluster CIDR, its host subnets, allocation and changes (pure code)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.net.ipam import (
    DEFAULT_CLUSTER_CIDR,
    DEFAULT_HOST_PREFIX,
    ClusterNet,
    IpamError,
    allocate,
    check_change,
    check_no_overlap,
    gateway,
    overlay_address,
    parse_cluster,
)

# ---------------------------------------------------------------- parse_cluster


def test_defaults() -> None:
    assert DEFAULT_CLUSTER_CIDR == "10.42.0.0/16" and DEFAULT_HOST_PREFIX == 24
    c = parse_cluster()
    assert c == ClusterNet(ipaddress.IPv4Network("10.42.0.0/16"), 24)
    assert c.cidr == "10.42.0.0/16" and c.host_prefix == 24 and c.capacity == 256
    assert str(c) == "10.42.0.0/16 (/24 per host)"
    subnets = list(c.subnets())
    assert len(subnets) == 256
    assert subnets[:2] == ["10.42.0.0/24", "10.42.1.0/24"] and subnets[-1] == "10.42.255.0/24"


@pytest.mark.parametrize("cidr, prefix, capacity", [
    ("10.42.0.0/16", 24, 256), ("10.0.0.0/8", 16, 256), ("10.42.0.0/16", 17, 2),
    ("192.168.0.0/24", 29, 32), ("10.42.0.0/28", 29, 2), (" 10.42.0.0/16 ", 20, 16),
    ("10.0.0.0/8", 29, 1 << 21),
])
def test_capacity(cidr: str, prefix: int, capacity: int) -> None:
    assert parse_cluster(cidr, prefix).capacity == capacity


@pytest.mark.parametrize("cidr, prefix, message", [
    ("10.42.1.0/16", 24, "10.42.1.0/16 has host bits set; did you mean 10.42.0.0/16?"),
    ("10.42.0.1/24", 26, "10.42.0.1/24 has host bits set; did you mean 10.42.0.0/24?"),
    ("fd00::/48", 64, "the cluster CIDR must be IPv4: fd00::/48 is IPv6"),
    ("10.42.0.0/24", 24, "a /24 cluster cannot hold /24 host subnets; it needs at least 2"),
    ("10.42.0.0/16", 12, "a /16 cluster cannot hold /12 host subnets; it needs at least 2"),
    ("10.42.0.0/29", 29, "a /29 cluster cannot hold /29 host subnets; it needs at least 2"),
    ("10.42.0.0/16", 30, "/30 host subnets are too small: a host subnet needs at least 8 "
                         "addresses (/29: the gateway and 5 containers)"),
    ("10.42.0.0", 24, "the cluster CIDR '10.42.0.0' has no prefix length"),
    ("ten.42/16", 24, "the cluster CIDR 'ten.42/16' is not a network"),
    ("10.42.0.0/33", 24, "is not a network"),
    ("127.0.0.0/16", 24, "127.0.0.0/16 overlaps loopback (127.0.0.0/8)"),
    ("169.254.0.0/16", 24, "overlaps link-local (169.254.0.0/16)"),
    ("224.0.0.0/16", 24, "overlaps multicast (224.0.0.0/4)"),
    ("240.0.0.0/16", 24, "overlaps the reserved class E range"),
    ("0.0.0.0/0", 8, "overlaps 'this network' (0.0.0.0/8) and loopback"),
])
def test_parse_errors(cidr: str, prefix: int, message: str) -> None:
    with pytest.raises(IpamError) as exc:
        parse_cluster(cidr, prefix)
    assert message in str(exc.value)


@pytest.mark.parametrize("bad", [True, "24", 24.0, None])
def test_host_prefix_must_be_an_int(bad: object) -> None:
    with pytest.raises(IpamError, match="the host prefix must be an integer such as 24"):
        parse_cluster("10.42.0.0/16", bad)  # type: ignore[arg-type]


def test_cidr_must_be_a_string() -> None:
    with pytest.raises(IpamError, match="must be a string"):
        parse_cluster(ipaddress.IPv4Network("10.42.0.0/16"))  # type: ignore[arg-type]


def test_is_an_ipam_error_a_value_error() -> None:
    assert issubclass(IpamError, ValueError)


def test_reserved_mapping_names_what_overlaps() -> None:
    with pytest.raises(IpamError) as exc:
        parse_cluster("172.17.0.0/16", 24, reserved={"docker0": "172.16.0.0/12"})
    assert str(exc.value) == "172.17.0.0/16 overlaps docker0 (172.16.0.0/12)"
    parse_cluster("10.42.0.0/16", 24, reserved={"docker0": "172.17.0.0/16",
                                                "eth0": "192.168.1.7/24"})


def test_reserved_list() -> None:
    with pytest.raises(IpamError) as exc:
        parse_cluster("10.0.0.0/8", 16, reserved=["172.17.0.0/16", "10.200.0.0/16"])
    assert str(exc.value) == "10.0.0.0/8 overlaps a reserved network (10.200.0.0/16)"
    parse_cluster("10.42.0.0/16", reserved=["172.17.0.0/16", "fd00::/8"])
    with pytest.raises(IpamError, match="overlaps a reserved network"):
        parse_cluster("10.42.0.0/16", reserved="10.42.7.0/24")  # one string is one network


def test_check_no_overlap() -> None:
    c = parse_cluster()
    check_no_overlap(c, {})
    check_no_overlap(c, {"docker0": "172.17.0.0/16", "v6": "fd00::/64", "lo": "127.0.0.1"})
    with pytest.raises(IpamError) as exc:
        check_no_overlap(c, {"docker0": "172.17.0.0/16", "eth0": "10.42.9.7/24",
                             "vpn": "10.0.0.0/8"})
    # an interface address stands for its network; every clash is named
    assert str(exc.value) == "10.42.0.0/16 overlaps eth0 (10.42.9.0/24) and vpn (10.0.0.0/8)"
    with pytest.raises(IpamError) as exc:
        check_no_overlap("172.20.0.0/16", {"docker0": "172.16.0.0/12", "x": "10.42.0.0/16"})
    assert str(exc.value) == "172.20.0.0/16 overlaps docker0 (172.16.0.0/12)"
    with pytest.raises(IpamError, match="eth1: 'nonsense' is not a network"):
        check_no_overlap(c, {"eth1": "nonsense"})
    with pytest.raises(IpamError, match="eth1: expected a network"):
        check_no_overlap(c, {"eth1": None})  # type: ignore[dict-item]


def test_cluster_net_checks_itself() -> None:
    with pytest.raises(TypeError, match="use parse_cluster"):
        ClusterNet("10.42.0.0/16", 24)  # type: ignore[arg-type]
    with pytest.raises(IpamError, match="cannot hold"):
        ClusterNet(ipaddress.IPv4Network("10.42.0.0/16"), 16)


def test_index_of_and_is_host_subnet() -> None:
    c = parse_cluster("10.42.0.0/16", 24)
    assert c.index_of("10.42.0.0/24") == 0 and c.index_of("10.42.255.0/24") == 255
    assert c.subnet(3) == "10.42.3.0/24" and c.is_host_subnet("10.42.3.0/24")
    for bad in ("10.43.0.0/24", "10.42.0.0/25", "10.42.0.0/23", "10.42.0.1/24", "junk",
                "fd00::/120", ""):
        assert c.index_of(bad) is None and not c.is_host_subnet(bad)
    with pytest.raises(IndexError):
        c.subnet(256)


# ---------------------------------------------------------------- allocate


def test_allocate_lowest_free_first_subnet_included() -> None:
    c = parse_cluster()
    assert allocate(c, []) == "10.42.0.0/24"
    assert allocate(c, ["10.42.0.0/24", "10.42.2.0/24"]) == "10.42.1.0/24"
    assert allocate(c, ["10.42.0.0/24", "10.42.1.0/24", "10.42.2.0/24"]) == "10.42.3.0/24"
    assert allocate(c, iter(["10.42.1.0/24"])) == "10.42.0.0/24"  # any iterable


def test_allocate_preferred() -> None:
    c = parse_cluster()
    taken = ["10.42.0.0/24", "10.42.1.0/24"]
    assert allocate(c, taken, preferred="10.42.7.0/24") == "10.42.7.0/24"
    # taken, outside, wrong prefix, host bits, malformed: the lowest free one instead
    for pref in ("10.42.1.0/24", "10.43.7.0/24", "10.42.7.0/25", "10.42.7.1/24", "junk"):
        assert allocate(c, taken, preferred=pref) == "10.42.2.0/24"


def test_allocate_other_shapes_block_what_they_touch() -> None:
    c = parse_cluster()
    assert allocate(c, ["10.42.0.0/23"]) == "10.42.2.0/24"  # from a bigger host prefix
    assert allocate(c, ["10.42.0.128/25"]) == "10.42.1.0/24"  # from a smaller one
    assert allocate(c, ["10.42.0.5/24"]) == "10.42.1.0/24"  # host bits: its network
    assert allocate(c, ["172.17.0.0/16", "fd00::/64"]) == "10.42.0.0/24"  # elsewhere: ignored
    with pytest.raises(IpamError, match="taken subnet: 'bogus' is not a network"):
        allocate(c, ["bogus"])


def test_allocate_full() -> None:
    c = parse_cluster()
    taken = list(c.subnets())
    with pytest.raises(IpamError) as exc:
        allocate(c, taken)
    assert str(exc.value) == "cluster 10.42.0.0/16 is full: all 256 /24 host subnets are taken"
    with pytest.raises(IpamError, match="is full"):
        allocate(c, ["10.0.0.0/8"], preferred="10.42.9.0/24")
    assert allocate(c, taken[:-1]) == "10.42.255.0/24"
    small = parse_cluster("192.168.5.0/28", 29)
    with pytest.raises(IpamError, match="cluster 192.168.5.0/28 is full: all 2 /29 host"):
        allocate(small, ["192.168.5.0/29", "192.168.5.8/29"])


def test_allocate_is_quick_on_a_huge_cluster() -> None:
    c = parse_cluster("10.0.0.0/8", 29)  # two million subnets
    taken = [c.subnet(i) for i in range(5000)]
    assert allocate(c, taken) == c.subnet(5000)
    assert allocate(c, ["10.0.0.0/9"]) == "10.128.0.0/29"


# ---------------------------------------------------------------- addresses


def test_gateway_and_overlay_address() -> None:
    assert gateway("10.42.3.0/24") == "10.42.3.1"
    assert gateway("10.42.0.0/24") == "10.42.0.1"
    assert gateway("10.42.3.8/29") == "10.42.3.9"
    assert overlay_address("10.42.3.0/24") == "10.42.3.1/32"
    with pytest.raises(IpamError, match="has host bits set; did you mean 10.42.3.0/24"):
        gateway("10.42.3.1/24")
    with pytest.raises(IpamError, match="subnet 10.42.3.0/31 has no room for a gateway"):
        gateway("10.42.3.0/31")
    with pytest.raises(IpamError, match="subnet fd00::/64 is IPv6; host subnets are IPv4"):
        gateway("fd00::/64")
    with pytest.raises(IpamError, match="is not a network"):
        overlay_address("nope")


# ---------------------------------------------------------------- check_change


def test_change_allowed() -> None:
    old = parse_cluster("10.42.0.0/16")
    held = ["10.42.0.0/24", "10.42.5.0/24"]
    check_change(old, old, held)
    check_change(old, parse_cluster("10.42.0.0/15"), held)  # grows around them
    check_change(old, parse_cluster("10.42.0.0/20"), held)  # shrinks, still holds them
    check_change(old, parse_cluster("10.99.0.0/16", 26), [])  # nobody holds anything


def test_change_refused_when_hosts_would_fall_outside() -> None:
    old = parse_cluster("10.42.0.0/16")
    with pytest.raises(IpamError) as exc:
        check_change(old, parse_cluster("10.43.0.0/16"), ["10.42.5.0/24", "10.42.0.0/24"])
    assert str(exc.value) == (
        "cannot change the cluster CIDR from 10.42.0.0/16 to 10.43.0.0/16: 2 hosts hold "
        "subnets it does not contain (10.42.0.0/24, 10.42.5.0/24), and existing hosts keep "
        "their addresses; choose a CIDR that contains them, or remove those hosts first")
    with pytest.raises(IpamError, match="1 host holds subnets it does not contain "
                                        "\\(10.42.16.0/24\\)"):
        check_change(old, parse_cluster("10.42.0.0/20"), ["10.42.0.0/24", "10.42.16.0/24"])
    many = [f"10.42.{i}.0/24" for i in range(8)]
    with pytest.raises(IpamError, match="10.42.4.0/24 and 3 more\\)"):
        check_change(old, parse_cluster("10.50.0.0/16"), many)


def test_change_of_host_prefix_refused_while_subnets_are_held() -> None:
    old = parse_cluster("10.42.0.0/16", 24)
    with pytest.raises(IpamError) as exc:
        check_change(old, parse_cluster("10.42.0.0/16", 25), ["10.42.0.0/24"])
    assert str(exc.value) == (
        "cannot change the host prefix from /24 to /25: 1 host holds /24 subnets "
        "(10.42.0.0/24), and existing hosts keep their addresses; remove those hosts first")
    check_change(old, parse_cluster("10.42.0.0/16", 25), [])


# ---------------------------------------------------------------- properties


@st.composite
def clusters(draw: st.DrawFn) -> ClusterNet:
    prefix = draw(st.integers(16, 27))
    host_prefix = draw(st.integers(prefix + 1, min(29, prefix + 6)))
    base = draw(st.sampled_from(["10.0.0.0", "172.20.0.0", "192.168.0.0"]))
    net = ipaddress.IPv4Network(f"{base}/{prefix}", strict=False)
    return parse_cluster(str(net), host_prefix)


@settings(max_examples=150, deadline=None)
@given(cluster=clusters(), ops=st.lists(st.tuples(st.booleans(), st.integers(0, 10 ** 6),
                                                  st.booleans()), max_size=80))
def test_allocations_never_overlap_and_stay_inside(
        cluster: ClusterNet, ops: list[tuple[bool, int, bool]]) -> None:
    held: list[str] = []
    for add, n, use_preferred in ops:
        if not add and held:
            held.pop(n % len(held))  # a host is removed: its subnet is free again
            continue
        preferred = cluster.subnet(n % cluster.capacity) if use_preferred else None
        if len(held) == cluster.capacity:
            with pytest.raises(IpamError, match="is full"):
                allocate(cluster, held, preferred)
            continue
        got = allocate(cluster, held, preferred)
        net = ipaddress.IPv4Network(got)  # strict: no host bits
        assert net.prefixlen == cluster.host_prefix and net.subnet_of(cluster.network)
        assert all(not net.overlaps(ipaddress.IPv4Network(h)) for h in held)
        if preferred is not None and preferred not in held:
            assert got == preferred
        else:
            lowest = next(s for s in cluster.subnets() if s not in held)
            assert got == lowest
        held.append(got)
    check_change(cluster, cluster, held)


@settings(max_examples=100, deadline=None)
@given(cluster=clusters(), taken=st.lists(st.tuples(st.integers(0, 2 ** 20), st.integers(0, 8)),
                                          max_size=12))
def test_allocation_avoids_arbitrary_taken_networks(
        cluster: ClusterNet, taken: list[tuple[int, int]]) -> None:
    nets = [ipaddress.IPv4Network(
        (int(cluster.network.network_address) + off % cluster.network.num_addresses,
         min(32, cluster.host_prefix - 3 + grow)), strict=False) for off, grow in taken]
    free = [s for s in cluster.subnets()
            if not any(ipaddress.IPv4Network(s).overlaps(n) for n in nets)]
    if not free:
        with pytest.raises(IpamError, match="is full"):
            allocate(cluster, [str(n) for n in nets])
    else:
        assert allocate(cluster, [str(n) for n in nets]) == free[0]
