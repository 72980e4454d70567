"""Host facts the agent reports to the server with every heartbeat.

:func:`collect_facts` returns one JSON-able dict.  The scheduler relies on two
of its fields above all:

* ``platform``: the OCI platform of the agent process itself (``uname -m``
  mapped by :func:`corral.platforms.from_uname`, corrected for a 32-bit
  userland on a 64-bit kernel, which is common on Raspberry Pi OS);
* ``emulated_platforms``: the platforms this kernel can only run through
  qemu, read from ``binfmt_misc``.  An entry counts only if it is enabled, its
  interpreter is a qemu binary and it has the ``F`` (fix-binary) flag: without
  ``F`` the kernel looks the interpreter up inside the container's own root,
  so ``docker run`` of a foreign image would fail there.

``docker.platform`` / ``engine_platform`` is what the Docker Engine says it
is; ``platform_mismatch`` is true when it differs from ``platform`` (only in
test beds where an arm64 agent runs under qemu against an amd64 engine), and
it is reported rather than hidden.

Every probe is tolerant: a missing file, a missing ``nvidia-smi`` or an
engine that does not answer gives a default (or ``{"error": ...}`` for the
engine), never an exception.  All file reads go through ``root`` (default
``/``), and the parsing is done by small pure functions (``parse_meminfo``,
``parse_binfmt_entry``, ``parse_nvidia_smi``, ``parse_os_release``,
``parse_cpu_max``, ``parse_proc_cgroup``, ``parse_cgroup_mounts``), so tests
can feed a fake tree or plain strings.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import corral
from corral.agent.runtime.docker import DockerClient, DockerError
from corral.platforms import from_engine, from_uname

__all__ = [
    "QEMU_PLATFORMS",
    "BinfmtEntry",
    "agent_platform",
    "collect_facts",
    "emulated_platforms",
    "parse_binfmt_entry",
    "parse_cgroup_mounts",
    "parse_cpu_max",
    "parse_engine_labels",
    "parse_meminfo",
    "parse_nvidia_smi",
    "parse_os_release",
    "parse_proc_cgroup",
    "probe_cpus",
    "probe_docker",
    "probe_emulated_platforms",
    "probe_engine_extras",
    "probe_gpus",
    "probe_memory_bytes",
    "probe_os",
]

# qemu target name (as in qemu-<target>) -> the OCI platforms it runs.
QEMU_PLATFORMS: dict[str, tuple[str, ...]] = {
    "aarch64": ("linux/arm64",),
    "arm": ("linux/arm/v7", "linux/arm/v6"),
    "i386": ("linux/386",),
    "x86_64": ("linux/amd64",),
    "riscv64": ("linux/riscv64",),
    "ppc64le": ("linux/ppc64le",),
    "ppc64": ("linux/ppc64",),
    "s390x": ("linux/s390x",),
    "mips64el": ("linux/mips64le",),
    "mips64": ("linux/mips64",),
    "mipsel": ("linux/mipsle",),
    "mips": ("linux/mips",),
    "loongarch64": ("linux/loong64",),
}

NVIDIA_SMI_TIMEOUT = 10.0
_MIB = 1024 * 1024


# -- pure parsers --------------------------------------------------------------------


def parse_meminfo(text: str) -> dict[str, int]:
    """``/proc/meminfo`` -> {field: bytes} (``kB`` values are converted to bytes)."""
    out: dict[str, int] = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        parts = rest.split()
        if not sep or not parts:
            continue
        try:
            value = int(parts[0])
        except ValueError:
            continue
        if len(parts) > 1 and parts[1].lower() == "kb":
            value *= 1024
        out[key.strip()] = value
    return out


@dataclass(frozen=True)
class BinfmtEntry:
    """One ``/proc/sys/fs/binfmt_misc/<name>`` registration."""

    name: str
    enabled: bool
    interpreter: str
    flags: str
    qemu_target: str | None  # "aarch64", "arm", ... when the interpreter is qemu

    @property
    def platforms(self) -> tuple[str, ...]:
        return QEMU_PLATFORMS.get(self.qemu_target or "", ())


def _qemu_target(interpreter: str) -> str | None:
    base = os.path.basename(interpreter)
    if base.startswith("qemu-"):
        # /usr/bin/qemu-aarch64-static, /usr/bin/qemu-aarch64 (tonistiigi/binfmt)
        target = base[len("qemu-") :]
        return target.removesuffix("-static") or None
    if "qemu" in interpreter and "-binfmt" in base:
        # Debian's qemu-user-static: /usr/libexec/qemu-binfmt/aarch64-binfmt-P,
        # a symlink to /usr/bin/qemu-aarch64-static
        return base.split("-binfmt", 1)[0] or None
    return None


def parse_binfmt_entry(name: str, text: str) -> BinfmtEntry:
    """Parse a binfmt_misc entry file (first line ``enabled``/``disabled``, then ``key value``)."""
    lines = text.splitlines()
    enabled = bool(lines) and lines[0].strip() == "enabled"
    interpreter = ""
    flags = ""
    for line in lines[1:]:
        key, _, value = line.strip().partition(" ")
        if key == "interpreter":
            interpreter = value.strip()
        elif key == "flags:":
            flags = value.strip()
    return BinfmtEntry(name, enabled, interpreter, flags, _qemu_target(interpreter))


def emulated_platforms(entries: list[BinfmtEntry], native: str) -> list[str]:
    """Sorted OCI platforms runnable only through qemu (see module docstring for the rule)."""
    found: set[str] = set()
    for entry in entries:
        if entry.enabled and entry.qemu_target and "F" in entry.flags:
            found.update(entry.platforms)
    found.discard(native)
    return sorted(found)


def parse_nvidia_smi(text: str) -> list[dict[str, Any]]:
    """``nvidia-smi --query-gpu=index,name,uuid,memory.total --format=csv,noheader,nounits``."""
    gpus: list[dict[str, Any]] = []
    for line in text.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 4 or not fields[0]:
            continue
        # a GPU name may itself contain a comma: index first, uuid and memory last
        index, name, uuid, memory = fields[0], ", ".join(fields[1:-2]), fields[-2], fields[-1]
        try:
            idx = int(index)
        except ValueError:
            continue
        try:
            memory_bytes: int | None = int(float(memory) * _MIB)
        except ValueError:  # "[N/A]"
            memory_bytes = None
        gpus.append({"index": idx, "name": name, "uuid": uuid, "memory_bytes": memory_bytes})
    return gpus


def parse_os_release(text: str) -> dict[str, str]:
    """``/etc/os-release`` -> {KEY: value}, quotes removed."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] == "'":
            value = value[1:-1]
        elif len(value) >= 2 and value[0] == value[-1] == '"':
            value = value[1:-1]
            for esc in ('\\"', "\\$", "\\`", "\\\\"):
                value = value.replace(esc, esc[1])
        out[key.strip()] = value
    return out


