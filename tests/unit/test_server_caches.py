"""What the server remembers to stay cheap under a large fleet: credentials, revisions, liveness."""

from __future__ import annotations

from pathlib import Path

from corral.controllers.hosts import HostMonitor
from corral.server.channels import Notifier
from corral.server.hostauth import HostAuthCache, HostIdentity
from corral.store.db import open_engine, sqlite_url
from corral.store.store import Store


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_a_remembered_credential_expires_and_is_forgotten_with_its_host() -> None:
    clock = Clock()
    cache = HostAuthCache(ttl=60, clock=clock)
    cache.put("CORRAL-H1-a-secret", HostIdentity("a", "edge-1"))
    assert cache.get("CORRAL-H1-a-secret") == HostIdentity("a", "edge-1")
    assert cache.get("CORRAL-H1-a-wrong") is None
    clock.t += 61
    assert cache.get("CORRAL-H1-a-secret") is None
    cache.put("CORRAL-H1-a-secret", HostIdentity("a", "edge-1"))
    cache.forget("a")
    assert cache.get("CORRAL-H1-a-secret") is None


def test_a_revision_read_before_a_notification_is_never_remembered_after_it() -> None:
    n = Notifier()
    seen = n.seq("h")
    n._wake(["h"])  # the store changed h's set while the read was in flight
    n.remember("h", 4, seen)
    assert n.revision("h") is None
    n.remember("h", 5, n.seq("h"))
    assert n.revision("h") == 5
    n._wake(["h"])
    assert n.revision("h") is None  # a notification drops what was remembered


def test_a_full_refresh_skips_hosts_notified_meanwhile() -> None:
    n = Notifier()
    seen = n.counts()
    n._wake(["b"])
    n.remember_all({"a": 1, "b": 7}, seen)
    assert (n.revision("a"), n.revision("b")) == (1, None)


def test_a_late_check_marks_nobody_down(tmp_path: Path) -> None:
    clock = Clock()
    store = Store(open_engine(sqlite_url(tmp_path)), clock=clock)
    host = store.create_host("a", {}, {}, "h" * 64)
    monitor = HostMonitor(store, down_after=30)
    clock.t += 1
    monitor.check()
    clock.t += 40  # the server was stuck for 40 s: the host's silence says nothing
    changes = monitor.check()
    assert changes.down == [] and changes.late >= 39
    clock.t += 1
    assert monitor.check().down == [host.id]


def test_liveness_is_written_in_one_batch(tmp_path: Path) -> None:
    clock = Clock()
    store = Store(open_engine(sqlite_url(tmp_path)), clock=clock)
    hosts = [store.create_host(f"h{i}", {}, {}, "h" * 64) for i in range(3)]
    monitor = HostMonitor(store, down_after=30)
    clock.t += 20
    for h in hosts:
        monitor.seen(h.id)
    monitor.check()
    assert {h.last_seen for h in store.list_hosts()} == {clock.t}


def test_a_listing_is_reused_only_while_nothing_changed_and_briefly() -> None:
    from corral.api.cache import ListingCache

    clock = Clock()
    cache = ListingCache(ttl=1.0, clock=clock)
    made: list[int] = []

    def make() -> list[int]:
        made.append(1)
        return [len(made)]

    assert cache.response("k", 0, make).body == b"[1]"
    assert cache.response("k", 0, make).body == b"[1]" and len(made) == 1
    assert cache.response("k", 1, make).body == b"[2]"  # a write on this server: at once
    clock.t += 1.5
    assert cache.response("k", 1, make).body == b"[3]"  # another replica's writes: within ttl


def test_liveness_alone_does_not_invalidate_listings(tmp_path: Path) -> None:
    store = Store(open_engine(sqlite_url(tmp_path)))
    host = store.create_host("a", {}, {}, "h" * 64)
    before = store.generation
    store.touch_hosts({host.id: 1.0})
    assert store.generation == before
    store.mark_down(10.0)
    store.touch_hosts({host.id: 11.0})  # back: listings show the state
    assert store.generation > before
