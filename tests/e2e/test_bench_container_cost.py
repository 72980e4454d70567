"""bench/container_cost.py --quick runs on the real root dockerd and reports a sane measurement.

The figures are the machine's; this test checks only that they are there, positive, and that
the bench leaves no container or network behind.
"""

from __future__ import annotations

import json
import os
import urllib.parse

import pytest
from tests.e2e.conftest import run_quick_bench

from testbed.daemons import docker_request

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (dockerd)")


def test_container_cost_bench_quick_reports_every_phase_and_cleans_up(registry: str, docker_host: str) -> None:
    out, res = run_quick_bench("container_cost.py", timeout=240)

    assert res["count"] == 3 and set(res["results"]) == {"default", "none", "host", "network"}
    for mode, r in res["results"].items():
        for phase in ("create_start", "stop", "remove"):
            assert r[f"{phase}_cpu_ms"] >= 0 and r[f"{phase}_wall_ms"] > 0, (mode, phase)
        assert r["create_start_wall_ms"] > r["remove_wall_ms"], mode  # starting a container is the big part
    assert "network namespace's share" in out and "a user-defined network's extra CPU" in out
    filters = urllib.parse.quote(json.dumps({"label": ["corral.bench.container-cost"]}))
    status, raw = docker_request(docker_host, "GET", f"/containers/json?all=1&filters={filters}")
    assert status == 200 and json.loads(raw) == []
    status, raw = docker_request(docker_host, "GET", f"/networks?filters={filters}")
    assert status == 200 and json.loads(raw) == []  # nor the network of mode "network"
