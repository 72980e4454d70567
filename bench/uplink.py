#!/usr/bin/env python3
"""Idle uplink: how many bytes one idle ``corral agent`` sends to its server, in kbit/s.

Goal (from the issue): at most 0.25 kbit/s per host, KubeEdge's figure for an idle edge node.

Set-up (the same test bed as bench/deploy_latency.py and bench/agent_rss.py): a real
``corral server`` (temp data dir, SQLite, TLS, default heartbeat interval of 10 s) listens on
a loopback port; a NetnsHost ``bench-up`` (network namespace ``crl-bench-up`` with its own
dockerd) runs a real ``corral agent``, which dials ``https://127.0.0.1:PORT`` inside its
namespace, where the test bed's loopback forwarder relays to the server. One service with 2
replicas of the test-bed busybox running ``sleep 86400`` is deployed, so the agent is "idle
with work": containers running, nothing changing. The bench waits until both run (API and
engine), waits one more heartbeat interval, and then measures for ``--duration`` seconds
(default 300; ``--quick`` = 30).

What is counted: the agent's own TCP sockets to the server, i.e. agent -> 127.0.0.1:PORT in
its namespace (the forwarder's far side is not counted; a real host has no forwarder).

(a) Payload, from the kernel's tcp_info. ``nsenter --net=/run/netns/crl-bench-up ss -tinHp
    state all`` lists every TCP socket of the namespace with ``bytes_sent`` (TCP payload,
    i.e. TLS records, retransmissions included), ``bytes_acked``, ``segs_out`` (every segment:
    data, pure ACKs, SYN, FIN) and ``data_segs_out``. A socket is the agent's when ``ss -p``
    names the agent's pid (the python process running ``corral agent``) and its peer is the
    server port. ss is sampled at the start of the window, every second during it, and at
    the end: each connection contributes last-seen minus start values; a connection first
    seen during the window counts from zero (it was opened in the window: a reconnection);
    a connection that disappears keeps its last-seen values (so at most its last second is
    missed; the capture below has every packet).
(b) On-wire estimate: payload + segs_out x 52 bytes (IPv4 20 + TCP 20 + timestamps option
    12). It is an estimate: SYNs carry more options, and link-layer framing is not included.

Cross-check and breakdown: an AF_PACKET socket on ``lo`` inside the namespace (opened before
the agent starts, so every connection is seen from its SYN) records each agent<->server
packet. From it the bench reports the exact IPv4+TCP bytes, pure ACKs, TLS records (the
5-byte record headers are in clear text) and HTTP requests. A request is a burst of
client->server data that follows server->client data (HTTP/1.1 without pipelining: one
burst per request); bursts that start with TLS handshake records are counted as handshakes
instead. Plaintext bytes (HTTP headers + body) = application-data record lengths minus the
AEAD overhead of the negotiated TLS version (17 bytes per record for TLS 1.3), so each
heartbeat interval splits into HTTP, TLS and TCP/IP bytes.

Run from the repository root (as root)::

    /opt/corral-venv/bin/python bench/uplink.py [--duration 300 | --quick] [--json] [--keep]

Network: only loopback and the namespace created here are ever contacted. Everything is
cleaned up on success, failure and Ctrl-C (agent, server, namespace with its dockerd and
containers); ``--keep`` keeps the temp dir with the server and agent logs.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.agent_rss import find_agent_pid  # noqa: E402
from bench.deploy_latency import containers  # noqa: E402
from bench.common import BenchError, on_sigterm  # noqa: E402
from corral import tokens  # noqa: E402
from corral.model import LABEL_SERVICE  # noqa: E402
from testbed.cluster import AgentProc, ServerProc, wait_for  # noqa: E402
from testbed.daemons import ensure_registry  # noqa: E402
from testbed.forward import setns  # noqa: E402
from testbed.images import build_busybox  # noqa: E402
from testbed.netns import NetnsHost  # noqa: E402

HOST_NAME = "bench-up"
HOST_INDEX = 203  # bridge 172.31.203.1/24; deploy_latency uses 201, agent_rss 202
SERVICE = "uplink"
REPLICAS = 2
COMMAND = ["sleep", "86400"]
HEARTBEAT_S = 10.0  # the server's default --heartbeat-interval (not passed: default on purpose)
GOAL_KBPS = 0.25
WIRE_HEADER = 52  # IPv4 (20) + TCP (20) + timestamps option (12)
SAMPLE_EVERY = 1.0
SETUP_BUDGET = 240.0  # seconds for everything but the window (registry, server, engine, deploy)
COUNTERS = ("bytes_sent", "bytes_acked", "bytes_received", "segs_out", "segs_in",
            "data_segs_out", "data_segs_in")




class Deadline:
    """A global deadline; every wait takes its timeout from here."""

    def __init__(self, seconds: float) -> None:
        self.at = time.monotonic() + seconds

    def left(self, what: str, cap: float | None = None) -> float:
        rem = self.at - time.monotonic()
        if rem <= 0:
            raise BenchError(f"global deadline passed before {what}")
        return rem if cap is None else min(rem, cap)


# ---------------------------------------------------------------- (a) tcp_info through ss

_PID = re.compile(r"pid=(\d+)")
_KV = re.compile(r"\b(" + "|".join(COUNTERS) + r"):(\d+)")


@dataclass
class SockInfo:
    """One line pair of ``ss -tinHp state all``."""

    state: str
    local: str
    peer: str
    pids: set[int]
    counters: dict[str, int] = field(default_factory=dict)
    has_info: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return self.local, self.peer

    @property
    def peer_port(self) -> int:
        port = self.peer.rsplit(":", 1)[-1]
        return int(port) if port.isdigit() else -1


def parse_ss(text: str) -> list[SockInfo]:
    """Parse ``ss -tinHp state all`` output: a socket line, then an indented tcp_info line."""
    socks: list[SockInfo] = []
    cur: SockInfo | None = None
    for line in text.splitlines():
        if not line.strip():
            continue
        if line[0].isspace():
            if cur is not None:
                cur.has_info = cur.has_info or bool(line.strip())
                for k, v in _KV.findall(line):
                    cur.counters[k] = int(v)
            continue
        f = line.split()
        if len(f) < 5 or not f[1].isdigit():
            cur = None
            continue
        cur = SockInfo(f[0], f[3], f[4], {int(p) for p in _PID.findall(line)})
        socks.append(cur)
    return socks


SS_FAILURES: list[str] = []  # failed ss runs that a retry made up for


def ss_sample(netns_path: str, attempts: int = 3) -> list[SockInfo]:
    """Every TCP socket in the namespace, with tcp_info and owning pids."""
    argv = ["nsenter", f"--net={netns_path}", "--", "ss", "-tinHp", "state", "all"]
    for attempt in range(1, attempts + 1):
        res = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
        if res.returncode == 0:
            return parse_ss(res.stdout)
        why = f"exit {res.returncode}: {res.stderr.strip()[:200]!r}, {len(res.stdout)} B stdout"
        SS_FAILURES.append(why)
        if attempt == attempts:
            raise BenchError(f"ss in {netns_path}: {why}")
        time.sleep(0.05)
    raise AssertionError("unreachable")


@dataclass
class Conn:
    key: tuple[str, str]
    base: dict[str, int]
    last: dict[str, int]
    new: bool  # first seen during the window: counted from zero
    gone: bool = False
    states: set[str] = field(default_factory=set)

    def delta(self, name: str) -> int:
        return self.last.get(name, 0) - self.base.get(name, 0)


class Ledger:
    """Per-connection deltas of the agent's sockets to ``port`` across ss samples."""

    def __init__(self, pid: int, port: int) -> None:
        self.pid = pid
        self.port = port
        self.conns: dict[tuple[str, str], Conn] = {}
        self.retired: list[Conn] = []  # a 4-tuple reused by a later connection
        self.samples = 0

    def observe(self, socks: list[SockInfo], baseline: bool) -> None:
        self.samples += 1
        seen = set()
        for s in socks:
            if s.peer_port != self.port:
                continue
            tr = self.conns.get(s.key)
            if tr is None:
                if self.pid not in s.pids or not s.has_info:
                    continue  # not the agent's (or an orphan from before the window)
                zero = dict.fromkeys(COUNTERS, 0)
                tr = Conn(s.key, dict(s.counters) if baseline else zero, dict(s.counters),
                          new=not baseline)
                self.conns[s.key] = tr
            elif s.has_info:
                if s.counters.get("segs_out", 0) < tr.last.get("segs_out", 0):  # port reused
                    tr.gone = True
                    self.retired.append(tr)
                    tr = Conn(s.key, dict.fromkeys(COUNTERS, 0), dict(s.counters), new=True)
                    self.conns[s.key] = tr
                else:
                    tr.last = dict(s.counters)
            tr.states.add(s.state)
            seen.add(s.key)
        for key, tr in self.conns.items():
            if key not in seen:
                tr.gone = True

    def all(self) -> list[Conn]:
        return self.retired + list(self.conns.values())

    def totals(self) -> dict[str, Any]:
        conns = self.all()
        out: dict[str, Any] = {k: sum(c.delta(k) for c in conns) for k in COUNTERS}
        out["connections"] = len(conns)
        out["reconnections"] = sum(c.new for c in conns)
        out["closed"] = sum(c.gone for c in conns)
        out["samples"] = self.samples
        out["per_connection"] = [
            {"local": c.key[0], "peer": c.key[1], "new": c.new, "closed": c.gone,
             "states": sorted(c.states), **{k: c.delta(k) for k in COUNTERS}} for c in conns]
        return out


