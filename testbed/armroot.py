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

The network tools layer (``build_root(arch, network_tools=True)``, for the overlay)
  A second root, /var/lib/corral-testbed/roots/<arch>-net/ with its own stamp
  (``<arch>-net.json``): a copy of the Python root plus what the agent's
  ``corral.agent.wireguard`` runs. The Python-only roots are not touched. Of the root's
  own architecture (:data:`NET_PACKAGES`): ``ip`` (iproute2 and the libraries /bin/ip
  links: libbpf, libelf, libmnl, libbsd, libmd, libcap; not libdb, libselinux, libtirpc or
  libxtables, which serve arpd, ss and tc), ``wg`` (wireguard-tools), ``wireguard-go`` and
  busybox-static, whose applets stand in for procps: ``/usr/sbin/sysctl`` and ``/bin/kill``
  link to /bin/busybox. No /bin/sh: nothing the agent runs needs one.

  ``iptables`` is the machine's architecture, amd64 (:data:`HOST_NET_PACKAGES`: iptables,
  its libraries, netbase and amd64 glibc with its loader /lib64/ld-linux-x86-64.so.2), a
  multiarch co-install: its files land in /usr/lib/x86_64-linux-gnu and /lib64 and never
  replace one of the root's (they are merged without overwriting). This is a limit of
  qemu-user only, not of the agent: qemu does not pass NETLINK_NETFILTER sockets through,
  so an arm64 ``iptables-nft`` fails ("Failed to initialize nft: Protocol not supported"),
  and ``iptables-legacy`` would not do, since the namespace's dockerd writes nft rules (a
  legacy ACCEPT cannot override nft's FORWARD DROP). A real arm64 board runs its own
  iptables. ``/usr/sbin/iptables`` -> ``iptables-nft`` -> ``xtables-nft-multi``, as
  Debian's alternatives (priority 20 over legacy's 10) point it; dpkg -x runs no
  maintainer scripts, so the build makes those links (and the -save/-restore and ip6tables
  ones) itself.

  ``/var/run`` becomes a link to ``/run`` (a tmpfs at run time): wireguard-go, ``wg`` and
  the agent all use /var/run/wireguard/NAME.sock, which must be writable in the otherwise
  read-only root. (``iptables -w`` needs nothing there: iptables-nft accepts ``-w`` and
  takes no /run/xtables.lock, nft transactions being atomic; only iptables-legacy does.)
  The build checks, for every tool, the ELF machine it must have and that every library
  it (and each iptables extension) needs is in the root, then runs each one (``-V`` or
  ``--version``) in the root.

  With ``overlay=True``, :func:`agent_argv` / :class:`ArmAgentProc` use that root, set
  ``CORRAL_OVERLAY=on`` and bind the host's /run/wireguard at /run/wireguard (as on a
  real host, the UAPI socket directory is the machine's: the host's ``wg show NAME`` sees
  the interface, an agent restart finds its wireguard-go again, and interface names must
  differ across the namespaces of one machine). /dev (hence /dev/net/tun) is bound
  already; the agent runs as root.

  Under qemu-user, /proc/PID/cmdline of a foreign process is qemu's:
  ``/usr/libexec/qemu-binfmt/aarch64-binfmt-P /usr/bin/wireguard-go wireguard-go NAME``,
  so ``pgrep -f '^wireguard-go NAME$'`` and the agent's ``find_wireguard_go`` (which looks
  at argv[0]) do not find it (the status reports no pid; its health, which asks the UAPI
  socket, is unaffected). ``python -m testbed.armnet_check`` exercises all of this.
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

