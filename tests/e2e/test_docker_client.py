"""The stdlib Docker client and collect_facts against the real root dockerd.

Engine, registry and images come from the test-bed fixtures
(``testbed/fixtures.py``: ``docker_host``, ``registry``, ``busybox_image``,
``binfmt``).  Every container carries a per-run label and is removed at the
end, also when a test fails.

The first few tests need no engine: pure tests of reference splitting and of
the log/event stream decoders over a real ``http.client`` response.
"""

from __future__ import annotations

import http.client
import io
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.agent.facts import collect_facts
from corral.agent.runtime.docker import (
    Conflict,
    ContainerInfo,
    ContainerNetwork,
    DockerClient,
    DockerError,
    EngineUnavailable,
    NotFound,
    PullError,
    Stream,
    _demux_lines,
    _json_lines,
    _raw_lines,
    split_reference,
)
from corral.model import LABEL_ADDRESS, LABEL_MANAGED, PortSpec
from testbed.images import BuiltImage

e2e = pytest.mark.e2e

RUN_ID = uuid.uuid4().hex[:12]
RUN_LABEL = "io.corral.test-run"


# -- pure tests (no engine) ----------------------------------------------------------------


@pytest.mark.parametrize(
    "ref, expected",
    [
        ("busybox", ("busybox", "latest")),
        ("busybox:1.36", ("busybox", "1.36")),
        ("library/busybox:1", ("library/busybox", "1")),
        ("127.0.0.1:5000/corral/busybox:1", ("127.0.0.1:5000/corral/busybox", "1")),
        ("127.0.0.1:5000/corral/busybox", ("127.0.0.1:5000/corral/busybox", "latest")),
        (
            "localhost:5000/busybox@sha256:" + "a" * 64,
            ("localhost:5000/busybox", "sha256:" + "a" * 64),
        ),
        (
            "127.0.0.1:5000/corral/busybox:1@sha256:" + "b" * 64,
            ("127.0.0.1:5000/corral/busybox", "sha256:" + "b" * 64),
        ),
        ("busybox@sha256:" + "c" * 64, ("busybox", "sha256:" + "c" * 64)),
    ],
)
def test_split_reference(ref: str, expected: tuple[str, str]) -> None:
    assert split_reference(ref) == expected


class _FakeSocket:
    def __init__(self, raw: bytes) -> None:
        self._raw = raw

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(io.BytesIO(self._raw))


def _chunked_response(body_parts: list[bytes]) -> http.client.HTTPResponse:
    raw = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    for part in body_parts:
        raw += f"{len(part):x}\r\n".encode() + part + b"\r\n"
    raw += b"0\r\n\r\n"
    resp = http.client.HTTPResponse(_FakeSocket(raw))  # type: ignore[arg-type]
    resp.begin()
    return resp


def _frame(stream: int, data: bytes) -> bytes:
    return bytes([stream, 0, 0, 0]) + len(data).to_bytes(4, "big") + data


def test_demux_reassembles_lines_across_frames_and_chunks() -> None:
    body = (
        _frame(1, b"one\ntw")
        + _frame(2, b"err 1\n")
        + _frame(1, b"o\nthree\n")
        + _frame(2, b"partial at the end")
        + _frame(1, b"")
    )
    # HTTP chunks cut through frame headers on purpose
    resp = _chunked_response([body[:5], body[5:17], body[17:]])
    assert list(_demux_lines(resp)) == [
        ("stdout", b"one"),
        ("stderr", b"err 1"),
        ("stdout", b"two"),
        ("stdout", b"three"),
        ("stderr", b"partial at the end"),
    ]


def test_raw_lines_for_tty_containers() -> None:
    resp = _chunked_response([b"a\r\nb", b"\nlast"])
    assert list(_raw_lines(resp)) == [("stdout", b"a\r"), ("stdout", b"b"), ("stdout", b"last")]


def test_json_lines_survive_objects_split_over_chunks() -> None:
    resp = _chunked_response([b'{"status": "die", "id"', b': "x"}\n{"status": "start"}\n\n'])
    assert list(_json_lines(resp)) == [{"status": "die", "id": "x"}, {"status": "start"}]


