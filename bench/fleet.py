#!/usr/bin/env python3
"""Fleet scale: does one ``corral server`` on 2 cores hold 10,000 hosts?

What runs
    A real ``corral server`` subprocess (HTTPS with its own CA, ``--heartbeat-interval 10``)
    on SQLite in a temp data dir and/or on PostgreSQL (a fresh database on the test bed's
    cluster at 127.0.0.1:55432, dropped afterwards). One asyncio process (uvloop) simulates
    N agents (``--agents``, default 10,000), named ``sim-00042`` and labelled
    ``corral.sim=true``: they are simulated hosts, not machines. Their facts are those of a
    mixed fleet: 60 % linux/arm64, 10 % linux/arm/v7, 25 % linux/amd64, 5 % linux/amd64 with
    one GPU; labels ``zone`` (5) and ``rack`` (100).

The protocol each simulated agent speaks
    Its own HTTP/1.1 keep-alive connections over TLS (the CA pinned from the data dir), with
    a few lines of hand-written request/response code (Content-Length bodies only), so that
    the simulator costs little CPU next to the server on a 2-core machine:

    * registration: ``POST /api/v1/agent/register`` with the join token, 50 at a time
      (``--register-concurrency``). Each agent starts as soon as it is registered.
    * channel connection: ``GET /api/v1/agent/channel?revision=R&wait=W`` in a loop, W = 10
      at first, then the ``poll_wait`` the server's replies give (55 s by default). The open
      long-poll is the heartbeat: the server's kernel probes the connection with TCP
      keepalive every heartbeat interval, which the simulator's kernel answers. A reply with ``desired`` sets R and
      makes the agent report every desired instance as ``running`` (``POST
      /api/v1/agent/status {"revision": R, "instances": [...]}``) on its second connection.
    * status connection: with ``--status-heartbeat`` (off by default: the poll is the
      heartbeat now), also ``POST /api/v1/agent/status {"revision": R}`` every 10 s ± 10 %, the
      first one at a random point of the first interval so the fleet does not beat in
      lockstep.
    * ``--connections 1`` (the default) puts the status POSTs on the channel connection, between
      polls (a poll's wait is cut to the next heartbeat's due time). That halves the file
      descriptors: 10,000 agents on two connections need 20,100 in this process and as many
      in the server, and a hard limit of 20,000 cannot be raised without CAP_SYS_RESOURCE.

Admin load
    A separate process (so it does not share the simulator's GIL) sends ``GET
    /api/v1/services`` (``corral service ls``) and ``GET /api/v1/instances`` (``corral ps``)
    at ``--ls-rate`` / ``--ps-rate`` per second each (default 5), open-loop: each call is
    due at a fixed time and its latency counts from then, so a slow server cannot slow the
    offered load down. Before that, 5 services are created (about 200 replicas, constrained
    by architecture, one needing a GPU, and one global service on the hosts of one rack) so
    that ``ps`` has rows and the simulated agents receive desired sets. The image is the
    test bed's multi-arch busybox in the loopback registry 127.0.0.1:5000.

What is measured, over the steady window
    The window (``--duration``, default 60 s) starts after every agent is registered, the
    services converged (every instance reported running) and one heartbeat interval of
    warm-up. A request counts when it starts inside the window; after the window the bench
    waits for those still in flight (long-polls) before it reads the figures. Latencies are
    of answered requests: one that times out (status 15 s, poll wait + 20 s, admin 30 s)
    counts as an error of its kind, not as a sample.

    * p50/p99/max latency of status heartbeats, of status reports after a desired change,
      of ``service ls`` and of ``ps``;
    * poll return lateness: for channel polls that return without a change, elapsed − wait;
    * errors and timeouts per kind (in the window and over the whole run);
    * sim hosts that ``GET /api/v1/hosts`` shows as ``down`` at the end (must be 0);
    * server CPU (utime + stime of its process from /proc/PID/stat) as % of one core and of
      all cores, server VmRSS / VmHWM, the simulator's and the admin process's own CPU, and
      the simulator's event-loop lag (if that is high the client, not the server, is slow).

Goal: p99 < 500 ms on 2 cores; for reference, the Kubernetes API SLO is p99 ≤ 1 s.

Run from the repository root (as root: it raises RLIMIT_NOFILE, both for itself and the
server it starts, to at least agents × connections + 100)::

    /opt/corral-venv/bin/python bench/fleet.py [--db sqlite|postgres|both] [--agents 10000]
        [--duration 60] [--quick] [--json] [--keep] [--no-status-heartbeat] [--connections 1]

If registration does not finish within ``--register-timeout`` the window measures the
agents that did register, and the run is reported as a problem (exit code 1), as are
services that do not converge, hosts down at the end and errors in the window. A p99
above the goal is reported (PASS/FAIL) but is not a failure of the run.

Network: only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import json
import math
import multiprocessing
import os
import random
import resource
import shutil
import signal
import ssl
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import corral  # noqa: E402
from bench.common import BenchError, on_sigterm  # noqa: E402
from corral import tokens  # noqa: E402
from testbed import daemons  # noqa: E402
from testbed.cluster import ServerProc  # noqa: E402
from testbed.images import build_busybox  # noqa: E402

T = TypeVar("T")

HEARTBEAT = 10.0  # --heartbeat-interval given to the server
POLL_WAIT = 10.0  # the channel's first wait=; then what the server says (poll_wait)
GOAL_P99 = 0.5  # seconds, on 2 cores
K8S_SLO_P99 = 1.0  # Kubernetes API call latency SLO (mutating and read-only single objects)
HOST = "127.0.0.1"
PG_DATABASE = "bench_fleet"
SIM_LABEL = "corral.sim"
GIB = 1024**3
SIM_CMD = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 3600 & wait; done"]

# (platform, docker arch, weight out of 20, has GPU): 60 % / 10 % / 25 % / 5 %.
MIX = (("linux/arm64", "arm64", 12, False), ("linux/arm/v7", "arm", 2, False),
       ("linux/amd64", "amd64", 5, False), ("linux/amd64", "amd64", 1, True))


# -- small helpers ------------------------------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (q in 0..1)."""
    if not sorted_values:
        return math.nan
    return sorted_values[min(len(sorted_values) - 1, max(0, math.ceil(q * len(sorted_values)) - 1))]


