"""corral.agent.wireguard against a fake runner: the commands it issues and what it reads.

:class:`FakeHost` plays ``ip``, ``wg``, ``wireguard-go``, ``iptables``, ``sysctl`` and
``kill`` with a little state (links, addresses, routes, WireGuard config, rules), so the
wrapper's decisions are checked against what such a host would then hold.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import socket
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from corral.agent.wireguard import (
    CommandError,
    CommandResult,
    InvalidConfig,
    Peer,
    PeerStatus,
    SubprocessRunner,
    WireGuard,
    WireGuardError,
    diff_peers,
    find_wireguard_go,
    netns_runner,
    parse_dump,
    parse_endpoint,
    uapi_answers,
    validate_key,
)


def key(n: int) -> str:
    return base64.b64encode(hashlib.sha256(f"k{n}".encode()).digest()).decode()


def fake_pub(private: str) -> str:
    return base64.b64encode(hashlib.sha256(b"pub" + private.encode()).digest()).decode()


K1, K2, K3, K4 = key(1), key(2), key(3), key(4)


@dataclass
class WgPeer:
    endpoint: str | None = None
    allowed: list[str] = field(default_factory=list)
    keepalive: int = 0
    handshake: int = 0


@dataclass
class Link:
    kind: str  # "wireguard", "tun", "bridge"
    mtu: int = 1420
    up: bool = False
    addrs: list[str] = field(default_factory=list)
    private: str | None = None
    port: int = 0
    peers: dict[str, WgPeer] = field(default_factory=dict)


class FakeHost:
    """A runner with the state of one host (see module doc)."""

    def __init__(self, kernel_module: bool = False) -> None:
        self.kernel_module = kernel_module
        self.links: dict[str, Link] = {}
        self.routes: dict[str, str] = {}  # dst -> dev
        self.daemons: dict[str, int] = {}  # wireguard-go name -> pid
        self.rules: dict[tuple[str, str], list[list[str]]] = {("filter", "FORWARD"): [],
                                                               ("nat", "POSTROUTING"): []}
        self.sysctl: dict[str, str] = {}
        self.calls: list[list[str]] = []
        self.inputs: list[str | None] = []
        self.envs: list[Mapping[str, str] | None] = []
        self.fail: dict[tuple[str, ...], CommandResult] = {}
        self._next_pid = 4000
        self._genkeys = 0

    # the Runner protocol
    def __call__(self, argv: Sequence[str], *, input: str | None = None,
                 env: Mapping[str, str] | None = None, timeout: float = 10.0) -> CommandResult:
        argv = list(argv)
        self.calls.append(argv)
        self.inputs.append(input)
        self.envs.append(env)
        for prefix, res in self.fail.items():
            if tuple(argv[:len(prefix)]) == prefix:
                return res
        tool = argv[0]
        handler = getattr(self, f"_{tool.replace('-', '_')}", None)
        if handler is None:
            raise AssertionError(f"unexpected command {argv}")
        return handler(argv[1:], input)

    # hooks for WireGuard(uapi_answers=..., find_pid=...)
    def answers(self, path: Path) -> bool:
        return path.name[:-len(".sock")] in self.daemons

    def pid(self, name: str) -> int | None:
        return self.daemons.get(name)

    def kill_daemon(self, name: str) -> None:
        """As SIGKILL does: the process goes, and its TUN link with it."""
        del self.daemons[name]
        self.links.pop(name, None)
        self.routes = {d: dev for d, dev in self.routes.items() if dev != name}

    # ---- helpers
    def reset(self) -> None:
        self.calls.clear()
        self.inputs.clear()
        self.envs.clear()

    @staticmethod
    def ok(out: str = "") -> CommandResult:
        return CommandResult(0, out, "")

    def nodev(self, name: str) -> CommandResult:
        return CommandResult(1, "", f'Device "{name}" does not exist.\n')

    def commands(self, tool: str) -> list[list[str]]:
        return [c for c in self.calls if c[0] == tool]

    def writes(self) -> list[list[str]]:
        """Calls that change something (everything but reads)."""
        reads = (("ip", "-details"), ("ip", "-json"), ("wg", "show"), ("wg", "pubkey"),
                 ("iptables", "-w", "5", "-S"))
        return [c for c in self.calls if not any(tuple(c[:len(r)]) == r for r in reads)
                and "-C" not in c]

    # ---- wg
    def _wg(self, args: list[str], input: str | None) -> CommandResult:
        if args == ["genkey"]:
            self._genkeys += 1
            return self.ok(key(100 + self._genkeys) + "\n")
        if args == ["pubkey"]:
            assert input is not None
            return self.ok(fake_pub(input.strip()) + "\n")
        if args[0] == "show" and args[2] == "dump":
            link = self.links.get(args[1])
            if link is None or (link.kind == "tun" and args[1] not in self.daemons):
                return CommandResult(1, "", "Unable to access interface: No such device\n")
            lines = ["\t".join([link.private or "(none)",
                                fake_pub(link.private) if link.private else "(none)",
                                str(link.port), "off"])]
            for k, p in link.peers.items():
                lines.append("\t".join([k, "(none)", p.endpoint or "(none)",
                                        ",".join(p.allowed) or "(none)", str(p.handshake),
                                        "100", "200", str(p.keepalive or "off")]))
            return self.ok("\n".join(lines) + "\n")
        if args[0] == "set":
            link = self.links[args[1]]
            rest = args[2:]
            peer: WgPeer | None = None
            while rest:
                word = rest.pop(0)
                if word == "listen-port":
                    link.port = int(rest.pop(0))
                elif word == "private-key":
                    link.private = Path(rest.pop(0)).read_text().strip()
                elif word == "peer":
                    k = rest.pop(0)
                    if rest and rest[0] == "remove":
                        rest.pop(0)
                        del link.peers[k]
                        peer = None
                        continue
                    peer = link.peers.setdefault(k, WgPeer())
                elif word == "endpoint":
                    assert peer is not None
                    peer.endpoint = rest.pop(0)
                elif word == "allowed-ips":
                    assert peer is not None
                    value = rest.pop(0)
                    peer.allowed = value.split(",") if value else []
                elif word == "persistent-keepalive":
                    assert peer is not None
                    value = rest.pop(0)
                    peer.keepalive = 0 if value == "off" else int(value)
                else:
                    raise AssertionError(f"wg set: unexpected {word!r} in {args}")
            return self.ok()
        raise AssertionError(f"unexpected wg {args}")

    # ---- wireguard-go
    def _wireguard_go(self, args: list[str], input: str | None) -> CommandResult:
        (name,) = args
        if name in self.links:
            return CommandResult(1, "", "ERROR: Failed to create TUN device: file exists\n")
        self._next_pid += 1
        self.daemons[name] = self._next_pid
        self.links[name] = Link("tun")
        return self.ok()

    # ---- ip
    def _ip(self, args: list[str], input: str | None) -> CommandResult:
        if args[:4] == ["-details", "-json", "link", "show"]:
            name = args[5]
            link = self.links.get(name)
            if link is None:
                return self.nodev(name)
            info = {"ifname": name, "mtu": link.mtu,
                    "flags": ["POINTOPOINT", "NOARP"] + (["UP", "LOWER_UP"] if link.up else []),
                    "linkinfo": {"info_kind": link.kind}}
            return self.ok(json.dumps([info]))
        if args[:3] == ["-json", "address", "show"]:
            name = args[4]
            if name not in self.links:
                return self.nodev(name)
            addr_info = [{"family": "inet", "local": a.split("/")[0],
                          "prefixlen": int(a.split("/")[1]), "scope": "global"}
                         for a in self.links[name].addrs]
            addr_info.append({"family": "inet6", "local": "fe80::1", "prefixlen": 64,
                              "scope": "link"})
            return self.ok(json.dumps([{"ifname": name, "addr_info": addr_info}]))
        if args[:3] == ["-json", "route", "show"]:
            name = args[4]
            if name not in self.links:
                return CommandResult(1, "", f'Cannot find device "{name}"\n')
            out: list[dict[str, Any]] = [{"dst": d.removesuffix("/32"), "dev": name,
                                          "scope": "link", "flags": []}
                                         for d, dev in self.routes.items() if dev == name]
            out += [{"dst": a, "dev": name, "protocol": "kernel", "scope": "link"}
                    for a in self.links[name].addrs if not a.endswith("/32")]
            return self.ok(json.dumps(out))
        if args[:2] == ["link", "add"]:
            name, kind = args[3], args[5]
            if kind == "wireguard" and not self.kernel_module:
                return CommandResult(2, "", "Error: Unknown device type.\n")
            self.links[name] = Link(kind)
            return self.ok()
        if args[:2] == ["link", "delete"]:
            name = args[3]
            if name not in self.links:
                return self.nodev(name)
            del self.links[name]
            self.daemons.pop(name, None)  # wireguard-go leaves with its device
            self.routes = {d: dev for d, dev in self.routes.items() if dev != name}
            return self.ok()
        if args[:2] == ["link", "set"]:
            link = self.links[args[3]]
            if args[4] == "mtu":
                link.mtu = int(args[5])
            elif args[4] == "up":
                link.up = True
            return self.ok()
        if args[:2] == ["address", "replace"]:
            link = self.links[args[4]]
            if args[2] not in link.addrs:
                link.addrs.append(args[2])
            return self.ok()
        if args[:2] == ["address", "delete"]:
            self.links[args[4]].addrs.remove(args[2])
            return self.ok()
        if args[:2] == ["route", "replace"]:
            self.routes[args[2]] = args[4]
            return self.ok()
        if args[:2] == ["route", "delete"]:
            if self.routes.get(args[2]) != args[4]:
                return CommandResult(2, "", "RTNETLINK answers: No such process\n")
            del self.routes[args[2]]
            return self.ok()
        raise AssertionError(f"unexpected ip {args}")

    # ---- iptables
    def _iptables(self, args: list[str], input: str | None) -> CommandResult:
        assert args[:2] == ["-w", "5"]
        args = args[2:]
        table = "filter"
        if args[0] == "-t":
            table, args = args[1], args[2:]
        op, chain, rule = args[0], args[1], args[2:]
        if op == "-S":
            return self.ok() if (table, chain) in self.rules else CommandResult(
                1, "", "iptables: No chain/target/match by that name.\n")
        rules = self.rules.setdefault((table, chain), [])
        if op == "-C":
            return self.ok() if rule in rules else CommandResult(
                1, "", "iptables: Bad rule (does a matching rule exist in that chain?).\n")
        if op == "-I":
            assert rule[0] == "1"
            rules.insert(0, rule[1:])
            return self.ok()
        if op == "-D":
            rules.remove(rule)
            return self.ok()
        raise AssertionError(f"unexpected iptables {args}")

    def _sysctl(self, args: list[str], input: str | None) -> CommandResult:
        assert args[0] == "-qw"
        k, v = args[1].split("=")
        self.sysctl[k] = v
        return self.ok()

    def _kill(self, args: list[str], input: str | None) -> CommandResult:
        pid = int(args[1])
        for name, p in list(self.daemons.items()):
            if p == pid:
                del self.daemons[name]
        return self.ok()


@pytest.fixture
def host() -> FakeHost:
    return FakeHost()


def make_wg(host: FakeHost, **kw: Any) -> WireGuard:
    return WireGuard(host, uapi_answers=host.answers, find_pid=host.pid, sleep=lambda s: None,
                     **kw)


@pytest.fixture
def wg(host: FakeHost) -> WireGuard:
    return make_wg(host)


@pytest.fixture
def keyfile(tmp_path: Path, wg: WireGuard) -> Path:
    path = tmp_path / "wg.key"
    wg.ensure_private_key(path)
    return path


def up(wg: WireGuard, keyfile: Path, name: str = "corral0") -> None:
    wg.ensure_interface(name, "10.42.1.1/32", 51820, keyfile)


# ---------------------------------------------------------------- keys


def test_private_key_generated_once_with_mode_0600(tmp_path: Path, host: FakeHost,
                                                  wg: WireGuard,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "sub" / "wg.key"
    pub = wg.ensure_private_key(path)
    private = path.read_text().strip()
    assert validate_key(private, "private key") and pub == fake_pub(private)
    assert path.stat().st_mode & 0o777 == 0o600
    assert wg.ensure_private_key(path) == pub  # kept, not regenerated
    assert host.commands("wg").count(["wg", "genkey"]) == 1
    # the private key went only through stdin, never into an argv or a log line
    assert all(private not in " ".join(c) for c in host.calls)
    assert private not in caplog.text
    assert host.inputs[host.calls.index(["wg", "pubkey"])] == private + "\n"


def test_public_key_is_remembered_while_the_file_is_unchanged(keyfile: Path, host: FakeHost,
                                                             wg: WireGuard) -> None:
    before = host.commands("wg").count(["wg", "pubkey"])
    for _ in range(3):
        wg.public_key_of(keyfile)
    assert host.commands("wg").count(["wg", "pubkey"]) == before


def test_group_readable_key_is_tightened(tmp_path: Path, wg: WireGuard) -> None:
    path = tmp_path / "k"
    path.write_text(K1 + "\n")
    os.chmod(path, 0o644)
    wg.ensure_private_key(path)
    assert path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("bad, why", [
    ("", "44 characters"),
    ("abc", "44 characters"),
    (K1[:-1], "44 characters"),
    ("!" * 43 + "=", "not valid base64"),
    (base64.b64encode(b"x" * 33).decode()[:44], "decodes to 33 bytes, not 32"),
    (None, "expected a string"),
    (base64.b64encode(b"x" * 31).decode(), "decodes to 31 bytes, not 32"),
    (K1[:42] + "B=", "not canonical"),
])
def test_malformed_keys_are_refused(bad: Any, why: str) -> None:
    with pytest.raises(InvalidConfig, match=why) as err:
        validate_key(bad)
    if bad and len(bad) > 8:
        assert bad not in str(err.value)  # a key is never echoed back


def test_private_key_file_with_garbage_is_refused(tmp_path: Path, wg: WireGuard) -> None:
    path = tmp_path / "k"
    path.write_text("not a key at all\n")
    with pytest.raises(InvalidConfig, match=f"private key in {path}") as err:
        wg.ensure_interface("corral0", "10.42.1.1/32", 51820, path)
    assert "not a key at all" not in str(err.value)


# ---------------------------------------------------------------- endpoints and peers


@pytest.mark.parametrize("good, parsed", [
    ("10.231.0.2:51820", ("10.231.0.2", 51820)),
    ("[fd00::1]:1", ("fd00::1", 1)),
    ("wg.example.org:65535", ("wg.example.org", 65535)),
    ("edge-1:51820", ("edge-1", 51820)),
])
def test_good_endpoints(good: str, parsed: tuple[str, int]) -> None:
    assert parse_endpoint(good) == parsed


@pytest.mark.parametrize("bad, why", [
    ("10.231.0.2", "expected host:port"),
    (":51820", "expected host:port"),
    ("10.231.0.2:0", "port must be 1..65535"),
    ("10.231.0.2:65536", "port must be 1..65535"),
    ("10.231.0.2:port", "port must be 1..65535"),
    ("10.231.0.300:51820", "not an IPv4 address"),
    ("fd00::1:51820", "needs brackets"),
    ("[fd00::zz]:51820", "not an IPv6 address"),
    ("[fd00::1]51820", "expected \\[IPv6\\]:port"),
    ("http://x:1", "neither an IP address nor a DNS name"),
    ("a b:1", "neither an IP address nor a DNS name"),
    (" 10.0.0.1:1", "expected host:port"),
    ("-bad-.org:1", "neither an IP address nor a DNS name"),
])
def test_bad_endpoints_are_refused_with_a_reason(bad: str, why: str) -> None:
    with pytest.raises(InvalidConfig, match=why):
        parse_endpoint(bad)
    with pytest.raises(InvalidConfig, match="bad endpoint"):
        Peer(K1, bad, ["10.42.2.0/24"])


def test_peer_normalizes_and_validates() -> None:
    p = Peer(K1, None, ["10.42.3.0/24", "10.42.2.0/24", "10.42.9.9"], 25)
    assert p.allowed_ips == ("10.42.2.0/24", "10.42.3.0/24", "10.42.9.9/32")
    with pytest.raises(InvalidConfig, match="host bits set"):
        Peer(K1, None, ["10.42.2.1/24"])
    with pytest.raises(InvalidConfig, match="repeat"):
        Peer(K1, None, ["10.42.2.0/24", "10.42.2.0/24"])
    with pytest.raises(InvalidConfig, match="not one string"):
        Peer(K1, None, "10.42.2.0/24")
    with pytest.raises(InvalidConfig, match="persistent_keepalive"):
        Peer(K1, None, [], 70000)
    with pytest.raises(InvalidConfig, match="peer public key"):
        Peer("nope", None, [])


DUMP = (
    "cHJpdmF0ZS1rZXktbmV2ZXItc2hvd24tMDEyMzQ1Njc4OTA=\t" + K1 + "\t51820\toff\n"
    + K2 + "\t(none)\t10.231.0.2:51820\t10.42.2.0/24\t1700000000\t1234\t5678\toff\n"
    + K3 + "\t(none)\t(none)\t10.42.3.0/24,10.42.30.0/24\t0\t0\t0\t25\n"
    + K4 + "\t(none)\t[fd00::4]:51820\t(none)\t1700000100\t1\t2\t5\n"
)


def test_dump_is_parsed_and_the_private_key_dropped() -> None:
    d = parse_dump(DUMP)
    assert d.public_key == K1 and d.listen_port == 51820 and d.fwmark == 0
    assert "cHJpdmF0ZS1rZXkt" not in repr(d)
    p2, p3, p4 = d.peers
    assert p2 == PeerStatus(K2, "10.231.0.2:51820", ("10.42.2.0/24",), 1700000000, 1234, 5678, 0)
    assert p3.endpoint is None and p3.allowed_ips == ("10.42.3.0/24", "10.42.30.0/24")
    assert p3.latest_handshake == 0 and p3.handshake_age() is None
    assert p3.persistent_keepalive == 25
    assert p4.endpoint == "[fd00::4]:51820" and p4.allowed_ips == ()
    assert p2.handshake_age(now=1700000042) == 42


@pytest.mark.parametrize("text, why", [
    ("", "empty"),
    ("a\tb\tc\n", "interface line has 3 fields"),
    ("(none)\t(none)\t1\toff\nx\ty\n", "line 2 has 2 fields"),
    ("(none)\t(none)\tport\toff\n", "bad listen port"),
])
def test_bad_dump_is_an_error(text: str, why: str) -> None:
    with pytest.raises(WireGuardError, match=why):
        parse_dump(text)


def test_peer_diff() -> None:
    current = parse_dump(DUMP).peers
    desired = [
        Peer(K2, "10.231.0.2:51820", ["10.42.2.0/24"]),  # same
        Peer(K3, None, ["10.42.30.0/24", "10.42.3.0/24"], 25),  # same (order, no endpoint)
        Peer(K1, "10.231.0.9:51820", ["10.42.9.0/24"]),  # new
    ]
    remove, add, update = diff_peers(current, desired)
    assert remove == [K4] and [p.public_key for p in add] == [K1] and update == []
    desired[0] = Peer(K2, "10.231.0.7:51820", ["10.42.2.0/24"])  # moved
    desired[1] = Peer(K3, None, ["10.42.3.0/24"], 25)  # lost a subnet
    _, _, update = diff_peers(current, desired)
    assert sorted(p.public_key for p in update) == sorted([K2, K3])
    _, _, update = diff_peers(current, [Peer(K2, "10.231.0.2:51820", ["10.42.2.0/24"], 10)])
    assert [p.public_key for p in update] == [K2]  # keepalive changed


# ---------------------------------------------------------------- ensure_interface


def test_userspace_fallback_when_the_kernel_lacks_the_module(host: FakeHost, wg: WireGuard,
                                                            keyfile: Path) -> None:
    host.reset()
    res = wg.ensure_interface("corral0", "10.42.1.1/32", 51820, keyfile, mtu=1380)
    assert res.backend == "userspace" and res.created
    assert res.public_key == fake_pub(keyfile.read_text().strip())
    assert host.writes() == [
        ["ip", "link", "add", "dev", "corral0", "type", "wireguard"],
        ["wireguard-go", "corral0"],
        ["wg", "set", "corral0", "listen-port", "51820", "private-key", str(keyfile)],
        ["ip", "address", "replace", "10.42.1.1/32", "dev", "corral0"],
        ["ip", "link", "set", "dev", "corral0", "mtu", "1380"],
        ["ip", "link", "set", "dev", "corral0", "up"],
    ]
    env = host.envs[host.calls.index(["wireguard-go", "corral0"])]
    assert env is not None and env["LOG_LEVEL"] == "" and env["WG_PROCESS_FOREGROUND"] == ""
    st = wg.status("corral0")
    assert st.healthy and st.backend == "userspace" and st.pid == host.daemons["corral0"]
    assert st.addresses == ("10.42.1.1/32",) and st.mtu == 1380 and st.listen_port == 51820


def test_kernel_module_is_used_when_present(tmp_path: Path) -> None:
    host = FakeHost(kernel_module=True)
    wg = make_wg(host)
    keyfile = tmp_path / "k"
    wg.ensure_private_key(keyfile)
    res = wg.ensure_interface("corral0", "10.42.1.1/32", 51820, keyfile)
    assert res.backend == "kernel" and not host.commands("wireguard-go")
    st = wg.status("corral0")
    assert st.healthy and st.backend == "kernel" and st.process_alive and st.pid is None


def test_forced_backends(tmp_path: Path) -> None:
    host = FakeHost(kernel_module=True)
    wg = make_wg(host, backend="userspace")
    keyfile = tmp_path / "k"
    wg.ensure_private_key(keyfile)
    assert wg.ensure_interface("corral0", "10.42.1.1/32", 51820, keyfile).backend == "userspace"
    assert not [c for c in host.calls if c[:2] == ["ip", "link"] and "wireguard" in c]
    nomod = FakeHost(kernel_module=False)
    with pytest.raises(CommandError, match="ip link add dev corral0 type wireguard.*Unknown"):
        make_wg(nomod, backend="kernel").ensure_interface("corral0", "10.42.1.1/32", 51820,
                                                          keyfile)
    with pytest.raises(ValueError, match="backend"):
        WireGuard(host, backend="magic")  # type: ignore[arg-type]


def test_second_ensure_only_reads(host: FakeHost, wg: WireGuard, keyfile: Path) -> None:
    up(wg, keyfile)
    host.reset()
    res = wg.ensure_interface("corral0", "10.42.1.1/32", 51820, keyfile)
    assert not res.created and res.changed == ()
    assert host.writes() == []
    assert len(host.calls) == 3  # link, dump, addresses (the public key is remembered)


def test_ensure_corrects_what_drifted(host: FakeHost, wg: WireGuard, keyfile: Path,
                                      tmp_path: Path) -> None:
    up(wg, keyfile)
    link = host.links["corral0"]
    link.addrs.append("10.99.0.1/24")
    link.up = False
    other = tmp_path / "other.key"
    other.write_text(K2 + "\n")
    os.chmod(other, 0o600)
    host.reset()
    res = wg.ensure_interface("corral0", "10.42.7.1/32", 51821, other, mtu=1400)
    assert set(res.changed) == {"port", "key", "address", "mtu", "up"} and not res.created
    assert link.addrs == ["10.42.7.1/32"] and link.up and link.mtu == 1400
    assert link.port == 51821 and link.private == K2
    assert ["ip", "address", "delete", "10.42.1.1/32", "dev", "corral0"] in host.calls
    assert ["ip", "address", "delete", "10.99.0.1/24", "dev", "corral0"] in host.calls


def test_killed_daemon_is_reported_and_rebuilt(host: FakeHost, wg: WireGuard,
                                               keyfile: Path) -> None:
    up(wg, keyfile)
    wg.set_peers("corral0", [Peer(K2, "10.231.0.2:51820", ["10.42.2.0/24"], 25)])
    old = host.daemons["corral0"]
    host.kill_daemon("corral0")
    st = wg.status("corral0")
    assert not st.healthy and not st.present and not st.process_alive
    assert "does not exist" in (st.error or "")
    res = wg.ensure_interface("corral0", "10.42.1.1/32", 51820, keyfile)
    assert res.created and host.daemons["corral0"] != old
    assert host.links["corral0"].peers == {}  # peers went with it: the caller sets them again


def test_tun_link_without_daemon_is_rebuilt(host: FakeHost, wg: WireGuard,
                                            keyfile: Path) -> None:
    up(wg, keyfile)
    del host.daemons["corral0"]  # process gone, link somehow still there
    st = wg.status("corral0")
    assert st.present and not st.healthy and "no wireguard-go answers" in (st.error or "")
    res = wg.ensure_interface("corral0", "10.42.1.1/32", 51820, keyfile)
    assert res.created and ["ip", "link", "delete", "dev", "corral0"] in host.calls
    assert wg.status("corral0").healthy


def test_foreign_link_of_that_name_is_left_alone(host: FakeHost, wg: WireGuard,
                                                keyfile: Path) -> None:
    host.links["corral0"] = Link("bridge")
    with pytest.raises(WireGuardError, match="corral0 exists and is a bridge link"):
        up(wg, keyfile)
    assert "not WireGuard" in (wg.status("corral0").error or "")
    with pytest.raises(WireGuardError, match="not removing it"):
        wg.remove_interface("corral0")
    assert "corral0" in host.links


def test_wireguard_go_failure_names_both_attempts(host: FakeHost, wg: WireGuard,
                                                  keyfile: Path) -> None:
    host.fail[("wireguard-go",)] = CommandResult(1, "", "noise\nERROR: Failed to create TUN "
                                                        "device: operation not permitted\n")
    with pytest.raises(WireGuardError) as err:
        up(wg, keyfile)
    msg = str(err.value)
    assert "Unknown device type" in msg and "wireguard-go corral0" in msg
    assert "operation not permitted" in msg


@pytest.mark.parametrize("kwargs, why", [
    ({"name": "a-name-longer-than-15"}, "bad interface name"),
    ({"name": "bad/name"}, "bad interface name"),
    ({"address_cidr": "10.42.1.300/32"}, "bad interface address"),
    ({"listen_port": 0}, "listen port"),
    ({"listen_port": "51820"}, "listen port"),
    ({"mtu": 500}, "MTU"),
])
def test_ensure_refuses_bad_arguments(wg: WireGuard, keyfile: Path, host: FakeHost,
                                      kwargs: dict[str, Any], why: str) -> None:
    args: dict[str, Any] = {"name": "corral0", "address_cidr": "10.42.1.1/32",
                            "listen_port": 51820, "private_key_path": keyfile, "mtu": 1420}
    args.update(kwargs)
    host.reset()
    with pytest.raises(InvalidConfig, match=why):
        wg.ensure_interface(**args)
    assert host.writes() == []


def test_remove_interface(host: FakeHost, wg: WireGuard, keyfile: Path) -> None:
    up(wg, keyfile)
    assert wg.remove_interface("corral0")
    assert "corral0" not in host.links and "corral0" not in host.daemons
    assert not wg.remove_interface("corral0")
    # a daemon that lost its link is ended
    host.daemons["corral1"] = 4242
    assert not wg.remove_interface("corral1")
    assert ["kill", "-TERM", "4242"] in host.calls and "corral1" not in host.daemons


# ---------------------------------------------------------------- peers


def test_set_peers_applies_exactly_the_desired_set(host: FakeHost, wg: WireGuard,
                                                   keyfile: Path) -> None:
    up(wg, keyfile)
    host.reset()
    ch = wg.set_peers("corral0", [
        Peer(K2, "10.231.0.2:51820", ["10.42.2.0/24"], 25),
        Peer(K3, None, ["10.42.3.0/24"]),
    ])
    assert sorted(ch.added) == sorted([K2, K3]) and not ch.removed
    (cmd,) = host.commands("wg")[-1:]
    assert cmd[:3] == ["wg", "set", "corral0"]
    assert host.writes() == [cmd]  # one wg set for everything
    peers = host.links["corral0"].peers
    assert peers[K2] == WgPeer("10.231.0.2:51820", ["10.42.2.0/24"], 25)
    assert peers[K3] == WgPeer(None, ["10.42.3.0/24"], 0)

    host.reset()
    assert not wg.set_peers("corral0", [Peer(K2, "10.231.0.2:51820", ["10.42.2.0/24"], 25),
                                        Peer(K3, None, ["10.42.3.0/24"])]).changed
    assert host.writes() == []

    ch = wg.set_peers("corral0", [Peer(K2, "10.231.0.5:51820", ["10.42.2.0/24"], 25),
                                  Peer(K4, "[fd00::4]:51820", ["10.42.4.0/24"])])
    assert ch.added == (K4,) and ch.updated == (K2,) and ch.removed == (K3,)
    assert set(peers) == {K2, K4} and peers[K2].endpoint == "10.231.0.5:51820"
    assert wg.set_peers("corral0", []).removed == tuple(sorted([K2, K4]))
    assert peers == {}


def test_learnt_endpoint_is_reused_when_a_natted_peer_comes_back(host: FakeHost, wg: WireGuard,
                                                                 keyfile: Path) -> None:
    up(wg, keyfile)
    wg.set_peers("corral0", [Peer(K3, None, ["10.42.3.0/24"], 25)])
    host.links["corral0"].peers[K3].endpoint = "10.231.0.3:40000"  # learnt by roaming
    assert wg.learnt_endpoints("corral0") == {}  # not seen yet
    wg.status("corral0")
    assert wg.learnt_endpoints("corral0") == {K3: "10.231.0.3:40000"}
    host.kill_daemon("corral0")
    up(wg, keyfile)
    wg.set_peers("corral0", [Peer(K3, None, ["10.42.3.0/24"], 25)])
    assert host.links["corral0"].peers[K3].endpoint == "10.231.0.3:40000"
    # and not when asked not to
    host.kill_daemon("corral0")
    up(wg, keyfile)
    wg.set_peers("corral0", [Peer(K3, None, ["10.42.3.0/24"], 25)], reuse_endpoints=False)
    assert host.links["corral0"].peers[K3].endpoint is None
    # a deliberate removal of the interface forgets them
    wg.remove_interface("corral0")
    assert wg.learnt_endpoints("corral0") == {}


@pytest.mark.parametrize("peers, why", [
    ([Peer(K2, None, ["10.42.2.0/24"]), Peer(K2, None, ["10.42.3.0/24"])], "listed twice"),
    ([Peer(K2, None, ["10.42.0.0/16"]), Peer(K3, None, ["10.42.3.0/24"])], "overlap"),
    ([Peer(K2, None, ["10.42.2.0/24"]), Peer(K3, None, ["10.42.2.128/25"])], "overlap"),
])
def test_inconsistent_peer_sets_are_refused(host: FakeHost, wg: WireGuard, keyfile: Path,
                                            peers: list[Peer], why: str) -> None:
    up(wg, keyfile)
    host.reset()
    with pytest.raises(InvalidConfig, match=why):
        wg.set_peers("corral0", peers)
    assert host.writes() == []


def test_own_key_as_peer_is_refused(wg: WireGuard, keyfile: Path) -> None:
    up(wg, keyfile)
    own = wg.public_key_of(keyfile)
    with pytest.raises(InvalidConfig, match="own key"):
        wg.set_peers("corral0", [Peer(own, None, ["10.42.2.0/24"])])


def test_set_peers_on_a_missing_interface_names_the_command(wg: WireGuard) -> None:
    with pytest.raises(CommandError, match="`wg show corral0 dump` failed.*No such device"):
        wg.set_peers("corral0", [])


# ---------------------------------------------------------------- routes and firewall


def test_routes(host: FakeHost, wg: WireGuard, keyfile: Path) -> None:
    up(wg, keyfile)
    host.reset()
    assert wg.set_routes("corral0", ["10.42.2.0/24", "10.42.3.0/24"]) == (
        ["10.42.2.0/24", "10.42.3.0/24"], [])
    assert ["ip", "route", "replace", "10.42.2.0/24", "dev", "corral0"] in host.calls
    assert wg.routes("corral0") == ["10.42.2.0/24", "10.42.3.0/24"]
    host.reset()
    assert wg.set_routes("corral0", ["10.42.3.0/24", "10.42.4.0/24"]) == (
        ["10.42.4.0/24"], ["10.42.2.0/24"])
    assert host.writes() == [["ip", "route", "delete", "10.42.2.0/24", "dev", "corral0"],
                             ["ip", "route", "replace", "10.42.4.0/24", "dev", "corral0"]]
    host.reset()
    wg.set_routes("corral0", ["10.42.3.0/24", "10.42.4.0/24"])
    assert host.writes() == []
    assert not wg.route_remove("corral0", "10.42.9.0/24")
    with pytest.raises(InvalidConfig, match="bad route"):
        wg.set_routes("corral0", ["10.42.3.1/24"])


def test_forwarding_rules_are_idempotent_and_removable(host: FakeHost, wg: WireGuard) -> None:
    assert wg.allow_forwarding("corral0", "corral-br") == 2
    assert wg.allow_forwarding("corral0", "corral-br") == 0
    rules = host.rules[("filter", "FORWARD")]
    assert rules == [
        ["-i", "corral-br", "-o", "corral0", "-m", "comment", "--comment", "corral-overlay",
         "-j", "ACCEPT"],
        ["-i", "corral0", "-o", "corral-br", "-m", "comment", "--comment", "corral-overlay",
         "-j", "ACCEPT"]]
    assert wg.disallow_forwarding("corral0", "corral-br") == 2
    assert rules == [] and wg.disallow_forwarding("corral0", "corral-br") == 0


def test_forwarding_rules_go_to_docker_user_when_docker_made_it(host: FakeHost,
                                                                wg: WireGuard) -> None:
    host.rules[("filter", "DOCKER-USER")] = []
    assert wg.allow_forwarding("corral0", "corral-br") == 2
    assert len(host.rules[("filter", "DOCKER-USER")]) == 2
    assert host.rules[("filter", "FORWARD")] == []
    assert wg.disallow_forwarding("corral0", "corral-br") == 2


def test_iptables_errors_are_not_mistaken_for_a_missing_rule(host: FakeHost,
                                                             wg: WireGuard) -> None:
    host.fail[("iptables", "-w", "5", "-t", "filter", "-C")] = CommandResult(
        4, "", "iptables v1.8.9 (nf_tables): Could not fetch rule set generation id\n")
    with pytest.raises(CommandError, match="exit 4.*rule set generation"):
        wg.allow_forwarding("corral0", "corral-br")


def test_masquerade_exemption(host: FakeHost, wg: WireGuard) -> None:
    assert wg.exempt_from_masquerade("10.42.1.0/24", "10.42.0.0/16")
    assert not wg.exempt_from_masquerade("10.42.1.0/24", "10.42.0.0/16")
    assert host.rules[("nat", "POSTROUTING")] == [
        ["-s", "10.42.1.0/24", "-d", "10.42.0.0/16", "-m", "comment", "--comment",
         "corral-overlay", "-j", "RETURN"]]
    assert wg.remove_masquerade_exemption("10.42.1.0/24", "10.42.0.0/16")
    assert not wg.remove_masquerade_exemption("10.42.1.0/24", "10.42.0.0/16")


def test_ip_forwarding(host: FakeHost, wg: WireGuard) -> None:
    wg.enable_ip_forwarding()
    assert host.sysctl == {"net.ipv4.ip_forward": "1"}


# ---------------------------------------------------------------- the real runner and probes


def test_subprocess_runner_reports_exit_stdout_and_stderr() -> None:
    run = SubprocessRunner()
    res = run([sys.executable, "-c", "import sys; print(sys.stdin.read().upper());"
                                     "print('warn', file=sys.stderr); sys.exit(3)"],
              input="hello")
    assert res == CommandResult(3, "HELLO\n", "warn\n")


def test_subprocess_runner_environment_and_prefix() -> None:
    os.environ["CORRAL_WG_TEST_UNSET"] = "x"
    try:
        run = SubprocessRunner(["env"])
        res = run(["sh", "-c", 'echo "${CORRAL_WG_TEST_UNSET-unset} $EXTRA"'],
                  env={"CORRAL_WG_TEST_UNSET": "", "EXTRA": "yes"})
    finally:
        del os.environ["CORRAL_WG_TEST_UNSET"]
    assert res.stdout == "unset yes\n"
    assert netns_runner("/run/netns/x").prefix == ["nsenter", "--net=/run/netns/x", "--"]


def test_subprocess_runner_timeout_and_missing_command() -> None:
    run = SubprocessRunner()
    with pytest.raises(CommandError, match="`sleep 5` timed out: no answer within 0.2s"):
        run(["sleep", "5"], timeout=0.2)
    with pytest.raises(CommandError, match="cannot run /nonexistent/wg"):
        run(["/nonexistent/wg", "show"])


def test_uapi_answers_on_a_live_socket_only(tmp_path: Path) -> None:
    path = tmp_path / "corral0.sock"
    assert not uapi_answers(path)
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(str(path))
    srv.listen(1)
    try:
        assert uapi_answers(path)
    finally:
        srv.close()
    assert path.exists() and not uapi_answers(path)  # stale socket file, as after SIGKILL


def test_find_wireguard_go_reads_proc(tmp_path: Path) -> None:
    def proc(pid: int, argv: list[str], state: str = "S") -> None:
        d = tmp_path / str(pid)
        d.mkdir()
        (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
        (d / "stat").write_text(f"{pid} (x) {state} 1 2 3")

    proc(10, ["wireguard-go", "corral0"], state="Z")  # a zombie parent
    proc(11, ["/usr/bin/wireguard-go", "corral0"])
    proc(12, ["wireguard-go", "corral1"])
    proc(13, ["vim", "corral0"])
    (tmp_path / "self").mkdir()
    assert find_wireguard_go("corral0", tmp_path) == 11
    assert find_wireguard_go("corral1", tmp_path) == 12
    assert find_wireguard_go("corral2", tmp_path) is None
    # an aarch64 build run by binfmt's qemu-user (the test bed's arm64 hosts)
    proc(14, ["/usr/libexec/qemu-binfmt/aarch64-binfmt-P", "/usr/bin/wireguard-go", "wireguard-go", "corral3"])
    proc(15, ["/usr/bin/qemu-aarch64-static", "/bin/vim", "corral3"])
    assert find_wireguard_go("corral3", tmp_path) == 14
