"""A small Docker Engine API client, stdlib only.

The agent has to install with ``pip install corral`` on ARM boards with no
compiler, so it cannot depend on the ``docker`` SDK (requests, urllib3, ...).
This module speaks the few Engine API calls the agent needs over
:mod:`http.client`:

* Transport: ``unix:///path/docker.sock`` (an ``AF_UNIX`` connection) or
  ``tcp://host:port`` (plain HTTP; TLS is not supported).  The default is
  ``$DOCKER_HOST``, else ``unix:///var/run/docker.sock``.
* Versioning: the first call negotiates the API version with ``GET /version``
  and uses ``min(server ApiVersion, 1.41)``; every path is then prefixed with
  ``/v<version>``.  1.41 is what docker.io 20.10 speaks and all we rely on.
* Threads: every call opens its own connection (a Unix socket connect costs
  tens of microseconds), so one :class:`DockerClient` can be shared by any
  number of threads; the only shared state is the negotiated version, set
  once under a lock.
* Streams (``logs(follow=True)``, ``events``) return a :class:`Stream`: an
  iterator that owns its connection.  ``Stream.close()`` may be called from
  any thread; it shuts the socket down, which wakes the reader, and the
  iteration then simply ends.  The engine sends the response headers of these
  endpoints only with the first log line or event, so the request is sent at
  call time but the status is read on the first ``next()``: an HTTP error
  (e.g. a bad filter) is raised from the iteration, not from the call.
* Errors: :class:`DockerError` carries the HTTP status and the engine's JSON
  ``message``; :class:`NotFound` (404), :class:`Conflict` (409),
  :class:`PullError` (a pull the engine or registry refused, with the text
  from the pull stream's ``errorDetail``, or that outlived its timeout) and
  :class:`EngineUnavailable` (status 0: the socket does not answer, refuses,
  breaks or times out).
"""

from __future__ import annotations

import base64
import logging
import contextlib
import http.client
import json
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote, urlencode, urlsplit

from corral.model import LABEL_ADDRESS, HealthcheckSpec, PortSpec, VolumeSpec

log = logging.getLogger("corral.agent.docker")

__all__ = [
    "DEFAULT_BASE_URL",
    "MAX_API_VERSION",
    "Conflict",
    "ContainerInfo",
    "DockerClient",
    "DockerError",
    "EngineUnavailable",
    "NotFound",
    "PullError",
    "Stream",
    "health_of",
    "split_reference",
]

MAX_API_VERSION = "1.41"
DEFAULT_BASE_URL = "unix:///var/run/docker.sock"
_RESTART_POLICIES = ("no", "always", "unless-stopped", "on-failure")
_STREAM_NAMES = {0: "stdin", 1: "stdout", 2: "stderr"}
# The engine's Status text of a running container ends with its health: "Up 3 seconds (healthy)"
_HEALTH_IN_STATUS = {"(health: starting)": "starting", "(healthy)": "healthy", "(unhealthy)": "unhealthy"}

T = TypeVar("T")


class DockerError(Exception):
    """The engine answered with an error (or, for subclasses, did not answer)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{message} (HTTP {status})" if status >= 400 else message)
        self.status = status
        self.message = message


class NotFound(DockerError):
    """404: no such container / image."""


class Conflict(DockerError):
    """409: name already in use, container not running, removal in progress, ..."""


class PullError(DockerError):
    """A pull failed; ``message`` is the registry's / engine's own text."""


class EngineUnavailable(DockerError):
    """The engine's socket does not answer (``status`` is 0)."""

    def __init__(self, message: str) -> None:
        super().__init__(0, message)


@dataclass(frozen=True)
class ContainerInfo:
    """One row of ``GET /containers/json``."""

    id: str
    name: str
    image: str
    labels: dict[str, str] = field(hash=False)
    state: str  # running, exited, created, restarting, paused, dead, removing
    status: str  # human text: "Up 3 seconds", "Exited (0) 2 minutes ago", "Up 1 minute (healthy)"
    created: int
    health: str = ""  # State.Health.Status: "", "starting", "healthy", "unhealthy" ("" when not running)
    ip: str = ""  # its address on its (first) network, for the ingress proxy


