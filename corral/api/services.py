"""Services, their instances and their logs (admin only)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse
from pydantic import ValidationError

from corral.api.auth import require_admin, server_state
from corral.api.errors import store_errors
from corral.api.schemas import ServiceCreate, ServiceScale, ServiceUpdate, port_conflicts
from corral.api.views import instance_json, service_json
from corral.scheduler.placement import validate
from corral.server.state import ServerState

router = APIRouter(prefix="/api/v1", dependencies=[Depends(require_admin)])


def _service_body(state: ServerState, name: str, with_instances: bool = True) -> dict[str, Any]:
    with store_errors():
        row = state.store.get_service(name)
    instances = state.store.list_instances(service_id=row.id)
    return service_json(row, instances, state.store.host_briefs(i.host_id for i in instances), with_instances)


def _port_conflicts(state: ServerState, name: str, spec: dict[str, Any]) -> list[str]:
    return port_conflicts(name, spec, [(s.name, s.spec) for s in state.store.list_services()])


@router.post("/services", status_code=201)
def create_service(body: ServiceCreate, state: ServerState = Depends(server_state)) -> dict[str, Any]:
    errors = validate(body.spec(), state.services.snapshot(), body.name) + _port_conflicts(state, body.name,
                                                                                          body.spec())
    if errors:
        raise HTTPException(422, "; ".join(errors))
    with store_errors():
        state.store.create_service(body.name, body.spec(), body.replicas)
    state.services.reconcile(body.name)
    return _service_body(state, body.name)


@router.get("/services", response_model=None)
def list_services(state: ServerState = Depends(server_state)) -> Response:
    return state.listings.response(("services",), state.store.generation, lambda: _services(state))


def _services(state: ServerState) -> list[dict[str, Any]]:
    by_service: dict[str, list[Any]] = {}
    instances = state.store.list_instances()
    for inst in instances:
        by_service.setdefault(inst.service_id, []).append(inst)
    hosts = state.store.host_briefs(i.host_id for i in instances)
    return [service_json(s, by_service.get(s.id, []), hosts) for s in state.store.list_services()]


@router.get("/services/{name}", response_model=None)
def get_service(name: str, instances: bool = Query(default=True),
                state: ServerState = Depends(server_state)) -> Response:
    """Cached as the listings are.  Watchers of an update's progress (``service update``) poll
    it with ``instances=false``: the counts and the update's state without an entry per instance,
    which for a large service is most of the body and of the work."""
    return state.listings.response(("service", name, instances), state.store.generation,
                                   lambda: _service_body(state, name, instances))


@router.patch("/services/{name}")
def scale_service(name: str, body: ServiceScale, state: ServerState = Depends(server_state)) -> dict[str, Any]:
    with store_errors():
        state.store.set_replicas(name, body.replicas)
    state.services.reconcile(name)
    return _service_body(state, name)


@router.post("/services/{name}/update")
def update_service(name: str, body: ServiceUpdate, state: ServerState = Depends(server_state)) -> dict[str, Any]:
    """Change a service's spec; a change to what its containers run rolls out as a rolling update."""
    with store_errors():
        row = state.store.get_service(name)
    given = body.model_dump(exclude_none=True, exclude={"replicas"})
    try:
        new = ServiceCreate.model_validate({**row.spec, **given, "name": name,
                                            "replicas": body.replicas if body.replicas is not None else row.replicas})
    except ValidationError as exc:
        raise HTTPException(422, "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                                           for e in exc.errors())) from None
    errors = validate(new.spec(), state.services.snapshot(), name) + _port_conflicts(state, name, new.spec())
    if errors:
        raise HTTPException(422, "; ".join(errors))
    with store_errors():
        state.store.update_service(name, new.spec(), body.replicas)
    state.services.reconcile(name)
    return _service_body(state, name)


@router.post("/services/{name}/rollback")
def rollback_service(name: str, state: ServerState = Depends(server_state)) -> dict[str, Any]:
    """Go back to the spec before the last update (a rolling update with the rollback settings)."""
    with store_errors():
        state.store.rollback_service(name)
    state.services.reconcile(name)
    return _service_body(state, name)


@router.delete("/services/{name}", status_code=204)
def delete_service(name: str, state: ServerState = Depends(server_state)) -> Response:
    with store_errors():
        hosts = state.store.delete_service(name)
    state.notifier.notify(hosts)
    return Response(status_code=204)


@router.get("/instances", response_model=None)
def list_instances(service: str | None = None, state: ServerState = Depends(server_state)) -> Response:
    return state.listings.response(("instances", service), state.store.generation,
                                   lambda: _instances(state, service))


def _instances(state: ServerState, service: str | None) -> list[dict[str, Any]]:
    names = {s.id: s.name for s in state.store.list_services()}
    service_id = None
    if service is not None:
        with store_errors():
            service_id = state.store.get_service(service).id
    instances = state.store.list_instances(service_id=service_id)
    hosts = state.store.host_briefs(i.host_id for i in instances)
    return [instance_json(i, names.get(i.service_id, "?"), hosts) for i in instances]


@router.get("/services/{name}/logs")
async def service_logs(name: str, follow: bool = False, tail: int | None = Query(default=None, ge=0),
                       state: ServerState = Depends(server_state)) -> StreamingResponse:
    body = await run_in_threadpool(_service_body, state, name)
    queue: asyncio.Queue[str | None] = asyncio.Queue()
    requests = []
    notes = []
    for inst in body["instances"]:
        prefix = f"{inst['name']}@{inst['host_name']}"
        if inst["host_state"] != "ready":
            notes.append(f"{prefix} | (host is {inst['host_state']}: no logs from it now)")
            continue
        requests.append(state.logs.open(inst["host_id"], inst["id"], prefix, follow, tail, queue))
    return StreamingResponse(_stream(state, queue, requests, notes, follow), media_type="text/plain")


async def _stream(state: ServerState, queue: asyncio.Queue[str | None], requests: list[Any],
                  notes: list[str], follow: bool) -> AsyncIterator[str]:
    open_requests = len(requests)
    quiet_limit = None if follow else 15.0  # a host that never answers does not hang `corral logs`
    try:
        for note in notes:
            yield note + "\n"
        while open_requests:
            try:
                line = await asyncio.wait_for(queue.get(), quiet_limit)
            except TimeoutError:
                yield "(some hosts did not answer)\n"
                return
            if line is None:
                open_requests -= 1
                continue
            yield line + "\n"
    finally:
        for req in requests:
            state.logs.close(req.id)
