"""``.env`` and ``env_file`` files, read as docker compose reads them.

    # a comment                     KEY=value  # an inline comment (after a blank)
    export KEY=value                KEY='literal, $NOT interpolated'
    KEY="line one\\nline two"        KEY="may span
                                    several lines"
    KEY                             (env_file only: the value comes from the environment)

Unquoted and double-quoted values are interpolated (``${VAR:-x}``, see interpolation.py)
from ``lookup`` first, then from the keys defined earlier in the same file.  Double-quoted
values understand ``\\n \\r \\t \\" \\\\ \\$``.  A bare ``KEY`` maps to None.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from corral.compose.errors import ComposeError, Invalid
from corral.compose.interpolation import substitute

_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]*")
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\", "$": "$$"}


def parse_dotenv(text: str, name: str, lookup: Callable[[str], str | None],
                 warn: Callable[[str], None]) -> dict[str, str | None]:
    """KEY -> value (None for a bare KEY); raises ComposeError naming ``name`` and the line."""
    values: dict[str, str | None] = {}
    pos = 0

    def line_of(at: int) -> int:
        return text.count("\n", 0, at) + 1

    def fail(at: int, message: str) -> ComposeError:
        return ComposeError([f"{name}: line {line_of(at)}: {message}"])

    def known(key: str) -> str | None:
        found = lookup(key)
        return found if found is not None else values.get(key)

    def expand(raw: str, at: int) -> str:
        try:
            return substitute(raw, known, lambda var: warn(
                f"{name}: line {line_of(at)}: variable {var} is not set; an empty string was substituted"))
        except Invalid as exc:
            raise fail(at, str(exc)) from None

    while pos < len(text):
        pos = _skip(text, pos, " \t\r\n")
        if pos >= len(text):
            break
        if text[pos] == "#":
            pos = _line_end(text, pos)
            continue
        start = pos
        if text.startswith("export", pos) and text[pos + 6:pos + 7] in (" ", "\t"):
            pos = _skip(text, pos + 6, " \t")
        m = _KEY.match(text, pos)
        if not m:
            raise fail(pos, "expected KEY=VALUE")
        key, pos = m.group(), _skip(text, m.end(), " \t")
        if pos >= len(text) or text[pos] in "\r\n#":
            values[key] = None
            continue
        if text[pos] != "=":
            raise fail(pos, f"expected '=' after {key}")
        pos = _skip(text, pos + 1, " \t")
        quote = text[pos:pos + 1]
        if quote in ("'", '"'):
            end = _closing_quote(text, pos + 1, quote)
            if end < 0:
                raise fail(start, f"the value of {key} has no closing {quote}")
            raw = text[pos + 1:end]
            rest_at = _skip(text, end + 1, " \t")
            if rest_at < len(text) and text[rest_at] not in "\r\n#":
                raise fail(rest_at, f"unexpected text after the quoted value of {key}")
            pos = _line_end(text, end + 1)
            if quote == "'":
                values[key] = raw
            else:
                values[key] = expand(re.sub(r"\\(.)", lambda e: _ESCAPES.get(e.group(1), e.group(0)), raw),
                                     start)
            continue
        end = _line_end(text, pos)
        raw = re.split(r"[ \t]#", text[pos:end], maxsplit=1)[0].strip()
        values[key] = expand(raw, start)
        pos = end
    return values


def _skip(text: str, pos: int, chars: str) -> int:
    while pos < len(text) and text[pos] in chars:
        pos += 1
    return pos


def _line_end(text: str, pos: int) -> int:
    end = text.find("\n", pos)
    return len(text) if end < 0 else end


def _closing_quote(text: str, pos: int, quote: str) -> int:
    while pos < len(text):
        if quote == '"' and text[pos] == "\\":
            pos += 2
            continue
        if text[pos] == quote:
            return pos
        pos += 1
    return -1
