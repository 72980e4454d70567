"""WireGuard keys as text: one check, used by the server (reports) and the agent (its own
keys, its peers').  Pure and stdlib-only, so both sides may import it."""

from __future__ import annotations

import base64
import binascii


def key_problem(key: object, what: str = "public key") -> str | None:
    """What is wrong with ``key`` as a WireGuard key (canonical base64 of exactly 32 bytes,
    44 characters), or None if nothing is.  The message never repeats the key: it may be a
    private one pasted in the wrong place."""
    if not isinstance(key, str):
        return f"malformed WireGuard {what}: expected a string, got {type(key).__name__}"
    if len(key) != 44:
        return (f"malformed WireGuard {what}: expected 44 characters of base64 (32 bytes), "
                f"got {len(key)} characters")
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        return f"malformed WireGuard {what}: not valid base64"
    if len(raw) != 32:
        return f"malformed WireGuard {what}: decodes to {len(raw)} bytes, not 32"
    if base64.b64encode(raw).decode() != key:
        return f"malformed WireGuard {what}: not canonical base64"
    return None
