"""Private-registry credentials end to end: a real server, one namespaced host, the real CLI.

The busybox index (amd64, arm64, arm/v7) is copied into the htpasswd registry on
127.0.0.1:5001 (``auth_registry``) as ``corral/private:1``. The host ``prv1`` is a network
namespace with its own dockerd and a real agent; its loopback forwarder carries the server
port, 5000 and the auth registry's port, so its dockerd pulls from 127.0.0.1:5001 (insecure
for Docker as loopback) with nothing but the credentials the server hands over in the
host's desired set. Through ``python -m corral`` (CORRAL_CONFIG in a temp dir):

1. no credentials stored: ``corral run`` creates the service, places nothing, and the
   pending reason names the image and the registry's demand; the engine runs nothing;
2. ``corral registry login`` with a wrong password: a new service stays pending with the
   registry's refusal, and so does the first one (the periodic reconcile re-resolves it);
3. the right password: both pending services recover on their own (periodic reconcile,
   every 5 s; no scale, no recreate) and run on the host, pinned by digest to the amd64
   build from 127.0.0.1:5001; ``corral image inspect`` shows the 3 platforms;
4. the password shows nowhere: CLI output, ``registry ls -o json``, the services, hosts and
   instances API, the server's and the agent's log files (checked again at the end);
5. a host handed a wrong password, whose pull failed, gets the corrected one as soon as it
   is stored: ``registry login`` re-sends the desired sets of the hosts that pull from it;
6. ``corral registry logout`` forgets them.

Tests run in file order and share the module's cluster. All traffic stays on loopback or
inside the host's namespace.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from testbed.auth_registry import AuthRegistry, copy_image
from testbed.cluster import AgentProc, ServerProc, wait_for
from testbed.daemons import docker_request
from testbed.images import BuiltImage
from tests.e2e.conftest import SERVER_ARGS, Cluster, Node

pytestmark = pytest.mark.e2e

HOST = "prv1"
REPO = "corral/private"
WRONG_PASSWORD = "not-the-pw-4711"
# PID 1 ignores SIGTERM unless it traps it: without the trap every stop waits 10 s
COMMAND = ["sh", "-c", "trap 'exit 0' TERM; echo private-ok; sleep 3600 & wait"]


@dataclass
class Bed:
    cluster: Cluster
    auth: AuthRegistry
    image: BuiltImage  # the busybox index on 5000, copied byte for byte
    cli_env: dict[str, str]
    outputs: list[str] = field(default_factory=list)  # everything the CLI printed
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def server(self) -> ServerProc:
        return self.cluster.server

    @property
    def node(self) -> Node:
        return self.cluster.nodes[0]

    @property
    def ref(self) -> str:
        return f"{self.auth.address}/{REPO}:1"

    def pinned(self, platform: str) -> str:
        return f"{self.auth.address}/{REPO}@{self.image.digests[platform]}"

    def corral(self, *args: str, stdin: str | None = None,
               check: bool = True) -> subprocess.CompletedProcess[str]:
        p = subprocess.run([sys.executable, "-m", "corral", *args], input=stdin,
                           capture_output=True, text=True, env=self.cli_env, timeout=120)
        self.outputs += [p.stdout, p.stderr]
        if check:
            assert p.returncode == 0, (args, p.stdout, p.stderr)
        return p

    def login(self, password: str) -> None:
        out = self.corral("registry", "login", self.auth.address, "-u", self.auth.username,
                          "--password-stdin", stdin=password + "\n").stdout
        assert f"credentials for {self.auth.address} stored (user {self.auth.username})" in out

    def engine_is_empty(self) -> None:
        """Nothing on the host's engine: no container at all, no image pulled."""
        assert self.node.docker.list_containers() == []
        status, body = docker_request(self.node.host.docker_host, "GET", "/images/json")
        assert status == 200 and json.loads(body) == [], body

    def leaks(self, seen: dict[str, str]) -> list[str]:
        """Where a password shows: in ``seen``, the CLI's output or the two log files."""
        seen = {**seen, "cli output": "\n".join(self.outputs),
                "server log": self.server.log_path.read_text(errors="replace"),
                "agent log": self.node.agent.log_path.read_text(errors="replace")}
        assert "desired set revision" in seen["agent log"]  # the agent logs, and got a set
        return [f"{what} in {where}" for where, text in seen.items()
                for what, secret in self.secrets().items() if secret in text]

    def secrets(self) -> dict[str, str]:
        """The passwords, and the encodings they would travel in, to look for."""
        user = self.auth.username
        out = {}
        for name, pw in (("password", self.auth.password), ("wrong password", WRONG_PASSWORD)):
            out[name] = pw
            out[f"{name} (basic auth)"] = base64.b64encode(f"{user}:{pw}".encode()).decode()
            auth = {"username": user, "password": pw, "serveraddress": self.auth.address}
            raw = json.dumps(auth, separators=(",", ":")).encode()
            out[f"{name} (X-Registry-Auth)"] = base64.urlsafe_b64encode(raw).decode()
        return out


