"""Rolling updates: which old instances to replace next, and when an update has failed.

A service's spec has a version; an update (or a rollback) makes a new one and
records its progress in ``update_state``.  Each reconcile pass asks
:func:`step` what to do, given the service's instances and the time:

- up to ``parallelism`` slots (0: all at once) are being replaced at any time,
  as a sliding window: as soon as one slot's new instance is ready, the next
  slot starts (after ``delay``), the way Swarm's update workers go.
  ``stop-first`` removes the old instance as its slot starts; ``start-first``
  keeps it until the new one is ready, so the service never has fewer ready
  instances than it asked for;
- a new instance is *ready* when it runs and its health check (if any) says
  healthy;
- a new instance that fails (exits, fails to pull or start, restarts, turns
  unhealthy) before it is ready, or within ``monitor`` seconds after, is a
  failure; when failures exceed ``max_failure_ratio`` of the instances updated
  so far, ``failure_action`` applies: ``pause`` stops the update where it is,
  ``rollback`` goes back to the previous spec (a rollout of its own, with
  ``rollback_config``), ``continue`` carries on.

Like Swarm, a slot waits for readiness but not for the monitor window, which
is watched alongside the following slots.  This module decides only: no
store, no clock of its own (``now`` is given), so every rule is unit-tested.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from corral.model import status_failed, status_ready

DEFAULTS: Mapping[str, Any] = {"parallelism": 1, "delay": 0.0, "order": "stop-first", "monitor": 5.0,
                               "max_failure_ratio": 0.0, "failure_action": "pause"}
ROLLBACK_DEFAULTS: Mapping[str, Any] = {**DEFAULTS, "failure_action": "pause"}
ACTIVE = ("updating", "rolling_back")


class Instance(Protocol):
    """What a rolling update reads of an instance (read-only: store rows are tuples)."""

    @property
    def id(self) -> str: ...
    @property
    def slot(self) -> int: ...
    @property
    def spec_version(self) -> int: ...
    @property
    def state(self) -> str: ...
    @property
    def health(self) -> str: ...
    @property
    def restarts(self) -> int: ...
    @property
    def error(self) -> str: ...


@dataclass
class Step:
    remove: list[str] = field(default_factory=list)  # old (or failed new) instances to remove now
    place: list[int] = field(default_factory=list)  # slots that get an instance of the new version
    state: dict[str, Any] | None = None  # the new update_state (None: unchanged)
    event: str | None = None  # an event to record with the new state
    rollback: bool = False  # failure_action rollback: go back to the previous spec
    wake_at: float | None = None  # when a pass is due again (delay, monitor window)


def settings(spec: Mapping[str, Any], rolling_back: bool) -> dict[str, Any]:
    given = spec.get("rollback_config" if rolling_back else "update_config") or {}
    return {**(ROLLBACK_DEFAULTS if rolling_back else DEFAULTS), **{k: v for k, v in given.items() if v is not None}}


def is_ready(inst: Instance) -> bool:
    return status_ready(inst.state, inst.health, inst.restarts)


def has_failed(inst: Instance) -> bool:
    return status_failed(inst.state, inst.health, inst.restarts)


def current_versions(version: int, state: Mapping[str, Any] | None) -> set[int]:
    """Spec versions whose instances need no replacing: this one, and after a rollback the
    version it restored (its instances already run that spec)."""
    return {version, *((state or {}).get("equivalent") or ())}


def step(spec: Mapping[str, Any], version: int, state: Mapping[str, Any] | None, instances: Sequence[Instance],
         now: float) -> Step:
    """The next move of the service's rolling update (if one is active)."""
    if not state or state.get("state") not in ACTIVE:
        return Step()
    current = current_versions(version, state)
    st: dict[str, Any] = dict(state)
    rolling_back = st["state"] == "rolling_back"
    cfg = settings(spec, rolling_back)
    new = [i for i in instances if i.spec_version in current]
    old = [i for i in instances if i.spec_version not in current]
    new_by_slot = {i.slot: i for i in new}
    batch = [i for i in new if i.id in st.get("batch", [])]
    watch: dict[str, float] = dict(st.get("watch", {}))
    failed: list[str] = list(st.get("failed", []))
    out = Step()

    # failures of new instances: in the batch, or still inside their monitor window
    for inst in new:
        watched = inst.id in watch and now - watch[inst.id] <= float(cfg["monitor"])
        if inst.id not in failed and (inst in batch or watched) and has_failed(inst):
            failed.append(inst.id)
            st["message"] = f"instance {inst.slot} ({inst.id}) failed: {inst.error or inst.state}"
    for inst in batch:
        if is_ready(inst) and inst.id not in watch:
            watch[inst.id] = now
    watch = {k: v for k, v in watch.items() if now - v <= float(cfg["monitor"])}
    st["watch"], st["failed"] = watch, failed
    updated = max(1, int(st.get("started", 0)))
    if failed and len(failed) / updated > float(cfg["max_failure_ratio"]) and cfg["failure_action"] != "continue":
        st["batch"] = []
        if cfg["failure_action"] == "rollback" and not rolling_back:
            st["state"] = "rollback_pending"
            out.rollback, out.event = True, "update_failed"
        else:
            st["state"] = "rollback_paused" if rolling_back else "paused"
            out.event = st["state"]
        out.state = st
        return out

    # start-first: an old instance goes once the new one in its slot is ready
    for inst in old:
        repl = new_by_slot.get(inst.slot)
        if repl is not None and is_ready(repl):
            out.remove.append(inst.id)
    # a sliding window, as Swarm's update workers: a slot whose new instance is ready (or failed,
    # and failures are tolerated) takes the next old one after `delay`
    in_flight = [i for i in batch if not is_ready(i) and i.id not in failed]
    delay = float(cfg["delay"])
    cooldown = [t for t in st.get("cooldown", []) if t > now]
    if delay > 0:
        cooldown += [now + delay] * (len(batch) - len(in_flight))
    st["batch"], st["cooldown"] = [i.id for i in in_flight], cooldown
    waiting_old = [i for i in old if i.id not in out.remove and i.slot not in new_by_slot]
    if not in_flight and not [i for i in old if i.id not in out.remove]:
        st["state"] = "rollback_completed" if rolling_back else "completed"
        st["completed_at"] = now
        out.state, out.event = st, st["state"]
        return out
    free = (int(cfg["parallelism"]) or len(waiting_old)) - len(in_flight) - len(cooldown)
    if waiting_old and free > 0:
        chosen = sorted(waiting_old, key=lambda i: i.slot)[:free]
        out.place = [i.slot for i in chosen]
        if cfg["order"] != "start-first":
            out.remove.extend(i.id for i in chosen)
        st["started"] = int(st.get("started", 0)) + len(chosen)
    if cooldown:
        out.wake_at = min(cooldown)
    out.state = st if st != state else None
    return out
