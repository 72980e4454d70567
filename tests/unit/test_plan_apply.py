"""Plan and apply: optimistic concurrency on the cluster revision, on real SQLite and PostgreSQL.

Two service controllers on one store stand for two server replicas: they share
nothing but the database, so only the store's revision check keeps them from
over-committing a host or placing a slot twice.
"""

from __future__ import annotations

import threading
from collections import Counter
from pathlib import Path

import pytest

from corral.controllers.services import ServiceController
from corral.model import InstanceSpec
from corral.store.db import open_engine, sqlite_url
from corral.store.store import NewInstance, StaleRevision, Store

FACTS = {"platform": "linux/amd64", "cpus": 2, "memory_bytes": 2 << 30}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return sqlite_url(tmp_path)
    return str(request.getfixturevalue("fresh_postgres_url"))


def _spec(iid: str, slot: int) -> InstanceSpec:
    return InstanceSpec(id=iid, name=f"web.{slot}.{iid}", service="web", slot=slot, image="busybox")


def test_every_placement_input_bumps_the_cluster_revision(url: str) -> None:
    store = Store(open_engine(url))
    seen = [store.cluster_revision()]

    def moved() -> bool:
        seen.append(store.cluster_revision())
        return seen[-1] > seen[-2]

    host = store.create_host("a", dict(FACTS), {}, "h" * 64)
    assert moved()
    store.set_label(host.id, "zone", "edge")
    assert moved()
    store.set_availability(host.id, "cordoned")
    assert moved()
    svc = store.create_service("web", {"image": "busybox"}, 1)
    assert moved()
    store.set_replicas("web", 2)
    assert moved()
    store.heartbeat(host.id, dict(FACTS), [])  # same facts: nothing placement reads changed
    assert not moved()
    store.heartbeat(host.id, {**FACTS, "cpus": 4}, [])
    assert moved()
    store.heartbeat(host.id, {**FACTS, "cpus": 4, "images": ["sha256:1"]}, [])  # locality is a hint only
    assert not moved()
    store.mark_down(store.clock() + 1)
    assert moved()
    assert store.touch_hosts({host.id: store.clock()}) == [host.id]  # back
    assert moved() and store.host_by_id(host.id).state == "ready"  # type: ignore[union-attr]
    store.apply_service_plan(svc.id, [NewInstance(host.id, 1, _spec("i1", 1), "linux/amd64")], [], None)
    assert moved()
    store.delete_service("web")
    assert moved()
    store.remove_host(host.id)
    assert moved()


def test_a_plan_from_an_old_revision_changes_nothing(url: str) -> None:
    store = Store(open_engine(url))
    host = store.create_host("a", dict(FACTS), {}, "h" * 64)
    svc = store.create_service("web", {"image": "busybox"}, 1)
    computed_on = store.cluster_revision()
    store.set_label(host.id, "zone", "edge")  # someone else's change lands first
    with pytest.raises(StaleRevision):
        store.apply_service_plan(svc.id, [NewInstance(host.id, 1, _spec("i1", 1), "linux/amd64")], [], None,
                                 expect_revision=computed_on)
    assert store.list_instances() == []
    assert store.host_revision(host.id) == 0
    store.apply_service_plan(svc.id, [NewInstance(host.id, 1, _spec("i1", 1), "linux/amd64")], [], None,
                             expect_revision=store.cluster_revision())
    assert [i.id for i in store.list_instances()] == ["i1"]


