"""The agent protocol: register, heartbeat/status, the long-poll channel, logs.

The agent dials out; the server never connects to it.  The channel is a long
poll: the agent sends the revision it holds and the server answers as soon as
the host's revision differs (with the whole desired set) or a log request is
waiting, or after ``wait`` seconds with nothing new.  The open poll is the
host's heartbeat: the host is alive while its poll is open, and the server's
kernel checks the connection with TCP keepalive every heartbeat interval (see
``corral.server.main``), so a host that dies is noticed within about
``interval + 3 × interval/2`` seconds without any request.  The agent renews
its poll every ``poll_wait`` seconds (the server tells it), so an idle host
costs one small request a minute, and the server a few hundred a second for
10,000 hosts.  Status reports go only on change.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from corral import tokens
from corral.api.auth import require_host, require_join, server_state
from corral.api.cache import json_response
from corral.api.errors import store_errors
from corral.api.registries import pull_auth
from corral.api.schemas import Heartbeat, LogChunk, Register
from corral.model import InstanceStatus
from corral.server.hostauth import HostIdentity
from corral.server.overlay import ReportRefused, clean_report
from corral.server.state import ServerState
from corral.store.store import NotFoundError

router = APIRouter(prefix="/api/v1/agent")


@router.post("/register", dependencies=[Depends(require_join)], status_code=201)
def register(body: Register, state: ServerState = Depends(server_state)) -> dict[str, Any]:
    secret = tokens.new_secret()
    name = body.name or str(body.facts.get("hostname") or "host")
    host = state.store.create_host(name, body.facts, body.labels, tokens.hash_secret(secret))
    state.services.kick()  # global services follow joins; a burst of joins is one pass
    return {
        "host_id": host.id,
        "credential": str(tokens.Token(tokens.HOST, host.id, secret)),
        "heartbeat_interval": state.heartbeat_interval,
    }


@router.post("/status")
def status(body: Heartbeat, host: HostIdentity = Depends(require_host),
           state: ServerState = Depends(server_state)) -> dict[str, Any]:
    statuses = [InstanceStatus.from_dict(s.model_dump()) for s in body.instances or []]
    overlay, refused = _overlay_report(body.facts, body.facts_patch)
    with store_errors():
        came_back = state.store.heartbeat(host.id, body.facts, statuses, body.facts_patch, **overlay)
    if came_back:
        state.services.kick()
    elif statuses:
        state.services.kick_reports(statuses)
    revision = state.notifier.revision(host.id)  # remembered (refreshed every second), else read
    reply: dict[str, Any] = {"heartbeat_interval": state.heartbeat_interval,
                             "revision": revision if revision is not None else state.store.host_revision(host.id)}
    if refused:
        reply["overlay_refused"] = refused
    return reply


def _overlay_report(facts: dict[str, Any] | None, patch: dict[str, Any] | None) -> tuple[dict[str, Any], str]:
    """Take the overlay report out of the facts (it is stored apart), checked.

    A report the server cannot use is replaced by one that says why (the host is then
    left out of the mesh), and the reason goes back to the agent."""
    source = patch if patch and "overlay" in patch else facts if facts is not None else None
    if source is None:
        return {}, ""
    report = source.pop("overlay", None)
    if report is None:
        return {"overlay": None}, ""
    try:
        return {"overlay": clean_report(report)}, ""
    except ReportRefused as exc:
        reason = f"overlay report refused: {exc}"
        return {"overlay": {"error": reason}}, reason


@router.get("/channel", response_model=None)
async def channel(request: Request, revision: int = Query(default=-1),
                  wait: float = Query(default=25.0, ge=0, le=120), mesh: str | None = Query(default=None),
                  dns: int | None = Query(default=None), host: HostIdentity = Depends(require_host),
                  state: ServerState = Depends(server_state)) -> Response:
    """``mesh`` (the digest of the overlay plan the agent holds) and ``dns`` (the generation
    of its directory) are sent by agents that run the overlay; the poll also answers when
    either is stale."""
    gone = asyncio.ensure_future(_disconnected(request))
    try:
        with state.monitor.holding(host.id):  # alive while the poll is open (TCP keepalive watches it)
            return await _poll(state, host, revision, wait, gone, mesh, dns)
    finally:
        gone.cancel()


async def _disconnected(request: Request) -> None:
    """Returns when the agent's connection goes away (closed, reset, or keepalive probes unanswered)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _poll(state: ServerState, host: HostIdentity, revision: int, wait: float,
                gone: asyncio.Future[None], mesh: str | None = None,
                dns: int | None = None) -> Response:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    extra = {"heartbeat_interval": state.heartbeat_interval, "poll_wait": state.poll_wait}
    while True:
        seen = state.notifier.seq(host.id)
        current = state.notifier.revision(host.id)
        if current is None:
            try:
                current = await run_in_threadpool(state.store.host_revision, host.id)
            except NotFoundError:  # removed (and still known to this replica's credential cache)
                state.host_auth.forget(host.id)
                raise HTTPException(401, "invalid or revoked host credential") from None
            state.notifier.remember(host.id, current, seen)
        news = state.overlay.news_for(host.id, mesh, dns)
        if current != revision or state.logs.has_pending(host.id) or news:
            body: dict[str, Any] = {"revision": current, "log_requests": state.logs.take_pending(host.id),
                                    **extra, **news}
            if current != revision:
                body["desired"] = await run_in_threadpool(_desired_with_auth, state, host.id)
            return json_response(body)
        remaining = deadline - loop.time()
        if remaining <= 0:
            return json_response({"revision": current, "log_requests": [], **extra})
        # Wake on notify; look again now and then (the table is refreshed from the store every
        # second, so a change made by another server replica arrives within a few seconds).
        await state.notifier.wait(host.id, seen, min(remaining, 5.0), gone)
        if gone.done():
            return Response(status_code=499)  # nobody is listening any more


def _desired_with_auth(state: ServerState, host_id: str) -> dict[str, Any]:
    """The host's desired set, with pull credentials for the images that need them."""
    revision, specs = state.store.desired_specs(host_id)
    auth: dict[str, dict[str, str] | None] = {}  # one look-up per image, not per instance
    for spec in specs:
        if spec["image"] not in auth:
            auth[spec["image"]] = pull_auth(state.store, spec["image"])
    return {"revision": revision,
            "instances": [{**spec, "registry_auth": auth[spec["image"]]} for spec in specs]}  # the specs are shared


@router.post("/logs/{request_id}")
async def logs(request_id: str, body: LogChunk, host: HostIdentity = Depends(require_host),
               state: ServerState = Depends(server_state)) -> dict[str, bool]:
    return {"continue": state.logs.deliver(host.id, request_id, body.lines, body.eof)}
