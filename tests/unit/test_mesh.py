"""The WireGuard mesh planner: who peers with whom, endpoints, relays, keepalives (pure)."""

from __future__ import annotations

import base64
import ipaddress
from itertools import combinations
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from corral.net.mesh import (
    HostPlan,
    MeshHost,
    MeshInputError,
    PeerPlan,
    RelayNote,
    is_behind_nat,
    is_reachable,
    mesh_exclusions,
    plan_digest,
    plan_mesh,
    validate_endpoint,
    validate_public_key,
)


def key(i: int) -> str:
    return base64.b64encode(bytes([i]) * 32).decode()


def host(i: int, name: str | None = None, **kw: Any) -> MeshHost:
    """Host ``i``: key(i), subnet 10.42.i.0/24, endpoint 198.51.100.i:51820 unless told."""
    kw.setdefault("public_key", key(i))
    kw.setdefault("subnet", f"10.42.{i}.0/24")
    kw.setdefault("endpoint", f"198.51.100.{i}:51820")
    return MeshHost(id=f"h{i}", name=name or f"host-{i}", **kw)


def nat(i: int, name: str | None = None, **kw: Any) -> MeshHost:
    kw.setdefault("endpoint", f"192.168.1.{i}:51820")
    kw.setdefault("observed_endpoint", f"203.0.113.{i}:{40000 + i}")
    return host(i, name, **kw)


def peer(plan: HostPlan, host_id: str) -> PeerPlan:
    (found,) = [p for p in plan.peers if p.host_id == host_id]
    return found


def peer_ids(plan: HostPlan) -> list[str]:
    return [p.host_id for p in plan.peers]


# ---------------------------------------------------------------- validation


def test_validate_public_key() -> None:
    assert validate_public_key(key(7)) == key(7)
    assert issubclass(MeshInputError, ValueError)


@pytest.mark.parametrize("bad, message", [
    (None, "malformed WireGuard public key: expected a string, got NoneType"),
    ("abc", "expected 44 characters of base64 (32 bytes), got 3 characters"),
    ("!" * 43 + "=", "malformed WireGuard public key: not valid base64"),
    ("AQEB" * 10 + "AQ==", "decodes to 31 bytes, not 32"),
    ("A" * 44, "decodes to 33 bytes, not 32"),
    (key(7)[:42] + "B=", "not canonical base64"),
])
def test_validate_public_key_errors(bad: object, message: str) -> None:
    with pytest.raises(MeshInputError) as exc:
        validate_public_key(bad)
    assert message in str(exc.value)
    if isinstance(bad, str) and len(bad) > 8:
        assert bad not in str(exc.value)  # it may be a private key


@pytest.mark.parametrize("given_, canonical", [
    ("203.0.113.7:51820", "203.0.113.7:51820"),
    ("127.0.0.1:1", "127.0.0.1:1"),
    ("10.0.0.1:65535", "10.0.0.1:65535"),
    ("[2001:DB8:0::7]:51820", "[2001:db8::7]:51820"),
    ("[::ffff:1.2.3.4]:51820", "[::ffff:102:304]:51820"),
    ("1.2.3.4:05182", "1.2.3.4:5182"),
])
def test_validate_endpoint(given_: str, canonical: str) -> None:
    assert validate_endpoint(given_) == canonical


