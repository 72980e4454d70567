#!/usr/bin/env python3
"""Deploy latency: create -> running for one container, image already on the engine.

Three methods, measured side by side in one run against the SAME Docker Engine (the
dockerd of a NetnsHost named ``bench-lat``: a network namespace with only ``lo``, its own
dockerd, and a loopback forwarder to the registry and the Corral server):

1. ``docker run -d``  (the floor): wall time of the CLI call
   ``docker -H <host> run -d IMAGE CMD``; when it returns, the container runs.
2. Docker Swarm: ``docker swarm init --advertise-addr 127.0.0.1`` on that engine once, then
   ``docker service create --detach --name sN IMAGE CMD`` and poll the Engine API
   (``GET /tasks?filters={"service":["sN"]}``, every 10 ms) until a task's
   ``Status.State`` is ``running``; time from just before the create call.
3. Corral: a real ``corral server`` (SQLite in a temp dir) and a real ``corral agent`` in the
   namespace; ``POST /api/v1/services {"name": "lN", "image": ..., "command": CMD}`` through
   httpx with the pinned CA, then ``GET /api/v1/services/lN`` every 5 ms until
   ``running == 1``; time from just before the POST.

CMD is the same for all three: ``sh -c 'trap "exit 0" TERM; while :; do sleep 1 & wait; done'``
(``sleep`` as PID 1 ignores SIGTERM, so each removal would wait the 10 s stop grace period;
this one exits on TERM at once). Each run's workload is removed, and its container is gone
from the engine, before the next run starts. Methods are interleaved run by run, in a
rotating order, so machine noise hits all of them alike; one warm-up run per method is not
counted.

After each measured run the container's ``Created`` and ``State.StartedAt`` (engine clock =
this machine's clock) are read, which splits each latency into "until the engine was asked
to create" / "create+start in the engine" / "until the client saw it running".

Run from the repository root (as root: namespaces, dockerd)::

    /opt/corral-venv/bin/python bench/deploy_latency.py [--runs 50] [--json]

Network: only loopback and the namespace created here are ever contacted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import DOCKER_CLI, BenchError, cli, containers, engine, on_sigterm, q  # noqa: E402
from corral.agent.reconciler import parse_docker_time  # noqa: E402
from testbed.cluster import AgentProc, ServerProc, wait_for  # noqa: E402
from testbed.daemons import ensure_registry  # noqa: E402
from testbed.images import build_busybox  # noqa: E402
from testbed.netns import NetnsHost  # noqa: E402

TRAP_SCRIPT = 'trap "exit 0" TERM; while :; do sleep 1 & wait; done'
TRAP_CMD = ["sh", "-c", TRAP_SCRIPT]
HOST_NAME = "bench-lat"
HOST_INDEX = 201  # bridge 172.31.201.1/24 inside the namespace; tests count up from 1
RUN_TIMEOUT = 60.0  # one deploy, or one removal, must finish within this
METHODS = ("docker run", "swarm", "corral")




# ---------------------------------------------------------------- engine helpers


def wait_containers_gone(host: str, label: str) -> None:
    wait_for(lambda: not containers(host, label), RUN_TIMEOUT, f"containers with {label} to go",
             interval=0.02)


def container_times(host: str, cid: str) -> tuple[float, float]:
    """(Created, State.StartedAt) of a container as Unix times; 0.0 when unknown."""
    info = engine(host, "GET", f"/containers/{cid}/json") if cid else None
    if not info:
        return 0.0, 0.0
    return (parse_docker_time(str(info.get("Created", ""))),
            parse_docker_time(str(info.get("State", {}).get("StartedAt", ""))))


# ---------------------------------------------------------------- one run per method


# One measured run: "total" seconds plus the breakdown (all relative to t0).
Sample = dict[str, Any]


def split(t0_wall: float, created: float, started: float, total: float) -> Sample:
    s = Sample(total=total)
    if created and started:
        s["to_create"] = created - t0_wall  # client -> engine's container create
        s["create_start"] = started - created  # inside the engine: create + start
        s["after_start"] = total - (started - t0_wall)  # until the client saw "running"
    return s


def run_docker(host: str, ref: str, i: int) -> Sample:
    t0_wall = time.time()
    t0 = time.perf_counter()
    cid = cli(host, "run", "-d", "--label", "bench=docker-run", ref, *TRAP_CMD, timeout=RUN_TIMEOUT)
    total = time.perf_counter() - t0
    created, started = container_times(host, cid)
    engine(host, "DELETE", f"/containers/{cid}?force=1")
    wait_containers_gone(host, "bench=docker-run")
    return split(t0_wall, created, started, total)


def run_swarm(host: str, ref: str, i: int) -> Sample:
    name = f"s{i}"
    t0_wall = time.time()
    t0 = time.perf_counter()
    cli(host, "service", "create", "--detach", "--name", name, ref, *TRAP_CMD, timeout=RUN_TIMEOUT)
    deadline = t0 + RUN_TIMEOUT
    task: dict[str, Any] | None = None
    while True:
        tasks = engine(host, "GET", "/tasks" + q({"service": [name]})) or []
        task = next((t for t in tasks if t.get("Status", {}).get("State") == "running"), None)
        if task is not None:
            break
        if time.perf_counter() > deadline:
            raise BenchError(f"swarm service {name} not running after {RUN_TIMEOUT}s: {tasks}")
        time.sleep(0.01)
    total = time.perf_counter() - t0
    cid = str(task["Status"].get("ContainerStatus", {}).get("ContainerID", ""))
    created, started = container_times(host, cid)
    engine(host, "DELETE", f"/services/{name}")
    wait_containers_gone(host, f"com.docker.swarm.service.name={name}")
    return split(t0_wall, created, started, total)


class Corral:
    def __init__(self, server: ServerProc, host: str, poll: float = 0.005) -> None:
        self.server = server
        self.host = host
        self.poll = poll
        self.api = server.client()

    def run(self, ref: str, i: int) -> Sample:
        name = f"l{i}"
        seen: dict[str, float] = {}  # instance state -> first seen by the poll (s after t0)
        t0_wall = time.time()
        t0 = time.perf_counter()
        r = self.api.post("/api/v1/services",
                          json={"name": name, "image": ref, "command": TRAP_CMD})
        posted = time.perf_counter() - t0
        if r.status_code != 201:
            raise BenchError(f"POST /api/v1/services: HTTP {r.status_code}: {r.text[:300]}")
        body = r.json()
        deadline = t0 + RUN_TIMEOUT
        while True:
            now = time.perf_counter()
            for inst in body.get("instances") or []:
                seen.setdefault(inst["state"], now - t0)
            if body.get("running") == 1:
                break
            if now > deadline:
                raise BenchError(f"corral service {name} not running after {RUN_TIMEOUT}s: {body}")
            time.sleep(self.poll)
            r = self.api.get(f"/api/v1/services/{name}")
            r.raise_for_status()
            body = r.json()
        total = time.perf_counter() - t0
        inst = body["instances"][0]
        created, started = container_times(self.host, inst.get("container_id", ""))
        s = split(t0_wall, created, started, total)
        s["post"] = posted
        s["seen"] = seen
        s["since"] = parse_docker_time(inst["since"]) - t0_wall if inst.get("since") else None
        self.api.delete(f"/api/v1/services/{name}").raise_for_status()
        wait_containers_gone(self.host, f"io.corral.service={name}")
        return s

    def close(self) -> None:
        self.api.close()


# ---------------------------------------------------------------- statistics and output


def pct(xs: list[float], p: float) -> float:
    """Percentile with linear interpolation between closest ranks (numpy's default)."""
    s = sorted(xs)
    if len(s) == 1:
        return s[0]
    k = (len(s) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def stats(xs: list[float]) -> dict[str, float]:
    return {"p50": pct(xs, 50), "p90": pct(xs, 90), "p99": pct(xs, 99),
            "mean": statistics.fmean(xs), "min": min(xs), "max": max(xs), "n": len(xs)}


def median_of(samples: list[Sample], key: str) -> float | None:
    xs = [s[key] for s in samples if s.get(key) is not None]
    return statistics.median(xs) if xs else None


def report(results: dict[str, list[Sample]], meta: dict[str, Any]) -> dict[str, Any]:
    st = {m: stats([s["total"] for s in results[m]]) for m in METHODS}
    c, d, w = st["corral"], st["docker run"], st["swarm"]
    ratios = {"corral/docker_run_p50": c["p50"] / d["p50"], "corral/docker_run_p99": c["p99"] / d["p99"],
              "corral/swarm_p50": c["p50"] / w["p50"], "corral/swarm_p99": c["p99"] / w["p99"]}
    goals = {"corral_p50_below_swarm_p50": c["p50"] < w["p50"],
             "corral_p50_within_1.5x_docker_run_p50": c["p50"] <= 1.5 * d["p50"]}

    print()
    print(f"Deploy latency, create -> running, 1 container, image present "
          f"({meta['runs']} runs per method, interleaved; {meta['date']}, {meta['cpus']} CPUs)")
    print(f"engine: dockerd {meta['engine_version']} in netns crl-{HOST_NAME}; "
          f"docker CLI {meta['cli_version']}; image {meta['image']}")
    print(f"command (all three): sh -c '{TRAP_SCRIPT}'")
    print("  (exits on SIGTERM, unlike `sleep 3600` as PID 1, so removals between runs are fast)")
    print()
    print(f"{'method':<12} {'p50':>7} {'p90':>7} {'p99':>7} {'mean':>7} {'min':>7} {'max':>7}")
    for m in METHODS:
        s = st[m]
        print(f"{m:<12} {s['p50']:7.3f} {s['p90']:7.3f} {s['p99']:7.3f} {s['mean']:7.3f} "
              f"{s['min']:7.3f} {s['max']:7.3f}")
    print("(seconds)")
    print()
    print(f"Corral / docker run: p50 {ratios['corral/docker_run_p50']:.2f}x, "
          f"p99 {ratios['corral/docker_run_p99']:.2f}x")
    print(f"Corral / Swarm:      p50 {ratios['corral/swarm_p50']:.2f}x, "
          f"p99 {ratios['corral/swarm_p99']:.2f}x")
    print()
    ok = "PASS" if goals["corral_p50_below_swarm_p50"] else "FAIL"
    print(f"goal: Corral p50 < Swarm p50 ({c['p50']:.3f} < {w['p50']:.3f}): {ok}")
    ok = "PASS" if goals["corral_p50_within_1.5x_docker_run_p50"] else "FAIL"
    print(f"goal: Corral p50 <= 1.5 x docker run p50 ({c['p50']:.3f} <= {1.5 * d['p50']:.3f}): {ok}")

    print()
    print("Where the time goes (medians, seconds; engine timestamps, same clock):")
    print(f"{'method':<12} {'->create':>9} {'create+start':>13} {'start->seen':>12} {'total':>7}")
    breakdown: dict[str, dict[str, float | None]] = {}
    for m in METHODS:
        b = {k: median_of(results[m], k) for k in ("to_create", "create_start", "after_start")}
        breakdown[m] = b

        def f(x: float | None, width: int) -> str:
            return f"{x:{width}.3f}" if x is not None else " " * (width - 1) + "-"

        print(f"{m:<12} {f(b['to_create'], 9)} {f(b['create_start'], 13)} "
              f"{f(b['after_start'], 12)} {st[m]['p50']:7.3f}")
    cs = results["corral"]
    states: dict[str, float | None] = {}
    for state in ("pending", "pulling", "starting", "running"):
        xs = [s["seen"][state] for s in cs if state in s["seen"]]
        states[state] = statistics.median(xs) if xs else None
    post = median_of(cs, "post")
    since = median_of(cs, "since")
    print("  ->create: from t0 until the engine created the container (docker run: CLI start-up"
          " + API call;")
    print("            swarm: CLI + manager raft + scheduler + dispatcher; corral: POST + long-poll"
          " + agent pass)")
    print("  start->seen: from the container's start until the client saw it running")
    print(f"Corral detail (medians): POST answered {post:.3f}; agent's 'running' stamp "
          f"{since if since is not None else float('nan'):.3f}; first seen by the "
          f"{meta['poll_interval']['corral'] * 1000:g} ms poll: "
          + ", ".join(f"{k} {v:.3f}" for k, v in states.items() if v is not None))
    if meta.get("cli_overhead") is not None:
        print(f"docker CLI overhead (p50 of `docker -H HOST version`, one API call): "
              f"{meta['cli_overhead']:.3f} s — in the docker run and swarm figures, "
              f"not in Corral's (httpx in-process)")
    print(f"load average before/after: {meta['load_before']} / {meta['load_after']}")
    return {"meta": meta, "stats": st, "ratios": ratios, "goals": goals,
            "breakdown": breakdown, "corral_states_first_seen_p50": states,
            "corral_post_p50": post, "samples": results}


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=50, help="measured runs per method (default 50)")
    ap.add_argument("--warmup", type=int, default=1, help="unmeasured runs per method first")
    ap.add_argument("--json", action="store_true", help="also print the result as JSON")
    ap.add_argument("--corral-poll", type=float, default=0.005, metavar="SECONDS",
                    help="interval of the GET /api/v1/services/NAME poll (default 0.005)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir (server/agent logs)")
    args = ap.parse_args(argv)
    if not (1 <= args.runs <= 1000 and 0 <= args.warmup <= 20 and 0.001 <= args.corral_poll <= 1):
        ap.error("--runs must be 1..1000, --warmup 0..20, --corral-poll 0.001..1")
    if os.geteuid() != 0:
        ap.error("run as root (network namespaces, dockerd)")
    signal.signal(signal.SIGTERM, on_sigterm)

    registry = ensure_registry()
    image = build_busybox(registry)
    ref = image.ref
    tmp = Path(tempfile.mkdtemp(prefix="corral-bench-lat-"))
    server = ServerProc(tmp / "server")
    host: NetnsHost | None = None
    agent: AgentProc | None = None
    corral: Corral | None = None
    swarm_on = False
    results: dict[str, list[Sample]] = {m: [] for m in METHODS}
    try:
        server.start()
        host = NetnsHost(HOST_NAME, HOST_INDEX, [server.port, int(registry.rsplit(":", 1)[1])])
        host.start()
        dh = host.docker_host
        print(f"pulling {ref} into the engine of {host.netns} ...", file=sys.stderr)
        cli(dh, "pull", ref, timeout=300)
        agent = AgentProc(server.url, server.join_token(), tmp / "agent", docker_host=dh,
                          name=HOST_NAME, netns=host).start()
        agent.host_id()
        with server.client() as c:
            wait_for(lambda: [h for h in c.get("/api/v1/hosts").json() if h["state"] == "ready"],
                     30, "the agent's host to be ready")
        cli(dh, "swarm", "init", "--advertise-addr", "127.0.0.1", timeout=RUN_TIMEOUT)
        swarm_on = True
        corral = lat = Corral(server, dh, args.corral_poll)
        run: dict[str, Callable[[int], Sample]] = {
            "docker run": lambda i: run_docker(dh, ref, i),
            "swarm": lambda i: run_swarm(dh, ref, i),
            "corral": lambda i: lat.run(ref, i),
        }
        cli_times = []
        for _ in range(10):
            t0 = time.perf_counter()
            cli(dh, "version", "--format", "{{.Server.Version}}", timeout=RUN_TIMEOUT)
            cli_times.append(time.perf_counter() - t0)
        load_before = " ".join(f"{x:.2f}" for x in os.getloadavg())
        total_rounds = args.warmup + args.runs
        t_start = time.monotonic()
        for r in range(total_rounds):
            order = METHODS[r % 3:] + METHODS[:r % 3]  # rotate: no method always goes first
            for m in order:
                sample = run[m](r)
                if r >= args.warmup:
                    results[m].append(sample)
            if (r + 1) % 10 == 0 or r + 1 == total_rounds:
                print(f"  round {r + 1}/{total_rounds} ({time.monotonic() - t_start:.0f} s)",
                      file=sys.stderr)
        meta = {
            "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "cpus": os.cpu_count(), "machine": platform.machine(), "kernel": platform.release(),
            "runs": args.runs, "warmup": args.warmup, "image": ref, "command": TRAP_CMD,
            "engine_version": cli(dh, "version", "--format", "{{.Server.Version}}", timeout=RUN_TIMEOUT),
            "cli": DOCKER_CLI, "cli_version": cli(dh, "version", "--format", "{{.Client.Version}}",
                                                    timeout=RUN_TIMEOUT),
            "cli_overhead": statistics.median(cli_times),
            "load_before": load_before,
            "load_after": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "poll_interval": {"swarm": 0.01, "corral": args.corral_poll},
        }
        out = report(results, meta)
        if args.json:
            print()
            print(json.dumps(out, indent=1, default=str))
        return 0
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # finish cleaning up even if told twice
        if corral is not None:
            corral.close()
        if host is not None and swarm_on:
            try:
                cli(host.docker_host, "swarm", "leave", "--force", timeout=RUN_TIMEOUT)
            except Exception as exc:  # keep cleaning
                print(f"swarm leave: {exc}", file=sys.stderr)
        if agent is not None:
            agent.stop()
        server.stop()
        if host is not None:
            host.stop()  # kills every container left on that engine, and the engine
        if args.keep:
            print(f"logs kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
