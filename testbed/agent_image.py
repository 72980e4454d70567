"""The Corral agent as one multi-arch OCI image, built offline from Debian packages.

``127.0.0.1:5000/corral/agent:<corral.__version__>`` (and ``:latest``) is an OCI index
over three image manifests, linux/amd64, linux/arm64 and linux/arm/v7. Each has two
layers:

1. the Python runtime root of that architecture, exactly as ``testbed.armroot.build_root``
   made it (Debian's python3.11 and the libraries the agent needs, stdlib pycs compiled
   by the root's own interpreter). The gzip'd layer is cached in
   /var/cache/corral-testbed/layers, keyed by the root's stamp, so a warm build does not
   re-tar 40 MB;
2. the ``corral`` package of this checkout at /opt/corral/corral (sources only, no
   ``__pycache__``): architecture-independent, so all three manifests share this blob.

The config says ``Entrypoint ["/usr/bin/python3.11", "-m", "corral", "agent"]``,
``Env PYTHONPATH=/opt/corral``, ``WorkingDir /``, the right architecture/variant, no
volumes. Layers are deterministic: entries sorted, fixed mtimes (``images.FIXED_MTIME``),
owners and modes as unpacked by dpkg, no user/group names, gzip with mtime 0; the same
root and the same sources give the same digests. Pushing reuses ``testbed.images``'
``RegistryPusher``.

``python -m testbed.agent_image`` builds the roots if needed, pushes, and prints the ref
(the per-platform digests go to stderr).
"""

from __future__ import annotations

import io
import os
import stat
import sys
import tarfile
from pathlib import Path

import corral
from testbed.armroot import (
    PYTHON,
    PYTHONPATH,
    REPO_ROOT,
    SOURCE_MOUNT,
    arch_info,
    build_root,
    root_stamp_digest,
)
from testbed.daemons import TestbedError, machine_lock
from testbed.images import (
    FIXED_CREATED,
    FIXED_MTIME,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    BuiltImage,
    RegistryPusher,
    canonical_json,
    cached_layer,
    gzip_deterministic,
    platform_descriptor,
    sha256_digest,
    tar_entry,
)

REPO = "corral/agent"
# OCI platform -> Debian architecture of its runtime root
PLATFORM_ARCH: dict[str, str] = {
    "linux/amd64": "amd64",
    "linux/arm64": "arm64",
    "linux/arm/v7": "armhf",
}
_LAYER_LAYOUT = "corral-agent-image-1"  # bump when the layer layout changes
_ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        f"PYTHONPATH={PYTHONPATH}", "PYTHONUNBUFFERED=1", "LANG=C.UTF-8",
        "CORRAL_OVERLAY=off"]  # the image has no ip, wg or iptables


# ---------------------------------------------------------------- layers


def _header(name: str, st: os.stat_result) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid, info.gid, info.uname, info.gname = st.st_uid, st.st_gid, "", ""
    info.mtime = FIXED_MTIME
    return info


def tar_tree(top: Path, prefix: str = "") -> bytes:
    """A deterministic tar of the tree under ``top`` (names relative to it, under ``prefix``).

    Directories, regular files (hard links as links to the first name), symlinks; sorted
    by name; fixed mtime; numeric owners kept. Anything else (devices, sockets) is an error.
    """
    raw = io.BytesIO()
    seen: dict[tuple[int, int], str] = {}
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, top)
            for base in sorted(filenames + dirnames):  # dirnames holds symlinks to dirs too
                path = Path(dirpath) / base
                name = os.path.normpath(os.path.join(prefix, rel_dir, base))
                st = path.lstat()
                info = _header(name, st)
                if stat.S_ISDIR(st.st_mode):
                    info.type = tarfile.DIRTYPE
                    tar.addfile(info)
                elif stat.S_ISLNK(st.st_mode):
                    info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
                    tar.addfile(info)
                elif stat.S_ISREG(st.st_mode):
                    key = (st.st_dev, st.st_ino)
                    if st.st_nlink > 1 and key in seen:
                        info.type, info.linkname = tarfile.LNKTYPE, seen[key]
                        tar.addfile(info)
                        continue
                    seen[key] = name
                    info.size = st.st_size
                    with open(path, "rb") as fh:
                        tar.addfile(info, fh)
                else:
                    raise TestbedError(f"cannot put {path} in a layer (not a file/dir/link)")
    return raw.getvalue()


def _cached_root_layer(arch: str) -> tuple[bytes, str]:
    """(gzip'd layer, diff_id) of the runtime root for Debian ``arch``."""
    root = build_root(arch)
    key = f"pyroot-{arch}-{root_stamp_digest(arch)}-{_LAYER_LAYOUT}"
    return cached_layer(key, lambda: tar_tree(root))