# The network tools layer (module doc): of the root's architecture ...
NET_PACKAGES: tuple[str, ...] = (
    "iproute2", "libbpf1", "libelf1", "libmnl0", "libbsd0", "libmd0", "libcap2",
    "wireguard-tools", "wireguard-go", "busybox-static",
)
# ... and of the machine's (qemu-user cannot run a foreign iptables-nft).
HOST_ARCH = "amd64"
HOST_NET_PACKAGES: tuple[str, ...] = (
    "libc6", "libgcc-s1", "iptables", "libxtables12", "libip4tc2", "libip6tc2", "libmnl0",
    "libnftnl11", "libnetfilter-conntrack3", "libnfnetlink0", "netbase",
)
# Links the build makes (path in the root -> target), as dpkg's alternatives would.
_NET_LINKS = {
    "usr/sbin/iptables": "iptables-nft",
    "usr/sbin/iptables-save": "iptables-nft-save",
    "usr/sbin/iptables-restore": "iptables-nft-restore",
    "usr/sbin/ip6tables": "ip6tables-nft",
    "usr/sbin/ip6tables-save": "ip6tables-nft-save",
    "usr/sbin/ip6tables-restore": "ip6tables-nft-restore",
    "usr/sbin/sysctl": "../../bin/busybox",
    "bin/kill": "busybox",
}
# Command -> (arguments that print a version and exit 0, which architecture it must be:
# "root" = the root's own, "host" = HOST_ARCH).
NET_TOOLS: dict[str, tuple[tuple[str, ...], str]] = {
    "ip": (("-V",), "root"),
    "wg": (("--version",), "root"),
    "wireguard-go": (("--version",), "root"),
    "sysctl": (("--help",), "root"),
    "kill": (("-l",), "root"),
    "iptables": (("-V",), "host"),
}
HOST_WIREGUARD_DIR = Path("/run/wireguard")  # bound at /run/wireguard in overlay mode

# Inside the root: where the runner mounts things (created at build time: the root is
# read-only at run time).
SOURCE_MOUNT = "/opt/corral/corral"
PYTHONPATH = "/opt/corral"
STATE_MOUNT = "/var/lib/corral-agent"
_MOUNT_POINTS = ("proc", "dev", "sys", "run", "tmp", SOURCE_MOUNT.lstrip("/"),
                 STATE_MOUNT.lstrip("/"))

_LAYOUT_VERSION = "corral-testbed-pyroot-1"  # bump when the build steps change
_NET_LAYOUT_VERSION = "corral-testbed-netroot-1"  # the same, for the network tools layer
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
    "CORRAL_OVERLAY": "off",  # no ip, wg or iptables here; agent_env(overlay=True): on
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


def _root_name(arch: str, network_tools: bool = False) -> str:
    arch_info(arch)
    return f"{arch}-net" if network_tools else arch


def root_path(arch: str, *, network_tools: bool = False) -> Path:
    """``/var/lib/corral-testbed/roots/<arch>`` (``<arch>-net`` with the network tools),
    whether built or not."""
    return ROOTS_DIR / _root_name(arch, network_tools)


def _stamp(arch: str, debs: list[Path]) -> dict[str, object]:
    return {"layout": _LAYOUT_VERSION, "arch": arch, "packages": list(PACKAGES),
            "debs": [d.name for d in debs]}


def root_stamp_digest(arch: str, *, network_tools: bool = False) -> str:
    """A short hash of the built root's stamp (changes whenever the root is rebuilt)."""
    stamp = ROOTS_DIR / f"{_root_name(arch, network_tools)}.json"
    return hashlib.sha256(stamp.read_bytes()).hexdigest()[:24]


def build_root(arch: str, *, rebuild: bool = False, network_tools: bool = False) -> Path:
    """The Python runtime root for Debian architecture ``arch``, built if needed (module doc).

    Needs binfmt_misc for foreign architectures (``daemons.ensure_binfmt``): the build runs
    the root's own interpreter. Holds a machine-wide lock per architecture. A rebuild
    replaces the directory: an agent still running in the old root loses its files.

    ``network_tools``: the root with ip, wg, wireguard-go, sysctl and (amd64) iptables
    for the overlay, ``roots/<arch>-net`` (module doc); it is built from the Python root
    (built first if needed) and rebuilt whenever that one is. ``rebuild`` then rebuilds
    only the network layer.
    """
    if network_tools:
        return _build_net_root(arch, rebuild=rebuild)
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
            _swap_in(tmp, root, stamp_path, stamp)
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


# ---------------------------------------------------------------- the network tools layer


_EM_ARCH = {183: "arm64", 40: "armhf", 62: "amd64"}  # ELF e_machine -> Debian architecture
_EM_NAMES = {3: "i386", 8: "mips", 20: "ppc", 21: "ppc64", 22: "s390", 40: "arm",
             62: "x86-64", 183: "aarch64", 243: "riscv"}


