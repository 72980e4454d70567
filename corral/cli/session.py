"""One CLI run's connection to the server, and the seams tests use.

:func:`open_client` resolves the login (environment over config file, see
:mod:`corral.cli.config`), pins the cluster CA against the token's
fingerprint (cached in memory for the process) and returns a ready
:class:`~corral.cli.client.CorralClient`.

:data:`hooks` is the only process-wide mutable state: by default it is empty
and the real network is used.  Tests set ``hooks.transport`` (an
``httpx.MockTransport``) and ``hooks.fetch_ca`` (a function ``url -> PEM``)
to run every command against a fake server.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from corral.cli import config

if TYPE_CHECKING:
    from corral.cli.client import CorralClient


@dataclass
class Hooks:
    transport: Any = None  # httpx.BaseTransport; Any keeps httpx out of startup
    fetch_ca: Callable[[str], str] | None = None


hooks = Hooks()


def open_client(cfg: config.Config | None = None) -> CorralClient:
    """A client for the configured server (raises ConfigError when not logged in)."""
    cfg = cfg or config.resolve()  # before importing httpx: "not logged in" stays fast
    from corral.cli.client import CorralClient

    return CorralClient.connect(
        cfg.url, cfg.token, ca_pem=cfg.ca_pem, transport=hooks.transport, fetch_ca=hooks.fetch_ca
    )


def make_client(url: str, token: str, ca_pem: str | None) -> CorralClient:
    """A client trusting an already pinned CA (``corral login`` uses it)."""
    from corral.cli.client import CorralClient

    return CorralClient(url, token, ca_pem=ca_pem, transport=hooks.transport)