# ---------------------------------------------------------------- capture on lo in the netns

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4  # loopback shows each packet twice; keep the incoming copy (as libpcap)
SOL_PACKET = 263
PACKET_STATISTICS = 6
SYN, FIN, RST = 0x02, 0x01, 0x04
TLS_NAMES = {20: "change_cipher_spec", 21: "alert", 22: "handshake", 23: "application_data"}


@dataclass
class Pkt:
    t: float
    port: int  # the agent's local port: the connection
    up: bool  # agent -> server
    l3: int  # IPv4 total length: IP + TCP headers + payload
    payload: int
    flags: int
    records: list[tuple[int, int]]  # TLS records (type, length) whose header starts here


class TlsStream:
    """Follows one direction of a TCP stream by sequence number and reads TLS record headers."""

    def __init__(self) -> None:
        self.next_seq: int | None = None
        self.hdr = b""
        self.left = 0
        self.ok = True

    def feed(self, seq: int, flags: int, payload: bytes) -> list[tuple[int, int]]:
        if flags & SYN:
            self.next_seq = (seq + 1) & 0xFFFFFFFF
            return []
        if not payload or not self.ok:
            return []
        if self.next_seq is None:  # joined mid-stream: record boundaries unknown
            self.ok = False
            return []
        diff = (seq - self.next_seq) & 0xFFFFFFFF
        if diff >= 1 << 31:  # (partly) a retransmission of bytes already read
            skip = (self.next_seq - seq) & 0xFFFFFFFF
            payload = payload[skip:]
            if not payload:
                return []
        elif diff:  # a gap: a packet was not captured
            self.ok = False
            return []
        self.next_seq = (self.next_seq + len(payload)) & 0xFFFFFFFF
        out: list[tuple[int, int]] = []
        i = 0
        while i < len(payload):
            if self.left:
                take = min(self.left, len(payload) - i)
                self.left -= take
                i += take
                continue
            part = payload[i:i + 5 - len(self.hdr)]
            self.hdr += part
            i += len(part)
            if len(self.hdr) == 5:
                kind, major, length = self.hdr[0], self.hdr[1], int.from_bytes(self.hdr[3:5], "big")
                self.hdr = b""
                if kind not in TLS_NAMES or major != 3:
                    self.ok = False
                    return out
                out.append((kind, length))
                self.left = length
        return out


