"""End to end: a server and three namespaced hosts, each with its own dockerd and agent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx
import pytest

from testbed.cluster import wait_for
from testbed.images import BuiltImage, build_busybox
from tests.e2e.conftest import Cluster

pytestmark = pytest.mark.e2e

HOST_PREFIX = "e2e"
HOST_COUNT = 3
HOST_LABELS = [{"zone": "cloud"}, {"zone": "cloud"}, {"zone": "edge"}]
# e2e2 reports one GPU that exists only in its facts (this test bed has none), named as such
HOST_AGENT_ARGS = [[], ["--test-fake-gpus", "1"], []]


def when(needle: str, text: str, times: int = 1) -> str | None:
    """text, once it holds needle (at least `times` times); for wait_for."""
    return text if text.count(needle) >= times else None


def test_hosts_join_and_report_facts(cluster: Cluster) -> None:
    hosts = {h["name"]: h for h in cluster.hosts()}
    assert set(hosts) == {"e2e1", "e2e2", "e2e3"}
    for h in hosts.values():
        assert h["state"] == "ready"
        assert h["platform"] == "linux/amd64"
        facts = h["facts"]
        assert facts["hostname"] == h["name"]
        assert facts["docker"]["version"] and facts["engine_platform"] == "linux/amd64"
        assert "linux/arm64" in facts["emulated_platforms"]
        assert facts["cpus"] >= 1 and facts["memory_bytes"] > 0
    assert hosts["e2e3"]["labels"] == {"zone": "edge"}


def test_replicas_spread_over_three_hosts(cluster: Cluster, busybox_image: BuiltImage) -> None:
    cluster.create(name="spread", image=busybox_image.ref, replicas=6, command=["sleep", "3600"])
    svc = cluster.wait_running("spread", 6)
    per_host = {n.host_id: 0 for n in cluster.nodes}
    for inst in svc["instances"]:
        per_host[inst["host_id"]] += 1
    assert sorted(per_host.values()) == [2, 2, 2]
    # the containers really run on each host's own engine, and nowhere else
    for node in cluster.nodes:
        running = [c for c in node.containers("spread") if c.state == "running"]
        assert len(running) == 2
        assert {c.id for c in running} == {i["container_id"] for i in svc["instances"] if i["host_id"] == node.host_id}
    # scale down: the highest slots go, the containers with them
    with cluster.api() as c:
        c.patch("/api/v1/services/spread", json={"replicas": 2}).raise_for_status()
    wait_for(lambda: sum(len(n.containers("spread")) for n in cluster.nodes) == 2, 30, "scale down to 2")
    svc = cluster.wait_running("spread", 2)
    assert sorted(i["slot"] for i in svc["instances"]) == [1, 2]
    cluster.remove("spread")
    wait_for(lambda: sum(len(n.containers("spread")) for n in cluster.nodes) == 0, 30, "containers removed")


def test_arm64_container_really_runs_aarch64_when_emulation_is_allowed(cluster: Cluster,
                                                                       busybox_image: BuiltImage) -> None:
    ref = busybox_image.by_digest("linux/arm64")  # a single-platform manifest: linux/arm64 only
    cmd = ["sh", "-c", "while true; do uname -m; sleep 1; done"]
    svc = cluster.create(name="armcheck", image=ref, command=cmd, constraints=["node.labels.zone==edge"])
    assert svc["instances"] == []  # the amd64 hosts have no arm64 build to run natively
    assert svc["pending_reason"] == ("0 of 3 hosts can run it: image offers linux/arm64; 2 hosts do not match "
                                     "constraint node.labels.zone==edge, 1 host is linux/amd64 (no build); "
                                     "linux/amd64 could run it emulated (allow emulation to use it)")
    cluster.remove("armcheck")
    cluster.create(name="armcheck", image=ref, command=cmd, constraints=["node.labels.zone==edge"],
                   allow_emulation=True)
    svc = cluster.wait_running("armcheck", 1)
    inst = svc["instances"][0]
    assert inst["host_name"] == "e2e3" and inst["emulated"] and inst["platform"] == "linux/arm64"
    assert inst["image"] == ref
    with cluster.api() as c:
        text = wait_for(lambda: when("aarch64", c.get("/api/v1/services/armcheck/logs", params={"tail": 5}).text),
                        30, "uname -m output")
    assert "armcheck.1@e2e3 | aarch64" in text
    cluster.remove("armcheck")


def test_unknown_image_stays_pending_naming_it(cluster: Cluster, registry: str) -> None:
    svc = cluster.create(name="ghost", image=f"{registry}/corral/does-not-exist:1.0")
    assert svc["instances"] == []
    assert f"{registry}/corral/does-not-exist:1.0" in svc["pending_reason"] and "not found" in svc["pending_reason"]
    cluster.remove("ghost")


def delete_manifest(registry: str, repo: str, digest: str) -> None:
    r = httpx.delete(f"http://{registry}/v2/{repo}/manifests/{digest}")
    assert r.status_code == 202, r.text


def test_pull_error_shows_in_the_instance_state(cluster: Cluster, registry: str) -> None:
    """An image deleted from the registry after it was resolved: the host's pull fails, and says why."""
    repo = "corral/ephemeral"
    image = build_busybox(registry, repo=repo, tag="gone", platforms=("linux/amd64",))
    svc = cluster.create(name="vanish", image=image.ref, command=["sleep", "3600"],
                         constraints=["node.labels.vanish==yes"])
    assert svc["instances"] == [] and svc["image_digest"] == image.index_digest  # pinned while it existed
    delete_manifest(registry, repo, image.index_digest)
    with cluster.api() as c:
        c.put("/api/v1/hosts/e2e1/labels/vanish", json={"value": "yes"}).raise_for_status()
        try:
            svc = cluster.wait_service("vanish", lambda s: s["instances"] and s["instances"][0]["state"] == "pull_failed",
                                       60, "pull_failed")
            err = svc["instances"][0]["error"]
            assert "ephemeral" in err and ("not found" in err or "unknown" in err), err
            assert svc["running"] == 0
        finally:
            cluster.remove("vanish")
            c.delete("/api/v1/hosts/e2e1/labels/vanish")


