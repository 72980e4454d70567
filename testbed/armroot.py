"""Foreign-architecture Python runtimes from Debian packages, and agents chrooted into them.

Why: the agent must be shown to work as *real* aarch64 / armv7 code, not as an x86 process
that claims another platform. Debian ships python3.11 for every architecture, and the
kernel runs foreign ELF binaries through qemu-user-static (binfmt_misc with the F flag,
see ``daemons.ensure_binfmt``), also inside a chroot. So:

:func:`build_root` (``arch`` = Debian architecture: ``arm64``, ``armhf`` or ``amd64``)
  ``apt-get download``s :data:`PACKAGES` for that architecture into
  /var/cache/corral-testbed/debs (once; a warm build never touches the network),
  ``dpkg -x``es them into one root, prunes glibc's iconv modules (``gconv``, 20 MB that
  Python never loads), adds /etc/passwd, /etc/group, /etc/hosts and the mount points the
  runner needs, byte-compiles the standard library *with the root's own interpreter*
  (under qemu; ``unchecked-hash`` pycs, so they stay valid whatever the files' mtimes,
  which matters for image layers with fixed mtimes), then checks that the interpreter's
  ``platform.machine()`` is the expected one and that every standard-library module the
  agent imports (found by walking ``corral.agent.main``'s imports with ``ast``) imports.
  The result lives in /var/lib/corral-testbed/roots/<arch>/, with a stamp
  (``<arch>.json``) naming the layout version and the exact .deb files: it is rebuilt
  only when it is missing or the package list (or a cached .deb) changes.

  :data:`PACKAGES` is the part of python3.11's Depends closure the agent needs: the
  interpreter, its stdlib, glibc, libgcc_s (glibc loads it for ``pthread_exit``, which
  daemon threads reach at interpreter exit), zlib and expat (linked into the
  interpreter), OpenSSL (``_ssl``/``_hashlib``), libffi (``ctypes``: the agent's arm64
  AArch32 probe calls personality(2)) and base-files (``/etc/os-release``). The rest of
  the closure (bz2, lzma, sqlite, ncurses, readline, media-types, tar, perl, dpkg ...)
  serves modules the agent never imports. Note that json, http.client,
  concurrent.futures, dataclasses, hmac, secrets, queue and ctypes are in
  libpython3.11-stdlib, not in python3.11-minimal/libpython3.11-minimal.

  When the agent's imports change (another module found by the ``ast`` walk), a built
  root is verified again (a second or two under qemu; ``<arch>.verified.json``) without
  a rebuild, and :func:`build_root` fails naming the module that does not import.

:func:`chroot_argv` / :func:`agent_argv`
  The command that runs a program in such a root: ``unshare --mount --uts``, then (host's
  /bin/sh) the root bind-mounted read-only onto itself (agents share one cached root and
  must not change it), a fresh /proc plus the host's binfmt_misc (so the agent's facts see
  what the kernel can emulate), /dev and /sys, tmpfs on /run and /tmp, the Docker
  socket's directory at the same path under /run, the state dir at
  /var/lib/corral-agent, the corral package read-only at /opt/corral/corral (code changes
  need no rebuild), the hostname; then ``env -i ... chroot ROOT /usr/bin/python3.11 -m
  corral agent ...``. Every step ``exec``s, so the process that the caller started *is*
  the agent (the qemu process), and its private mounts vanish with it.

:class:`ArmAgentProc`
  :class:`testbed.cluster.AgentProc` whose ``argv()`` is :func:`agent_argv`: same
  start/stop/kill9/host_id/log_path, started inside a ``NetnsHost`` (or not).
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import glob
import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from testbed.cluster import AgentProc
from testbed.daemons import STATE_DIR, TestbedError, machine_lock
from testbed.images import CACHE_DIR

DEBS_DIR = CACHE_DIR / "debs"
ROOTS_DIR = STATE_DIR / "roots"
REPO_ROOT = Path(__file__).resolve().parent.parent  # the checkout this test bed belongs to
PYTHON = "/usr/bin/python3.11"

PACKAGES: tuple[str, ...] = (
    "base-files", "libc6", "libgcc-s1", "zlib1g", "libexpat1", "libssl3", "libffi8",
    "libpython3.11-minimal", "libpython3.11-stdlib", "python3.11-minimal",
)

# Inside the root: where the runner mounts things (created at build time: the root is
# read-only at run time).
SOURCE_MOUNT = "/opt/corral/corral"
PYTHONPATH = "/opt/corral"
STATE_MOUNT = "/var/lib/corral-agent"
_MOUNT_POINTS = ("proc", "dev", "sys", "run", "tmp", SOURCE_MOUNT.lstrip("/"),
                 STATE_MOUNT.lstrip("/"))

_LAYOUT_VERSION = "corral-testbed-pyroot-1"  # bump when the build steps change
_FILES = {
    "etc/passwd": "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:"
                  "/usr/sbin/nologin\n",
    "etc/group": "root:x:0:\nnogroup:x:65534:\n",
    "etc/hosts": "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n",
}
_AGENT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root", "LANG": "C.UTF-8", "PYTHONPATH": PYTHONPATH, "PYTHONUNBUFFERED": "1",
    "PYTHONDONTWRITEBYTECODE": "1",  # the root and the source are read-only anyway
    "CORRAL_OVERLAY": "off",  # the chroot has no ip, wg or iptables
}


@dataclasses.dataclass(frozen=True)
class Arch:
    """One Debian architecture: its multiarch triplet, ``uname -m`` and OCI platform."""

    debian: str
    triplet: str
    machine: str
    platform: str

    @property
    def oci(self) -> tuple[str, str | None]:
        """(OCI architecture, variant) for image configs."""
        parts = self.platform.split("/")
        return parts[1], (parts[2] if len(parts) > 2 else None)


ARCHES: dict[str, Arch] = {
    "arm64": Arch("arm64", "aarch64-linux-gnu", "aarch64", "linux/arm64"),
    "armhf": Arch("armhf", "arm-linux-gnueabihf", "armv7l", "linux/arm/v7"),
    "amd64": Arch("amd64", "x86_64-linux-gnu", "x86_64", "linux/amd64"),
}


def arch_info(arch: str) -> Arch:
    """The :class:`Arch` for a Debian architecture name (ValueError if unsupported)."""
    try:
        return ARCHES[arch]
    except KeyError:
        raise ValueError(f"unsupported architecture {arch!r}; known: {sorted(ARCHES)}") from None


# ---------------------------------------------------------------- .debs


def _deb_version_key(path: Path) -> str:
    return path.name.split("_")[1]


def _pick_newest(paths: list[Path]) -> Path:
    best = paths[0]
    for other in paths[1:]:
        res = subprocess.run(["dpkg", "--compare-versions", _deb_version_key(other).replace(
            "%3a", ":"), "gt", _deb_version_key(best).replace("%3a", ":")], check=False)
        if res.returncode == 0:
            best = other
    return best


def fetch_debs(arch: str, packages: tuple[str, ...] = PACKAGES) -> list[Path]:
    """The cached .deb of each package for ``arch``; missing ones in one ``apt-get download``."""
    arch_info(arch)
    DEBS_DIR.mkdir(parents=True, exist_ok=True)

    def find(pkg: str) -> Path | None:
        found = [Path(p) for p in glob.glob(str(DEBS_DIR / f"{pkg}_*_{arch}.deb"))]
        found += [Path(p) for p in glob.glob(str(DEBS_DIR / f"{pkg}_*_all.deb"))]
        return _pick_newest(sorted(found)) if found else None

    missing = [p for p in packages if find(p) is None]
    if missing:
        with machine_lock("debs"):
            missing = [p for p in packages if find(p) is None]
            res = subprocess.run(["apt-get", "download", *(f"{p}:{arch}" for p in missing)],
                                 cwd=DEBS_DIR, capture_output=True, text=True, check=False)
        if missing and (res.returncode != 0 or any(find(p) is None for p in missing)):
            raise TestbedError(
                f"apt-get download {missing} for {arch} failed ({res.returncode}); is the "
                f"architecture added (dpkg --add-architecture {arch}) and apt-get update "
                f"done? (scripts/install-deps.sh)\n{res.stderr.strip()}")
    return [p for pkg in packages if (p := find(pkg)) is not None]


# ---------------------------------------------------------------- what the agent imports


def agent_stdlib_modules(repo: Path = REPO_ROOT) -> list[str]:
    """Top-level non-corral modules imported anywhere in ``corral.agent.main``'s import graph.

    Follows ``corral.*`` imports (also the ones inside functions) through the source with
    ``ast``; everything else it meets is what the runtime must provide.
    """
    seen: set[str] = set()
    external: set[str] = set()
    todo = ["corral.agent.main"]  # what `python -m corral agent` runs (corral.__main__: sys)
    while todo:
        mod = todo.pop()
        if mod in seen:
            continue
        seen.add(mod)
        base = repo / Path(*mod.split("."))
        path = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
        if not path.exists():
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
                if node.module.split(".")[0] == "corral":  # `from corral.x import module`
                    names += [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for name in names:
                parts = name.split(".")
                if parts[0] == "corral":
                    todo += [".".join(parts[:i]) for i in range(2, len(parts) + 1)]
                elif parts[0] != "__future__":
                    external.add(name)
    return sorted(external | {"sys"})


# ---------------------------------------------------------------- the root


def root_path(arch: str) -> Path:
    """``/var/lib/corral-testbed/roots/<arch>`` (whether built or not)."""
    arch_info(arch)
    return ROOTS_DIR / arch


def _stamp(arch: str, debs: list[Path]) -> dict[str, object]:
    return {"layout": _LAYOUT_VERSION, "arch": arch, "packages": list(PACKAGES),
            "debs": [d.name for d in debs]}


def root_stamp_digest(arch: str) -> str:
    """A short hash of the built root's stamp (changes whenever the root is rebuilt)."""
    stamp = ROOTS_DIR / f"{arch}.json"
    return hashlib.sha256(stamp.read_bytes()).hexdigest()[:24]


