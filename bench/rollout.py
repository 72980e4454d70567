#!/usr/bin/env python3
"""Rolling update: N replicas from v1 to v2, Corral (3 engines) against Docker Swarm (1 engine).

Everything runs on this machine, on real processes, in one run:

- Three NetnsHosts ``bench-ro1..3`` (network namespaces ``crl-bench-ro1..3``, each with only
  ``lo``, its own dockerd and a loopback forwarder to the registry and the Corral server).
- Images: ``127.0.0.1:5000/corral/bench-rollout:v1`` and ``:v2``, busybox (the test bed's
  offline build, ``testbed.images.build_busybox``) plus one small layer with
  ``/www/index.html`` = ``corral-bench-rollout vN``, so the two tags really differ (digests,
  content). Both tags are pulled into every engine before anything is measured, so pull time
  is not in any figure.
- Corral: a real ``corral server`` (SQLite) and one real ``corral agent`` per host. A service
  of ``--replicas`` (default 100) spread over the 3 hosts; once all run, ``POST
  /api/v1/services/NAME/update {"image": v2, "update_config": {parallelism, delay 0, order,
  monitor}}``; timed from just before the POST until ``GET
  /api/v1/services/NAME?instances=false`` (what ``corral service update`` watches; polled
  every 100 ms) shows ``update.state == "completed"`` and ``running == replicas``.
- Docker Swarm: ``docker swarm init --advertise-addr 127.0.0.1`` on the engine of
  ``bench-ro1`` only. ``docker service create --replicas N`` of v1, wait until converged, then
  ``docker service update --image v2 --update-parallelism P --update-delay 0s --update-order
  O --update-monitor M --detach``; timed from just before that CLI call until the Engine API
  ``GET /tasks`` (polled every 100 ms) shows N running tasks of v2 and no v1 task still
  desired running.
- Both orders: stop-first and start-first. Runs are sequential and never overlap (each
  workload is removed, and its containers are gone, before the next one is deployed);
  stop-first runs Corral then Swarm, start-first Swarm then Corral.
- Goals: faster than Swarm with both tools' default order (stop-first), and no gap in answers
  during a start-first update (the issue's two); start-first's time is compared as well.
- Command (Corral and Swarm alike): ``sh -c 'trap "exit 0" TERM; while :; do sleep 1 & wait;
  done'``: a sleep loop that exits on SIGTERM at once (``sleep`` as PID 1 ignores SIGTERM,
  and every replaced container would wait out the 10 s stop grace period).
- Where the time goes: the engines' own event streams (``GET /events`` for the service's
  containers, after each run) give every container's create/start and every old container's
  kill/die/destroy. Both sides update as a sliding window of ``parallelism`` slots (a slot takes
  the next old instance as soon as its new one runs), so the bench splits a slot's cycle into
  the engine's create -> start of the new container and the hand-off: the j-th new container
  started -> the (j+P)-th new container created (P = parallelism), which for Corral it splits
  with the agents' "desired set revision" log lines into "status report + server pass +
  delivery" and "agent pass -> create". For stop-first it also gives how long a new container
  waited for its slot's old one to stop (old die -> new start). CPU: the machine's busy
  core-seconds during each timed update (from /proc/stat), and those of the Corral server, the
  agents, the engines (dockerd, containerd) and everything else (other processes on this
  machine, and short-lived ones such as runc): the machine is shared, and both sides are
  CPU-bound on a small one.
- Gap: a separate Corral service (``--gap-replicas``, default 12) runs ``httpd`` serving that
  index.html and publishes port ``--port`` (ingress, the default mode) to target 8000. A probe
  process inside ``crl-bench-ro1`` (loopback only) sends HTTP requests in a tight, bounded loop
  while that service is updated start-first to v2, and reports requests, failures, the
  longest gap between two successful answers and when answers switched from v1 to v2. If
  nothing answers (no ingress proxy yet), it says "no answers".

Run from the repository root (as root)::

    /opt/corral-venv/bin/python bench/rollout.py [--replicas 100] [--json] [--keep] [--quick]

``--quick`` (12 replicas, parallelism 4, 6 gap replicas) is the smoke test. Cleanup on
success, failure and Ctrl-C/SIGTERM: services removed, swarm left, agents and server
stopped, namespaces (dockerds and every container in them) removed.

Network: only loopback and the namespaces created here are ever contacted.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import http.client
import io
import json
import os
import platform
import re
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import (  # noqa: E402
    API,
    BenchError,
    busy_core_seconds,
    cli,
    containers,
    engine,
    log,
    on_sigterm,
    q,
)
from testbed.cluster import AgentProc, ServerProc  # noqa: E402
from testbed.daemons import ensure_registry  # noqa: E402
from testbed.images import (  # noqa: E402
    FIXED_CREATED,
    OCI_CONFIG,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    BuiltImage,
    RegistryPusher,
    build_busybox,
    canonical_json,
    gzip_deterministic,
    platform_descriptor,
    sha256_digest,
    tar_entry,
)
from testbed.netns import NetnsHost  # noqa: E402

IMAGE_REPO = "corral/bench-rollout"
HOSTS = (("bench-ro1", 211), ("bench-ro2", 212), ("bench-ro3", 213))  # bridges 172.31.21x.1/24
TRAP_SCRIPT = 'trap "exit 0" TERM; while :; do sleep 1 & wait; done'
TRAP_CMD = ["sh", "-c", TRAP_SCRIPT]
HTTPD_SCRIPT = 'trap "exit 0" TERM; httpd -f -p 8000 -h /www & wait'
HTTPD_CMD = ["sh", "-c", HTTPD_SCRIPT]
POLL = 0.1  # both sides are polled every 100 ms
ORDERS = ("stop-first", "start-first")
_MACHINES = {"x86_64": "linux/amd64", "aarch64": "linux/arm64", "armv7l": "linux/arm/v7"}
_PATH_ENV = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"





class Deadline:
    """One deadline for the whole run; every wait is bounded by it."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.monotonic() + seconds

    def left(self) -> float:
        return self.at - time.monotonic()

    def bound(self, timeout: float) -> float:
        left = self.left()
        if left <= 0:
            raise BenchError(f"global deadline ({self.seconds:.0f} s, --deadline) reached")
        return min(timeout, left)


def wait(pred: Any, timeout: float, what: str, dl: Deadline, interval: float = 0.25) -> Any:
    end = time.monotonic() + dl.bound(timeout)
    last: Any = None
    while True:
        last = pred()
        if last:
            return last
        if time.monotonic() > end:
            raise BenchError(f"timed out after {timeout:.0f} s (or the global deadline) waiting for {what}")
        time.sleep(interval)


