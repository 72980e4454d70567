"""Corral's real test bed: daemons, multi-arch images, namespaced hosts, pytest fixtures.

Everything here is real and offline: a root dockerd, qemu through binfmt_misc, Debian's
docker-registry on 127.0.0.1, a throwaway PostgreSQL cluster, busybox images built from
Debian packages for amd64/arm64/armv7, and extra "hosts" that are network namespaces, each
with its own dockerd. Modules:

- ``daemons``  -- ensure_dockerd / ensure_binfmt / ensure_registry / ensure_postgres.
- ``images``   -- build_busybox: offline multi-arch OCI images pushed to the registry.
- ``netns``    -- NetnsHost: a namespace + dockerd + loopback forwarder.
- ``forward``  -- the forwarder process (listen inside a netns, dial the root netns).
- ``fixtures`` -- the pytest plugin (``pytest_plugins = ["testbed.fixtures"]``).

Tests talk only to loopback or to addresses inside namespaces they create.
"""
