"""The fleet benchmark's quick mode runs end to end on SQLite and its JSON holds together.

Not a timing test: it checks that 300 simulated agents register, stay up, get measured and
meet no errors; the latency figures themselves are the benchmark's business.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(os.geteuid() != 0, reason="the test bed needs root")]


@pytest.mark.timeout(180)
def test_fleet_bench_quick_sqlite(registry: str) -> None:
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "fleet.py"), "--quick", "--db", "sqlite",
                        "--json"], capture_output=True, text=True, timeout=150, cwd=ROOT, check=False)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    (r,) = out["results"]
    assert r["db"] == "sqlite" and r["problems"] == [], r
    assert r["registration"]["registered"] == r["agents"] == 300
    assert r["hosts"]["sim_hosts"] == 300 and r["hosts"]["down"] == 0, r["hosts"]
    assert r["services"]["converged"]["ok"], r["services"]
    for kind in ("service ls", "ps"):  # the open poll is the heartbeat: no status heartbeats
        assert r["latency"][kind]["n"] > 0, (kind, r["latency"])
        assert r["latency"][kind]["p99"] is not None
    assert r["poll_lateness"]["n"] > 0
    assert r["errors_window"] == {} and r["errors_total"] == {}, (r["errors_window"], r["errors_total"])
    assert r["server"]["cpu_s"] > 0 and r["server"]["rss_mib"] > 0
