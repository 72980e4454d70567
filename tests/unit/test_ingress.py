"""The agent's ingress proxy on real loopback sockets, and the reconciler's routing table."""

from __future__ import annotations

import socket
import socketserver
import threading
import time
from collections.abc import Iterator

import pytest

from corral import model
from corral.agent.ingress import Ingress
from corral.agent.reconciler import Reconciler
from corral.model import DesiredSet, InstanceSpec, PortSpec
from tests.unit.fake_docker import FakeDocker


class _Named(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data = self.request.recv(1024)
        self.request.sendall(self.server.name.encode() + b":" + data)  # type: ignore[attr-defined]


def backend(name: str) -> socketserver.ThreadingTCPServer:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Named)
    server.daemon_threads = True
    server.name = name  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ask(port: int, payload: bytes = b"hi") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(payload)
        s.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := s.recv(1024):
            out += chunk
        return out


@pytest.fixture
def ingress() -> Iterator[Ingress]:
    ing = Ingress(host="127.0.0.1")
    yield ing
    ing.close()


def test_round_robin_over_ready_backends_and_a_half_close_is_carried(ingress: Ingress) -> None:
    a, b = backend("a"), backend("b")
    port = free_port()
    ingress.update({port: [("127.0.0.1", a.server_address[1]), ("127.0.0.1", b.server_address[1])]})
    answers = {ask(port) for _ in range(4)}
    assert answers == {b"a:hi", b"b:hi"}
    a.shutdown()
    a.server_close()


def test_a_backend_that_refuses_is_skipped(ingress: Ingress) -> None:
    b = backend("b")
    port = free_port()
    ingress.update({port: [("127.0.0.1", free_port()), ("127.0.0.1", b.server_address[1])]})
    assert {ask(port) for _ in range(3)} == {b"b:hi"}


def test_no_ready_backend_closes_the_connection_and_no_route_stops_listening(ingress: Ingress) -> None:
    port = free_port()
    ingress.update({port: []})
    try:  # accepted, then closed (or reset): nothing is ready to answer
        assert ask(port) == b""
    except OSError as exc:  # reset, or not connected by the time we half-close
        assert exc.errno in (104, 107), exc
    ingress.update({})
    with pytest.raises(OSError):
        ask(port)


def test_the_reconciler_routes_ingress_ports_to_ready_current_containers() -> None:
    table: list[dict[int, list[tuple[str, int]]]] = []

    class Recorder:
        def update(self, routes: dict[int, list[tuple[str, int]]]) -> None:
            table.append({k: sorted(v) for k, v in routes.items()})

    docker = FakeDocker(images={"img"})
    rec = Reconciler(docker, "h", on_change=lambda: None, ingress=Recorder())  # type: ignore[arg-type]
    ports = [PortSpec(8080, 80, "tcp", "ingress"), PortSpec(5353, 53, "udp", "host")]
    specs = [InstanceSpec(id=f"i{n}", name=f"web.{n}.i{n}", service="web", slot=n, image="img", ports=ports)
             for n in (1, 2)]
    rec.set_desired(DesiredSet(1, specs))
    rec.run_once(wait=True)  # creates and starts the containers
    rec.run_once(wait=True)  # now they run: they join the rotation
    ips = {c.name: c.ip for c in docker.list_containers()}
    assert table[-1] == {8080: sorted((ip, 80) for ip in ips.values())}
    first = next(cid for cid, c in docker.containers.items() if c["name"] == "web.1.i1")
    docker.set_health(first, model.HEALTH_STARTING)
    rec.run_once(wait=True)
    assert table[-1] == {8080: [(ips["web.2.i2"], 80)]}  # not ready while its healthcheck starts
    docker.set_health(first, model.HEALTHY)
    rec.run_once(wait=True)
    assert len(table[-1][8080]) == 2
    rec.set_desired(DesiredSet(2, specs[1:]))  # i1 goes: out of the rotation before it is stopped
    rec.run_once(wait=True)
    assert table[-1] == {8080: [(ips["web.2.i2"], 80)]}


def test_an_ingress_instance_joins_the_rotation_when_its_start_ends() -> None:
    """A pass that finds an ingress instance's job busy has another pass run when the job ends: that
    pass, which sees it running, routes to it (not the periodic one, seconds later)."""
    table: list[dict[int, list[tuple[str, int]]]] = []

    class Recorder:
        def update(self, routes: dict[int, list[tuple[str, int]]]) -> None:
            table.append({k: sorted(v) for k, v in routes.items()})

    docker = FakeDocker(images={"img"})
    pokes: list[int] = []
    rec = Reconciler(docker, "h", on_change=lambda: None, ingress=Recorder(),  # type: ignore[arg-type]
                     on_work_done=lambda: pokes.append(1))
    rec.set_desired(DesiredSet(1, []))
    rec.run_once(wait=True)
    gate = threading.Event()
    real_start = docker.start
    docker.start = lambda cid: (gate.wait(10), real_start(cid))[1]  # type: ignore[method-assign]
    web = InstanceSpec(id="i1", name="web.1.i1", service="web", slot=1, image="img",
                       ports=[PortSpec(8080, 80, "tcp", "ingress")])
    assert rec.set_desired(DesiredSet(2, [web])) is False  # started at once; its route needs a pass
    deadline = time.monotonic() + 5
    while not docker.containers and time.monotonic() < deadline:
        time.sleep(0.01)
    rec.run_once()  # the pass asked for: the job still waits in start
    assert table[-1] == {8080: []}
    gate.set()
    while not pokes and time.monotonic() < deadline:
        time.sleep(0.01)
    assert pokes == [1], "the job's end asks for the pass that routes to it"
    rec.run_once(wait=True)
    assert table[-1] == {8080: [(docker.list_containers()[0].ip, 80)]}
