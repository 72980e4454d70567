"""The overlay's server half on a real SQLite store and the real API: host subnets, the
cluster CIDR at start, instance addresses, overlay reports, mesh plans, the DNS directory
and the agent's channel."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from corral.model import LABEL_ADDRESS
from corral.net.addresses import SubnetFull, pick_address
from corral.net.ipam import IpamError, parse_cluster
from corral.server.main import CLUSTER_CIDR_SETTING, HOST_PREFIX_SETTING, cluster_network, run
from corral.server.overlay import Overlay, clean_report
from corral.store.db import open_engine, sqlite_url
from corral.store.store import Store
from tests.unit.api_harness import Harness, harness

IMG = "busybox"


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    with harness(tmp_path) as hh:
        yield hh


def key(n: int) -> str:
    """A well-formed WireGuard public key (canonical base64 of 32 bytes)."""
    return base64.b64encode(bytes([n]) * 32).decode()


def report(n: int, **more: Any) -> dict[str, Any]:
    return {"public_key": key(n), "endpoint": f"203.0.113.{n}:51820", **more}


def as_host(cred: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {cred}"}


def post_status(h: Harness, cred: str, **body: Any) -> dict[str, Any]:
    r = h.client.post("/api/v1/agent/status", json=body, headers=as_host(cred))
    assert r.status_code == 200, r.text
    return dict(r.json())


def overlay_host(h: Harness, name: str, n: int) -> tuple[str, str]:
    """Register a host and have it report an overlay key and endpoint."""
    host_id, cred = h.register(name)
    reply = post_status(h, cred, facts={"hostname": name, "platform": "linux/amd64",
                                        "engine_platform": "linux/amd64", "overlay": report(n)})
    assert "overlay_refused" not in reply
    return host_id, cred


def create_service(h: Harness, name: str, replicas: int, **more: Any) -> None:
    r = h.client.post("/api/v1/services", json={"name": name, "image": IMG, "replicas": replicas, **more},
                      headers=h.as_admin())
    assert r.status_code in (200, 201), r.text
    h.state.services.reconcile_all()


def scale(h: Harness, name: str, replicas: int) -> None:
    r = h.client.patch(f"/api/v1/services/{name}", json={"replicas": replicas}, headers=h.as_admin())
    assert r.status_code == 200, r.text
    h.state.services.reconcile_all()


def events(h: Harness, action: str) -> list[dict[str, Any]]:
    return [{"subject": e.subject, **e.attrs} for e in h.state.store.list_events() if e.action == action]


def fresh_store(path: Path) -> Store:
    path.mkdir(parents=True, exist_ok=True)
    return Store(open_engine(sqlite_url(path)))


# ---------------------------------------------------------------- subnets


def test_hosts_get_distinct_subnets_with_their_first_key_and_a_removed_hosts_subnet_is_reused(h: Harness) -> None:
    assert h.state.store.cluster is not None and h.state.store.cluster.cidr == "10.42.0.0/16"
    plain, _ = h.register("plain")  # no overlay: it holds no subnet
    ids = [overlay_host(h, f"h{i}", i + 1)[0] for i in range(3)]
    subnets = {x.id: x.subnet for x in h.state.store.list_hosts()}
    assert subnets[plain] is None
    assert [subnets[i] for i in ids] == ["10.42.0.0/24", "10.42.1.0/24", "10.42.2.0/24"]
    assert [e["subnet"] for e in events(h, "subnet")] == ["10.42.0.0/24", "10.42.1.0/24", "10.42.2.0/24"]

    assert h.client.delete(f"/api/v1/hosts/{ids[1]}", headers=h.as_admin()).status_code == 204
    new_id, _ = overlay_host(h, "h3", 9)
    assert h.state.store.get_host(new_id).subnet == "10.42.1.0/24"
    assert len({x.subnet for x in h.state.store.list_hosts() if x.subnet}) == 3


def test_a_full_cluster_refuses_the_next_hosts_overlay_with_the_reason(tmp_path: Path) -> None:
    # through the server's own start: 10.42.0.0/28 in /29s holds two hosts
    with harness(tmp_path, "--cluster-cidr", "10.42.0.0/28", "--host-subnet-prefix", "29") as h:
        ids = [overlay_host(h, name, n)[0] for name, n in (("a", 1), ("b", 2))]
        assert [h.state.store.get_host(i).subnet for i in ids] == ["10.42.0.0/29", "10.42.0.8/29"]
        c_id, c_cred = h.register("c")  # the join itself succeeds: its containers can run
        post_status(h, c_cred, facts={"hostname": "c", "platform": "linux/amd64", "overlay": report(3)})
        c = h.state.store.get_host(c_id)
        reason = "no overlay subnet for this host: cluster 10.42.0.0/28 is full: all 2 /29 host subnets are taken"
        assert c.subnet is None and c.overlay is not None and c.overlay["error"] == reason
        assert [e["reason"] for e in events(h, "overlay_failed")] == [reason]
        assert [h.state.store.get_host(i).subnet for i in ids] == ["10.42.0.0/29", "10.42.0.8/29"]  # kept
        create_service(h, "web", 3)
        assert [i.address for i in instances(h, c_id)] == [""]  # runs, without an overlay address
        # a freed subnet goes to it with its next report
        assert h.client.delete(f"/api/v1/hosts/{ids[0]}", headers=h.as_admin()).status_code == 204
        post_status(h, c_cred, facts_patch={"overlay": report(3)})
        assert h.state.store.get_host(c_id).subnet == "10.42.0.0/29"


# ---------------------------------------------------------------- the cluster CIDR at start


def test_first_start_stores_the_default_and_later_starts_keep_it(tmp_path: Path) -> None:
    store = fresh_store(tmp_path)
    net = cluster_network(store, None, None)
    assert (net.cidr, net.host_prefix) == ("10.42.0.0/16", 24)
    assert store.get_setting(CLUSTER_CIDR_SETTING) == "10.42.0.0/16"
    assert store.get_setting(HOST_PREFIX_SETTING) == "24"
    assert cluster_network(store, None, None) == net

    other = fresh_store(tmp_path / "other")
    chosen = cluster_network(other, "10.50.0.0/16", 26)
    assert cluster_network(other, None, None) == chosen  # the stored one, not the default
    assert (other.get_setting(CLUSTER_CIDR_SETTING), other.get_setting(HOST_PREFIX_SETTING)) == ("10.50.0.0/16", "26")


@pytest.mark.parametrize(("cidr", "prefix", "message"), [
    ("10.42.1.0/16", 24, "10.42.1.0/16 has host bits set; did you mean 10.42.0.0/16?"),
    ("fd00::/64", 24, "must be IPv4"),
    ("10.42.0.0/24", 24, "a /24 cluster cannot hold /24 host subnets"),
    ("127.0.0.0/16", 24, "overlaps loopback (127.0.0.0/8)"),
    ("10.42.0.0/16", 30, "/30 host subnets are too small"),
])
def test_a_bad_cluster_cidr_is_refused_with_a_clear_message(tmp_path: Path, cidr: str, prefix: int,
                                                            message: str) -> None:
    store = fresh_store(tmp_path)
    with pytest.raises(IpamError) as err:
        cluster_network(store, cidr, prefix)
    assert message in str(err.value)
    assert store.get_setting(CLUSTER_CIDR_SETTING) is None  # nothing stored


def test_changing_the_cidr_away_from_held_subnets_is_refused_and_growing_it_is_taken(tmp_path: Path) -> None:
    store = fresh_store(tmp_path)
    store.cluster = cluster_network(store, None, None)
    for n, name in enumerate(("a", "b"), start=1):  # subnets come with a host's first overlay key
        store.heartbeat(store.create_host(name, {}, {}, name).id, None, [], overlay=report(n))
    with pytest.raises(IpamError) as err:
        cluster_network(store, "10.43.0.0/16", None)
    assert "cannot change the cluster CIDR from 10.42.0.0/16 to 10.43.0.0/16" in str(err.value)
    assert "10.42.0.0/24, 10.42.1.0/24" in str(err.value)
    with pytest.raises(IpamError, match="cannot change the host prefix from /24 to /25"):
        cluster_network(store, None, 25)
    assert store.get_setting(CLUSTER_CIDR_SETTING) == "10.42.0.0/16"  # left as it was

    grown = cluster_network(store, "10.40.0.0/13", None)
    assert grown == parse_cluster("10.40.0.0/13", 24)
    assert store.get_setting(CLUSTER_CIDR_SETTING) == "10.40.0.0/13"
    assert all(grown.is_host_subnet(x.subnet or "") for x in store.list_hosts())
    assert cluster_network(store, None, None) == grown


def test_the_server_refuses_to_start_on_a_bad_or_incompatible_cidr(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as bad:
        run(["--data-dir", str(tmp_path / "bad"), "--listen", "127.0.0.1:1", "--cluster-cidr", "fd00::/64"])
    assert str(bad.value.code).startswith("corral server: overlay network: the cluster CIDR must be IPv4")

    data = tmp_path / "live"
    with harness(data) as h:
        overlay_host(h, "a", 1)
    with pytest.raises(SystemExit) as moved:
        run(["--data-dir", str(data), "--listen", "127.0.0.1:1", "--cluster-cidr", "10.43.0.0/16"])
    assert "corral server: overlay network: cannot change the cluster CIDR" in str(moved.value.code)
    assert fresh_store(data).get_setting(CLUSTER_CIDR_SETTING) == "10.42.0.0/16"


# ---------------------------------------------------------------- instance addresses


def test_pick_address_goes_round_robin_wraps_and_says_when_full() -> None:
    assert pick_address("10.42.0.0/29", [], 0) == ("10.42.0.2", 2)  # .0 network, .1 gateway
    assert pick_address("10.42.0.0/29", ["10.42.0.2", "10.42.0.3"], 3) == ("10.42.0.4", 4)
    # .2 was released, but the cursor is past it: the next one is .5, not .2
    assert pick_address("10.42.0.0/29", ["10.42.0.3", "10.42.0.4"], 4) == ("10.42.0.5", 5)
    # from the last (.6; .7 is the broadcast) it wraps to .2
    assert pick_address("10.42.0.0/29", ["10.42.0.6"], 6) == ("10.42.0.2", 2)
    assert pick_address("10.42.0.0/29", ["10.42.0.2", "10.42.0.6"], 6) == ("10.42.0.3", 3)
    with pytest.raises(SubnetFull, match="all 5 instance addresses of subnet 10.42.0.0/29"):
        pick_address("10.42.0.0/29", [f"10.42.0.{i}" for i in range(2, 7)], 3)
    with pytest.raises(SubnetFull):
        pick_address("10.42.0.0/31", [], 0)


def instances(h: Harness, host_id: str) -> list[Any]:
    return sorted(h.state.store.list_instances(host_id=host_id), key=lambda i: i.slot)


def test_instances_on_an_overlay_host_get_addresses_round_robin(h: Harness) -> None:
    host_id, cred = overlay_host(h, "ov", 1)
    create_service(h, "web", 3)
    mine = instances(h, host_id)
    assert [i.address for i in mine] == ["10.42.0.2", "10.42.0.3", "10.42.0.4"]
    assert all(i.spec["labels"][LABEL_ADDRESS] == i.address for i in mine)
    desired = h.client.get("/api/v1/agent/channel?revision=-1&wait=0", headers=as_host(cred)).json()["desired"]
    assert sorted(i["labels"][LABEL_ADDRESS] for i in desired["instances"]) == ["10.42.0.2", "10.42.0.3", "10.42.0.4"]

    scale(h, "web", 1)
    kept = {i.address for i in instances(h, host_id)}
    assert len(kept) == 1
    scale(h, "web", 3)
    # the released addresses are not handed out again at once: the cursor moves on
    assert {i.address for i in instances(h, host_id)} == kept | {"10.42.0.5", "10.42.0.6"}


def test_hosts_without_an_overlay_report_give_no_addresses(h: Harness) -> None:
    ov, _ = overlay_host(h, "ov", 1)
    plain, plain_cred = h.register("plain")
    bad, bad_cred = h.register("bad")
    post_status(h, bad_cred, facts={"hostname": "bad", "platform": "linux/amd64", "overlay": {"public_key": "nope"}})
    create_service(h, "web", 6)
    by_host = {x: instances(h, x) for x in (ov, plain, bad)}
    assert [len(v) for v in by_host.values()] == [2, 2, 2]
    assert [i.address for i in by_host[ov]] == ["10.42.0.2", "10.42.0.3"]
    for host_id in (plain, bad):
        assert all(i.address == "" and LABEL_ADDRESS not in i.spec["labels"] for i in by_host[host_id])
    assert h.state.store.get_host(plain).subnet is None  # no overlay, no subnet taken
    assert h.state.store.get_host(bad).subnet is None


def test_the_mesh_reads_only_hosts_that_run_the_overlay_or_did(h: Harness) -> None:
    """A fleet of agents with the overlay off costs the periodic replan nothing."""
    overlay_host(h, "ov", 1)
    _, plain_cred = h.register("plain")
    post_status(h, plain_cred, facts={"hostname": "plain", "platform": "linux/amd64"})
    _, bad_cred = h.register("bad")
    post_status(h, bad_cred, facts={"hostname": "bad", "platform": "linux/amd64", "overlay": {"public_key": "nope"}})
    _, off_cred = h.register("off")
    post_status(h, off_cred, facts={"hostname": "off", "platform": "linux/amd64", "overlay": None})
    names = [x.name for x in h.state.store.overlay_hosts()]
    assert "plain" not in names and {"ov", "bad"} <= set(names), names  # bad: its error shows in the plans' notes


def test_a_global_instance_placed_at_join_gets_an_address_once_the_host_reports_its_key(h: Harness) -> None:
    overlay_host(h, "a", 1)
    create_service(h, "probe", 1, mode="global")
    host_id, cred = h.register("b")  # the server places the global instance at once
    post_status(h, cred, facts={"hostname": "b", "platform": "linux/amd64", "overlay": report(2)})
    h.state.services.reconcile_all()
    (inst,) = instances(h, host_id)
    assert inst.address.startswith("10.42.1.")


# ---------------------------------------------------------------- overlay reports


def test_a_valid_overlay_report_is_stored_apart_from_the_facts(h: Harness) -> None:
    host_id, cred = h.register("a")
    reply = post_status(h, cred, facts={"hostname": "a", "platform": "linux/amd64",
                                        "overlay": report(1, nat=False, peers={"x": {"endpoint": "nonsense"}})})
    assert "overlay_refused" not in reply
    row = h.state.store.get_host(host_id)
    assert "overlay" not in row.facts and row.facts["hostname"] == "a"
    assert row.overlay == {"public_key": key(1), "endpoint": "203.0.113.1:51820", "nat": False,
                           "peers": {"x": {"endpoint": None}}}  # a bad peer observation is dropped
    # a patch carries a new report the same way, and keeps the other facts
    post_status(h, cred, facts_patch={"overlay": report(2)})
    row = h.state.store.get_host(host_id)
    assert row.overlay is not None and row.overlay["public_key"] == key(2)
    assert "overlay" not in row.facts and row.facts["hostname"] == "a"
    assert events(h, "overlay_failed") == []


@pytest.mark.parametrize(("bad", "reason"), [
    ({"public_key": "not-a-key", "endpoint": "203.0.113.1:51820"}, "malformed WireGuard public key"),
    ({"public_key": key(1)[:-2] + "F=", "endpoint": "203.0.113.1:51820"}, "malformed WireGuard public key"),
    ({"public_key": key(1), "endpoint": "wg.example.com:51820"}, "host names are not accepted"),
    ({"public_key": key(1), "endpoint": "203.0.113.1:99999"}, "the port must be a number from 1 to 65535"),
])
def test_a_malformed_report_is_refused_but_the_rest_of_the_report_is_applied(h: Harness, bad: dict[str, Any],
                                                                             reason: str) -> None:
    host_id, cred = overlay_host(h, "a", 1)
    create_service(h, "web", 1)
    (inst,) = instances(h, host_id)
    reply = post_status(h, cred, facts={"hostname": "a", "platform": "linux/amd64", "overlay": bad},
                        instances=[{"instance_id": inst.id, "state": "running", "since": 1.0}])
    assert reply["overlay_refused"].startswith("overlay report refused: ")
    assert reason in reply["overlay_refused"]
    row = h.state.store.get_host(host_id)
    assert row.overlay == {"error": reply["overlay_refused"]}
    assert "overlay" not in row.facts
    assert [(e["subject"], e["reason"]) for e in events(h, "overlay_failed")] == [("a", reply["overlay_refused"])]
    assert h.state.store.list_instances(host_id=host_id)[0].state == "running"  # applied all the same
    # the same refusal again is no new event
    post_status(h, cred, facts={"hostname": "a", "platform": "linux/amd64", "overlay": bad})
    assert len(events(h, "overlay_failed")) == 1


def test_a_higher_repair_count_writes_an_overlay_repaired_event(h: Harness) -> None:
    _, cred = overlay_host(h, "a", 1)
    repair = {"what": "wireguard", "reason": "wireguard-go exited; interface rebuilt"}
    post_status(h, cred, facts_patch={"overlay": report(1, repairs=1, last_repair=repair)})
    assert [(e["subject"], e["what"], e["reason"]) for e in events(h, "overlay_repaired")] \
        == [("a", "wireguard", "wireguard-go exited; interface rebuilt")]
    post_status(h, cred, facts_patch={"overlay": report(1, repairs=1, last_repair=repair, nat=True)})
    assert len(events(h, "overlay_repaired")) == 1  # same count: no new event
    post_status(h, cred, facts_patch={"overlay": report(1, repairs=2, last_repair={"what": "routes",
                                                                                   "reason": "route lost"})})
    assert [e["reason"] for e in events(h, "overlay_repaired")] == ["wireguard-go exited; interface rebuilt",
                                                                    "route lost"]


# ---------------------------------------------------------------- plans and the directory


def three(h: Harness) -> dict[str, tuple[str, str]]:
    """Three overlay hosts: name -> (id, credential)."""
    return {name: overlay_host(h, name, n) for n, name in enumerate(("a", "b", "c"), start=1)}


def test_each_host_gets_the_other_two_as_peers_and_news_only_when_stale(tmp_path: Path) -> None:
    # the store alone (no server loops that could mark a host up again under the test)
    st = fresh_store(tmp_path)
    st.cluster = cluster_network(st, None, None)
    ids: dict[str, str] = {}
    for n, name in enumerate(("a", "b", "c"), start=1):
        ids[name] = st.create_host(name, {}, {}, name).id
        st.heartbeat(ids[name], None, [], overlay=clean_report(report(n)))
    woken: list[list[str]] = []
    ov = Overlay(st, woken.append)
    subnets = {name: st.get_host(host_id).subnet or "" for name, host_id in ids.items()}
    assert subnets == {"a": "10.42.0.0/24", "b": "10.42.1.0/24", "c": "10.42.2.0/24"}
    assert sorted(ov.refresh()) == sorted(ids.values())
    for name, host_id in ids.items():
        wire = ov.plans[host_id].wire
        assert (wire["subnet"], wire["gateway"], wire["cluster_cidr"]) \
            == (subnets[name], subnets[name].replace(".0/24", ".1"), "10.42.0.0/16")
        others = [(o, m) for m, o in enumerate(ids, start=1) if o != name]
        assert [(p["name"], p["public_key"], p["endpoint"], p["allowed_ips"], p["gateway"]) for p in wire["peers"]] \
            == [(o, key(m), f"203.0.113.{m}:51820", [subnets[o]], subnets[o].replace(".0/24", ".1"))
                for o, m in others]
        assert wire["reachable"] and not wire["behind_nat"]

    a = ids["a"]
    digest = ov.plans[a].digest
    assert ov.refresh() == []  # nothing changed
    assert ov.news_for(a, None, None) == {}  # an agent without the overlay asks for nothing
    stale = ov.news_for(a, "", -1)
    assert stale["overlay"]["digest"] == digest and stale["overlay"]["subnet"] == subnets["a"]
    assert stale["dns"] == {"generation": ov.dns_generation, "records": []}
    assert ov.news_for(a, digest, ov.dns_generation) == {}
    assert set(ov.news_for(a, digest, -1)) == {"dns"}
    assert set(ov.news_for(a, "old", ov.dns_generation)) == {"overlay"}
    assert ov.news_for("no-such-host", "", -1) == {}

    # a host marked down drops out of the others' peers; their plans change, its own goes
    assert st.mark_down(st.clock() + 10, spare={ids["a"], ids["b"]}) == [ids["c"]]
    assert sorted(ov.refresh()) == sorted([ids["a"], ids["b"]])
    assert ids["c"] not in ov.plans
    assert [p["name"] for p in ov.plans[ids["a"]].wire["peers"]] == ["b"]
    assert [p["name"] for p in ov.plans[ids["b"]].wire["peers"]] == ["a"]
    assert ov.news_for(ids["c"], "", -1) == {}
    assert set(ov.news_for(a, digest, ov.dns_generation)) == {"overlay"}

    # it is back when it reports again; a removed host leaves for good; so does a refused report
    assert st.heartbeat(ids["c"], None, [])
    assert sorted(ov.refresh()) == sorted(ids.values())
    assert ov.plans[a].digest == digest
    st.remove_host(ids["b"])
    assert sorted(ov.refresh()) == sorted([ids["a"], ids["c"]])
    assert [p["name"] for p in ov.plans[a].wire["peers"]] == ["c"]
    st.heartbeat(ids["c"], None, [], overlay={"error": "overlay report refused: bad key"})
    assert ov.refresh() == [a] and ov.plans[a].wire["peers"] == []
    assert woken == []  # refresh only says whom to wake; run() wakes them


def test_a_running_healthy_instance_with_an_address_enters_the_directory(h: Harness) -> None:
    hosts = three(h)
    ov = Overlay(h.state.store, lambda ids: None)
    ov.refresh()
    generation = ov.dns_generation
    create_service(h, "web", 3)
    create_service(h, "db", 1, constraints=["node.hostname==b"])
    assert ov.refresh() == [] and ov.dns_generation == generation  # placed is not running
    digests = {host_id: p.digest for host_id, p in ov.plans.items()}

    st = h.state.store
    web_a = instances(h, hosts["a"][0])[0]
    web_b = [i for i in instances(h, hosts["b"][0]) if i.spec["service"] == "web"][0]
    db_b = [i for i in instances(h, hosts["b"][0]) if i.spec["service"] == "db"][0]
    post_status(h, hosts["a"][1], instances=[{"instance_id": web_a.id, "state": "running", "since": 1.0,
                                              "health": "healthy"}])
    post_status(h, hosts["b"][1], instances=[
        {"instance_id": web_b.id, "state": "running", "since": 1.0, "health": "starting"},
        {"instance_id": db_b.id, "state": "running", "since": 1.0}])
    changed = ov.refresh()
    assert ov.dns_generation == generation + 1
    assert sorted(changed) == sorted(host_id for host_id, _ in hosts.values())  # every overlay host is woken
    assert ov.dns_records == [["db", None, [db_b.address]], ["web", None, [web_a.address]]]
    assert web_a.address.startswith("10.42.0.") and db_b.address.startswith("10.42.1.")
    assert {host_id: p.digest for host_id, p in ov.plans.items()} == digests  # the plans did not change
    a = hosts["a"][0]
    assert ov.news_for(a, digests[a], generation) == {"dns": {"generation": generation + 1,
                                                              "records": ov.dns_records}}
    assert ov.news_for(a, digests[a], generation + 1) == {}

    post_status(h, hosts["b"][1], instances=[{"instance_id": web_b.id, "state": "running", "since": 1.0,
                                              "health": "healthy"}])
    ov.refresh()
    assert ov.dns_generation == generation + 2
    assert ov.dns_records[1] == ["web", None, sorted([web_a.address, web_b.address])]
    assert st.dns_entries()[1][2] == sorted([web_a.address, web_b.address])

    # a host that goes down takes its instances out of DNS (they cannot be reached) ...
    st.mark_down(st.clock() + 1, spare={hosts["a"][0], hosts["c"][0]})
    ov.refresh()
    assert ov.dns_records == [["web", None, [web_a.address]]]
    # ... and they are back when it is
    post_status(h, hosts["b"][1])
    ov.refresh()
    assert ov.dns_records[1] == ["web", None, sorted([web_a.address, web_b.address])]


# ---------------------------------------------------------------- the channel


def test_the_channel_carries_the_plan_and_directory_only_when_stale(h: Harness) -> None:
    hosts = three(h)
    plain, plain_cred = h.register("plain")
    a, cred = hosts["a"]
    st, ov = h.state.store, h.state.overlay
    ov.refresh()  # what the server's loop does after these writes
    rev = st.host_revision(a)

    def poll(credential: str, revision: int, mesh: str, dns: int) -> dict[str, Any]:
        r = h.client.get(f"/api/v1/agent/channel?revision={revision}&wait=0&mesh={mesh}&dns={dns}",
                         headers=as_host(credential))
        assert r.status_code == 200, r.text
        return dict(r.json())

    body = poll(cred, rev, "", -1)
    assert body["revision"] == rev and "desired" not in body
    assert body["overlay"]["digest"] == ov.plans[a].digest
    assert body["overlay"]["subnet"] == st.get_host(a).subnet
    assert sorted(p["name"] for p in body["overlay"]["peers"]) == ["b", "c"]
    assert body["dns"] == {"generation": ov.dns_generation, "records": ov.dns_records}

    quiet = poll(cred, rev, body["overlay"]["digest"], body["dns"]["generation"])
    assert "overlay" not in quiet and "dns" not in quiet and "desired" not in quiet
    assert quiet["revision"] == rev

    # a host that runs no overlay gets neither, whatever it sends
    other = poll(plain_cred, st.host_revision(plain), "", -1)
    assert "overlay" not in other and "dns" not in other


def test_a_host_that_joined_before_the_overlay_gets_a_subnet_with_its_first_key(h: Harness) -> None:
    cluster, h.state.store.cluster = h.state.store.cluster, None  # a server from before the overlay
    old_id, old_cred = h.register("old")
    create_service(h, "web", 1)
    assert h.state.store.get_host(old_id).subnet is None
    h.state.store.cluster = cluster  # upgraded: the agent now reports a key
    post_status(h, old_cred, facts={"hostname": "old", "platform": "linux/amd64", "overlay": report(7)})
    host = h.state.store.get_host(old_id)
    assert host.subnet == "10.42.0.0/24"
    assert [i.address for i in instances(h, old_id)] == ["10.42.0.2"]
    assert events(h, "subnet")[0]["subnet"] == "10.42.0.0/24"
