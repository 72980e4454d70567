"""WireGuard on one host, through the ``ip``, ``wg`` and ``iptables`` commands (stdlib only).

The overlay's local half: one WireGuard interface per host, its peers, its routes and the
firewall rules that let overlay traffic reach the host's container bridge.

Backends: :meth:`WireGuard.ensure_interface` tries the kernel module first
(``ip link add NAME type wireguard``) and falls back to ``wireguard-go NAME`` in user space
(Debian's ``wireguard-go``), which creates a TUN device, listens on the UAPI socket
``/var/run/wireguard/NAME.sock`` and daemonizes (it outlives the agent, so an agent restart
does not cut the overlay). ``wg`` speaks to either. Killing ``wireguard-go`` closes the TUN
device, so the link disappears with it: :meth:`WireGuard.status` sees that (no link, no
process answering on the socket) and ``ensure_interface`` builds it again; the peers, the
address and the routes are gone with the link and must be applied again
(:meth:`WireGuard.set_peers`, :meth:`WireGuard.set_routes`), which is what an agent's
reconcile loop does anyway. Deleting the link (``ip link del``) also ends ``wireguard-go``.

Sessions after a restart: the side that kept running still holds session keys the new
wireguard-go does not know, and keeps using them until its rekey timer gives up (about
15 s of failed sends). The restored side ends that at once if it starts a handshake itself:
give peers a persistent keepalive (setting one starts a handshake) and an endpoint; for a
peer behind NAT, whose endpoint is not configured, :meth:`WireGuard.set_peers` reuses the
endpoint it last saw for it (in memory, per interface) when it adds the peer back.

The UAPI socket path is global to the machine, not per network namespace: two
``wireguard-go`` interfaces of the same name in two namespaces of one machine collide, so
give each host's interface a distinct name there.

Every command goes through a :class:`Runner` (``argv`` in, returncode/stdout/stderr out,
with a timeout); :class:`SubprocessRunner` runs them for real, optionally behind a prefix
such as ``nsenter --net=/run/netns/X --``; tests pass a fake. Private keys never appear in
an argv, a log line or an error message: they go through stdin and a 0600 file.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal, Protocol

from corral.net.keys import key_problem

log = logging.getLogger("corral.agent.wireguard")

Backend = Literal["kernel", "userspace"]
BackendChoice = Literal["auto", "kernel", "userspace"]

UAPI_DIR = Path("/var/run/wireguard")
DEFAULT_MTU = 1420
DEFAULT_TIMEOUT = 10.0
RULE_COMMENT = "corral-overlay"
MAX_KEEPALIVE = 65535

_IFNAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}$")
_HOSTNAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$")


# ---------------------------------------------------------------- errors


class WireGuardError(RuntimeError):
    """Something about the overlay interface could not be done; the message says what."""


class CommandError(WireGuardError):
    """A command failed or did not answer in time; names the command and its stderr."""

    def __init__(self, argv: Sequence[str], returncode: int | None, stderr: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr.strip()
        what = "timed out" if returncode is None else f"failed (exit {returncode})"
        super().__init__(f"`{' '.join(self.argv)}` {what}"
                         + (f": {self.stderr}" if self.stderr else ""))


class InvalidConfig(WireGuardError, ValueError):
    """A key, endpoint, address or name is malformed; the message says which and why."""


# ---------------------------------------------------------------- running commands


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str = ""
    stderr: str = ""


class Runner(Protocol):
    """Runs one command: ``argv``, optional stdin text, extra environment, a timeout.

    Returns the result whatever the exit status; raises :class:`CommandError` only when the
    command cannot be started or does not finish within ``timeout``.
    """

    def __call__(self, argv: Sequence[str], *, input: str | None = None,
                 env: Mapping[str, str] | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> CommandResult: ...


class SubprocessRunner:
    """Runs commands with :mod:`subprocess`, behind ``prefix`` (e.g. an ``nsenter`` argv).

    Each command starts in a new session, so a daemon it leaves behind (``wireguard-go``)
    is not in the caller's process group and survives a Ctrl-C to the agent.
    """

    def __init__(self, prefix: Sequence[str] = ()) -> None:
        self.prefix = list(prefix)

    def __call__(self, argv: Sequence[str], *, input: str | None = None,
                 env: Mapping[str, str] | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> CommandResult:
        full_env = None
        if env is not None:
            full_env = dict(os.environ)
            full_env.update(env)
            for key in [k for k, v in env.items() if v == ""]:
                full_env.pop(key, None)  # "" means: unset it
        try:
            res = subprocess.run([*self.prefix, *argv], input=input, capture_output=True,
                                 text=True, env=full_env, timeout=timeout, check=False,
                                 start_new_session=True, stdin=None if input is not None
                                 else subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise CommandError(argv, None, f"no answer within {timeout:g}s") from None
        except OSError as exc:
            raise CommandError(argv, 127, f"cannot run {argv[0]}: {exc.strerror}") from None
        return CommandResult(res.returncode, res.stdout, res.stderr)

    def __repr__(self) -> str:
        return f"SubprocessRunner(prefix={self.prefix!r})"


def netns_runner(netns_path: str) -> SubprocessRunner:
    """A runner whose commands run in the network namespace at ``netns_path``."""
    return SubprocessRunner(["nsenter", f"--net={netns_path}", "--"])


# ---------------------------------------------------------------- validation


def validate_key(key: str, what: str = "public key") -> str:
    """Return ``key`` if it is the base64 of exactly 32 bytes, else raise InvalidConfig
    (whose message never repeats the key: it may be a private one)."""
    problem = key_problem(key, what)
    if problem is not None:
        raise InvalidConfig(problem)
    return key


def validate_interface_name(name: str) -> str:
    if not isinstance(name, str) or not _IFNAME.match(name):
        raise InvalidConfig(f"bad interface name {name!r}: 1 to 15 characters of "
                            f"[A-Za-z0-9_.-], not starting with . or -")
    return name


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """Split ``host:port`` (IPv4, ``[IPv6]`` or a DNS name); raise InvalidConfig if malformed."""
    if not isinstance(endpoint, str) or not endpoint or endpoint != endpoint.strip():
        raise InvalidConfig(f"bad endpoint {endpoint!r}: expected host:port")
    if endpoint.startswith("["):
        host, sep, port_s = endpoint[1:].partition("]:")
        if not sep:
            raise InvalidConfig(f"bad endpoint {endpoint!r}: expected [IPv6]:port")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise InvalidConfig(f"bad endpoint {endpoint!r}: {host!r} is not an IPv6 "
                                f"address") from None
    else:
        host, sep, port_s = endpoint.rpartition(":")
        if not sep or not host:
            raise InvalidConfig(f"bad endpoint {endpoint!r}: expected host:port "
                                f"(IPv6 as [addr]:port)")
        if ":" in host:
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise InvalidConfig(f"bad endpoint {endpoint!r}: {host!r} is neither an IP "
                                    f"address nor a DNS name") from None
            raise InvalidConfig(f"bad endpoint {endpoint!r}: an IPv6 address needs "
                                f"brackets, [addr]:port")
        if re.fullmatch(r"[0-9.]+", host):
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise InvalidConfig(f"bad endpoint {endpoint!r}: {host!r} is not an IPv4 "
                                    f"address") from None
        elif not _HOSTNAME.match(host):
            raise InvalidConfig(f"bad endpoint {endpoint!r}: {host!r} is neither an IP "
                                f"address nor a DNS name")
    if not port_s.isdigit() or not 1 <= int(port_s) <= 65535:
        raise InvalidConfig(f"bad endpoint {endpoint!r}: port must be 1..65535")
    return host, int(port_s)


def validate_endpoint(endpoint: str) -> str:
    parse_endpoint(endpoint)
    return endpoint


def normalize_network(cidr: str, what: str = "allowed IP") -> str:
    """``10.42.1.0/24`` as the kernel writes it; a bare address is a /32 (/128)."""
    try:
        return str(ipaddress.ip_network(cidr, strict=True))
    except ValueError as exc:
        raise InvalidConfig(f"bad {what} {cidr!r}: {exc}") from None


def _interface_address(cidr: str) -> str:
    try:
        return str(ipaddress.ip_interface(cidr))
    except ValueError as exc:
        raise InvalidConfig(f"bad interface address {cidr!r}: {exc}") from None


# ---------------------------------------------------------------- data


@dataclass(frozen=True)
class Peer:
    """A peer as it should be: ``endpoint`` None means "not known here" (the peer is behind
    NAT and will come to us); ``persistent_keepalive`` 0 means off."""

    public_key: str
    endpoint: str | None = None
    allowed_ips: Sequence[str] = ()  # stored as a sorted tuple of normalized CIDRs
    persistent_keepalive: int = 0

    def __post_init__(self) -> None:
        validate_key(self.public_key, "peer public key")
        if self.endpoint is not None:
            validate_endpoint(self.endpoint)
        if isinstance(self.allowed_ips, str):
            raise InvalidConfig("allowed_ips must be a list of CIDRs, not one string")
        nets = tuple(normalize_network(c) for c in self.allowed_ips)
        if len(set(nets)) != len(nets):
            raise InvalidConfig(f"peer {self.public_key[:8]}…: allowed IPs repeat: "
                                f"{', '.join(nets)}")
        object.__setattr__(self, "allowed_ips", tuple(sorted(nets)))
        ka = self.persistent_keepalive
        if isinstance(ka, bool) or not isinstance(ka, int) or not 0 <= ka <= MAX_KEEPALIVE:
            raise InvalidConfig(f"persistent_keepalive must be 0..{MAX_KEEPALIVE} seconds, "
                                f"got {ka!r}")


@dataclass(frozen=True)
class PeerStatus:
    """One peer as ``wg show NAME dump`` reports it."""

    public_key: str
    endpoint: str | None
    allowed_ips: tuple[str, ...]
    latest_handshake: int  # epoch seconds; 0: never
    rx_bytes: int
    tx_bytes: int
    persistent_keepalive: int  # 0: off

    def handshake_age(self, now: float | None = None) -> float | None:
        """Seconds since the latest handshake, None if there never was one."""
        if not self.latest_handshake:
            return None
        return max(0.0, (time.time() if now is None else now) - self.latest_handshake)


@dataclass(frozen=True)
class Dump:
    """``wg show NAME dump``, without the private key."""

    public_key: str | None
    listen_port: int
    fwmark: int
    peers: tuple[PeerStatus, ...]


@dataclass(frozen=True)
class InterfaceStatus:
    """What is there now: the link, the process behind it (user space), the peers."""

    name: str
    present: bool  # the link exists
    backend: Backend | None = None
    daemon_answers: bool = False  # something listens on wireguard-go's UAPI socket
    pid: int | None = None  # the wireguard-go process, when found
    up: bool = False
    mtu: int | None = None
    addresses: tuple[str, ...] = ()
    public_key: str | None = None
    listen_port: int | None = None
    peers: tuple[PeerStatus, ...] = ()
    error: str | None = None  # why it is not healthy, if it is not

    @property
    def process_alive(self) -> bool:
        """The kernel module, or a wireguard-go answering on its socket."""
        return self.backend == "kernel" or self.daemon_answers

    @property
    def healthy(self) -> bool:
        return self.present and self.up and self.process_alive and self.error is None

    def peer(self, public_key: str) -> PeerStatus | None:
        return next((p for p in self.peers if p.public_key == public_key), None)


@dataclass(frozen=True)
class EnsureResult:
    name: str
    backend: Backend
    created: bool  # the link was (re)made: peers and routes must be applied again
    public_key: str
    changed: tuple[str, ...] = ()  # what was set: "link", "key", "port", "address", "mtu", "up"


@dataclass(frozen=True)
class PeerChanges:
    added: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.added or self.updated or self.removed)


# ---------------------------------------------------------------- parsing


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise WireGuardError(f"wg dump: bad {what} {text!r}") from None


def parse_dump(text: str) -> Dump:
    """Parse ``wg show NAME dump`` (tab-separated; first line the interface, then peers).

    The interface line starts with the private key: it is dropped here and never kept."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise WireGuardError("wg dump: empty output")
    head = lines[0].split("\t")
    if len(head) != 4:
        raise WireGuardError(f"wg dump: interface line has {len(head)} fields, expected 4")
    _, public, port, fwmark = head
    peers = []
    for n, line in enumerate(lines[1:], start=2):
        f = line.split("\t")
        if len(f) != 8:
            raise WireGuardError(f"wg dump: line {n} has {len(f)} fields, expected 8")
        key, _psk, endpoint, allowed, handshake, rx, tx, keepalive = f
        peers.append(PeerStatus(
            public_key=key,
            endpoint=None if endpoint == "(none)" else endpoint,
            allowed_ips=() if allowed in ("(none)", "") else tuple(sorted(allowed.split(","))),
            latest_handshake=_int(handshake, "handshake time"),
            rx_bytes=_int(rx, "rx bytes"),
            tx_bytes=_int(tx, "tx bytes"),
            persistent_keepalive=0 if keepalive == "off" else _int(keepalive, "keepalive"),
        ))
    return Dump(public_key=None if public == "(none)" else public,
                listen_port=_int(port, "listen port"),
                fwmark=0 if fwmark == "off" else _int(fwmark, "fwmark"),
                peers=tuple(peers))


