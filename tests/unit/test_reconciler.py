"""The agent's reconciler against an in-memory engine: convergence, ownership, restarts."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from corral import model
from corral.agent.reconciler import Reconciler
from corral.agent.runtime.docker import DockerError
from corral.model import DesiredSet, HealthcheckSpec, InstanceSpec, RestartPolicy, VolumeSpec
from tests.unit.fake_docker import FakeDocker

IMG = "127.0.0.1:5000/corral/busybox:1"


def spec(iid: str, slot: int = 1, image: str = IMG, **kw: Any) -> InstanceSpec:
    return InstanceSpec(id=iid, name=f"web.{slot}.{iid}", service="web", slot=slot, image=image, **kw)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def env() -> tuple[FakeDocker, Reconciler, Clock]:
    docker = FakeDocker(images={IMG})
    clock = Clock()
    rec = Reconciler(docker, "host-1", on_change=lambda: None, clock=clock)  # type: ignore[arg-type]
    return docker, rec, clock


def states(rec: Reconciler) -> dict[str, str]:
    return {s.instance_id: s.state for s in rec.statuses()}


def test_creates_and_starts_what_is_missing(env: tuple[FakeDocker, Reconciler, Clock]) -> None:
    docker, rec, _ = env
    rec.set_desired(DesiredSet(1, [spec("a"), spec("b", 2)]))
    rec.run_once(wait=True)
    running = [c for c in docker.containers.values() if c["state"] == "running"]
    assert len(running) == 2
    assert all(c["labels"][model.LABEL_HOST] == "host-1" for c in running)
    assert states(rec) == {"a": "running", "b": "running"}


def test_second_pass_changes_nothing_and_adoption_makes_no_duplicates(env: tuple[FakeDocker, Reconciler, Clock]) -> None:
    docker, rec, clock = env
    rec.set_desired(DesiredSet(1, [spec("a")]))
    rec.run_once(wait=True)
    n = len(docker.calls)
    rec.run_once(wait=True)
    assert len(docker.calls) == n
    # a new agent process (fresh reconciler) adopts the running container
    fresh = Reconciler(docker, "host-1", on_change=lambda: None, clock=clock)  # type: ignore[arg-type]
    fresh.set_desired(DesiredSet(1, [spec("a")]))
    fresh.run_once(wait=True)
    assert len(docker.containers) == 1 and len(docker.calls) == n
    assert states(fresh) == {"a": "running"}


def test_never_touches_containers_it_does_not_own(env: tuple[FakeDocker, Reconciler, Clock]) -> None:
    docker, rec, _ = env
    docker.create_container("someone-else", IMG, labels={"app": "db"})
    docker.create_container("other-agent", IMG, labels={model.LABEL_HOST: "host-2", model.LABEL_INSTANCE: "z"})
    rec.set_desired(DesiredSet(1, []))
    rec.run_once(wait=True)
    assert {c["name"] for c in docker.containers.values()} == {"someone-else", "other-agent"}


def test_removes_undesired_and_duplicates(env: tuple[FakeDocker, Reconciler, Clock]) -> None:
    docker, rec, _ = env
    rec.set_desired(DesiredSet(1, [spec("a"), spec("b", 2)]))
    rec.run_once(wait=True)
    dup = docker.create_container("web.1.dup", IMG, labels={model.LABEL_HOST: "host-1", model.LABEL_INSTANCE: "a",
                                                             model.LABEL_SPEC: spec("a").spec_hash()})
    rec.set_desired(DesiredSet(2, [spec("a")]))
    rec.run_once(wait=True)
    assert [c["name"] for c in docker.containers.values()] == ["web.1.a"]
    assert dup not in docker.containers


def test_spec_change_recreates(env: tuple[FakeDocker, Reconciler, Clock]) -> None:
    docker, rec, _ = env
    rec.set_desired(DesiredSet(1, [spec("a")]))
    rec.run_once(wait=True)
    rec.set_desired(DesiredSet(2, [spec("a", env={"X": "1"})]))
    rec.run_once(wait=True)
    (only,) = docker.containers.values()
    assert only["labels"][model.LABEL_SPEC] == spec("a", env={"X": "1"}).spec_hash()


def test_restart_with_backoff(env: tuple[FakeDocker, Reconciler, Clock]) -> None:
    docker, rec, clock = env
    rec.set_desired(DesiredSet(1, [spec("a", restart=RestartPolicy("any", delay=2.0))]))
    rec.run_once(wait=True)
    (cid,) = docker.containers
    docker.exit(cid, 3)
    rec.run_once(wait=True)
    st = rec.statuses()[0]
    assert st.state == model.RESTARTING and st.exit_code == 3
    assert rec.next_due == clock.t + 2.0
    clock.t += 2.0
    rec.run_once(wait=True)
    st = rec.statuses()[0]
    assert st.state == model.RUNNING and st.restarts == 1
    assert docker.containers[cid]["state"] == "running"


def test_policy_none_leaves_it_exited(env: tuple[FakeDocker, Reconciler, Clock]) -> None:
    docker, rec, _ = env
    rec.set_desired(DesiredSet(1, [spec("a", restart=RestartPolicy("none"))]))
    rec.run_once(wait=True)
    (cid,) = docker.containers
    docker.exit(cid, 0)
    rec.run_once(wait=True)
    rec.run_once(wait=True)
    st = rec.statuses()[0]
    assert st.state == model.EXITED and st.exit_code == 0 and st.restarts == 0


def test_pull_failure_is_reported_and_retried_later(env: tuple[FakeDocker, Reconciler, Clock]) -> None:
    docker, rec, clock = env
    rec.set_desired(DesiredSet(1, [spec("a", image="127.0.0.1:5000/nope:missing")]))
    rec.run_once(wait=True)
    st = rec.statuses()[0]
    assert st.state == model.PULL_FAILED and "manifest unknown" in st.error
    pulls = docker.calls.count(("pull", "127.0.0.1:5000/nope:missing"))
    rec.run_once(wait=True)
    assert docker.calls.count(("pull", "127.0.0.1:5000/nope:missing")) == pulls  # not before the retry time
    clock.t += 11
    docker.pullable.add("127.0.0.1:5000/nope:missing")
    rec.run_once(wait=True)
    assert rec.statuses()[0].state == model.RUNNING


def test_engine_down_touches_nothing(env: tuple[FakeDocker, Reconciler, Clock]) -> None:
    docker, rec, _ = env
    rec.set_desired(DesiredSet(1, [spec("a")]))
    rec.run_once(wait=True)
    docker.down = True
    with pytest.raises(DockerError):
        rec.run_once(wait=True)
    docker.down = False
    assert [c["state"] for c in docker.containers.values()] == ["running"]


@pytest.mark.parametrize("fake", [False, True])
def test_gpu_instances_ask_the_engine_for_gpus_unless_they_are_fake(fake: bool) -> None:
    docker = FakeDocker(images={IMG})
    rec = Reconciler(docker, "host-1", on_change=lambda: None, fake_gpus=fake)  # type: ignore[arg-type]
    rec.set_desired(DesiredSet(1, [spec("a", gpus=1), spec("b", 2)]))
    rec.run_once(wait=True)
    by_name = {c["name"]: c for c in docker.containers.values()}
    assert by_name["web.1.a"]["gpus"] == (0 if fake else 1)
    assert by_name["web.1.a"]["env"]["CORRAL_GPUS"] == "1"
    assert by_name["web.2.b"]["gpus"] == 0 and "CORRAL_GPUS" not in by_name["web.2.b"]["env"]


def test_the_gpu_field_leaves_older_spec_hashes_alone() -> None:
    assert spec("a").spec_hash() == spec("a", gpus=0).spec_hash() != spec("a", gpus=1).spec_hash()
    assert InstanceSpec.from_dict(spec("a", gpus=2).to_dict()).gpus == 2


# -- the whole container spec, health -------------------------------------------------------

CHECK = HealthcheckSpec(test=["CMD-SHELL", "test -f /tmp/ok"], interval=1.0, timeout=0.5, retries=2)


def test_every_container_option_is_passed_to_the_engine(env: tuple[FakeDocker, Reconciler, Clock]) -> None:
    docker, rec, _ = env
    volumes = [VolumeSpec("volume", "data", "/data"), VolumeSpec("bind", "/etc/app", "/conf", read_only=True)]
    rec.set_desired(DesiredSet(1, [spec("a", entrypoint=["/bin/sh", "-c"], working_dir="/srv", user="1000:1000",
                                        hostname="web-1", volumes=volumes, healthcheck=CHECK, stop_grace_period=3.5,
                                        cpu_limit=0.5, memory_limit=64 << 20)]))
    rec.run_once(wait=True)
    (c,) = docker.containers.values()
    assert c["options"] == {
        "entrypoint": ["/bin/sh", "-c"], "working_dir": "/srv", "user": "1000:1000", "hostname": "web-1",
        "volumes": volumes, "volume_labels": {model.LABEL_MANAGED: "1", model.LABEL_HOST: "host-1"},
        "healthcheck": CHECK, "stop_grace_period": 3.5, "cpu_limit": 0.5, "memory_limit": 64 << 20,
    }
    assert states(rec) == {"a": "running"}


def test_defaults_leave_the_image_and_the_engine_to_decide(env: tuple[FakeDocker, Reconciler, Clock]) -> None:
    docker, rec, _ = env
    rec.set_desired(DesiredSet(1, [spec("a")]))
    rec.run_once(wait=True)
    (c,) = docker.containers.values()
    assert {k: v for k, v in c["options"].items() if k != "volume_labels"} == {
        "entrypoint": None, "working_dir": None, "user": None, "hostname": None, "volumes": [],
        "healthcheck": None, "stop_grace_period": None, "cpu_limit": None, "memory_limit": None}


def test_a_create_the_engine_refuses_is_reported(env: tuple[FakeDocker, Reconciler, Clock]) -> None:
    docker, rec, _ = env
    docker.fail_create = 'invalid mount config for type "bind": bind source path does not exist: /nope'
    rec.set_desired(DesiredSet(1, [spec("a", volumes=[VolumeSpec("bind", "/nope", "/x")])]))
    rec.run_once(wait=True)
    st = rec.statuses()[0]
    assert st.state == model.FAILED and "/nope" in st.error
    assert rec.next_due == 1005.0  # tried again later


def test_health_is_reported_and_follows_the_healthcheck(env: tuple[FakeDocker, Reconciler, Clock]) -> None:
    docker, rec, clock = env
    rec.set_desired(DesiredSet(1, [spec("a", healthcheck=CHECK), spec("b", 2)]))
    rec.run_once(wait=True)
    rec.run_once(wait=True)
    health = {s.instance_id: s.health for s in rec.statuses()}
    assert health == {"a": model.HEALTH_STARTING, "b": ""}
    (cid,) = [k for k, c in docker.containers.items() if c["name"] == "web.1.a"]
    since = next(s.since for s in rec.statuses() if s.instance_id == "a")
    clock.t += 3
    docker.set_health(cid, model.HEALTHY)
    rec.run_once(wait=True)
    st = next(s for s in rec.statuses() if s.instance_id == "a")
    assert (st.state, st.health, st.container_id, st.since) == (model.RUNNING, model.HEALTHY, cid, since)
    assert st.to_dict()["health"] == "healthy"
    assert "health" not in next(s for s in rec.statuses() if s.instance_id == "b").to_dict()


def _go_unhealthy(docker: FakeDocker, rec: Reconciler) -> str:
    (cid,) = [k for k, c in docker.containers.items() if c["state"] == "running"]
    docker.set_health(cid, model.UNHEALTHY, "no /tmp/ok\n")
    rec.run_once(wait=True)
    return cid


@pytest.mark.parametrize("condition", ["any", "on-failure"])
def test_an_unhealthy_container_is_stopped_and_replaced_after_the_backoff(
        condition: str, env: tuple[FakeDocker, Reconciler, Clock]) -> None:
    docker, rec, clock = env
    rec.set_desired(DesiredSet(1, [spec("a", healthcheck=CHECK, stop_grace_period=2.5,
                                        restart=RestartPolicy(condition, delay=2.0))]))  # type: ignore[arg-type]
    rec.run_once(wait=True)
    old = _go_unhealthy(docker, rec)
    assert docker.containers[old]["state"] == "exited" and docker.stop_timeouts[old] == 3  # its grace period
    st = rec.statuses()[0]
    assert (st.state, st.health, st.restarts) == (model.RESTARTING, model.UNHEALTHY, 0)
    assert "unhealthy" in st.error and rec.next_due == clock.t + 2.0
    rec.run_once(wait=True)  # not yet
    assert list(docker.containers) == [old]
    clock.t += 2.0
    rec.run_once(wait=True)
    (new,) = docker.containers
    assert new != old and docker.containers[new]["state"] == "running"
    st = rec.statuses()[0]
    assert (st.state, st.container_id, st.restarts, st.health) == (model.RUNNING, new, 1, model.HEALTH_STARTING)  # not ready before its check passes


def test_unhealthy_with_restart_policy_none_stays_down(env: tuple[FakeDocker, Reconciler, Clock]) -> None:
    docker, rec, clock = env
    rec.set_desired(DesiredSet(1, [spec("a", healthcheck=CHECK, restart=RestartPolicy("none"))]))
    rec.run_once(wait=True)
    old = _go_unhealthy(docker, rec)
    for _ in range(2):
        clock.t += 60
        rec.run_once(wait=True)
    assert list(docker.containers) == [old] and docker.containers[old]["state"] == "exited"  # kept, for its logs
    assert docker.stop_timeouts[old] == 10  # no grace period in the spec: the engine's default
    st = rec.statuses()[0]
    assert (st.state, st.restarts, st.health) == (model.EXITED, 0, model.UNHEALTHY)
    assert st.error == "unhealthy: no /tmp/ok; restart policy is none"


def test_unhealthy_replacements_respect_max_attempts(env: tuple[FakeDocker, Reconciler, Clock]) -> None:
    docker, rec, clock = env
    rec.set_desired(DesiredSet(1, [spec("a", healthcheck=CHECK, restart=RestartPolicy("any", 1, 1.0))]))
    rec.run_once(wait=True)
    _go_unhealthy(docker, rec)
    clock.t += 1.0
    rec.run_once(wait=True)
    assert rec.statuses()[0].restarts == 1
    last = _go_unhealthy(docker, rec)
    clock.t += 60
    rec.run_once(wait=True)
    assert list(docker.containers) == [last]
    st = rec.statuses()[0]
    assert (st.state, st.restarts) == (model.EXITED, 1) and "gave up after 1 restart attempts" in st.error
    assert docker.calls.count(("create", "web.1.a")) == 2


def test_a_spec_change_revives_an_instance_that_gave_up(env: tuple[FakeDocker, Reconciler, Clock]) -> None:
    docker, rec, _ = env
    rec.set_desired(DesiredSet(1, [spec("a", healthcheck=CHECK, restart=RestartPolicy("none"))]))
    rec.run_once(wait=True)
    old = _go_unhealthy(docker, rec)
    rec.set_desired(DesiredSet(2, [spec("a", healthcheck=CHECK, env={"FIXED": "1"}, restart=RestartPolicy("none"))]))
    rec.run_once(wait=True)
    (new,) = docker.containers
    assert new != old and rec.statuses()[0].state == model.RUNNING


@pytest.mark.parametrize("grace, expected", [(None, 10), (0.2, 1), (30.0, 30)])
def test_removed_containers_get_their_own_grace_period(grace: float | None, expected: float,
                                                       env: tuple[FakeDocker, Reconciler, Clock]) -> None:
    docker, rec, _ = env
    rec.set_desired(DesiredSet(1, [spec("a", stop_grace_period=grace), spec("b", 2, stop_grace_period=grace)]))
    rec.run_once(wait=True)
    a, b = docker.containers
    rec.set_desired(DesiredSet(2, [spec("b", 2, stop_grace_period=5.0)]))  # a: gone; b: new spec
    rec.run_once(wait=True)
    assert docker.stop_timeouts == {a: expected, b: expected}
    assert [c["options"]["stop_grace_period"] for c in docker.containers.values()] == [5.0]


def test_the_grace_period_comes_from_the_label_without_an_inspect(env: tuple[FakeDocker, Reconciler, Clock],
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    docker, rec, _ = env
    rec.set_desired(DesiredSet(1, [spec("a", stop_grace_period=3.5), spec("b", 2, stop_grace_period=3.5)]))
    rec.run_once(wait=True)
    a, b = docker.containers
    assert docker.containers[a]["labels"][model.LABEL_STOP_GRACE] == "4"
    del docker.containers[b]["labels"][model.LABEL_STOP_GRACE]  # made by an agent before the label existed
    inspected: list[str] = []
    real = docker.inspect_container
    monkeypatch.setattr(docker, "inspect_container", lambda cid: inspected.append(cid) or real(cid))
    rec.set_desired(DesiredSet(2, []))
    rec.run_once(wait=True)
    assert docker.stop_timeouts == {a: 4, b: 4} and inspected == [b]


def test_engine_events_the_agent_caused_need_no_pass(env: tuple[FakeDocker, Reconciler, Clock]) -> None:
    docker, rec, _ = env
    rec.set_desired(DesiredSet(1, [spec("a")]))
    rec.run_once(wait=True)
    (a,) = docker.containers
    assert rec.ours(a, "start") and not rec.ours(a, "start")  # each expected event once
    assert not rec.ours(a, "die") and not rec.ours("other", "start")  # a crash is not the agent's doing
    rec.set_desired(DesiredSet(2, []))
    rec.run_once(wait=True)
    assert [rec.ours(a, action) for action in ("stop", "die", "destroy", "health_status")] == [True, True, True, False]


def test_stop_first_on_one_host_starts_the_new_instance_after_the_old_one_has_stopped(
        env: tuple[FakeDocker, Reconciler, Clock]) -> None:
    """An update replaced slot 1's instance on this host: never two processes of one slot at once.
    One pass does it all: the old one stops (the new one is created meanwhile), the new one
    starts, the old one is removed."""
    docker, rec, _ = env
    rec.set_desired(DesiredSet(1, [spec("old")]))
    rec.run_once(wait=True)
    (old,) = docker.containers
    rec.set_desired(DesiredSet(2, [spec("new")]))  # same service, same slot
    rec.run_once(wait=True)
    (new,) = docker.containers
    assert docker.containers[new]["name"] == "web.1.new" and docker.containers[new]["state"] == "running"
    assert docker.calls.index(("stop", old)) < docker.calls.index(("start", new)) < docker.calls.index(("remove", old))
    assert [name for op, name in docker.calls if op == "create"] == ["web.1.old", "web.1.new"]
    assert states(rec) == {"new": "running"}


def test_stop_first_removes_the_old_one_even_if_the_new_one_cannot_start(
        env: tuple[FakeDocker, Reconciler, Clock]) -> None:
    docker, rec, _ = env
    rec.set_desired(DesiredSet(1, [spec("old")]))
    rec.run_once(wait=True)
    docker.fail_create = "no space left on device"
    rec.set_desired(DesiredSet(2, [spec("new")]))
    rec.run_once(wait=True)
    assert docker.containers == {}
    assert states(rec) == {"new": "failed"}
    docker.fail_create = ""
    rec.run_once(wait=True)  # later: an ordinary start
    assert [c["name"] for c in docker.containers.values()] == ["web.1.new"] and states(rec) == {"new": "running"}


def test_a_settled_pass_gives_the_pool_no_work(env: tuple[FakeDocker, Reconciler, Clock]) -> None:
    docker, rec, _ = env
    rec.set_desired(DesiredSet(1, [spec("a"), spec("b", 2)]))
    rec.run_once(wait=True)
    inspected: list[str] = []
    real = docker.inspect_container
    docker.inspect_container = lambda cid: inspected.append(cid) or real(cid)  # type: ignore[method-assign]
    submitted: list[object] = []
    rec._pool.submit = lambda *a, **k: submitted.append(a)  # type: ignore[method-assign]
    rec.run_once(wait=True)
    assert submitted == [] and inspected == []


def _eventually(pred: Any, timeout: float = 5.0) -> bool:
    import time

    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.01)
    return False


def test_a_new_instance_starts_as_its_desired_set_arrives(env: tuple[FakeDocker, Reconciler, Clock]) -> None:
    """Once the engine has been listed, an instance new to the host starts without waiting for a pass
    (a rolling update's next slot moves on sooner); stop-first still stops its slot's old one first."""
    docker, rec, _ = env
    rec.set_desired(DesiredSet(1, [spec("old"), spec("b", 2)]))
    assert docker.containers == {}, "no listing yet: only a pass starts anything"
    rec.run_once(wait=True)
    rec.run_once(wait=True)  # a listing made after its jobs: it shows all there is
    (old,) = [k for k, c in docker.containers.items() if c["name"] == "web.1.old"]
    rec.set_desired(DesiredSet(2, [spec("new"), spec("b", 2), spec("c", 3)]))  # no run_once
    assert _eventually(lambda: sorted(c["name"] for c in docker.containers.values()) == ["web.1.new", "web.2.b",
                                                                                       "web.3.c"])
    assert _eventually(lambda: states(rec) == {"new": "running", "b": "running", "c": "running"})
    new = next(k for k, c in docker.containers.items() if c["name"] == "web.1.new")
    assert docker.calls.index(("stop", old)) < docker.calls.index(("start", new))
    rec.run_once(wait=True)  # the pass that follows finds nothing to add
    assert [op for op, _ in docker.calls].count("create") == 4


def test_a_start_first_step_needs_no_pass_and_no_listing(env: tuple[FakeDocker, Reconciler, Clock]) -> None:
    """start-first: a new instance joins the slot, later the old one leaves; both desired sets are acted on at
    once, from the last listing, and the agent is told that no pass is needed for them."""
    docker, rec, _ = env
    rec.set_desired(DesiredSet(1, [spec("old"), spec("b", 2)]))
    rec.run_once(wait=True)
    rec.run_once(wait=True)
    listings: list[int] = []
    real = docker.list_containers
    docker.list_containers = lambda **kw: listings.append(1) or real(**kw)  # type: ignore[method-assign]
    (old,) = [k for k, c in docker.containers.items() if c["name"] == "web.1.old"]
    assert rec.set_desired(DesiredSet(2, [spec("old"), spec("new"), spec("b", 2)])) is True
    assert _eventually(lambda: states(rec).get("new") == "running" and not rec._busy)
    assert rec.set_desired(DesiredSet(3, [spec("new"), spec("b", 2)])) is True
    assert _eventually(lambda: old not in docker.containers and not rec._busy)
    assert sorted(c["name"] for c in docker.containers.values()) == ["web.1.new", "web.2.b"] and listings == []
    rec.run_once(wait=True)  # the next pass finds nothing left to do
    assert len(listings) == 1 and [op for op, _ in docker.calls].count("remove") == 1


@pytest.mark.parametrize("change", ["ingress port", "spec changed in place", "no listing yet"])
def test_what_needs_a_pass_still_asks_for_one(change: str, env: tuple[FakeDocker, Reconciler, Clock]) -> None:
    docker, rec, _ = env
    rec.set_desired(DesiredSet(1, [spec("a")]))
    if change != "no listing yet":
        rec.run_once(wait=True)
        rec.run_once(wait=True)
    if change == "ingress port":
        nxt = [spec("a"), spec("b", 2, ports=[model.PortSpec(8080, 80, mode="ingress")])]
    elif change == "spec changed in place":
        nxt = [spec("a", env={"X": "1"})]
    else:
        nxt = [spec("a"), spec("b", 2)]
    assert rec.set_desired(DesiredSet(2, nxt)) is False


def test_an_instance_in_an_ingress_rotation_leaves_only_in_a_pass(env: tuple[FakeDocker, Reconciler, Clock]) -> None:
    """Its route goes first, then it drains, then it stops: never stopped while traffic may still reach it."""
    docker, rec, _ = env
    web = model.PortSpec(8080, 80, mode="ingress")
    rec.set_desired(DesiredSet(1, [spec("old", ports=[web]), spec("new", 2, ports=[web])]))
    rec.run_once(wait=True)
    rec.run_once(wait=True)
    (old,) = [k for k, c in docker.containers.items() if c["name"] == "web.1.old"]
    assert rec.set_desired(DesiredSet(2, [spec("new", 2, ports=[web])])) is False
    time.sleep(0.05)
    assert old in docker.containers and ("stop", old) not in docker.calls  # left to the pass
    rec.run_once(wait=True)
    assert old not in docker.containers


def test_a_pass_that_finds_a_job_doing_its_work_asks_for_no_second_pass(
        env: tuple[FakeDocker, Reconciler, Clock]) -> None:
    """While an update keeps jobs busy, a pass that wants what a busy job already does must not have that
    job's end start another pass (whose listing would find other jobs busy, and so on); a pass that wants
    other work than the busy job does still gets its second look."""
    docker, rec, _ = env
    pokes: list[int] = []
    rec._on_work_done = lambda: pokes.append(1)
    rec.set_desired(DesiredSet(1, [spec("a")]))
    rec.run_once(wait=True)
    rec.run_once(wait=True)
    gate = threading.Event()
    real_start = docker.start
    docker.start = lambda cid: (gate.wait(10), real_start(cid))[1]  # type: ignore[method-assign]
    assert rec.set_desired(DesiredSet(2, [spec("a"), spec("new", 2)])) is True  # its job starts at once
    assert _eventually(lambda: any(c["name"] == "web.2.new" for c in docker.containers.values()))
    rec.run_once()  # a pass while the job waits in start: it wants the very same
    rec._last_pass = float("-inf")
    rec._desired = DesiredSet(2, list(rec.desired.instances))  # a pass again, not put off as a burst
    rec.run_once()
    gate.set()
    assert _eventually(lambda: states(rec).get("new") == "running" and not rec._busy)
    assert pokes == []
    gate.clear()
    assert rec.set_desired(DesiredSet(3, [spec("a"), spec("new", 2), spec("c", 3)])) is True
    assert _eventually(lambda: "c" in rec._busy)
    assert rec.set_desired(DesiredSet(4, [spec("a"), spec("new", 2), spec("c", 3, env={"X": "1"})])) is False
    rec.run_once()  # wants c with its new spec: not what the busy job does
    gate.set()
    assert _eventually(lambda: not rec._busy and pokes == [1])
    rec.run_once(wait=True)
    assert _eventually(lambda: [c["env"] for c in docker.containers.values() if c["name"] == "web.3.c"] == [{"X": "1"}])


def test_a_pass_never_duplicates_what_a_job_made_while_the_engine_was_listed(
        env: tuple[FakeDocker, Reconciler, Clock]) -> None:
    docker, rec, _ = env
    rec.set_desired(DesiredSet(1, [spec("a")]))
    rec.run_once(wait=True)
    rec.run_once(wait=True)
    real_list = docker.list_containers

    def list_then_create(*args: Any, **kw: Any) -> Any:
        out = real_list(*args, **kw)  # the listing is made, then a job for "new" creates its container
        docker.list_containers = real_list  # type: ignore[method-assign]
        rec.set_desired(DesiredSet(2, [spec("a"), spec("new", 2)]))
        assert _eventually(lambda: states(rec).get("new") == "running" and not rec._busy)  # and is done
        return out
    docker.list_containers = list_then_create  # type: ignore[method-assign]
    rec.run_once(wait=True)
    assert sorted(c["name"] for c in docker.containers.values()) == ["web.1.a", "web.2.new"]
    assert [name for op, name in docker.calls if op == "create"].count("web.2.new") == 1
    assert states(rec) == {"a": "running", "new": "running"}


def test_an_update_asks_the_engine_about_its_image_once(env: tuple[FakeDocker, Reconciler, Clock]) -> None:
    """During a burst of starts, the image is known to be there and to have no health check of its own:
    no image look-up before each create, no inspect after each start (for a minute)."""
    docker, rec, clock = env
    asked: list[str] = []
    real_present, real_inspect = docker.image_present, docker.inspect_container
    docker.image_present = lambda ref: asked.append("image") or real_present(ref)  # type: ignore[method-assign]
    docker.inspect_container = lambda cid: asked.append("inspect") or real_inspect(cid)  # type: ignore[method-assign]
    rec.set_desired(DesiredSet(1, [spec("a")]))
    rec.run_once(wait=True)
    assert asked == ["image", "inspect"]
    rec.set_desired(DesiredSet(2, [spec("a"), spec("b", 2), spec("c", 3, healthcheck=CHECK)]))
    rec.run_once(wait=True)
    assert asked.count("image") == 1
    assert asked.count("inspect") == 2, "only c's: its own health check"
    assert {s.instance_id: s.health for s in rec.statuses()} == {"a": "", "b": "", "c": model.HEALTH_STARTING}
    clock.t += 61
    rec.set_desired(DesiredSet(3, [spec("a"), spec("b", 2), spec("c", 3, healthcheck=CHECK), spec("d", 4)]))
    rec.run_once(wait=True)
    assert asked.count("image") == 2 and asked.count("inspect") == 3, "after a minute: asked again"


def test_passes_asked_for_in_a_burst_make_one_listing(env: tuple[FakeDocker, Reconciler, Clock]) -> None:
    """Engine events come in bursts (die, stop, destroy): a pass within MIN_PASS_GAP of the last one is put
    off until the gap has passed (next_due), unless a new desired set came."""
    from corral.agent.reconciler import MIN_PASS_GAP

    docker, rec, clock = env
    listings: list[int] = []
    real = docker.list_containers
    docker.list_containers = lambda **kw: listings.append(1) or real(**kw)  # type: ignore[method-assign]
    rec.set_desired(DesiredSet(1, [spec("a")]))
    rec.run_once()
    rec.next_due = float("inf")
    rec.run_once()
    rec.run_once()
    assert len(listings) == 1 and clock.t < rec.next_due <= clock.t + MIN_PASS_GAP
    rec.set_desired(DesiredSet(2, [spec("a"), spec("b", 2)]))
    rec.run_once()  # a new desired set: at once
    assert len(listings) == 2
    import time

    time.sleep(MIN_PASS_GAP)
    rec.run_once()
    assert len(listings) == 3
    rec.run_once(wait=True)  # wait: always a pass (tests, and the first pass)
    assert len(listings) == 4
