"""Make the local Docker Engine run exactly the host's desired set.

One pass lists the containers this host owns (by label: the agent never
touches anything else on the engine), then for each desired instance makes
sure one container with the current spec exists and runs (pull, create,
start, restart per policy with backoff), and removes owned containers that are
not desired (or are duplicates).  Passes run on one thread; the work for
different instances within a pass runs on a small pool.

Each pass also reads the containers' health (their healthchecks' verdict, from
the same listing): it is reported, and a container gone unhealthy counts as a
failure, as in Swarm: it is stopped, and a new container replaces it when the
restart policy allows.  Containers are stopped with their own grace period (the
instance's ``stop_grace_period``, which is the container's StopTimeout).

Safety rule: the desired set only changes when the server sends a new one.
Losing the server, an engine error or an agent restart never stops anything.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Protocol

from corral import model
from corral.agent.restart import RestartBook, on_exit
from corral.agent.runtime.docker import (ContainerInfo, DockerClient, DockerError, NotFound, PullError,
                                         health_of)
from corral.model import DesiredSet, InstanceSpec, InstanceStatus

log = logging.getLogger("corral.agent")

PULL_RETRY = 10.0
EXPECT_FOR = 120.0  # seconds an engine event this agent caused may take to arrive
MIN_PASS_GAP = 0.1  # seconds between two passes' listings (a burst of engine events is one pass)
IMAGE_FACTS_FOR = 60.0  # seconds an image's presence, and that it has no health check, are taken as known
STOP_GRACE = 10  # seconds, the engine's default, for containers created without a grace period
INGRESS_DRAIN = 1.0  # seconds between leaving the ingress rotation and being stopped


def parse_docker_time(text: str) -> float:
    """'2026-11-26T01:16:29.123456789Z' -> epoch seconds (0.0 for Docker's zero time)."""
    if not text or text.startswith("0001-"):
        return 0.0
    main, _, frac = text.rstrip("Z").partition(".")
    ts = dt.datetime.fromisoformat(main).replace(tzinfo=dt.UTC).timestamp()
    return ts + (float("0." + frac[:6]) if frac else 0.0)


class Reconciler:
    def __init__(self, docker: DockerClient, host_id: str, on_change: Callable[[], None],
                 clock: Callable[[], float] = time.time, workers: int = 4,
                 on_work_done: Callable[[], None] | None = None, fake_gpus: bool = False,
                 ingress: IngressTable | None = None) -> None:
        self.docker = docker
        self.fake_gpus = fake_gpus  # test beds: GPUs exist only in the facts, so none are requested
        self.host_id = host_id
        self._on_change = on_change
        self._on_work_done = on_work_done or (lambda: None)
        self._clock = clock
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="reconcile")
        self._removals = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="remove")
        self._busy: set[str] = set()
        self._skipped: set[str] = set()  # busy keys a pass wanted to work on: their job's end pokes a pass
        self._doing: dict[str, tuple[Callable[..., None], object]] = {}  # busy key -> its job (fn, first argument)
        self._hashes: dict[str, tuple[InstanceSpec, str]] = {}  # instance id -> (spec, its spec_hash)
        # What the last listing may not show: the instances whose jobs ran while it was made or
        # started since (id -> (service, slot)); containers are only ever created by such jobs.
        self._listed: dict[str, list[ContainerInfo]] | None = None  # the last listing, by instance
        self._since_listing: dict[str, tuple[str, int]] = {}
        self._listing: dict[str, tuple[str, int]] | None = None  # collected while a listing runs
        self._job_slots: dict[str, tuple[str, int]] = {}  # instance jobs busy now
        self._jobs: set[Future[None]] = set()
        # image -> until when it is known to be on the engine / to have no health check of its own
        # (one engine call less before each create and after each start while an update runs)
        self._image_present: dict[str, float] = {}
        self._image_unchecked: dict[str, float] = {}
        self._last_pass = float("-inf")  # monotonic time of the last pass's listing
        self._last_pass_desired: DesiredSet | None = None
        self._lock = threading.Lock()
        self._desired = DesiredSet(-1, [])
        self._books: dict[str, RestartBook] = {}
        self._pull_retry_at: dict[str, float] = {}
        self._statuses: dict[str, InstanceStatus] = {}
        self.next_due: float = float("inf")  # earliest pending restart or pull retry
        self._ingress = ingress
        self._routes: dict[int, list[tuple[str, int]]] = {}
        self._draining: set[str] = set()  # containers just taken out of the ingress rotation
        # engine events this agent's own jobs are about to cause (container id -> (actions, until)):
        # they need no pass of their own, as the job reports what it did
        self._ours: dict[str, tuple[set[str], float]] = {}

    # -- inputs and outputs ---------------------------------------------------

    def set_desired(self, desired: DesiredSet) -> bool:
        """Take a new desired set and act on what changed at once where that is safe
        (:meth:`_act_now`).  True when that was all of it, so no pass is needed for it."""
        with self._lock:
            previous, self._desired = self._desired, desired
            wanted = {i.id for i in desired.instances}
            for table in (self._books, self._pull_retry_at, self._statuses, self._hashes):
                for iid in [k for k in table if k not in wanted]:
                    del table[iid]
        return self._act_now(previous, desired)

    def _act_now(self, previous: DesiredSet, desired: DesiredSet) -> bool:
        """Start the instances new to this host, and remove those that left it, at once, without
        waiting for the next pass and its listing: a rolling update's next slot moves on sooner,
        and a desired set costs the engine no listing.  Only where the last listing is sure to be
        complete for them: no container of a new instance can exist (only its own jobs make one,
        and none has run), and every container of a leaving instance or slot is known (then
        stop-first replaces it as a pass would).  True if nothing was left for the pass: nothing
        unsure, no spec changed in place, no ingress port (its routes are set by passes)."""
        listed = self._listed
        if listed is None:
            return False  # no listing yet (e.g. a desired set read from disk at start): the pass decides
        before = {i.id: i for i in previous.instances}
        wanted = {i.id for i in desired.instances}
        with self._lock:
            since = dict(self._since_listing)
            busy = set(self._busy)
        unsure = {slot for iid, slot in since.items() if iid not in wanted}  # may have unlisted containers
        leaving: dict[tuple[str, int], list[ContainerInfo]] = {}
        for iid, cs in listed.items():
            if iid not in wanted:
                for c in cs:
                    leaving.setdefault(slot_of(c), []).append(c)
        done = not any(_ingress(spec) for spec in (*previous.instances, *desired.instances)
                       if spec.id not in before or spec.id not in wanted)
        taken: set[str] = set()
        for spec in desired.instances:
            if spec.id in before:
                done = done and before[spec.id] == spec
                continue
            slot = (spec.service, spec.slot)
            if spec.id in listed or spec.id in since or spec.id in busy or slot in unsure:
                done = False
                continue
            olds = leaving.get(slot, [])
            taken.update(c.id for c in olds)
            if olds:
                job = self._submit(self._pool, spec.id, self._replace, spec, olds, also=[c.id for c in olds], slot=slot)
            else:
                job = self._submit(self._pool, spec.id, self._ensure, spec, [], slot=slot)
            done = done and job is not None
        # an instance in an ingress rotation leaves it in a pass (routes first, then a drain, then the stop)
        gone = [iid for iid, spec in before.items() if iid not in wanted and not _ingress(spec)]
        for iid in gone:
            if iid in since or iid in busy:
                done = False
                continue
            for c in listed.get(iid, []):
                if c.id not in taken:
                    done = self._submit(self._removals, c.id, self._remove, c) is not None and done
        with self._lock:
            if self._listed is listed:  # what was just handed to jobs is no longer there to act on
                self._listed = {iid: cs for iid, cs in listed.items() if iid not in gone}
        return done

    @property
    def desired(self) -> DesiredSet:
        return self._desired

    def statuses(self) -> list[InstanceStatus]:
        with self._lock:
            return [InstanceStatus(**vars(s)) for s in self._statuses.values()]

    def _report(self, iid: str, state: str, *, since: float | None = None, container_id: str = "",
                exit_code: int | None = None, error: str = "", health: str = "") -> None:
        book = self._books.get(iid, RestartBook())
        with self._lock:
            old = self._statuses.get(iid)
            if (old and old.state == state and old.container_id == container_id and old.exit_code == exit_code
                    and old.error == error and old.restarts == book.restarts and old.health == health):
                return
            self._statuses[iid] = InstanceStatus(iid, state, since if since is not None else self._clock(),
                                                 container_id, exit_code, error, book.restarts, health)
        self._on_change()

    def ours(self, container_id: str, action: str) -> bool:
        """An engine event this agent caused itself (it started or removed that container): the
        job that did it already reports the outcome, so no pass is needed.  A container that dies
        on its own, or one this agent did not touch, is not ours."""
        now = time.monotonic()
        with self._lock:
            if len(self._ours) > 64:  # events that never came (a container already stopped)
                self._ours = {cid: v for cid, v in self._ours.items() if v[1] > now}
            actions, until = self._ours.get(container_id, (set(), 0.0))
            if action not in actions or until <= now:
                return False
            actions.discard(action)
            if not actions:
                del self._ours[container_id]
            return True

    def _expect(self, container_id: str, *actions: str) -> None:
        with self._lock:
            known = self._ours.get(container_id, (set(), 0.0))[0]
            self._ours[container_id] = (known | set(actions), time.monotonic() + EXPECT_FOR)

    # -- one pass -------------------------------------------------------------

    def owned(self) -> list[ContainerInfo]:
        return self.docker.list_containers(labels={model.LABEL_HOST: self.host_id})

    def run_once(self, wait: bool = False) -> None:
        """Start the work one pass finds; with ``wait``, also wait for it to finish.

        Raises DockerError if the engine cannot be listed (nothing is touched then).
        Work for an instance or container still busy from an earlier pass (a slow
        pull, a 10 s stop) is skipped, so it never delays other instances.  A pass asked
        for within ``MIN_PASS_GAP`` of the last one, with no new desired set, is put off
        until then (``next_due``): a burst of engine events makes one listing, not several.
        """
        since = time.monotonic() - self._last_pass
        if not wait and since < MIN_PASS_GAP and self._desired is self._last_pass_desired:
            self._due(self._clock() + MIN_PASS_GAP - since)  # the loop comes back then
            return
        self._last_pass, self._last_pass_desired = time.monotonic(), self._desired
        with self._lock:
            self._listing = dict(self._job_slots)  # jobs running now may create containers it misses
        try:
            containers = self.owned()
            log.debug("pass: listed %d containers", len(containers))
        except BaseException:
            with self._lock:
                self._listing = None
            raise
        with self._lock:
            unlisted, self._listing = self._listing or {}, None
        desired = self._desired
        by_instance: dict[str, list[ContainerInfo]] = {}
        for c in containers:
            by_instance.setdefault(c.labels.get(model.LABEL_INSTANCE, ""), []).append(c)
        with self._lock:
            self._listed, self._since_listing = by_instance, dict(unlisted)
        wanted = {i.id for i in desired.instances}
        self.next_due = float("inf")
        self._route(desired, by_instance)
        leaving = [c for iid, cs in by_instance.items() if iid not in wanted for c in cs]
        # stop-first: a slot's new instance starts only once its old container has stopped on this
        # host (no two processes on one volume or host port).  One job does both: the old one
        # stops while the new one is pulled and created, the new one starts, then the old one goes.
        by_slot: dict[tuple[str, int], list[ContainerInfo]] = {}
        for c in leaving:
            by_slot.setdefault(slot_of(c), []).append(c)
        jobs: list[Future[None] | None] = []
        replacing: set[str] = set()
        unsure = {slot for iid, slot in unlisted.items() if iid not in wanted}
        again = False
        for spec in desired.instances:
            found = by_instance.get(spec.id, [])
            slot = (spec.service, spec.slot)
            if not found and (spec.id in unlisted or slot in unsure):
                # a job of this slot ran while the engine was listed: what it made may be missing
                # from the listing; look again once the busy jobs are done (or at once if none is)
                if self._submit_guard(spec, [iid for iid, sl in unlisted.items() if sl == slot]):
                    again = True
                continue
            olds = [] if found else by_slot.get(slot, [])
            if olds:
                jobs.append(self._submit(self._pool, spec.id, self._replace, spec, olds,
                                         also=[c.id for c in olds], slot=slot))
                replacing.update(c.id for c in olds)
            elif not self._settled(spec, found):
                jobs.append(self._submit(self._pool, spec.id, self._ensure, spec, found, slot=slot))
        jobs += [self._submit(self._removals, c.id, self._remove, c) for c in leaving if c.id not in replacing]
        if again:
            self._on_work_done()
        if wait:
            for job in jobs:
                if job is not None:
                    job.result()
            while True:  # and for work started outside the pass (new instances started at once)
                with self._lock:
                    pending = list(self._jobs)
                if not pending:
                    break
                for job in pending:
                    job.result()
            if again:
                self.run_once(wait=True)

    def _submit_guard(self, spec: InstanceSpec, related: list[str]) -> bool:
        """A pass left ``spec`` alone because the listing may be stale for it: have a job that is
        still busy on its slot poke the next pass (unless it is the job that makes this very spec
        run), or (none busy) ask for one now (True)."""
        with self._lock:
            busy = [k for k in [spec.id, *related] if k in self._busy]
            if busy:
                self._skipped.update(k for k in busy if k != spec.id or not self._same_work(k, self._ensure, (spec,)))
                return False
        return True

    def _same_work(self, key: str, fn: Callable[..., None], args: tuple[object, ...]) -> bool:
        """The job busy on ``key`` already does what ``fn(*args)`` would: the pass that wanted it
        needs no second look when that job ends (it reports the outcome itself).  Without this,
        while an update keeps jobs busy, every job's end would start a pass whose listing finds
        other jobs busy, and so on.  A container is removed by any job that holds it; an instance
        is made to run its spec by a job that ensures or replaces it with that very spec, unless it
        publishes an ingress port: its route is set by a pass that sees it run."""
        doing = self._doing.get(key)
        if doing is None:
            return False
        if fn == self._remove:
            return True
        spec = args[0]
        return (fn == self._ensure and doing[0] in (self._ensure, self._replace) and doing[1] == spec
                and isinstance(spec, InstanceSpec) and not _ingress(spec))

    def _settled(self, spec: InstanceSpec, found: list[ContainerInfo]) -> bool:
        """Nothing to do for this instance: its one container runs the current spec, healthy or
        still starting, and that is what was last reported (checked here, not on the pool)."""
        if len(found) != 1:
            return False
        c = found[0]
        if c.state != "running" or c.health == model.UNHEALTHY or c.labels.get(model.LABEL_SPEC) != self._hash(spec):
            return False
        old = self._statuses.get(spec.id)
        return old is not None and old.state == model.RUNNING and old.container_id == c.id and old.health == c.health

    def _hash(self, spec: InstanceSpec) -> str:
        cached = self._hashes.get(spec.id)
        if cached is not None and cached[0] is spec:
            return cached[1]
        digest = spec.spec_hash()
        self._hashes[spec.id] = (spec, digest)
        return digest

    def _submit(self, pool: ThreadPoolExecutor, key: str, fn: Callable[..., None],
                *args: object, also: list[str] | None = None,
                slot: tuple[str, int] | None = None) -> Future[None] | None:
        """Run ``fn`` on ``pool`` unless ``key`` (or a key in ``also``: containers the job takes
        over) is busy with an earlier job; then that job's end pokes another pass.  ``slot``:
        the job is an instance's (it may create a container of that service's slot)."""
        keys = [key, *(also or ())]
        with self._lock:
            busy = [k for k in keys if k in self._busy]
            if busy:
                self._skipped.update(k for k in busy if not self._same_work(k, fn, args))
                return None
            self._busy.update(keys)
            self._doing[key] = (fn, args[0] if args else None)
            self._doing.update((k, (self._remove, None)) for k in also or ())
            if slot is not None:
                self._job_slots[key] = slot
                self._since_listing[key] = slot
                if self._listing is not None:
                    self._listing[key] = slot

        def job() -> None:
            try:
                fn(*args)
            finally:
                with self._lock:
                    self._busy.difference_update(keys)
                    for k in keys:
                        self._doing.pop(k, None)
                    self._job_slots.pop(key, None)
                    again = bool(self._skipped.intersection(keys))
                    self._skipped.difference_update(keys)
                if again:
                    self._on_work_done()

        future = pool.submit(job)
        with self._lock:
            self._jobs.add(future)
        future.add_done_callback(self._job_done)
        return future

    def _job_done(self, future: Future[None]) -> None:
        with self._lock:
            self._jobs.discard(future)

    def _route(self, desired: DesiredSet, by_instance: dict[str, list[ContainerInfo]]) -> None:
        """Point each ingress port at the ready containers of the current desired set."""
        if self._ingress is None:
            return
        routes: dict[int, list[tuple[str, int]]] = {}
        for spec in desired.instances:
            ports = [p for p in spec.ports if p.mode == "ingress" and p.protocol == "tcp"]
            if not ports:
                continue
            ready = [c for c in by_instance.get(spec.id, []) if c.state == "running" and c.ip
                     and c.health not in (model.HEALTH_STARTING, model.UNHEALTHY)
                     and c.labels.get(model.LABEL_SPEC) == self._hash(spec)]
            for p in ports:
                routes.setdefault(p.published, []).extend((c.ip, p.target) for c in ready)
        if routes != self._routes:
            before = {b for bs in self._routes.values() for b in bs}
            after = {b for bs in routes.values() for b in bs}
            gone = {ip for ip, _ in before - after}
            self._draining |= {c.id for cs in by_instance.values() for c in cs if c.ip in gone}
            self._ingress.update(routes)
            self._routes = routes

    def _remove(self, c: ContainerInfo, why: str = "no longer desired") -> None:
        log.info("removing %s (%s)", c.name, why)
        self._stop(c)
        self._delete(c)

    def _stop(self, c: ContainerInfo) -> None:
        """Stop it with its own grace period (after leaving the ingress rotation, if it was in it)."""
        if c.id in self._draining:  # out of the ingress rotation: let connections already sent to it land
            self._draining.discard(c.id)
            time.sleep(INGRESS_DRAIN)
        try:
            if c.state == "running":
                label = c.labels.get(model.LABEL_STOP_GRACE, "")
                grace = float(label) if label.isdigit() else stop_grace(self.docker.inspect_container(c.id))
                self._expect(c.id, "stop", "die")
                self.docker.stop(c.id, timeout=grace)
        except NotFound:
            pass  # gone meanwhile
        except DockerError as exc:
            log.warning("could not stop %s: %s", c.name, exc)

    def _stop_each(self, containers: list[ContainerInfo]) -> None:
        for c in containers:
            self._stop(c)

    def _delete(self, c: ContainerInfo) -> None:
        try:
            self._expect(c.id, "destroy")
            self.docker.remove(c.id, force=True)
        except NotFound:
            pass  # gone meanwhile
        except DockerError as exc:
            log.warning("could not remove %s: %s", c.name, exc)

    def _replace(self, spec: InstanceSpec, olds: list[ContainerInfo]) -> None:
        """stop-first on this host: the slot's old containers stop while the new one is pulled and
        created (as Swarm prepares a task), the new one starts once they have stopped, then the old
        ones are removed.  They stop and go even if the new one cannot start."""
        for c in olds:
            log.info("replacing %s with %s (stop-first)", c.name, spec.name)
        stopping = self._removals.submit(self._stop_each, olds)
        try:
            self._ensure(spec, [], before_start=stopping.result)
        finally:
            stopping.result()
            for c in olds:
                self._delete(c)

    def _due(self, at: float) -> None:
        self.next_due = min(self.next_due, at)

    def _ensure(self, spec: InstanceSpec, found: list[ContainerInfo],
                before_start: Callable[[], object] | None = None) -> None:
        try:
            self._ensure_inner(spec, found, before_start)
        except DockerError as exc:
            log.warning("instance %s: %s", spec.name, exc)
            self._image_present.pop(spec.image, None)  # look again next time (it may have been removed)
            self._report(spec.id, model.FAILED, error=str(exc))
            self._due(self._clock() + 5)

    def _ensure_inner(self, spec: InstanceSpec, found: list[ContainerInfo],
                      before_start: Callable[[], object] | None = None) -> None:
        want_hash = self._hash(spec)
        current = [c for c in found if c.labels.get(model.LABEL_SPEC) == want_hash]
        # keep one container: a running one with the current spec if there is one
        current.sort(key=lambda c: (c.state != "running", -c.created))
        keep = current[0] if current else None
        for c in found:
            if c is not keep:
                self._remove(c, "duplicate" if c in current else "spec changed")
        if keep is None:
            self._create_and_start(spec, before_start)
        elif keep.state == "running" and keep.health == model.UNHEALTHY:
            self._handle_unhealthy(spec, keep)
        elif keep.state == "running":
            old = self._statuses.get(spec.id)
            if old is None or old.state != model.RUNNING or old.container_id != keep.id:
                started = parse_docker_time(self.docker.inspect_container(keep.id)["State"].get("StartedAt", ""))
                self._report(spec.id, model.RUNNING, since=started or None, container_id=keep.id, health=keep.health)
            elif old.health != keep.health:
                self._report(spec.id, model.RUNNING, since=old.since, container_id=keep.id, health=keep.health)
        elif keep.state in ("exited", "dead", "created"):
            self._handle_exit(spec, keep)
        # paused / restarting / removing: the engine is busy with it; look again next pass

    def _handle_exit(self, spec: InstanceSpec, c: ContainerInfo) -> None:
        now = self._clock()
        book = self._books.setdefault(spec.id, RestartBook())
        state = self.docker.inspect_container(c.id)["State"]
        exit_code = int(state.get("ExitCode", 0))
        finished = str(state.get("FinishedAt", ""))
        replacing = book.replace == c.id  # stopped as unhealthy: accounted for then
        if c.state == "created":  # created but never started (agent died in between)
            book.next_start = now
        elif not replacing and book.exit_seen_for != finished:
            book.exit_seen_for = finished
            ran_for = parse_docker_time(finished) - parse_docker_time(str(state.get("StartedAt", "")))
            decision = on_exit(spec.restart, exit_code, ran_for, now, book)
            if not decision.restart:
                book.next_start = float("inf")
                self._report(spec.id, model.EXITED, since=parse_docker_time(finished) or None,
                             container_id=c.id, exit_code=exit_code, error=decision.reason)
                return
        if book.next_start == float("inf"):
            return
        if book.next_start > now:
            wait = f"{book.next_start - now:.0f}s"
            if replacing:
                self._report_replacing(spec.id, c.id, wait)
            else:
                self._report(spec.id, model.RESTARTING, container_id=c.id, exit_code=exit_code,
                             error=f"exited with code {exit_code}; restarting in {wait}")
            self._due(book.next_start)
            return
        if replacing:  # with a new container, as Swarm does
            self.docker.remove(c.id, force=True)
            book.replace = ""
            book.restarts += 1
            self._create_and_start(spec)
            return
        if c.state != "created":
            book.restarts += 1
        self.docker.start(c.id)
        self._report(spec.id, model.RUNNING, container_id=c.id, health=self._health_after_start(c.id))

    def _handle_unhealthy(self, spec: InstanceSpec, c: ContainerInfo) -> None:
        """Its healthcheck failed: a failure for the restart policy. Stop it (its logs stay) and,
        if the policy allows, have a new container replace it once the backoff is over."""
        now = self._clock()
        book = self._books.setdefault(spec.id, RestartBook())
        data = self.docker.inspect_container(c.id)
        if health_of(data) != model.UNHEALTHY:
            return  # healthy again since the listing: look again next pass
        ran_for = now - parse_docker_time(str(data["State"].get("StartedAt", "")))
        decision = on_exit(spec.restart, None, ran_for, now, book)
        last = (data["State"]["Health"].get("Log") or [{}])[-1]
        output = str(last.get("Output") or "").strip()[-200:]
        log.warning("instance %s: container %s is unhealthy (%s); stopping it", spec.name, c.name,
                    output or f"exit code {last.get('ExitCode')}")
        book.replace = c.id
        self.docker.stop(c.id, timeout=stop_grace(data))
        if not decision.restart:
            book.next_start = float("inf")
            self._report(spec.id, model.EXITED, container_id=c.id, health=model.UNHEALTHY,
                         error=f"unhealthy{': ' + output if output else ''}; {decision.reason}")
            return
        self._report_replacing(spec.id, c.id, f"{book.next_start - now:.0f}s")
        self._due(book.next_start)

    def _report_replacing(self, iid: str, cid: str, wait: str) -> None:
        self._report(iid, model.RESTARTING, container_id=cid, health=model.UNHEALTHY,
                     error=f"unhealthy; replacing it in {wait}")

    def _create_and_start(self, spec: InstanceSpec, before_start: Callable[[], object] | None = None) -> None:
        """Pull if needed, create, then (after ``before_start``: a stop-first slot's old container
        stopping) start."""
        now = self._clock()
        if self._image_present.get(spec.image, 0.0) > now:
            pass
        elif self.docker.image_present(spec.image):
            self._image_present[spec.image] = now + IMAGE_FACTS_FOR
        else:
            if self._pull_retry_at.get(spec.id, 0.0) > now:
                self._due(self._pull_retry_at[spec.id])
                return
            self._report(spec.id, model.PULLING)
            try:
                self.docker.pull(spec.image, auth=spec.registry_auth)
            except PullError as exc:
                self._pull_retry_at[spec.id] = now + PULL_RETRY
                self._due(now + PULL_RETRY)
                self._report(spec.id, model.PULL_FAILED, error=exc.message)
                return
        labels = {**spec.labels, model.LABEL_MANAGED: "1", model.LABEL_HOST: self.host_id,
                  model.LABEL_INSTANCE: spec.id, model.LABEL_SERVICE: spec.service,
                  model.LABEL_SPEC: self._hash(spec),
                  model.LABEL_STOP_GRACE: str(grace_seconds(spec.stop_grace_period))}
        self._report(spec.id, model.STARTING)
        env = dict(spec.env)
        if spec.gpus:
            env.setdefault("CORRAL_GPUS", str(spec.gpus))
        cid = self._create(spec, labels, env)
        if before_start is not None:
            before_start()
        try:
            self._expect(cid, "start")
            self.docker.start(cid)
        except DockerError as exc:
            # e.g. a port already taken: keep the container, report, and retry with backoff
            self._report(spec.id, model.FAILED, container_id=cid, error=exc.message)
            self._due(now + 5)
            return
        self._report(spec.id, model.RUNNING, container_id=cid, health=self._health_after_start(cid, spec))

    def _create(self, spec: InstanceSpec, labels: dict[str, str], env: dict[str, str]) -> str:
        return self.docker.create_container(
            spec.name, spec.image, command=spec.command, env=env, labels=labels, ports=spec.ports,
            gpus=0 if self.fake_gpus else spec.gpus, entrypoint=spec.entrypoint, working_dir=spec.working_dir,
            user=spec.user, hostname=spec.hostname, volumes=spec.volumes,
            volume_labels={model.LABEL_MANAGED: "1", model.LABEL_HOST: self.host_id},
            healthcheck=spec.healthcheck, stop_grace_period=spec.stop_grace_period,
            cpu_limit=spec.cpu_limit, memory_limit=spec.memory_limit)

    def _health_after_start(self, cid: str, spec: InstanceSpec | None = None) -> str:
        """A container with a health check (its own or the image's) is `starting` until the check
        passes: never report it ready before that.  An image seen to have none lately (its
        containers' health read "" with no check in their spec) is not asked again."""
        now = self._clock()
        if spec is not None and spec.healthcheck is None and self._image_unchecked.get(spec.image, 0.0) > now:
            return ""
        try:
            health = health_of(self.docker.inspect_container(cid))
        except DockerError:
            return ""
        if spec is not None and spec.healthcheck is None:
            if health:
                self._image_unchecked.pop(spec.image, None)
            else:
                self._image_unchecked[spec.image] = now + IMAGE_FACTS_FOR
        return health


def _ingress(spec: InstanceSpec) -> bool:
    return any(p.mode == "ingress" for p in spec.ports)


def slot_of(c: ContainerInfo) -> tuple[str, int]:
    """(service, slot) of an owned container, from its name SERVICE.SLOT.ID."""
    service, _, rest = c.name.rpartition(".")[0].rpartition(".")
    try:
        return c.labels.get(model.LABEL_SERVICE, service), int(rest)
    except ValueError:
        return "", -1


class IngressTable(Protocol):
    def update(self, routes: Mapping[int, list[tuple[str, int]]]) -> None: ...


def stop_grace(inspected: dict[str, Any]) -> float:
    """The seconds an inspected container is given between SIGTERM and SIGKILL (its StopTimeout)."""
    return grace_seconds((inspected.get("Config") or {}).get("StopTimeout"))


def grace_seconds(period: float | None) -> int:
    """A stop grace period as the engine keeps it (StopTimeout): whole seconds, rounded up; none
    given is the engine's default."""
    return STOP_GRACE if period is None else math.ceil(period)
