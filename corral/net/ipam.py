"""IP address management for the overlay: one subnet of the cluster CIDR per host.

The cluster CIDR (default ``10.42.0.0/16``) is fixed at the server's first start and cut into
host subnets of one prefix length (default ``/24``). Each host gets one subnet when it first
needs it; the caller stores it with the host, hands it back as ``preferred`` so the host keeps
it across agent restarts, and drops it when the host is removed, which frees it.

Allocation takes the lowest free subnet, and every subnet of the cluster is used, the first one
(``10.42.0.0/24``) included: nothing on the overlay needs a cluster-wide address of its own.
Inside a host subnet the first usable address (``.1`` of a /24) is the host's own: its
container bridge's gateway and, as a /32, its WireGuard interface's address
(:func:`gateway`, :func:`overlay_address`); containers take the addresses after it.

Pure code: no I/O, no clock, no store. Everything here takes strings (what the store keeps) and
returns strings in the canonical form :mod:`ipaddress` writes (``10.42.3.0/24``); bad input
raises :class:`IpamError`, whose message says what is wrong and, where it can, what was meant.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

DEFAULT_CLUSTER_CIDR = "10.42.0.0/16"
DEFAULT_HOST_PREFIX = 24
MAX_HOST_PREFIX = 29  # 8 addresses: network, gateway, 5 for containers, broadcast

# Ranges no overlay can live in (the cluster CIDR is checked against them first).
SPECIAL_RANGES: Mapping[str, str] = {
    "'this network'": "0.0.0.0/8",
    "loopback": "127.0.0.0/8",
    "link-local": "169.254.0.0/16",
    "multicast": "224.0.0.0/4",
    "the reserved class E range": "240.0.0.0/4",
}

_LISTED = 5  # how many subnets an error message names before "and N more"

IPv4Net = ipaddress.IPv4Network


class IpamError(ValueError):
    """A cluster CIDR, host prefix or subnet is unusable, or no subnet is left; says which."""


# ---------------------------------------------------------------- the cluster


def _check_host_prefix(network: IPv4Net, host_prefix: object) -> int:
    if isinstance(host_prefix, bool) or not isinstance(host_prefix, int):
        raise IpamError(f"the host prefix must be an integer such as {DEFAULT_HOST_PREFIX}, "
                        f"got {host_prefix!r}")
    if host_prefix <= network.prefixlen:
        raise IpamError(f"a /{network.prefixlen} cluster cannot hold /{host_prefix} host "
                        f"subnets; it needs at least 2")
    if host_prefix > MAX_HOST_PREFIX:
        raise IpamError(f"/{host_prefix} host subnets are too small: a host subnet needs at "
                        f"least 8 addresses (/{MAX_HOST_PREFIX}: the gateway and 5 containers)")
    return host_prefix


@dataclass(frozen=True)
class ClusterNet:
    """The cluster CIDR and the prefix length of its host subnets (build it with
    :func:`parse_cluster`, which explains what is wrong with bad input)."""

    network: IPv4Net
    host_prefix: int = DEFAULT_HOST_PREFIX

    def __post_init__(self) -> None:
        if not isinstance(self.network, IPv4Net):
            raise TypeError(f"ClusterNet.network must be an IPv4Network, got "
                            f"{type(self.network).__name__} (use parse_cluster)")
        _check_host_prefix(self.network, self.host_prefix)

    @property
    def cidr(self) -> str:
        """``10.42.0.0/16``"""
        return str(self.network)

    @property
    def capacity(self) -> int:
        """How many host subnets the cluster holds (256 for a /16 in /24s)."""
        return 1 << (self.host_prefix - self.network.prefixlen)

    @property
    def _step(self) -> int:
        return 1 << (32 - self.host_prefix)

    def subnet(self, index: int) -> str:
        """The ``index``-th host subnet (0-based)."""
        if not 0 <= index < self.capacity:
            raise IndexError(f"{self.cidr} has {self.capacity} host subnets, not {index + 1}")
        base = int(self.network.network_address) + index * self._step
        return f"{ipaddress.IPv4Address(base)}/{self.host_prefix}"

    def subnets(self) -> Iterator[str]:
        """Every host subnet, lowest first (lazily: a /8 in /29s is two million)."""
        return (self.subnet(i) for i in range(self.capacity))

    def index_of(self, subnet: str) -> int | None:
        """The position of ``subnet`` among the host subnets; None if it is not one of them
        (malformed, host bits set, another prefix length, or outside the cluster)."""
        try:
            net = ipaddress.ip_network(subnet, strict=True)
        except (ValueError, TypeError):
            return None
        if not isinstance(net, IPv4Net) or net.prefixlen != self.host_prefix \
                or not net.subnet_of(self.network):
            return None
        return (int(net.network_address) - int(self.network.network_address)) // self._step

    def is_host_subnet(self, subnet: str) -> bool:
        return self.index_of(subnet) is not None

    def __str__(self) -> str:
        return f"{self.cidr} (/{self.host_prefix} per host)"


def _parse_network(text: object, what: str) -> IPv4Net | ipaddress.IPv6Network:
    """A network with an explicit prefix, strictly (host bits named with the likely intent)."""
    if not isinstance(text, str):
        raise IpamError(f"{what} must be a string such as {DEFAULT_CLUSTER_CIDR}, got "
                        f"{type(text).__name__}")
    cidr = text.strip()
    try:
        loose = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        raise IpamError(f"{what} {cidr!r} is not a network; expected one such as "
                        f"{DEFAULT_CLUSTER_CIDR}") from None
    if "/" not in cidr:
        raise IpamError(f"{what} {cidr!r} has no prefix length; expected a network such as "
                        f"{DEFAULT_CLUSTER_CIDR}")
    if ipaddress.ip_interface(cidr).ip != loose.network_address:
        raise IpamError(f"{cidr} has host bits set; did you mean {loose}?")
    return loose


def parse_cluster(cidr: str = DEFAULT_CLUSTER_CIDR, host_prefix: int = DEFAULT_HOST_PREFIX,
                  reserved: Sequence[str] | Mapping[str, str] = ()) -> ClusterNet:
    """Check the cluster CIDR and the host prefix; return the :class:`ClusterNet`.

    ``cidr`` must be an IPv4 network written without host bits, clear of the loopback,
    link-local, multicast and other special ranges; ``host_prefix`` between the cluster's
    prefix + 1 and /29. ``reserved`` are networks the overlay must not overlap (Docker's
    bridges, the hosts' own underlay networks): a mapping from what each one is (for the
    message, e.g. ``{"docker0": "172.17.0.0/16"}``) to its CIDR, or a plain list of CIDRs."""
    net = _parse_network(cidr, "the cluster CIDR")
    if not isinstance(net, IPv4Net):
        raise IpamError(f"the cluster CIDR must be IPv4: {net} is IPv6, and the overlay "
                        f"does not support IPv6 yet (use e.g. {DEFAULT_CLUSTER_CIDR})")
    check_no_overlap(net, SPECIAL_RANGES)
    cluster = ClusterNet(net, _check_host_prefix(net, host_prefix))
    if isinstance(reserved, Mapping):
        _check_overlaps(net, reserved.items())
    else:
        _check_overlaps(net, (("a reserved network", r)
                              for r in ([reserved] if isinstance(reserved, str) else reserved)))
    return cluster


def _other_network(name: str, cidr: object) -> IPv4Net | ipaddress.IPv6Network:
    """Another network, leniently: an interface address (``192.168.1.7/24``) means its
    network, a bare address itself."""
    if not isinstance(cidr, str):
        raise IpamError(f"{name}: expected a network such as 172.17.0.0/16, got "
                        f"{type(cidr).__name__}")
    try:
        return ipaddress.ip_network(cidr.strip(), strict=False)
    except ValueError:
        raise IpamError(f"{name}: {cidr!r} is not a network (expected e.g. "
                        f"172.17.0.0/16)") from None


def check_no_overlap(cluster: ClusterNet | IPv4Net | str, others: Mapping[str, str]) -> None:
    """Raise IpamError naming every network in ``others`` (what it is -> its CIDR) that
    overlaps the cluster: ``10.42.0.0/16 overlaps docker0 (172.16.0.0/12)``. An interface
    address such as ``192.168.1.7/24`` stands for its network; IPv6 networks never overlap."""
    if isinstance(cluster, ClusterNet):
        net: IPv4Net | ipaddress.IPv6Network = cluster.network
    elif isinstance(cluster, IPv4Net):
        net = cluster
    else:
        net = _parse_network(cluster, "the cluster CIDR")
    _check_overlaps(net, others.items())


def _check_overlaps(net: IPv4Net | ipaddress.IPv6Network,
                    others: Iterable[tuple[str, str]]) -> None:
    clashes = []
    for name, cidr in others:
        other = _other_network(name, cidr)
        if other.version == net.version and other.overlaps(net):  # type: ignore[arg-type]
            clashes.append(f"{name} ({other})")
    if clashes:
        raise IpamError(f"{net} overlaps {' and '.join(clashes)}")


# ---------------------------------------------------------------- allocation


def _hosts(n: int) -> str:
    return "1 host holds" if n == 1 else f"{n} hosts hold"


def _listing(subnets: Sequence[str]) -> str:
    shown = ", ".join(subnets[:_LISTED])
    more = len(subnets) - _LISTED
    return f"{shown} and {more} more" if more > 0 else shown


def _blocked(cluster: ClusterNet, taken: Iterable[str]) -> list[tuple[int, int]]:
    """Host-subnet index ranges (inclusive) that ``taken`` covers, merged and sorted.

    A taken network that is not exactly a host subnet (another prefix length, e.g. from
    before a change, or misaligned) blocks every host subnet it touches."""
    lo_addr = int(cluster.network.network_address)
    hi_addr = int(cluster.network.broadcast_address)
    shift = 32 - cluster.host_prefix
    ranges = []
    for cidr in taken:
        net = _other_network("taken subnet", cidr)
        if net.version != 4:
            continue
        start = max(int(net.network_address), lo_addr)
        end = min(int(net.broadcast_address), hi_addr)
        if start <= end:
            ranges.append(((start - lo_addr) >> shift, (end - lo_addr) >> shift))
    ranges.sort()
    merged: list[tuple[int, int]] = []
    for lo, hi in ranges:
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def allocate(cluster: ClusterNet, taken: Iterable[str], preferred: str | None = None) -> str:
    """A free host subnet of ``cluster``, such as ``10.42.3.0/24``.

    ``taken`` are the subnets other hosts hold (leave out the asking host's own, or
    ``preferred`` will look taken). ``preferred`` — the subnet the host held before — is
    returned when it is a host subnet of this cluster and free; otherwise (also when it is
    malformed: it is only a hint) the lowest free subnet is. Raises IpamError when every
    subnet is taken."""
    blocked = _blocked(cluster, taken)
    if preferred is not None:
        index = cluster.index_of(preferred)
        if index is not None and not any(lo <= index <= hi for lo, hi in blocked):
            return cluster.subnet(index)
    candidate = 0
    for lo, hi in blocked:
        if lo > candidate:
            break
        candidate = max(candidate, hi + 1)
    if candidate >= cluster.capacity:
        raise IpamError(f"cluster {cluster.cidr} is full: all {cluster.capacity} "
                        f"/{cluster.host_prefix} host subnets are taken")
    return cluster.subnet(candidate)


def _host_subnet(subnet: str) -> IPv4Net:
    net = _parse_network(subnet, "subnet")
    if not isinstance(net, IPv4Net):
        raise IpamError(f"subnet {net} is IPv6; host subnets are IPv4")
    if net.prefixlen > 30:
        raise IpamError(f"subnet {net} has no room for a gateway and containers")
    return net


def gateway(subnet: str) -> str:
    """The host's own address in its subnet, the first usable one: ``10.42.3.0/24`` ->
    ``10.42.3.1`` (its container bridge's gateway)."""
    return str(_host_subnet(subnet).network_address + 1)


def overlay_address(subnet: str) -> str:
    """The address of the host's WireGuard interface: its gateway as a /32
    (``10.42.3.1/32``). A /32 adds no route of its own, so the subnet's route stays on the
    container bridge, and peers' subnets are routed over the interface."""
    return f"{gateway(subnet)}/32"


def check_change(old: ClusterNet, new: ClusterNet, taken: Iterable[str]) -> None:
    """Refuse to replace ``old`` by ``new`` while hosts hold subnets that would not be host
    subnets of ``new``: existing hosts keep their addresses. Growing the cluster around the
    subnets in use is fine; so is any change while no host holds a subnet."""
    if old == new:
        return
    held = sorted({str(_other_network("taken subnet", s)) for s in taken},
                  key=lambda s: ipaddress.ip_network(s).network_address.packed)
    if new.host_prefix != old.host_prefix and held:
        raise IpamError(f"cannot change the host prefix from /{old.host_prefix} to "
                        f"/{new.host_prefix}: {_hosts(len(held))} "
                        f"/{old.host_prefix} subnets ({_listing(held)}), and existing hosts "
                        f"keep their addresses; remove those hosts first")
    outside = [s for s in held if not new.is_host_subnet(s)]
    if outside:
        raise IpamError(f"cannot change the cluster CIDR from {old.cidr} to {new.cidr}: "
                        f"{_hosts(len(outside))} subnets it does not contain "
                        f"({_listing(outside)}), and existing hosts keep their addresses; "
                        f"choose a CIDR that contains them, or remove those hosts first")
