"""``corral/nettool:1``: a small multi-arch network tool image, built offline from Debian .debs.

linux/amd64 and linux/arm64, an OCI index pushed to the test-bed registry
(``127.0.0.1:5000``, never Docker Hub), written by hand like ``testbed.images`` and
``testbed.stack_images``. Two layers per platform:

1. the test bed's busybox rootfs (``testbed.images``: the very blob of
   ``corral/busybox:1``): ``sh``, ``wget``, ``ping``, ``nslookup``, ``nc``, ``ip`` and the
   other applets, /etc/passwd, /etc/group, /tmp;
2. Debian's ``iperf3`` for that architecture with its shared libraries: the Depends /
   Pre-Depends closure of ``iperf3`` (:func:`resolve_closure`: ``apt-cache show`` of the
   foreign architecture, first alternative of each clause), without the packages that only
   its maintainer scripts need to install it as a system service (:data:`NOT_NEEDED`:
   debconf, adduser, init-system-helpers, ...). On bookworm that is iperf3, libiperf0,
   libsctp1, libssl3, libc6, libgcc-s1 and gcc-12-base. The .debs are fetched with
   ``apt-get download pkg:arch`` into /var/cache/corral-testbed/debs (once:
   ``testbed.armroot.fetch_debs``), ``dpkg -x``'d into one tree and pruned: no
   documentation except the copyright files, no man pages, no glibc iconv modules
   (``gconv``, 20 MB nobody loads), no init script, systemd unit or ufw profile. No
   ca-certificates, no package database. The tree is tarred deterministically
   (``agent_image.tar_tree``) and the gzip'd layer is cached keyed by the .debs' hashes.

Before a fresh layer is used, ``iperf3 --version`` runs in a chroot of it (natively for
amd64, through qemu-user-static for arm64): a missing library fails the build, not a
benchmark.

The config: ``Cmd ["iperf3", "-s"]`` (a container of it is an iperf3 server unless told
otherwise; iperf3 exits on SIGTERM), ``ExposedPorts 5201/tcp``, the usual PATH.

:func:`ensure_nettool` returns the reference and is idempotent. Warm, it is one HEAD
request: a stamp (/var/cache/corral-testbed/nettool.json) remembers the index digest pushed
per registry, and if the registry still serves that digest for the tag nothing is built or
pushed. :func:`verify_nettool` runs both platforms on a Docker engine (the root dockerd by
default): ``uname -m``, ``iperf3 --version``, the busybox applets, and a one-second iperf3
over the container's loopback (``--network none``), so the arm64 variant is shown to run as
aarch64 code under qemu.

``python -m testbed.net_images`` ensures binfmt and the registry, builds/pushes, verifies on
the root dockerd and prints the reference.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from testbed.agent_image import tar_tree
from testbed.armroot import arch_info, fetch_debs
from testbed.daemons import ROOT_DOCKER_HOST, TestbedError, machine_lock
from testbed.images import (
    CACHE_DIR,
    OCI_INDEX,
    BuiltImage,
    RegistryPusher,
    cached_layer,
    sha256_digest,
)
from testbed.stack_images import Layer, _busybox_layer, _config, _push

REPO = "corral/nettool"
TAG = "1"
PLATFORMS = ("linux/amd64", "linux/arm64")
IPERF_PORT = 5201
ROOTS = ("iperf3",)
# Needed only by maintainer scripts (debconf questions, the iperf3 system user, the
# init-script/systemd glue): nothing an image that runs the binary ever executes.
NOT_NEEDED = frozenset({
    "debconf", "debconf-2.0", "cdebconf", "adduser", "init-system-helpers", "lsb-base",
    "sysvinit-utils", "passwd", "perl", "perl-base",
})
_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_LAYOUT = "corral-testbed-nettool-1"  # bump when the layer layout or config changes
_STAMP = CACHE_DIR / "nettool.json"
_PRUNE = ("usr/share/man", "usr/share/lintian", "usr/share/locale", "usr/share/info",
          "etc/init.d", "etc/ufw", "lib/systemd", "usr/lib/systemd", "etc/default")
_DEB_ARCH = {"linux/amd64": "amd64", "linux/arm64": "arm64"}


# ---------------------------------------------------------------- dependency closure


def _parse_stanzas(text: str) -> dict[tuple[str, str], dict[str, str]]:
    """``apt-cache show`` output -> (package, architecture) -> fields (first stanza wins)."""
    out: dict[tuple[str, str], dict[str, str]] = {}
    for block in re.split(r"\n\s*\n", text.strip()):
        fields: dict[str, str] = {}
        key = ""
        for line in block.splitlines():
            if line.startswith((" ", "\t")) and key:
                fields[key] += " " + line.strip()
            elif ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if "Package" in fields:
            out.setdefault((fields["Package"], fields.get("Architecture", "")), fields)
    return out


def _clauses(fields: dict[str, str]) -> list[list[str]]:
    """Depends + Pre-Depends as clauses of alternatives (names only, no versions/arch)."""
    out = []
    for key in ("Pre-Depends", "Depends"):
        for clause in filter(None, (c.strip() for c in fields.get(key, "").split(","))):
            alts = [re.sub(r"\s*[\(\[].*$", "", a.strip()).split(":")[0]
                    for a in clause.split("|")]
            out.append([a for a in alts if a])
    return out


def resolve_closure(arches: tuple[str, ...], roots: tuple[str, ...] = ROOTS,
                    skip: frozenset[str] = NOT_NEEDED) -> dict[str, list[str]]:
    """The Depends/Pre-Depends closure of ``roots`` per Debian architecture (sorted names).

    A clause with an alternative in ``skip`` is dropped as a whole; otherwise its first
    alternative is taken. Asks ``apt-cache show --no-all-versions`` level by level for all
    ``arches`` at once (the candidate versions, i.e. what ``apt-get download`` fetches;
    without a pkgcache.bin every apt-cache call parses the whole index, seconds each). A
    name apt does not know as a real package (a virtual one) is an error naming it.
    """
    for arch in arches:
        arch_info(arch)
    seen: dict[str, set[str]] = {a: set() for a in arches}
    todo: dict[str, set[str]] = {a: set(roots) for a in arches}
    while any(todo.values()):
        batch = sorted((p, a) for a, names in todo.items() for p in names - seen[a])
        todo = {a: set() for a in arches}
        if not batch:
            break
        res = subprocess.run(["apt-cache", "show", "--no-all-versions",
                              *(f"{p}:{a}" for p, a in batch)],
                             capture_output=True, text=True, check=False, timeout=300)
        stanzas = _parse_stanzas(res.stdout)
        found = {(p, a): stanzas.get((p, a)) or stanzas.get((p, "all")) for p, a in batch}
        missing = [f"{p}:{a}" for (p, a), f in found.items() if f is None]
        if missing:
            raise TestbedError(
                f"apt-cache show found nothing for {missing} ({res.returncode}): a virtual "
                f"package, or no apt-get update / dpkg --add-architecture yet? "
                f"(scripts/install-deps.sh)\n{res.stderr.strip()}")
        for (pkg, arch), fields in found.items():
            seen[arch].add(pkg)
            for alts in _clauses(fields or {}):
                if not any(a in skip for a in alts) and alts[0] not in seen[arch]:
                    todo[arch].add(alts[0])
    return {a: sorted(names) for a, names in seen.items()}


# ---------------------------------------------------------------- the iperf3 layer


def _prune(root: Path, triplet: str) -> None:
    for rel in (*_PRUNE, f"usr/lib/{triplet}/gconv", f"lib/{triplet}/gconv"):
        path = root / rel
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
    doc = root / "usr/share/doc"
    if doc.is_dir():  # keep the licences, drop the rest
        for entry in sorted(doc.rglob("*"), reverse=True):
            if entry.is_dir() and not entry.is_symlink():
                if not any(entry.iterdir()):
                    entry.rmdir()
            elif entry.name != "copyright":
                entry.unlink()
    for dirpath, dirnames, _ in os.walk(root, topdown=False):  # empty dirs the pruning left
        for d in dirnames:
            p = Path(dirpath) / d
            if p.is_dir() and not p.is_symlink() and not any(p.iterdir()):
                p.rmdir()


def _smoke(root: Path, arch: str) -> str:
    """``iperf3 --version`` in a chroot of ``root`` (qemu for a foreign arch); its first line."""
    res = subprocess.run(["chroot", str(root), "/usr/bin/iperf3", "--version"],
                         capture_output=True, text=True, check=False, timeout=60,
                         env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"})
    first = (res.stdout.strip().splitlines() or [""])[0]
    if res.returncode != 0 or not first.startswith("iperf 3"):
        raise TestbedError(f"iperf3 --version does not run in the {arch} nettool root "
                           f"(missing library? binfmt_misc/qemu for {arch}?): exit "
                           f"{res.returncode}: {res.stderr.strip()[-1500:]}")
    return first


def iperf_layer(arch: str, debs: list[Path]) -> Layer:
    """(gzip'd layer, diff_id) of iperf3 and its libraries for Debian ``arch`` (cached)."""
    info = arch_info(arch)
    key_src = "\n".join([_LAYOUT, arch] + [f"{d.name} {sha256_digest(d.read_bytes())}"
                                           for d in debs])
    key = f"nettool-{arch}-{sha256_digest(key_src.encode())[7:31]}"

    def build() -> bytes:
        with tempfile.TemporaryDirectory(prefix=f"corral-nettool-{arch}-") as tmp:
            root = Path(tmp) / "root"
            root.mkdir(mode=0o755)
            for deb in debs:
                subprocess.run(["dpkg", "-x", str(deb), str(root)], check=True, timeout=120)
            _prune(root, info.triplet)
            if not (root / "usr/bin/iperf3").exists():
                raise TestbedError(f"/usr/bin/iperf3 missing after unpacking "
                                   f"{[d.name for d in debs]}")
            _smoke(root, arch)
            return tar_tree(root)

    return cached_layer(key, build)


# ---------------------------------------------------------------- image


def _image_config() -> dict[str, object]:
    return {
        "Env": [_PATH], "Cmd": ["iperf3", "-s"], "WorkingDir": "/",
        "ExposedPorts": {f"{IPERF_PORT}/tcp": {}},
        "Labels": {"org.opencontainers.image.title": "corral-test-nettool",
                   "org.opencontainers.image.description":
                       "busybox + Debian iperf3 (offline build of the Corral test bed)"},
    }


def _read_stamp() -> dict[str, object]:
    try:
        data = json.loads(_STAMP.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and data.get("layout") == _LAYOUT else {}


def _write_stamp(registry: str, image: BuiltImage) -> None:
    stamp = _read_stamp() or {"layout": _LAYOUT}
    old = stamp.get("pushed")
    pushed = dict(old) if isinstance(old, dict) else {}
    pushed[registry] = {"index": image.index_digest, "digests": image.digests}
    stamp["pushed"] = pushed
    _STAMP.parent.mkdir(parents=True, exist_ok=True)
    tmp = _STAMP.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(stamp, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, _STAMP)


def _already_pushed(registry: str) -> BuiltImage | None:
    """The stamped image if the registry still serves its index digest for the tag."""
    pushed = _read_stamp().get("pushed")
    entry = pushed.get(registry) if isinstance(pushed, dict) else None
    if not isinstance(entry, dict):
        return None
    client = RegistryPusher(registry)
    try:
        resp = client.request("HEAD", f"/v2/{REPO}/manifests/{TAG}",
                              headers={"Accept": OCI_INDEX})
    except OSError:
        return None
    finally:
        client.close()
    if resp.status != 200 or resp.headers.get("Docker-Content-Digest") != entry.get("index"):
        return None
    return BuiltImage(ref=f"{registry}/{REPO}:{TAG}", index_digest=str(entry["index"]),
                      digests=dict(entry["digests"]), media_type=OCI_INDEX)


def build_nettool(registry: str) -> BuiltImage:
    """Resolve, fetch, build (cached layers) and push ``corral/nettool:1``; always pushes
    (HEAD-first, so unchanged blobs are not sent again)."""
    with machine_lock("nettool-image"):
        images: dict[str, tuple[list[Layer], bytes]] = {}
        closure = resolve_closure(tuple(_DEB_ARCH[p] for p in PLATFORMS))
        for platform in PLATFORMS:
            arch = _DEB_ARCH[platform]
            debs = fetch_debs(arch, tuple(closure[arch]))
            layers = [_busybox_layer(platform), iperf_layer(arch, debs)]
            images[platform] = (layers, _config(platform, layers, _image_config(),
                                                "nettool: busybox + Debian iperf3"))
        client = RegistryPusher(registry)
        try:
            image = _push(client, registry, REPO, TAG, images)
        finally:
            client.close()
        _write_stamp(registry, image)
        return image


def ensure_nettool_image(registry: str) -> BuiltImage:
    """:func:`ensure_nettool`, returning the :class:`BuiltImage` (per-platform digests)."""
    return _already_pushed(registry) or build_nettool(registry)


def ensure_nettool(registry: str) -> str:
    """``REGISTRY/corral/nettool:1``, pushed to ``registry`` if it is not there yet.

    Idempotent; warm it costs one HEAD request (see the module doc). A cold build needs
    ``apt-get download`` to work for amd64 and arm64 and, for the arm64 smoke check,
    binfmt_misc with qemu-aarch64 (``daemons.ensure_binfmt``)."""
    return ensure_nettool_image(registry).ref


# ---------------------------------------------------------------- verification

_VERIFY_SCRIPT = (
    "set -e; uname -m; iperf3 --version | head -n 1; "
    "for t in sh wget ping nslookup nc ip; do command -v $t >/dev/null || "
    "{ echo missing $t; exit 3; }; done; "
    "iperf3 -s -1 -D -p 5201; sleep 0.3; "
    "iperf3 -c 127.0.0.1 -p 5201 -t 1 -f m | grep receiver"
)
_MACHINE = {"linux/amd64": "x86_64", "linux/arm64": "aarch64"}


def verify_nettool(image: BuiltImage, docker_host: str = ROOT_DOCKER_HOST,
                   docker: str = "docker") -> dict[str, list[str]]:
    """Run each platform of ``image`` on the engine at ``docker_host`` (pull by digest,
    ``--network none``, ``--rm``) and check ``uname -m``, ``iperf3 --version``, the busybox
    tools and a 1 s iperf3 over loopback. Returns platform -> output lines; raises
    TestbedError on any mismatch. arm64 needs binfmt_misc (qemu-aarch64, F flag)."""
    out: dict[str, list[str]] = {}
    for platform in PLATFORMS:
        ref = image.by_digest(platform)
        argv = [docker, "-H", docker_host, "run", "--rm", "--network", "none",
                "--platform", platform, ref, "sh", "-c", _VERIFY_SCRIPT]
        try:
            res = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=180)
        except subprocess.TimeoutExpired:
            raise TestbedError(f"{' '.join(argv[:8])}…: no answer in 180 s") from None
        lines = res.stdout.strip().splitlines()
        ok = (res.returncode == 0 and len(lines) >= 3 and lines[0] == _MACHINE[platform]
              and lines[1].startswith("iperf 3") and "receiver" in lines[-1])
        if not ok:
            raise TestbedError(f"nettool {platform} ({ref}) failed its check (exit "
                               f"{res.returncode}):\n{res.stdout.strip()}\n"
                               f"{res.stderr.strip()[-2000:]}")
        out[platform] = lines
    return out


def main() -> int:
    """``python -m testbed.net_images [--no-verify]``: build/push, verify on the root dockerd."""
    from testbed.daemons import ensure_binfmt, ensure_dockerd, ensure_registry

    ensure_binfmt()
    image = ensure_nettool_image(ensure_registry())
    for platform, digest in sorted(image.digests.items()):
        print(f"  {image.ref:40} {platform:14} {digest}", file=sys.stderr)
    if "--no-verify" not in sys.argv[1:]:
        for platform, lines in verify_nettool(image, ensure_dockerd()).items():
            print(f"  {platform}: " + " | ".join(lines), file=sys.stderr)
    print(image.ref)
    return 0


if __name__ == "__main__":
    sys.exit(main())
