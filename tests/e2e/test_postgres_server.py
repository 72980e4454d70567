"""The same server on PostgreSQL: a real agent, a real container, and a server restart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from testbed.cluster import AgentProc, ServerProc, wait_for
from testbed.images import BuiltImage
from tests.e2e.conftest import SERVER_ARGS, Node

pytestmark = [pytest.mark.e2e, pytest.mark.postgres]


def test_server_on_postgres(tmp_path: Path, fresh_postgres_url: str, netns_host_factory: Any, registry: str,
                            busybox_image: BuiltImage) -> None:
    server = ServerProc(tmp_path / "server", extra_args=[*SERVER_ARGS, "--db", fresh_postgres_url]).start()
    host = netns_host_factory("pg1", [server.port, int(registry.rsplit(":", 1)[1])])
    agent = AgentProc(server.url, server.join_token(), tmp_path / "agent", docker_host=host.docker_host,
                      name="pg1", netns=host).start()
    node = Node(host, agent, agent.host_id())
    try:
        with server.client() as c:
            r = c.post("/api/v1/services", json={"name": "pgweb", "image": busybox_image.ref, "replicas": 2,
                                                 "command": ["sleep", "3600"]})
            assert r.status_code == 201, r.text
            wait_for(lambda: c.get("/api/v1/services/pgweb").json()["running"] == 2, 60, "2 running on PG")
        assert len(node.containers("pgweb")) == 2
        server.stop()
        server.start()  # same PostgreSQL database: nothing lost, migrations are a no-op
        with server.client() as c:
            wait_for(lambda: c.get("/api/v1/services/pgweb").json()["running"] == 2, 60, "2 running after restart")
            hosts = c.get("/api/v1/hosts").json()
            assert [h["name"] for h in hosts] == ["pg1"]
            c.delete("/api/v1/services/pgweb")
        wait_for(lambda: node.containers("pgweb") == [], 30, "removed")
    finally:
        agent.stop()
        for ctr in node.containers():
            node.docker.remove(ctr.id)
        server.stop()