def parse_cpu_max(text: str) -> float | None:
    """cgroup v2 ``cpu.max`` (``"150000 100000"`` -> 1.5, ``"max 100000"`` -> None)."""
    parts = text.split()
    if not parts or parts[0] == "max":
        return None
    try:
        quota = int(parts[0])
        period = int(parts[1]) if len(parts) > 1 else 100000
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def parse_proc_cgroup(text: str) -> dict[str, str]:
    """``/proc/self/cgroup`` -> {controller: path}; the cgroup v2 path is under ``""``."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        for controller in parts[1].split(",") if parts[1] else [""]:
            out[controller] = parts[2]
    return out


def parse_cgroup_mounts(mountinfo: str) -> dict[str, tuple[str, str]]:
    """``/proc/self/mountinfo`` -> {controller: (cgroup root of the mount, mount point)}.

    cgroup v1 controllers are keyed by name (``cpu``, ``memory``); the cgroup v2
    hierarchy by ``""``.
    """
    out: dict[str, tuple[str, str]] = {}
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 1:
            continue
        root, mount_point = _unescape_mount(fields[3]), _unescape_mount(fields[4])
        if tail[0] == "cgroup2":
            out.setdefault("", (root, mount_point))
        elif tail[0] == "cgroup" and len(tail) >= 3:
            for opt in tail[2].split(","):
                if opt in ("cpu", "memory"):
                    out.setdefault(opt, (root, mount_point))
    return out


def _unescape_mount(text: str) -> str:
    return (
        text.replace("\\040", " ")
        .replace("\\011", "\t")
        .replace("\\012", "\n")
        .replace("\\134", "\\")
    )


# -- probes ----------------------------------------------------------------------------


def _read(root: str, path: str) -> str | None:
    try:
        with open(os.path.join(root, path.lstrip("/")), encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def agent_platform(machine: str | None = None, pointer_bits: int | None = None) -> str:
    """The OCI platform of this process (not necessarily of the kernel)."""
    machine = machine if machine is not None else os.uname().machine
    bits = pointer_bits if pointer_bits is not None else (64 if sys.maxsize > 2**32 else 32)
    if bits == 32:
        # 32-bit userland on a 64-bit kernel: uname says the kernel's machine,
        # but this process (and what it should run) is 32-bit.
        machine = {"aarch64": "armv7l", "arm64": "armv7l", "x86_64": "i686"}.get(machine, machine)
    return str(from_uname(machine))


PER_LINUX32 = 0x0008
PERSONALITY_QUERY = 0xFFFFFFFF


def probe_arm32(platform: str, personality: Callable[[int], int] | None = None) -> bool:
    """Can this arm64 host run 32-bit ARM (arm/v7, arm/v6) code natively?

    Many ARMv8 server chips have no AArch32 at EL0.  On arm64, Linux's
    personality(2) refuses PER_LINUX32 exactly when no CPU can run 32-bit
    processes, so asking it (and restoring the old persona) is the probe.
    """
    if not platform.startswith("linux/arm64"):
        return False
    if personality is None:
        import ctypes  # only on arm64 hosts: keeps the agent small elsewhere

        personality = ctypes.CDLL(None, use_errno=True).personality
    old = personality(PERSONALITY_QUERY)
    if old == -1:
        return False
    ok = personality(PER_LINUX32) != -1
    personality(old)
    return ok


def _cgroup_dirs(root: str, controller: str) -> list[str]:
    """The cgroup directories (leaf first, up to the mount point) limiting this process."""
    mounts = parse_cgroup_mounts(_read(root, "/proc/self/mountinfo") or "")
    paths = parse_proc_cgroup(_read(root, "/proc/self/cgroup") or "")
    if controller not in mounts:
        return []
    mount_root, mount_point = mounts[controller]
    path = paths.get(controller, "/")
    # Inside a container the mount root may be the container's own cgroup.
    if mount_root != "/" and (path == mount_root or path.startswith(mount_root + "/")):
        path = path[len(mount_root) :] or "/"
    dirs = []
    rel = path.strip("/")
    while True:
        dirs.append(os.path.join(mount_point, rel) if rel else mount_point)
        if not rel:
            break
        rel = os.path.dirname(rel)
    return dirs


def _cgroup_cpu_limit(root: str) -> float | None:
    limits: list[float] = []
    for d in _cgroup_dirs(root, ""):
        text = _read(root, os.path.join(d, "cpu.max"))
        value = parse_cpu_max(text) if text else None
        if value:
            limits.append(value)
    for d in _cgroup_dirs(root, "cpu"):
        quota = _read(root, os.path.join(d, "cpu.cfs_quota_us"))
        period = _read(root, os.path.join(d, "cpu.cfs_period_us"))
        if quota and period:
            value = parse_cpu_max(f"{quota.strip()} {period.strip()}")
            if value:
                limits.append(value)
    return min(limits) if limits else None


def _cgroup_memory_limit(root: str) -> int | None:
    limits: list[int] = []
    for d, name in [(d, "memory.max") for d in _cgroup_dirs(root, "")] + [
        (d, "memory.limit_in_bytes") for d in _cgroup_dirs(root, "memory")
    ]:
        text = (_read(root, os.path.join(d, name)) or "").strip()
        if text.isdigit() and int(text) > 0:
            limits.append(int(text))  # v1 "unlimited" is a huge number: MemTotal wins
    return min(limits) if limits else None


def probe_cpus(root: str = "/", affinity: int | None = None) -> int | float:
    """CPUs this process may use: the affinity mask, capped by a cgroup CPU quota.

    An int, or a float rounded to 2 decimals when a quota allows a fraction.
    """
    if affinity is None:
        try:
            affinity = len(os.sched_getaffinity(0))
        except (AttributeError, OSError):
            affinity = os.cpu_count() or 1
    cpus: float = float(affinity)
    quota = _cgroup_cpu_limit(root)
    if quota is not None:
        cpus = min(cpus, quota)
    cpus = round(cpus, 2)
    return int(cpus) if cpus.is_integer() else cpus


def probe_memory_bytes(root: str = "/") -> int:
    """MemTotal, or the cgroup memory limit when it is smaller; 0 if unknown."""
    total = parse_meminfo(_read(root, "/proc/meminfo") or "").get("MemTotal", 0)
    limit = _cgroup_memory_limit(root)
    if limit is not None and (total == 0 or limit < total):
        return limit
    return total


def probe_emulated_platforms(native: str, root: str = "/") -> list[str]:
    """Platforms runnable only through qemu according to ``binfmt_misc``."""
    base = os.path.join(root, "proc/sys/fs/binfmt_misc")
    status = _read(base, "status")
    if status is not None and status.strip() != "enabled":
        return []
    try:
        names = sorted(os.listdir(base))
    except OSError:
        return []
    entries = []
    for name in names:
        if name in ("status", "register"):
            continue
        text = _read(base, name)
        if text is not None:
            entries.append(parse_binfmt_entry(name, text))
    return emulated_platforms(entries, native)


def _which(name: str) -> str | None:
    # Not shutil.which: importing shutil loads the bz2/lzma libraries (~1 MB RSS).
    for d in os.environ.get("PATH", os.defpath).split(os.pathsep):
        path = os.path.join(d or ".", name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def probe_gpus(timeout: float = NVIDIA_SMI_TIMEOUT) -> list[dict[str, Any]]:
    """NVIDIA GPUs via ``nvidia-smi``; [] without it, on error or on timeout."""
    exe = _which("nvidia-smi")
    if exe is None:
        return []
    import subprocess  # only on GPU hosts: keeps the agent's import cost down elsewhere

    try:
        proc = subprocess.run(
            [exe, "--query-gpu=index,name,uuid,memory.total", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    if proc.returncode != 0:
        return []
    return parse_nvidia_smi(proc.stdout)


def probe_os(root: str = "/") -> str:
    """PRETTY_NAME from os-release (``/etc``, then ``/usr/lib``); ``"Linux"`` if none."""
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        text = _read(root, path)
        if text is not None:
            info = parse_os_release(text)
            name = info.get("PRETTY_NAME") or info.get("NAME")
            if name:
                return name
    return os.uname().sysname or "Linux"


def probe_docker(docker: DockerClient | None) -> dict[str, Any]:
    """The engine's version and platform, or ``{"error": ...}``."""
    if docker is None:
        return {"error": "no Docker Engine configured"}
    try:
        v = docker.version()
    except DockerError as exc:
        return {"error": exc.message}
    except (OSError, ValueError) as exc:
        return {"error": f"unreadable answer from the Docker Engine: {exc}"}
    os_name = str(v.get("Os") or "linux")
    arch = str(v.get("Arch") or "")
    return {
        "version": str(v.get("Version") or ""),
        "api_version": str(v.get("ApiVersion") or ""),
        "os": os_name,
        "arch": arch,
        "platform": str(from_engine(arch, os_name)) if arch else None,
    }


