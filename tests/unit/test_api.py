"""The HTTP API on a real SQLite store: auth rules, bad input, placement."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.api_harness import Harness, harness


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    with harness(tmp_path) as hh:
        yield hh


def test_ca_is_pinned_by_tokens(h: Harness) -> None:
    from corral import tokens

    ca = h.client.get("/api/v1/ca").text
    assert tokens.parse(h.admin).ident == tokens.fingerprint(ca)
    assert tokens.parse(h.join).ident == tokens.fingerprint(ca)
    assert h.client.get("/api/v1/info").json()["ca_fingerprint"] == tokens.fingerprint(ca)


@pytest.mark.parametrize("header", [None, "Bearer", "Bearer nonsense", "Basic abc",
                                    "Bearer CORRAL-A1-wrongfingerprint-0123456789abcdef"])
def test_bad_tokens_are_401_and_change_nothing(h: Harness, header: str | None) -> None:
    before = h.snapshot()
    headers = {"Authorization": header} if header else {}
    assert h.client.get("/api/v1/hosts", headers=headers).status_code == 401
    r = h.client.post("/api/v1/services", json={"name": "x", "image": "busybox"}, headers=headers)
    assert r.status_code == 401
    assert h.snapshot() == before


def test_admin_secret_must_match(h: Harness) -> None:
    from corral import tokens

    t = tokens.parse(h.admin)
    forged = str(tokens.Token(t.kind, t.ident, "0" * 32))
    assert h.client.get("/api/v1/hosts", headers={"Authorization": f"Bearer {forged}"}).status_code == 401


def test_host_credential_scope(h: Harness) -> None:
    a, cred_a = h.register("a")
    b, _cred_b = h.register("b")
    h.client.post("/api/v1/services", json={"name": "web", "image": "busybox", "replicas": 2},
                  headers=h.as_admin())
    as_a = {"Authorization": f"Bearer {cred_a}"}
    # its own desired set: yes
    r = h.client.get("/api/v1/agent/channel?revision=-1&wait=0", headers=as_a)
    assert r.status_code == 200
    assert all(i["service"] == "web" for i in r.json()["desired"]["instances"])
    assert len(r.json()["desired"]["instances"]) == 1
    # admin endpoints, another host's set: no
    before = h.snapshot()
    assert h.client.get("/api/v1/hosts", headers=as_a).status_code == 403
    assert h.client.get(f"/api/v1/hosts/{b}/desired", headers=as_a).status_code == 403
    assert h.client.delete("/api/v1/services/web", headers=as_a).status_code == 403
    assert h.client.post("/api/v1/agent/register", json={"facts": {}}, headers=as_a).status_code == 401
    # it can only write statuses of its own instances: b's instance is untouched
    b_inst = [i for i in h.state.store.list_instances() if i.host_id == b][0]
    r = h.client.post("/api/v1/agent/status", headers=as_a, json={
        "instances": [{"instance_id": b_inst.id, "state": "exited", "since": 1.0, "exit_code": 3}]})
    assert r.status_code == 200
    assert h.snapshot()["instances"] == before["instances"]


def test_admin_token_cannot_act_as_agent(h: Harness) -> None:
    assert h.client.get("/api/v1/agent/channel?wait=0", headers=h.as_admin()).status_code == 403


def test_register_with_bad_labels_is_refused(h: Harness) -> None:
    before = h.snapshot()
    r = h.client.post("/api/v1/agent/register", json={"facts": {}, "labels": {"bad key!": "x"}},
                      headers={"Authorization": f"Bearer {h.join}"})
    assert r.status_code == 422 and "invalid label key" in r.text
    assert h.snapshot() == before


def test_join_token_only_registers(h: Harness) -> None:
    as_join = {"Authorization": f"Bearer {h.join}"}
    assert h.client.get("/api/v1/hosts", headers=as_join).status_code == 403
    host_id, cred = h.register("edge-1", "linux/arm64", {"zone": "edge"})
    host = h.client.get(f"/api/v1/hosts/{host_id}", headers=h.as_admin()).json()
    assert host["platform"] == "linux/arm64" and host["labels"] == {"zone": "edge"} and host["state"] == "ready"


def test_rotated_join_token_is_refused_but_hosts_keep_working(h: Harness) -> None:
    host_id, cred = h.register("a")
    new = h.client.post("/api/v1/tokens/join/rotate", headers=h.as_admin()).json()["token"]
    assert new != h.join
    before = h.snapshot()
    r = h.client.post("/api/v1/agent/register", json={"facts": {}}, headers={"Authorization": f"Bearer {h.join}"})
    assert r.status_code == 401
    assert h.snapshot() == before
    assert h.client.post("/api/v1/agent/status", json={}, headers={"Authorization": f"Bearer {cred}"}).status_code == 200
    h.join = new
    h.register("b")


def test_removed_host_credential_is_revoked(h: Harness) -> None:
    host_id, cred = h.register("a")
    assert h.client.delete(f"/api/v1/hosts/{host_id}", headers=h.as_admin()).status_code == 204
    assert h.client.post("/api/v1/agent/status", json={}, headers={"Authorization": f"Bearer {cred}"}).status_code == 401


@pytest.mark.parametrize("body, fragment", [
    ({"name": "Bad_Name", "image": "busybox"}, "invalid service name"),
    ({"name": "web", "image": "busybox", "replicas": -1}, "greater than or equal to 0"),
    ({"name": "web", "image": "Not An Image"}, "invalid reference"),
    ({"name": "web", "image": "Busybox"}, "invalid reference"),
    ({"name": "web", "image": "busybox", "constraints": ["node.labels.zone~edge"]}, "invalid constraint"),
    ({"name": "web", "image": "busybox", "constraints": ["node.color==red"]}, "unknown key"),
    ({"name": "web", "image": "busybox", "env": {"1BAD": "x"}}, "invalid environment variable"),
    ({"name": "web", "image": "busybox", "ports": [{"published": 70000, "target": 80}]}, "less than or equal"),
    ({"name": "web", "image": "busybox", "ports": [{"published": 80, "target": 80}, {"published": 80, "target": 81}]},
     "given twice"),
    ({"name": "web", "image": "busybox", "restart": {"condition": "sometimes"}}, "any"),
    ({"name": "web", "image": "busybox", "surprise": 1}, "Extra inputs"),
    ({"name": "web", "image": "busybox", "labels": {"bad key": "x"}}, "invalid label key"),
    ({"name": "web", "image": "busybox", "mode": "everywhere"}, "global"),
])
def test_bad_service_input_is_refused_and_changes_nothing(h: Harness, body: dict, fragment: str) -> None:
    h.register("a")
    before = h.snapshot()
    r = h.client.post("/api/v1/services", json=body, headers=h.as_admin())
    assert r.status_code == 422
    assert fragment in r.text
    assert h.snapshot() == before


def test_malformed_json_is_refused(h: Harness) -> None:
    before = h.snapshot()
    r = h.client.post("/api/v1/services", content=b"{not json", headers={**h.as_admin(), "content-type": "application/json"})
    assert r.status_code == 422
    assert "JSON" in r.text or "json" in r.text
    assert h.snapshot() == before


def test_duplicate_service_is_409_and_keeps_the_first(h: Harness) -> None:
    h.register("a")
    assert h.client.post("/api/v1/services", json={"name": "web", "image": "busybox"}, headers=h.as_admin()).status_code == 201
    before = h.snapshot()
    r = h.client.post("/api/v1/services", json={"name": "web", "image": "other", "replicas": 5}, headers=h.as_admin())
    assert r.status_code == 409 and "already exists" in r.text
    assert h.snapshot() == before


def test_unknown_host_and_service_are_404(h: Harness) -> None:
    for method, path in [("GET", "/api/v1/hosts/nope"), ("DELETE", "/api/v1/hosts/nope"),
                         ("PUT", "/api/v1/hosts/nope/labels/k"), ("GET", "/api/v1/services/nope"),
                         ("PATCH", "/api/v1/services/nope"), ("DELETE", "/api/v1/services/nope")]:
        body = {"value": "v"} if method == "PUT" else ({"replicas": 1} if method == "PATCH" else None)
        r = h.client.request(method, path, json=body, headers=h.as_admin())
        assert r.status_code == 404, (method, path, r.text)
        assert "nope" in r.json()["detail"]


def test_spread_and_scale(h: Harness) -> None:
    ids = [h.register(n)[0] for n in ("a", "b", "c")]
    r = h.client.post("/api/v1/services", json={"name": "web", "image": "busybox", "replicas": 6}, headers=h.as_admin())
    assert r.status_code == 201
    per_host = [sum(1 for i in r.json()["instances"] if i["host_id"] == hid) for hid in ids]
    assert per_host == [2, 2, 2]
    assert sorted(i["slot"] for i in r.json()["instances"]) == [1, 2, 3, 4, 5, 6]
    r = h.client.patch("/api/v1/services/web", json={"replicas": 2}, headers=h.as_admin())
    assert sorted(i["slot"] for i in r.json()["instances"]) == [1, 2]
    r = h.client.patch("/api/v1/services/web", json={"replicas": -3}, headers=h.as_admin())
    assert r.status_code == 422


def test_constraint_matching_no_host_stays_pending_with_reason(h: Harness) -> None:
    h.register("a", labels={"zone": "cloud"})
    h.register("b", "linux/arm64", labels={"zone": "cloud"})
    r = h.client.post("/api/v1/services", json={"name": "edge", "image": "busybox",
                                                 "constraints": ["node.labels.zone==edge"]}, headers=h.as_admin())
    assert r.status_code == 201
    body = r.json()
    assert body["instances"] == []
    assert body["pending_reason"] == ("0 of 2 hosts can run it: image offers linux/amd64, linux/arm64, linux/arm/v7; "
                                      "2 hosts do not match constraint node.labels.zone==edge")
    # a matching label makes it placeable
    hid = h.state.store.list_hosts()[1].id
    h.client.put(f"/api/v1/hosts/{hid}/labels/zone", json={"value": "edge"}, headers=h.as_admin())
    body = h.client.get("/api/v1/services/edge", headers=h.as_admin()).json()
    assert body["pending_reason"] is None and [i["host_id"] for i in body["instances"]] == [hid]


def test_platform_constraint(h: Harness) -> None:
    h.register("x86")
    arm, _ = h.register("pi", "linux/arm64")
    r = h.client.post("/api/v1/services", json={"name": "a", "image": "busybox", "replicas": 3,
                                                 "constraints": ["node.platform.arch==arm64"]}, headers=h.as_admin())
    assert {i["host_id"] for i in r.json()["instances"]} == {arm}


def test_desired_revision_grows_and_long_poll_wakes(h: Harness) -> None:
    host, cred = h.register("a")
    auth = {"Authorization": f"Bearer {cred}"}
    first = h.client.get("/api/v1/agent/channel?revision=-1&wait=0", headers=auth).json()
    h.client.post("/api/v1/services", json={"name": "web", "image": "busybox"}, headers=h.as_admin())
    second = h.client.get(f"/api/v1/agent/channel?revision={first['revision']}&wait=5", headers=auth).json()
    assert second["revision"] > first["revision"]
    assert [i["service"] for i in second["desired"]["instances"]] == ["web"]
    idle = h.client.get(f"/api/v1/agent/channel?revision={second['revision']}&wait=0.2", headers=auth).json()
    assert "desired" not in idle


def test_status_report_and_host_down_up(h: Harness) -> None:
    host, cred = h.register("a")
    auth = {"Authorization": f"Bearer {cred}"}
    h.client.post("/api/v1/services", json={"name": "web", "image": "busybox"}, headers=h.as_admin())
    inst = h.state.store.list_instances()[0]
    r = h.client.post("/api/v1/agent/status", headers=auth, json={
        "instances": [{"instance_id": inst.id, "state": "running", "since": 100.0, "container_id": "abc"}]})
    assert r.status_code == 200
    svc = h.client.get("/api/v1/services/web", headers=h.as_admin()).json()
    assert svc["running"] == 1 and svc["instances"][0]["container_id"] == "abc"
    # silence beyond down_after marks it down; a heartbeat brings it back
    h.state.monitor.down_after = 0.0
    assert h.state.monitor.check().down == [host]
    assert h.client.get(f"/api/v1/hosts/{host}", headers=h.as_admin()).json()["state"] == "down"
    assert h.client.get("/api/v1/services/web", headers=h.as_admin()).json()["running"] == 0
    h.client.post("/api/v1/agent/status", headers=auth, json={})
    assert h.client.get(f"/api/v1/hosts/{host}", headers=h.as_admin()).json()["state"] == "ready"


def test_a_service_without_its_instances_has_the_same_counts(h: Harness) -> None:
    host, cred = h.register("a")
    h.client.post("/api/v1/services", json={"name": "web", "image": "busybox", "replicas": 2}, headers=h.as_admin())
    inst = h.state.store.list_instances()[0]
    h.client.post("/api/v1/agent/status", headers={"Authorization": f"Bearer {cred}"}, json={
        "instances": [{"instance_id": inst.id, "state": "running", "since": 100.0, "container_id": "abc"}]})
    full = h.client.get("/api/v1/services/web", headers=h.as_admin()).json()
    brief = h.client.get("/api/v1/services/web?instances=false", headers=h.as_admin()).json()
    assert len(full.pop("instances")) == 2 and "instances" not in brief
    assert brief == full and (brief["running"], brief["desired"], brief["status"]) == (1, 2, "degraded")
    # each form is cached apart: the full one still lists the instances
    assert len(h.client.get("/api/v1/services/web", headers=h.as_admin()).json()["instances"]) == 2


def test_labels_add_and_remove(h: Harness) -> None:
    host, _ = h.register("a")
    r = h.client.put("/api/v1/hosts/a/labels/zone", json={"value": "edge"}, headers=h.as_admin())
    assert r.json()["labels"] == {"zone": "edge"}
    assert h.client.delete(f"/api/v1/hosts/{host}/labels/zone", headers=h.as_admin()).json()["labels"] == {}
    assert h.client.delete(f"/api/v1/hosts/{host}/labels/zone", headers=h.as_admin()).status_code == 404
    assert h.client.put(f"/api/v1/hosts/{host}/labels/bad%20key", json={"value": "x"},
                        headers=h.as_admin()).status_code == 422


def test_host_mode_ports_place_one_per_host_and_ingress_ports_share(h: Harness) -> None:
    h.register("a")
    h.register("b")
    r = h.client.post("/api/v1/services", json={"name": "web", "image": "busybox", "replicas": 3,
                                                 "ports": [{"published": 8080, "target": 80, "mode": "host"}]},
                      headers=h.as_admin())
    body = r.json()
    assert len(body["instances"]) == 2 and len({i["host_id"] for i in body["instances"]}) == 2
    assert "publishes host ports" in body["pending_reason"]
    r = h.client.post("/api/v1/services", json={"name": "api", "image": "busybox", "replicas": 4,
                                                 "ports": [{"published": 9090, "target": 80}]}, headers=h.as_admin())
    body = r.json()
    assert len(body["instances"]) == 4 and body["pending_reason"] is None
    assert body["ports"] == [{"published": 9090, "target": 80, "protocol": "tcp", "mode": "ingress"}]


def test_cordon_drain_activate(h: Harness) -> None:
    a, _ = h.register("a")
    b, _ = h.register("b")
    h.client.post("/api/v1/services", json={"name": "web", "image": "busybox", "replicas": 4}, headers=h.as_admin())

    def on(host: str) -> list[int]:
        body = h.client.get("/api/v1/services/web", headers=h.as_admin()).json()
        return sorted(i["slot"] for i in body["instances"] if i["host_id"] == host)

    first, second = on(a), on(b)
    assert sorted(first + second) == [1, 2, 3, 4] and len(first) == len(second) == 2
    # cordon: what runs stays, nothing new goes there
    r = h.client.post(f"/api/v1/hosts/{a}/cordon", headers=h.as_admin())
    assert r.status_code == 200 and r.json()["availability"] == "cordoned"
    h.client.patch("/api/v1/services/web", json={"replicas": 6}, headers=h.as_admin())
    assert on(a) == first and on(b) == sorted(second + [5, 6])
    # drain: its replicas move to the other host, same slots
    assert h.client.post(f"/api/v1/hosts/{a}/drain", headers=h.as_admin()).json()["availability"] == "draining"
    assert on(a) == [] and on(b) == [1, 2, 3, 4, 5, 6]
    svc = h.client.post("/api/v1/services", json={"name": "nowhere", "image": "busybox",
                                                   "constraints": [f"node.id=={a}"]}, headers=h.as_admin()).json()
    assert svc["pending_reason"] == ("0 of 2 hosts can run it: image offers linux/amd64, linux/arm64, linux/arm/v7; "
                                     f"1 host does not match constraint node.id=={a}, 1 host is draining")
    # activate: schedulable again
    assert h.client.post(f"/api/v1/hosts/{a}/activate", headers=h.as_admin()).json()["availability"] == "active"
    assert h.client.get("/api/v1/services/nowhere", headers=h.as_admin()).json()["pending_reason"] is None
    assert h.client.post("/api/v1/hosts/nope/drain", headers=h.as_admin()).status_code == 404
