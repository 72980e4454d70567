"""Token formats and CA pinning, shared by the server, the agent and the CLI.

A join or admin token carries the fingerprint of the cluster CA, in the way
Swarm's SWMTKN and kubeadm's discovery hash do::

    CORRAL-J1-<ca fingerprint>-<secret>    join a host
    CORRAL-A1-<ca fingerprint>-<secret>    administer (CLI)
    CORRAL-H1-<host id>-<secret>           one host's own credential

The fingerprint is the unpadded lower-case base32 of SHA-256 over the CA
certificate's DER bytes.  A client that holds a token fetches the CA from the
server over an unverified connection, checks it against the fingerprint, and
from then on verifies the server against that CA alone.  Stdlib only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import ssl
import urllib.parse
from dataclasses import dataclass

JOIN = "J1"
ADMIN = "A1"
HOST = "H1"
_KINDS = (JOIN, ADMIN, HOST)


class TokenError(ValueError):
    """A token that is not in one of Corral's formats."""


@dataclass(frozen=True)
class Token:
    kind: str
    ident: str  # CA fingerprint (join/admin) or host id (host)
    secret: str

    def __str__(self) -> str:
        return f"CORRAL-{self.kind}-{self.ident}-{self.secret}"


def new_secret() -> str:
    return secrets.token_hex(16)


def parse(text: str) -> Token:
    parts = text.strip().split("-")
    if len(parts) != 4 or parts[0] != "CORRAL" or parts[1] not in _KINDS or not parts[2] or not parts[3]:
        raise TokenError("malformed token: expected CORRAL-<kind>-<id>-<secret>")
    return Token(parts[1], parts[2], parts[3])


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)


def fingerprint(ca_pem: str) -> str:
    der = ssl.PEM_cert_to_DER_cert(ca_pem)
    return base64.b32encode(hashlib.sha256(der).digest()).decode().rstrip("=").lower()


def fetch_ca(server_url: str, timeout: float = 10.0) -> str:
    """Fetch the CA certificate from an untrusted server; the caller must pin it."""
    import http.client

    url = urllib.parse.urlsplit(server_url)
    host, port = url.hostname or "127.0.0.1", url.port
    if url.scheme == "https":
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(host, port, timeout=timeout, context=ctx)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/api/v1/ca")
        resp = conn.getresponse()
        body = resp.read().decode()
        if resp.status != 200:
            raise TokenError(f"server at {server_url} did not return its CA (HTTP {resp.status})")
        return body
    finally:
        conn.close()


def verify_pin(ca_pem: str, token: Token) -> None:
    if token.kind not in (JOIN, ADMIN):
        raise TokenError("only join and admin tokens pin the CA")
    if fingerprint(ca_pem) != token.ident:
        raise TokenError(
            "the server's CA does not match the fingerprint in the token: "
            "wrong server, or someone is in the middle"
        )


def pinned_context(ca_pem: str) -> ssl.SSLContext:
    """Trust exactly the cluster CA.

    Host names are not checked: the cluster CA is private to one Corral server
    and signs nothing but that server's certificate, so a certificate chaining
    to it identifies the server wherever the agent reached it (a NAT address,
    a tunnel, an IP the operator did not list when the CA was made).
    """
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=ca_pem)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
