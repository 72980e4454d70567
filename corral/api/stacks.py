"""Stacks: a set of services deployed together from compose files (admin only).

The CLI loads the compose files (``corral.compose``: interpolation with the
user's environment, files relative to the user's directory) and sends the
resulting service specs; the server validates every one of them (the same
checks as ``POST /services``, and the scheduler's submit-time checks) before
it changes anything, then creates, updates and removes the stack's services in
one transaction.  Deploying the same file twice changes nothing; a changed
service gets a rolling update.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Response
from pydantic import ValidationError

from corral.api.auth import require_admin, server_state
from corral.api.errors import store_errors
from corral.api.schemas import _NAME, STACK_SEPARATOR, ServiceCreate, StackDeploy, port_conflicts
from corral.api.views import instance_json, service_json
from corral.scheduler.placement import validate
from corral.server.state import ServerState
from corral.store.store import StackService

router = APIRouter(prefix="/api/v1/stacks", dependencies=[Depends(require_admin)])


def _check_name(stack: str) -> None:
    if not _NAME.match(stack):
        raise HTTPException(422, f"invalid stack name {stack!r}: use 1-63 lower-case letters, digits and '-'")


def _validated(stack: str, body: StackDeploy, state: ServerState) -> list[StackService]:
    errors: list[str] = []
    out: list[StackService] = []
    snapshot = state.services.snapshot()
    names: set[str] = set()
    full = {f"{stack}{STACK_SEPARATOR}{raw.get('name', '')}" for raw in body.services}
    # the stack's own services (as they are now, or as this deploy makes them) do not count twice
    others = [(s.name, s.spec) for s in state.store.list_services() if s.name not in full]
    for i, raw in enumerate(body.services):
        bare = str(raw.get("name", ""))
        where = f"services.{bare or i}"
        if bare in names:
            errors.append(f"{where}: the service is given twice")
            continue
        names.add(bare)
        try:
            svc = ServiceCreate.model_validate({**raw, "name": f"{stack}{STACK_SEPARATOR}{bare}"})
        except ValidationError as exc:
            for e in exc.errors():
                loc = ".".join(str(p) for p in e["loc"])
                errors.append(f"{where}{'.' + loc if loc else ''}: {e['msg']}")
            continue
        errors += [f"{where}: {e}" for e in validate(svc.spec(), snapshot, svc.name)]
        errors += [f"{where}: {e}" for e in port_conflicts(svc.name, svc.spec(), others)]
        others.append((svc.name, svc.spec()))
        out.append(StackService(svc.name, svc.spec(), svc.replicas))
    if errors:
        raise HTTPException(422, "; ".join(errors))
    return out


@router.post("/{stack}")
def deploy(stack: str, body: StackDeploy, state: ServerState = Depends(server_state)) -> dict[str, Any]:
    _check_name(stack)
    services = _validated(stack, body, state)
    with store_errors():
        outcome = state.store.apply_stack(stack, services, prune=body.prune)
    state.notifier.notify(outcome.pop("hosts"))
    for name in outcome["created"] + outcome["updated"] + outcome["scaled"]:
        state.services.reconcile(name)
    return {"stack": stack, **outcome}


@router.get("")
def list_stacks(state: ServerState = Depends(server_state)) -> list[dict[str, Any]]:
    instances = state.store.list_instances()
    hosts = state.store.host_briefs(i.host_id for i in instances)
    out = []
    for stack, rows in state.store.list_stacks().items():
        ids = {r.id for r in rows}
        mine = [i for i in instances if i.service_id in ids]
        bodies = [service_json(r, [i for i in mine if i.service_id == r.id], hosts) for r in rows]
        out.append({"name": stack, "services": len(rows), "running": sum(b["running"] for b in bodies),
                    "desired": sum(b["desired"] for b in bodies),
                    "status": "converged" if all(b["status"] == "converged" for b in bodies) else "converging"})
    return out


def _stack_rows(stack: str, state: ServerState) -> list[Any]:
    rows = state.store.list_stacks().get(stack)
    if not rows:
        raise HTTPException(404, f"no stack {stack!r}")
    return rows


@router.get("/{stack}/services")
def stack_services(stack: str, state: ServerState = Depends(server_state)) -> list[dict[str, Any]]:
    rows = _stack_rows(stack, state)
    instances = {r.id: state.store.list_instances(service_id=r.id) for r in rows}
    hosts = state.store.host_briefs(i.host_id for mine in instances.values() for i in mine)
    return [service_json(r, instances[r.id], hosts) for r in rows]


@router.get("/{stack}/ps")
def stack_ps(stack: str, state: ServerState = Depends(server_state)) -> list[dict[str, Any]]:
    rows = _stack_rows(stack, state)
    instances = [(r.name, i) for r in rows for i in state.store.list_instances(service_id=r.id)]
    hosts = state.store.host_briefs(i.host_id for _, i in instances)
    return [instance_json(i, name, hosts) for name, i in instances]


@router.delete("/{stack}", status_code=204)
def remove_stack(stack: str, state: ServerState = Depends(server_state)) -> Response:
    with store_errors():
        hosts = state.store.delete_stack(stack)
    state.notifier.notify(hosts)
    return Response(status_code=204)