def summary(values: list[float]) -> dict[str, float | int]:
    """n, p50, p99, max (seconds) of a list of samples."""
    s = sorted(values)
    return {"n": len(s), "p50": percentile(s, 0.5), "p99": percentile(s, 0.99),
            "max": s[-1] if s else math.nan}


def raise_nofile(needed: int, connections: int = 2) -> int:
    """Raise RLIMIT_NOFILE to the hard limit (root: above it, to ``needed`` + headroom).

    The server subprocess inherits the limit. Exits with a clear message when the result
    is still below ``needed``.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = needed + 1024
    if hard != resource.RLIM_INFINITY and hard < want:
        with contextlib.suppress(ValueError, OSError):  # only root may raise the hard limit
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return want
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft != resource.RLIM_INFINITY and soft < needed:
        hint = " or use --connections 1" if connections == 2 else ""
        raise SystemExit(f"error: RLIMIT_NOFILE is {soft} (hard limit {hard}); {needed} are needed "
                         f"({connections} connection(s) per simulated agent + 100), in this "
                         f"process and in the server. Raise the hard limit (root with "
                         f"CAP_SYS_RESOURCE, or ulimit -Hn {needed} before starting){hint}")
    return int(soft)


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_mem_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (KiB) of a process, from /proc/PID/status."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                out[key] = int(value.split()[0])
    return out


def self_cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def loadavg() -> str:
    with open("/proc/loadavg") as fh:
        return " ".join(fh.read().split()[:3])


# -- the simulated fleet ------------------------------------------------------------------


def sim_name(i: int) -> str:
    return f"sim-{i:05d}"


def mix_slot(i: int) -> tuple[str, str, bool]:
    """(platform, docker arch, has GPU) of host ``i``: the MIX, repeating every 20 hosts."""
    slot = i % 20
    for platform, arch, weight, gpu in MIX:
        if slot < weight:
            return platform, arch, gpu
        slot -= weight
    raise AssertionError("MIX weights must add up to 20")


def sim_host(i: int, seed: int = 1) -> tuple[str, dict[str, Any], dict[str, str]]:
    """(name, facts, labels) of simulated host ``i``, deterministic for a given seed."""
    rng = random.Random(seed * 1_000_003 + i)
    platform, arch, gpu = mix_slot(i)
    name = sim_name(i)
    labels = {SIM_LABEL: "true", "zone": f"zone-{'abcde'[rng.randrange(5)]}",
              "rack": f"r{rng.randrange(100):02d}"}
    if gpu:
        cpus, memory = 16, 64 * GIB
    elif platform == "linux/arm64":
        cpus, memory = 4, rng.choice((4, 8)) * GIB
    elif platform == "linux/arm/v7":
        cpus, memory = 4, 1 * GIB
    else:
        cpus, memory = rng.choice((2, 4, 8)), rng.choice((4, 8, 16)) * GIB
    gpus = ([{"index": 0, "name": "sim GPU", "uuid": f"GPU-sim-{i:05d}", "memory_bytes": 24 * GIB}]
            if gpu else [])
    facts = {
        "hostname": name,
        "platform": platform,
        "emulated_platforms": [],
        "arm32": platform == "linux/arm64",
        "cpus": cpus,
        "memory_bytes": memory,
        "gpus": gpus,
        "os": "Debian GNU/Linux 12 (bookworm) [simulated host]",
        "kernel": "6.1.0-sim",
        "docker": {"version": "20.10.24+dfsg1", "api_version": "1.41", "os": "linux", "arch": arch,
                   "platform": platform},
        "engine_platform": platform,
        "platform_mismatch": False,
        "labels": dict(labels),
        "agent_version": corral.__version__,
    }
    return name, facts, labels


class HttpError(Exception):
    """A malformed or unexpected HTTP exchange (not a transport error)."""


class HttpConn:
    """One HTTP/1.1 keep-alive connection over TLS: one request at a time, Content-Length only."""

    __slots__ = ("_ctx", "_port", "_reader", "_writer", "fresh")

    def __init__(self, port: int, ctx: ssl.SSLContext) -> None:
        self._port = port
        self._ctx = ctx
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.fresh = False  # True until the first request on a new connection completes

    def close(self) -> None:
        if self._writer is not None:
            self._writer.transport.abort()  # no TLS close_notify dance: cheap and immediate
        self._reader = self._writer = None

    async def request(self, method: str, path: str, token: str,
                      body: bytes | None = None) -> tuple[int, bytes]:
        """Send one request; (status, body). A keep-alive connection that the server had
        closed is redialled once, as the real agent does."""
        for attempt in (1, 2):
            if self._writer is None:
                self._reader, self._writer = await asyncio.open_connection(
                    HOST, self._port, ssl=self._ctx, limit=1 << 20)
                self.fresh = True
            try:
                return await self._exchange(method, path, token, body)
            except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError) as exc:
                stale = not self.fresh and (not isinstance(exc, asyncio.IncompleteReadError)
                                            or not exc.partial)
                self.close()
                if attempt == 2 or not stale:
                    raise
        raise AssertionError("unreachable")

    async def _exchange(self, method: str, path: str, token: str,
                        body: bytes | None) -> tuple[int, bytes]:
        assert self._reader is not None and self._writer is not None
        head = (f"{method} {path} HTTP/1.1\r\nHost: {HOST}:{self._port}\r\n"
                f"Authorization: Bearer {token}\r\nAccept: application/json\r\n")
        if body is not None:
            head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        self._writer.write((head + "\r\n").encode() + (body or b""))
        raw = await self._reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise HttpError(f"bad status line {lines[0]!r}")
        status = int(parts[1])
        length = 0
        close = False
        for line in lines[1:]:
            key, _, value = line.partition(":")
            key = key.strip().lower()
            if key == "content-length":
                length = int(value)
            elif key == "transfer-encoding":
                raise HttpError(f"unsupported transfer-encoding {value.strip()!r}")
            elif key == "connection" and value.strip().lower() == "close":
                close = True
        data = await self._reader.readexactly(length) if length else b""
        self.fresh = False
        if close:
            self.close()
        return status, data


def error_kind(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "connection closed"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, ConnectionResetError):
        return "connection reset"
    if isinstance(exc, ssl.SSLError):
        return f"tls: {exc.reason or exc}"
    if isinstance(exc, OSError):
        return f"os: {exc.strerror or exc}"
    return f"{type(exc).__name__}: {exc}"[:120]


@dataclass
class Metrics:
    """Latency samples and error counts; a sample counts when its request began in the window."""

    w0: float = math.inf
    w1: float = math.inf
    samples: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    counts: Counter[str] = field(default_factory=Counter)
    errors_window: Counter[str] = field(default_factory=Counter)
    errors_total: Counter[str] = field(default_factory=Counter)
    inflight: int = 0  # requests begun in the window and not finished yet

    def begin(self, t0: float) -> None:
        if self.w0 <= t0 < self.w1:
            self.inflight += 1

    def end(self, t0: float) -> None:
        if self.w0 <= t0 < self.w1:
            self.inflight -= 1

    def add(self, kind: str, t0: float, value: float) -> None:
        if self.w0 <= t0 < self.w1:
            self.samples[kind].append(value)

    def count(self, kind: str, t0: float) -> None:
        self.counts[kind + " (run)"] += 1
        if self.w0 <= t0 < self.w1:
            self.counts[kind] += 1

    def error(self, kind: str, what: str, t0: float) -> None:
        self.errors_total[f"{kind}: {what}"] += 1
        if self.w0 <= t0 < self.w1:
            self.errors_window[f"{kind}: {what}"] += 1


class SimAgent:
    """One simulated host: a channel long-poll loop and a status loop, two connections."""

    __slots__ = ("auth", "desired_ids", "facts", "host_id", "i", "labels", "name", "poll_conn",
                 "poll_wait", "reported_ids", "revision", "status_conn", "wake")

    def __init__(self, i: int, seed: int, port: int, ctx: ssl.SSLContext) -> None:
        self.i = i
        self.name, self.facts, self.labels = sim_host(i, seed)
        self.host_id = ""
        self.auth = ""
        self.revision = -1
        self.poll_wait = POLL_WAIT  # until the server says (poll_wait in its replies)
        self.desired_ids: list[str] = []
        self.reported_ids: list[str] = []
        self.poll_conn = HttpConn(port, ctx)
        self.status_conn = HttpConn(port, ctx)
        self.wake = asyncio.Event()

    def close(self) -> None:
        self.poll_conn.close()
        self.status_conn.close()


@dataclass
class SimConfig:
    port: int
    ctx: ssl.SSLContext
    status_heartbeat: bool
    seed: int
    metrics: Metrics
    stop: asyncio.Event


async def poll_once(agent: SimAgent, cfg: SimConfig, wait: float) -> bool:
    """One ``GET /api/v1/agent/channel?revision=R&wait=W``; a desired set wakes the reporter.

    False after an error (the connection is then closed)."""
    m = cfg.metrics
    t0 = time.monotonic()
    m.begin(t0)
    try:
        async with asyncio.timeout(wait + 20):
            status, body = await agent.poll_conn.request(
                "GET", f"/api/v1/agent/channel?revision={agent.revision}&wait={wait:.2f}",
                agent.auth)
        if status != 200:
            raise HttpError(f"HTTP {status}")
        data = json.loads(body)
    except (OSError, TimeoutError, asyncio.IncompleteReadError, HttpError, ValueError) as exc:
        agent.poll_conn.close()
        m.error("channel", str(exc) if isinstance(exc, HttpError) else error_kind(exc), t0)
        m.end(t0)
        return False
    elapsed = time.monotonic() - t0
    agent.poll_wait = float(data.get("poll_wait", agent.poll_wait))
    desired = data.get("desired")
    if desired is not None:
        agent.revision = int(desired["revision"])
        agent.desired_ids = [str(inst["id"]) for inst in desired.get("instances") or []]
        m.count("desired sets received", t0)
        if agent.desired_ids and agent.desired_ids != agent.reported_ids:
            agent.wake.set()
    elif data.get("log_requests"):
        m.count("log requests", t0)
    else:
        m.add("poll_lateness", t0, elapsed - wait)
        m.count("empty polls", t0)
    m.end(t0)
    return True


async def post_status(agent: SimAgent, cfg: SimConfig, conn: HttpConn) -> bool:
    """One ``POST /api/v1/agent/status``: every desired instance as running if a desired set
    is waiting to be reported (agent.wake), else a bare heartbeat ``{"revision": R}``.

    False after an error (the connection is then closed, and a report stays pending)."""
    m = cfg.metrics
    change = agent.wake.is_set()
    agent.wake.clear()
    body: dict[str, Any] = {"revision": agent.revision}
    ids = list(agent.desired_ids)
    kind = "status report" if change else "status heartbeat"
    if change:
        since = time.time()
        body["instances"] = [
            {"instance_id": iid, "state": "running", "since": since,
             "container_id": f"sim{agent.i:05d}{iid[-8:]}", "exit_code": None, "error": "",
             "restarts": 0} for iid in ids]
    payload = json.dumps(body, separators=(",", ":")).encode()
    t0 = time.monotonic()
    m.begin(t0)
    try:
        async with asyncio.timeout(15):
            status, raw = await conn.request("POST", "/api/v1/agent/status", agent.auth, payload)
        if status != 200:
            raise HttpError(f"HTTP {status}: {raw[:200].decode(errors='replace')}")
    except (OSError, TimeoutError, asyncio.IncompleteReadError, HttpError, ValueError) as exc:
        conn.close()
        m.error(kind, str(exc) if isinstance(exc, HttpError) else error_kind(exc), t0)
        m.end(t0)
        if change:
            agent.wake.set()  # report again
        return False
    m.add(kind, t0, time.monotonic() - t0)
    m.count(kind + "s", t0)
    m.end(t0)
    if change:
        agent.reported_ids = ids
    return True


def beat_interval() -> float:
    return HEARTBEAT * random.uniform(0.9, 1.1)


async def channel_loop(agent: SimAgent, cfg: SimConfig) -> None:
    """Two-connection mode: long-poll the channel forever on the agent's first connection."""
    backoff = 1.0
    while not cfg.stop.is_set():
        if await poll_once(agent, cfg, agent.poll_wait):
            backoff = 1.0
        else:
            await asyncio.sleep(backoff * random.uniform(1.0, 2.0))
            backoff = min(backoff * 2, 15.0)