@dataclasses.dataclass(frozen=True)
class ElfInfo:
    """What an ELF file's header and dynamic section say."""

    e_machine: int
    bits: int
    interpreter: str | None  # PT_INTERP (None: static, or a shared library)
    needed: tuple[str, ...]  # DT_NEEDED sonames, in order

    @property
    def machine(self) -> str:
        """``aarch64``, ``arm``, ``x86-64`` ... (as ``file`` names them)."""
        return _EM_NAMES.get(self.e_machine, f"e_machine {self.e_machine}")

    @property
    def arch(self) -> str | None:
        """The Debian architecture (arm64, armhf, amd64), None for another machine."""
        return _EM_ARCH.get(self.e_machine)

    @property
    def static(self) -> bool:
        return self.interpreter is None and not self.needed


def elf_info(path: Path) -> ElfInfo | None:
    """Parse ``path``'s ELF header, program headers and DT_NEEDED; None if not ELF."""
    import struct

    try:
        data = path.read_bytes()
    except OSError:
        return None
    if data[:4] != b"\x7fELF" or len(data) < 52:
        return None
    bits = 64 if data[4] == 2 else 32
    end = "<" if data[5] == 1 else ">"
    (e_machine,) = struct.unpack_from(end + "H", data, 18)
    if bits == 64:
        e_phoff, = struct.unpack_from(end + "Q", data, 32)
        e_phentsize, e_phnum = struct.unpack_from(end + "HH", data, 54)
    else:
        e_phoff, = struct.unpack_from(end + "I", data, 28)
        e_phentsize, e_phnum = struct.unpack_from(end + "HH", data, 42)
    loads: list[tuple[int, int, int]] = []  # (vaddr, offset, filesz)
    dynamic: tuple[int, int] | None = None
    interp = None
    for i in range(e_phnum):
        off = e_phoff + i * e_phentsize
        if bits == 64:
            p_type, _fl, p_offset, p_vaddr, _pa, p_filesz = struct.unpack_from(
                end + "IIQQQQ", data, off)
        else:
            p_type, p_offset, p_vaddr, _pa, p_filesz = struct.unpack_from(end + "IIIII", data, off)
        if p_type == 1:
            loads.append((p_vaddr, p_offset, p_filesz))
        elif p_type == 2:
            dynamic = (p_offset, p_filesz)
        elif p_type == 3:
            interp = data[p_offset:p_offset + p_filesz].rstrip(b"\0").decode()
    needed_offsets: list[int] = []
    strtab = None
    if dynamic is not None:
        fmt, size = (end + "qQ", 16) if bits == 64 else (end + "iI", 8)
        for off in range(dynamic[0], dynamic[0] + dynamic[1] - size + 1, size):
            tag, val = struct.unpack_from(fmt, data, off)
            if tag == 0:
                break
            if tag == 1:
                needed_offsets.append(val)
            elif tag == 5:
                strtab = val
    needed: list[str] = []
    if strtab is not None:
        base = next((o + strtab - v for v, o, sz in loads if v <= strtab < v + sz), None)
        for n in needed_offsets:
            if base is not None:
                start = base + n
                needed.append(data[start:data.index(b"\0", start)].decode())
    return ElfInfo(e_machine, bits, interp, tuple(needed))


def resolve_in_root(root: Path, path: str) -> Path | None:
    """The host path of ``path`` (absolute, inside ``root``), symlinks followed as inside
    the chroot (absolute targets are the root's); None if it does not exist there."""
    parts = [p for p in path.split("/") if p]
    cur: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            if cur:
                cur.pop()
            continue
        host = root.joinpath(*cur, part)
        if host.is_symlink():
            hops += 1
            if hops > 40:
                return None
            target = os.readlink(host)
            if target.startswith("/"):
                cur = []
            parts = [p for p in target.split("/") if p] + parts
            continue
        if not os.path.lexists(host):
            return None
        cur.append(part)
    return root.joinpath(*cur)


def which_in_root(root: Path, command: str, path_var: str = _AGENT_ENV["PATH"]) -> str | None:
    """Where ``command`` is found on ``path_var`` inside ``root`` (a path in the root)."""
    for d in path_var.split(":"):
        found = resolve_in_root(root, f"{d}/{command}")
        if found is not None and found.is_file() and os.access(found, os.X_OK):
            return f"{d}/{command}"
    return None


