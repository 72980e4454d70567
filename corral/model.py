"""Domain types shared by the server and the agent.

Plain dataclasses (stdlib only) so the agent can use them on any board; the
server validates API input with its own pydantic schemas and converts to these.
An agent only ever receives a :class:`DesiredSet`: the complete list of
instances its host should run, with a revision.  It never receives commands.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

RestartCondition = Literal["any", "on-failure", "none"]

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

# Container labels the agent puts on what it owns. It never touches anything else.
LABEL_MANAGED = "io.corral.managed"
LABEL_HOST = "io.corral.host"
LABEL_INSTANCE = "io.corral.instance"
LABEL_SERVICE = "io.corral.service"
LABEL_SPEC = "io.corral.spec"


@dataclass(frozen=True)
class PortSpec:
    published: int
    target: int
    protocol: str = "tcp"


@dataclass(frozen=True)
class RestartPolicy:
    condition: RestartCondition = "any"
    max_attempts: int = 0  # 0: unlimited
    delay: float = 1.0  # first backoff, doubled after each quick failure, capped by the agent


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
    # credentials for pulling `image`; added by the server when it serves the desired
    # set to the host, never stored with the instance
    registry_auth: dict[str, str] | None = None

    def spec_hash(self) -> str:
        """A digest of everything that, when changed, needs a new container."""
        body = self.to_dict()
        body.pop("restart")  # the agent applies it; changing it needs no new container
        body.pop("registry_auth")
        if not body["gpus"]:  # added later: leave the hash of older specs as it was
            body.pop("gpus")
        raw = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(raw).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

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
            registry_auth=dict(data["registry_auth"]) if data.get("registry_auth") else None,
        )


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

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
        )