@pytest.mark.parametrize("bad, message", [
    (None, "bad endpoint: expected a string such as 203.0.113.7:51820, got NoneType"),
    ("", "bad endpoint '': expected ip:port"),
    (" 1.2.3.4:5", "expected ip:port"),
    ("1.2.3.4", "bad endpoint '1.2.3.4': expected ip:port"),
    (":51820", "expected ip:port"),
    ("vpn.example.com:51820", "'vpn.example.com' is not an IP address (host names are not "
                              "accepted"),
    ("localhost:51820", "host names are not accepted"),
    ("1.2.3.256:51820", "'1.2.3.256' is not an IPv4 address"),
    ("01.2.3.4:51820", "is not an IPv4 address"),
    ("2001:db8::7:51820", "an IPv6 address needs brackets, [addr]:port"),
    ("[2001:db8::7]", "expected [IPv6]:port"),
    ("[2001:db8::7]51820", "expected [IPv6]:port"),
    ("[1.2.3.4]:51820", "'1.2.3.4' is not an IPv6 address"),
    ("[fe80::1%eth0]:51820", "scope"),
    ("1.2.3.4:0", "the port must be a number from 1 to 65535, got '0'"),
    ("1.2.3.4:65536", "got '65536'"),
    ("1.2.3.4:051820", "got '051820'"),
    ("1.2.3.4:", "got ''"),
    ("1.2.3.4:http", "got 'http'"),
    ("1.2.3.4:-1", "got '-1'"),
    ("1.2.3.4:+80", "got '+80'"),
    ("1.2.3.4:\u0665\u0661", "the port must be a number"),  # Arabic-Indic digits
    ("0.0.0.0:51820", "0.0.0.0 cannot be dialed"),
    ("[::]:51820", ":: cannot be dialed"),
    ("224.0.0.1:51820", "cannot be dialed"),
    ("255.255.255.255:51820", "cannot be dialed"),
])
def test_validate_endpoint_errors(bad: object, message: str) -> None:
    with pytest.raises(MeshInputError) as exc:
        validate_endpoint(bad)
    assert message in str(exc.value)


# ---------------------------------------------------------------- NAT and reachability


def test_behind_nat_and_reachable() -> None:
    assert not is_behind_nat(host(1)) and is_reachable(host(1))
    # a peer saw it from another IP: translated
    assert is_behind_nat(nat(1)) and not is_reachable(nat(1))
    # same IP, another port: not NAT by the rule (the IP is what is compared)
    same_ip = host(1, observed_endpoint="198.51.100.1:1234")
    assert not is_behind_nat(same_ip) and is_reachable(same_ip)
    # an explicit setting wins over inference, both ways
    assert not is_behind_nat(nat(1, nat=False)) and is_reachable(nat(1, nat=False))
    assert is_behind_nat(host(1, nat=True)) and not is_reachable(host(1, nat=True))
    # unknown or malformed endpoints infer nothing
    assert not is_behind_nat(host(1, endpoint=None, observed_endpoint="203.0.113.1:9"))
    assert not is_behind_nat(host(1, observed_endpoint="junk"))
    assert not is_reachable(host(1, endpoint=None))
    assert not is_reachable(host(1, endpoint="vpn.example.com:51820"))
    assert not is_reachable(host(1, up=False))
    # an IPv4-mapped observation of the same address is the same address
    assert not is_behind_nat(host(1, observed_endpoint="[::ffff:198.51.100.1]:5"))


# ---------------------------------------------------------------- the rules


def test_two_public_hosts_dial_each_other() -> None:
    plans = plan_mesh([host(1), host(2)])
    assert list(plans) == ["h1", "h2"]
    assert plans["h1"] == HostPlan(
        peers=(PeerPlan("h2", "host-2", key(2), "198.51.100.2:51820", ("10.42.2.0/24",),
                        None),),
        relays=(), relaying_for=(), behind_nat=False, reachable=True)
    assert peer(plans["h2"], "h1").endpoint == "198.51.100.1:51820"


def test_public_and_nat() -> None:
    plans = plan_mesh([host(1), nat(2)])
    # the public host dials the NATed one where it was seen, with no keepalive of its own
    assert peer(plans["h1"], "h2") == PeerPlan("h2", "host-2", key(2), "203.0.113.2:40002",
                                               ("10.42.2.0/24",), None)
    # the NATed host dials the public one and keeps its mapping open
    assert peer(plans["h2"], "h1") == PeerPlan("h1", "host-1", key(1), "198.51.100.1:51820",
                                               ("10.42.1.0/24",), 25)
    assert plans["h2"].behind_nat and not plans["h2"].reachable
    assert not plans["h1"].behind_nat and plans["h1"].reachable
    assert plans["h1"].relays == plans["h2"].relays == ()


