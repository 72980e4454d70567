"""The scheduler benchmark's quick mode runs and its invariant checks hold (not a timing test)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_scheduler_bench_quick_mode_keeps_its_invariants() -> None:
    p = subprocess.run([sys.executable, str(ROOT / "bench" / "scheduler.py"), "--quick"], capture_output=True,
                       text=True, timeout=300, cwd=ROOT, check=False)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    assert "invariants: all hold" in p.stdout and "violat" not in p.stdout.lower()
