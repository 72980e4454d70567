"""Extra "hosts" on one machine: a network namespace, its own dockerd, a loopback forwarder.

A :class:`NetnsHost` named ``h1`` is:

- the network namespace ``crl-h1`` (``ip netns add``; ``lo`` up), nothing else: no veth,
  so nothing inside it can reach any address but its own;
- a dockerd started as ``setsid nsenter --net=/run/netns/crl-h1 dockerd ...`` with its own
  data-root (/var/lib/corral-testbed/hosts/h1), exec-root and socket
  (/run/corral-testbed/h1/), bridge 172.31.<index>.1/24, cgroup parent /crl-h1 and
  containerd namespace crl-h1 (``ip netns exec`` gives trouble here, nsenter works);
- a ``testbed.forward`` process that listens on 127.0.0.1:PORT inside the namespace for
  each forwarded port and relays to 127.0.0.1:PORT in the root namespace, so the
  namespaced dockerd pulls from ``127.0.0.1:5000`` (insecure by default for loopback) and
  an agent dials ``https://127.0.0.1:<server port>`` exactly as on a real host.

:meth:`NetnsHost.stop` kills the containers, the dockerd with its containerd and shims
(process group, namespace members and the /crl-<name> cgroups), the forwarder, unmounts
what the daemon left mounted, deletes the namespace and every runtime dir; :meth:`start`
does the same first for leftovers of a crashed run, so each run starts clean.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

from testbed.daemons import (
    LOG_DIR,
    RUN_DIR,
    STATE_DIR,
    TestbedError,
    docker_ping,
    docker_request,
    kill_quietly,
    log_tail,
    wait_until,
)

_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")
_REPO_ROOT = str(Path(__file__).resolve().parent.parent)
_Stream = int | IO[Any] | None


def _run(argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and res.returncode != 0:
        raise TestbedError(f"{' '.join(argv)} failed: {res.stderr.strip()}")
    return res


def process_alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _wait_dead(pids: set[int], timeout: float) -> set[int]:
    deadline = time.monotonic() + timeout
    while pids and time.monotonic() < deadline:
        pids = {p for p in pids if process_alive(p)}
        if pids:
            time.sleep(0.05)
    return pids


def _cgroup_dirs(group: str) -> list[Path]:
    """Every cgroup directory named ``group`` at the top of each mounted hierarchy."""
    out = []
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            fields = line.split()
            fstype = fields[fields.index("-") + 1]
            if fstype in ("cgroup", "cgroup2") and (Path(fields[4]) / group).is_dir():
                out.append(Path(fields[4]) / group)
    return out


def _cgroup_pids(group: str) -> set[int]:
    pids: set[int] = set()
    for top in _cgroup_dirs(group):
        for procs in top.rglob("cgroup.procs"):
            with contextlib.suppress(OSError, ValueError):
                pids |= {int(x) for x in procs.read_text().split()}
    return pids


def _mounts_under(*roots: Path) -> list[str]:
    prefixes = tuple(str(r) + "/" for r in roots)
    with open("/proc/self/mountinfo") as fh:
        points = [line.split()[4] for line in fh]
    hits = [p for p in points if p.startswith(prefixes) or p in {str(r) for r in roots}]
    return sorted(set(hits), key=len, reverse=True)


class NetnsHost:
    """One simulated machine: a network namespace with its own dockerd (see module doc)."""

    def __init__(self, name: str, index: int, forward_ports: list[int]) -> None:
        if not _NAME.match(name) or name == "locks":
            raise ValueError(f"host name {name!r}: use [a-z0-9-], at most 32 characters")
        if not (1 <= index <= 254):
            raise ValueError("index must be in 1..254 (bridge 172.31.<index>.1/24)")
        self.name = name
        self.index = index
        self.forward_ports = list(forward_ports)
        self.run_dir = RUN_DIR / name
        self.data_root = STATE_DIR / "hosts" / name
        self.log = LOG_DIR / f"host-{name}-dockerd.log"
        self.forward_log = LOG_DIR / f"host-{name}-forward.log"
        self._dockerd: subprocess.Popen[bytes] | None = None
        self._forwarder: subprocess.Popen[bytes] | None = None

    # ------------------------------------------------------------ names

    @property
    def netns(self) -> str:
        """The namespace name, ``crl-<name>``."""
        return f"crl-{self.name}"

    @property
    def netns_path(self) -> str:
        """``/run/netns/crl-<name>``."""
        return f"/run/netns/{self.netns}"

    @property
    def docker_host(self) -> str:
        """``unix:///run/corral-testbed/<name>/docker.sock``."""
        return f"unix://{self.run_dir}/docker.sock"

    def __repr__(self) -> str:
        return f"NetnsHost({self.name!r}, index={self.index}, ports={self.forward_ports})"

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Create the namespace, start the forwarder and the dockerd; wait until it answers."""
        self.stop()  # leftovers of an earlier, crashed run
        _run(["ip", "netns", "add", self.netns])
        _run(["ip", "-n", self.netns, "link", "set", "lo", "up"])
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.data_root.mkdir(parents=True, exist_ok=True)
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        try:
            if self.forward_ports:
                self._start_forwarder()
            self._start_dockerd()
        except BaseException:
            self.stop()
            raise

    def cut(self) -> None:
        """Cut the host off, as a failed link would: its loopback goes down (what its agent
        sends is dropped, and it cannot dial) and the forwarder stops (the forwarder ends TCP
        in the root namespace, so while it ran it would answer the server's keepalive probes
        however dead the host's side).  dockerd, the containers and the agent run on."""
        _run(["ip", "-n", self.netns, "link", "set", "lo", "down"])
        self._stop_forwarder()

    def reconnect(self) -> None:
        _run(["ip", "-n", self.netns, "link", "set", "lo", "up"])
        if self.forward_ports:
            self._start_forwarder()

    def _start_forwarder(self) -> None:
        argv = [sys.executable, "-m", "testbed.forward", "--netns", self.netns_path]
        for port in self.forward_ports:
            argv += ["--port", str(port)]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [_REPO_ROOT, env.get("PYTHONPATH")]))
        with open(self.forward_log, "ab") as err:
            self._forwarder = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                               stdout=subprocess.PIPE, stderr=err, env=env,
                                               start_new_session=True)
        (self.run_dir / "forward.pid").write_text(str(self._forwarder.pid))
        assert self._forwarder.stdout is not None
        ready, _, _ = select.select([self._forwarder.stdout], [], [], 15)
        line = self._forwarder.stdout.readline() if ready else b""  # "ready", or EOF if it died
        self._forwarder.stdout.close()
        if line.strip() != b"ready":
            raise TestbedError(f"forwarder for {self.netns} failed:\n{log_tail(self.forward_log)}")

    def _start_dockerd(self) -> None:
        sock = self.run_dir / "docker.sock"
        argv = ["nsenter", f"--net={self.netns_path}", "--", "dockerd",
                "--data-root", str(self.data_root),
                "--exec-root", str(self.run_dir / "exec"),
                "--pidfile", str(self.run_dir / "dockerd.pid"),
                "-H", f"unix://{sock}",
                "--bip", f"172.31.{self.index}.1/24",
                "--cgroup-parent", f"/{self.netns}",
                "--containerd-namespace", self.netns,
                "--containerd-plugins-namespace", f"{self.netns}-plugins",
                "--shutdown-timeout", "2"]
        with open(self.log, "ab") as out:
            # nsenter execs dockerd, so this pid (and process group) is dockerd's.
            self._dockerd = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                             stderr=out, start_new_session=True)
        proc = self._dockerd

        def up() -> bool:
            if proc.poll() is not None:
                raise TestbedError(f"dockerd of {self.netns} exited ({proc.returncode}):\n"
                                   f"{log_tail(self.log)}")
            return docker_ping(self.docker_host, timeout=1.0)

        wait_until(up, 60, f"dockerd of {self.netns}", log=self.log, interval=0.2)

    def restart_dockerd(self) -> None:
        """Stop this host's dockerd (its containers stop with it) and start it again."""
        self._stop_dockerd()
        self._start_dockerd()

    def stop(self) -> None:
        """Tear everything down (idempotent; also cleans leftovers of a crashed run)."""
        self._kill_containers()
        self._stop_dockerd()
        # Whatever is left: containers (cgroup /crl-<name>), shims, anything in the netns.
        for sig, grace in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
            pids = self._netns_pids() | _cgroup_pids(self.netns)
            pids.discard(os.getpid())
            for pid in pids:
                kill_quietly(pid, sig)
            if not _wait_dead(pids, grace):
                break
        self._stop_forwarder()
        for point in _mounts_under(self.run_dir, self.data_root):
            _run(["umount", "-l", point], check=False)
        if Path(self.netns_path).exists():
            _run(["ip", "netns", "delete", self.netns], check=False)
        for top in _cgroup_dirs(self.netns):
            for sub in sorted((p for p in top.rglob("*") if p.is_dir()),
                              key=lambda p: len(p.parts), reverse=True) + [top]:
                with contextlib.suppress(OSError):
                    sub.rmdir()
        for path in (self.run_dir, self.data_root):
            shutil.rmtree(path, ignore_errors=True)
            if path.exists():
                raise TestbedError(f"cannot remove {path} (still mounted or busy?)")

    def _netns_pids(self) -> set[int]:
        if not Path(self.netns_path).exists():
            return set()
        res = _run(["ip", "netns", "pids", self.netns], check=False)
        return {int(x) for x in res.stdout.split()}

    def _kill_containers(self) -> None:
        if not docker_ping(self.docker_host, timeout=1.0):
            return
        with contextlib.suppress(OSError, ValueError):
            status, body = docker_request(self.docker_host, "GET", "/containers/json", timeout=10)
            for c in json.loads(body) if status == 200 else []:
                docker_request(self.docker_host, "POST", f"/containers/{c['Id']}/kill",
                               timeout=10)

    def _stop_dockerd(self) -> None:
        pid = self._dockerd.pid if self._dockerd else None
        pidfile = self.run_dir / "dockerd.pid"
        if pid is None and pidfile.exists():
            with contextlib.suppress(ValueError, OSError):
                pid = int(pidfile.read_text().strip())
        if pid is None or not process_alive(pid):
            return
        kill_quietly(pid, signal.SIGTERM)
        if _wait_dead({pid}, 20):
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
            kill_quietly(pid, signal.SIGKILL)
            _wait_dead({pid}, 5)
        if self._dockerd:
            self._dockerd.wait(timeout=5)
            self._dockerd = None

    def _stop_forwarder(self) -> None:
        pidfile = self.run_dir / "forward.pid"
        pid = self._forwarder.pid if self._forwarder else None
        if pid is None and pidfile.exists():
            with contextlib.suppress(ValueError, OSError):
                pid = int(pidfile.read_text().strip())
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                if b"testbed.forward" not in cmdline or self.netns_path.encode() not in cmdline:
                    pid = None  # a recycled pid: not ours
        if pid is not None and process_alive(pid):
            kill_quietly(pid, signal.SIGTERM)
            if _wait_dead({pid}, 5):
                kill_quietly(pid, signal.SIGKILL)
                _wait_dead({pid}, 5)
        if self._forwarder:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._forwarder.wait(timeout=5)
            self._forwarder = None

    # ------------------------------------------------------------ processes inside

    def popen(self, argv: list[str], *, hostname: str | None = None,
              env: dict[str, str] | None = None, stdout: _Stream = None,
              stderr: _Stream = None, **kwargs: Any) -> subprocess.Popen[Any]:
        """Run ``argv`` inside the namespace (optionally in its own UTS ns as ``hostname``).

        The environment is this process's, plus ``DOCKER_HOST`` of this host's dockerd,
        plus ``env`` (which wins). Extra keyword arguments go to ``subprocess.Popen``.
        """
        cmd = ["nsenter", f"--net={self.netns_path}", "--"]
        if hostname is not None:
            cmd += ["unshare", "--uts", "--", "sh", "-c", 'hostname "$0" && exec "$@"',
                    hostname]
        full_env = dict(os.environ)
        full_env["DOCKER_HOST"] = self.docker_host
        full_env.update(env or {})
        return subprocess.Popen(cmd + list(argv), env=full_env, stdout=stdout, stderr=stderr,
                                **kwargs)