class LoCapture:
    """Every packet between the agent and ``127.0.0.1:port`` on the namespace's loopback."""

    def __init__(self, netns_path: str, port: int) -> None:
        self.port = port
        self.packets: list[Pkt] = []
        self.streams: dict[tuple[int, bool], TlsStream] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        target = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            setns(target)
            try:
                # a socket stays in the namespace it was created in
                self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW,
                                          socket.htons(ETH_P_ALL))
            finally:
                setns(own)
        finally:
            os.close(own)
            os.close(target)
        try:
            with contextlib.suppress(OSError):
                self.sock.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE
            self.sock.bind(("lo", 0))
            self.sock.settimeout(0.25)
        except BaseException:
            self.sock.close()
            raise
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(262144)
            except TimeoutError:
                continue
            except OSError:
                return
            if addr[2] != PACKET_OUTGOING:
                self._handle(time.monotonic(), data)

    def _handle(self, t: float, data: bytes) -> None:
        if len(data) < 54 or data[12:14] != b"\x08\x00":
            return
        ip = memoryview(data)[14:]
        ihl = (ip[0] & 0x0F) * 4
        total = int.from_bytes(ip[2:4], "big")
        if ip[9] != 6 or total < ihl + 20:
            return
        sport, dport, seq = struct.unpack("!HHI", ip[ihl:ihl + 8])
        if dport == self.port:
            up, port = True, sport
        elif sport == self.port:
            up, port = False, dport
        else:
            return
        doff = (ip[ihl + 12] >> 4) * 4
        flags = ip[ihl + 13]
        payload = bytes(ip[ihl + doff:total])
        stream = self.streams.setdefault((port, up), TlsStream())
        records = stream.feed(seq, flags, payload)
        with self._lock:
            self.packets.append(Pkt(t, port, up, total, len(payload), flags, records))

    def drops(self) -> int:
        with contextlib.suppress(OSError):
            raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
            return int(struct.unpack("II", raw)[1])
        return -1

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()

    def snapshot(self) -> list[Pkt]:
        with self._lock:
            return list(self.packets)


