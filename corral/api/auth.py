"""Bearer-token authentication.

Three kinds of token (see corral.tokens): the admin token may do everything
but speak for a host; a host credential may read only its own host's desired
set and write only its own status; the join token may only register a host.
A missing, malformed, wrong or revoked token is 401; a valid token used
outside its rights is 403.  Neither changes anything.

The dependencies are async: FastAPI runs a plain function dependency on its
thread pool, one hop per dependency per request, which for the agents' small
requests cost more than the check.  Only a check that must ask the store (a
token not remembered) takes a worker thread.
"""

from __future__ import annotations

from fastapi import Depends, HTTPException, Request
from fastapi.concurrency import run_in_threadpool

from corral import tokens
from corral.server.hostauth import HostIdentity
from corral.server.state import ServerState


async def server_state(request: Request) -> ServerState:
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


def _host_for(token: tokens.Token, state: ServerState) -> HostIdentity | None:
    """The host a credential belongs to, asked of the store (and remembered), or None."""
    found = state.store.host_credential(token.ident)
    if found is None or not tokens.secret_matches(token.secret, found[1]):
        return None
    host = HostIdentity(token.ident, found[0])
    state.host_auth.put(str(token), host)
    return host


async def _host_of(token: tokens.Token, state: ServerState) -> HostIdentity | None:
    """The host a credential belongs to: remembered, on the event loop; else :func:`_host_for` on a
    worker thread."""
    return state.host_auth.get(str(token)) or await run_in_threadpool(_host_for, token, state)


def _valid_cluster_token(token: tokens.Token, state: ServerState) -> bool:
    return token.ident == state.ca_fingerprint and state.store.token_valid(
        token.kind, tokens.hash_secret(token.secret))


async def _cluster_token_ok(token: tokens.Token, state: ServerState) -> bool:
    """:func:`_valid_cluster_token`, on the event loop when the store remembers the answer."""
    if token.ident == state.ca_fingerprint and state.store.token_remembered(token.kind,
                                                                            tokens.hash_secret(token.secret)):
        return True
    return await run_in_threadpool(_valid_cluster_token, token, state)


async def require_admin(request: Request, state: ServerState = Depends(server_state)) -> None:
    token = _bearer(request)
    if token.kind == tokens.ADMIN and await _cluster_token_ok(token, state):
        return
    if token.kind == tokens.HOST and await _host_of(token, state) is not None:
        raise HTTPException(403, "a host credential cannot do this: it needs the admin token")
    if token.kind == tokens.JOIN and await _cluster_token_ok(token, state):
        raise HTTPException(403, "a join token can only register a host")
    raise HTTPException(401, "invalid or revoked token", headers={"WWW-Authenticate": "Bearer"})


async def require_host(request: Request, state: ServerState = Depends(server_state)) -> HostIdentity:
    """Async, so that an agent's poll is answered on the event loop when its credential is known."""
    token = _bearer(request)
    if token.kind == tokens.HOST:
        host = await _host_of(token, state)
        if host is not None:
            state.monitor.seen(host.id)  # alive, even if the server is too busy to answer soon
            return host
    elif await _cluster_token_ok(token, state):
        raise HTTPException(403, "this endpoint is for agents: it needs a host credential")
    raise HTTPException(401, "invalid or revoked host credential", headers={"WWW-Authenticate": "Bearer"})


async def require_join(request: Request, state: ServerState = Depends(server_state)) -> None:
    token = _bearer(request)
    if token.kind == tokens.JOIN and await _cluster_token_ok(token, state):
        return
    if token.kind == tokens.JOIN and token.ident != state.ca_fingerprint:
        raise HTTPException(401, "join token is for another cluster (CA fingerprint differs)")
    raise HTTPException(401, "invalid or revoked join token", headers={"WWW-Authenticate": "Bearer"})
