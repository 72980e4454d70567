"""The server's half of the overlay: each host's mesh plan and the cluster's DNS directory.

Both are derived state, recomputed from the store (never stored): the mesh plan from
every host's subnet, state, labels and overlay report (:func:`corral.net.mesh.plan_mesh`,
pure), the directory from the running, ready instances that have overlay addresses.
:meth:`Overlay.refresh` runs when this server wrote something either depends on
(:attr:`Store.overlay_generation`, :attr:`Store.generation`), and every few seconds
anyway for what other server replicas wrote.

Agents receive both over their long-poll channel: an agent sends the digest of the
plan it holds and the generation of the directory it holds, and the poll answers
as soon as either differs (:meth:`Overlay.news_for`).  A refresh that changes a host's
plan, or the directory, wakes the polls concerned.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from fastapi.concurrency import run_in_threadpool

from corral.net import mesh
from corral.net.ipam import ClusterNet, gateway
from corral.store.store import OverlayHost, Store

log = logging.getLogger("corral.server.overlay")

LABEL_RELAY = "corral.overlay.relay"  # "false": never relay for other hosts
LABEL_NAT = "corral.overlay.nat"  # "true" / "false": override what the host's report implies
REFRESH_EVERY = 5.0  # seconds: the longest a change written by another replica waits


@dataclass
class HostOverlay:
    """One host's plan as the channel sends it, and the digest agents echo back."""

    digest: str
    wire: dict[str, Any]


@dataclass
class Overlay:
    store: Store
    notify: Callable[[list[str]], None]
    keepalive: int = 25
    plans: dict[str, HostOverlay] = field(default_factory=dict)
    notes: dict[str, dict[str, Any]] = field(default_factory=dict)  # host id -> what `host inspect` shows
    dns_generation: int = 0
    dns_records: list[list[Any]] = field(default_factory=list)
    _seen: tuple[int, int] = (-1, -1)
    _refreshed_at: float = 0.0

    @property
    def cluster(self) -> ClusterNet | None:
        return self.store.cluster

    # -- what agents fetch --------------------------------------------------------

    def news_for(self, host_id: str, digest: str | None, dns_generation: int | None) -> dict[str, Any]:
        """What the host's poll should carry now: its plan if its digest is stale, the
        directory if its generation is; empty if it holds both (or runs no overlay)."""
        out: dict[str, Any] = {}
        plan = self.plans.get(host_id)
        if digest is not None and plan is not None and plan.digest != digest:
            out["overlay"] = {**plan.wire, "digest": plan.digest}
        if dns_generation is not None and plan is not None and dns_generation != self.dns_generation:
            out["dns"] = {"generation": self.dns_generation, "records": self.dns_records}
        return out

    # -- recomputing ----------------------------------------------------------------

    async def run(self, every: float = 0.25) -> None:
        """Look at most every ``every`` seconds: replan when something the plans read changed,
        recompute the directory when anything did (instances report often, hosts rarely
        change), and both every few seconds for what other replicas wrote."""
        while True:
            await asyncio.sleep(every)
            seen = (self.store.overlay_generation, self.store.generation)
            periodic = time.monotonic() - self._refreshed_at >= REFRESH_EVERY
            if seen == self._seen and not periodic:
                continue
            replan = periodic or seen[0] != self._seen[0]
            try:
                changed = await run_in_threadpool(self.refresh, replan)
            except Exception:  # keep serving the last plans; the next pass tries again
                log.exception("overlay refresh failed")
                continue
            self._seen = seen
            if changed:
                self.notify(changed)

    def refresh(self, replan: bool = True) -> list[str]:
        """Recompute the plans (unless ``replan`` is false) and the directory; return the hosts
        whose polls must wake."""
        changed: list[str] = []
        if replan:
            self._refreshed_at = time.monotonic()
            changed = self._replan(self.store.overlay_hosts())
        if not self.plans:  # no host runs the overlay: nobody reads the directory (it is made with the first plan)
            return changed
        records = [[name, stack, addresses] for name, stack, addresses in self.store.dns_entries()]
        if records != self.dns_records:
            self.dns_records = records
            self.dns_generation += 1
            changed = sorted(set(changed) | set(self.plans))
        return changed

    def _replan(self, hosts: list[OverlayHost]) -> list[str]:
        cluster = self.cluster
        observed = observed_endpoints(hosts)
        planned = mesh.plan_mesh([mesh_host(h, observed.get(h.id)) for h in hosts], keepalive=self.keepalive)
        plans: dict[str, HostOverlay] = {}
        notes: dict[str, dict[str, Any]] = {}
        subnets = {h.id: h.subnet for h in hosts if h.subnet}
        for h in hosts:
            plan = planned.get(h.id)
            if plan is None or h.subnet is None:
                continue
            wire = {
                "cluster_cidr": str(cluster.network) if cluster else None,
                "subnet": h.subnet,
                "gateway": gateway(h.subnet),
                "keepalive": self.keepalive,
                **plan_json(plan, subnets),
            }
            plans[h.id] = HostOverlay(mesh.plan_digest(plan) + ":" + h.subnet, wire)
            notes[h.id] = {k: wire[k] for k in ("behind_nat", "reachable", "relays", "relaying_for")}
        changed = [h for h, p in plans.items() if h not in self.plans or self.plans[h].digest != p.digest]
        self.plans, self.notes = plans, notes
        return changed


