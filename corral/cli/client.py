"""A small synchronous client for Corral's REST API (``/api/v1``).

Design:

* One :class:`CorralClient` wraps one :class:`httpx.Client`.  Like httpx
  itself, it accepts a ``transport``: tests pass an
  :class:`httpx.MockTransport` and get the whole client, headers, error
  mapping and streaming included, without a server or TLS.
* Trust comes from the token, never from the system CA store: an admin (or
  join) token carries the fingerprint of the cluster CA.  :func:`pin_ca`
  fetches the CA over an unverified connection, checks it against that
  fingerprint, and the client then verifies the server against that CA alone
  (:func:`corral.tokens.pinned_context`).  Plain ``http://`` URLs are the
  server's explicit development mode and skip TLS.  Pinned CAs are cached in
  memory for the life of the process.
* Methods return the API's JSON as plain dicts and lists: the CLI prints them
  as they are for ``--output json``, and end-to-end tests can assert on them.
* Every failure surfaces as :class:`ClientError` (cannot connect, TLS, bad
  token) or its subclass :class:`APIError` (the server answered 4xx/5xx), with
  a message fit to show a user.  httpx exceptions never leak out.
"""

from __future__ import annotations

import contextlib
import http.client
import ssl
import urllib.parse
from collections.abc import Callable, Iterator
from typing import Any, Self

import httpx

from corral import __version__, tokens
from corral.cli.errors import CLIError

JSONDict = dict[str, Any]
CAFetcher = Callable[[str], str]

API_PREFIX = "/api/v1"

# (url, CA fingerprint) -> CA PEM, verified against the fingerprint.
_CA_CACHE: dict[tuple[str, str], str] = {}


class ClientError(CLIError):
    """The CLI could not get an answer from the server (or must not trust it)."""


