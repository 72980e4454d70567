"""Rolling-update decisions (corral.controllers.rollout.step): batches, order, delay, failures."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from corral.controllers.rollout import step


@dataclass
class Inst:
    id: str
    slot: int
    spec_version: int
    state: str = "running"
    health: str = ""
    restarts: int = 0
    error: str = ""


def updating(**more: Any) -> dict[str, Any]:
    return {"state": "updating", "batch": [], "failed": [], "next_at": 0.0, "version": 2, **more}


def spec(**cfg: Any) -> dict[str, Any]:
    return {"image": "x", "update_config": {"parallelism": 2, "order": "stop-first", **cfg}}


OLD = [Inst(f"o{n}", n, 1) for n in range(1, 6)]


def test_no_active_update_means_nothing_to_do() -> None:
    assert step(spec(), 2, None, OLD, 0.0).place == []
    assert step(spec(), 2, {"state": "completed"}, OLD, 0.0).remove == []


def test_stop_first_replaces_the_lowest_slots_in_batches_of_parallelism() -> None:
    s = step(spec(), 2, updating(), OLD, 10.0)
    assert s.place == [1, 2] and s.remove == ["o1", "o2"]
    assert s.state is not None and s.state["started"] == 2


def test_the_next_batch_waits_for_readiness_then_the_delay() -> None:
    insts = OLD[2:] + [Inst("n1", 1, 2, state="starting"), Inst("n2", 2, 2)]
    st = updating(batch=["n1", "n2"], started=2)
    assert step(spec(delay=3.0), 2, st, insts, 10.0).place == []  # n1 not ready yet
    insts[-2].state = "running"
    s = step(spec(delay=3.0), 2, st, insts, 11.0)
    assert s.place == [] and s.wake_at == 14.0 and s.state is not None and s.state["batch"] == []
    s2 = step(spec(delay=3.0), 2, s.state, insts, 14.0)
    assert s2.place == [3, 4] and s2.remove == ["o3", "o4"]


def test_health_starting_is_not_ready() -> None:
    insts = OLD[1:] + [Inst("n1", 1, 2, health="starting")]
    assert step(spec(parallelism=1), 2, updating(batch=["n1"], started=1), insts, 1.0).place == []
    insts[-1].health = "healthy"
    assert step(spec(parallelism=1), 2, updating(batch=["n1"], started=1), insts, 1.0).place == [2]


def test_a_sliding_window_starts_the_next_slot_as_soon_as_one_is_ready() -> None:
    insts = OLD[2:] + [Inst("n1", 1, 2), Inst("n2", 2, 2, state="pulling")]
    s = step(spec(), 2, updating(batch=["n1", "n2"], started=2), insts, 3.0)
    assert s.place == [3] and s.remove == ["o3"]
    assert s.state is not None and s.state["batch"] == ["n2"] and s.state["started"] == 3


def test_start_first_keeps_the_old_instance_until_the_new_one_is_ready() -> None:
    s = step(spec(order="start-first"), 2, updating(), OLD, 0.0)
    assert s.place == [1, 2] and s.remove == []
    insts = OLD + [Inst("n1", 1, 2, state="starting"), Inst("n2", 2, 2)]
    s = step(spec(order="start-first"), 2, updating(batch=["n1", "n2"], started=2), insts, 1.0)
    assert s.remove == ["o2"]  # n2 is ready: its old one goes; n1 is not yet
    assert s.place == [3]  # and n2's place in the window goes to the next slot


def test_completes_when_no_old_instance_is_left() -> None:
    insts = [Inst(f"n{n}", n, 2) for n in range(1, 6)]
    s = step(spec(), 2, updating(started=5), insts, 50.0)
    assert s.state is not None and s.state["state"] == "completed" and s.event == "completed"


def test_a_failure_pauses_by_default() -> None:
    insts = OLD[2:] + [Inst("n1", 1, 2, state="exited", error="exit 1"), Inst("n2", 2, 2)]
    s = step(spec(), 2, updating(batch=["n1", "n2"], started=2), insts, 5.0)
    assert s.state is not None and s.state["state"] == "paused" and s.event == "paused"
    assert "instance 1" in s.state["message"] and "exit 1" in s.state["message"]
    assert s.place == [] and s.remove == []


def test_failure_action_rollback_asks_for_a_rollback() -> None:
    insts = OLD[1:] + [Inst("n1", 1, 2, health="unhealthy")]
    s = step(spec(failure_action="rollback"), 2, updating(batch=["n1"], started=1), insts, 5.0)
    assert s.rollback and s.event == "update_failed"


def test_a_failure_within_the_monitor_window_counts_after_the_batch_moved_on() -> None:
    insts = OLD[2:] + [Inst("n1", 1, 2), Inst("n2", 2, 2)]
    s = step(spec(monitor=10.0), 2, updating(batch=["n1", "n2"], started=2), insts, 5.0)
    assert s.place == [3, 4]
    assert s.state is not None and set(s.state["watch"]) == {"n1", "n2"}
    insts[-1].restarts = 1  # n2 restarts 4 s after it was ready: inside the window
    later = step(spec(monitor=10.0), 2, {**s.state, "batch": []}, insts, 9.0)
    assert later.state is not None and later.state["state"] == "paused"


def test_failures_under_the_ratio_are_tolerated() -> None:
    insts = OLD[2:] + [Inst("n1", 1, 2, state="exited"), Inst("n2", 2, 2)]
    s = step(spec(max_failure_ratio=0.5), 2, updating(batch=["n1", "n2"], started=2), insts, 5.0)
    assert s.state is not None and s.state["state"] == "updating" and s.place == [3, 4]


def test_continue_carries_on_past_failures() -> None:
    insts = OLD[2:] + [Inst("n1", 1, 2, state="exited"), Inst("n2", 2, 2, state="exited")]
    s = step(spec(failure_action="continue"), 2, updating(batch=["n1", "n2"], started=2), insts, 5.0)
    assert s.place == [3, 4]


def test_a_rollback_uses_the_rollback_settings_and_ends_as_rollback_completed() -> None:
    sp = {**spec(), "rollback_config": {"parallelism": 0}}
    s = step(sp, 3, {**updating(), "state": "rolling_back"}, [Inst(f"n{n}", n, 2) for n in range(1, 6)], 0.0)
    assert s.place == [1, 2, 3, 4, 5]  # parallelism 0: all at once
    done = step(sp, 3, {**updating(), "state": "rolling_back"}, [Inst(f"r{n}", n, 3) for n in range(1, 6)], 9.0)
    assert done.state is not None and done.state["state"] == "rollback_completed"


def test_only_ready_or_failed_reports_can_move_an_update_on() -> None:
    from corral.model import decisive

    assert decisive("running", "", 0) and decisive("running", "healthy", 0)
    assert decisive("exited", "", 0) and decisive("pull_failed", "", 0) and decisive("running", "unhealthy", 0)
    assert decisive("running", "", 1), "a restart is a failure"
    assert not decisive("starting", "", 0) and not decisive("pulling", "", 0) and not decisive("pending", "", 0)
    assert not decisive("running", "starting", 0), "not ready before its health check passes"
