#!/usr/bin/env python3
"""Agent memory: RSS of an idle ``corral agent`` that manages 20 containers.

Starts a real ``corral server`` (SQLite in a temp dir) and one real ``corral agent`` inside
a NetnsHost named ``bench-rss`` (its own network namespace and dockerd), creates one
service with 20 replicas of the test-bed busybox image (command
``sh -c 'trap "exit 0" TERM; while :; do sleep 1 & wait; done'``), waits until all 20 run,
then lets everything idle for ``--idle`` seconds (default 30) while sampling the agent's
``VmRSS`` (and thread count) from ``/proc/PID/status`` once a second.

The PID measured is the Python process running ``corral agent`` itself, found among the
process tree of the launched command (``nsenter`` -> ``unshare`` -> ``sh`` -> python; they
exec, but the tree is walked anyway, and a process only counts if its executable is a
Python interpreter and its command line has ``corral`` and ``agent``).

For comparison it also measures a bare ``python3 -c 'import time; time.sleep(5)'`` and
the same interpreter after importing the agent's modules without running anything.

Run from the repository root (as root)::

    /opt/corral-venv/bin/python bench/agent_rss.py [--idle 30] [--json]

Network: only loopback and the namespace created here are ever contacted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.deploy_latency import TRAP_CMD, TRAP_SCRIPT, cli, containers  # noqa: E402
from bench.common import on_sigterm  # noqa: E402
from testbed.cluster import AgentProc, ServerProc, wait_for  # noqa: E402
from testbed.daemons import ensure_registry  # noqa: E402
from testbed.images import build_busybox  # noqa: E402
from testbed.netns import NetnsHost  # noqa: E402

HOST_NAME = "bench-rss"
HOST_INDEX = 202
REPLICAS = 20
GOAL_MB = 40.0



def status_fields(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM (KiB) and Threads of a process, from /proc/PID/status."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                out[key] = int(value.split()[0])
    return out


def children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            kids.append(int(entry))
    return kids


def is_agent(pid: int) -> bool:
    try:
        exe = os.path.basename(os.readlink(f"/proc/{pid}/exe"))
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    words = [a.decode(errors="replace") for a in argv]
    return exe.startswith("python") and any("corral" in w for w in words) and "agent" in words


def find_agent_pid(root: int) -> int:
    """The python ``corral agent`` process at or below ``root`` (breadth first)."""
    queue, seen = [root], set()
    while queue:
        pid = queue.pop(0)
        if pid in seen:
            continue
        seen.add(pid)
        if is_agent(pid):
            return pid
        queue.extend(children(pid))
    raise RuntimeError(f"no python 'corral agent' process under pid {root}")


def kib_to(kib: float) -> tuple[float, float]:
    """KiB -> (MiB, MB)."""
    return kib / 1024, kib * 1024 / 1e6


def fmt(kib: float) -> str:
    mib, mb = kib_to(kib)
    return f"{mib:6.1f} MiB = {mb:6.1f} MB"


def rss_of(argv: list[str], settle: float = 1.5) -> dict[str, int]:
    """Start argv, let it settle, read its status fields, stop it."""
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    try:
        time.sleep(settle)
        if proc.poll() is not None:
            raise RuntimeError(f"{argv} exited early ({proc.returncode})")
        return status_fields(proc.pid)
    finally:
        proc.kill()
        proc.wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--idle", type=float, default=30.0, help="idle seconds to sample (default 30)")
    ap.add_argument("--json", action="store_true", help="also print the result as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (server/agent logs)")
    args = ap.parse_args(argv)
    if not 1 <= args.idle <= 3600:
        ap.error("--idle must be 1..3600 seconds")
    if os.geteuid() != 0:
        ap.error("run as root (network namespaces, dockerd)")
    signal.signal(signal.SIGTERM, on_sigterm)

    registry = ensure_registry()
    image = build_busybox(registry)
    tmp = Path(tempfile.mkdtemp(prefix="corral-bench-rss-"))
    server = ServerProc(tmp / "server")
    host: NetnsHost | None = None
    agent: AgentProc | None = None
    try:
        server.start()
        host = NetnsHost(HOST_NAME, HOST_INDEX, [server.port, int(registry.rsplit(":", 1)[1])])
        host.start()
        agent = AgentProc(server.url, server.join_token(), tmp / "agent",
                          docker_host=host.docker_host, name=HOST_NAME, netns=host).start()
        agent.host_id()
        assert agent.proc is not None
        pid = find_agent_pid(agent.proc.pid)
        with server.client() as c:
            wait_for(lambda: [h for h in c.get("/api/v1/hosts").json() if h["state"] == "ready"],
                     30, "the agent's host to be ready")
            time.sleep(2)
            joined = status_fields(pid)

            # the agent pulls the image itself (not timed here), then starts 20 containers
            r = c.post("/api/v1/services", json={"name": "rss", "image": image.ref,
                                                 "replicas": REPLICAS, "command": TRAP_CMD})
            if r.status_code != 201:
                raise RuntimeError(f"POST /api/v1/services: HTTP {r.status_code}: {r.text}")
            t0 = time.monotonic()
            deploy_peak = 0

            def all_running() -> bool:
                nonlocal deploy_peak
                deploy_peak = max(deploy_peak, status_fields(pid)["VmRSS"])
                return bool(c.get("/api/v1/services/rss").json()["running"] == REPLICAS)

            wait_for(all_running, 120, f"{REPLICAS} running replicas", interval=0.1)
            deploy_s = time.monotonic() - t0
            on_engine = [x for x in containers(host.docker_host, "io.corral.service=rss")
                         if x["State"] == "running"]
            if len(on_engine) != REPLICAS:
                raise RuntimeError(f"{len(on_engine)} running on the engine, wanted {REPLICAS}")

            print(f"{REPLICAS} containers running after {deploy_s:.1f} s; idling {args.idle:.0f} s, "
                  f"sampling agent pid {pid} every second ...", file=sys.stderr)
            samples: list[dict[str, int]] = []
            t_end = time.monotonic() + args.idle
            while time.monotonic() < t_end:
                samples.append(status_fields(pid))
                time.sleep(min(1.0, max(0.0, t_end - time.monotonic())))
            samples.append(status_fields(pid))
            still = c.get("/api/v1/services/rss").json()["running"]

        bare = rss_of(["python3", "-c", "import time; time.sleep(5)"])
        venv_bare = rss_of([sys.executable, "-c", "import time; time.sleep(5)"])
        imported = rss_of([sys.executable, "-c", "import corral.agent.main, time; time.sleep(5)"],
                          settle=2.5)
        rss = [s["VmRSS"] for s in samples]
        threads = [s["Threads"] for s in samples]
        max_kib, final_kib = max(rss), rss[-1]
        max_mb = kib_to(max_kib)[1]
        goal = max_mb <= GOAL_MB
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()

        print()
        print(f"Agent RSS, idle with {REPLICAS} containers ({args.idle:.0f} s, {len(samples)} "
              f"samples; {dt.datetime.now().astimezone().isoformat(timespec='seconds')}, "
              f"{os.cpu_count()} CPUs)")
        print(f"agent pid {pid}: {cmdline[:110]}...")
        print(f"engine: dockerd {cli(host.docker_host, 'version', '--format', '{{.Server.Version}}')}"
              f" in netns {host.netns}; command: sh -c '{TRAP_SCRIPT}'")
        print()
        thr = f"{min(threads)}" if min(threads) == max(threads) else f"{min(threads)}..{max(threads)}"
        rows = [
            ("agent after join, 0 containers", fmt(joined["VmRSS"]),
             f"({joined['Threads']} threads)"),
            (f"agent peak while deploying {REPLICAS}", fmt(deploy_peak), "(includes the image pull)"),
            ("agent idle, max over the window", fmt(max_kib), ""),
            ("agent idle, final", fmt(final_kib), ""),
            ("agent VmHWM (peak since start)", fmt(samples[-1]["VmHWM"]), ""),
            ("agent threads while idle", thr, ""),
            ("containers running at the end", f"{still}/{REPLICAS}", ""),
        ]
        for label, value, note in rows:
            print(f"{label + ':':<40} {value}  {note}".rstrip())
        print()
        print("for comparison:")
        venv_label = f"{Path(sys.executable).name} (venv) -c 'import time; time.sleep(5)'"
        for label, kib in (("python3 -c 'import time; time.sleep(5)'", bare["VmRSS"]),
                           (venv_label, venv_bare["VmRSS"]),
                           ("venv python: import corral.agent.main, no run", imported["VmRSS"])):
            print(f"  {label:<48} {fmt(kib)}")
        print()
        print(f"goal: idle agent RSS <= {GOAL_MB:.0f} MB (max {max_mb:.1f} MB, "
              f"decimal MB; = {kib_to(max_kib)[0]:.1f} MiB): {'PASS' if goal else 'FAIL'}")
        if args.json:
            out: dict[str, Any] = {
                "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                "cpus": os.cpu_count(), "idle_s": args.idle, "replicas": REPLICAS,
                "agent_pid": pid, "deploy_s": deploy_s,
                "rss_kib": {"joined": joined["VmRSS"], "deploy_peak": deploy_peak,
                            "idle_max": max_kib, "idle_final": final_kib,
                            "hwm": samples[-1]["VmHWM"], "samples": rss},
                "idle_max_mb": max_mb, "idle_max_mib": kib_to(max_kib)[0],
                "idle_final_mb": kib_to(final_kib)[1], "idle_final_mib": kib_to(final_kib)[0],
                "threads": {"joined": joined["Threads"], "idle_min": min(threads),
                            "idle_max": max(threads)},
                "comparison_rss_kib": {"python3_sleep": bare["VmRSS"],
                                       "venv_python_sleep": venv_bare["VmRSS"],
                                       "venv_python_import_agent": imported["VmRSS"]},
                "goal_mb": GOAL_MB, "goal_met": goal, "running_at_end": still,
            }
            print()
            print(json.dumps(out, indent=1))
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if agent is not None:
            agent.stop()
        server.stop()
        if host is not None:
            host.stop()  # kills the 20 containers and the engine
        if args.keep:
            print(f"logs kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
