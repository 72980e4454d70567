"""corral.agent.wireguard for real: wireguard-go (or the kernel module) in namespaces.

The underlay (testbed.underlay ``wgt``): hosts ``a`` and ``b`` on the switch, ``n`` behind
the NAT router ``nat1``. Each has a WireGuard interface with a key generated in its own
namespace; ``a`` and ``b`` know each other's endpoints, ``n`` knows theirs but they do not
know ``n``'s (it comes to them through the NAT, with persistent keepalive). Every packet
goes to addresses inside these namespaces.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from corral.agent.wireguard import EnsureResult, Peer, WireGuard, netns_runner
from testbed.underlay import Underlay, UnderlayHost

pytestmark = pytest.mark.e2e

PORT = 51820
KEEPALIVE_NAT = 2  # the NATed host's keepalive (short: the test waits on it)
KEEPALIVE = 25  # every other peer with a known endpoint: a restored side handshakes at once
HOSTS = {"a": 1, "b": 2, "n": 3}  # name -> overlay index: subnet 10.42.I.0/24, address .1


def ifname(host: str) -> str:
    return f"crlwgt-{host}"  # distinct per host: wireguard-go's socket path is machine-wide


def gateway(host: str) -> str:
    return f"10.42.{HOSTS[host]}.1"


def subnet(host: str) -> str:
    return f"10.42.{HOSTS[host]}.0/24"


@dataclass
class Overlay:
    underlay: Underlay
    keys: Path
    wg: dict[str, WireGuard] = field(default_factory=dict)
    pub: dict[str, str] = field(default_factory=dict)
    ensured: dict[str, EnsureResult] = field(default_factory=dict)

    def host(self, name: str) -> UnderlayHost:
        return self.underlay.host(name)

    def ensure(self, name: str) -> EnsureResult:
        res = self.wg[name].ensure_interface(ifname(name), f"{gateway(name)}/32", PORT,
                                             self.keys / f"{name}.key")
        self.ensured[name] = res
        return res

    def peers_of(self, name: str, among: list[str] | None = None) -> list[Peer]:
        me = self.host(name)
        out = []
        for other in among or list(HOSTS):
            if other == name:
                continue
            o = self.host(other)
            endpoint = None if o.behind_nat else f"{o.address}:{PORT}"
            # keepalive also towards NATed peers: inert until their endpoint is known, it
            # makes this side handshake at once when set_peers reuses a learnt endpoint
            keepalive = KEEPALIVE_NAT if me.behind_nat else KEEPALIVE
            out.append(Peer(self.pub[other], endpoint, [subnet(other)], keepalive))
        return out

    def configure(self, name: str, among: list[str] | None = None) -> None:
        self.wg[name].set_peers(ifname(name), self.peers_of(name, among))
        self.wg[name].set_routes(ifname(name), [subnet(o) for o in among or list(HOSTS)
                                                if o != name])

    def ping(self, src: str, address: str, tries: int = 10) -> bool:
        return self.underlay.ping(src, address, tries=tries, wait=1.0)

    def teardown(self) -> None:
        for name, wg in self.wg.items():
            if Path(self.host(name).netns_path).exists() if name in self.underlay.hosts \
                    else False:
                wg.remove_interface(ifname(name))
        self.underlay.teardown()


def _wireguard_go_pids(names: list[str]) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z" and os.path.basename(argv[0]) == b"wireguard-go" and any(
                n.encode() in argv[1:] for n in names):
            out.append(int(entry.name))
    return out


@pytest.fixture(scope="module")
def overlay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Overlay]:
    ul = Underlay("wgt")
    ov = Overlay(ul, tmp_path_factory.mktemp("wg-keys"))
    try:
        ul.create()
        ul.add_host("a")
        ul.add_host("b")
        ul.add_host("n", behind="nat1")
        for name in HOSTS:
            ov.wg[name] = WireGuard(netns_runner(ov.host(name).netns_path))
            # wg genkey runs in the host's own namespace; only the public key comes back
            ov.pub[name] = ov.wg[name].ensure_private_key(ov.keys / f"{name}.key")
            ov.ensure(name)
        # the responders first, then the NATed host, whose keepalive opens the way
        for name in ("a", "b", "n"):
            ov.configure(name)
        yield ov
    finally:
        ov.teardown()


def test_interfaces_up_with_the_expected_backend(overlay: Overlay) -> None:
    probe = overlay.underlay.run("a", ["ip", "link", "add", "crlwgt-probe", "type", "wireguard"],
                                 check=False)
    kernel = probe.returncode == 0
    if kernel:
        overlay.underlay.run("a", ["ip", "link", "del", "crlwgt-probe"])
    for name in HOSTS:
        res = overlay.ensured[name]
        assert res.created and res.backend == ("kernel" if kernel else "userspace")
        st = overlay.wg[name].status(ifname(name))
        assert st.healthy, st
        assert st.backend == res.backend and st.public_key == overlay.pub[name]
        assert st.listen_port == PORT and st.addresses == (f"{gateway(name)}/32",)
        if st.backend == "userspace":
            assert st.pid and _wireguard_go_pids([ifname(name)]) == [st.pid]
        # idempotent: a second ensure changes nothing
        again = overlay.ensure(name)
        assert not again.created and again.changed == ()


def test_public_hosts_ping_each_other_over_the_tunnel(overlay: Overlay) -> None:
    t0 = time.monotonic()
    assert overlay.ping("a", gateway("b")), "a cannot reach b's overlay address"
    assert overlay.ping("b", gateway("a")), "b cannot reach a's overlay address"
    elapsed = time.monotonic() - t0
    st = overlay.wg["a"].status(ifname("a"))
    peer_b = st.peer(overlay.pub["b"])
    assert peer_b is not None
    age = peer_b.handshake_age()
    assert age is not None and age < 30, peer_b
    assert peer_b.rx_bytes > 0 and peer_b.tx_bytes > 0
    assert peer_b.endpoint == f"{overlay.host('b').address}:{PORT}"
    assert elapsed < 15, f"first pings took {elapsed:.1f}s"


def test_nat_host_reaches_public_host_with_keepalive(overlay: Overlay) -> None:
    a, n = overlay.host("a"), overlay.host("n")
    assert overlay.ping("n", gateway("a")), "n (behind NAT) cannot reach a"
    # a never got n's endpoint: it learnt it from n's packets, i.e. the NAT's address
    peer_n = overlay.wg["a"].status(ifname("a")).peer(overlay.pub["n"])
    assert peer_n is not None and peer_n.endpoint is not None, peer_n
    assert peer_n.endpoint.rsplit(":", 1)[0] == n.public_address != n.address
    age = peer_n.handshake_age()
    assert age is not None and age < 30
    # and now a reaches n through the NAT's mapping, which the keepalive keeps open
    assert overlay.ping("a", gateway("n")), "a cannot reach n through the NAT"
    # the underlay itself does not route to n's private network
    assert not overlay.underlay.ping("a", n.address, wait=0.5)
    assert a.public_address == a.address


def test_keepalive_refreshes_the_nat_handshake(overlay: Overlay) -> None:
    peer_a = overlay.wg["n"].status(ifname("n")).peer(overlay.pub["a"])
    assert peer_a is not None and peer_a.persistent_keepalive == KEEPALIVE_NAT
    before = peer_a.rx_bytes
    deadline = time.monotonic() + 3 * KEEPALIVE_NAT + 2
    while time.monotonic() < deadline:  # keepalives flow with no traffic of ours
        time.sleep(0.5)
        cur = overlay.wg["a"].status(ifname("a")).peer(overlay.pub["n"])
        if cur is not None and cur.rx_bytes > before:
            break
    cur = overlay.wg["a"].status(ifname("a")).peer(overlay.pub["n"])
    assert cur is not None and cur.rx_bytes > before, "no keepalive from n reached a"


def test_killed_wireguard_go_is_seen_and_restored(overlay: Overlay) -> None:
    wg = overlay.wg["b"]
    st = wg.status(ifname("b"))
    if st.backend != "userspace":
        pytest.skip("the kernel module is in use: no wireguard-go to kill")
    assert st.pid is not None
    os.kill(st.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while wg.status(ifname("b")).healthy and time.monotonic() < deadline:
        time.sleep(0.05)
    down = wg.status(ifname("b"))
    assert not down.healthy and not down.present and not down.process_alive, down
    assert not overlay.ping("a", gateway("b"), tries=1)

    res = overlay.ensure("b")
    assert res.created and res.backend == "userspace"
    overlay.configure("b")  # peers and routes went with the link
    up = wg.status(ifname("b"))
    assert up.healthy and up.pid not in (None, st.pid)
    # b's keepalive-enabled peers handshake at once, so a's stale session is replaced
    t0 = time.monotonic()
    assert overlay.ping("a", gateway("b"), tries=10), "a cannot reach b after the restore"
    # well under the ~15 s a stale session would cost (the keepalive handshake is at once)
    assert time.monotonic() - t0 < 10
    assert overlay.ping("n", gateway("b"), tries=10), "n cannot reach b after the restore"


def test_forwarding_rules_let_overlay_reach_a_bridge(overlay: Overlay) -> None:
    """b gets a bridge with a 'container' namespace on it; b's FORWARD policy is DROP (as
    with Docker): only allow_forwarding lets a reach the container over the overlay."""
    ul = overlay.underlay
    wg = overlay.wg["b"]
    ctr_ns = f"{ul.switch_netns}-ctr"
    ctr = ["nsenter", f"--net=/run/netns/{ctr_ns}", "--"]

    def sh(argv: list[str]) -> None:
        subprocess.run(argv, check=True, capture_output=True, timeout=15)

    try:
        sh(["ip", "netns", "add", ctr_ns])
        sh(ctr + ["ip", "link", "set", "lo", "up"])
        ul.run("b", ["ip", "link", "add", "crlbr", "type", "bridge"])
        ul.run("b", ["ip", "addr", "add", f"{gateway('b')}/24", "dev", "crlbr"])
        ul.run("b", ["ip", "link", "set", "crlbr", "up"])
        ul.run("b", ["ip", "link", "add", "cv0", "type", "veth", "peer", "name", "eth0",
                     "netns", f"/run/netns/{ctr_ns}"])
        ul.run("b", ["ip", "link", "set", "cv0", "master", "crlbr", "up"])
        sh(ctr + ["ip", "addr", "add", "10.42.2.2/24", "dev", "eth0"])
        sh(ctr + ["ip", "link", "set", "eth0", "up"])
        sh(ctr + ["ip", "route", "add", "default", "via", gateway("b")])
        wg.enable_ip_forwarding()
        ul.run("b", ["iptables", "-w", "5", "-P", "FORWARD", "DROP"])

        assert not ul.ping("a", "10.42.2.2", wait=0.5), "forwarded before the rules were set"
        assert wg.allow_forwarding(ifname("b"), "crlbr") == 2
        assert wg.allow_forwarding(ifname("b"), "crlbr") == 0  # idempotent
        assert ul.ping("a", "10.42.2.2", tries=5), "a cannot reach b's container"
        back = [subprocess.run(ctr + ["ping", "-n", "-q", "-c", "1", "-W", "1", gateway("a")],
                               capture_output=True, timeout=10).returncode for _ in range(3)]
        assert 0 in back, "b's container cannot reach a"
        assert wg.disallow_forwarding(ifname("b"), "crlbr") == 2
        assert wg.disallow_forwarding(ifname("b"), "crlbr") == 0
        assert not ul.ping("a", "10.42.2.2", wait=0.5)

        assert wg.exempt_from_masquerade(subnet("b"), "10.42.0.0/16")
        assert not wg.exempt_from_masquerade(subnet("b"), "10.42.0.0/16")
        nat = ul.run("b", ["iptables", "-w", "5", "-t", "nat", "-S", "POSTROUTING"]).stdout
        assert "-s 10.42.2.0/24 -d 10.42.0.0/16" in nat and "RETURN" in nat
        assert wg.remove_masquerade_exemption(subnet("b"), "10.42.0.0/16")
        assert "10.42.2.0/24" not in ul.run("b", ["iptables", "-w", "5", "-t", "nat", "-S",
                                                  "POSTROUTING"]).stdout
    finally:
        subprocess.run(["ip", "netns", "delete", ctr_ns], capture_output=True, timeout=15)
        ul.run("b", ["ip", "link", "del", "crlbr"], check=False)
        ul.run("b", ["iptables", "-w", "5", "-P", "FORWARD", "ACCEPT"], check=False)


def test_removed_peer_and_routes_disappear(overlay: Overlay) -> None:
    wg = overlay.wg["a"]
    overlay.configure("a", among=["a", "b"])  # n leaves
    st = wg.status(ifname("a"))
    assert [p.public_key for p in st.peers] == [overlay.pub["b"]]
    assert wg.routes(ifname("a")) == [subnet("b")]
    assert not overlay.ping("a", gateway("n"), tries=1)
    assert overlay.ping("a", gateway("b"), tries=5)
    overlay.configure("a")  # n is back
    assert {p.public_key for p in wg.status(ifname("a")).peers} == {overlay.pub["b"],
                                                                   overlay.pub["n"]}
    assert overlay.ping("n", gateway("a"), tries=10)


def test_teardown_leaves_nothing(overlay: Overlay) -> None:
    names = [ifname(h) for h in HOSTS]
    assert len(_wireguard_go_pids(names)) == (3 if overlay.ensured["a"].backend == "userspace"
                                              else 0)
    assert overlay.underlay.netns_names()
    overlay.teardown()
    assert overlay.underlay.netns_names() == []
    assert _wireguard_go_pids(names) == []
    assert not [n for n in names if Path(f"/var/run/wireguard/{n}.sock").exists()]
    overlay.teardown()  # again: nothing to do, no error


def test_attach_puts_a_foreign_namespace_on_the_underlay() -> None:
    """As the lead will do with a NetnsHost (``attach(host.netns_path, ...)``): the namespace
    joins the switch (or sits behind a NAT) and, after teardown, is still there without ul0."""
    foreign = ["crl-wgatt-x", "crl-wgatt-y"]

    def sh(argv: list[str], check: bool = True) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(argv, check=check, capture_output=True, timeout=15)

    try:
        for ns in foreign:
            sh(["ip", "netns", "delete", ns], check=False)
            sh(["ip", "netns", "add", ns])
        with Underlay("wgatt") as ul:
            pub = ul.add_host("p")
            x = ul.attach(f"/run/netns/{foreign[0]}", "x")
            y = ul.attach(f"/run/netns/{foreign[1]}", "y", behind="nat1")
            assert ul.attach(f"/run/netns/{foreign[0]}", "x") == x  # idempotent
            assert x.address.startswith("10.231.0.") and not x.behind_nat
            assert y.address.startswith("10.232.") and y.public_address == ul.host("nat1").address
            # (a fresh veth may lose the very first packet while its carrier comes up)
            assert ul.ping("x", pub.address, tries=5) and ul.ping("p", x.address, tries=5)
            assert ul.ping("y", x.address, tries=5)  # out through the NAT
            assert not ul.ping("x", y.address, wait=0.5)  # no way in
            with pytest.raises(ValueError, match="already"):
                ul.attach(f"/run/netns/{foreign[0]}", "z")
        for ns in foreign:
            assert Path(f"/run/netns/{ns}").exists()
            assert sh(["nsenter", f"--net=/run/netns/{ns}", "--", "ip", "link", "show", "ul0"],
                      check=False).returncode != 0
        assert ul.netns_names() == []
    finally:
        for ns in foreign:
            sh(["ip", "netns", "delete", ns], check=False)
