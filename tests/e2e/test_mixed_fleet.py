"""End to end: one server, an amd64 agent, an arm64 agent and an arm/v7 agent.

The ARM agents are Debian's arm64/armhf python running the Corral agent under qemu (see
testbed.armroot); every host has its own dockerd in its own namespace.  The server reads
each image's index from the local registry and places each instance only where a build for
that host's platform exists, pinned to that build's digest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from corral.agent.runtime.docker import DockerClient
from corral.model import LABEL_SERVICE
from testbed.armroot import ArmAgentProc
from testbed.cluster import AgentProc, ServerProc, wait_for
from testbed.images import BuiltImage
from testbed.netns import NetnsHost
from tests.e2e.conftest import SERVER_ARGS, Cluster

pytestmark = pytest.mark.e2e

# corral host name -> (platform, uname -m)
FLEET = {"mix-x86": ("linux/amd64", "x86_64"), "mix-a64": ("linux/arm64", "aarch64"),
         "mix-v7": ("linux/arm/v7", "armv7l")}
PRINT_UNAME = ["sh", "-c", "while true; do echo \"machine=$(uname -m)\"; sleep 2; done"]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, netns_host_factory: Any, registry: str,
          arm64_root: Path, armhf_root: Path) -> Iterator[tuple[Cluster, dict[str, NetnsHost]]]:
    tmp = tmp_path_factory.mktemp("mixed")
    server = ServerProc(tmp / "server", extra_args=SERVER_ARGS).start()
    ports = [server.port, int(registry.rsplit(":", 1)[1])]
    join = server.join_token()
    agents: list[AgentProc] = []
    with ThreadPoolExecutor(max_workers=3) as pool:
        hosts = dict(zip(FLEET, pool.map(lambda n: netns_host_factory(n, ports), FLEET), strict=True))
    try:
        for name, host in hosts.items():
            common: dict[str, Any] = {"docker_host": host.docker_host, "netns": host, "name": name}
            if name == "mix-x86":
                agents.append(AgentProc(server.url, join, tmp / name, **common).start())
            else:
                root = arm64_root if name == "mix-a64" else armhf_root
                arch = "arm64" if name == "mix-a64" else "armhf"
                agents.append(ArmAgentProc(server.url, join, tmp / name, arch=arch, root=root, **common).start())
        cluster = Cluster(server)
        wait_for(lambda: sorted(h["name"] for h in cluster.hosts() if h["state"] == "ready") == sorted(FLEET),
                 90, "three ready hosts")
        yield cluster, hosts
    finally:
        for agent in agents:
            agent.stop()
        for host in hosts.values():
            for c in DockerClient(host.docker_host).list_containers(labels={LABEL_SERVICE: ""}):
                DockerClient(host.docker_host).remove(c.id)
        server.stop()


def test_hosts_report_their_own_platforms(fleet: tuple[Cluster, dict[str, NetnsHost]]) -> None:
    cluster, _ = fleet
    assert {h["name"]: h["platform"] for h in cluster.hosts()} == {n: p for n, (p, _) in FLEET.items()}


def test_global_multi_arch_service_runs_each_hosts_build(fleet: tuple[Cluster, dict[str, NetnsHost]],
                                                         busybox_image: BuiltImage) -> None:
    cluster, hosts = fleet
    cluster.create(name="everywhere", image=busybox_image.ref, mode="global", command=PRINT_UNAME)
    svc = cluster.wait_service("everywhere", lambda s: s["running"] == 3 and s["desired"] == 3, 120,
                               "one running instance per host")
    assert svc["image_digest"] == busybox_image.index_digest
    for inst in svc["instances"]:
        platform, machine = FLEET[inst["host_name"]]
        assert inst["platform"] == platform and not inst["emulated"]
        assert inst["image"] == busybox_image.by_digest(platform)  # pinned to that build's digest
        # the host's engine runs exactly that manifest
        engine = DockerClient(hosts[inst["host_name"]].docker_host)
        assert engine.inspect_container(inst["container_id"])["Config"]["Image"] == inst["image"]
    with cluster.api() as c:
        logs = wait_for(lambda: (t := c.get("/api/v1/services/everywhere/logs", params={"tail": 3}).text)
                        and all(f"@{n} | machine={m}" in t for n, (_, m) in FLEET.items()) and t,
                        60, "uname -m from every host")
    for name, (_, machine) in FLEET.items():
        assert f"@{name} | machine={machine}" in logs
    cluster.remove("everywhere")


def test_arm64_only_image_lands_only_on_the_arm64_host(fleet: tuple[Cluster, dict[str, NetnsHost]],
                                                      arm64_only_image: BuiltImage) -> None:
    cluster, _ = fleet
    cluster.create(name="a64only", image=arm64_only_image.ref, replicas=2, command=PRINT_UNAME)
    svc = cluster.wait_running("a64only", 2, 90)
    assert {i["host_name"] for i in svc["instances"]} == {"mix-a64"}
    assert all(i["platform"] == "linux/arm64" and not i["emulated"] for i in svc["instances"])
    cluster.remove("a64only")


def test_no_fitting_host_explains_why(fleet: tuple[Cluster, dict[str, NetnsHost]],
                                      arm64_only_image: BuiltImage) -> None:
    cluster, _ = fleet
    svc = cluster.create(name="nofit", image=arm64_only_image.ref, constraints=["node.hostname!=mix-a64"])
    assert svc["instances"] == []
    reason = svc["pending_reason"]
    assert reason.startswith("0 of 3 hosts can run it: image offers linux/arm64; ")
    for part in ("1 host does not match constraint node.hostname!=mix-a64", "1 host is linux/amd64 (no build)",
                 "1 host is linux/arm/v7 (no build)", "could run it emulated (allow emulation to use it)"):
        assert part in reason, reason
    cluster.remove("nofit")


def test_emulation_when_allowed_runs_arm64_on_the_amd64_host(fleet: tuple[Cluster, dict[str, NetnsHost]],
                                                             arm64_only_image: BuiltImage, tmp_path: Path) -> None:
    cluster, _ = fleet
    cluster.create(name="emu", image=arm64_only_image.ref, command=PRINT_UNAME, allow_emulation=True,
                   constraints=["node.platform.arch==amd64"])
    svc = cluster.wait_running("emu", 1, 90)
    (inst,) = svc["instances"]
    assert inst["host_name"] == "mix-x86" and inst["emulated"] and inst["platform"] == "linux/arm64"
    with cluster.api() as c:
        wait_for(lambda: "machine=aarch64" in c.get("/api/v1/services/emu/logs", params={"tail": 2}).text,
                 30, "aarch64 under qemu on the amd64 host")
    env = {**os.environ, "CORRAL_URL": cluster.server.url, "CORRAL_TOKEN": cluster.server.admin_token,
           "CORRAL_CONFIG": str(tmp_path / "cfg.json"), "COLUMNS": "150"}
    ps = subprocess.run([sys.executable, "-m", "corral", "ps", "emu"], capture_output=True, text=True, env=env,
                        timeout=60, check=True).stdout
    assert "linux/arm64 EMULATED" in ps and "mix-x86" in ps
    ps_json = json.loads(subprocess.run([sys.executable, "-m", "corral", "ps", "emu", "-o", "json"],
                                        capture_output=True, text=True, env=env, timeout=60, check=True).stdout)
    assert ps_json[0]["emulated"] is True
    cluster.remove("emu")
