"""bench/uplink.py --quick runs on the real test bed and reports a sane measurement.

The bench reports performance (kbit/s against the 0.25 kbit/s goal); this test only checks
that its numbers are there and hang together. It does not assert the goal.
"""

from __future__ import annotations

import math
import os

import pytest
from tests.e2e.conftest import run_quick_bench

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (netns, dockerd)")


def test_uplink_bench_quick_reports_sane_json(registry: str) -> None:
    out, res = run_quick_bench("uplink.py", timeout=150)

    assert 25 <= res["window_s"] <= 40
    assert res["running_at_end"] == 2
    assert res["bytes_sent"] > 0 and res["segs_out"] > 0
    assert res["connections"] >= 1 and res["reconnections"] >= 0
    for key in ("kbps_payload", "kbps_wire_estimate", "ratio_payload", "ratio_wire_estimate"):
        assert math.isfinite(res[key]) and res[key] > 0, key
    assert res["kbps_payload"] == pytest.approx(res["bytes_sent"] * 8 / 1000 / res["window_s"])
    assert res["wire_estimate_bytes"] == res["bytes_sent"] + 52 * res["segs_out"]
    assert res["kbps_wire_estimate"] > res["kbps_payload"]
    assert "estimate" in res["wire_estimate_note"]
    assert "on-wire ESTIMATE" in out

    cap = res["capture"]
    if cap is not None:  # the cross-check sees the same connections' packets
        assert cap["segments"] > 0 and cap["payload"] > 0
        assert cap["l3_bytes"] > cap["payload"]
        assert cap["requests"] >= 1
