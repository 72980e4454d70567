"""The agent's report loop: it backs off while the server is unreachable, and an idle host is silent."""

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


class RecordingServer:
    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []

    def call(self, method: str, path: str, body: Any = None, **_: Any) -> Any:
        self.bodies.append(body)
        return {"heartbeat_interval": 0.2}


def test_reports_go_only_on_change_and_facts_as_a_patch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    facts = {"platform": "linux/amd64", "images": ["sha256:1"], "gone": 1}
    monkeypatch.setattr(agent_mod.facts_mod, "collect_facts", lambda *a, **k: dict(facts))
    monkeypatch.setattr(agent_mod, "FACTS_EVERY", 0.3)
    server = RecordingServer()
    agent = agent_mod.Agent(server, FakeDocker(), StateDir(tmp_path), "host-1", {},  # type: ignore[arg-type]
                            heartbeat=0.2)
    t = threading.Thread(target=agent._report_loop, daemon=True)
    t.start()
    time.sleep(1.0)  # several heartbeat intervals and fact refreshes, nothing changes
    assert [set(b) for b in server.bodies] == [{"revision", "facts"}]
    facts["images"] = ["sha256:1", "sha256:2"]
    del facts["gone"]
    time.sleep(0.8)
    agent.stop()
    t.join(5)
    assert len(server.bodies) == 2
    assert server.bodies[1]["facts_patch"] == {"images": ["sha256:1", "sha256:2"], "gone": None}


def test_fake_gpus_are_named_as_such() -> None:
    gpus = agent_mod.fake_gpus(2)
    assert [g["name"] for g in gpus] == ["fake GPU (test bed)"] * 2
    assert len({g["uuid"] for g in gpus}) == 2


def test_in_between_states_wait_for_the_next_change_decisive_ones_go_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agent_mod.facts_mod, "collect_facts", lambda *a, **k: {"platform": "linux/amd64"})
    server = RecordingServer()
    agent = agent_mod.Agent(server, FakeDocker(), StateDir(tmp_path), "host-1", {},  # type: ignore[arg-type]
                            heartbeat=30)
    t = threading.Thread(target=agent._report_loop, daemon=True)
    t.start()
    deadline = time.time() + 5
    while not server.bodies and time.time() < deadline:
        time.sleep(0.01)

    def sent_after(report: Any, *args: Any, **kw: Any) -> tuple[float, list[dict[str, Any]]]:
        before, start = len(server.bodies), time.time()
        report(*args, **kw)
        while len(server.bodies) == before and time.time() < start + 5:
            time.sleep(0.005)
        return time.time() - start, server.bodies[-1].get("instances", [])

    try:
        # starting, then running 0.2 s later: one report, with running
        took, sent = sent_after(lambda: (agent.reconciler._report("a", "starting"), time.sleep(0.2),
                                         agent.reconciler._report("a", "running", container_id="c1")))
        assert [s["state"] for s in sent] == ["running"] and took < 0.2 + agent_mod.HOLD
        # a lone in-between state goes after the hold
        took, sent = sent_after(agent.reconciler._report, "b", "pulling")
        assert [s["state"] for s in sent] == ["pulling"] and agent_mod.HOLD - 0.05 <= took < agent_mod.HOLD + 0.5
        # a failure does not wait
        took, sent = sent_after(agent.reconciler._report, "b", "failed", error="boom")
        assert [s["state"] for s in sent] == ["failed"] and took < agent_mod.HOLD - 0.1
    finally:
        agent.stop()
        t.join(5)


def test_a_desired_set_kept_as_the_server_sent_it_reads_back_the_same(tmp_path: Path) -> None:
    """The agent keeps each desired set as the server's JSON (no second conversion); a restart
    without the server reads back exactly what it parsed, credentials for the pull included."""
    state = StateDir(tmp_path)
    spec = InstanceSpec(id="a", name="web.1.a", service="web", slot=1, image="img", env={"K": "v"},
                        registry_auth={"username": "u", "password": "p", "serveraddress": "r"})
    body = DesiredSet(7, [spec]).to_dict()
    state.save_desired(body)
    assert state.desired() == DesiredSet.from_dict(body) == DesiredSet(7, [spec])
    assert (tmp_path / "desired.json").stat().st_mode & 0o777 == 0o600
