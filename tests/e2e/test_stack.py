"""End to end: a realistic compose stack on three namespaced hosts, driven by the real CLI.

The stack (stack_samples/shop.yaml, images from testbed/stack_images.py): ``web`` (3
health-checked busybox httpd replicas behind ingress port 8080, start-first updates that
roll back on failure), ``kv`` (a Python key-value store whose data lives in a named
volume, pinned to the host labelled kv=yes), ``probe`` (global) and ``armtool`` (an
arm64-only image, run emulated on these amd64 hosts). Every step goes through
``python -m corral`` as a user would run it; the engines of the hosts are checked
directly. The tests run in file order and share the deployed stack.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed.cluster import wait_for
from testbed.images import BuiltImage
from testbed.stack_images import StackImages, build_stack_images
from tests.e2e.conftest import Cluster, Node

pytestmark = pytest.mark.e2e

HOST_PREFIX = "stk"
HOST_COUNT = 3
HOST_LABELS = [{"kv": "yes"}, {}, {}]

SAMPLES = Path(__file__).parent / "stack_samples"
SHOP = SAMPLES / "shop.yaml"
STACK = "shop"
WEB, KV, PROBE, ARM = (f"{STACK}_{s}" for s in ("web", "kv", "probe", "armtool"))
ALL = sorted([WEB, KV, PROBE, ARM])
WEB_PORT, KV_PORT = 8080, 7000


# ---------------------------------------------------------------- helpers (also for test_stack_faults)


class Cli:
    """``python -m corral`` against the cluster's server (CORRAL_URL/TOKEN, a private config)."""

    def __init__(self, cluster: Cluster, config: Path) -> None:
        self.env = {**os.environ, "CORRAL_URL": cluster.server.url,
                    "CORRAL_TOKEN": cluster.server.admin_token, "CORRAL_CONFIG": str(config),
                    "COLUMNS": "200"}
        for var in ("WEB_TAG", "WEB_DELAY"):  # the compose file's variables come from each call
            self.env.pop(var, None)

    def __call__(self, *args: str | Path, env: dict[str, str] | None = None, check: bool = True,
                 timeout: float = 180) -> subprocess.CompletedProcess[str]:
        p = subprocess.run([sys.executable, "-m", "corral", *map(str, args)], capture_output=True,
                           text=True, env={**self.env, **(env or {})}, timeout=timeout)
        if check:
            assert p.returncode == 0, (args, p.returncode, p.stdout[-3000:], p.stderr[-3000:])
        return p

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "-o", "json").stdout)

    def deploy(self, *, detach: bool = False, check: bool = True, timeout: float = 180,
               **variables: str) -> subprocess.CompletedProcess[str]:
        args = ["stack", "deploy", "-c", str(SHOP), STACK] + (["--detach"] if detach else [])
        return self(*args, env=variables, check=check, timeout=timeout)


def outcomes(deploy_output: str) -> dict[str, list[str]]:
    """``created: a, b`` lines of ``stack deploy`` -> {"created": ["a", "b"]}."""
    out: dict[str, list[str]] = {}
    for line in deploy_output.splitlines():
        key, sep, rest = line.partition(": ")
        if sep and key in ("created", "updated", "scaled", "removed", "unchanged"):
            out[key] = sorted(x.strip() for x in rest.split(","))
    return out


_FETCH = """
import json, sys, urllib.error, urllib.request
method, url, body, timeout = json.loads(sys.argv[1])
req = urllib.request.Request(url, data=None if body is None else body.encode(), method=method)
try:
    with urllib.request.urlopen(req, timeout=timeout) as r:
        out = [r.status, dict(r.headers), r.read().decode()]
except urllib.error.HTTPError as e:
    out = [e.code, dict(e.headers), e.read().decode()]
print(json.dumps(out))
"""


def fetch(node: Node, port: int, path: str = "/", method: str = "GET", body: str | None = None,
          timeout: float = 5.0) -> tuple[int, dict[str, str], str]:
    """An HTTP request to 127.0.0.1:port from inside the host's own network namespace."""
    arg = json.dumps([method, f"http://127.0.0.1:{port}{path}", body, timeout])
    p = subprocess.run(["nsenter", f"--net={node.host.netns_path}", sys.executable, "-c", _FETCH, arg],
                       capture_output=True, text=True, timeout=timeout + 15)
    if p.returncode != 0:
        raise RuntimeError(f"{path} on {node.host.name}:{port}: {p.stderr.strip()[-500:]}")
    status, headers, text = json.loads(p.stdout)
    return int(status), {k.lower(): v for k, v in headers.items()}, str(text)


