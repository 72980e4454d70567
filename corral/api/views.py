"""Store rows -> the JSON the API returns."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

from corral.model import HEALTH_STARTING, RUNNING, UNHEALTHY
from corral.store.store import HostBrief, Instance
from corral.store.tables import HostRow, ServiceRow

Hosts = Mapping[str, HostBrief] | Mapping[str, HostRow]


def iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).isoformat().replace("+00:00", "Z")


def host_json(row: HostRow, instances: int = 0) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "state": row.state,
        "availability": row.availability,
        "platform": row.platform,
        "engine_platform": row.engine_platform,
        "labels": row.labels,
        "facts": row.facts,
        "created_at": iso(row.created_at),
        "last_seen": iso(row.last_seen),
        "revision": row.revision,
        "instances": instances,
        "subnet": row.subnet,
        "overlay": row.overlay,
    }


def instance_json(row: Instance, service_name: str, hosts: Hosts) -> dict[str, Any]:
    host = hosts.get(row.host_id)
    return {
        "id": row.id,
        "name": f"{service_name}.{row.slot}",
        "service": service_name,
        "slot": row.slot,
        "host_id": row.host_id,
        "host_name": host.name if host else "",
        "host_state": host.state if host else "gone",
        "platform": row.platform,
        "host_platform": host.platform if host else "",
        "image": row.spec.get("image", ""),
        "state": row.state,
        "desired_state": "running",
        "exit_code": row.exit_code,
        "error": row.error,
        "since": iso(row.since),
        "container_id": row.container_id,
        "restarts": row.restarts,
        "emulated": row.emulated,
        "health": row.health,
        "version": row.spec_version,
    }


def running_count(instances: Iterable[Instance], hosts: Hosts) -> int:
    """Instances that run on a ready host and are not failing or still starting their health check."""
    return sum(1 for i in instances if i.state == RUNNING and i.health not in (HEALTH_STARTING, UNHEALTHY)
               and i.host_id in hosts and hosts[i.host_id].state == "ready")


def update_json(row: ServiceRow, instances: list[Instance]) -> dict[str, Any] | None:
    """A rolling update's progress: its state, and how many slots run the new version."""
    st = row.update_state
    if not st:
        return None
    slots = {i.slot for i in instances}
    current = {row.version, *(st.get("equivalent") or ())}
    done = {i.slot for i in instances if i.spec_version in current and i.state == RUNNING}
    return {"state": st.get("state"), "message": st.get("message") or "", "version": st.get("version", row.version),
            "updated": len(done), "total": max(len(slots), row.replicas), "batch": len(st.get("batch") or []),
            "failed": len(st.get("failed") or []), "started_at": iso(float(st.get("started_at", row.updated_at))),
            "completed_at": iso(float(st["completed_at"])) if st.get("completed_at") else None}


def service_status(body: Mapping[str, Any]) -> str:
    """converged | updating | paused | degraded | pending (Swarm users read this in `service ls`)."""
    update = body.get("update") or {}
    if update.get("state") in ("updating", "rolling_back"):
        return "updating"
    if update.get("state") in ("paused", "rollback_paused"):
        return "paused"
    if body["running"] >= body["desired"]:
        return "converged"
    return "pending" if body["running"] == 0 and body.get("pending_reason") else "degraded"


def service_json(row: ServiceRow, instances: list[Instance], hosts: Hosts,
                 with_instances: bool = False) -> dict[str, Any]:
    resolution = row.resolution or {}
    body: dict[str, Any] = {
        "id": row.id,
        "name": row.name,
        "replicas": row.replicas,
        "mode": "replicated",
        "allow_emulation": False,
        **row.spec,
        "image_digest": resolution.get("digest"),
        "image_platforms": [p["platform"] for p in resolution["platforms"]] if resolution else None,
        "created_at": iso(row.created_at),
        "updated_at": iso(row.updated_at),
        "running": running_count(instances, hosts),
        "desired": row.replicas,
        "pending_reason": row.pending_reason,
        "stack": row.stack,
        "version": row.version,
        "update": update_json(row, instances),
    }
    body["status"] = service_status(body)
    if with_instances:
        body["instances"] = [instance_json(i, row.name, hosts) for i in instances]
    return body
