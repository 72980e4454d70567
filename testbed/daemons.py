"""Start (or reuse) the machine-wide daemons of the test bed.

Each ``ensure_*`` function is idempotent and cheap when its daemon already answers: it
probes first (Docker ``GET /_ping``, registry ``GET /v2/``, ``pg_isready``) and only then
starts the daemon detached in its own session (``start_new_session``), logging to
/var/log/corral-testbed/, with state under /var/lib/corral-testbed/. Daemons are left
running on purpose so the next test run is warm; nothing here ever stops them. A
cross-process ``flock`` per daemon keeps two concurrent test sessions (two engineers on
one machine) from starting the same daemon twice.

The Docker API is spoken with the standard library only (``http.client`` over AF_UNIX):
see :func:`docker_request`.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

STATE_DIR = Path("/var/lib/corral-testbed")
LOG_DIR = Path("/var/log/corral-testbed")
RUN_DIR = Path("/run/corral-testbed")

ROOT_DOCKER_HOST = "unix:///var/run/docker.sock"
BINFMT_DIR = Path("/proc/sys/fs/binfmt_misc")
PG_PORT = 55432
PG_DIR = STATE_DIR / "pg"


class TestbedError(RuntimeError):
    """A test-bed daemon could not be brought up; the message says why and where to look."""


# ---------------------------------------------------------------- small helpers


@contextlib.contextmanager
def machine_lock(name: str) -> Iterator[None]:
    """Hold an exclusive, cross-process lock named ``name`` (flock on /run)."""
    lock_dir = RUN_DIR / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / f"{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def wait_until(check: Callable[[], bool], timeout: float, what: str,
               *, interval: float = 0.1, log: Path | None = None) -> None:
    """Poll ``check`` until it returns True; raise TestbedError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if time.monotonic() > deadline:
            raise TestbedError(f"timed out after {timeout:.0f}s waiting for {what}"
                               + (f"\n--- tail of {log} ---\n{log_tail(log)}" if log else ""))
        time.sleep(interval)


def log_tail(path: Path, lines: int = 25) -> str:
    """The last ``lines`` lines of a log file ('' if missing)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def spawn_detached(argv: list[str], log: Path, **kwargs: Any) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a new session (like ``setsid``), stdout+stderr appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                start_new_session=True, close_fds=True, **kwargs)


# ---------------------------------------------------------------- Docker


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


def docker_socket_path(docker_host: str) -> str:
    """``unix:///x/docker.sock`` -> ``/x/docker.sock``."""
    if not docker_host.startswith("unix://"):
        raise ValueError(f"only unix:// Docker hosts are supported, got {docker_host!r}")
    return docker_host[len("unix://"):]