def build_root(arch: str, *, rebuild: bool = False) -> Path:
    """The Python runtime root for Debian architecture ``arch``, built if needed (module doc).

    Needs binfmt_misc for foreign architectures (``daemons.ensure_binfmt``): the build runs
    the root's own interpreter. Holds a machine-wide lock per architecture. A rebuild
    replaces the directory: an agent still running in the old root loses its files.
    """
    info = arch_info(arch)
    root = root_path(arch)
    stamp_path = ROOTS_DIR / f"{arch}.json"
    debs = fetch_debs(arch)
    stamp = _stamp(arch, debs)
    with machine_lock(f"pyroot-{arch}"):
        if (not rebuild and root.is_dir() and stamp_path.exists()
                and json.loads(stamp_path.read_text()) == stamp):
            _verify_once(root, info)
            return root
        ROOTS_DIR.mkdir(parents=True, exist_ok=True)
        tmp = ROOTS_DIR / f".{arch}.build-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            _assemble(tmp, info, debs)
            _compile_stdlib(tmp)
            modules = _verify(tmp, info)
            stamp_path.unlink(missing_ok=True)
            _verified_path(arch).write_text(json.dumps(modules) + "\n")
            old = ROOTS_DIR / f".{arch}.old-{os.getpid()}"
            if root.exists():
                os.rename(root, old)
            os.rename(tmp, root)
            shutil.rmtree(old, ignore_errors=True)
            stamp_path.write_text(json.dumps(stamp, indent=1) + "\n")
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def _assemble(tmp: Path, info: Arch, debs: list[Path]) -> None:
    tmp.mkdir(parents=True)
    for deb in debs:
        subprocess.run(["dpkg", "-x", str(deb), str(tmp)], check=True)
    shutil.rmtree(tmp / "usr" / "lib" / info.triplet / "gconv", ignore_errors=True)
    for name, text in _FILES.items():
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_text(text)
    for point in _MOUNT_POINTS:
        (tmp / point).mkdir(parents=True, exist_ok=True)
    (tmp / "tmp").chmod(0o1777)
    if not (tmp / PYTHON.lstrip("/")).exists():
        raise TestbedError(f"{PYTHON} missing after unpacking {[d.name for d in debs]}")


