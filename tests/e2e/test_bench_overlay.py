"""bench/overlay.py --quick runs on the real test bed and reports a sane measurement.

The bench reports iperf3 and ping on the underlay, across bare wireguard-go, and container to
container across the Corral overlay (a real server, three NetnsHosts with a dockerd and an
agent each), on a public pair and through a NAT, all between the same namespaces. This test
only checks that its numbers are there and hang together, and that it leaves no namespace,
dockerd, wireguard-go or UAPI socket behind. It asserts no performance goal (the verdict
line must be there, PASS or FAIL). A second test runs ``measure_path`` through
``docker exec`` in one ``corral/nettool:1`` container (amd64 and arm64 under qemu,
``--network none``, target 127.0.0.1), the way the corral row measures containers.
"""

from __future__ import annotations

import math
import os
import subprocess
from pathlib import Path

import pytest

from testbed.daemons import RUN_DIR
from testbed.images import BuiltImage
from testbed.underlay import NETNS_DIR
from tests.e2e.conftest import run_quick_bench

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(os.geteuid() != 0, reason="needs root (netns, wireguard-go)")]


def _wireguard_go_of_bench() -> list[str]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if os.path.basename(argv[0]) == b"wireguard-go" and any(
                    a.startswith((b"obwg-", b"wgobh")) for a in argv[1:]):
                out.append(entry.name)
    return out


def test_overlay_bench_quick_reports_sane_json() -> None:
    out, res = run_quick_bench("overlay.py", timeout=240)

    meta = res["meta"]
    assert meta["quick"] is True and meta["seconds"] == 2 and meta["pings"] == 10
    assert meta["rounds"] == 1 and meta["wireguard_backend"] in ("userspace", "kernel")
    assert meta["same_namespaces"] is True
    assert {h["netns"] for h in meta["hosts"].values()} == {"crl-obha", "crl-obhb", "crl-obhn"}
    assert set(res["paths"]) == {"public", "nat"}
    corral = meta["corral"]
    for pair, rows in res["paths"].items():
        assert set(rows) == {"underlay", "wireguard-go", "corral"}, pair
        for key, row in rows.items():
            assert math.isfinite(row["throughput_mbps"]) and row["throughput_mbps"] > 0, (pair, key)
            assert row["pings_received"] > 0 and row["rtt_p50_ms"] > 0, (pair, key)
            assert row["rtt_p50_ms"] <= row["rtt_p99_ms"] <= row["rtt_max_ms"], (pair, key)
            flavor = "busybox" if key == "corral" else "iputils"  # docker exec into nettool
            assert len(row["rounds"]) == 1 and row["rounds"][0]["ping_flavor"] == flavor
        assert rows["wireguard-go"]["target"].startswith("10.239.0."), pair
        # container to container: the server side's container, by its overlay address
        server = meta["pairs"][pair][1]
        assert rows["corral"]["target"] == corral["addresses"][server], pair
        assert rows["corral"]["target"].startswith("10.42."), pair
        assert rows["corral"]["pings_iputils_received"] > 0, pair
        assert rows["corral"]["cpu_cores"]["corral wireguard-go"] > 0, pair
        ratio = res["ratios"][pair]["wireguard-go"]
        assert ratio["throughput_mbps"] == pytest.approx(
            rows["wireguard-go"]["throughput_mbps"] / rows["underlay"]["throughput_mbps"])
        vs_bare = res["ratios_vs_wireguard_go"][pair]["corral"]["throughput_mbps"]
        assert vs_bare == pytest.approx(
            rows["corral"]["throughput_mbps"] / rows["wireguard-go"]["throughput_mbps"])
        assert res["goal"]["ratios"][pair] == pytest.approx(vs_bare)
    assert res["goal"]["pass"] == all(r >= 0.8 for r in res["goal"]["ratios"].values())
    assert "wireguard-go/underlay: throughput" in out
    assert "corral/wireguard-go: throughput" in out
    assert ("goal ≥ 80 % of bare wireguard-go: " + ("PASS" if res["goal"]["pass"] else "FAIL")
            in out)
    assert corral["container_mtu"] == meta["mtu"]

    # nothing left behind: namespaces of underlay "ob" and of the Corral hosts, their dockerd,
    # wireguard-go daemons (bare and the agents'), UAPI sockets
    assert not [e.name for e in NETNS_DIR.iterdir()
                if e.name == "crl-ul-ob" or e.name.startswith(("crl-ul-ob-", "crl-obh"))]
    assert _wireguard_go_of_bench() == []
    assert not list(Path("/var/run/wireguard").glob("obwg-*.sock"))
    assert not list(Path("/var/run/wireguard").glob("wgobh*.sock"))
    assert not [h for h in ("obha", "obhb", "obhn") if (RUN_DIR / h).exists()]


@pytest.mark.parametrize("platform", ["linux/amd64", "linux/arm64"])
def test_measure_path_through_docker_exec(platform: str, registry: str, docker_host: str,
                                          binfmt: None) -> None:
    from testbed.net_images import ensure_nettool_image

    from bench import overlay as bench

    image: BuiltImage = ensure_nettool_image(registry)
    run = subprocess.run(
        ["docker", "-H", docker_host, "run", "-d", "--rm", "--network", "none", "--platform",
         platform, image.by_digest(platform), "sh", "-c",
         "trap 'exit 0' TERM; while :; do sleep 1 & wait; done"],
        capture_output=True, text=True, timeout=180, check=False)
    assert run.returncode == 0, run.stderr
    cid = run.stdout.strip()
    try:
        prefix = ["docker", "-H", docker_host, "exec", cid]
        uname = subprocess.run([*prefix, "uname", "-m"], capture_output=True, text=True,
                               timeout=60, check=True).stdout.strip()
        assert uname == {"linux/amd64": "x86_64", "linux/arm64": "aarch64"}[platform]
        r = bench.measure_path(f"nettool {platform}", prefix, prefix, "127.0.0.1", seconds=1,
                               pings=5, counters={"container": prefix})
    finally:
        subprocess.run(["docker", "-H", docker_host, "rm", "-f", cid], capture_output=True,
                       timeout=60, check=False)
    assert r.ping_flavor == "busybox"
    assert r.throughput_mbps > 0 and len(r.rtts_ms) == 5
    assert set(r.extra["snmp"]["container"]) >= {"Udp.RcvbufErrors", "Tcp.RetransSegs"}
