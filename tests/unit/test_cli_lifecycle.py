"""`corral stack …`, `service update|rollback` and `events` against the real API in process.

The CLI's httpx client is given the in-process server's transport (the FastAPI
TestClient's), so these commands exercise the real server code, store and
controllers; only the sockets are left out.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from corral.cli import lifecycle, session
from corral.cli.app import app
from tests.unit.api_harness import Harness, harness
from tests.unit.test_api_lifecycle import Agents

IMG = "127.0.0.1:5000/corral/busybox:1"
STACK = """
services:
  web:
    image: ${IMAGE:-127.0.0.1:5000/corral/busybox:1}
    command: ["sleep", "1d"]
    deploy:
      replicas: 2
      update_config: {parallelism: 1, order: start-first}
  kv:
    image: 127.0.0.1:5000/corral/busybox:1
    command: ["sleep", "1d"]
    cap_add: [NET_ADMIN]
"""


@pytest.fixture
def h(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Harness]:
    with harness(tmp_path / "server") as hh:
        monkeypatch.setenv("CORRAL_URL", "https://corral.test:7443")
        monkeypatch.setenv("CORRAL_TOKEN", hh.admin)
        monkeypatch.setenv("CORRAL_CONFIG", str(tmp_path / "cli.json"))
        monkeypatch.setattr(session.hooks, "transport", hh.client._transport)
        monkeypatch.setattr(session.hooks, "fetch_ca", lambda url: hh.state.ca_pem)
        yield hh


def corral(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(app, list(args), env=env, catch_exceptions=False)


def test_stack_deploy_ls_services_ps_rm(h: Harness, tmp_path: Path) -> None:
    Agents(h)
    compose = tmp_path / "compose.yaml"
    compose.write_text(STACK)
    r = corral("stack", "deploy", "-c", str(compose), "--detach", "shop")
    assert r.exit_code == 0, r.output
    assert "created: shop_web, shop_kv" in r.output
    assert "services.kv.cap_add is not supported" in r.output
    r = corral("stack", "deploy", "-c", str(compose), "--detach", "shop")
    assert "unchanged: shop_web, shop_kv" in r.output
    r = corral("stack", "ls")
    assert "shop" in r.output and r.exit_code == 0
    assert "shop_web" in corral("stack", "services", "shop").output
    assert corral("stack", "ps", "shop").output.count("shop_") >= 3
    r = corral("stack", "rm", "shop")
    assert r.exit_code == 0 and "stack shop removed" in r.output
    assert corral("stack", "ls", "-o", "json").output.strip() == "[]"


def test_a_bad_compose_file_is_refused_with_file_and_key(h: Harness, tmp_path: Path) -> None:
    compose = tmp_path / "compose.yaml"
    compose.write_text("services:\n  web:\n    image: x\n    deploy:\n      replicas: three\n")
    r = corral("stack", "deploy", "-c", str(compose), "shop")
    assert r.exit_code == 1
    assert "compose.yaml" in r.output and "services.web.deploy.replicas" in r.output
    assert h.state.store.list_services() == []


def test_service_update_watches_the_rollout_to_completion(h: Harness) -> None:
    agents = Agents(h)
    corral("run", "--detach", "--name", "web", "--replicas", "2", IMG, "sleep", "1d")
    agents.report()
    stop = threading.Event()

    def act_as_agents() -> None:  # the rollout moves on as "agents" report the new instances running
        while not stop.wait(0.3):
            agents.report()

    t = threading.Thread(target=act_as_agents, daemon=True)
    t.start()
    try:
        r = corral("service", "update", "web", "--env", "V=2", "--update-parallelism", "1")
    finally:
        stop.set()
        t.join(5)
    assert r.exit_code == 0, r.output
    assert "rolling update started" in r.output and "completed" in r.output
    svc = h.client.get("/api/v1/services/web", headers=h.as_admin()).json()
    assert svc["env"] == {"V": "2"} and svc["update_config"]["parallelism"] == 1
    r = corral("service", "rollback", "web", "--detach")
    assert r.exit_code == 0 and "rolling back" in r.output


def test_service_update_without_changes_is_a_usage_error(h: Harness) -> None:
    Agents(h, 1)
    corral("run", "--detach", "--name", "web", IMG)
    r = CliRunner().invoke(app, ["service", "update", "web"])
    assert r.exit_code == 2 and "nothing to change" in r.output


def test_events_no_follow_and_filters(h: Harness) -> None:
    Agents(h, 1)
    corral("run", "--detach", "--name", "web", IMG)
    r = corral("events", "--no-follow", "--since", "1h", "--type", "service")
    assert r.exit_code == 0
    assert " service created web" in r.output and " host " not in r.output
    r = CliRunner().invoke(app, ["events", "--no-follow", "--since", "soon"])
    assert r.exit_code == 2 and "expected e.g." in r.output


def test_parse_since() -> None:
    assert lifecycle.parse_since("10m", 1000.0) == 400.0
    assert lifecycle.parse_since("1700000000", 0) == 1700000000.0


def test_rollout_progress_notes() -> None:
    assert lifecycle.rollout_progress({"update": {"state": "updating", "updated": 1, "total": 4, "batch": 2}})[:3] \
        == (1, 4, "updating, batch of 2")
    done = lifecycle.rollout_progress({"update": {"state": "completed"}, "running": 4, "desired": 4})
    assert done == (4, 4, "completed", True)
    paused = lifecycle.rollout_progress({"update": {"state": "paused", "message": "instance 1 failed"}})
    assert paused[3] and "instance 1 failed" in paused[2]
