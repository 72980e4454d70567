#!/usr/bin/env python3
"""Resolve latency: a 6-platform OCI index, cold, warm (cache) and revalidated.

The image is real: busybox built offline from Debian's busybox-static for linux/amd64,
linux/arm64, linux/arm/v7 (armhf), linux/arm/v5 (armel), linux/386 (i386) and
linux/ppc64le (ppc64el), pushed by testbed.images.build_busybox to the test-bed registry
(Debian's docker-registry on 127.0.0.1:5000) as ``corral/busybox-6:1``. Foreign Debian
architectures that are missing are added first (``dpkg --add-architecture``, then
``apt-get update``), which is why this runs as root.

Three measurements of ``RegistryClient.resolve``, each the median of ``--runs`` (50):

* cold: a new client and a new HTTP connection per resolve: empty caches, TCP connect
  included. An index needs one GET.
* warm: one client, the tag within its TTL: served from the cache. The client's transport
  is wrapped in a counter of requests that reach it: the warm figure must be 0 requests,
  or this script exits 1.
* revalidate: one client whose injected clock jumps past the tag TTL before each resolve:
  one HEAD, which finds the digest unchanged, then the cached content.

Run from the repository root::

    /opt/corral-venv/bin/python bench/resolve.py [--runs 50] [--json]

Network: only 127.0.0.1 (the registry) is contacted, plus Debian's mirror when apt-get
update or busybox-static .debs are needed on first run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from corral.images import RegistryClient  # noqa: E402
from testbed.daemons import TestbedError, ensure_registry  # noqa: E402
from testbed.images import PLATFORMS as DEBIAN_ARCH  # noqa: E402
from testbed.images import BuiltImage, build_busybox  # noqa: E402

SIX = ("linux/amd64", "linux/arm64", "linux/arm/v7", "linux/arm/v5", "linux/386",
       "linux/ppc64le")
IMAGE_REPO, IMAGE_TAG = "corral/busybox-6", "1"


class CountingTransport(httpx.BaseTransport):
    """Counts every request that reaches the real transport, by method."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.methods: Counter[str] = Counter()

    @property
    def requests(self) -> int:
        return sum(self.methods.values())

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.methods[request.method] += 1
        return self.inner.handle_request(request)

    def close(self) -> None:
        self.inner.close()


def _apt_update() -> None:
    subprocess.run(["apt-get", "-o", "DPkg::Lock::Timeout=300", "update"], check=False,
                   stdout=subprocess.DEVNULL)


def ensure_architectures(platforms: tuple[str, ...]) -> None:
    """``dpkg --add-architecture`` what the platforms need; apt-get update if any was added."""
    native = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                            check=True).stdout.strip()
    foreign = subprocess.run(["dpkg", "--print-foreign-architectures"], capture_output=True,
                             text=True, check=True).stdout.split()
    missing = [arch for arch in dict.fromkeys(DEBIAN_ARCH[p][0] for p in platforms)
               if arch != native and arch not in foreign]
    for arch in missing:
        print(f"dpkg --add-architecture {arch}", file=sys.stderr)
        subprocess.run(["dpkg", "--add-architecture", arch], check=True)
    if missing:
        _apt_update()


def build_image(registry: str) -> BuiltImage:
    ensure_architectures(SIX)
    try:
        return build_busybox(registry, repo=IMAGE_REPO, tag=IMAGE_TAG, platforms=SIX)
    except TestbedError:  # architectures added earlier but their package lists never fetched
        _apt_update()
        return build_busybox(registry, repo=IMAGE_REPO, tag=IMAGE_TAG, platforms=SIX)


def _timed(fn: Callable[[], Any]) -> float:
    started = time.perf_counter()
    fn()
    return (time.perf_counter() - started) * 1000.0


def _summary(name: str, times: list[float], methods: Counter[str], runs: int) -> dict[str, Any]:
    ordered = sorted(times)
    return {"name": name, "runs": runs, "median_ms": statistics.median(times),
            "p90_ms": ordered[int(0.9 * (len(ordered) - 1))], "min_ms": ordered[0],
            "requests": sum(methods.values()), "requests_by_method": dict(methods),
            "requests_per_resolve": sum(methods.values()) / runs}


def measure(ref: str, image: BuiltImage, runs: int) -> list[dict[str, Any]]:
    def check(resolved: Any) -> None:
        got = {p.platform: p.digest for p in resolved.platforms}
        if got != image.digests or resolved.digest != image.index_digest:
            raise SystemExit(f"resolve({ref}) disagrees with what was pushed: {got}")

    # cold: fresh client, caches and connection each time
    cold_times: list[float] = []
    cold_methods: Counter[str] = Counter()
    for _ in range(runs):
        transport = CountingTransport(httpx.HTTPTransport())
        with RegistryClient(transport=transport) as cold:
            cold_times.append(_timed(lambda: check(cold.resolve(ref))))
        cold_methods += transport.methods

    # warm: within the TTL, nothing may reach the transport
    transport = CountingTransport(httpx.HTTPTransport())
    with RegistryClient(transport=transport) as client:
        check(client.resolve(ref))
        transport.methods.clear()
        warm_times = [_timed(lambda: client.resolve(ref)) for _ in range(runs)]
        warm_methods = Counter(transport.methods)

    # revalidate: the clock passes the TTL before every resolve -> one HEAD each
    now = [0.0]
    transport = CountingTransport(httpx.HTTPTransport())
    with RegistryClient(transport=transport, clock=lambda: now[0], tag_ttl=30.0) as client:
        check(client.resolve(ref))
        transport.methods.clear()
        reval_times = []
        for _ in range(runs):
            now[0] += 31.0
            reval_times.append(_timed(lambda: check(client.resolve(ref))))
        reval_methods = Counter(transport.methods)

    return [_summary("cold", cold_times, cold_methods, runs),
            _summary("warm", warm_times, warm_methods, runs),
            _summary("revalidate", reval_times, reval_methods, runs)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=50, help="resolves per measurement")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    registry = ensure_registry()
    image = build_image(registry)
    ref = image.ref
    results = measure(ref, image, args.runs)
    warm = next(r for r in results if r["name"] == "warm")
    report = {"reference": ref, "index_digest": image.index_digest,
              "platforms": list(image.digests), "runs": args.runs, "results": results,
              "warm_touched_network": warm["requests"] != 0}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"resolve {ref} ({image.index_digest[:19]}...), {len(image.digests)} platforms: "
              + ", ".join(image.digests))
        print(f"median of {args.runs} runs each")
        for r in results:
            methods = " ".join(f"{m}={n}" for m, n in sorted(r["requests_by_method"].items()))
            print(f"  {r['name']:<10} median {r['median_ms']:8.3f} ms   p90 {r['p90_ms']:8.3f} ms"
                  f"   min {r['min_ms']:8.3f} ms   requests {r['requests']:>3} "
                  f"({r['requests_per_resolve']:.0f}/resolve{', ' + methods if methods else ''})")
        print("warm resolves touched the network: "
              + ("YES (bug)" if report["warm_touched_network"] else "no (0 requests)"))
    return 1 if report["warm_touched_network"] else 0


if __name__ == "__main__":
    sys.exit(main())
