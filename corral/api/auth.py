"""Bearer-token authentication.

Three kinds of token (see corral.tokens): the admin token may do everything
but speak for a host; a host credential may read only its own host's desired
set and write only its own status; the join token may only register a host.
A missing, malformed, wrong or revoked token is 401; a valid token used
outside its rights is 403.  Neither changes anything.
"""

from __future__ import annotations

from fastapi import Depends, HTTPException, Request

from corral import tokens
from corral.server.state import ServerState
from corral.store.tables import HostRow


def server_state(request: Request) -> ServerState:
    state: ServerState = request.app.state.corral
    return state


def _bearer(request: Request) -> tokens.Token:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value:
        raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    try:
        return tokens.parse(value)
    except tokens.TokenError as exc:
        raise HTTPException(401, str(exc), headers={"WWW-Authenticate": "Bearer"}) from None


def _host_for(token: tokens.Token, state: ServerState) -> HostRow | None:
    host = state.store.host_by_id(token.ident)
    if host is None or not tokens.secret_matches(token.secret, host.token_hash):
        return None
    return host


def _valid_cluster_token(token: tokens.Token, state: ServerState) -> bool:
    return token.ident == state.ca_fingerprint and state.store.token_valid(
        token.kind, tokens.hash_secret(token.secret))


def require_admin(request: Request, state: ServerState = Depends(server_state)) -> None:
    token = _bearer(request)
    if token.kind == tokens.ADMIN and _valid_cluster_token(token, state):
        return
    if token.kind == tokens.HOST and _host_for(token, state) is not None:
        raise HTTPException(403, "a host credential cannot do this: it needs the admin token")
    if token.kind == tokens.JOIN and _valid_cluster_token(token, state):
        raise HTTPException(403, "a join token can only register a host")
    raise HTTPException(401, "invalid or revoked token", headers={"WWW-Authenticate": "Bearer"})


def require_host(request: Request, state: ServerState = Depends(server_state)) -> HostRow:
    token = _bearer(request)
    if token.kind == tokens.HOST:
        host = _host_for(token, state)
        if host is not None:
            return host
    elif _valid_cluster_token(token, state):
        raise HTTPException(403, "this endpoint is for agents: it needs a host credential")
    raise HTTPException(401, "invalid or revoked host credential", headers={"WWW-Authenticate": "Bearer"})


def require_join(request: Request, state: ServerState = Depends(server_state)) -> None:
    token = _bearer(request)
    if token.kind == tokens.JOIN and _valid_cluster_token(token, state):
        return
    if token.kind == tokens.JOIN and token.ident != state.ca_fingerprint:
        raise HTTPException(401, "join token is for another cluster (CA fingerprint differs)")
    raise HTTPException(401, "invalid or revoked join token", headers={"WWW-Authenticate": "Bearer"})
