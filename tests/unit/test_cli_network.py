"""`corral network status` and the overlay section of `corral host inspect`.

Most tests run the CLI against a small fake of the two endpoints (an
``httpx.MockTransport`` plugged in through ``corral.cli.session.hooks``, as in
``test_cli.py``), so every peer state can be set exactly.  The last tests run it
against the real server in process (``api_harness``, as ``test_cli_lifecycle.py``
does), with agents' overlay reports posted as agents post them, so the CLI reads
the shapes the server really sends.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from corral.cli import client as client_module
from corral.cli import config, render, session
from corral.cli.app import app
from tests.unit.api_harness import Harness, harness
from tests.unit.test_cli import ADMIN, CA, URL, make_host

NOW = time.time()
RELAY_REASON = ("ov3 and ov4 cannot dial each other (ov3 is behind NAT, ov4 is behind NAT); "
                "their traffic goes through ov1")


def peer(state: str, rtt: float | None = None, via: str | None = None,
         handshake_ago: float | None = 5.0) -> dict[str, Any]:
    shook = None if handshake_ago is None else time.time() - handshake_ago
    return {"state": state, "handshake_at": shook, "rtt_ms": rtt, "via": via, "endpoint": None}


def net_host(name: str, n: int, **extra: Any) -> dict[str, Any]:
    row = {
        "id": f"{name}-id", "name": name, "state": "ready", "subnet": f"10.42.{n}.0/24",
        "gateway": f"10.42.{n}.1", "overlay": True, "endpoint": f"192.0.2.{n}:51820",
        "backend": "wireguard-go", "error": None, "repairs": 0, "last_repair": None,
        "behind_nat": False, "reachable": True, "relaying_for": [], "relays": [], "peers": {},
    }
    row.update(extra)
    return row


def relay_note(target: str, n: int) -> dict[str, Any]:
    return {"target_id": f"{target}-id", "target_name": target, "relay_id": "ov1-id",
            "relay_name": "ov1", "reason": RELAY_REASON, "gateway": f"10.42.{n}.1"}


def healthy_network() -> dict[str, Any]:
    """ov1 and ov2 reachable; ov3 and ov4 behind NAT, relayed through ov1."""
    return {"cluster_cidr": "10.42.0.0/16", "host_prefix": 24, "dns_generation": 4, "hosts": [
        net_host("ov1", 1, relaying_for=["ov3", "ov4"], peers={
            "ov2": peer("up", 12.3), "ov3": peer("up", 0.4), "ov4": peer("up", 1.6)}),
        net_host("ov2", 2, peers={"ov1": peer("up", 11.6), "ov3": peer("up", 3.0),
                                  "ov4": peer("up", 2.5)}),
        net_host("ov3", 3, endpoint=None, behind_nat=True, reachable=False,
                 relays=[relay_note("ov4", 4)],
                 peers={"ov1": peer("up", 0.5), "ov2": peer("up", 3.1),
                        "ov4": peer("relayed", 2.0, via="ov1")}),
        net_host("ov4", 4, endpoint=None, behind_nat=True, reachable=False,
                 relays=[relay_note("ov3", 3)],
                 peers={"ov1": peer("up", 1.5), "ov2": peer("up", 2.4),
                        "ov3": peer("relayed", 2.1, via="ov1")}),
    ]}


def inspected_host() -> dict[str, Any]:
    """ov3 as ``GET /hosts/ov3`` shows it: behind NAT, reaching ov4 through ov1."""
    return make_host(
        "ov3", subnet="10.42.3.0/24",
        overlay={
            "enabled": True, "interface": "corral0", "backend": "wireguard-go",
            "public_key": "A" * 43 + "=", "endpoint": None, "nat": True, "subnet": "10.42.3.0/24",
            "error": None, "repairs": 2,
            "last_repair": {"at": time.time() - 300, "what": "interface",
                            "reason": "corral0 was gone; wireguard-go restarted"},
            "dns": {"records": 3},
            "peers": {
                "ov1-id": {"name": "ov1", "state": "up", "endpoint": "192.0.2.1:51820",
                           "via": None, "handshake_at": time.time() - 3, "rtt_ms": 0.5},
                "ov4-id": {"name": "ov4", "state": "relayed", "endpoint": None, "via": "ov1",
                           "handshake_at": None, "rtt_ms": 2.0},
            },
        },
        mesh={"behind_nat": True, "reachable": False, "relays": [relay_note("ov4", 4)],
              "relaying_for": []},
    )


class FakeNetworkServer:
    """``GET /network`` and ``GET /hosts/{ref}``, with the auth and 404 the real one has."""

    def __init__(self) -> None:
        self.network = healthy_network()
        self.hosts = {"ov3": inspected_host()}
        self.paths: list[str] = []

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/api/v1")
        self.paths.append(path)
        if path == "/ca":
            return httpx.Response(200, text=CA)
        if request.headers.get("authorization") != f"Bearer {ADMIN}":
            return httpx.Response(401, json={"detail": "invalid or revoked token"})
        if request.method == "GET" and path == "/network":
            return httpx.Response(200, json=self.network)
        match = re.fullmatch(r"/hosts/([^/]+)", path)
        if request.method == "GET" and match:
            host = self.hosts.get(match.group(1))
            if host is None:
                return httpx.Response(404, json={"detail": f"host {match.group(1)} not found"})
            return httpx.Response(200, json=host)
        return httpx.Response(404, json={"detail": f"no route {request.method} {path}"})


@pytest.fixture
def api(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeNetworkServer:
    """A fake server and a CLI logged in to it."""
    path = tmp_path / "cfg" / "config.json"
    monkeypatch.setenv("CORRAL_CONFIG", str(path))
    monkeypatch.delenv("CORRAL_URL", raising=False)
    monkeypatch.delenv("CORRAL_TOKEN", raising=False)
    monkeypatch.setattr(client_module, "_CA_CACHE", {})
    server = FakeNetworkServer()
    monkeypatch.setattr(session.hooks, "transport", httpx.MockTransport(server.handle))
    monkeypatch.setattr(session.hooks, "fetch_ca", lambda url: CA)
    config.save(config.Config(URL, ADMIN, CA), path)
    return server


def corral(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def run(code: int, *args: str) -> Any:
    result = corral(*args)
    assert result.exit_code == code, f"exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def matrix(out: str) -> dict[str, dict[str, str]]:
    """The peer matrix printed by ``network status``: row name -> column name -> cell."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("peers")) + 1
    header = lines[start]
    names = header.split()
    starts = [header.index(f" {n}") + 1 for n in names]  # cells are left-aligned under names
    rows: dict[str, dict[str, str]] = {}
    for line in lines[start + 1:]:
        if not line.strip():
            break
        row = line.split()[0]
        bounds = [*starts, len(line) + 1]
        rows[row] = {n: line[bounds[i]:bounds[i + 1]].strip() for i, n in enumerate(names)}
    return rows


