#!/usr/bin/env python3
"""What one container costs the machine: CPU per create+start, stop and remove, per network mode.

A rolling update on a small machine is bound by this cost, whoever drives the engine: the
rollout bench (``bench/rollout.py``) finds Corral and Swarm CPU-bound at parallelism 10, with
the containers and engines taking most of the CPU. This bench measures that floor directly.

For each network mode asked for (``default``: the engine's bridge; ``none``; ``host``;
``network``: a user-defined bridge network the bench creates and removes, which is what a
container on Corral's overlay joins) it creates and starts ``--count`` containers of the test bed's busybox image (command ``sh -c
'trap "exit 0" TERM; while :; do sleep 1 & wait; done'``, the rollout bench's), one after
the other, on the test bed's root dockerd, then stops them all, then removes them all. Each
phase is timed by the wall clock and by the machine's busy CPU (from ``/proc/stat``: every
process, the kernel's work included, since runc, the shims and the network namespaces are
most of the cost). The figures are per container. Other load on the machine shows in the
figures: run it on a quiet machine. On a user-defined network the engine also gives each
container its embedded DNS resolver: Debian 12's dockerd (20.10) re-executes itself in the
container's namespace to install that resolver's NAT rules, which the ``network`` row shows.

Run from the repository root (as root)::

    /opt/corral-venv/bin/python bench/container_cost.py [--count 30] [--modes default,none,host,network] [--json] [--quick]

Network: only loopback (the local registry and the engine's unix socket) is contacted.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.common import BenchError, busy_core_seconds, engine, log, on_sigterm  # noqa: E402
from testbed.daemons import docker_request, ensure_dockerd, ensure_registry  # noqa: E402
from testbed.images import build_busybox  # noqa: E402

COMMAND = ["sh", "-c", 'trap "exit 0" TERM; while :; do sleep 1 & wait; done']
LABEL = "corral.bench.container-cost"
MODES = ("default", "none", "host", "network")
NETWORK = "corral-bench-container-cost"  # the user-defined bridge of mode "network"


def measure(host: str, image: str, mode: str, count: int) -> dict[str, float]:
    """Create+start, stop and remove ``count`` containers; per container: CPU ms and wall ms."""
    config: dict[str, Any] = {"Image": image, "Cmd": COMMAND, "Labels": {LABEL: mode}}
    if mode != "default":
        config["HostConfig"] = {"NetworkMode": NETWORK if mode == "network" else mode}
    ids: list[str] = []
    out: dict[str, float] = {}
    try:
        for phase in ("create_start", "stop", "remove"):
            cpu0, wall0 = busy_core_seconds(), time.monotonic()
            if phase == "create_start":
                for _ in range(count):
                    created = engine(host, "POST", "/containers/create", config)
                    if created is None:
                        raise BenchError(f"{image}: not on the engine")
                    ids.append(created["Id"])
                    engine(host, "POST", f"/containers/{ids[-1]}/start")
            elif phase == "stop":
                for cid in ids:
                    engine(host, "POST", f"/containers/{cid}/stop?t=10")
            else:
                while ids:
                    engine(host, "DELETE", f"/containers/{ids[-1]}")
                    ids.pop()
            out[f"{phase}_cpu_ms"] = (busy_core_seconds() - cpu0) / count * 1000
            out[f"{phase}_wall_ms"] = (time.monotonic() - wall0) / count * 1000
    finally:
        for cid in ids:  # interrupted: leave nothing behind
            docker_request(host, "DELETE", f"/containers/{cid}?force=true")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--count", type=int, default=None, help="containers per network mode (default 30; --quick 3)")
    ap.add_argument("--quick", action="store_true", help="smoke test: 3 containers per mode")
    ap.add_argument("--modes", default=",".join(MODES), help="network modes, from default,none,host,network")
    ap.add_argument("--json", action="store_true", help="also print the result as JSON")
    args = ap.parse_args(argv)
    if args.count is None:
        args.count = 3 if args.quick else 30
    modes = [m for m in args.modes.split(",") if m]
    if not 1 <= args.count <= 500 or not modes or any(m not in MODES for m in modes):
        ap.error("--count 1..500, --modes from default,none,host,network")
    signal.signal(signal.SIGTERM, on_sigterm)
    host = ensure_dockerd()
    # its own repository: the test bed's corral/busybox:1 is multi-platform, and stays so
    image = build_busybox(ensure_registry(), repo="corral/bench-container-cost", platforms=("linux/amd64",)).ref
    log(f"pulling {image}")
    repo, tag = image.rsplit(":", 1)
    status, raw = docker_request(host, "POST", f"/images/create?fromImage={repo}&tag={tag}")  # a JSON stream
    if status != 200 or b'"error"' in raw:
        raise BenchError(f"pulling {image}: HTTP {status}: {raw[-300:]!r}")
    results: dict[str, dict[str, float]] = {}
    load = os.getloadavg()
    if "network" in modes:  # the engine picks a free subnet; one left by an interrupted run goes first
        docker_request(host, "DELETE", f"/networks/{NETWORK}")
        engine(host, "POST", "/networks/create", {"Name": NETWORK, "Driver": "bridge", "Labels": {LABEL: "network"}})
    try:
        for mode in modes:
            log(f"{args.count} containers, network mode {mode}")
            results[mode] = measure(host, image, mode, args.count)
    finally:
        if "network" in modes:
            docker_request(host, "DELETE", f"/networks/{NETWORK}")
    print(f"Per container, {args.count} each, one after the other ({os.cpu_count()} CPUs, "
          f"load before {load[0]:.2f}); CPU is the whole machine's busy time")
    print(f"{'network':<9} {'create+start CPU':>17} {'wall':>7} {'stop CPU':>9} {'wall':>7} {'remove CPU':>11} {'wall':>7}")
    for mode, r in results.items():
        print(f"{mode:<9} {r['create_start_cpu_ms']:>14.0f} ms {r['create_start_wall_ms']:>4.0f} ms "
              f"{r['stop_cpu_ms']:>6.0f} ms {r['stop_wall_ms']:>4.0f} ms {r['remove_cpu_ms']:>8.0f} ms "
              f"{r['remove_wall_ms']:>4.0f} ms")
    if "default" in results and "host" in results:
        share = 1 - results["host"]["create_start_cpu_ms"] / results["default"]["create_start_cpu_ms"]
        print(f"the network namespace's share of create+start (default against host): {share:.0%}")
    if "default" in results and "network" in results:
        extra = results["network"]["create_start_cpu_ms"] - results["default"]["create_start_cpu_ms"]
        print(f"a user-defined network's extra CPU per create+start (network against default): {extra:.0f} ms")
    if args.json:
        print(json.dumps({"count": args.count, "cpus": os.cpu_count(), "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BenchError as exc:
        log(f"error: {exc}")
        sys.exit(1)
    except KeyboardInterrupt:
        log("interrupted")
        sys.exit(130)
