"""The images of a realistic test stack, built offline and pushed to the test-bed registry.

Like ``testbed.images`` (busybox) and ``testbed.agent_image`` (the agent), every image is
written by hand: deterministic layers, image configs and OCI manifests, pushed with
``RegistryPusher`` to ``127.0.0.1:5000`` (never Docker Hub). Base layers come from the
same on-disk cache as the other images (``cached_layer``), so a warm build is a handful
of HEAD requests.

``corral/web:1``, ``corral/web:2`` (linux/amd64, linux/arm64, linux/arm/v7)
    busybox ``httpd`` on port 8000. At start ``/web/start`` writes ``/www/index.html``
    (``web v1 on <hostname>``), ``/www/health`` (``ok``) and ``/www/version`` (``v1``),
    then runs ``httpd -f`` under a shell that exits 0 on SIGTERM (so stops are quick).
    The config has a ``HEALTHCHECK`` (``wget`` of /health every second) and exposes
    8000/tcp. Version 2 differs only in the version text of /web/start.
``corral/web:bad`` (same platforms)
    the same layout, but /web/start prints ``web bad: refusing to start`` to stderr and
    exits 1 at once: a deterministic failure for rollback tests.
``corral/kv:1`` (linux/amd64, linux/arm64)
    Debian's python3.11 root of that architecture (``testbed.armroot.build_root``, the
    very layer of the agent image) plus ``/opt/kv/kv.py``: a stdlib-only key-value store
    on port 7000. ``PUT /KEY`` stores the body in ``$KV_DIR`` (``/data``, a declared
    volume; written to a temporary file, fsync'd, renamed), ``GET /KEY`` returns it (404
    if absent), ``DELETE /KEY``, ``GET /`` lists the keys as JSON, ``GET /_health`` says
    ``ok``. Every answer carries ``X-Kv-Host`` (the container hostname) and
    ``X-Kv-Started`` (when this process started), so a test can tell a replaced
    container from the old one. SIGTERM stops it at once.
``corral/armtool:1`` (linux/arm64 only: the tag names that one manifest)
    busybox that prints ``armtool <uname -m>`` every 2 seconds, so a service of it runs
    on amd64 hosts only emulated (qemu) and shows ``aarch64`` in its logs.

``python -m testbed.stack_images`` builds and pushes them all and prints the refs.
"""

from __future__ import annotations

import dataclasses
import io
import sys
import tarfile

from testbed.agent_image import _cached_root_layer
from testbed.armroot import PYTHON
from testbed.daemons import machine_lock
from testbed.images import (
    FIXED_CREATED,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    PLATFORMS,
    BuiltImage,
    RegistryPusher,
    _cached_layer,
    _deb_paths,
    canonical_json,
    gzip_deterministic,
    platform_descriptor,
    sha256_digest,
    tar_entry,
)

WEB_PLATFORMS = ("linux/amd64", "linux/arm64", "linux/arm/v7")
KV_PLATFORMS = ("linux/amd64", "linux/arm64")
ARM_ONLY = ("linux/arm64",)
WEB_PORT = 8000
KV_PORT = 7000
_PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_LAYOUT = "corral-testbed-stack-1"  # bump when an application layer's layout changes
# Debian architecture of each platform's Python root (testbed.armroot names)
_PY_ARCH = {"linux/amd64": "amd64", "linux/arm64": "arm64", "linux/arm/v7": "armhf"}
_SECOND = 1_000_000_000  # nanoseconds, as image configs give durations

Layer = tuple[bytes, str]  # (gzip'd blob, diff_id)


# ---------------------------------------------------------------- the programs

_WEB_START = """#!/bin/sh
# corral test stack: the web server ({version})
set -e
mkdir -p /www
echo "web {version} on $(hostname)" > /www/index.html
echo ok > /www/health
echo {version} > /www/version
httpd -f -p {port} -h /www &
pid=$!
trap 'kill $pid 2>/dev/null; exit 0' TERM INT
echo "web {version} listening on :{port} as $(hostname)"
wait $pid
"""

_WEB_BAD = """#!/bin/sh
# corral test stack: a web build that never starts
echo "web bad: refusing to start" >&2
exit 1
"""

_ARMTOOL = """#!/bin/sh
trap 'exit 0' TERM INT
while :; do
  echo "armtool $(uname -m)"
  sleep 2 &
  wait $!
done
"""

