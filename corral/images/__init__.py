"""Image references and the OCI registry client: ``RegistryClient().resolve(ref)``.

Server side only (httpx); the agent never imports this package.
"""

from corral.images.client import RegistryClient
from corral.images.errors import (
    ImageError,
    ImageNotFound,
    InvalidReference,
    NoUsablePlatforms,
    RegistryAuthError,
    RegistryProtocolError,
    RegistryUnavailable,
    RegistryUnreachable,
    UnsupportedMediaType,
)
from corral.images.model import PlatformImage, ResolvedImage
from corral.images.reference import Reference, parse_reference

__all__ = [
    "ImageError",
    "ImageNotFound",
    "InvalidReference",
    "NoUsablePlatforms",
    "PlatformImage",
    "Reference",
    "RegistryAuthError",
    "RegistryClient",
    "RegistryProtocolError",
    "RegistryUnavailable",
    "RegistryUnreachable",
    "ResolvedImage",
    "UnsupportedMediaType",
    "parse_reference",
]
