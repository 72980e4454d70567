"""Build multi-arch busybox images offline and push them to the test-bed registry.

Why by hand: dockerd 20.10 ignores ``docker import --platform``, so an imported arm64
rootfs would still claim amd64. Instead, for each platform:

1. ``apt-get download busybox-static:<debian arch>`` into /var/cache/corral-testbed/debs
   (once), ``dpkg -x`` it, and write a one-layer rootfs: /bin/busybox, applet symlinks,
   /etc/passwd, /etc/group, /tmp, /root. The tar is deterministic (sorted entries, fixed
   mtimes and owners, gzip mtime 0), so digests are stable across runs and machines with
   the same .deb; the gzip'd layer is cached on disk keyed by the .deb's hash.
2. Write the image config (correct architecture/os/variant, Env PATH, Cmd ["sh"],
   rootfs.diff_ids) and an OCI image manifest.
3. Push with the OCI distribution API over plain HTTP (HEAD to skip existing blobs,
   POST+PUT monolithic upload, PUT manifests by digest), then an OCI image index over the
   manifests, by tag. With a single platform the tag points at that manifest directly.

Debian's docker-registry serves the index only to a GET whose Accept names the OCI index
media type. Standard library only.

The building blocks are public for other image builders (``testbed.agent_image``):
``RegistryPusher``, ``sha256_digest``, ``canonical_json``, ``tar_entry``,
``gzip_deterministic``, ``platform_descriptor``, ``FIXED_MTIME`` / ``FIXED_CREATED``.
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import hashlib
import http.client
import io
import json
import os
import subprocess
import tarfile
import tempfile
import urllib.parse
from collections.abc import Callable
from pathlib import Path

from testbed.daemons import TestbedError, machine_lock

CACHE_DIR = Path("/var/cache/corral-testbed")

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"

# OCI platform -> (Debian architecture, OCI architecture, OCI variant)
PLATFORMS: dict[str, tuple[str, str, str | None]] = {
    "linux/amd64": ("amd64", "amd64", None),
    "linux/arm64": ("arm64", "arm64", None),
    "linux/arm/v7": ("armhf", "arm", "v7"),
    # Only for bench/resolve.py's 6-platform index; need `dpkg --add-architecture` first.
    "linux/arm/v5": ("armel", "arm", "v5"),
    "linux/386": ("i386", "386", None),
    "linux/ppc64le": ("ppc64el", "ppc64le", None),
    "linux/s390x": ("s390x", "s390x", None),
}

APPLETS = (  # symlinked to /bin/busybox; all exist in Debian's busybox-static 1.35
    "[", "ash", "awk", "base64", "basename", "cat", "chmod", "chown", "cp", "cut", "date",
    "dd", "df", "diff", "dirname", "du", "echo", "egrep", "env", "expr", "false", "fgrep",
    "find", "free", "grep", "gunzip", "gzip", "head", "hexdump", "hostname", "httpd", "id",
    "ifconfig", "ip", "kill", "killall", "less", "ln", "ls", "md5sum", "mkdir", "mktemp",
    "more", "mv", "nc", "netstat", "nproc", "nslookup", "ping", "printf", "ps", "pwd",
    "readlink", "realpath", "rm", "rmdir", "sed", "seq", "sh", "sha256sum", "sleep", "sort",
    "stat", "tail", "tar", "tee", "test", "timeout", "top", "touch", "tr", "true", "uname",
    "uniq", "uptime", "usleep", "vi", "wc", "wget", "which", "whoami", "xargs", "yes", "zcat",
)

_LAYOUT_VERSION = "corral-testbed-busybox-1"  # bump when the rootfs layout changes
FIXED_MTIME = 946684800  # 2000-01-01T00:00:00Z
FIXED_CREATED = "2000-01-01T00:00:00Z"
_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclasses.dataclass(frozen=True)
class BuiltImage:
    """An image pushed to the test-bed registry.

    ``ref`` is ``registry/repo:tag``. ``index_digest`` is the digest the tag resolves to:
    the OCI index for several platforms, or the single manifest (``media_type`` tells).
    ``digests`` maps each OCI platform string to its image-manifest digest.
    """

    ref: str
    index_digest: str
    digests: dict[str, str]
    media_type: str = OCI_INDEX

    @property
    def repository(self) -> str:
        """``registry/repo`` without the tag."""
        return self.ref.rsplit(":", 1)[0]

    def by_digest(self, platform: str) -> str:
        """``registry/repo@sha256:...`` of one platform's manifest, for pull-by-digest."""
        return f"{self.repository}@{self.digests[platform]}"