def _first_ip(row: dict[str, Any]) -> str:
    networks = ((row.get("NetworkSettings") or {}).get("Networks") or {}).values()
    return next((str(n["IPAddress"]) for n in networks if n.get("IPAddress")), "")


def health_of(inspected: dict[str, Any]) -> str:
    """State.Health.Status of an inspected container: "" when it has no healthcheck or is not running."""
    state = inspected.get("State") or {}
    if not state.get("Running"):
        return ""
    return str((state.get("Health") or {}).get("Status") or "")


def _health_from_status(status: str) -> str:
    for suffix, health in _HEALTH_IN_STATUS.items():
        if status.endswith(suffix):
            return health
    return ""


def _label_filter(labels: dict[str, str] | None) -> str | None:
    """The ``filters`` parameter matching every label (``value ""``: any value); None for no labels."""
    if not labels:
        return None
    return json.dumps({"label": [f"{k}={v}" if v else k for k, v in labels.items()]})


def _nanoseconds(seconds: float | None) -> int:
    return 0 if seconds is None else int(round(seconds * 1e9))


def _healthcheck_config(hc: HealthcheckSpec) -> dict[str, Any]:
    """Engine API HealthConfig; zero durations and retries inherit the image's (or the default)."""
    if hc.disable:
        return {"Test": ["NONE"]}
    out: dict[str, Any] = {
        "Interval": _nanoseconds(hc.interval),
        "Timeout": _nanoseconds(hc.timeout),
        "StartPeriod": _nanoseconds(hc.start_period),
        "Retries": int(hc.retries or 0),
    }
    if hc.test is not None:
        out["Test"] = list(hc.test)
    return out


def _mount(v: VolumeSpec, volume_labels: dict[str, str] | None) -> dict[str, Any]:
    out: dict[str, Any] = {"Type": v.type, "Target": v.target, "ReadOnly": bool(v.read_only)}
    if v.source:
        out["Source"] = v.source
    if v.type == "volume" and volume_labels:
        out["VolumeOptions"] = {"Labels": dict(volume_labels)}  # applied when the engine creates it
    return out


def split_reference(ref: str) -> tuple[str, str]:
    """Split an image reference into ``(repository, tag-or-digest)`` for ``/images/create``.

    ``127.0.0.1:5000/ns/name:1`` -> (``127.0.0.1:5000/ns/name``, ``1``);
    ``name@sha256:ab..`` -> (``name``, ``sha256:ab..``) (a tag beside a digest is
    dropped: the digest decides); no tag -> ``latest`` (an empty tag would make
    the engine pull every tag of the repository).
    """
    ref = ref.strip()
    if "@" in ref:
        name, digest = ref.split("@", 1)
        slash = name.rfind("/")
        colon = name.rfind(":")
        if colon > slash:
            name = name[:colon]
        return name, digest
    slash = ref.rfind("/")
    colon = ref.rfind(":")
    if colon > slash:  # a colon before the last slash is a registry port
        return ref[:colon], ref[colon + 1 :]
    return ref, "latest"


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self._path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class Stream(Generic[T]):
    """An iterator over a streaming response that can be closed from another thread.

    Iterate it (or use it as a context manager); ``close()`` ends the iteration
    promptly even while another thread is blocked waiting for data.
    """

    def __init__(
        self,
        conn: http.client.HTTPConnection,
        decode: Callable[[http.client.HTTPResponse], Iterator[T]],
        describe: str,
    ) -> None:
        self._conn = conn
        # Kept here: HTTPConnection drops its .sock when a response says "Connection: close".
        self._sock = conn.sock
        self._decode = decode
        self._describe = describe
        self._closed = False
        self._lock = threading.Lock()
        self._gen = self._run()

    @property
    def closed(self) -> bool:
        return self._closed

    def __iter__(self) -> Stream[T]:
        return self

    def __next__(self) -> T:
        return next(self._gen)

    def __enter__(self) -> Stream[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the stream; safe from any thread, idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if self._sock is not None:
            # shutdown (not close) wakes a thread blocked in recv() on this socket
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)
        try:
            self._gen.close()
        except ValueError:
            # Another thread is inside next() right now: the shutdown wakes it,
            # and its generator's finally closes the connection.
            return
        self._conn.close()  # also needed when the generator never started

    def _run(self) -> Generator[T, None, None]:
        try:
            try:
                resp = self._conn.getresponse()
            except (OSError, http.client.HTTPException) as exc:
                if self._closed:
                    return
                raise EngineUnavailable(f"{self._describe}: {exc}") from exc
            if resp.status >= 400:
                raise _error_from(resp.status, resp.read())
            try:
                yield from self._decode(resp)
            except (OSError, http.client.HTTPException, ValueError) as exc:
                if self._closed:
                    return
                raise EngineUnavailable(f"{self._describe}: stream broken: {exc}") from exc
        finally:
            self._closed = True
            self._conn.close()


