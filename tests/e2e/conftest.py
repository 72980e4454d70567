"""A real Corral cluster for end-to-end tests.

One `corral server` process on a loopback port, and agents that are real
processes, each inside its own network namespace with its own dockerd (see
testbed.netns); the agents dial 127.0.0.1 in their namespace and reach the
server through that namespace's loopback forwarder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from corral.agent.runtime.docker import ContainerInfo, DockerClient
from corral.model import LABEL_MANAGED, LABEL_SERVICE
from testbed.cluster import AgentProc, ServerProc, wait_for
from testbed.netns import NetnsHost

# Agents these tests start directly stay off the overlay unless a test says otherwise (two
# wireguard-go interfaces of one name on one machine would share a socket path).
os.environ.setdefault("CORRAL_OVERLAY", "off")

# Short intervals so host-down detection takes seconds, not half a minute.
SERVER_ARGS = ["--heartbeat-interval", "1", "--down-after", "4"]


@dataclass
class Node:
    host: NetnsHost
    agent: AgentProc
    host_id: str = ""

    @property
    def docker(self) -> DockerClient:
        return DockerClient(self.host.docker_host)

    def containers(self, service: str | None = None) -> list[ContainerInfo]:
        labels = {LABEL_MANAGED: "1"}
        if service:
            labels[LABEL_SERVICE] = service
        return self.docker.list_containers(labels=labels)


@dataclass
class Cluster:
    server: ServerProc
    nodes: list[Node] = field(default_factory=list)

    def api(self) -> httpx.Client:
        return self.server.client()

    def service(self, name: str) -> dict[str, Any]:
        with self.api() as c:
            r = c.get(f"/api/v1/services/{name}")
            r.raise_for_status()
            return dict(r.json())

    def wait_service(self, name: str, check: Callable[[dict[str, Any]], Any], timeout: float = 60,
                     what: str = "") -> dict[str, Any]:
        last: dict[str, Any] = {}

        def probe() -> Any:
            last.clear()
            last.update(self.service(name))
            return check(last)

        try:
            wait_for(probe, timeout, what or f"service {name}", interval=0.1)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}; last state: {json.dumps(last, indent=1)[:3000]}") from None
        return last

    def wait_running(self, name: str, n: int, timeout: float = 60) -> dict[str, Any]:
        return self.wait_service(name, lambda s: s["running"] == n and len(s["instances"]) == n, timeout,
                                 f"{n} running instances of {name}")

    def create(self, **body: Any) -> dict[str, Any]:
        with self.api() as c:
            r = c.post("/api/v1/services", json=body)
            assert r.status_code == 201, r.text
            return dict(r.json())

    def remove(self, name: str) -> None:
        with self.api() as c:
            c.delete(f"/api/v1/services/{name}")

    def hosts(self) -> list[dict[str, Any]]:
        with self.api() as c:
            return list(c.get("/api/v1/hosts").json())


def start_cluster(tmp: Path, netns_host_factory: Callable[[str, list[int]], NetnsHost], prefix: str,
                  count: int, registry: str, labels: list[dict[str, str]] | None = None,
                  agent_args: list[list[str]] | None = None) -> Cluster:
    server = ServerProc(tmp / "server", extra_args=SERVER_ARGS).start()
    cluster = Cluster(server)
    join = server.join_token()
    registry_port = int(registry.rsplit(":", 1)[1])
    for i in range(count):
        name = f"{prefix}{i + 1}"
        host = netns_host_factory(name, [server.port, registry_port])
        agent = AgentProc(server.url, join, tmp / f"agent-{name}", docker_host=host.docker_host, name=name,
                          labels=(labels or [{}] * count)[i], netns=host,
                          extra_args=(agent_args or [[]] * count)[i]).start()
        cluster.nodes.append(Node(host, agent))
    for node in cluster.nodes:
        node.host_id = node.agent.host_id()
    wait_for(lambda: sum(h["state"] == "ready" for h in cluster.hosts()) == count, 30, f"{count} ready hosts")
    return cluster


def stop_cluster(cluster: Cluster) -> None:
    for node in cluster.nodes:
        node.agent.stop()
        for c in node.containers():
            node.docker.remove(c.id, force=True)
    cluster.server.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, netns_host_factory: Any, registry: str,
            request: pytest.FixtureRequest) -> Iterator[Cluster]:
    prefix = getattr(request.module, "HOST_PREFIX", "e2e")
    count = getattr(request.module, "HOST_COUNT", 3)
    labels = getattr(request.module, "HOST_LABELS", None)
    agent_args = getattr(request.module, "HOST_AGENT_ARGS", None)
    c = start_cluster(tmp_path_factory.mktemp(prefix), netns_host_factory, prefix, count, registry, labels,
                      agent_args)
    try:
        yield c
    finally:
        stop_cluster(c)


ROOT = Path(__file__).resolve().parents[2]


def run_quick_bench(script: str, timeout: float) -> tuple[str, dict[str, Any]]:
    """``bench/SCRIPT --quick --json`` as a user runs it: its output, and the JSON report
    printed after the table."""
    p = subprocess.run([sys.executable, str(ROOT / "bench" / script), "--quick", "--json"],
                       capture_output=True, text=True, timeout=timeout, cwd=ROOT, check=False)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    start = p.stdout.find("\n{\n")
    assert start >= 0, p.stdout[-2000:]
    return p.stdout, dict(json.loads(p.stdout[start:]))
