"""Why an image could not be resolved, as an exception hierarchy rooted at ``ImageError``.

Every error names the image exactly as it was asked for (``.image``), so the message can go
straight to a user or into a service's ``pending_reason``. ``.retryable`` tells the server
whether waiting and asking again can help: an unreachable or overloaded registry may come
back, a missing tag or refused credentials will not until someone changes something.

    ImageError
    ├── InvalidReference        the string is not an image reference        (also ValueError)
    ├── ImageNotFound           404: unknown repository, tag or digest
    ├── RegistryAuthError       401/403, wrong or missing credentials
    ├── RegistryUnreachable     connection refused, DNS, timeout (after retries)  retryable
    ├── RegistryUnavailable     5xx / 429 (after retries)                         retryable
    ├── RegistryProtocolError   an answer that makes no sense: bad JSON, digest mismatch
    ├── UnsupportedMediaType    a manifest (or config) type we cannot run
    └── NoUsablePlatforms       only attestations / unknown platforms in it
"""

from __future__ import annotations


class ImageError(Exception):
    """An image could not be resolved; ``str()`` names the image and says why."""

    retryable: bool = False

    def __init__(self, image: str, detail: str, *, retryable: bool | None = None) -> None:
        self.image = image
        self.detail = detail
        if retryable is not None:
            self.retryable = retryable
        super().__init__(f"image {image!r}: {detail}")


class InvalidReference(ImageError, ValueError):
    """Not a valid image reference (bad characters, uppercase repository, bad digest...)."""

    def __init__(self, image: str, detail: str) -> None:
        super().__init__(image, f"invalid reference: {detail}")


class ImageNotFound(ImageError):
    """The registry does not know the repository, the tag or the digest."""


class RegistryAuthError(ImageError):
    """The registry wants credentials we do not have, or refused the ones we sent."""


class RegistryUnreachable(ImageError):
    """No HTTP answer at all (refused, reset, timed out, TLS failure) after the retries."""

    retryable = True


class RegistryUnavailable(ImageError):
    """The registry kept answering 5xx or 429 Too Many Requests after the retries."""

    retryable = True


class RegistryProtocolError(ImageError):
    """The registry answered something that is not a valid distribution API response."""


class UnsupportedMediaType(ImageError):
    """A manifest or image config media type that Corral cannot run (schema 1, artifacts)."""


class NoUsablePlatforms(ImageError):
    """The image lists no runnable platform: every entry is unknown/unknown or attestation."""