# -- the peer matrix, cell by cell ---------------------------------------------


@pytest.mark.parametrize(("cell", "text", "style"), [
    (peer("up", 12.3), "up 12ms", "green"),
    (peer("up", 1.6), "up 1.6ms", "green"),
    (peer("up", None), "up", "green"),
    (peer("relayed", 2.0, via="ov1"), "via ov1", "cyan"),
    (peer("relayed", None, via=None), "relayed", "cyan"),
    (peer("stale", None, handshake_ago=250), "stale 4m", "yellow"),
    (peer("stale", None, handshake_ago=None), "stale", "yellow"),
    (peer("new", None, handshake_ago=None), "new", "yellow"),
    (peer("down", None), "down", "red"),
])
def test_peer_cells_say_the_state_shortly_in_its_colour(
        cell: dict[str, Any], text: str, style: str) -> None:
    rendered = render.peer_cell(cell, NOW)
    assert (rendered.plain, str(rendered.style)) == (text, style)


def test_a_peer_not_reported_is_a_blank_cell() -> None:
    assert render.peer_cell(None).plain == ""


def test_network_status_prints_cidr_hosts_matrix_and_relays(api: FakeNetworkServer) -> None:
    net = api.network
    net["hosts"][1]["peers"]["ov3"] = peer("stale", None, handshake_ago=250)
    net["hosts"][1]["peers"]["ov4"] = peer("new", None, handshake_ago=None)
    net["hosts"][2]["peers"]["ov2"] = peer("down")
    del net["hosts"][3]["peers"]["ov2"]
    out = run(1, "network", "status").stdout
    assert out.splitlines()[0].startswith("cluster 10.42.0.0/16")
    assert "(a /24 per host)" in out
    for row in ("ov1   ready  10.42.1.0/24  192.0.2.1:51820  reachable   wireguard-go  0",
                "ov3   ready  10.42.3.0/24  -                behind NAT  wireguard-go  0"):
        assert row in out
    cells = matrix(out)
    assert list(cells) == ["ov1", "ov2", "ov3", "ov4"]
    assert cells["ov1"] == {"ov1": "—", "ov2": "up 12ms", "ov3": "up 0.4ms", "ov4": "up 1.6ms"}
    assert cells["ov2"] == {"ov1": "up 12ms", "ov2": "—", "ov3": "stale 4m", "ov4": "new"}
    assert cells["ov3"] == {"ov1": "up 0.5ms", "ov2": "down", "ov3": "—", "ov4": "via ov1"}
    assert cells["ov4"] == {"ov1": "up 1.5ms", "ov2": "", "ov3": "via ov1", "ov4": "—"}
    # one line for the pair, though both hosts carry the note
    relay_lines = [line for line in out.splitlines() if "↔" in line]
    assert relay_lines == [f"ov3 ↔ ov4: {RELAY_REASON}"]