KV_SERVER = '''"""corral test stack: a tiny persistent key-value store (stdlib only).

PUT /KEY stores the body, GET /KEY returns it, DELETE /KEY removes it, GET / lists the
keys (JSON), GET /_health says ok. Values live as files in $KV_DIR (default /data).
"""

import http.server
import json
import os
import re
import signal
import socket
import sys
import tempfile
import threading
import time

DATA = os.environ.get("KV_DIR", "/data")
PORT = int(os.environ.get("KV_PORT", "7000"))
KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
STARTED = repr(time.time())
HOST = socket.gethostname()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _answer(self, code, body=b"", ctype="text/plain"):
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Kv-Host", HOST)
        self.send_header("X-Kv-Started", STARTED)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _key(self):
        key = self.path.split("?", 1)[0].lstrip("/")
        if not KEY.match(key):
            self._answer(400, b"bad key\\n")
            return None
        return key

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/_health":
            return self._answer(200, b"ok\\n")
        if path == "/":
            keys = sorted(k for k in os.listdir(DATA) if KEY.match(k))
            return self._answer(200, json.dumps(keys).encode(), "application/json")
        key = self._key()
        if key is None:
            return None
        try:
            with open(os.path.join(DATA, key), "rb") as fh:
                body = fh.read()
        except FileNotFoundError:
            return self._answer(404, b"no such key\\n")
        return self._answer(200, body, "application/octet-stream")

    do_HEAD = do_GET

    def do_PUT(self):
        key = self._key()
        if key is None:
            return None
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        fd, tmp = tempfile.mkstemp(dir=DATA, prefix=".put-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(body)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, os.path.join(DATA, key))
        return self._answer(201, b"stored\\n")

    do_POST = do_PUT

    def do_DELETE(self):
        key = self._key()
        if key is None:
            return None
        try:
            os.unlink(os.path.join(DATA, key))
        except FileNotFoundError:
            return self._answer(404, b"no such key\\n")
        return self._answer(204)

    def log_message(self, fmt, *args):
        sys.stdout.write("kv %s %s\\n" % (self.address_string(), fmt % args))
        sys.stdout.flush()


def main():
    os.makedirs(DATA, exist_ok=True)
    server = http.server.ThreadingHTTPServer(("0.0.0.0", PORT), Handler)
    server.daemon_threads = True

    def stop(signum, frame):
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"kv on :{PORT} as {HOST}, data in {DATA}, keys {len(os.listdir(DATA))}", flush=True)
    server.serve_forever(poll_interval=0.2)
    print("kv stopped", flush=True)


if __name__ == "__main__":
    main()
'''


# ---------------------------------------------------------------- layers and configs


def files_layer(files: dict[str, tuple[bytes, int]]) -> Layer:
    """A deterministic layer of ``files`` (path -> (content, mode)) and their parent dirs."""
    entries: dict[str, tuple[tarfile.TarInfo, bytes | None]] = {}
    for path, (content, mode) in files.items():
        parts = path.strip("/").split("/")
        for i in range(1, len(parts)):
            d = "/".join(parts[:i])
            entries.setdefault(d, (tar_entry(d, tarfile.DIRTYPE, 0o755), None))
        name = "/".join(parts)
        entries[name] = (tar_entry(name, tarfile.REGTYPE, mode, len(content)), content)
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name in sorted(entries):
            info, data = entries[name]
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return gzip_deterministic(raw.getvalue()), sha256_digest(raw.getvalue())


def _busybox_layer(platform: str) -> Layer:
    """The busybox rootfs layer of ``testbed.images`` (same cache, same blob)."""
    deb_arch = PLATFORMS[platform][0]
    return _cached_layer(_deb_paths([deb_arch])[deb_arch], False)


def _config(platform: str, layers: list[Layer], cfg: dict[str, object], what: str) -> bytes:
    _, arch, variant = PLATFORMS[platform]
    obj: dict[str, object] = {
        "architecture": arch, "os": "linux", "created": FIXED_CREATED, "config": cfg,
        "rootfs": {"type": "layers", "diff_ids": [d for _, d in layers]},
        "history": [{"created": FIXED_CREATED, "created_by": f"corral testbed: {what} ({_LAYOUT})"}
                    for _ in layers],
    }
    if variant:
        obj["variant"] = variant
    return canonical_json(obj)


def _push(client: RegistryPusher, registry: str, repo: str, tag: str,
          images: dict[str, tuple[list[Layer], bytes]]) -> BuiltImage:
    """Push one image (platform -> (layers, config)); an index over several platforms,
    the manifest itself for one."""
    digests: dict[str, str] = {}
    descriptors = []
    manifest = b""
    for platform, (layers, config) in images.items():
        for blob, _ in layers:
            client.push_blob(repo, blob)
        client.push_blob(repo, config)
        manifest = canonical_json({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": sha256_digest(config),
                       "size": len(config)},
            "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": sha256_digest(blob),
                        "size": len(blob)} for blob, _ in layers],
        })
        digests[platform] = client.push_manifest(repo, sha256_digest(manifest), manifest,
                                                 OCI_MANIFEST)
        descriptors.append({"mediaType": OCI_MANIFEST, "digest": digests[platform],
                            "size": len(manifest), "platform": platform_descriptor(platform)})
    if len(images) == 1:
        top, media_type = manifest, OCI_MANIFEST
    else:
        top = canonical_json({"schemaVersion": 2, "mediaType": OCI_INDEX,
                              "manifests": descriptors})
        media_type = OCI_INDEX
    top_digest = client.push_manifest(repo, tag, top, media_type)
    return BuiltImage(ref=f"{registry}/{repo}:{tag}", index_digest=top_digest, digests=digests,
                      media_type=media_type)