def docker_request(docker_host: str, method: str, path: str, body: Any = None,
                   *, timeout: float = 60.0) -> tuple[int, bytes]:
    """One Docker Engine API call; ``body`` (if not None) is sent as JSON.

    Returns (status, raw response body). Streaming endpoints (``/images/create``) are read
    to the end, i.e. this returns when the pull is done.
    """
    conn = _UnixHTTPConnection(docker_socket_path(docker_host), timeout)
    try:
        headers = {"Host": "docker"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def docker_ping(docker_host: str = ROOT_DOCKER_HOST, timeout: float = 2.0) -> bool:
    """True if the daemon at ``docker_host`` answers ``GET /_ping`` with 200 OK."""
    try:
        status, body = docker_request(docker_host, "GET", "/_ping", timeout=timeout)
    except OSError:
        return False
    return status == 200 and body.strip() == b"OK"


def ensure_dockerd() -> str:
    """Return the root dockerd's address, starting ``dockerd`` first if it is not up."""
    if docker_ping():
        return ROOT_DOCKER_HOST
    with machine_lock("dockerd"):
        if docker_ping():
            return ROOT_DOCKER_HOST
        if shutil.which("dockerd") is None:
            raise TestbedError("dockerd not found: run scripts/install-deps.sh")
        log = LOG_DIR / "dockerd.log"
        proc = spawn_detached(["dockerd"], log)
        # If our dockerd loses a race with another one (pidfile lock) it exits, but the
        # other answers: so only the ping decides.
        wait_until(docker_ping, 60, "the root dockerd on /var/run/docker.sock", log=log,
                   interval=0.2)
        del proc
    return ROOT_DOCKER_HOST


# ---------------------------------------------------------------- binfmt / qemu

_QEMU_ENTRIES = ("qemu-aarch64", "qemu-arm")


def _mountpoints() -> set[str]:
    with open("/proc/self/mountinfo") as fh:
        return {line.split()[4] for line in fh}


def ensure_binfmt() -> None:
    """Make the kernel run aarch64 and arm binaries through qemu-user-static.

    Raises TestbedError unless ``qemu-aarch64`` and ``qemu-arm`` are enabled with the
    F (fix-binary) flag, which containers need: the interpreter is not in their rootfs.
    """
    with machine_lock("binfmt"):
        if str(BINFMT_DIR) not in _mountpoints():
            res = subprocess.run(["mount", "-t", "binfmt_misc", "binfmt_misc", str(BINFMT_DIR)],
                                 capture_output=True, text=True, check=False)
            if res.returncode != 0 and str(BINFMT_DIR) not in _mountpoints():
                raise TestbedError(f"cannot mount binfmt_misc: {res.stderr.strip()}")
        if shutil.which("update-binfmts") is None:
            raise TestbedError("update-binfmts not found: run scripts/install-deps.sh")
        # Exit status is non-zero when some formats are already enabled: judge the result.
        res = subprocess.run(["update-binfmts", "--enable"], capture_output=True, text=True,
                             check=False)
        problems = []
        for name in _QEMU_ENTRIES:
            entry = BINFMT_DIR / name
            try:
                text = entry.read_text()
            except OSError:
                problems.append(f"{name}: not registered (is qemu-user-static installed?)")
                continue
            lines = text.splitlines()
            flags = next((ln.split(":", 1)[1].strip() for ln in lines
                          if ln.startswith("flags:")), "")
            if not lines or lines[0] != "enabled":
                problems.append(f"{name}: registered but disabled")
            elif "F" not in flags:
                problems.append(f"{name}: no F (fix-binary) flag, containers cannot use it")
        if problems:
            raise TestbedError("binfmt_misc is not ready: " + "; ".join(problems)
                               + f"\nupdate-binfmts --enable said: {res.stderr.strip()}")


# ---------------------------------------------------------------- registry


def _v2_status(address: str, timeout: float = 2.0) -> int | None:
    host, port = address.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", "/v2/")
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


def registry_answers(address: str, timeout: float = 2.0) -> bool:
    """True if an OCI distribution registry at ``host:port`` answers ``GET /v2/`` with 200."""
    return _v2_status(address, timeout) == 200


def ensure_registry(port: int = 5000) -> str:
    """Return ``127.0.0.1:PORT`` of a running Debian docker-registry, starting one if needed.

    Storage: /var/lib/corral-testbed/registry (``registry-PORT`` for other ports), with
    delete enabled, no auth, plain HTTP on 127.0.0.1 only.
    """
    address = f"127.0.0.1:{port}"
    status = _v2_status(address)
    if status == 200:
        return address
    if status is not None:
        raise TestbedError(
            f"{address} answers GET /v2/ with HTTP {status}: not an open registry. Debian's "
            f"own docker-registry service (auth on, all interfaces)? `service docker-registry "
            f"stop`, or pick another port")
    with machine_lock(f"registry-{port}"):
        if registry_answers(address):
            return address
        if shutil.which("docker-registry") is None:
            raise TestbedError("docker-registry not found: run scripts/install-deps.sh")
        suffix = "" if port == 5000 else f"-{port}"
        storage = STATE_DIR / f"registry{suffix}"
        storage.mkdir(parents=True, exist_ok=True)
        config = STATE_DIR / f"registry{suffix}.yml"
        config.write_text(
            "version: 0.1\n"
            "log:\n  level: warn\n  accesslog:\n    disabled: true\n"
            "storage:\n"
            f"  filesystem:\n    rootdirectory: {storage}\n"
            "  delete:\n    enabled: true\n"
            "http:\n"
            f"  addr: {address}\n"
            "  secret: corral-testbed-not-a-secret\n"
        )
        log = LOG_DIR / f"registry{suffix}.log"
        proc = spawn_detached(["docker-registry", "serve", str(config)], log)

        def up() -> bool:
            if proc.poll() is not None and not registry_answers(address):
                raise TestbedError(f"docker-registry exited ({proc.returncode}); "
                                   f"is port {port} taken?\n{log_tail(log)}")
            return registry_answers(address)

        wait_until(up, 30, f"docker-registry on {address}", log=log)
    return address


# ---------------------------------------------------------------- PostgreSQL

_DB_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _pg_bin(tool: str) -> str:
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"),
                        key=lambda p: int(p.split("/")[4]))
    if not candidates:
        raise TestbedError(f"PostgreSQL's {tool} not found: run scripts/install-deps.sh")
    return candidates[-1]