class EventTap:
    """A live ``GET /events`` stream of one engine (containers and images), read by a thread.

    Live, because ``since``/``until`` queries afterwards see only the engine's last 256 events,
    and one update of 100 containers on one engine makes several hundred.
    """

    def __init__(self, host: NetnsHost) -> None:
        self.host = host
        self.lines: list[bytes] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(host.docker_host[len("unix://"):])
        query = urllib.parse.urlencode({"filters": json.dumps({"type": ["container", "image"]})})
        # HTTP/1.0: the engine streams the body as is (no chunked encoding) and closes at the end
        self.sock.sendall(f"GET {API}/events?{query} HTTP/1.0\r\nHost: docker\r\n\r\n".encode())
        self.sock.settimeout(None)
        self._buf = b""
        self._thread = threading.Thread(target=self._read, name=f"events-{host.name}", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        with contextlib.suppress(OSError):
            while chunk := self.sock.recv(65536):
                self._buf += chunk

    def close(self) -> list[dict[str, Any]]:
        time.sleep(0.2)  # events of the last moment
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self._thread.join(timeout=10)
        self.sock.close()
        head, sep, body = self._buf.partition(b"\r\n\r\n")
        if not sep or b" 200 " not in head.split(b"\r\n", 1)[0]:
            raise BenchError(f"GET /events on {self.host.name}: {head[:200]!r}")
        out = []
        for line in body.splitlines():
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
        return out


class Taps:
    """Event taps on several engines, opened before an update and closed after it."""

    def __init__(self, hosts: list[NetnsHost]) -> None:
        self.taps: list[EventTap] = []
        try:
            for h in hosts:
                self.taps.append(EventTap(h))
        except BaseException:
            self.close()
            raise

    def close(self) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for tap in self.taps:
            out += [(tap.host.name, e) for e in tap.close()]
        self.taps = []
        return out


def service_events(events: list[tuple[str, dict[str, Any]]], label: str, name: str) -> list[tuple[str, dict[str, Any]]]:
    return [(h, e) for h, e in events if e.get("Type") == "container"
            and e.get("Actor", {}).get("Attributes", {}).get(label) == name]


def pull_count(events: list[tuple[str, dict[str, Any]]]) -> int:
    return sum(1 for _, e in events if e.get("Type") == "image" and e.get("Action") == "pull")


# ---------------------------------------------------------------- images


def build_versions(registry: str) -> dict[str, BuiltImage]:
    """Tags v1 and v2 of IMAGE_REPO: busybox plus a layer with /www/index.html naming the version."""
    plat = _MACHINES.get(platform.machine())
    if plat is None:
        raise BenchError(f"no busybox build for this machine ({platform.machine()})")
    base = build_busybox(registry, repo=IMAGE_REPO, tag="base", platforms=(plat,))
    host, port = registry.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        conn.request("GET", f"/v2/{IMAGE_REPO}/manifests/{base.digests[plat]}", headers={"Accept": OCI_MANIFEST})
        resp = conn.getresponse()
        manifest = json.loads(resp.read())
        conn.request("GET", f"/v2/{IMAGE_REPO}/blobs/{manifest['config']['digest']}")
        resp = conn.getresponse()
        base_config = json.loads(resp.read())
    finally:
        conn.close()
    base_layer = manifest["layers"][0]
    base_diff = base_config["rootfs"]["diff_ids"][0]
    out: dict[str, BuiltImage] = {}
    pusher = RegistryPusher(registry)
    try:
        for version in ("v1", "v2"):
            page = f"corral-bench-rollout {version}\n".encode()
            raw = io.BytesIO()
            with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
                tar.addfile(tar_entry("www", tarfile.DIRTYPE, 0o755))
                tar.addfile(tar_entry("www/index.html", tarfile.REGTYPE, 0o644, len(page)), io.BytesIO(page))
            layer = gzip_deterministic(raw.getvalue())
            config = canonical_json({
                **platform_descriptor(plat), "created": FIXED_CREATED,
                "config": {"Env": [_PATH_ENV, f"BENCH_VERSION={version}"], "Cmd": ["sh"]},
                "rootfs": {"type": "layers", "diff_ids": [base_diff, sha256_digest(raw.getvalue())]},
                "history": [{"created": FIXED_CREATED, "created_by": "corral testbed busybox"},
                            {"created": FIXED_CREATED, "created_by": f"bench/rollout.py: /www/index.html {version}"}],
            })
            man = canonical_json({
                "schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": {"mediaType": OCI_CONFIG, "digest": sha256_digest(config), "size": len(config)},
                "layers": [base_layer, {"mediaType": OCI_LAYER_GZIP, "digest": sha256_digest(layer),
                                        "size": len(layer)}],
            })
            pusher.push_blob(IMAGE_REPO, layer)
            pusher.push_blob(IMAGE_REPO, config)
            digest = pusher.push_manifest(IMAGE_REPO, version, man, OCI_MANIFEST)
            out[version] = BuiltImage(ref=f"{registry}/{IMAGE_REPO}:{version}", index_digest=digest,
                                      digests={plat: digest}, media_type=OCI_MANIFEST)
    finally:
        pusher.close()
    return out


# ---------------------------------------------------------------- where the time goes


def _t(ev: dict[str, Any]) -> float:
    return int(ev["timeNano"]) / 1e9


def container_timeline(events: list[tuple[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """container id -> {host, image, name, create, start, kill, die, destroy} (first time of each)."""
    out: dict[str, dict[str, Any]] = {}
    for host, ev in events:
        cid = ev.get("id") or ev.get("Actor", {}).get("ID", "")
        attrs = ev.get("Actor", {}).get("Attributes", {})
        c = out.setdefault(cid, {"host": host, "image": attrs.get("image", ""), "name": attrs.get("name", "")})
        action = str(ev.get("Action") or ev.get("status") or "").split(":")[0]
        if action in ("create", "start", "kill", "die", "destroy") and action not in c:
            c[action] = _t(ev)
    return out


def union_length(intervals: list[tuple[float, float]]) -> float:
    total, end = 0.0, float("-inf")
    for a, b in sorted(intervals):
        if b <= end:
            continue
        total += b - max(a, end)
        end = b
    return total


def median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def _slot_key(name: str) -> str:
    """SERVICE.SLOT of a container name (Corral: SERVICE.SLOT.INSTANCE, Swarm: SERVICE.SLOT.TASK)."""
    return ".".join(name.lstrip("/").split(".")[:2])


def analyse(timeline: dict[str, dict[str, Any]], new_digest: str, t0: float, total: float,
            parallelism: int, desired_at: dict[str, list[float]]) -> dict[str, Any]:
    """Split one update's wall time (t0: Unix time of the API/CLI call) using engine events."""
    end = t0 + total
    new = sorted((c for c in timeline.values() if new_digest in c["image"] and "create" in c),
                 key=lambda c: c["create"])
    old = [c for c in timeline.values() if new_digest not in c["image"]]
    starts = [c["start"] for c in new if "start" in c]
    out: dict[str, Any] = {"new_containers": len(new), "old_stopped": sum(1 for c in old if "die" in c)}
    if not new or not starts:
        return out
    first_action = min([c["create"] for c in new] + [c.get("kill", c.get("die", end)) for c in old])
    out["reaction_s"] = first_action - t0  # API call -> the first container touched on an engine
    out["first_create_s"] = new[0]["create"] - t0
    out["last_start_s"] = max(starts) - t0
    out["tail_s"] = end - max(starts)  # last new container started -> the client saw the update done
    out["create_to_start_median_s"] = median([c["start"] - c["create"] for c in new if "start" in c])
    # on average, how many new containers were between create and start at once
    out["mean_in_flight"] = sum(c["start"] - c["create"] for c in new if "start" in c) / total
    busy = [(max(t0, c["create"]), min(end, c["start"])) for c in new if "start" in c]
    busy += [(max(t0, c.get("kill", c.get("die", 0.0))), min(end, c.get("destroy", c.get("die", 0.0))))
             for c in old if ("kill" in c or "die" in c)]
    busy = [(a, b) for a, b in busy if b > a]
    out["engine_busy_s"] = union_length(busy)  # some engine creating/starting/stopping a container
    out["engine_idle_s"] = total - out["engine_busy_s"]  # no engine doing anything for this update
    per_host: dict[str, int] = {}
    for c in new:
        per_host[c["host"]] = per_host.get(c["host"], 0) + 1
    out["new_per_engine"] = per_host
    if parallelism > 0 and len(new) > parallelism:
        creates = sorted(c["create"] for c in new)
        starts_sorted = sorted(starts)
        handoffs, to_desired, desired_to_create = [], [], []
        by_create = sorted(new, key=lambda c: c["create"])
        for j in range(min(len(starts_sorted), len(creates)) - parallelism):
            started, nxt = starts_sorted[j], by_create[j + parallelism]
            handoffs.append(nxt["create"] - started)
            arrivals = [d for d in desired_at.get(nxt["host"], []) if started < d <= nxt["create"]]
            if arrivals:
                to_desired.append(max(arrivals) - started)  # report + server pass + delivery
                desired_to_create.append(nxt["create"] - max(arrivals))  # agent: save, pass, create
        out["handoff_median_s"] = median(handoffs)
        out["handoff_mean_s"] = sum(handoffs) / len(handoffs) if handoffs else None
        out["handoff_to_desired_median_s"] = median(to_desired)
        out["handoff_desired_to_create_median_s"] = median(desired_to_create)
        out["desired_sets_per_agent"] = {h: sum(1 for d in ts if t0 < d <= end) for h, ts in desired_at.items()}
        first_desired = [d for d in desired_at.get(new[0]["host"], []) if t0 < d <= new[0]["create"]]
        if first_desired:
            out["reaction_to_desired_s"] = max(first_desired) - t0  # POST, plan, delivery
    # stop-first: how long a new container's start waited for its slot's old one to stop
    old_die = {_slot_key(c["name"]): c["die"] for c in old if "die" in c}
    waits = [c["start"] - old_die[_slot_key(c["name"])] for c in new
             if "start" in c and _slot_key(c["name"]) in old_die and old_die[_slot_key(c["name"])] < c["start"]]
    if waits:
        out["old_die_to_new_start_median_s"] = median(waits)
    return out


_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ")
DESIRED_LINE = "desired set revision "  # the agent took a new desired set
PASS_LINE = "pass: listed "  # a reconcile pass listed the engine's containers (a debug line)


def agent_log_times(paths: dict[str, Path], since: float, marker: str = DESIRED_LINE,
                    slack: float = 1.0) -> dict[str, list[float]]:
    """host name -> Unix times of its agent's log lines that hold ``marker``, from ``slack``
    seconds before ``since`` on (the hand-off split matches desired sets to containers, and a
    second of slack keeps the first ones; the engine-listing count wants none)."""
    out: dict[str, list[float]] = {}
    for host, path in paths.items():
        times = out.setdefault(host, [])
        with contextlib.suppress(OSError):
            for line in path.read_text(errors="replace").splitlines():
                m = _LOG_TIME.match(line)
                if m and marker in line:
                    t = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000
                    if t >= since - slack:
                        times.append(t)
        times.sort()
    return out


_TICK = os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int) -> tuple[int, float] | None:
    """(parent pid, user+system seconds) of a live process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / _TICK


class CpuMeter:
    """CPU used during one timed update: the machine's busy core-seconds, and those of the Corral
    server, its agents, and the engines of the bench's hosts (dockerd and its containerd)."""

    def __init__(self, server_pid: int | None, agent_pids: list[int], hosts: list[NetnsHost]) -> None:
        self.groups: dict[str, set[int]] = {"corral server": {server_pid} if server_pid else set(),
                                            "corral agents": set(agent_pids), "engines": set()}
        for h in hosts:
            with contextlib.suppress(OSError, ValueError):
                self.groups["engines"].add(int((h.run_dir / "dockerd.pid").read_text().strip()))
        engines = set(self.groups["engines"])
        for d in os.listdir("/proc"):  # each dockerd's containerd
            info = _proc_cpu(int(d)) if d.isdigit() else None
            if info is not None and info[0] in engines:
                with contextlib.suppress(OSError):
                    if "containerd" in Path(f"/proc/{d}/comm").read_text():
                        self.groups["engines"].add(int(d))
        self._start = self._read()

    def _read(self) -> dict[str, float]:
        out = {"machine": busy_core_seconds()}
        for name, pids in self.groups.items():
            out[name] = sum(info[1] for pid in pids if (info := _proc_cpu(pid)) is not None)
        return out

    def stop(self) -> dict[str, float]:
        end = self._read()
        used = {k: round(end[k] - self._start.get(k, 0.0), 2) for k in end}
        used["rest"] = round(used["machine"] - sum(v for k, v in used.items() if k != "machine"), 2)
        return used


def milestones(progress: list[tuple[float, int]], replicas: int) -> dict[str, float | None]:
    """Seconds until 25/50/75/100 % of the replicas ran the new version (first poll that saw it)."""
    out: dict[str, float | None] = {}
    for pct in (25, 50, 75, 100):
        need = -(-replicas * pct // 100)
        out[f"{pct}%"] = next((t for t, n in progress if n >= need), None)
    return out


# ---------------------------------------------------------------- Corral


class CorralSide:
    def __init__(self, server: ServerProc, hosts: list[NetnsHost], agents: list[AgentProc], dl: Deadline) -> None:
        self.server = server
        self.hosts = hosts
        self.agents = agents
        self.dl = dl
        self.api = server.client()
        self.names: set[str] = set()

    def get(self, name: str, instances: bool = True) -> dict[str, Any]:
        r = self.api.get(f"/api/v1/services/{name}", params=None if instances else {"instances": "false"})
        r.raise_for_status()
        return dict(r.json())

    def engine_count(self, name: str, running_only: bool = True) -> int:
        return sum(1 for h in self.hosts for c in containers(h.docker_host, f"io.corral.service={name}")
                   if not running_only or c.get("State") == "running")

    def deploy(self, name: str, ref: str, replicas: int, command: list[str], timeout: float,
               ports: list[dict[str, Any]] | None = None, allow_partial: bool = False) -> dict[str, Any]:
        body: dict[str, Any] = {"name": name, "image": ref, "replicas": replicas, "command": command}
        if ports:
            body["ports"] = ports
        t0 = time.monotonic()
        r = self.api.post("/api/v1/services", json=body)
        if r.status_code != 201:
            raise BenchError(f"POST /api/v1/services {name}: HTTP {r.status_code}: {r.text[:500]}")
        self.names.add(name)
        try:
            svc = wait(lambda: (s := self.get(name))["running"] == replicas and len(s["instances"]) == replicas
                       and s, timeout, f"{replicas} running instances of Corral service {name}", self.dl)
        except BenchError:
            if not allow_partial:
                raise
            svc = self.get(name)
            return {"seconds": None, "running": svc["running"], "pending_reason": svc.get("pending_reason"),
                    "per_host": _per_host(svc)}
        return {"seconds": time.monotonic() - t0, "running": svc["running"], "per_host": _per_host(svc)}

    def update(self, name: str, ref: str, cfg: dict[str, Any], replicas: int, timeout: float,
               wanted_running: int | None = None) -> dict[str, Any]:
        """POST the update; poll every 100 ms until completed and all running. Returns the timings."""
        want = replicas if wanted_running is None else wanted_running
        progress: list[tuple[float, int]] = []
        states: list[tuple[float, str]] = []
        gets: list[float] = []  # how long each poll's GET took (the server's load shows here)
        t0_wall = time.time()
        t0 = time.monotonic()
        r = self.api.post(f"/api/v1/services/{name}/update", json={"image": ref, "update_config": cfg})
        posted = time.monotonic() - t0
        if r.status_code != 200:
            raise BenchError(f"POST /api/v1/services/{name}/update: HTTP {r.status_code}: {r.text[:500]}")
        end = t0 + self.dl.bound(timeout)
        svc = r.json()
        done = False
        while True:
            now = time.monotonic()
            upd = svc.get("update") or {}
            progress.append((now - t0, int(upd.get("updated") or 0)))
            if not states or states[-1][1] != upd.get("state"):
                states.append((now - t0, str(upd.get("state"))))
            if upd.get("state") == "completed" and svc["running"] >= want:
                done = True
                break
            if upd.get("state") in ("paused", "rollback_pending", "rolling_back") or now > end:
                break
            time.sleep(max(0.0, POLL - (time.monotonic() - now)))
            g0 = time.monotonic()
            svc = self.get(name, instances=False)  # as `corral service update` watches: counts only
            gets.append(time.monotonic() - g0)
        total = time.monotonic() - t0
        svc = self.get(name)
        return {"done": done, "total_s": total if done else None, "waited_s": total, "t0_wall": t0_wall,
                "post_s": posted, "milestones": milestones(progress, replicas), "states": states,
                "final_update": svc.get("update"), "final_running": svc.get("running"),
                "pending_reason": svc.get("pending_reason"), "poll_get_median_s": median(gets),
                "poll_get_max_s": max(gets) if gets else None, "polls": len(gets),
                "versions": sorted({i.get("version") for i in svc.get("instances", [])})}

    def remove(self, name: str, timeout: float = 120) -> None:
        r = self.api.delete(f"/api/v1/services/{name}")
        if r.status_code not in (204, 404):
            raise BenchError(f"DELETE /api/v1/services/{name}: HTTP {r.status_code}: {r.text[:300]}")
        self.names.discard(name)
        wait(lambda: self.engine_count(name, running_only=False) == 0, timeout,
             f"the containers of {name} to be gone", self.dl)

    def close(self) -> None:
        self.api.close()


def _per_host(svc: dict[str, Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in svc.get("instances", []):
        out[i["host_name"]] = out.get(i["host_name"], 0) + 1
    return dict(sorted(out.items()))


# ---------------------------------------------------------------- Swarm


class SwarmSide:
    def __init__(self, host: NetnsHost, dl: Deadline) -> None:
        self.host = host
        self.dh = host.docker_host
        self.dl = dl
        self.names: set[str] = set()

    def tasks(self, name: str) -> list[dict[str, Any]]:
        return engine(self.dh, "GET", "/tasks" + q({"service": [name]})) or []

    def deploy(self, name: str, ref: str, replicas: int, timeout: float) -> dict[str, Any]:
        t0 = time.monotonic()
        cli(self.dh, "service", "create", "--detach", "--name", name, "--replicas", str(replicas),
            "--stop-grace-period", "10s", ref, *TRAP_CMD)
        self.names.add(name)

        def converged() -> bool:
            ts = self.tasks(name)
            return sum(1 for t in ts if t.get("Status", {}).get("State") == "running"
                       and t.get("DesiredState") == "running") == replicas

        wait(converged, timeout, f"{replicas} running tasks of Swarm service {name}", self.dl)
        return {"seconds": time.monotonic() - t0}

    def update(self, name: str, ref: str, parallelism: int, order: str, monitor: float, replicas: int,
               timeout: float) -> dict[str, Any]:
        progress: list[tuple[float, int]] = []
        t0_wall = time.time()
        t0 = time.monotonic()
        cli(self.dh, "service", "update", "--detach", "--image", ref, "--update-parallelism", str(parallelism),
            "--update-delay", "0s", "--update-order", order, "--update-monitor", f"{monitor:g}s", name)
        cli_s = time.monotonic() - t0
        end = t0 + self.dl.bound(timeout)
        done = False
        while True:
            now = time.monotonic()
            ts = self.tasks(name)
            new_running = sum(1 for t in ts if _is_new(t, ref) and t.get("Status", {}).get("State") == "running"
                              and t.get("DesiredState") == "running")
            old_desired = sum(1 for t in ts if not _is_new(t, ref) and t.get("DesiredState") == "running")
            progress.append((now - t0, new_running))
            if new_running >= replicas and old_desired == 0:
                done = True
                break
            if now > end:
                break
            time.sleep(max(0.0, POLL - (time.monotonic() - now)))
        total = time.monotonic() - t0
        # Swarm's own "completed" comes after the monitor window (not part of the timed figure)
        completed_s = None
        if done:
            stop = time.monotonic() + self.dl.bound(monitor + 20)
            while time.monotonic() < stop:
                svc = engine(self.dh, "GET", f"/services/{name}") or {}
                if (svc.get("UpdateStatus") or {}).get("State") == "completed":
                    completed_s = time.monotonic() - t0
                    break
                time.sleep(POLL)
        return {"done": done, "total_s": total if done else None, "waited_s": total, "t0_wall": t0_wall,
                "cli_s": cli_s, "milestones": milestones(progress, replicas), "update_status_completed_s": completed_s}

    def remove(self, name: str, timeout: float = 120) -> None:
        engine(self.dh, "DELETE", f"/services/{name}")
        self.names.discard(name)
        wait(lambda: not containers(self.dh, f"com.docker.swarm.service.name={name}"), timeout,
             f"the containers of Swarm service {name} to be gone", self.dl)


def _is_new(task: dict[str, Any], ref: str) -> bool:
    image = str(task.get("Spec", {}).get("ContainerSpec", {}).get("Image", ""))
    return image.split("@", 1)[0] == ref


# ---------------------------------------------------------------- the probe (runs inside one namespace)

PROBE = r'''
import json, re, socket, sys, threading, time
port, max_s, max_n = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
stop = threading.Event()
def watch():
    try:
        sys.stdin.readline()
    finally:
        stop.set()
threading.Thread(target=watch, daemon=True).start()
VER = re.compile(rb"corral-bench-rollout (v\d+)")
REQ = b"GET /index.html HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"
n = 0
kinds = {}
first, last = {}, {}
changes = []          # [t, what]: every change of outcome (answer version or failure kind)
prev = None
last_ok = None
gap = [0.0, None, None]
slowest = 0.0
t_start = time.monotonic()
print("ready", flush=True)
while not stop.is_set() and n < max_n and time.monotonic() - t_start < max_s:
    t0 = time.monotonic()
    n += 1
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=2)
        try:
            s.settimeout(2)
            s.sendall(REQ)
            chunks = []
            while True:
                b = s.recv(65536)
                if not b:
                    break
                chunks.append(b)
        finally:
            s.close()
        data = b"".join(chunks)
        m = VER.search(data)
        if not data:
            key = "error: closed without an answer"
        elif not data.startswith(b"HTTP/1") or data.split(b" ", 2)[1] != b"200" or not m:
            key = "error: HTTP " + data.split(b"\r\n", 1)[0].decode(errors="replace")[:40]
        else:
            key = m.group(1).decode()
    except socket.timeout:
        key = "error: timeout"
    except ConnectionRefusedError:
        key = "error: connection refused"
    except ConnectionResetError:
        key = "error: connection reset"
    except OSError as e:
        key = "error: " + type(e).__name__
    t1 = time.monotonic()
    slowest = max(slowest, t1 - t0)
    kinds[key] = kinds.get(key, 0) + 1
    first.setdefault(key, t1)
    last[key] = t1
    if key != prev:
        if len(changes) < 400:
            changes.append([t1, key])
        prev = key
    if not key.startswith("error"):
        if last_ok is not None and t1 - last_ok > gap[0]:
            gap = [t1 - last_ok, last_ok, t1]
        last_ok = t1
print(json.dumps({"requests": n, "kinds": kinds, "first": first, "last": last, "changes": changes,
                  "gap": gap, "slowest": slowest, "t_start": t_start, "t_end": time.monotonic()}), flush=True)
'''


class Probe:
    def __init__(self, host: NetnsHost, port: int, max_s: float, max_n: int = 2_000_000) -> None:
        self.proc = host.popen([sys.executable, "-c", PROBE, str(port), str(max_s), str(max_n)],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 15)
        line = self.proc.stdout.readline() if ready else b""
        if line.strip() != b"ready":
            self.kill()
            raise BenchError(f"probe in {host.netns} did not start: {line!r}")

    def finish(self, timeout: float = 30) -> dict[str, Any]:
        out, err = self.proc.communicate(b"stop\n", timeout=timeout)
        lines = [ln for ln in out.decode().splitlines() if ln.strip()]
        if not lines:
            raise BenchError(f"probe gave no result (exit {self.proc.returncode}): {err.decode()[-500:]}")
        return dict(json.loads(lines[-1]))

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(Exception):
            self.proc.communicate(timeout=10)


def summarise_probe(raw: dict[str, Any], t0: float, t_done: float | None, max_gap: float) -> dict[str, Any]:
    """The probe's result, with times relative to the update call (t0, monotonic)."""
    kinds: dict[str, int] = raw["kinds"]
    answers = {k: v for k, v in kinds.items() if not k.startswith("error")}
    failures = {k: v for k, v in kinds.items() if k.startswith("error")}
    rel = {k: round(v - t0, 3) for k, v in raw["first"].items()}
    last = {k: round(v - t0, 3) for k, v in raw["last"].items()}
    gap_s, gap_from, gap_to = raw["gap"]
    out: dict[str, Any] = {
        "requests": raw["requests"], "answers": sum(answers.values()), "failures": sum(failures.values()),
        "answers_by_version": answers, "failures_by_kind": failures,
        "probe_s": raw["t_end"] - raw["t_start"], "probe_started_s": raw["t_start"] - t0,
        "longest_gap_s": gap_s if gap_from is not None else None,
        "longest_gap_at_s": [round(gap_from - t0, 3), round(gap_to - t0, 3)] if gap_from is not None else None,
        "slowest_request_s": raw["slowest"],
        "first_v2_s": rel.get("v2"), "last_v1_s": last.get("v1"), "first_seen_s": rel, "last_seen_s": last,
        "update_done_s": t_done,
        "changes": [[round(t - t0, 3), k] for t, k in raw["changes"]][:60],
    }
    if not answers:
        out["verdict"] = "no answers"
    elif failures or (gap_s or 0) > max_gap:
        out["verdict"] = "gap"
    elif "v2" not in answers or t_done is None:
        out["verdict"] = "no switch to v2"
    else:
        out["verdict"] = "no gap"
    return out


# ---------------------------------------------------------------- output


def combine_rounds(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """One order's result over its rounds: the ratio of the median times (the machine is shared, and
    one round of either side can be slowed by whatever else runs), each round's figures, and the
    details (where the time goes) of the round whose Corral time is the median."""
    corral_s = [r["corral"]["total_s"] for r in rounds]
    swarm_s = [r["swarm"]["total_s"] for r in rounds]
    typical = sorted(rounds, key=lambda r: r["corral"]["total_s"])[(len(rounds) - 1) // 2]
    return {**typical, "ratio": statistics.median(corral_s) / statistics.median(swarm_s),
            "cpu": cpu_floor(rounds, os.cpu_count() or 1),
            "corral_median_s": statistics.median(corral_s), "swarm_median_s": statistics.median(swarm_s),
            "rounds": [{"corral_s": r["corral"]["total_s"], "swarm_s": r["swarm"]["total_s"], "ratio": r["ratio"],
                        "sequence": r["sequence"]} for r in rounds]}


def cpu_floor(rounds: list[dict[str, Any]], cpus: int) -> dict[str, float] | None:
    """What the machine's CPU says about the times, summed over the rounds: how busy each side
    kept the CPUs (core-seconds over ``cpus`` x wall time; near 1: CPU-bound, and the time
    follows the CPU used), each side's core-seconds, and Corral's without its control plane
    (its server and agents): the least Corral could use if they cost nothing, against Swarm's
    whole update (SwarmKit runs inside the engine, so it cannot be taken apart the same way)."""
    def total(side: str, key: str) -> float:
        return sum(float((r[side].get("cpu_core_s") or {}).get(key) or 0.0) for r in rounds)

    corral, swarm = total("corral", "machine"), total("swarm", "machine")
    if corral <= 0 or swarm <= 0:
        return None
    control = total("corral", "corral server") + total("corral", "corral agents")
    wall = {side: sum(r[side]["total_s"] for r in rounds) for side in ("corral", "swarm")}
    return {"corral_core_s": corral, "swarm_core_s": swarm, "corral_control_plane_core_s": control,
            "corral_busy": corral / (cpus * wall["corral"]), "swarm_busy": swarm / (cpus * wall["swarm"]),
            "cpu_ratio": corral / swarm, "cpu_ratio_without_control_plane": (corral - control) / swarm}


def _verdict(ok: bool | None) -> str:
    """A goal's line: PASS, FAIL, or n/a when it was not measured (None)."""
    return "PASS" if ok else "FAIL" if ok is False else "n/a"


def fmt(x: float | None, w: int = 7, p: int = 2) -> str:
    return f"{x:{w}.{p}f}" if isinstance(x, (int, float)) else " " * (w - 1) + "-"


def report(out: dict[str, Any]) -> None:
    m = out["meta"]
    print()
    print(f"Rolling update v1 -> v2, {m['replicas']} replicas, parallelism {m['parallelism']}, delay 0, "
          f"monitor {m['monitor']:g} s ({m['date']}, {m['cpus']} CPUs, load before {m['load_before']})")
    print(f"images {m['images']['v1']} and :v2 (differ by one layer); both PRE-PULLED on every engine "
          f"(image pulls seen during the timed updates: {m['pulls_during_updates']})")
    print("Corral: 1 server + 3 agents on 3 namespaced dockerds (bench-ro1..3); "
          "Swarm: 1 manager/worker on ONE of them (bench-ro1)")
    print(f"Swarm given --update-monitor {m['monitor']:g}s = Corral's monitor (Swarm's default is 5 s too); "
          "neither waits it out per batch, so it is not in the timed figures")
    print(f"command (both): sh -c '{TRAP_SCRIPT}'  (exits on SIGTERM at once)")
    print()
    print(f"{'order':<12} {'Corral s':>9} {'Swarm s':>9} {'Corral/Swarm':>13}   "
          f"{'Corral 50%/100%':>16} {'Swarm 50%/100%':>16}")
    for order in m["orders"]:
        r = out["runs"][order]
        c, s = r["corral"], r["swarm"]
        cm, sm = c.get("milestones") or {}, s.get("milestones") or {}
        print(f"{order:<12} {fmt(r.get('corral_median_s'), 9)} {fmt(r.get('swarm_median_s'), 9)} "
              f"{fmt(r.get('ratio'), 13)}   "
              f"{fmt(cm.get('50%'), 7)} /{fmt(cm.get('100%'), 7)} {fmt(sm.get('50%'), 7)} /{fmt(sm.get('100%'), 7)}")
    print("(seconds from the API call / CLI call until every instance runs v2, polled every 100 ms; "
          "ratio < 1: Corral faster)")
    for order in m["orders"]:
        rounds = out["runs"][order].get("rounds") or []
        if len(rounds) > 1:
            print(f"  {order}, {len(rounds)} rounds (times are their medians; 50%/100% and the details below are "
                  f"from the round with the median Corral time): " + "; ".join(
                      f"{r['corral_s']:.2f}/{r['swarm_s']:.2f} s = {r['ratio']:.2f}" for r in rounds))
    for order in m["orders"]:
        s = out["runs"][order]["swarm"]
        if s.get("update_status_completed_s") is not None:
            print(f"  Swarm {order}: UpdateStatus 'completed' at {s['update_status_completed_s']:.2f} s "
                  f"(after its {m['monitor']:g} s monitor window; Corral's 'completed' does not wait it)")
    print()
    for order in m["orders"]:
        ok = out["goals"].get(f"faster_than_swarm_{order}")
        verdict = _verdict(ok)
        if order == "stop-first":
            print(f"goal: faster than Swarm, both with their default update order (stop-first): {verdict}")
        else:  # the issue names start-first for the gap; its time is measured as well
            print(f"also timed: faster than Swarm with {order}: {verdict}")
    g = out.get("gap") or {}
    verdict = g.get("verdict", "not measured")
    ok = out["goals"].get("no_gap_start_first")
    print(f"goal: no gap in answers during start-first: {_verdict(ok)} ({verdict})")

    print()
    print("Where the time goes (engine events of every container of the service; seconds):")
    print(f"{'run':<20} {'total':>6} {'react':>6} {'1st new':>7} {'create>start':>12} {'in flight':>9} "
          f"{'busy':>6} {'idle':>6} {'tail':>6}")
    for order in m["orders"]:
        for side in ("corral", "swarm"):
            r = out["runs"][order][side]
            a = r.get("analysis") or {}
            print(f"{side + ' ' + order:<20} {fmt(r.get('total_s'), 6)} {fmt(a.get('reaction_s'), 6)} "
                  f"{fmt(a.get('first_create_s'), 7)} {fmt(a.get('create_to_start_median_s'), 12)} "
                  f"{fmt(a.get('mean_in_flight'), 9, 1)} "
                  f"{fmt(a.get('engine_busy_s'), 6)} {fmt(a.get('engine_idle_s'), 6)} {fmt(a.get('tail_s'), 6)}")
    print("  react: call -> first container created or stopped; create>start: median per new container;")
    print("  in flight: new containers between create and start at once, on average over the update;")
    print("  busy: time some engine was creating/starting/stopping one of them; idle: total - busy;")
    print("  tail: last new container started -> the poll saw the update done")
    print(f"  hand-off: the j-th new container started -> the (j+{m['parallelism']})-th created (a slot moving on); "
          "old die>new start: stop-first, a new container's start after its slot's old one stopped")
    print(f"{'run':<20} {'hand-off':>8} {'old die>new start':>17}   CPU core-s during the update (load at its start)")
    for order in m["orders"]:
        for side in ("corral", "swarm"):
            r = out["runs"][order][side]
            a = r.get("analysis") or {}
            cpu = r.get("cpu_core_s") or {}
            parts = ", ".join(f"{k} {v:.1f}" for k, v in cpu.items() if k != "machine" and (v or side == "corral"))
            print(f"{side + ' ' + order:<20} {fmt(a.get('handoff_median_s'), 8, 3)} "
                  f"{fmt(a.get('old_die_to_new_start_median_s'), 17, 3)}   "
                  f"machine {cpu.get('machine', 0):.1f} ({parts}) (load {r.get('load_at_start', '-')})")
    for order in m["orders"]:
        f = out["runs"][order].get("cpu")
        if f:
            n = len(out["runs"][order].get("rounds") or [1])
            bound = "both CPU-bound: the time follows the CPU" if min(f["corral_busy"], f["swarm_busy"]) >= 0.9 \
                else "not both CPU-bound"
            print(f"CPU, {order}, {n} round{'s' if n > 1 else ''}: Corral kept the {m['cpus']} CPUs "
                  f"{f['corral_busy']:.0%} busy, Swarm {f['swarm_busy']:.0%}; Corral {f['corral_core_s']:.1f} "
                  f"core-s (its server and agents {f['corral_control_plane_core_s']:.1f}) against Swarm's "
                  f"{f['swarm_core_s']:.1f}: {f['cpu_ratio']:.2f}x, and {f['cpu_ratio_without_control_plane']:.2f}x "
                  f"without Corral's server and agents ({bound})")
    for order in m["orders"]:
        a = out["runs"][order]["corral"].get("analysis") or {}
        c = out["runs"][order]["corral"]
        if a.get("handoff_median_s") is not None:
            print(f"Corral {order}: hand-off split by the agents' 'desired set' log lines (medians): status report + "
                  f"server pass + delivery {fmt(a.get('handoff_to_desired_median_s'), 0, 3)} s; agent pass -> create "
                  f"{fmt(a.get('handoff_desired_to_create_median_s'), 0, 3)} s; call -> first desired set "
                  f"{fmt(a.get('reaction_to_desired_s'), 0, 3)} s; desired sets per agent "
                  f"{a.get('desired_sets_per_agent')}; engine listings per agent {a.get('listings_per_agent')}; "
                  f"the bench's 100 ms GET took median "
                  f"{fmt(c.get('poll_get_median_s'), 0, 3)} s, max {fmt(c.get('poll_get_max_s'), 0, 3)} s")

    print()
    if not g:
        print("Gap: not measured")
        return
    print(f"Gap during a start-first update (Corral service {g['service']}: {g['replicas']} replicas of httpd, "
          f"port {g['port']} -> 8000, ingress; probe in {g['probe_netns']} on 127.0.0.1:{g['port']}, tight loop):")
    if g.get("note"):
        print(f"  note: {g['note']}")
    if g.get("update"):
        u = g["update"]
        print(f"  update {'completed' if u.get('done') else 'did NOT complete'} in {fmt(u.get('waited_s'), 0)} s"
              + ("" if u.get("done") else f" (update: {u.get('final_update')}; pending: {u.get('pending_reason')})"))
    if verdict == "no answers":
        print(f"  NO ANSWERS: {g.get('requests', 0)} requests, none answered ({g.get('failures_by_kind')}) — "
              "nothing serves the published port in that namespace (ingress proxy not in place?)")
        return
    print(f"  requests {g['requests']}, answered {g['answers']} {g['answers_by_version']}, "
          f"failures {g['failures']} {g['failures_by_kind'] or ''}")
    print(f"  longest gap between two answers {fmt(g['longest_gap_s'], 0, 3)} s "
          f"(at {g['longest_gap_at_s']} s after the update call); slowest request {g['slowest_request_s']:.3f} s")
    print(f"  first v2 answer at {fmt(g['first_v2_s'], 0, 3)} s, last v1 answer at {fmt(g['last_v1_s'], 0, 3)} s "
          f"(update call at 0, done at {fmt(g['update_done_s'], 0, 3)} s)")


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--replicas", type=int, default=None, help="replicas per service (default 100; --quick 12)")
    ap.add_argument("--parallelism", type=int, default=None, help="update parallelism (default 10; --quick 4)")
    ap.add_argument("--monitor", type=float, default=5.0, help="update monitor for both (default 5 s)")
    ap.add_argument("--gap-replicas", type=int, default=None, help="replicas of the httpd service (12; --quick 6)")
    ap.add_argument("--port", type=int, default=18580, help="published port of the httpd service")
    ap.add_argument("--max-gap", type=float, default=1.0, help="longest gap between answers that still passes")
    ap.add_argument("--orders", default="stop-first,start-first", help="which update orders to time")
    ap.add_argument("--no-gap", action="store_true", help="skip the gap measurement")
    ap.add_argument("--quick", action="store_true", help="smoke test: 12 replicas, parallelism 4")
    ap.add_argument("--deadline", type=float, default=None,
                    help="global deadline, s (default 1500, and 500 more per extra round; quick 210)")
    ap.add_argument("--json", action="store_true", help="also print the result as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (server and agent logs)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="Corral/Swarm pairs per order, alternating who goes first; the ratio is of the medians")
    args = ap.parse_args(argv)
    replicas = args.replicas or (12 if args.quick else 100)
    parallelism = args.parallelism or (4 if args.quick else 10)
    gap_replicas = args.gap_replicas or (6 if args.quick else 12)
    deadline = args.deadline or (210.0 * args.rounds if args.quick else 1000.0 + 500.0 * args.rounds)
    orders = [o.strip() for o in args.orders.split(",") if o.strip()]
    if not (1 <= replicas <= 500 and 1 <= parallelism <= replicas and 1 <= gap_replicas <= 100
            and 0 <= args.monitor <= 60 and set(orders) <= set(ORDERS) and orders and 1024 < args.port < 65536
            and 1 <= args.rounds <= 9):
        ap.error("--replicas 1..500, --parallelism 1..replicas, --gap-replicas 1..100, --monitor 0..60, "
                 "--orders from stop-first,start-first, --port 1025..65535, --rounds 1..9")
    if os.geteuid() != 0:
        ap.error("run as root (network namespaces, dockerd)")
    signal.signal(signal.SIGTERM, on_sigterm)
    dl = Deadline(deadline)

    registry = ensure_registry()
    images = build_versions(registry)
    v1, v2 = images["v1"].ref, images["v2"].ref
    tmp = Path(tempfile.mkdtemp(prefix="corral-bench-rollout-"))
    server = ServerProc(tmp / "server")
    hosts: list[NetnsHost] = []
    agents: list[AgentProc] = []
    corral: CorralSide | None = None
    swarm: SwarmSide | None = None
    probe: Probe | None = None
    swarm_on = False
    pulls: list[int] = []  # image pulls seen on any engine during each timed update
    result: dict[str, Any] = {}
    try:
        server.start()
        reg_port = int(registry.rsplit(":", 1)[1])
        for name, index in HOSTS:
            host = NetnsHost(name, index, [server.port, reg_port])
            hosts.append(host)
            host.start()
            for ref in (v1, v2):
                cli(host.docker_host, "pull", ref, timeout=dl.bound(300))
        log(f"3 engines up; {v1} and v2 pre-pulled on each")
        join = server.join_token()
        for host in hosts:
            agents.append(AgentProc(server.url, join, tmp / f"agent-{host.name}", docker_host=host.docker_host,
                                    name=host.name, netns=host).start())
        for a in agents:
            a.host_id(timeout=dl.bound(60))
        corral = CorralSide(server, hosts, agents, dl)
        wait(lambda: sum(h["state"] == "ready" for h in corral.api.get("/api/v1/hosts").json()) == len(hosts),
             60, "3 ready hosts", dl)
        cli(hosts[0].docker_host, "swarm", "init", "--advertise-addr", "127.0.0.1")
        swarm_on = True
        swarm = SwarmSide(hosts[0], dl)
        load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
        agent_logs = {h.name: a.log_path for h, a in zip(hosts, agents, strict=True)}
        cfg_base = {"parallelism": parallelism, "delay": 0, "monitor": args.monitor}
        deploy_timeout = 60 + replicas * 1.5
        update_timeout = 60 + replicas * 2.0
        runs: dict[str, dict[str, Any]] = {}

        def run_corral(order: str) -> dict[str, Any]:
            name = f"ro-{order.split('-')[0]}"
            d = corral.deploy(name, v1, replicas, TRAP_CMD, deploy_timeout)
            log(f"corral {name}: {replicas} running in {d['seconds']:.1f} s {d['per_host']}; updating {order}")
            time.sleep(1.0)  # let the deploy's last status reports settle
            taps = Taps(hosts)
            meter = CpuMeter(server.proc.pid if server.proc else None,
                             [a.proc.pid for a in agents if a.proc is not None], hosts)
            try:
                u = corral.update(name, v2, {**cfg_base, "order": order}, replicas, update_timeout)
            finally:
                u_cpu = meter.stop()
                ev = taps.close()
            u["cpu_core_s"] = u_cpu
            u["load_at_start"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
            if not u["done"]:
                raise BenchError(f"corral update {order} not done after {u['waited_s']:.0f} s: {u['final_update']}")
            pulls.append(pull_count(ev))
            ev = service_events(ev, "io.corral.service", name)
            u["analysis"] = analyse(container_timeline(ev), images["v2"].index_digest, u["t0_wall"], u["total_s"],
                                    parallelism, agent_log_times(agent_logs, u["t0_wall"]))
            u["analysis"]["listings_per_agent"] = {
                h: sum(1 for t in ts if t <= u["t0_wall"] + u["total_s"])
                for h, ts in agent_log_times(agent_logs, u["t0_wall"], PASS_LINE, slack=0.0).items()}
            u["deploy"] = d
            log(f"corral {order}: {u['total_s']:.2f} s")
            corral.remove(name)
            return u

        def run_swarm(order: str) -> dict[str, Any]:
            name = f"sw-{order.split('-')[0]}"
            d = swarm.deploy(name, v1, replicas, deploy_timeout)
            log(f"swarm {name}: {replicas} running in {d['seconds']:.1f} s; updating {order}")
            time.sleep(1.0)
            taps = Taps(hosts)
            meter = CpuMeter(None, [], hosts)
            try:
                u = swarm.update(name, v2, parallelism, order, args.monitor, replicas, update_timeout)
            finally:
                u_cpu = meter.stop()
                ev = taps.close()
            u["cpu_core_s"] = u_cpu
            u["load_at_start"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
            if not u["done"]:
                raise BenchError(f"swarm update {order} not done after {u['waited_s']:.0f} s")
            pulls.append(pull_count(ev))
            ev = service_events(ev, "com.docker.swarm.service.name", name)
            u["analysis"] = analyse(container_timeline(ev), images["v2"].index_digest, u["t0_wall"], u["total_s"],
                                    parallelism, {})
            u["deploy"] = d
            log(f"swarm {order}: {u['total_s']:.2f} s")
            swarm.remove(name)
            return u

        turn = 0
        for order in orders:
            rounds = []
            for _ in range(args.rounds):  # who goes first alternates, over orders and rounds
                first, second = (run_corral, run_swarm) if turn % 2 == 0 else (run_swarm, run_corral)
                turn += 1
                r1 = first(order)
                r2 = second(order)
                c, s = (r1, r2) if first is run_corral else (r2, r1)
                rounds.append({"corral": c, "swarm": s, "ratio": c["total_s"] / s["total_s"],
                               "sequence": "corral, then swarm" if first is run_corral else "swarm, then corral"})
            runs[order] = combine_rounds(rounds)

        gap: dict[str, Any] = {}
        if not args.no_gap:
            gap = {"service": "ro-web", "replicas": gap_replicas, "port": args.port, "probe_netns": hosts[0].netns}
            d = corral.deploy("ro-web", v1, gap_replicas, HTTPD_CMD, 30 if args.quick else 60,
                              ports=[{"published": args.port, "target": 8000}], allow_partial=True)
            gap["deploy"] = d
            if d["seconds"] is None:
                gap["note"] = (f"only {d['running']} of {gap_replicas} instances ran before the update "
                               f"(pending: {d.get('pending_reason')})")
            log(f"corral ro-web: {d['running']} running {d['per_host']}; probing from {hosts[0].netns}")
            gap_timeout = 30 + gap_replicas * 3.0
            probe = Probe(hosts[0], args.port, max_s=dl.bound(gap_timeout + 40))
            time.sleep(1.5)  # a baseline of answers (or none) before the update
            t0 = time.monotonic()
            u = corral.update("ro-web", v2, {**cfg_base, "order": "start-first"}, gap_replicas, gap_timeout,
                              wanted_running=gap_replicas)
            t_done = (u["total_s"]) if u["done"] else None
            time.sleep(1.0)  # a tail of answers after the update
            raw = probe.finish()
            probe = None
            gap.update(summarise_probe(raw, t0, t_done, args.max_gap))
            gap["update"] = {k: u[k] for k in ("done", "total_s", "waited_s", "final_update", "pending_reason",
                                                "milestones")}
            if not u["done"] and not gap.get("note"):
                gap["note"] = f"the update did not complete within {gap_timeout:.0f} s"
            log(f"gap: {gap['verdict']}")
            with contextlib.suppress(Exception):
                corral.remove("ro-web", timeout=60)

        # the issue's goal is the time with both tools' default order (stop-first); start-first's is reported too
        goals: dict[str, Any] = {f"faster_than_swarm_{o}": runs[o]["ratio"] < 1 for o in orders}
        goals["faster_than_swarm"] = goals.get("faster_than_swarm_stop-first")
        goals["no_gap_start_first"] = gap.get("verdict") == "no gap" if gap else None  # None: --no-gap
        meta = {
            "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"), "cpus": os.cpu_count(),
            "machine": platform.machine(), "kernel": platform.release(), "replicas": replicas,
            "parallelism": parallelism, "monitor": args.monitor, "delay": 0, "orders": orders, "quick": args.quick,
            "images": {"v1": v1, "v2": v2, "v1_digest": images["v1"].index_digest,
                       "v2_digest": images["v2"].index_digest, "pre_pulled": True},
            "pulls_during_updates": sum(pulls), "command": TRAP_CMD, "poll_s": POLL,
            "engine_version": cli(hosts[0].docker_host, "version", "--format", "{{.Server.Version}}"),
            "load_before": load_before, "load_after": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "swarm": {"engines": 1, "update_monitor": args.monitor, "monitor_passed": True},
            "corral": {"engines": 3},
        }
        result = {"meta": meta, "runs": runs, "gap": gap, "goals": goals}
        report(result)
        if args.json:
            print()
            print(json.dumps(result, indent=1, default=str))
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # finish cleaning up even if told twice
        if probe is not None:
            probe.kill()
        if corral is not None:
            for name in sorted(corral.names):
                with contextlib.suppress(Exception):
                    corral.api.delete(f"/api/v1/services/{name}", timeout=10)
            corral.close()
        if hosts and swarm_on:
            try:
                cli(hosts[0].docker_host, "swarm", "leave", "--force", timeout=60)
            except Exception as exc:  # keep cleaning
                print(f"swarm leave: {exc}", file=sys.stderr)
        for a in agents:
            with contextlib.suppress(Exception):
                a.stop()
        server.stop()
        for host in hosts:
            try:
                host.stop()  # kills every container left on that engine, and the engine
            except Exception as exc:  # keep cleaning the others
                print(f"stopping {host.netns}: {exc}", file=sys.stderr)
        if args.keep:
            print(f"logs kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
