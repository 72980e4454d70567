"""Local validation of command-line values, before anything goes to the server.

Pure functions; each raises :class:`ArgumentProblem` (a ValueError) with a
message that names the bad value and shows the expected form.  The command
layer turns that into a usage error (exit code 2).  The server validates
again: these checks exist to fail fast with a clearer message.
"""

from __future__ import annotations

import re
from typing import Any

JSONDict = dict[str, Any]

_NAME_JUNK = re.compile(r"[^a-z0-9-]+")
_PORT = re.compile(r"^(\d+):(\d+)(?:/([A-Za-z]+))?$")
_REGISTRY = re.compile(r"^(?:[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$")


class ArgumentProblem(ValueError):
    """A command-line value that is malformed."""


def parse_env(items: list[str]) -> dict[str, str]:
    """``["K=V", "EMPTY="]`` -> ``{"K": "V", "EMPTY": ""}``."""
    env: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or any(c.isspace() for c in key):
            raise ArgumentProblem(f"{item!r}: expected KEY=VALUE")
        env[key] = value
    return env


def parse_port(text: str) -> JSONDict:
    """``8080:80`` or ``5353:53/udp`` -> ``{"published", "target", "protocol"}``."""
    match = _PORT.match(text.strip())
    if not match:
        raise ArgumentProblem(f"{text!r}: expected PUBLISHED:TARGET[/tcp|/udp], e.g. 8080:80")
    published, target, protocol = int(match[1]), int(match[2]), (match[3] or "tcp").lower()
    for port in (published, target):
        if not 1 <= port <= 65535:
            raise ArgumentProblem(f"{text!r}: port {port} is not in 1-65535")
    if protocol not in ("tcp", "udp"):
        raise ArgumentProblem(f"{text!r}: the protocol must be tcp or udp")
    # tcp goes through the ingress proxy (several instances per host, no gap in updates); udp is bound
    return {"published": published, "target": target, "protocol": protocol,
            "mode": "ingress" if protocol == "tcp" else "host"}


def parse_label(text: str) -> tuple[str, str]:
    """``zone=edge`` -> ``("zone", "edge")``; the value may be empty."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ArgumentProblem(f"{text!r}: expected KEY=VALUE")
    return key.strip(), value


def parse_scale(args: list[str]) -> list[tuple[str, int]]:
    """``["web=3", "api", "2"]`` -> ``[("web", 3), ("api", 2)]``."""
    if not args:
        raise ArgumentProblem("expected NAME=REPLICAS (or NAME REPLICAS)")
    result: list[tuple[str, int]] = []
    i = 0
    while i < len(args):
        arg = args[i]
        if "=" in arg:
            name, _, count = arg.partition("=")
            i += 1
        elif i + 1 < len(args):
            name, count = arg, args[i + 1]
            i += 2
        else:
            raise ArgumentProblem(f"{arg}: missing the replica count (expected {arg}=REPLICAS)")
        if not name:
            raise ArgumentProblem(f"{arg!r}: expected NAME=REPLICAS")
        try:
            result.append((name, parse_replicas(count)))
        except ArgumentProblem as exc:
            raise ArgumentProblem(f"{name}: {exc}") from None
    return result


def parse_replicas(text: str | int) -> int:
    """A replica count: a whole number, 0 or more."""
    try:
        count = int(text)
    except (TypeError, ValueError):
        raise ArgumentProblem(f"expected a whole number of replicas, got {text!r}") from None
    if count < 0:
        raise ArgumentProblem(f"replicas must be 0 or more, got {count}")
    return count


def derive_name(image: str) -> str:
    """A service name from an image: ``registry:5000/team/My_App:1.2@sha256:…`` -> ``my-app``."""
    ref = image.split("@", 1)[0]
    last = ref.rsplit("/", 1)[-1]
    last = last.split(":", 1)[0]
    name = _NAME_JUNK.sub("-", last.lower()).strip("-")
    if not name:
        raise ArgumentProblem(f"cannot derive a service name from image {image!r}: pass --name")
    return name


def split_command(args: list[str]) -> list[str] | None:
    """The container command after the image; a leading ``--`` is dropped.

    Options belong before the image (``corral run [OPTIONS] IMAGE [COMMAND]...``,
    as with ``docker run``), so ``corral run busybox sh -c 'echo hi'`` works.  A
    first word starting with ``-`` is almost surely a misplaced option, so it is
    refused unless the command follows an explicit ``--``.
    """
    if not args:
        return None
    if args[0] == "--":
        return list(args[1:]) or None
    if args[0].startswith("-"):
        raise ArgumentProblem(
            f"{args[0]!r} after the image: options go before the image "
            "(corral run [OPTIONS] IMAGE [COMMAND]...); put `--` before a command starting with '-'"
        )
    return list(args)


def parse_registry(text: str) -> str:
    """A registry as ``host[:port]``: ``127.0.0.1:5001``, ``docker.io``.

    A URL's scheme and trailing slash are dropped (``https://reg:5000/`` ->
    ``reg:5000``), as ``docker login`` accepts them; a path is refused: credentials
    belong to a whole registry, not to a repository.
    """
    value = text.strip()
    lowered = value.lower()
    for scheme in ("https://", "http://"):
        if lowered.startswith(scheme):
            value = value[len(scheme) :]
            break
    value = value.rstrip("/")
    if not _REGISTRY.match(value):
        raise ArgumentProblem(
            f"{text!r}: expected a registry as HOST[:PORT], e.g. 127.0.0.1:5000 or docker.io"
        )
    return value
