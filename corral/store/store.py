"""The store: every read and write the server makes, as small transactions.

Callers get detached ORM rows (read them, never write through them) or plain
values.  Instances, which every reconcile and listing reads by the hundred, come
as :class:`Instance` tuples from plain column selects, their specs decoded once
per process (see :meth:`Store._specs_for`).  Every change to what a host should
run bumps that host's revision in the same transaction, so an agent that has
revision N knows it has everything up to N.  On SQLite, write transactions are serialised by a process-wide lock
(SQLite allows one writer; waiting on a Python lock is cheaper than retrying
"database is locked").

Every change that placement reads (hosts joining, leaving, going down or
coming back, their labels, availability and capacity facts; services and
their instances) also bumps the one *cluster revision*.  The service
controller reads that revision before its snapshot and applies a plan only if
it is unchanged (:meth:`Store.apply_service_plan` with ``expect_revision``);
otherwise :class:`StaleRevision` tells it to read again and replan.
"""

from __future__ import annotations

import functools
import logging
import secrets
import threading
from collections import defaultdict
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

from sqlalchemy.exc import OperationalError
from sqlalchemy import Connection, Engine, Table, bindparam, delete, func, insert, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from corral.model import LABEL_ADDRESS, DesiredSet, InstanceSpec, InstanceStatus
from corral.net.addresses import SubnetFull, pick_address
from corral.net.ipam import ClusterNet, IpamError, allocate
from corral.store.tables import ClusterStateRow, EventRow, HostRow, InstanceRow, RegistryCredentialRow, ServiceRow, SettingRow, TokenRow


log = logging.getLogger("corral.store")


def new_id() -> str:
    return secrets.token_hex(6)


F = TypeVar("F", bound=Callable[..., Any])


def retried(method: F) -> F:
    """Run a write method again (up to 3 times) when PostgreSQL picked its transaction as a
    deadlock victim or could not serialise it; the method is one transaction, so nothing of
    the failed try remains."""
    @functools.wraps(method)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        for attempt in range(4):
            try:
                return method(*args, **kwargs)
            except OperationalError as exc:
                code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
                if code not in ("40P01", "40001") or attempt == 3:
                    raise
                time.sleep(0.01 * (attempt + 1))
        raise AssertionError("unreachable")
    return wrapper  # type: ignore[return-value]


class NotFoundError(LookupError):
    pass


class ConflictError(ValueError):
    pass


class StaleRevision(RuntimeError):
    """The cluster changed after a plan was computed: read again and replan."""


# The facts placement depends on: a change to one of these bumps the cluster revision.
SCHEDULING_FACTS = ("platform", "emulated_platforms", "arm32", "cpus", "memory_bytes", "gpus", "docker",
                    "engine_labels")


@dataclass(frozen=True)
class HostBrief:
    id: str
    name: str
    state: str
    platform: str


class Instance(NamedTuple):
    """An instance row as read.  ``spec`` is shared with the store's cache: never change it."""

    id: str
    service_id: str
    host_id: str
    slot: int
    spec: dict[str, Any]
    platform: str
    emulated: bool
    state: str
    exit_code: int | None
    error: str
    container_id: str
    restarts: int
    since: float
    created_at: float
    spec_version: int
    health: str
    address: str


# The tables themselves, for the statements every report, reconcile and listing makes: plain
# Core statements skip the ORM's compile and flush steps, which cost more than the SQL.
HOSTS: Table = HostRow.__table__  # type: ignore[assignment]
INSTANCES: Table = InstanceRow.__table__  # type: ignore[assignment]
EVENTS: Table = EventRow.__table__  # type: ignore[assignment]
CLUSTER: Table = ClusterStateRow.__table__  # type: ignore[assignment]
SERVICES: Table = ServiceRow.__table__  # type: ignore[assignment]
# every column but the spec, in Instance's order (the spec comes from the cache)
_INSTANCE_COLUMNS = tuple(INSTANCES.c[name] for name in Instance._fields if name != "spec")
_SPEC_CACHE_MAX = 200_000


def _ids(name: str = "ids") -> Any:
    return bindparam(name, expanding=True)


# Built once: building a statement and its cache key costs more than running it on SQLite.
_CLUSTER_REVISION = select(CLUSTER.c.revision).where(CLUSTER.c.id == 1)
_BUMP_CLUSTER = update(CLUSTER).where(CLUSTER.c.id == 1).values(revision=CLUSTER.c.revision + 1)
_BUMP_CLUSTER_FROM = _BUMP_CLUSTER.where(CLUSTER.c.revision == bindparam("expect"))
_BUMP_HOSTS = update(HOSTS).where(HOSTS.c.id.in_(_ids())).values(revision=HOSTS.c.revision + 1)
_SILENT_HOSTS = select(HOSTS.c.id, HOSTS.c.name).where(HOSTS.c.state == "ready",
                                                       HOSTS.c.last_seen < bindparam("before"))
_HOSTS_NOT_READY = select(HOSTS.c.id, HOSTS.c.name).where(HOSTS.c.state != "ready")
_HOSTS_SEEN_AT = update(HOSTS).where(HOSTS.c.id.in_(_ids())).values(last_seen=bindparam("ts"))
_HOSTS_READY = update(HOSTS).where(HOSTS.c.id.in_(_ids())).values(state="ready")
_HOST_REVISION = select(HOSTS.c.revision).where(HOSTS.c.id == bindparam("host_id"))
_HOST_NAME_STATE = select(HOSTS.c.name, HOSTS.c.state).where(HOSTS.c.id == bindparam("host_id"))
_HOST_SEEN = update(HOSTS).where(HOSTS.c.id == bindparam("host_id")).values(state="ready",
                                                                           last_seen=bindparam("now"))
_INSERT_EVENT = insert(EVENTS)
_INSERT_INSTANCES = insert(INSTANCES)
_INSTANCE_KEYS_OF_HOST = (select(INSTANCES.c.id, INSTANCES.c.address)
                          .where(INSTANCES.c.host_id == bindparam("host_id")).order_by(INSTANCES.c.id))