def missing_libraries(root: Path, path: str) -> list[str]:
    """What ``path`` (in ``root``) needs that the root lacks: its loader, and each DT_NEEDED
    soname (transitively) in the library directories of the ELF's own architecture."""
    missing: list[str] = []
    seen: set[str] = set()
    todo = [path]
    while todo:
        cur = todo.pop()
        host = resolve_in_root(root, cur)
        info = elf_info(host) if host is not None else None
        if info is None:
            missing.append(f"{cur} (not an ELF file in the root)")
            continue
        if info.interpreter and resolve_in_root(root, info.interpreter) is None:
            missing.append(f"{info.interpreter} (loader of {cur})")
        arch = info.arch
        triplet = ARCHES[arch].triplet if arch else ""
        dirs = [f"/lib/{triplet}", f"/usr/lib/{triplet}", "/lib", "/usr/lib"]
        for soname in info.needed:
            key = f"{arch}:{soname}"
            if key in seen:
                continue
            seen.add(key)
            found = next((f"{d}/{soname}" for d in dirs
                          if resolve_in_root(root, f"{d}/{soname}") is not None), None)
            if found is None:
                missing.append(f"{soname} ({info.machine}, needed by {cur})")
            else:
                todo.append(found)
    return missing


def _net_stamp(arch: str, foreign: list[Path], host: list[Path]) -> dict[str, object]:
    return {"layout": _NET_LAYOUT_VERSION, "arch": arch, "base": root_stamp_digest(arch),
            "packages": list(NET_PACKAGES), "host_arch": HOST_ARCH,
            "host_packages": list(HOST_NET_PACKAGES),
            "debs": [d.name for d in foreign], "host_debs": [d.name for d in host]}


def _build_net_root(arch: str, *, rebuild: bool) -> Path:
    info = arch_info(arch)
    base = build_root(arch)
    foreign = fetch_debs(arch, tuple(p for p in NET_PACKAGES if p not in PACKAGES))
    host = fetch_debs(HOST_ARCH, HOST_NET_PACKAGES)
    name = _root_name(arch, True)
    root = root_path(arch, network_tools=True)
    stamp_path = ROOTS_DIR / f"{name}.json"
    # Lock order: the net root's, then the Python root's (held while it is copied).
    with machine_lock(f"pyroot-{name}"), machine_lock(f"pyroot-{arch}"):
        stamp = _net_stamp(arch, foreign, host)
        if (not rebuild and root.is_dir() and stamp_path.exists()
                and json.loads(stamp_path.read_text()) == stamp):
            return root
        tmp = ROOTS_DIR / f".{name}.build-{os.getpid()}"
        staging = ROOTS_DIR / f".{name}.host-{os.getpid()}"
        for d in (tmp, staging):
            shutil.rmtree(d, ignore_errors=True)
        try:
            subprocess.run(["cp", "-a", "--reflink=auto", str(base), str(tmp)], check=True)
            for deb in foreign:
                subprocess.run(["dpkg", "-x", str(deb), str(tmp)], check=True)
            staging.mkdir()
            for deb in host:
                subprocess.run(["dpkg", "-x", str(deb), str(staging)], check=True)
            for a in ARCHES.values():
                shutil.rmtree(staging / "usr" / "lib" / a.triplet / "gconv", ignore_errors=True)
            _merge_tree(staging, tmp)
            _add_net_links(tmp)
            _verify_net_tools(tmp, info)
            stamp_path.unlink(missing_ok=True)
            _swap_in(tmp, root, stamp_path, stamp)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(staging, ignore_errors=True)
    return root


def _swap_in(tmp: Path, root: Path, stamp_path: Path, stamp: object) -> None:
    """Put the finished ``tmp`` in place of ``root`` (the old one moved aside, then deleted),
    and only then write its stamp: a crash in between leaves no stamp, so a rebuild."""
    old = ROOTS_DIR / f".{root.name}.old-{os.getpid()}"
    if root.exists():
        os.rename(root, old)
    os.rename(tmp, root)
    shutil.rmtree(old, ignore_errors=True)
    stamp_path.write_text(json.dumps(stamp, indent=1) + "\n")