def test_engine_unavailable_on_a_dead_socket(tmp_path: Path) -> None:
    client = DockerClient(f"unix://{tmp_path}/nothing.sock")
    assert client.ping() is False
    with pytest.raises(EngineUnavailable) as info:
        client.version()
    assert info.value.status == 0 and "nothing.sock" in info.value.message
    with pytest.raises(DockerError):
        client.list_containers()
    with pytest.raises(EngineUnavailable):  # not a PullError: the registry is not to blame
        client.pull("127.0.0.1:5000/corral/busybox:1")
    assert DockerClient("tcp://127.0.0.1:1").ping() is False


def test_rejects_unknown_schemes() -> None:
    with pytest.raises(ValueError):
        DockerClient("ssh://somewhere")


# -- fixtures --------------------------------------------------------------------------


@pytest.fixture(scope="session")
def client(docker_host: str) -> Iterator[DockerClient]:
    c = DockerClient(docker_host)
    yield c
    for info in c.list_containers({RUN_LABEL: RUN_ID}):
        c.remove(info.id, force=True)


@pytest.fixture(scope="session")
def image(busybox_image: BuiltImage, client: DockerClient) -> str:
    """The test bed's busybox (an amd64/arm64/arm/v7 index in the registry), pulled."""
    client.pull(busybox_image.ref)
    return busybox_image.ref


@pytest.fixture
def name(request: pytest.FixtureRequest) -> str:
    return f"corral-test-{RUN_ID}-{request.node.name[:30].replace('[', '-').strip(']')}"


def _labels(**extra: str) -> dict[str, str]:
    return {RUN_LABEL: RUN_ID, LABEL_MANAGED: "true", **extra}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _http_get(port: int, timeout: float = 15.0) -> bytes:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", "/index.html")
            body = conn.getresponse().read()
            conn.close()
            return body
        except (OSError, http.client.HTTPException) as exc:
            last = exc
            time.sleep(0.2)
    raise AssertionError(f"nothing answered on 127.0.0.1:{port}: {last}")


