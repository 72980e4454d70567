"""Errors and warnings of the compose loader, each named by file and key path.

Every stage of the loader reports into one :class:`Problems`: an error is recorded (not
raised) so that one run names every bad key it can find cheaply, and the loader raises a
single :class:`ComposeError` listing them all at the end of a stage.  A key path is a tuple
of mapping keys and list indices, printed the way a user would find it in the file:
``services.web.deploy.replicas`` or ``services.web.ports[1]``.

Stages that see one file at a time name that file; the mapping stage sees the merged
document, so ``Problems.locate`` is given a function that says which file last set a path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

Path = tuple[str | int, ...]
T = TypeVar("T")


class ComposeError(Exception):
    """A compose file Corral cannot use.  ``errors`` lists each problem as
    ``FILE: KEY.PATH: what was expected``; the message is all of them."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        if len(self.errors) == 1:
            message = self.errors[0]
        else:
            message = f"{len(self.errors)} problems in the compose files:\n  " + "\n  ".join(self.errors)
        super().__init__(message)


class Invalid(ValueError):
    """Raised by the value parsers; :meth:`Problems.check` records it against a path."""


def dotted(path: Path) -> str:
    """``("services", "web", "ports", 0)`` -> ``services.web.ports[0]``."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


class Problems:
    """Collects errors and warnings; ``locate(path)`` names the file a path came from."""

    def __init__(self, locate: Callable[[Path], str]) -> None:
        self.locate = locate
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def error(self, path: Path, message: str) -> None:
        self.errors.append(f"{self.locate(path)}: {dotted(path)}: {message}")

    def warn(self, path: Path, message: str) -> None:
        self.warnings.append(f"{dotted(path)} {message}")

    def unsupported(self, path: Path, hint: str = "") -> None:
        """The standard warning for a key the schema allows and Corral does not honour."""
        self.warn(path, "is not supported by Corral and was ignored" + (f" ({hint})" if hint else ""))

    def check(self, path: Path, parse: Callable[..., T], *args: object) -> T | None:
        """``parse(*args)``, or None with the error recorded at ``path`` if it raises Invalid."""
        try:
            return parse(*args)
        except Invalid as exc:
            self.error(path, str(exc))
            return None

    def raise_if_any(self) -> None:
        if self.errors:
            raise ComposeError(self.errors)
