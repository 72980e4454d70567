#!/usr/bin/env python3
"""Overlay: TCP throughput and ping RTT on the underlay, across bare wireguard-go, and across Corral.

The overlay benchmark of issue 6: container to container across the Corral overlay, against
host to host on the underlay and host to host across a bare wireguard-go tunnel, all between
the same network namespaces over the same veths. Goal: Corral's throughput at least 80 % of
the bare tunnel's. Everything runs here on real kernel networking, with a real
``corral server`` and real agents. Traffic goes only to loopback and to addresses inside the
namespaces that this bench creates; the only image is ``127.0.0.1:5000/corral/nettool:1``.

- Corral hosts (the recipe of tests/e2e/test_overlay.py's ``bed``): a ``corral server``
  (``testbed.cluster.ServerProc``, ``--heartbeat-interval 1 --down-after 4``, SQLite in a temp
  dir) and three ``testbed.netns.NetnsHost`` ``obha``, ``obhb``, ``obhn`` (namespaces
  ``crl-obh{a,b,n}``, each with its own dockerd, docker bridge index 221..223: the e2e tests
  count up from 1, the other benches use 201..213). Each engine pulls the nettool image.
- Underlay ``ob`` (``testbed.underlay``), attached to those three namespaces: public hosts
  ``a`` (obha) and ``b`` (obhb) on one switch (10.231.0.0/24), and ``n`` (obhn) behind the
  NAT router ``nat1`` (MASQUERADE, LAN 10.232.1.0/24). Namespaces of its own: the switch
  ``crl-ul-ob`` and the router ``crl-ul-ob-nat1``. (``--no-corral``: no server, no dockerd,
  and the hosts are fresh namespaces ``crl-ul-ob-{a,b,n}`` instead.)
- Bare wireguard-go: one interface per host (``obwg-a``, ``obwg-b``, ``obwg-n``: the UAPI
  socket path is machine-wide, so names must differ), created and configured with
  ``corral.agent.wireguard.WireGuard`` and ``netns_runner``. Keys are generated in each
  namespace. Tunnel addresses are 10.239.0.1/2/3 (/24), MTU ``--mtu`` (default 1420, the
  agent's), port 51821 (Corral's interface in the same namespace has 51820). ``a`` and ``b``
  know each other's endpoints. ``n`` knows ``a``'s and keeps the NAT mapping open with a 1 s
  persistent keepalive. ``a`` learns ``n``'s endpoint from its handshake. No Corral in it.
- Corral: one agent per host (``AgentProc``, overlay on, ``--overlay-endpoint`` its underlay
  address:51820, ``--overlay-interface wgobh{a,b,n}``, ``--overlay-probe-every 2``). The bench
  waits until ``GET /api/v1/network`` shows every host with all its peers ``up``, then creates
  one service per host (``nettool-{a,b,n}``: the nettool image, 1 replica,
  ``node.hostname==obh…``, a shell loop that idles and exits on TERM) and reads each
  container's overlay address (``NetworkSettings.Networks.corral.IPAddress``). The agent's
  network ``corral`` (bridge ``corral-br``) and its WireGuard interface both have MTU 1420.
- Two pairs, each measured on three paths:
  - ``public``: ``a`` → ``b``: on the underlay (to 10.231.0.2), through the bare tunnel (to
    10.239.0.2), and from a's container to b's container by overlay address (10.42.x.2);
  - ``nat``: ``n`` → ``a`` (the NATed side is the client: it is the one that can open
    connections), the same three ways.
- Each path (:func:`measure_path`): ``--pings`` pings (default 50) every
  ``--ping-interval`` s (default 0.05) from the client side, giving RTT p50/p99 and loss.
  Then an iperf3 TCP test for ``--seconds`` (default 10): a one-off server ``iperf3 -s -1``
  on the server side, and ``iperf3 -c TARGET -t S -J`` on the client side (one stream,
  client → server). The throughput is the receiver's figure. Around the iperf3 run, the
  bench also samples the CPU time of the wireguard-go processes (bare and Corral's) and of
  the agents (in cores: 1.0 = one CPU busy for the whole test), and the UDP receive-buffer
  drops and TCP retransmits of the two hosts' namespaces (where wireguard-go's sockets are).
  The corral row runs iperf3 and ping in the containers (``docker -H … exec``): the image's
  iperf3 is Debian's, like the host's, but its ping is busybox's, which takes its timestamps
  in user space. So that row also pings a second time with this machine's iputils ping
  inside the container's namespace (``nsenter --net=/proc/PID/ns/net``): the
  ``rtt_iputils_*`` figures, comparable with the other rows'.
- ``--rounds`` (default 3; ``--quick`` 1): the paths are measured round-robin, rotating the
  order each round, so machine noise hits all paths alike. Reported: the median throughput
  over the rounds, and RTT percentiles over all pings pooled. Ratios: every row / the
  underlay, Corral / bare wireguard-go, and the verdict "goal ≥ 80 % of bare wireguard-go"
  (Corral's median throughput / the bare tunnel's, on both pairs; RTT is reported, not judged).

Debian's wireguard-go (0.0.20220316) sets no socket buffer, so its UDP sockets get
``net.core.rmem_default`` (212992 B here; on this kernel a namespace shows its own copy, but
writing it there is refused: only the machine-wide value could raise it), and its TUN has no offloads (``vnet_hdr off``: one packet per
syscall, no GSO/GRO). Both tunnels are limited by that: the receiving wireguard-go drops
datagrams for a full receive buffer, and TCP retransmits each (``udpdrop`` ≈ ``retr``).

iperf3 here is Debian's ``iperf3`` package on this machine. ``wireguard-go``, ``wg``
(wireguard-tools), ``ping`` (iputils-ping) and, for the Corral row, ``docker``/``dockerd``
(docker.io) must be installed too: scripts/install-deps.sh installs them all.

Run from the repository root (as root)::

    /opt/corral-venv/bin/python bench/overlay.py [--seconds 10] [--rounds 3] [--json] [--quick]
                                                 [--no-corral] [--keep]

``--quick`` (2 s of iperf3, 10 pings, 1 round) is the smoke test (about 30 s on a quiet
machine, a third of it setting up). ``--keep`` keeps the temp dir with the server and agent logs.
Cleanup on success, failure and Ctrl-C/SIGTERM: the bare WireGuard interfaces are removed
(which ends their wireguard-go), the underlay's namespaces deleted (of an attached one only
its ``ul0``), then the agents and the server stopped, the agents' WireGuard interfaces
removed, and each NetnsHost stopped (its dockerd, containers and namespace).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import platform
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import BenchError, log, on_sigterm  # noqa: E402
from corral.agent.wireguard import Peer, WireGuard, find_wireguard_go, netns_runner  # noqa: E402
from testbed.cluster import AgentProc, ServerProc, wait_for  # noqa: E402
from testbed.daemons import ensure_binfmt, ensure_registry  # noqa: E402
from testbed.net_images import ensure_nettool  # noqa: E402
from testbed.netns import NetnsHost  # noqa: E402
from testbed.underlay import Underlay, UnderlayHost  # noqa: E402

UNDERLAY = "ob"
WG_PORT = 51821  # the bare tunnel's; Corral's own interface in the same namespace has 51820
TUNNEL_NET = "10.239.0"  # host i gets 10.239.0.i/24 on its WireGuard interface
HOST_INDEX = {"a": 1, "b": 2, "n": 3}
NAT_ROUTER = "nat1"
NAT_KEEPALIVE = 1  # the NATed host's keepalive: the mapping stays open, a learns n's endpoint
IPERF_PORT = 5201
# pair -> (client host, server host); rows per pair, in the order they are printed
PAIRS: dict[str, tuple[str, str]] = {"public": ("a", "b"), "nat": ("n", "a")}
BASELINE = "underlay"
BARE = "wireguard-go"
CORRAL = "corral"
GOAL = 0.80  # issue 6: Corral's container-to-container throughput >= 80 % of bare wireguard-go
# underlay host -> (NetnsHost name, its docker bridge index). High indices: the e2e tests count
# up from 1 and the other benches use 201..213. The names are the agents' host names too.
CORRAL_HOSTS: dict[str, tuple[str, int]] = {"a": ("obha", 221), "b": ("obhb", 222),
                                            "n": ("obhn", 223)}
CORRAL_SERVER_ARGS = ["--heartbeat-interval", "1", "--down-after", "4"]
CORRAL_WG_PORT = 51820
# the containers idle (iperf3 -s and ping run in them by docker exec) and exit at once on TERM
IDLE_CMD = ["sh", "-c", 'trap "exit 0" TERM; while :; do sleep 1 & wait; done']
TOOLS = {"iperf3": "iperf3", "wireguard-go": "wireguard-go", "wg": "wireguard-tools",
         "ping": "iputils-ping", "nsenter": "util-linux", "ip": "iproute2",
         "iptables": "iptables"}





def ifname(host: str) -> str:
    return f"obwg-{host}"


def corral_ifname(host: str) -> str:
    """The agent's WireGuard interface on ``host`` (``wgobha``: machine-wide unique too)."""
    return f"wg{CORRAL_HOSTS[host][0]}"