def _in_root(root: Path, code: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["env", "-i", *(f"{k}={v}" for k, v in _AGENT_ENV.items()
                                          if k != "PYTHONDONTWRITEBYTECODE"),
                           "chroot", str(root), PYTHON, "-c", code],
                          capture_output=True, text=True, timeout=timeout, check=False)


def _compile_stdlib(root: Path) -> None:
    code = ("import compileall, py_compile, sys; sys.exit(not compileall.compile_dir("
            "'/usr/lib/python3.11', quiet=1, invalidation_mode="
            "py_compile.PycInvalidationMode.UNCHECKED_HASH))")
    res = _in_root(root, code)
    if res.returncode != 0:
        raise TestbedError(f"compileall in {root} failed ({res.returncode}):\n"
                           f"{res.stdout[-2000:]}{res.stderr[-2000:]}")


def _verified_path(arch: str) -> Path:
    return ROOTS_DIR / f"{arch}.verified.json"


def _verify_once(root: Path, info: Arch) -> None:
    """Verify again only if the agent's imports changed since the last verification."""
    path = _verified_path(info.debian)
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text()) == agent_stdlib_modules():
            return
    path.write_text(json.dumps(_verify(root, info)) + "\n")


def _verify(root: Path, info: Arch) -> list[str]:
    """Check ``platform.machine()`` and the agent's stdlib imports; return those modules."""
    modules = agent_stdlib_modules()
    code = ("import importlib, platform, sys\n"
            f"bad = []\nfor m in {modules!r}:\n"
            "    try:\n        importlib.import_module(m)\n"
            "    except Exception as e:\n        bad.append(f'{m}: {e!r}')\n"
            "print(platform.machine()); print(';'.join(bad))")
    res = _in_root(root, code)
    lines = res.stdout.splitlines()
    if res.returncode != 0 or len(lines) != 2:
        raise TestbedError(f"{PYTHON} does not run in {root} (binfmt_misc/qemu?): "
                           f"{res.stderr.strip()[-2000:]}")
    if lines[0] != info.machine:
        raise TestbedError(f"{root}: platform.machine() is {lines[0]!r}, "
                           f"expected {info.machine!r}")
    if lines[1]:
        raise TestbedError(f"{root}: modules the agent imports fail: {lines[1]} "
                           f"(add their Debian package to armroot.PACKAGES)")
    return modules


