#!/usr/bin/env python3
"""Overlay baseline: TCP throughput and ping RTT on the underlay and across bare wireguard-go.

The first half of the overlay benchmark (issue 6). It measures the ceiling that an overlay
built on WireGuard can reach on this machine, before Corral adds anything. Everything runs
here on real kernel networking. Traffic goes only to addresses inside the namespaces that
this bench creates.

- Underlay ``ob`` (``testbed.underlay``): public hosts ``a`` and ``b`` on one switch
  (10.231.0.0/24), and host ``n`` behind the NAT router ``nat1`` (MASQUERADE, LAN
  10.232.1.0/24). Namespaces ``crl-ul-ob``, ``crl-ul-ob-{a,b,n,nat1}``.
- Bare wireguard-go: one interface per host (``obwg-a``, ``obwg-b``, ``obwg-n``: the UAPI
  socket path is machine-wide, so names must differ), created and configured with
  ``corral.agent.wireguard.WireGuard`` and ``netns_runner``. Keys are generated in each
  namespace. Tunnel addresses are 10.239.0.1/2/3 (/24), MTU ``--mtu`` (default 1420, the
  agent's), port 51820. ``a`` and ``b`` know each other's endpoints. ``n`` knows ``a``'s and
  keeps the NAT mapping open with a 1 s persistent keepalive. ``a`` learns ``n``'s endpoint
  from its handshake. No Corral server or agent runs: this is the raw tunnel.
- Two pairs, each measured on two paths:
  - ``public``: ``a`` → ``b``, on the underlay (to 10.231.0.2) and through the tunnel (to
    10.239.0.2);
  - ``nat``: ``n`` → ``a`` (the NATed side is the client: it is the one that can open
    connections), on the underlay through the NAT (to 10.231.0.1) and through the tunnel
    (to 10.239.0.1).
- Each path (:func:`measure_path`): ``--pings`` pings (default 50) every
  ``--ping-interval`` s (default 0.05) from the client side, giving RTT p50/p99 and loss.
  Then an iperf3 TCP test for ``--seconds`` (default 10): a one-off server ``iperf3 -s -1``
  on the server side, and ``iperf3 -c TARGET -t S -J`` on the client side (one stream,
  client → server). The throughput is the receiver's figure. Around the iperf3 run, the
  bench also samples the CPU time of the wireguard-go processes (in cores: 1.0 = one CPU
  busy for the whole test).
- ``--rounds`` (default 3; ``--quick`` 1): the paths are measured round-robin, rotating the
  order each round, so machine noise hits all paths alike. Reported: the median throughput
  over the rounds, and RTT percentiles over all pings pooled. Ratios are tunnel / underlay
  for each pair.

:func:`measure_path` takes argv prefixes, not hosts, so the same function measures
namespaces (``nsenter --net=/run/netns/X --``) and containers
(``docker -H unix://… exec CONTAINER``, with ``corral/nettool:1`` from
``testbed.net_images``). A later "corral overlay" row plugs in as a third path per pair.

iperf3 here is Debian's ``iperf3`` package on this machine. It runs in the host namespaces
directly. ``wireguard-go``, ``wg`` (wireguard-tools) and ``ping`` (iputils-ping) must be
installed too: scripts/install-deps.sh installs them all.

Run from the repository root (as root)::

    /opt/corral-venv/bin/python bench/overlay.py [--seconds 10] [--rounds 3] [--json] [--quick]

``--quick`` (2 s of iperf3, 10 pings, 1 round) is the smoke test. Cleanup on success,
failure and Ctrl-C/SIGTERM: the WireGuard interfaces are removed (which ends wireguard-go),
every process left in the namespaces is killed, and the namespaces are deleted.
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
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from corral.agent.wireguard import Peer, WireGuard, find_wireguard_go, netns_runner  # noqa: E402
from testbed.underlay import Underlay, UnderlayHost  # noqa: E402

UNDERLAY = "ob"
WG_PORT = 51820
TUNNEL_NET = "10.239.0"  # host i gets 10.239.0.i/24 on its WireGuard interface
HOST_INDEX = {"a": 1, "b": 2, "n": 3}
NAT_ROUTER = "nat1"
NAT_KEEPALIVE = 1  # the NATed host's keepalive: the mapping stays open, a learns n's endpoint
IPERF_PORT = 5201
# pair -> (client host, server host); rows per pair, in the order they are printed
PAIRS: dict[str, tuple[str, str]] = {"public": ("a", "b"), "nat": ("n", "a")}
BASELINE = "underlay"
TOOLS = {"iperf3": "iperf3", "wireguard-go": "wireguard-go", "wg": "wireguard-tools",
         "ping": "iputils-ping", "nsenter": "util-linux", "ip": "iproute2",
         "iptables": "iptables"}


class BenchError(RuntimeError):
    pass


def _sigterm(*_: object) -> None:
    raise KeyboardInterrupt("SIGTERM")


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def ifname(host: str) -> str:
    return f"obwg-{host}"


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
    """The underlay with three hosts and a bare wireguard-go mesh (see the module doc)."""

    underlay: Underlay
    keys: Path
    mtu: int
    wg: dict[str, WireGuard] = dataclasses.field(default_factory=dict)
    pub: dict[str, str] = dataclasses.field(default_factory=dict)

    def host(self, name: str) -> UnderlayHost:
        return self.underlay.host(name)

    def build(self) -> None:
        ul = self.underlay
        ul.create()
        ul.add_host("a")
        ul.add_host("b")
        ul.add_host("n", behind=NAT_ROUTER)
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
        self.underlay.teardown()  # kills whatever is left in the namespaces, deletes them


def paths(tb: Testbed) -> list[tuple[str, str, list[str], list[str], str]]:
    """(pair, row, client prefix, server prefix, target) for every path measured."""
    out = []
    for pair, (client, server) in PAIRS.items():
        c, s = tb.host(client), tb.host(server)
        out.append((pair, BASELINE, c.prefix(), s.prefix(), s.address))
        out.append((pair, "wireguard-go", c.prefix(), s.prefix(), tunnel_address(server)))
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
    return {
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


def ratios(rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Every non-baseline row / the baseline: throughput and RTT p50/p99."""
    base = rows[BASELINE]
    out = {}
    for key, row in rows.items():
        if key == BASELINE:
            continue
        out[key] = {m: (row[m] / base[m] if row[m] is not None and base[m] else None)
                    for m in ("throughput_mbps", "rtt_p50_ms", "rtt_p99_ms")}
    return out