def fetch_ok(node: Node, port: int, path: str = "/", timeout: float = 30) -> tuple[int, dict[str, str], str]:
    """``fetch`` until it answers 200."""
    def ok() -> tuple[int, dict[str, str], str] | None:
        r = fetch(node, port, path)
        return r if r[0] == 200 else None

    return wait_for(ok, timeout, f"200 from {node.host.name}:{port}{path}", interval=0.3)  # type: ignore[no-any-return]


def holding(needle: str, text: str) -> str | None:
    return text if needle in text else None


def node_named(cluster: Cluster, name: str) -> Node:
    return next(n for n in cluster.nodes if n.host.name == name)


def running_containers(node: Node, service: str) -> list[Any]:
    return [c for c in node.containers(service) if c.state == "running"]


def engine_counts(cluster: Cluster, service: str) -> dict[str, int]:
    """Running containers of the service on each host's engine."""
    return {n.host.name: len(running_containers(n, service)) for n in cluster.nodes}


def converged(cluster: Cluster, name: str, n: int) -> bool:
    svc = cluster.service(name)
    return bool(svc["running"] == n and len(svc["instances"]) == n and svc["status"] == "converged"
                and all(i["state"] == "running" for i in svc["instances"]))


def web_pages(cluster: Cluster) -> dict[str, str]:
    """host -> the page its ingress port serves (from inside that host)."""
    return {n.host.name: fetch(n, WEB_PORT)[2].strip() for n in cluster.nodes}


def assert_web_serves(cluster: Cluster, version: str) -> None:
    """Every host that runs web answers on 8080 with ``web <version> on <hostname>`` of one of
    its own ready containers (the ingress proxy forwards to local instances only, so a host
    that runs none does not answer)."""
    wait_for(lambda: sum(engine_counts(cluster, WEB).values()) == 3, 30, "three web containers (old ones gone)")
    for node in cluster.nodes:
        local = {c.id[:12] for c in running_containers(node, WEB)}
        if not local:
            continue

        def page(node: Node = node, local: set[str] = local) -> str | None:
            status, _, text = fetch(node, WEB_PORT)
            words = text.split()
            ok = status == 200 and words[:2] == ["web", version] and words[-1] in local
            return text if ok else None

        wait_for(page, 20, f"web {version} on {node.host.name}:{WEB_PORT}", interval=0.3)


def web_images(cluster: Cluster) -> set[str]:
    return {i["image"] for i in cluster.service(WEB)["instances"]}


class Sampler:
    """Samples a service while something happens: the server's running count and instance
    count, and the ready (running, not unhealthy/starting) containers on the engines."""

    def __init__(self, cluster: Cluster, name: str, interval: float = 0.25) -> None:
        self.cluster, self.name, self.interval = cluster, name, interval
        self.samples: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.errors: list[str] = []

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        with self.cluster.api() as api:
            while not self._stop.is_set():
                try:
                    svc = api.get(f"/api/v1/services/{self.name}").json()
                    ready = 0
                    for node in self.cluster.nodes:
                        ready += sum(1 for c in node.containers(self.name) if c.state == "running"
                                     and c.health not in ("starting", "unhealthy"))
                    self.samples.append({"t": time.monotonic(), "running": svc["running"],
                                         "instances": len(svc["instances"]), "ready": ready,
                                         "update": (svc.get("update") or {}).get("state")})
                except Exception as exc:  # a server restart in the fault tests, say
                    self.errors.append(repr(exc))
                self._stop.wait(self.interval)

    def minimum(self, key: str) -> int:
        assert len(self.samples) >= 5, f"too few samples: {self.samples} {self.errors[-3:]}"
        return min(s[key] for s in self.samples)

    def maximum(self, key: str) -> int:
        assert self.samples, self.errors[-3:]
        return max(s[key] for s in self.samples)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def images(registry: str, busybox_image: BuiltImage) -> StackImages:
    return build_stack_images(registry)