# ---------------------------------------------------------------- running in the root


@dataclasses.dataclass(frozen=True)
class Bind:
    """Bind-mount host directory ``source`` at ``target`` inside the root."""

    source: Path
    target: str
    read_only: bool = False


def _socket_dir(docker_host: str) -> Path:
    if not docker_host.startswith("unix://"):
        raise ValueError(f"only unix:// Docker hosts can be bound into a root: {docker_host!r}")
    sock_dir = Path(os.path.realpath(os.path.dirname(docker_host[len("unix://"):])))
    if sock_dir != Path("/run") and not str(sock_dir).startswith("/run/"):
        raise ValueError(f"the Docker socket's directory must be under /run: {sock_dir}")
    return sock_dir


def chroot_argv(root: Path, argv: list[str], *, binds: list[Bind], run_bind: Path | None = None,
                hostname: str | None = None, env: dict[str, str] | None = None) -> list[str]:
    """The command running ``argv`` (paths inside ``root``) in ``root`` (see module doc).

    ``binds`` are mounted after the standard mounts, in order; their targets must exist in
    the root or lie under /run (a tmpfs, where they are created). ``run_bind`` (a host
    directory under /run) is mounted at the same path instead of a bare /run tmpfs:
    ``/run`` itself replaces the tmpfs. ``env`` replaces the environment entirely.
    """
    q = shlex.quote
    r = q(str(root))
    lines = [
        "set -e",
        f"mount --bind {r} {r}",
        f"mount -o remount,bind,ro {r}",
        f"mount -t proc proc {r}/proc",
        "if [ -e /proc/sys/fs/binfmt_misc/status ]; then "
        f"mount --bind /proc/sys/fs/binfmt_misc {r}/proc/sys/fs/binfmt_misc; fi",
        f"mount --rbind /dev {r}/dev",
        f"mount --rbind /sys {r}/sys",
        f"mount -t tmpfs -o mode=1777 tmpfs {r}/tmp",
    ]
    if run_bind is not None and run_bind == Path("/run"):
        lines.append(f"mount --bind /run {r}/run")
    else:
        lines.append(f"mount -t tmpfs -o mode=0755 tmpfs {r}/run")
        if run_bind is not None:
            target = q(f"{root}{run_bind}")
            lines += [f"mkdir -p {target}", f"mount --bind {q(str(run_bind))} {target}"]
    for b in binds:
        target = q(f"{root}{b.target}")
        if b.target.startswith("/run/"):
            lines.append(f"mkdir -p {target}")
        lines.append(f"mount --bind {'-o ro ' if b.read_only else ''}{q(str(b.source))} {target}")
    if hostname:
        lines.append(f"hostname {q(hostname)}")
    env_args = " ".join(q(f"{k}={v}") for k, v in (env or _AGENT_ENV).items())
    lines.append(f"exec env -i {env_args} chroot {r} {' '.join(q(a) for a in argv)}")
    return ["unshare", "--mount", "--uts", "--propagation", "private", "--",
            "sh", "-c", "\n".join(lines)]


