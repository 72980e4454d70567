"""An underlay network for overlay tests: hosts in network namespaces on one shared switch.

:class:`Underlay` ``wg`` builds, with real kernel networking and nothing in the root
namespace (the root namespace's interfaces, routes and firewall are never touched):

- the switch: namespace ``crl-ul-wg`` holding the bridge ``ulbr`` (no address: a plain
  L2 switch), with ``ip_forward`` off;
- a public host ``a``: namespace ``crl-ul-wg-a``; its interface ``ul0`` is one end of a
  veth whose other end (``u-a``) is a port of ``ulbr``; address ``10.231.0.N/24`` (the
  underlay CIDR, N handed out in order from .1, or chosen);
- a NAT router ``nat1`` (created by the first host placed behind it): namespace
  ``crl-ul-wg-nat1``, ``ul0`` on the switch with an underlay address like a public host,
  and a LAN bridge ``lanbr`` with ``10.232.K.1/24`` (K = 1, 2, ... per NAT router);
  ``ip_forward`` on; ``iptables -t nat -A POSTROUTING -s 10.232.K.0/24 -o ul0 -j MASQUERADE``
  (``--random-fully`` for a *symmetric* NAT, whose mapping changes per destination, so hole
  punching cannot work: the case that needs a relay); its FORWARD chain lets only replies
  (conntrack ESTABLISHED,RELATED) from the underlay into the LAN;
- a host ``n`` behind ``nat1``: namespace ``crl-ul-wg-n``, ``ul0`` (veth into ``lanbr``)
  with ``10.232.K.N/24`` and a default route via the router. Public hosts have no route to
  10.232.0.0/16: they can only answer what ``n`` sends, through the NAT's mapping.

Public hosts get no default route; only the underlay /24 is reachable from them. All
traffic stays inside these namespaces.

Names: an underlay name and host names are ``[a-z0-9]{1,10}`` (no hyphen, so
``crl-ul-<underlay>-<host>`` never collides between underlays or with the NAT routers,
which are named ``nat<something>`` by the caller and live in the same name space as hosts).

A namespace made elsewhere (e.g. a :class:`testbed.netns.NetnsHost`, whose namespace
``/run/netns/crl-h1`` runs a dockerd) joins with :meth:`Underlay.attach`: the underlay
puts ``ul0`` into it and addresses it, and on teardown removes only that veth, never the
namespace or its processes.

:meth:`Underlay.create` (also run by ``with Underlay(...)``) first removes leftovers of an
earlier run of the same underlay, so creation is idempotent; :meth:`Underlay.teardown`
kills every process left in the namespaces it made (e.g. ``wireguard-go``) and deletes
them, so nothing survives it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from testbed.daemons import TestbedError, kill_quietly
from testbed.netns import process_alive

NETNS_DIR = Path("/run/netns")
NS_PREFIX = "crl-ul"
UNDERLAY_CIDR = "10.231.0.0/24"
NAT_SUPERNET = "10.232.0.0/16"  # NAT router K gets 10.232.K.0/24
BRIDGE = "ulbr"  # the switch, in the underlay's own namespace
LAN_BRIDGE = "lanbr"  # a NAT router's LAN side
IFACE = "ul0"  # every host's (and router's) underlay-facing interface
_NAME = re.compile(r"^[a-z0-9]{1,10}$")
_TIMEOUT = 15.0


def _run(argv: list[str], *, check: bool = True, timeout: float = _TIMEOUT,
         input: str | None = None) -> subprocess.CompletedProcess[str]:
    try:
        res = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout,
                             input=input)
    except subprocess.TimeoutExpired:
        raise TestbedError(f"{' '.join(argv)}: no answer in {timeout:.0f}s") from None
    if check and res.returncode != 0:
        raise TestbedError(f"{' '.join(argv)} failed ({res.returncode}): {res.stderr.strip()}")
    return res


def nsenter(netns_path: str) -> list[str]:
    """The argv prefix that runs a command in the network namespace at ``netns_path``."""
    return ["nsenter", f"--net={netns_path}", "--"]


@dataclass(frozen=True)
class UnderlayHost:
    """One host (or NAT router) on the underlay."""

    name: str
    netns_path: str  # /run/netns/... (or any namespace file, for attached ones)
    address: str  # its own address on ``ul0`` (10.231.0.N, or 10.232.K.N behind a NAT)
    prefixlen: int
    public_address: str  # the source address its packets carry on the underlay
    nat: str | None = None  # the NAT router it sits behind, if any
    attached: bool = False  # a namespace made elsewhere (attach): never deleted here
    symmetric: bool = False  # for NAT routers: MASQUERADE --random-fully

    @property
    def netns(self) -> str:
        return os.path.basename(self.netns_path)

    @property
    def cidr(self) -> str:
        return f"{self.address}/{self.prefixlen}"

    @property
    def behind_nat(self) -> bool:
        return self.nat is not None

    def prefix(self) -> list[str]:
        """The argv prefix for commands in this host's namespace (``nsenter --net=...``)."""
        return nsenter(self.netns_path)


