"""Domain types: dict round trips (what the server sends and the agent reports) and the spec hash."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest

from corral.model import (DesiredSet, HealthcheckSpec, InstanceSpec, InstanceStatus, PortSpec, RestartPolicy,
                          VolumeSpec)

BASE: dict[str, Any] = {"id": "i1", "name": "web.1.i1", "service": "web", "slot": 1, "image": "127.0.0.1:5000/app:1"}

FULL = InstanceSpec(
    **BASE, command=["serve"], env={"A": "1"}, ports=[PortSpec(8080, 80)], restart=RestartPolicy("on-failure", 3, 2.0),
    labels={"k": "v"}, gpus=1, entrypoint=["/bin/sh", "-c"], working_dir="/srv", user="1000:1000", hostname="web-1",
    volumes=[VolumeSpec("volume", "data", "/data"), VolumeSpec("bind", "/etc/app", "/conf", read_only=True)],
    healthcheck=HealthcheckSpec(["CMD-SHELL", "test -f /tmp/ok"], interval=1.5, timeout=2.0, start_period=0.5,
                                retries=3),
    stop_grace_period=12.5, cpu_limit=0.5, memory_limit=64 << 20, registry_auth={"username": "u"})

# spec_hash() of BASE as the agent computed it before any optional field was added: containers that
# carry it in their io.corral.spec label must not be recreated by an upgraded agent.
BASE_HASH = "7d03f8bfcee2a1da"


def test_an_instance_spec_round_trips_through_json() -> None:
    wire = json.loads(json.dumps(FULL.to_dict()))
    assert InstanceSpec.from_dict(wire) == FULL
    assert DesiredSet.from_dict(json.loads(json.dumps(DesiredSet(7, [FULL]).to_dict()))) == DesiredSet(7, [FULL])


def test_to_dict_is_asdict_without_sharing_anything_with_the_spec() -> None:
    body = FULL.to_dict()
    assert body == dataclasses.asdict(FULL)
    body["env"]["A"], body["volumes"][0]["target"], body["command"][0] = "2", "/x", "x"
    assert FULL.env == {"A": "1"} and FULL.volumes[0].target == "/data" and FULL.command == ["serve"]


def test_an_older_server_may_leave_the_new_fields_out() -> None:
    spec = InstanceSpec.from_dict(dict(BASE))
    assert spec == InstanceSpec(**BASE)
    assert (spec.entrypoint, spec.volumes, spec.healthcheck, spec.stop_grace_period) == (None, [], None, None)


@pytest.mark.parametrize("hc", [HealthcheckSpec(), HealthcheckSpec(disable=True), HealthcheckSpec(["NONE"]),
                                HealthcheckSpec(["CMD", "true"], retries=0)])
def test_healthchecks_round_trip(hc: HealthcheckSpec) -> None:
    spec = InstanceSpec(**BASE, healthcheck=hc)
    assert InstanceSpec.from_dict(json.loads(json.dumps(spec.to_dict()))).healthcheck == hc


def test_an_empty_entrypoint_is_not_no_entrypoint() -> None:
    cleared = InstanceSpec(**BASE, entrypoint=[])
    assert InstanceSpec.from_dict(cleared.to_dict()).entrypoint == []
    assert cleared.spec_hash() != InstanceSpec(**BASE).spec_hash()


def test_unknown_mount_types_are_refused() -> None:
    with pytest.raises(ValueError, match="tmpfs"):
        InstanceSpec.from_dict({**BASE, "volumes": [{"type": "tmpfs", "target": "/t"}]})


def test_the_hash_of_a_spec_without_the_new_fields_is_unchanged() -> None:
    assert InstanceSpec(**BASE).spec_hash() == BASE_HASH
    defaults = InstanceSpec(**BASE, gpus=0, entrypoint=None, working_dir=None, user=None, hostname=None, volumes=[],
                            healthcheck=None, stop_grace_period=None, cpu_limit=None, memory_limit=None)
    assert defaults.spec_hash() == BASE_HASH


@pytest.mark.parametrize("change", [
    {"entrypoint": ["sh"]}, {"working_dir": "/srv"}, {"user": "nobody"}, {"hostname": "h"},
    {"volumes": [VolumeSpec("volume", "data", "/data")]},
    {"volumes": [VolumeSpec("volume", "data", "/data", read_only=True)]},
    {"healthcheck": HealthcheckSpec()}, {"healthcheck": HealthcheckSpec(interval=1.0)},
    {"stop_grace_period": 10.0}, {"cpu_limit": 1.0}, {"memory_limit": 1 << 30}, {"gpus": 1},
])
def test_every_new_field_changes_the_hash(change: dict[str, Any]) -> None:
    assert InstanceSpec(**BASE, **change).spec_hash() != BASE_HASH


def test_what_the_agent_applies_itself_leaves_the_hash_alone() -> None:
    assert InstanceSpec(**BASE, restart=RestartPolicy("none"), registry_auth={"u": "p"}).spec_hash() == BASE_HASH


def test_instance_status_round_trips_with_health() -> None:
    st = InstanceStatus("i1", "running", 12.5, "c1", None, "", 2, "healthy")
    assert InstanceStatus.from_dict(json.loads(json.dumps(st.to_dict()))) == st


def test_instance_status_without_health_looks_as_it_did() -> None:
    st = InstanceStatus("i1", "exited", 12.5, "c1", 3, "boom", 1)
    assert st.to_dict() == {"instance_id": "i1", "state": "exited", "since": 12.5, "container_id": "c1",
                            "exit_code": 3, "error": "boom", "restarts": 1}  # what older servers accept
    assert InstanceStatus.from_dict(st.to_dict()) == st
    assert InstanceStatus.from_dict({"instance_id": "i1", "state": "running", "since": 1}).health == ""
