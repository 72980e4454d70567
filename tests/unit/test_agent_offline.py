"""The agent's report loop while the server is unreachable: it backs off, it does not spin."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from corral.agent import agent as agent_mod
from corral.agent.session import Unreachable
from corral.agent.state import StateDir
from corral.model import DesiredSet, InstanceSpec
from tests.unit.fake_docker import FakeDocker


class DeadServer:
    def __init__(self) -> None:
        self.calls = 0

    def call(self, method: str, path: str, body: Any = None, **_: Any) -> Any:
        self.calls += 1
        raise Unreachable("connection refused")


def test_reports_back_off_while_the_server_is_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent_mod.facts_mod, "collect_facts", lambda *a, **k: {"platform": "linux/amd64"})
    state = StateDir(tmp_path)
    spec = InstanceSpec(id="a", name="web.1.a", service="web", slot=1, image="img")
    state.save_desired(DesiredSet(3, [spec]))
    docker = FakeDocker(images={"img"})
    server = DeadServer()
    agent = agent_mod.Agent(server, docker, state, "host-1", {}, heartbeat=1.0)  # type: ignore[arg-type]
    agent.reconciler.run_once(wait=True)  # a status change is pending and cannot be delivered
    t = threading.Thread(target=agent._report_loop, daemon=True)
    t.start()
    time.sleep(2.5)
    agent.stop()
    t.join(5)
    assert 1 <= server.calls <= 4, f"{server.calls} report attempts in 2.5 s"
    # and nothing was stopped meanwhile
    assert [c["state"] for c in docker.containers.values()] == ["running"]