def test_matrix_colours_each_state(api: FakeNetworkServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.delenv("NO_COLOR", raising=False)
    api.network["hosts"][1]["peers"].update(ov3=peer("stale", handshake_ago=250), ov4=peer("down"))
    out = run(1, "network", "status").stdout
    for code, text in (("32", "up 12ms"), ("36", "via ov1"), ("33", "stale 4m"), ("31", "down")):
        assert f"\x1b[{code}m{text}" in out, text


def test_all_up_exits_0(api: FakeNetworkServer) -> None:
    result = run(0, "network", "status")
    assert result.stderr == ""


def test_a_down_peer_exits_1_and_says_which(api: FakeNetworkServer) -> None:
    api.network["hosts"][0]["peers"]["ov2"] = peer("down")
    result = run(1, "network", "status")
    assert "error: unhealthy: ov1 → ov2: down" in result.stderr
    assert matrix(result.stdout)["ov1"]["ov2"] == "down"  # the view is still printed


def test_a_stale_peer_or_a_host_error_exits_1(api: FakeNetworkServer) -> None:
    api.network["hosts"][3]["peers"]["ov1"] = peer("stale", handshake_ago=400)
    api.network["hosts"][2]["error"] = "wireguard-go exited; restarting it"
    err = run(1, "network", "status").stderr
    assert "unhealthy: ov3: wireguard-go exited; restarting it" in err
    assert "unhealthy: ov4 → ov1: stale 6m" in err


def test_new_and_relayed_peers_are_healthy(api: FakeNetworkServer) -> None:
    api.network["hosts"][0]["peers"]["ov2"] = peer("new", handshake_ago=None)
    run(0, "network", "status")


def test_hosts_that_are_not_ready_do_not_fail_the_check(api: FakeNetworkServer) -> None:
    hosts = api.network["hosts"]
    hosts[1]["state"] = "down"  # ov2's stale report and others' view of ov2 do not count
    hosts[1]["error"] = "agent gone"
    hosts[1]["peers"]["ov1"] = peer("down")
    hosts[0]["peers"]["ov2"] = peer("stale", handshake_ago=900)
    run(0, "network", "status")
    hosts[0]["peers"]["ov3"] = peer("down")  # but two ready hosts do
    run(1, "network", "status")


def test_two_hosts_no_host_can_relay_between_fail_the_check(api: FakeNetworkServer) -> None:
    why = ("no reachable host can relay between ov3 and ov4 (ov3 is behind NAT, ov4 is behind "
           "NAT); the reachable hosts do not relay")
    for host in api.network["hosts"][2:]:
        for note in host["relays"]:
            note.update(relay_id=None, relay_name=None, reason=why, gateway=None)
        host["peers"] = {k: v for k, v in host["peers"].items() if k not in ("ov3", "ov4")}
    api.network["hosts"][0]["relaying_for"] = []
    result = run(1, "network", "status")
    assert f"ov3 ↔ ov4: {why}" in result.stdout
    assert f"unhealthy: ov3 ↔ ov4: {why}" in result.stderr
    assert matrix(result.stdout)["ov3"]["ov4"] == ""


def test_network_status_json_is_the_api_answer(api: FakeNetworkServer) -> None:
    result = run(0, "network", "status", "-o", "json")
    assert json.loads(result.stdout) == api.network
    assert result.stderr == ""
    api.network["hosts"][0]["peers"]["ov2"] = peer("down")
    result = run(1, "network", "status", "--output", "json")  # still a health check
    assert json.loads(result.stdout) == api.network
    assert "ov1 → ov2: down" in result.stderr


def test_network_status_with_no_overlay_and_no_hosts(api: FakeNetworkServer) -> None:
    api.network = {"cluster_cidr": None, "host_prefix": None, "dns_generation": 0, "hosts": []}
    out = run(0, "network", "status").stdout
    assert "cluster - (no overlay configured)" in out and "no hosts" in out


def test_a_host_without_overlay_shows_dashes_and_an_empty_row(api: FakeNetworkServer) -> None:
    api.network["hosts"].append(net_host(
        "edge9", 9, overlay=False, endpoint=None, backend=None, behind_nat=None, reachable=None))
    out = run(0, "network", "status").stdout
    assert re.search(r"edge9 +ready +10\.42\.9\.0/24 +- +- +\(no overlay\) +0 +-", out)
    assert matrix(out)["edge9"] == {"ov1": "", "ov2": "", "ov3": "", "ov4": "", "edge9": "—"}


def test_network_help_documents_the_exit_code() -> None:
    help_text = " ".join(run(0, "network", "status", "--help").stdout.split())
    assert "Exit status" in help_text and "health check" in help_text
    assert "network" in run(0, "--help").stdout


def test_network_status_needs_a_login(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CORRAL_CONFIG", str(tmp_path / "none.json"))
    monkeypatch.delenv("CORRAL_URL", raising=False)
    monkeypatch.delenv("CORRAL_TOKEN", raising=False)
    assert "not logged in" in run(1, "network", "status").stderr


# -- host inspect's overlay section ----------------------------------------------


def test_host_inspect_shows_the_overlay_section(api: FakeNetworkServer) -> None:
    out = " ".join(run(0, "host", "inspect", "ov3").stdout.replace("│", " ").split())
    assert "host ov3" in out and "Docker 20.10.24" in out  # the host panel as before
    for text in (
        "Subnet 10.42.3.0/24 (gateway and DNS 10.42.3.1)",
        "Endpoint -",
        "Backend wireguard-go on corral0",
        "NAT behind NAT (it dials out and keeps its tunnels open with keepalives)",
        # which relay, for which target, and why
        "Relays to ov4 through ov1: ov3 and ov4 cannot dial each other "
        "(ov3 is behind NAT, ov4 is behind NAT)",
        "Relays for -",
        "Peers ov1 up 0.5ms, ov4 via ov1",
        "Repairs 2",
        "interface: corral0 was gone; wireguard-go restarted",
        "(5m ago)",
    ):
        assert text in out, text
    assert "Error" not in out


def test_host_inspect_of_the_relay_names_whom_it_relays_for(api: FakeNetworkServer) -> None:
    api.hosts["ov1"] = make_host(
        "ov1", subnet="10.42.1.0/24",
        overlay={"backend": "kernel", "interface": "corral0", "public_key": "B" * 43 + "=",
                 "endpoint": "192.0.2.1:51820", "repairs": 0, "peers": {}},
        mesh={"behind_nat": False, "reachable": True, "relays": [], "relaying_for": ["ov3", "ov4"]})
    out = " ".join(run(0, "host", "inspect", "ov1").stdout.replace("│", " ").split())
    assert "NAT reachable (peers dial its endpoint)" in out
    assert "Relays none (it reaches every peer directly)" in out
    assert "Relays for ov3, ov4 (they cannot dial each other)" in out
    assert "Endpoint 192.0.2.1:51820" in out and "Last repair" not in out


def test_host_inspect_without_overlay(api: FakeNetworkServer) -> None:
    api.hosts["edge9"] = make_host("edge9", subnet=None, overlay=None, mesh=None)
    out = " ".join(run(0, "host", "inspect", "edge9").stdout.replace("│", " ").split())
    assert "host edge9" in out and "Docker 20.10.24" in out
    assert "Subnet none assigned" in out
    assert "Overlay no report from the agent" in out
    for absent in ("Endpoint", "Relays", "Repairs", "None", "null"):
        assert absent not in out, absent


def test_host_inspect_with_a_refused_report_shows_why(api: FakeNetworkServer) -> None:
    api.hosts["edge9"] = make_host(
        "edge9", subnet="10.42.9.0/24", mesh=None,
        overlay={"error": "overlay report refused: malformed WireGuard public key"})
    out = " ".join(run(0, "host", "inspect", "edge9").stdout.replace("│", " ").split())
    assert "Mesh not in the mesh plan" in out
    assert "Error overlay report refused: malformed WireGuard public key" in out


def test_host_inspect_from_an_older_server_is_unchanged(api: FakeNetworkServer) -> None:
    api.hosts["old"] = make_host("old")
    out = run(0, "host", "inspect", "old").stdout
    assert "overlay" not in out and "Subnet" not in out


def test_host_inspect_json_is_unchanged(api: FakeNetworkServer) -> None:
    data = json.loads(run(0, "host", "inspect", "ov3", "-o", "json").stdout)
    assert data == api.hosts["ov3"]


def test_renderers_survive_missing_fields() -> None:
    import io

    from rich.console import Console

    console = Console(file=io.StringIO(), width=80)
    console.print(render.network_view({}))
    console.print(render.network_view({"hosts": [{}], "cluster_cidr": "10.42.0.0/16"}))
    console.print(render.network_view({"hosts": [{"name": "a", "peers": {"b": {}},
                                                  "relays": [{}]}]}))
    console.print(render.host_panel({"overlay": {}, "mesh": {"relays": [{}]}, "subnet": "bad"}))
    console.print(render.host_panel({"overlay": {"last_repair": {}, "peers": {"x": None}}}))
    assert render.network_problems({}) == []


# -- against the real server ---------------------------------------------------------


def key(n: int) -> str:
    return base64.b64encode(bytes([n]) * 32).decode()


@pytest.fixture
def h(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Harness]:
    with harness(tmp_path / "server") as hh:
        monkeypatch.setenv("CORRAL_URL", "https://corral.test:7443")
        monkeypatch.setenv("CORRAL_TOKEN", hh.admin)
        monkeypatch.setenv("CORRAL_CONFIG", str(tmp_path / "cli.json"))
        monkeypatch.setattr(client_module, "_CA_CACHE", {})
        monkeypatch.setattr(session.hooks, "transport", hh.client._transport)
        monkeypatch.setattr(session.hooks, "fetch_ca", lambda url: hh.state.ca_pem)
        yield hh


def report_overlays(h: Harness, peer_state: str = "up") -> dict[str, str]:
    """Four agents: ov1 and ov2 reachable, ov3 and ov4 behind NAT; each reports its peers."""
    hosts = {f"ov{i}": h.register(f"ov{i}") for i in range(1, 5)}
    ids = {name: host_id for name, (host_id, _) in hosts.items()}
    for i, (name, (_, cred)) in enumerate(hosts.items(), start=1):
        nat = name in ("ov3", "ov4")
        peers = {}
        for other, other_id in ids.items():
            if other == name:
                continue
            relayed = nat and other in ("ov3", "ov4")
            state = "relayed" if relayed else peer_state if (name, other) == ("ov1", "ov2") else "up"
            peers[other_id] = {"name": other, "state": state, "via": "ov1" if relayed else None,
                               "endpoint": None, "handshake_at": None if relayed else int(time.time()) - 5,
                               "rtt_ms": 1.2}
        report = {"enabled": True, "interface": "corral0", "backend": "wireguard-go",
                  "public_key": key(i), "endpoint": None if nat else f"192.0.2.{i}:51820",
                  "nat": nat, "error": None, "repairs": 0, "last_repair": None, "peers": peers}
        r = h.client.post("/api/v1/agent/status", json={"facts": {"hostname": name, "overlay": report}},
                          headers={"Authorization": f"Bearer {cred}"})
        assert r.status_code == 200, r.text
    h.state.overlay.refresh()  # what the server's overlay loop does within a quarter second
    return ids


def test_network_status_against_the_real_server(h: Harness) -> None:
    report_overlays(h)
    result = run(0, "network", "status")
    out = result.stdout
    assert out.startswith("cluster 10.42.0.0/16")
    cells = matrix(out)
    assert cells["ov1"]["ov2"] == "up 1.2ms" and cells["ov3"]["ov4"] == "via ov1"
    assert cells["ov4"]["ov3"] == "via ov1" and cells["ov2"]["ov2"] == "—"
    assert re.search(r"ov3 +ready +10\.42\.\d+\.0/24 +- +behind NAT +wireguard-go", out)
    relays = [line for line in out.splitlines() if "↔" in line]
    assert len(relays) == 1 and relays[0].startswith("ov3 ↔ ov4: ")
    assert relays[0].endswith("their traffic goes through ov1")


def test_network_status_fails_on_a_down_peer_against_the_real_server(h: Harness) -> None:
    report_overlays(h, peer_state="down")
    assert "unhealthy: ov1 → ov2: down" in run(1, "network", "status").stderr


def test_host_inspect_against_the_real_server(h: Harness) -> None:
    report_overlays(h)
    out = " ".join(run(0, "host", "inspect", "ov4").stdout.replace("│", " ").split())
    assert "NAT behind NAT" in out
    assert "Relays to ov3 through ov1: ov3 and ov4 cannot dial each other" in out
    assert "Peers ov1 up 1.2ms, ov2 up 1.2ms, ov3 via ov1" in out
    out = " ".join(run(0, "host", "inspect", "ov1").stdout.replace("│", " ").split())
    assert "Relays for ov3, ov4" in out and "NAT reachable" in out
