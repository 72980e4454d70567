"""Request bodies, validated at the door so bad input never reaches the store."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from corral.images import InvalidReference, parse_reference
from corral.platforms import Platform
from corral.scheduler import constraints as cons
from corral.scheduler.model import MAX_CPU_LIMIT, MIN_MEMORY_LIMIT

_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LABEL_KEY = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,126}[A-Za-z0-9])?$")
_VOLUME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")
STACK_SEPARATOR = "_"  # a stack's service is STACK_SERVICE, as in Swarm


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PortIn(Strict):
    published: int = Field(ge=1, le=65535)
    target: int = Field(ge=1, le=65535)
    protocol: Literal["tcp", "udp"] = "tcp"
    # ingress: every host running the service answers and forwards to its ready instances
    # (several per host); host: bound on the host by the one instance there
    mode: Literal["ingress", "host"] = None  # type: ignore[assignment]  # default: ingress for tcp, host for udp

    @model_validator(mode="after")
    def _ingress_tcp(self) -> PortIn:
        if self.mode is None:
            self.mode = "ingress" if self.protocol == "tcp" else "host"
        if self.mode == "ingress" and self.protocol != "tcp":
            raise ValueError(f"port {self.published}/{self.protocol}: ingress publishes tcp only; use mode host")
        return self


class RestartIn(Strict):
    condition: Literal["any", "on-failure", "none"] = "any"
    max_attempts: int = Field(default=0, ge=0)
    delay: float = Field(default=1.0, ge=0.1, le=300)


class VolumeIn(Strict):
    type: Literal["volume", "bind"]
    source: str | None = Field(default=None, max_length=4096)  # no source: an anonymous volume
    target: str = Field(min_length=1, max_length=4096)
    read_only: bool = False

    @model_validator(mode="after")
    def _paths(self) -> VolumeIn:
        if not self.target.startswith("/"):
            raise ValueError(f"volume target {self.target!r} must be an absolute path in the container")
        if self.type == "bind" and not (self.source or "").startswith("/"):
            raise ValueError(f"bind source {self.source!r} must be an absolute path on the host")
        if self.type == "volume" and self.source and not _VOLUME.match(self.source):
            raise ValueError(f"invalid volume name {self.source!r}")
        return self


class HealthcheckIn(Strict):
    test: list[str] | None = None  # ["CMD", ...] / ["CMD-SHELL", "..."] / ["NONE"]; None: the image's own
    interval: float | None = Field(default=None, ge=0, le=86400)  # 0: the engine's default, as in Docker
    timeout: float | None = Field(default=None, ge=0, le=86400)
    start_period: float | None = Field(default=None, ge=0, le=86400)
    retries: int | None = Field(default=None, ge=0, le=1000)
    disable: bool = False

    @field_validator("test")
    @classmethod
    def _test(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and (not v or v[0] not in ("CMD", "CMD-SHELL", "NONE") or (v[0] != "NONE" and len(v) < 2)):
            raise ValueError('healthcheck test must be ["CMD", prog, args...], ["CMD-SHELL", "command"] or ["NONE"]')
        return v


class LimitsIn(Strict):
    cpu: float | None = Field(default=None, gt=0, le=MAX_CPU_LIMIT)
    memory: int | None = Field(default=None, ge=MIN_MEMORY_LIMIT)  # bytes


class UpdateConfigIn(Strict):
    parallelism: int = Field(default=1, ge=0, le=10000)  # 0: all at once
    delay: float = Field(default=0.0, ge=0, le=86400)
    order: Literal["stop-first", "start-first"] = "stop-first"
    monitor: float = Field(default=5.0, ge=0, le=86400)
    max_failure_ratio: float = Field(default=0.0, ge=0, le=1)
    failure_action: Literal["pause", "continue", "rollback"] = "pause"


def check_label_key(key: str) -> str:
    if not _LABEL_KEY.match(key):
        raise ValueError(f"invalid label key {key!r}")
    return key


def _check_labels(v: dict[str, str]) -> dict[str, str]:
    for key in v:
        check_label_key(key)
    return v


Labels = Annotated[dict[str, str], AfterValidator(_check_labels)]


class ServiceCreate(Strict):
    name: str
    image: str
    replicas: int = Field(default=1, ge=0, le=10000)
    env: dict[str, str] = Field(default_factory=dict)
    command: list[str] | None = None
    ports: list[PortIn] = Field(default_factory=list)
    constraints: list[str] = Field(default_factory=list)
    restart: RestartIn = Field(default_factory=RestartIn)
    labels: Labels = Field(default_factory=dict)
    mode: Literal["replicated", "global"] = "replicated"
    allow_emulation: bool = False
    # scheduling (checked in full by corral.scheduler.placement.validate at submit time)
    reservations: dict[str, Any] | None = None  # {"cpu": 0.5, "memory": "512Mi", "generic": {"nvidia.com/gpu": 1}}
    max_replicas_per_node: int | None = Field(default=None, ge=1)
    affinities: list[str] = Field(default_factory=list)  # "service!=db", "soft:node.labels.zone==edge"
    preferences: list[str] = Field(default_factory=list)  # "spread=node.labels.zone"
    strategy: Literal["spread", "binpack"] = "spread"
    # what compose stacks need (corral.compose produces these)
    entrypoint: list[str] | None = None
    working_dir: str | None = Field(default=None, max_length=4096)
    user: str | None = Field(default=None, max_length=255)
    hostname: str | None = Field(default=None, max_length=63)
    volumes: list[VolumeIn] = Field(default_factory=list)
    healthcheck: HealthcheckIn | None = None
    stop_grace_period: float | None = Field(default=None, ge=0, le=3600)
    limits: LimitsIn | None = None
    update_config: UpdateConfigIn | None = None
    rollback_config: UpdateConfigIn | None = None
    service_labels: Labels = Field(default_factory=dict)
    networks: list[str] = Field(default_factory=list)
    platform_preference: list[str] = Field(default_factory=list)  # OCI platforms, most wanted first

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        stack, sep, service = v.partition(STACK_SEPARATOR)
        if not _NAME.match(stack) or (sep and not _NAME.match(service)):
            raise ValueError("invalid service name: use 1-63 lower-case letters, digits and '-', "
                             "starting and ending with a letter or digit (STACK_SERVICE in a stack)")
        return v

    @field_validator("platform_preference")
    @classmethod
    def _platforms(cls, v: list[str]) -> list[str]:
        return [str(Platform.parse(p)) for p in v]  # PlatformError (a ValueError) says why

    @model_validator(mode="after")
    def _volume_targets_unique(self) -> ServiceCreate:
        targets = [vol.target for vol in self.volumes]
        for t in targets:
            if targets.count(t) > 1:
                raise ValueError(f"volume target {t!r} is mounted twice")
        return self

    @field_validator("image")
    @classmethod
    def _image(cls, v: str) -> str:
        try:
            parse_reference(v)
        except InvalidReference as exc:
            raise ValueError(str(exc)) from None
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        for key in v:
            if not _ENV_KEY.match(key):
                raise ValueError(f"invalid environment variable name {key!r}")
        return v

    @field_validator("constraints")
    @classmethod
    def _constraints(cls, v: list[str]) -> list[str]:
        return [str(cons.parse(expr)) for expr in v]  # ConstraintError (a ValueError) says why

    @model_validator(mode="after")
    def _ports_unique(self) -> ServiceCreate:
        seen = set()
        for p in self.ports:
            if (p.published, p.protocol) in seen:
                raise ValueError(f"published port {p.published}/{p.protocol} is given twice")
            seen.add((p.published, p.protocol))
        return self

    def spec(self) -> dict[str, Any]:
        """The stored spec: what was given, without empty optional keys (older specs lack them)."""
        spec = self.model_dump(exclude={"name", "replicas"})
        for key in _OPTIONAL:
            if spec[key] in (None, [], {}):
                del spec[key]
        return spec


_OPTIONAL = ("reservations", "max_replicas_per_node", "entrypoint", "working_dir", "user", "hostname", "volumes",
             "healthcheck", "stop_grace_period", "limits", "update_config", "rollback_config", "service_labels",
             "networks", "platform_preference")


def port_conflicts(name: str, spec: dict[str, Any], others: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """A published port in ingress mode is the cluster's for one service: it answers on every host."""
    errors = []
    mine = [(p["published"], p.get("protocol", "tcp"), p.get("mode", "host")) for p in spec.get("ports") or []]
    for other, other_spec in others:
        if other == name:
            continue
        for p in other_spec.get("ports") or []:
            key, mode = (p["published"], p.get("protocol", "tcp")), p.get("mode", "host")
            for published, protocol, my_mode in mine:
                if (published, protocol) == key and "ingress" in (mode, my_mode):
                    errors.append(f"port {published}/{protocol} is already published by service {other}"
                                  + (" (in ingress mode, on every host)" if mode == "ingress" else ""))
    return errors


