"""``GET /api/v1/events``: the event log, as a list or as a Server-Sent Events stream (admin only).

Events are written by the store in the same transaction as the change they
describe (a host going down, a service updated, an instance placed or
failing), so every server replica sees all of them.  A follower is fed by
polling the log for ids above the last one sent, twice a second; an SSE
client that reconnects sends ``Last-Event-ID`` and misses nothing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Header, HTTPException, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from corral.api.auth import require_admin, server_state
from corral.api.views import iso
from corral.server.state import ServerState
from corral.store.tables import EventRow

router = APIRouter(prefix="/api/v1", dependencies=[Depends(require_admin)])

TYPES = ("host", "service", "instance")
POLL = 0.5


def event_json(row: EventRow) -> dict[str, Any]:
    return {"id": row.id, "time": iso(row.ts), "type": row.type, "action": row.action, "subject": row.subject,
            "attrs": row.attrs}


def _matches(row: EventRow, types: set[str], subjects: set[str]) -> bool:
    return (not types or row.type in types) and (not subjects or row.subject in subjects)


@router.get("/events", response_model=None)
async def events(since: float | None = Query(default=None, description="seconds since the epoch"),
                 type: list[str] = Query(default=[]),
                 subject: list[str] = Query(default=[]), follow: bool = False,
                 limit: int = Query(default=1000, ge=1, le=10000),
                 last_event_id: int | None = Header(default=None),
                 state: ServerState = Depends(server_state)) -> Any:
    bad = [t for t in type if t not in TYPES]
    if bad:
        raise HTTPException(422, f"unknown event type {bad[0]!r}: expected one of {', '.join(TYPES)}")
    types, subjects = set(type), set(subject)
    after = last_event_id or 0
    if not follow:
        rows = await run_in_threadpool(state.store.list_events, after, since, limit)
        return [event_json(r) for r in rows if _matches(r, types, subjects)]
    return StreamingResponse(_follow(state, after, since, types, subjects), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


async def _follow(state: ServerState, after: int, since: float | None, types: set[str],
                  subjects: set[str]) -> AsyncIterator[str]:
    if since is None and after == 0:  # only what happens from now on
        after = await run_in_threadpool(state.store.last_event_id)
    yield ": following\n\n"
    idle = 0.0
    while True:
        rows = await run_in_threadpool(state.store.list_events, after, since, 1000)
        for row in rows:
            after = row.id
            if _matches(row, types, subjects):
                yield f"id: {row.id}\nevent: {row.type}\ndata: {json.dumps(event_json(row))}\n\n"
        if rows:
            idle = 0.0
            continue
        idle += POLL
        if idle >= 15:  # a comment now and then keeps proxies from closing a quiet stream
            idle = 0.0
            yield ": keep-alive\n\n"
        await asyncio.sleep(POLL)
