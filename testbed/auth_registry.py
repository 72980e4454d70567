"""A second registry with htpasswd auth, and the push side of the distribution API.

:func:`ensure_auth_registry` starts Debian's ``docker-registry`` on ``127.0.0.1:5001``
(plain HTTP, loopback only, htpasswd with bcrypt: user ``corral``, password
``s3cret-pw``), unless one already answers there with a Basic challenge and accepts those
credentials; if the port is taken by something else, any free loopback port is used. Its
storage, config and htpasswd live in /var/lib/corral-testbed/registry-auth-PORT/, its log
in /var/log/corral-testbed/registry-auth-PORT.log. Unlike the test bed's daemons it is not
meant to outlive the test session: the ``auth_registry`` fixture (testbed.fixtures)
calls :func:`stop_auth_registry` at session end, which stops only what this process
started.

:class:`Pusher` is just enough of the push side (httpx, plain HTTP: monolithic blob
uploads, cross-repo mounts, manifests by digest or tag); :func:`copy_image` copies a whole
image (an index with its manifests and blobs, or a single manifest) from one registry to
another, e.g. from the open test-bed registry on 5000 to the auth one.

All traffic is to 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import socket
import subprocess
import threading
from dataclasses import dataclass

import httpx

from testbed.daemons import (
    LOG_DIR,
    STATE_DIR,
    TestbedError,
    log_tail,
    machine_lock,
    spawn_detached,
    wait_until,
)
from testbed.images import OCI_INDEX, OCI_MANIFEST

DEFAULT_PORT = 5001
USERNAME, PASSWORD = "corral", "s3cret-pw"

DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
ACCEPT = ", ".join((OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST))


@dataclass(frozen=True)
class AuthRegistry:
    """Where the auth registry listens (``127.0.0.1:PORT``) and the one user it knows."""

    address: str
    username: str = USERNAME
    password: str = PASSWORD

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

    @property
    def auth(self) -> tuple[str, str]:
        return (self.username, self.password)


# ---------------------------------------------------------------- lifecycle

_lock = threading.Lock()
# requested port -> (the registry, its process): the ones this process started
_started: dict[int, tuple[AuthRegistry, subprocess.Popen[bytes]]] = {}


def _probe(address: str) -> str:
    """'ours' (Basic challenge, our credentials work), 'other' (something else), 'free'."""
    try:
        anonymous = httpx.get(f"http://{address}/v2/", timeout=2)
    except httpx.TransportError:
        return "free"
    if anonymous.status_code != 401 or \
            not anonymous.headers.get("WWW-Authenticate", "").startswith("Basic "):
        return "other"
    try:
        with_user = httpx.get(f"http://{address}/v2/", auth=(USERNAME, PASSWORD), timeout=2)
    except httpx.TransportError:
        return "other"
    return "ours" if with_user.status_code == 200 else "other"


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _any_free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start(port: int) -> subprocess.Popen[bytes]:
    if shutil.which("docker-registry") is None:
        raise TestbedError("docker-registry not found: run scripts/install-deps.sh")
    if shutil.which("htpasswd") is None:
        raise TestbedError("htpasswd not found: apt-get install apache2-utils "
                           "(scripts/install-deps.sh installs it)")
    address = f"127.0.0.1:{port}"
    root = STATE_DIR / f"registry-auth-{port}"
    (root / "data").mkdir(parents=True, exist_ok=True)
    hashed = subprocess.run(["htpasswd", "-nbB", USERNAME, PASSWORD], capture_output=True,
                            text=True, check=True).stdout.strip()
    (root / "htpasswd").write_text(hashed + "\n")
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
        "  delete:\n    enabled: true\n"
        f"http:\n  addr: {address}\n  secret: corral-e2e-not-a-secret\n"
        f"auth:\n  htpasswd:\n    realm: corral-e2e\n    path: {root / 'htpasswd'}\n")
    log = LOG_DIR / f"registry-auth-{port}.log"
    proc = spawn_detached(["docker-registry", "serve", str(config)], log)

    def up() -> bool:
        if proc.poll() is not None:
            raise TestbedError(f"docker-registry (auth) exited ({proc.returncode}):\n"
                               f"{log_tail(log)}")
        return _probe(address) == "ours"

    try:
        wait_until(up, 30, f"docker-registry with htpasswd on {address}", log=log)
    except BaseException:
        _terminate(proc)
        raise
    return proc


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def ensure_auth_registry(port: int = DEFAULT_PORT) -> AuthRegistry:
    """The htpasswd registry on ``127.0.0.1:port``, started unless it already answers.

    Reused as is when ``port`` already serves a registry that accepts ``corral`` /
    ``s3cret-pw`` (started earlier in this session, or by another one); started when the
    port is free; on another free port when something else holds ``port``.
    """
    with _lock:
        known = _started.get(port)
        if known is not None and known[1].poll() is None:
            return known[0]
        with machine_lock(f"registry-auth-{port}"):
            state = _probe(f"127.0.0.1:{port}")
            if state == "ours":
                return AuthRegistry(f"127.0.0.1:{port}")
            actual = port if state == "free" and _port_free(port) else _any_free_port()
            registry = AuthRegistry(f"127.0.0.1:{actual}")
            _started[port] = (registry, _start(actual))
        return registry


def stop_auth_registry() -> None:
    """Stop every auth registry this process started (one it merely reused stays)."""
    with _lock:
        while _started:
            _, (_, proc) = _started.popitem()
            _terminate(proc)


# ---------------------------------------------------------------- pushing


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def dumps(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


class Pusher:
    """Just enough of the push side of the distribution API (httpx, plain HTTP)."""

    def __init__(self, registry: str, auth: tuple[str, str] | None = None) -> None:
        self.http = httpx.Client(base_url=f"http://{registry}", auth=auth, timeout=30)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Pusher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def mount_or_push(self, repo: str, digest: str, source: Pusher, from_repo: str) -> None:
        if self.http.head(f"/v2/{repo}/blobs/{digest}").status_code == 200:
            return
        if source is self:
            r = self.http.post(f"/v2/{repo}/blobs/uploads/",
                               params={"mount": digest, "from": from_repo})
            if r.status_code == 201:
                return
            assert r.status_code == 202, r.text  # mount refused: an upload was started
        blob = source.http.get(f"/v2/{from_repo}/blobs/{digest}")
        assert blob.status_code == 200, blob.text
        self.push_blob(repo, blob.content)

    def push_blob(self, repo: str, data: bytes) -> str:
        digest = sha(data)
        if self.http.head(f"/v2/{repo}/blobs/{digest}").status_code == 200:
            return digest
        start = self.http.post(f"/v2/{repo}/blobs/uploads/")
        assert start.status_code == 202, start.text
        # Location carries the upload state in its query: merge, never replace it.
        location = httpx.URL(start.headers["Location"]).copy_merge_params({"digest": digest})
        done = self.http.put(location, content=data,
                             headers={"Content-Type": "application/octet-stream"})
        assert done.status_code == 201, done.text
        return digest

    def get_manifest(self, repo: str, reference: str, media_type: str) -> bytes:
        r = self.http.get(f"/v2/{repo}/manifests/{reference}", headers={"Accept": media_type})
        assert r.status_code == 200, r.text
        return r.content

    def put_manifest(self, repo: str, reference: str, body: bytes, media_type: str) -> str:
        r = self.http.put(f"/v2/{repo}/manifests/{reference}", content=body,
                          headers={"Content-Type": media_type})
        assert r.status_code == 201, r.text
        assert r.headers["Docker-Content-Digest"] == sha(body)
        return sha(body)

    def copy_image(self, repo: str, manifest_digest: str, source: Pusher, from_repo: str,
                   media_type: str = OCI_MANIFEST) -> bytes:
        """Copy one image manifest and its blobs; returns the manifest bytes."""
        body = source.get_manifest(from_repo, manifest_digest, media_type)
        doc = json.loads(body)
        for blob in (doc["config"], *doc["layers"]):
            self.mount_or_push(repo, blob["digest"], source, from_repo)
        self.put_manifest(repo, manifest_digest, body, media_type)
        return body


def _media_type(response: httpx.Response) -> str:
    declared = response.headers.get("Content-Type", "").split(";", 1)[0].strip()
    if declared in INDEX_TYPES or declared in (OCI_MANIFEST, DOCKER_MANIFEST):
        return declared
    doc = json.loads(response.content)
    return str(doc.get("mediaType") or (OCI_INDEX if "manifests" in doc else OCI_MANIFEST))


def copy_image(src_registry: str, src_repo: str, src_tag: str, dst: AuthRegistry,
               dst_repo: str, dst_tag: str) -> str:
    """Copy ``src_registry/src_repo:src_tag`` (open registry) to ``dst/dst_repo:dst_tag``.

    An index is copied whole: every manifest it lists with its config and layers, then the
    index itself, byte for byte, so every digest stays the same. Returns the digest the new
    tag names (the index's, or the single manifest's).
    """
    with Pusher(src_registry) as source, Pusher(dst.address, auth=dst.auth) as target:
        r = source.http.get(f"/v2/{src_repo}/manifests/{src_tag}", headers={"Accept": ACCEPT})
        assert r.status_code == 200, f"{src_registry}/{src_repo}:{src_tag}: {r.text}"
        media_type, body = _media_type(r), r.content
        if media_type in INDEX_TYPES:
            for entry in json.loads(body)["manifests"]:
                target.copy_image(dst_repo, entry["digest"], source, src_repo,
                                  entry.get("mediaType") or OCI_MANIFEST)
        else:
            target.copy_image(dst_repo, sha(body), source, src_repo, media_type)
        return target.put_manifest(dst_repo, dst_tag, body, media_type)
