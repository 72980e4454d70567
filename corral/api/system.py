"""Unauthenticated endpoints: the CA (clients pin it against their token) and version."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import PlainTextResponse

from corral import __version__
from corral.api.auth import server_state
from corral.server.state import ServerState

router = APIRouter()


@router.get("/api/v1/ca", response_class=PlainTextResponse)
def ca(state: ServerState = Depends(server_state)) -> str:
    return state.ca_pem


@router.get("/api/v1/info")
def info(state: ServerState = Depends(server_state)) -> dict[str, Any]:
    return {"version": __version__, "ca_fingerprint": state.ca_fingerprint}


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}