def _merge_tree(src: Path, dst: Path) -> None:
    """Move ``src``'s entries into ``dst`` where ``dst`` has nothing at that path (a
    multiarch co-install: the root's own files always win)."""
    for entry in os.scandir(src):
        target = dst / entry.name
        if not os.path.lexists(target):
            os.rename(entry.path, target)
        elif entry.is_dir(follow_symlinks=False) and target.is_dir() \
                and not target.is_symlink():
            _merge_tree(Path(entry.path), target)


def _add_net_links(root: Path) -> None:
    for link, target in _NET_LINKS.items():
        path = root / link
        path.parent.mkdir(parents=True, exist_ok=True)
        if os.path.lexists(path):
            path.unlink()
        path.symlink_to(target)
    var_run = root / "var" / "run"
    if var_run.is_symlink() or var_run.is_file():
        var_run.unlink()
    else:
        shutil.rmtree(var_run, ignore_errors=True)
    var_run.symlink_to("../run")


@dataclasses.dataclass(frozen=True)
class ToolReport:
    """One of :data:`NET_TOOLS` in a root (:func:`net_tool_report`)."""

    tool: str
    path: str | None  # where PATH finds it in the root
    file: str | None  # the file that resolves to (in the root)
    machine: str | None  # ELF machine: aarch64, arm, x86-64
    arch: str | None  # its Debian architecture
    want: str  # the architecture it must be
    static: bool | None
    missing: tuple[str, ...]  # loader or libraries it needs that the root lacks

    @property
    def ok(self) -> bool:
        return self.path is not None and self.arch == self.want and not self.missing


def net_tool_report(root: Path, arch: str) -> list[ToolReport]:
    """Each of :data:`NET_TOOLS` in ``root``: where it is, what it is, what it lacks."""
    out = []
    for tool, (_args, which_arch) in NET_TOOLS.items():
        want = arch if which_arch == "root" else HOST_ARCH
        path = which_in_root(root, tool)
        host = resolve_in_root(root, path) if path else None
        info = elf_info(host) if host is not None else None
        out.append(ToolReport(
            tool, path, "/" + str(host.relative_to(root)) if host else None,
            info.machine if info else None, info.arch if info else None, want,
            info.static if info else None,
            tuple(missing_libraries(root, path)) if path else ("not on PATH",)))
    return out


def _verify_net_tools(root: Path, info: Arch) -> None:
    """Every tool: on PATH, the right ELF machine, its libraries (and iptables' extensions')
    in the root, and it runs (a version or help flag) in the root."""
    problems = []
    for rep in net_tool_report(root, info.debian):
        if rep.path is None:
            problems.append(f"{rep.tool}: not on PATH")
            continue
        if rep.arch != rep.want:
            problems.append(f"{rep.tool}: {rep.file} is {rep.machine}, expected {rep.want}")
        problems += [f"{rep.tool}: missing {m}" for m in rep.missing]
    ext_dir = f"/usr/lib/{ARCHES[HOST_ARCH].triplet}/xtables"
    for ext in sorted((root / ext_dir.lstrip("/")).glob("*.so")):
        problems += [f"iptables extension {ext.name}: missing {m}"
                     for m in missing_libraries(root, f"{ext_dir}/{ext.name}")]
    if not problems:
        for tool, (args, _) in NET_TOOLS.items():
            res = _run_in_root(root, [tool, *args], timeout=120)
            if res.returncode != 0:
                problems.append(f"`{tool} {' '.join(args)}` in the root failed "
                                f"({res.returncode}): {(res.stderr or res.stdout).strip()[-500:]}")
    if problems:
        raise TestbedError(f"network tools in {root} are incomplete (binfmt_misc/qemu? "
                           f"armroot.NET_PACKAGES/HOST_NET_PACKAGES?):\n  "
                           + "\n  ".join(problems))


def _run_in_root(root: Path, argv: list[str], timeout: float = 600
                 ) -> subprocess.CompletedProcess[str]:
    """``argv`` in ``root`` with a plain chroot (no /proc, /dev or /run mounted)."""
    return subprocess.run(["env", "-i", *(f"{k}={v}" for k, v in _AGENT_ENV.items()),
                           "chroot", str(root), *argv],
                          capture_output=True, text=True, timeout=timeout, check=False)


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