@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory, netns_host_factory: Any, registry: str,
        auth_registry: AuthRegistry, busybox_image: BuiltImage) -> Iterator[Bed]:
    t0 = time.monotonic()
    digest = copy_image(registry, "corral/busybox", "1", auth_registry, REPO, "1")
    assert digest == busybox_image.index_digest
    tmp = tmp_path_factory.mktemp("private")
    server = ServerProc(tmp / "server", extra_args=SERVER_ARGS)
    cluster = Cluster(server)
    agent: AgentProc | None = None
    try:
        server.start()
        ports = [server.port, int(registry.rsplit(":", 1)[1]), auth_registry.port]
        host = netns_host_factory(HOST, ports)
        agent = AgentProc(server.url, server.join_token(), tmp / f"agent-{HOST}",
                          docker_host=host.docker_host, name=HOST, netns=host).start()
        cluster.nodes.append(Node(host, agent, agent.host_id()))
        wait_for(lambda: [h["state"] for h in cluster.hosts()] == ["ready"], 30, "host ready")
        env = {**os.environ, "CORRAL_CONFIG": str(tmp / "cli.json")}
        env.pop("CORRAL_URL", None)
        env.pop("CORRAL_TOKEN", None)
        b = Bed(cluster, auth_registry, busybox_image, env)
        b.corral("login", server.url, "--token", server.admin_token)
        b.timings["setup"] = time.monotonic() - t0
        yield b
        print("\nprivate registry timings: "
              + ", ".join(f"{k} {v:.1f}s" for k, v in b.timings.items()))
    finally:
        if agent is not None:
            agent.stop()
        for node in cluster.nodes:
            try:
                for c in node.containers():
                    node.docker.remove(c.id, force=True)
            finally:
                node.host.stop()  # idempotent: the factory's own stop at session end is a no-op
        server.stop()


def _pending(svc: dict[str, Any]) -> str:
    return str(svc.get("pending_reason") or "")


# ---------------------------------------------------------------- 1. no credentials


def test_without_credentials_the_service_stays_pending(bed: Bed) -> None:
    assert json.loads(bed.corral("registry", "ls", "-o", "json").stdout) == []
    run = bed.corral("run", "-n", "priv-a", bed.ref, *COMMAND)
    assert "pending" in run.stdout and bed.ref in run.stdout, run.stdout
    svc = bed.cluster.service("priv-a")
    reason = _pending(svc)
    assert repr(bed.ref) in reason, reason
    assert f"registry {bed.auth.address} requires a user name and password, and none are " \
           f"stored for {bed.auth.address}" in reason
    assert svc["instances"] == [] and svc["running"] == 0
    with bed.cluster.api() as c:
        assert c.get("/api/v1/instances").json() == []
    ls = json.loads(bed.corral("service", "ls", "-o", "json").stdout)
    assert [(s["name"], s["pending_reason"]) for s in ls] == [("priv-a", reason)]
    inspect = bed.corral("image", "inspect", bed.ref, check=False)
    assert inspect.returncode == 1 and "none are stored" in inspect.stderr, inspect
    assert not bed.leaks({})  # once more, with everything the module did in the logs
    bed.engine_is_empty()


# ---------------------------------------------------------------- 2. a wrong password


def test_wrong_password_keeps_services_pending(bed: Bed) -> None:
    bed.login(WRONG_PASSWORD)
    refused = f"registry {bed.auth.address} refused the credentials of user " \
              f"{bed.auth.username!r}"
    run = bed.corral("run", "-n", "priv-b", bed.ref, *COMMAND)
    assert "pending" in run.stdout, run.stdout
    reason = _pending(bed.cluster.service("priv-b"))
    assert repr(bed.ref) in reason and refused in reason, reason
    # the first service is re-resolved by the periodic reconcile with the new credentials
    bed.cluster.wait_service("priv-a", lambda s: refused in _pending(s), 15,
                             "priv-a pending with the registry's refusal")
    for name in ("priv-a", "priv-b"):
        assert bed.cluster.service(name)["instances"] == []
    bed.engine_is_empty()


# ---------------------------------------------------------------- 3. the right password


def test_right_password_pending_services_recover_by_themselves(bed: Bed) -> None:
    t0 = time.monotonic()
    bed.login(bed.auth.password)
    for name in ("priv-a", "priv-b"):  # no scale, no recreate: the periodic reconcile
        svc = bed.cluster.wait_running(name, 1, timeout=30)
        bed.timings[f"login -> {name} running"] = time.monotonic() - t0
        assert not svc.get("pending_reason"), svc
        (inst,) = svc["instances"]
        assert inst["host_name"] == HOST and inst["platform"] == "linux/amd64", inst
    with bed.cluster.api() as c:
        instances = c.get("/api/v1/instances").json()
    assert {i["image"] for i in instances} == {bed.pinned("linux/amd64")}, instances
    ctrs = bed.node.containers()
    assert sorted(c.labels["io.corral.service"] for c in ctrs) == ["priv-a", "priv-b"]
    for ctr in ctrs:
        info = bed.node.docker.inspect_container(ctr.id)
        assert info["State"]["Running"] is True
        assert info["Config"]["Image"] == bed.pinned("linux/amd64")
    # the engine got it from the auth registry, by the pinned digest of the amd64 build
    status, body = docker_request(bed.node.host.docker_host, "GET",
                                  f"/images/{bed.pinned('linux/amd64')}/json")
    assert status == 200, body
    image = json.loads(body)
    assert bed.pinned("linux/amd64") in image["RepoDigests"], image["RepoDigests"]
    assert image["Architecture"] == "amd64"
    logs = wait_for(lambda: "private-ok" in (out := bed.corral("logs", "priv-a").stdout) and out,
                    20, "logs of priv-a")
    assert "priv-a.1@" in logs