def diff_peers(current: Iterable[PeerStatus], desired: Iterable[Peer]) -> tuple[
        list[str], list[Peer], list[Peer]]:
    """(keys to remove, peers to add, peers to update) to go from ``current`` to ``desired``.

    A desired endpoint of None leaves whatever endpoint the peer has (learnt by roaming);
    a DNS-name endpoint is always set again (the dump shows the resolved address)."""
    have = {p.public_key: p for p in current}
    want = {p.public_key: p for p in desired}
    remove = sorted(k for k in have if k not in want)
    add = [p for k, p in sorted(want.items()) if k not in have]
    update = []
    for key, peer in sorted(want.items()):
        cur = have.get(key)
        if cur is None:
            continue
        if (tuple(sorted(cur.allowed_ips)) != tuple(peer.allowed_ips)
                or cur.persistent_keepalive != peer.persistent_keepalive
                or (peer.endpoint is not None and cur.endpoint != peer.endpoint)):
            update.append(peer)
    return remove, add, update


def _peer_args(peer: Peer) -> list[str]:
    args = ["peer", peer.public_key]
    if peer.endpoint is not None:
        args += ["endpoint", peer.endpoint]
    args += ["allowed-ips", ",".join(peer.allowed_ips)]
    args += ["persistent-keepalive", str(peer.persistent_keepalive or "off")]
    return args


