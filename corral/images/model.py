"""What a resolved image is: per platform, the manifest digest to pull.

Frozen dataclasses, JSON round-trippable with ``to_dict()``/``from_dict()`` so the server
can store a resolution beside a service and schedule from it without asking the registry
again. Platform strings are always normalised with :class:`corral.platforms.Platform`
(``linux/arm64/v8`` is stored as ``linux/arm64``, ``linux/arm`` as ``linux/arm/v7``).

``size`` is the size in bytes of that platform's manifest (the OCI descriptor size), not
the image's download size: knowing the latter would cost one more request per platform.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from corral.platforms import Platform


@dataclass(frozen=True)
class PlatformImage:
    """One runnable platform of an image and the manifest that Docker pulls for it."""

    platform: str
    digest: str
    size: int
    media_type: str
    os_version: str = ""
    os_features: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["os_features"] = list(self.os_features)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PlatformImage:
        return cls(platform=str(data["platform"]), digest=str(data["digest"]),
                   size=int(data["size"]), media_type=str(data["media_type"]),
                   os_version=str(data.get("os_version", "")),
                   os_features=tuple(str(f) for f in data.get("os_features", ())))


@dataclass(frozen=True)
class ResolvedImage:
    """A reference resolved against its registry.

    ``reference`` is the canonical form of what was asked (``docker.io/library/busybox:latest``);
    ``digest`` and ``media_type`` are those of the document the reference names: an image
    index / manifest list, or a single image manifest (then ``platforms`` has one entry
    whose digest is that same manifest). ``tag`` is empty for a digest-only reference.
    """

    reference: str
    registry: str
    repository: str
    tag: str
    digest: str
    media_type: str
    platforms: tuple[PlatformImage, ...]

    def platform_strings(self) -> tuple[str, ...]:
        """The platforms, in the registry's order, each once: ``("linux/amd64", ...)``."""
        return tuple(dict.fromkeys(p.platform for p in self.platforms))

    def for_platform(self, platform: str | Platform) -> PlatformImage | None:
        """The first entry for ``platform`` (normalised before comparing), or None."""
        wanted = str(Platform.parse(str(platform)))
        return next((p for p in self.platforms if p.platform == wanted), None)

    def pull_reference(self, platform: str | Platform) -> str | None:
        """``registry/repo@sha256:...`` of ``platform``'s manifest, for ``docker pull``."""
        entry = self.for_platform(platform)
        return f"{self.registry}/{self.repository}@{entry.digest}" if entry else None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["platforms"] = [p.to_dict() for p in self.platforms]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ResolvedImage:
        return cls(reference=str(data["reference"]), registry=str(data["registry"]),
                   repository=str(data["repository"]), tag=str(data.get("tag", "")),
                   digest=str(data["digest"]), media_type=str(data["media_type"]),
                   platforms=tuple(PlatformImage.from_dict(p) for p in data["platforms"]))