async def status_loop(agent: SimAgent, cfg: SimConfig) -> None:
    """Two-connection mode: status POSTs on the second connection, at once after a desired
    change and (with --status-heartbeat) every interval ±10 %, the first one at a random
    point of the first interval (as the real agent's reporter thread does)."""
    next_beat = time.monotonic() + random.uniform(0, HEARTBEAT)
    retry_at = 0.0
    backoff = 1.0
    while not cfg.stop.is_set():
        now = time.monotonic()
        change = agent.wake.is_set() and now >= retry_at
        if not change and not (cfg.status_heartbeat and now >= next_beat):
            until = next_beat if cfg.status_heartbeat else math.inf
            if agent.wake.is_set():  # a report that waits for its retry time
                await asyncio.sleep(max(0.0, min(until, retry_at) - now))
            elif until == math.inf:
                await agent.wake.wait()
            else:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, until - now)):
                        await agent.wake.wait()
            continue
        if await post_status(agent, cfg, agent.status_conn):
            backoff = 1.0
        else:
            retry_at = time.monotonic() + backoff
            backoff = min(backoff * 2, 30.0)
        next_beat = time.monotonic() + beat_interval()


async def shared_loop(agent: SimAgent, cfg: SimConfig) -> None:
    """One-connection mode: polls and status POSTs take turns on one keep-alive connection.

    A poll's wait is cut to the next heartbeat's due time (never more than 10 s), so the
    heartbeats keep their schedule; a desired set is reported right after the poll that
    brought it."""
    next_beat = (time.monotonic() + random.uniform(0, HEARTBEAT) if cfg.status_heartbeat
                 else math.inf)
    backoff = 1.0
    while not cfg.stop.is_set():
        now = time.monotonic()
        if agent.wake.is_set() or now >= next_beat - 0.2:
            ok = await post_status(agent, cfg, agent.poll_conn)
            if cfg.status_heartbeat:
                next_beat = time.monotonic() + beat_interval()
        else:
            ok = await poll_once(agent, cfg, min(agent.poll_wait, next_beat - now))
        if ok:
            backoff = 1.0
        else:
            await asyncio.sleep(backoff * random.uniform(1.0, 2.0))
            backoff = min(backoff * 2, 15.0)


