"""The test bed itself, checked for real: dockerd, registry, qemu, namespaced hosts, forwarder.

Each check can fail: digests are pulled and executed, hostnames and architectures are
read back from inside, bytes are hashed after a round trip through the forwarder.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import shutil
import socket
import socketserver
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from testbed.daemons import docker_request, fresh_postgres_database
from testbed.fixtures import NetnsHostFactory
from testbed.images import OCI_INDEX, OCI_MANIFEST, BuiltImage, build_busybox

pytestmark = pytest.mark.e2e

DOCKER = "/usr/bin/docker" if shutil.which("/usr/bin/docker") else "docker"
UNAME = {"linux/amd64": "x86_64", "linux/arm64": "aarch64", "linux/arm/v7": "armv7l"}


def _registry_get(registry: str, path: str, accept: str) -> tuple[int, Any]:
    host, port = registry.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("GET", path, headers={"Accept": accept})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, (json.loads(body) if resp.status == 200 else body)
    finally:
        conn.close()


def _docker_run(docker_host: str, image: str, *cmd: str) -> str:
    """``docker run`` a throwaway container and return its stdout; always removed."""
    name = f"corral-testbed-{uuid.uuid4().hex[:12]}"
    try:
        res = subprocess.run([DOCKER, "-H", docker_host, "run", "--rm", "--name", name, image,
                              *cmd], capture_output=True, text=True, timeout=180, check=False)
        assert res.returncode == 0, res.stderr
        return res.stdout
    finally:
        subprocess.run([DOCKER, "-H", docker_host, "rm", "-f", name], capture_output=True,
                       check=False)


def test_root_dockerd_answers(docker_host: str) -> None:
    status, body = docker_request(docker_host, "GET", "/version")
    assert status == 200
    version = json.loads(body)
    assert version["Os"] == "linux" and version["Arch"] == "amd64"
    assert tuple(int(x) for x in version["ApiVersion"].split(".")) >= (1, 41)


def test_registry_serves_index_with_three_platforms(registry: str,
                                                    busybox_image: BuiltImage) -> None:
    status, index = _registry_get(registry, "/v2/corral/busybox/manifests/1", OCI_INDEX)
    assert status == 200
    assert index["mediaType"] == OCI_INDEX
    platforms = {}
    for entry in index["manifests"]:
        p = entry["platform"]
        key = f"{p['os']}/{p['architecture']}" + (f"/{p['variant']}" if "variant" in p else "")
        platforms[key] = entry
    assert set(platforms) == {"linux/amd64", "linux/arm64", "linux/arm/v7"}
    assert len(index["manifests"]) == 3
    assert platforms["linux/arm/v7"]["platform"]["variant"] == "v7"
    assert "variant" not in platforms["linux/amd64"]["platform"]
    for key, entry in platforms.items():
        assert entry["digest"] == busybox_image.digests[key]
        # The image config agrees with the index: architecture is not faked.
        status, manifest = _registry_get(registry, f"/v2/corral/busybox/manifests/"
                                         f"{entry['digest']}", OCI_MANIFEST)
        assert status == 200
        status, config = _registry_get(registry, f"/v2/corral/busybox/blobs/"
                                       f"{manifest['config']['digest']}", "*/*")
        assert status == 200
        assert (config["architecture"], config.get("variant")) == \
            (entry["platform"]["architecture"], entry["platform"].get("variant"))
        assert config["config"]["Cmd"] == ["sh"]


def test_arm64_only_image_is_a_plain_manifest(registry: str, arm64_only_image: BuiltImage,
                                              busybox_image: BuiltImage) -> None:
    assert arm64_only_image.media_type == OCI_MANIFEST
    assert arm64_only_image.index_digest == arm64_only_image.digests["linux/arm64"]
    assert arm64_only_image.digests["linux/arm64"] == busybox_image.digests["linux/arm64"]
    status, manifest = _registry_get(registry, "/v2/corral/busybox-arm64/manifests/1",
                                     OCI_MANIFEST)
    assert status == 200 and manifest["mediaType"] == OCI_MANIFEST


@pytest.mark.parametrize("platform", ["linux/arm64", "linux/arm/v7", "linux/amd64"])
def test_pull_by_digest_runs_the_right_architecture(docker_host: str, binfmt: None,
                                                    busybox_image: BuiltImage,
                                                    platform: str) -> None:
    ref = busybox_image.by_digest(platform)
    assert ref.startswith("127.0.0.1:5000/corral/busybox@sha256:")
    assert _docker_run(docker_host, ref, "uname", "-m").strip() == UNAME[platform]


def test_builds_are_deterministic(registry: str, busybox_image: BuiltImage) -> None:
    first = build_busybox(registry, rebuild=True)
    second = build_busybox(registry, rebuild=True)
    assert first == second == busybox_image


@pytest.fixture(scope="module")
def pull_host(netns_host_factory: NetnsHostFactory, registry: str) -> Any:
    port = int(registry.rsplit(":", 1)[1])
    return netns_host_factory("tb-pull", [port])


def test_netns_host_pulls_through_forwarder_and_runs_arm64(pull_host: Any,
                                                           busybox_image: BuiltImage) -> None:
    # Its own dockerd, on its own bridge: not the root one.
    status, body = docker_request(pull_host.docker_host, "GET", "/networks/bridge")
    assert status == 200
    subnet = json.loads(body)["IPAM"]["Config"][0]["Subnet"]
    assert subnet == f"172.31.{pull_host.index}.0/24"
    proc = pull_host.popen([DOCKER, "run", "--rm", busybox_image.by_digest("linux/arm64"),
                            "uname", "-m"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    assert out.decode().strip() == "aarch64"
    status, body = docker_request(pull_host.docker_host, "GET", "/containers/json?all=1")
    assert status == 200 and json.loads(body) == []  # --rm cleaned up


def test_popen_sets_its_own_hostname(pull_host: Any) -> None:
    proc = pull_host.popen(["hostname"], hostname="h1", stdout=subprocess.PIPE)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and out.decode().strip() == "h1"
    proc = pull_host.popen(["hostname"], stdout=subprocess.PIPE)
    out, _ = proc.communicate(timeout=30)
    assert out.decode().strip() == socket.gethostname() != "h1"


class _Handler(socketserver.BaseRequestHandler):
    """Read until the peer half-closes, then answer sha256 + the reversed bytes."""

    def handle(self) -> None:
        chunks = []
        while data := self.request.recv(65536):
            chunks.append(data)
        data = b"".join(chunks)
        self.request.sendall(hashlib.sha256(data).hexdigest().encode() + b"\n" + data[::-1])


@pytest.fixture
def echo_port() -> Iterator[int]:
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


_CLIENT = """
import hashlib, socket, sys
port, size = int(sys.argv[1]), int(sys.argv[2])
payload = bytes(range(256)) * (size // 256)
s = socket.create_connection(("127.0.0.1", port), timeout=30)
s.sendall(payload)
s.shutdown(socket.SHUT_WR)
got = b"".join(iter(lambda: s.recv(65536), b""))
digest, _, body = got.partition(b"\\n")
assert digest.decode() == hashlib.sha256(payload).hexdigest(), "server saw other bytes"
assert body == payload[::-1], "reply corrupted"
print("ok", len(body))
"""


def test_forwarder_relays_both_ways(netns_host_factory: NetnsHostFactory,
                                    echo_port: int) -> None:
    host = netns_host_factory("tb-fwd", [echo_port])
    size = 4 * 1024 * 1024
    proc = host.popen([sys.executable, "-c", _CLIENT, str(echo_port), str(size)],
                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    assert out.decode().split() == ["ok", str(size)]
    # Only forwarded ports exist inside: the root namespace's other listeners do not.
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        connect = "import socket,sys; socket.create_connection(('127.0.0.1', int(sys.argv[1])))"
        probe = host.popen([sys.executable, "-c", connect, str(other.getsockname()[1])],
                           stderr=subprocess.PIPE)
        _, err = probe.communicate(timeout=30)
    assert probe.returncode != 0 and b"ConnectionRefused" in err


@pytest.mark.postgres
def test_postgres_answers_and_fresh_databases_are_empty(postgres_url: str) -> None:
    psycopg = pytest.importorskip("psycopg")
    with psycopg.connect(postgres_url.replace("+psycopg", "")) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("corral",)
        conn.execute("CREATE TABLE IF NOT EXISTS testbed_probe (x int)")
    url = fresh_postgres_database("testbed_fresh")
    with psycopg.connect(url.replace("+psycopg", "")) as conn:
        conn.execute("CREATE TABLE t (x int)")
    url = fresh_postgres_database("testbed_fresh")
    with psycopg.connect(url.replace("+psycopg", "")) as conn:
        assert conn.execute("SELECT count(*) FROM pg_tables WHERE tablename = 't'").fetchone() \
            == (0,)
