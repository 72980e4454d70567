"""One shape per key: each file's alternative syntaxes turned into one form before merging.

Compose lets most keys be written two ways (``environment`` as a list of ``K=V`` or as a
mapping, ``ports`` and ``volumes`` in short or long syntax, ``env_file`` as a string or a
list, ``networks`` as a list or a mapping, ...).  Merging files, and mapping the result to a
Corral spec, need one form, so each file is normalised on its own, right after schema
validation, while its errors can still name the file:

    environment, labels, annotations, sysctls, deploy.labels   -> {key: value}
    ports              -> [{target, published, protocol, host_ip?, ...}], ranges expanded
    volumes            -> [{type, source?, target, read_only?, bind?, volume?, ...}]
    env_file           -> [{path, required, format?}]
    networks           -> {name: config or None}        depends_on -> {name: {condition}}
    build              -> {context, ...}                dns, dns_search, tmpfs, label_file -> [..]

Values keep their type (conversion to numbers and booleans is the mapping's job).
"""

from __future__ import annotations

from typing import Any

from corral.compose.errors import Path, Problems
from corral.compose.syntax import parse_port, parse_volume

_DICT_KEYS = ("environment", "labels", "annotations", "sysctls")
_LIST_KEYS = ("dns", "dns_search", "tmpfs", "label_file")


def normalize(doc: dict[str, Any], problems: Problems) -> dict[str, Any]:
    out = dict(doc)
    for section in ("volumes", "networks"):
        if isinstance(out.get(section), dict):
            out[section] = {k: ({} if v is None else v) for k, v in out[section].items()}
    if isinstance(out.get("services"), dict):
        out["services"] = {name: _service(svc, ("services", name), problems) if isinstance(svc, dict) else svc
                           for name, svc in out["services"].items()}
    return out


def list_or_dict(value: Any, default: Any) -> dict[str, Any]:
    """``["A=1", "B"]`` -> ``{"A": "1", "B": default}``; a mapping is returned as it is."""
    if isinstance(value, dict):
        return dict(value)
    out: dict[str, Any] = {}
    for item in value or []:
        key, sep, val = str(item).partition("=")
        out[key] = val if sep else default
    return out


def _service(svc: dict[str, Any], path: Path, problems: Problems) -> dict[str, Any]:
    out = dict(svc)
    for key in _DICT_KEYS:
        if key in out:
            out[key] = list_or_dict(out[key], None if key == "environment" else "")
    for key in _LIST_KEYS:
        if isinstance(out.get(key), str):
            out[key] = [out[key]]
    if isinstance(out.get("deploy"), dict) and "labels" in out["deploy"]:
        out["deploy"] = dict(out["deploy"], labels=list_or_dict(out["deploy"]["labels"], ""))
    if isinstance(out.get("build"), str):
        out["build"] = {"context": out["build"]}
    if isinstance(out.get("networks"), list):
        out["networks"] = {name: None for name in out["networks"]}
    if isinstance(out.get("depends_on"), list):
        out["depends_on"] = {name: {"condition": "service_started"} for name in out["depends_on"]}
    if "env_file" in out:
        files = out["env_file"] if isinstance(out["env_file"], list) else [out["env_file"]]
        out["env_file"] = [f if isinstance(f, dict) else {"path": f, "required": True} for f in files]
    if isinstance(out.get("ports"), list):
        ports: list[dict[str, Any]] = []
        for i, entry in enumerate(out["ports"]):
            ports += problems.check((*path, "ports", i), parse_port, entry) or []
        out["ports"] = ports
    if isinstance(out.get("volumes"), list):
        volumes = [problems.check((*path, "volumes", i), parse_volume, entry)
                   for i, entry in enumerate(out["volumes"])]
        out["volumes"] = [v for v in volumes if v is not None]
    return out
