"""Unit tests of corral.images.client against a fake registry (an httpx.MockTransport).

The fake speaks enough of the distribution API to be honest: manifests by tag and digest
(GET and HEAD, with Content-Type and Docker-Content-Digest), blobs, tags/list, the error
bodies Distribution sends, Distribution 2.8's refusal to serve an OCI document to a client
whose Accept does not name its type, Basic and Bearer auth with a token endpoint, and
injected failures (5xx, connection errors, timeouts). Every request is logged so tests can
count them. Nothing here opens a socket: an autouse fixture fails any test that reaches a
real transport.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from corral.images import (
    ImageNotFound,
    InvalidReference,
    NoUsablePlatforms,
    PlatformImage,
    RegistryAuthError,
    RegistryClient,
    RegistryProtocolError,
    RegistryUnavailable,
    RegistryUnreachable,
    ResolvedImage,
    UnsupportedMediaType,
)
from corral.images.client import (
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
    OCI_INDEX,
    OCI_MANIFEST,
    parse_challenge,
)

REG = "127.0.0.1:5999"  # loopback-looking: plain HTTP by default, never dialled (mock)
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def dumps(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


@pytest.fixture(autouse=True)
def no_real_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object, **__: object) -> None:
        raise AssertionError("a unit test tried to use the real network")

    monkeypatch.setattr(httpx.HTTPTransport, "handle_request", refuse)


# ---------------------------------------------------------------- the fake registry


@dataclass
class Repo:
    manifests: dict[str, tuple[str, bytes]] = field(default_factory=dict)  # digest -> (mt, body)
    tags: dict[str, str] = field(default_factory=dict)
    blobs: dict[str, bytes] = field(default_factory=dict)


@dataclass
class Call:
    method: str
    url: httpx.URL
    headers: httpx.Headers

    @property
    def path(self) -> str:
        return self.url.path


class FakeRegistry:
    """In-memory distribution API; ``auth`` is None, "basic" or "bearer"."""

    def __init__(self, auth: str | None = None, users: dict[str, str] | None = None,
                 anonymous_pull: bool = True) -> None:
        self.repos: dict[str, Repo] = {}
        self.auth = auth
        self.users = users or {}
        self.anonymous_pull = anonymous_pull
        self.tokens: dict[str, str | None] = {}  # token -> user
        self.calls: list[Call] = []
        self.failures: list[int | Exception] = []  # consumed one per request
        self.lock = threading.Lock()

    # -- content
    def repo(self, name: str) -> Repo:
        return self.repos.setdefault(name, Repo())

    def put_manifest(self, repo: str, media_type: str, obj: object,
                     tag: str | None = None) -> tuple[str, int]:
        body = dumps(obj)
        digest = sha(body)
        self.repo(repo).manifests[digest] = (media_type, body)
        if tag:
            self.repo(repo).tags[tag] = digest
        return digest, len(body)

    def put_blob(self, repo: str, data: bytes) -> str:
        self.repo(repo).blobs[sha(data)] = data
        return sha(data)

    def put_image(self, repo: str, platform: str, *, docker: bool = False,
                  tag: str | None = None, extra: dict[str, Any] | None = None) -> tuple[str, int]:
        os_name, arch, *variant = platform.split("/")
        config_obj: dict[str, Any] = {"os": os_name, "architecture": arch,
                                      "rootfs": {"type": "layers", "diff_ids": []}}
        if variant:
            config_obj["variant"] = variant[0]
        config_obj.update(extra or {})
        config = dumps(config_obj)
        media_type = DOCKER_MANIFEST if docker else OCI_MANIFEST
        return self.put_manifest(repo, media_type, {
            "schemaVersion": 2, "mediaType": media_type,
            "config": {"mediaType": DOCKER_CONFIG if docker else OCI_CONFIG,
                       "digest": self.put_blob(repo, config), "size": len(config)},
            "layers": []}, tag)

    def put_index(self, repo: str, tag: str, entries: list[dict[str, Any]],
                  media_type: str = OCI_INDEX) -> str:
        return self.put_manifest(repo, media_type, {"schemaVersion": 2, "mediaType": media_type,
                                                    "manifests": entries}, tag)[0]

    def entry(self, repo: str, platform: str, *, annotations: dict[str, str] | None = None,
              docker: bool = False, extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Push a one-platform image and return its index descriptor."""
        digest, size = self.put_image(repo, platform, docker=docker)
        os_name, arch, *variant = platform.split("/")
        plat: dict[str, Any] = {"os": os_name, "architecture": arch, **(extra or {})}
        if variant:
            plat["variant"] = variant[0]
        out = {"mediaType": DOCKER_MANIFEST if docker else OCI_MANIFEST, "digest": digest,
               "size": size, "platform": plat}
        if annotations:
            out["annotations"] = annotations
        return out

    # -- HTTP
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def paths(self) -> list[str]:
        return [f"{c.method} {c.path}" for c in self.calls]

    def handle(self, request: httpx.Request) -> httpx.Response:
        with self.lock:
            self.calls.append(Call(request.method, request.url, request.headers))
            failure = self.failures.pop(0) if self.failures else None
        if isinstance(failure, Exception):
            raise failure
        if failure is not None:
            return error(failure, "UNAVAILABLE", "injected failure")
        if request.url.path == "/token":
            return self.token(request)
        denied = self.check_auth(request)
        if denied is not None:
            return denied
        return self.api(request)

    def user_of(self, request: httpx.Request) -> str | None | bool:
        """The user a Basic header proves, None if absent, False if wrong."""
        header = request.headers.get("Authorization", "")
        if not header.startswith("Basic "):
            return None
        name, _, password = base64.b64decode(header[6:]).decode().partition(":")
        return name if self.users.get(name) == password else False

    def token(self, request: httpx.Request) -> httpx.Response:
        user = self.user_of(request)
        if user is False or (user is None and not self.anonymous_pull):
            return error(401, "UNAUTHORIZED", "authentication required")
        token = f"tok{len(self.tokens)}"
        self.tokens[token] = user if isinstance(user, str) else None
        assert request.url.params.get("service") == "fake-registry"
        assert request.url.params.get("scope", "").startswith("repository:")
        return httpx.Response(200, json={"token": token, "expires_in": 300})

    def check_auth(self, request: httpx.Request) -> httpx.Response | None:
        header = request.headers.get("Authorization", "")
        if self.auth == "basic":
            if self.user_of(request):
                return None
            return error(401, "UNAUTHORIZED", "authentication required",
                         {"WWW-Authenticate": 'Basic realm="fake"'})
        if self.auth == "bearer":
            if header.startswith("Bearer ") and header[7:] in self.tokens:
                return None
            repo = request.url.path.split("/v2/", 1)[1].rsplit("/manifests/", 1)[0]
            challenge = (f'Bearer realm="http://{REG}/token",service="fake-registry",'
                         f'scope="repository:{repo}:pull"')
            return error(401, "UNAUTHORIZED", "authentication required",
                         {"WWW-Authenticate": challenge})
        return None

    def api(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        assert path.startswith("/v2/"), path
        for kind in ("manifests", "blobs", "tags"):
            sep = f"/{kind}/"
            if sep in path:
                name, ref = path[4:].rsplit(sep, 1)
                break
        else:
            return error(404, "NOT_FOUND", "no route")
        repo = self.repos.get(name)
        if kind == "tags":
            if repo is None:
                return error(404, "NAME_UNKNOWN", "repository name not known to registry")
            return httpx.Response(200, json={"name": name, "tags": sorted(repo.tags)})
        if kind == "blobs":
            if repo is None or ref not in repo.blobs:
                return error(404, "BLOB_UNKNOWN", "blob unknown to registry")
            return httpx.Response(200, content=repo.blobs[ref])
        # Distribution 2.8 says MANIFEST_UNKNOWN for an unknown repository, too.
        digest = (repo.tags.get(ref) if ":" not in ref else ref) if repo else None
        if repo is None or digest not in repo.manifests:
            return error(404, "MANIFEST_UNKNOWN", "manifest unknown")
        media_type, body = repo.manifests[digest]
        if media_type.startswith("application/vnd.oci") and media_type not in \
                request.headers.get("Accept", ""):
            return error(404, "MANIFEST_UNKNOWN", "OCI index found, but accept header does "
                         "not support OCI indexes")
        headers = {"Content-Type": media_type, "Docker-Content-Digest": digest}
        if request.method == "HEAD":
            return httpx.Response(200, headers={**headers, "Content-Length": str(len(body))})
        return httpx.Response(200, headers=headers, content=body)


def error(status: int, code: str, message: str,
          headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(status, headers=headers,
                          json={"errors": [{"code": code, "message": message}]})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def fake() -> FakeRegistry:
    return FakeRegistry()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def client(fake: FakeRegistry, clock: Clock, sleeps: list[float]) -> Iterator[RegistryClient]:
    with RegistryClient(transport=fake.transport(), clock=clock, sleep=sleeps.append) as c:
        yield c


def three_platform_index(fake: FakeRegistry, repo: str = "corral/busybox", tag: str = "1",
                         media_type: str = OCI_INDEX) -> tuple[str, list[dict[str, Any]]]:
    docker = media_type == DOCKER_MANIFEST_LIST
    entries = [fake.entry(repo, p, docker=docker)
               for p in ("linux/amd64", "linux/arm64", "linux/arm/v7")]
    return fake.put_index(repo, tag, entries, media_type), entries


# ---------------------------------------------------------------- documents


def test_oci_index_resolves_to_every_platform_in_one_request(
        fake: FakeRegistry, client: RegistryClient) -> None:
    digest, entries = three_platform_index(fake)
    fake.calls.clear()
    image = client.resolve(f"{REG}/corral/busybox:1")
    assert image.digest == digest and image.media_type == OCI_INDEX
    assert (image.reference, image.registry, image.repository, image.tag) == (
        f"{REG}/corral/busybox:1", REG, "corral/busybox", "1")
    assert image.platform_strings() == ("linux/amd64", "linux/arm64", "linux/arm/v7")
    assert [p.digest for p in image.platforms] == [e["digest"] for e in entries]
    assert [p.size for p in image.platforms] == [e["size"] for e in entries]
    assert {p.media_type for p in image.platforms} == {OCI_MANIFEST}
    assert fake.paths() == ["GET /v2/corral/busybox/manifests/1"]
    call = fake.calls[0]
    assert call.url.scheme == "http"  # loopback registries are insecure by default
    for media_type in (OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST):
        assert media_type in call.headers["Accept"]


def test_docker_manifest_list_with_os_version_features_and_arm64_v8(
        fake: FakeRegistry, client: RegistryClient) -> None:
    entries = [
        fake.entry("app", "linux/amd64", docker=True),
        fake.entry("app", "linux/arm64/v8", docker=True),
        fake.entry("app", "linux/arm/v6", docker=True),
        fake.entry("app", "windows/amd64", docker=True,
                   extra={"os.version": "10.0.17763.5329", "os.features": ["win32k"]}),
    ]
    digest = fake.put_index("app", "2", entries, DOCKER_MANIFEST_LIST)
    image = client.resolve(f"{REG}/app:2")
    assert image.media_type == DOCKER_MANIFEST_LIST and image.digest == digest
    assert image.platform_strings() == ("linux/amd64", "linux/arm64", "linux/arm/v6",
                                        "windows/amd64")
    windows = image.for_platform("windows/amd64")
    assert windows is not None
    assert (windows.os_version, windows.os_features) == ("10.0.17763.5329", ("win32k",))
    assert windows.media_type == DOCKER_MANIFEST
    arm64 = image.for_platform("linux/arm64/v8")
    assert arm64 is not None and arm64.digest == entries[1]["digest"]
    assert image.for_platform("linux/arm/v7") is None


@pytest.mark.parametrize("docker", [False, True], ids=["oci", "docker-v2"])
def test_single_manifest_reads_its_platform_from_the_config_blob(
        fake: FakeRegistry, client: RegistryClient, docker: bool) -> None:
    digest, size = fake.put_image("edge/app", "linux/arm/v6", docker=docker, tag="1",
                                  extra={"os.version": "x", "os.features": ["f"]})
    image = client.resolve(f"{REG}/edge/app:1")
    assert image.digest == digest
    assert image.media_type == (DOCKER_MANIFEST if docker else OCI_MANIFEST)
    assert image.platforms == (PlatformImage("linux/arm/v6", digest, size, image.media_type,
                                             "x", ("f",)),)
    config = json.loads(fake.repos["edge/app"].manifests[digest][1])["config"]["digest"]
    assert fake.paths() == ["GET /v2/edge/app/manifests/1", f"GET /v2/edge/app/blobs/{config}"]


def test_attestation_entries_are_skipped(fake: FakeRegistry, client: RegistryClient) -> None:
    amd64 = fake.entry("app", "linux/amd64")
    arm64 = fake.entry("app", "linux/arm64")
    attest = {"vnd.docker.reference.type": "attestation-manifest",
              "vnd.docker.reference.digest": amd64["digest"]}
    fake.put_index("app", "1", [
        amd64, fake.entry("app", "unknown/unknown", annotations=attest),
        arm64, fake.entry("app", "unknown/unknown"),  # unknown/unknown, no annotation
        fake.entry("app", "linux/amd64", annotations=attest),  # annotation, odd platform
    ])
    image = client.resolve(f"{REG}/app:1")
    assert image.platform_strings() == ("linux/amd64", "linux/arm64")
    assert [p.digest for p in image.platforms] == [amd64["digest"], arm64["digest"]]


def test_index_of_only_attestations_has_no_usable_platforms(
        fake: FakeRegistry, client: RegistryClient) -> None:
    fake.put_index("app", "1", [fake.entry("app", "unknown/unknown"),
                                fake.entry("app", "unknown/unknown")])
    with pytest.raises(NoUsablePlatforms) as info:
        client.resolve(f"{REG}/app:1")
    assert f"{REG}/app:1" in str(info.value)
    assert "2 entries: 2 attestation or unknown/unknown" in str(info.value)
    assert info.value.retryable is False


def test_single_manifest_of_unknown_platform_has_no_usable_platforms(
        fake: FakeRegistry, client: RegistryClient) -> None:
    fake.put_image("app", "unknown/unknown", tag="att")
    with pytest.raises(NoUsablePlatforms, match="app:att"):
        client.resolve(f"{REG}/app:att")


@pytest.mark.parametrize(("media_type", "body", "match"), [
    ("application/vnd.example.thing+json", {"schemaVersion": 2}, "vnd.example.thing"),
    ("application/vnd.docker.distribution.manifest.v1+prettyjws",
     {"schemaVersion": 1, "name": "app", "tag": "1"}, "schema 1"),
    (OCI_MANIFEST, {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "layers": [],
                    "config": {"mediaType": "application/vnd.cncf.helm.config.v1+json",
                               "digest": "sha256:" + "0" * 64, "size": 2}},
     "not a container image"),
])
def test_unknown_media_types_are_refused(fake: FakeRegistry, client: RegistryClient,
                                         media_type: str, body: object, match: str) -> None:
    fake.put_manifest("app", media_type, body, tag="1")
    with pytest.raises(UnsupportedMediaType, match=match) as info:
        client.resolve(f"{REG}/app:1")
    assert f"'{REG}/app:1'" in str(info.value) and info.value.retryable is False


def test_media_type_is_sniffed_when_content_type_is_generic() -> None:
    body = dumps({"schemaVersion": 2, "manifests": [{
        "digest": "sha256:" + "1" * 64, "size": 7, "platform": {"os": "linux",
                                                              "architecture": "arm"}}]})
    transport = httpx.MockTransport(lambda _: httpx.Response(
        200, headers={"Content-Type": "application/json"}, content=body))
    with RegistryClient(transport=transport) as c:
        image = c.resolve(f"{REG}/app:1")
    assert image.media_type == OCI_INDEX
    assert image.platforms[0] == PlatformImage("linux/arm/v7", "sha256:" + "1" * 64, 7,
                                               OCI_MANIFEST)


# ---------------------------------------------------------------- not found


def test_unknown_tag(fake: FakeRegistry, client: RegistryClient) -> None:
    three_platform_index(fake)
    with pytest.raises(ImageNotFound) as info:
        client.resolve(f"{REG}/corral/busybox:nope")
    msg = str(info.value)
    assert f"'{REG}/corral/busybox:nope'" in msg and "tag 'nope' not found" in msg
    assert "MANIFEST_UNKNOWN" in msg and info.value.retryable is False


def test_unknown_repository_reported_as_such_even_with_manifest_unknown(
        fake: FakeRegistry, client: RegistryClient) -> None:
    with pytest.raises(ImageNotFound, match=f"repository {REG}/nope/x not found") as info:
        client.resolve(f"{REG}/nope/x:1")
    assert f"'{REG}/nope/x:1'" in str(info.value)
    assert fake.paths() == ["GET /v2/nope/x/manifests/1", "GET /v2/nope/x/tags/list"]


def test_name_unknown() -> None:
    transport = httpx.MockTransport(lambda _: error(404, "NAME_UNKNOWN", "repository name "
                                                    "not known to registry"))
    with RegistryClient(transport=transport) as c, \
            pytest.raises(ImageNotFound, match="repository .*/x not found.*NAME_UNKNOWN"):
        c.resolve(f"{REG}/x:1")


def test_unknown_digest(fake: FakeRegistry, client: RegistryClient) -> None:
    three_platform_index(fake)
    digest = "sha256:" + "f" * 64
    with pytest.raises(ImageNotFound, match=f"manifest {digest} not found"):
        client.resolve(f"{REG}/corral/busybox@{digest}")


def test_invalid_reference_makes_no_request(fake: FakeRegistry, client: RegistryClient) -> None:
    with pytest.raises(InvalidReference, match="'Busybox'"):
        client.resolve("Busybox")
    assert fake.calls == []


# ---------------------------------------------------------------- auth


def test_anonymous_bearer_challenge_then_cached_token(clock: Clock) -> None:
    fake = FakeRegistry(auth="bearer")
    three_platform_index(fake)
    fake.put_index("corral/busybox", "2", [fake.entry("corral/busybox", "linux/s390x")])
    fake.calls.clear()
    seen: list[str] = []

    def creds(registry: str) -> None:
        seen.append(registry)
        return None

    with RegistryClient(transport=fake.transport(), credentials=creds, clock=clock) as c:
        image = c.resolve(f"{REG}/corral/busybox:1")
        assert len(image.platforms) == 3
        assert fake.paths() == ["GET /v2/corral/busybox/manifests/1", "GET /token",
                                "GET /v2/corral/busybox/manifests/1"]
        assert "Authorization" not in fake.calls[1].headers
        assert fake.calls[2].headers["Authorization"] == "Bearer tok0"
        fake.calls.clear()
        c.resolve(f"{REG}/corral/busybox:2")  # same repository: the token is reused
        assert fake.paths() == ["GET /v2/corral/busybox/manifests/2"]
    assert set(seen) == {REG}


def test_bearer_with_basic_credentials_for_the_token() -> None:
    fake = FakeRegistry(auth="bearer", users={"alice": "s3cret"}, anonymous_pull=False)
    three_platform_index(fake)
    with RegistryClient(transport=fake.transport(),
                        credentials=lambda r: ("alice", "s3cret") if r == REG else None) as c:
        assert len(c.resolve(f"{REG}/corral/busybox:1").platforms) == 3
    token_call = next(call for call in fake.calls if call.path == "/token")
    assert token_call.headers["Authorization"] == "Basic " + base64.b64encode(
        b"alice:s3cret").decode()
    assert fake.tokens == {"tok0": "alice"}


def test_bearer_with_wrong_credentials() -> None:
    fake = FakeRegistry(auth="bearer", users={"alice": "s3cret"}, anonymous_pull=False)
    three_platform_index(fake)
    with RegistryClient(transport=fake.transport(), credentials=lambda r: ("alice", "nope")) \
            as c, pytest.raises(RegistryAuthError) as info:
        c.resolve(f"{REG}/corral/busybox:1")
    assert f"'{REG}/corral/busybox:1'" in str(info.value)
    assert "refused user 'alice'" in str(info.value) and info.value.retryable is False


def test_bearer_without_credentials_where_anonymous_is_refused() -> None:
    fake = FakeRegistry(auth="bearer", users={"alice": "s3cret"}, anonymous_pull=False)
    three_platform_index(fake)
    with RegistryClient(transport=fake.transport()) as c, \
            pytest.raises(RegistryAuthError, match="refused anonymous access"):
        c.resolve(f"{REG}/corral/busybox:1")


def test_basic_challenge_then_preemptive_credentials() -> None:
    fake = FakeRegistry(auth="basic", users={"bob": "pw"})
    fake.put_image("app", "linux/arm64", tag="1")
    with RegistryClient(transport=fake.transport(), credentials=lambda r: ("bob", "pw")) as c:
        image = c.resolve(f"{REG}/app:1")
        assert image.platform_strings() == ("linux/arm64",)
    # 401 once; the retry and the config blob carry the credentials from the start.
    assert [c.path.rsplit("/", 2)[-2] for c in fake.calls] == ["manifests", "manifests",
                                                                 "blobs"]
    assert "Authorization" not in fake.calls[0].headers
    assert all(c.headers["Authorization"].startswith("Basic ") for c in fake.calls[1:])


def test_basic_with_wrong_credentials() -> None:
    fake = FakeRegistry(auth="basic", users={"bob": "pw"})
    fake.put_image("app", "linux/arm64", tag="1")
    with RegistryClient(transport=fake.transport(), credentials=lambda r: ("bob", "bad")) as c, \
            pytest.raises(RegistryAuthError, match="refused the credentials of user 'bob'") \
            as info:
        c.resolve(f"{REG}/app:1")
    assert f"'{REG}/app:1'" in str(info.value) and info.value.retryable is False
    assert len(fake.calls) == 2


def test_basic_without_credentials() -> None:
    fake = FakeRegistry(auth="basic", users={"bob": "pw"})
    fake.put_image("app", "linux/arm64", tag="1")
    with RegistryClient(transport=fake.transport()) as c, \
            pytest.raises(RegistryAuthError, match=f"none are stored for {REG}"):
        c.resolve(f"{REG}/app:1")


def test_forbidden_is_an_auth_error() -> None:
    transport = httpx.MockTransport(lambda _: error(403, "DENIED", "requested access to the "
                                                    "resource is denied"))
    with RegistryClient(transport=transport) as c, \
            pytest.raises(RegistryAuthError, match="denied access.*DENIED"):
        c.resolve(f"{REG}/x:1")


def test_parse_challenge() -> None:
    scheme, params = parse_challenge(
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
        'scope="repository:library/busybox:pull"')
    assert scheme == "bearer"
    assert params == {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                      "scope": "repository:library/busybox:pull"}
    assert parse_challenge('Basic realm="Registry Realm"') == ("basic",
                                                               {"realm": "Registry Realm"})


# ---------------------------------------------------------------- retries


def test_503_then_200_is_retried_with_backoff(fake: FakeRegistry, client: RegistryClient,
                                              sleeps: list[float]) -> None:
    three_platform_index(fake)
    fake.calls.clear()
    fake.failures = [503, 502]
    assert len(client.resolve(f"{REG}/corral/busybox:1").platforms) == 3
    assert len(fake.calls) == 3
    assert sleeps == [0.25, 0.5]


def test_persistent_5xx_is_unavailable_and_retryable(fake: FakeRegistry,
                                                     client: RegistryClient,
                                                     sleeps: list[float]) -> None:
    three_platform_index(fake)
    fake.calls.clear()
    fake.failures = [503] * 10
    with pytest.raises(RegistryUnavailable) as info:
        client.resolve(f"{REG}/corral/busybox:1")
    assert info.value.retryable is True
    assert "HTTP 503" in str(info.value) and f"'{REG}/corral/busybox:1'" in str(info.value)
    assert len(fake.calls) == 4 and sleeps == [0.25, 0.5, 1.0]


def test_retry_after_is_honoured_but_capped(clock: Clock) -> None:
    answers = [httpx.Response(429, headers={"Retry-After": "2"}),
               httpx.Response(503, headers={"Retry-After": "3600"})]
    fake = FakeRegistry()
    three_platform_index(fake)

    def handler(request: httpx.Request) -> httpx.Response:
        return answers.pop(0) if answers else fake.handle(request)

    sleeps: list[float] = []
    with RegistryClient(transport=httpx.MockTransport(handler), sleep=sleeps.append) as c:
        c.resolve(f"{REG}/corral/busybox:1")
    assert sleeps == [2.0, 5.0]


@pytest.mark.parametrize("exc", [httpx.ConnectError("[Errno 111] Connection refused"),
                                 httpx.ReadTimeout("timed out")])
def test_connection_errors_are_retried_then_unreachable(
        fake: FakeRegistry, client: RegistryClient, sleeps: list[float],
        exc: Exception) -> None:
    fake.failures = [exc] * 10
    with pytest.raises(RegistryUnreachable) as info:
        client.resolve(f"{REG}/corral/busybox:1")
    err = info.value
    assert err.retryable is True and len(fake.calls) == 4 and len(sleeps) == 3
    assert f"'{REG}/corral/busybox:1'" in str(err)
    assert f"registry {REG} unreachable after 4 attempts" in str(err)
    assert str(exc) in str(err)


def test_connection_error_then_success(fake: FakeRegistry, client: RegistryClient) -> None:
    three_platform_index(fake)
    fake.failures = [httpx.ConnectError("refused")]
    assert client.resolve(f"{REG}/corral/busybox:1").digest


def test_retries_zero_means_one_attempt(fake: FakeRegistry) -> None:
    fake.failures = [httpx.ConnectError("refused")] * 3
    with RegistryClient(transport=fake.transport(), retries=0) as c, \
            pytest.raises(RegistryUnreachable, match="after 1 attempts"):
        c.resolve(f"{REG}/x:1")
    assert len(fake.calls) == 1


# ---------------------------------------------------------------- digests and caching


def test_digest_reference_and_forever_cache(fake: FakeRegistry, client: RegistryClient,
                                            clock: Clock) -> None:
    digest, entries = three_platform_index(fake)
    fake.calls.clear()
    image = client.resolve(f"{REG}/corral/busybox@{digest}")
    assert image.digest == digest and image.tag == "" and len(image.platforms) == 3
    assert image.reference == f"{REG}/corral/busybox@{digest}"
    assert fake.paths() == [f"GET /v2/corral/busybox/manifests/{digest}"]
    clock.now += 10 ** 9
    again = client.resolve(f"{REG}/corral/busybox:1@{digest}")  # tag is informative only
    assert again.tag == "1" and again.platforms == image.platforms
    assert len(fake.calls) == 1
    single = client.resolve(f"{REG}/corral/busybox@{entries[1]['digest']}")
    assert single.platform_strings() == ("linux/arm64",) and len(fake.calls) == 3


def test_digest_mismatch_is_a_protocol_error() -> None:
    digest = "sha256:" + "a" * 64
    transport = httpx.MockTransport(lambda _: httpx.Response(
        200, headers={"Content-Type": OCI_INDEX}, content=b'{"manifests": []}'))
    with RegistryClient(transport=transport) as c, \
            pytest.raises(RegistryProtocolError, match="does not match"):
        c.resolve(f"{REG}/x@{digest}")


def test_tag_ttl_warm_resolve_makes_no_request_then_revalidates(
        fake: FakeRegistry, client: RegistryClient, clock: Clock) -> None:
    digest, _ = three_platform_index(fake)
    cold = client.resolve(f"{REG}/corral/busybox:1")
    fake.calls.clear()
    clock.now += 29.9
    assert client.resolve(f"{REG}/corral/busybox:1") == cold
    assert fake.calls == []  # warm: not a single request
    clock.now += 0.2
    assert client.resolve(f"{REG}/corral/busybox:1") == cold
    assert fake.paths() == ["HEAD /v2/corral/busybox/manifests/1"]  # unchanged: one HEAD
    fake.calls.clear()
    clock.now += 10
    assert client.resolve(f"{REG}/corral/busybox:1") == cold
    assert fake.calls == []  # the HEAD renewed the TTL
    # The tag moves: HEAD sees a new digest, then the new index is fetched.
    new = fake.put_index("corral/busybox", "1", [fake.entry("corral/busybox", "linux/riscv64")])
    fake.calls.clear()
    clock.now += 31
    moved = client.resolve(f"{REG}/corral/busybox:1")
    assert moved.digest == new != digest and moved.platform_strings() == ("linux/riscv64",)
    assert fake.paths() == ["HEAD /v2/corral/busybox/manifests/1",
                            "GET /v2/corral/busybox/manifests/1"]


def test_revalidating_a_deleted_tag_is_not_found(fake: FakeRegistry, client: RegistryClient,
                                                 clock: Clock) -> None:
    three_platform_index(fake)
    client.resolve(f"{REG}/corral/busybox:1")
    del fake.repos["corral/busybox"].tags["1"]
    clock.now += 31
    with pytest.raises(ImageNotFound, match="tag '1' not found"):
        client.resolve(f"{REG}/corral/busybox:1")


def test_tags_sharing_a_single_manifest_fetch_its_config_once(
        fake: FakeRegistry, client: RegistryClient, clock: Clock) -> None:
    digest, _ = fake.put_image("app", "linux/arm64", tag="1")
    fake.repos["app"].tags["latest"] = digest
    client.resolve(f"{REG}/app:1")
    fake.calls.clear()
    client.resolve(f"{REG}/app:latest")
    assert fake.paths() == ["GET /v2/app/manifests/latest"]


def test_concurrent_resolves_from_threads(fake: FakeRegistry, client: RegistryClient) -> None:
    three_platform_index(fake)
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(client.resolve, [f"{REG}/corral/busybox:1"] * 32))
    assert len({r.digest for r in results}) == 1 and len(results[0].platforms) == 3


# ---------------------------------------------------------------- transport choices


def test_insecure_registries_and_https_elsewhere() -> None:
    c = RegistryClient(transport=httpx.MockTransport(lambda _: httpx.Response(500)),
                       insecure=["registry.lan:5000", "build-box", "10.1.0.0/16"])
    try:
        for host in ("127.0.0.1:5000", "127.9.9.9", "localhost", "localhost:5000", "[::1]:5000",
                     "registry.lan:5000", "build-box:443", "10.1.2.3:5000"):
            assert c.is_insecure(host), host
        for host in ("registry.lan", "registry-1.docker.io", "10.2.0.1:5000", "[::2]:5000",
                     "example.com:5000"):
            assert not c.is_insecure(host), host
    finally:
        c.close()


def test_docker_hub_reference_goes_to_registry_1_over_https_with_a_hub_style_token() -> None:
    """Hub's shape, against the mock only: nothing is dialled."""
    calls: list[httpx.Request] = []
    index = dumps({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {"mediaType": OCI_MANIFEST, "digest": "sha256:" + "2" * 64, "size": 9,
         "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}}]})

    def hub(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if request.url.host == "auth.docker.io":
            return httpx.Response(200, json={"access_token": "hubtok", "expires_in": 300})
        if request.headers.get("Authorization") != "Bearer hubtok":
            return httpx.Response(401, headers={"WWW-Authenticate": (
                'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",'
                'scope="repository:library/busybox:pull"')})
        return httpx.Response(200, headers={"Content-Type": OCI_INDEX}, content=index)

    with RegistryClient(transport=httpx.MockTransport(hub)) as c:
        image = c.resolve("busybox")
    assert [str(r.url) for r in calls] == [
        "https://registry-1.docker.io/v2/library/busybox/manifests/latest",
        "https://auth.docker.io/token?scope=repository%3Alibrary%2Fbusybox%3Apull"
        "&service=registry.docker.io",
        "https://registry-1.docker.io/v2/library/busybox/manifests/latest"]
    assert image.reference == "docker.io/library/busybox:latest"
    assert image.registry == "docker.io" and image.platform_strings() == ("linux/arm64",)
    assert image.pull_reference("linux/arm64") == f"docker.io/library/busybox@sha256:{'2' * 64}"


def test_tls_failure_is_not_retried_and_suggests_insecure(sleeps: list[float]) -> None:
    import ssl

    def handler(request: httpx.Request) -> httpx.Response:
        try:
            raise ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
        except ssl.SSLError as exc:
            raise httpx.ConnectError(str(exc)) from exc

    with RegistryClient(transport=httpx.MockTransport(handler), sleep=sleeps.append) as c, \
            pytest.raises(RegistryUnreachable, match="mark it insecure") as info:
        c.resolve("registry.lan:5000/app:1")
    assert info.value.retryable is False and sleeps == []


def test_oversized_answer_is_refused() -> None:
    transport = httpx.MockTransport(lambda _: httpx.Response(
        200, headers={"Content-Type": OCI_INDEX}, content=b" " * (4 * 1024 * 1024 + 1)))
    with RegistryClient(transport=transport) as c, \
            pytest.raises(RegistryProtocolError, match="larger than"):
        c.resolve(f"{REG}/x:1")


# ---------------------------------------------------------------- the model


def test_resolved_image_json_round_trip_and_helpers(fake: FakeRegistry,
                                                     client: RegistryClient) -> None:
    fake.put_index("app", "1", [
        fake.entry("app", "linux/arm64"),
        fake.entry("app", "windows/amd64", extra={"os.version": "10.0", "os.features": ["a"]})])
    image = client.resolve(f"{REG}/app:1")
    data = json.loads(json.dumps(image.to_dict()))
    assert ResolvedImage.from_dict(data) == image
    assert data["platforms"][1]["os_features"] == ["a"]
    assert image.for_platform("LINUX/ARM64/V8") == image.platforms[0]
    assert image.pull_reference("linux/amd64") is None
    assert image.pull_reference("windows/amd64") == f"{REG}/app@{image.platforms[1].digest}"


def test_forget_drops_tag_answers_but_keeps_digests(fake: FakeRegistry, client: RegistryClient) -> None:
    digest, _ = three_platform_index(fake)
    client.resolve(f"{REG}/corral/busybox:1")
    client.forget(REG)
    fake.calls.clear()
    client.resolve(f"{REG}/corral/busybox:1")  # asked again: the tag answer is gone
    assert fake.calls
    fake.calls.clear()
    client.forget(REG)
    client.resolve(f"{REG}/corral/busybox@{digest}")  # content-addressed: still cached
    assert fake.calls == []
    client.forget("other.example:5000")  # another registry's credentials: nothing to do here
