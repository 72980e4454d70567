"""Restart policies with backoff (pure)."""

from __future__ import annotations

import pytest

from corral.agent.restart import MAX_DELAY, RestartBook, on_exit
from corral.model import RestartPolicy


@pytest.mark.parametrize("condition, code, restarts", [
    ("any", 0, True), ("any", 1, True), ("on-failure", 0, False), ("on-failure", 2, True),
    ("none", 1, False), ("none", 0, False),
])
def test_conditions(condition: str, code: int, restarts: bool) -> None:
    d = on_exit(RestartPolicy(condition=condition), code, ran_for=1.0, now=100.0, book=RestartBook())  # type: ignore[arg-type]
    assert d.restart is restarts
    if not restarts:
        assert d.reason


def test_quick_crashes_back_off_exponentially_and_cap() -> None:
    book = RestartBook()
    policy = RestartPolicy(delay=1.0)
    delays = []
    for _ in range(10):
        d = on_exit(policy, 1, ran_for=0.5, now=0.0, book=book)
        delays.append(d.at)
    assert delays[:7] == [1, 2, 4, 8, 16, 32, MAX_DELAY]
    assert max(delays) == MAX_DELAY


def test_a_stable_run_resets_the_backoff() -> None:
    book = RestartBook(quick_failures=5)
    d = on_exit(RestartPolicy(delay=2.0), 1, ran_for=60.0, now=10.0, book=book)
    assert d.at == 12.0 and book.quick_failures == 0


def test_max_attempts() -> None:
    book = RestartBook(restarts=3)
    d = on_exit(RestartPolicy(max_attempts=3), 1, ran_for=0.1, now=0.0, book=book)
    assert not d.restart and "gave up after 3" in d.reason
