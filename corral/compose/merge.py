"""Merging compose files (``-c base.yaml -c override.yaml``) by the Compose Specification's rules.

Following compose-spec's "Merge and override" section (13-merge.md):

* mappings merge recursively: missing entries are added, conflicting ones merged;
* sequences are appended, entries already present are not repeated;
* ``command``, ``entrypoint`` and ``healthcheck.test`` are replaced, not appended;
* ``ports``, ``volumes``, ``secrets`` and ``configs`` are sets with a unique key (ports:
  host IP, target, published port, protocol; the others: target); an entry whose key is
  already there is merged into it, the others are appended;
* ``!reset`` in a later file removes the value, ``!override`` replaces it without merging;
* a scalar, or a value whose type changes, is replaced.

The files are normalised first (normalize.py), so ``environment: [A=1]`` in one file and
``environment: {A: 2}`` in the next merge as mappings.  Nothing here mutates its inputs, and
merging a document with itself gives the document back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from corral.compose.errors import Path
from corral.compose.yamlfile import OVERRIDE, RESET, Markers

_REPLACED = {("command",), ("entrypoint",), ("healthcheck", "test")}


def _port_key(entry: dict[str, Any]) -> Any:
    return (entry.get("host_ip"), entry.get("target"), entry.get("published"), entry.get("protocol"))


def _target_key(entry: dict[str, Any]) -> Any:
    return entry.get("target") or entry.get("source")


_KEYED: dict[tuple[str, ...], Callable[[dict[str, Any]], Any]] = {
    ("ports",): _port_key, ("volumes",): _target_key, ("secrets",): _target_key, ("configs",): _target_key}


def merge(base: dict[str, Any], override: dict[str, Any], markers: Markers) -> dict[str, Any]:
    """``override`` merged onto ``base``; ``markers`` holds the override file's !reset/!override."""
    return _merge_map(base, override, markers, ())


def _service_key(path: Path) -> tuple[str, ...] | None:
    """The key's path inside a service (``("healthcheck", "test")``), or None outside services."""
    if len(path) > 2 and path[0] == "services":
        return tuple(str(p) for p in path[2:])
    return None


def _merge_map(base: dict[str, Any], over: dict[str, Any], markers: Markers, path: Path) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        here = (*path, key)
        marker = markers.get(here)
        if marker == RESET:
            out.pop(key, None)
        elif marker == OVERRIDE:
            out[key] = value
        elif key in out:
            out[key] = _merge_value(out[key], value, markers, here)
        else:
            out[key] = _merge_value(type(value)() if isinstance(value, dict | list) else None,
                                    value, markers, here)
    return out


def _merge_value(a: Any, b: Any, markers: Markers, path: Path) -> Any:
    if isinstance(a, dict) and isinstance(b, dict):
        return _merge_map(a, b, markers, path)
    if isinstance(a, list) and isinstance(b, list):
        inside = _service_key(path)
        if inside in _REPLACED:
            return b
        key = _KEYED.get(inside) if inside else None
        return _merge_keyed(a, b, key) if key else a + [x for x in b if x not in a]
    return b


def _merge_keyed(a: list[Any], b: list[Any], key: Callable[[dict[str, Any]], Any]) -> list[Any]:
    out = list(a)
    where = {key(x): i for i, x in enumerate(out) if isinstance(x, dict)}
    for item in b:
        k = key(item) if isinstance(item, dict) else None
        if k is not None and k in where:
            out[where[k]] = _merge_map(out[where[k]], item, {}, ())
        elif item not in out:
            if k is not None:
                where[k] = len(out)
            out.append(item)
    return out
