"""A registry stand-in for API tests: no network, platforms chosen by the reference's name."""

from __future__ import annotations

import hashlib

from corral.images import ImageNotFound, PlatformImage, RegistryUnreachable, ResolvedImage, parse_reference

MULTI = ("linux/amd64", "linux/arm64", "linux/arm/v7")
INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def _digest(text: str) -> str:
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()


class FakeImages:
    """`*arm64only*` offers linux/arm64; `*amd64only*` linux/amd64; `*missing*` is not found;
    `*down*` sits on an unreachable registry; anything else offers MULTI."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.forgotten: list[str] = []

    def resolve(self, ref: str) -> ResolvedImage:
        self.calls.append(ref)
        r = parse_reference(ref)
        if "missing" in r.repository:
            raise ImageNotFound(ref, f"manifest unknown: {r.canonical()} not found")
        if "down" in r.repository:
            raise RegistryUnreachable(ref, f"cannot connect to {r.registry}: connection refused")
        platforms = MULTI
        if "arm64only" in r.repository:
            platforms = ("linux/arm64",)
        elif "amd64only" in r.repository:
            platforms = ("linux/amd64",)
        entries = tuple(PlatformImage(p, _digest(ref + p), 500, MANIFEST) for p in platforms)
        return ResolvedImage(reference=r.canonical(), registry=r.registry, repository=r.repository, tag=r.tag,
                             digest=_digest(ref), media_type=INDEX, platforms=entries)

    def image_sizes(self, resolved: ResolvedImage) -> dict[str, int]:
        return {p.platform: 1_000_000 + i for i, p in enumerate(resolved.platforms)}

    def forget(self, registry: str) -> None:
        self.forgotten.append(registry)