def agent_argv(root: Path, *, server_url: str, token: str, state_dir: Path, docker_host: str,
               name: str | None = None, labels: dict[str, str] | None = None,
               log_level: str = "debug", source: Path = REPO_ROOT / "corral") -> list[str]:
    """The command running ``corral agent`` with the root's interpreter (see module doc).

    ``state_dir`` (host path) appears as /var/lib/corral-agent; the Docker socket's
    directory appears at its own path; ``source`` (the corral package) read-only at
    /opt/corral/corral.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    argv = [PYTHON, "-m", "corral", "agent", "--server", server_url, "--token", token,
            "--state-dir", STATE_MOUNT, "--docker-host", docker_host, "--log-level", log_level]
    if name:
        argv += ["--name", name]
    for k, v in (labels or {}).items():
        argv += ["--label", f"{k}={v}"]
    binds = [Bind(state_dir.resolve(), STATE_MOUNT), Bind(source.resolve(), SOURCE_MOUNT, True)]
    return chroot_argv(root, argv, binds=binds, run_bind=_socket_dir(docker_host),
                       hostname=name)


@dataclasses.dataclass
class ArmAgentProc(AgentProc):
    """An ``AgentProc`` whose agent is the root's interpreter (aarch64/armv7 under qemu).

    ``arch`` is the Debian architecture; ``root`` defaults to ``build_root(arch)``. The
    process started is the agent itself (qemu running python), so ``stop``/``kill9`` and
    ``proc.pid`` mean what they mean for ``AgentProc``.
    """

    arch: str = "arm64"
    root: Path | None = None

    def argv(self) -> list[str]:
        root = self.root if self.root is not None else build_root(self.arch)
        return agent_argv(root, server_url=self.server_url, token=self.join_token,
                          state_dir=self.state_dir, docker_host=self.docker_host, name=self.name,
                          labels=self.labels)

    def start(self) -> ArmAgentProc:
        """Start the agent (as ``AgentProc.start``: in ``netns`` if set)."""
        super().start()
        return self

    @property
    def platform(self) -> str:
        """The OCI platform this agent must report."""
        return arch_info(self.arch).platform


def process_rss_bytes(pid: int) -> int:
    """VmRSS of ``pid`` (for a qemu-run agent: qemu's RSS, guest heap and JIT included)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def main() -> int:
    """``python -m testbed.armroot [ARCH...]``: build the roots, print their paths."""
    from testbed.daemons import ensure_binfmt

    ensure_binfmt()
    for arch in sys.argv[1:] or ["arm64", "armhf"]:
        print(build_root(arch))
    return 0


if __name__ == "__main__":
    sys.exit(main())
