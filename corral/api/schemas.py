"""Request bodies, validated at the door so bad input never reaches the store."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from corral.images import InvalidReference, parse_reference
from corral.scheduler import constraints as cons

_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LABEL_KEY = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,126}[A-Za-z0-9])?$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PortIn(Strict):
    published: int = Field(ge=1, le=65535)
    target: int = Field(ge=1, le=65535)
    protocol: Literal["tcp", "udp"] = "tcp"


class RestartIn(Strict):
    condition: Literal["any", "on-failure", "none"] = "any"
    max_attempts: int = Field(default=0, ge=0)
    delay: float = Field(default=1.0, ge=0.1, le=300)


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

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("invalid service name: use 1-63 lower-case letters, digits and '-', "
                             "starting and ending with a letter or digit")
        return v

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
        spec = self.model_dump(exclude={"name", "replicas"})
        for key in ("reservations", "max_replicas_per_node"):
            if spec[key] is None:
                del spec[key]
        return spec


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


class Heartbeat(Strict):
    facts: dict[str, Any] | None = None
    facts_patch: dict[str, Any] | None = None  # changed top-level keys; None removes a key
    instances: list[StatusIn] | None = None
    revision: int = 0


class LogChunk(Strict):
    lines: list[str] = Field(default_factory=list, max_length=10000)
    eof: bool = False