def sha256_digest(data: bytes) -> str:
    """``sha256:<hex>`` of ``data``, as OCI descriptors name blobs."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def canonical_json(obj: object) -> bytes:
    """Compact JSON with sorted keys: the bytes of a config, manifest or index."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


# ---------------------------------------------------------------- layers


def _deb_paths(deb_arches: list[str]) -> dict[str, Path]:
    """The cached busybox-static .deb per Debian arch; missing ones in one apt-get call."""
    debs = CACHE_DIR / "debs"
    debs.mkdir(parents=True, exist_ok=True)

    def find(arch: str) -> Path | None:
        found = sorted(glob.glob(str(debs / f"busybox-static_*_{arch}.deb")))
        return Path(found[-1]) if found else None

    missing = [a for a in deb_arches if find(a) is None]
    if missing:
        res = subprocess.run(["apt-get", "download", *(f"busybox-static:{a}" for a in missing)],
                             cwd=debs, capture_output=True, text=True, check=False)
        if res.returncode != 0 or any(find(a) is None for a in missing):
            raise TestbedError(
                f"apt-get download busybox-static for {missing} failed ({res.returncode}); "
                f"are the architectures added and apt-get update done? "
                f"(scripts/install-deps.sh)\n{res.stderr.strip()}")
    return {a: p for a in deb_arches if (p := find(a)) is not None}


def tar_entry(name: str, kind: bytes, mode: int, size: int = 0, link: str = "") -> tarfile.TarInfo:
    """A tar header owned by root:root with the fixed mtime (deterministic layers)."""
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.size, info.linkname = kind, mode, size, link
    info.mtime, info.uid, info.gid, info.uname, info.gname = FIXED_MTIME, 0, 0, "root", "root"
    return info


def build_layer(deb: Path) -> bytes:
    """The gzip'd, deterministic rootfs layer for one busybox-static .deb."""
    return gzip_deterministic(layer_tar(deb))


def layer_tar(deb: Path) -> bytes:
    """The uncompressed, deterministic rootfs tar for one busybox-static .deb."""
    with tempfile.TemporaryDirectory(prefix="corral-bb-") as tmp:
        subprocess.run(["dpkg", "-x", str(deb), tmp], check=True)
        busybox = (Path(tmp) / "bin" / "busybox").read_bytes()
    files = {
        "etc/passwd": b"root:x:0:0:root:/root:/bin/sh\n"
                      b"nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n",
        "etc/group": b"root:x:0:\nnobody:x:65534:\n",
    }
    dirs = {"bin": 0o755, "dev": 0o755, "etc": 0o755, "proc": 0o755, "root": 0o700,
            "sbin": 0o755, "sys": 0o755, "tmp": 0o1777, "usr": 0o755, "usr/bin": 0o755,
            "usr/sbin": 0o755, "var": 0o755}
    entries: list[tuple[tarfile.TarInfo, bytes | None]] = []
    for name, mode in dirs.items():
        entries.append((tar_entry(name, tarfile.DIRTYPE, mode), None))
    entries.append((tar_entry("bin/busybox", tarfile.REGTYPE, 0o755, len(busybox)), busybox))
    for name, data in files.items():
        entries.append((tar_entry(name, tarfile.REGTYPE, 0o644, len(data)), data))
    for applet in APPLETS:
        entries.append((tar_entry(f"bin/{applet}", tarfile.SYMTYPE, 0o777, link="busybox"), None))
    entries.sort(key=lambda e: e[0].name)

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for info, content in entries:
            tar.addfile(info, io.BytesIO(content) if content is not None else None)
    return raw.getvalue()


