"""Hosts: list, inspect, labels, removal (admin only)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Response

from corral.api.auth import require_admin, server_state
from corral.api.errors import store_errors
from corral.api.schemas import LabelValue, check_label_key
from corral.api.views import host_json
from corral.server.state import ServerState

router = APIRouter(prefix="/api/v1/hosts", dependencies=[Depends(require_admin)])


def _counts(state: ServerState) -> Counter[str]:
    return Counter(state.store.instance_counts())


@router.get("")
def list_hosts(state: ServerState = Depends(server_state)) -> list[dict[str, Any]]:
    counts = _counts(state)
    return [host_json(h, counts[h.id]) for h in state.store.list_hosts()]


@router.get("/{ref}")
def get_host(ref: str, state: ServerState = Depends(server_state)) -> dict[str, Any]:
    with store_errors():
        host = state.store.get_host(ref)
    return {**host_json(host, _counts(state)[host.id]), "mesh": state.overlay.notes.get(host.id)}


@router.get("/{ref}/desired")
def get_desired(ref: str, state: ServerState = Depends(server_state)) -> dict[str, Any]:
    with store_errors():
        return state.store.desired_set(state.store.get_host(ref).id).to_dict()


@router.put("/{ref}/labels/{key}")
def add_label(ref: str, key: str, body: LabelValue, state: ServerState = Depends(server_state)) -> dict[str, Any]:
    try:
        check_label_key(key)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None
    with store_errors():
        host = state.store.set_label(state.store.get_host(ref).id, key, body.value)
    state.services.reconcile_all()
    return host_json(host, _counts(state)[host.id])


@router.delete("/{ref}/labels/{key}")
def remove_label(ref: str, key: str, state: ServerState = Depends(server_state)) -> dict[str, Any]:
    with store_errors():
        host = state.store.set_label(state.store.get_host(ref).id, key, None)
    state.services.reconcile_all()
    return host_json(host, _counts(state)[host.id])


def _set_availability(ref: str, availability: str, state: ServerState) -> dict[str, Any]:
    with store_errors():
        host = state.store.set_availability(state.store.get_host(ref).id, availability)
    state.services.reconcile_all()  # draining moves instances away; activate may place pending ones
    return host_json(host, _counts(state)[host.id])


@router.post("/{ref}/cordon")
def cordon(ref: str, state: ServerState = Depends(server_state)) -> dict[str, Any]:
    """No new instances on this host; what runs there stays."""
    return _set_availability(ref, "cordoned", state)


@router.post("/{ref}/drain")
def drain(ref: str, state: ServerState = Depends(server_state)) -> dict[str, Any]:
    """No new instances, and the host's replicated instances move to other hosts."""
    return _set_availability(ref, "draining", state)


@router.post("/{ref}/activate")
def activate(ref: str, state: ServerState = Depends(server_state)) -> dict[str, Any]:
    return _set_availability(ref, "active", state)


@router.delete("/{ref}", status_code=204)
def remove_host(ref: str, state: ServerState = Depends(server_state)) -> Response:
    with store_errors():
        host = state.store.get_host(ref)
        state.store.remove_host(host.id)
    state.host_auth.forget(host.id)
    state.services.reconcile_all()
    return Response(status_code=204)
