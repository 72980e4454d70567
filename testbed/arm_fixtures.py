"""pytest plugin: foreign-architecture agent runtimes and the agent image.

A second plugin next to ``testbed.fixtures`` (whose ``binfmt`` and ``registry`` fixtures
these use): ``pytest_plugins = ["testbed.fixtures", "testbed.arm_fixtures"]``.
Session-scoped; the roots and layers are cached on disk, so a warm session pays ~0.5 s.

- ``arm64_root``   Path of the Debian arm64 python3.11 root (``testbed.armroot``)
- ``armhf_root``   Path of the Debian armhf (linux/arm/v7) python3.11 root
- ``agent_image``  BuiltImage of ``127.0.0.1:5000/corral/agent:<version>``: an OCI index
  over linux/amd64, linux/arm64 and linux/arm/v7 (``testbed.agent_image``)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed.agent_image import build_agent_image
from testbed.armroot import build_root
from testbed.images import BuiltImage


@pytest.fixture(scope="session")
def arm64_root(binfmt: None) -> Path:
    """The arm64 runtime root (built on first use, then cached)."""
    return build_root("arm64")


@pytest.fixture(scope="session")
def armhf_root(binfmt: None) -> Path:
    """The armhf runtime root (built on first use, then cached)."""
    return build_root("armhf")


@pytest.fixture(scope="session")
def agent_image(binfmt: None, registry: str) -> BuiltImage:
    """The multi-arch agent image, pushed to the test-bed registry."""
    return build_agent_image(registry)