def tunnel_address(host: str) -> str:
    return f"{TUNNEL_NET}.{HOST_INDEX[host]}"


# ---------------------------------------------------------------- one path


@dataclasses.dataclass
class PathResult:
    """One measurement of one path: ping RTTs, then one iperf3 TCP test.

    Throughputs are in Mbit/s (10^6 bit/s). ``throughput_mbps`` is the receiver's figure
    (what arrived). RTTs are in milliseconds. The CPU figures come from iperf3 (percent of
    one CPU, user + system, over the test). ``extra`` holds what a caller adds, e.g. the
    wireguard-go CPU in cores.
    """

    name: str
    target: str
    seconds: float
    throughput_mbps: float
    sender_mbps: float
    retransmits: int | None
    cpu_client_pct: float | None
    cpu_server_pct: float | None
    pings_sent: int
    rtts_ms: list[float]
    ping_flavor: str
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def ping_loss(self) -> float:
        return 1.0 - len(self.rtts_ms) / self.pings_sent if self.pings_sent else 0.0

    def rtt(self, q: float) -> float | None:
        return percentile(self.rtts_ms, q)

    def to_json(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.update(ping_loss=self.ping_loss, rtt_p50_ms=self.rtt(50), rtt_p99_ms=self.rtt(99),
                   rtt_min_ms=min(self.rtts_ms, default=None),
                   rtt_max_ms=max(self.rtts_ms, default=None))
        return out


def percentile(xs: Sequence[float], q: float) -> float | None:
    """The q-th percentile, interpolated between the closest ranks (None if ``xs`` is empty)."""
    if not xs:
        return None
    s = sorted(xs)
    k = (len(s) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def _run(argv: Sequence[str], timeout: float) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout,
                              check=False, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise BenchError(f"`{' '.join(argv)}`: no answer in {timeout:.0f} s") from None


def ping_flavor(prefix: Sequence[str]) -> str:
    """``iputils`` or ``busybox``: which ``ping`` runs behind ``prefix`` (their options differ)."""
    res = _run([*prefix, "ping", "-V"], 30)
    return "iputils" if "iputils" in res.stdout + res.stderr else "busybox"


def ping_rtts(prefix: Sequence[str], target: str, count: int, interval: float,
              flavor: str) -> list[float]:
    """RTTs (ms) of the replies to ``count`` pings from behind ``prefix`` to ``target``."""
    deadline = int(count * interval + 5)
    if flavor == "iputils":  # -n: no reverse lookups (nothing may leave the namespaces)
        argv = ["ping", "-n", "-c", str(count), "-i", f"{interval:g}", "-W", "1",
                "-w", str(deadline), target]
    else:  # busybox: no -n (never resolves a literal), -W means something else there
        argv = ["ping", "-c", str(count), "-i", f"{interval:g}", "-w", str(deadline), target]
    res = _run([*prefix, *argv], deadline + 30)
    return [float(m) for m in re.findall(r"time[=<]([0-9.]+) ?ms", res.stdout)]


def _wait_listening(proc: subprocess.Popen[bytes], timeout: float) -> str:
    """Read the server's output until iperf3 says it listens; return what it printed.

    Raw reads on the pipe's descriptor: a buffered readline would hide the second line
    from ``select``."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    seen = b""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            seen += chunk
            if b"Server listening" in seen:
                return seen.decode(errors="replace")
        elif proc.poll() is not None:
            break
    raise BenchError(f"iperf3 server did not start listening (exit {proc.poll()}): "
                     f"{seen.decode(errors='replace').strip()[-800:]}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def cpu_ticks(pids: Sequence[int]) -> int:
    """utime + stime of ``pids`` (and their threads), in clock ticks; gone pids count 0."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat(5)
    return total


SNMP_COUNTERS = ("Udp.RcvbufErrors", "Udp.SndbufErrors", "Udp.InErrors", "Tcp.RetransSegs")


def snmp_counters(prefix: Sequence[str]) -> dict[str, int]:
    """``/proc/net/snmp`` of the network namespace behind ``prefix`` (``Udp.RcvbufErrors`` …).

    Works for namespaces and for containers with a ``cat`` (busybox has one)."""
    res = _run([*prefix, "cat", "/proc/net/snmp"], 30)
    lines = res.stdout.splitlines()
    out: dict[str, int] = {}
    for head, values in zip(lines[::2], lines[1::2], strict=False):
        keys, vals = head.split(), values.split()
        if keys and vals and keys[0] == vals[0]:
            for k, v in zip(keys[1:], vals[1:], strict=False):
                with contextlib.suppress(ValueError):
                    out[f"{keys[0].rstrip(':')}.{k}"] = int(v)
    return out


def measure_path(name: str, client_argv_prefix: Sequence[str],
                 server_argv_prefix: Sequence[str], target_address: str, *,
                 seconds: float = 10.0, pings: int = 50, ping_interval: float = 0.05,
                 port: int = IPERF_PORT, flavor: str | None = None,
                 watch_pids: Mapping[str, Sequence[int]] | None = None,
                 counters: Mapping[str, Sequence[str]] | None = None) -> PathResult:
    """Ping, then iperf3 TCP, from ``client_argv_prefix`` to ``target_address``.

    The prefixes are argv prefixes under which ``ping`` and ``iperf3`` run: for a network
    namespace ``["nsenter", "--net=/run/netns/X", "--"]``, for a container
    ``["docker", "-H", "unix:///…", "exec", "CONTAINER"]`` (the image needs iperf3 and a
    ping: ``corral/nettool:1``). The server is ``iperf3 -s -1`` (one test, then it exits,
    with an idle timeout as a backstop) behind ``server_argv_prefix``, and must be reachable
    at ``target_address:port``. ``flavor`` (``iputils``/``busybox``) is detected if None.
    ``watch_pids``: label -> pids whose CPU time is sampled around the iperf3 run, reported
    in ``extra["cpu_cores"][label]``. ``counters``: label -> argv prefix of a network
    namespace whose :data:`SNMP_COUNTERS` are read before and after the iperf3 run; the
    increases go to ``extra["snmp"][label]`` (e.g. UDP receive-buffer drops of a tunnel
    endpoint, which TCP then retransmits).
    """
    if seconds <= 0 or pings < 0 or ping_interval <= 0:
        raise ValueError("seconds and ping_interval must be positive, pings >= 0")
    flavor = flavor or ping_flavor(client_argv_prefix)
    rtts = ping_rtts(client_argv_prefix, target_address, pings, ping_interval, flavor) \
        if pings else []

    idle = int(seconds + 30)
    server = subprocess.Popen(
        [*server_argv_prefix, "iperf3", "-s", "-1", "-p", str(port), "--forceflush",
         "--idle-timeout", str(idle)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True, bufsize=0)
    try:
        _wait_listening(server, 30)
        watch = {k: list(v) for k, v in (watch_pids or {}).items()}
        snmp_before = {k: snmp_counters(v) for k, v in (counters or {}).items()}
        before = {k: cpu_ticks(v) for k, v in watch.items()}
        t0 = time.monotonic()
        res = _run([*client_argv_prefix, "iperf3", "-c", target_address, "-p", str(port),
                    "-t", f"{seconds:g}", "-J"], seconds + 60)
        wall = time.monotonic() - t0
        after = {k: cpu_ticks(v) for k, v in watch.items()}
        snmp_after = {k: snmp_counters(v) for k, v in (counters or {}).items()}
        try:
            data = json.loads(res.stdout)
        except json.JSONDecodeError:
            raise BenchError(f"{name}: iperf3 client printed no JSON (exit {res.returncode}): "
                             f"{res.stdout.strip()[-500:]} {res.stderr.strip()[-500:]}") from None
        if res.returncode != 0 or data.get("error"):
            raise BenchError(f"{name}: iperf3 -c {target_address} failed (exit "
                             f"{res.returncode}): {data.get('error') or res.stderr.strip()}")
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(10)
    finally:
        _stop(server)

    end = data.get("end", {})
    sent, received = end.get("sum_sent", {}), end.get("sum_received", {})
    cpu = end.get("cpu_utilization_percent", {})
    hz = os.sysconf("SC_CLK_TCK")
    extra: dict[str, Any] = {"iperf3_wall_s": round(wall, 3)}
    if watch:
        extra["cpu_cores"] = {k: round((after[k] - before[k]) / hz / wall, 3) for k in watch}
    if counters:
        extra["snmp"] = {k: {c: snmp_after[k].get(c, 0) - snmp_before[k].get(c, 0)
                             for c in SNMP_COUNTERS} for k in counters}
    return PathResult(
        name=name, target=target_address, seconds=float(received.get("seconds") or seconds),
        throughput_mbps=float(received.get("bits_per_second", 0.0)) / 1e6,
        sender_mbps=float(sent.get("bits_per_second", 0.0)) / 1e6,
        retransmits=sent.get("retransmits"),
        cpu_client_pct=cpu.get("host_total"), cpu_server_pct=cpu.get("remote_total"),
        pings_sent=pings, rtts_ms=rtts, ping_flavor=flavor, extra=extra)


# ---------------------------------------------------------------- the test bed


@dataclasses.dataclass
class Testbed:
    """The underlay with three hosts and a bare wireguard-go mesh (see the module doc).

    ``namespaces``: underlay host -> an existing network namespace (a NetnsHost's, where
    Corral runs) to attach instead of making a fresh one, so every row of the bench runs
    between the same namespaces over the same veths."""

    underlay: Underlay
    keys: Path
    mtu: int
    namespaces: dict[str, str] = dataclasses.field(default_factory=dict)
    wg: dict[str, WireGuard] = dataclasses.field(default_factory=dict)
    pub: dict[str, str] = dataclasses.field(default_factory=dict)

    def host(self, name: str) -> UnderlayHost:
        return self.underlay.host(name)

    def build(self) -> None:
        ul = self.underlay
        ul.create()
        for name in HOST_INDEX:
            behind = NAT_ROUTER if name == "n" else None
            if name in self.namespaces:
                ul.attach(self.namespaces[name], name, behind=behind)
            else:
                ul.add_host(name, behind=behind)
        for name in HOST_INDEX:
            self.wg[name] = WireGuard(netns_runner(self.host(name).netns_path),
                                      backend="userspace")
            self.pub[name] = self.wg[name].ensure_private_key(self.keys / f"{name}.key")
        # the responders first: a and b, then n (which dials a)
        for name in ("a", "b", "n"):
            self.wg[name].ensure_interface(ifname(name), f"{tunnel_address(name)}/24", WG_PORT,
                                           self.keys / f"{name}.key", mtu=self.mtu)
        peers = {"a": ["b", "n"], "b": ["a"], "n": ["a"]}
        for name, others in peers.items():
            self.wg[name].set_peers(ifname(name), [self._peer(name, o) for o in others])
        for client, server in PAIRS.values():
            if not ul.ping(client, tunnel_address(server), tries=10, wait=1.0):
                raise BenchError(f"no ping from {client} to {server} through the tunnel "
                                 f"({tunnel_address(server)})")

    def _peer(self, me: str, other: str) -> Peer:
        o = self.host(other)
        endpoint = None if o.behind_nat else f"{o.address}:{WG_PORT}"
        keepalive = NAT_KEEPALIVE if self.host(me).behind_nat else 0
        return Peer(self.pub[other], endpoint, [f"{tunnel_address(other)}/32"], keepalive)

    def wg_pids(self) -> list[int]:
        return [p for name in self.wg if (p := find_wireguard_go(ifname(name))) is not None]

    def teardown(self) -> None:
        for name, wg in self.wg.items():
            if name in self.underlay.hosts and Path(self.host(name).netns_path).exists():
                with contextlib.suppress(Exception):
                    wg.remove_interface(ifname(name))
        # kills whatever is left in the namespaces it made and deletes them; of an attached
        # namespace it removes only ul0
        self.underlay.teardown()


class Corral:
    """A real ``corral server`` and, on underlay hosts a, b and n, a NetnsHost (dockerd) with a
    real agent that has the overlay on, and one ``corral/nettool:1`` container per host.

    The recipe of tests/e2e/test_overlay.py's ``bed`` fixture. Order: :meth:`start_hosts`
    (server, namespaces, dockerds: before the underlay, which attaches these namespaces),
    then, once the underlay is wired, :meth:`start_agents`, :meth:`wait_mesh` and
    :meth:`start_containers`. :meth:`teardown` undoes whatever of it happened."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.registry = ""
        self.image = ""
        self.server: ServerProc | None = None
        self.hosts: dict[str, NetnsHost] = {}
        self.agents: dict[str, AgentProc] = {}
        self.cids: dict[str, str] = {}
        self.pids: dict[str, int] = {}  # underlay host -> its container's main pid
        self.addresses: dict[str, str] = {}  # underlay host -> its container's overlay address
        self.network: dict[str, Any] = {}  # GET /api/v1/network once the mesh was up
        self.timings: dict[str, float] = {}

    def _timed(self, what: str, t0: float) -> None:
        self.timings[what] = round(time.monotonic() - t0, 1)

    def start_hosts(self) -> None:
        t0 = time.monotonic()
        self.registry = ensure_registry()
        ensure_binfmt()  # only a cold build of the image needs it (its arm64 smoke check)
        self.image = ensure_nettool(self.registry)
        # kept before start(): a signal while it starts must still find it to stop
        self.server = ServerProc(self.workdir / "server", extra_args=CORRAL_SERVER_ARGS)
        self.server.start()
        ports = [self.server.port, int(self.registry.rsplit(":", 1)[1])]
        for h, (name, index) in CORRAL_HOSTS.items():
            self.hosts[h] = NetnsHost(name, index, ports)  # kept before start: stopped if half-up

        def up(host: NetnsHost) -> None:
            host.start()
            # pulled now, while the other engines start, instead of by the agent later
            _run(["docker", "-H", host.docker_host, "pull", "-q", self.image], 300)

        with ThreadPoolExecutor(len(self.hosts)) as pool:
            list(pool.map(up, self.hosts.values()))
        self._timed("server_and_engines_s", t0)

    def start_agents(self, tb: Testbed) -> None:
        assert self.server is not None
        t0 = time.monotonic()
        join = self.server.join_token()
        for h, host in self.hosts.items():
            self.agents[h] = AgentProc(
                self.server.url, join, self.workdir / f"agent-{host.name}",
                docker_host=host.docker_host, name=host.name, netns=host, overlay=True,
                extra_args=["--overlay-endpoint", f"{tb.host(h).address}:{CORRAL_WG_PORT}",
                            "--overlay-interface", corral_ifname(h),
                            "--overlay-probe-every", "2"])
            self.agents[h].start()
        for agent in self.agents.values():
            agent.host_id(60)
        self._timed("agents_joined_s", t0)

    def api_get(self, path: str) -> Any:
        assert self.server is not None
        with self.server.client() as c:
            r = c.get(path)
            r.raise_for_status()
            return r.json()

    def _mesh_up(self) -> dict[str, Any]:
        net = self.api_get("/api/v1/network")
        names = {h.name for h in self.hosts.values()}
        if {h["name"] for h in net["hosts"]} != names:
            return {}
        for row in net["hosts"]:
            if not row["overlay"] or row["error"]:
                return {}
            peers = {name: p["state"] for name, p in (row["peers"] or {}).items()}
            if set(peers) != names - {row["name"]} or set(peers.values()) != {"up"}:
                return {}
        return dict(net)

    def wait_mesh(self, timeout: float) -> None:
        t0 = time.monotonic()
        try:
            self.network = wait_for(self._mesh_up, timeout, "every Corral host's peers up",
                                    interval=0.5)
        except TimeoutError as exc:
            try:
                last = json.dumps(self.api_get("/api/v1/network"))[:3000]
            except Exception as why:  # the server is gone too: say that instead
                last = f"GET /api/v1/network failed: {why}"
            raise BenchError(f"{exc}: {last}") from None
        self._timed("mesh_up_s", t0)

    def service(self, h: str) -> str:
        return f"nettool-{h}"

    def start_containers(self, timeout: float) -> None:
        assert self.server is not None
        t0 = time.monotonic()
        with self.server.client() as c:
            for h, host in self.hosts.items():
                r = c.post("/api/v1/services", json={
                    "name": self.service(h), "image": self.image, "replicas": 1,
                    "constraints": [f"node.hostname=={host.name}"], "command": IDLE_CMD})
                if r.status_code != 201:
                    raise BenchError(f"POST /api/v1/services {self.service(h)}: "
                                     f"{r.status_code} {r.text}")

        def running() -> bool:
            return all(self.api_get(f"/api/v1/services/{self.service(h)}")["running"] == 1
                       for h in self.hosts)

        try:
            wait_for(running, timeout, "the nettool containers running", interval=0.5)
        except TimeoutError as exc:
            raise BenchError(str(exc)) from None
        for h, host in self.hosts.items():
            res = _run(["docker", "-H", host.docker_host, "ps", "-q", "--no-trunc", "--filter",
                        f"label=io.corral.service={self.service(h)}"], 30)
            cids = res.stdout.split()
            if len(cids) != 1:
                raise BenchError(f"{host.name}: expected one {self.service(h)} container, "
                                 f"found {cids}")
            self.cids[h] = cids[0]
            info = json.loads(_run(["docker", "-H", host.docker_host, "inspect", cids[0]],
                                   30).stdout)[0]
            addr = ((info["NetworkSettings"]["Networks"].get("corral") or {})
                    .get("IPAddress") or "")
            if not addr:
                raise BenchError(f"{host.name}: container {cids[0][:12]} has no address on "
                                 f"the corral network: {info['NetworkSettings']['Networks']}")
            self.addresses[h] = addr
            self.pids[h] = int(info["State"]["Pid"])
        for client, server in PAIRS.values():
            target = self.addresses[server]
            ok = False
            for _ in range(30):  # the first packets may wait for a handshake
                res = _run([*self.prefix(client), "ping", "-c", "1", "-W", "1", target], 15)
                if res.returncode == 0:
                    ok = True
                    break
            if not ok:
                raise BenchError(f"no ping from {client}'s container to {server}'s ({target}) "
                                 f"across the Corral overlay")
        self._timed("containers_up_s", t0)

    def prefix(self, h: str) -> list[str]:
        """The argv prefix for commands in ``h``'s nettool container."""
        return ["docker", "-H", self.hosts[h].docker_host, "exec", self.cids[h]]

    def netns_prefix(self, h: str) -> list[str]:
        """``nsenter`` into ``h``'s container's network namespace, with this machine's tools
        (iputils ping, like the other rows: busybox's ping timestamps in user space)."""
        return ["nsenter", f"--net=/proc/{self.pids[h]}/ns/net", "--"]

    def wg_pids(self) -> list[int]:
        return [p for h in self.hosts if (p := find_wireguard_go(corral_ifname(h))) is not None]

    def agent_pids(self) -> list[int]:
        return [a.proc.pid for a in self.agents.values() if a.proc is not None]

    def link_detail(self, h: str, dev: str) -> str:
        res = _run(["nsenter", f"--net={self.hosts[h].netns_path}", "--", "ip", "-d", "link",
                    "show", "dev", dev], 15)
        return res.stdout

    def teardown(self) -> None:
        """Agents, server, Corral's WireGuard interfaces, then the namespaces with their
        dockerds and containers. Best effort: each step runs even if an earlier one failed."""
        for agent in self.agents.values():
            with contextlib.suppress(Exception):
                agent.stop()
        if self.server is not None:
            with contextlib.suppress(Exception):
                self.server.stop()
        for h, host in self.hosts.items():
            if Path(host.netns_path).exists():
                with contextlib.suppress(Exception):
                    WireGuard(netns_runner(host.netns_path)).remove_interface(corral_ifname(h))
        errors = []

        def stop(host: NetnsHost) -> None:
            try:
                host.stop()
            except Exception as exc:  # reported; the others still stop
                errors.append(f"{host.name}: {exc}")

        with ThreadPoolExecutor(max(1, len(self.hosts))) as pool:
            list(pool.map(stop, self.hosts.values()))
        if errors:
            log("teardown: " + "; ".join(errors))


def paths(tb: Testbed, corral: Corral | None = None
          ) -> list[tuple[str, str, list[str], list[str], str]]:
    """(pair, row, client prefix, server prefix, target) for every path measured."""
    out = []
    for pair, (client, server) in PAIRS.items():
        c, s = tb.host(client), tb.host(server)
        out.append((pair, BASELINE, c.prefix(), s.prefix(), s.address))
        out.append((pair, BARE, c.prefix(), s.prefix(), tunnel_address(server)))
        if corral is not None:
            out.append((pair, CORRAL, corral.prefix(client), corral.prefix(server),
                        corral.addresses[server]))
    return out


# ---------------------------------------------------------------- summary and report


def summarise(results: list[PathResult]) -> dict[str, Any]:
    """Rounds of one path -> median throughput, pooled RTT percentiles, and the raw rounds."""
    rtts = [r for res in results for r in res.rtts_ms]
    sent = sum(r.pings_sent for r in results)
    cores: dict[str, list[float]] = {}
    for r in results:
        for k, v in r.extra.get("cpu_cores", {}).items():
            cores.setdefault(k, []).append(v)
    first = results[0]
    out: dict[str, Any] = {
        "target": first.target,
        "throughput_mbps": statistics.median(r.throughput_mbps for r in results),
        "throughput_min_mbps": min(r.throughput_mbps for r in results),
        "throughput_max_mbps": max(r.throughput_mbps for r in results),
        "retransmits": statistics.median(r.retransmits or 0 for r in results),
        "cpu_client_pct": statistics.median(r.cpu_client_pct or 0.0 for r in results),
        "cpu_server_pct": statistics.median(r.cpu_server_pct or 0.0 for r in results),
        "cpu_cores": {k: statistics.median(v) for k, v in cores.items()},
        # UDP datagrams dropped for a full receive buffer, both ends, median over rounds
        "udp_rcvbuf_drops": statistics.median(
            sum(side.get("Udp.RcvbufErrors", 0) for side in r.extra.get("snmp", {}).values())
            for r in results),
        "pings_sent": sent, "pings_received": len(rtts),
        "ping_loss": 1.0 - len(rtts) / sent if sent else 0.0,
        "rtt_p50_ms": percentile(rtts, 50), "rtt_p99_ms": percentile(rtts, 99),
        "rtt_min_ms": min(rtts, default=None), "rtt_max_ms": max(rtts, default=None),
        "rounds": [r.to_json() for r in results],
    }
    also = [r for res in results for r in res.extra.get("rtts_iputils_ms", [])]
    if any("rtts_iputils_ms" in res.extra for res in results):
        # the Corral row's second ping series: iputils in the container's namespace
        out.update(rtt_iputils_p50_ms=percentile(also, 50), rtt_iputils_p99_ms=percentile(also, 99),
                   pings_iputils_received=len(also))
    return out


def ratios(rows: dict[str, dict[str, Any]], base_key: str = BASELINE
           ) -> dict[str, dict[str, float | None]]:
    """Every other row / the row ``base_key`` (the underlay): throughput and RTT p50/p99."""
    base = rows[base_key]
    out = {}
    for key, row in rows.items():
        if key == base_key:
            continue
        out[key] = {m: (row[m] / base[m] if row[m] is not None and base[m] else None)
                    for m in ("throughput_mbps", "rtt_p50_ms", "rtt_p99_ms")}
    return out


def goal(paths_: dict[str, dict[str, dict[str, Any]]]) -> dict[str, Any] | None:
    """Issue 6's goal: Corral's throughput >= GOAL x bare wireguard-go's, on every pair."""
    per_pair = {}
    for pair, rows in paths_.items():
        if CORRAL not in rows or BARE not in rows:
            return None
        bare = rows[BARE]["throughput_mbps"]
        per_pair[pair] = rows[CORRAL]["throughput_mbps"] / bare if bare else 0.0
    return {"threshold": GOAL, "metric": f"throughput {CORRAL} / {BARE}",
            "ratios": per_pair, "pass": all(r >= GOAL for r in per_pair.values())}


def fmt(x: float | None, w: int = 8, p: int = 1) -> str:
    return f"{x:{w}.{p}f}" if isinstance(x, (int, float)) else " " * (w - 1) + "-"


def _wg_cores(row: dict[str, Any]) -> float | None:
    cores = [v for k, v in row["cpu_cores"].items() if "wireguard-go" in k]
    return sum(cores) if cores else None


def report(out: dict[str, Any]) -> None:
    m = out["meta"]
    print()
    print(f"Overlay: iperf3 TCP {m['seconds']:g} s x {m['rounds']} round(s) (median), "
          f"{m['pings']} pings every {m['ping_interval']:g} s per round; WireGuard MTU "
          f"{m['mtu']}")
    where = ("every row between the same namespaces (the Corral hosts' NetnsHosts, "
             "crl-obh{a,b,n})" if m.get("same_namespaces") else
             "fresh namespaces crl-ul-ob-{a,b,n}; no Corral row")
    print(f"hosts: {where}")
    print(f"{'pair':7} {'path':13} {'target':11} {'Mbit/s':>9} {'min':>8} {'max':>8} "
          f"{'retr':>6} {'udpdrop':>7} {'RTT p50':>8} {'p99':>8} {'loss':>5} {'wg-go cores':>11}")
    for pair, rows in out["paths"].items():
        for key, r in rows.items():
            print(f"{pair:7} {key:13} {r['target']:11} {fmt(r['throughput_mbps'], 9)} "
                  f"{fmt(r['throughput_min_mbps'])} {fmt(r['throughput_max_mbps'])} "
                  f"{r['retransmits']:6.0f} {r['udp_rcvbuf_drops']:7.0f} "
                  f"{fmt(r['rtt_p50_ms'], 8, 3)} "
                  f"{fmt(r['rtt_p99_ms'], 8, 3)} {r['ping_loss'] * 100:4.0f}% "
                  f"{fmt(_wg_cores(r), 11, 2)}")
    print("retr: TCP retransmits; udpdrop: UDP datagrams dropped for a full socket receive "
          "buffer (both hosts);\nRTT in ms; wg-go cores: CPU of all wireguard-go processes during "
          "the iperf3 run (1.0 = one CPU)")
    for pair, rs in out["ratios"].items():
        for key, r in rs.items():
            print(f"{pair}: {key}/{BASELINE}: throughput {fmt(r['throughput_mbps'], 0, 3)}x, "
                  f"RTT p50 {fmt(r['rtt_p50_ms'], 0, 2)}x, p99 {fmt(r['rtt_p99_ms'], 0, 2)}x")
    for pair, r in out.get("ratios_vs_wireguard_go", {}).items():
        c = r.get(CORRAL)
        if c:
            print(f"{pair}: {CORRAL}/{BARE}: throughput {fmt(c['throughput_mbps'], 0, 3)}x, "
                  f"RTT p50 {fmt(c['rtt_p50_ms'], 0, 2)}x, p99 {fmt(c['rtt_p99_ms'], 0, 2)}x")
    for pair, rows in out["paths"].items():
        c, b = rows.get(CORRAL, {}), rows.get(BARE, {})
        if c.get("rtt_iputils_p50_ms") is not None:
            r50 = (c["rtt_iputils_p50_ms"] / b["rtt_p50_ms"]) if b.get("rtt_p50_ms") else None
            print(f"{pair}: {CORRAL} RTT with iputils ping in the container's namespace (the other "
                  f"rows' tool): p50 {fmt(c['rtt_iputils_p50_ms'], 0, 3)} ms, p99 "
                  f"{fmt(c['rtt_iputils_p99_ms'], 0, 3)} ms; p50 / {BARE} {fmt(r50, 0, 2)}x")
    g = out.get("goal")
    if g:
        detail = ", ".join(f"{k} {v * 100:.0f} %" for k, v in g["ratios"].items())
        print(f"goal ≥ {g['threshold'] * 100:.0f} % of bare wireguard-go: "
              f"{'PASS' if g['pass'] else 'FAIL'} (throughput: {detail})"
              + (" [--quick: one short round, indicative only]" if m["quick"] else ""))
    print(f"wireguard-go: {m['wireguard_go']}; its TUN: {m['wireguard_link']}; UDP receive "
          f"buffer {m['udp_rmem_default']} B (net.core.rmem_default, wireguard-go sets none)")
    if m.get("corral"):
        c = m["corral"]
        print(f"corral: containers {', '.join(f'{h} {a}' for h, a in c['addresses'].items())} "
              f"(eth0 mtu {c['container_mtu']}); {c['interface_mtu']}; "
              f"setup {c['timings']}")
    print(f"load average {m['load_before']} -> {m['load_after']} on {m['cpus']} CPUs")


def _sysctl(tb: Testbed, host: str, key: str) -> int | None:
    res = tb.underlay.run(host, ["sysctl", "-n", key], check=False)
    return int(res.stdout) if res.returncode == 0 and res.stdout.strip().isdigit() else None


def _link_detail(tb: Testbed, host: str, dev: str) -> str | None:
    res = tb.underlay.run(host, ["ip", "-d", "link", "show", "dev", dev], check=False)
    m = re.search(r"(tun type \S+ pi \S+ vnet_hdr \S+)", res.stdout)
    mtu = re.search(r"mtu (\d+)", res.stdout)
    return f"{m.group(1) if m else 'not a tun'}, mtu {mtu.group(1) if mtu else '?'}" \
        if res.returncode == 0 else None


def _version(argv: list[str]) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        res = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        return (res.stdout + res.stderr).strip().splitlines()[0]
    return "?"


def _corral_meta(tb: Testbed, corral: Corral) -> dict[str, Any]:
    eth0 = _run([*corral.prefix("a"), "cat", "/sys/class/net/eth0/mtu"], 30).stdout.strip()
    return {
        "server_args": CORRAL_SERVER_ARGS, "image": corral.image,
        "hosts": {h: {"netns_host": host.name, "netns": host.netns, "interface": corral_ifname(h),
                      "container": corral.cids[h][:12], "address": corral.addresses[h],
                      "subnet": next((r["subnet"] for r in corral.network.get("hosts", [])
                                      if r["name"] == host.name), None)}
                  for h, host in corral.hosts.items()},
        "addresses": dict(corral.addresses),
        "container_mtu": int(eth0) if eth0.isdigit() else None,
        "interface_mtu": f"{corral_ifname('a')}: " + (_link_detail(tb, "a", corral_ifname("a"))
                                                      or "?"),
        "timings": dict(corral.timings),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=None, help="iperf3 test length (10; --quick 2)")
    ap.add_argument("--pings", type=int, default=None, help="pings per path and round (50; --quick 10)")
    ap.add_argument("--ping-interval", type=float, default=0.05, help="seconds between pings")
    ap.add_argument("--rounds", type=int, default=None, help="rounds over all paths (3; --quick 1)")
    ap.add_argument("--mtu", type=int, default=1420, help="MTU of the bare WireGuard interfaces")
    ap.add_argument("--no-corral", action="store_true",
                    help="only the underlay and bare wireguard-go rows, in fresh namespaces")
    ap.add_argument("--quick", action="store_true", help="smoke test: 2 s, 10 pings, 1 round")
    ap.add_argument("--json", action="store_true", help="also print the result as JSON")
    ap.add_argument("--keep", action="store_true",
                    help="keep the temporary directory (server and agent logs, keys)")
    args = ap.parse_args(argv)
    seconds = args.seconds or (2.0 if args.quick else 10.0)
    pings = args.pings if args.pings is not None else (10 if args.quick else 50)
    rounds = args.rounds or (1 if args.quick else 3)
    if not (0.5 <= seconds <= 600 and 1 <= pings <= 10000 and 1 <= rounds <= 50
            and 0.002 <= args.ping_interval <= 5 and 1280 <= args.mtu <= 9000):
        ap.error("--seconds 0.5..600, --pings 1..10000, --rounds 1..50, "
                 "--ping-interval 0.002..5, --mtu 1280..9000")
    if os.geteuid() != 0:
        ap.error("run as root (network namespaces, wireguard-go)")
    tools = dict(TOOLS) if args.no_corral else {**TOOLS, "docker": "docker.io",
                                                 "dockerd": "docker.io"}
    missing = sorted({pkg for tool, pkg in tools.items() if shutil.which(tool) is None})
    if missing:
        ap.error(f"missing Debian packages: {' '.join(missing)} (scripts/install-deps.sh)")
    signal.signal(signal.SIGTERM, on_sigterm)

    work = Path(tempfile.mkdtemp(prefix="corral-bench-overlay-"))
    keys = work / "keys"
    keys.mkdir()
    corral = None if args.no_corral else Corral(work)
    tb = Testbed(Underlay(UNDERLAY), keys, args.mtu)
    out: dict[str, Any] = {}
    t_start = time.monotonic()
    try:
        load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
        if corral is not None:
            corral.start_hosts()
            log(f"corral server on :{corral.server.port if corral.server else '?'}, engines "
                f"{', '.join(h.name for h in corral.hosts.values())} up, {corral.image} pulled "
                f"({corral.timings['server_and_engines_s']} s)")
            tb.namespaces = {h: host.netns_path for h, host in corral.hosts.items()}
        tb.build()
        log(f"underlay {UNDERLAY} up: a {tb.host('a').address}, b {tb.host('b').address}, "
            f"n {tb.host('n').address} behind {NAT_ROUTER} ({tb.host(NAT_ROUTER).address}); "
            f"wireguard-go tunnels answer")
        if corral is not None:
            corral.start_agents(tb)
            corral.wait_mesh(90)
            corral.start_containers(120)
            log(f"corral overlay up: containers {corral.addresses}; {corral.timings}")
        todo = paths(tb, corral)
        flavors: dict[tuple[str, ...], str] = {}
        results: dict[tuple[str, str], list[PathResult]] = {(p, r): [] for p, r, *_ in todo}
        for rnd in range(rounds):
            shift = rnd % len(todo)
            for pair, row, cprefix, sprefix, target in todo[shift:] + todo[:shift]:
                client, server = PAIRS[pair]
                flavor = flavors.setdefault(tuple(cprefix), ping_flavor(cprefix))
                # on every row: there it shows the idle cost of the tunnels not in use
                watch = {"wireguard-go": tb.wg_pids()}
                if corral is not None:
                    watch["corral wireguard-go"] = corral.wg_pids()
                    watch["corral agents"] = corral.agent_pids()
                # the hosts' namespaces: that is where wireguard-go's UDP sockets are
                res = measure_path(f"{pair}/{row}", cprefix, sprefix, target, seconds=seconds,
                                   pings=pings, ping_interval=args.ping_interval,
                                   flavor=flavor, watch_pids=watch,
                                   counters={"client": tb.host(client).prefix(),
                                             "server": tb.host(server).prefix()})
                if row == CORRAL and corral is not None and pings:
                    res.extra["rtts_iputils_ms"] = ping_rtts(
                        corral.netns_prefix(client), target, pings, args.ping_interval,
                        "iputils")
                results[(pair, row)].append(res)
                log(f"round {rnd + 1}/{rounds} {pair:6} {row:13} {res.throughput_mbps:9.1f} "
                    f"Mbit/s, RTT p50 {fmt(res.rtt(50), 0, 3)} ms")
        rows: dict[str, dict[str, dict[str, Any]]] = {}
        for (pair, row), rs in results.items():
            rows.setdefault(pair, {})[row] = summarise(rs)
        wg_status = tb.wg["a"].status(ifname("a"))
        out = {
            "meta": {
                "seconds": seconds, "pings": pings, "ping_interval": args.ping_interval,
                "rounds": rounds, "quick": args.quick, "mtu": args.mtu,
                "same_namespaces": corral is not None,
                # the receive buffer wireguard-go's UDP sockets get (it sets none itself)
                "udp_rmem_default": _sysctl(tb, "a", "net.core.rmem_default"),
                "underlay": UNDERLAY, "pairs": {k: list(v) for k, v in PAIRS.items()},
                "hosts": {n: {"address": tb.host(n).address, "netns": tb.host(n).netns,
                              "tunnel": tunnel_address(n), "interface": ifname(n),
                              "port": WG_PORT}
                          for n in HOST_INDEX},
                "wireguard_backend": wg_status.backend,
                # wireguard-go's TUN: "vnet_hdr off" means no GSO/GRO, one syscall per packet
                "wireguard_link": _link_detail(tb, "a", ifname("a")),
                "iperf3": _version(["iperf3", "--version"]),
                "wireguard_go": _version(["wireguard-go", "--version"]),
                "corral": _corral_meta(tb, corral) if corral is not None else None,
                "kernel": platform.release(), "machine": platform.machine(),
                "cpus": os.cpu_count(), "load_before": load_before,
                "load_after": " ".join(f"{x:.2f}" for x in os.getloadavg()),
                "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
            "paths": rows,
            "ratios": {pair: ratios(r) for pair, r in rows.items()},
        }
        if corral is not None:
            out["ratios_vs_wireguard_go"] = {pair: ratios(r, BARE) for pair, r in rows.items()}
            out["goal"] = goal(rows)
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        return 130
    except (BenchError, TimeoutError, RuntimeError, OSError, httpx.HTTPError) as exc:
        log(f"FAILED: {type(exc).__name__}: {exc}" + (f" (logs kept in {work})" if args.keep
                                                      else " (--keep keeps the logs)"))
        return 1
    finally:
        t_down = time.monotonic()
        try:
            tb.teardown()
        except Exception as exc:  # the Corral side must still go
            log(f"teardown of the underlay: {exc}")
        if corral is not None:
            corral.teardown()
        if args.keep:
            log(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
        log(f"cleaned up in {time.monotonic() - t_down:.1f} s; "
            f"{time.monotonic() - t_start:.0f} s in all")
    report(out)
    if args.json:
        print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