def test_nat_host_not_seen_yet_has_no_endpoint_it_dials_us() -> None:
    plans = plan_mesh([host(1), host(2, nat=True)])
    assert peer(plans["h1"], "h2").endpoint is None
    assert peer(plans["h2"], "h1").endpoint == "198.51.100.1:51820"
    assert peer(plans["h2"], "h1").keepalive == 25


def test_host_without_endpoint_is_like_one_behind_nat() -> None:
    plans = plan_mesh([host(1), host(2, endpoint=None)], keepalive=10)
    assert not plans["h2"].behind_nat and not plans["h2"].reachable
    assert peer(plans["h1"], "h2").endpoint is None and peer(plans["h1"], "h2").keepalive is None
    assert peer(plans["h2"], "h1").keepalive == 10  # nobody can dial it: it keeps the path


def test_keepalive_zero_is_off_and_bad_values_are_refused() -> None:
    plans = plan_mesh([host(1), nat(2)], keepalive=0)
    assert peer(plans["h2"], "h1").keepalive is None
    for bad in (-1, 65536, True, 2.5, "25"):
        with pytest.raises(MeshInputError, match="keepalive must be 0..65535 seconds"):
            plan_mesh([host(1)], keepalive=bad)  # type: ignore[arg-type]


def test_two_nat_hosts_go_through_the_lowest_named_relay() -> None:
    hosts = [nat(1, "edge-a"), nat(2, "edge-b"), host(3, "cloud-b"), host(4, "cloud-a"),
             host(5, "aaa-no-relay", relay=False), nat(6, "aaa-nat-relay")]
    plans = plan_mesh(hosts)
    relay = plans["h4"]  # cloud-a: reachable, willing, lowest name
    assert relay.relaying_for == ("aaa-nat-relay", "edge-a", "edge-b")
    assert plans["h3"].relaying_for == () and plans["h5"].relaying_for == ()
    # the relay holds every NATed host directly, with its own subnet only
    for hid in ("h1", "h2", "h6"):
        assert peer(relay, hid).allowed_ips == (f"10.42.{hid[1]}.0/24",)
    a = plans["h1"]
    assert peer_ids(a) == ["h5", "h4", "h3"]  # aaa-no-relay, cloud-a, cloud-b; no NATed peers
    assert peer(a, "h4").allowed_ips == ("10.42.4.0/24", "10.42.2.0/24", "10.42.6.0/24")
    assert peer(a, "h4").endpoint == "198.51.100.4:51820" and peer(a, "h4").keepalive == 25
    assert peer(a, "h3").allowed_ips == ("10.42.3.0/24",)
    assert peer(plans["h2"], "h4").allowed_ips == ("10.42.4.0/24", "10.42.1.0/24",
                                                   "10.42.6.0/24")
    assert a.relays == (
        RelayNote("h6", "aaa-nat-relay", "h4", "cloud-a",
                  "aaa-nat-relay and edge-a cannot dial each other (aaa-nat-relay is behind "
                  "NAT, edge-a is behind NAT); their traffic goes through cloud-a"),
        RelayNote("h2", "edge-b", "h4", "cloud-a",
                  "edge-a and edge-b cannot dial each other (edge-a is behind NAT, edge-b is "
                  "behind NAT); their traffic goes through cloud-a"),
    )
    assert plans["h2"].relays[1].reason == a.relays[1].reason  # the same sentence on both
    assert plans["h3"].relays == ()


def test_relay_ties_on_name_are_broken_by_id() -> None:
    hosts = [host(3, "cloud"), host(2, "cloud"), nat(1), host(9, endpoint=None)]
    plans = plan_mesh(hosts)
    assert plans["h2"].relaying_for == ("host-1", "host-9")
    assert plans["h1"].relays[0].relay_id == "h2"
    assert "host-1 is behind NAT, host-9 advertises no endpoint" in plans["h1"].relays[0].reason
    assert list(plans) == ["h2", "h3", "h1", "h9"]  # name, then id


