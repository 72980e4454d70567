"""Where the CLI finds its server, and the precedence between sources.

A login is three things: the server URL, the admin token, and the cluster CA
that was pinned against the token's fingerprint when the user logged in.  They
live in one JSON file, ``~/.config/corral/config.json`` by default
(``$XDG_CONFIG_HOME`` is honoured; ``CORRAL_CONFIG`` names another file),
written atomically with mode 0600 because it holds a secret.

Precedence, field by field: ``CORRAL_URL`` and ``CORRAL_TOKEN`` override the
file.  The CA stored in the file is only ever reused when its fingerprint is
the one the (possibly overriding) token pins; otherwise the caller fetches the
CA again and pins it (see :func:`corral.cli.client.pin_ca`).  Stdlib only.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from corral.cli.errors import CLIError

ENV_CONFIG = "CORRAL_CONFIG"
ENV_URL = "CORRAL_URL"
ENV_TOKEN = "CORRAL_TOKEN"

NOT_LOGGED_IN = (
    "not logged in: run `corral login URL --token TOKEN` or set CORRAL_URL and CORRAL_TOKEN"
)


class ConfigError(CLIError):
    """The CLI has no usable login, or the config file is broken."""


@dataclass(frozen=True)
class Config:
    """One login: a server, an admin token and (for https) the pinned CA."""

    url: str
    token: str
    ca_pem: str | None = None

    def to_dict(self) -> dict[str, str | None]:
        return {"url": self.url, "token": self.token, "ca_pem": self.ca_pem}


def config_path(env: Mapping[str, str] | None = None) -> Path:
    """The config file: ``$CORRAL_CONFIG``, else ``$XDG_CONFIG_HOME/corral/config.json``."""
    env = os.environ if env is None else env
    if env.get(ENV_CONFIG):
        return Path(env[ENV_CONFIG]).expanduser()
    base = env.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base).expanduser() / "corral" / "config.json"


def normalize_url(url: str) -> str:
    """Strip whitespace and trailing slashes; require an http(s) scheme."""
    url = url.strip().rstrip("/")
    if not url.startswith(("https://", "http://")):
        raise ConfigError(f"invalid server URL {url!r}: expected https://HOST:PORT")
    return url


def load_file(path: Path | None = None) -> Config | None:
    """The login stored in the config file, or None if there is no file."""
    path = path or config_path()
    try:
        raw = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        data = json.loads(raw)
        return Config(str(data["url"]), str(data["token"]), data.get("ca_pem") or None)
    except (ValueError, KeyError, TypeError) as exc:
        raise ConfigError(
            f"config file {path} is damaged; run `corral login` again ({exc.__class__.__name__})"
        ) from exc


def save(config: Config, path: Path | None = None) -> Path:
    """Write the login atomically, readable by the owner only (0600)."""
    path = path or config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(prefix=".config-", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(config.to_dict(), fh, indent=2)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def resolve(env: Mapping[str, str] | None = None, path: Path | None = None) -> Config:
    """The effective login: environment over file, field by field.

    The stored CA is carried along only when the URL is the file's own; the
    caller still checks it against the token's pin before trusting it.
    """
    env = os.environ if env is None else env
    stored = load_file(path or config_path(env))
    url = env.get(ENV_URL) or (stored.url if stored else "")
    token = env.get(ENV_TOKEN) or (stored.token if stored else "")
    if not url or not token:
        raise ConfigError(NOT_LOGGED_IN)
    url = normalize_url(url)
    ca_pem = stored.ca_pem if stored and normalize_url(stored.url) == url else None
    return Config(url, token.strip(), ca_pem)
