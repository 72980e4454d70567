"""corral.images against the real test-bed registry (Debian's docker-registry, Distribution 2.8).

Besides the test bed's own images (``busybox_image``: a 3-platform OCI index,
``arm64_only_image``: one manifest), this module pushes what the test bed lacks:

* ``corral/attested``: busybox's three manifests (blobs cross-repo mounted from
  corral/busybox, not re-uploaded) under an index that also lists two BuildKit-style
  attestation manifests (platform unknown/unknown, annotated
  ``vnd.docker.reference.type: attestation-manifest``, an in-toto layer), tag ``1``;
  and an index of nothing but those attestations, tag ``attestations-only``.
* a second docker-registry with htpasswd (bcrypt) basic auth on 127.0.0.1:5001, started by
  a session fixture here and stopped at the end, holding a copy of the arm64 image.

All traffic is to 127.0.0.1.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from corral.images import (
    ImageNotFound,
    NoUsablePlatforms,
    RegistryAuthError,
    RegistryClient,
    RegistryUnreachable,
)
from corral.images.client import OCI_INDEX, OCI_MANIFEST
from testbed.daemons import LOG_DIR, log_tail, wait_until
from testbed.images import BuiltImage

pytestmark = pytest.mark.e2e

ATTESTED = "corral/attested"
AUTH_PORT = 5001
USER, PASSWORD = "corral", "s3cret-pw"


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

    def copy_image(self, repo: str, manifest_digest: str, source: Pusher,
                   from_repo: str) -> bytes:
        """Copy one image manifest and its blobs; returns the manifest bytes."""
        body = source.get_manifest(from_repo, manifest_digest, OCI_MANIFEST)
        doc = json.loads(body)
        for blob in (doc["config"], *doc["layers"]):
            self.mount_or_push(repo, blob["digest"], source, from_repo)
        self.put_manifest(repo, manifest_digest, body, OCI_MANIFEST)
        return body


def push_attestation(pusher: Pusher, repo: str, subject: str) -> dict[str, object]:
    """A BuildKit-shaped attestation manifest for ``subject``; returns its index entry."""
    statement = dumps({"_type": "https://in-toto.io/Statement/v0.1",
                       "predicateType": "https://spdx.dev/Document",
                       "subject": [{"name": "corral/busybox", "digest": {
                           "sha256": subject.split(":", 1)[1]}}],
                       "predicate": {"spdxVersion": "SPDX-2.3", "name": "corral-e2e"}})
    config = dumps({"architecture": "unknown", "os": "unknown", "config": {},
                    "rootfs": {"type": "layers", "diff_ids": [sha(statement)]}})
    manifest = dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": pusher.push_blob(repo, config), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.in-toto+json",
                    "digest": pusher.push_blob(repo, statement), "size": len(statement),
                    "annotations": {"in-toto.io/predicate-type": "https://spdx.dev/Document"}}],
    })
    digest = pusher.put_manifest(repo, sha(manifest), manifest, OCI_MANIFEST)
    return {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(manifest),
            "platform": {"architecture": "unknown", "os": "unknown"},
            "annotations": {"vnd.docker.reference.digest": subject,
                            "vnd.docker.reference.type": "attestation-manifest"}}


@dataclass(frozen=True)
class Attested:
    ref: str
    index_digest: str
    only_attestations_ref: str
    digests: dict[str, str]


@pytest.fixture(scope="module")
def attested(registry: str, busybox_image: BuiltImage) -> Iterator[Attested]:
    pusher = Pusher(registry)
    try:
        entries: list[dict[str, object]] = []
        attestations = []
        for platform, digest in busybox_image.digests.items():
            body = pusher.copy_image(ATTESTED, digest, pusher, "corral/busybox")
            os_name, arch, *variant = platform.split("/")
            plat = {"os": os_name, "architecture": arch}
            if variant:
                plat["variant"] = variant[0]
            entries.append({"mediaType": OCI_MANIFEST, "digest": digest, "size": len(body),
                            "platform": plat})
            if platform != "linux/arm/v7":  # attest two of the three, as buildx would all
                attestations.append(push_attestation(pusher, ATTESTED, digest))
        interleaved = [entries[0], attestations[0], entries[1], attestations[1], entries[2]]
        index = dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": interleaved})
        index_digest = pusher.put_manifest(ATTESTED, "1", index, OCI_INDEX)
        only = dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": attestations})
        pusher.put_manifest(ATTESTED, "attestations-only", only, OCI_INDEX)
    finally:
        pusher.close()
    yield Attested(f"{registry}/{ATTESTED}:1", index_digest,
                   f"{registry}/{ATTESTED}:attestations-only", dict(busybox_image.digests))


@pytest.fixture
def client() -> Iterator[RegistryClient]:
    with RegistryClient(retries=1, backoff=0.05) as c:
        yield c


# ---------------------------------------------------------------- the test bed's images


def test_three_platform_index(client: RegistryClient, busybox_image: BuiltImage) -> None:
    image = client.resolve(busybox_image.ref)
    assert image.digest == busybox_image.index_digest
    assert image.media_type == OCI_INDEX
    assert {p.platform: p.digest for p in image.platforms} == busybox_image.digests
    assert set(image.platform_strings()) == {"linux/amd64", "linux/arm64", "linux/arm/v7"}
    assert all(p.media_type == OCI_MANIFEST and p.size > 0 for p in image.platforms)
    assert image.pull_reference("linux/arm64") == busybox_image.by_digest("linux/arm64")


def test_single_manifest_platform_comes_from_its_config(client: RegistryClient,
                                                         arm64_only_image: BuiltImage) -> None:
    image = client.resolve(arm64_only_image.ref)
    assert image.media_type == OCI_MANIFEST
    assert image.digest == arm64_only_image.index_digest
    assert image.platform_strings() == ("linux/arm64",)
    assert image.platforms[0].digest == arm64_only_image.digests["linux/arm64"]


def test_resolve_by_digest(client: RegistryClient, busybox_image: BuiltImage) -> None:
    by_index = client.resolve(f"{busybox_image.repository}@{busybox_image.index_digest}")
    assert {p.platform: p.digest for p in by_index.platforms} == busybox_image.digests
    one = client.resolve(busybox_image.by_digest("linux/arm/v7"))
    assert one.platform_strings() == ("linux/arm/v7",)


def test_warm_resolve_sends_nothing_and_revalidation_is_one_head(
        busybox_image: BuiltImage) -> None:
    methods: list[str] = []

    class Counting(httpx.HTTPTransport):
        def handle_request(self, request: httpx.Request) -> httpx.Response:
            methods.append(request.method)
            return super().handle_request(request)

    now = [0.0]
    with RegistryClient(transport=Counting(), clock=lambda: now[0]) as c:
        cold = c.resolve(busybox_image.ref)
        assert methods == ["GET"]
        now[0] += 29
        assert c.resolve(busybox_image.ref) == cold and methods == ["GET"]
        now[0] += 2  # past the 30 s TTL: Distribution answers a HEAD with the digest
        assert c.resolve(busybox_image.ref) == cold and methods == ["GET", "HEAD"]


def test_unknown_tag(client: RegistryClient, busybox_image: BuiltImage) -> None:
    ref = f"{busybox_image.repository}:no-such-tag"
    with pytest.raises(ImageNotFound) as info:
        client.resolve(ref)
    assert repr(ref) in str(info.value) and "tag 'no-such-tag' not found" in str(info.value)
    assert info.value.retryable is False


def test_unknown_repository(client: RegistryClient, registry: str) -> None:
    ref = f"{registry}/corral/no-such-repository:1"
    with pytest.raises(ImageNotFound) as info:
        client.resolve(ref)
    assert repr(ref) in str(info.value)
    assert f"repository {registry}/corral/no-such-repository not found" in str(info.value)


def test_unreachable_registry(client: RegistryClient) -> None:
    ref = "127.0.0.1:1/corral/busybox:1"
    with pytest.raises(RegistryUnreachable) as info:
        client.resolve(ref)
    assert repr(ref) in str(info.value) and "unreachable after 2 attempts" in str(info.value)
    assert info.value.retryable is True


# ---------------------------------------------------------------- attestations


def test_attestation_entries_are_skipped(client: RegistryClient, attested: Attested) -> None:
    image = client.resolve(attested.ref)
    assert image.digest == attested.index_digest
    assert {p.platform: p.digest for p in image.platforms} == attested.digests


def test_index_of_only_attestations(client: RegistryClient, attested: Attested) -> None:
    with pytest.raises(NoUsablePlatforms) as info:
        client.resolve(attested.only_attestations_ref)
    assert repr(attested.only_attestations_ref) in str(info.value)
    assert "2 attestation or unknown/unknown" in str(info.value)


# ---------------------------------------------------------------- basic auth


def _free_port(preferred: int) -> int:
    """``preferred`` if nothing listens there, else any free loopback port."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def auth_registry(tmp_path_factory: pytest.TempPathFactory, registry: str,
                  arm64_only_image: BuiltImage) -> Iterator[str]:
    """A second docker-registry, htpasswd auth, holding ``corral/private:1`` (arm64)."""
    if shutil.which("htpasswd") is None:
        pytest.fail("htpasswd not found: apt-get install apache2-utils "
                    "(scripts/install-deps.sh installs it)")
    root = tmp_path_factory.mktemp("auth-registry")
    hashed = subprocess.run(["htpasswd", "-nbB", USER, PASSWORD], capture_output=True,
                            text=True, check=True).stdout.strip()
    (root / "htpasswd").write_text(hashed + "\n")
    address = f"127.0.0.1:{_free_port(AUTH_PORT)}"
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
        f"http:\n  addr: {address}\n  secret: corral-e2e-not-a-secret\n"
        f"auth:\n  htpasswd:\n    realm: corral-e2e\n    path: {root / 'htpasswd'}\n")
    log = LOG_DIR / f"registry-auth-{address.rsplit(':', 1)[1]}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        proc = subprocess.Popen(["docker-registry", "serve", str(config)],
                                stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True)
    try:
        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"docker-registry exited ({proc.returncode}):\n"
                                     f"{log_tail(Path(log))}")
            try:
                return httpx.get(f"http://{address}/v2/", timeout=1).status_code == 401
            except httpx.TransportError:
                return False

        wait_until(up, 30, f"docker-registry with htpasswd on {address}", log=log)
        source, target = Pusher(registry), Pusher(address, auth=(USER, PASSWORD))
        try:
            body = target.copy_image("corral/private", arm64_only_image.index_digest, source,
                                     "corral/busybox-arm64")
            target.put_manifest("corral/private", "1", body, OCI_MANIFEST)
        finally:
            source.close()
            target.close()
        yield address
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def test_basic_auth_right_credentials(auth_registry: str, arm64_only_image: BuiltImage) -> None:
    asked: list[str] = []

    def credentials(host: str) -> tuple[str, str] | None:
        asked.append(host)
        return (USER, PASSWORD) if host == auth_registry else None

    with RegistryClient(credentials=credentials, retries=1, backoff=0.05) as c:
        image = c.resolve(f"{auth_registry}/corral/private:1")
    assert image.digest == arm64_only_image.index_digest
    assert image.platform_strings() == ("linux/arm64",)
    assert set(asked) == {auth_registry}