def test_no_relay_leaves_a_note_on_both() -> None:
    plans = plan_mesh([nat(1), nat(2)])
    note = ("no reachable host can relay between host-1 and host-2 (host-1 is behind NAT, "
            "host-2 is behind NAT)")
    assert plans["h1"].peers == plans["h2"].peers == ()
    assert plans["h1"].relays == (RelayNote("h2", "host-2", None, None, note),)
    assert plans["h2"].relays == (RelayNote("h1", "host-1", None, None, note),)


def test_no_relay_because_reachable_hosts_refuse() -> None:
    plans = plan_mesh([nat(1), nat(2), host(3, relay=False)])
    assert plans["h1"].relays[0].relay_id is None
    assert plans["h1"].relays[0].reason.startswith(
        "no reachable host can relay between host-1 and host-2")
    assert plans["h1"].relays[0].reason.endswith("; the reachable hosts do not relay")
    assert peer_ids(plans["h1"]) == ["h3"] and peer(plans["h1"], "h3").allowed_ips == (
        "10.42.3.0/24",)
    assert plans["h3"].relaying_for == ()


def test_a_single_nat_host_needs_no_relay() -> None:
    plans = plan_mesh([nat(1), host(2), host(3)])
    assert all(p.relaying_for == () and p.relays == () for p in plans.values())
    assert all(len(p.allowed_ips) == 1 for plan in plans.values() for p in plan.peers)


# ---------------------------------------------------------------- who is left out


def test_down_and_incomplete_hosts_are_left_out() -> None:
    hosts = [host(1), host(2, up=False), host(3, public_key=None), host(4, subnet=None),
             host(5)]
    plans = plan_mesh(hosts)
    assert list(plans) == ["h1", "h5"]
    assert peer_ids(plans["h1"]) == ["h5"]
    assert mesh_exclusions(hosts) == {
        "h2": "is down",
        "h3": "has not reported a WireGuard public key yet",
        "h4": "has no overlay subnet yet",
    }


def test_a_down_host_does_not_relay_and_a_down_nat_host_needs_no_relay() -> None:
    plans = plan_mesh([nat(1), nat(2), host(3, "a-relay", up=False), host(4, "b-relay")])
    assert plans["h4"].relaying_for == ("host-1", "host-2")
    assert "h3" not in plans
    plans = plan_mesh([nat(1), nat(2, up=False), host(3)])
    assert plans["h1"].relays == () and plans["h3"].relaying_for == ()


def test_malformed_data_is_skipped_not_fatal() -> None:
    hosts = [host(1), host(2, public_key="not-a-key"), host(3, subnet="10.42.3.1/24"),
             host(4, subnet="banana"), host(5, endpoint="vpn.example.com:51820"),
             host(6, observed_endpoint="??"), host(7, public_key=12345)]  # type: ignore[arg-type]
    plans = plan_mesh(hosts)
    assert list(plans) == ["h1", "h5", "h6"]
    assert peer(plans["h1"], "h5").endpoint is None  # a bad endpoint is no endpoint
    assert not plans["h5"].reachable and peer(plans["h5"], "h1").keepalive == 25
    assert plans["h6"].reachable and peer(plans["h1"], "h6").endpoint == "198.51.100.6:51820"
    why = mesh_exclusions(hosts)
    assert why["h2"] == ("reported a malformed WireGuard public key: expected 44 characters "
                         "of base64 (32 bytes), got 9 characters")
    assert why["h3"] == "has a malformed subnet '10.42.3.1/24'"
    assert why["h4"] == "has a malformed subnet 'banana'"
    assert why["h7"].startswith("reported a malformed WireGuard public key: expected a string")
    assert set(why) == {"h2", "h3", "h4", "h7"}