def analyse(packets: list[Pkt], t0: float, t1: float, aead_overhead: int | None,
            parse_ok: bool) -> dict[str, Any]:
    """Window totals, requests (bursts) and the per-connection view of the captured packets."""
    up = [p for p in packets if p.up and t0 <= p.t < t1]
    down = [p for p in packets if not p.up and t0 <= p.t < t1]
    data = [p for p in up if p.payload]
    acks = [p for p in up if not p.payload and not p.flags & (SYN | FIN | RST)]
    app = [length for p in up for kind, length in p.records if kind == 23]
    other_records = [(kind, length) for p in up for kind, length in p.records if kind != 23]
    payload = sum(p.payload for p in up)
    plain = (sum(n - aead_overhead for n in app)
             if aead_overhead is not None and parse_ok else None)

    # bursts: client data after server data (or first on the connection) opens a burst
    last_dir: dict[int, bool] = {}
    bursts: list[dict[str, Any]] = []
    open_burst: dict[int, dict[str, Any]] = {}
    for p in packets:
        if p.t >= t1:
            break
        if p.payload:
            if p.up and last_dir.get(p.port) is not True:
                b = {"port": p.port, "t": p.t, "bytes": 0, "segs": 0, "records": 0, "lens": [],
                     "handshake": bool(p.records) and p.records[0][0] in (20, 22),
                     "in_window": p.t >= t0}
                bursts.append(b)
                open_burst[p.port] = b
            last_dir[p.port] = p.up
            if p.up and p.port in open_burst:
                ob = open_burst[p.port]
                ob["bytes"] += p.payload
                ob["segs"] += 1
                ob["records"] += len(p.records)
                ob["lens"] += [length for _, length in p.records]
    win = [b for b in bursts if b["in_window"]]
    requests = [b for b in win if not b["handshake"]]
    per_conn = []
    for port in sorted({p.port for p in up} | {b["port"] for b in win}):
        reqs = [b for b in requests if b["port"] == port]
        times = [b["t"] for b in reqs]
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        cup = [p for p in up if p.port == port]
        shapes = Counter(tuple(b["lens"]) for b in reqs).most_common(1)
        per_conn.append({
            "agent_port": port, "requests": len(reqs),
            "mean_gap_s": statistics.fmean(gaps) if gaps else None,
            "request_bytes_median": statistics.median([b["bytes"] for b in reqs]) if reqs else None,
            "records_per_request_median": (statistics.median([b["records"] for b in reqs])
                                           if reqs else None),
            "commonest_request_records": list(shapes[0][0]) if shapes else None,
            "payload": sum(p.payload for p in cup), "l3_bytes": sum(p.l3 for p in cup),
            "segments": len(cup), "data_segments": sum(1 for p in cup if p.payload),
            "pure_acks": sum(1 for p in cup if not p.payload and not p.flags & (SYN | FIN | RST)),
            "downlink_payload": sum(p.payload for p in down if p.port == port),
        })
    return {
        "segments": len(up), "data_segments": len(data), "pure_acks": len(acks),
        "syn": sum(1 for p in up if p.flags & SYN), "fin": sum(1 for p in up if p.flags & FIN),
        "rst": sum(1 for p in up if p.flags & RST),
        "payload": payload, "l3_bytes": sum(p.l3 for p in up),
        "tcpip_header_bytes": sum(p.l3 - p.payload for p in up),
        "header_bytes_data_segments": sum(p.l3 - p.payload for p in data),
        "pure_ack_bytes": sum(p.l3 for p in acks),
        "tls_records": len(app) + len(other_records), "tls_app_records": len(app),
        "tls_other_records": {TLS_NAMES[k]: sum(1 for kk, _ in other_records if kk == k)
                              for k in sorted({k for k, _ in other_records})},
        "tls_parse_ok": parse_ok,
        "http_plaintext_bytes": plain,
        "tls_overhead_bytes": payload - plain if plain is not None else None,
        "requests": len(requests), "handshakes": sum(1 for b in win if b["handshake"]),
        "request_bytes": sorted(b["bytes"] for b in requests),
        "downlink_payload": sum(p.payload for p in down),
        "downlink_l3_bytes": sum(p.l3 for p in down),
        "connections": per_conn,
    }


