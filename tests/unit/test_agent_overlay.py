"""corral.agent.overlay.OverlayManager against a fake WireGuard, a fake Docker and a fake clock.

The manager's DNS server is real: it binds the plan's gateway (a loopback address here) on a
free port (``dns_port=0``).  ``probe_all`` is replaced by :class:`Probes`, which says which
peers answer; one test probes the real DNS server with the real ``probe_all``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from corral.agent import overlay
from corral.agent.overlay import (
    CHECK_EVERY,
    CONVERGE_EVERY,
    DETAIL_EVERY,
    REPAIR_GAP,
    STALE_AFTER,
    OverlayConfig,
    OverlayManager,
)
from corral.agent.runtime.docker import ContainerNetwork, DockerError
from corral.agent.wireguard import (
    EnsureResult,
    InterfaceStatus,
    Peer,
    PeerChanges,
    PeerStatus,
    WireGuardError,
)
from corral.net import mesh

REAL_PROBE_ALL = overlay.probe_all
T0 = 1_000_000.0


def key(n: int) -> str:
    return base64.b64encode(hashlib.sha256(f"k{n}".encode()).digest()).decode()


OWN, KA, KB, KC = key(0), key(1), key(2), key(3)
SUBNET, GATEWAY, CLUSTER = "127.0.0.0/24", "127.0.0.1", "127.0.0.0/16"


# -- fakes ---------------------------------------------------------------------------------


class FakeWireGuard:
    """The WireGuard calls OverlayManager makes, recorded; a little state for status()."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.key_error: Exception | None = None
        self.broken: str | None = None  # status() says the interface does not work (until rebuilt)
        self.handshakes: dict[str, int] = {}  # peer key -> latest handshake (epoch seconds)
        self.seen: dict[str, str] = {}  # peer key -> endpoint WireGuard saw its packets come from
        self.peers: list[Peer] = []

    def names(self) -> list[str]:
        return [c[0] for c in self.calls]

    def ensure_private_key(self, path: Path) -> str:
        self.calls.append(("ensure_private_key", path))
        if self.key_error is not None:
            raise self.key_error
        return OWN

    def ensure_interface(self, name: str, address_cidr: str, listen_port: int, key_path: Path,
                         mtu: int | None = None) -> EnsureResult:
        self.calls.append(("ensure_interface", name, address_cidr, listen_port, key_path, mtu))
        created = self.broken is not None
        self.broken = None
        return EnsureResult(name, "userspace", created, OWN)

    def status(self, name: str) -> InterfaceStatus:
        self.calls.append(("status", name))
        peers = tuple(PeerStatus(p.public_key, self.seen.get(p.public_key, p.endpoint), tuple(p.allowed_ips),
                                 self.handshakes.get(p.public_key, 0), 0, 0, p.persistent_keepalive)
                      for p in self.peers)
        if self.broken is not None:
            return InterfaceStatus(name, present=False, error=self.broken)
        return InterfaceStatus(name, present=True, backend="userspace", daemon_answers=True, up=True,
                               public_key=OWN, peers=peers)

    def set_peers(self, name: str, peers: list[Peer]) -> PeerChanges:
        peers = list(peers)
        self.calls.append(("set_peers", name, peers))
        self.peers = peers
        return PeerChanges()

    def set_routes(self, name: str, subnets: list[str]) -> tuple[list[str], list[str]]:
        self.calls.append(("set_routes", name, list(subnets)))
        return [], []

    def enable_ip_forwarding(self) -> None:
        self.calls.append(("enable_ip_forwarding",))

    def allow_forwarding(self, overlay_if: str, bridge: str) -> int:
        self.calls.append(("allow_forwarding", overlay_if, bridge))
        return 0

    def exempt_from_masquerade(self, source: str, destination: str) -> bool:
        self.calls.append(("exempt_from_masquerade", source, destination))
        return False

    def remove_interface(self, name: str) -> bool:
        self.calls.append(("remove_interface", name))
        return True

    def disallow_forwarding(self, overlay_if: str, bridge: str) -> int:
        self.calls.append(("disallow_forwarding", overlay_if, bridge))
        return 0

    def remove_masquerade_exemption(self, source: str, destination: str) -> bool:
        self.calls.append(("remove_masquerade_exemption", source, destination))
        return True