def test_clashing_keys_subnets_and_ids_are_all_left_out() -> None:
    hosts = [host(1), host(2, public_key=key(3), name="twin-a"), host(3, name="twin-b"),
             host(4, subnet="10.42.0.0/23"), host(5), host(6), host(6, name="dup"),
             host(7, subnet="10.43.0.0/24"), host(8, subnet="10.43.0.128/25")]
    why = mesh_exclusions(hosts)
    assert why["h2"] == "shares its WireGuard public key with twin-b"
    assert why["h3"] == "shares its WireGuard public key with twin-a"
    assert why["h4"] == "its subnet 10.42.0.0/23 overlaps host-1's 10.42.1.0/24"
    assert why["h1"] == "its subnet 10.42.1.0/24 overlaps host-4's 10.42.0.0/23"
    assert why["h6"] == "shares its id with another host"
    assert why["h7"] == "its subnet 10.43.0.0/24 overlaps host-8's 10.43.0.128/25"
    assert why["h8"] == "its subnet 10.43.0.128/25 overlaps host-7's 10.43.0.0/24"
    plans = plan_mesh(hosts)
    assert list(plans) == ["h5"] and plans["h5"].peers == ()


# ---------------------------------------------------------------- determinism, digests


def test_order_and_digest_do_not_depend_on_input_order() -> None:
    hosts = [nat(1, "edge-1"), host(2, "cloud"), nat(3, "edge-0"), host(4, "zeta"),
             host(5, "cloud", endpoint=None)]
    a = plan_mesh(hosts)
    b = plan_mesh(list(reversed(hosts)))
    assert a == b and list(a) == list(b) == ["h2", "h5", "h3", "h1", "h4"]
    assert {k: plan_digest(v) for k, v in a.items()} == {k: plan_digest(v) for k, v in b.items()}
    assert [p.name for p in a["h4"].peers] == ["cloud", "cloud", "edge-0", "edge-1"]
    digest = plan_digest(a["h4"])
    assert len(digest) == 64 and int(digest, 16) >= 0
    # a change anywhere in the plan changes the digest; a change elsewhere does not
    moved = plan_mesh([*hosts[:3], host(4, "zeta", endpoint="198.51.100.44:51820"), hosts[4]])
    assert plan_digest(moved["h4"]) == digest
    assert plan_digest(moved["h2"]) != plan_digest(a["h2"])


def test_plan_as_dict_is_json_data() -> None:
    plan = plan_mesh([host(1), nat(2)])["h2"]
    assert plan.as_dict() == {
        "peers": [{"host_id": "h1", "name": "host-1", "public_key": key(1),
                   "endpoint": "198.51.100.1:51820", "allowed_ips": ["10.42.1.0/24"],
                   "keepalive": 25}],
        "relays": [], "relaying_for": [], "behind_nat": True, "reachable": False}


def test_only_plans_some_hosts_the_same_way() -> None:
    hosts = [nat(1), nat(2), host(3), host(4)]
    full = plan_mesh(hosts)
    assert plan_mesh(hosts, only={"h1", "h3", "nope"}) == {"h1": full["h1"], "h3": full["h3"]}
    assert plan_mesh(hosts, only=()) == {}


def test_empty_and_lonely() -> None:
    assert plan_mesh([]) == {}
    assert plan_mesh([host(1)]) == {"h1": HostPlan((), (), (), False, True)}
    assert plan_mesh([nat(1)])["h1"] == HostPlan((), (), (), True, False)


# ---------------------------------------------------------------- properties

KEYS = [key(i) for i in range(1, 14)]
ENDPOINTS = [f"198.51.100.{i}:51820" for i in range(1, 5)] + ["[2001:db8::1]:51820"]
OBSERVED = [f"203.0.113.{i}:4000{i}" for i in range(1, 4)] + ENDPOINTS[:2]
SUBNETS = [f"10.42.{i}.0/24" for i in range(12)] + ["10.42.0.0/23", "10.42.5.128/25"]


@st.composite
def fleets(draw: st.DrawFn) -> list[MeshHost]:
    """Mostly well-formed, distinct hosts; now and then a clash, a gap or bad data."""
    n = draw(st.integers(0, 9))
    out = []
    for i in range(n):
        out.append(MeshHost(
            id=f"h{i}",
            name=draw(st.sampled_from(["a", "b", "c", "d", "e", f"n{i}"])),
            public_key=draw(st.sampled_from([KEYS[i]] * 8 + [KEYS[0], None, "bad"])),
            subnet=draw(st.sampled_from([f"10.42.{i + 1}.0/24"] * 8 + [
                None, "10.42.0.9/24", "10.42.0.0/23", "10.42.5.128/25"])),
            endpoint=draw(st.sampled_from([*ENDPOINTS, None, None, "x:1"])),
            observed_endpoint=draw(st.sampled_from([*OBSERVED, None, None])),
            nat=draw(st.sampled_from([None, None, None, True, False])),
            up=draw(st.sampled_from([True, True, True, False])),
            relay=draw(st.sampled_from([True, False, False])),
        ))
    return out