def _check_peer_set(peers: Sequence[Peer], own_key: str | None) -> None:
    seen: dict[str, int] = {}
    owner: dict[ipaddress.IPv4Network | ipaddress.IPv6Network, str] = {}
    for peer in peers:
        if peer.public_key in seen:
            raise InvalidConfig(f"peer {peer.public_key} is listed twice")
        seen[peer.public_key] = 1
        if own_key is not None and peer.public_key == own_key:
            raise InvalidConfig(f"peer {peer.public_key} is this interface's own key")
        for cidr in peer.allowed_ips:
            net = ipaddress.ip_network(cidr)
            for other, key in owner.items():
                if net.version == other.version and net.overlaps(other):  # type: ignore[arg-type]
                    raise InvalidConfig(f"allowed IPs overlap: {net} of peer "
                                        f"{peer.public_key[:8]}… and {other} of peer "
                                        f"{key[:8]}…")
            owner[net] = peer.public_key


# ---------------------------------------------------------------- the wrapper


def uapi_answers(path: Path, timeout: float = 1.0) -> bool:
    """True if something listens on the unix socket ``path`` (wireguard-go's UAPI socket).

    A killed wireguard-go leaves its socket file behind; connecting to it is refused."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        sock.close()


def find_wireguard_go(name: str, proc: Path = Path("/proc")) -> int | None:
    """The pid of the live ``wireguard-go NAME`` process, or None.

    (The UAPI socket cannot tell: it was made by the process that daemonized, which is gone,
    so SO_PEERCRED names a dead pid.)"""
    found = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if argv and b"qemu" in argv[0]:  # a foreign build run by binfmt's qemu:
            argv = argv[1:]  # `qemu-aarch64 /usr/bin/wireguard-go wireguard-go NAME`
        if (argv and os.path.basename(argv[0]) == b"wireguard-go"
                and name.encode() in argv[1:] and state != "Z"):
            found.append(int(entry.name))
    return max(found) if found else None  # the daemon is the newest of a just-started pair


class WireGuard:
    """One host's WireGuard interfaces, driven through ``runner`` (see the module doc).

    ``backend``: "auto" (kernel module if the kernel has it, else wireguard-go), or force one.
    ``uapi_answers`` and ``find_pid`` look at the wireguard-go process (injectable for tests).
    """

    def __init__(self, runner: Runner | None = None, *, backend: BackendChoice = "auto",
                 uapi_dir: Path = UAPI_DIR, wireguard_go: str = "wireguard-go",
                 timeout: float = DEFAULT_TIMEOUT,
                 uapi_answers: Callable[[Path], bool] = uapi_answers,
                 find_pid: Callable[[str], int | None] = find_wireguard_go,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if backend not in ("auto", "kernel", "userspace"):
            raise ValueError(f"backend must be auto, kernel or userspace, not {backend!r}")
        self.runner: Runner = runner or SubprocessRunner()
        self.backend = backend
        self.uapi_dir = Path(uapi_dir)
        self.wireguard_go = wireguard_go
        self.timeout = timeout
        self._uapi_answers = uapi_answers
        self._find_pid = find_pid
        self._sleep = sleep
        self._pubkeys: dict[str, tuple[tuple[str, int, int, int], str]] = {}
        self._endpoints: dict[str, dict[str, str]] = {}  # interface -> peer key -> endpoint

    # ------------------------------------------------------------ commands

    def _call(self, argv: Sequence[str], *, input: str | None = None,
              env: Mapping[str, str] | None = None, timeout: float | None = None) -> CommandResult:
        return self.runner(list(argv), input=input, env=env,
                           timeout=self.timeout if timeout is None else timeout)

    def _must(self, argv: Sequence[str], *, input: str | None = None,
              env: Mapping[str, str] | None = None, timeout: float | None = None) -> str:
        res = self._call(argv, input=input, env=env, timeout=timeout)
        if res.returncode != 0:
            raise CommandError(argv, res.returncode, res.stderr)
        return res.stdout

    def _json(self, argv: Sequence[str]) -> Any:
        out = self._must(argv)
        try:
            return json.loads(out or "[]")
        except json.JSONDecodeError:
            raise WireGuardError(f"`{' '.join(argv)}` printed no JSON: {out[:200]!r}") from None

    # ------------------------------------------------------------ keys

    def genkey(self) -> str:
        """A new private key (``wg genkey``). Keep it secret: write it with ensure_private_key."""
        key = self._must(["wg", "genkey"]).strip()
        return validate_key(key, "private key from wg genkey")

    def pubkey(self, private_key: str) -> str:
        """The public key of ``private_key`` (``wg pubkey``, the key on stdin)."""
        validate_key(private_key, "private key")
        res = self._call(["wg", "pubkey"], input=private_key + "\n")
        if res.returncode != 0:
            raise CommandError(["wg", "pubkey"], res.returncode, "could not derive the public key")
        return validate_key(res.stdout.strip(), "public key from wg pubkey")

    def ensure_private_key(self, path: str | os.PathLike[str]) -> str:
        """Make ``path`` hold a private key (mode 0600; generated here if missing or empty)
        and return its public key. Only the public key ever leaves the host."""
        p = Path(path)
        if not p.exists() or p.stat().st_size == 0:
            p.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            key = self.genkey()
            tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, (key + "\n").encode())
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, p)
            log.info("generated a WireGuard private key in %s", p)
        elif p.stat().st_mode & 0o077:
            os.chmod(p, 0o600)
        return self.public_key_of(p)

    def public_key_of(self, path: str | os.PathLike[str]) -> str:
        """The public key of the private key in ``path`` (remembered while the file is
        unchanged, so a steady reconcile loop does not run ``wg pubkey`` each time)."""
        p = Path(path)
        try:
            st = p.stat()
        except OSError as exc:
            raise WireGuardError(f"cannot read the private key {p}: {exc.strerror}") from None
        stamp = (str(p), st.st_mtime_ns, st.st_size, st.st_ino)
        cached = self._pubkeys.get(stamp[0])
        if cached is not None and cached[0] == stamp:
            return cached[1]
        public = self.pubkey(self._read_private_key(p))
        self._pubkeys[stamp[0]] = (stamp, public)
        return public

    @staticmethod
    def _read_private_key(path: Path) -> str:
        try:
            return validate_key(path.read_text().strip(), f"private key in {path}")
        except OSError as exc:
            raise WireGuardError(f"cannot read the private key {path}: {exc.strerror}") from None

    # ------------------------------------------------------------ inspecting

    def _link(self, name: str) -> dict[str, Any] | None:
        res = self._call(["ip", "-details", "-json", "link", "show", "dev", name])
        if res.returncode != 0:
            if "does not exist" in res.stderr or "Cannot find device" in res.stderr:
                return None
            raise CommandError(["ip", "-details", "-json", "link", "show", "dev", name],
                               res.returncode, res.stderr)
        try:
            links = json.loads(res.stdout or "[]")
        except json.JSONDecodeError:
            raise WireGuardError(f"ip link show {name}: unreadable JSON") from None
        return links[0] if links else None

    @staticmethod
    def _kind(link: Mapping[str, Any]) -> str:
        return str((link.get("linkinfo") or {}).get("info_kind") or "")

    def _addresses(self, name: str) -> list[str]:
        data = self._json(["ip", "-json", "address", "show", "dev", name])
        out = []
        for entry in data:
            for a in entry.get("addr_info", []):
                if a.get("scope", "global") == "global" and "local" in a:
                    out.append(f"{a['local']}/{a['prefixlen']}")
        return out

    def socket_path(self, name: str) -> Path:
        return self.uapi_dir / f"{name}.sock"

    def dump(self, name: str) -> Dump:
        """``wg show NAME dump``, parsed; remembers each peer's endpoint (see set_peers)."""
        d = parse_dump(self._must(["wg", "show", validate_interface_name(name), "dump"]))
        seen = self._endpoints.setdefault(name, {})
        for p in d.peers:
            if p.endpoint is not None:
                seen[p.public_key] = p.endpoint
        return d

    def learnt_endpoints(self, name: str) -> dict[str, str]:
        """The last endpoint seen for each peer of ``name`` (configured or learnt by roaming,
        e.g. a NATed peer's public address:port), as of the latest dump."""
        return dict(self._endpoints.get(name, {}))

    def status(self, name: str) -> InterfaceStatus:
        """The interface as it is now; never raises for a missing or broken interface."""
        validate_interface_name(name)
        answers = self._uapi_answers(self.socket_path(name))
        pid = self._find_pid(name) if answers else None
        try:
            link = self._link(name)
        except WireGuardError as exc:
            return InterfaceStatus(name, present=False, daemon_answers=answers, pid=pid,
                                   error=str(exc))
        if link is None:
            return InterfaceStatus(name, present=False, daemon_answers=answers, pid=pid,
                                   error="the interface does not exist"
                                   + (" (yet a wireguard-go answers)" if answers else ""))
        kind = self._kind(link)
        backend: Backend | None = ("kernel" if kind == "wireguard"
                                   else "userspace" if kind == "tun" else None)
        up = "UP" in link.get("flags", [])
        mtu = link.get("mtu")
        base = InterfaceStatus(name, present=True, backend=backend, daemon_answers=answers,
                               pid=pid, up=up, mtu=mtu)
        if backend is None:
            return replace(base, error=f"{name} is a {kind or 'plain'} link, not WireGuard")
        if backend == "userspace" and not answers:
            return replace(base, error=f"no wireguard-go answers on {self.socket_path(name)}")
        try:
            addrs = tuple(self._addresses(name))
            d = self.dump(name)
        except WireGuardError as exc:
            return replace(base, error=str(exc))
        return replace(base, addresses=addrs, public_key=d.public_key,
                       listen_port=d.listen_port, peers=d.peers,
                       error=None if up else f"{name} is down")

    # ------------------------------------------------------------ the interface

    def ensure_interface(self, name: str, address_cidr: str, listen_port: int,
                         private_key_path: str | os.PathLike[str],
                         mtu: int = DEFAULT_MTU) -> EnsureResult:
        """Make ``name`` a working WireGuard interface with this key, port, address and MTU,
        up. Idempotent: changes only what differs (a healthy interface costs four reads).

        Creates it if missing (kernel module, else wireguard-go) and rebuilds it when it is
        broken (a TUN link whose wireguard-go is gone). When ``created`` is true in the
        result, peers and routes were lost and must be applied again."""
        validate_interface_name(name)
        address = _interface_address(address_cidr)
        if type(listen_port) is not int or not 1 <= listen_port <= 65535:
            raise InvalidConfig(f"listen port must be an integer 1..65535, got {listen_port!r}")
        if type(mtu) is not int or not 1280 <= mtu <= 65535 - 80:
            raise InvalidConfig(f"MTU must be an integer 1280..65455, got {mtu!r}")
        key_path = Path(private_key_path)
        public_key = self.public_key_of(key_path)
        changed: list[str] = []

        link = self._link(name)
        backend: Backend | None = None
        if link is not None:
            kind = self._kind(link)
            if kind == "wireguard":
                backend = "kernel"
            elif kind == "tun" and self._uapi_answers(self.socket_path(name)):
                backend = "userspace"
            elif kind == "tun":
                log.warning("%s: TUN link without a wireguard-go behind it; rebuilding", name)
                self._must(["ip", "link", "delete", "dev", name])
                link = None
            else:
                raise WireGuardError(f"{name} exists and is a {kind or 'plain'} link, not a "
                                     f"WireGuard interface: refusing to touch it")
        created = link is None
        if link is None:
            backend = self._create(name)
            changed.append("link")
            link = self._link(name)
            if link is None:
                raise WireGuardError(f"{name}: created with {backend} backend but the link "
                                     f"is not there")
        assert backend is not None

        d = self.dump(name)
        if d.public_key != public_key or d.listen_port != listen_port:
            argv = ["wg", "set", name]
            if d.listen_port != listen_port:
                argv += ["listen-port", str(listen_port)]
                changed.append("port")
            if d.public_key != public_key:
                argv += ["private-key", str(key_path)]
                changed.append("key")
            self._must(argv)

        have = self._addresses(name)
        if address not in have:
            self._must(["ip", "address", "replace", address, "dev", name])
            changed.append("address")
        for other in have:
            if other != address:
                self._must(["ip", "address", "delete", other, "dev", name])
                changed.append("address")
        if link.get("mtu") != mtu:
            self._must(["ip", "link", "set", "dev", name, "mtu", str(mtu)])
            changed.append("mtu")
        if "UP" not in link.get("flags", []):
            self._must(["ip", "link", "set", "dev", name, "up"])
            changed.append("up")
        if changed:
            log.info("wireguard %s (%s): set %s", name, backend, ", ".join(dict.fromkeys(changed)))
        return EnsureResult(name, backend, created, public_key, tuple(dict.fromkeys(changed)))

    def _create(self, name: str) -> Backend:
        kernel_error = ""
        if self.backend in ("auto", "kernel"):
            res = self._call(["ip", "link", "add", "dev", name, "type", "wireguard"])
            if res.returncode == 0:
                return "kernel"
            kernel_error = res.stderr.strip()
            if self.backend == "kernel":
                raise CommandError(["ip", "link", "add", "dev", name, "type", "wireguard"],
                                   res.returncode, res.stderr)
        # wireguard-go daemonizes: the command returns once the TUN device and the UAPI
        # socket exist. LOG_LEVEL unset, so the daemon does not hold on to our pipes.
        res = self._call([self.wireguard_go, name], env={"LOG_LEVEL": "",
                                                         "WG_PROCESS_FOREGROUND": ""})
        if res.returncode != 0:
            why = res.stderr.strip().splitlines()
            raise WireGuardError(
                f"cannot create WireGuard interface {name}: the kernel has no wireguard "
                f"module ({kernel_error or 'not tried'}) and `{self.wireguard_go} {name}` "
                f"failed (exit {res.returncode}): {why[-1] if why else ''}")
        # It is up once the socket answers (normally already true when it returned).
        for _ in range(50):
            if self._uapi_answers(self.socket_path(name)):
                break
            self._sleep(0.02)
        else:
            raise WireGuardError(f"wireguard-go {name} started but nothing answers on "
                                 f"{self.socket_path(name)}")
        return "userspace"

    def remove_interface(self, name: str) -> bool:
        """Delete the interface (for wireguard-go this also ends the process). True if it
        existed."""
        validate_interface_name(name)
        link = self._link(name)
        if link is None:
            pid = self._find_pid(name) if self._uapi_answers(self.socket_path(name)) else None
            if pid is not None:  # a wireguard-go without its link: end it
                self._call(["kill", "-TERM", str(pid)])
            return False
        kind = self._kind(link)
        if kind not in ("wireguard", "tun"):
            raise WireGuardError(f"{name} is a {kind or 'plain'} link, not WireGuard: "
                                 f"not removing it")
        self._must(["ip", "link", "delete", "dev", name])
        self._endpoints.pop(name, None)
        for _ in range(100):  # wireguard-go leaves once it sees its device go
            if not self._uapi_answers(self.socket_path(name)):
                break
            self._sleep(0.02)
        log.info("wireguard %s removed", name)
        return True

    # ------------------------------------------------------------ peers

    def set_peers(self, name: str, peers: Iterable[Peer], *,
                  reuse_endpoints: bool = True) -> PeerChanges:
        """Make the interface's peers exactly ``peers`` (one ``wg set`` for all changes).

        A peer being *added* without an endpoint (one behind NAT, which we cannot dial)
        gets the endpoint last seen for it on this interface, if any (``reuse_endpoints``):
        after wireguard-go was restarted, or the peer removed and added back, this side can
        then start the handshake itself (at once when the peer has a persistent keepalive)
        instead of waiting up to ~15 s for the NATed side to give up its stale session."""
        validate_interface_name(name)
        desired = list(peers)
        current = self.dump(name)
        _check_peer_set(desired, current.public_key)
        remove, add, update = diff_peers(current.peers, desired)
        if not (remove or add or update):
            return PeerChanges()
        if reuse_endpoints:
            seen = self._endpoints.get(name, {})
            add = [replace(p, endpoint=seen[p.public_key])
                   if p.endpoint is None and p.public_key in seen else p for p in add]
        argv = ["wg", "set", name]
        for key in remove:
            argv += ["peer", key, "remove"]
        for peer in [*add, *update]:
            argv += _peer_args(peer)
        self._must(argv)
        changes = PeerChanges(tuple(p.public_key for p in add),
                              tuple(p.public_key for p in update), tuple(remove))
        log.info("wireguard %s peers: %d added, %d updated, %d removed", name,
                 len(changes.added), len(changes.updated), len(changes.removed))
        return changes

    # ------------------------------------------------------------ routes

    def routes(self, name: str) -> list[str]:
        """Destinations routed over ``name`` in the main table, except the kernel's own."""
        data = self._json(["ip", "-json", "route", "show", "dev", validate_interface_name(name)])
        out = []
        for r in data:
            if r.get("protocol") == "kernel" or r.get("type", "unicast") != "unicast":
                continue
            dst = r.get("dst", "")
            if dst and dst != "default":
                out.append(str(ipaddress.ip_network(dst, strict=False)))
        return sorted(out)

    def route_replace(self, name: str, subnet: str) -> None:
        self._must(["ip", "route", "replace", normalize_network(subnet, "route"), "dev",
                    validate_interface_name(name)])

    def route_remove(self, name: str, subnet: str) -> bool:
        res = self._call(["ip", "route", "delete", normalize_network(subnet, "route"), "dev",
                          validate_interface_name(name)])
        return res.returncode == 0

    def set_routes(self, name: str, subnets: Iterable[str]) -> tuple[list[str], list[str]]:
        """Route exactly ``subnets`` over ``name`` (kernel routes of its own address stay).
        Returns (added, removed)."""
        want = sorted({normalize_network(s, "route") for s in subnets})
        have = set(self.routes(name))
        added = [s for s in want if s not in have]
        removed = sorted(have - set(want))
        for s in removed:
            self.route_remove(name, s)
        for s in added:
            self.route_replace(name, s)
        return added, removed

    # ------------------------------------------------------------ forwarding / firewall

    def enable_ip_forwarding(self) -> None:
        """``net.ipv4.ip_forward=1`` (overlay <-> bridge traffic is routed by the host)."""
        self._must(["sysctl", "-qw", "net.ipv4.ip_forward=1"])

    def _iptables(self, args: Sequence[str]) -> CommandResult:
        return self._call(["iptables", "-w", "5", *args])

    def _forward_chain(self) -> str:
        """Docker's DOCKER-USER chain when dockerd made it (it jumps there first and never
        flushes it), else FORWARD."""
        return "DOCKER-USER" if self._iptables(["-S", "DOCKER-USER"]).returncode == 0 \
            else "FORWARD"

    @staticmethod
    def _forward_rules(overlay: str, bridge: str) -> list[list[str]]:
        comment = ["-m", "comment", "--comment", RULE_COMMENT]
        return [["-i", overlay, "-o", bridge, *comment, "-j", "ACCEPT"],
                ["-i", bridge, "-o", overlay, *comment, "-j", "ACCEPT"]]

    def _ensure_rule(self, table: str, chain: str, rule: list[str]) -> bool:
        check = self._iptables(["-t", table, "-C", chain, *rule])
        if check.returncode == 0:
            return False
        if check.returncode != 1:  # 1: no such rule; anything else is a real error
            raise CommandError(["iptables", "-t", table, "-C", chain, *rule],
                               check.returncode, check.stderr)
        res = self._iptables(["-t", table, "-I", chain, "1", *rule])
        if res.returncode != 0:
            raise CommandError(["iptables", "-t", table, "-I", chain, "1", *rule],
                               res.returncode, res.stderr)
        return True

    def _delete_rule(self, table: str, chain: str, rule: list[str]) -> int:
        n = 0
        for _ in range(10):  # duplicates, bounded
            if self._iptables(["-t", table, "-C", chain, *rule]).returncode != 0:
                break
            if self._iptables(["-t", table, "-D", chain, *rule]).returncode != 0:
                break
            n += 1
        return n

    def allow_forwarding(self, overlay: str, bridge: str) -> int:
        """Accept forwarded traffic between ``overlay`` and ``bridge`` both ways (inserted
        first in DOCKER-USER, or FORWARD without Docker). Idempotent; returns rules added."""
        validate_interface_name(overlay)
        validate_interface_name(bridge)
        chain = self._forward_chain()
        return sum(self._ensure_rule("filter", chain, rule)
                   for rule in self._forward_rules(overlay, bridge))

    def disallow_forwarding(self, overlay: str, bridge: str) -> int:
        """Remove what allow_forwarding added (from either chain); returns rules removed."""
        validate_interface_name(overlay)
        validate_interface_name(bridge)
        n = 0
        for chain in ("DOCKER-USER", "FORWARD"):
            for rule in self._forward_rules(overlay, bridge):
                n += self._delete_rule("filter", chain, rule)
        return n

    @staticmethod
    def _no_masquerade_rule(source: str, destination: str) -> list[str]:
        return ["-s", normalize_network(source, "source"),
                "-d", normalize_network(destination, "destination"),
                "-m", "comment", "--comment", RULE_COMMENT, "-j", "RETURN"]

    def exempt_from_masquerade(self, source: str, destination: str) -> bool:
        """Keep container addresses as they are on the overlay: a ``nat POSTROUTING``
        RETURN for ``source`` (the host's subnet) to ``destination`` (the cluster CIDR),
        before Docker's MASQUERADE. Idempotent; True if added."""
        return self._ensure_rule("nat", "POSTROUTING",
                                 self._no_masquerade_rule(source, destination))

    def remove_masquerade_exemption(self, source: str, destination: str) -> bool:
        return self._delete_rule("nat", "POSTROUTING",
                                 self._no_masquerade_rule(source, destination)) > 0

