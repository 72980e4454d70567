"""Service reconciler: makes each service's instances match what it asks for.

For a service it (1) resolves the image once against its registry and pins the
result to the service, so scaling never mixes versions even if the tag moves;
(2) reads a snapshot of hosts and instances; (3) asks the pure placement code
where missing instances go (each host gets the image build for its platform,
pinned by digest); (4) applies the result in one transaction that also bumps
the revisions of the hosts it touched, then wakes those hosts' agents.

Reconciles are serialised by one lock, so two requests never place the same
slot twice; the registry is asked outside that lock.  A registry that is down
or an image that does not exist leaves the service pending with the reason
(retried by the periodic reconcile), never half-deployed.  Instances on a
host that is down are kept: rescheduling after a grace period is the
lifecycle controller's job, not this one's.
"""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Protocol

from corral.images import ImageError, ResolvedImage
from corral.model import InstanceSpec, PortSpec, RestartPolicy
from corral.scheduler.model import (
    HostSnapshot,
    Placement,
    Resources,
    ServiceRequest,
    Snapshot,
    capacity_from_facts,
    parse_resources,
)
from corral.scheduler.placement import plan, plan_global, request_from_spec
from corral.scheduler.platforms import host_platforms
from corral.store.store import NewInstance, NotFoundError, Store, new_id
from corral.store.tables import HostRow, InstanceRow, ServiceRow


class ImageResolver(Protocol):
    def resolve(self, ref: str) -> ResolvedImage: ...

    def image_sizes(self, resolved: ResolvedImage) -> dict[str, int]: ...

    def forget(self, registry: str) -> None: ...


def service_request(service: ServiceRow) -> ServiceRequest:
    res = service.resolution
    return request_from_spec(service.name, service.spec,
                             [p["platform"] for p in res["platforms"]] if res else None,
                             {p["platform"]: p["digest"] for p in res["platforms"]} if res else None)


def snapshot(hosts: dict[str, HostRow], services: dict[str, ServiceRow], instances: list[InstanceRow],
             exclude: set[str]) -> Snapshot:
    """What the scheduler sees: every host, with what its instances (but `exclude`) hold."""
    per_host: dict[str, list[InstanceRow]] = defaultdict(list)
    for inst in instances:
        if inst.id not in exclude and inst.service_id in services:
            per_host[inst.host_id].append(inst)
    snaps = []
    for h in hosts.values():
        mine = per_host.get(h.id, [])
        allocated = Resources()
        for inst in mine:
            allocated = allocated + parse_resources(services[inst.service_id].spec.get("reservations"))
        snaps.append(HostSnapshot(
            id=h.id, hostname=h.name, state=h.state, availability=h.availability,
            platforms=host_platforms(h.platform, h.facts.get("emulated_platforms") or (), bool(h.facts.get("arm32"))),
            labels=h.labels, capacity=capacity_from_facts(h.facts), allocated=allocated,
            ports_in_use=frozenset((p["published"], p.get("protocol", "tcp"))
                                   for inst in mine for p in inst.spec.get("ports") or []),
            service_counts=Counter(services[i.service_id].name for i in mine), platform=h.platform))
    return Snapshot(tuple(snaps))


def instance_spec(service: ServiceRow, slot: int, instance_id: str, image: str) -> InstanceSpec:
    spec = service.spec
    return InstanceSpec(
        id=instance_id,
        name=f"{service.name}.{slot}.{instance_id}",
        service=service.name,
        slot=slot,
        image=image,
        command=spec.get("command"),
        env=dict(spec.get("env") or {}),
        ports=[PortSpec(**p) for p in spec.get("ports") or []],
        restart=RestartPolicy(**(spec.get("restart") or {})),
        labels=dict(spec.get("labels") or {}),
    )


