"""The WireGuard mesh planner: from every host's overlay facts, each host's peers.

Input: one :class:`MeshHost` per host (its key, subnet, advertised endpoint, the endpoint a
peer saw it handshake from, its NAT setting, whether it is up, whether it will relay).
Output of :func:`plan_mesh`: a :class:`HostPlan` per up host that has a key and a subnet —
the peers it should hold (key, endpoint to dial, allowed IPs, keepalive), the relays it
reaches some hosts through and why, and whom it relays for.

The rules, for two hosts A and B in the mesh:

- A host is **behind NAT** when its ``nat`` setting says so; with no setting, when a peer saw
  it handshake from an IP other than the one it advertises (its address is translated).
- A host is **reachable** (others can dial it) when it is up, advertises an endpoint and is not
  behind NAT.
- B reachable: A holds B with B's advertised endpoint.
- B not reachable, A reachable: A holds B with the endpoint B was last seen at, or none (B
  dials A, which learns B's address from the handshake).
- Neither reachable: they cannot dial each other, so one reachable host that is willing to
  relay carries their traffic — the lowest by name, then id, the same for every pair so the
  choice is stable. A's entry for the relay gets B's subnet added to its allowed IPs, B's gets
  A's; the relay holds both directly anyway; A and B hold no entry for each other. With no
  such relay they have no path at all, and both plans say so (:class:`RelayNote`).
- Keepalive: every peer entry of a host that is not reachable carries ``keepalive`` seconds,
  so its NAT mapping (or the path its peers learned from its handshake) stays open. That is
  a host behind NAT, and equally an up host that advertises no endpoint: nobody can dial it
  either. A reachable host's entries carry none, even for NATed peers — only the side that
  cannot be dialed needs to keep the path warm.

Hosts that are down, have not reported a key or have no subnet yet are in nobody's peers and
get no plan; so are hosts whose key or subnet is malformed, or clashes with another host's
(two hosts with one key, overlapping subnets: neither is trusted) — :func:`mesh_exclusions`
says why, per host. A malformed endpoint or observed endpoint is treated as unknown. The
server validates reports with :func:`validate_public_key` and :func:`validate_endpoint`
before they get here, so those cases are for data that slipped through.

Everything comes out sorted (peers and notes by name, then id), so two plans of the same
mesh are equal, and :func:`plan_digest` lets the server skip re-sending an unchanged plan.

Pure code, stdlib only, no I/O: the key and endpoint checks mirror
``corral.agent.wireguard``'s, which cannot be imported here (that module runs commands).
Unlike the agent's, :func:`validate_endpoint` refuses DNS names: the server hands endpoints
to every host and must not depend on their resolvers.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections import Counter, defaultdict
from collections.abc import Collection, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from corral.net.keys import key_problem

DEFAULT_KEEPALIVE = 25
MAX_KEEPALIVE = 65535

IPNet = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address


class MeshInputError(ValueError):
    """A reported key or endpoint is malformed; the message says what is wrong with it."""


# ---------------------------------------------------------------- validation


def validate_public_key(key: object) -> str:
    """Return ``key`` if it is a WireGuard key (see :func:`corral.net.keys.key_problem`)."""
    problem = key_problem(key)
    if problem is not None:
        raise MeshInputError(problem)
    return key  # type: ignore[return-value]


def _parse_endpoint(endpoint: object) -> tuple[IPAddr, int]:
    if not isinstance(endpoint, str):
        raise MeshInputError(f"bad endpoint: expected a string such as 203.0.113.7:51820, "
                             f"got {type(endpoint).__name__}")
    bad = f"bad endpoint {endpoint!r}"
    if not endpoint or endpoint != endpoint.strip():
        raise MeshInputError(f"{bad}: expected ip:port such as 203.0.113.7:51820")
    if endpoint.startswith("["):
        host, sep, port = endpoint[1:].partition("]:")
        if not sep:
            raise MeshInputError(f"{bad}: expected [IPv6]:port such as [2001:db8::7]:51820")
        if "%" in host:
            raise MeshInputError(f"{bad}: an address with a scope (%zone) means nothing to "
                                 f"other hosts")
        try:
            ip: IPAddr = ipaddress.IPv6Address(host)
        except ValueError:
            raise MeshInputError(f"{bad}: {host!r} is not an IPv6 address") from None
    else:
        host, sep, port = endpoint.rpartition(":")
        if not sep or not host:
            raise MeshInputError(f"{bad}: expected ip:port such as 203.0.113.7:51820")
        if ":" in host:
            raise MeshInputError(f"{bad}: an IPv6 address needs brackets, [addr]:port")
        if not re.fullmatch(r"[0-9.]+", host):
            raise MeshInputError(f"{bad}: {host!r} is not an IP address (host names are not "
                                 f"accepted: advertise the address peers should dial)")
        try:
            ip = ipaddress.IPv4Address(host)
        except ValueError:
            raise MeshInputError(f"{bad}: {host!r} is not an IPv4 address") from None
    if ip.is_unspecified or ip.is_multicast or ip == ipaddress.IPv4Address("255.255.255.255"):
        raise MeshInputError(f"{bad}: {ip} cannot be dialed")
    if not re.fullmatch(r"[0-9]{1,5}", port) or not 1 <= int(port) <= 65535:
        raise MeshInputError(f"{bad}: the port must be a number from 1 to 65535, "
                             f"got {port!r}")
    return ip, int(port)


def validate_endpoint(endpoint: object) -> str:
    """Return the endpoint in canonical form (``203.0.113.7:51820``, ``[2001:db8::7]:51820``)
    if it is an IP address and a port 1-65535; host names, missing brackets around IPv6,
    scoped, unspecified and multicast addresses are refused with a message saying so."""
    ip, port = _parse_endpoint(endpoint)
    return f"[{ip}]:{port}" if ip.version == 6 else f"{ip}:{port}"


def _endpoint_ip(endpoint: str) -> IPAddr:
    ip = _parse_endpoint(endpoint)[0]
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


# ---------------------------------------------------------------- input and output


@dataclass(frozen=True)
class MeshHost:
    """One host's overlay facts, as the server knows them."""

    id: str
    name: str
    public_key: str | None = None  # base64 32-byte WireGuard key; None: not reported yet
    subnet: str | None = None  # its host subnet (corral.net.ipam); None: none yet
    endpoint: str | None = None  # "ip:port" / "[v6]:port" it advertises; None: none
    observed_endpoint: str | None = None  # where a peer saw it handshake from
    nat: bool | None = None  # True: behind NAT; False: publicly reachable; None: infer
    up: bool = True
    relay: bool = True  # willing to forward traffic between hosts that cannot dial each other


