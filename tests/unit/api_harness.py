"""An in-process server (real SQLite store, real FastAPI app) for API tests."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from corral.server.app import create_app
from corral.server.main import bootstrap, build_parser
from corral.server.state import ServerState
from tests.unit.fake_images import FakeImages


@dataclass
class Harness:
    client: TestClient
    state: ServerState
    admin: str
    join: str

    def as_admin(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin}"}

    def register(self, name: str, platform: str = "linux/amd64", labels: dict[str, str] | None = None,
                 **more_facts: Any) -> tuple[str, str]:
        facts: dict[str, Any] = {"hostname": name, "platform": platform, "engine_platform": platform, **more_facts}
        r = self.client.post("/api/v1/agent/register", json={"facts": facts, "labels": labels or {}},
                             headers={"Authorization": f"Bearer {self.join}"})
        assert r.status_code == 201, r.text
        self.state.services.reconcile_all()  # what the server's loop does at once after a join
        body = r.json()
        return body["host_id"], body["credential"]

    def snapshot(self) -> dict[str, Any]:
        """Everything the store holds that a request could change."""
        st = self.state.store
        return {
            "hosts": [(h.id, h.name, h.state, h.labels, h.revision) for h in st.list_hosts()],
            "services": [(s.name, s.replicas, s.spec) for s in st.list_services()],
            "instances": [(i.id, i.host_id, i.slot, i.state) for i in st.list_instances()],
        }


@contextmanager
def harness(tmp: Path, *extra: str) -> Iterator[Harness]:
    args: argparse.Namespace = build_parser().parse_args(["--data-dir", str(tmp), "--listen", "127.0.0.1:1", *extra])
    state, _pki = bootstrap(args, images=FakeImages())
    app = create_app(state, reconcile_every=3600)
    with TestClient(app) as client:
        admin = (tmp / "admin.token").read_text().strip()
        join = client.get("/api/v1/tokens/join", headers={"Authorization": f"Bearer {admin}"}).json()["token"]
        yield Harness(client, state, admin, join)