class APIError(ClientError):
    """The server answered with an error status; ``str()`` is a readable message."""

    def __init__(self, status_code: int, detail: Any, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.detail = detail  # as the server sent it: a string or a list of errors

    @classmethod
    def from_response(cls, response: httpx.Response) -> APIError:
        detail: Any
        try:
            body = response.json()
            detail = body.get("detail", body) if isinstance(body, dict) else body
        except ValueError:
            detail = response.text.strip()[:300]
        text = format_detail(detail) or f"HTTP {response.status_code} {response.reason_phrase}"
        status = response.status_code
        if status == 401:
            message = (
                f"unauthorized: {text} (the server rejects this token; "
                "run `corral login URL --token TOKEN` again)"
            )
        elif status == 403:
            message = f"forbidden: {text} (this token lacks the rights for that)"
        elif status == 422:
            message = f"invalid request: {text}"
        else:
            message = text
        return cls(status, detail, message)


def format_detail(detail: Any) -> str:
    """Render an API error ``detail``: a string, or FastAPI/pydantic's error list."""
    if detail is None:
        return ""
    if isinstance(detail, str):
        return detail
    if isinstance(detail, list):
        items = []
        for err in detail:
            if not isinstance(err, dict):
                items.append(str(err))
                continue
            loc = [str(p) for p in err.get("loc", []) if p not in ("body", "query", "path")]
            msg = str(err.get("msg", err))
            items.append(f"{'.'.join(loc)}: {msg}" if loc else msg)
        if len(items) == 1:
            return items[0]
        return "".join(f"\n  - {item}" for item in items)
    if isinstance(detail, dict) and "message" in detail:
        return str(detail["message"])
    return str(detail)


def mask_token(token: str) -> str:
    """``CORRAL-A1-abcdefgh…-••••``: enough to recognise a token, useless to steal it."""
    try:
        tok = tokens.parse(token)
    except tokens.TokenError:
        return "••••••••"
    ident = tok.ident if len(tok.ident) <= 8 else tok.ident[:8] + "…"
    return f"CORRAL-{tok.kind}-{ident}-••••••••"


def is_plain_http(url: str) -> bool:
    return url.lower().startswith("http://")


def pin_ca(
    url: str,
    token: str,
    *,
    known_ca: str | None = None,
    fetch: CAFetcher | None = None,
) -> str | None:
    """The cluster CA for ``url``, verified against the fingerprint in ``token``.

    Returns None for plain-http URLs (no TLS).  ``known_ca`` (the CA saved at
    login) is used without a network round trip when it matches the pin; else
    the CA is fetched with ``fetch`` (default :func:`corral.tokens.fetch_ca`).
    """
    if is_plain_http(url):
        return None
    try:
        tok = tokens.parse(token)
    except tokens.TokenError as exc:
        raise ClientError(f"invalid token: {exc}") from None
    if tok.kind not in (tokens.ADMIN, tokens.JOIN):
        raise ClientError("this is a host credential, not an admin token (CORRAL-A1-…)")
    if known_ca:
        try:
            if tokens.fingerprint(known_ca) == tok.ident:
                return known_ca
        except ValueError:
            pass  # a damaged stored CA: fetch it again
    key = (url, tok.ident)
    if key in _CA_CACHE:
        return _CA_CACHE[key]
    try:
        pem = (fetch or tokens.fetch_ca)(url)
    except tokens.TokenError as exc:
        raise ClientError(str(exc)) from None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise ClientError(f"cannot fetch the cluster CA from {url}: {_reason(exc)}") from None
    try:
        tokens.verify_pin(pem, tok)
    except ValueError as exc:  # TokenError, or a body that is no PEM certificate
        msg = str(exc) if isinstance(exc, tokens.TokenError) else "the server sent no valid CA"
        raise ClientError(f"refusing {url}: {msg}") from None
    _CA_CACHE[key] = pem
    return pem


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or exc.__class__.__name__


def _quote(part: str) -> str:
    return urllib.parse.quote(str(part), safe="")


class CorralClient:
    """The Corral REST API.  Use :meth:`connect` to pin the CA from a token.

    ``CorralClient(url, token, ca_pem=...)`` trusts the given CA (required for
    https unless a ``transport`` is injected, which then owns the connection).
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        ca_pem: str | None = None,
        transport: httpx.BaseTransport | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.url = url.rstrip("/")
        self.ca_pem = ca_pem
        self._timeout = timeout
        verify: ssl.SSLContext | bool = True
        if transport is None and not is_plain_http(self.url):
            if not ca_pem:
                raise ValueError("an https server needs its pinned CA: use CorralClient.connect()")
            verify = tokens.pinned_context(ca_pem)
        headers = {"User-Agent": f"corral-cli/{__version__}", "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            base_url=self.url + API_PREFIX,
            headers=headers,
            timeout=timeout,
            verify=verify,
            transport=transport,
        )

    @classmethod
    def connect(
        cls,
        url: str,
        token: str,
        *,
        ca_pem: str | None = None,
        transport: httpx.BaseTransport | None = None,
        fetch_ca: CAFetcher | None = None,
        timeout: float = 30.0,
    ) -> CorralClient:
        """Pin the cluster CA against ``token`` (see :func:`pin_ca`) and return a client."""
        url = url.strip().rstrip("/")
        pem = pin_ca(url, token, known_ca=ca_pem, fetch=fetch_ca)
        return cls(url, token, ca_pem=pem, transport=transport, timeout=timeout)

    # -- plumbing ----------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn httpx's transport exceptions into one readable ClientError."""
        try:
            yield
        except httpx.TimeoutException:
            raise ClientError(f"timed out talking to {self.url}") from None
        except httpx.TransportError as exc:
            cause: BaseException | None = exc
            while cause is not None and not isinstance(cause, ssl.SSLError):
                cause = cause.__cause__ or cause.__context__
            if isinstance(cause, ssl.SSLCertVerificationError):
                raise ClientError(
                    f"TLS verification of {self.url} failed: its certificate is not "
                    "signed by the pinned cluster CA"
                ) from None
            if cause is not None:
                raise ClientError(f"TLS error talking to {self.url}: {cause}") from None
            raise ClientError(f"cannot reach {self.url}: {exc or exc.__class__.__name__}") from None

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        with self._errors():
            response = self._http.request(method, path, **kwargs)
        if response.is_error:
            raise APIError.from_response(response)
        return response

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._request(method, path, **kwargs)
        try:
            return response.json()
        except ValueError:
            raise ClientError(f"{method} {path}: the server answered with no JSON") from None

    def _object(self, method: str, path: str, **kwargs: Any) -> JSONDict:
        data = self._json(method, path, **kwargs)
        if not isinstance(data, dict):
            raise ClientError(f"{method} {path}: expected a JSON object from the server")
        return data

    def _list(self, method: str, path: str, **kwargs: Any) -> list[JSONDict]:
        data = self._json(method, path, **kwargs)
        if not isinstance(data, list):
            raise ClientError(f"{method} {path}: expected a JSON list from the server")
        return data

    # -- cluster -----------------------------------------------------------

    def ca(self) -> str:
        """The cluster CA certificate (PEM).  Needs no token."""
        return self._request("GET", "/ca").text

    def info(self) -> JSONDict:
        """``{"version", "ca_fingerprint"}``.  Needs no token."""
        return self._object("GET", "/info")

    def get_join_token(self) -> JSONDict:
        """``{"token": "CORRAL-J1-…", "server": advertised URL, "agent_image": multi-arch ref}``.

        Older servers send neither ``server`` nor ``agent_image``.
        """
        return self._object("GET", "/tokens/join")

    def rotate_join_token(self) -> JSONDict:
        """Revoke the join token and issue a new one (hosts already joined are unaffected)."""
        return self._object("POST", "/tokens/join/rotate")

    # -- hosts -------------------------------------------------------------

    def list_hosts(self) -> list[JSONDict]:
        return self._list("GET", "/hosts")

    def get_host(self, host: str) -> JSONDict:
        """A host by id or name."""
        return self._object("GET", f"/hosts/{_quote(host)}")

    def remove_host(self, host: str) -> None:
        """Remove a host and revoke its credential."""
        self._request("DELETE", f"/hosts/{_quote(host)}")

    def set_host_availability(self, host: str, action: str) -> JSONDict:
        """``action``: cordon, drain or activate."""
        return self._object("POST", f"/hosts/{_quote(host)}/{action}")

    def set_host_label(self, host: str, key: str, value: str) -> JSONDict:
        return self._object(
            "PUT", f"/hosts/{_quote(host)}/labels/{_quote(key)}", json={"value": value}
        )

    def remove_host_label(self, host: str, key: str) -> JSONDict:
        return self._object("DELETE", f"/hosts/{_quote(host)}/labels/{_quote(key)}")

    # -- the overlay network -------------------------------------------------

    def get_network(self) -> JSONDict:
        """The overlay: ``{"cluster_cidr", "host_prefix", "dns_generation", "hosts": [...]}``.

        Each host: ``id, name, state, subnet, gateway, overlay`` (bool), ``endpoint,
        backend, error, repairs, last_repair, behind_nat, reachable, relaying_for,
        relays`` and ``peers`` (peer name -> ``{state, handshake_at, rtt_ms, via,
        endpoint}``, as that host's agent last reported it).
        """
        return self._object("GET", "/network")

    # -- services and instances --------------------------------------------

    def create_service(self, spec: JSONDict) -> JSONDict:
        """POST a service spec (name, image, mode, replicas, allow_emulation, env, command,
        ports, constraints, restart)."""
        return self._object("POST", "/services", json=spec)

    def list_services(self) -> list[JSONDict]:
        return self._list("GET", "/services")

    def get_service(self, name: str, instances: bool = True) -> JSONDict:
        """A service with its ``instances`` (without, only its counts and update state)."""
        params = None if instances else {"instances": "false"}
        return self._object("GET", f"/services/{_quote(name)}", params=params)

    def scale_service(self, name: str, replicas: int) -> JSONDict:
        return self._object("PATCH", f"/services/{_quote(name)}", json={"replicas": replicas})

    def remove_service(self, name: str) -> None:
        self._request("DELETE", f"/services/{_quote(name)}")

    def update_service(self, name: str, changes: JSONDict) -> JSONDict:
        """Change a service (image, env, command, replicas, update settings); may start a rollout."""
        return self._object("POST", f"/services/{_quote(name)}/update", json=changes)

    def rollback_service(self, name: str) -> JSONDict:
        return self._object("POST", f"/services/{_quote(name)}/rollback")

    # -- stacks --------------------------------------------------------------

    def deploy_stack(self, name: str, services: list[JSONDict], prune: bool = False) -> JSONDict:
        """``{"stack", "created", "updated", "scaled", "unchanged", "removed"}`` (service names)."""
        return self._object("POST", f"/stacks/{_quote(name)}", json={"services": services, "prune": prune})

    def list_stacks(self) -> list[JSONDict]:
        return self._list("GET", "/stacks")

    def stack_services(self, name: str) -> list[JSONDict]:
        return self._list("GET", f"/stacks/{_quote(name)}/services")

    def stack_instances(self, name: str) -> list[JSONDict]:
        return self._list("GET", f"/stacks/{_quote(name)}/ps")

    def remove_stack(self, name: str) -> None:
        self._request("DELETE", f"/stacks/{_quote(name)}")

    # -- events --------------------------------------------------------------

    def list_events(self, params: JSONDict) -> list[JSONDict]:
        return self._list("GET", "/events", params=params)

    def stream_events(self, params: JSONDict) -> Iterator[JSONDict]:
        """Yield events from the server's Server-Sent Events stream as they happen."""
        import json

        timeout = httpx.Timeout(self._timeout, read=None)
        with (
            self._errors(),
            self._http.stream("GET", "/events", params={**params, "follow": "true"}, timeout=timeout) as response,
        ):
            if response.is_error:
                response.read()
                raise APIError.from_response(response)
            for line in response.iter_lines():
                if line.startswith("data: "):
                    yield json.loads(line[6:])

    def list_instances(self, service: str | None = None) -> list[JSONDict]:
        params = {"service": service} if service else None
        return self._list("GET", "/instances", params=params)

    def stream_logs(
        self, service: str, *, follow: bool = False, tail: int | None = None
    ) -> Iterator[str]:
        """Yield log lines (prefixed by the server with the instance name) as they arrive.

        With ``follow`` there is no read timeout: the stream ends when the
        server closes it or the caller stops iterating (``close()`` the
        generator to drop the connection at once).
        """
        params = {"follow": "true" if follow else "false"}
        if tail is not None:
            params["tail"] = str(tail)
        timeout = httpx.Timeout(self._timeout, read=None) if follow else self._timeout
        path = f"/services/{_quote(service)}/logs"
        with (
            self._errors(),
            self._http.stream("GET", path, params=params, timeout=timeout) as response,
        ):
            if response.is_error:
                response.read()
                raise APIError.from_response(response)
            yield from response.iter_lines()

    # -- images ------------------------------------------------------------

    def inspect_image(self, ref: str) -> JSONDict:
        """What the registry says about ``ref``: its digest and the platforms it offers.

        ``{"reference", "registry", "repository", "tag", "digest", "media_type",
        "platforms": [{"platform", "digest", "size", "media_type", "os_version"}]}``.
        The server asks the registry: 404 (no such image), 422 (invalid reference)
        and 502 (registry unreachable, refused the credentials, answered nonsense).
        """
        return self._object("GET", "/images/inspect", params={"ref": ref})

    # -- registry credentials ------------------------------------------------

    def set_registry_credentials(self, registry: str, username: str, password: str) -> JSONDict:
        """Store (or replace) the credentials the cluster pulls from ``registry`` with.

        The password goes in this request's body and nowhere else; the answer
        (``{"registry", "username", "created_at"}``) never contains it.
        """
        return self._object(
            "PUT",
            f"/registries/{_quote(registry)}",
            json={"username": username, "password": password},
        )

    def list_registries(self) -> list[JSONDict]:
        """``[{"registry", "username", "created_at"}]`` (passwords are never returned)."""
        return self._list("GET", "/registries")

    def remove_registry_credentials(self, registry: str) -> None:
        """Forget ``registry``'s credentials (404 when there are none)."""
        self._request("DELETE", f"/registries/{_quote(registry)}")