def fmt(x: float | None, w: int = 8, p: int = 1) -> str:
    return f"{x:{w}.{p}f}" if isinstance(x, (int, float)) else " " * (w - 1) + "-"


def report(out: dict[str, Any]) -> None:
    m = out["meta"]
    print()
    print(f"Overlay baseline: iperf3 TCP {m['seconds']:g} s x {m['rounds']} round(s) (median), "
          f"{m['pings']} pings every {m['ping_interval']:g} s per round; wireguard-go MTU "
          f"{m['mtu']}")
    print(f"{'pair':7} {'path':13} {'target':11} {'Mbit/s':>9} {'min':>8} {'max':>8} "
          f"{'retr':>6} {'udpdrop':>7} {'RTT p50':>8} {'p99':>8} {'loss':>5} {'wg-go cores':>11}")
    for pair, rows in out["paths"].items():
        for key, r in rows.items():
            cores = sum(r["cpu_cores"].values()) if r["cpu_cores"] else None
            print(f"{pair:7} {key:13} {r['target']:11} {fmt(r['throughput_mbps'], 9)} "
                  f"{fmt(r['throughput_min_mbps'])} {fmt(r['throughput_max_mbps'])} "
                  f"{r['retransmits']:6.0f} {r['udp_rcvbuf_drops']:7.0f} "
                  f"{fmt(r['rtt_p50_ms'], 8, 3)} "
                  f"{fmt(r['rtt_p99_ms'], 8, 3)} {r['ping_loss'] * 100:4.0f}% "
                  f"{fmt(cores, 11, 2)}")
    print("retr: TCP retransmits; udpdrop: UDP datagrams dropped for a full socket receive "
          "buffer (both ends);\nRTT in ms; wg-go cores: CPU of all wireguard-go processes during "
          "the iperf3 run (1.0 = one CPU)")
    for pair, rs in out["ratios"].items():
        for key, r in rs.items():
            print(f"{pair}: {key}/{BASELINE}: throughput {fmt(r['throughput_mbps'], 0, 3)}x, "
                  f"RTT p50 {fmt(r['rtt_p50_ms'], 0, 2)}x, p99 {fmt(r['rtt_p99_ms'], 0, 2)}x")
    print(f"wireguard-go: {m['wireguard_go']}; its TUN: {m['wireguard_link']}; UDP receive "
          f"buffer {m['udp_rmem_default']} B (net.core.rmem_default, wireguard-go sets none)")
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=None, help="iperf3 test length (10; --quick 2)")
    ap.add_argument("--pings", type=int, default=None, help="pings per path and round (50; --quick 10)")
    ap.add_argument("--ping-interval", type=float, default=0.05, help="seconds between pings")
    ap.add_argument("--rounds", type=int, default=None, help="rounds over all paths (3; --quick 1)")
    ap.add_argument("--mtu", type=int, default=1420, help="MTU of the WireGuard interfaces")
    ap.add_argument("--quick", action="store_true", help="smoke test: 2 s, 10 pings, 1 round")
    ap.add_argument("--json", action="store_true", help="also print the result as JSON")
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
    missing = sorted({pkg for tool, pkg in TOOLS.items() if shutil.which(tool) is None})
    if missing:
        ap.error(f"missing Debian packages: {' '.join(missing)} (scripts/install-deps.sh)")
    signal.signal(signal.SIGTERM, _sigterm)

    keys = Path(tempfile.mkdtemp(prefix="corral-bench-overlay-"))
    tb = Testbed(Underlay(UNDERLAY), keys, args.mtu)
    out: dict[str, Any] = {}
    try:
        load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
        tb.build()
        log(f"underlay {UNDERLAY} up: a {tb.host('a').address}, b {tb.host('b').address}, "
            f"n {tb.host('n').address} behind {NAT_ROUTER} ({tb.host(NAT_ROUTER).address}); "
            f"wireguard-go tunnels answer")
        todo = paths(tb)
        flavor = ping_flavor(todo[0][2])
        results: dict[tuple[str, str], list[PathResult]] = {(p, r): [] for p, r, *_ in todo}
        for rnd in range(rounds):
            shift = rnd % len(todo)
            for pair, row, cprefix, sprefix, target in todo[shift:] + todo[:shift]:
                # on the underlay rows too: there it shows their idle cost (about 0)
                watch = {"wireguard-go": tb.wg_pids()}
                res = measure_path(f"{pair}/{row}", cprefix, sprefix, target, seconds=seconds,
                                   pings=pings, ping_interval=args.ping_interval,
                                   flavor=flavor, watch_pids=watch,
                                   counters={"client": cprefix, "server": sprefix})
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
                # the receive buffer wireguard-go's UDP sockets get (it sets none itself)
                "udp_rmem_default": _sysctl(tb, "a", "net.core.rmem_default"),
                "underlay": UNDERLAY, "pairs": {k: list(v) for k, v in PAIRS.items()},
                "hosts": {n: {"address": tb.host(n).address, "netns": tb.host(n).netns,
                              "tunnel": tunnel_address(n), "interface": ifname(n)}
                          for n in HOST_INDEX},
                "wireguard_backend": wg_status.backend,
                # wireguard-go's TUN: "vnet_hdr off" means no GSO/GRO, one syscall per packet
                "wireguard_link": _link_detail(tb, "a", ifname("a")),
                "iperf3": _version(["iperf3", "--version"]),
                "wireguard_go": _version(["wireguard-go", "--version"]),
                "kernel": platform.release(), "machine": platform.machine(),
                "cpus": os.cpu_count(), "load_before": load_before,
                "load_after": " ".join(f"{x:.2f}" for x in os.getloadavg()),
                "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
            "paths": rows,
            "ratios": {pair: ratios(r) for pair, r in rows.items()},
        }
    except KeyboardInterrupt:
        log("interrupted; cleaning up")
        return 130
    except BenchError as exc:
        log(f"FAILED: {exc}")
        return 1
    finally:
        tb.teardown()
        shutil.rmtree(keys, ignore_errors=True)
    report(out)
    if args.json:
        print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