_INSTANCE_SPECS = select(INSTANCES.c.id, INSTANCES.c.address, INSTANCES.c.spec).where(INSTANCES.c.id.in_(_ids()))
_INSTANCES_ORDER = (INSTANCES.c.service_id, INSTANCES.c.slot, INSTANCES.c.id)
_LIST_INSTANCES = {
    (by_service, by_host): select(*_INSTANCE_COLUMNS).where(
        *([INSTANCES.c.service_id == bindparam("service_id")] if by_service else []),
        *([INSTANCES.c.host_id == bindparam("host_id")] if by_host else [])).order_by(*_INSTANCES_ORDER)
    for by_service in (False, True) for by_host in (False, True)}
_REPORTED = (select(INSTANCES.c.id, INSTANCES.c.slot, INSTANCES.c.state, INSTANCES.c.health, SERVICES.c.name)
             .join(SERVICES, SERVICES.c.id == INSTANCES.c.service_id)
             .where(INSTANCES.c.host_id == bindparam("host_id"), INSTANCES.c.id.in_(_ids())))
_RECORD_STATUS = update(INSTANCES).where(INSTANCES.c.id == bindparam("b_id"))
_PLAN_SERVICE = (select(SERVICES.c.name, SERVICES.c.pending_reason, SERVICES.c.replicas, SERVICES.c.version)
                 .where(SERVICES.c.id == bindparam("service_id")))
_LEAVING = select(INSTANCES.c.id, INSTANCES.c.host_id, INSTANCES.c.slot).where(INSTANCES.c.id.in_(_ids()))
_DELETE_INSTANCES = delete(INSTANCES).where(INSTANCES.c.id.in_(_ids()))
_NEXT_ADDRESS = update(HOSTS).where(HOSTS.c.id == bindparam("host_id")).values(next_address=bindparam("next"))
_ADDRESSES_ON = (select(INSTANCES.c.host_id, INSTANCES.c.address)
                 .where(INSTANCES.c.host_id.in_(_ids()), INSTANCES.c.address != ""))
_OVERLAY_HOSTS_OF = (select(HOSTS.c.id, HOSTS.c.subnet, HOSTS.c.overlay, HOSTS.c.next_address)
                     .where(HOSTS.c.id.in_(_ids()), HOSTS.c.subnet.is_not(None)))
TOKEN_MEMORY = 2.0  # seconds a valid token is taken as valid without asking the database


class _Memory:
    """Answers remembered for TOKEN_MEMORY seconds, for reads that every request or desired set
    makes.  :meth:`forget` (after this process changed what they read) drops them all, and an
    answer read across such a change is not kept."""

    MISS = object()

    def __init__(self, max_entries: int = 1000) -> None:
        self._answers: dict[Hashable, tuple[float, Any]] = {}  # key -> (until, answer)
        self._max = max_entries
        self.changes = 0  # what :meth:`put` compares: read it before the read it remembers

    def get(self, key: Hashable) -> Any:
        """The remembered answer, or :attr:`MISS`."""
        hit = self._answers.get(key)
        return hit[1] if hit is not None and hit[0] > time.monotonic() else self.MISS

    def put(self, key: Hashable, answer: Any, changes: int) -> None:
        if changes != self.changes:  # read across a change: it may be the old answer
            return
        if len(self._answers) >= self._max:
            self._answers.clear()
        self._answers[key] = (time.monotonic() + TOKEN_MEMORY, answer)

    def forget(self) -> None:
        self.changes += 1
        self._answers.clear()


@dataclass(frozen=True)
class OverlayHost:
    id: str
    name: str
    state: str
    subnet: str | None
    labels: dict[str, str]
    overlay: dict[str, Any] | None


class _Unset:
    pass


UNSET = _Unset()


@dataclass(frozen=True)
class NewInstance:
    host_id: str
    slot: int
    spec: InstanceSpec
    platform: str
    emulated: bool = False
    spec_version: int = 1


# Service spec keys that change the service, not its containers: no new version, no rollout.
SERVICE_ONLY_KEYS = frozenset({"update_config", "rollback_config", "service_labels"})


def task_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """What a rolling update compares: the spec without its service-only keys."""
    return {k: v for k, v in spec.items() if k not in SERVICE_ONLY_KEYS}


@dataclass(frozen=True)
class StackService:
    name: str  # the full name (STACK_SERVICE)
    spec: dict[str, Any]
    replicas: int


