"""Image references, parsed and normalised the way Docker does it.

``busybox`` means ``docker.io/library/busybox:latest``; ``user/app`` means
``docker.io/user/app:latest``; the first path component is a registry only when it looks
like a host (has a ``.`` or a ``:``, is ``localhost``, or has an uppercase letter), so
``127.0.0.1:5000/corral/busybox:1``, ``[::1]:5000/x`` and ``localhost/x`` name their
registries. ``index.docker.io`` is an alias of ``docker.io``. Docker Hub's API lives on
``registry-1.docker.io``: that is :attr:`Reference.endpoint`, never the familiar name.

The grammar is distribution/reference's (path components ``[a-z0-9]+`` joined by ``.``,
``_``, ``__`` or dashes; tags ``[\\w][\\w.-]{0,127}``; a name of at most 255 characters;
no 64-hex repository names) with one tightening: digests must use a known algorithm with
the right length (sha256/sha384/sha512), because Distribution answers a malformed digest
with a 500 that a client would otherwise retry.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from corral.images.errors import InvalidReference

DOCKER_HUB = "docker.io"
DOCKER_HUB_API = "registry-1.docker.io"
_LEGACY_HUB = "index.docker.io"
_OFFICIAL_PREFIX = "library/"
DEFAULT_TAG = "latest"

_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_PATH = re.compile(rf"{_COMPONENT}(?:/{_COMPONENT})*")
_DOMAIN_LABEL = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = re.compile(
    rf"(?:{_DOMAIN_LABEL}(?:\.{_DOMAIN_LABEL})*|\[[a-fA-F0-9:]+\])(?::(?P<port>[0-9]+))?")
_TAG = re.compile(r"[\w][\w.-]{0,127}", re.ASCII)
_HEX64 = re.compile(r"[a-f0-9]{64}")
_DIGEST_HEX_LEN = {"sha256": 64, "sha384": 96, "sha512": 128}
_MAX_NAME = 255


def validate_digest(digest: str) -> str:
    """Return ``digest`` if it is ``algorithm:hex`` with a known algorithm; else ValueError."""
    algorithm, sep, hexpart = digest.partition(":")
    if not sep or algorithm not in _DIGEST_HEX_LEN:
        raise ValueError(f"invalid digest {digest!r}: expected sha256:<64 hex digits>")
    if len(hexpart) != _DIGEST_HEX_LEN[algorithm] or not re.fullmatch(r"[a-f0-9]+", hexpart):
        raise ValueError(f"invalid digest {digest!r}: {algorithm} needs "
                         f"{_DIGEST_HEX_LEN[algorithm]} lowercase hex digits")
    return digest


@dataclass(frozen=True)
class Reference:
    """A normalised reference. ``tag`` is ``latest`` unless a digest was given without one."""

    registry: str
    repository: str
    tag: str = ""
    digest: str = ""

    @classmethod
    def parse(cls, text: str) -> Reference:
        return parse_reference(text)

    @property
    def endpoint(self) -> str:
        """``host[:port]`` to dial: Docker Hub's API host for docker.io, else the registry."""
        return DOCKER_HUB_API if self.registry == DOCKER_HUB else self.registry

    @property
    def name(self) -> str:
        """Familiar name as Docker prints it: ``busybox``, ``user/app``, ``host:5000/a/b``.

        Unlike Docker, a Hub repository whose first component looks like a host keeps its
        ``docker.io/`` so that the name parses back to the same repository.
        """
        if self.registry != DOCKER_HUB:
            return f"{self.registry}/{self.repository}"
        first, _, rest = self.repository.partition("/")
        if first == _OFFICIAL_PREFIX.rstrip("/") and "/" not in rest:
            return rest
        if "." in first or first == "localhost":
            return f"{DOCKER_HUB}/{self.repository}"
        return self.repository

    @property
    def manifest_reference(self) -> str:
        """What goes after ``/manifests/``: the digest when there is one, else the tag."""
        return self.digest or self.tag

    def familiar(self) -> str:
        """``busybox:latest``, ``host:5000/a/b@sha256:...``."""
        return self.name + self._suffix()

    def canonical(self) -> str:
        """``docker.io/library/busybox:latest``, ``host:5000/a/b:1@sha256:...``."""
        return f"{self.registry}/{self.repository}{self._suffix()}"

    def with_digest(self, digest: str) -> str:
        """``registry/repo@digest`` in a form Docker Engine pulls (docker.io kept explicit)."""
        try:
            validate_digest(digest)
        except ValueError as exc:
            raise InvalidReference(self.canonical(), str(exc)) from None
        return f"{self.registry}/{self.repository}@{digest}"

    def _suffix(self) -> str:
        return (f":{self.tag}" if self.tag else "") + (f"@{self.digest}" if self.digest else "")

    def __str__(self) -> str:
        return self.canonical()


def _split_registry(name: str) -> tuple[str, str]:
    first, sep, rest = name.partition("/")
    looks_like_host = (any(c in first for c in ".:[") or first == "localhost"
                       or first != first.lower())
    if not sep or not looks_like_host:
        registry, repository = DOCKER_HUB, name
    else:
        registry, repository = first, rest
    if registry == _LEGACY_HUB:
        registry = DOCKER_HUB
    if registry == DOCKER_HUB and "/" not in repository:
        repository = _OFFICIAL_PREFIX + repository
    return registry, repository


def parse_reference(text: str) -> Reference:
    """Parse and normalise ``text``; raise InvalidReference (naming it) if it is malformed."""
    if not isinstance(text, str) or not text:
        raise InvalidReference(str(text), "empty reference")
    if any(c.isspace() for c in text):
        raise InvalidReference(text, "contains whitespace")
    if _HEX64.fullmatch(text):
        raise InvalidReference(text, "a 64-hex string is an image ID, not a repository name")

    remainder, at, digest = text.partition("@")
    if at:
        try:
            validate_digest(digest)
        except ValueError as exc:
            raise InvalidReference(text, str(exc)) from None
    name, tag = remainder, ""
    colon = remainder.rfind(":")
    if colon > remainder.rfind("/"):
        name, tag = remainder[:colon], remainder[colon + 1:]
        if not _TAG.fullmatch(tag):
            raise InvalidReference(text, f"invalid tag {tag!r}: letters, digits, '_', '.', '-'"
                                         " (not first), at most 128")
    if not name:
        raise InvalidReference(text, "no repository name")

    registry, repository = _split_registry(name)
    if registry != DOCKER_HUB:
        match = _DOMAIN.fullmatch(registry)
        if not match:
            raise InvalidReference(text, f"invalid registry host {registry!r}")
        port = match.group("port")
        if port is not None and not 0 < int(port) < 65536:
            raise InvalidReference(text, f"invalid port in registry {registry!r}")
    if repository != repository.lower():
        raise InvalidReference(text, "repository name must be lowercase")
    if not _PATH.fullmatch(repository):
        raise InvalidReference(text, f"invalid repository name {repository!r}: lowercase "
                                     "letters and digits, separated by '.', '_', '__', '-' or '/'")
    if len(registry) + 1 + len(repository) > _MAX_NAME:
        raise InvalidReference(text, f"repository name longer than {_MAX_NAME} characters")
    if not tag and not digest:
        tag = DEFAULT_TAG
    return Reference(registry, repository, tag, digest)