def plan_json(plan: mesh.HostPlan, subnets: dict[str, str]) -> dict[str, Any]:
    """The plan as the agent reads it: with each peer's and relayed host's gateway (what
    the agent probes)."""
    body = asdict(plan)
    body["peers"] = [{**p, "allowed_ips": list(p["allowed_ips"]), "gateway": gateway(subnets[p["host_id"]])}
                     for p in body["peers"]]
    body["relays"] = [{**r, "gateway": gateway(subnets[r["target_id"]]) if r["target_id"] in subnets else None}
                      for r in body["relays"]]
    body["relaying_for"] = list(body["relaying_for"])
    return body


def observed_endpoints(hosts: list[OverlayHost]) -> dict[str, str]:
    """Where peers saw each host's handshakes come from (the latest report wins; ties: any)."""
    seen: dict[str, tuple[float, str]] = {}
    for h in hosts:
        for peer_id, peer in ((h.overlay or {}).get("peers") or {}).items():
            endpoint = peer.get("endpoint") if isinstance(peer, dict) else None
            if endpoint:
                at = float(peer.get("handshake_at") or 0)
                if peer_id not in seen or at > seen[peer_id][0]:
                    seen[peer_id] = (at, str(endpoint))
    return {k: v for k, (_, v) in seen.items()}


def mesh_host(h: OverlayHost, observed: str | None) -> mesh.MeshHost:
    """The mesh planner's view of a host: its report, with the labels' overrides."""
    report = h.overlay or {}
    nat_label = h.labels.get(LABEL_NAT, "").lower()
    nat: bool | None = {"true": True, "false": False}.get(nat_label)
    if nat is None and isinstance(report.get("nat"), bool):
        nat = bool(report["nat"])
    return mesh.MeshHost(
        id=h.id, name=h.name,
        public_key=report.get("public_key") or None,
        subnet=h.subnet,
        endpoint=report.get("endpoint") or None,
        observed_endpoint=observed,
        nat=nat,
        up=h.state == "ready" and not report.get("error"),
        relay=h.labels.get(LABEL_RELAY, "true").lower() != "false",
    )


class ReportRefused(ValueError):
    """An agent's overlay report that cannot be used (a malformed key or endpoint)."""


def clean_report(report: Any) -> dict[str, Any]:
    """Check an agent's overlay report; raise :class:`ReportRefused` naming what is wrong.

    Peer observations with a malformed endpoint are dropped (they are hints), but the
    host's own key and endpoint must be right: a host with a bad one is left out of
    everyone's peers until it reports a good one.
    """
    if not isinstance(report, dict):
        raise ReportRefused("the overlay report is not an object")
    out = dict(report)
    try:
        if out.get("public_key") is not None:
            out["public_key"] = mesh.validate_public_key(str(out["public_key"]))
        if out.get("endpoint") is not None:
            out["endpoint"] = mesh.validate_endpoint(str(out["endpoint"]))
    except mesh.MeshInputError as exc:
        raise ReportRefused(str(exc)) from None
    peers: dict[str, Any] = {}
    for peer_id, peer in (out.get("peers") or {}).items():
        if not isinstance(peer, dict):
            continue
        peer = dict(peer)
        if peer.get("endpoint") is not None:
            try:
                peer["endpoint"] = mesh.validate_endpoint(str(peer["endpoint"]))
            except mesh.MeshInputError:
                peer["endpoint"] = None
        peers[str(peer_id)] = peer
    out["peers"] = peers
    return out