class FakeDocker:
    """The network calls of corral.agent.runtime.docker.DockerClient, and its ``overlay``."""

    def __init__(self) -> None:
        self.networks: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[Any, ...]] = []
        self.overlay: ContainerNetwork | None = None

    def inspect_network(self, name: str) -> dict[str, Any] | None:
        return self.networks.get(name)

    def create_bridge_network(self, name: str, subnet: str, gateway: str, bridge: str,
                              labels: dict[str, str] | None = None, mtu: int | None = None) -> str:
        self.calls.append(("create", name, subnet, gateway, bridge, labels, mtu))
        self.networks[name] = {"Name": name, "IPAM": {"Config": [{"Subnet": subnet, "Gateway": gateway}]},
                               "Containers": {}}
        return "n1"

    def remove_network(self, name: str) -> None:
        self.calls.append(("remove", name))
        self.networks.pop(name, None)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class Probes:
    """Stands in for overlay.probe_all: ``answering`` host id -> round trip (seconds)."""

    def __init__(self) -> None:
        self.answering: dict[str, float] = {}
        self.calls: list[tuple[dict[str, str], int]] = []

    def __call__(self, gateways: dict[str, str], port: int, timeout: float = 1.0) -> dict[str, float]:
        self.calls.append((dict(gateways), port))
        return {h: rtt for h, rtt in self.answering.items() if h in gateways}


class NoWait:
    """The manager's wake event, without the wait."""

    def wait(self, timeout: float | None = None) -> bool:
        return True

    def set(self) -> None:
        pass

    def clear(self) -> None:
        pass


class StopAfter:
    """A stop event that is set after ``n`` passes of the run loop."""

    def __init__(self, n: int) -> None:
        self.left = n

    def is_set(self) -> bool:
        self.left -= 1
        return self.left < 0


@dataclass
class Env:
    tmp: Path
    wg: FakeWireGuard
    docker: FakeDocker
    clock: Clock
    probes: Probes
    changes: list[dict[str, Any]] = field(default_factory=list)
    managers: list[OverlayManager] = field(default_factory=list)

    def manager(self, state_dir: Path | None = None, **config: Any) -> OverlayManager:
        config = {"dns_port": 0, "endpoint": "10.0.0.5", **config}
        holder: list[OverlayManager] = []
        m = OverlayManager(self.docker, self.wg, OverlayConfig(**config), state_dir or self.tmp,  # type: ignore[arg-type]
                           on_change=lambda: self.changes.append(holder[0].report()), clock=self.clock)
        holder.append(m)
        m._wake = NoWait()  # type: ignore[assignment]
        self.managers.append(m)
        return m


def run(m: OverlayManager, passes: int = 1) -> None:
    """``passes`` turns of the agent's overlay loop."""
    m.run(StopAfter(passes))  # type: ignore[arg-type]


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    probes = Probes()
    monkeypatch.setattr(overlay, "probe_all", probes)
    e = Env(tmp_path, FakeWireGuard(), FakeDocker(), Clock(), probes)
    yield e
    for m in e.managers:
        m.close()


def peer_entry(host_id: str, name: str, public_key: str, subnet: str, endpoint: str | None,
               keepalive: int | None, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"host_id": host_id, "name": name, "public_key": public_key, "endpoint": endpoint,
            "allowed_ips": [subnet, *extra], "keepalive": keepalive,
            "gateway": subnet.rsplit(".", 1)[0] + ".1"}


def make_plan(digest: str = "d1", *, relaying_for: list[str] | None = None,
              peers: list[dict[str, Any]] | None = None, relays: list[dict[str, Any]] | None = None,
              subnet: str = SUBNET, gateway: str = GATEWAY) -> dict[str, Any]:
    if peers is None:
        peers = [peer_entry("a", "alpha", KA, "127.0.1.0/24", "203.0.113.7:51820", 25, ("127.0.3.0/24",)),
                 peer_entry("b", "beta", KB, "127.0.2.0/24", None, None)]
    return {"digest": digest, "cluster_cidr": CLUSTER, "subnet": subnet, "gateway": gateway, "keepalive": 25,
            "peers": peers, "relays": relays or [], "relaying_for": relaying_for or [],
            "behind_nat": False, "reachable": True}


