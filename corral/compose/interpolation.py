"""Variable interpolation in compose files, with docker compose's syntax and rules.

    $VAR  ${VAR}            the value; unset -> empty string and a warning
    ${VAR:-default}         default when VAR is unset or empty   (${VAR-default}: unset only)
    ${VAR:?message}         error when VAR is unset or empty     (${VAR?message}: unset only)
    ${VAR:+alternative}     alternative when VAR is set and not empty (${VAR+alternative}: set)
    $$                      a literal $

Defaults, messages and alternatives may themselves contain ``${...}`` (``${A:-${B:-x}}``) and
are expanded only when used.  A ``$`` followed by anything else (``$5``, a lone ``$``) stays as
it is, as in docker compose; ``${`` that does not form one of the forms above is an error.

Only values are interpolated, never keys, and it happens on each file before schema
validation, so ``replicas: ${N:-2}`` validates (as the string "2": see values.py).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

from corral.compose.errors import Invalid, Path, Problems, dotted

_NAME = re.compile(r"[_A-Za-z][_A-Za-z0-9]*")
_OPERATORS = (":-", ":?", ":+", "-", "?", "+")


def substitute(text: str, lookup: Callable[[str], str | None], missing: Callable[[str], None]) -> str:
    """``text`` with its variables replaced; ``missing(name)`` is told of each unset ``$VAR``.

    Raises Invalid for a malformed ``${...}`` and for ``${VAR:?message}`` with VAR unset.
    """
    out: list[str] = []
    pos = 0
    while True:
        i = text.find("$", pos)
        if i < 0:
            out.append(text[pos:])
            return "".join(out)
        out.append(text[pos:i])
        nxt = text[i + 1:i + 2]
        if nxt == "$":
            out.append("$")
            pos = i + 2
        elif nxt == "{":
            value, pos = _braced(text, i + 2, lookup, missing)
            out.append(value)
        else:
            m = _NAME.match(text, i + 1)
            if m:
                out.append(_plain(m.group(), lookup, missing))
                pos = m.end()
            else:
                out.append("$")
                pos = i + 1


def _plain(name: str, lookup: Callable[[str], str | None], missing: Callable[[str], None]) -> str:
    value = lookup(name)
    if value is None:
        missing(name)
        return ""
    return value


def _braced(text: str, start: int, lookup: Callable[[str], str | None],
            missing: Callable[[str], None]) -> tuple[str, int]:
    m = _NAME.match(text, start)
    if not m:
        raise Invalid(f"invalid interpolation format in {text!r}: expected ${{NAME}} after '$'")
    name, pos = m.group(), m.end()
    if text.startswith("}", pos):
        return _plain(name, lookup, missing), pos + 1
    op = next((o for o in _OPERATORS if text.startswith(o, pos)), None)
    if pos == len(text):
        raise Invalid(f"invalid interpolation format in {text!r}: missing '}}'")
    if op is None:
        raise Invalid(f"invalid interpolation format in {text!r}: after ${{{name} expected '}}' "
                      "or one of :- - :? ? :+ +")
    word_start = pos + len(op)
    end = _closing_brace(text, word_start)
    word = text[word_start:end]

    def expand() -> str:
        return substitute(word, lookup, missing)

    value = lookup(name)
    present = value is not None if ":" not in op else bool(value)
    if op.endswith("-"):
        result = value if present and value is not None else expand()
    elif op.endswith("+"):
        result = expand() if present else ""
    else:  # ? / :?
        if not present:
            message = expand()
            raise Invalid(f"required variable {name} is missing a value" + (f": {message}" if message else ""))
        result = value or ""
    return result, end + 1


def _closing_brace(text: str, pos: int) -> int:
    depth = 0
    while pos < len(text):
        if text.startswith("$$", pos):
            pos += 2
            continue
        if text.startswith("${", pos):
            depth += 1
            pos += 2
            continue
        if text[pos] == "}":
            if depth == 0:
                return pos
            depth -= 1
        pos += 1
    raise Invalid(f"invalid interpolation format in {text!r}: missing '}}'")


def interpolate(doc: Any, variables: Mapping[str, str], problems: Problems, path: Path = ()) -> Any:
    """``doc`` with every string value interpolated (keys are left alone).

    Errors go to ``problems`` against the value's key path; each unset variable gives one
    warning naming the file and every place it is used.
    """
    unset: dict[str, list[Path]] = {}
    result = _walk(doc, variables, problems, path, unset)
    for name, paths in unset.items():
        where = ", ".join(dotted(p) for p in paths[:5]) + (", ..." if len(paths) > 5 else "")
        problems.warnings.append(f"{problems.locate(paths[0])}: variable {name} is not set "
                                 f"(used at {where}); an empty string was substituted")
    return result


def _walk(value: Any, variables: Mapping[str, str], problems: Problems, path: Path,
          unset: dict[str, list[Path]]) -> Any:
    if isinstance(value, dict):
        return {k: _walk(v, variables, problems, (*path, k), unset) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk(v, variables, problems, (*path, i), unset) for i, v in enumerate(value)]
    if not isinstance(value, str) or "$" not in value:
        return value

    def missing(name: str) -> None:
        unset.setdefault(name, []).append(path)

    try:
        return substitute(value, variables.get, missing)
    except Invalid as exc:
        problems.error(path, str(exc))
        return value