def _error_from(status: int, body: bytes, cls: type[DockerError] | None = None) -> DockerError:
    text = body.decode("utf-8", "replace").strip()
    message = text
    try:
        data = json.loads(text)
        if isinstance(data, dict) and data.get("message"):
            message = str(data["message"])
    except ValueError:
        pass
    if cls is None:
        cls = {404: NotFound, 409: Conflict}.get(status, DockerError)
    return cls(status, message or http.client.responses.get(status, "error"))


def _read_exact(resp: http.client.HTTPResponse, n: int) -> bytes:
    """Read exactly n bytes, fewer only at the end of the stream."""
    chunks: list[bytes] = []
    while n > 0:
        chunk = resp.read(n)
        if not chunk:
            break
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _demux_lines(resp: http.client.HTTPResponse) -> Iterator[tuple[str, bytes]]:
    """Split the multiplexed log stream (8-byte frame headers) into lines per stream.

    A frame is one write of the container, so it can hold several lines or half
    of one; lines are reassembled per stream and yielded without the newline.
    """
    pending: dict[str, bytes] = {}
    while True:
        header = _read_exact(resp, 8)
        if len(header) < 8:
            break
        name = _STREAM_NAMES.get(header[0], "stdout")
        size = int.from_bytes(header[4:8], "big")
        payload = _read_exact(resp, size)
        data = pending.pop(name, b"") + payload
        *lines, rest = data.split(b"\n")
        for line in lines:
            yield name, line
        if rest:
            pending[name] = rest
        if len(payload) < size:
            break
    for name, rest in pending.items():
        yield name, rest