def test_constraint_matching_no_host_stays_pending(cluster: Cluster, busybox_image: BuiltImage) -> None:
    svc = cluster.create(name="nowhere", image=busybox_image.ref, constraints=["node.labels.zone==mars"])
    assert svc["instances"] == []
    assert svc["pending_reason"] == ("0 of 3 hosts can run it: image offers linux/amd64, linux/arm64, "
                                     "linux/arm/v7; 3 hosts do not match constraint node.labels.zone==mars")
    cluster.remove("nowhere")


def test_restart_policy_restarts_a_crashing_container(cluster: Cluster, busybox_image: BuiltImage) -> None:
    cluster.create(name="crashy", image=busybox_image.ref, command=["sh", "-c", "sleep 1; exit 3"],
                   restart={"condition": "on-failure", "delay": 0.5, "max_attempts": 2})
    svc = cluster.wait_service("crashy", lambda s: s["instances"] and s["instances"][0]["restarts"] == 2
                               and s["instances"][0]["state"] == "exited", 60, "two restarts, then exited")
    inst = svc["instances"][0]
    assert inst["exit_code"] == 3 and "gave up after 2" in inst["error"]
    cluster.remove("crashy")


def test_published_port_answers_through_the_ingress_proxy(cluster: Cluster, busybox_image: BuiltImage) -> None:
    """Two instances on one host share published port 18080: the agent's proxy answers and balances."""
    cluster.create(name="webby", image=busybox_image.ref, replicas=2, ports=[{"published": 18080, "target": 80}],
                   command=["sh", "-c", "mkdir -p /www && echo hello-from-$(hostname) > /www/index.html && "
                            "httpd -f -p 80 -h /www"], constraints=["node.labels.zone==edge"])
    svc = cluster.wait_running("webby", 2)
    assert {i["host_name"] for i in svc["instances"]} == {"e2e3"}
    node = next(n for n in cluster.nodes if n.host.name == "e2e3")
    # fetch from inside the host's own namespace (its loopback), never from another address
    code = ("import urllib.request\nfor _ in range(6):\n"
            "    print(urllib.request.urlopen('http://127.0.0.1:18080/', timeout=5).read().decode().strip())")

    def answers() -> set[str] | None:
        out = subprocess.run(["nsenter", f"--net={node.host.netns_path}", sys.executable, "-c", code],
                             capture_output=True, text=True).stdout
        seen = {line for line in out.splitlines() if line.startswith("hello-from-")}
        return seen if len(seen) == 2 else None

    assert len(wait_for(answers, 30, "both instances answering on 18080")) == 2
    for c in node.containers("webby"):  # nothing is bound on the host by the containers themselves
        assert not node.docker.inspect_container(c.id)["HostConfig"]["PortBindings"]
    cluster.remove("webby")


def test_logs_follow_streams_new_lines(cluster: Cluster, busybox_image: BuiltImage) -> None:
    cluster.create(name="ticker", image=busybox_image.ref,
                   command=["sh", "-c", "i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.3; done"])
    cluster.wait_running("ticker", 1)
    seen: list[str] = []
    with cluster.api() as c, c.stream("GET", "/api/v1/services/ticker/logs",
                                      params={"follow": "true", "tail": 0}) as r:
        deadline = time.monotonic() + 20
        for line in r.iter_lines():
            seen.append(line)
            if len(seen) >= 3 or time.monotonic() > deadline:
                break
    assert len(seen) >= 3 and all(line.startswith("ticker.1@") and "| tick " in line for line in seen)
    numbers = [int(line.rsplit(" ", 1)[1]) for line in seen]
    assert numbers == sorted(numbers) and numbers[-1] > numbers[0]
    cluster.remove("ticker")


