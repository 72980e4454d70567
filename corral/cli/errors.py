"""The one exception type the command layer reports as ``error: …`` (exit 1).

It lives alone in a tiny module so the app can catch it without importing
httpx at startup: :class:`corral.cli.client.ClientError` and
:class:`corral.cli.config.ConfigError` derive from it.
"""

from __future__ import annotations


class CLIError(Exception):
    """An operation failed; ``str()`` is the message for the user."""
