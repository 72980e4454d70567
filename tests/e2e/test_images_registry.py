"""corral.images against the real test-bed registry (Debian's docker-registry, Distribution 2.8).

Besides the test bed's own images (``busybox_image``: a 3-platform OCI index,
``arm64_only_image``: one manifest), this module pushes what the test bed lacks:

* ``corral/attested``: busybox's three manifests (blobs cross-repo mounted from
  corral/busybox, not re-uploaded) under an index that also lists two BuildKit-style
  attestation manifests (platform unknown/unknown, annotated
  ``vnd.docker.reference.type: attestation-manifest``, an in-toto layer), tag ``1``;
  and an index of nothing but those attestations, tag ``attestations-only``.
* a copy of the arm64 image, ``corral/private-arm64:1``, in the second docker-registry
  with htpasswd (bcrypt) basic auth on 127.0.0.1:5001 (the session fixture
  ``auth_registry``, testbed.auth_registry, started on first use, stopped at the end).

All traffic is to 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

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
from testbed.auth_registry import AuthRegistry, Pusher, copy_image, dumps, sha
from testbed.images import BuiltImage

pytestmark = pytest.mark.e2e

ATTESTED = "corral/attested"
PRIVATE = "corral/private-arm64"


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


@dataclass(frozen=True)
class Private:
    registry: AuthRegistry
    ref: str


@pytest.fixture(scope="module")
def private(auth_registry: AuthRegistry, registry: str,
            arm64_only_image: BuiltImage) -> Private:
    """``corral/private-arm64:1`` in the auth registry: a copy of the arm64 image."""
    digest = copy_image(registry, "corral/busybox-arm64", "1", auth_registry, PRIVATE, "1")
    assert digest == arm64_only_image.index_digest
    return Private(auth_registry, f"{auth_registry.address}/{PRIVATE}:1")


def test_basic_auth_right_credentials(private: Private, arm64_only_image: BuiltImage) -> None:
    asked: list[str] = []
    reg = private.registry

    def credentials(host: str) -> tuple[str, str] | None:
        asked.append(host)
        return reg.auth if host == reg.address else None

    with RegistryClient(credentials=credentials, retries=1, backoff=0.05) as c:
        image = c.resolve(private.ref)
    assert image.digest == arm64_only_image.index_digest
    assert image.platform_strings() == ("linux/arm64",)
    assert set(asked) == {reg.address}


def test_basic_auth_wrong_credentials(private: Private) -> None:
    ref, user = private.ref, private.registry.username
    with RegistryClient(credentials=lambda h: (user, "wrong"), retries=1, backoff=0.05) as c, \
            pytest.raises(RegistryAuthError) as info:
        c.resolve(ref)
    assert repr(ref) in str(info.value) and f"user {user!r}" in str(info.value)
    assert info.value.retryable is False


def test_basic_auth_no_credentials(private: Private) -> None:
    ref = private.ref
    with RegistryClient(retries=1, backoff=0.05) as c, \
            pytest.raises(RegistryAuthError) as info:
        c.resolve(ref)
    assert repr(ref) in str(info.value) and "none are stored" in str(info.value)


def test_auth_registry_is_really_closed(private: Private) -> None:
    """The fixture's registry must refuse anonymous reads, or the tests above prove nothing."""
    r = httpx.get(f"http://{private.registry.address}/v2/{PRIVATE}/manifests/1", timeout=5,
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