def agent_env(*, overlay: bool = False) -> dict[str, str]:
    """The agent's whole environment in the root (``CORRAL_OVERLAY`` on or off)."""
    return {**_AGENT_ENV, "CORRAL_OVERLAY": "on" if overlay else "off"}


def has_network_tools(root: Path) -> bool:
    """Whether every one of :data:`NET_TOOLS` is on the agent's PATH in ``root``."""
    return all(which_in_root(root, tool) for tool in NET_TOOLS)


def agent_argv(root: Path, *, server_url: str, token: str, state_dir: Path, docker_host: str,
               name: str | None = None, labels: dict[str, str] | None = None,
               log_level: str = "debug", source: Path = REPO_ROOT / "corral",
               overlay: bool = False, wireguard_dir: Path | None = HOST_WIREGUARD_DIR,
               extra_args: list[str] | tuple[str, ...] = ()) -> list[str]:
    """The command running ``corral agent`` with the root's interpreter (see module doc).

    ``state_dir`` (host path) appears as /var/lib/corral-agent; the Docker socket's
    directory appears at its own path; ``source`` (the corral package) read-only at
    /opt/corral/corral. ``extra_args`` go after the agent's other arguments.

    ``overlay``: ``CORRAL_OVERLAY=on``; ``root`` must have the network tools
    (``build_root(arch, network_tools=True)``). ``wireguard_dir`` (a host directory,
    created if missing) is bound at /run/wireguard, where wireguard-go puts its UAPI
    sockets (default the host's own /run/wireguard, as for an agent on the host itself;
    None: the root's private /run).
    """
    if overlay and not has_network_tools(root):
        raise TestbedError(f"{root} has no network tools for the overlay: use "
                           f"build_root(arch, network_tools=True)")
    state_dir.mkdir(parents=True, exist_ok=True)
    argv = [PYTHON, "-m", "corral", "agent", "--server", server_url, "--token", token,
            "--state-dir", STATE_MOUNT, "--docker-host", docker_host, "--log-level", log_level]
    if name:
        argv += ["--name", name]
    for k, v in (labels or {}).items():
        argv += ["--label", f"{k}={v}"]
    argv += list(extra_args)
    binds = [Bind(state_dir.resolve(), STATE_MOUNT), Bind(source.resolve(), SOURCE_MOUNT, True)]
    if overlay and wireguard_dir is not None:
        wireguard_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        binds.append(Bind(wireguard_dir.resolve(), "/run/wireguard"))
    return chroot_argv(root, argv, binds=binds, run_bind=_socket_dir(docker_host),
                       hostname=name, env=agent_env(overlay=overlay))


@dataclasses.dataclass
class ArmAgentProc(AgentProc):
    """An ``AgentProc`` whose agent is the root's interpreter (aarch64/armv7 under qemu).

    ``arch`` is the Debian architecture; ``root`` defaults to ``build_root(arch)``, or
    with ``overlay=True`` (``AgentProc``'s field) to ``build_root(arch, network_tools=True)``
    and the agent runs with ``CORRAL_OVERLAY=on``; ``wireguard_dir`` is then bound at
    /run/wireguard (see :func:`agent_argv`). ``extra_args`` are passed on. The process
    started is the agent itself (qemu running python), so ``stop``/``kill9`` and
    ``proc.pid`` mean what they mean for ``AgentProc``.
    """

    arch: str = "arm64"
    root: Path | None = None
    wireguard_dir: Path | None = HOST_WIREGUARD_DIR

    def argv(self) -> list[str]:
        root = (self.root if self.root is not None
                else build_root(self.arch, network_tools=self.overlay))
        return agent_argv(root, server_url=self.server_url, token=self.join_token,
                          state_dir=self.state_dir, docker_host=self.docker_host, name=self.name,
                          labels=self.labels, overlay=self.overlay,
                          wireguard_dir=self.wireguard_dir, extra_args=self.extra_args)

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
    """``python -m testbed.armroot [--net] [ARCH...]``: build the roots (``--net``: with
    the network tools), print their paths."""
    from testbed.daemons import ensure_binfmt

    ensure_binfmt()
    args = sys.argv[1:]
    net = "--net" in args
    for arch in [a for a in args if a != "--net"] or ["arm64", "armhf"]:
        print(build_root(arch, network_tools=net))
    return 0


if __name__ == "__main__":
    sys.exit(main())
