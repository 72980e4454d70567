"""Reading one compose file into plain Python data, the way docker compose reads YAML.

Docker compose parses YAML 1.2, PyYAML parses YAML 1.1, and the difference bites in compose
files: YAML 1.1 reads ``- 22:22`` as the base-60 integer 1342, ``FLAG: yes`` as a boolean
and ``2024-01-01`` as a date.  The loader here resolves plain scalars with the YAML 1.2 core
schema instead (only ``true``/``false`` are booleans; integers are decimal, ``0o`` or ``0x``;
no timestamps, no base 60), refuses duplicate keys as docker compose does, keeps YAML merge
keys (``<<: *defaults``), and understands the two Compose tags used in override files:
``!reset`` (drop the value the earlier files set) and ``!override`` (replace it instead of
merging).  Those tags come back as a side table of key paths so that every later stage sees
plain dicts, lists and scalars.
"""

from __future__ import annotations

import re
from pathlib import Path as FilePath
from typing import Any

import yaml

from corral.compose.errors import ComposeError, Path, dotted

RESET = "reset"
OVERRIDE = "override"
Markers = dict[Path, str]


class _Tagged:
    def __init__(self, kind: str, value: Any) -> None:
        self.kind = kind
        self.value = value


# libyaml's parser when PyYAML has it (10x faster); the resolvers and constructors below are
# Python either way.
_Base: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_Base):  # type: ignore[misc]
    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key; the base class says so
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping", node.start_mark, f"duplicate key {key!r}", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


_YAML11_ONLY = {"tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float",
                "tag:yaml.org,2002:timestamp"}
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag not in _YAML11_ONLY]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"), list("-+0123456789"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
               r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def _int(loader: _Loader, node: yaml.ScalarNode) -> int:
    text = str(loader.construct_scalar(node))
    if text.startswith("0o"):
        return int(text[2:], 8)
    if text.startswith("0x"):
        return int(text[2:], 16)
    return int(text)


def _float(loader: _Loader, node: yaml.ScalarNode) -> float:
    text = str(loader.construct_scalar(node)).lower()
    if text.endswith(".inf"):
        return float("-inf") if text.startswith("-") else float("inf")
    return float("nan") if text == ".nan" else float(text)


def _tag(kind: str) -> Any:
    def construct(loader: _Loader, node: yaml.Node) -> _Tagged:
        if isinstance(node, yaml.MappingNode):
            value: Any = loader.construct_mapping(node, deep=True)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_scalar(node)  # type: ignore[arg-type]
            value = None if value == "" else value
        return _Tagged(kind, value)
    return construct


_Loader.add_constructor("tag:yaml.org,2002:int", _int)
_Loader.add_constructor("tag:yaml.org,2002:float", _float)
_Loader.add_constructor("!reset", _tag(RESET))
_Loader.add_constructor("!override", _tag(OVERRIDE))


def parse_yaml(text: str, name: str) -> tuple[dict[str, Any], Markers]:
    """The top-level mapping of a compose file's text, and where it used !reset / !override."""
    try:
        raw = yaml.load(text, Loader=_Loader)  # a SafeLoader: builds plain data only
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ComposeError([f"{name}: {where}invalid YAML: {exc.problem or exc.context}"]) from None
    except yaml.YAMLError as exc:
        raise ComposeError([f"{name}: invalid YAML: {exc}"]) from None
    if raw is None:
        return {}, {}
    if not isinstance(raw, dict):
        raise ComposeError([f"{name}: expected a mapping of top-level keys (services, volumes, ...), "
                            f"got a {type(raw).__name__}"])
    markers: Markers = {}
    errors: list[str] = []
    doc = _plain(raw, (), markers, errors, name)
    if errors:
        raise ComposeError(errors)
    return doc, markers


def read_yaml(file: FilePath, name: str) -> tuple[dict[str, Any], Markers]:
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ComposeError([f"{name}: cannot read the file: {reason}"]) from None
    return parse_yaml(text, name)


def _plain(value: Any, path: Path, markers: Markers, errors: list[str], name: str) -> Any:
    """Mapping keys as strings, tags taken out into ``markers``."""
    if isinstance(value, _Tagged):
        if not path or isinstance(path[-1], int):
            errors.append(f"{name}: {dotted(path)}: !{value.kind} is only allowed on the value of a key")
        markers[path] = value.kind
        value = value.value
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key is None or isinstance(key, list | dict):
                errors.append(f"{name}: {dotted(path)}: invalid key {key!r}: keys are strings")
                continue
            text = ("true" if key else "false") if isinstance(key, bool) else str(key)
            out[text] = _plain(item, (*path, text), markers, errors, name)
        return out
    if isinstance(value, list):
        return [_plain(item, (*path, i), markers, errors, name) for i, item in enumerate(value)]
    return value
