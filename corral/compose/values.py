"""Scalar values as Compose writes them, parsed into what Corral specs hold.

After interpolation every value may be a string (``replicas: ${N:-2}`` is the string
``"2"``), and the current schema allows strings wherever a number or boolean goes.  So, as
docker compose does, numbers and booleans are converted here, where the meaning of the key
is known.  Each parser raises :class:`~corral.compose.errors.Invalid` saying what was
expected; callers record it against the key path with ``Problems.check``.
"""

from __future__ import annotations

import math
import re
import shlex
from typing import Any, TypeVar

from corral.compose.errors import Invalid

# As corral.api.schemas (_NAME, _ENV_KEY, _LABEL_KEY): the loader must refuse what the API
# refuses, without importing the server's pydantic models.  tests/unit/test_compose_mapping.py
# checks the patterns stay equal.
NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
LABEL_KEY = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,126}[A-Za-z0-9])?$")

N = TypeVar("N", int, float)
_TRUE = {"true", "yes", "y", "on"}
_FALSE = {"false", "no", "n", "off"}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def describe(value: Any) -> str:
    return f"{value!r}" if not isinstance(value, str) else f"'{value}'"


def as_int(value: Any, minimum: int | None = None, maximum: int | None = None) -> int:
    """A whole number from an int or a string of digits (``"3"``)."""
    if isinstance(value, bool):
        raise Invalid(f"expected a whole number, got {describe(value)}")
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and re.fullmatch(r"\s*[-+]?\d+\s*", value):
        value = int(value)
    if not isinstance(value, int):
        raise Invalid(f"expected a whole number, got {describe(value)}")
    return _within(value, minimum, maximum, "a whole number")


def as_float(value: Any, minimum: float | None = None, maximum: float | None = None) -> float:
    """A finite number from an int, a float or a numeric string."""
    if isinstance(value, bool):
        raise Invalid(f"expected a number, got {describe(value)}")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise Invalid(f"expected a number, got {describe(value)}") from None
    if not math.isfinite(number):
        raise Invalid(f"expected a finite number, got {describe(value)}")
    return _within(number, minimum, maximum, "a number")


def _within(number: N, minimum: float | None, maximum: float | None, what: str) -> N:
    if minimum is not None and number < minimum:
        raise Invalid(f"expected {what} of at least {minimum:g}, got {number:g}")
    if maximum is not None and number > maximum:
        raise Invalid(f"expected {what} of at most {maximum:g}, got {number:g}")
    return number


def as_bool(value: Any) -> bool:
    """true/false, and the strings docker compose accepts (yes/no, on/off, y/n)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise Invalid(f"expected true or false, got {describe(value)}")


def as_duration(value: Any) -> float:
    """Seconds from a Go duration as Compose writes them: ``5s``, ``1m30s``, ``1.5h``, ``300ms``."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise Invalid(f"expected a duration such as 10s or 1m30s, got {describe(value)}")
    if isinstance(value, int | float):  # bare numbers: seconds
        return as_float(value, minimum=0)
    text = value.strip()
    if not text:
        raise Invalid("expected a duration such as 10s or 1m30s, got an empty string")
    if text == "0":
        return 0.0
    pos, total = 0, 0.0
    while pos < len(text):
        m = _DURATION_PART.match(text, pos)
        if not m:
            raise Invalid(f"expected a duration such as 10s or 1m30s, got {describe(value)}")
        total += float(m.group(1)) * _DURATION_UNIT[m.group(2)]
        pos = m.end()
    return total


def as_str(value: Any) -> str:
    """Scalars as docker compose turns them into strings (``true``, ``3``, ``0.5``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    raise Invalid(f"expected a string, got {describe(value)}")


def as_command(value: Any) -> list[str]:
    """A command as a list: a string is split as a POSIX shell would (docker compose does so)."""
    if isinstance(value, list):
        return [as_str(v) for v in value]
    if isinstance(value, str):
        try:
            return shlex.split(value)
        except ValueError as exc:
            raise Invalid(f"cannot split {describe(value)} into words: {exc}") from None
    raise Invalid(f"expected a string or a list of strings, got {describe(value)}")


def as_name(value: str, what: str = "service name") -> str:
    if not NAME.match(value):
        raise Invalid(f"invalid {what} {describe(value)}: Corral names use 1-63 lower-case letters, "
                      "digits and '-', starting and ending with a letter or digit")
    return value