def test_basic_auth_wrong_credentials(auth_registry: str) -> None:
    ref = f"{auth_registry}/corral/private:1"
    with RegistryClient(credentials=lambda h: (USER, "wrong"), retries=1, backoff=0.05) as c, \
            pytest.raises(RegistryAuthError) as info:
        c.resolve(ref)
    assert repr(ref) in str(info.value) and f"user {USER!r}" in str(info.value)
    assert info.value.retryable is False


def test_basic_auth_no_credentials(auth_registry: str) -> None:
    ref = f"{auth_registry}/corral/private:1"
    with RegistryClient(retries=1, backoff=0.05) as c, \
            pytest.raises(RegistryAuthError) as info:
        c.resolve(ref)
    assert repr(ref) in str(info.value) and "none are stored" in str(info.value)


def test_auth_registry_is_really_closed(auth_registry: str) -> None:
    """The fixture's registry must refuse anonymous reads, or the tests above prove nothing."""
    r = httpx.get(f"http://{auth_registry}/v2/corral/private/manifests/1", timeout=5,
                  headers={"Accept": OCI_MANIFEST})
    assert r.status_code == 401
    assert r.headers["WWW-Authenticate"].startswith("Basic ")


def test_image_sizes_are_config_plus_layers(busybox_image: BuiltImage) -> None:
    with RegistryClient() as client:
        resolved = client.resolve(busybox_image.ref)
        sizes = client.image_sizes(resolved)
    assert set(sizes) == {"linux/amd64", "linux/arm64", "linux/arm/v7"}
    # busybox-static is about a megabyte compressed on every architecture
    assert all(500_000 < n < 5_000_000 for n in sizes.values()), sizes