def postgres_url(database: str = "corral") -> str:
    """SQLAlchemy URL of ``database`` on the test-bed cluster, as role corral."""
    return f"postgresql+psycopg://corral:corral@127.0.0.1:{PG_PORT}/{database}"


def _pg_ready() -> bool:
    res = subprocess.run([_pg_bin("pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(PG_PORT),
                          "-t", "1"], capture_output=True, check=False)
    return res.returncode == 0


def _psql(sql: str) -> str:
    """Run SQL as superuser postgres over the cluster's unix socket (trust auth)."""
    res = subprocess.run(
        [_pg_bin("psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(PG_DIR / "run"),
         "-p", str(PG_PORT), "-U", "postgres", "-d", "postgres", "-tA", "-c", sql],
        capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise TestbedError(f"psql failed: {res.stderr.strip()}\nSQL: {sql}")
    return res.stdout.strip()


def _as_postgres(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", "postgres", "--", *argv], cwd="/",
                          capture_output=True, text=True, check=False, **kwargs)


def _start_postgres() -> None:
    data = PG_DIR / "data"
    run = PG_DIR / "run"
    log = LOG_DIR / "postgres.log"
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    if not (data / "PG_VERSION").exists():
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(parents=True)
        shutil.chown(data, "postgres", "postgres")
        res = _as_postgres([_pg_bin("initdb"), "-D", str(data), "-U", "postgres", "-E", "UTF8",
                            "--no-locale", "--auth-local=trust", "--auth-host=scram-sha-256"])
        if res.returncode != 0:
            raise TestbedError(f"initdb failed: {res.stderr.strip()}")
        with open(data / "postgresql.conf", "a") as conf:
            conf.write(
                "\n# corral test bed: loopback only, speed over durability\n"
                f"listen_addresses = '127.0.0.1'\nport = {PG_PORT}\n"
                f"unix_socket_directories = '{run}'\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
                "max_connections = 200\n")
    run.mkdir(parents=True, exist_ok=True)
    shutil.chown(run, "postgres", "postgres")
    if not log.exists():
        log.touch()
    shutil.chown(log, "postgres", "postgres")
    res = _as_postgres([_pg_bin("pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-t", "60",
                        "start"], start_new_session=True)
    if res.returncode != 0 and not _pg_ready():
        raise TestbedError(f"pg_ctl start failed: {res.stdout.strip()} {res.stderr.strip()}"
                           f"\n--- {log} ---\n{log_tail(log)}")


def ensure_postgres() -> str:
    """Return the URL of database ``corral`` on a throwaway cluster at 127.0.0.1:55432.

    The cluster lives in /var/lib/corral-testbed/pg (initdb'd on first use, fsync off);
    role ``corral`` (password ``corral``, CREATEDB) and database ``corral`` are created
    if missing.
    """
    with machine_lock("postgres"):
        if not _pg_ready():
            _start_postgres()
            wait_until(_pg_ready, 30, f"PostgreSQL on 127.0.0.1:{PG_PORT}",
                       log=LOG_DIR / "postgres.log")
        _psql("DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'corral') "
              "THEN CREATE ROLE corral LOGIN CREATEDB PASSWORD 'corral'; END IF; END$$")
        if _psql("SELECT 1 FROM pg_database WHERE datname = 'corral'") != "1":
            _psql("CREATE DATABASE corral OWNER corral")
    return postgres_url("corral")


def fresh_postgres_database(name: str) -> str:
    """Drop (forcibly) and re-create database ``name`` owned by corral; return its URL."""
    if not _DB_NAME.match(name) or name in ("postgres", "template0", "template1"):
        raise ValueError(f"unsuitable database name {name!r}")
    ensure_postgres()
    _psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    _psql(f'CREATE DATABASE "{name}" OWNER corral')
    return postgres_url(name)


def kill_quietly(pid: int, sig: int) -> None:
    """``os.kill`` that ignores a process that is already gone."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)