def test_two_replicas_racing_never_overcommit_or_double_place(url: str) -> None:
    """Two controllers (no shared lock) reconcile the same services at once, many times over."""
    stores = [Store(open_engine(url)) for _ in range(2)]
    store = stores[0]
    for n in range(4):  # room for exactly 8 instances of 0.5 CPU
        store.create_host(f"h{n}", {**FACTS, "cpus": 1}, {}, "h" * 64)
    spec = {"image": "busybox", "reservations": {"cpu": 0.5}}
    store.create_service("web", dict(spec), 5)
    store.create_service("api", dict(spec), 5)
    controllers = [ServiceController(s, lambda _hosts: None) for s in stores]
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def run(c: ServiceController, name: str) -> None:
        try:
            for _ in range(6):
                barrier.wait(timeout=30)
                c.reconcile(name)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(c, name)) for c in controllers for name in ("web", "api")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    for c in controllers:
        c.reconcile_all()
    instances = store.list_instances()
    per_host = Counter(i.host_id for i in instances)
    assert len(instances) == 8, "every CPU slot used once, the two extra replicas pending"
    assert max(per_host.values()) == 2, "no host over its 1 CPU"
    for service in store.list_services():
        slots = [i.slot for i in instances if i.service_id == service.id]
        assert len(slots) == len(set(slots)), f"{service.name}: a slot placed twice"
    assert sum(1 for s in store.list_services() if s.pending_reason) >= 1


def test_an_idle_reconcile_pass_reads_nothing_but_the_revision(url: str) -> None:
    store = Store(open_engine(url))
    store.create_host("a", dict(FACTS), {}, "h" * 64)
    store.create_service("web", {"image": "busybox"}, 2)
    controller = ServiceController(store, lambda _hosts: None, images=_Pinned())
    controller.reconcile_all()
    controller.reconcile_all()  # a pass that changed something is followed by one that finds it settled
    assert len(store.list_instances()) == 2
    reads = Counter[str]()
    for method in ("list_hosts", "list_instances"):
        original = getattr(store, method)

        def counting(*args: object, _m: str = method, _o: object = original, **kw: object) -> object:
            reads[_m] += 1
            return _o(*args, **kw)  # type: ignore[operator]
        setattr(store, method, counting)
    controller.reconcile_all()
    controller.reconcile_all()
    assert reads == Counter()
    store.set_replicas("web", 3)
    controller.reconcile_all()
    assert reads["list_hosts"] >= 1 and len(store.list_instances()) == 3


class _Pinned:
    """An image resolver for an image with one amd64 build."""

    def resolve(self, ref: str) -> object:
        from corral.images import ResolvedImage

        return ResolvedImage.from_dict({
            "reference": ref, "registry": "127.0.0.1:5000", "repository": "busybox", "digest": "sha256:" + "a" * 64,
            "media_type": "application/vnd.oci.image.index.v1+json",
            "platforms": [{"platform": "linux/amd64", "digest": "sha256:" + "b" * 64, "size": 1,
                           "media_type": "application/vnd.oci.image.manifest.v1+json"}],
        })

    def image_sizes(self, resolved: object) -> dict[str, int]:
        return {}

    def forget(self, registry: str) -> None:
        return None


def _report_running(store: Store, service: str | None = None) -> list[str]:
    """Every instance (of ``service``) runs: what the agents would report.  Returns their ids."""
    from corral.model import InstanceStatus

    ids = {s.id for s in store.list_services() if service is None or s.name == service}
    per_host: dict[str, list[InstanceStatus]] = {}
    for inst in store.list_instances():
        if inst.service_id in ids:
            per_host.setdefault(inst.host_id, []).append(
                InstanceStatus(inst.id, "running", 0.0, "c" + inst.id, None, "", 0, ""))
    for host_id, statuses in per_host.items():
        store.heartbeat(host_id, None, statuses)
    return [st.instance_id for sts in per_host.values() for st in sts]


def test_a_report_from_an_updating_instance_moves_only_its_service_on(url: str) -> None:
    """Status reports of a rolling update's instances reconcile that service at once, alone."""
    store = Store(open_engine(url))
    store.create_host("a", dict(FACTS), {}, "h" * 64)
    store.create_service("web", {"image": "busybox"}, 4)
    store.create_service("api", {"image": "busybox"}, 1)
    notified: list[list[str]] = []
    controller = ServiceController(store, notified.append)
    controller.reconcile_all()
    _report_running(store)
    store.update_service("web", {"image": "busybox:2", "update_config": {"parallelism": 2}})
    controller.reconcile("web")  # as the API does: the first two slots start
    web = store.get_service("web")
    new = [i.id for i in store.list_instances(web.id) if i.spec_version == web.version]
    assert len(new) == 2
    store.set_replicas("api", 2)  # a change only a full pass (or api's own reconcile) would apply
    api_instances = [i.id for i in store.list_instances(store.get_service("api").id)]
    assert not controller.kick_instances(api_instances), "api is not being updated"
    _report_running(store, "web")
    notified.clear()
    assert controller.kick_instances(new[:1])
    assert notified, "the hosts were woken"
    assert sum(i.spec_version == web.version for i in store.list_instances(web.id)) == 4, "the next two slots"
    assert len(store.list_instances(store.get_service("api").id)) == 1, "api was not reconciled"
    for _ in range(2):
        controller.kick_instances(_report_running(store, "web"))
    assert (store.get_service("web").update_state or {}).get("state") == "completed"
    assert not controller.kick_instances(_report_running(store, "web")), "done: no longer watched"


