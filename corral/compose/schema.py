"""Validation against the official Compose Specification JSON schema.

The schema is vendored as ``compose-spec.json`` beside this module (source and version in
SCHEMA.md).  jsonschema's own messages name schema internals ("is not valid under any of the
given schemas"); :func:`validate` turns each error into the key path of the bad value and
what was expected there: an unknown key is named with a close known one (``services.web.imge:
unknown key; did you mean 'image'?``), a ``oneOf`` of types becomes "expected a string or a
list", and a ``oneOf`` of shapes reports the branch that fits the value's type.
"""

from __future__ import annotations

import difflib
import json
import re
from functools import cache
from importlib import resources
from typing import Any

import jsonschema
from jsonschema.exceptions import ValidationError

from corral.compose.errors import Path, Problems

_WORDS = {"string": "a string", "array": "a list", "object": "a mapping", "integer": "a whole number",
          "number": "a number", "boolean": "true or false", "null": "null"}


@cache
def validator() -> jsonschema.Draft7Validator:
    # compose-spec.json: the Compose Specification's schema, compose-spec/compose-spec
    # commit 00655e2222608fa6eaecdf12ac5195889ca2244a (see SCHEMA.md), JSON Schema draft-07.
    text = resources.files("corral.compose").joinpath("compose-spec.json").read_text(encoding="utf-8")
    return jsonschema.Draft7Validator(json.loads(text))


def validate(doc: dict[str, Any], problems: Problems) -> None:
    """Record every schema violation in ``doc`` against its key path."""
    found: list[tuple[Path, str]] = []
    for err in validator().iter_errors(doc):
        found += _explain(err, tuple(err.absolute_path))
    for path, message in sorted(set(found), key=lambda f: [str(p) for p in f[0]]):
        problems.error(path, message)


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    for name, types in (("null", type(None)), ("string", str), ("array", list), ("object", dict)):
        if isinstance(value, types):
            return _WORDS[name]
    return "a number"


def _names(value: Any) -> list[str]:
    """A schema keyword's value that is one name or a list of names, as a list."""
    return [value] if isinstance(value, str) else [str(v) for v in value]


def _expected(types: Any) -> str:
    names = _names(types)
    if "integer" in names and "number" in names:
        names.remove("integer")
    words = list(dict.fromkeys(_WORDS.get(n, n) for n in names))
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " or " + words[-1]


def _explain_branches(err: ValidationError, path: Path) -> list[tuple[Path, str]]:
    """A failed oneOf/anyOf: the errors of the branch whose type fits the value, or, when no
    branch's type fits, the list of types that would."""
    branches: dict[Any, list[ValidationError]] = {}
    for e in err.context:
        branches.setdefault(e.relative_schema_path[0], []).append(e)
    wrong_type = {i for i, errs in branches.items()
                  if any(e.validator == "type" and not e.relative_path for e in errs)}
    fitting = [errs for i, errs in branches.items() if i not in wrong_type]
    if not fitting:
        types: list[str] = []
        for e in err.context:
            if e.validator == "type" and not e.relative_path:
                types += _names(e.validator_value)
        return [(path, f"expected {_expected(types)}, got {_kind(err.instance)}")]
    out: list[tuple[Path, str]] = []
    for e in min(fitting, key=len):
        out += _explain(e, tuple(e.absolute_path))
    return out


def _explain(err: ValidationError, path: Path) -> list[tuple[Path, str]]:
    v, schema, value = err.validator, err.schema, err.instance
    if v == "additionalProperties" and isinstance(value, dict) and isinstance(schema, dict):
        return _unknown_keys(value, schema, path)
    if v == "type":
        return [(path, f"expected {_expected(err.validator_value)}, got {_kind(value)}")]
    if v in ("oneOf", "anyOf") and err.context:
        return _explain_branches(err, path)
    if v == "oneOf":  # valid under several branches: the schema's own ambiguity, say it plainly
        return [(path, "matches more than one of the allowed forms")]
    if v == "enum":
        allowed = ", ".join(_names(err.validator_value))
        return [(path, f"expected one of {allowed}, got {value!r}")]
    if v == "required" and isinstance(value, dict):
        return [((*path, key), "is required") for key in _names(err.validator_value) if key not in value]
    if v == "pattern":
        return [(path, f"{value!r} is not valid here (expected a value matching {err.validator_value})")]
    if v in ("minimum", "maximum"):
        word = "at least" if v == "minimum" else "at most"
        return [(path, f"expected a number {word} {err.validator_value}, got {value!r}")]
    if v == "uniqueItems":
        return [(path, "has the same entry more than once")]
    return [(path, err.message)]


def _unknown_keys(value: dict[str, Any], schema: dict[str, Any], path: Path) -> list[tuple[Path, str]]:
    known = list(schema.get("properties", {}))
    patterns = [p for p in schema.get("patternProperties", {}) if p != "^x-"]
    out = []
    for key in value:
        if key in known or any(re.search(p, key) for p in schema.get("patternProperties", {})):
            continue
        if patterns and not known:
            out.append(((*path, key), "is not a valid name: use letters, digits, '.', '_' and '-'"))
            continue
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        out.append(((*path, key), f"unknown key{hint}"))
    return out
