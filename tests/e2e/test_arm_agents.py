"""End to end: agents that are real aarch64 and armv7 code, and the agent as a multi-arch image.

One `corral server`; three namespaced hosts, each with its own (amd64) dockerd:

- ``arm64a``: the agent is Debian's arm64 python3.11 (``testbed.armroot``) chrooted in its
  own mount namespace, run by the kernel through qemu-aarch64 (binfmt_misc);
- ``armv7a``: the same with Debian's armhf python3.11 under qemu-arm;
- ``armimg``: the agent image's linux/arm64 manifest, ``docker run`` by digest on that
  host's dockerd (``--network host``), so the container's python is aarch64 under qemu.

Each must report its own platform, the engine's (amd64) and ``platform_mismatch``;
services constrained to arm64 / arm/v7 must run there and print their ``uname -m``.
Needs the ``testbed.arm_fixtures`` plugin (``arm64_root``, ``armhf_root``, ``agent_image``).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from testbed.armroot import ArmAgentProc, process_rss_bytes
from testbed.cluster import ServerProc, wait_for
from testbed.images import OCI_INDEX, OCI_MANIFEST, BuiltImage
from testbed.netns import NetnsHost
from tests.e2e.conftest import Cluster

pytestmark = pytest.mark.e2e

SERVER_ARGS = ["--heartbeat-interval", "1", "--down-after", "4"]
# corral host name -> (Debian arch, OCI platform, uname -m, qemu binary)
ARM_AGENTS = {
    "arm64a": ("arm64", "linux/arm64", "aarch64", "qemu-aarch64"),
    "armv7a": ("armhf", "linux/arm/v7", "armv7l", "qemu-arm"),
}
IMAGE_HOST = "armimg"  # the namespaced host that runs the agent image
IMAGE_AGENT = "agentimg"  # the corral host name that agent joins as
IMAGE_CONTAINER = "corral-agent-under-test"


@dataclass
class ArmBed:
    cluster: Cluster
    join_token: str
    tmp: Path
    hosts: dict[str, NetnsHost] = field(default_factory=dict)
    agents: dict[str, ArmAgentProc] = field(default_factory=dict)
    ready_after: dict[str, float] = field(default_factory=dict)  # seconds from start

    def host(self, name: str) -> dict[str, Any]:
        return next(h for h in self.cluster.hosts() if h["name"] == name)

    def wait_ready(self, name: str, timeout: float = 60) -> dict[str, Any]:
        return dict(wait_for(lambda: next((h for h in self.cluster.hosts()
                                           if h["name"] == name and h["state"] == "ready"), None),
                             timeout, f"host {name} ready", interval=0.1))


def _when(needle: str, text: str) -> str | None:
    """``text`` once it contains ``needle`` (for wait_for)."""
    return text if needle in text else None


def _docker(host: NetnsHost, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The docker CLI against ``host``'s own dockerd (a unix socket: no network)."""
    res = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "DOCKER_HOST": host.docker_host}, check=False)
    if check and res.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed: {res.stderr.strip()}")
    return res


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory, netns_host_factory: Any, registry: str,
        arm64_root: Path, armhf_root: Path) -> Iterator[ArmBed]:
    tmp = tmp_path_factory.mktemp("arm")
    server = ServerProc(tmp / "server", extra_args=SERVER_ARGS)
    hosts: list[NetnsHost] = []
    bed: ArmBed | None = None
    try:
        server.start()
        bed = ArmBed(Cluster(server), server.join_token(), tmp)
        ports = [server.port, int(registry.rsplit(":", 1)[1])]

        def make(name: str) -> NetnsHost:
            host = netns_host_factory(name, ports)
            hosts.append(host)
            return host

        with ThreadPoolExecutor(max_workers=3) as pool:
            bed.hosts = {h.name: h for h in pool.map(make, [*ARM_AGENTS, IMAGE_HOST])}
        roots = {"arm64": arm64_root, "armhf": armhf_root}
        t0 = time.monotonic()
        for name, (arch, *_rest) in ARM_AGENTS.items():
            host = bed.hosts[name]
            bed.agents[name] = ArmAgentProc(
                server.url, bed.join_token, tmp / f"agent-{name}", docker_host=host.docker_host,
                name=name, netns=host, arch=arch, root=roots[arch]).start()
        for name in ARM_AGENTS:
            bed.wait_ready(name)
            bed.ready_after[name] = time.monotonic() - t0
        yield bed
    finally:
        with ThreadPoolExecutor(max_workers=3) as pool:
            list(pool.map(lambda a: a.stop(), bed.agents.values() if bed else []))
            # the hosts (dockerd, containers, forwarder) go before the server
            list(pool.map(lambda h: h.stop(), hosts))
        server.stop()


@pytest.mark.parametrize("name", list(ARM_AGENTS))
def test_arm_agent_is_foreign_code_and_says_so(bed: ArmBed, name: str) -> None:
    _arch, platform, machine, qemu = ARM_AGENTS[name]
    agent = bed.agents[name]
    host = bed.wait_ready(name)
    assert agent.proc is not None and agent.proc.poll() is None
    # the process we started is the agent itself, and the kernel runs it through qemu
    assert qemu in os.readlink(f"/proc/{agent.proc.pid}/exe")
    assert host["platform"] == platform
    assert host["engine_platform"] == "linux/amd64"
    facts = host["facts"]
    assert facts["platform"] == platform and facts["platform_mismatch"] is True
    assert facts["engine_platform"] == "linux/amd64" and facts["docker"]["arch"] == "amd64"
    assert facts["hostname"] == name and facts["os"].startswith("Debian GNU/Linux 12")
    assert platform not in facts["emulated_platforms"]
    print(f"{name}: {machine} agent ready {bed.ready_after[name]:.1f}s after start; "
          f"qemu RSS {process_rss_bytes(agent.proc.pid) / 2**20:.0f} MiB")