def _registry_auth_header(auth: dict[str, str]) -> str:
    raw = json.dumps(auth, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode()


def _raw_lines(resp: http.client.HTTPResponse) -> Iterator[tuple[str, bytes]]:
    # A TTY container has one merged stream; the engine sends it unframed.
    while True:
        line = resp.readline()
        if not line:
            return
        yield "stdout", line[:-1] if line.endswith(b"\n") else line


def _json_lines(resp: http.client.HTTPResponse) -> Iterator[dict[str, Any]]:
    buf = b""
    while True:
        line = resp.readline()
        if not line:
            return
        buf += line
        try:
            obj = json.loads(buf)
        except ValueError:
            if line.endswith(b"\n") and not buf.strip():
                buf = b""
            continue  # a JSON object split over reads: keep accumulating
        buf = b""
        if isinstance(obj, dict):
            yield obj


def _version_tuple(v: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in v.strip().split("."))
    except ValueError:
        return (0,)


@dataclass(frozen=True)
class ContainerNetwork:
    """The network containers with an overlay address join, and the DNS server they use."""

    name: str
    dns: str


class DockerClient:
    """A thread-safe Docker Engine API client (a fresh connection per call)."""

    def __init__(
        self,
        base_url: str | None = None,
        *,
        timeout: float = 60.0,
        api_version: str | None = None,
    ) -> None:
        self.base_url = base_url or os.environ.get("DOCKER_HOST") or DEFAULT_BASE_URL
        self.timeout = timeout
        url = urlsplit(self.base_url)
        if url.scheme == "unix":
            # unix:///var/run/docker.sock -> netloc "" and path "/var/run/docker.sock"
            self._unix_path: str | None = (url.netloc + url.path) or "/var/run/docker.sock"
            self._host, self._port = "localhost", 0
        elif url.scheme in ("tcp", "http"):
            self._unix_path = None
            self._host = url.hostname or "127.0.0.1"
            self._port = url.port or 2375
        else:
            raise ValueError(f"unsupported Docker host {self.base_url!r}: use unix:// or tcp://")
        self._api_version = api_version
        self._version_lock = threading.Lock()
        # containers created with an overlay address label join this network (set by the
        # agent's overlay once the network exists)
        self.overlay: ContainerNetwork | None = None
        self.overlay_wait = 0.0  # seconds a container with an address waits for that network

    def __repr__(self) -> str:
        return f"DockerClient({self.base_url!r}, api_version={self._api_version!r})"

    # -- transport -----------------------------------------------------------------

    def _connection(self, timeout: float | None) -> http.client.HTTPConnection:
        if self._unix_path is not None:
            return _UnixHTTPConnection(self._unix_path, timeout)
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)

    @property
    def api_version(self) -> str:
        """The negotiated API version (negotiates on first use)."""
        if self._api_version is None:
            with self._version_lock:
                if self._api_version is None:
                    status, body = self._raw("GET", "/version", timeout=self.timeout)
                    if status >= 400:
                        raise _error_from(status, body)
                    server = str(json.loads(body).get("ApiVersion") or MAX_API_VERSION)
                    self._api_version = min(server, MAX_API_VERSION, key=_version_tuple)
        return self._api_version

    def _url(self, path: str, params: dict[str, Any] | None = None) -> str:
        url = f"/v{self.api_version}{path}"
        if params:
            clean = {k: v for k, v in params.items() if v is not None}
            if clean:
                url += "?" + urlencode(clean)
        return url

    def _send(
        self,
        method: str,
        url: str,
        body: Any = None,
        timeout: float | None = None,
        extra_headers: dict[str, str] | None = None,
    ) -> http.client.HTTPConnection:
        """Connect and send a request; the caller reads the response."""
        headers = dict(extra_headers or {})
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn = self._connection(timeout)
        try:
            conn.request(method, url, body=payload, headers=headers)
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise EngineUnavailable(
                f"Docker Engine at {self.base_url} does not answer: {exc}"
            ) from exc
        return conn

    def _raw(
        self, method: str, url: str, body: Any = None, timeout: float | None = None
    ) -> tuple[int, bytes]:
        conn = self._send(method, url, body, timeout if timeout is not None else self.timeout)
        try:
            resp = conn.getresponse()
            return resp.status, resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise EngineUnavailable(
                f"Docker Engine at {self.base_url}: {method} {url}: {exc}"
            ) from exc
        finally:
            conn.close()

    def _call(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        body: Any = None,
        *,
        ok: tuple[int, ...] = (),
        timeout: float | None = None,
    ) -> tuple[int, bytes]:
        status, data = self._raw(method, self._url(path, params), body, timeout)
        if status >= 400 and status not in ok:
            raise _error_from(status, data)
        return status, data

    def _json(
        self, method: str, path: str, params: dict[str, Any] | None = None, body: Any = None
    ) -> Any:
        _, data = self._call(method, path, params, body)
        return json.loads(data) if data else None

    # -- system --------------------------------------------------------------------

    def ping(self) -> bool:
        """True if the engine answers ``/_ping`` with OK; False if it does not answer."""
        try:
            status, body = self._raw("GET", "/_ping", timeout=min(self.timeout, 10.0))
        except EngineUnavailable:
            return False
        return status == 200 and body.strip() == b"OK"

    def version(self) -> dict[str, Any]:
        """``GET /version``: Version, ApiVersion, Os, Arch, KernelVersion, ..."""
        return dict(self._json("GET", "/version"))

    def info(self) -> dict[str, Any]:
        """``GET /info``."""
        return dict(self._json("GET", "/info"))

    # -- images --------------------------------------------------------------------

    def image_digests(self) -> list[str]:
        """Every digest the engine's images are known by (``RepoDigests``), sorted, without repeats."""
        digests = set()
        for image in self._json("GET", "/images/json"):
            for repo_digest in image.get("RepoDigests") or ():
                _, sep, digest = str(repo_digest).rpartition("@")
                if sep and digest.startswith("sha256:"):
                    digests.add(digest)
        return sorted(digests)

    def image_present(self, ref: str) -> bool:
        """Whether the engine has the image, by ``name:tag`` or ``name@sha256:...``."""
        status, _ = self._call("GET", f"/images/{quote(ref, safe='/:@')}/json", ok=(404,))
        return status == 200

    def pull(self, ref: str, timeout: float = 600, auth: dict[str, str] | None = None) -> None:
        """Pull an image and read the progress stream to its end.

        ``auth`` ({"username", "password", "serveraddress"}) goes to the engine as
        X-Registry-Auth, for registries that need credentials.

        Raises :class:`PullError` when the engine or the registry reports a
        failure (its own text as ``message``) or when the whole pull takes
        longer than ``timeout`` seconds; :class:`EngineUnavailable` when the
        engine itself does not answer or drops the connection.
        """
        repo, tag = split_reference(ref)
        deadline = time.monotonic() + timeout
        headers = {"X-Registry-Auth": _registry_auth_header(auth)} if auth else None
        conn = self._send(
            "POST", self._url("/images/create", {"fromImage": repo, "tag": tag}), timeout=timeout,
            extra_headers=headers,
        )
        sock = conn.sock
        try:
            resp = conn.getresponse()
            if resp.status >= 400:
                raise _error_from(resp.status, resp.read(), PullError)
            error: str | None = None
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError
                if sock is not None:
                    sock.settimeout(remaining)
                line = resp.readline()
                if not line:
                    break
                try:
                    msg = json.loads(line)
                except ValueError:
                    continue
                if isinstance(msg, dict) and (msg.get("error") or msg.get("errorDetail")):
                    detail = msg.get("errorDetail")
                    text = detail.get("message") if isinstance(detail, dict) else None
                    error = error or str(text or msg.get("error"))
            if error is not None:
                # The engine had already answered 200 when the registry failed.
                raise PullError(resp.status, error)
        except TimeoutError as exc:
            raise PullError(0, f"pull {ref}: timed out after {timeout:g} s") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise EngineUnavailable(
                f"Docker Engine at {self.base_url}: pull {ref}: connection broke: {exc}"
            ) from exc
        finally:
            conn.close()

    # -- containers ----------------------------------------------------------------

    def create_container(
        self,
        name: str,
        image: str,
        *,
        command: list[str] | None = None,
        env: dict[str, str] | None = None,
        labels: dict[str, str] | None = None,
        ports: list[PortSpec] | None = None,
        restart_policy: str = "no",
        init: bool = False,
        gpus: int = 0,
        entrypoint: list[str] | None = None,
        working_dir: str | None = None,
        user: str | None = None,
        hostname: str | None = None,
        volumes: list[VolumeSpec] | None = None,
        volume_labels: dict[str, str] | None = None,
        healthcheck: HealthcheckSpec | None = None,
        stop_grace_period: float | None = None,
        cpu_limit: float | None = None,
        memory_limit: int | None = None,
    ) -> str:
        """Create a container and return its id.

        ``restart_policy`` is ``no``, ``always``, ``unless-stopped``, ``on-failure``
        or ``on-failure:N``.  Ports are published on all host addresses.  ``gpus``
        asks the engine's NVIDIA runtime for that many GPUs (``docker run --gpus N``).
        ``entrypoint`` None keeps the image's, ``[]`` clears it.  ``volumes`` become
        mounts: a named volume is created by the engine on first use (with
        ``volume_labels``); a bind source that does not exist on the host is an
        error (400, naming the path).  ``healthcheck`` None keeps the image's.
        ``stop_grace_period`` (seconds, rounded up) becomes the container's
        StopTimeout, which a ``stop()`` without a timeout honours.  ``cpu_limit``
        is in CPUs, ``memory_limit`` in bytes.
        """
        policy, _, retries = restart_policy.partition(":")
        if policy not in _RESTART_POLICIES:
            raise ValueError(f"unknown restart policy {restart_policy!r}")
        exposed: dict[str, dict[str, Any]] = {}
        bindings: dict[str, list[dict[str, str]]] = {}
        for p in ports or []:
            key = f"{p.target}/{p.protocol}"
            exposed[key] = {}
            if p.mode != "ingress":  # ingress ports are reached through the agent's proxy, not bound
                bindings.setdefault(key, []).append({"HostIp": "", "HostPort": str(p.published)})
        host_config: dict[str, Any] = {
            "PortBindings": bindings,
            "RestartPolicy": {"Name": policy, "MaximumRetryCount": int(retries or 0)},
            "Init": bool(init),
        }
        if gpus:
            host_config["DeviceRequests"] = [{"Driver": "nvidia", "Count": int(gpus), "Capabilities": [["gpu"]]}]
        if volumes:
            host_config["Mounts"] = [_mount(v, volume_labels) for v in volumes]
        if cpu_limit is not None:
            host_config["NanoCpus"] = _nanoseconds(cpu_limit)
        if memory_limit is not None:
            host_config["Memory"] = int(memory_limit)
        body: dict[str, Any] = {
            "Image": image,
            "Env": [f"{k}={v}" for k, v in (env or {}).items()],
            "Labels": dict(labels or {}),
            "ExposedPorts": exposed,
            "HostConfig": host_config,
        }
        if command is not None:
            body["Cmd"] = list(command)
        optional = {"Entrypoint": None if entrypoint is None else list(entrypoint), "WorkingDir": working_dir,
                     "User": user, "Hostname": hostname,
                     "Healthcheck": None if healthcheck is None else _healthcheck_config(healthcheck),
                     "StopTimeout": None if stop_grace_period is None else math.ceil(stop_grace_period)}
        body.update((k, v) for k, v in optional.items() if v is not None)
        address = (labels or {}).get(LABEL_ADDRESS)
        if address:
            self._attach_overlay(body, address)
        data = self._json("POST", "/containers/create", {"name": name}, body)
        return str(data["Id"])

    def _attach_overlay(self, body: dict[str, Any], address: str) -> None:
        """Put the container on the overlay network at its address, with the host's DNS."""
        deadline = time.monotonic() + self.overlay_wait
        while self.overlay is None and time.monotonic() < deadline:  # the agent is making it now
            time.sleep(0.1)
        net = self.overlay
        if net is None:  # no overlay here: running the container matters more than its address
            log.warning("overlay network not ready: the container for %s starts on the default network", address)
            return
        body["HostConfig"]["NetworkMode"] = net.name
        body["HostConfig"]["Dns"] = [net.dns]
        # bare service names are tried under the overlay's zone first (not the host's search domains)
        body["HostConfig"]["DnsSearch"] = ["corral.internal"]
        body["NetworkingConfig"] = {"EndpointsConfig": {net.name: {"IPAMConfig": {"IPv4Address": address}}}}

    def start(self, cid: str) -> None:
        """Start a container; already running (304) is fine."""
        self._call("POST", f"/containers/{quote(cid)}/start", ok=(304,))

    def stop(self, cid: str, timeout: float = 10) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` s (rounded up); already stopped (304) is fine."""
        seconds = math.ceil(timeout)
        self._call(
            "POST",
            f"/containers/{quote(cid)}/stop",
            {"t": seconds},
            ok=(304,),
            timeout=self.timeout + seconds,
        )

    def kill(self, cid: str, signal: str = "KILL") -> None:
        """Send a signal; raises :class:`Conflict` if the container is not running."""
        self._call("POST", f"/containers/{quote(cid)}/kill", {"signal": signal})

    def remove(self, cid: str, force: bool = True) -> None:
        """Remove a container (and its anonymous volumes); a missing one (404) is fine."""
        self._call(
            "DELETE",
            f"/containers/{quote(cid)}",
            {"force": "1" if force else "0", "v": "1"},
            ok=(404,),
        )

    def list_containers(
        self, labels: dict[str, str] | None = None, all: bool = True
    ) -> list[ContainerInfo]:
        """Containers carrying every given label (``value ""`` matches any value)."""
        params: dict[str, Any] = {"all": "1" if all else "0", "filters": _label_filter(labels)}
        rows = self._json("GET", "/containers/json", params) or []
        out = []
        for row in rows:
            names = row.get("Names") or [""]
            out.append(
                ContainerInfo(
                    id=str(row.get("Id", "")),
                    name=str(names[0]).lstrip("/"),
                    image=str(row.get("Image", "")),
                    labels=dict(row.get("Labels") or {}),
                    state=str(row.get("State", "")),
                    status=str(row.get("Status", "")),
                    created=int(row.get("Created") or 0),
                    health=_health_from_status(str(row.get("Status", "")))
                    if row.get("State") == "running" else "",
                    ip=_first_ip(row),
                )
            )
        return out

    def inspect_container(self, cid: str) -> dict[str, Any]:
        """``GET /containers/{id}/json``; :class:`NotFound` if missing."""
        return dict(self._json("GET", f"/containers/{quote(cid)}/json"))

    # -- volumes -------------------------------------------------------------------

    def list_volumes(self, labels: dict[str, str] | None = None) -> list[str]:
        """Names of the volumes carrying every given label (``value ""`` matches any value)."""
        data = self._json("GET", "/volumes", {"filters": _label_filter(labels)}) or {}
        return sorted(str(v["Name"]) for v in data.get("Volumes") or [])

    def remove_volume(self, name: str, force: bool = False) -> None:
        """Remove a volume; a missing one (404) is fine, one in use is a :class:`Conflict`."""
        self._call("DELETE", f"/volumes/{quote(name)}", {"force": "1" if force else "0"}, ok=(404,))

    # -- networks ------------------------------------------------------------------

    def inspect_network(self, name: str) -> dict[str, Any] | None:
        """``GET /networks/{name}``, or None when there is no such network."""
        status, data = self._call("GET", f"/networks/{quote(name)}", ok=(404,))
        return None if status == 404 else dict(json.loads(data))

    def create_bridge_network(self, name: str, subnet: str, gateway: str, bridge: str,
                              labels: dict[str, str] | None = None, mtu: int | None = None) -> str:
        """A bridge network with this subnet, gateway and Linux bridge name; its id."""
        options = {"com.docker.network.bridge.name": bridge}
        if mtu:
            options["com.docker.network.driver.mtu"] = str(mtu)
        body = {"Name": name, "Driver": "bridge", "CheckDuplicate": True, "Labels": dict(labels or {}),
                "Options": options, "IPAM": {"Driver": "default", "Config": [{"Subnet": subnet, "Gateway": gateway}]}}
        return str(self._json("POST", "/networks/create", None, body)["Id"])

    def remove_network(self, name: str) -> None:
        """Remove a network; a missing one (404) is fine."""
        self._call("DELETE", f"/networks/{quote(name)}", ok=(404,))

    # -- streams -------------------------------------------------------------------

    def logs(
        self,
        cid: str,
        *,
        follow: bool = False,
        tail: int | str = "all",
        since: int = 0,
        timestamps: bool = False,
    ) -> Stream[tuple[str, bytes]]:
        """Yield ``(stream, line)`` with stream ``"stdout"``/``"stderr"`` and the line
        without its newline.  A TTY container has one stream, reported as stdout.

        With ``follow`` the iteration ends when the container stops or when
        ``close()`` is called (from any thread).
        """
        tty = bool(self.inspect_container(cid).get("Config", {}).get("Tty"))
        params = {
            "stdout": "1",
            "stderr": "1",
            "follow": "1" if follow else "0",
            "tail": str(tail),
            "since": str(int(since)),
            "timestamps": "1" if timestamps else "0",
        }
        url = self._url(f"/containers/{quote(cid)}/logs", params)
        conn = self._send("GET", url, timeout=None if follow else self.timeout)
        return Stream(conn, _raw_lines if tty else _demux_lines, f"logs of {cid}")

    def events(
        self, filters: dict[str, list[str]] | None = None, since: float | None = None
    ) -> Stream[dict[str, Any]]:
        """Stream engine events (decoded JSON) until ``close()``.

        Pass ``since`` (a Unix time) to also get events that happened between it
        and the moment the engine registers this subscription.
        """
        params: dict[str, Any] = {}
        if filters:
            params["filters"] = json.dumps(filters)
        if since is not None:
            params["since"] = f"{since:.9f}"
        conn = self._send("GET", self._url("/events", params), timeout=None)
        return Stream(conn, _json_lines, "events")
