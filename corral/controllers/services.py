"""Service reconciler: makes each service's instances match its replica count.

It reads a snapshot from the store, asks the (pure) placement function where
missing replicas go, and applies the result in one transaction that also bumps
the revisions of the hosts it touched; then it wakes those hosts' agents.
Reconciles are serialised by one lock, so two requests never place the same
slot twice.  Instances on a host that is down are kept (rescheduling after a
grace period belongs to the lifecycle controller, not here).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable

from corral.model import InstanceSpec, PortSpec, RestartPolicy
from corral.scheduler import constraints as cons
from corral.scheduler.spread import HostView, place_spread
from corral.store.store import NewInstance, NotFoundError, Store, new_id
from corral.store.tables import HostRow, InstanceRow, ServiceRow


def host_view(row: HostRow) -> HostView:
    facts = cons.HostFacts(id=row.id, hostname=row.name, platform=row.platform, labels=row.labels)
    return HostView(facts=facts, state=row.state)


def instance_spec(service: ServiceRow, slot: int, instance_id: str) -> InstanceSpec:
    spec = service.spec
    return InstanceSpec(
        id=instance_id,
        name=f"{service.name}.{slot}.{instance_id}",
        service=service.name,
        slot=slot,
        image=spec["image"],
        command=spec.get("command"),
        env=dict(spec.get("env") or {}),
        ports=[PortSpec(**p) for p in spec.get("ports") or []],
        restart=RestartPolicy(**(spec.get("restart") or {})),
        labels=dict(spec.get("labels") or {}),
    )


class ServiceController:
    def __init__(self, store: Store, notify: Callable[[list[str]], None]) -> None:
        self._store = store
        self._notify = notify
        self._lock = threading.Lock()

    def reconcile_all(self) -> None:
        for service in self._store.list_services():
            self.reconcile(service.name)

    def reconcile(self, name: str) -> None:
        with self._lock:
            try:
                service = self._store.get_service(name)
            except NotFoundError:
                return
            hosts = {h.id: h for h in self._store.list_hosts()}
            instances = self._store.list_instances(service_id=service.id)
            remove = self._surplus(instances, service.replicas, hosts)
            kept = [i for i in instances if i.id not in set(remove)]
            used = {i.slot for i in kept}
            missing = service.replicas - len(kept)
            slots = [s for s in range(1, service.replicas + len(used) + 1) if s not in used][:max(0, missing)]
            result = place_spread(
                slots,
                [host_view(h) for h in hosts.values()],
                [cons.parse(c) for c in service.spec.get("constraints") or []],
                Counter(i.host_id for i in kept),
                self._store.instance_counts(),
                one_per_host=bool(service.spec.get("ports")),
            )
            add = []
            for p in result.placements:
                iid = new_id()
                add.append(NewInstance(host_id=p.host_id, slot=p.slot, spec=instance_spec(service, p.slot, iid),
                                       platform=hosts[p.host_id].platform))
            if not add and not remove and service.pending_reason == result.reason:
                return
            changed = self._store.apply_service_plan(service.id, add, remove, result.reason)
        self._notify(changed)

    @staticmethod
    def _surplus(instances: list[InstanceRow], replicas: int, hosts: dict[str, HostRow]) -> list[str]:
        """Instances to remove when scaling down: those on down hosts first, then the highest slots."""
        extra = len(instances) - replicas
        if extra <= 0:
            return []
        ranked = sorted(instances, key=lambda i: (hosts.get(i.host_id) is not None
                                                  and hosts[i.host_id].state == "ready", -i.slot))
        return [i.id for i in ranked[:extra]]