def test_image_inspect_with_credentials(bed: Bed) -> None:
    data = json.loads(bed.corral("image", "inspect", bed.ref, "-o", "json").stdout)
    assert data["digest"] == bed.image.index_digest
    assert {p["platform"]: p["digest"] for p in data["platforms"]} == bed.image.digests
    assert len(data["platforms"]) == 3
    table = bed.corral("image", "inspect", bed.ref).stdout
    for platform in ("linux/amd64", "linux/arm64", "linux/arm/v7"):
        assert platform in table, table


# ---------------------------------------------------------------- 4. never shown


def test_password_shows_nowhere(bed: Bed) -> None:
    ls = json.loads(bed.corral("registry", "ls", "-o", "json").stdout)
    assert [(r["registry"], r["username"]) for r in ls] == [(bed.auth.address,
                                                             bed.auth.username)]
    assert "password" not in ls[0]
    for args in (["registry", "ls"], ["service", "ls", "-o", "json"],
                 ["service", "inspect", "priv-a", "-o", "json"], ["ps", "-o", "json"],
                 ["host", "ls", "-o", "json"], ["host", "inspect", HOST, "-o", "json"]):
        bed.corral(*args)
    seen: dict[str, str] = {}
    host_id = bed.node.host_id
    with bed.cluster.api() as c:
        for path in ("/api/v1/services", "/api/v1/services/priv-a", "/api/v1/services/priv-b",
                     "/api/v1/hosts", f"/api/v1/hosts/{host_id}", f"/api/v1/hosts/{HOST}",
                     f"/api/v1/hosts/{host_id}/desired", "/api/v1/instances",
                     "/api/v1/instances?service=priv-a", "/api/v1/registries"):
            r = c.get(path)
            assert r.status_code == 200, (path, r.text)
            seen[f"GET {path}"] = r.text
    assert not bed.leaks(seen)


# ---------------------------------------------------------------- 5. corrected credentials reach the host


class StaleCredentials(AssertionError):
    """The host never got the credentials fixed after its pull had failed."""


def test_fixed_credentials_reach_a_host_that_failed_to_pull(bed: Bed) -> None:
    # The host must really pull: with the containers gone the image, its manifests and
    # layers go too (dockerd serves a pull by digest from its content store, auth or not).
    bed.corral("service", "rm", "priv-a")
    bed.corral("service", "rm", "priv-b")
    wait_for(lambda: bed.node.containers() == [], 30, "priv-a and priv-b removed")
    status, body = docker_request(bed.node.host.docker_host, "DELETE",
                                  f"/images/{bed.pinned('linux/amd64')}")
    assert status == 200, body
    bed.engine_is_empty()
    # By digest, the server answers from its digest cache: the service is placed although
    # the stored password is wrong, and the host pulls with what it is handed.
    by_digest = f"{bed.auth.address}/{REPO}@{bed.image.index_digest}"
    bed.login(WRONG_PASSWORD)
    try:
        bed.corral("run", "-d", "-n", "priv-c", by_digest, *COMMAND)
        svc = bed.cluster.wait_service(
            "priv-c", lambda s: [i["state"] for i in s["instances"]] == ["pull_failed"], 30,
            "priv-c pull_failed with the wrong password")
        assert svc["pending_reason"] is None
        assert "unauthorized" in svc["instances"][0]["error"].lower(), svc["instances"]
        t0 = time.monotonic()
        bed.login(bed.auth.password)
        try:  # 25 s: five periodic reconciles, two of the agent's pull retries (every 10 s)
            bed.cluster.wait_running("priv-c", 1, timeout=25)
        except AssertionError as exc:
            raise StaleCredentials(str(exc)) from None
        bed.timings["login -> priv-c running"] = time.monotonic() - t0
    finally:
        bed.login(bed.auth.password)
        bed.corral("service", "rm", "priv-c")
        wait_for(lambda: bed.node.containers() == [], 30, "priv-c removed")


# ---------------------------------------------------------------- 6. logout


def test_logout_removes_the_credentials(bed: Bed) -> None:
    out = bed.corral("registry", "logout", bed.auth.address).stdout
    assert f"credentials for {bed.auth.address} removed" in out
    assert json.loads(bed.corral("registry", "ls", "-o", "json").stdout) == []
    with bed.cluster.api() as c:
        assert c.get("/api/v1/registries").json() == []
    inspect = bed.corral("image", "inspect", bed.ref, check=False)
    assert inspect.returncode == 1 and "none are stored" in inspect.stderr, inspect
    assert not bed.leaks({})  # once more, with everything the module did in the logs
