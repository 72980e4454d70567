"""OCI distribution client: an image reference -> {platform: manifest digest}.

``RegistryClient.resolve(ref)`` GETs ``/v2/<repo>/manifests/<tag-or-digest>`` with an Accept
header naming all four manifest types (Distribution 2.8 answers 404 for an OCI index or
manifest unless Accept names its OCI type). An index (OCI image index or Docker manifest
list) gives the platforms directly; attestation entries (platform ``unknown/unknown`` or
annotated ``vnd.docker.reference.type: attestation-manifest``) are skipped. A single image
manifest carries no platform, so its config blob is read for os/architecture/variant.

Layers, each in one section below:

* **HTTP** (``_send``): one shared, thread-safe ``httpx.Client``; bodies are streamed with a
  size cap; connection errors, timeouts, 429 and 5xx are retried ``retries`` times with
  exponential backoff (``Retry-After`` honoured, capped); then RegistryUnreachable or
  RegistryUnavailable, both ``retryable``. Plain HTTP only for insecure registries
  (loopback and ``localhost`` as Docker does, plus the ``insecure`` set: hosts, host:port
  or CIDRs); HTTPS otherwise.
* **Auth** (``_request``): requests go out anonymously, or with what the host asked for
  before (a cached bearer token for this repository's pull scope, or basic credentials).
  On a 401 the ``WWW-Authenticate`` challenge decides: ``Bearer`` -> GET the realm (with
  basic credentials when ``credentials(registry)`` has some) for a token, retry once;
  ``Basic`` -> retry once with the credentials. A second 401 is a RegistryAuthError.
* **Cache**: content by digest forever (a digest names immutable content; an LRU bound
  keeps memory finite), tags for ``tag_ttl`` seconds of ``clock``. A tag within its TTL
  costs no request at all; after it, one HEAD revalidates (a manifest GET counts as a
  pull against Docker Hub's rate limit, a HEAD does not) and the content is only fetched
  again when the digest moved.

Everything is synchronous: the server calls ``resolve`` from worker threads, so the
caches and the token store are guarded by one lock that is never held during I/O.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import ipaddress
import json
import logging
import re
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import httpx

from corral.images.errors import (
    ImageError,
    ImageNotFound,
    NoUsablePlatforms,
    RegistryAuthError,
    RegistryProtocolError,
    RegistryUnavailable,
    RegistryUnreachable,
    UnsupportedMediaType,
)
from corral.images.model import PlatformImage, ResolvedImage
from corral.images.reference import Reference, parse_reference, validate_digest
from corral.platforms import Platform, PlatformError

_log = logging.getLogger(__name__)

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEX_TYPES = frozenset({OCI_INDEX, DOCKER_MANIFEST_LIST})
MANIFEST_TYPES = frozenset({OCI_MANIFEST, DOCKER_MANIFEST})
CONFIG_TYPES = frozenset({"application/vnd.oci.image.config.v1+json",
                          "application/vnd.docker.container.image.v1+json"})
_SCHEMA1_TYPES = frozenset({"application/vnd.docker.distribution.manifest.v1+json",
                            "application/vnd.docker.distribution.manifest.v1+prettyjws"})
ACCEPT = ", ".join((OCI_INDEX, DOCKER_MANIFEST_LIST, OCI_MANIFEST, DOCKER_MANIFEST))

ATTESTATION_ANNOTATION = "vnd.docker.reference.type"
ATTESTATION_VALUE = "attestation-manifest"

MAX_DOCUMENT = 4 * 1024 * 1024  # Distribution refuses manifests above 4 MiB, too
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_BACKOFF = 5.0
TOKEN_TTL_DEFAULT = 60.0  # the token spec's default when expires_in is absent
TOKEN_MARGIN = 5.0

Credentials = Callable[[str], "tuple[str, str] | None"]


# ---------------------------------------------------------------- small helpers

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _LRU(Generic[K, V]):
    """A bounded mapping that forgets the least recently used entry (caller locks)."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._data: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._data.get(key)
        if value is not None:
            self._data.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._data[key] = value
        self._data.move_to_end(key)
        while len(self._data) > self._size:
            self._data.popitem(last=False)

    def drop(self, keep: Callable[[K], bool]) -> None:
        for key in [k for k in self._data if not keep(k)]:
            del self._data[key]


