"""The overlay network: the cluster CIDR, each host's subnet, and the peer matrix.

Rows are hosts, columns their peers: what each host's agent last reported of each
peer (``up``, ``relayed`` through another host, ``stale``, ``down``, ``new``), with
the handshake time and probe round trip it measured, and what the server's mesh plan
says of the host (behind NAT, reachable, the hosts it relays for and why).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from corral.api.auth import require_admin, server_state
from corral.net.ipam import gateway
from corral.server.state import ServerState

router = APIRouter(prefix="/api/v1/network", dependencies=[Depends(require_admin)])


@router.get("")
def network_status(state: ServerState = Depends(server_state)) -> dict[str, Any]:
    cluster = state.store.cluster
    hosts = state.store.overlay_hosts()
    names = {h.id: h.name for h in hosts}
    rows = []
    for h in hosts:
        report = h.overlay or {}
        notes = state.overlay.notes.get(h.id) or {}
        peers = {}
        for peer_id, peer in (report.get("peers") or {}).items():
            peers[names.get(peer_id, peer.get("name") or peer_id)] = {
                k: peer.get(k) for k in ("state", "handshake_at", "rtt_ms", "via", "endpoint")}
        rows.append({
            "id": h.id, "name": h.name, "state": h.state, "subnet": h.subnet,
            "gateway": gateway(h.subnet) if h.subnet else None,
            "overlay": bool(report.get("public_key")), "endpoint": report.get("endpoint"),
            "backend": report.get("backend"), "error": report.get("error") or None,
            "repairs": report.get("repairs") or 0, "last_repair": report.get("last_repair"),
            "behind_nat": notes.get("behind_nat"), "reachable": notes.get("reachable"),
            "relaying_for": notes.get("relaying_for") or [], "relays": notes.get("relays") or [],
            "peers": peers,
        })
    return {"cluster_cidr": cluster.cidr if cluster else None,
            "host_prefix": cluster.host_prefix if cluster else None,
            "dns_generation": state.overlay.dns_generation, "hosts": rows}
