"""The whole container spec on the real root dockerd: what DockerClient.create_container asks the
engine for, what the engine then does with it, and the Reconciler replacing an unhealthy container.

Engine, registry and image come from the test-bed fixtures (``testbed/fixtures.py``). Every
container and volume carries this run's label and is removed at the end, also when a test fails.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from corral import model
from corral.agent.reconciler import Reconciler
from corral.agent.runtime.docker import DockerClient, DockerError, health_of
from corral.model import DesiredSet, HealthcheckSpec, InstanceSpec, RestartPolicy, VolumeSpec
from testbed.images import BuiltImage

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

RUN_ID = uuid.uuid4().hex[:12]
RUN_LABEL = "io.corral.test-run"
LABELS = {RUN_LABEL: RUN_ID}
T = TypeVar("T")


@pytest.fixture(scope="module")
def client(docker_host: str) -> Iterator[DockerClient]:
    c = DockerClient(docker_host)
    yield c
    for info in c.list_containers(LABELS):
        c.remove(info.id, force=True)
    for volume in c.list_volumes(LABELS):
        c.remove_volume(volume)


@pytest.fixture(scope="module")
def image(busybox_image: BuiltImage, client: DockerClient) -> str:
    client.pull(busybox_image.ref)
    return busybox_image.ref


@pytest.fixture
def name(request: pytest.FixtureRequest) -> str:
    return f"corral-rt-{RUN_ID}-{request.node.name[:30]}"


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 15.0, every: float = 0.2) -> T:
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(every)


def run_to_exit(client: DockerClient, cid: str) -> tuple[int, list[str]]:
    client.start(cid)

    def exited() -> dict[str, Any] | None:
        state: dict[str, Any] = client.inspect_container(cid)["State"]
        return state if state["Status"] == "exited" else None

    state = wait_for("the container to exit", exited)
    return int(state["ExitCode"]), [line.decode() for _, line in client.logs(cid)]


def test_entrypoint_working_dir_user_hostname_and_limits(client: DockerClient, image: str, name: str) -> None:
    cid = client.create_container(
        name, image, entrypoint=["sh", "-c"], command=['echo "$(id -u):$(id -g) $(pwd) $(hostname)"'],
        working_dir="/srv/app", user="1000:1000", hostname="corral-h1", labels=LABELS,
        cpu_limit=0.5, memory_limit=64 << 20, stop_grace_period=2.5)
    data = client.inspect_container(cid)
    assert data["Config"]["Entrypoint"] == ["sh", "-c"]
    assert (data["Config"]["WorkingDir"], data["Config"]["User"]) == ("/srv/app", "1000:1000")
    assert data["Config"]["StopTimeout"] == 3  # whole seconds, rounded up
    assert (data["HostConfig"]["NanoCpus"], data["HostConfig"]["Memory"]) == (500_000_000, 64 << 20)
    assert run_to_exit(client, cid) == (0, ["1000:1000 /srv/app corral-h1"])


def test_a_named_volume_outlives_its_container_and_a_read_only_bind_stays_so(
        client: DockerClient, image: str, name: str, tmp_path: Path) -> None:
    (tmp_path / "hello").write_text("from the host\n")
    volume = f"corral-rt-{RUN_ID}-data"
    mounts = [VolumeSpec("volume", volume, "/data"), VolumeSpec("bind", str(tmp_path), "/conf", read_only=True)]

    def create(script: str) -> str:
        return client.create_container(name, image, command=["sh", "-c", script], labels=LABELS, volumes=mounts,
                                       volume_labels=LABELS)

    first = create("echo kept > /data/f; cat /conf/hello; touch /conf/new 2>/dev/null && echo WROTE || echo RO")
    assert run_to_exit(client, first) == (0, ["from the host", "RO"])
    assert not (tmp_path / "new").exists()
    assert volume in client.list_volumes(LABELS)  # created on first use, with the labels asked for
    mount_types = {m["Destination"]: (m["Type"], m["RW"]) for m in client.inspect_container(first)["Mounts"]}
    assert mount_types == {"/data": ("volume", True), "/conf": ("bind", False)}
    client.remove(first)
    second = create("cat /data/f")  # the same instance, recreated
    assert run_to_exit(client, second) == (0, ["kept"])


def test_a_missing_bind_source_names_the_path(client: DockerClient, image: str, name: str) -> None:
    missing = f"/nonexistent-{RUN_ID}/conf"
    with pytest.raises(DockerError) as info:
        client.create_container(name, image, labels=LABELS, volumes=[VolumeSpec("bind", missing, "/conf")])
    assert missing in info.value.message and info.value.status == 400


def test_a_healthcheck_turns_healthy_and_shows_in_list_and_inspect(
        client: DockerClient, image: str, name: str) -> None:
    check = HealthcheckSpec(["CMD-SHELL", "test -f /tmp/ok"], interval=1.0, timeout=1.0, start_period=0.5, retries=2)
    cid = client.create_container(name, image, command=["sh", "-c", "sleep 1; touch /tmp/ok; exec sleep 60"],
                                  labels=LABELS, healthcheck=check)
    assert client.inspect_container(cid)["Config"]["Healthcheck"] == {
        "Test": ["CMD-SHELL", "test -f /tmp/ok"], "Interval": 10**9, "Timeout": 10**9,
        "StartPeriod": 500_000_000, "Retries": 2}
    client.start(cid)

    def listed() -> str:
        (info,) = [c for c in client.list_containers(LABELS) if c.id == cid]
        return info.health

    assert listed() == model.HEALTH_STARTING
    wait_for("healthy", lambda: listed() == model.HEALTHY)
    assert health_of(client.inspect_container(cid)) == model.HEALTHY
    client.remove(cid, force=True)

    off = client.create_container(name, image, labels=LABELS, healthcheck=HealthcheckSpec(disable=True))
    assert client.inspect_container(off)["Config"]["Healthcheck"] == {"Test": ["NONE"]}


def test_the_reconciler_replaces_an_unhealthy_container_until_max_attempts(client: DockerClient, image: str) -> None:
    host = f"rt-{RUN_ID}"
    spec = InstanceSpec(
        id=f"i-{RUN_ID}", name=f"corral-rt-{RUN_ID}-sick", service="sick", slot=1, image=image,
        command=["sh", "-c", "exec sleep 120"], labels=LABELS, stop_grace_period=1.0,
        healthcheck=HealthcheckSpec(["CMD-SHELL", "test -f /tmp/ok"], interval=1.0, timeout=1.0, retries=2),
        restart=RestartPolicy("any", max_attempts=1, delay=0.5))
    rec = Reconciler(client, host, on_change=lambda: None)
    rec.set_desired(DesiredSet(1, [spec]))
    seen: list[model.InstanceStatus] = []

    def status_where(cond: Callable[[model.InstanceStatus], bool]) -> Callable[[], model.InstanceStatus | None]:
        def probe() -> model.InstanceStatus | None:
            rec.run_once(wait=True)
            (st,) = rec.statuses()
            seen.append(st)
            return st if cond(st) else None
        return probe

    first = wait_for("running", status_where(lambda s: s.state == model.RUNNING))
    wait_for("replaced", status_where(lambda s: s.state == model.RUNNING and s.restarts == 1
                                      and s.container_id != first.container_id), timeout=20)
    final = wait_for("given up", status_where(lambda s: s.state == model.EXITED), timeout=20)
    assert final.restarts == 1 and final.health == model.UNHEALTHY
    assert "gave up after 1 restart attempts" in final.error
    states = [(s.state, s.health) for s in seen]
    assert (model.RUNNING, model.HEALTH_STARTING) in states and (model.RESTARTING, model.UNHEALTHY) in states
    owned = client.list_containers({model.LABEL_HOST: host})
    assert [(c.id, c.state) for c in owned] == [(final.container_id, "exited")]  # the first was removed
    assert first.container_id != final.container_id
    rec.set_desired(DesiredSet(2, []))
    rec.run_once(wait=True)
    assert client.list_containers({model.LABEL_HOST: host}) == []
