"""`GET /api/v1/images/inspect?ref=`: what the registry offers for a reference (admin only)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException
from fastapi.concurrency import run_in_threadpool

from corral.api.auth import require_admin, server_state
from corral.images import ImageError, ImageNotFound, InvalidReference
from corral.server.state import ServerState

router = APIRouter(prefix="/api/v1/images", dependencies=[Depends(require_admin)])


def image_error_status(exc: ImageError) -> int:
    if isinstance(exc, InvalidReference):
        return 422
    if isinstance(exc, ImageNotFound):
        return 404
    return 502  # the registry: unreachable, refused our credentials, or answered something unusable


@router.get("/inspect")
async def inspect(ref: str, state: ServerState = Depends(server_state)) -> dict[str, Any]:
    try:
        resolved = await run_in_threadpool(state.images.resolve, ref)
        sizes = await run_in_threadpool(state.images.image_sizes, resolved)
    except ImageError as exc:
        raise HTTPException(image_error_status(exc), str(exc)) from None
    body = resolved.to_dict()
    for entry in body["platforms"]:
        entry["image_size"] = sizes.get(entry["platform"])  # config + compressed layers
    return body