def oracle_members(hosts: list[MeshHost]) -> set[str]:
    """Who should be in the mesh, from the rules (not from the planner's code)."""
    cands = []
    for h in hosts:
        if not h.up or h.public_key not in KEYS or h.subnet not in SUBNETS:
            continue
        cands.append(h)
    members = set()
    for h in cands:
        net = ipaddress.ip_network(h.subnet or "")
        if any(o is not h and (o.public_key == h.public_key
                               or net.overlaps(ipaddress.ip_network(o.subnet or "")))
               for o in cands):
            continue
        members.add(h.id)
    return members


@settings(max_examples=300, deadline=None)
@given(fleets())
def test_every_pair_is_connected_relayed_or_explained(hosts: list[MeshHost]) -> None:
    plans = plan_mesh(hosts)
    by_id = {h.id: h for h in hosts}
    assert set(plans) == oracle_members(hosts)
    assert set(mesh_exclusions(hosts)) == {h.id for h in hosts} - set(plans)
    subnet = {hid: str(ipaddress.ip_network(by_id[hid].subnet or "")) for hid in plans}

    for hid, plan in plans.items():
        h = by_id[hid]
        assert plan.reachable == is_reachable(h) and plan.behind_nat == is_behind_nat(h)
        # peers: only mesh members, never itself, each once, in name-then-id order
        ids = peer_ids(plan)
        assert set(ids) <= set(plans) - {hid} and len(ids) == len(set(ids))
        assert ids == sorted(ids, key=lambda i: (by_id[i].name, i))
        # no allowed IPs overlap across its peers, nor its own subnet
        nets = [ipaddress.ip_network(c) for p in plan.peers for c in p.allowed_ips]
        nets.append(ipaddress.ip_network(subnet[hid]))
        for x, y in combinations(nets, 2):
            assert not x.overlaps(y)  # type: ignore[arg-type]
        # keepalive exactly on the entries of hosts nobody can dial
        assert all(p.keepalive == (None if plan.reachable else 25) for p in plan.peers)
        assert plan == plan_mesh(list(reversed(hosts)))[hid]

    for a, b in combinations(plans, 2):
        pa, pb = plans[a], plans[b]
        if b in peer_ids(pa) or a in peer_ids(pb):  # directly, both ways, someone can dial
            assert b in peer_ids(pa) and a in peer_ids(pb)
            ab, ba = peer(pa, b), peer(pb, a)
            assert ab.allowed_ips[0] == subnet[b] and ba.allowed_ips[0] == subnet[a]
            assert ab.public_key == by_id[b].public_key
            assert ab.endpoint is not None or ba.endpoint is not None
            assert pa.reachable or pb.reachable
            assert not [n for n in pa.relays if n.target_id == b]
            continue
        (na,) = [n for n in pa.relays if n.target_id == b]
        (nb,) = [n for n in pb.relays if n.target_id == a]
        assert na.reason == nb.reason and na.relay_id == nb.relay_id
        assert not pa.reachable and not pb.reachable
        if na.relay_id is None:
            assert na.reason.startswith("no reachable host can relay between")
            assert not any(plans[r].reachable and by_id[r].relay for r in plans)
            continue
        r = na.relay_id
        relay = plans[r]
        assert relay.reachable and by_id[r].relay
        assert subnet[b] in peer(pa, r).allowed_ips and subnet[a] in peer(pb, r).allowed_ips
        assert peer(pa, r).endpoint == by_id[r].endpoint
        assert peer(relay, a).allowed_ips == (subnet[a],)
        assert peer(relay, b).allowed_ips == (subnet[b],)
        assert {by_id[a].name, by_id[b].name} <= set(relay.relaying_for)
