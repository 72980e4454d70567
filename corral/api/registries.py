"""Registry credentials (admin only). Passwords go in and never come back out.

The server uses them to resolve images, and hands them to an agent only inside
that host's own desired set, for the images it must pull.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Response
from pydantic import Field

from corral.api.auth import require_admin, server_state
from corral.api.errors import store_errors
from corral.api.schemas import Strict
from corral.api.views import iso
from corral.images import InvalidReference, parse_reference
from corral.server.state import ServerState
from corral.store.store import Store
from corral.store.tables import RegistryCredentialRow

router = APIRouter(prefix="/api/v1/registries", dependencies=[Depends(require_admin)])

_REGISTRY = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?(:[0-9]{1,5})?$|^\[[0-9a-fA-F:]+\](:[0-9]{1,5})?$")


class Login(Strict):
    username: str = Field(min_length=1, max_length=255)
    password: str = Field(min_length=1, max_length=4096)


def registry_credentials(store: Store) -> Callable[[str], tuple[str, str] | None]:
    def lookup(registry: str) -> tuple[str, str] | None:
        row = store.registry_credential(registry)
        return (row.username, row.password) if row else None

    return lookup


def _view(row: RegistryCredentialRow) -> dict[str, Any]:
    return {"registry": row.host, "username": row.username, "created_at": iso(row.created_at)}


def _check(registry: str) -> str:
    if not _REGISTRY.match(registry):
        raise HTTPException(422, f"invalid registry {registry!r}: expected HOST or HOST:PORT")
    return registry.lower()


def _resend_to_pullers(state: ServerState, registry: str) -> None:
    """Credentials changed: forget cached answers, and re-send the desired sets of the hosts
    that pull from `registry`, so they get the new credentials."""
    state.images.forget(registry)
    hosts = sorted({i.host_id for i in state.store.list_instances() if _registry_of(i.spec["image"]) == registry})
    if hosts:
        state.store.bump_revisions(hosts)
        state.notifier.notify(hosts)


@router.put("/{registry}")
def login(registry: str, body: Login, state: ServerState = Depends(server_state)) -> dict[str, Any]:
    row = state.store.set_registry_credential(_check(registry), body.username, body.password)
    _resend_to_pullers(state, row.host)
    state.services.reconcile_all()  # services pending on the registry's refusal can resolve now
    return _view(row)


@router.get("")
def list_registries(state: ServerState = Depends(server_state)) -> list[dict[str, Any]]:
    return [_view(r) for r in state.store.list_registry_credentials()]


@router.delete("/{registry}", status_code=204)
def logout(registry: str, state: ServerState = Depends(server_state)) -> Response:
    with store_errors():
        state.store.delete_registry_credential(_check(registry))
    _resend_to_pullers(state, registry.lower())
    return Response(status_code=204)


def _registry_of(image: str) -> str | None:
    try:
        return parse_reference(image).registry
    except InvalidReference:
        return None


def pull_auth(store: Store, image: str) -> dict[str, str] | None:
    """X-Registry-Auth for the engine, when credentials are stored for the image's registry."""
    registry = _registry_of(image)
    if registry is None:
        return None
    row = store.registry_credential(registry)
    if row is None:
        return None
    return {"username": row.username, "password": row.password, "serveraddress": registry}
