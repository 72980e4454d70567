"""One merged compose service -> one Corral service spec (a dict of ServiceCreate's fields).

The fields ServiceCreate knows today keep its names and shapes (name, image, replicas, env,
command, ports, constraints, preferences, max_replicas_per_node, restart, labels, mode,
reservations, allow_emulation), so the server validates them unchanged.  The new fields the
API will take next are produced in the same style: entrypoint, volumes, working_dir, user,
hostname, healthcheck, stop_grace_period, limits, update_config, rollback_config,
service_labels, networks, platform_preference.  Durations are float seconds, memory is
bytes, unset optional fields are None (``replicas`` is left out for a global service: the
server works out its count).

Nothing is dropped silently: a key the schema allows that Corral does not honour becomes a
warning naming its path (``services.web.cap_add is not supported by Corral and was ignored``),
and a value Corral cannot run (a port range it cannot publish, ``count: all`` GPUs, an
undeclared named volume) is an error naming its path.  ``x-*`` extension keys are the
user's own and are skipped, except ``x-corral``, whose keys are checked.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path as FilePath
from typing import Any

from corral.compose.dotenv import parse_dotenv
from corral.compose.errors import ComposeError, Path, Problems
from corral.compose.values import (ENV_KEY, LABEL_KEY, as_bool, as_command, as_duration, as_float,
                                   as_int, as_name, as_str, describe)
from corral.images.errors import InvalidReference
from corral.images.reference import parse_reference
from corral.platforms import Platform, PlatformError
from corral.scheduler import constraints as cons
from corral.scheduler.model import (MAX_CPU_LIMIT, MIN_MEMORY_LIMIT, SpecError, parse_cpu, parse_memory,
                                    parse_preference, parse_resources)

# Service keys mapped below; every other non-x- key the schema allows gets a warning.
HONOURED = {"image", "command", "entrypoint", "environment", "env_file", "ports", "labels", "volumes",
            "working_dir", "user", "hostname", "healthcheck", "stop_grace_period", "networks",
            "deploy", "restart", "scale", "build", "x-corral"}
HINTS = {
    "depends_on": "ordering is not guaranteed: services start in any order",
    "platform": "use x-corral.prefer_platforms or a node.platform constraint",
    "gpus": "use deploy.resources.reservations.devices",
    "expose": "only published ports are opened",
    "profiles": "the service is deployed whatever profiles are active",
    "container_name": "Corral names the containers",
    **{key: "use deploy.resources" for key in ("cpus", "cpu_count", "cpu_percent", "cpu_shares",
                                               "cpu_quota", "cpu_period", "cpuset", "mem_limit",
                                               "mem_reservation", "memswap_limit", "pids_limit")},
}
X_CORRAL = ("allow_emulation", "prefer_platforms")
GPU = "nvidia.com/gpu"
_GPU_KINDS = {"gpu", "nvidia-gpu", "nvidia.com/gpu"}
_UPDATE_DEFAULTS: dict[str, Any] = {"parallelism": 1, "delay": 0.0, "order": "stop-first", "monitor": 5.0,
                                    "max_failure_ratio": 0.0, "failure_action": "pause"}
_RESTART_NAMES = {"no": "none", "always": "any", "unless-stopped": "any", "on-failure": "on-failure"}


@dataclass
class Context:
    """What mapping a service needs besides the service itself."""

    problems: Problems
    project_dir: FilePath
    variables: Mapping[str, str]
    volumes: Mapping[str, Any]
    networks: Mapping[str, Any]


def map_service(name: str, svc: dict[str, Any], ctx: Context) -> dict[str, Any]:
    """The Corral spec of compose service ``name``; problems are recorded in ``ctx.problems``."""
    p = ctx.problems
    path: Path = ("services", name)
    p.check(path, as_name, name)
    deploy = _mapping(svc.get("deploy"), (*path, "deploy"), p)
    warn_unknown(svc, HONOURED, path, p, HINTS)
    if "extends" in svc:
        p.error((*path, "extends"), "is not supported by Corral: merge the files with -c instead")
    warn_unknown(deploy, {"mode", "replicas", "labels", "placement", "resources", "restart_policy",
                          "update_config", "rollback_config"}, (*path, "deploy"), p)
    placement = _mapping(deploy.get("placement"), (*path, "deploy", "placement"), p)
    warn_unknown(placement, {"constraints", "preferences", "max_replicas_per_node"},
                 (*path, "deploy", "placement"), p)
    x_corral = _x_corral(svc.get("x-corral"), (*path, "x-corral"), p)
    spec: dict[str, Any] = {
        "name": name,
        "image": _image(svc, path, p),
        "mode": "replicated",
        "env": _env(svc, path, ctx),
        "command": _opt(svc, "command", path, p, as_command),
        "entrypoint": _opt(svc, "entrypoint", path, p, as_command),
        "ports": _ports(svc.get("ports") or [], (*path, "ports"), p),
        "constraints": _constraints(placement.get("constraints") or [],
                                    (*path, "deploy", "placement", "constraints"), p),
        "preferences": _preferences(placement.get("preferences") or [],
                                    (*path, "deploy", "placement", "preferences"), p),
        "max_replicas_per_node": _max_per_node(placement, (*path, "deploy", "placement"), p),
        "restart": _restart(svc, deploy, path, p),
        "labels": labels(svc.get("labels"), (*path, "labels"), p),
        "service_labels": labels(deploy.get("labels"), (*path, "deploy", "labels"), p),
        "allow_emulation": x_corral.get("allow_emulation", False),
        "platform_preference": x_corral.get("prefer_platforms", []),
        "volumes": _volumes(svc.get("volumes") or [], (*path, "volumes"), ctx),
        "working_dir": _opt(svc, "working_dir", path, p, as_str),
        "user": _opt(svc, "user", path, p, as_str),
        "hostname": _opt(svc, "hostname", path, p, as_str),
        "healthcheck": _healthcheck(svc.get("healthcheck"), (*path, "healthcheck"), p),
        "stop_grace_period": _opt(svc, "stop_grace_period", path, p, as_duration),
        "networks": _networks(svc.get("networks"), (*path, "networks"), ctx),
        "update_config": _update(deploy.get("update_config"), (*path, "deploy", "update_config"), p,
                                 ("pause", "continue", "rollback")),
        "rollback_config": _update(deploy.get("rollback_config"), (*path, "deploy", "rollback_config"), p,
                                   ("pause", "continue")),
    }
    resources = _mapping(deploy.get("resources"), (*path, "deploy", "resources"), p)
    warn_unknown(resources, {"limits", "reservations"}, (*path, "deploy", "resources"), p)
    spec["reservations"] = _reservations(resources.get("reservations"),
                                         (*path, "deploy", "resources", "reservations"), p)
    spec["limits"] = _limits(resources.get("limits"), (*path, "deploy", "resources", "limits"), p)
    _mode_and_replicas(spec, svc, deploy, path, p)
    return spec


def warn_unknown(mapping: Mapping[str, Any], known: set[str], path: Path, p: Problems,
                 hints: Mapping[str, str] | None = None) -> None:
    """One warning for each key of ``mapping`` that is neither ``known`` nor an x- extension."""
    for key in mapping:
        if key not in known and not key.startswith("x-"):
            p.unsupported((*path, key), (hints or {}).get(key, ""))


def _mapping(value: Any, path: Path, p: Problems) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        p.error(path, f"expected a mapping, got {describe(value)}")
        return {}
    return value


def _opt(svc: Mapping[str, Any], key: str, path: Path, p: Problems, parse: Callable[[Any], Any]) -> Any:
    value = svc.get(key)
    return None if value is None else p.check((*path, key), parse, value)


def _image(svc: Mapping[str, Any], path: Path, p: Problems) -> str:
    image = svc.get("image")
    if image is None:
        if "build" in svc:
            p.error((*path, "build"), "Corral does not build images: give the image to run with image:")
        else:
            p.error((*path, "image"), "is required")
        return ""
    if "build" in svc:
        p.unsupported((*path, "build"), f"Corral does not build images; {image} is pulled")
    try:
        parse_reference(str(image))
    except InvalidReference as exc:
        p.error((*path, "image"), str(exc))
    return str(image)


def _x_corral(value: Any, path: Path, p: Problems) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, item in _mapping(value, path, p).items():
        here = (*path, key)
        if key == "allow_emulation":
            out[key] = p.check(here, as_bool, item) or False
        elif key == "prefer_platforms":
            out[key] = _platforms(item, here, p)
        else:
            close = difflib.get_close_matches(key, X_CORRAL, n=1)
            p.error(here, "unknown x-corral key" + (f"; did you mean '{close[0]}'?" if close else
                                                   f" (known: {', '.join(X_CORRAL)})"))
    return out


def _platforms(value: Any, path: Path, p: Problems) -> list[str]:
    if not isinstance(value, list):
        p.error(path, f"expected a list of platforms such as linux/arm64, got {describe(value)}")
        return []
    out = []
    for i, item in enumerate(value):
        try:
            out.append(str(Platform.parse(str(item))))
        except PlatformError as exc:
            p.error((*path, i), str(exc))
    return out


def _env(svc: Mapping[str, Any], path: Path, ctx: Context) -> dict[str, str]:
    p = ctx.problems
    env: dict[str, str] = {}
    for i, entry in enumerate(svc.get("env_file") or []):
        env |= _env_file(entry, (*path, "env_file", i), ctx)
    for key, value in (svc.get("environment") or {}).items():
        if value is None:
            value = ctx.variables.get(key)
            if value is None:
                p.warn((*path, "environment", key), "has no value and is not set in the environment; "
                                                     "it was left out")
                continue
        text = p.check((*path, "environment", key), as_str, value)
        if text is not None:
            env[key] = text
    for key in env:
        if not ENV_KEY.match(key):
            p.error((*path, "environment"), f"invalid environment variable name {key!r}: use letters, "
                                            "digits and '_', not starting with a digit")
    return env


def _env_file(entry: Mapping[str, Any], path: Path, ctx: Context) -> dict[str, str]:
    p = ctx.problems
    name = str(entry.get("path", ""))
    file = (ctx.project_dir / FilePath(name).expanduser())
    required = p.check((*path, "required"), as_bool, entry.get("required", True))
    if entry.get("format") not in (None, "raw", ""):
        p.error((*path, "format"), f"unknown env_file format {entry['format']!r} (known: raw)")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        if required is not False:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            p.error(path, f"cannot read env_file {name} ({file}): {reason}")
        return {}
    if entry.get("format") == "raw":
        pairs = (line.partition("=") for line in text.splitlines() if line.strip())
        return {k: v for k, sep, v in pairs if sep}
    try:
        parsed = parse_dotenv(text, name, ctx.variables.get, p.warnings.append)
    except ComposeError as exc:
        p.errors += exc.errors
        return {}
    out = {}
    for key, value in parsed.items():
        value = ctx.variables.get(key) if value is None else value
        if value is not None:
            out[key] = value
    return out


def labels(value: Any, path: Path, p: Problems) -> dict[str, str]:
    """A normalised labels mapping with checked keys and string values."""
    out: dict[str, str] = {}
    for key, item in (value or {}).items():
        if not LABEL_KEY.match(key):
            p.error((*path, key), "invalid label key: use letters, digits, '.', '_', '/' and '-', "
                                  "starting and ending with a letter or digit, at most 128 characters")
            continue
        text = "" if item is None else p.check((*path, key), as_str, item)
        if text is not None:
            out[key] = text
    return out


def _ports(ports: list[dict[str, Any]], path: Path, p: Problems) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    seen: set[tuple[int, str]] = set()
    for port in ports:
        protocol = str(port.get("protocol", "tcp")).lower()
        label = f"{port['target']}/{protocol}"
        if protocol not in ("tcp", "udp"):
            p.error(path, f"port {label}: Corral publishes tcp and udp ports only")
            continue
        if port.get("published") is None:
            p.warn(path, f"entry {label} is not published (no host port given); Corral only opens "
                         "published ports, so it was ignored")
            continue
        for key in port:
            if key not in ("target", "published", "protocol", "mode") and not key.startswith("x-"):
                p.unsupported((*path, key), f"on port {port['published']}:{label}")
        if port.get("mode") not in (None, "host", "ingress"):
            p.error((*path, "mode"), f"expected host or ingress, got {port['mode']!r}")
        if (port["published"], protocol) in seen:
            p.error(path, f"published port {port['published']}/{protocol} is given twice")
            continue
        seen.add((port["published"], protocol))
        # the compose and Swarm default is ingress; Corral's ingress carries tcp, so udp is bound by default
        mode = port.get("mode") or ("ingress" if protocol == "tcp" else "host")
        if mode == "ingress" and protocol != "tcp":
            p.error(path, f"port {port['published']}:{label}: ingress publishes tcp only; use mode: host for udp")
            continue
        out.append({"published": port["published"], "target": port["target"], "protocol": protocol, "mode": mode})
    return out


def _constraints(items: list[Any], path: Path, p: Problems) -> list[str]:
    out = []
    for i, expr in enumerate(items):
        try:
            out.append(str(cons.parse(str(expr))))
        except cons.ConstraintError as exc:
            p.error((*path, i), str(exc))
    return out


def _preferences(items: list[Any], path: Path, p: Problems) -> list[str]:
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "spread" not in item:
            p.error((*path, i), "expected spread: node.labels.KEY")
            continue
        try:
            out.append(f"spread={parse_preference('spread=' + str(item['spread']))}")
        except SpecError as exc:
            p.error((*path, i, "spread"), str(exc))
    return out


def _max_per_node(placement: Mapping[str, Any], path: Path, p: Problems) -> int | None:
    value = placement.get("max_replicas_per_node")
    if value is None:
        return None
    n = p.check((*path, "max_replicas_per_node"), as_int, value, 0)
    return n or None  # 0: no limit, as in Swarm


def _restart(svc: Mapping[str, Any], deploy: Mapping[str, Any], path: Path, p: Problems) -> dict[str, Any]:
    out: dict[str, Any] = {"condition": "any", "max_attempts": 0, "delay": 1.0}
    policy = deploy.get("restart_policy")
    if policy is None:
        if svc.get("restart") is not None:
            out |= _restart_string(str(svc["restart"]), (*path, "restart"), p)
        return out
    if svc.get("restart") is not None:
        p.warn((*path, "restart"), "was ignored: deploy.restart_policy takes precedence")
    here = (*path, "deploy", "restart_policy")
    policy = _mapping(policy, here, p)
    warn_unknown(policy, {"condition", "delay", "max_attempts"}, here, p)
    condition = policy.get("condition", "any")
    if condition not in ("any", "on-failure", "none"):
        p.error((*here, "condition"), f"expected any, on-failure or none, got {condition!r}")
    else:
        out["condition"] = condition
    if "max_attempts" in policy:
        out["max_attempts"] = p.check((*here, "max_attempts"), as_int, policy["max_attempts"], 0) or 0
    if "delay" in policy:
        delay = p.check((*here, "delay"), as_duration, policy["delay"])
        if delay is not None and delay > 300:
            p.error((*here, "delay"), f"Corral waits at most 300s between restarts, got {delay:g}s")
        elif delay is not None and delay < 0.1:
            p.warn((*here, "delay"), f"of {delay:g}s was raised to 0.1s, the shortest Corral waits")
            out["delay"] = 0.1
        elif delay is not None:
            out["delay"] = delay
    return out


def _restart_string(text: str, path: Path, p: Problems) -> dict[str, Any]:
    name, _, count = text.partition(":")
    if name not in _RESTART_NAMES or (count and name != "on-failure"):
        p.error(path, f"expected no, always, unless-stopped or on-failure[:N], got {text!r}")
        return {}
    out: dict[str, Any] = {"condition": _RESTART_NAMES[name]}
    if count:
        out["max_attempts"] = p.check(path, as_int, count, 0) or 0
    if name == "unless-stopped":
        p.warn(path, "unless-stopped is run as always: Corral restarts until the service is removed")
    return out


def _volumes(volumes: list[dict[str, Any]], path: Path, ctx: Context) -> list[dict[str, Any]]:
    p = ctx.problems
    out: list[dict[str, Any]] = []
    targets: set[str] = set()
    for i, vol in enumerate(volumes):
        here = (*path, i)
        kind = vol.get("type")
        if kind not in ("volume", "bind"):
            p.unsupported(here, f"{kind} mounts")
            continue
        source = vol.get("source")
        if kind == "volume" and source and source not in ctx.volumes:
            p.error((*here, "source"), f"refers to volume {source!r}, which is not declared under the "
                                       "top-level volumes")
        if kind == "bind":
            if not source:
                p.error((*here, "source"), "a bind mount needs the path on the host (source)")
                continue
            source = _bind_source(str(source), here, ctx)
        for key, item in vol.items():
            if key not in ("type", "source", "target", "read_only") and not key.startswith("x-"):
                for sub in item if isinstance(item, dict) and item else [None]:
                    p.unsupported((*here, key) if sub is None else (*here, key, sub))
        if vol["target"] in targets:
            p.error(here, f"{vol['target']} is mounted twice")
        targets.add(vol["target"])
        read_only = p.check((*here, "read_only"), as_bool, vol.get("read_only", False))
        out.append({"type": kind, "source": source, "target": vol["target"], "read_only": bool(read_only)})
    return out


def _bind_source(source: str, path: Path, ctx: Context) -> str:
    if source.startswith("/"):
        return source
    if source.startswith("~"):
        home = ctx.variables.get("HOME")
        if home is None:
            ctx.problems.error((*path, "source"), f"{source} starts with ~ but HOME is not set")
            return source
        resolved = FilePath(home) / source[1:].lstrip("/")
    else:
        resolved = (ctx.project_dir / source).resolve()
    ctx.problems.warn((*path, "source"), f"{source} is relative and was resolved to {resolved}; that path "
                                         "must exist on every host that runs the service")
    return str(resolved)


def _networks(value: Any, path: Path, ctx: Context) -> list[str]:
    p = ctx.problems
    if not value:
        return ["default"]
    for name, config in value.items():
        if name != "default" and name not in ctx.networks:
            p.error((*path, name), f"refers to network {name!r}, which is not declared under the "
                                   "top-level networks")
        warn_unknown(config or {}, set(), (*path, name), p)
    return list(value)


def _healthcheck(value: Any, path: Path, p: Problems) -> dict[str, Any] | None:
    if value is None:
        return None
    warn_unknown(value, {"test", "interval", "timeout", "retries", "start_period", "disable"}, path, p)
    if value.get("disable") is not None and p.check((*path, "disable"), as_bool, value["disable"]):
        return {"disable": True}
    test = value.get("test")
    if isinstance(test, str):
        test = ["CMD-SHELL", test]
    if test is not None:
        if test == ["NONE"]:
            return {"disable": True}
        if not test or test[0] not in ("CMD", "CMD-SHELL") or len(test) < 2:
            p.error((*path, "test"), "expected a string, or a list starting with CMD or CMD-SHELL "
                                     "followed by the command, or [NONE]")
    seconds = {key: p.check((*path, key), as_duration, value.get(key, default))
               for key, default in (("interval", "30s"), ("timeout", "30s"), ("start_period", "0s"))}
    retries = p.check((*path, "retries"), as_int, value.get("retries", 3), 0)
    return {"test": test, **seconds, "retries": retries}


def _update(value: Any, path: Path, p: Problems, actions: tuple[str, ...]) -> dict[str, Any]:
    out = dict(_UPDATE_DEFAULTS)
    for key, item in _mapping(value, path, p).items():
        here = (*path, key)
        if key == "parallelism":
            out[key] = p.check(here, as_int, item, 0)
        elif key in ("delay", "monitor"):
            out[key] = p.check(here, as_duration, item)
        elif key == "max_failure_ratio":
            out[key] = p.check(here, as_float, item, 0, 1)
        elif key == "order":
            out[key] = item
        elif key == "failure_action":
            if item not in actions:
                p.error(here, f"expected {' or '.join(actions)}, got {item!r}")
            out[key] = item
        elif not key.startswith("x-"):
            p.unsupported(here)
    return out


def _reservations(value: Any, path: Path, p: Problems) -> dict[str, Any] | None:
    res = _mapping(value, path, p)
    warn_unknown(res, {"cpus", "memory", "generic_resources", "devices"}, path, p)
    out: dict[str, Any] = _cpu_memory(res, path, p)
    generic: dict[str, int] = {}
    for i, item in enumerate(res.get("generic_resources") or []):
        spec = item.get("discrete_resource_spec")
        here = (*path, "generic_resources", i, "discrete_resource_spec")
        if not spec or "kind" not in spec or "value" not in spec:
            p.error(here, "expected kind and value, e.g. {kind: gpu, value: 1}")
            continue
        kind = GPU if str(spec["kind"]).lower() in _GPU_KINDS else str(spec["kind"])
        count = p.check((*here, "value"), as_int, spec["value"], 0)
        if count is not None:
            generic[kind] = generic.get(kind, 0) + count
    for i, device in enumerate(res.get("devices") or []):
        count = _gpu_devices(device, (*path, "devices", i), p)
        if count is not None:
            generic[GPU] = generic.get(GPU, 0) + count
    if generic:
        out["generic"] = generic
    try:
        parse_resources(out)
    except SpecError as exc:
        for message in exc.errors:
            p.error(path, message)
    return out or None


def _gpu_devices(device: Mapping[str, Any], path: Path, p: Problems) -> int | None:
    if "gpu" not in device.get("capabilities", []):
        p.unsupported(path, "only devices with capabilities [gpu] are reserved")
        return None
    for key in device:
        if key in ("device_ids", "options") or (key == "driver" and device[key] != "nvidia"):
            p.unsupported((*path, key), "GPUs are reserved by count")
    if "count" in device:
        if str(device["count"]).strip().lower() == "all":
            p.error((*path, "count"), "count: all is not supported: give the number of GPUs to reserve")
            return None
        return p.check((*path, "count"), as_int, device["count"], 0)
    if device.get("device_ids"):
        return len(device["device_ids"])
    p.error(path, "give count: the number of GPUs to reserve (Compose's default, all, is not supported)")
    return None


def _limits(value: Any, path: Path, p: Problems) -> dict[str, Any] | None:
    res = _mapping(value, path, p)
    warn_unknown(res, {"cpus", "memory"}, path, p)
    out = {k: v for k, v in _cpu_memory(res, path, p).items() if v}  # 0 means no limit, as in Docker
    if out.get("cpu", 0) > MAX_CPU_LIMIT:
        p.error((*path, "cpus"), f"a CPU limit can be at most {MAX_CPU_LIMIT:g} cores, got {out.pop('cpu'):g}")
    if out.get("memory", MIN_MEMORY_LIMIT) < MIN_MEMORY_LIMIT:
        p.error((*path, "memory"), f"a memory limit must be at least {MIN_MEMORY_LIMIT >> 20} MiB "
                                   f"(or 0 for none), got {out.pop('memory')} bytes")
    return out or None


def _cpu_memory(res: Mapping[str, Any], path: Path, p: Problems) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, name, parse in (("cpus", "cpu", parse_cpu), ("memory", "memory", parse_memory)):
        if res.get(key) is None:
            continue
        try:
            out[name] = parse(res[key])
        except SpecError as exc:
            p.error((*path, key), "; ".join(exc.errors))
    return out


def _mode_and_replicas(spec: dict[str, Any], svc: Mapping[str, Any], deploy: Mapping[str, Any],
                       path: Path, p: Problems) -> None:
    mode = deploy.get("mode", "replicated")
    if mode not in ("replicated", "global"):
        p.error((*path, "deploy", "mode"), f"expected replicated or global, got {mode!r}"
                + (" (jobs are not supported by Corral)" if str(mode).endswith("-job") else ""))
        mode = "replicated"
    spec["mode"] = mode
    given = {key: p.check(here, as_int, value, 0, 10000)
             for key, here, value in (("deploy.replicas", (*path, "deploy", "replicas"), deploy.get("replicas")),
                                      ("scale", (*path, "scale"), svc.get("scale")))
             if value is not None}
    if mode == "global":
        for key in given:
            p.error((*path, *key.split(".")), "cannot be used with mode: global (one instance runs on "
                                              "every host that can run it)")
        return
    counts = {n for n in given.values() if n is not None}
    if len(counts) > 1:
        p.error((*path, "scale"), "differs from deploy.replicas: give one of them")
    spec["replicas"] = counts.pop() if len(counts) == 1 else 1

