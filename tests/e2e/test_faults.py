"""Faults on the real test bed: agent killed, server gone for a minute, dockerd restarted, host lost.

The rule under test: a host keeps running exactly what it was given, whatever
happens to the link, the agent or the server, and converges when they return.
"""

from __future__ import annotations

import time

import pytest

from corral.agent.runtime.docker import ContainerInfo
from testbed.cluster import wait_for
from testbed.images import BuiltImage
from tests.e2e.conftest import Cluster, Node

pytestmark = pytest.mark.e2e

HOST_PREFIX = "flt"
HOST_COUNT = 2

# exits promptly on SIGTERM, so removals in these tests are quick
LOOP = ["sh", "-c", "trap 'exit 0' TERM; while :; do sleep 1; done"]


def started_at(node: Node, containers: list[ContainerInfo]) -> dict[str, str]:
    return {c.id: node.docker.inspect_container(c.id)["State"]["StartedAt"] for c in containers}


def pinned(cluster: Cluster, name: str, node: Node, image: BuiltImage, replicas: int) -> dict[str, str]:
    cluster.create(name=name, image=image.ref, replicas=replicas, command=LOOP,
                   constraints=[f"node.id=={node.host_id}"])
    cluster.wait_running(name, replicas)
    running = node.containers(name)
    assert len(running) == replicas and all(c.state == "running" for c in running)
    return started_at(node, running)


def test_kill9_agent_keeps_containers_and_the_new_agent_adopts_them(cluster: Cluster, busybox_image: BuiltImage) -> None:
    node = cluster.nodes[0]
    before = pinned(cluster, "steady", node, busybox_image, 2)
    node.agent.kill9()
    time.sleep(3)
    assert started_at(node, node.containers("steady")) == before  # untouched while no agent runs
    node.agent.start()
    cluster.wait_running("steady", 2)
    time.sleep(3)  # a few reconcile passes
    after = node.containers("steady")
    assert started_at(node, after) == before, "the restarted agent must adopt, not recreate or restart"
    assert all(c.state == "running" for c in after)
    cluster.remove("steady")


def test_server_gone_for_a_minute(cluster: Cluster, busybox_image: BuiltImage) -> None:
    node = cluster.nodes[1]
    before = pinned(cluster, "offline", node, busybox_image, 2)
    cluster.server.stop()
    try:
        deadline = time.monotonic() + 60
        restarted_agent = False
        while time.monotonic() < deadline:
            time.sleep(5)
            assert started_at(node, node.containers("offline")) == before, "nothing may stop or restart"
            if not restarted_agent and time.monotonic() > deadline - 40:
                # the agent restarts while the server is away: it runs from its saved desired set
                node.agent.kill9()
                node.agent.start()
                restarted_agent = True
        assert started_at(node, node.containers("offline")) == before
    finally:
        cluster.server.start()
    # converge after the link returns: host ready, statuses fresh, and changes flow again
    wait_for(lambda: all(h["state"] == "ready" for h in cluster.hosts()), 30, "hosts ready again")
    cluster.wait_running("offline", 2)
    assert started_at(node, node.containers("offline")) == before
    with cluster.api() as c:
        c.patch("/api/v1/services/offline", json={"replicas": 3}).raise_for_status()
    cluster.wait_running("offline", 3)
    cluster.remove("offline")


def test_dockerd_restart_converges(cluster: Cluster, busybox_image: BuiltImage) -> None:
    node = cluster.nodes[1]
    cluster.create(name="survivor", image=busybox_image.ref, replicas=2, command=LOOP,
                   constraints=[f"node.id=={node.host_id}"], restart={"condition": "any", "delay": 0.5})
    cluster.wait_running("survivor", 2)
    ids = {c.id for c in node.containers("survivor")}
    node.host.restart_dockerd()  # the engine stops the containers on its way down
    svc = cluster.wait_service("survivor", lambda s: s["running"] == 2 and all(i["restarts"] >= 1 for i in s["instances"]),
                               60, "both restarted by the agent")
    after = node.containers("survivor")
    assert {c.id for c in after} == ids and all(c.state == "running" for c in after)
    assert len(svc["instances"]) == 2
    cluster.remove("survivor")


def test_host_down_after_missed_heartbeats_and_back(cluster: Cluster, busybox_image: BuiltImage) -> None:
    node = cluster.nodes[0]
    pinned(cluster, "lonely", node, busybox_image, 1)
    node.agent.kill9()
    wait_for(lambda: next(h for h in cluster.hosts() if h["id"] == node.host_id)["state"] == "down", 15, "host down")
    assert cluster.service("lonely")["running"] == 0  # nobody vouches for it now
    assert [c.state for c in node.containers("lonely")] == ["running"]  # but it still runs
    node.agent.start()
    wait_for(lambda: next(h for h in cluster.hosts() if h["id"] == node.host_id)["state"] == "ready", 15, "ready")
    cluster.wait_running("lonely", 1)
    cluster.remove("lonely")


def test_agent_restart_with_removed_service_while_server_down(cluster: Cluster, busybox_image: BuiltImage) -> None:
    """A service removed on the server is removed on the host once the agent hears of it, not before."""
    node = cluster.nodes[0]
    pinned(cluster, "goner", node, busybox_image, 1)
    node.agent.kill9()
    cluster.remove("goner")
    time.sleep(2)
    assert [c.state for c in node.containers("goner")] == ["running"]  # no agent: nothing changes
    node.agent.start()
    wait_for(lambda: node.containers("goner") == [], 30, "the container removed after the agent reconnects")
