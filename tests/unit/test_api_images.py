"""Image intelligence through the API: pinned builds per platform, emulation, global mode, registries."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.api_harness import Harness, harness
from tests.unit.fake_images import FakeImages


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    with harness(tmp_path) as hh:
        yield hh


def fleet(h: Harness) -> dict[str, str]:
    return {
        "x86": h.register("x86", "linux/amd64", {"zone": "cloud"},
                          emulated_platforms=["linux/arm64", "linux/arm/v7", "linux/arm/v6"])[0],
        "pi4": h.register("pi4", "linux/arm64", {"zone": "edge"})[0],
        "pi3": h.register("pi3", "linux/arm/v7", {"zone": "edge"})[0],
    }


def create(h: Harness, **body: object) -> dict:
    r = h.client.post("/api/v1/services", json=body, headers=h.as_admin())
    assert r.status_code == 201, r.text
    return r.json()


def test_global_multi_arch_service_runs_each_hosts_own_build(h: Harness) -> None:
    ids = fleet(h)
    svc = create(h, name="agent-ish", image="127.0.0.1:5000/corral/busybox:1", mode="global")
    by_host = {i["host_name"]: i for i in svc["instances"]}
    assert {k: v["platform"] for k, v in by_host.items()} == {
        "x86": "linux/amd64", "pi4": "linux/arm64", "pi3": "linux/arm/v7"}
    resolved = FakeImages().resolve("127.0.0.1:5000/corral/busybox:1")
    for inst in svc["instances"]:
        expected = resolved.pull_reference(inst["platform"])
        assert inst["image"] == expected and "@sha256:" in inst["image"] and not inst["emulated"]
    assert svc["desired"] == 3 and svc["image_platforms"] == ["linux/amd64", "linux/arm64", "linux/arm/v7"]
    # the desired set the arm64 agent receives names the arm64 digest
    assert set(ids) == set(by_host)


def test_global_follows_hosts_joining_and_labels(h: Harness) -> None:
    fleet(h)
    create(h, name="edge-agent", image="127.0.0.1:5000/corral/busybox:1", mode="global",
           constraints=["node.labels.zone==edge"])
    assert {i["host_name"] for i in h.client.get("/api/v1/services/edge-agent", headers=h.as_admin()).json()["instances"]} == {"pi4", "pi3"}
    h.register("pi5", "linux/arm64", {"zone": "edge"})
    svc = h.client.get("/api/v1/services/edge-agent", headers=h.as_admin()).json()
    assert {i["host_name"] for i in svc["instances"]} == {"pi4", "pi3", "pi5"} and svc["desired"] == 3
    h.client.put("/api/v1/hosts/pi3/labels/zone", json={"value": "cloud"}, headers=h.as_admin())
    svc = h.client.get("/api/v1/services/edge-agent", headers=h.as_admin()).json()
    assert {i["host_name"] for i in svc["instances"]} == {"pi4", "pi5"} and svc["desired"] == 2


def test_arm64_only_image_lands_only_on_arm64(h: Harness) -> None:
    ids = fleet(h)
    svc = create(h, name="a64", image="127.0.0.1:5000/corral/arm64only:1", replicas=3)
    assert {i["host_id"] for i in svc["instances"]} == {ids["pi4"]}
    assert all(i["platform"] == "linux/arm64" for i in svc["instances"])


def test_no_fitting_host_explains_and_emulation_is_opt_in(h: Harness) -> None:
    h.register("x86", "linux/amd64", emulated_platforms=["linux/arm64"])
    h.register("pi3", "linux/arm/v7")
    svc = create(h, name="a64", image="127.0.0.1:5000/corral/arm64only:1")
    assert svc["instances"] == []
    assert svc["pending_reason"] == (
        "0 of 2 hosts can run it: image offers linux/arm64; 1 host is linux/amd64 (no build), "
        "1 host is linux/arm/v7 (no build); linux/amd64 could run it emulated (allow emulation to use it)")
    svc = create(h, name="a64-emu", image="127.0.0.1:5000/corral/arm64only:1", allow_emulation=True)
    (inst,) = svc["instances"]
    assert inst["host_name"] == "x86" and inst["emulated"] and inst["platform"] == "linux/arm64"
    assert inst["host_platform"] == "linux/amd64" and svc["pending_reason"] is None


def test_emulated_host_not_used_when_a_native_one_exists(h: Harness) -> None:
    fleet(h)
    svc = create(h, name="a64", image="127.0.0.1:5000/corral/arm64only:1", replicas=2, allow_emulation=True)
    assert {i["host_name"] for i in svc["instances"]} == {"pi4"} and not any(i["emulated"] for i in svc["instances"])


def test_scaling_reuses_the_pinned_resolution(h: Harness) -> None:
    fleet(h)
    images: FakeImages = h.state.images  # type: ignore[assignment]
    create(h, name="web", image="127.0.0.1:5000/corral/busybox:1", replicas=1)
    calls = len(images.calls)
    svc = h.client.patch("/api/v1/services/web", json={"replicas": 5}, headers=h.as_admin()).json()
    assert len(images.calls) == calls  # not asked again: the digests stay those of the first resolve
    assert len({i["image"].split("@")[1] for i in svc["instances"] if i["platform"] == "linux/amd64"}) <= 1


def test_unknown_image_stays_pending_naming_it(h: Harness) -> None:
    fleet(h)
    before = [i for i in h.state.store.list_instances()]
    svc = create(h, name="ghost", image="127.0.0.1:5000/corral/missing:1")
    assert svc["instances"] == [] and "127.0.0.1:5000/corral/missing:1" in svc["pending_reason"]
    assert "retrying" not in svc["pending_reason"]
    svc = create(h, name="later", image="127.0.0.1:5000/corral/down:1")
    assert svc["instances"] == [] and svc["pending_reason"].endswith("(retrying)")
    assert h.state.store.list_instances() == before


def test_image_inspect(h: Harness) -> None:
    r = h.client.get("/api/v1/images/inspect", params={"ref": "127.0.0.1:5000/corral/busybox:1"},
                     headers=h.as_admin())
    assert r.status_code == 200
    assert [p["platform"] for p in r.json()["platforms"]] == ["linux/amd64", "linux/arm64", "linux/arm/v7"]
    assert [p["image_size"] for p in r.json()["platforms"]] == [1_000_000, 1_000_001, 1_000_002]
    for ref, code in [("127.0.0.1:5000/corral/missing:1", 404), ("127.0.0.1:5000/corral/down:1", 502),
                      ("Not Valid", 422)]:
        r = h.client.get("/api/v1/images/inspect", params={"ref": ref}, headers=h.as_admin())
        assert r.status_code == code, (ref, r.text)
    assert h.client.get("/api/v1/images/inspect", params={"ref": "x"}).status_code == 401


def test_registry_credentials_never_come_back_and_reach_only_the_pulling_host(h: Harness) -> None:
    pi4, pi4_cred = h.register("pi4", "linux/arm64")
    _pi3, pi3_cred = h.register("pi3", "linux/arm64")
    r = h.client.put("/api/v1/registries/127.0.0.1:5001", json={"username": "bob", "password": "s3cret-pw"},
                     headers=h.as_admin())
    assert r.status_code == 200 and "s3cret" not in r.text
    listing = h.client.get("/api/v1/registries", headers=h.as_admin())
    assert listing.json()[0]["username"] == "bob" and "s3cret" not in listing.text
    assert h.client.put("/api/v1/registries/bad host", json={"username": "a", "password": "b"},
                        headers=h.as_admin()).status_code == 422
    create(h, name="private", image="127.0.0.1:5001/team/app:1", constraints=["node.hostname==pi4"])
    create(h, name="public", image="127.0.0.1:5000/corral/busybox:1", constraints=["node.hostname==pi4"])

    def channel(cred: str) -> dict:
        r = h.client.get("/api/v1/agent/channel?revision=-1&wait=0", headers={"Authorization": f"Bearer {cred}"})
        assert r.status_code == 200
        return r.json()["desired"]

    auth = {i["service"]: i["registry_auth"] for i in channel(pi4_cred)["instances"]}
    assert auth["private"] == {"username": "bob", "password": "s3cret-pw", "serveraddress": "127.0.0.1:5001"}
    assert auth["public"] is None
    assert "s3cret" not in str(channel(pi3_cred))  # the other host never sees them
    for path in ("/api/v1/services/private", f"/api/v1/hosts/{pi4}", "/api/v1/instances"):
        assert "s3cret" not in h.client.get(path, headers=h.as_admin()).text
    assert "s3cret" not in str([i.spec for i in h.state.store.list_instances()])  # not stored with instances
    # new credentials: the hosts that pull from that registry get their sets again, nobody else
    revisions = {hid: h.state.store.host_revision(hid) for hid in (pi4, _pi3)}
    h.client.put("/api/v1/registries/127.0.0.1:5001", json={"username": "bob", "password": "n3w-pw"},
                 headers=h.as_admin())
    assert h.state.store.host_revision(pi4) == revisions[pi4] + 1
    assert h.state.store.host_revision(_pi3) == revisions[_pi3]
    resent = {i["service"]: i["registry_auth"] for i in channel(pi4_cred)["instances"]}
    assert resent["private"]["password"] == "n3w-pw"
    images: FakeImages = h.state.images  # type: ignore[assignment]
    assert images.forgotten[-1] == "127.0.0.1:5001"
    assert h.client.delete("/api/v1/registries/127.0.0.1:5001", headers=h.as_admin()).status_code == 204
    assert h.state.store.host_revision(pi4) == revisions[pi4] + 2
    assert {i["service"]: i["registry_auth"] for i in channel(pi4_cred)["instances"]}["private"] is None
    assert h.client.delete("/api/v1/registries/127.0.0.1:5001", headers=h.as_admin()).status_code == 404