def tls_probe(server: ServerProc) -> tuple[str, str, int | None]:
    """TLS version and cipher the server negotiates with the agent's context, and the AEAD
    overhead per application-data record (bytes beyond the plaintext, header excluded)."""
    ctx = tokens.pinned_context(server.ca_pem)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw, \
            ctx.wrap_socket(raw) as tls:
        version, cipher = tls.version() or "?", (tls.cipher() or ("?",))[0]
    if version == "TLSv1.3":
        overhead: int | None = 17  # inner content type + 16-byte tag
    elif version == "TLSv1.2" and "GCM" in cipher:
        overhead = 24  # 8-byte explicit nonce + 16-byte tag
    elif version == "TLSv1.2" and "CHACHA20" in cipher:
        overhead = 16
    else:
        overhead = None
    return version, cipher, overhead


# ---------------------------------------------------------------- report


def kbps(nbytes: float, seconds: float) -> float:
    return nbytes * 8 / 1000 / seconds


def report(res: dict[str, Any]) -> None:
    """Print the human-readable tables of a result (see ``main`` for its keys)."""
    w = res["window_s"]
    a = res["tcp_info"]
    print()
    print(f"Idle uplink of one corral agent ({res['replicas']} containers running, nothing "
          f"changing; {res['date']}, {res['cpus']} CPUs)")
    print(f"agent pid {res['agent_pid']} in netns {res['netns']} -> 127.0.0.1:{res['server_port']}"
          f" (loopback forwarder -> corral server, {res['tls']['version']} "
          f"{res['tls']['cipher']}); heartbeat interval {res['heartbeat_s']:.0f} s")
    print()
    per_hb = HEARTBEAT_S / w
    rows = [
        ("window length", f"{w:.1f} s", f"{a['samples']} ss samples"
         + (f" ({len(res['ss_retries'])} ss runs retried)" if res["ss_retries"] else "")),
        ("bytes sent, TCP payload (tcp_info)", f"{a['bytes_sent']} B",
         f"bytes_acked {a['bytes_acked']} B"),
        ("uplink, payload", f"{res['kbps_payload']:.3f} kbit/s", ""),
        ("uplink, on-wire ESTIMATE", f"{res['kbps_wire_estimate']:.3f} kbit/s",
         f"payload + {WIRE_HEADER} B x segs_out (estimate)"),
        ("segments sent (segs_out)", f"{a['segs_out']}",
         f"{a['data_segs_out']} with data, {a['segs_out'] - a['data_segs_out']} without"),
        ("connections", f"{a['connections']}",
         f"{a['reconnections']} opened, {a['closed']} closed in the window"),
        (f"ratio vs goal {GOAL_KBPS} kbit/s", f"{res['ratio_payload']:.2f}x payload",
         f"{res['ratio_wire_estimate']:.2f}x on-wire estimate"),
        ("per heartbeat interval", f"{a['bytes_sent'] * per_hb:.0f} B payload",
         f"{a['segs_out'] * per_hb:.1f} segments"),
        ("received (downlink), payload", f"{a['bytes_received']} B",
         f"{kbps(a['bytes_received'], w):.3f} kbit/s"),
    ]
    for label, value, note in rows:
        print(f"{label:<37} {value:>20}  {note}".rstrip())
    goal = "PASS" if res["goal_met_wire_estimate"] else (
        "PASS on payload only" if res["goal_met_payload"] else "FAIL")
    print(f"goal: idle uplink <= {GOAL_KBPS} kbit/s per host: {goal}")
    cap = res.get("capture")
    if not cap:
        print("\n(packet capture unavailable: no breakdown)")
        return
    print()
    print(f"packet capture on lo in {res['netns']} (every agent->server packet; exact IPv4+TCP "
          f"headers, no link layer; {cap['drops']} dropped by the kernel):")
    hb = per_hb
    plain = cap["http_plaintext_bytes"]
    rows2 = [
        ("IPv4+TCP bytes sent (exact)", f"{cap['l3_bytes']} B",
         f"{kbps(cap['l3_bytes'], w):.3f} kbit/s; payload {cap['payload']} B"),
        ("segments", f"{cap['segments']}",
         f"{cap['data_segments']} data, {cap['pure_acks']} pure ACKs, {cap['syn']} SYN, "
         f"{cap['fin']} FIN, {cap['rst']} RST"),
        ("HTTP requests (client bursts)", f"{cap['requests']}",
         f"{cap['handshakes']} TLS handshakes"),
        ("TLS records", f"{cap['tls_records']}", f"{cap['tls_app_records']} application data "
         + (json.dumps(cap["tls_other_records"]) if cap["tls_other_records"] else "")),
    ]
    for label, value, note in rows2:
        print(f"  {label:<35} {value:>14}  {note}".rstrip())
    print(f"  per heartbeat interval ({HEARTBEAT_S:.0f} s): {cap['requests'] * hb:.2f} requests, "
          f"{cap['l3_bytes'] * hb:.0f} B of IPv4+TCP =")
    parts: list[tuple[str, float]] = []
    if plain is not None:
        parts += [("HTTP plaintext (headers + body)", plain),
                  ("TLS (record headers, AEAD, handshakes)", cap["tls_overhead_bytes"])]
    else:
        parts.append(("TLS payload (not split)", cap["payload"]))
    parts += [("IPv4+TCP headers of data segments", cap["header_bytes_data_segments"]),
              ("pure ACK segments", cap["pure_ack_bytes"])]
    other = cap["l3_bytes"] - cap["payload"] - cap["header_bytes_data_segments"] \
        - cap["pure_ack_bytes"]
    if other:
        parts.append(("SYN/FIN/RST segments", other))
    for label, nbytes in parts:
        share = 100 * nbytes / cap["l3_bytes"] if cap["l3_bytes"] else 0.0
        print(f"    {label:<40} {nbytes * hb:7.0f} B  {share:5.1f} %")
    print("  per connection: agent port, requests, mean gap, commonest request (TLS record "
          "lengths), uplink payload / IPv4+TCP, downlink payload:")
    for c in cap["connections"]:
        gap = f"{c['mean_gap_s']:.1f} s" if c["mean_gap_s"] is not None else "-"
        shape = "+".join(map(str, c["commonest_request_records"] or [])) or "-"
        print(f"    :{c['agent_port']:<6} {c['requests']:4d} req  gap {gap:>7}  req {shape:>9} B  "
              f"up {c['payload']} / {c['l3_bytes']} B ({c['data_segments']} data segs, "
              f"{c['pure_acks']} ACKs)  down {c['downlink_payload']} B")


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=300.0,
                    help="seconds of the measured window (default 300)")
    ap.add_argument("--quick", action="store_true",
                    help="a 30 s window, the poll renewed every 10 s (for tests; not the idle figure)")
    ap.add_argument("--json", action="store_true", help="also print the result as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (server/agent logs)")
    args = ap.parse_args(argv)
    duration = 30.0 if args.quick else args.duration
    if not 5 <= duration <= 3600:
        ap.error("--duration must be 5..3600 seconds")
    if os.geteuid() != 0:
        ap.error("run as root (network namespaces, dockerd)")
    signal.signal(signal.SIGTERM, on_sigterm)
    deadline = Deadline(SETUP_BUDGET + duration)

    registry = ensure_registry()
    image = build_busybox(registry)
    tmp = Path(tempfile.mkdtemp(prefix="corral-bench-uplink-"))
    # --quick renews the agent's poll every 10 s, so that a 30 s window sees requests at all
    server = ServerProc(tmp / "server", extra_args=["--poll-wait", "10"] if args.quick else [])
    host: NetnsHost | None = None
    agent: AgentProc | None = None
    capture: LoCapture | None = None
    try:
        server.start(timeout=deadline.left("the server starts", 30))
        tls_version, tls_cipher, aead = tls_probe(server)
        host = NetnsHost(HOST_NAME, HOST_INDEX, [server.port, int(registry.rsplit(":", 1)[1])])
        host.start()
        try:
            capture = LoCapture(host.netns_path, server.port)
        except OSError as exc:
            print(f"packet capture unavailable ({exc}); reporting tcp_info only", file=sys.stderr)
        agent = AgentProc(server.url, server.join_token(), tmp / "agent",
                          docker_host=host.docker_host, name=HOST_NAME, netns=host).start()
        agent.host_id(timeout=deadline.left("the agent joins", 30))
        assert agent.proc is not None
        pid = find_agent_pid(agent.proc.pid)
        with server.client() as c:
            wait_for(lambda: [h for h in c.get("/api/v1/hosts").json() if h["state"] == "ready"],
                     deadline.left("the host is ready", 30), "the agent's host to be ready")
            r = c.post("/api/v1/services", json={"name": SERVICE, "image": image.ref,
                                                 "replicas": REPLICAS, "command": COMMAND})
            if r.status_code != 201:
                raise BenchError(f"POST /api/v1/services: HTTP {r.status_code}: {r.text}")
            wait_for(lambda: c.get(f"/api/v1/services/{SERVICE}").json()["running"] == REPLICAS,
                     deadline.left("the replicas run", 120), f"{REPLICAS} running replicas",
                     interval=0.2)
        on_engine = [x for x in containers(host.docker_host, f"{LABEL_SERVICE}={SERVICE}")
                     if x["State"] == "running"]
        if len(on_engine) != REPLICAS:
            raise BenchError(f"{len(on_engine)} running on the engine, wanted {REPLICAS}")
        print(f"{REPLICAS} containers running; waiting one heartbeat interval "
              f"({HEARTBEAT_S:.0f} s), then measuring {duration:.0f} s ...", file=sys.stderr)
        time.sleep(min(HEARTBEAT_S, deadline.left("the settle wait")))
        deadline.left("the window", duration)  # fail now rather than cut the window short

        ledger = Ledger(pid, server.port)
        t0 = time.monotonic()
        ledger.observe(ss_sample(host.netns_path), baseline=True)
        if not ledger.conns:
            raise BenchError(f"no TCP connection of pid {pid} to port {server.port} in "
                             f"{host.netns}")
        t_end = t0 + duration
        next_tick = t0
        while True:
            next_tick += SAMPLE_EVERY
            now = time.monotonic()
            if now >= t_end:
                break
            time.sleep(max(0.0, min(next_tick, t_end) - now))
            if time.monotonic() >= t_end:
                break
            if agent.proc.poll() is not None:
                raise BenchError(f"the agent exited ({agent.proc.returncode}) during the window")
            ledger.observe(ss_sample(host.netns_path), baseline=False)
        ledger.observe(ss_sample(host.netns_path), baseline=False)
        t1 = time.monotonic()
        window = t1 - t0
        with server.client() as c:
            running_end = c.get(f"/api/v1/services/{SERVICE}").json()["running"]

        totals = ledger.totals()
        wire = totals["bytes_sent"] + WIRE_HEADER * totals["segs_out"]
        res: dict[str, Any] = {
            "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "cpus": os.cpu_count(), "agent_pid": pid, "netns": host.netns,
            "server_port": server.port, "replicas": REPLICAS, "image": image.ref,
            "command": COMMAND, "heartbeat_s": HEARTBEAT_S, "duration_s": duration,
            "window_s": window, "running_at_end": running_end, "ss_retries": SS_FAILURES,
            "tls": {"version": tls_version, "cipher": tls_cipher, "aead_overhead": aead},
            "tcp_info": totals,
            "bytes_sent": totals["bytes_sent"], "segs_out": totals["segs_out"],
            "connections": totals["connections"], "reconnections": totals["reconnections"],
            "kbps_payload": kbps(totals["bytes_sent"], window),
            "wire_estimate_bytes": wire, "wire_estimate_header_bytes_per_segment": WIRE_HEADER,
            "wire_estimate_note": "estimate: payload + segs_out x 52 B (IPv4+TCP+timestamps)",
            "kbps_wire_estimate": kbps(wire, window),
            "goal_kbps": GOAL_KBPS,
            "ratio_payload": kbps(totals["bytes_sent"], window) / GOAL_KBPS,
            "ratio_wire_estimate": kbps(wire, window) / GOAL_KBPS,
            "goal_met_payload": kbps(totals["bytes_sent"], window) <= GOAL_KBPS,
            "goal_met_wire_estimate": kbps(wire, window) <= GOAL_KBPS,
            "capture": None,
        }
        if capture is not None:
            time.sleep(0.2)  # let the capture thread drain what is queued
            packets = capture.snapshot()
            parse_ok = all(s.ok for (port, up), s in capture.streams.items()
                           if up and any(p.port == port and t0 <= p.t < t1 for p in packets))
            cap = analyse(packets, t0, t1, aead, parse_ok)
            cap["drops"] = capture.drops()
            cap["kbps_l3"] = kbps(cap["l3_bytes"], window)
            res["capture"] = cap
            res["http_requests"] = cap["requests"]
        report(res)
        if args.json:
            print()
            print(json.dumps(res, indent=1))
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # finish cleaning up even if told twice
        steps: list[tuple[str, Any]] = [
            ("capture", capture.close if capture is not None else None),
            ("agent", agent.stop if agent is not None else None),
            ("server", server.stop),
            # kills the containers and the engine, deletes the namespace
            ("namespace", host.stop if host is not None else None),
        ]
        for what, step in steps:
            if step is None:
                continue
            try:
                step()
            except Exception as exc:  # keep cleaning up the rest
                print(f"cleanup of the {what} failed: {exc}", file=sys.stderr)
        if args.keep:
            print(f"logs kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