def gzip_deterministic(raw: bytes) -> bytes:
    """gzip ``raw`` reproducibly: no file name, mtime 0, level 6."""
    out = io.BytesIO()
    with gzip.GzipFile(filename="", fileobj=out, mode="wb", compresslevel=6, mtime=0) as gz:
        gz.write(raw)
    return out.getvalue()


def cached_layer(key: str, build: Callable[[], bytes], rebuild: bool = False) -> tuple[bytes, str]:
    """(gzip'd layer, diff_id) cached on disk under ``key``; ``build`` makes the
    uncompressed tar when the cache misses (or ``rebuild``), and the result is kept."""
    layers = CACHE_DIR / "layers"
    layers.mkdir(parents=True, exist_ok=True)
    blob_path, meta_path = layers / f"{key}.tar.gz", layers / f"{key}.json"
    if not rebuild and blob_path.exists() and meta_path.exists():
        blob = blob_path.read_bytes()
        meta = json.loads(meta_path.read_text())
        if sha256_digest(blob) == meta["digest"]:
            return blob, meta["diff_id"]
    raw = build()
    blob = gzip_deterministic(raw)
    diff_id = sha256_digest(raw)
    meta_json = canonical_json({"digest": sha256_digest(blob), "diff_id": diff_id})
    for path, data in ((blob_path, blob), (meta_path, meta_json)):
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(data)
        os.replace(tmp, path)
    return blob, diff_id


def _cached_layer(deb: Path, rebuild: bool) -> tuple[bytes, str]:
    """(gzip'd layer, diff_id) for ``deb``, from the on-disk cache unless ``rebuild``."""
    key = hashlib.sha256(deb.read_bytes() + _LAYOUT_VERSION.encode()).hexdigest()[:24]
    return cached_layer(key, lambda: layer_tar(deb), rebuild)


# ---------------------------------------------------------------- registry client


class RegistryPusher:
    """A minimal OCI distribution client on one keep-alive HTTP connection.

    ``push_blob`` / ``push_manifest`` skip what the registry already holds (HEAD first)
    and return the pushed digest. Also used by ``testbed.agent_image``.
    """

    def __init__(self, address: str) -> None:
        host, port = address.rsplit(":", 1)
        self.conn = http.client.HTTPConnection(host, int(port), timeout=60)

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> http.client.HTTPResponse:
        self.conn.request(method, path, body=body, headers=headers or {})
        resp = self.conn.getresponse()
        resp.read()
        return resp

    def push_blob(self, repo: str, data: bytes) -> str:
        digest = sha256_digest(data)
        if self.request("HEAD", f"/v2/{repo}/blobs/{digest}").status == 200:
            return digest
        resp = self.request("POST", f"/v2/{repo}/blobs/uploads/", b"")
        if resp.status != 202:
            raise TestbedError(f"blob upload to {repo} refused: HTTP {resp.status}")
        loc = urllib.parse.urlsplit(resp.headers["Location"])
        query = (loc.query + "&" if loc.query else "") + urllib.parse.urlencode({"digest": digest})
        resp = self.request("PUT", f"{loc.path}?{query}", data,
                            {"Content-Type": "application/octet-stream"})
        if resp.status != 201:
            raise TestbedError(f"blob PUT {digest} to {repo}: HTTP {resp.status}")
        return digest

    def push_manifest(self, repo: str, reference: str, data: bytes, media_type: str) -> str:
        digest = sha256_digest(data)
        head = self.request("HEAD", f"/v2/{repo}/manifests/{reference}",
                            headers={"Accept": media_type})
        if head.status == 200 and head.headers.get("Docker-Content-Digest") == digest:
            return digest
        resp = self.request("PUT", f"/v2/{repo}/manifests/{reference}", data,
                            {"Content-Type": media_type})
        if resp.status != 201:
            raise TestbedError(f"manifest PUT {repo}:{reference}: HTTP {resp.status}")
        if resp.headers.get("Docker-Content-Digest") not in (None, digest):
            raise TestbedError(f"registry computed another digest for {repo}:{reference}")
        return digest

    def close(self) -> None:
        self.conn.close()