@dataclass(frozen=True)
class PeerPlan:
    """One peer entry of a host's WireGuard interface."""

    host_id: str
    name: str
    public_key: str
    endpoint: str | None  # None: not known here, the peer dials us
    allowed_ips: tuple[str, ...]  # the peer's subnet first, then those it relays to us
    keepalive: int | None  # seconds; None: off


@dataclass(frozen=True)
class RelayNote:
    """How this host reaches a host it cannot dial directly (for ``corral host inspect``).
    ``relay_id``/``relay_name`` None: it does not reach it at all."""

    target_id: str
    target_name: str
    relay_id: str | None
    relay_name: str | None
    reason: str


@dataclass(frozen=True)
class HostPlan:
    peers: tuple[PeerPlan, ...]
    relays: tuple[RelayNote, ...]
    relaying_for: tuple[str, ...]  # names of the hosts whose traffic this host forwards
    behind_nat: bool
    reachable: bool

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON data: dicts, lists, strings, numbers, booleans and None."""
        plain = _plain(asdict(self))
        assert isinstance(plain, dict)
        return plain


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def plan_digest(plan: HostPlan) -> str:
    """sha256 (hex) of the plan's canonical JSON: equal plans, equal digests."""
    text = json.dumps(plan.as_dict(), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------- facts


def _valid_endpoint(endpoint: str | None) -> str | None:
    if endpoint is None:
        return None
    try:
        return validate_endpoint(endpoint)
    except MeshInputError:
        return None


def is_behind_nat(host: MeshHost) -> bool:
    """``nat`` if set; else True when a peer saw the host from an IP other than the one it
    advertises; else False (also when either endpoint is unknown or malformed)."""
    if host.nat is not None:
        return bool(host.nat)
    endpoint = _valid_endpoint(host.endpoint)
    observed = _valid_endpoint(host.observed_endpoint)
    if endpoint is None or observed is None:
        return False
    return _endpoint_ip(endpoint) != _endpoint_ip(observed)


def is_reachable(host: MeshHost) -> bool:
    """Others can dial it: up, advertising a (well-formed) endpoint, not behind NAT."""
    return bool(host.up) and _valid_endpoint(host.endpoint) is not None \
        and not is_behind_nat(host)


@dataclass(frozen=True)
class _Node:
    id: str
    name: str
    key: str
    subnet: str
    net: IPNet
    endpoint: str | None
    observed: str | None
    behind_nat: bool
    reachable: bool
    relay: bool

    @property
    def order(self) -> tuple[str, str]:
        return (self.name, self.id)

    @property
    def why_unreachable(self) -> str:
        return "is behind NAT" if self.behind_nat else "advertises no endpoint"


def _subnet_order(net: IPNet) -> tuple[int, int, int]:
    return (net.version, int(net.network_address), net.prefixlen)


def _admit(hosts: Iterable[MeshHost]) -> tuple[list[_Node], dict[str, str]]:
    """The hosts in the mesh, sorted by name then id, and why each other host is not."""
    out: dict[str, str] = {}
    hosts = list(hosts)
    ids = Counter(h.id for h in hosts)
    candidates: list[_Node] = []
    for h in hosts:
        if ids[h.id] > 1:
            out[h.id] = "shares its id with another host"
            continue
        if not h.up:
            out[h.id] = "is down"
            continue
        if h.public_key is None:
            out[h.id] = "has not reported a WireGuard public key yet"
            continue
        if h.subnet is None:
            out[h.id] = "has no overlay subnet yet"
            continue
        try:
            key = validate_public_key(h.public_key)
        except MeshInputError as exc:
            out[h.id] = f"reported a {exc}"
            continue
        try:
            net = ipaddress.ip_network(h.subnet, strict=True)  # type: ignore[arg-type]
        except (ValueError, TypeError):
            out[h.id] = f"has a malformed subnet {h.subnet!r}"
            continue
        behind_nat = is_behind_nat(h)
        endpoint = _valid_endpoint(h.endpoint)
        candidates.append(_Node(
            id=h.id, name=str(h.name), key=key, subnet=str(net), net=net, endpoint=endpoint,
            observed=_valid_endpoint(h.observed_endpoint), behind_nat=behind_nat,
            reachable=endpoint is not None and not behind_nat, relay=bool(h.relay)))

    # Clashes: hosts sharing a key, or with overlapping subnets, are all left out (which one
    # is genuine cannot be told from here, and WireGuard would send one's traffic to the other).
    clash: dict[str, list[str]] = defaultdict(list)
    by_key: dict[str, list[_Node]] = defaultdict(list)
    for n in candidates:
        by_key[n.key].append(n)
    for group in by_key.values():
        if len(group) > 1:
            for n in group:
                others = ", ".join(sorted(o.name for o in group if o is not n))
                clash[n.id].append(f"shares its WireGuard public key with {others}")
    ordered = sorted(candidates, key=lambda n: _subnet_order(n.net))
    for i, a in enumerate(ordered):  # sorted by start: only later starts inside a can overlap
        for b in ordered[i + 1:]:
            if b.net.version != a.net.version or int(b.net.network_address) > int(
                    a.net.broadcast_address):
                break
            clash[a.id].append(f"its subnet {a.subnet} overlaps {b.name}'s {b.subnet}")
            clash[b.id].append(f"its subnet {b.subnet} overlaps {a.name}'s {a.subnet}")
    for hid, why in clash.items():
        out[hid] = "; ".join(why)
    nodes = sorted((n for n in candidates if n.id not in clash), key=lambda n: n.order)
    return nodes, out


def mesh_exclusions(hosts: Sequence[MeshHost]) -> dict[str, str]:
    """Host id -> why that host is in nobody's peers (``is down``, ``has not reported a
    WireGuard public key yet``, ``shares its WireGuard public key with edge-2``, ...).
    Hosts in the mesh are not listed."""
    return _admit(hosts)[1]


# ---------------------------------------------------------------- planning


def _relay_reason(a: _Node, b: _Node, relay: _Node | None, any_reachable: bool) -> str:
    x, y = sorted((a, b), key=lambda n: n.order)
    why = f"{x.name} {x.why_unreachable}, {y.name} {y.why_unreachable}"
    if relay is not None:
        return f"{x.name} and {y.name} cannot dial each other ({why}); their traffic goes " \
               f"through {relay.name}"
    tail = "; the reachable hosts do not relay" if any_reachable else ""
    return f"no reachable host can relay between {x.name} and {y.name} ({why}){tail}"


def plan_mesh(hosts: Sequence[MeshHost], keepalive: int = DEFAULT_KEEPALIVE, *,
              only: Collection[str] | None = None) -> dict[str, HostPlan]:
    """Each mesh host's plan, by host id, in name-then-id order (see the module docstring
    for the rules). ``keepalive`` (seconds, 0 for never) goes on every peer entry of hosts
    that cannot be dialed. ``only``: plan just these host ids (the mesh is still computed
    from all hosts) — a plan is O(hosts), all plans O(hosts²)."""
    if isinstance(keepalive, bool) or not isinstance(keepalive, int) \
            or not 0 <= keepalive <= MAX_KEEPALIVE:
        raise MeshInputError(f"keepalive must be 0..{MAX_KEEPALIVE} seconds, got {keepalive!r}")
    nodes, _ = _admit(hosts)
    stuck = [n for n in nodes if not n.reachable]  # they can only dial out
    relay = next((n for n in nodes if n.reachable and n.relay), None)
    any_reachable = any(n.reachable for n in nodes)
    relayed = relay is not None and len(stuck) > 1
    stuck_ids = {n.id for n in stuck}

    plans: dict[str, HostPlan] = {}
    for a in nodes:
        if only is not None and a.id not in only:
            continue
        ka = (keepalive or None) if not a.reachable else None
        peers: list[PeerPlan] = []
        notes: list[RelayNote] = []
        for b in nodes:
            if b is a:
                continue
            if b.reachable:
                endpoint = b.endpoint
            elif a.reachable:
                endpoint = b.observed
            else:
                notes.append(RelayNote(
                    b.id, b.name, relay.id if relay else None, relay.name if relay else None,
                    _relay_reason(a, b, relay, any_reachable)))
                continue
            allowed: tuple[str, ...] = (b.subnet,)
            if relayed and b is relay and a.id in stuck_ids:
                through = sorted((n.net for n in stuck if n is not a), key=_subnet_order)
                allowed += tuple(str(n) for n in through)
            peers.append(PeerPlan(b.id, b.name, b.key, endpoint, allowed, ka))
        relaying_for = tuple(n.name for n in stuck) if relayed and a is relay else ()
        plans[a.id] = HostPlan(tuple(peers), tuple(notes), relaying_for,
                               a.behind_nat, a.reachable)
    return plans
