"""The store on real SQLite and real PostgreSQL: migrations, revisions, transactions."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect, update

from corral.model import InstanceSpec, InstanceStatus
from corral.store.db import open_engine, sqlite_url
from corral.store.store import ConflictError, NewInstance, NotFoundError, Store
from corral.store.tables import InstanceRow


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "sqlite":
        url = sqlite_url(tmp_path)
    else:
        url = request.getfixturevalue("fresh_postgres_url")
    return Store(open_engine(url))


def _spec(iid: str, service: str = "web", slot: int = 1) -> InstanceSpec:
    return InstanceSpec(id=iid, name=f"{service}.{slot}.{iid}", service=service, slot=slot, image="busybox")


def test_migrations_create_the_schema_and_are_idempotent(store: Store) -> None:
    tables = set(inspect(store.engine).get_table_names())
    assert {"hosts", "services", "instances", "tokens", "settings", "alembic_version"} <= tables
    from corral.store.db import migrate

    migrate(store.engine)  # a second start migrates nothing and fails nothing


def test_host_lifecycle_and_lookup(store: Store) -> None:
    a = store.create_host("edge-1", {"platform": "linux/arm64"}, {"zone": "edge"}, "h" * 64)
    store.create_host("edge-2", {"platform": "linux/arm/v7"}, {}, "h" * 64)
    assert store.get_host("edge-1").id == a.id
    assert store.get_host(a.id[:6]).id == a.id
    with pytest.raises(NotFoundError):
        store.get_host("nope")
    assert store.set_label(a.id, "rack", "r1").labels == {"zone": "edge", "rack": "r1"}
    assert store.set_label(a.id, "zone", None).labels == {"rack": "r1"}
    with pytest.raises(NotFoundError):
        store.set_label(a.id, "zone", None)


def test_ambiguous_host_name(store: Store) -> None:
    store.create_host("pi", {}, {}, "h" * 64)
    store.create_host("pi", {}, {}, "h" * 64)
    with pytest.raises(ConflictError, match="ambiguous"):
        store.get_host("pi")


def test_plan_bumps_revisions_of_touched_hosts_only(store: Store) -> None:
    a = store.create_host("a", {}, {}, "h" * 64)
    b = store.create_host("b", {}, {}, "h" * 64)
    svc = store.create_service("web", {"image": "busybox"}, 1)
    changed = store.apply_service_plan(svc.id, [NewInstance(a.id, 1, _spec("i1"), "linux/amd64")], [], None)
    assert changed == [a.id]
    assert store.host_revision(a.id) == 1 and store.host_revision(b.id) == 0
    desired = store.desired_set(a.id)
    assert desired.revision == 1 and [i.id for i in desired.instances] == ["i1"]
    changed = store.apply_service_plan(svc.id, [], ["i1"], "why not")
    assert changed == [a.id] and store.desired_set(a.id).instances == []
    assert store.get_service("web").pending_reason == "why not"


def test_duplicate_service_name_conflicts(store: Store) -> None:
    store.create_service("web", {"image": "busybox"}, 1)
    with pytest.raises(ConflictError):
        store.create_service("web", {"image": "other"}, 2)
    assert store.get_service("web").spec == {"image": "busybox"}


def test_heartbeat_updates_only_own_instances_and_marks_up(store: Store) -> None:
    a = store.create_host("a", {}, {}, "h" * 64)
    b = store.create_host("b", {}, {}, "h" * 64)
    svc = store.create_service("web", {"image": "busybox"}, 2)
    store.apply_service_plan(svc.id, [NewInstance(a.id, 1, _spec("ia"), ""), NewInstance(b.id, 2, _spec("ib", slot=2), "")],
                             [], None)
    store.heartbeat(a.id, {"platform": "linux/arm64"}, [InstanceStatus("ia", "running", 5.0, "c1"),
                                                         InstanceStatus("ib", "exited", 5.0, "c2", 1)])
    states = {i.id: i.state for i in store.list_instances()}
    assert states == {"ia": "running", "ib": "pending"}
    assert store.host_by_id(a.id).platform == "linux/arm64"
    assert store.mark_down(0) == []
    assert sorted(store.mark_down(store.clock() + 1)) == sorted([a.id, b.id])
    assert store.heartbeat(a.id, None, []) is True
    assert store.heartbeat(a.id, None, []) is False


def test_heartbeat_records_every_field_and_an_event_per_change(store: Store) -> None:
    a = store.create_host("a", {}, {}, "h" * 64)
    svc = store.create_service("web", {"image": "busybox"}, 1)
    store.apply_service_plan(svc.id, [NewInstance(a.id, 1, _spec("ia"), "")], [], None)
    first = store.last_event_id()
    store.heartbeat(a.id, None, [InstanceStatus("ia", "running", 7.5, "c1", None, "", 2, "starting")])
    store.heartbeat(a.id, None, [InstanceStatus("ia", "running", 7.5, "c1", None, "", 2, "starting")])  # no change
    store.heartbeat(a.id, None, [InstanceStatus("ia", "running", 8.0, "c1", None, "", 2, "healthy")])
    (inst,) = store.list_instances()
    assert (inst.state, inst.since, inst.container_id, inst.restarts, inst.health) == ("running", 8.0, "c1", 2, "healthy")
    events = [(e.action, e.subject, e.attrs.get("id")) for e in store.list_events(first)]
    assert events == [("running", "web", "ia"), ("health_healthy", "web", "ia")]


def test_instance_specs_are_read_again_when_another_server_readdresses_them(store: Store) -> None:
    """Specs are decoded once per process and kept; the one change a spec gets (its overlay
    address, made by whichever server process) is seen by every other one."""
    a = store.create_host("a", {}, {}, "h" * 64)
    svc = store.create_service("web", {"image": "busybox"}, 2)
    store.apply_service_plan(svc.id, [NewInstance(a.id, 1, _spec("i1"), ""), NewInstance(a.id, 2, _spec("i2", slot=2), "")],
                             [], None)
    other = Store(store.engine)  # a second server on the same database
    assert [i.spec["labels"] for i in other.list_instances()] == [{}, {}]
    labelled = {**_spec("i1").to_dict(), "labels": {"io.corral.address": "10.42.1.2"}}
    with store.engine.begin() as conn:
        conn.execute(update(InstanceRow).where(InstanceRow.id == "i1").values(address="10.42.1.2", spec=labelled))
    for s in (store, other):
        assert {i.id: (i.address, i.spec["labels"]) for i in s.list_instances()} == {
            "i1": ("10.42.1.2", {"io.corral.address": "10.42.1.2"}), "i2": ("", {})}
        assert [spec["labels"] for spec in s.desired_specs(a.id)[1]] == [{"io.corral.address": "10.42.1.2"}, {}]
    store.apply_service_plan(svc.id, [], ["i2"], None)
    assert [i.id for i in other.list_instances()] == ["i1"]
    assert set(other._specs) == {"i1"}  # a full listing forgets instances that are gone


def test_delete_service_removes_instances_and_bumps(store: Store) -> None:
    a = store.create_host("a", {}, {}, "h" * 64)
    svc = store.create_service("web", {"image": "busybox"}, 1)
    store.apply_service_plan(svc.id, [NewInstance(a.id, 1, _spec("i1"), "")], [], None)
    assert store.delete_service("web") == [a.id]
    assert store.list_instances() == [] and store.host_revision(a.id) == 2
    with pytest.raises(NotFoundError):
        store.delete_service("web")


def test_tokens_and_rotation(store: Store) -> None:
    store.add_token("J1", "old")
    assert not store.token_remembered("J1", "old")  # not asked yet
    assert store.token_valid("J1", "old") and store.token_remembered("J1", "old")
    store.add_token("J1", "new", replace=True)
    assert not store.token_remembered("J1", "old")
    assert not store.token_valid("J1", "old") and store.token_valid("J1", "new")
    assert not store.token_remembered("J1", "old") and store.token_remembered("J1", "new")
    assert not store.token_valid("A1", "new")


def test_a_facts_patch_changes_only_the_keys_it_names(store: Store) -> None:
    host = store.create_host("a", {"platform": "linux/arm64", "cpus": 4, "images": ["sha256:1"]}, {}, "h" * 64)
    store.heartbeat(host.id, None, [], facts_patch={"images": ["sha256:1", "sha256:2"], "cpus": None})
    assert store.host_by_id(host.id).facts == {  # type: ignore[union-attr]
        "platform": "linux/arm64", "images": ["sha256:1", "sha256:2"]}


def test_a_down_check_that_finds_nobody_silent_writes_nothing(store: Store) -> None:
    host = store.create_host("a", {"platform": "linux/amd64"}, {}, "h" * 64)
    seen = store.generation
    assert store.mark_down(store.clock() - 60) == [] and store.generation == seen  # listings stay cached
    assert store.mark_down(store.clock() - 60, spare={host.id}) == []
    assert store.mark_down(store.clock() + 1, spare={host.id}) == [] and store.generation == seen
    assert store.mark_down(store.clock() + 1) == [host.id] and store.generation > seen
    assert store.get_host(host.id).state == "down"