def parse_engine_labels(items: list[str] | None) -> dict[str, str]:
    """``docker info`` Labels (``["zone=edge", "storage=ssd"]``) as a mapping; ``KEY`` alone maps to ``""``."""
    labels = {}
    for item in items or ():
        key, _, value = str(item).partition("=")
        if key:
            labels[key] = value
    return labels


def probe_engine_extras(docker: DockerClient | None) -> tuple[dict[str, str], list[str]]:
    """The engine's labels (for ``engine.labels.*`` constraints) and the image digests it holds
    (for image locality); empty when the engine does not answer."""
    if docker is None:
        return {}, []
    try:
        return parse_engine_labels(docker.info().get("Labels")), docker.image_digests()
    except (DockerError, OSError, ValueError, AttributeError):
        return {}, []


def collect_facts(
    docker: DockerClient | None,
    labels: dict[str, str],
    hostname: str | None = None,
    *,
    root: str = "/",
    machine: str | None = None,
    affinity: int | None = None,
    kernel: str | None = None,
    gpus: list[dict[str, Any]] | None = None,
    arm32: bool | None = None,
) -> dict[str, Any]:
    """Everything the server needs to know about this host, as a JSON-able dict.

    The keyword-only arguments exist for tests: a fake filesystem ``root``, a
    ``machine`` (``uname -m``), an ``affinity`` CPU count, a ``kernel`` release,
    a ``gpus`` list instead of running ``nvidia-smi``, and ``arm32`` instead of
    asking the kernel.
    """
    platform = agent_platform(machine)
    engine = probe_docker(docker)
    engine_platform = engine.get("platform")
    engine_labels, images = probe_engine_extras(docker) if "error" not in engine else ({}, [])
    return {
        "hostname": hostname or socket.gethostname(),
        "platform": platform,
        "emulated_platforms": probe_emulated_platforms(platform, root),
        "arm32": probe_arm32(platform) if arm32 is None else arm32,
        "cpus": probe_cpus(root, affinity),
        "memory_bytes": probe_memory_bytes(root),
        "gpus": probe_gpus() if gpus is None else gpus,
        "os": probe_os(root),
        "kernel": kernel if kernel is not None else os.uname().release,
        "docker": engine,
        "engine_platform": engine_platform,
        "platform_mismatch": engine_platform is not None and engine_platform != platform,
        "engine_labels": engine_labels,
        "images": images,
        "labels": dict(labels),
        "agent_version": corral.__version__,
    }