class Underlay:
    """Namespaced hosts on one bridge, some behind NAT routers (see the module doc)."""

    def __init__(self, name: str = "t", *, cidr: str = UNDERLAY_CIDR,
                 nat_supernet: str = NAT_SUPERNET) -> None:
        if not _NAME.match(name):
            raise ValueError(f"underlay name {name!r}: use [a-z0-9], 1 to 10 characters")
        self.name = name
        self.network = ipaddress.IPv4Network(cidr)
        self.nat_supernet = ipaddress.IPv4Network(nat_supernet)
        if self.network.overlaps(self.nat_supernet):
            raise ValueError(f"underlay {cidr} overlaps the NAT networks {nat_supernet}")
        self.hosts: dict[str, UnderlayHost] = {}
        self.routers: dict[str, UnderlayHost] = {}
        self._nat_index: dict[str, int] = {}
        self._created = False

    # ------------------------------------------------------------ names

    @property
    def switch_netns(self) -> str:
        return f"{NS_PREFIX}-{self.name}"

    def netns_name(self, host: str) -> str:
        return f"{NS_PREFIX}-{self.name}-{host}"

    def host(self, name: str) -> UnderlayHost:
        try:
            return self.hosts.get(name) or self.routers[name]
        except KeyError:
            raise KeyError(f"no host or NAT router {name!r} on underlay {self.name}") from None

    def __repr__(self) -> str:
        return f"Underlay({self.name!r}, hosts={sorted(self.hosts)}, nat={sorted(self.routers)})"

    # ------------------------------------------------------------ lifecycle

    def __enter__(self) -> Underlay:
        self.create()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.teardown()

    def create(self) -> Underlay:
        """Make the switch namespace and its bridge (after clearing leftovers); idempotent."""
        if self._created:
            return self
        self._remove_leftovers()
        self._add_netns(self.switch_netns)
        sw = self.switch_netns
        _run(["ip", "-n", sw, "link", "add", BRIDGE, "type", "bridge"])
        _run(["ip", "-n", sw, "link", "set", BRIDGE, "up"])
        self._created = True
        return self

    def teardown(self) -> None:
        """Kill what runs in our namespaces, delete them and our veths; idempotent."""
        for host in list(self.hosts.values()):
            if host.attached:
                # Only our veth: its end in the switch goes with the switch, but say so.
                _run(nsenter(host.netns_path) + ["ip", "link", "del", IFACE], check=False)
        names = [self.netns_name(h) for h, v in self.hosts.items() if not v.attached]
        names += [self.netns_name(r) for r in self.routers] + [self.switch_netns]
        for ns in names:
            self._delete_netns(ns)
        self.hosts.clear()
        self.routers.clear()
        self._nat_index.clear()
        self._created = False

    def _remove_leftovers(self) -> None:
        mine = re.compile(rf"^{re.escape(self.switch_netns)}(-[a-z0-9]+)?$")
        if NETNS_DIR.is_dir():
            for entry in sorted(NETNS_DIR.iterdir()):
                if mine.match(entry.name):
                    self._delete_netns(entry.name)

    @staticmethod
    def _add_netns(ns: str) -> None:
        _run(["ip", "netns", "add", ns])
        _run(["ip", "-n", ns, "link", "set", "lo", "up"])

    @staticmethod
    def _delete_netns(ns: str) -> None:
        path = NETNS_DIR / ns
        if not path.exists():
            return
        for sig, grace in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
            res = _run(["ip", "netns", "pids", ns], check=False)
            pids = {int(p) for p in res.stdout.split()} - {os.getpid()}
            for pid in pids:
                kill_quietly(pid, sig)
            deadline = time.monotonic() + grace
            while pids and time.monotonic() < deadline:
                pids = {p for p in pids if process_alive(p)}
                if pids:
                    time.sleep(0.05)
            if not pids:
                break
        _run(["ip", "netns", "delete", ns], check=False)
        if path.exists():
            raise TestbedError(f"cannot delete network namespace {ns}")

    # ------------------------------------------------------------ addresses

    def _taken(self) -> set[str]:
        return {h.address for h in [*self.hosts.values(), *self.routers.values()]
                if h.nat is None}

    def _next_public(self, wanted: str | None) -> str:
        taken = self._taken()
        if wanted is not None:
            addr = ipaddress.IPv4Address(wanted)
            if addr not in self.network or addr in (self.network.network_address,
                                                    self.network.broadcast_address):
                raise ValueError(f"{wanted} is not a host address of the underlay {self.network}")
            if wanted in taken:
                raise ValueError(f"{wanted} is already used on the underlay")
            return wanted
        for addr in self.network.hosts():
            if str(addr) not in taken:
                return str(addr)
        raise TestbedError(f"underlay {self.network} is full")

    def _nat_network(self, nat: str) -> ipaddress.IPv4Network:
        subnets = self.nat_supernet.subnets(new_prefix=24)
        index = self._nat_index[nat]
        for _ in range(index):
            next(subnets)
        return next(subnets)

    # ------------------------------------------------------------ building

    def _check_new(self, name: str) -> None:
        if not _NAME.match(name):
            raise ValueError(f"host name {name!r}: use [a-z0-9], 1 to 10 characters")
        if name in self.hosts or name in self.routers:
            raise ValueError(f"{name!r} already exists on underlay {self.name}")

    def _veth_to_switch(self, name: str, netns_path: str, cidr: str) -> None:
        sw = self.switch_netns
        port = f"u-{name}"
        _run(["ip", "-n", sw, "link", "add", port, "type", "veth", "peer", "name", IFACE,
              "netns", netns_path])
        _run(["ip", "-n", sw, "link", "set", port, "master", BRIDGE, "up"])
        inside = nsenter(netns_path)
        _run(inside + ["ip", "addr", "add", cidr, "dev", IFACE])
        _run(inside + ["ip", "link", "set", IFACE, "up"])

    def add_nat(self, name: str, *, address: str | None = None,
                symmetric: bool = False) -> UnderlayHost:
        """A NAT router ``name`` on the underlay with its own LAN (idempotent for equal args)."""
        if name in self.routers:
            have = self.routers[name]
            if have.symmetric != symmetric or (address and address != have.address):
                raise ValueError(f"NAT router {name!r} already exists with other settings")
            return have
        self.create()
        self._check_new(name)
        public = self._next_public(address)
        self._nat_index[name] = len(self._nat_index) + 1
        lan = self._nat_network(name)
        ns = self.netns_name(name)
        path = str(NETNS_DIR / ns)
        router = UnderlayHost(name, path, public, self.network.prefixlen, public,
                              symmetric=symmetric)
        self.routers[name] = router  # before building: a half-built one is torn down too
        self._add_netns(ns)
        self._veth_to_switch(name, path, f"{public}/{self.network.prefixlen}")
        gw = f"{lan.network_address + 1}/{lan.prefixlen}"
        _run(["ip", "-n", ns, "link", "add", LAN_BRIDGE, "type", "bridge"])
        _run(["ip", "-n", ns, "addr", "add", gw, "dev", LAN_BRIDGE])
        _run(["ip", "-n", ns, "link", "set", LAN_BRIDGE, "up"])
        inside = nsenter(path)
        _run(inside + ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        masq = ["iptables", "-w", "5", "-t", "nat", "-A", "POSTROUTING", "-s", str(lan),
                "-o", IFACE, "-j", "MASQUERADE"]
        _run(inside + masq + (["--random-fully"] if symmetric else []))
        fwd = ["iptables", "-w", "5", "-A", "FORWARD"]
        _run(inside + fwd + ["-i", LAN_BRIDGE, "-o", IFACE, "-j", "ACCEPT"])
        _run(inside + fwd + ["-i", IFACE, "-o", LAN_BRIDGE, "-m", "conntrack", "--ctstate",
                             "ESTABLISHED,RELATED", "-j", "ACCEPT"])
        _run(inside + fwd + ["-i", IFACE, "-o", LAN_BRIDGE, "-j", "DROP"])
        return router

    def add_host(self, name: str, *, behind: str | None = None, address: str | None = None,
                 symmetric_nat: bool = False) -> UnderlayHost:
        """A host ``name`` in its own namespace: on the switch, or behind NAT router ``behind``
        (made on first use; ``symmetric_nat`` applies then). Idempotent for equal arguments."""
        self.create()
        if name in self.hosts:
            have = self.hosts[name]
            if have.nat != behind or have.attached or (address and address != have.address):
                raise ValueError(f"host {name!r} already exists with other settings")
            return have
        self._check_new(name)
        ns = self.netns_name(name)
        path = str(NETNS_DIR / ns)
        host = self._plan(name, path, behind, address, symmetric_nat, attached=False)
        self.hosts[name] = host
        self._add_netns(ns)
        self._wire(host)
        return host

    def attach(self, netns_path: str, name: str, address: str | None = None, *,
               behind: str | None = None, symmetric_nat: bool = False) -> UnderlayHost:
        """Put an existing namespace (e.g. ``NetnsHost.netns_path``) on the underlay as ``name``.

        It gets ``ul0`` with ``address`` (or the next free one) and, behind a NAT, a default
        route via the router. Teardown removes only ``ul0``, never the namespace.
        """
        self.create()
        if not Path(netns_path).exists():
            raise ValueError(f"no network namespace at {netns_path}")
        if name in self.hosts:
            have = self.hosts[name]
            if have.netns_path != netns_path or have.nat != behind:
                raise ValueError(f"host {name!r} already exists with other settings")
            return have
        self._check_new(name)
        if any(h.netns_path == netns_path for h in self.hosts.values()):
            raise ValueError(f"{netns_path} is already on underlay {self.name}")
        res = _run(nsenter(netns_path) + ["ip", "link", "show", IFACE], check=False)
        if res.returncode == 0:
            raise ValueError(f"{netns_path} already has an interface {IFACE}")
        host = self._plan(name, netns_path, behind, address, symmetric_nat, attached=True)
        self.hosts[name] = host
        self._wire(host)
        return host

    def _plan(self, name: str, path: str, behind: str | None, address: str | None,
              symmetric_nat: bool, attached: bool) -> UnderlayHost:
        if behind is None:
            addr = self._next_public(address)
            return UnderlayHost(name, path, addr, self.network.prefixlen, addr,
                                attached=attached)
        router = self.add_nat(behind, symmetric=symmetric_nat)
        lan = self._nat_network(behind)
        taken = {h.address for h in self.hosts.values() if h.nat == behind}
        taken.add(str(lan.network_address + 1))
        if address is not None:
            if ipaddress.IPv4Address(address) not in lan or address in taken:
                raise ValueError(f"{address} is not a free address of NAT {behind}'s LAN {lan}")
            addr = address
        else:
            addr = next((str(a) for a in lan.hosts() if str(a) not in taken), "")
            if not addr:
                raise TestbedError(f"NAT {behind}'s LAN {lan} is full")
        return UnderlayHost(name, path, addr, lan.prefixlen, router.address, nat=behind,
                            attached=attached)

    def _wire(self, host: UnderlayHost) -> None:
        if host.nat is None:
            self._veth_to_switch(host.name, host.netns_path, host.cidr)
            return
        rns = self.netns_name(host.nat)
        port = f"l-{host.name}"
        _run(["ip", "-n", rns, "link", "add", port, "type", "veth", "peer", "name", IFACE,
              "netns", host.netns_path])
        _run(["ip", "-n", rns, "link", "set", port, "master", LAN_BRIDGE, "up"])
        inside = nsenter(host.netns_path)
        _run(inside + ["ip", "addr", "add", host.cidr, "dev", IFACE])
        _run(inside + ["ip", "link", "set", IFACE, "up"])
        gw = self._nat_network(host.nat).network_address + 1
        _run(inside + ["ip", "route", "add", "default", "via", str(gw), "dev", IFACE])

    # ------------------------------------------------------------ running things inside

    def run(self, host: str, argv: list[str], *, check: bool = True, timeout: float = _TIMEOUT,
            input: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in ``host``'s namespace and wait (at most ``timeout`` seconds)."""
        return _run(self.host(host).prefix() + argv, check=check, timeout=timeout, input=input)

    def popen(self, host: str, argv: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in ``host``'s namespace (keyword arguments go to ``Popen``)."""
        return subprocess.Popen(self.host(host).prefix() + argv, **kwargs)

    def ping(self, host: str, address: str, *, count: int = 1, wait: float = 1.0,
             tries: int = 1) -> bool:
        """True once ``ping -c count`` from ``host`` to ``address`` succeeds (``tries`` times at
        most, each waiting ``wait`` seconds per reply)."""
        ipaddress.ip_address(address)  # only literal addresses: nothing gets resolved
        argv = ["ping", "-n", "-q", "-c", str(count), "-W", str(wait), "-i", "0.2", address]
        for _ in range(max(1, tries)):
            res = self.run(host, argv, check=False, timeout=count * (wait + 1) + 5)
            if res.returncode == 0:
                return True
        return False

    def netns_names(self) -> list[str]:
        """Every namespace of this underlay that exists now (for teardown checks)."""
        mine = re.compile(rf"^{re.escape(self.switch_netns)}(-[a-z0-9]+)?$")
        if not NETNS_DIR.is_dir():
            return []
        return sorted(e.name for e in NETNS_DIR.iterdir() if mine.match(e.name))


def underlay_netns_in_use() -> list[str]:
    """All ``crl-ul-*`` namespaces on the machine (any underlay)."""
    with contextlib.suppress(OSError):
        return sorted(e.name for e in NETNS_DIR.iterdir()
                      if e.name == NS_PREFIX or e.name.startswith(NS_PREFIX + "-"))
    return []