def test_a_targeted_pass_replans_on_a_stale_revision(url: str) -> None:
    """A change that lands between a targeted pass's read and its apply makes it read and plan again."""
    store = Store(open_engine(url))
    for n in range(3):  # room for 6 instances of 0.5 CPU
        store.create_host(f"h{n}", {**FACTS, "cpus": 1}, {}, "h" * 64)
    spec = {"image": "busybox", "reservations": {"cpu": 0.5}, "update_config": {"parallelism": 2}}
    store.create_service("web", dict(spec), 4)
    controller = ServiceController(store, lambda _hosts: None)
    controller.reconcile_all()
    store.create_service("api", {"image": "busybox", "reservations": {"cpu": 0.5}}, 2)
    store.update_service("web", {**spec, "image": "busybox:2"})
    controller.reconcile("web")
    ids = _report_running(store, "web")
    other = ServiceController(Store(open_engine(url)), lambda _hosts: None)  # another replica
    real_read = controller._read
    raced = []

    def read_then_race() -> object:
        fleet = real_read()
        if not raced:
            raced.append(True)
            other.reconcile("api")  # takes the CPU the stale plan would have used
        return fleet
    controller._read = read_then_race  # type: ignore[method-assign]
    stale: list[StaleRevision] = []
    real_apply = store.apply_service_plan

    def apply(*args: object, **kw: object) -> list[str]:
        try:
            return real_apply(*args, **kw)  # type: ignore[arg-type]
        except StaleRevision as exc:
            stale.append(exc)
            raise
    store.apply_service_plan = apply  # type: ignore[method-assign]
    controller.kick_instances(ids)
    instances = store.list_instances()
    assert stale, "the first plan was refused"
    assert raced and max(Counter(i.host_id for i in instances).values()) <= 2, "no host over its 1 CPU"
    web = store.get_service("web")
    slots = [i.slot for i in instances if i.service_id == web.id and i.spec_version == web.version]
    assert len(slots) == len(set(slots)) == 4, "the second pair of slots placed, once each"


def test_reports_that_cannot_move_an_update_on_reconcile_nothing(url: str) -> None:
    from corral.model import InstanceStatus

    store = Store(open_engine(url))
    host = store.create_host("a", dict(FACTS), {}, "h" * 64)
    store.create_service("web", {"image": "busybox"}, 2)
    controller = ServiceController(store, lambda _hosts: None)
    controller.reconcile_all()
    _report_running(store)
    store.update_service("web", {"image": "busybox:2", "update_config": {"parallelism": 1}})
    controller.reconcile("web")
    web = store.get_service("web")
    (new,) = [i.id for i in store.list_instances(web.id) if i.spec_version == web.version]
    reads: list[int] = []
    real_read = controller._read

    def counting() -> object:
        reads.append(1)
        return real_read()
    controller._read = counting  # type: ignore[method-assign]
    controller.kick_reports([InstanceStatus(new, "starting", 0.0, "c1", None, "", 0, "")])
    assert reads == [], "starting: nothing to decide"
    store.heartbeat(host.id, None, [InstanceStatus(new, "running", 0.0, "c1", None, "", 0, "")])
    controller.kick_reports([InstanceStatus(new, "running", 0.0, "c1", None, "", 0, "")])
    assert reads, "ready: the update moves on"
    assert sum(i.spec_version == web.version for i in store.list_instances(web.id)) == 2