class Store:
    def __init__(self, engine: Engine, clock: Callable[[], float] = time.time) -> None:
        self.engine = engine
        self.clock = clock
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._write_lock = threading.Lock() if engine.dialect.name == "sqlite" else None
        self.generation = 0  # counts this process's writes that listings would show
        self.overlay_generation = 0  # counts this process's writes that the overlay's mesh plan reads
        self.cluster: ClusterNet | None = None  # the overlay's cluster network; hosts get subnets of it
        # instance id -> (address, decoded spec).  An instance's spec never changes but with its
        # overlay address (_readdress sets both), so an entry whose address still matches the row
        # is current, whichever server process wrote the row.
        self._specs: dict[str, tuple[str, dict[str, Any]]] = {}
        self._valid_tokens = _Memory()  # (kind, hash) -> True, for tokens found valid
        self._credentials = _Memory()  # registry -> its RegistryCredentialRow, or None

    def _overlay_changed(self) -> None:
        self.overlay_generation += 1

    @contextmanager
    def _read(self) -> Iterator[Session]:
        with self._sessions() as session:
            yield session

    @contextmanager
    def _write(self, quiet: bool = False) -> Iterator[Session]:
        """A write transaction; unless ``quiet`` (nothing a listing shows changed), it moves
        :attr:`generation` on, which read caches key on."""
        with self._writing(quiet), self._sessions.begin() as session:
            yield session

    # The hot paths (status reports, a reconcile's reads, desired sets) are plain Core statements:
    # on a Connection they cost half what they cost through a Session, which adds its own
    # bookkeeping to every statement.

    @contextmanager
    def _core_read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn:
            yield conn

    @contextmanager
    def _core_write(self, quiet: bool = False) -> Iterator[Connection]:
        """:meth:`_write` for plain statements."""
        with self._writing(quiet), self.engine.begin() as conn:
            yield conn

    @contextmanager
    def _writing(self, quiet: bool) -> Iterator[None]:
        if self._write_lock is not None:
            self._write_lock.acquire()
        try:
            yield
            if not quiet:
                self.generation += 1
        finally:
            if self._write_lock is not None:
                self._write_lock.release()

    # -- settings and tokens -------------------------------------------------

    def get_setting(self, key: str) -> str | None:
        with self._read() as s:
            row = s.get(SettingRow, key)
            return row.value if row else None

    def set_setting(self, key: str, value: str) -> None:
        with self._write() as s:
            s.merge(SettingRow(key=key, value=value))

    def add_token(self, kind: str, secret_hash: str, *, replace: bool = False) -> None:
        """Store a token; with ``replace`` every older token of that kind is revoked."""
        with self._write() as s:
            if replace:
                s.execute(update(TokenRow).where(TokenRow.kind == kind).values(revoked=True))
            s.add(TokenRow(id=new_id(), kind=kind, secret_hash=secret_hash, revoked=False,
                           created_at=self.clock()))
        if replace:  # after the commit: a check that raced it may have remembered an old token
            self._valid_tokens.forget()

    def token_remembered(self, kind: str, secret_hash: str) -> bool:
        """Whether :meth:`token_valid` said yes for this token less than TOKEN_MEMORY seconds ago
        (no database read: callers on an event loop ask this first)."""
        return self._valid_tokens.get((kind, secret_hash)) is True

    def token_valid(self, kind: str, secret_hash: str) -> bool:
        """Whether a token of that kind with that hash exists and is not revoked.  A yes is
        remembered for TOKEN_MEMORY seconds (every CLI and API call checks the admin token); a
        token this process revokes is refused at once, one revoked by another server within
        that time."""
        if self.token_remembered(kind, secret_hash):
            return True
        changes = self._valid_tokens.changes
        with self._read() as s:
            valid = s.scalar(select(TokenRow.id).where(TokenRow.kind == kind, TokenRow.secret_hash == secret_hash,
                                                       TokenRow.revoked.is_(False)).limit(1)) is not None
        if valid:
            self._valid_tokens.put((kind, secret_hash), True, changes)
        return valid

    # -- hosts ----------------------------------------------------------------

    def create_host(self, name: str, facts: dict[str, Any], labels: dict[str, str],
                    token_hash: str) -> HostRow:
        now = self.clock()
        row = HostRow(id=new_id(), name=name, state="ready", availability="active", platform=str(facts.get("platform", "")),
                      engine_platform=str(facts.get("engine_platform", "")), labels=dict(labels),
                      facts=facts, token_hash=token_hash, revision=0, created_at=now, last_seen=now,
                      next_address=0)
        with self._write() as s:
            s.add(row)
            self._changed(s)
            self._event(s, "host", "joined", name, id=row.id, platform=row.platform)
        self._overlay_changed()
        return row

    def cluster_revision(self) -> int:
        with self._core_read() as s:
            return s.scalar(_CLUSTER_REVISION) or 0

    def host_briefs(self, ids: Iterable[str] | None = None) -> dict[str, HostBrief]:
        """Hosts' id, name, state and platform (those in ``ids``, or all): what listings of
        services and instances show, without loading (and decoding) each host's facts."""
        q = select(HOSTS.c.id, HOSTS.c.name, HOSTS.c.state, HOSTS.c.platform)
        wanted = None if ids is None else set(ids)
        if wanted is not None and len(wanted) <= 500:
            q = q.where(HOSTS.c.id.in_(wanted))
        with self._core_read() as s:
            return {r.id: HostBrief(r.id, r.name, r.state, r.platform) for r in s.execute(q)
                    if wanted is None or r.id in wanted}

    def host_credential(self, host_id: str) -> tuple[str, str] | None:
        """(name, token hash) of a host, for authenticating its agent."""
        with self._read() as s:
            row = s.execute(select(HostRow.name, HostRow.token_hash).where(HostRow.id == host_id)).first()
            return (row.name, row.token_hash) if row else None

    def host_revisions(self) -> dict[str, int]:
        with self._core_read() as s:
            return {host_id: rev for host_id, rev in s.execute(select(HostRow.id, HostRow.revision))}

    def list_hosts(self) -> list[HostRow]:
        with self._read() as s:
            return list(s.scalars(select(HostRow).order_by(HostRow.name, HostRow.id)))

    def get_host(self, ref: str) -> HostRow:
        """Find a host by id, unique id prefix, or name."""
        with self._read() as s:
            row = s.get(HostRow, ref)
            if row:
                return row
            rows = list(s.scalars(select(HostRow).where(HostRow.name == ref)))
            if not rows:
                rows = list(s.scalars(select(HostRow).where(HostRow.id.startswith(ref)))) if len(ref) >= 4 else []
            if len(rows) == 1:
                return rows[0]
            if len(rows) > 1:
                raise ConflictError(f"host {ref!r} is ambiguous: use its id ({', '.join(r.id for r in rows)})")
            raise NotFoundError(f"no host {ref!r}")

    def host_by_id(self, host_id: str) -> HostRow | None:
        with self._read() as s:
            return s.get(HostRow, host_id)

    @retried
    def set_label(self, host_id: str, key: str, value: str | None) -> HostRow:
        with self._write() as s:
            row = s.get(HostRow, host_id)
            if row is None:
                raise NotFoundError(f"no host {host_id!r}")
            labels = dict(row.labels)
            if value is None:
                if key not in labels:
                    raise NotFoundError(f"host {row.name} has no label {key!r}")
                labels.pop(key)
            else:
                labels[key] = value
            row.labels = labels
            self._changed(s)
            self._overlay_changed()
            self._event(s, "host", "label", row.name, id=row.id, key=key, value=value)
            return row

    @retried
    def set_availability(self, host_id: str, availability: str) -> HostRow:
        with self._write() as s:
            row = s.get(HostRow, host_id)
            if row is None:
                raise NotFoundError(f"no host {host_id!r}")
            row.availability = availability
            self._changed(s)
            self._event(s, "host", availability, row.name, id=row.id)
            return row

    @retried
    def remove_host(self, host_id: str) -> None:
        with self._write() as s:
            row = s.get(HostRow, host_id)
            if row is not None:
                self._event(s, "host", "removed", row.name, id=host_id)
            s.execute(delete(InstanceRow).where(InstanceRow.host_id == host_id))
            s.execute(delete(HostRow).where(HostRow.id == host_id))
            self._changed(s)
        self._overlay_changed()

    @retried
    def heartbeat(self, host_id: str, facts: dict[str, Any] | None,
                  statuses: Sequence[InstanceStatus], facts_patch: dict[str, Any] | None = None,
                  overlay: dict[str, Any] | None | _Unset = UNSET) -> bool:
        """Record a status report; return True when the host was down and is back.

        ``facts`` replaces the host's facts; ``facts_patch`` changes only the keys it
        names (a None value removes the key).  ``overlay`` (when given) replaces the
        host's overlay report; a higher repair count in it is recorded as an event.
        """
        now = self.clock()
        if facts is None and not facts_patch and isinstance(overlay, _Unset):
            return self._status_report(host_id, statuses, now)
        with self._write() as s:
            row = s.get(HostRow, host_id)
            if row is None:
                raise NotFoundError(f"no host {host_id!r}")
            if facts_patch:
                merged = {**(facts if facts is not None else row.facts), **facts_patch}
                facts = {k: v for k, v in merged.items() if v is not None}
            came_back = row.state != "ready"
            if came_back:
                self._event(s, "host", "up", row.name, id=row.id)
                self._overlay_changed()
            row.state = "ready"
            row.last_seen = now
            if came_back or (facts is not None and any(facts.get(k) != row.facts.get(k)
                                                       for k in SCHEDULING_FACTS)):
                self._changed(s)
            if facts is not None:
                row.facts = facts
                row.platform = str(facts.get("platform", row.platform))
                row.engine_platform = str(facts.get("engine_platform", row.engine_platform))
            if not isinstance(overlay, _Unset) and overlay != row.overlay:
                self._overlay_report(s, row, overlay)
            if statuses:
                self._record_statuses(s, row.id, row.name, statuses)
            return came_back

    def _status_report(self, host_id: str, statuses: Sequence[InstanceStatus], now: float) -> bool:
        """:meth:`heartbeat` for the common report, statuses only (no facts, no overlay): plain
        statements, and the host row's documents are neither read nor written."""
        with self._core_write() as s:
            row = s.execute(_HOST_NAME_STATE, {"host_id": host_id}).first()
            if row is None:
                raise NotFoundError(f"no host {host_id!r}")
            came_back = row.state != "ready"
            if came_back:
                self._changed(s)
                self._event(s, "host", "up", row.name, id=host_id)
            if statuses:
                self._record_statuses(s, host_id, row.name, statuses)
            # the host row after its instances' rows, as plans take them (PostgreSQL row locks)
            s.execute(_HOST_SEEN, {"host_id": host_id, "now": now})
        if came_back:
            self._overlay_changed()
        return came_back

    def _record_statuses(self, s: Session | Connection, host_id: str, host_name: str, statuses: Sequence[InstanceStatus]) -> None:
        """Store the statuses of the host's instances (others' are ignored), with an event for
        each change of state or health."""
        by_id = {st.instance_id: st for st in statuses}
        known = s.execute(_REPORTED, {"host_id": host_id, "ids": list(by_id)}).all()
        changes = []
        for iid, slot, state, health_was, service in known:
            st = by_id[iid]
            health = st.health or ""
            if state != st.state or health_was != health:
                self._event(s, "instance", st.state if state != st.state else f"health_{health}", service,
                            id=iid, slot=slot, host=host_name, exit_code=st.exit_code, error=st.error[:500],
                            health=health)
            changes.append({"b_id": iid, "health": health, "state": st.state, "exit_code": st.exit_code,
                            "error": st.error, "container_id": st.container_id, "restarts": st.restarts,
                            "since": st.since})
        if changes:
            s.execute(_RECORD_STATUS, changes)

    def _overlay_report(self, s: Session, row: HostRow, overlay: dict[str, Any] | None) -> None:
        """Store an agent's overlay report; a host's first key gets it a subnet.

        Subnets go to hosts that run the overlay, when they first report a key (not at the
        join: hosts without the overlay hold none).  When every subnet is taken, the host's
        overlay is refused with the reason (it runs its containers without one) and the
        hosts that have subnets keep them."""
        old = row.overlay or {}
        new = overlay or {}
        if new.get("public_key") and row.subnet is None and self.cluster is not None:
            taken = [t for t in s.scalars(select(HostRow.subnet).where(HostRow.subnet.is_not(None))) if t]
            try:
                row.subnet = allocate(self.cluster, taken)
                self._event(s, "host", "subnet", row.name, id=row.id, subnet=row.subnet)
            except IpamError as exc:
                overlay = new = {**new, "error": f"no overlay subnet for this host: {exc}"}
        if int(new.get("repairs") or 0) > int(old.get("repairs") or 0) and new.get("last_repair"):
            repair = dict(new["last_repair"])
            self._event(s, "host", "overlay_repaired", row.name, id=row.id, what=repair.get("what"),
                        reason=repair.get("reason"))
        if bool(new.get("error")) and new.get("error") != old.get("error"):
            self._event(s, "host", "overlay_failed", row.name, id=row.id, reason=new.get("error"))
        row.overlay = overlay
        if bool(new.get("public_key")) != bool(old.get("public_key")):
            self._readdress(s, row)
        self._overlay_changed()

    def _readdress(self, s: Session, host: HostRow) -> None:
        """The host's overlay came (or went): give its instances addresses (or take them away).

        Instances placed before the agent's first overlay report (a global service's, right
        after the join) get addresses now; the changed spec makes the agent recreate their
        containers on the overlay network.  An agent that stopped running the overlay gets its
        instances back on the engine's default network."""
        rows = list(s.scalars(select(InstanceRow).where(InstanceRow.host_id == host.id)))
        on = bool((host.overlay or {}).get("public_key")) and host.subnet is not None
        changed = False
        used = {r.address for r in rows if r.address}
        for inst in rows:
            if on and not inst.address and host.subnet is not None:
                try:
                    inst.address, host.next_address = pick_address(host.subnet, used, host.next_address)
                except SubnetFull as exc:
                    log.warning("instance %s runs without an overlay address: %s", inst.id, exc)
                    continue
                used.add(inst.address)
            elif not on and inst.address:
                inst.address = ""
            else:
                continue
            labels = {k: v for k, v in (inst.spec.get("labels") or {}).items() if k != LABEL_ADDRESS}
            if inst.address:
                labels[LABEL_ADDRESS] = inst.address
            inst.spec = {**inst.spec, "labels": labels}
            changed = True
        if changed:
            self._bump(s, [host.id])

    @retried
    def mark_down(self, last_seen_before: float, spare: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """Mark down the ready hosts not seen since ``last_seen_before`` (but those in ``spare``)."""
        with self._core_read() as c:  # asked every second, and almost always nobody: no write then
            if all(r.id in spare for r in c.execute(_SILENT_HOSTS, {"before": last_seen_before})):
                return []
        with self._write() as s:
            rows = [r for r in s.execute(_SILENT_HOSTS, {"before": last_seen_before}) if r.id not in spare]
            ids = [r.id for r in rows]
            if ids:
                s.execute(update(HostRow).where(HostRow.id.in_(ids)).values(state="down"))
                self._changed(s)
                for r in rows:
                    self._event(s, "host", "down", r.name, id=r.id)
                self._overlay_changed()
            return ids

    @retried
    def touch_hosts(self, seen: dict[str, float]) -> list[str]:
        """Record when hosts were last heard from (one batch); return those that were down."""
        if not seen:
            return []
        with self._core_write(quiet=True) as s:
            # few hosts are ever not ready: find them, rather than asking about every host seen
            rows = [r for r in s.execute(_HOSTS_NOT_READY) if r.id in seen]
            back = [r.id for r in rows]
            for r in rows:
                self._event(s, "host", "up", r.name, id=r.id)
            # hosts seen at the same moment (all those holding a poll) share one statement per chunk
            by_time: dict[float, list[str]] = defaultdict(list)
            for host_id, ts in seen.items():
                by_time[ts].append(host_id)
            if back:  # the cluster row before host rows, as every other writer takes them
                self._changed(s)
            for ts, ids in by_time.items():
                ids.sort()  # host rows in one order in every transaction: no deadlocks between them
                for i in range(0, len(ids), 5000):
                    s.execute(_HOSTS_SEEN_AT, {"ids": ids[i:i + 5000], "ts": ts})
            if back:
                s.execute(_HOSTS_READY, {"ids": back})
        if back:
            self.generation += 1
            self._overlay_changed()
        return back

    def host_revision(self, host_id: str) -> int:
        with self._core_read() as s:
            rev = s.scalar(_HOST_REVISION, {"host_id": host_id})
            if rev is None:
                raise NotFoundError(f"no host {host_id!r}")
            return rev

    def desired_set(self, host_id: str) -> DesiredSet:
        revision, specs = self.desired_specs(host_id)
        return DesiredSet(revision, [InstanceSpec.from_dict(spec) for spec in specs])

    def desired_specs(self, host_id: str) -> tuple[int, list[dict[str, Any]]]:
        """A host's revision and its instances' specs as stored (shared with the cache: copy a
        spec before changing it), by instance id: what the agent channel sends."""
        with self._core_read() as s:
            rev = s.scalar(_HOST_REVISION, {"host_id": host_id})
            if rev is None:
                raise NotFoundError(f"no host {host_id!r}")
            keys = s.execute(_INSTANCE_KEYS_OF_HOST, {"host_id": host_id}).all()
            return rev, self._specs_for(s, keys)

    # -- services and instances -----------------------------------------------

    def create_service(self, name: str, spec: dict[str, Any], replicas: int, stack: str | None = None) -> ServiceRow:
        with self._write() as s:
            return self._create_service(s, name, spec, replicas, stack)

    def _create_service(self, s: Session, name: str, spec: dict[str, Any], replicas: int,
                        stack: str | None) -> ServiceRow:
        now = self.clock()
        row = ServiceRow(id=new_id(), name=name, spec=spec, replicas=replicas, pending_reason=None,
                         created_at=now, updated_at=now, stack=stack, version=1)
        if s.scalar(select(func.count()).where(ServiceRow.name == name)):
            raise ConflictError(f"service {name!r} already exists")
        s.add(row)
        self._changed(s)
        self._event(s, "service", "created", name, replicas=replicas, image=spec.get("image"), stack=stack)
        return row

    def update_service(self, name: str, spec: dict[str, Any], replicas: int | None = None) -> tuple[ServiceRow, bool]:
        """Give a service a new spec; returns (row, whether a rolling update started).

        A change to what its containers run starts a rolling update to a new version
        (the old spec is kept for a rollback); a change of replicas or of service-only
        keys (update settings, service labels) takes effect without one.
        """
        with self._write() as s:
            row = self._service_row(s, name)
            return row, self._update_service(s, row, spec, replicas)

    def _update_service(self, s: Session, row: ServiceRow, spec: dict[str, Any], replicas: int | None,
                        action: str = "update") -> bool:
        rollout = task_spec(spec) != task_spec(row.spec)
        if replicas is not None and replicas != row.replicas:
            row.replicas = replicas
            self._event(s, "service", "scaled", row.name, replicas=replicas)
        if rollout:
            # the image as resolved goes with its spec: a rollback restores the pinned digests
            previous = (row.update_state or {}).get("previous_resolution")
            resolution = row.resolution if spec.get("image") == row.spec.get("image") else None
            if action == "rollback" and spec.get("image") == (row.previous_spec or {}).get("image"):
                resolution = previous
            before = row.update_state or {}
            row.update_state = {"state": "rolling_back" if action == "rollback" else "updating",
                                "started_at": self.clock(), "batch": [], "failed": [], "next_at": 0.0,
                                "message": "", "version": row.version + 1, "previous_resolution": row.resolution,
                                "previous_version": row.version,
                                # a rollback restores the spec the previous version ran: its instances stay
                                "equivalent": [before["previous_version"]] if action == "rollback"
                                and "previous_version" in before else []}
            row.previous_spec = row.spec
            row.version = row.version + 1
            row.resolution = resolution
            self._event(s, "service", f"{action}_started", row.name, version=row.version, image=spec.get("image"))
        row.spec = spec
        row.updated_at = self.clock()
        self._changed(s)
        return rollout

    def rollback_service(self, name: str, reason: str = "") -> ServiceRow:
        """Go back to the spec before the last update, as a rolling update of its own.

        ``reason`` (an automatic rollback: why the update failed) is recorded as an
        ``update_failed`` event and kept as the rollback's message."""
        with self._write() as s:
            row = self._service_row(s, name)
            if row.previous_spec is None:
                raise ConflictError(f"service {name!r} has no previous spec to roll back to")
            if reason:
                self._event(s, "service", "update_failed", name, version=row.version, message=reason)
            self._update_service(s, row, row.previous_spec, None, action="rollback")
            if reason and row.update_state is not None:
                row.update_state = {**row.update_state, "message": f"update failed, rolled back: {reason}"}
            return row

    def set_update_state(self, service_id: str, state: dict[str, Any], event: str | None = None) -> None:
        with self._write() as s:
            row = s.get(ServiceRow, service_id)
            if row is None:
                return
            row.update_state = state
            if event:
                self._event(s, "service", event, row.name, version=row.version, message=state.get("message", ""))

    @retried
    def apply_stack(self, stack: str, services: Sequence[StackService], prune: bool = False) -> dict[str, list[str]]:
        """Create, update (or, with ``prune``, remove) a stack's services in one transaction.

        Returns the names per outcome: created, updated, scaled, unchanged, removed (and
        ``hosts``: the hosts whose desired sets changed).  A name taken by a service outside
        this stack is a ConflictError, and then nothing changes.
        """
        out: dict[str, list[str]] = {k: [] for k in ("created", "updated", "scaled", "unchanged", "removed", "hosts")}
        with self._write() as s:
            existing = {r.name: r for r in s.scalars(select(ServiceRow).where(ServiceRow.name.in_(
                [x.name for x in services])))}
            for r in existing.values():
                if r.stack != stack:
                    raise ConflictError(f"service {r.name!r} already exists outside stack {stack!r}")
            for svc in services:
                row = existing.get(svc.name)
                if row is None:
                    self._create_service(s, svc.name, svc.spec, svc.replicas, stack)
                    out["created"].append(svc.name)
                    continue
                # a global service's replicas are the hosts that qualify, not the file's
                replicas = row.replicas if svc.spec.get("mode") == "global" else svc.replicas
                scaled = replicas != row.replicas
                changed = svc.spec != row.spec
                if self._update_service(s, row, svc.spec, replicas) if (changed or scaled) else False:
                    out["updated"].append(svc.name)
                elif changed or scaled:
                    out["scaled" if scaled else "updated"].append(svc.name)
                else:
                    out["unchanged"].append(svc.name)
            if prune:
                wanted = {x.name for x in services}
                for row in s.scalars(select(ServiceRow).where(ServiceRow.stack == stack)):
                    if row.name not in wanted:
                        out["hosts"].extend(self._delete_service(s, row))
                        out["removed"].append(row.name)
        return out

    def list_stacks(self) -> dict[str, list[ServiceRow]]:
        with self._read() as s:
            stacks: dict[str, list[ServiceRow]] = {}
            for row in s.scalars(select(ServiceRow).where(ServiceRow.stack.is_not(None)).order_by(ServiceRow.name)):
                stacks.setdefault(str(row.stack), []).append(row)
            return stacks

    @retried
    def delete_stack(self, stack: str) -> list[str]:
        """Remove every service of a stack; return the hosts whose sets changed."""
        with self._write() as s:
            rows = list(s.scalars(select(ServiceRow).where(ServiceRow.stack == stack)))
            if not rows:
                raise NotFoundError(f"no stack {stack!r}")
            hosts: list[str] = []
            for row in rows:
                hosts.extend(self._delete_service(s, row))
            return sorted(set(hosts))

    def list_services(self) -> list[ServiceRow]:
        with self._read() as s:
            return list(s.scalars(select(ServiceRow).order_by(ServiceRow.name)))

    def get_service(self, name: str) -> ServiceRow:
        with self._read() as s:
            row = s.scalars(select(ServiceRow).where(ServiceRow.name == name)).first()
            if row is None:
                raise NotFoundError(f"no service {name!r}")
            return row

    @staticmethod
    def _service_row(s: Session, name: str) -> ServiceRow:
        row = s.scalars(select(ServiceRow).where(ServiceRow.name == name)).first()
        if row is None:
            raise NotFoundError(f"no service {name!r}")
        return row

    def set_replicas(self, name: str, replicas: int) -> ServiceRow:
        with self._write() as s:
            row = self._service_row(s, name)
            row.replicas = replicas
            row.updated_at = self.clock()
            self._changed(s)
            self._event(s, "service", "scaled", name, replicas=replicas)
            return row

    @retried
    def delete_service(self, name: str) -> list[str]:
        """Delete a service and its instances; return the hosts whose sets changed."""
        with self._write() as s:
            return self._delete_service(s, self._service_row(s, name))

    def _delete_service(self, s: Session, row: ServiceRow) -> list[str]:
        hosts = sorted(set(s.scalars(select(InstanceRow.host_id).where(InstanceRow.service_id == row.id))))
        s.execute(delete(InstanceRow).where(InstanceRow.service_id == row.id))
        s.delete(row)
        self._bump(s, hosts)
        self._changed(s)
        self._event(s, "service", "removed", row.name)
        return hosts

    def set_resolution(self, service_id: str, resolution: dict[str, Any] | None,
                       pending_reason: str | None = None) -> None:
        with self._write() as s:
            row = s.get(ServiceRow, service_id)
            if row is not None:
                row.resolution = resolution
                row.pending_reason = pending_reason
                self._changed(s)

    def set_pending_reason(self, service_id: str, reason: str | None) -> None:
        with self._write() as s:
            row = s.get(ServiceRow, service_id)
            if row is not None and row.pending_reason != reason:
                row.pending_reason = reason

    # -- registry credentials -------------------------------------------------

    def set_registry_credential(self, registry: str, username: str, password: str) -> RegistryCredentialRow:
        row = RegistryCredentialRow(host=registry, username=username, password=password,
                                    created_at=self.clock())
        with self._write() as s:
            s.merge(row)
        self._credentials.forget()
        return row

    def registry_credential(self, registry: str) -> RegistryCredentialRow | None:
        """The credential stored for a registry.  Every desired set sent to an agent asks for its
        images' registries, so an answer is remembered for TOKEN_MEMORY seconds: a change made
        through this process shows at once, one made through another server within that time."""
        hit = self._credentials.get(registry)
        if hit is not _Memory.MISS:
            return hit
        changes = self._credentials.changes
        with self._read() as s:
            row = s.get(RegistryCredentialRow, registry)
        self._credentials.put(registry, row, changes)
        return row

    def list_registry_credentials(self) -> list[RegistryCredentialRow]:
        with self._read() as s:
            return list(s.scalars(select(RegistryCredentialRow).order_by(RegistryCredentialRow.host)))

    def delete_registry_credential(self, registry: str) -> None:
        with self._write() as s:
            row = s.get(RegistryCredentialRow, registry)
            if row is None:
                raise NotFoundError(f"no credentials stored for registry {registry!r}")
            s.delete(row)
        self._credentials.forget()

    def list_instances(self, service_id: str | None = None,
                       host_id: str | None = None) -> list[Instance]:
        with self._core_read() as s:
            rows = s.execute(_LIST_INSTANCES[service_id is not None, host_id is not None],
                             {"service_id": service_id, "host_id": host_id}).all()
            specs = self._specs_for(s, [(r[0], r[15]) for r in rows])
            if service_id is None and host_id is None:  # every instance there is: forget those gone
                self._specs = {r[0]: self._specs[r[0]] for r in rows if r[0] in self._specs}
            return [Instance._make((*r[:4], spec, *r[4:])) for r, spec in zip(rows, specs, strict=True)]

    def _specs_for(self, s: Session | Connection, keys: Sequence[tuple[str, str]]) -> list[dict[str, Any]]:
        """The specs of instances given as (id, address), decoding only those not cached yet
        (JSON decoding every spec was most of the cost of reading a fleet's instances)."""
        cache = self._specs
        stale = [iid for iid, address in keys if (hit := cache.get(iid)) is None or hit[0] != address]
        if len(cache) + len(stale) > _SPEC_CACHE_MAX:
            cache = self._specs = {}
            stale = [iid for iid, _ in keys]
        for i in range(0, len(stale), 500):
            for iid, address, spec in s.execute(_INSTANCE_SPECS, {"ids": stale[i:i + 500]}):
                cache[iid] = (address, spec)
        # an instance deleted between the two reads has no spec: an empty one stands in
        return [cache.get(iid, (address, {}))[1] for iid, address in keys]

    def instance_counts(self) -> dict[str, int]:
        """Instances per host, for spreading."""
        with self._read() as s:
            rows = s.execute(select(InstanceRow.host_id, func.count()).group_by(InstanceRow.host_id))
            return {host_id: n for host_id, n in rows}

    @retried
    def apply_service_plan(self, service_id: str, add: Iterable[NewInstance], remove: Iterable[str],
                           pending_reason: str | None, replicas: int | None = None,
                           expect_revision: int | None = None, update_state: dict[str, Any] | None = None,
                           event: str | None = None) -> list[str]:
        """Add and remove a service's instances in one transaction.

        With ``expect_revision``, the change is made only if the cluster revision
        is still that (else :class:`StaleRevision`, and nothing changes).
        Returns the hosts whose desired sets changed (their revisions are bumped).
        """
        now = self.clock()
        add, remove = list(add), list(remove)
        with self._core_write() as s:
            if add or remove:
                self._changed(s, expect_revision)
            svc = s.execute(_PLAN_SERVICE, {"service_id": service_id}).first()
            if svc is None:  # deleted meanwhile: nothing to do
                return []
            hosts: set[str] = set()
            if remove:
                for inst_id, host_id, slot in s.execute(_LEAVING, {"ids": remove}):
                    hosts.add(host_id)
                    self._event(s, "instance", "removed", svc.name, id=inst_id, slot=slot, host_id=host_id)
                s.execute(_DELETE_INSTANCES, {"ids": remove})
            addresses = self._addresses(s, add)
            rows: list[dict[str, Any]] = []
            for new in add:
                hosts.add(new.host_id)
                spec = new.spec.to_dict()
                address = addresses.get(new.spec.id, "")
                if address:
                    spec["labels"] = {**spec["labels"], LABEL_ADDRESS: address}
                rows.append(dict(id=new.spec.id, service_id=service_id, host_id=new.host_id,
                                 slot=new.slot, spec=spec, platform=new.platform,
                                 emulated=new.emulated, state="pending", exit_code=None, error="",
                                 container_id="", restarts=0, since=now, created_at=now,
                                 spec_version=new.spec_version, health="", address=address))
                self._event(s, "instance", "placed", svc.name, id=new.spec.id, slot=new.slot, host_id=new.host_id,
                            version=new.spec_version)
            if rows:
                s.execute(_INSERT_INSTANCES, rows)
                # the next read needs no decoding (an entry of a plan that fails is never asked for)
                self._specs.update((str(r["id"]), (str(r["address"]), r["spec"])) for r in rows)
            changes: dict[str, Any] = {}
            if svc.pending_reason != pending_reason:
                changes["pending_reason"] = pending_reason
            if replicas is not None and svc.replicas != replicas:  # global services: hosts that qualify
                changes["replicas"] = replicas
            if update_state is not None:
                changes["update_state"] = update_state
            if changes:
                s.execute(update(SERVICES).where(SERVICES.c.id == service_id).values(**changes))
            if update_state is not None and event:
                self._event(s, "service", event, svc.name, version=svc.version,
                            message=update_state.get("message") or None)
            self._bump(s, sorted(hosts))
            return sorted(hosts)

    @staticmethod
    def _addresses(s: Session | Connection, add: list[NewInstance]) -> dict[str, str]:
        """Overlay addresses for new instances on hosts that run the overlay (round-robin per host)."""
        host_ids = sorted({new.host_id for new in add})
        if not host_ids:
            return {}
        # host id -> [subnet, next address to try, as stored]
        hosts = {r.id: [r.subnet, r.next_address, r.next_address]
                 for r in s.execute(_OVERLAY_HOSTS_OF, {"ids": host_ids}) if r.overlay and r.overlay.get("public_key")}
        if not hosts:
            return {}
        used: dict[str, set[str]] = defaultdict(set)
        for host_id, address in s.execute(_ADDRESSES_ON, {"ids": list(hosts)}):
            used[host_id].add(address)
        out: dict[str, str] = {}
        for new in add:
            host = hosts.get(new.host_id)
            if host is None:
                continue
            try:
                address, host[1] = pick_address(host[0], used[new.host_id], host[1])
            except SubnetFull as exc:
                log.warning("instance %s runs without an overlay address: %s", new.spec.id, exc)
                continue
            used[new.host_id].add(address)
            out[new.spec.id] = address
        moved = [{"host_id": h, "next": nxt} for h, (_, nxt, was) in sorted(hosts.items()) if nxt != was]
        if moved:
            s.execute(_NEXT_ADDRESS, moved)
        return out

    # -- overlay ----------------------------------------------------------------------

    def overlay_hosts(self) -> list[OverlayHost]:
        """What the mesh plan reads of every host that runs the overlay, or did: one with a
        subnet or an overlay report.  Hosts that never reported one (agents with the overlay
        off) take no part in any plan, and a fleet of them costs the periodic replan nothing."""
        with self._read() as s:
            return [OverlayHost(r.id, r.name, r.state, r.subnet, dict(r.labels or {}), r.overlay)
                    for r in s.execute(select(HostRow.id, HostRow.name, HostRow.state, HostRow.subnet,
                                              HostRow.labels, HostRow.overlay)
                                       .where(or_(HostRow.subnet.is_not(None), HostRow.overlay.is_not(None)))
                                       .order_by(HostRow.name, HostRow.id))]

    def dns_entries(self) -> list[tuple[str, str | None, list[str]]]:
        """(service, stack, addresses) of every service with running, ready instances on the overlay
        (on hosts that are up: a down host's instances cannot be reached)."""
        with self._read() as s:
            rows = s.execute(select(ServiceRow.name, ServiceRow.stack, InstanceRow.address)
                             .join(InstanceRow, InstanceRow.service_id == ServiceRow.id)
                             .join(HostRow, HostRow.id == InstanceRow.host_id)
                             .where(InstanceRow.address != "", InstanceRow.state == "running",
                                    InstanceRow.health.in_(("", "healthy")), HostRow.state == "ready")
                             .order_by(ServiceRow.name, InstanceRow.address))
            out: dict[str, tuple[str | None, list[str]]] = {}
            for name, stack, address in rows:
                out.setdefault(name, (stack, []))[1].append(address)
            return [(name, stack, addresses) for name, (stack, addresses) in out.items()]

    @retried
    def bump_revisions(self, host_ids: Sequence[str]) -> None:
        """Make these hosts fetch their desired sets again (e.g. new pull credentials)."""
        with self._write() as s:
            self._bump(s, host_ids)

    # -- events ---------------------------------------------------------------------

    def _event(self, s: Session | Connection, type_: str, action: str, subject: str, **attrs: Any) -> None:
        s.execute(_INSERT_EVENT, {"ts": self.clock(), "type": type_, "action": action, "subject": subject,
                                     "attrs": {k: v for k, v in attrs.items() if v is not None}})

    def list_events(self, after_id: int = 0, since: float | None = None, limit: int = 1000) -> list[EventRow]:
        """Events after ``after_id`` (and at or after ``since``), oldest first."""
        with self._read() as s:
            q = select(EventRow).where(EventRow.id > after_id)
            if since is not None:
                q = q.where(EventRow.ts >= since)
            return list(s.scalars(q.order_by(EventRow.id).limit(limit)))

    def last_event_id(self) -> int:
        with self._read() as s:
            return int(s.scalar(select(func.max(EventRow.id))) or 0)

    def prune_events(self, keep: int) -> int:
        """Keep the newest ``keep`` events; return how many went."""
        with self._write() as s:
            newest = s.scalar(select(func.max(EventRow.id))) or 0
            result = s.execute(delete(EventRow).where(EventRow.id <= newest - keep))
            return int(result.rowcount or 0)  # type: ignore[attr-defined]

    @staticmethod
    def _changed(s: Session | Connection, expect: int | None = None) -> None:
        """Bump the cluster revision; with ``expect``, only from that value (row-locked on PostgreSQL)."""
        if expect is None:
            s.execute(_BUMP_CLUSTER)
        elif s.execute(_BUMP_CLUSTER_FROM, {"expect": expect}).rowcount != 1:  # type: ignore[attr-defined]
            raise StaleRevision(f"the cluster changed (revision is no longer {expect})")

    @staticmethod
    def _bump(s: Session | Connection, host_ids: Sequence[str]) -> None:
        if host_ids:
            s.execute(_BUMP_HOSTS, {"ids": list(host_ids)})
