"""An in-memory Docker Engine with the calls the agent's reconciler makes (unit tests only)."""

from __future__ import annotations

import itertools
import math
import threading
from typing import Any

from corral.agent.runtime.docker import (ContainerInfo, Conflict, DockerError, EngineUnavailable, NotFound,
                                         PullError)
from corral.model import PortSpec


class FakeDocker:
    def __init__(self, images: set[str] | None = None, pullable: set[str] | None = None) -> None:
        self.images = set(images or ())
        self.pullable = set(pullable or ())
        self.containers: dict[str, dict[str, Any]] = {}
        self.calls: list[tuple[str, str]] = []
        self.stop_timeouts: dict[str, float] = {}  # container id -> the timeout it was stopped with
        self.fail_create = ""  # an error create_container answers with (e.g. a missing bind source)
        self.down = False
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self.now = 1000.0

    def _check(self) -> None:
        if self.down:
            raise EngineUnavailable("engine down")

    def image_present(self, ref: str) -> bool:
        self._check()
        return ref in self.images

    def pull(self, ref: str, auth: dict[str, str] | None = None) -> None:
        self._check()
        self.calls.append(("pull", ref))
        if ref not in self.pullable:
            raise PullError(404, f"manifest for {ref} not found: manifest unknown")
        self.images.add(ref)

    def create_container(self, name: str, image: str, *, command: list[str] | None = None,
                         env: dict[str, str] | None = None, labels: dict[str, str] | None = None,
                         ports: list[PortSpec] | None = None, gpus: int = 0, **options: Any) -> str:
        """``options`` (entrypoint, volumes, healthcheck, stop_grace_period, ...) are kept as given."""
        self._check()
        if self.fail_create:
            raise DockerError(400, self.fail_create)
        with self._lock:
            if any(c["name"] == name for c in self.containers.values()):
                raise Conflict(409, f'Conflict. The container name "/{name}" is already in use')
            cid = f"c{next(self._ids)}"
            self.containers[cid] = {"name": name, "image": image, "labels": dict(labels or {}), "state": "created",
                                    "env": dict(env or {}), "gpus": gpus, "options": options, "health": "",
                                    "exit": 0, "started": "", "finished": "", "created": next(self._ids)}
        self.calls.append(("create", name))
        return cid

    def start(self, cid: str) -> None:
        self._check()
        c = self.containers[cid]
        c["state"] = "running"
        c["health"] = "starting" if c["options"].get("healthcheck") else ""
        c["started"] = f"2026-01-01T00:00:{len(self.calls) % 60:02d}Z"
        self.calls.append(("start", cid))

    def stop(self, cid: str, timeout: float = 10) -> None:
        c = self.containers[cid]
        if c["state"] == "running":
            c.update(state="exited", exit=143, finished=f"2026-01-01T00:02:{len(self.calls) % 60:02d}Z")
        self.stop_timeouts[cid] = timeout
        self.calls.append(("stop", cid))

    def remove(self, cid: str, force: bool = True) -> None:
        self.containers.pop(cid, None)
        self.calls.append(("remove", cid))

    def exit(self, cid: str, code: int) -> None:
        """The process in the container ends."""
        c = self.containers[cid]
        c.update(state="exited", exit=code, finished=f"2026-01-01T00:01:{len(self.calls) % 60:02d}Z")

    def set_health(self, cid: str, health: str, output: str = "") -> None:
        """The container's healthcheck reaches a verdict: starting, healthy or unhealthy."""
        self.containers[cid].update(health=health, health_output=output)

    def list_containers(self, labels: dict[str, str] | None = None, all: bool = True) -> list[ContainerInfo]:
        self._check()
        out = []
        for cid, c in list(self.containers.items()):
            if (all or c["state"] == "running") and all_labels_match(c["labels"], labels or {}):
                out.append(ContainerInfo(id=cid, name=c["name"], image=c["image"], labels=c["labels"],
                                         state=c["state"], status="", created=c["created"],
                                         health=c["health"] if c["state"] == "running" else "",
                                         ip=f"172.17.0.{int(cid[1:]) % 250 + 2}" if c["state"] == "running" else ""))
        return out

    def inspect_container(self, cid: str) -> dict[str, Any]:
        if cid not in self.containers:
            raise NotFound(404, f"no such container {cid}")
        c = self.containers[cid]
        state: dict[str, Any] = {"Running": c["state"] == "running", "ExitCode": c["exit"],
                                 "StartedAt": c["started"], "FinishedAt": c["finished"]}
        if c["health"]:
            state["Health"] = {"Status": c["health"], "Log": [{"ExitCode": 1, "Output": c.get("health_output", "")}]}
        grace = c["options"].get("stop_grace_period")
        return {"State": state, "Config": {"StopTimeout": None if grace is None else math.ceil(grace)}}


def all_labels_match(have: dict[str, str], want: dict[str, str]) -> bool:
    return all(have.get(k) == v if v else k in have for k, v in want.items())
