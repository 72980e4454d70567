"""The agent's reconciler against an in-memory engine: convergence, ownership, restarts."""

from __future__ import annotations

from typing import Any

import pytest

from corral import model
from corral.agent.reconciler import Reconciler
from corral.agent.runtime.docker import DockerError
from corral.model import DesiredSet, InstanceSpec, RestartPolicy
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
