"""Service reconciler: makes each service's instances match what it asks for.

For a service it (1) resolves the image once against its registry and pins the
result to the service, so scaling never mixes versions even if the tag moves;
(2) reads a snapshot of hosts and instances; (3) asks the pure placement code
where missing instances go (each host gets the image build for its platform,
pinned by digest); (4) applies the result in one transaction that also bumps
the revisions of the hosts it touched, then wakes those hosts' agents.

Plan and apply: the controller reads the cluster revision *before* the rows
it plans on, and the store applies the plan only if the revision is still
the same; otherwise (another server replica, or any change in between) it
reads again and replans, a bounded number of times.  So concurrent changes
never over-commit a host or place a slot twice, and a retried reconcile finds
nothing left to do.  Within one process reconciles are also serialised by a
lock, which only saves wasted plans; the registry is asked outside it.

``reconcile_all`` reads the fleet once per pass and skips the pass entirely
when the cluster revision has not moved since the last pass that found
nothing to do (and no image is waiting for its registry): the idle cost of a
large fleet is one small query every few seconds.  A registry that is down
or an image that does not exist leaves the service pending with the reason
(retried by the periodic reconcile), never half-deployed.  Instances on a
host that is down are kept: rescheduling after a grace period is the
lifecycle controller's job, not this one's.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from corral.controllers import rollout
from corral.images import ImageError, ResolvedImage
from corral.model import (HealthcheckSpec, InstanceSpec, InstanceStatus, PortSpec, RestartPolicy, VolumeSpec,
                          decisive)
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
from corral.store.store import Instance, NewInstance, NotFoundError, StaleRevision, Store, new_id
from corral.store.tables import HostRow, ServiceRow


class ImageResolver(Protocol):
    def resolve(self, ref: str) -> ResolvedImage: ...

    def image_sizes(self, resolved: ResolvedImage) -> dict[str, int]: ...

    def forget(self, registry: str) -> None: ...


def service_request(service: ServiceRow) -> ServiceRequest:
    res = service.resolution
    return request_from_spec(service.name, service.spec,
                             [p["platform"] for p in res["platforms"]] if res else None,
                             {p["platform"]: p["digest"] for p in res["platforms"]} if res else None)


def snapshot(hosts: dict[str, HostRow], services: dict[str, ServiceRow], instances: list[Instance],
             exclude: set[str]) -> Snapshot:
    """What the scheduler sees: every host, with what its instances (but `exclude`) hold."""
    per_host: dict[str, list[Instance]] = defaultdict(list)
    for inst in instances:
        if inst.id not in exclude and inst.service_id in services:
            per_host[inst.host_id].append(inst)
    reserved: dict[str, Resources] = {}  # per service, parsed once (not once per instance)
    snaps = []
    for h in hosts.values():
        mine = per_host.get(h.id, [])
        allocated = Resources()
        for inst in mine:
            if inst.service_id not in reserved:
                reserved[inst.service_id] = parse_resources(services[inst.service_id].spec.get("reservations"))
            allocated = allocated + reserved[inst.service_id]
        snaps.append(HostSnapshot(
            id=h.id, hostname=h.name, state=h.state, availability=h.availability,
            platforms=host_platforms(h.platform, h.facts.get("emulated_platforms") or (), bool(h.facts.get("arm32"))),
            labels=h.labels, capacity=capacity_from_facts(h.facts), allocated=allocated,
            ports_in_use=frozenset((p["published"], p.get("protocol", "tcp"))
                                   for inst in mine for p in inst.spec.get("ports") or []
                                   if p.get("mode", "host") == "host"),
            service_counts=Counter(services[i.service_id].name for i in mine), platform=h.platform,
            engine_labels=h.facts.get("engine_labels") or {}, images=frozenset(h.facts.get("images") or ())))
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
        gpus=int(parse_resources(spec.get("reservations")).generic.get("nvidia.com/gpu", 0)),
        entrypoint=spec.get("entrypoint"),
        working_dir=spec.get("working_dir"),
        user=spec.get("user"),
        hostname=spec.get("hostname"),
        volumes=[VolumeSpec.from_dict(v) for v in spec.get("volumes") or []],
        healthcheck=HealthcheckSpec.from_dict(spec["healthcheck"]) if spec.get("healthcheck") else None,
        stop_grace_period=spec.get("stop_grace_period"),
        cpu_limit=(spec.get("limits") or {}).get("cpu"),
        memory_limit=(spec.get("limits") or {}).get("memory"),
    )


log = logging.getLogger("corral.controllers")

MAX_ATTEMPTS = 5  # replans after a stale revision before giving up until the next pass
RESCHEDULE_LABEL = "corral.reschedule-after"  # a host label: seconds of grace before its instances move
ROLLING_RECHECK = 3.0  # seconds between full passes while an update runs (its reports move it on at once)


@dataclass
class Fleet:
    """The rows a plan is computed on, read after ``revision``."""

    revision: int
    hosts: dict[str, HostRow]
    services: dict[str, ServiceRow]
    instances: list[Instance]
    _snapshots: dict[frozenset[str], Snapshot] = field(default_factory=dict)

    def snapshot(self, exclude: set[str]) -> Snapshot:
        key = frozenset(exclude)
        if key not in self._snapshots:
            self._snapshots[key] = snapshot(self.hosts, self.services, self.instances, exclude)
        return self._snapshots[key]

    def service(self, name: str) -> ServiceRow | None:
        return next((s for s in self.services.values() if s.name == name), None)


class ServiceController:
    def __init__(self, store: Store, notify: Callable[[list[str]], None],
                 images: ImageResolver | None = None, *, down_after: float = 30.0,
                 reschedule_after: float = 30.0) -> None:
        self._store = store
        self.down_after = down_after
        self.reschedule_after = reschedule_after
        self._wake_at: float | None = None
        self._rolling = False  # an update waits for instances: every pass must look
        self._forced = False
        self._started = store.clock()
        self._notify = notify
        self._images = images
        self._lock = threading.Lock()
        self._clean_revision: int | None = None  # nothing was left to do at this revision
        self.on_kick: Callable[[], None] | None = None  # set by the server's reconcile loop
        self._targets: set[str] = set()  # services kicked on their own (an update's instance changed)
        self._rolling_ids: dict[str, frozenset[str]] = {}  # services being updated -> their instances
        self._targets_lock = threading.Lock()
        self._targeting = threading.Lock()  # held by the thread reconciling kicked services

    def kick(self) -> None:
        """Ask for a full reconcile pass soon (hosts joined, went down or came back; an update's
        instances changed); without a loop, run it now."""
        self._forced = True
        if self.on_kick is not None:
            self.on_kick()
        else:
            self.reconcile_all()

    def kick_reports(self, statuses: list[InstanceStatus]) -> None:
        """Statuses were reported: those that can move a rolling update on (an instance ready,
        or failed) reconcile its service at once (:meth:`kick_instances`).  Others of a service
        being updated change nothing; the rest kick a full pass while something time-based runs
        (a grace period, an update's delay)."""
        moving = [s.instance_id for s in statuses if decisive(s.state, s.health, s.restarts)]
        if moving and self.kick_instances(moving):
            return
        with self._targets_lock:
            watched = frozenset().union(*self._rolling_ids.values())
        if self.updating and any(s.instance_id not in watched for s in statuses):
            self.kick()

    def kick_instances(self, instance_ids: list[str]) -> bool:
        """Instances reported a change: the services being updated that own them are reconciled
        at once, each alone, here in the reporting thread (a slot of a rolling update moves on as
        soon as its instance is ready: no wait for the next full pass, no hop to the reconcile
        loop).  A report that comes while another thread does this leaves its services to that
        thread, which looks again before it stops.  False if none of them is being updated."""
        with self._targets_lock:
            names = {name for name, ids in self._rolling_ids.items() if not ids.isdisjoint(instance_ids)}
            self._targets |= names
        if not names:
            return False
        while self._targeting.acquire(blocking=False):
            try:
                with self._targets_lock:
                    names, self._targets = self._targets, set()
                for name in sorted(names):
                    try:
                        self.reconcile(name, resolve=False)
                    except Exception:  # the report itself is stored: a full pass takes over
                        log.exception("reconciling %s after a status report failed", name)
                        self.kick()
            finally:
                self._targeting.release()
            with self._targets_lock:
                if not self._targets:
                    break
        return True

    def _read(self) -> Fleet:
        revision = self._store.cluster_revision()  # first: rows newer than it only make a plan stale
        return Fleet(revision, {h.id: h for h in self._store.list_hosts()},
                     {s.id: s for s in self._store.list_services()}, self._store.list_instances())

    def snapshot(self) -> Snapshot:
        """The scheduler's view of the fleet now (for submit-time checks)."""
        return self._read().snapshot(set())

    def reconcile_all(self) -> None:
        services = self._store.list_services()
        revision = self._store.cluster_revision()
        if not services:  # nothing to place: joins and leaves need no look at the fleet
            self._clean_revision, self._forced = revision, False
            self._wake_at, self._rolling = None, False  # and nothing is due (a removed service's update)
            return
        if self._images is not None:
            waiting = [s for s in services if s.resolution is None]
            timer = self._rolling or (self._wake_at is not None and self._store.clock() >= self._wake_at)
            if not waiting and revision == self._clean_revision and not timer and not self._forced:
                return
            for service in waiting:
                self._resolve(service)
        self._forced = False
        with self._lock:
            fleet = self._read()
            self._wake_at = None
            self._rolling = False
            changed_any = False
            for service in sorted(fleet.services.values(), key=lambda s: s.name):
                if self._images is not None and service.resolution is None:
                    continue
                changed, fleet = self._place_retrying(service.name, fleet)
                changed_any = changed_any or changed is None or bool(changed)
                if changed:
                    self._notify(changed)
            self._clean_revision = None if changed_any else fleet.revision

    def reconcile(self, name: str, resolve: bool = True) -> None:
        """Reconcile one service; without ``resolve`` (a status report's), one whose image is not
        resolved yet is left to the reconcile loop (no registry call here)."""
        if resolve and self._images is not None:  # the registry is asked before, not under, the lock
            try:
                service = self._store.get_service(name)
            except NotFoundError:
                pass  # the fleet's read below finds it gone
            else:
                if service.resolution is None and not self._resolve(service):
                    return
        changed: list[str] | None = None
        with self._lock:
            fleet = self._read()
            found = fleet.service(name)
            unresolved = found is not None and found.resolution is None and self._images is not None
            if found is None:
                self._watch(name, None)
            elif not unresolved:
                changed, _ = self._place_retrying(name, fleet, reread=False)
        if unresolved:
            self.kick()  # outside the lock: without a loop, a kick is a pass, which takes it
        if changed:
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

    def _place_retrying(self, name: str, fleet: Fleet, reread: bool = True) -> tuple[list[str] | None, Fleet]:
        """Plan and apply one service; returns (hosts changed or None if it gave up, fleet to go on
        with: read again after a change, if ``reread``)."""
        for _ in range(MAX_ATTEMPTS):
            try:
                changed = self._place(name, fleet)
            except StaleRevision:
                fleet = self._read()
                continue
            return changed, (self._read() if changed and reread else fleet)
        log.warning("service %s: the cluster kept changing during %d plans; retrying later", name, MAX_ATTEMPTS)
        return None, self._read()

    def _place(self, name: str, fleet: Fleet) -> list[str]:
        service = fleet.service(name)
        if service is None:
            return []
        hosts = fleet.hosts
        now = self._store.clock()
        instances = [i for i in fleet.instances if i.service_id == service.id]
        req = service_request(service)
        roll = rollout.step(service.spec, service.version, service.update_state, instances, now)
        if roll.rollback:
            self._store.rollback_service(service.name, (roll.state or {}).get("message") or "an instance failed")
            return []
        active = (service.update_state or {}).get("state") in rollout.ACTIVE
        if roll.wake_at is not None or active:
            self._due(roll.wake_at if roll.wake_at is not None else now + ROLLING_RECHECK)
            self._rolling = self._rolling or roll.wake_at is None  # moved on by status reports, not time
        self._watch(service.name, instances if active else None)
        gone = [i.id for i in instances if self._lost(i, hosts, now)]
        replicas: int | None = None
        if req.mode == "global":
            remove = list(dict.fromkeys(roll.remove))
            kept = [i for i in instances if i.id not in set(remove)]
            result = plan_global(req, fleet.snapshot(set(remove)), max((i.slot for i in instances), default=0) + 1)
            remove += self._not_eligible(kept, set(result.eligible), hosts)
            replicas = len(result.eligible)
        else:
            draining = [i.id for i in instances if hosts[i.host_id].availability == "draining"]
            remove = list(dict.fromkeys(roll.remove + draining + gone))
            remove += self._surplus([i for i in instances if i.id not in set(remove)], service.replicas, hosts)
            kept = [i for i in instances if i.id not in set(remove)]
            used = {i.slot for i in kept}
            missing = max(0, service.replicas - len(used))
            fresh = [s for s in range(1, service.replicas + len(used) + 1) if s not in used][:missing]
            # start-first: the slot still has its old instance, and gets a new one beside it.  Where
            # nothing is reserved or bound on the host, the old one does not count, so the new one
            # goes where the old one would (spread stays even once the old ones are gone).
            slots = sorted(set(fresh) | {s for s in roll.place if s <= service.replicas})
            replaced = {i.id for i in instances if i.slot in roll.place and i.id not in set(remove)}
            light = not req.reservations.cpu and not req.reservations.memory and \
                not any(req.reservations.generic.values()) and not req.ports
            result = plan(req, fleet.snapshot(set(remove) | (replaced if light else set())), slots)
        resolved = ResolvedImage.from_dict(service.resolution) if service.resolution is not None else None
        add = [self._new_instance(service, resolved, p, hosts[p.host_id]) for p in result.placements]
        state, event = roll.state, roll.event
        if roll.place or (req.mode == "global" and roll.remove):
            state = dict(state if state is not None else service.update_state or {})
            started = set(roll.place) if req.mode != "global" else {a.slot for a in add}
            state["batch"] = list(state.get("batch") or []) + [a.spec.id for a in add if a.slot in started]
        if not add and not remove and service.pending_reason == result.reason and state is None and \
                (replicas is None or replicas == service.replicas):
            return []
        changed = self._store.apply_service_plan(service.id, add, remove, result.reason, replicas=replicas,
                                                 expect_revision=fleet.revision, update_state=state, event=event)
        if add and (state or service.update_state or {}).get("state") in rollout.ACTIVE:
            self._watch(service.name, [*instances, *(a.spec for a in add)])
        return changed

    def _watch(self, name: str, instances: list[Any] | None) -> None:
        """Remember the instances of a service being updated (their reports kick it), or forget it."""
        with self._targets_lock:
            if instances is None:
                self._rolling_ids.pop(name, None)
            else:
                self._rolling_ids[name] = frozenset(i.id for i in instances)

    def _lost(self, inst: Instance, hosts: dict[str, HostRow], now: float) -> bool:
        """An instance on a host that has been down longer than its grace period (then it is replaced)."""
        host = hosts.get(inst.host_id)
        if host is None or host.state == "ready":
            return False
        try:
            grace = float(host.labels.get(RESCHEDULE_LABEL, self.reschedule_after))
        except ValueError:
            grace = self.reschedule_after
        # the grace runs from when the host went silent, or from this server's start if later:
        # a host the server could not hear while it was itself down gets its full grace
        due = max(host.last_seen, self._started) + self.down_after + grace
        if now < due:
            self._due(due)
            return False
        return True

    @property
    def updating(self) -> bool:
        """A rolling update or a grace period is running: status reports may move it on."""
        return self._wake_at is not None

    def next_wake(self) -> float | None:
        """When a pass is due for time's sake (a delay, a grace period ending), if ever."""
        return self._wake_at

    def _due(self, at: float) -> None:
        """Something time-based (a grace period, an update's delay) needs a pass at ``at``."""
        self._wake_at = at if self._wake_at is None else min(self._wake_at, at)

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
                           platform=platform, emulated=p.choice is not None and p.choice.kind == "emulated",
                           spec_version=service.version)

    @staticmethod
    def _surplus(instances: list[Instance], replicas: int, hosts: dict[str, HostRow]) -> list[str]:
        """Slots to give up when scaling down (all their instances): those on down hosts first, then the
        highest.  A slot may hold two instances while a start-first update replaces one."""
        by_slot: dict[int, list[Instance]] = defaultdict(list)
        for inst in instances:
            by_slot[inst.slot].append(inst)
        extra = len(by_slot) - replicas
        if extra <= 0:
            return []

        def ready(slot: int) -> bool:
            return any(hosts.get(i.host_id) is not None and hosts[i.host_id].state == "ready" for i in by_slot[slot])
        ranked = sorted(by_slot, key=lambda slot: (ready(slot), -slot))
        return [i.id for slot in ranked[:extra] for i in by_slot[slot]]

    @staticmethod
    def _not_eligible(instances: list[Instance], eligible: set[str], hosts: dict[str, HostRow]) -> list[str]:
        """Global services: drop instances on ready hosts that no longer qualify, and duplicates."""
        remove, seen = [], set()
        for inst in sorted(instances, key=lambda i: i.slot):
            host = hosts.get(inst.host_id)
            ready = host is not None and host.state == "ready"
            if inst.host_id in seen or (ready and inst.host_id not in eligible):
                remove.append(inst.id)
            seen.add(inst.host_id)
        return remove