# ---------------------------------------------------------------- images


def _platform_image(platform: str, deb: Path, rebuild: bool) -> tuple[bytes, bytes, bytes]:
    """(layer blob, config JSON, manifest JSON) of busybox for one platform."""
    _, arch, variant = PLATFORMS[platform]
    layer, diff_id = _cached_layer(deb, rebuild)
    config_obj: dict[str, object] = {
        "architecture": arch, "os": "linux", "created": FIXED_CREATED,
        "config": {"Env": [_PATH], "Cmd": ["sh"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": FIXED_CREATED,
                     "created_by": f"corral testbed: {deb.name} ({_LAYOUT_VERSION})"}],
    }
    if variant:
        config_obj["variant"] = variant
    config = canonical_json(config_obj)
    manifest = canonical_json({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": sha256_digest(config), "size": len(config)},
        "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": sha256_digest(layer),
                    "size": len(layer)}],
    })
    return layer, config, manifest


def platform_descriptor(platform: str) -> dict[str, str]:
    """The ``platform`` object of an index entry for an OCI platform string."""
    _, arch, variant = PLATFORMS[platform]
    out = {"architecture": arch, "os": "linux"}
    if variant:
        out["variant"] = variant
    return out


def build_busybox(registry: str, repo: str = "corral/busybox", tag: str = "1",
                  platforms: tuple[str, ...] = ("linux/amd64", "linux/arm64", "linux/arm/v7"),
                  *, rebuild: bool = False) -> BuiltImage:
    """Build busybox for ``platforms`` and push it to ``registry`` as ``repo:tag``.

    Several platforms: each manifest is pushed by digest and an OCI index over them by
    tag. One platform: that manifest is pushed by digest and by tag. Cached layers make a
    warm call a handful of HEAD requests; ``rebuild=True`` ignores the layer cache.
    """
    if not platforms:
        raise ValueError("at least one platform")
    unknown = [p for p in platforms if p not in PLATFORMS]
    if unknown:
        raise ValueError(f"no busybox build for {unknown}; known: {sorted(PLATFORMS)}")
    with machine_lock("images"):
        debs = _deb_paths([PLATFORMS[p][0] for p in platforms])
        client = RegistryPusher(registry)
        try:
            digests: dict[str, str] = {}
            descriptors = []
            for platform in platforms:
                layer, config, manifest = _platform_image(platform, debs[PLATFORMS[platform][0]],
                                                           rebuild)
                client.push_blob(repo, layer)
                client.push_blob(repo, config)
                digest = client.push_manifest(repo, sha256_digest(manifest), manifest, OCI_MANIFEST)
                digests[platform] = digest
                descriptors.append({"mediaType": OCI_MANIFEST, "digest": digest,
                                    "size": len(manifest),
                                    "platform": platform_descriptor(platform)})
            if len(platforms) == 1:
                top, media_type = manifest, OCI_MANIFEST
            else:
                top = canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX,
                                  "manifests": descriptors})
                media_type = OCI_INDEX
            top_digest = client.push_manifest(repo, tag, top, media_type)
        finally:
            client.close()
    return BuiltImage(ref=f"{registry}/{repo}:{tag}", index_digest=top_digest,
                      digests=digests, media_type=media_type)