@pytest.fixture(scope="module")
def cli(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Cli:
    return Cli(cluster, tmp_path_factory.mktemp("cli") / "config.json")


@pytest.fixture(scope="module")
def shop(cluster: Cluster, cli: Cli, images: StackImages) -> Iterator[subprocess.CompletedProcess[str]]:
    """The stack, deployed with the CLI (which watches until it converges)."""
    t0 = time.monotonic()
    p = cli.deploy(timeout=240)
    print(f"stack deploy took {time.monotonic() - t0:.1f}s")
    yield p
    cli("stack", "rm", STACK, check=False)


# ---------------------------------------------------------------- deploy


def test_deploy_converges_and_serves(cluster: Cluster, cli: Cli, images: StackImages,
                                     shop: subprocess.CompletedProcess[str]) -> None:
    assert outcomes(shop.stdout) == {"created": ALL}, shop.stdout
    for name, n in ((WEB, 3), (KV, 1), (PROBE, 3), (ARM, 1)):
        wait_for(lambda name=name, n=n: converged(cluster, name, n), 60, f"{name} converged")

    # web: one replica per host (spread), each pinned to the amd64 build of web:1
    # (`running` counts an instance whose health check has not passed yet: wait for healthy)
    web = cluster.wait_service(WEB, lambda s: all(i["health"] == "healthy" for i in s["instances"]), 20,
                               "web healthy")
    assert sorted(i["host_name"] for i in web["instances"]) == ["stk1", "stk2", "stk3"]
    assert web_images(cluster) == {images.web1.by_digest("linux/amd64")}
    assert engine_counts(cluster, WEB) == {"stk1": 1, "stk2": 1, "stk3": 1}
    # kv: on the kv=yes host, with the stack's named volume mounted at /data
    kv = cluster.service(KV)
    assert [i["host_name"] for i in kv["instances"]] == ["stk1"]
    kv_node = node_named(cluster, "stk1")
    (kv_container,) = running_containers(kv_node, KV)
    mounts = kv_node.docker.inspect_container(kv_container.id)["Mounts"]
    assert [(m["Type"], m["Name"], m["Destination"]) for m in mounts] == [("volume", "shop_kvdata", "/data")]
    # probe: one on every host
    assert sorted(i["host_name"] for i in cluster.service(PROBE)["instances"]) == ["stk1", "stk2", "stk3"]
    assert engine_counts(cluster, PROBE) == {"stk1": 1, "stk2": 1, "stk3": 1}
    # armtool: arm64 only, so emulated; really aarch64 code under qemu
    (arm,) = cluster.service(ARM)["instances"]
    assert arm["platform"] == "linux/arm64" and arm["emulated"] and arm["host_platform"] == "linux/amd64"
    assert arm["image"] == images.armtool.by_digest("linux/arm64")
    ps = cli("stack", "ps", STACK).stdout
    arm_line = next(line for line in ps.splitlines() if f"{ARM}.1" in line)
    assert "EMULATED" in arm_line and "linux/arm64" in arm_line, ps
    assert sum("EMULATED" in line for line in ps.splitlines()) == 1, ps
    with cluster.api() as c:
        logs = wait_for(lambda: holding("armtool aarch64", c.get(f"/api/v1/services/{ARM}/logs",
                                                                 params={"tail": 3}).text),
                        30, "armtool's uname -m")
    assert f"{ARM}.1@{arm['host_name']} | armtool aarch64" in logs

    # the published port answers inside every host, from that host's own web container
    assert_web_serves(cluster, "v1")
    status, headers, _ = fetch(kv_node, WEB_PORT, "/health")
    assert status == 200


def test_redeploying_the_same_file_changes_nothing(cluster: Cluster, cli: Cli,
                                                   shop: subprocess.CompletedProcess[str]) -> None:
    before = {n.host.name: sorted(c.id for c in n.containers()) for n in cluster.nodes}
    versions = {name: cluster.service(name)["version"] for name in ALL}
    p = cli.deploy()
    assert outcomes(p.stdout) == {"unchanged": ALL}, p.stdout + p.stderr
    time.sleep(2)  # what a change would have set off has had time to start
    assert {n.host.name: sorted(c.id for c in n.containers()) for n in cluster.nodes} == before
    assert {name: cluster.service(name)["version"] for name in ALL} == versions
    assert cluster.service(PROBE)["replicas"] == 3  # the global one: every host, not the file's default 1


def test_stack_ls_services_ps(cluster: Cluster, cli: Cli, shop: subprocess.CompletedProcess[str]) -> None:
    (row,) = [s for s in cli.json("stack", "ls") if s["name"] == STACK]
    assert row == {"name": STACK, "services": 4, "running": 8, "desired": 8, "status": "converged"}, row
    table = cli("stack", "ls").stdout
    assert any(line.split()[:3] == [STACK, "4", "8/8"] and "converged" in line
               for line in table.splitlines()), table

    services = {s["name"]: s for s in cli.json("stack", "services", STACK)}
    assert sorted(services) == ALL
    assert {n: (s["running"], s["desired"], s["stack"]) for n, s in services.items()} == {
        WEB: (3, 3, STACK), KV: (1, 1, STACK), PROBE: (3, 3, STACK), ARM: (1, 1, STACK)}
    assert services[PROBE]["mode"] == "global" and services[ARM]["allow_emulation"] is True
    table = cli("stack", "services", STACK).stdout
    for name in ALL:
        assert name in table, table
    assert "8080->8000/tcp" in table, table

    ps = cli.json("stack", "ps", STACK)
    assert sorted(i["name"] for i in ps) == sorted(
        [f"{WEB}.{k}" for k in (1, 2, 3)] + [f"{KV}.1", f"{ARM}.1"] + [f"{PROBE}.{i['slot']}" for i in ps
                                                                       if i["service"] == PROBE])
    assert len(ps) == 8 and {i["state"] for i in ps} == {"running"}
    assert cli("stack", "ps", "nosuchstack", check=False).returncode == 1


# ---------------------------------------------------------------- kv: data in a named volume


def test_kv_data_survives_container_replacement(cluster: Cluster, cli: Cli,
                                                shop: subprocess.CompletedProcess[str]) -> None:
    node = node_named(cluster, "stk1")
    status, headers, _ = fetch_ok(node, KV_PORT, "/_health")
    first = headers["x-kv-host"], headers["x-kv-started"]
    assert fetch(node, KV_PORT, "/cart-42", "PUT", "3 apples, 1 pear")[0] == 201
    assert fetch(node, KV_PORT, "/cart-42")[2] == "3 apples, 1 pear"
    (old,) = running_containers(node, KV)
    overlap = 0

    for generation in ("2", "1"):  # replaced twice; the second brings it back to the file's spec
        with Sampler(cluster, KV, interval=0.1) as sampler:
            p = cli("service", "update", KV, "--env", f"KV_GENERATION={generation}")
            assert "rolling update started" in p.stdout, p.stdout
            svc = cluster.wait_service(KV, lambda s: (s["update"] or {}).get("state") == "completed"
                                       and s["running"] == 1, 60, "kv update completed")
            (new,) = wait_for(lambda old_id=old.id: (r := running_containers(node, KV)) and len(r) == 1
                              and r[0].id != old_id and r, 30, "only the new kv container running")
        overlap = max(overlap, sampler.maximum("ready"))
        (inst,) = svc["instances"]
        assert inst["host_name"] == "stk1" and inst["version"] == svc["version"]
        env = node.docker.inspect_container(new.id)["Config"]["Env"]
        assert f"KV_GENERATION={generation}" in env
        status, headers, text = fetch_ok(node, KV_PORT, "/cart-42")
        assert text == "3 apples, 1 pear"
        assert (headers["x-kv-host"], headers["x-kv-started"]) != first  # really another process
        assert headers["x-kv-host"] == new.id[:12]
        first, old = (headers["x-kv-host"], headers["x-kv-started"]), new
    assert sum(engine_counts(cluster, KV).values()) == 1
    assert outcomes(cli.deploy().stdout) == {"unchanged": ALL}  # back to what the file says
    assert overlap <= 1, f"stop-first: {overlap} kv containers ready at once on one named volume"


# ---------------------------------------------------------------- rolling updates of web


def test_failed_update_rolls_back_without_dropping_below_replicas(cluster: Cluster, cli: Cli,
                                                                  images: StackImages,
                                                                  shop: subprocess.CompletedProcess[str]) -> None:
    version = cluster.service(WEB)["version"]
    with cluster.api() as c:
        last_event = max([0] + [e["id"] for e in c.get("/api/v1/events").json()])
    with Sampler(cluster, WEB) as sampler:
        # a pause between batches, as a cautious operator would set: the first batch's failure
        # (web:bad exits 1 at once) shows within the monitor window before the second starts
        p = cli.deploy(WEB_TAG="bad", WEB_DELAY="8s", detach=True)
        assert outcomes(p.stdout) == {"updated": [WEB], "unchanged": sorted([KV, PROBE, ARM])}, p.stdout
        svc = cluster.wait_service(WEB, lambda s: (s["update"] or {}).get("state") in
                                   ("rollback_completed", "completed", "paused", "rollback_paused"),
                                   90, "the update to end")
        assert svc["update"]["state"] == "rollback_completed", svc["update"]
        svc = cluster.wait_running(WEB, 3, 60)
    assert svc["version"] == version + 2  # the bad version, then the rollback
    assert svc["image"] == images.web1.ref
    assert web_images(cluster) == {images.web1.by_digest("linux/amd64")}
    # replicas 3, parallelism 1: never fewer than replicas - parallelism running
    assert sampler.minimum("running") >= 2, sampler.samples
    assert sampler.minimum("ready") >= 2, sampler.samples
    assert sampler.maximum("instances") <= 4, sampler.samples
    wait_for(lambda: sum(engine_counts(cluster, WEB).values()) == 3 and all(
        c.health == "healthy" for n in cluster.nodes for c in running_containers(n, WEB)), 30,
        "only the three v1 containers left, healthy")
    assert_web_serves(cluster, "v1")
    with cluster.api() as c:
        actions = [e["action"] for e in c.get("/api/v1/events", params={"subject": WEB, "type": "service"}).json()
                   if e["id"] > last_event]
    assert actions[0] == "update_started" and actions[-1] == "rollback_completed", actions
    assert "rollback_started" in actions, actions
    assert "update_failed" in actions and "failed" in svc["update"]["message"], (actions, svc["update"])


def test_failed_update_without_delay_rolls_back(cluster: Cluster, cli: Cli, images: StackImages,
                                                shop: subprocess.CompletedProcess[str]) -> None:
    with Sampler(cluster, WEB) as sampler:
        cli.deploy(WEB_TAG="bad", detach=True)  # the file's update_config as it is: no delay
        svc = cluster.wait_service(WEB, lambda s: (s["update"] or {}).get("state") in
                                   ("rollback_completed", "completed", "paused", "rollback_paused"),
                                   90, "the update to end")
    assert svc["update"]["state"] == "rollback_completed", svc["update"]
    svc = cluster.wait_running(WEB, 3, 60)
    assert web_images(cluster) == {images.web1.by_digest("linux/amd64")}
    assert sampler.minimum("running") >= 2, sampler.samples


def test_stack_redeploy_rolls_web_to_v2_one_at_a_time(cluster: Cluster, cli: Cli, images: StackImages,
                                                       shop: subprocess.CompletedProcess[str]) -> None:
    with Sampler(cluster, WEB) as sampler:
        p = cli.deploy(WEB_TAG="2")  # watches until the rollout completes
        assert outcomes(p.stdout) == {"updated": [WEB], "unchanged": sorted([KV, PROBE, ARM])}, p.stdout
        svc = cluster.wait_service(WEB, lambda s: (s["update"] or {}).get("state") == "completed"
                                   and s["running"] == 3 and len(s["instances"]) == 3, 60, "update completed")
        wait_for(lambda: all(c.health == "healthy" for n in cluster.nodes for c in running_containers(n, WEB)),
                 20, "the v2 containers healthy")
    assert web_images(cluster) == {images.web2.by_digest("linux/amd64")}
    assert {i["version"] for i in svc["instances"]} == {svc["version"]}
    assert sampler.minimum("running") >= 3, sampler.samples  # start-first: never below replicas
    assert sampler.maximum("instances") <= 4, sampler.samples  # parallelism 1: one extra at a time
    assert_web_serves(cluster, "v2")
    early = removed_before_healthy(cluster, WEB, svc["version"])
    # start-first: never fewer *ready* (healthy) than replicas
    assert not early, f"slots whose old instance went before the new one was healthy: {early}"
    assert sampler.minimum("ready") >= 3, [x["ready"] for x in sampler.samples]


def removed_before_healthy(cluster: Cluster, name: str, version: int) -> list[int]:
    """Slots of a start-first rollout to ``version`` whose old instance was removed before the
    new instance in the slot reported healthy (from the event log)."""
    with cluster.api() as c:
        events = c.get("/api/v1/events", params={"subject": name, "type": "instance"}).json()
    new = {e["attrs"]["id"]: e["attrs"]["slot"] for e in events
           if e["action"] == "placed" and e["attrs"].get("version") == version}
    healthy_at = {new[e["attrs"]["id"]]: e["id"] for e in events
                  if e["action"] == "health_healthy" and e["attrs"].get("id") in new}
    first_placed = min((e["id"] for e in events if e["action"] == "placed" and e["attrs"].get("id") in new),
                       default=0)
    early = []
    for e in events:
        if e["action"] == "removed" and e["id"] > first_placed and e["attrs"]["id"] not in new:
            slot = e["attrs"]["slot"]
            if e["id"] < healthy_at.get(slot, 1 << 62):
                early.append(slot)
    return sorted(early)


def test_service_update_without_detach_shows_progress(cluster: Cluster, cli: Cli, images: StackImages,
                                                      shop: subprocess.CompletedProcess[str]) -> None:
    p = cli("service", "rollback", WEB)  # back to web:1 first (rollback_config: start-first)
    assert "rolling back" in p.stdout
    svc = cluster.wait_service(WEB, lambda s: (s["update"] or {}).get("state") == "rollback_completed"
                               and s["running"] == 3, 60, "rollback completed")
    assert web_images(cluster) == {images.web1.by_digest("linux/amd64")}

    t0 = time.monotonic()
    p = cli("service", "update", WEB, "--image", images.web2.ref)
    took = time.monotonic() - t0
    assert f"{WEB}: version {svc['version'] + 1}, rolling update started" in p.stdout, p.stdout
    assert WEB in p.stderr and "3/3" in p.stderr and "completed" in p.stderr, p.stderr  # the progress bar
    svc = cluster.service(WEB)  # the CLI returned: the rollout is over
    assert (svc["update"] or {}).get("state") == "completed", svc["update"]
    assert svc["running"] == 3 and web_images(cluster) == {images.web2.by_digest("linux/amd64")}
    assert took > 2, "three start-first batches cannot be that quick: did it wait?"
    wait_for(lambda: all(c.health == "healthy" for n in cluster.nodes for c in running_containers(n, WEB)),
             20, "the v2 containers healthy")
    assert_web_serves(cluster, "v2")
    # the spec the CLI made is the file's with WEB_TAG=2
    assert outcomes(cli.deploy(WEB_TAG="2").stdout) == {"unchanged": ALL}


# ---------------------------------------------------------------- events and removal


def test_events_list_service_and_instance_events(cluster: Cluster, cli: Cli,
                                                 shop: subprocess.CompletedProcess[str]) -> None:
    lines = cli("events", "--no-follow", "--since", "10m").stdout.splitlines()
    parsed = [line.split()[1:4] for line in lines if len(line.split()) >= 4]
    for name in ALL:
        assert ["service", "created", name] in parsed, name
        assert ["instance", "placed", name] in parsed, name
        assert ["instance", "running", name] in parsed, name
    for action in ("update_started", "completed", "rollback_started", "rollback_completed"):
        assert ["service", action, WEB] in parsed, action
    assert ["instance", "removed", WEB] in parsed
    assert ["instance", "health_healthy", WEB] in parsed or ["instance", "healthy", WEB] in parsed, \
        [p for p in parsed if p[2] == WEB]
    as_json = [json.loads(line) for line in cli("events", "--no-follow", "--since", "10m", "--type", "service",
                                                "--subject", KV, "-o", "json").stdout.splitlines()]
    assert as_json and {e["type"] for e in as_json} == {"service"} and {e["subject"] for e in as_json} == {KV}
    assert [e["action"] for e in as_json][:1] == ["created"]
    assert ["service", "update_failed", WEB] in parsed, parsed


def test_stack_rm_removes_everything(cluster: Cluster, cli: Cli, shop: subprocess.CompletedProcess[str]) -> None:
    p = cli("stack", "rm", STACK)
    assert f"stack {STACK} removed" in p.stdout
    assert all(s["name"] != STACK for s in cli.json("stack", "ls"))
    assert all(s["stack"] != STACK for s in cli.json("service", "ls"))
    wait_for(lambda: all(n.containers() == [] for n in cluster.nodes), 60,
             "every container of the stack gone from every engine")
    assert cli("stack", "rm", STACK, check=False).returncode == 1
    for node in cluster.nodes:  # the proxy stopped answering too
        wait_for(lambda node=node: refused(node, WEB_PORT), 15, f"port {WEB_PORT} closed on {node.host.name}")


def refused(node: Node, port: int) -> bool:
    try:
        fetch(node, port, timeout=2)
    except RuntimeError:
        return True
    return False
