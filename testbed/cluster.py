"""Run real `corral server` and `corral agent` processes for tests and benchmarks.

Each is a real process talking over real sockets: the server on a loopback
port with its own data dir, agents either in the root namespace or inside a
NetnsHost (where they dial 127.0.0.1 and reach the server through the
namespace's loopback forwarder).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from corral import tokens

CORRAL = [sys.executable, "-m", "corral"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll until predicate() is truthy; return its value or raise TimeoutError naming `what`."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # the thing may not be up yet
            last_exc = exc
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_exc})" if last_exc else ""))


def stop_process(proc: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM, grace: float = 10) -> None:
    """Send sig, then SIGKILL after `grace` seconds if the process is still there."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class ServerProc:
    data_dir: Path
    port: int = field(default_factory=free_port)
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    overlay: bool = False  # join the WireGuard overlay (off by default: tests of other things stay lean)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    def start(self, timeout: float = 30) -> ServerProc:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [*CORRAL, "server", "--data-dir", str(self.data_dir), "--listen", f"127.0.0.1:{self.port}",
             *self.extra_args], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self._healthy, timeout, f"corral server on port {self.port}")
        return self

    def _healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"corral server exited: {self.log_path.read_text()[-2000:]}")
        with httpx.Client(verify=False, timeout=1) as c:
            return c.get(f"{self.url}/healthz").status_code == 200

    def stop(self, sig: int = signal.SIGTERM) -> None:
        stop_process(self.proc, sig)
        self.proc = None

    @property
    def admin_token(self) -> str:
        return (self.data_dir / "admin.token").read_text().strip()

    @property
    def ca_pem(self) -> str:
        return (self.data_dir / "ca.pem").read_text()

    def client(self, token: str | None = None) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=tokens.pinned_context(self.ca_pem), timeout=30,
                            headers={"Authorization": f"Bearer {token or self.admin_token}"})

    def join_token(self) -> str:
        with self.client() as c:
            return str(c.get("/api/v1/tokens/join").json()["token"])


@dataclass
class AgentProc:
    server_url: str
    join_token: str
    state_dir: Path
    docker_host: str = "unix:///var/run/docker.sock"
    name: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    netns: Any = None  # a testbed.netns.NetnsHost, or None for the root namespace
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    overlay: bool = False  # join the WireGuard overlay (off by default: tests of other things stay lean)

    @property
    def log_path(self) -> Path:
        return self.state_dir.parent / f"{self.state_dir.name}.log"

    def argv(self) -> list[str]:
        argv = [*CORRAL, "agent", "--server", self.server_url, "--token", self.join_token,
                "--state-dir", str(self.state_dir), "--docker-host", self.docker_host, "--log-level", "debug"]
        if self.name:
            argv += ["--name", self.name]
        for k, v in self.labels.items():
            argv += ["--label", f"{k}={v}"]
        return argv + self.extra_args

    def start(self) -> AgentProc:
        log = open(self.log_path, "ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "CORRAL_OVERLAY": "on" if self.overlay else "off"}
        if self.netns is not None:
            self.proc = self.netns.popen(self.argv(), hostname=self.name, env=env, stdout=log, stderr=subprocess.STDOUT)
        else:
            self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=subprocess.STDOUT, env=env,
                                         start_new_session=True)
        return self

    def host_id(self, timeout: float = 30) -> str:
        def read() -> str | None:
            cred = self.state_dir / "credential.json"
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"agent exited: {self.log_path.read_text()[-2000:]}")
            if cred.exists():
                import json

                return str(json.loads(cred.read_text())["host_id"])
            return None

        return str(wait_for(read, timeout, "the agent to join"))

    def stop(self, sig: int = signal.SIGTERM) -> None:
        stop_process(self.proc, sig)
        self.proc = None

    def kill9(self) -> None:
        self.stop(signal.SIGKILL)