async def loop_lag(metrics: Metrics, stop: asyncio.Event, every: float = 0.25) -> None:
    """How late the simulator's own event loop wakes up (a busy client inflates latencies)."""
    while not stop.is_set():
        t0 = time.monotonic()
        await asyncio.sleep(every)
        metrics.add("sim_loop_lag", t0, time.monotonic() - t0 - every)


# -- admin (CLI-like) load, in its own process ----------------------------------------------


def admin_worker(url: str, ca_pem: str, token: str, rates: dict[str, float], begin: float,
                 w0: float, w1: float, end: float, call_timeout: float) -> dict[str, Any]:
    """Open-loop admin calls from wall time ``begin`` to ``end``; samples for [w0, w1).

    Runs in a spawned process. Returns {"samples": {kind: [s]}, "errors": {...}, "cpu": s}.
    """
    import httpx

    paths = {"service ls": "/api/v1/services", "ps": "/api/v1/instances"}
    samples: dict[str, list[float]] = defaultdict(list)
    errors: Counter[str] = Counter()
    errors_total: Counter[str] = Counter()

    async def one(client: httpx.AsyncClient, kind: str, due: float) -> None:
        try:
            async with asyncio.timeout(max(0.1, due + call_timeout - time.time())):
                r = await client.get(paths[kind])
            if r.status_code != 200:
                raise HttpError(f"HTTP {r.status_code}")
            r.json()
        except TimeoutError:
            what = f"{kind}: timeout ({call_timeout:g} s)"
            errors_total[what] += 1
            if w0 <= due < w1:
                errors[what] += 1
            return
        except (httpx.HTTPError, HttpError, ValueError) as exc:
            what = f"{kind}: {type(exc).__name__} {exc}"[:120]
            errors_total[what] += 1
            if w0 <= due < w1:
                errors[what] += 1
            return
        if w0 <= due < w1:
            samples[kind].append(time.time() - due)

    async def stream(client: httpx.AsyncClient, kind: str, rate: float) -> None:
        tasks = []
        n = int((end - begin) * rate)
        for k in range(n):  # bounded: a fixed number of calls, each due at a fixed time
            due = begin + k / rate
            await asyncio.sleep(max(0.0, due - time.time()))
            tasks.append(asyncio.create_task(one(client, kind, due)))
        await asyncio.gather(*tasks)

    async def main() -> None:
        limits = httpx.Limits(max_connections=32, max_keepalive_connections=32)
        async with httpx.AsyncClient(base_url=url, verify=tokens.pinned_context(ca_pem),
                                     timeout=call_timeout,
                                     limits=limits,
                                     headers={"Authorization": f"Bearer {token}"}) as client:
            await asyncio.gather(*(stream(client, kind, rate) for kind, rate in rates.items()
                                   if rate > 0))

    cpu0, t0 = self_cpu_seconds(), time.time()
    asyncio.run(main())
    return {"samples": dict(samples), "errors": dict(errors), "errors_total": dict(errors_total),
            "cpu": self_cpu_seconds() - cpu0, "wall": time.time() - t0}