def dns_query(port: int, name: str, host: str = GATEWAY) -> list[str]:
    """The A records the DNS server on host:port gives for ``name``."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        s.sendto(overlay.query_packet(4242, name), (host, port))
        data = s.recv(512)
    qid, _flags, qd, an, _ns, _ar = struct.unpack("!HHHHHH", data[:12])
    assert qid == 4242 and qd == 1
    pos = 12
    while data[pos]:
        pos += data[pos] + 1
    pos += 5  # the name's end, QTYPE, QCLASS
    out = []
    for _ in range(an):
        if data[pos] & 0xC0 == 0xC0:
            pos += 2
        else:
            while data[pos]:
                pos += data[pos] + 1
            pos += 1
        rtype, _cls, _ttl, length = struct.unpack("!HHIH", data[pos:pos + 10])
        pos += 10
        if rtype == 1:
            out.append(socket.inet_ntoa(data[pos:pos + length]))
        pos += length
    return out


# -- applying the plan -----------------------------------------------------------------------


@pytest.mark.parametrize("relaying_for", [[], ["gamma"]])
def test_first_step_applies_the_plan(env: Env, relaying_for: list[str]) -> None:
    m = env.manager()
    m.prepare()
    m.set_plan(make_plan(relaying_for=relaying_for))
    env.wg.calls.clear()
    m.step()

    assert env.docker.calls == [("create", "corral", SUBNET, GATEWAY, "corral-br", {"io.corral.managed": "1"}, 1420)]
    assert env.docker.overlay == ContainerNetwork("corral", GATEWAY)
    applied = [c for c in env.wg.calls if c[0] != "status"]
    forwarding = [("allow_forwarding", "corral0", "corral-br")]
    if relaying_for:
        forwarding.append(("allow_forwarding", "corral0", "corral0"))
    assert applied == [
        ("ensure_interface", "corral0", "127.0.0.1/32", 51820, env.tmp / "wireguard.key", 1420),
        ("set_peers", "corral0", [Peer(KA, "203.0.113.7:51820", ("127.0.1.0/24", "127.0.3.0/24"), 25),
                                  Peer(KB, None, ("127.0.2.0/24",), 0)]),
        ("set_routes", "corral0", ["127.0.1.0/24", "127.0.3.0/24", "127.0.2.0/24"]),
        ("enable_ip_forwarding",),
        *forwarding,
        ("exempt_from_masquerade", SUBNET, CLUSTER),
    ]
    assert m.backend == "userspace"
    assert env.probes.calls == [({"a": "127.0.1.1", "b": "127.0.2.1"}, 0)]  # probed at once, on dns_port


def test_no_plan_no_work(env: Env) -> None:
    m = env.manager()
    m.step()
    run(m)
    assert env.wg.names() == ["ensure_private_key"]
    assert env.docker.calls == [] and env.docker.overlay is None
    assert m.report()["subnet"] is None and m.report()["peers"] == {}


def test_dns_server_answers_on_the_gateway(env: Env) -> None:
    m = env.manager()
    m.set_plan(make_plan())
    m.step()
    server = m._dns_server
    assert server is not None and server.port != 0
    assert set(REAL_PROBE_ALL({"self": GATEWAY}, server.port, timeout=2.0)) == {"self"}

    m.set_plan(make_plan("d2", subnet="127.0.9.0/24", gateway="127.0.9.1"))  # a new subnet: DNS moves
    m.step()
    moved = m._dns_server
    assert moved is not server and moved is not None
    assert set(REAL_PROBE_ALL({"self": "127.0.9.1"}, moved.port, timeout=2.0)) == {"self"}
    m.step()  # same gateway: the server stays
    assert m._dns_server is moved


def test_same_plan_is_not_reapplied_until_converge_every(env: Env) -> None:
    m = env.manager(probe_every=15.0)
    m.set_plan(make_plan())
    m.step()
    env.wg.calls.clear()

    env.clock.now += CONVERGE_EVERY - 1
    m.set_plan(make_plan())  # sent again, same digest
    m.step()
    assert "set_peers" not in env.wg.names() and "ensure_interface" not in env.wg.names()
    assert env.wg.names() == ["status", "status"]  # the interface check and the probe pass

    env.clock.now += 1
    m.step()
    assert env.wg.names().count("set_peers") == 1 and "ensure_interface" in env.wg.names()

    env.wg.calls.clear()
    env.clock.now += 1
    new = make_plan("d2", peers=[peer_entry("c", "gamma", KC, "127.0.4.0/24", "198.51.100.1:51820", None)])
    m.set_plan(new)
    m.step()
    assert [c for c in env.wg.calls if c[0] == "set_peers"] == [
        ("set_peers", "corral0", [Peer(KC, "198.51.100.1:51820", ("127.0.4.0/24",), 0)])]
    assert m.digest == "d2"


def test_existing_network_with_this_subnet_is_kept(env: Env) -> None:
    env.docker.networks["corral"] = {"IPAM": {"Config": [{"Subnet": SUBNET}]}, "Containers": {"x": {}}}
    m = env.manager()
    m.set_plan(make_plan())
    m.step()
    assert env.docker.calls == []
    assert env.docker.overlay == ContainerNetwork("corral", GATEWAY)


def test_existing_network_with_another_subnet(env: Env) -> None:
    env.docker.networks["corral"] = {"IPAM": {"Config": [{"Subnet": "10.9.0.0/24"}]}, "Containers": {"x": {}}}
    m = env.manager()
    m.set_plan(make_plan())
    with pytest.raises(DockerError, match="containers still use it"):
        m.step()
    assert env.docker.overlay is None

    run(m)  # the loop reports it instead, and applies everything again once it can
    assert "containers still use it" in m.report()["error"]
    assert not m._applied

    env.docker.networks["corral"]["Containers"] = {}
    env.clock.now += CHECK_EVERY
    run(m)
    assert m.report()["error"] == ""
    assert env.docker.calls == [("remove", "corral"),
                                ("create", "corral", SUBNET, GATEWAY, "corral-br", {"io.corral.managed": "1"}, 1420)]
    assert env.docker.overlay == ContainerNetwork("corral", GATEWAY)


# -- interface repair --------------------------------------------------------------------------


def test_broken_interface_is_rebuilt(env: Env) -> None:
    m = env.manager()
    m.prepare()
    m.set_plan(make_plan())
    run(m)
    assert m.report()["repairs"] == 0 and m.report()["last_repair"] is None
    before = len(env.changes)

    env.wg.broken = "wireguard-go for corral0 is not running"
    env.wg.calls.clear()
    env.clock.now += CHECK_EVERY
    run(m)
    names = env.wg.names()
    assert names[0] == "status" and "ensure_interface" in names and "set_peers" in names
    assert m.repairs == 1
    assert m.last_repair is not None and m.last_repair["what"] == "interface"
    assert m.last_repair["at"] == env.clock.now
    assert "wireguard-go for corral0 is not running" in m.last_repair["reason"]
    assert m.report()["repairs"] == 1 and m.report()["last_repair"] == m.last_repair
    assert len(env.changes) == before + 1 and env.changes[-1]["repairs"] == 1

    env.clock.now += CHECK_EVERY  # healthy again: nothing more to do
    env.wg.calls.clear()
    run(m)
    assert m.repairs == 1 and "ensure_interface" not in env.wg.names()


# -- peer health and repair ----------------------------------------------------------------------


def test_answering_peers_are_up_with_rtt(env: Env) -> None:
    env.probes.answering = {"a": 0.01234}
    env.wg.handshakes = {KB: int(T0) - 10}  # b's DNS does not answer yet, but its tunnel handshakes
    m = env.manager()
    m.set_plan(make_plan())
    m.step()
    a, b = m.health["a"], m.health["b"]
    assert (a.name, a.state, a.rtt_ms, a.failures, a.via) == ("alpha", "up", 12.3, 0, None)
    assert (b.name, b.state, b.rtt_ms, b.failures) == ("beta", "up", None, 1)
    assert b.handshake_at == int(T0) - 10
    assert a.endpoint == "203.0.113.7:51820"  # as the interface reports it


def test_probes_run_every_probe_interval(env: Env) -> None:
    m = env.manager(probe_every=15.0)
    m.set_plan(make_plan())
    m.step()
    env.clock.now += 14
    m.step()
    assert len(env.probes.calls) == 1
    env.clock.now += 1
    m.step()
    assert len(env.probes.calls) == 2


@pytest.mark.parametrize("seen", [None, "192.0.2.44:40000"])
def test_peer_that_never_handshook_goes_stale_and_is_repaired(env: Env, seen: str | None) -> None:
    if seen:
        env.wg.seen[KB] = seen
    env.probes.answering = {"a": 0.002}
    m = env.manager(probe_every=15.0)
    m.set_plan(make_plan())
    start = env.clock.now
    m.step()
    assert m.health["b"].state == "new"

    while env.clock.now - start < STALE_AFTER - 15:
        env.clock.now += 15
        m.step()
        assert m.health["b"].state == "new"
    assert m.repairs == 0 and [c for c in env.wg.calls if c[0] == "set_peers" and not c[2]] == []

    env.wg.calls.clear()
    env.clock.now += 15  # STALE_AFTER since b was first planned, every probe failed
    m.step()
    assert m.health["b"].state == "stale" and m.health["a"].state == "up"
    peer_sets = [c[2] for c in env.wg.calls if c[0] == "set_peers"]
    assert peer_sets[-2:] == [[], env.wg.peers]  # forget the sessions, then the plan again
    assert {p.public_key for p in env.wg.peers} == {KA, KB}
    assert m.repairs == 1
    assert m.last_repair is not None and m.last_repair["what"] == "peer"
    reason = m.last_repair["reason"]
    assert reason.startswith("beta: never handshook and probes failed; peer re-added")
    assert (reason.endswith(f"with endpoint {seen}") if seen else "endpoint" not in reason)

    for _ in range(int(REPAIR_GAP // 15) - 1):  # not again within REPAIR_GAP
        env.clock.now += 15
        m.step()
        assert m.health["b"].state == "stale"
    assert m.repairs == 1
    env.clock.now += 15
    m.step()
    assert m.repairs == 2


def test_stale_handshake_is_repaired_after_three_failed_probes(env: Env) -> None:
    env.wg.handshakes = {KA: int(T0) - 1000, KB: int(T0) - 5}
    m = env.manager(probe_every=15.0)
    m.set_plan(make_plan())
    for n in (1, 2):
        m.step()
        assert (m.health["a"].state, m.health["a"].failures, m.repairs) == ("stale", n, 0)
        assert m.health["b"].state == "up"  # handshook 5 s ago
        env.clock.now += 15
    m.step()
    assert m.repairs == 1
    assert m.last_repair is not None
    assert m.last_repair["reason"] == ("alpha: no handshake for 1030 s and probes failed; "
                                       "peer re-added with endpoint 203.0.113.7:51820")
    assert m.health["b"].state == "up"  # handshook 35 s ago


def test_probe_answer_clears_failures(env: Env) -> None:
    env.wg.handshakes = {KA: int(T0) - 1000}
    m = env.manager(probe_every=15.0)
    m.set_plan(make_plan(peers=[make_plan()["peers"][0]]))
    m.step()
    m.step()
    env.clock.now += 15
    m.step()
    assert m.health["a"].failures == 2
    env.probes.answering = {"a": 0.001}
    env.clock.now += 15
    m.step()
    assert (m.health["a"].state, m.health["a"].failures, m.repairs) == ("up", 0, 0)


def test_relayed_targets(env: Env) -> None:
    relays = [{"target_id": "c", "target_name": "gamma", "relay_id": "a", "relay_name": "alpha",
               "reason": "both behind NAT", "gateway": "127.0.3.1"},
              {"target_id": "d", "target_name": "delta", "relay_id": None, "relay_name": None,
               "reason": "no relay", "gateway": "127.0.5.1"}]
    env.probes.answering = {"a": 0.001, "b": 0.001, "c": 0.004}
    m = env.manager(probe_every=15.0)
    m.set_plan(make_plan(relays=relays))
    m.step()
    assert env.probes.calls[-1][0] == {"a": "127.0.1.1", "b": "127.0.2.1", "c": "127.0.3.1"}
    c = m.health["c"]
    assert (c.name, c.state, c.via, c.rtt_ms) == ("gamma", "relayed", "alpha", 4.0)
    assert "d" not in m.health

    env.probes.answering = {"a": 0.001, "b": 0.001}
    for _ in range(int(STALE_AFTER // 15) + 2):
        env.clock.now += 15
        m.step()
        assert m.health["c"].state == "down" and m.health["c"].via == "alpha"
    assert m.repairs == 0  # a relayed host is no peer of ours: nothing to repair


# -- the report --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("endpoint", "port", "reported"), [
    ("10.0.0.5", 51820, "10.0.0.5:51820"),
    ("10.0.0.5", 4000, "10.0.0.5:4000"),
    ("10.0.0.5:7", 51820, "10.0.0.5:7"),
    ("[fd00::1]:5", 51820, "[fd00::1]:5"),
    ("[fd00::1]", 51820, "[fd00::1]:51820"),
    ("fd00::1", 51820, "[fd00::1]:51820"),
])
def test_report_endpoint(env: Env, endpoint: str, port: int, reported: str) -> None:
    m = env.manager(endpoint=endpoint, listen_port=port)
    m.prepare()
    assert m.report()["endpoint"] == reported
    mesh.validate_endpoint(reported)  # what the server will accept


@pytest.mark.parametrize(("address", "reported"), [("192.0.2.9", "192.0.2.9:51820"), (None, None)])
def test_report_endpoint_from_default_route(env: Env, monkeypatch: pytest.MonkeyPatch,
                                            address: str | None, reported: str | None) -> None:
    monkeypatch.setattr(overlay, "default_route_address", lambda: address)
    m = env.manager(endpoint=None)
    assert m.endpoint() == reported


def test_report(env: Env) -> None:
    env.probes.answering = {"a": 0.0105}
    env.wg.handshakes = {KA: int(T0) - 3}
    env.wg.seen = {KA: "203.0.113.70:1234"}
    m = env.manager(nat=True)
    m.prepare()
    m.set_plan(make_plan())
    m.set_directory({"generation": 1, "records": [["web", None, ["127.0.0.7"]]]})
    run(m)
    assert m.report() == {
        "enabled": True, "interface": "corral0", "backend": "userspace", "public_key": OWN,
        "endpoint": "10.0.0.5:51820", "nat": True, "subnet": SUBNET, "error": "", "repairs": 0,
        "last_repair": None, "dns": {"records": 1},
        "peers": {
            "a": {"name": "alpha", "state": "up", "endpoint": "203.0.113.70:1234", "via": None,
                  "handshake_at": int(T0) - 3, "rtt_ms": 10.5},
            "b": {"name": "beta", "state": "new", "endpoint": None, "via": None,
                  "handshake_at": 0, "rtt_ms": None},
        },
    }
    assert env.changes[-1] == m.report()


def test_rtt_and_handshakes_only_on_detail_reports(env: Env) -> None:
    env.probes.answering = {"a": 0.010, "b": 0.001}
    env.wg.handshakes = {KA: int(T0) - 3}
    m = env.manager(probe_every=15.0)
    m.prepare()
    m.set_plan(make_plan())
    run(m)  # the first pass is a detail report
    assert m.report()["peers"]["a"]["rtt_ms"] == 10.0
    assert m.report()["peers"]["a"]["handshake_at"] == int(T0) - 3
    changes = len(env.changes)

    env.probes.answering = {"a": 0.020, "b": 0.001}
    env.wg.handshakes = {KA: int(T0) + 10}
    env.clock.now += 15
    run(m)
    assert m.health["a"].rtt_ms == 20.0  # measured...
    assert m.report()["peers"]["a"]["rtt_ms"] == 10.0  # ...but not worth a report on its own
    assert m.report()["peers"]["a"]["handshake_at"] == int(T0) - 3
    assert len(env.changes) == changes

    env.probes.answering = {"b": 0.001}  # something worth saying: a goes stale (and is repaired)
    env.wg.handshakes = {KA: int(T0) - 1000}
    for _ in range(3):
        env.clock.now += 15
        run(m)
    assert m.report()["peers"]["a"]["state"] == "stale" and m.report()["repairs"] == 1
    assert m.report()["peers"]["a"]["rtt_ms"] == 10.0  # still the last detailed figures
    assert len(env.changes) > changes
    changes = len(env.changes)

    env.probes.answering = {"a": 0.030, "b": 0.001}
    env.wg.handshakes = {KA: int(T0) + 50}
    env.clock.now = T0 + DETAIL_EVERY
    run(m)
    assert m.report()["peers"]["a"]["rtt_ms"] == 30.0
    assert m.report()["peers"]["a"]["handshake_at"] == int(T0) + 50
    assert len(env.changes) == changes + 1


# -- without WireGuard -----------------------------------------------------------------------------


def test_prepare_without_wg(env: Env) -> None:
    env.wg.key_error = WireGuardError("wg: command not found")
    m = env.manager()
    m.prepare()  # does not raise
    report = m.report()
    assert report["public_key"] is None
    assert report["error"] == "no WireGuard key: wg: command not found"
    assert env.changes == [report]

    m.set_plan(make_plan())
    run(m)  # still no wg: the loop says so and does nothing else
    assert m.report()["public_key"] is None and "wg: command not found" in m.report()["error"]
    assert "ensure_interface" not in env.wg.names() and env.docker.calls == []

    env.wg.key_error = None  # wg installed: the next pass picks it up
    env.clock.now += CHECK_EVERY
    run(m)
    assert m.report()["public_key"] == OWN and m.report()["error"] == ""
    assert "ensure_interface" in env.wg.names() and env.docker.overlay == ContainerNetwork("corral", GATEWAY)


def test_prepare_with_an_unreadable_key(env: Env) -> None:
    env.wg.key_error = PermissionError("permission denied: wireguard.key")
    m = env.manager()
    m.prepare()
    assert m.report()["public_key"] is None and "permission denied" in m.report()["error"]


# -- on disk ---------------------------------------------------------------------------------------


def test_plan_and_directory_survive_a_restart(env: Env) -> None:
    m = env.manager()
    m.set_plan(make_plan("d7"))
    records = [["shop_web", "shop", ["127.0.1.5", "127.0.2.5"]], ["db", None, ["127.0.1.9"]]]
    m.set_directory({"generation": 4, "records": records})
    saved = json.loads((env.tmp / "overlay.json").read_text())
    assert saved["plan"]["digest"] == "d7" and saved["dns"] == {"generation": 4, "records": records}

    again = env.manager()
    assert again.digest == "d7" and again.plan == make_plan("d7")
    assert again.dns_generation == 4 and again.directory_records() == records
    assert again.directory.lookup("web.shop") == ["127.0.1.5", "127.0.2.5"]
    assert again.directory.lookup("db.corral.internal") == ["127.0.1.9"]

    env.wg.calls.clear()
    again.step()  # the server is away: the saved plan is applied all the same
    assert ("set_peers", "corral0", [Peer(KA, "203.0.113.7:51820", ("127.0.1.0/24", "127.0.3.0/24"), 25),
                                     Peer(KB, None, ("127.0.2.0/24",), 0)]) in env.wg.calls


def test_nothing_saved_or_a_damaged_file(env: Env) -> None:
    fresh = env.manager()
    assert fresh.plan is None and fresh.digest == "" and fresh.dns_generation == -1
    other = env.tmp / "other"
    other.mkdir()
    (other / "overlay.json").write_text("{not json")
    damaged = env.manager(state_dir=other)
    assert damaged.plan is None and damaged.directory.lookup("web") is None


def test_set_directory_feeds_dns(env: Env) -> None:
    m = env.manager()
    m.set_plan(make_plan())
    m.step()
    m.set_directory({"generation": 2, "records": [["shop_web", "shop", ["127.0.1.5"]],
                                                  ["cache", None, ["127.0.2.6", "127.0.1.6"]]]})
    assert m.dns_generation == 2
    for name in ("web.shop", "web.shop.corral.internal", "shop_web", "web", "WEB.shop."):
        assert m.directory.lookup(name) == ["127.0.1.5"], name
    assert m.directory.lookup("cache.corral.internal") == ["127.0.2.6", "127.0.1.6"]
    assert m.directory.lookup("nope") is None
    server = m._dns_server
    assert server is not None
    assert dns_query(server.port, "web.shop.corral.internal") == ["127.0.1.5"]

    m.set_directory({"generation": 3, "records": [["cache", None, ["127.0.2.6"]]]})  # replaced whole
    assert m.directory.lookup("web.shop") is None
    assert dns_query(server.port, "cache.corral.internal") == ["127.0.2.6"]


# -- probe_all and default_route_address -------------------------------------------------------------


def test_probe_all(env: Env) -> None:
    m = env.manager()
    m.set_plan(make_plan())
    m.step()
    assert m._dns_server is not None
    got = REAL_PROBE_ALL({"dns": GATEWAY, "silent": "127.0.0.2", "nowhere": "255.255.255.255"},
                         m._dns_server.port, timeout=0.3)  # nothing on 127.0.0.2; no route to broadcast
    assert set(got) == {"dns"} and 0 < got["dns"] < 0.3
    assert REAL_PROBE_ALL({}, 53) == {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        assert REAL_PROBE_ALL({"silent": "127.0.0.1"}, silent.getsockname()[1], timeout=0.1) == {}


def test_query_packet() -> None:
    packet = overlay.query_packet(0x1234, "probe.corral.internal.")
    assert packet == (b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
                      b"\x05probe\x06corral\x08internal\x00\x00\x01\x00\x01")


ROUTES = "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\n"


@pytest.mark.parametrize(("table", "address"), [
    (ROUTES + "lo\t0000007F\t00000000\t0001\t0\t0\t0\t000000FF\nlo\t00000000\t0100007F\t0003\t0\t0\t0\t00000000\n",
     "127.0.0.1"),
    (ROUTES + "lo\t0000007F\t00000000\t0001\t0\t0\t0\t000000FF\n", None),  # no default route
    (ROUTES + "nosuchdev0\t00000000\t0100007F\t0003\t0\t0\t0\t00000000\n", None),  # no address to read
    (None, None),  # no /proc/net/route
])
def test_default_route_address(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               table: str | None, address: str | None) -> None:
    routes = tmp_path / "route"
    if table is not None:
        routes.write_text(table)
    monkeypatch.setattr(overlay, "open", lambda path: open(routes) if path == "/proc/net/route" else open(path),
                        raising=False)
    assert overlay.default_route_address() == address


def test_leaving_takes_the_overlay_down_and_a_new_plan_builds_it_again(env: Env) -> None:
    m = env.manager()
    m.prepare()
    m.set_plan(make_plan())
    m.step()
    env.wg.calls.clear()
    m.leave()
    assert env.wg.calls == [("remove_interface", "corral0"), ("disallow_forwarding", "corral0", "corral-br"),
                            ("disallow_forwarding", "corral0", "corral0"),
                            ("remove_masquerade_exemption", SUBNET, CLUSTER)]
    assert m.plan is None and m.digest == "" and env.docker.overlay is None
    assert m.report()["peers"] == {}
    m.leave()  # twice is nothing
    assert len(env.wg.calls) == 4
    assert env.tmp.joinpath("overlay.json").read_text().startswith('{"plan": null')
    m.set_plan(make_plan("d2"))
    m.step()
    assert ("ensure_interface", "corral0", "127.0.0.1/32", 51820, env.tmp / "wireguard.key", 1420) in env.wg.calls
    assert env.docker.overlay == ContainerNetwork("corral", GATEWAY)