def test_cli_end_to_end(cluster: Cluster, busybox_image: BuiltImage, tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {**os.environ, "CORRAL_CONFIG": str(tmp_path / "cfg.json")}

    def corral(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        p = subprocess.run([sys.executable, "-m", "corral", *args], capture_output=True, text=True, env=env,
                           timeout=120)
        if check:
            assert p.returncode == 0, (args, p.stdout, p.stderr)
        return p

    corral("login", cluster.server.url, "--token", cluster.server.admin_token)
    hosts = json.loads(corral("host", "ls", "-o", "json").stdout)
    assert {h["name"] for h in hosts} == {"e2e1", "e2e2", "e2e3"}
    table = corral("host", "ls").stdout
    assert "PLATFORM" in table and "STATE" in table and "linux/amd64" in table
    corral("host", "label", "add", "e2e1", "tier=gold")
    corral("run", "--name", "clisvc", "--replicas", "2", "-e", "GREETING=hi", "-c", "node.labels.zone==cloud",
           busybox_image.ref, "sh", "-c", "echo $GREETING from $(hostname); sleep 3600")
    ps = json.loads(corral("ps", "clisvc", "-o", "json").stdout)
    assert len(ps) == 2 and {p["state"] for p in ps} == {"running"}
    assert {p["host_name"] for p in ps} == {"e2e1", "e2e2"}
    assert "clisvc.1" in corral("ps").stdout
    corral("service", "scale", "clisvc=3")
    ls = json.loads(corral("service", "ls", "-o", "json").stdout)
    assert any(s["name"] == "clisvc" and s["desired"] == 3 for s in ls)
    logs = wait_for(lambda: when("hi from", corral("logs", "clisvc").stdout, 2), 30, "logs of clisvc")
    assert "clisvc.1@" in logs
    bad = corral("run", "--name", "clisvc", busybox_image.ref, check=False)
    assert bad.returncode == 1 and "already exists" in bad.stderr
    bad = corral("service", "scale", "clisvc=-1", check=False)
    assert bad.returncode != 0
    join = corral("token", "join").stdout
    assert "CORRAL-J1-" in join and "corral agent --server" in join
    corral("service", "rm", "clisvc")
    corral("host", "label", "rm", "e2e1", "tier")
    wrong = subprocess.run([sys.executable, "-m", "corral", "host", "ls"], capture_output=True, text=True,
                           env={**env, "CORRAL_URL": cluster.server.url,
                                "CORRAL_TOKEN": cluster.server.admin_token[:-4] + "0000"})
    assert wrong.returncode == 1 and "invalid" in wrong.stderr.lower()


def test_deploy_reaches_the_agent_fast(cluster: Cluster, busybox_image: BuiltImage) -> None:
    """The desired set is pushed over the held-open channel, not picked up by a slow poll."""
    node = cluster.nodes[0]
    cluster.create(name="warm", image=busybox_image.ref, command=["sleep", "3600"],
                   constraints=[f"node.id=={node.host_id}"])
    cluster.wait_running("warm", 1)  # image now present on that host
    t0 = time.monotonic()
    cluster.create(name="fast", image=busybox_image.ref, command=["sleep", "3600"],
                   constraints=[f"node.id=={node.host_id}"])
    wait_for(lambda: node.containers("fast"), 10, "the container to exist", interval=0.01)
    assert time.monotonic() - t0 < 2.0
    cluster.remove("warm")
    cluster.remove("fast")


def test_wrong_token_changes_nothing(cluster: Cluster) -> None:
    before = cluster.hosts()
    r = httpx.post(f"{cluster.server.url}/api/v1/services", json={"name": "evil", "image": "busybox"},
                   headers={"Authorization": "Bearer CORRAL-A1-x-y"}, verify=False)
    assert r.status_code == 401
    with cluster.api() as c:
        assert all(s["name"] != "evil" for s in c.get("/api/v1/services").json())
    assert [h["id"] for h in cluster.hosts()] == [h["id"] for h in before]


def _join(cluster: Cluster, token: str, tmp_path) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    return subprocess.run([sys.executable, "-m", "corral", "agent", "--server", cluster.server.url, "--token", token,
                           "--state-dir", str(tmp_path / "st")], capture_output=True, text=True, timeout=60,
                          check=False)


def test_agent_refuses_a_server_whose_ca_is_not_the_pinned_one(cluster: Cluster, tmp_path) -> None:  # type: ignore[no-untyped-def]
    real = cluster.server.join_token()
    kind, fp, secret = real.split("-")[1:]
    forged_fp = ("a" if fp[0] != "a" else "b") + fp[1:]
    before = cluster.hosts()
    p = _join(cluster, f"CORRAL-{kind}-{forged_fp}-{secret}", tmp_path)
    assert p.returncode != 0 and "does not match the fingerprint" in p.stderr
    assert not (tmp_path / "st" / "credential.json").exists()
    assert len(cluster.hosts()) == len(before)


def test_agent_with_a_wrong_join_secret_is_refused(cluster: Cluster, tmp_path) -> None:  # type: ignore[no-untyped-def]
    real = cluster.server.join_token()
    before = cluster.hosts()
    p = _join(cluster, real[:-6] + "000000", tmp_path)
    assert p.returncode != 0 and "401" in p.stderr
    assert len(cluster.hosts()) == len(before)


def test_drain_moves_instances_and_activate_restores(cluster: Cluster, busybox_image: BuiltImage) -> None:
    cluster.create(name="movable", image=busybox_image.ref, replicas=3, command=["sleep", "3600"])
    cluster.wait_running("movable", 3)
    drained = next(n for n in cluster.nodes if n.host.name == "e2e1")
    assert len(drained.containers("movable")) == 1
    with cluster.api() as c:
        assert c.post("/api/v1/hosts/e2e1/drain").json()["availability"] == "draining"
        try:
            svc = cluster.wait_service("movable", lambda s: s["running"] == 3 and all(
                i["host_name"] != "e2e1" for i in s["instances"]), 60, "instances moved off e2e1")
            assert sorted(i["slot"] for i in svc["instances"]) == [1, 2, 3]
            wait_for(lambda: drained.containers("movable") == [], 30, "the drained host's container removed")
            # nothing new lands on a draining host
            cluster.create(name="after-drain", image=busybox_image.ref, replicas=3, command=["sleep", "3600"])
            svc = cluster.wait_running("after-drain", 3)
            assert all(i["host_name"] != "e2e1" for i in svc["instances"])
        finally:
            c.post("/api/v1/hosts/e2e1/activate")
    cluster.remove("after-drain")
    cluster.remove("movable")


def test_hard_anti_affinity_keeps_services_apart(cluster: Cluster, busybox_image: BuiltImage) -> None:
    cluster.create(name="db", image=busybox_image.ref, command=["sleep", "3600"], constraints=["node.hostname==e2e2"])
    cluster.wait_running("db", 1)
    cluster.create(name="web-apart", image=busybox_image.ref, replicas=4, command=["sleep", "3600"],
                   affinities=["service!=db"])
    svc = cluster.wait_running("web-apart", 4)
    assert {i["host_name"] for i in svc["instances"]} == {"e2e1", "e2e3"}
    node = next(n for n in cluster.nodes if n.host.name == "e2e2")
    assert node.containers("web-apart") == []
    cluster.remove("web-apart")
    cluster.remove("db")


def test_gpu_reservation_lands_on_the_host_with_a_gpu(cluster: Cluster, busybox_image: BuiltImage) -> None:
    hosts = {h["name"]: h for h in cluster.hosts()}
    assert [g["name"] for g in hosts["e2e2"]["facts"]["gpus"]] == ["fake GPU (test bed)"]
    assert hosts["e2e1"]["facts"]["gpus"] == [] and hosts["e2e3"]["facts"]["gpus"] == []
    gpu = {"generic": {"nvidia.com/gpu": 1}}
    cluster.create(name="trainer", image=busybox_image.ref, replicas=2, command=["sh", "-c", "env; sleep 3600"],
                   reservations=gpu)
    svc = cluster.wait_running("trainer", 1)
    assert [i["host_name"] for i in svc["instances"]] == ["e2e2"]
    assert "nvidia.com/gpu" in (svc["pending_reason"] or ""), svc["pending_reason"]
    node = next(n for n in cluster.nodes if n.host.name == "e2e2")
    env = node.docker.inspect_container(node.containers("trainer")[0].id)["Config"]["Env"]
    assert "CORRAL_GPUS=1" in env
    # a reservation larger than any host's GPUs is refused at submit, changing nothing
    with cluster.api() as c:
        r = c.post("/api/v1/services", json={"name": "greedy", "image": busybox_image.ref,
                                             "reservations": {"generic": {"nvidia.com/gpu": 2}}})
        assert r.status_code == 422 and "nvidia.com/gpu" in r.text
        assert c.get("/api/v1/services/greedy").status_code == 404
    cluster.remove("trainer")