# -- one run against one database ---------------------------------------------------------


def service_plan(n_agents: int, image: str) -> list[dict[str, Any]]:
    """5 services: ~200 replicas by architecture and GPU, and a global one on rack r07."""
    gpu_hosts = sum(1 for i in range(n_agents) if mix_slot(i)[2])
    gpu = min(20, gpu_hosts)
    base = {"image": image, "command": SIM_CMD}
    return [
        {**base, "name": "fleet-web", "replicas": 100 + (20 - gpu),
         "constraints": ["node.platform.arch==arm64"]},
        {**base, "name": "fleet-api", "replicas": 50, "constraints": ["node.platform.arch==amd64"],
         "preferences": ["spread=node.labels.zone"]},
        {**base, "name": "fleet-edge", "replicas": 30, "constraints": ["node.platform==linux/arm/v7"]},
        {**base, "name": "fleet-gpu", "replicas": gpu,
         "reservations": {"generic": {"nvidia.com/gpu": 1}}},
        {**base, "name": "fleet-probe", "mode": "global", "constraints": ["node.labels.rack==r07"]},
    ]


@dataclass
class RunResult:
    db: str
    data: dict[str, Any] = field(default_factory=dict)


async def wait_until(check: Callable[[], Awaitable[T]], timeout: float, every: float = 1.0) -> T:
    """Call ``check`` until truthy or ``timeout`` passes; return the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value or time.monotonic() >= deadline:
            return value
        await asyncio.sleep(every)


async def simulate(server: ServerProc, args: argparse.Namespace, db: str, image: str) -> dict[str, Any]:
    """Register the fleet, create the services, measure one steady window; the result dict."""
    import httpx

    assert server.proc is not None
    spid = server.proc.pid
    ctx = tokens.pinned_context(server.ca_pem)
    admin_token = server.admin_token
    problems: list[str] = []
    res: dict[str, Any] = {"db": db, "agents": args.agents, "connections": args.connections,
                           "status_heartbeat": args.status_heartbeat, "problems": problems}
    metrics = Metrics()
    stop = asyncio.Event()
    cfg = SimConfig(server.port, ctx, args.status_heartbeat, args.seed, metrics, stop)
    tasks: list[asyncio.Task[None]] = []
    agents: list[SimAgent] = []
    api = httpx.AsyncClient(base_url=server.url, verify=ctx, timeout=120,
                            headers={"Authorization": f"Bearer {admin_token}"})
    admin_pool = concurrent.futures.ProcessPoolExecutor(
        max_workers=1, mp_context=multiprocessing.get_context("spawn"))
    try:
        r = await api.get("/api/v1/tokens/join")
        r.raise_for_status()
        join = str(r.json()["token"])
        tasks.append(asyncio.create_task(loop_lag(metrics, stop)))

        # --- registration (setup): bounded concurrency, each agent starts once registered
        say(f"[{db}] registering {args.agents} simulated agents, {args.register_concurrency} at a time")
        reg_lat: list[float] = []
        reg_fail: Counter[str] = Counter()
        todo = iter(range(args.agents))
        cpu_r0 = proc_cpu_seconds(spid)
        t_reg = time.monotonic()
        reg_deadline = t_reg + args.register_timeout

        async def registrar() -> None:
            conn = HttpConn(server.port, ctx)
            try:
                for i in todo:
                    agent = SimAgent(i, args.seed, server.port, ctx)
                    body = json.dumps({"facts": agent.facts, "labels": agent.labels,
                                       "name": agent.name}, separators=(",", ":")).encode()
                    for _attempt in range(3):
                        if time.monotonic() > reg_deadline:
                            return
                        t0 = time.monotonic()
                        try:
                            async with asyncio.timeout(30):
                                status, raw = await conn.request("POST", "/api/v1/agent/register",
                                                                 join, body)
                            if status != 201:
                                raise HttpError(f"HTTP {status}: {raw[:200]!r}")
                            reply = json.loads(raw)
                        except (OSError, TimeoutError, asyncio.IncompleteReadError, HttpError,
                                ValueError) as exc:
                            conn.close()
                            reg_fail[error_kind(exc) if not isinstance(exc, HttpError)
                                     else str(exc)] += 1
                            await asyncio.sleep(0.5)
                            continue
                        reg_lat.append(time.monotonic() - t0)
                        agent.host_id = str(reply["host_id"])
                        agent.auth = str(reply["credential"])
                        agents.append(agent)
                        if args.connections == 2:
                            tasks.append(asyncio.create_task(channel_loop(agent, cfg)))
                            tasks.append(asyncio.create_task(status_loop(agent, cfg)))
                        else:
                            tasks.append(asyncio.create_task(shared_loop(agent, cfg)))
                        break
            finally:
                conn.close()

        async def progress() -> None:
            while True:
                await asyncio.sleep(10)
                say(f"[{db}]   {len(agents)} registered ({time.monotonic() - t_reg:.0f} s)")

        prog = asyncio.create_task(progress())
        await asyncio.gather(*(registrar() for _ in range(args.register_concurrency)))
        prog.cancel()
        reg_s = time.monotonic() - t_reg
        res["registration"] = {"registered": len(agents), "seconds": reg_s,
                               "per_second": len(agents) / reg_s if reg_s else 0.0,
                               "latency": summary(reg_lat), "failures": dict(reg_fail),
                               "server_cpu_s": proc_cpu_seconds(spid) - cpu_r0}
        say(f"[{db}] registered {len(agents)}/{args.agents} in {reg_s:.1f} s")
        if not agents:
            raise BenchError(f"no agent registered (failures: {dict(reg_fail)})")
        if len(agents) < args.agents:  # measure the fleet there is, and say so
            problems.append(f"only {len(agents)} of {args.agents} agents registered within "
                            f"{args.register_timeout:.0f} s")

        # --- services (setup), and wait until every instance is reported running
        plan = service_plan(args.agents, image)
        t_svc = time.monotonic()
        for spec in plan:
            r = await api.post("/api/v1/services", json=spec)
            if r.status_code != 201:
                raise BenchError(f"creating service {spec['name']} failed: {r.status_code} {r.text}")
        replicated = {s["name"]: s["replicas"] for s in plan if s.get("mode") != "global"}

        async def converged() -> dict[str, Any]:
            insts = (await api.get("/api/v1/instances")).json()
            svcs = {s["name"]: s for s in (await api.get("/api/v1/services")).json()}
            states = Counter(i["state"] for i in insts)
            ok = (bool(insts) and states.get("running", 0) == len(insts)
                  and all(svcs[n]["running"] == want for n, want in replicated.items()))
            state = {"ok": ok, "instances": len(insts), "states": dict(states),
                     "pending": {n: s.get("pending_reason") for n, s in svcs.items()
                                 if s.get("pending_reason")}}
            return state if ok else {}

        conv = await wait_until(converged, args.converge_timeout, every=2.0)
        if not conv:
            insts = (await api.get("/api/v1/instances")).json()
            svcs = (await api.get("/api/v1/services")).json()
            conv = {"ok": False, "instances": len(insts),
                    "states": dict(Counter(i["state"] for i in insts)),
                    "services": {s["name"]: [s["running"], s["desired"], s.get("pending_reason")]
                                 for s in svcs}}
        conv["seconds"] = time.monotonic() - t_svc
        res["services"] = {"created": [s["name"] for s in plan], "converged": conv}
        say(f"[{db}] services: {conv['instances']} instances, states {conv['states']}, "
            f"converged={conv['ok']} after {conv['seconds']:.1f} s")

        # --- steady window: warm-up of one interval, then the window
        now_m, now_w = time.monotonic(), time.time()
        warm = args.warmup
        metrics.w0 = now_m + warm
        metrics.w1 = metrics.w0 + args.duration
        rates = {"service ls": args.ls_rate, "ps": args.ps_rate}
        admin = asyncio.get_running_loop().run_in_executor(
            admin_pool, admin_worker, server.url, server.ca_pem, admin_token, rates,
            now_w + 1.0, now_w + warm, now_w + warm + args.duration, now_w + warm + args.duration,
            args.admin_timeout)
        say(f"[{db}] warm-up {warm:.0f} s, then a {args.duration:.0f} s window "
            f"(load {loadavg()})")
        await asyncio.sleep(max(0.0, metrics.w0 - time.monotonic()))
        cpu0, sim0 = proc_cpu_seconds(spid), self_cpu_seconds()
        t0 = time.monotonic()
        mem_peak: dict[str, int] = {}
        while time.monotonic() < metrics.w1:
            await asyncio.sleep(min(1.0, max(0.0, metrics.w1 - time.monotonic())))
            mem = proc_mem_kib(spid)
            mem_peak = {k: max(v, mem_peak.get(k, 0)) for k, v in mem.items()}
        window = time.monotonic() - t0
        cpu1, sim1 = proc_cpu_seconds(spid), self_cpu_seconds()
        mem_end = proc_mem_kib(spid)
        # requests begun in the window (long-polls: up to `wait` s) are let finish and counted
        drain_until = time.monotonic() + max(POLL_WAIT, 60.0) + 25
        while metrics.inflight > 0 and time.monotonic() < drain_until:
            await asyncio.sleep(0.25)
        res["window"] = {"unfinished": metrics.inflight}
        async with asyncio.timeout(120):
            admin_res = await admin
        ncpu = os.cpu_count() or 1
        res["window"].update(seconds=window, warmup=warm, load_after=loadavg())
        res["server"] = {"pid": spid, "cpu_s": cpu1 - cpu0,
                         "cpu_pct_one_core": 100 * (cpu1 - cpu0) / window,
                         "cpu_pct_machine": 100 * (cpu1 - cpu0) / window / ncpu, "cores": ncpu,
                         "rss_mib": mem_end.get("VmRSS", 0) / 1024,
                         "hwm_mib": mem_end.get("VmHWM", 0) / 1024,
                         "threads": mem_peak.get("Threads", 0)}
        res["simulator"] = {"cpu_s": sim1 - sim0, "cpu_pct_one_core": 100 * (sim1 - sim0) / window,
                            "loop_lag": summary(metrics.samples.get("sim_loop_lag", []))}
        res["admin_client"] = {"cpu_s": admin_res["cpu"],
                               "cpu_pct_one_core": 100 * admin_res["cpu"]
                               / max(admin_res["wall"], window)}
        lat: dict[str, Any] = {}
        for kind in ("status heartbeat", "status report"):
            lat[kind] = summary(metrics.samples.get(kind, []))
        for kind in ("service ls", "ps"):
            lat[kind] = summary(admin_res["samples"].get(kind, []))
        res["latency"] = lat
        res["poll_lateness"] = summary(metrics.samples.get("poll_lateness", []))
        res["counts"] = dict(metrics.counts)
        res["errors_window"] = {**metrics.errors_window, **admin_res["errors"]}

        # --- hosts as the server sees them, while the fleet is still up
        hosts = (await api.get("/api/v1/hosts")).json()
        sims = [h for h in hosts if (h.get("labels") or {}).get(SIM_LABEL) == "true"]
        states = Counter(h["state"] for h in sims)
        res["hosts"] = {"sim_hosts": len(sims), "states": dict(states),
                        "down": states.get("down", 0),
                        "platforms": dict(Counter(h["platform"] for h in sims))}
        res["errors_total"] = {**metrics.errors_total, **admin_res["errors_total"]}
        if not conv["ok"]:
            problems.append("the services did not converge (not every instance running)")
        if res["hosts"]["down"]:
            problems.append(f"{res['hosts']['down']} sim hosts down at the end")
        if res["hosts"]["sim_hosts"] != len(agents):
            problems.append(f"the server lists {res['hosts']['sim_hosts']} sim hosts, "
                            f"{len(agents)} registered")
        if res["errors_window"]:
            problems.append("errors in the window")
        if metrics.inflight:
            problems.append(f"{metrics.inflight} requests begun in the window never finished")
        return res
    finally:
        stop.set()
        for t in tasks:
            t.cancel()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(30):
                await asyncio.gather(*tasks, return_exceptions=True)
        for a in agents:
            a.close()
        await api.aclose()
        admin_pool.shutdown(wait=False, cancel_futures=True)


def say(msg: str) -> None:
    print(f"{dt.datetime.now():%H:%M:%S} {msg}", file=sys.stderr, flush=True)


def run_async(coro: Coroutine[Any, Any, T], timeout: float) -> T:
    """Run ``coro`` on uvloop (if importable) under a global deadline.

    SIGTERM cancels it and surfaces as KeyboardInterrupt (after the coroutine's own
    cleanup), as Ctrl-C does; the previous SIGTERM handler is restored afterwards.
    """
    terminated = False

    async def guarded() -> T:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()

        def on_term() -> None:
            nonlocal terminated
            terminated = True
            if task is not None:
                task.cancel()

        loop.add_signal_handler(signal.SIGTERM, on_term)
        try:
            async with asyncio.timeout(timeout):
                return await coro
        except asyncio.CancelledError:
            if terminated:
                raise KeyboardInterrupt("SIGTERM") from None
            raise
        finally:
            loop.remove_signal_handler(signal.SIGTERM)

    try:
        import uvloop
        factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        factory = None
    previous = signal.getsignal(signal.SIGTERM)
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(guarded())
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def started_server(db: str, tmp: Path, poll_wait: float | None = None) -> Iterator[ServerProc]:
    """A corral server on ``db``; stopped (and its PostgreSQL database dropped) afterwards."""
    extra = ["--heartbeat-interval", f"{HEARTBEAT:g}"]
    if poll_wait is not None:
        extra += ["--poll-wait", f"{poll_wait:g}"]
    if db == "postgres":
        extra += ["--db", daemons.fresh_postgres_database(PG_DATABASE)]
    server = ServerProc(tmp / f"server-{db}", extra_args=extra)
    try:
        server.start(timeout=60)
        yield server
    finally:
        server.stop()
        if db == "postgres":
            try:
                daemons._psql(f'DROP DATABASE IF EXISTS "{PG_DATABASE}" WITH (FORCE)')
            except Exception as exc:  # cleanup must not hide the real error
                say(f"warning: could not drop database {PG_DATABASE}: {exc}")


def run_one(db: str, args: argparse.Namespace, tmp: Path, image: str) -> dict[str, Any]:
    with started_server(db, tmp, args.poll_wait) as server:
        say(f"[{db}] corral server pid {server.proc.pid if server.proc else '?'} on {server.url}")
        timeout = (args.register_timeout + args.converge_timeout + args.warmup + args.duration
                   + 180)
        try:
            return run_async(simulate(server, args, db, image), timeout)
        except BaseException:
            say(f"[{db}] server log tail ({server.log_path}):\n"
                + server.log_path.read_text(errors="replace")[-3000:])
            raise


# -- output -------------------------------------------------------------------------------


def _ms(v: float) -> str:
    return "-" if math.isnan(v) else f"{v * 1000:.1f}"


def print_table(r: dict[str, Any]) -> None:
    reg = r["registration"]
    srv = r["server"]
    print(f"\n== {r['db']}: {r['agents']} simulated agents, {r['connections']} connection(s) each, "
          f"status heartbeat {'on' if r['status_heartbeat'] else 'off'}; window "
          f"{r['window']['seconds']:.0f} s after {r['window']['warmup']:.0f} s warm-up ==")
    print(f"registration (setup): {reg['registered']}/{r['agents']} in {reg['seconds']:.1f} s "
          f"({reg['per_second']:.0f}/s), p50 {_ms(reg['latency']['p50'])} ms, "
          f"p99 {_ms(reg['latency']['p99'])} ms, failures {reg['failures'] or 0}")
    conv = r["services"]["converged"]
    print(f"services: {len(r['services']['created'])}, {conv['instances']} instances "
          f"{conv['states']}, converged {conv['ok']} in {conv['seconds']:.1f} s")
    print(f"{'request':<22}{'n':>8}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}"
          f"{'p99/goal':>10}{'p99/k8s':>9}")
    rows = [(k, v) for k, v in r["latency"].items() if v["n"] or k != "status report"]
    rows.append(("poll return lateness", r["poll_lateness"]))
    for kind, s in rows:
        ratio = "" if math.isnan(s["p99"]) else f"{s['p99'] / GOAL_P99:.2f}x"
        k8s = "" if math.isnan(s["p99"]) else f"{s['p99'] / K8S_SLO_P99:.2f}x"
        print(f"{kind:<22}{s['n']:>8}{_ms(s['p50']):>10}{_ms(s['p99']):>10}{_ms(s['max']):>10}"
              f"{ratio:>10}{k8s:>9}")
    c = r["counts"]
    print(f"whole run: {c.get('desired sets received (run)', 0)} desired sets received, "
          f"{c.get('status reports (run)', 0)} status reports, "
          f"{c.get('status heartbeats (run)', 0)} status heartbeats, "
          f"{c.get('empty polls (run)', 0)} empty polls")
    print(f"errors in window: {r['errors_window'] or 'none'}; whole run: {r['errors_total'] or 'none'}")
    h = r["hosts"]
    print(f"hosts: {h['sim_hosts']} sim hosts {h['states']}; down at end: {h['down']}")
    print(f"server CPU: {srv['cpu_pct_one_core']:.0f} % of one core = {srv['cpu_pct_machine']:.0f} % "
          f"of {srv['cores']} cores; RSS {srv['rss_mib']:.0f} MiB (HWM {srv['hwm_mib']:.0f} MiB), "
          f"{srv['threads']} threads")
    sim = r["simulator"]
    print(f"simulator CPU: {sim['cpu_pct_one_core']:.0f} % of one core (loop lag p99 "
          f"{_ms(sim['loop_lag']['p99'])} ms); admin client CPU "
          f"{r['admin_client']['cpu_pct_one_core']:.0f} %; load after {r['window']['load_after']}")
    verdict = []
    for kind, s in r["latency"].items():
        if s["n"]:
            verdict.append(f"{kind} {'PASS' if s['p99'] < GOAL_P99 else 'FAIL'}")
    print(f"goal p99 < {GOAL_P99 * 1000:.0f} ms: {', '.join(verdict) or 'no samples'}; "
          f"0 down: {'PASS' if h['down'] == 0 else 'FAIL'}")
    for problem in r["problems"]:
        print(f"PROBLEM: {problem}")


def json_safe(obj: Any) -> Any:
    """NaN (an empty sample) -> null, recursively."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    p.add_argument("--agents", type=int, default=10000)
    p.add_argument("--duration", type=float, default=60.0, help="steady window, seconds")
    p.add_argument("--warmup", type=float, default=HEARTBEAT, help="seconds before the window")
    p.add_argument("--ls-rate", type=float, default=5.0, help="service ls calls per second")
    p.add_argument("--ps-rate", type=float, default=5.0, help="ps calls per second")
    p.add_argument("--status-heartbeat", action=argparse.BooleanOptionalAction, default=False,
                   help="also POST a status heartbeat every interval (the protocol before the poll "
                        "became the heartbeat; off by default)")
    p.add_argument("--connections", type=int, choices=(1, 2), default=1,
                   help="keep-alive connections per agent: 2 = channel + status (as the real "
                        "agent); 1 = status POSTs between polls on the channel connection "
                        "(needs half the file descriptors)")
    p.add_argument("--register-concurrency", type=int, default=50)
    p.add_argument("--register-timeout", type=float, default=None,
                   help="seconds for the whole registration (default 60 + agents/50); "
                        "the window then measures the agents that did register")
    p.add_argument("--converge-timeout", type=float, default=120.0)
    p.add_argument("--admin-timeout", type=float, default=30.0,
                   help="an admin call not answered this long after it was due is a timeout")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--poll-wait", type=float, default=None,
                   help="the server's --poll-wait (default: the server's own, 55 s)")
    p.add_argument("--quick", action="store_true",
                   help="300 agents, 15 s window, polls renewed every 10 s (smoke test)")
    p.add_argument("--json", action="store_true", help="print the results as JSON at the end")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (server logs)")
    args = p.parse_args(argv)
    if args.quick:
        args.agents = 300
        args.duration = 15.0
        args.poll_wait = 10.0  # so that a 15 s window sees polls return
    if args.agents < 1 or args.duration <= 0 or args.register_concurrency < 1:
        p.error("--agents, --duration and --register-concurrency must be positive")
    if args.register_timeout is None:
        args.register_timeout = 60.0 + args.agents / 50
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    signal.signal(signal.SIGTERM, on_sigterm)
    if os.geteuid() != 0:
        say("warning: not root; the test bed (registry, PostgreSQL) needs root")
    nofile = raise_nofile(args.agents * args.connections + 100, args.connections)
    dbs = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    tmp = Path(tempfile.mkdtemp(prefix="corral-fleet-"))
    results: list[dict[str, Any]] = []
    failed: list[str] = []
    try:
        registry = daemons.ensure_registry()
        image = build_busybox(registry).ref
        if not image.startswith(("127.0.0.1:", "localhost:")):
            raise BenchError(f"image {image} is not in a loopback registry")
        say(f"image {image}; RLIMIT_NOFILE {nofile}; {os.cpu_count()} CPUs; load {loadavg()}")
        for db in dbs:
            try:
                result = run_one(db, args, tmp, image)
                results.append(result)
                if result["problems"]:
                    failed.append(db)
            except (BenchError, TimeoutError, OSError, RuntimeError) as exc:
                say(f"[{db}] FAILED: {type(exc).__name__}: {exc}")
                failed.append(db)
                results.append({"db": db, "agents": args.agents, "error": f"{type(exc).__name__}: {exc}"})
        for r in results:
            if "error" in r:
                print(f"\n== {r['db']}: FAILED: {r['error']} ==")
            else:
                print_table(r)
        if args.json:
            print(json.dumps(json_safe({"config": vars(args), "goal_p99_s": GOAL_P99,
                                        "k8s_slo_p99_s": K8S_SLO_P99, "cpus": os.cpu_count(),
                                        "results": results}), allow_nan=False))
    except KeyboardInterrupt:
        say("interrupted: cleaning up")
        return 130
    finally:
        if args.keep:
            say(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