class ServiceController:
    def __init__(self, store: Store, notify: Callable[[list[str]], None],
                 images: ImageResolver | None = None) -> None:
        self._store = store
        self._notify = notify
        self._images = images
        self._lock = threading.Lock()

    def snapshot(self) -> Snapshot:
        """The scheduler's view of the fleet now (for submit-time checks)."""
        return snapshot({h.id: h for h in self._store.list_hosts()},
                        {s.id: s for s in self._store.list_services()}, self._store.list_instances(), set())

    def reconcile_all(self) -> None:
        for service in self._store.list_services():
            self.reconcile(service.name)

    def reconcile(self, name: str) -> None:
        try:
            service = self._store.get_service(name)
        except NotFoundError:
            return
        if service.resolution is None and self._images is not None and not self._resolve(service):
            return
        with self._lock:
            changed = self._place(name)
        self._notify(changed)

    def _resolve(self, service: ServiceRow) -> bool:
        try:
            resolved = self._images.resolve(service.spec["image"])  # type: ignore[union-attr]
        except ImageError as exc:
            reason = f"{exc} (retrying)" if exc.retryable else str(exc)
            self._store.set_pending_reason(service.id, reason)
            return False
        self._store.set_resolution(service.id, resolved.to_dict())
        return True

    def _place(self, name: str) -> list[str]:
        try:
            service = self._store.get_service(name)
        except NotFoundError:
            return []
        hosts = {h.id: h for h in self._store.list_hosts()}
        services = {s.id: s for s in self._store.list_services()}
        everything = self._store.list_instances()
        instances = [i for i in everything if i.service_id == service.id]
        req = service_request(service)
        replicas: int | None = None
        if req.mode == "global":
            snap = snapshot(hosts, services, everything, exclude=set())
            result = plan_global(req, snap, max((i.slot for i in instances), default=0) + 1)
            remove = self._not_eligible(instances, set(result.eligible), hosts)
            replicas = len(result.eligible)
        else:
            draining = [i.id for i in instances if hosts[i.host_id].availability == "draining"]
            remove = draining + self._surplus([i for i in instances if i.id not in set(draining)],
                                              service.replicas, hosts)
            kept = [i for i in instances if i.id not in set(remove)]
            used = {i.slot for i in kept}
            missing = max(0, service.replicas - len(kept))
            slots = [s for s in range(1, service.replicas + len(used) + 1) if s not in used][:missing]
            result = plan(req, snapshot(hosts, services, everything, exclude=set(remove)), slots)
        resolved = ResolvedImage.from_dict(service.resolution) if service.resolution is not None else None
        add = [self._new_instance(service, resolved, p, hosts[p.host_id]) for p in result.placements]
        if not add and not remove and service.pending_reason == result.reason and \
                (replicas is None or replicas == service.replicas):
            return []
        return self._store.apply_service_plan(service.id, add, remove, result.reason, replicas=replicas)

    @staticmethod
    def _new_instance(service: ServiceRow, resolved: ResolvedImage | None, p: Placement,
                      host: HostRow) -> NewInstance:
        iid = new_id()
        image = service.spec["image"]
        platform = host.platform
        if p.choice is not None and resolved is not None:
            platform = str(p.choice.platform)
            image = resolved.pull_reference(p.choice.platform) or image
        return NewInstance(host_id=host.id, slot=p.slot, spec=instance_spec(service, p.slot, iid, image),
                           platform=platform, emulated=p.choice is not None and p.choice.kind == "emulated")

    @staticmethod
    def _surplus(instances: list[InstanceRow], replicas: int, hosts: dict[str, HostRow]) -> list[str]:
        """Instances to remove when scaling down: those on down hosts first, then the highest slots."""
        extra = len(instances) - replicas
        if extra <= 0:
            return []
        ranked = sorted(instances, key=lambda i: (hosts.get(i.host_id) is not None
                                                  and hosts[i.host_id].state == "ready", -i.slot))
        return [i.id for i in ranked[:extra]]

    @staticmethod
    def _not_eligible(instances: list[InstanceRow], eligible: set[str], hosts: dict[str, HostRow]) -> list[str]:
        """Global services: drop instances on ready hosts that no longer qualify, and duplicates."""
        remove, seen = [], set()
        for inst in sorted(instances, key=lambda i: i.slot):
            host = hosts.get(inst.host_id)
            ready = host is not None and host.state == "ready"
            if inst.host_id in seen or (ready and inst.host_id not in eligible):
                remove.append(inst.id)
            seen.add(inst.host_id)
        return remove