@pytest.mark.parametrize(("name", "constraint"), [
    ("arm64a", "node.platform.arch==arm64"),
    ("armv7a", "node.platform==linux/arm/v7"),
])
def test_service_runs_on_the_arm_host_and_prints_its_machine(
        bed: ArmBed, busybox_image: BuiltImage, name: str, constraint: str) -> None:
    _arch, platform, machine, _qemu = ARM_AGENTS[name]
    bed.wait_ready(name)
    service = f"uname-{name}"
    bed.cluster.create(name=service, image=busybox_image.by_digest(platform),
                       command=["sh", "-c", "uname -m; sleep 3600"], constraints=[constraint])
    svc = bed.cluster.wait_running(service, 1, timeout=90)
    inst = svc["instances"][0]
    assert inst["host_name"] == name and inst["state"] == "running"
    with bed.cluster.api() as c:
        text = wait_for(lambda: _when(machine, c.get(f"/api/v1/services/{service}/logs",
                                                     params={"tail": 5}).text),
                        30, f"`uname -m` of {service}")
    assert f"{service}.1@{name} | {machine}" in text
    bed.cluster.remove(service)


def test_agent_image_runs_as_arm64_container(bed: ArmBed, agent_image: BuiltImage) -> None:
    if shutil.which("docker") is None:
        pytest.skip("the docker CLI is not installed (Debian package docker.io)")
    host = bed.hosts[IMAGE_HOST]
    state = bed.tmp / "agent-image-state"
    state.mkdir()
    t0 = time.monotonic()
    try:
        _docker(host, "run", "-d", "--name", IMAGE_CONTAINER, "--network", "host",
                "-v", f"{host.run_dir}:/run/docker-host", "-v", f"{state}:/var/lib/corral-agent",
                agent_image.by_digest("linux/arm64"),
                "--server", bed.cluster.server.url, "--token", bed.join_token,
                "--docker-host", "unix:///run/docker-host/docker.sock", "--name", IMAGE_AGENT)
        try:
            joined = bed.wait_ready(IMAGE_AGENT, timeout=90)
        except TimeoutError:
            logs = _docker(host, "logs", IMAGE_CONTAINER, check=False)
            raise AssertionError(f"agent image did not join:\n{logs.stdout}{logs.stderr}") from None
        print(f"agent image: ready {time.monotonic() - t0:.1f}s after docker run (pull included)")
        assert joined["platform"] == "linux/arm64"
        assert joined["engine_platform"] == "linux/amd64"
        assert joined["facts"]["platform_mismatch"] is True
        assert joined["facts"]["hostname"] == IMAGE_AGENT
        pid = int(_docker(host, "inspect", "-f", "{{.State.Pid}}", IMAGE_CONTAINER).stdout)
        assert "qemu-aarch64" in os.readlink(f"/proc/{pid}/exe")  # the container's PID 1
        assert b"-m\0corral\0agent" in Path(f"/proc/{pid}/cmdline").read_bytes()
        print(f"agent image: qemu RSS {process_rss_bytes(pid) / 2**20:.0f} MiB")
        assert (state / "credential.json").exists()
    finally:
        _docker(host, "rm", "-f", IMAGE_CONTAINER, check=False)
        with bed.cluster.api() as c:
            c.delete(f"/api/v1/hosts/{IMAGE_AGENT}")


def test_agent_image_index_names_three_platforms(agent_image: BuiltImage, registry: str) -> None:
    repo, tag = agent_image.ref.split("/", 1)[1].rsplit(":", 1)
    host, port = registry.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)

    def get(path: str, accept: str = "*/*") -> Any:
        conn.request("GET", path, headers={"Accept": accept})
        resp = conn.getresponse()
        body = resp.read()
        assert resp.status == 200, (path, resp.status)
        return json.loads(body)

    try:
        index = get(f"/v2/{repo}/manifests/{tag}", OCI_INDEX)
        found = {}
        for desc in index["manifests"]:
            p = desc["platform"]
            name = "/".join(filter(None, [p["os"], p["architecture"], p.get("variant")]))
            manifest = get(f"/v2/{repo}/manifests/{desc['digest']}", OCI_MANIFEST)
            config = get(f"/v2/{repo}/blobs/{manifest['config']['digest']}")
            found[name] = (config["architecture"], config.get("variant"),
                           config["config"]["Entrypoint"], len(manifest["layers"]))
        assert found == {
            "linux/amd64": ("amd64", None, ["/usr/bin/python3.11", "-m", "corral", "agent"], 2),
            "linux/arm64": ("arm64", None, ["/usr/bin/python3.11", "-m", "corral", "agent"], 2),
            "linux/arm/v7": ("arm", "v7", ["/usr/bin/python3.11", "-m", "corral", "agent"], 2),
        }
        assert set(agent_image.digests.values()) == {d["digest"] for d in index["manifests"]}
        latest = get(f"/v2/{repo}/manifests/latest", OCI_INDEX)
        assert latest == index
    finally:
        conn.close()
