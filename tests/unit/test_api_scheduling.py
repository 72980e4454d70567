"""The scheduler through the API: reservations, GPUs, max per node, (anti-)affinity, binpack, validation."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.unit.api_harness import Harness, harness

IMG = "127.0.0.1:5000/corral/busybox:1"
GPU = {"index": 0, "name": "fake GPU (test)", "uuid": "GPU-0", "memory_bytes": 8 << 30}


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    with harness(tmp_path) as hh:
        yield hh


def board(h: Harness, name: str, cpus: float = 4, memory: int = 4 << 30, **facts: Any) -> str:
    return h.register(name, "linux/amd64", cpus=cpus, memory_bytes=memory, **facts)[0]


def create(h: Harness, **body: Any) -> Any:
    return h.client.post("/api/v1/services", json={"image": IMG, **body}, headers=h.as_admin())


def placed(h: Harness, name: str) -> dict[str, int]:
    body = h.client.get(f"/api/v1/services/{name}", headers=h.as_admin()).json()
    out: dict[str, int] = {}
    for inst in body["instances"]:
        out[inst["host_name"]] = out.get(inst["host_name"], 0) + 1
    return out


def test_reservations_fill_hosts_and_explain_the_rest(h: Harness) -> None:
    board(h, "a", cpus=2)
    board(h, "b", cpus=2)
    r = create(h, name="web", replicas=5, reservations={"cpu": 1})
    assert r.status_code == 201, r.text
    assert placed(h, "web") == {"a": 2, "b": 2}
    reason = r.json()["pending_reason"]
    assert reason and "lack resources" in reason and "cpu" in reason


def test_gpu_reservation_lands_on_the_gpu_host_only(h: Harness) -> None:
    board(h, "cpu-only")
    board(h, "gpu-box", gpus=[GPU])  # a host given a fake GPU through its facts (named as such)
    r = create(h, name="train", replicas=2, reservations={"generic": {"nvidia.com/gpu": 1}})
    assert r.status_code == 201, r.text
    assert placed(h, "train") == {"gpu-box": 1}
    assert "nvidia.com/gpu" in r.json()["pending_reason"]


def test_reservation_no_host_could_ever_hold_is_refused_at_submit(h: Harness) -> None:
    board(h, "a", cpus=2)
    before = h.snapshot()
    r = create(h, name="huge", reservations={"cpu": 64})
    assert r.status_code == 422 and "cpu" in r.text
    assert h.snapshot() == before


def test_contradictory_constraints_are_refused(h: Harness) -> None:
    board(h, "a")
    before = h.snapshot()
    r = create(h, name="x", constraints=["node.labels.zone==a", "node.labels.zone==b"])
    assert r.status_code == 422 and "zone" in r.text
    r = create(h, name="y", affinities=["service=~db"])
    assert r.status_code == 422
    assert h.snapshot() == before


def test_max_replicas_per_node(h: Harness) -> None:
    board(h, "a")
    board(h, "b")
    r = create(h, name="web", replicas=3, max_replicas_per_node=1)
    assert placed(h, "web") == {"a": 1, "b": 1}
    assert "max_replicas_per_node=1" in r.json()["pending_reason"]


def test_hard_anti_affinity_to_another_service(h: Harness) -> None:
    board(h, "a")
    board(h, "b")
    create(h, name="db", constraints=["node.hostname==a"])
    r = create(h, name="web", replicas=2, affinities=["service!=db"])
    assert r.status_code == 201, r.text
    assert placed(h, "web") == {"b": 2}


def test_binpack_fills_one_host_first(h: Harness) -> None:
    board(h, "a", cpus=4)
    board(h, "b", cpus=4)
    create(h, name="packed", replicas=4, reservations={"cpu": 1}, strategy="binpack")
    assert sorted(placed(h, "packed").values()) == [4]


def test_ports_in_use_by_another_service(h: Harness) -> None:
    board(h, "a")
    board(h, "b")
    host_port = [{"published": 8080, "target": 80, "mode": "host"}]
    create(h, name="one", ports=host_port, constraints=["node.hostname==a"])
    create(h, name="two", replicas=2, ports=host_port)
    assert placed(h, "two") == {"b": 1}


def test_an_ingress_port_belongs_to_one_service(h: Harness) -> None:
    board(h, "a")
    assert create(h, name="one", ports=[{"published": 8080, "target": 80}]).status_code == 201
    r = create(h, name="two", ports=[{"published": 8080, "target": 80, "mode": "host"}])
    assert r.status_code == 422 and "8080/tcp is already published by service one" in r.text
    r = create(h, name="three", ports=[{"published": 8081, "target": 80}, {"published": 8081, "target": 81}])
    assert r.status_code == 422
    r = create(h, name="four", ports=[{"published": 53, "target": 53, "protocol": "udp", "mode": "ingress"}])
    assert r.status_code == 422 and "ingress publishes tcp only" in r.text


def test_image_locality_prefers_the_host_that_holds_the_build(h: Harness) -> None:
    """Edge links are slow: a host whose agent reports the platform's digest wins a tie."""
    from corral.images import parse_reference
    from tests.unit.fake_images import FakeImages

    digest = FakeImages().resolve(IMG).platforms[0]  # linux/amd64
    assert digest.platform == "linux/amd64" and parse_reference(IMG)
    for name in ("a", "b", "c"):
        board(h, name, images=[digest.digest] if name == "c" else ["sha256:" + "0" * 64])
    assert create(h, name="web", replicas=1).status_code == 201
    assert placed(h, "web") == {"c": 1}


def test_engine_labels_from_facts_feed_constraints(h: Harness) -> None:
    board(h, "ssd", engine_labels={"storage": "ssd"})
    board(h, "hdd", engine_labels={"storage": "hdd"})
    assert create(h, name="db", replicas=2, constraints=["engine.labels.storage==ssd"]).status_code == 201
    assert placed(h, "db") == {"ssd": 2}
