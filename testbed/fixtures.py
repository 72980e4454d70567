"""pytest plugin exposing the real test bed as fixtures (``pytest_plugins = ["testbed.fixtures"]``).

Session-scoped, started on first use and left running for the next run (the daemons
and image caches are what make a warm run fast); only the namespaced hosts are torn
down at session end, also when tests fail:

- ``docker_host``        root dockerd address (``unix:///var/run/docker.sock``)
- ``binfmt``             qemu-aarch64 / qemu-arm enabled in binfmt_misc
- ``registry``           ``127.0.0.1:5000``, Debian's docker-registry
- ``busybox_image``      BuiltImage of ``corral/busybox:1`` (amd64, arm64, arm/v7 index)
- ``arm64_only_image``   BuiltImage of ``corral/busybox-arm64:1`` (one arm64 manifest)
- ``postgres_url``       SQLAlchemy URL of database ``corral`` on 127.0.0.1:55432
- ``fresh_postgres_url`` (function scope) a just-created database for this test
- ``netns_host_factory`` ``(name, forward_ports) -> NetnsHost``, started, each with a
  distinct bridge index; all stopped at session end.
- ``auth_registry``      AuthRegistry: docker-registry with htpasswd auth on
  ``127.0.0.1:5001`` (testbed.auth_registry); stopped at session end if this session
  started it.
"""

from __future__ import annotations

import hashlib
import itertools
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from testbed.auth_registry import AuthRegistry, ensure_auth_registry, stop_auth_registry
from testbed.daemons import (
    ensure_binfmt,
    ensure_dockerd,
    ensure_postgres,
    ensure_registry,
    fresh_postgres_database,
)
from testbed.images import BuiltImage, build_busybox
from testbed.netns import NetnsHost

NetnsHostFactory = Callable[[str, list[int]], NetnsHost]


@pytest.fixture(scope="session")
def docker_host() -> str:
    """The root dockerd (started if needed)."""
    return ensure_dockerd()


@pytest.fixture(scope="session")
def binfmt() -> None:
    """ARM binaries run through qemu-user-static (binfmt_misc mounted and enabled)."""
    ensure_binfmt()


@pytest.fixture(scope="session")
def registry() -> str:
    """``127.0.0.1:5000``: an OCI registry (started if needed)."""
    return ensure_registry()


@pytest.fixture(scope="session")
def busybox_image(registry: str) -> BuiltImage:
    """busybox for linux/amd64, linux/arm64 and linux/arm/v7 behind one OCI index."""
    return build_busybox(registry)


@pytest.fixture(scope="session")
def arm64_only_image(registry: str) -> BuiltImage:
    """busybox for linux/arm64 only; its tag names the image manifest itself."""
    return build_busybox(registry, repo="corral/busybox-arm64", platforms=("linux/arm64",))


@pytest.fixture(scope="session")
def postgres_url() -> str:
    """SQLAlchemy URL of the ``corral`` database on the test-bed PostgreSQL."""
    return ensure_postgres()


@pytest.fixture
def fresh_postgres_url(request: pytest.FixtureRequest) -> str:
    """SQLAlchemy URL of a database created empty for this test."""
    name = "t_" + hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:20]
    return fresh_postgres_database(name)


@pytest.fixture(scope="session")
def netns_host_factory(binfmt: None) -> Iterator[NetnsHostFactory]:
    """Start namespaced hosts on demand; every one is stopped when the session ends."""
    hosts: list[NetnsHost] = []
    indexes = itertools.count(1)

    def make(name: str, forward_ports: list[int]) -> NetnsHost:
        if any(h.name == name for h in hosts):
            raise ValueError(f"a host named {name!r} already exists in this session")
        host = NetnsHost(name, next(indexes), forward_ports)
        hosts.append(host)  # before start(): a half-started host is stopped too
        host.start()
        return host

    try:
        yield make
    finally:
        errors = []

        def stop(host: NetnsHost) -> None:
            try:
                host.stop()
            except Exception as exc:
                errors.append(f"{host.name}: {exc}")

        with ThreadPoolExecutor(max_workers=4) as pool:  # each stop waits ~1 s on dockerd
            list(pool.map(stop, hosts))
        if errors:
            print("netns_host_factory teardown errors:\n" + "\n".join(errors), file=sys.stderr)


@pytest.fixture(scope="session")
def auth_registry() -> Iterator[AuthRegistry]:
    """A second registry, htpasswd auth (``corral`` / ``s3cret-pw``), on 127.0.0.1:5001."""
    try:
        yield ensure_auth_registry()
    finally:
        stop_auth_registry()