def _web_config(version: str) -> dict[str, object]:
    return {
        "Env": [_PATH, f"WEB_VERSION={version}"], "Cmd": ["/web/start"],
        "ExposedPorts": {f"{WEB_PORT}/tcp": {}}, "WorkingDir": "/",
        "Healthcheck": {"Test": ["CMD", "wget", "-q", "-O", "/dev/null",
                                 f"http://127.0.0.1:{WEB_PORT}/health"],
                        "Interval": _SECOND, "Timeout": 2 * _SECOND, "Retries": 3},
        "Labels": {"org.opencontainers.image.title": "corral-test-web",
                   "org.opencontainers.image.version": version},
    }


def _web(client: RegistryPusher, registry: str, tag: str) -> BuiltImage:
    version = "bad" if tag == "bad" else f"v{tag}"
    script = _WEB_BAD if tag == "bad" else _WEB_START.format(version=version, port=WEB_PORT)
    app = files_layer({"web/start": (script.encode(), 0o755)})
    images = {}
    for platform in WEB_PLATFORMS:
        layers = [_busybox_layer(platform), app]
        images[platform] = (layers, _config(platform, layers, _web_config(version),
                                            f"web {version}"))
    return _push(client, registry, "corral/web", tag, images)


def _kv(client: RegistryPusher, registry: str) -> BuiltImage:
    app = files_layer({"opt/kv/kv.py": (KV_SERVER.encode(), 0o644),
                       "data/.keep": (b"", 0o644)})
    cfg: dict[str, object] = {
        "Env": [_PATH, "PYTHONUNBUFFERED=1", "LANG=C.UTF-8", "KV_DIR=/data",
                f"KV_PORT={KV_PORT}"],
        "Entrypoint": [PYTHON, "/opt/kv/kv.py"], "WorkingDir": "/",
        "ExposedPorts": {f"{KV_PORT}/tcp": {}}, "Volumes": {"/data": {}},
        "Labels": {"org.opencontainers.image.title": "corral-test-kv"},
    }
    images = {}
    for platform in KV_PLATFORMS:
        layers = [_cached_root_layer(_PY_ARCH[platform]), app]
        images[platform] = (layers, _config(platform, layers, cfg, "kv on Debian python3.11"))
    return _push(client, registry, "corral/kv", "1", images)


def _armtool(client: RegistryPusher, registry: str) -> BuiltImage:
    app = files_layer({"usr/local/bin/armtool": (_ARMTOOL.encode(), 0o755)})
    images = {}
    for platform in ARM_ONLY:
        layers = [_busybox_layer(platform), app]
        images[platform] = (layers, _config(platform, layers,
                                            {"Env": [_PATH], "Cmd": ["/usr/local/bin/armtool"]},
                                            "armtool"))
    return _push(client, registry, "corral/armtool", "1", images)


# ---------------------------------------------------------------- the set


@dataclasses.dataclass(frozen=True)
class StackImages:
    """The pushed images of the test stack (see the module doc)."""

    web1: BuiltImage
    web2: BuiltImage
    web_bad: BuiltImage
    kv: BuiltImage
    armtool: BuiltImage

    def all(self) -> list[BuiltImage]:
        return [self.web1, self.web2, self.web_bad, self.kv, self.armtool]


def build_stack_images(registry: str) -> StackImages:
    """Build every stack image and push it to ``registry`` (``127.0.0.1:5000``).

    Needs the Python roots of amd64 and arm64 (``build_root`` makes them if missing, which
    needs binfmt_misc for arm64). Warm: only HEAD requests to the registry.
    """
    with machine_lock("stack-images"):
        client = RegistryPusher(registry)
        try:
            return StackImages(web1=_web(client, registry, "1"), web2=_web(client, registry, "2"),
                               web_bad=_web(client, registry, "bad"), kv=_kv(client, registry),
                               armtool=_armtool(client, registry))
        finally:
            client.close()


def main() -> int:
    """Entry point: ensure binfmt + registry, build, push, print the refs."""
    from testbed.daemons import ensure_binfmt, ensure_registry

    ensure_binfmt()
    images = build_stack_images(ensure_registry())
    for image in images.all():
        for platform, digest in sorted(image.digests.items()):
            print(f"  {image.ref:40} {platform:14} {digest}", file=sys.stderr)
        print(image.ref)
    return 0


if __name__ == "__main__":
    sys.exit(main())
