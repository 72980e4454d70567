"""``load_stack``: compose files in, a :class:`Stack` of Corral service specs out.

The pipeline, in the order docker compose applies it:

1. variables: the ``.env`` file next to the first compose file, overlaid by ``env`` (the
   process environment by default), which wins;
2. each file on its own: read (yamlfile.py), interpolate its values (interpolation.py),
   validate it against the Compose Specification schema (schema.py), normalise its
   alternative syntaxes (normalize.py) -- errors here name that file;
3. merge the files in order (merge.py), remembering which file last set each key;
4. map each service to a Corral spec (services.py) and the top-level volumes and networks
   to the stack's -- errors here name the file that set the bad key.

Each step collects every error it finds and the step raises one ComposeError listing them.
Relative paths (env_file, bind mounts) are resolved against the first file's folder, the
project directory, as docker compose does.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path as FilePath
from typing import Any

from corral.compose.dotenv import parse_dotenv
from corral.compose.errors import ComposeError, Invalid, Path, Problems
from corral.compose.interpolation import interpolate
from corral.compose.merge import merge
from corral.compose.normalize import normalize
from corral.compose.schema import validate
from corral.compose.services import Context, labels, map_service, warn_unknown
from corral.compose.values import as_bool, as_name
from corral.compose.yamlfile import read_yaml

_TOP_LEVEL = {"services", "volumes", "networks", "name", "version"}


@dataclass(frozen=True)
class Stack:
    """A loaded stack: the bare service specs (the server prefixes them with ``name``), the
    declared volumes and networks, and a warning for every key Corral did not honour."""

    name: str
    services: list[dict[str, Any]]
    networks: dict[str, dict[str, Any]] = field(default_factory=dict)
    volumes: dict[str, dict[str, Any]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def load_stack(files: Sequence[FilePath], env: Mapping[str, str] | None = None, *, stack: str) -> Stack:
    """Load compose ``files`` (later ones override earlier ones) as the stack named ``stack``.

    ``env`` holds the variables for interpolation (default: the process environment); it
    wins over the ``.env`` file beside the first file.  Raises ComposeError, naming the file
    and the key path of every problem, when the files cannot be deployed.
    """
    if not files:
        raise ComposeError(["no compose file given"])
    try:
        as_name(stack, "stack name")
    except Invalid as exc:
        raise ComposeError([str(exc)]) from None
    files = [FilePath(f) for f in files]
    project_dir = files[0].parent.absolute()
    warnings: list[str] = []
    variables = _variables(project_dir, os.environ if env is None else env, warnings)

    merged: dict[str, Any] = {}
    origin: dict[Path, str] = {}
    errors: list[str] = []
    for file in files:
        name = str(file)
        problems = Problems(_always(name))
        try:
            doc, markers = read_yaml(file, name)
        except ComposeError as exc:
            errors += exc.errors
            continue
        doc = interpolate(doc, variables, problems)
        if not problems.errors:
            validate(doc, problems)
        if not problems.errors:
            doc = normalize(doc, problems)
        warnings += problems.warnings
        errors += problems.errors
        if not errors:
            merged = merge(merged, doc, markers)
            _record_origin(doc, (), name, origin)
    if errors:
        raise ComposeError(errors)

    problems = Problems(lambda path: _origin_of(path, origin, str(files[0])))
    _top_level(merged, stack, problems)
    volumes = _volumes(merged.get("volumes") or {}, problems)
    networks = _networks(merged.get("networks") or {}, problems)
    ctx = Context(problems, project_dir, variables, volumes, networks)
    services = [map_service(name, svc, ctx) for name, svc in (merged.get("services") or {}).items()]
    if not services and not problems.errors:
        problems.error(("services",), "no services are defined")
    problems.raise_if_any()
    if any("default" in s["networks"] for s in services) and "default" not in networks:
        networks["default"] = {"name": None, "external": False, "labels": {}}
    for name, net in networks.items():
        if net["external"]:
            problems.warn(("networks", name, "external"), "Corral has no external networks: services that "
                                                          "name it join the overlay network")
    used = sorted({n for s in services for n in s["networks"]})
    if len(used) > 1:
        problems.warn(("networks",), f"{', '.join(used)}: every service joins Corral's one overlay network, "
                                     "so services on different networks can reach each other (no isolation)")
    return Stack(stack, services, networks, volumes, warnings + problems.warnings)


def _variables(project_dir: FilePath, env: Mapping[str, str], warnings: list[str]) -> dict[str, str]:
    dotenv_file = project_dir / ".env"
    values: dict[str, str] = {}
    if dotenv_file.is_file():
        try:
            text = dotenv_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ComposeError([f"{dotenv_file}: cannot read the file: {exc}"]) from None
        parsed = parse_dotenv(text, str(dotenv_file), env.get, warnings.append)
        values = {k: v for k, v in parsed.items() if v is not None}
    return values | dict(env)


def _always(name: str) -> Callable[[Path], str]:
    return lambda _path: name


def _record_origin(value: Any, path: Path, name: str, origin: dict[Path, str]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            origin[(*path, key)] = name
            _record_origin(item, (*path, key), name, origin)


def _origin_of(path: Path, origin: Mapping[Path, str], default: str) -> str:
    keys = []
    for part in path:
        if isinstance(part, int):
            break
        keys.append(part)
    while keys:
        if tuple(keys) in origin:
            return origin[tuple(keys)]
        keys.pop()
    return default


def _top_level(doc: Mapping[str, Any], stack: str, p: Problems) -> None:
    if "include" in doc:
        p.error(("include",), "is not supported by Corral: list the files with -c instead")
    if "x-corral" in doc:
        p.error(("x-corral",), "is read under a service (services.NAME.x-corral), not at the top level")
    if "version" in doc:
        p.warn(("version",), "is obsolete and was ignored")
    if doc.get("name") not in (None, stack):
        p.warn(("name",), f"was ignored: the stack is named {stack}")
    warn_unknown({k: v for k, v in doc.items() if k not in ("include",)}, _TOP_LEVEL, (), p)


def _external(value: Any, path: Path, p: Problems) -> tuple[bool, str | None]:
    """``external: true``, ``"true"`` or the deprecated ``{name: X}``."""
    if isinstance(value, dict):
        return True, value.get("name")
    return bool(p.check(path, as_bool, value)) if value is not None else False, None


def _volumes(declared: Mapping[str, Any], p: Problems) -> dict[str, dict[str, Any]]:
    out = {}
    for name, vol in declared.items():
        path: Path = ("volumes", name)
        warn_unknown(vol, {"name", "external", "driver", "driver_opts", "labels"}, path, p)
        external, external_name = _external(vol.get("external"), (*path, "external"), p)
        out[name] = {"name": vol.get("name") or external_name, "external": external,
                     "driver": vol.get("driver"),
                     "driver_opts": {k: str(v) for k, v in (vol.get("driver_opts") or {}).items()},
                     "labels": labels(vol.get("labels"), (*path, "labels"), p)}
    return out


def _networks(declared: Mapping[str, Any], p: Problems) -> dict[str, dict[str, Any]]:
    out = {}
    for name, net in declared.items():
        path: Path = ("networks", name)
        warn_unknown(net, {"name", "external", "labels"}, path, p)
        external, external_name = _external(net.get("external"), (*path, "external"), p)
        out[name] = {"name": net.get("name") or external_name, "external": external,
                     "labels": labels(net.get("labels"), (*path, "labels"), p)}
    return out
