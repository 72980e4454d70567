"""The agent's HTTP client for the server: stdlib only, TLS pinned to the cluster CA.

Each thread keeps its own keep-alive connection (the long-poll thread holds
one open almost all the time; the heartbeat and log threads have theirs), and
a broken connection is dropped and redialled on the next call.
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import urllib.parse
from typing import Any

from corral.tokens import pinned_context


class ServerError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status
        self.message = message


class Unreachable(Exception):
    """The server did not answer (connection refused, reset, timed out)."""


class ServerSession:
    def __init__(self, url: str, ca_pem: str, token: str = "", timeout: float = 15.0) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"invalid server URL {url!r}: expected https://HOST:PORT")
        self.url = url
        self._host = parts.hostname
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._ssl: ssl.SSLContext | None = pinned_context(ca_pem) if parts.scheme == "https" else None
        self.token = token
        self.timeout = timeout
        self._local = threading.local()

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None:
            if self._ssl is not None:
                conn = http.client.HTTPSConnection(self._host, self._port, timeout=timeout, context=self._ssl)
            else:
                conn = http.client.HTTPConnection(self._host, self._port, timeout=timeout)
            self._local.conn = conn
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def call(self, method: str, path: str, body: Any = None, *, timeout: float | None = None,
             token: str | None = None) -> Any:
        """Send one request; return the decoded JSON body or raise ServerError / Unreachable."""
        # Few headers: an idle host sends one request per heartbeat, so every byte shows in its uplink.
        headers = {"Authorization": f"Bearer {token or self.token}"}
        payload = None
        if body is not None:
            payload = json.dumps(body, separators=(",", ":")).encode()
            headers["Content-Type"] = "application/json"
        for attempt in (1, 2):  # a keep-alive connection the server closed: redial once
            conn = self._connection(timeout or self.timeout)
            try:
                conn.putrequest(method, path, skip_accept_encoding=True)
                for key, value in headers.items():
                    conn.putheader(key, value)
                if payload is not None:
                    conn.putheader("Content-Length", str(len(payload)))
                conn.endheaders(payload)
                resp = conn.getresponse()
                raw = resp.read()
                break
            except (ConnectionError, http.client.HTTPException, OSError) as exc:
                self.close()
                reused = isinstance(exc, (http.client.RemoteDisconnected, BrokenPipeError,
                                          ConnectionResetError))
                if attempt == 2 or not reused:
                    raise Unreachable(f"{self.url}: {exc}") from None
        if resp.status >= 400:
            try:
                detail = json.loads(raw).get("detail", raw.decode(errors="replace"))
            except (ValueError, AttributeError):
                detail = raw.decode(errors="replace")
            raise ServerError(resp.status, str(detail))
        return json.loads(raw) if raw else None