def corral_layer(source: Path = REPO_ROOT / "corral") -> tuple[bytes, str]:
    """(gzip'd layer, diff_id) holding the corral package at /opt/corral/corral."""
    entries: list[tuple[tarfile.TarInfo, bytes | None]] = []
    parts = SOURCE_MOUNT.strip("/").split("/")
    for i in range(1, len(parts) + 1):
        entries.append((tar_entry("/".join(parts[:i]), tarfile.DIRTYPE, 0o755), None))
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.startswith("."))
        rel = os.path.relpath(dirpath, source)
        base = os.path.normpath(os.path.join(SOURCE_MOUNT.strip("/"), rel))
        for d in dirnames:
            entries.append((tar_entry(f"{base}/{d}", tarfile.DIRTYPE, 0o755), None))
        for f in filenames:
            if f.endswith((".pyc", ".pyo")) or f.startswith("."):
                continue
            content = (Path(dirpath) / f).read_bytes()
            entries.append((tar_entry(f"{base}/{f}", tarfile.REGTYPE, 0o644, len(content)),
                            content))
    entries.sort(key=lambda e: e[0].name)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return gzip_deterministic(raw.getvalue()), sha256_digest(raw.getvalue())


# ---------------------------------------------------------------- image


def _config(platform: str, diff_ids: list[str], arch: str) -> bytes:
    oci_arch, variant = arch_info(arch).oci
    obj: dict[str, object] = {
        "architecture": oci_arch, "os": "linux", "created": FIXED_CREATED,
        "config": {
            "Entrypoint": [PYTHON, "-m", "corral", "agent"], "Env": _ENV, "WorkingDir": "/",
            "Labels": {"org.opencontainers.image.title": "corral-agent",
                       "org.opencontainers.image.version": corral.__version__},
        },
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [
            {"created": FIXED_CREATED,
             "created_by": f"corral testbed: Debian python3.11 runtime for {arch} "
                           f"(testbed.armroot)"},
            {"created": FIXED_CREATED, "created_by": f"corral testbed: corral package at "
                                                     f"{SOURCE_MOUNT} ({_LAYER_LAYOUT})"},
        ],
    }
    if variant:
        obj["variant"] = variant
    if platform != arch_info(arch).platform:
        raise ValueError(f"{platform} is not the platform of Debian {arch}")
    return canonical_json(obj)


def build_agent_image(registry: str, repo: str = REPO,
                      tags: tuple[str, ...] = (corral.__version__, "latest"),
                      platforms: tuple[str, ...] = tuple(PLATFORM_ARCH)) -> BuiltImage:
    """Build the agent image for ``platforms`` and push it to ``registry`` as ``repo:tag``s.

    Returns the BuiltImage of the first tag (``ref``), the index digest and each
    platform's manifest digest (``by_digest(platform)`` to pull one). Builds the runtime
    roots first if needed (needs binfmt_misc for the ARM ones).
    """
    if not tags:
        raise ValueError("at least one tag")
    unknown = [p for p in platforms if p not in PLATFORM_ARCH]
    if unknown or not platforms:
        raise ValueError(f"platforms {unknown or '()'}: known {sorted(PLATFORM_ARCH)}")
    src_blob, src_diff = corral_layer()
    with machine_lock("agent-image"):
        client = RegistryPusher(registry)
        try:
            client.push_blob(repo, src_blob)
            digests: dict[str, str] = {}
            descriptors = []
            for platform in platforms:
                arch = PLATFORM_ARCH[platform]
                root_blob, root_diff = _cached_root_layer(arch)
                config = _config(platform, [root_diff, src_diff], arch)
                manifest = canonical_json({
                    "schemaVersion": 2, "mediaType": OCI_MANIFEST,
                    "config": {"mediaType": OCI_CONFIG, "digest": sha256_digest(config),
                               "size": len(config)},
                    "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": sha256_digest(b),
                                "size": len(b)} for b in (root_blob, src_blob)],
                })
                client.push_blob(repo, root_blob)
                client.push_blob(repo, config)
                digests[platform] = client.push_manifest(repo, sha256_digest(manifest),
                                                         manifest, OCI_MANIFEST)
                descriptors.append({"mediaType": OCI_MANIFEST, "digest": digests[platform],
                                    "size": len(manifest),
                                    "platform": platform_descriptor(platform)})
            index = canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX,
                                    "manifests": descriptors})
            for tag in tags:
                index_digest = client.push_manifest(repo, tag, index, OCI_INDEX)
        finally:
            client.close()
    return BuiltImage(ref=f"{registry}/{repo}:{tags[0]}", index_digest=index_digest,
                      digests=digests, media_type=OCI_INDEX)


def main() -> int:
    """Entry point: ensure binfmt + registry, build, push, print the ref."""
    from testbed.daemons import ensure_binfmt, ensure_registry

    ensure_binfmt()
    image = build_agent_image(ensure_registry())
    print(f"  index {image.index_digest}", file=sys.stderr)
    for platform, digest in sorted(image.digests.items()):
        print(f"  {platform:14} {digest}", file=sys.stderr)
    print(image.ref)
    return 0


if __name__ == "__main__":
    sys.exit(main())
