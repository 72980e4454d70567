"""bench/rollout.py --quick runs on the real test bed and reports a sane measurement.

The bench reports performance (Corral against Docker Swarm, and the gap in answers during a
start-first update); this test only checks that its numbers are there and hang together.
It asserts no goal.
"""

from __future__ import annotations

import math
import os

import pytest
from tests.e2e.conftest import run_quick_bench

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (netns, dockerd)")


def test_rollout_bench_quick_reports_sane_json(registry: str) -> None:
    out, res = run_quick_bench("rollout.py", timeout=240)

    meta = res["meta"]
    assert meta["replicas"] == 12 and meta["parallelism"] == 4 and meta["quick"] is True
    assert meta["images"]["pre_pulled"] is True and meta["images"]["v1_digest"] != meta["images"]["v2_digest"]
    assert set(res["runs"]) == {"stop-first", "start-first"}
    for order, run in res["runs"].items():
        c, s = run["corral"], run["swarm"]
        for side in (c, s):
            assert side["done"] is True, order
            assert math.isfinite(side["total_s"]) and side["total_s"] > 0, order
            assert side["milestones"]["100%"] is not None and side["milestones"]["100%"] <= side["total_s"] + 0.01
            a = side["analysis"]
            assert a["new_containers"] >= 12, (order, a)  # every slot got a v2 container
            assert 0 <= a["last_start_s"] <= side["total_s"] + 0.01
        assert run["ratio"] == pytest.approx(c["total_s"] / s["total_s"])
        assert c["final_update"]["state"] == "completed" and c["final_running"] == 12
        # a sliding window of 4 slots over 12 replicas: 8 hand-offs (a slot moving on to the next)
        assert c["analysis"]["handoff_median_s"] is not None and s["analysis"]["handoff_median_s"] is not None
        for side in (c, s):
            cpu = side["cpu_core_s"]
            assert cpu["machine"] > 0 and set(cpu) >= {"corral server", "corral agents", "engines", "rest"}
        assert c["cpu_core_s"]["corral server"] > 0 and c["cpu_core_s"]["corral agents"] > 0
        if order == "stop-first":  # every new container started after its slot's old one stopped
            assert c["analysis"]["old_die_to_new_start_median_s"] > 0
        assert f"faster_than_swarm_{order}" in res["goals"]
        f = run["cpu"]
        assert f["corral_core_s"] == pytest.approx(c["cpu_core_s"]["machine"])
        assert 0 < f["cpu_ratio_without_control_plane"] < f["cpu_ratio"]
        assert f["corral_busy"] > 0 and f["swarm_busy"] > 0
    assert res["goals"]["faster_than_swarm"] == res["goals"]["faster_than_swarm_stop-first"]
    assert "Corral/Swarm" in out and "goal: faster than Swarm, both with their default update order" in out
    assert "also timed: faster than Swarm with start-first" in out and "without Corral's server and agents" in out
    assert "PRE-PULLED" in out and "CPU core-s during the update" in out

    gap = res["gap"]
    assert gap["requests"] > 0 and gap["answers"] + gap["failures"] == gap["requests"]
    assert gap["verdict"] in ("no gap", "gap", "no answers", "no switch to v2")
    assert res["goals"]["no_gap_start_first"] == (gap["verdict"] == "no gap")
    if gap["verdict"] == "no answers":
        assert "NO ANSWERS" in out
    else:
        assert gap["longest_gap_s"] is None or gap["longest_gap_s"] >= 0
    assert "goal: no gap in answers during start-first" in out
