"""The agent's state directory: its credential and the last desired set.

Both are written atomically (temp file, fsync, rename, fsync of the directory)
so a power cut on an edge board leaves either the old or the new file, never a
torn one.  With the desired set on disk, an agent that restarts while the
server is unreachable keeps running exactly what it had.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from corral.model import DesiredSet


@dataclass(frozen=True)
class Credential:
    server: str
    host_id: str
    token: str
    ca_pem: str


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class StateDir:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, 0o700)

    def _read(self, name: str) -> dict[str, Any] | None:
        try:
            return json.loads((self.path / name).read_text())  # type: ignore[no-any-return]
        except FileNotFoundError:
            return None

    def credential(self) -> Credential | None:
        data = self._read("credential.json")
        return Credential(**data) if data else None

    def save_credential(self, cred: Credential) -> None:
        write_atomic(self.path / "credential.json", json.dumps(asdict(cred), indent=2).encode())

    def desired(self) -> DesiredSet | None:
        data = self._read("desired.json")
        return DesiredSet.from_dict(data) if data else None

    def save_desired(self, desired: DesiredSet | dict[str, Any]) -> None:
        """Keep a desired set: as parsed, or as the server sent it (a dict in DesiredSet.to_dict's
        form, written as it is: no second conversion of every spec for each new set)."""
        data = desired if isinstance(desired, dict) else desired.to_dict()
        write_atomic(self.path / "desired.json", json.dumps(data).encode())