class ServiceUpdate(Strict):
    """``corral service update``: the fields given replace the service's; the rest stay."""

    image: str | None = None
    env: dict[str, str] | None = None
    command: list[str] | None = None
    replicas: int | None = Field(default=None, ge=0, le=10000)
    update_config: UpdateConfigIn | None = None
    rollback_config: UpdateConfigIn | None = None
    labels: Labels | None = None


class StackDeploy(Strict):
    services: list[dict[str, Any]] = Field(max_length=1000)  # each a ServiceCreate body, with its bare name
    prune: bool = False


class ServiceScale(Strict):
    replicas: int = Field(ge=0, le=10000)


class LabelValue(Strict):
    value: str = Field(max_length=255)


class Register(Strict):
    facts: dict[str, Any]
    labels: Labels = Field(default_factory=dict)
    name: str | None = Field(default=None, max_length=255)


class StatusIn(Strict):
    instance_id: str
    state: str
    since: float
    container_id: str = ""
    exit_code: int | None = None
    error: str = Field(default="", max_length=4000)
    restarts: int = 0
    health: Literal["", "starting", "healthy", "unhealthy"] = ""


class Heartbeat(Strict):
    facts: dict[str, Any] | None = None
    facts_patch: dict[str, Any] | None = None  # changed top-level keys; None removes a key
    instances: list[StatusIn] | None = None
    revision: int = 0


class LogChunk(Strict):
    lines: list[str] = Field(default_factory=list, max_length=10000)
    eof: bool = False