@dataclass(frozen=True)
class _Reply:
    status: int
    headers: httpx.Headers
    body: bytes

    def error_codes(self) -> str:
        """``CODE: message`` of the distribution error body, or '' if there is none."""
        try:
            errors = json.loads(self.body)["errors"]
            return "; ".join(f"{e.get('code', '?')}: {e.get('message', '')}".rstrip(": ")
                             for e in errors)
        except (ValueError, KeyError, TypeError, AttributeError):
            return ""


@dataclass(frozen=True)
class _Target:
    """One resolve: the image as asked (for messages), its reference and where to send."""

    image: str
    ref: Reference
    base_url: str

    @property
    def scope(self) -> str:
        return f"repository:{self.ref.repository}:pull"


@dataclass(frozen=True)
class _Content:
    """What a digest resolves to; independent of the tag that led there."""

    media_type: str
    platforms: tuple[PlatformImage, ...]


_PARAM = re.compile(r'([A-Za-z0-9_.-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """``Bearer realm="x",service="y"`` -> ``("bearer", {"realm": "x", "service": "y"})``."""
    scheme, _, rest = header.strip().partition(" ")
    params = {m.group(1).lower(): (m.group(2) if m.group(2) is not None else m.group(3))
              for m in _PARAM.finditer(rest)}
    return scheme.lower(), {k: v.replace('\\"', '"') for k, v in params.items()}


def _sha(algorithm: str, data: bytes) -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


def _host_of(registry: str) -> str:
    """``127.0.0.1:5000`` -> ``127.0.0.1``; ``[::1]:5000`` -> ``::1``; ``localhost`` as is."""
    if registry.startswith("["):
        return registry[1:].split("]", 1)[0]
    return registry.split(":", 1)[0]


def _describe(exc: BaseException) -> str:
    inner: BaseException | None = exc
    for _ in range(10):  # the cause chain, bounded: chains can be cyclic
        if inner is None:
            break
        if isinstance(inner, ssl.SSLError):
            return f"TLS failure: {inner}"
        inner = inner.__cause__ or inner.__context__
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _is_tls_failure(exc: BaseException) -> bool:
    return _describe(exc).startswith("TLS failure")


# ---------------------------------------------------------------- the client


class RegistryClient:
    """Resolves image references against OCI registries; safe to share between threads."""

    def __init__(self, transport: httpx.BaseTransport | None = None,
                 credentials: Credentials | None = None, insecure: Iterable[str] = (),
                 timeout: float = 10.0, retries: int = 3, tag_ttl: float = 30.0,
                 clock: Callable[[], float] = time.monotonic, *, backoff: float = 0.25,
                 sleep: Callable[[float], None] = time.sleep, cache_size: int = 4096) -> None:
        self._http = httpx.Client(transport=transport, timeout=timeout, follow_redirects=True,
                                  headers={"User-Agent": "corral-images/0.1"})
        self._credentials = credentials
        self._insecure_names: set[str] = set()
        self._insecure_nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for item in insecure:
            try:
                self._insecure_nets.append(ipaddress.ip_network(item.strip("[]"), strict=False))
            except ValueError:
                self._insecure_names.add(item.lower())
        self._retries = max(0, retries)
        self._backoff = backoff
        self._sleep = sleep
        self._tag_ttl = tag_ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._by_digest: _LRU[tuple[str, str, str], _Content] = _LRU(cache_size)
        self._by_tag: _LRU[tuple[str, str, str], tuple[str, float]] = _LRU(cache_size)
        self._sizes: _LRU[str, int] = _LRU(cache_size)
        self._tokens: dict[tuple[str, str], tuple[str, float]] = {}
        self._basic_hosts: set[str] = set()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ public

    def resolve(self, ref: str) -> ResolvedImage:
        """Resolve ``ref`` to its platforms and digests; raises an ImageError naming ``ref``."""
        reference = parse_reference(ref)
        target = _Target(ref, reference, f"{self._scheme(reference.endpoint)}://"
                                         f"{reference.endpoint}")
        repo_key = (reference.registry, reference.repository)
        if reference.digest:
            digest = reference.digest
            content = self._cached(repo_key, digest)
            if content is None:
                content = self._fetch_content(target, digest)
        else:
            digest, content = self._resolve_tag(target, repo_key)
        return ResolvedImage(reference=reference.canonical(), registry=reference.registry,
                             repository=reference.repository, tag=reference.tag, digest=digest,
                             media_type=content.media_type, platforms=content.platforms)

    def forget(self, registry: str) -> None:
        """Drop what depends on our credentials for ``registry``: tag answers and tokens.

        Called when its credentials change; digests stay cached (their content cannot change).
        """
        endpoint = parse_reference(f"{registry}/x").endpoint
        with self._lock:
            self._by_tag.drop(lambda key: key[0] != registry)
            self._tokens = {k: v for k, v in self._tokens.items() if k[0] != endpoint}
            self._basic_hosts.discard(endpoint)

    def image_sizes(self, resolved: ResolvedImage) -> dict[str, int]:
        """Download size (config + compressed layers) of each platform's image, by platform.

        One manifest GET per platform the first time; content-addressed, so cached for good.
        """
        reference = parse_reference(resolved.reference)
        target = _Target(resolved.reference, reference, f"{self._scheme(reference.endpoint)}://"
                                                        f"{reference.endpoint}")
        sizes = {}
        for entry in resolved.platforms:
            with self._lock:
                known = self._sizes.get(entry.digest)
            if known is None:
                body, _, _ = self._get_manifest(target, entry.digest)
                doc = _dict(json.loads(body))
                parts = [_dict(doc.get("config")), *(_dict(layer) for layer in doc.get("layers") or [])]
                known = sum(int(p.get("size") or 0) for p in parts)
                with self._lock:
                    self._sizes.put(entry.digest, known)
            sizes[entry.platform] = known
        return sizes

    def is_insecure(self, registry: str) -> bool:
        """True when ``registry`` (``host[:port]``) is spoken to over plain HTTP."""
        registry = registry.lower()
        host = _host_of(registry)
        if registry in self._insecure_names or host in self._insecure_names:
            return True
        if host == "localhost":
            return True
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        return ip.is_loopback or any(ip in net for net in self._insecure_nets)

    # ------------------------------------------------------------ cache

    def _scheme(self, endpoint: str) -> str:
        return "http" if self.is_insecure(endpoint) else "https"

    def _cached(self, repo_key: tuple[str, str], digest: str) -> _Content | None:
        with self._lock:
            return self._by_digest.get((*repo_key, digest))

    def _remember(self, repo_key: tuple[str, str], tag: str | None, digest: str,
                  content: _Content) -> None:
        with self._lock:
            self._by_digest.put((*repo_key, digest), content)
            if tag is not None:
                self._by_tag.put((*repo_key, tag), (digest, self._clock() + self._tag_ttl))

    def _resolve_tag(self, target: _Target, repo_key: tuple[str, str]) -> tuple[str, _Content]:
        tag = target.ref.tag
        with self._lock:
            entry = self._by_tag.get((*repo_key, tag))
            known = self._by_digest.get((*repo_key, entry[0])) if entry else None
        if entry and known and self._clock() < entry[1]:
            return entry[0], known
        if entry:
            current = self._head_digest(target, tag)
            content = self._cached(repo_key, current) if current else None
            if current and content:
                self._remember(repo_key, tag, current, content)
                return current, content
        body, media_type, digest = self._get_manifest(target, tag)
        content = self._cached(repo_key, digest) or self._interpret(target, body, media_type,
                                                                    digest)
        self._remember(repo_key, tag, digest, content)
        return digest, content

    def _fetch_content(self, target: _Target, digest: str) -> _Content:
        body, media_type, _ = self._get_manifest(target, digest)
        content = self._interpret(target, body, media_type, digest)
        self._remember((target.ref.registry, target.ref.repository), None, digest, content)
        return content

    # ------------------------------------------------------------ manifests

    def _head_digest(self, target: _Target, tag: str) -> str | None:
        """The digest the tag names now (HEAD), or None if the registry does not say."""
        reply = self._request(target, "HEAD", f"manifests/{tag}", {"Accept": ACCEPT})
        if reply.status == 404:
            raise self._not_found(target, reply)
        digest = reply.headers.get("Docker-Content-Digest", "")
        if reply.status != 200 or not digest.startswith("sha256:"):
            return None
        try:
            return validate_digest(digest)
        except ValueError:
            return None

    def _get_manifest(self, target: _Target, reference: str) -> tuple[bytes, str, str]:
        """(body, media type, digest) of the manifest ``reference`` (tag or digest) names."""
        reply = self._request(target, "GET", f"manifests/{reference}", {"Accept": ACCEPT})
        if reply.status == 404:
            raise self._not_found(target, reply, reference)
        if reply.status != 200:
            raise self._unexpected(target, reply, f"manifest {reference}")
        if ":" in reference:  # a digest: the content must hash to it
            digest = reference
            if _sha(reference.split(":", 1)[0], reply.body) != digest:
                raise RegistryProtocolError(target.image, f"registry {target.ref.registry} "
                                            f"sent a manifest that does not match {digest}")
        else:
            digest = _sha("sha256", reply.body)
            claimed = reply.headers.get("Docker-Content-Digest", "")
            if claimed.startswith("sha256:") and claimed != digest:
                raise RegistryProtocolError(target.image, f"registry {target.ref.registry} says "
                                            f"the manifest is {claimed} but it hashes to {digest}")
        content_type = reply.headers.get("Content-Type", "").split(";")[0].strip().lower()
        return reply.body, content_type, digest

    def _interpret(self, target: _Target, body: bytes, content_type: str,
                   digest: str) -> _Content:
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise RegistryProtocolError(target.image, f"manifest {digest} is not a JSON object")
        media_type = _media_type(content_type, doc)
        if media_type in INDEX_TYPES:
            return _Content(media_type, _index_platforms(target, doc, digest))
        if media_type in MANIFEST_TYPES:
            entry = self._manifest_platform(target, doc, digest, media_type, len(body))
            return _Content(media_type, (entry,))
        if media_type in _SCHEMA1_TYPES:
            raise UnsupportedMediaType(target.image, f"manifest {digest} is Docker image "
                                       f"manifest schema 1 ({media_type}), which is deprecated "
                                       "and not supported; push the image again with a "
                                       "current Docker or buildx")
        raise UnsupportedMediaType(target.image, f"manifest {digest} has media type "
                                   f"{media_type or '(none)'!r}; supported: OCI image index or "
                                   "manifest, Docker manifest list or image manifest v2")

    def _manifest_platform(self, target: _Target, doc: dict[str, Any], digest: str,
                           media_type: str, size: int) -> PlatformImage:
        config = doc.get("config")
        if not isinstance(config, dict) or not isinstance(config.get("digest"), str):
            raise RegistryProtocolError(target.image, f"manifest {digest} has no config")
        config_type = config.get("mediaType", "")
        if config_type and config_type not in CONFIG_TYPES:
            raise UnsupportedMediaType(target.image, f"manifest {digest} is not a container "
                                       f"image: its config has media type {config_type!r}")
        cfg = self._get_config(target, config["digest"], digest)
        os_name, arch = str(cfg.get("os", "")), str(cfg.get("architecture", ""))
        if not os_name or not arch or (os_name, arch) == ("unknown", "unknown"):
            raise NoUsablePlatforms(target.image, f"manifest {digest} names no runnable "
                                    f"platform (config says os={os_name!r}, "
                                    f"architecture={arch!r})")
        try:
            platform = _platform_string(os_name, arch, str(cfg.get("variant") or ""))
        except PlatformError as exc:
            raise RegistryProtocolError(target.image, f"manifest {digest}: {exc}") from None
        return PlatformImage(platform=platform, digest=digest, size=size, media_type=media_type,
                             os_version=str(cfg.get("os.version") or ""),
                             os_features=tuple(str(f) for f in cfg.get("os.features") or ()))

    def _get_config(self, target: _Target, config_digest: str,
                    manifest_digest: str) -> dict[str, Any]:
        try:
            validate_digest(config_digest)
        except ValueError as exc:
            raise RegistryProtocolError(target.image, f"manifest {manifest_digest}: {exc}") \
                from None
        reply = self._request(target, "GET", f"blobs/{config_digest}", {})
        if reply.status == 404:
            raise ImageNotFound(target.image, f"config blob {config_digest} of manifest "
                                f"{manifest_digest} is missing from {target.ref.name}")
        if reply.status != 200:
            raise self._unexpected(target, reply, f"config blob {config_digest}")
        if _sha(config_digest.split(":", 1)[0], reply.body) != config_digest:
            raise RegistryProtocolError(target.image, f"config blob does not match "
                                        f"{config_digest}")
        try:
            cfg = json.loads(reply.body)
        except ValueError:
            cfg = None
        if not isinstance(cfg, dict):
            raise RegistryProtocolError(target.image, f"config blob {config_digest} is not "
                                        "a JSON object")
        return cfg

    # ------------------------------------------------------------ errors

    def _not_found(self, target: _Target, reply: _Reply,
                   reference: str | None = None) -> ImageNotFound:
        codes = reply.error_codes()
        said = f" (registry says {codes})" if codes else ""
        repo = target.ref.name
        if "NAME_UNKNOWN" in codes:
            return ImageNotFound(target.image, f"repository {repo} not found{said}")
        if self._repository_unknown(target):
            return ImageNotFound(target.image, f"repository {repo} not found (registry says "
                                 "NAME_UNKNOWN for its tag list)")
        reference = reference or target.ref.manifest_reference
        what = f"manifest {reference}" if ":" in reference else f"tag {reference!r}"
        return ImageNotFound(target.image, f"{what} not found in repository {repo}{said}")

    def _repository_unknown(self, target: _Target) -> bool:
        """Ask tags/list: Distribution 2.8 says MANIFEST_UNKNOWN for unknown repositories."""
        try:
            reply = self._request(target, "GET", "tags/list?n=1", {})
        except ImageError:
            return False
        return reply.status == 404 and "NAME_UNKNOWN" in reply.error_codes()

    def _unexpected(self, target: _Target, reply: _Reply, what: str) -> ImageError:
        codes = reply.error_codes()
        return RegistryProtocolError(target.image, f"registry {target.ref.registry} answered "
                                     f"HTTP {reply.status} for {what}"
                                     + (f": {codes}" if codes else ""))

    # ------------------------------------------------------------ auth

    def _request(self, target: _Target, method: str, path: str,
                 headers: dict[str, str]) -> _Reply:
        """One API call under ``/v2/<repo>/`` with authentication handled."""
        url = f"{target.base_url}/v2/{target.ref.repository}/{path}"
        sent = self._auth_header(target)
        reply = self._send(target, method, url, {**headers, **sent})
        if reply.status == 401:
            fresh = self._authenticate(target, reply, sent)
            reply = self._send(target, method, url, {**headers, **fresh})
            if reply.status == 401:
                raise self._auth_refused(target, reply, fresh)
        if reply.status == 403:
            raise RegistryAuthError(target.image, f"registry {target.ref.registry} denied "
                                    f"access to {target.ref.name} (HTTP 403"
                                    + (f": {reply.error_codes()})" if reply.error_codes()
                                       else ")"))
        return reply

    def _user(self, target: _Target) -> tuple[str, str] | None:
        return self._credentials(target.ref.registry) if self._credentials else None

    def _auth_header(self, target: _Target) -> dict[str, str]:
        endpoint = target.ref.endpoint
        with self._lock:
            token = self._tokens.get((endpoint, target.scope))
            if token and self._clock() < token[1]:
                return {"Authorization": f"Bearer {token[0]}"}
            basic = endpoint in self._basic_hosts
        user = self._user(target) if basic else None
        return {"Authorization": _basic(user)} if user else {}

    def _authenticate(self, target: _Target, reply: _Reply,
                      sent: dict[str, str]) -> dict[str, str]:
        """Answer a 401's challenge: the Authorization header to retry with."""
        challenges = dict(parse_challenge(h)
                          for h in reply.headers.get_list("WWW-Authenticate"))
        user = self._user(target)
        registry = target.ref.registry
        if "bearer" in challenges:
            token, ttl = self._fetch_token(target, challenges["bearer"], user)
            with self._lock:
                self._tokens[(target.ref.endpoint, target.scope)] = (
                    token, self._clock() + max(ttl - TOKEN_MARGIN, 1.0))
            return {"Authorization": f"Bearer {token}"}
        if "basic" in challenges:
            if user is None:
                raise RegistryAuthError(target.image, f"registry {registry} requires a user "
                                        f"name and password, and none are stored for {registry}")
            header = {"Authorization": _basic(user)}
            if header == sent:  # we already sent exactly these: they are wrong
                raise self._auth_refused(target, reply, header)
            with self._lock:
                self._basic_hosts.add(target.ref.endpoint)
            return header
        raise RegistryAuthError(target.image, f"registry {registry} answered HTTP 401 without "
                                "a Basic or Bearer challenge")

    def _fetch_token(self, target: _Target, challenge: dict[str, str],
                     user: tuple[str, str] | None) -> tuple[str, float]:
        realm = challenge.get("realm", "")
        if not realm.startswith(("https://", "http://")):
            raise RegistryProtocolError(target.image, f"registry {target.ref.registry} sent a "
                                        f"bearer challenge with an unusable realm {realm!r}")
        params = {"scope": challenge.get("scope") or target.scope}
        if challenge.get("service"):
            params["service"] = challenge["service"]
        headers = {"Authorization": _basic(user)} if user else {}
        url = str(httpx.URL(realm).copy_merge_params(params))
        reply = self._send(target, "GET", url, headers)
        who = f"user {user[0]!r}" if user else "anonymous access"
        if reply.status in (401, 403):
            raise RegistryAuthError(target.image, f"token service {httpx.URL(realm).host} of "
                                    f"registry {target.ref.registry} refused {who} "
                                    f"(HTTP {reply.status})")
        if reply.status != 200:
            raise self._unexpected(target, reply, "the token request")
        try:
            answer = json.loads(reply.body)
            token = answer.get("token") or answer.get("access_token")
            ttl = float(answer.get("expires_in") or TOKEN_TTL_DEFAULT)
        except (ValueError, AttributeError, TypeError):
            token, ttl = None, 0.0
        if not isinstance(token, str) or not token:
            raise RegistryProtocolError(target.image, "the token service's answer has no token")
        return token, max(ttl, TOKEN_TTL_DEFAULT)

    def _auth_refused(self, target: _Target, reply: _Reply,
                      sent: dict[str, str]) -> RegistryAuthError:
        registry = target.ref.registry
        user = self._user(target)
        codes = reply.error_codes()
        said = f" ({codes})" if codes else ""
        if sent.get("Authorization", "").startswith("Basic") and user:
            return RegistryAuthError(target.image, f"registry {registry} refused the "
                                     f"credentials of user {user[0]!r}{said}")
        if user:
            return RegistryAuthError(target.image, f"registry {registry} refused user "
                                     f"{user[0]!r} access to {target.ref.name}{said}")
        return RegistryAuthError(target.image, f"registry {registry} refused anonymous "
                                 f"access to {target.ref.name}{said}; the repository may not "
                                 f"exist, or needs credentials stored for {registry}")

    # ------------------------------------------------------------ HTTP

    def _send(self, target: _Target, method: str, url: str, headers: dict[str, str]) -> _Reply:
        """Send with bounded retries on connection errors, timeouts, 429 and 5xx."""
        attempts = self._retries + 1
        reply: _Reply | None = None
        failure = ""
        for attempt in range(attempts):
            if attempt:
                self._sleep(self._delay(attempt, reply))
            try:
                reply = self._once(target, method, url, headers)
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
                if _is_tls_failure(exc):
                    raise RegistryUnreachable(
                        target.image, f"registry {target.ref.registry} ({url}): "
                        f"{_describe(exc)}; if it speaks plain HTTP, mark it insecure",
                        retryable=False) from exc
                reply, failure = None, _describe(exc)
                _log.debug("%s %s failed (%s), attempt %d/%d", method, url, failure,
                           attempt + 1, attempts)
                continue
            except httpx.HTTPError as exc:  # invalid URL, unsupported protocol, ...
                raise RegistryProtocolError(target.image, f"{method} {url}: "
                                            f"{_describe(exc)}") from exc
            if reply.status not in RETRY_STATUSES:
                return reply
            _log.debug("%s %s answered %d, attempt %d/%d", method, url, reply.status,
                       attempt + 1, attempts)
        host = httpx.URL(url).netloc.decode()
        if reply is not None:
            codes = reply.error_codes()
            raise RegistryUnavailable(target.image, f"registry {host} answered HTTP "
                                      f"{reply.status}" + (f" ({codes})" if codes else "")
                                      + f" {attempts} times")
        raise RegistryUnreachable(target.image, f"registry {host} unreachable after "
                                  f"{attempts} attempts: {failure}")

    def _once(self, target: _Target, method: str, url: str, headers: dict[str, str]) -> _Reply:
        request = self._http.build_request(method, url, headers=headers)
        response = self._http.send(request, stream=True)
        try:
            chunks: list[bytes] = []
            total = 0
            for chunk in response.iter_bytes():
                total += len(chunk)
                if total > MAX_DOCUMENT:
                    raise RegistryProtocolError(target.image, f"{url}: answer larger than "
                                                f"{MAX_DOCUMENT} bytes")
                chunks.append(chunk)
        finally:
            response.close()
        return _Reply(response.status_code, response.headers, b"".join(chunks))

    def _delay(self, attempt: int, reply: _Reply | None) -> float:
        delay = self._backoff * 2 ** (attempt - 1)
        if reply is not None:
            with contextlib.suppress(ValueError):
                delay = max(delay, float(reply.headers.get("Retry-After", "")))
        return min(delay, MAX_BACKOFF)


# ---------------------------------------------------------------- documents


def _dict(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _basic(user: tuple[str, str]) -> str:
    return "Basic " + base64.b64encode(f"{user[0]}:{user[1]}".encode()).decode()


def _media_type(content_type: str, doc: dict[str, Any]) -> str:
    """The manifest's type: a known Content-Type, else its mediaType, else its shape."""
    known = INDEX_TYPES | MANIFEST_TYPES | _SCHEMA1_TYPES
    if content_type in known:
        return content_type
    declared = doc.get("mediaType")
    if isinstance(declared, str) and declared:
        return declared
    if content_type not in ("", "application/json", "application/octet-stream", "text/plain"):
        return content_type
    if doc.get("schemaVersion") == 1:
        return "application/vnd.docker.distribution.manifest.v1+json"
    if isinstance(doc.get("manifests"), list):
        return OCI_INDEX
    if isinstance(doc.get("config"), dict) and isinstance(doc.get("layers"), list):
        return OCI_MANIFEST
    return content_type


def _platform_string(os_name: str, arch: str, variant: str) -> str:
    return str(Platform.parse("/".join(p for p in (os_name, arch, variant) if p)))


def _index_platforms(target: _Target, doc: dict[str, Any],
                     digest: str) -> tuple[PlatformImage, ...]:
    entries = doc.get("manifests")
    if not isinstance(entries, list):
        raise RegistryProtocolError(target.image, f"index {digest} has no manifests list")
    found: list[PlatformImage] = []
    seen: set[tuple[str, str]] = set()
    skipped: dict[str, int] = {}

    def skip(why: str) -> None:
        skipped[why] = skipped.get(why, 0) + 1

    for entry in entries:
        if not isinstance(entry, dict):
            skip("malformed")
            continue
        platform = _dict(entry.get("platform"))
        annotations = _dict(entry.get("annotations"))
        os_name = str(platform.get("os") or "")
        arch = str(platform.get("architecture") or "")
        media_type = str(entry.get("mediaType") or "")
        if (annotations.get(ATTESTATION_ANNOTATION) == ATTESTATION_VALUE
                or (os_name, arch) == ("unknown", "unknown")):
            skip("attestation or unknown/unknown")
            continue
        if not os_name or not arch:
            skip("without platform")
            continue
        if media_type and media_type not in MANIFEST_TYPES:
            skip(f"of type {media_type}")
            continue
        try:
            entry_digest = validate_digest(str(entry.get("digest", "")))
            size = int(entry.get("size", 0))
            name = _platform_string(os_name, arch, str(platform.get("variant") or ""))
        except (ValueError, TypeError, PlatformError):
            skip("malformed")
            continue
        os_version = str(platform.get("os.version") or "")
        if (name, os_version) in seen:  # Docker picks the first match, so do we
            continue
        seen.add((name, os_version))
        found.append(PlatformImage(
            platform=name, digest=entry_digest, size=size,
            media_type=media_type or OCI_MANIFEST, os_version=os_version,
            os_features=tuple(str(f) for f in platform.get("os.features") or ())))
    if not found:
        why = ", ".join(f"{n} {what}" for what, n in skipped.items()) or "it is empty"
        raise NoUsablePlatforms(target.image, f"index {digest} has no runnable platform "
                                f"({len(entries)} entries: {why})")
    return tuple(found)
