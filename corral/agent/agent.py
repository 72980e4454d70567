"""The agent process: a few threads around one reconciler.

    channel   long-polls the server for this host's desired set (and log requests);
              the open poll is the heartbeat (the server's kernel probes it with TCP
              keepalive), renewed every poll_wait seconds
    reporter  pushes instance status and fact changes as they happen
    events    follows the engine's events for owned containers, to react to exits
    overlay   (with the overlay on) keeps the host's WireGuard interface, container
              network and DNS server as the server's plan says (corral.agent.overlay)
    main      runs reconcile passes when something changed, or every few seconds

So an idle host sends one small request a minute, and an empty ACK per
heartbeat interval.  Facts go up in full after each (re)connect and then as a patch of the
keys that changed; instance statuses only when they change (a full set after
each reconnect).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any

from corral.agent import facts as facts_mod
from corral.agent.ingress import Ingress
from corral.agent.logs import LogSender
from corral.agent.overlay import OverlayManager
from corral.agent.reconciler import Reconciler
from corral.agent.runtime.docker import DockerClient, DockerError
from corral.agent.session import ServerError, ServerSession, Unreachable
from corral.agent.state import StateDir
from corral.model import LABEL_HOST, DesiredSet, decisive

log = logging.getLogger("corral.agent")

RESYNC_EVERY = 5.0  # seconds between reconcile passes when nothing happens
FACTS_EVERY = 60.0
COALESCE = 0.02  # seconds a status change waits for the next one, to share a report
# seconds a report of in-between states only (pulling, starting, health check starting) waits for
# the next change: it decides nothing on the server, and during a rolling update the decisive
# "running" follows within a second or two, so most such reports ride along with it
HOLD = 0.5
EVENT_RECHECK = 0.5  # seconds after an engine event, a second look


class Agent:
    def __init__(self, session: ServerSession, docker: DockerClient, state: StateDir, host_id: str,
                 labels: dict[str, str], hostname: str | None = None, heartbeat: float = 10.0,
                 fake_gpus: int = 0, overlay: OverlayManager | None = None) -> None:
        self.session = session
        self.docker = docker
        self.state = state
        self.host_id = host_id
        self.labels = labels
        self.hostname = hostname
        self.heartbeat = heartbeat
        self.poll_wait = heartbeat  # until the server says how long it holds a poll
        self.fake_gpus = fake_gpus
        self._stop = threading.Event()
        self._wake_reconcile = threading.Event()
        self._wake_report = threading.Event()
        self._dirty = threading.Lock()
        self._full_status = True
        self._facts_sent: dict[str, Any] | None = None
        self._facts: dict[str, Any] = {}
        self._facts_at = 0.0
        self.ingress = Ingress()
        self.reconciler = Reconciler(docker, host_id, on_change=self._status_changed, on_work_done=self.poke,
                                     fake_gpus=fake_gpus > 0, ingress=self.ingress)
        self.logs = LogSender(session, docker, host_id)
        self.overlay = overlay
        saved = state.desired()
        if saved is not None:
            self.reconciler.set_desired(saved)
            log.info("loaded desired set revision %d (%d instances) from disk",
                     saved.revision, len(saved.instances))

    # -- lifecycle ------------------------------------------------------------

    def run(self) -> None:
        threads = [threading.Thread(target=self._channel_loop, name="channel", daemon=True),
                   threading.Thread(target=self._report_loop, name="reporter", daemon=True),
                   threading.Thread(target=self._events_loop, name="events", daemon=True)]
        if self.overlay is not None:
            self.overlay.prepare()
            threads.append(threading.Thread(target=self.overlay.run, args=(self._stop,), name="overlay",
                                            daemon=True))
        for t in threads:
            t.start()
        self._reconcile_loop()

    def stop(self) -> None:
        self._stop.set()
        self._wake_reconcile.set()
        self._wake_report.set()

    # -- reconcile ------------------------------------------------------------

    def _status_changed(self) -> None:
        self._wake_report.set()

    def report_soon(self) -> None:
        """Something in the report changed (e.g. the overlay's): send it."""
        self._wake_report.set()

    def _reconcile_loop(self) -> None:
        engine_ok = True
        while not self._stop.is_set():
            self._wake_reconcile.clear()
            try:
                self.reconciler.run_once()
                if not engine_ok:
                    log.info("engine answers again: converged")
                engine_ok = True
            except DockerError as exc:
                if engine_ok:
                    log.warning("engine unavailable (%s): nothing is stopped; retrying", exc)
                engine_ok = False
            resync_at = time.time() + (RESYNC_EVERY if engine_ok else 1.0)
            # Sleep in short slices: jobs of the pass just started may set an earlier due time.
            while not self._wake_reconcile.is_set():
                left = min(resync_at, self.reconciler.next_due) - time.time()
                if left <= 0:
                    break
                self._wake_reconcile.wait(min(left, 0.25))

    def poke(self) -> None:
        self._wake_reconcile.set()

    # -- server channel ---------------------------------------------------------

    def _apply_desired(self, body: dict[str, Any]) -> None:
        desired = DesiredSet.from_dict(body)
        if desired.revision == self.reconciler.desired.revision:
            return
        self.state.save_desired(body)  # on disk before acting on it (it parsed: it reads back the same)
        handled = self.reconciler.set_desired(desired)
        log.info("desired set revision %d: %d instances", desired.revision, len(desired.instances))
        if not handled:
            self.poke()

    def _channel_loop(self) -> None:
        backoff = 1.0
        while not self._stop.is_set():
            try:
                wait = max(1, round(self.poll_wait))
                query = f"revision={self.reconciler.desired.revision}&wait={wait}"
                if self.overlay is not None:
                    query += f"&mesh={self.overlay.digest}&dns={self.overlay.dns_generation}"
                body = self.session.call("GET", f"/api/v1/agent/channel?{query}", timeout=wait + 15)
                backoff = 1.0
                self.heartbeat = float(body.get("heartbeat_interval", self.heartbeat))
                self.poll_wait = float(body.get("poll_wait", self.heartbeat))
            except (Unreachable, ServerError) as exc:
                if isinstance(exc, ServerError) and exc.status in (401, 403):
                    log.error("server refused this host's credential (%s); keeping containers as they are", exc)
                    if self.overlay is not None:  # removed from the cluster: the others dropped it already
                        self.overlay.leave()
                else:
                    log.warning("server unreachable (%s); keeping containers as they are", exc)
                self._stop.wait(backoff + random.random())
                # never wait longer than the server takes to call a silent host down
                backoff = min(backoff * 2, 15.0, max(1.0, self.heartbeat * 2))
                continue
            if "desired" in body:
                self._apply_desired(body["desired"])
            if self.overlay is not None and "overlay" in body:
                self.overlay.set_plan(body["overlay"])
            if self.overlay is not None and "dns" in body:
                self.overlay.set_directory(body["dns"])
            for req in body.get("log_requests") or []:
                self.logs.start(req)

    # -- reports ----------------------------------------------------------------

    def _current_facts(self) -> dict[str, Any]:
        now = time.time()
        if now - self._facts_at >= FACTS_EVERY or not self._facts:
            gpus = fake_gpus(self.fake_gpus) if self.fake_gpus else None
            self._facts = facts_mod.collect_facts(self.docker, self.labels, self.hostname, gpus=gpus)
            self._facts_at = now
        return self._facts

    def _report_loop(self) -> None:
        sent: dict[str, Any] = {}
        retry_at = 0.0  # after a failed report, changes wait for this (no hot loop while offline)
        backoff = 1.0
        held_since: float | None = None
        while not self._stop.is_set():
            now = time.time()
            facts = self._current_facts()
            if self.overlay is not None:
                facts = {**facts, "overlay": self.overlay.report()}
            statuses = {s.instance_id: s.to_dict() for s in self.reconciler.statuses()}
            changed = [v for k, v in statuses.items() if sent.get(k) != v]
            if changed and facts == self._facts_sent and all(map(_in_between, changed)):
                held_since = now if held_since is None else held_since
            else:
                held_since = None
            if (not changed and facts == self._facts_sent) or now < retry_at or \
                    (held_since is not None and now < held_since + HOLD):
                due = retry_at if now < retry_at else self._facts_at + FACTS_EVERY
                if held_since is not None:
                    due = min(due, held_since + HOLD)
                if self._wake_report.wait(max(0.05, due - now)):
                    time.sleep(COALESCE)  # starting -> running often follows at once: one report
                self._wake_report.clear()
                continue
            body: dict[str, Any] = {"revision": self.reconciler.desired.revision}
            if self._facts_sent is None:
                body["facts"] = facts
            elif facts != self._facts_sent:
                body["facts_patch"] = facts_patch(self._facts_sent, facts)
            if changed:
                body["instances"] = changed
            held_since = None
            try:
                reply = self.session.call("POST", "/api/v1/agent/status", body)
                if reply.get("overlay_refused"):
                    log.error("%s", reply["overlay_refused"])
                self._facts_sent = facts
                sent.update((c["instance_id"], c) for c in changed)
                self.heartbeat = float(reply.get("heartbeat_interval", self.heartbeat))
                backoff = 1.0
            except (Unreachable, ServerError) as exc:
                log.debug("status report failed: %s", exc)
                sent = {}  # after the link returns, send everything again
                self._facts_sent = None
                retry_at = time.time() + min(backoff, self.heartbeat)
                backoff = min(backoff * 2, 30.0)

    # -- engine events ----------------------------------------------------------

    def _events_loop(self) -> None:
        filters = {"type": ["container"], "label": [f"{LABEL_HOST}={self.host_id}"],
                   "event": ["die", "start", "destroy", "oom", "stop", "health_status"]}
        while not self._stop.is_set():
            try:
                with self.docker.events(filters) as stream:
                    self.poke()  # the stream (re)opened: the engine may have restarted
                    for event in stream:
                        cid = (event.get("Actor") or {}).get("ID") or event.get("id") or ""
                        if self.reconciler.ours(str(cid), str(event.get("Action") or "")):
                            continue
                        self.poke()
                        # the engine may list a container as running for a moment after its
                        # `die`: look once more shortly after
                        self.reconciler.next_due = min(self.reconciler.next_due, time.time() + EVENT_RECHECK)
            except (DockerError, OSError) as exc:
                log.debug("engine events: %s", exc)
            self._stop.wait(1.0)


def facts_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """The top-level keys whose values changed; a key that disappeared maps to None."""
    patch = {k: v for k, v in new.items() if old.get(k) != v}
    patch.update((k, None) for k in old if k not in new)
    return patch


def fake_gpus(count: int) -> list[dict[str, Any]]:
    """GPUs that exist only in the facts: for test beds without GPUs, and named as such."""
    return [{"index": i, "name": "fake GPU (test bed)", "uuid": f"GPU-fake-{i}", "memory_bytes": 0}
            for i in range(count)]


def _in_between(status: dict[str, Any]) -> bool:
    """A status on the way to running (or to failing) that nothing on the server waits for."""
    return not decisive(status["state"], status.get("health", ""), int(status.get("restarts", 0)))