def _wait_state(
    client: DockerClient, cid: str, state: str, timeout: float = 15.0
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        data = client.inspect_container(cid)
        if data["State"]["Status"] == state or time.monotonic() > deadline:
            assert data["State"]["Status"] == state
            return data
        time.sleep(0.1)


def _with_watchdog(stream: Stream[Any], seconds: float) -> threading.Timer:
    """Close a stream after ``seconds`` so a broken test fails instead of hanging."""
    timer = threading.Timer(seconds, stream.close)
    timer.daemon = True
    timer.start()
    return timer


# -- engine tests -----------------------------------------------------------------------


@e2e
def test_ping_and_version(client: DockerClient) -> None:
    assert client.ping() is True
    v = client.version()
    assert v["Version"] and v["ApiVersion"]
    assert client.api_version == "1.41"  # min(1.41, what a 20.10 engine speaks)
    assert client.info()["ID"]


@e2e
def test_pull_from_an_unreachable_registry(client: DockerClient) -> None:
    with pytest.raises(PullError) as info:
        client.pull("127.0.0.1:1/corral/nothing:1", timeout=60)
    assert "127.0.0.1:1" in info.value.message
    assert "connection refused" in info.value.message


@e2e
def test_pull_of_a_missing_tag_names_the_problem(client: DockerClient, registry: str) -> None:
    ref = f"{registry}/corral/busybox:no-such-tag-{RUN_ID}"
    with pytest.raises(PullError) as info:
        client.pull(ref, timeout=60)
    msg = info.value.message
    # "manifest for 127.0.0.1:5000/corral/busybox:no-such-tag-... not found: manifest unknown"
    assert ref in msg and "not found" in msg, msg


@e2e
def test_pull_by_tag_and_by_digest(client: DockerClient, busybox_image: BuiltImage) -> None:
    client.pull(busybox_image.ref)
    assert client.image_present(busybox_image.ref)
    for platform in ("linux/amd64", "linux/arm64"):
        by_digest = busybox_image.by_digest(platform)
        client.pull(by_digest)
        assert client.image_present(by_digest)


@e2e
def test_an_arm64_image_runs_under_qemu(
    client: DockerClient, busybox_image: BuiltImage, binfmt: None, name: str
) -> None:
    # What facts' emulated_platforms promises: linux/arm64 really runs here.
    ref = busybox_image.by_digest("linux/arm64")
    client.pull(ref)
    cid = client.create_container(name, ref, command=["uname", "-m"], labels=_labels())
    try:
        client.start(cid)
        assert _wait_state(client, cid, "exited")["State"]["ExitCode"] == 0
        assert list(client.logs(cid)) == [("stdout", b"aarch64")]
    finally:
        client.remove(cid)


@e2e
def test_image_present(client: DockerClient, image: str) -> None:
    assert client.image_present(image)
    assert not client.image_present(f"corral-dev/not-here:{RUN_ID}")


@e2e
def test_container_lifecycle(client: DockerClient, image: str, name: str) -> None:
    port = _free_port()
    script = (
        'mkdir -p /tmp/www && echo "$GREETING" > /tmp/www/index.html; '
        "echo to-stdout; echo to-stderr >&2; echo again-stdout; "
        "exec httpd -f -p 8080 -h /tmp/www"
    )
    labels = _labels(**{"io.corral.test-case": f"lifecycle-{RUN_ID}"})
    cid = client.create_container(
        name,
        image,
        command=["sh", "-c", script],
        env={"GREETING": f"hello {RUN_ID}"},
        labels=labels,
        ports=[PortSpec(published=port, target=8080)],
        restart_policy="on-failure:3",
        init=True,
    )
    # an unlabelled neighbour must not show up in the filtered list
    other = client.create_container(
        f"{name}-other", image, command=["true"], env={}, labels=_labels(), ports=[]
    )
    try:
        data = client.inspect_container(cid)
        assert data["Config"]["Labels"] == labels
        assert f"GREETING=hello {RUN_ID}" in data["Config"]["Env"]
        assert data["HostConfig"]["PortBindings"] == {
            "8080/tcp": [{"HostIp": "", "HostPort": str(port)}]
        }
        assert data["HostConfig"]["RestartPolicy"] == {"Name": "on-failure", "MaximumRetryCount": 3}
        assert data["HostConfig"]["Init"] is True

        client.start(cid)
        client.start(cid)  # already started: 304 is fine
        assert _http_get(port).strip() == f"hello {RUN_ID}".encode()

        listed = client.list_containers({"io.corral.test-case": f"lifecycle-{RUN_ID}"})
        assert [c.id for c in listed] == [cid]
        info = listed[0]
        assert isinstance(info, ContainerInfo)
        assert (info.name, info.image, info.state) == (name, image, "running")
        assert info.labels == labels and info.status.startswith("Up") and info.created > 0
        assert {c.id for c in client.list_containers({RUN_LABEL: RUN_ID})} >= {cid, other}
        running = {c.id for c in client.list_containers({RUN_LABEL: RUN_ID}, all=False)}
        assert cid in running and other not in running  # "other" was only created

        lines = list(client.logs(cid))
        assert [line for s, line in lines if s == "stdout"] == [b"to-stdout", b"again-stdout"]
        assert [line for s, line in lines if s == "stderr"] == [b"to-stderr"]
        assert list(client.logs(cid, tail=1)) in (
            [("stdout", b"again-stdout")],
            [("stderr", b"to-stderr")],
        )
        stamped = list(client.logs(cid, timestamps=True))
        assert all(line.split(b" ", 1)[0].endswith(b"Z") for _, line in stamped)

        started = time.monotonic()
        client.stop(cid, timeout=10)  # tini (init=True) forwards SIGTERM to httpd
        assert time.monotonic() - started < 8
        assert client.inspect_container(cid)["State"]["Status"] == "exited"
        client.stop(cid)  # already stopped: 304 is fine
        with pytest.raises(Conflict):
            client.kill(cid)  # not running
    finally:
        client.remove(cid)
        client.remove(other)
    client.remove(cid)  # already gone: fine
    with pytest.raises(NotFound):
        client.inspect_container(cid)
    assert client.list_containers({"io.corral.test-case": f"lifecycle-{RUN_ID}"}) == []


@e2e
def test_errors_are_typed(client: DockerClient, image: str, name: str) -> None:
    with pytest.raises(NotFound) as missing_image:
        client.create_container(
            name, f"corral-dev/not-here:{RUN_ID}", command=None, env={}, labels=_labels(), ports=[]
        )
    assert "not-here" in missing_image.value.message and missing_image.value.status == 404
    cid = client.create_container(name, image, command=["true"], env={}, labels=_labels(), ports=[])
    try:
        with pytest.raises(Conflict) as dup:
            client.create_container(
                name, image, command=["true"], env={}, labels=_labels(), ports=[]
            )
        assert name in dup.value.message and dup.value.status == 409
    finally:
        client.remove(cid)
    with pytest.raises(NotFound):
        client.start(f"corral-missing-{RUN_ID}")
    client.remove(f"corral-missing-{RUN_ID}")
    with pytest.raises(ValueError):
        client.create_container(name, image, restart_policy="sometimes")


@e2e
def test_kill(client: DockerClient, image: str, name: str) -> None:
    cid = client.create_container(
        name, image, command=["sleep", "300"], env={}, labels=_labels(), ports=[]
    )
    try:
        client.start(cid)
        client.kill(cid)
        data = _wait_state(client, cid, "exited")
        assert data["State"]["ExitCode"] == 137
    finally:
        client.remove(cid)


@e2e
def test_follow_logs_end_when_the_container_stops(
    client: DockerClient, image: str, name: str
) -> None:
    cid = client.create_container(
        name,
        image,
        command=["sh", "-c", "echo a; sleep 1; echo b >&2; sleep 0.5; echo c"],
        env={},
        labels=_labels(),
        ports=[],
    )
    try:
        client.start(cid)
        stream = client.logs(cid, follow=True)
        _with_watchdog(stream, 30)
        assert list(stream) == [("stdout", b"a"), ("stderr", b"b"), ("stdout", b"c")]
        assert stream.closed
    finally:
        client.remove(cid)


@e2e
def test_follow_logs_can_be_closed_from_another_thread(
    client: DockerClient, image: str, name: str
) -> None:
    cid = client.create_container(
        name,
        image,
        command=["sh", "-c", "echo first; exec sleep 300"],
        env={},
        labels=_labels(),
        ports=[],
    )
    try:
        client.start(cid)
        stream = client.logs(cid, follow=True)
        assert next(stream) == ("stdout", b"first")
        threading.Timer(0.3, stream.close).start()
        started = time.monotonic()
        assert list(stream) == []  # blocked until close(), then ends quietly
        assert time.monotonic() - started < 5
        assert stream.closed
        assert client.inspect_container(cid)["State"]["Running"] is True
    finally:
        client.remove(cid)


@e2e
def test_follow_logs_closed_before_any_output(client: DockerClient, image: str, name: str) -> None:
    # The engine sends no response headers before the first line: close() must
    # still wake a reader blocked waiting for them.
    cid = client.create_container(
        name, image, command=["sleep", "300"], env={}, labels=_labels(), ports=[]
    )
    try:
        client.start(cid)
        stream = client.logs(cid, follow=True)
        results: list[Any] = []
        reader = threading.Thread(target=lambda: results.extend(stream))
        reader.start()
        time.sleep(0.5)
        stream.close()
        reader.join(5)
        assert not reader.is_alive() and results == []
        stream.close()  # idempotent
    finally:
        client.remove(cid)


@e2e
def test_logs_of_a_missing_container(client: DockerClient) -> None:
    with pytest.raises(NotFound):
        client.logs(f"corral-missing-{RUN_ID}")


@e2e
def test_events_report_a_die(client: DockerClient, image: str, name: str) -> None:
    since = time.time() - 1
    label = f"io.corral.test-case=events-{RUN_ID}"
    stream = client.events({"type": ["container"], "event": ["die"], "label": [label]}, since=since)
    _with_watchdog(stream, 30)
    cid = client.create_container(
        name,
        image,
        command=["sh", "-c", "exit 3"],
        env={},
        labels=_labels(**{"io.corral.test-case": f"events-{RUN_ID}"}),
        ports=[],
    )
    try:
        client.start(cid)
        event = next(stream)
        assert event["Type"] == "container" and event["Action"] == "die"
        assert event["Actor"]["ID"] == cid
        assert event["Actor"]["Attributes"]["exitCode"] == "3"
        assert event["Actor"]["Attributes"]["name"] == name
    finally:
        stream.close()
        client.remove(cid)
    assert list(stream) == []


class _OneShotEngine:
    """A fake engine on a Unix socket: answers one request with canned bytes."""

    def __init__(self, tmp_path: Path, response: bytes, hold: float = 0.0) -> None:
        self.path = str(tmp_path / "fake.sock")
        self.requests: list[bytes] = []
        self._server = socket.socket(socket.AF_UNIX)
        self._server.bind(self.path)
        self._server.listen(1)
        self._response, self._hold = response, hold
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        conn, _ = self._server.accept()
        with conn:
            self.requests.append(conn.recv(65536))
            conn.sendall(self._response)
            time.sleep(self._hold)  # keep the connection open, sending nothing

    def client(self) -> DockerClient:
        return DockerClient(f"unix://{self.path}", api_version="1.41")  # no negotiation round-trip

    def close(self) -> None:
        self._thread.join(10)
        self._server.close()


def _http(status: str, body: bytes, chunked: bool = False) -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\n"
    if chunked:
        head += f"Transfer-Encoding: chunked\r\n\r\n{len(body):x}\r\n"
        return head.encode() + body + b"\r\n0\r\n\r\n"
    return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


def test_stream_http_errors_raise_on_iteration(tmp_path: Path) -> None:
    # dockerd 20.10 validates no /events filter we could break, hence a fake engine
    engine = _OneShotEngine(
        tmp_path, _http("400 Bad Request", b'{"message":"invalid filter \'bogus\'"}')
    )
    with (
        engine.client().events({"bogus": ["x"]}, since=1700000000.5) as stream,
        pytest.raises(DockerError) as info,
    ):
        next(stream)
    engine.close()
    assert info.value.status == 400 and info.value.message == "invalid filter 'bogus'"
    assert engine.requests[0].startswith(b"GET /v1.41/events?filters=")
    assert b"since=1700000000.500000000" in engine.requests[0]


def test_pull_error_from_the_stream_error_detail(tmp_path: Path) -> None:
    # A registry failure after the engine answered 200 arrives as a stream message.
    body = (
        b'{"status":"Pulling from corral/busybox","id":"1"}\r\n'
        b'{"status":"Pulling fs layer","progressDetail":{},"id":"0a1b"}\r\n'
        b'{"errorDetail":{"message":"blob unknown: blob unknown to registry"},'
        b'"error":"blob unknown: blob unknown to registry"}\r\n'
    )
    engine = _OneShotEngine(tmp_path, _http("200 OK", body, chunked=True))
    with pytest.raises(PullError) as info:
        engine.client().pull("127.0.0.1:5000/corral/busybox:1")
    engine.close()
    assert info.value.message == "blob unknown: blob unknown to registry"
    assert engine.requests[0].startswith(
        b"POST /v1.41/images/create?fromImage=127.0.0.1%3A5000%2Fcorral%2Fbusybox&tag=1 "
    )


def test_pull_timeout_bounds_the_whole_pull(tmp_path: Path) -> None:
    head = (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    line = b'{"status":"Pulling fs layer"}\r\n'
    engine = _OneShotEngine(tmp_path, head + f"{len(line):x}\r\n".encode() + line + b"\r\n", hold=3)
    started = time.monotonic()
    with pytest.raises(PullError) as info:
        engine.client().pull("127.0.0.1:5000/corral/busybox:1", timeout=1)
    assert time.monotonic() - started < 2.5
    assert "timed out after 1 s" in info.value.message
    engine.close()


@e2e
def test_one_client_many_threads(client: DockerClient, image: str, name: str) -> None:
    cid = client.create_container(name, image, command=["true"], env={}, labels=_labels(), ports=[])
    errors: list[BaseException] = []

    def work() -> None:
        try:
            for _ in range(20):
                assert client.inspect_container(cid)["Id"] == cid
                assert any(c.id == cid for c in client.list_containers({RUN_LABEL: RUN_ID}))
                assert client.ping()
        except BaseException as exc:
            errors.append(exc)

    try:
        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
    finally:
        client.remove(cid)


@e2e
def test_collect_facts_on_this_machine(client: DockerClient, binfmt: None) -> None:
    facts = collect_facts(client, {"zone": "test"})
    json.dumps(facts)
    if os.uname().machine == "x86_64":
        assert facts["platform"] == "linux/amd64"
        assert facts["engine_platform"] == "linux/amd64"
        assert facts["platform_mismatch"] is False
        # the binfmt fixture enabled qemu-aarch64 and qemu-arm
        assert {"linux/arm64", "linux/arm/v7", "linux/arm/v6"} <= set(facts["emulated_platforms"])
    assert facts["platform"] not in facts["emulated_platforms"]
    aarch64 = Path("/proc/sys/fs/binfmt_misc/qemu-aarch64")
    if (
        aarch64.exists()
        and aarch64.read_text().startswith("enabled")
        and facts["platform"] != "linux/arm64"
    ):
        assert "linux/arm64" in facts["emulated_platforms"]
    assert facts["docker"]["version"] and facts["docker"]["api_version"]
    assert facts["cpus"] >= 1 and facts["memory_bytes"] > 0
    assert facts["hostname"] == socket.gethostname()
    assert facts["kernel"] == os.uname().release
    assert facts["os"] and facts["labels"] == {"zone": "test"}
    assert isinstance(facts["gpus"], list)


@e2e
def test_image_digests_name_what_the_engine_holds(client: DockerClient, image: str,
                                                  busybox_image: BuiltImage) -> None:
    """Pulled by tag (the index) and by a platform's manifest digest: both digests are listed."""
    amd64 = busybox_image.digests["linux/amd64"]
    client.pull(f"{busybox_image.repository}@{amd64}")
    digests = client.image_digests()
    assert busybox_image.index_digest in digests
    assert amd64 in digests
    assert digests == sorted(set(digests))
    facts = collect_facts(client, {})
    assert busybox_image.index_digest in facts["images"]
    assert isinstance(facts["engine_labels"], dict)


@e2e
def test_overlay_network_and_a_container_at_its_address(docker_host: str, image: str, name: str) -> None:
    """The calls the agent's overlay makes: a bridge network with its subnet, gateway and bridge
    name; a container labelled with an address joins it there with the gateway as its DNS; with
    no overlay network (yet) the same container starts on the default network."""
    c = DockerClient(docker_host)  # its own client: `overlay` is per client
    net = f"corral-test-{RUN_ID}"
    subnet, gateway, address = "10.253.77.0/24", "10.253.77.1", "10.253.77.9"
    assert c.inspect_network(net) is None
    c.create_bridge_network(net, subnet, gateway, f"crt{RUN_ID[:8]}", labels=_labels(), mtu=1420)
    try:
        got = c.inspect_network(net)
        assert got is not None and got["IPAM"]["Config"] == [{"Subnet": subnet, "Gateway": gateway}]
        assert got["Options"]["com.docker.network.bridge.name"] == f"crt{RUN_ID[:8]}"
        with pytest.raises(DockerError):  # the same name twice
            c.create_bridge_network(net, subnet, gateway, f"crt{RUN_ID[:8]}")
        labels = _labels(**{LABEL_ADDRESS: address})
        plain = c.create_container(f"{name}-plain", image, command=["sleep", "30"], labels=labels)
        assert list(c.inspect_container(plain)["NetworkSettings"]["Networks"]) == ["bridge"]
        c.overlay = ContainerNetwork(net, gateway)
        cid = c.create_container(name, image, command=["sleep", "30"], labels=labels)
        c.start(cid)
        info = c.inspect_container(cid)
        assert info["NetworkSettings"]["Networks"][net]["IPAddress"] == address
        assert info["HostConfig"]["Dns"] == [gateway] and info["HostConfig"]["DnsSearch"] == ["corral.internal"]
        for container in (cid, plain):
            c.remove(container, force=True)
    finally:
        c.remove_network(net)
    assert c.inspect_network(net) is None
    c.remove_network(net)  # a missing one is fine
