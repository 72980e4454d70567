"""Domain types shared by the server and the agent.

Plain dataclasses (stdlib only) so the agent can use them on any board; the
server validates API input with its own pydantic schemas and converts to these.
An agent only ever receives a :class:`DesiredSet`: the complete list of
instances its host should run, with a revision.  It never receives commands.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, fields
from collections.abc import Callable
from typing import Any, Literal, TypeVar

RestartCondition = Literal["any", "on-failure", "none"]
MountType = Literal["volume", "bind"]
T = TypeVar("T")

# Instance states, as the agent reports them and `corral ps` shows them.
PENDING = "pending"
PULLING = "pulling"
STARTING = "starting"
RUNNING = "running"
RESTARTING = "restarting"  # exited; waiting out the restart backoff
EXITED = "exited"  # exited and the restart policy says stay down
PULL_FAILED = "pull_failed"
FAILED = "failed"  # create/start failed on the engine
UNKNOWN = "unknown"  # the host is down: last known state is stale
INSTANCE_STATES = (PENDING, PULLING, STARTING, RUNNING, RESTARTING, EXITED, PULL_FAILED, FAILED, UNKNOWN)

# Health of an instance's container, as the engine's healthcheck reports it ("": none runs).
HEALTH_STARTING = "starting"
HEALTHY = "healthy"
UNHEALTHY = "unhealthy"

_FAILED_STATES = (EXITED, FAILED, PULL_FAILED, RESTARTING)  # restarting: it exited, and waits to retry


def status_ready(state: str, health: str, restarts: int) -> bool:
    """A reported instance that a rolling update may count as ready: running, its health
    check (if any) passed, never restarted."""
    return state == RUNNING and health not in (HEALTH_STARTING, UNHEALTHY) and restarts == 0


def status_failed(state: str, health: str, restarts: int) -> bool:
    return state in _FAILED_STATES or health == UNHEALTHY or restarts > 0


def decisive(state: str, health: str, restarts: int) -> bool:
    """A reported status that can move an update on: the instance is ready, or it has failed
    (pending, pulling, starting, or running with its health check still starting, cannot).
    The server reconciles at once on these; the agent sends the others with the next one."""
    return status_ready(state, health, restarts) or status_failed(state, health, restarts)


# Container labels the agent puts on what it owns. It never touches anything else.
LABEL_MANAGED = "io.corral.managed"
LABEL_HOST = "io.corral.host"
LABEL_INSTANCE = "io.corral.instance"
LABEL_SERVICE = "io.corral.service"
LABEL_SPEC = "io.corral.spec"
# an instance's address on its host's overlay subnet: the agent creates the container there
LABEL_ADDRESS = "io.corral.address"
LABEL_STOP_GRACE = "io.corral.stop-grace"  # seconds; saves an inspect before each stop


@dataclass(frozen=True)
class PortSpec:
    published: int
    target: int
    protocol: str = "tcp"
    # host: the container's port is bound on the host (one instance per host);
    # ingress: the agent's proxy answers on the host and forwards to the host's ready instances
    mode: str = "host"


@dataclass(frozen=True)
class RestartPolicy:
    condition: RestartCondition = "any"
    max_attempts: int = 0  # 0: unlimited
    delay: float = 1.0  # first backoff, doubled after each quick failure, capped by the agent


@dataclass(frozen=True)
class VolumeSpec:
    """A mount: a named volume (the engine creates it on first use) or a host path (bind)."""

    type: MountType
    source: str  # volume name ("" for an anonymous volume) or absolute host path
    target: str
    read_only: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VolumeSpec:
        kind = str(data["type"])
        if kind not in ("volume", "bind"):
            raise ValueError(f"unknown mount type {kind!r}: expected volume or bind")
        return cls(kind, str(data.get("source") or ""), str(data["target"]),  # type: ignore[arg-type]
                   bool(data.get("read_only", False)))


@dataclass(frozen=True)
class HealthcheckSpec:
    """Docker's healthcheck; None fields take the image's (or the engine's) value. Seconds."""

    test: list[str] | None = None  # ["CMD", ...], ["CMD-SHELL", "..."], ["NONE"]; None: the image's
    interval: float | None = None
    timeout: float | None = None
    start_period: float | None = None
    retries: int | None = None
    disable: bool = False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HealthcheckSpec:
        return cls(
            test=[str(t) for t in data["test"]] if data.get("test") is not None else None,
            interval=_opt(float, data.get("interval")),
            timeout=_opt(float, data.get("timeout")),
            start_period=_opt(float, data.get("start_period")),
            retries=_opt(int, data.get("retries")),
            disable=bool(data.get("disable", False)),
        )


@dataclass(frozen=True)
class InstanceSpec:
    id: str
    name: str
    service: str
    slot: int
    image: str
    command: list[str] | None = None
    env: dict[str, str] = field(default_factory=dict)
    ports: list[PortSpec] = field(default_factory=list)
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    labels: dict[str, str] = field(default_factory=dict)
    gpus: int = 0  # nvidia.com/gpu reserved for it: passed to the engine as a device request
    entrypoint: list[str] | None = None  # None: the image's; []: none
    working_dir: str | None = None
    user: str | None = None
    hostname: str | None = None
    volumes: list[VolumeSpec] = field(default_factory=list)
    healthcheck: HealthcheckSpec | None = None
    stop_grace_period: float | None = None  # seconds between SIGTERM and SIGKILL; None: 10
    cpu_limit: float | None = None  # CPUs
    memory_limit: int | None = None  # bytes
    # credentials for pulling `image`; added by the server when it serves the desired
    # set to the host, never stored with the instance
    registry_auth: dict[str, str] | None = None

    def spec_hash(self) -> str:
        """A digest of everything that, when changed, needs a new container."""
        body = self.to_dict()
        body.pop("restart")  # the agent applies it; changing it needs no new container
        body.pop("registry_auth")
        for port in body["ports"]:  # added later, like the fields below
            if port["mode"] == "host":
                del port["mode"]
        for f in fields(self):  # added later: at their defaults they leave older specs' hashes as they were
            if f.name in _ADDED_LATER and getattr(self, f.name) == _default(f):
                body.pop(f.name)
        raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(raw).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return plain(self)  # type: ignore[no-any-return]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InstanceSpec:
        return cls(
            id=str(data["id"]),
            name=str(data["name"]),
            service=str(data["service"]),
            slot=int(data["slot"]),
            image=str(data["image"]),
            command=list(data["command"]) if data.get("command") is not None else None,
            env={str(k): str(v) for k, v in (data.get("env") or {}).items()},
            ports=[PortSpec(**p) for p in data.get("ports") or []],
            restart=RestartPolicy(**(data.get("restart") or {})),
            labels={str(k): str(v) for k, v in (data.get("labels") or {}).items()},
            gpus=int(data.get("gpus") or 0),
            entrypoint=[str(a) for a in data["entrypoint"]] if data.get("entrypoint") is not None else None,
            working_dir=_opt(str, data.get("working_dir")),
            user=_opt(str, data.get("user")),
            hostname=_opt(str, data.get("hostname")),
            volumes=[VolumeSpec.from_dict(v) for v in data.get("volumes") or []],
            healthcheck=_opt(HealthcheckSpec.from_dict, data.get("healthcheck")),
            stop_grace_period=_opt(float, data.get("stop_grace_period")),
            cpu_limit=_opt(float, data.get("cpu_limit")),
            memory_limit=_opt(int, data.get("memory_limit")),
            registry_auth=dict(data["registry_auth"]) if data.get("registry_auth") else None,
        )


# InstanceSpec fields added after containers were first labelled with spec_hash()
_ADDED_LATER = frozenset({"gpus", "entrypoint", "working_dir", "user", "hostname", "volumes", "healthcheck",
                          "stop_grace_period", "cpu_limit", "memory_limit"})


def plain(value: Any) -> Any:
    """A dataclass (and the lists, dicts and dataclasses in it) as plain dicts and lists, like
    :func:`dataclasses.asdict` without its deep copy of every leaf: desired sets and status
    reports are converted on every exchange, and asdict cost the server a few per cent of its CPU."""
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    names = getattr(value, "__dataclass_fields__", None)
    if names is not None and not isinstance(value, type):
        return {name: plain(getattr(value, name)) for name in names}
    return value


def _default(f: Any) -> Any:
    return f.default_factory() if callable(f.default_factory) else f.default


def _opt(convert: Callable[[Any], T], value: Any) -> T | None:
    return None if value is None else convert(value)


@dataclass(frozen=True)
class DesiredSet:
    """Everything one host should run. Revisions only grow."""

    revision: int
    instances: list[InstanceSpec] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"revision": self.revision, "instances": [i.to_dict() for i in self.instances]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DesiredSet:
        return cls(int(data["revision"]), [InstanceSpec.from_dict(i) for i in data.get("instances", [])])


@dataclass
class InstanceStatus:
    """What the agent observed of one instance."""

    instance_id: str
    state: str
    since: float
    container_id: str = ""
    exit_code: int | None = None
    error: str = ""
    restarts: int = 0
    health: str = ""  # "", HEALTH_STARTING, HEALTHY, UNHEALTHY

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = plain(self)
        if not self.health:  # added later: servers that do not know it never see it unless it is set
            del out["health"]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InstanceStatus:
        return cls(
            instance_id=str(data["instance_id"]),
            state=str(data["state"]),
            since=float(data["since"]),
            container_id=str(data.get("container_id") or ""),
            exit_code=None if data.get("exit_code") is None else int(data["exit_code"]),
            error=str(data.get("error") or ""),
            restarts=int(data.get("restarts") or 0),
            health=str(data.get("health") or ""),
        )
