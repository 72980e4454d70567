"""Stacks, rolling updates, rollbacks, host loss and events through the API (in-process server, real SQLite)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.compose import load_stack
from tests.unit.api_harness import Harness, harness

IMG = "127.0.0.1:5000/corral/busybox:1"
SAMPLES = Path(__file__).parent / "compose_samples"


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    with harness(tmp_path) as hh:
        yield hh


class Agents:
    """Stand-ins for agents: they report every instance the server gives them as running."""

    def __init__(self, h: Harness, n: int = 3) -> None:
        self.h = h
        self.creds = dict(h.register(f"h{i}", "linux/amd64", cpus=8, memory_bytes=16 << 30) for i in range(1, n + 1))

    def report(self, state: str = "running", only: set[int] | None = None, **more: Any) -> None:
        st = self.h.state.store
        # what each host runs as the round begins (a report may place more: that is the next round's)
        held = {host_id: [i for i in st.list_instances(host_id=host_id) if only is None or i.spec_version in only]
                for host_id in self.creds}
        for host_id, cred in self.creds.items():
            body = {"instances": [{"instance_id": i.id, "state": state, "since": 1.0, **more} for i in held[host_id]]}
            r = self.h.client.post("/api/v1/agent/status", json=body, headers={"Authorization": f"Bearer {cred}"})
            assert r.status_code == 200, r.text
        self.h.state.services.reconcile_all()


def api(h: Harness, method: str, path: str, headers: dict[str, str] | None = None, **kw: Any) -> Any:
    return h.client.request(method, f"/api/v1{path}", headers={**h.as_admin(), **(headers or {})}, **kw)


def service(h: Harness, name: str) -> dict[str, Any]:
    r = api(h, "GET", f"/services/{name}")
    assert r.status_code == 200, r.text
    return dict(r.json())


def stack_body(name: str = "web", image: str = IMG, replicas: int = 2, **more: Any) -> dict[str, Any]:
    return {"services": [{"name": name, "image": image, "replicas": replicas, "command": ["sleep", "1d"], **more},
                         {"name": "kv", "image": IMG, "command": ["sleep", "1d"]}]}


def test_stack_deploy_is_idempotent_and_updates_only_what_changed(h: Harness) -> None:
    Agents(h)
    r = api(h, "POST", "/stacks/shop", json=stack_body())
    assert r.status_code == 200, r.text
    assert r.json()["created"] == ["shop_web", "shop_kv"]
    assert {s["name"] for s in api(h, "GET", "/stacks/shop/services").json()} == {"shop_web", "shop_kv"}
    assert len(api(h, "GET", "/stacks/shop/ps").json()) == 3
    again = api(h, "POST", "/stacks/shop", json=stack_body()).json()
    assert again["unchanged"] == ["shop_web", "shop_kv"] and not again["created"] and not again["updated"]
    changed = api(h, "POST", "/stacks/shop", json=stack_body(env={"MODE": "x"})).json()
    assert changed["updated"] == ["shop_web"] and changed["unchanged"] == ["shop_kv"]
    assert service(h, "shop_web")["version"] == 2 and service(h, "shop_kv")["version"] == 1
    scaled = api(h, "POST", "/stacks/shop", json=stack_body(env={"MODE": "x"}, replicas=3)).json()
    assert scaled["scaled"] == ["shop_web"]
    assert service(h, "shop_web")["version"] == 2
    stacks = api(h, "GET", "/stacks").json()
    assert [(s["name"], s["services"]) for s in stacks] == [("shop", 2)]


def test_a_bad_stack_changes_nothing_and_names_the_key(h: Harness) -> None:
    Agents(h)
    api(h, "POST", "/stacks/shop", json=stack_body())
    before = h.snapshot()
    bad = stack_body(replicas=-1)
    bad["services"].append({"name": "new", "image": IMG})
    r = api(h, "POST", "/stacks/shop", json=bad)
    assert r.status_code == 422 and "services.web.replicas" in r.text
    assert h.snapshot() == before
    r = api(h, "POST", "/stacks/shop", json={"services": [{"name": "web", "image": IMG,
                                                             "constraints": ["node.labels.a==1", "node.labels.a!=1"]}]})
    assert r.status_code == 422 and "services.web" in r.text and h.snapshot() == before
    api(h, "POST", "/services", json={"name": "other_web", "image": IMG})
    r = api(h, "POST", "/stacks/other", json=stack_body())
    assert r.status_code == 409 and "outside stack" in r.text


def test_the_compose_sample_deploys(h: Harness) -> None:
    Agents(h)
    for host in ("h1", "h2", "h3"):
        api(h, "PUT", f"/hosts/{host}/labels/zone", json={"value": "edge"})
    stack = load_stack([SAMPLES / "shop.yaml"], {}, stack="shop")
    body = {"services": [s for s in stack.services if s["name"] != "worker"]}  # worker wants a GPU
    r = api(h, "POST", "/stacks/shop", json=body)
    assert r.status_code == 200, r.text
    web = service(h, "shop_web")
    assert web["healthcheck"]["test"][0] == "CMD" and web["update_config"]["order"] == "start-first"
    assert web["limits"] == {"cpu": 1.5, "memory": 536870912}


def test_prune_removes_services_gone_from_the_file(h: Harness) -> None:
    Agents(h)
    api(h, "POST", "/stacks/shop", json=stack_body())
    body = {"services": stack_body()["services"][:1], "prune": True}
    assert api(h, "POST", "/stacks/shop", json=body).json()["removed"] == ["shop_kv"]
    assert api(h, "DELETE", "/stacks/shop").status_code == 204
    assert api(h, "GET", "/stacks/shop/services").status_code == 404


def test_rolling_update_replaces_in_batches_and_completes(h: Harness) -> None:
    agents = Agents(h)
    api(h, "POST", "/services", json={"name": "web", "image": IMG, "replicas": 4,
                                      "update_config": {"parallelism": 2}})
    agents.report()
    assert service(h, "web")["status"] == "converged"
    r = api(h, "POST", "/services/web/update", json={"env": {"V": "2"}})
    assert r.status_code == 200, r.text
    svc = service(h, "web")
    assert svc["status"] == "updating" and svc["version"] == 2
    versions = sorted(i["slot"] for i in svc["instances"] if i["state"] == "pending")
    assert versions == [1, 2], "stop-first: the first batch replaced slots 1 and 2"
    assert len(svc["instances"]) == 4
    agents.report()
    svc = service(h, "web")
    assert sorted(i["slot"] for i in svc["instances"] if i["state"] == "pending") == [3, 4]
    agents.report()
    svc = service(h, "web")
    assert svc["update"]["state"] == "completed" and svc["status"] == "converged"
    assert svc["update"]["updated"] == 4
    assert {i["state"] for i in svc["instances"]} == {"running"}
    actions = [e["action"] for e in api(h, "GET", "/events", params={"subject": "web"}).json()
               if e["type"] == "service"]
    assert actions == ["created", "update_started", "completed"]


def test_a_failing_update_rolls_back_and_the_service_stays_available(h: Harness) -> None:
    agents = Agents(h)
    api(h, "POST", "/services", json={"name": "web", "image": IMG, "replicas": 3,
                                      "update_config": {"parallelism": 1, "failure_action": "rollback"}})
    agents.report()
    first = {i["id"] for i in service(h, "web")["instances"]}
    api(h, "POST", "/services/web/update", json={"image": "127.0.0.1:5000/corral/busybox:2"})
    agents.report("exited", only={2}, exit_code=1, error="exit status 1")
    svc = service(h, "web")
    assert svc["update"]["state"] == "rolling_back" and svc["version"] == 3
    assert svc["image"] == IMG
    running_old = [i for i in svc["instances"] if i["id"] in first]
    assert len(running_old) == 2, "only the first batch was touched"
    for _ in range(5):  # the rollback's own batch is placed, then reported running
        agents.report()
        svc = service(h, "web")
        if svc["update"]["state"] != "rolling_back":
            break
    assert svc["update"]["state"] == "rollback_completed" and svc["running"] == 3
    assert all(i["image"] == IMG or IMG.rsplit(":", 1)[0] in i["image"] for i in svc["instances"])


def test_manual_rollback_and_nothing_to_roll_back(h: Harness) -> None:
    agents = Agents(h)
    api(h, "POST", "/services", json={"name": "web", "image": IMG})
    assert api(h, "POST", "/services/web/rollback").status_code == 409
    api(h, "POST", "/services/web/update", json={"env": {"V": "2"}})
    agents.report()
    assert service(h, "web")["env"] == {"V": "2"}
    assert api(h, "POST", "/services/web/rollback").status_code == 200
    for _ in range(5):
        agents.report()
        svc = service(h, "web")
        if svc["update"]["state"] != "rolling_back":
            break
    assert svc["env"] == {} and svc["update"]["state"] == "rollback_completed"


def test_update_with_bad_input_changes_nothing(h: Harness) -> None:
    Agents(h)
    api(h, "POST", "/services", json={"name": "web", "image": IMG})
    before = h.snapshot()
    r = api(h, "POST", "/services/web/update", json={"image": "Not A Ref"})
    assert r.status_code == 422
    r = api(h, "POST", "/services/web/update", json={"update_config": {"order": "sideways"}})
    assert r.status_code == 422
    assert api(h, "POST", "/services/nope/update", json={"env": {}}).status_code == 404
    assert h.snapshot() == before


def test_start_first_never_has_fewer_ready_than_asked(h: Harness) -> None:
    agents = Agents(h)
    api(h, "POST", "/services", json={"name": "web", "image": IMG, "replicas": 3,
                                      "update_config": {"parallelism": 1, "order": "start-first"}})
    agents.report()
    api(h, "POST", "/services/web/update", json={"env": {"V": "2"}})
    for _ in range(10):
        svc = service(h, "web")
        assert sum(1 for i in svc["instances"] if i["state"] == "running") >= 3
        if svc["update"]["state"] == "completed":
            break
        agents.report()
    assert service(h, "web")["update"]["state"] == "completed"


def test_instances_on_a_lost_host_move_after_the_grace_period_and_never_double(h: Harness) -> None:
    agents = Agents(h)
    api(h, "POST", "/services", json={"name": "web", "image": IMG, "replicas": 3})
    agents.report()
    lost = next(iter(agents.creds))
    h.state.services.reschedule_after = 0.0
    h.state.monitor.down_after = 0.0
    h.state.store.mark_down(h.state.store.clock() + 1)  # every host is down; all but `lost` come back
    h.state.store.touch_hosts({host_id: h.state.store.clock() for host_id in agents.creds if host_id != lost})
    h.state.services.down_after = 0.0
    h.state.services.reconcile_all()
    svc = service(h, "web")
    assert len(svc["instances"]) == 3 and all(i["host_id"] != lost for i in svc["instances"])
    assert sorted(i["slot"] for i in svc["instances"]) == [1, 2, 3]
    # the host comes back: its stale instance is gone from its desired set, so its agent stops it
    r = h.client.get("/api/v1/agent/channel", params={"revision": -1, "wait": 0},
                     headers={"Authorization": f"Bearer {agents.creds[lost]}"})
    assert r.json()["desired"]["instances"] == []


def test_a_long_grace_label_keeps_instances_on_an_edge_host(h: Harness) -> None:
    agents = Agents(h, 1)
    host = next(iter(agents.creds))
    api(h, "PUT", "/hosts/h1/labels/corral.reschedule-after", json={"value": "3600"})
    api(h, "POST", "/services", json={"name": "web", "image": IMG, "replicas": 1})
    h.state.services.reschedule_after = 0.0
    h.state.services.down_after = 0.0
    h.state.store.mark_down(h.state.store.clock() + 1)
    h.state.services.reconcile_all()
    assert [i["host_id"] for i in service(h, "web")["instances"]] == [host]
    assert h.state.services.next_wake() is not None


def test_events_filter_and_refuse_unknown_types(h: Harness) -> None:
    Agents(h, 1)
    api(h, "POST", "/services", json={"name": "web", "image": IMG})
    evs = api(h, "GET", "/events").json()
    assert ("host", "joined", "h1") in {(e["type"], e["action"], e["subject"]) for e in evs}
    assert ("instance", "placed", "web") in {(e["type"], e["action"], e["subject"]) for e in evs}
    only = api(h, "GET", "/events", params={"type": "service"}).json()
    assert {e["type"] for e in only} == {"service"}
    assert api(h, "GET", "/events", params={"type": "bogus"}).status_code == 422
    after = api(h, "GET", "/events", headers={"Last-Event-ID": str(evs[-1]["id"])}).json()
    assert after == []


def test_removing_a_service_mid_update_leaves_nothing_due(h: Harness) -> None:
    """An update's recheck time dies with its service: the reconcile loop must not keep waking for it
    (it did, five passes a second, for as long as no other service existed)."""
    agents = Agents(h, 1)
    api(h, "POST", "/services", json={"name": "web", "image": IMG, "replicas": 2})
    agents.report()
    assert api(h, "POST", "/services/web/update", json={"env": {"V": "2"}}).status_code == 200
    assert h.state.services.next_wake() is not None
    api(h, "DELETE", "/services/web")
    h.state.services.reconcile_all()
    assert h.state.services.next_wake() is None and not h.state.services.updating
