"""The overlay on one host: its container network, its WireGuard interface, its DNS server.

The server sends a *plan* (this host's subnet, the cluster CIDR and the peers to hold:
key, endpoint, allowed IPs, keepalive; which hosts this one relays for) and a *directory*
(service name -> overlay addresses).  :class:`OverlayManager` makes the host match the
plan and keeps it that way:

- a Docker bridge network ``corral`` on the host's subnet, its gateway the host's own
  overlay address; containers with an overlay address join it and use the host's DNS
  server (:mod:`corral.agent.dns`, listening on that gateway);
- a WireGuard interface (kernel module, else ``wireguard-go``) carrying the gateway as a
  /32, with exactly the plan's peers, a route per peer subnet, forwarding between the
  interface and the bridge (and interface to interface on a relay), and no masquerading
  of overlay traffic, so containers see each other's real addresses.

Health is measured, not assumed: every few seconds the interface is checked (a killed
``wireguard-go`` or a deleted link is rebuilt, and the plan applied again); every probe
interval each peer's DNS server is asked a question over the overlay, which also makes
WireGuard handshake, and each peer's handshake age is read.  A peer whose handshake is
stale while probes fail is removed and added back (a fresh handshake from its planned
or last seen endpoint).  Every repair counts in the report the agent sends up, and the
server turns that into an event.

The plan and directory are kept on disk, so a host that restarts while the server is
away brings its overlay back as it was.  Only the public key leaves the host.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import random
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from corral.agent import dns
from corral.agent.runtime.docker import ContainerNetwork, DockerClient, DockerError
from corral.agent.state import write_atomic
from corral.agent.wireguard import Peer, WireGuard, WireGuardError

log = logging.getLogger("corral.agent.overlay")

NETWORK = "corral"
CHECK_EVERY = 2.0  # seconds between cheap looks at the interface
CONVERGE_EVERY = 30.0  # seconds between full passes when nothing changed
STALE_AFTER = 180.0  # seconds without a handshake (while probes fail) before a peer is repaired
REPAIR_GAP = 60.0  # seconds at least between two repairs of one peer
DETAIL_EVERY = 300.0  # seconds between reports that only refresh handshake times and RTTs
PROBE_NAME = "probe.corral.internal"
NETWORK_WAIT = 15.0  # seconds a new container with an overlay address waits for the network


@dataclass(frozen=True)
class OverlayConfig:
    interface: str = "corral0"
    bridge: str = "corral-br"
    listen_port: int = 51820
    endpoint: str | None = None  # "IP[:PORT]" others dial; None: this host's default-route address
    nat: bool | None = None  # behind NAT (True), reachable (False), or let the server infer it
    dns_port: int = 53
    probe_every: float = 30.0
    stale_after: float = STALE_AFTER  # seconds without a handshake, while probes fail, before a repair
    mtu: int = 1420


@dataclass
class PeerHealth:
    name: str
    state: str = "new"  # new, up, stale, down, relayed
    endpoint: str | None = None  # where its packets come from, as WireGuard saw
    handshake_at: int = 0
    rtt_ms: float | None = None
    via: str | None = None
    failures: int = 0
    since: float = field(default_factory=time.time)
    repaired_at: float = 0.0


class OverlayManager:
    def __init__(self, docker: DockerClient, wg: WireGuard, config: OverlayConfig, state_dir: Path,
                 on_change: Callable[[], None], clock: Callable[[], float] = time.time) -> None:
        self.docker = docker
        # the first containers may come with the same channel reply as the plan: they wait
        # (this long at most) for the network the plan makes
        docker.overlay_wait = NETWORK_WAIT
        self.wg = wg
        self.config = config
        self.key_path = state_dir / "wireguard.key"
        self.saved_path = state_dir / "overlay.json"
        self.on_change = on_change
        self.clock = clock
        self.public_key = ""
        self.backend = ""
        self.plan: dict[str, Any] | None = None
        self.dns_generation = -1
        self.directory = dns.Directory()
        self.error = ""
        self.repairs = 0
        self.last_repair: dict[str, Any] | None = None
        self.health: dict[str, PeerHealth] = {}
        self._wake = threading.Event()
        self._lock = threading.RLock()  # a pass, a new plan and leaving never interleave
        self._applied = False
        self._applied_digest: Any = None
        self._converged_at = 0.0
        self._probed_at = 0.0
        self._detail_at = 0.0
        self._reported: dict[str, Any] = {}
        self._dns_loop: asyncio.AbstractEventLoop | None = None
        self._dns_thread: threading.Thread | None = None
        self._dns_server: dns.DnsServer | None = None
        self._dns_host = ""
        self._records: list[list[Any]] = []
        self._load()

    # -- what the channel carries ---------------------------------------------------

    @property
    def digest(self) -> str:
        return str((self.plan or {}).get("digest") or "")

    def set_plan(self, plan: dict[str, Any]) -> None:
        with self._lock:
            self.plan = plan
        self._save()
        log.info("overlay plan %s: subnet %s, %d peers", plan.get("digest", "")[:12], plan.get("subnet"),
                 len(plan.get("peers") or []))
        self._wake.set()

    def set_directory(self, body: dict[str, Any]) -> None:
        records = [[str(name), stack, [str(a) for a in addresses]] for name, stack, addresses in body["records"]]
        self.directory.replace((name, stack, addresses) for name, stack, addresses in records)
        self._records = records
        self.dns_generation = int(body["generation"])
        self._save()

    def _load(self) -> None:
        try:
            saved = json.loads(self.saved_path.read_text())
        except (FileNotFoundError, ValueError):
            return
        self.plan = saved.get("plan")
        if saved.get("dns"):
            self.set_directory(saved["dns"])

    def _save(self) -> None:
        body = {"plan": self.plan, "dns": {"generation": self.dns_generation, "records": self.directory_records()}}
        write_atomic(self.saved_path, json.dumps(body).encode())

    def directory_records(self) -> list[list[Any]]:
        return list(self._records)

    # -- the report ---------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        """What goes up with the host's facts; changes only when something worth saying did."""
        return self._reported

    def _update_report(self, detail: bool = False) -> None:
        plan = self.plan or {}
        peers: dict[str, dict[str, Any]] = {}
        for host_id, h in sorted(self.health.items()):
            peers[host_id] = {"name": h.name, "state": h.state, "endpoint": h.endpoint, "via": h.via}
            if detail or not self._reported:
                peers[host_id].update(handshake_at=h.handshake_at, rtt_ms=h.rtt_ms)
            else:  # keep the last reported figures: a report per handshake would cost the uplink
                old = (self._reported.get("peers") or {}).get(host_id) or {}
                peers[host_id].update(handshake_at=old.get("handshake_at"), rtt_ms=old.get("rtt_ms"))
        report = {
            "enabled": True, "interface": self.config.interface, "backend": self.backend,
            "public_key": self.public_key or None, "endpoint": self.endpoint(), "nat": self.config.nat,
            "subnet": plan.get("subnet"), "error": self.error, "repairs": self.repairs,
            "last_repair": self.last_repair, "dns": {"records": len(self.directory_records())},
            "peers": peers,
        }
        if report != self._reported:
            self._reported = report
            self.on_change()

    def endpoint(self) -> str | None:
        ep = self.config.endpoint
        if ep is None:
            ip = default_route_address()
            return f"{ip}:{self.config.listen_port}" if ip else None
        if ep.startswith("["):  # [IPv6]:PORT, or [IPv6] alone
            return ep if "]:" in ep else f"{ep}:{self.config.listen_port}"
        if ep.count(":") == 1:
            return ep
        if ":" in ep:  # a bare IPv6 address: "fd00::1:51820" would not parse
            return f"[{ep}]:{self.config.listen_port}"
        return f"{ep}:{self.config.listen_port}"

    # -- the loop -------------------------------------------------------------------------

    def prepare(self) -> None:
        """Make (or read) the host's key; before the first report, so the server learns it.
        Without a key (no ``wg`` here), the report says why, and the server gives this host's
        instances no overlay addresses."""
        try:
            self.public_key = self.wg.ensure_private_key(self.key_path)
        except (WireGuardError, OSError) as exc:
            self.error = f"no WireGuard key: {exc}"
            log.error("overlay off: %s", self.error)
        self._update_report()

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                if not self.public_key:
                    self.public_key = self.wg.ensure_private_key(self.key_path)
                with self._lock:
                    self.step()
                if self.error:
                    log.info("overlay works again")
                self.error = ""
            except (WireGuardError, DockerError, OSError, ValueError) as exc:
                if str(exc) != self.error:
                    log.warning("overlay: %s", exc)
                self.error = str(exc)
                self._applied = False
            self._update_report(detail=self.clock() - self._detail_at >= DETAIL_EVERY)
            if self.clock() - self._detail_at >= DETAIL_EVERY:
                self._detail_at = self.clock()
            self._wake.wait(CHECK_EVERY)
            self._wake.clear()

    def step(self) -> None:
        plan = self.plan
        if plan is None:
            return
        now = self.clock()
        broken = ""
        if self._applied:
            status = self.wg.status(self.config.interface)
            if not status.healthy:
                broken = status.error or f"{self.config.interface} is not working"
        stale = plan.get("digest") != self._applied_digest
        if broken or stale or not self._applied or now - self._converged_at >= CONVERGE_EVERY:
            self._converge(plan)
            if broken:
                self._repaired("interface", f"{broken}; rebuilt {self.config.interface} and applied the plan again")
        if now - self._probed_at >= self.config.probe_every:
            self._probed_at = now
            self._check_peers(plan)

    def _converge(self, plan: dict[str, Any]) -> None:
        subnet, gateway, cluster = str(plan["subnet"]), str(plan["gateway"]), str(plan["cluster_cidr"])
        self._ensure_network(subnet, gateway)
        result = self.wg.ensure_interface(self.config.interface, f"{gateway}/32", self.config.listen_port,
                                          self.key_path, mtu=self.config.mtu)
        self.backend = result.backend
        peers = [Peer(p["public_key"], p.get("endpoint"), tuple(p["allowed_ips"]), int(p.get("keepalive") or 0))
                 for p in plan.get("peers") or []]
        self.wg.set_peers(self.config.interface, peers)
        self.wg.set_routes(self.config.interface, [ip for p in peers for ip in p.allowed_ips])
        self.wg.enable_ip_forwarding()
        self.wg.allow_forwarding(self.config.interface, self.config.bridge)
        if plan.get("relaying_for"):
            self.wg.allow_forwarding(self.config.interface, self.config.interface)
        self.wg.exempt_from_masquerade(subnet, cluster)
        self._ensure_dns(gateway)
        self._applied = True
        self._applied_digest = plan.get("digest")
        self._converged_at = self.clock()

    def _ensure_network(self, subnet: str, gateway: str) -> None:
        net = self.docker.inspect_network(NETWORK)
        if net is not None:
            configs = (net.get("IPAM") or {}).get("Config") or []
            if any(c.get("Subnet") == subnet for c in configs):
                self.docker.overlay = ContainerNetwork(NETWORK, gateway)
                return
            if net.get("Containers"):
                raise DockerError(409, f"network {NETWORK} has subnet {configs} but this host's is {subnet}, "
                                       f"and containers still use it")
            self.docker.remove_network(NETWORK)
        self.docker.create_bridge_network(NETWORK, subnet, gateway, self.config.bridge,
                                          labels={"io.corral.managed": "1"}, mtu=self.config.mtu)
        self.docker.overlay = ContainerNetwork(NETWORK, gateway)
        log.info("network %s: %s on bridge %s", NETWORK, subnet, self.config.bridge)

    # -- DNS ------------------------------------------------------------------------------

    def _ensure_dns(self, gateway: str) -> None:
        server = self._dns_server
        if server is not None and self._dns_host == gateway:
            return
        if self._dns_loop is None:
            loop = asyncio.new_event_loop()
            self._dns_thread = threading.Thread(target=loop.run_forever, name="dns", daemon=True)
            self._dns_thread.start()
            self._dns_loop = loop
        upstreams = dns.upstreams_from_resolv_conf(exclude={gateway})
        new = dns.DnsServer(self.directory, host=gateway, port=self.config.dns_port, upstreams=upstreams)

        async def swap() -> None:
            if server is not None:
                await server.close()
            await new.start()

        asyncio.run_coroutine_threadsafe(swap(), self._dns_loop).result(10)
        self._dns_server, self._dns_host = new, gateway
        log.info("DNS for the overlay on %s:%d (upstreams: %s)", gateway, new.port,
                 ", ".join(f"{h}:{p}" for h, p in upstreams) or "none")

    # -- health and repair ------------------------------------------------------------

    def _check_peers(self, plan: dict[str, Any]) -> None:
        status = self.wg.status(self.config.interface)
        now = self.clock()
        targets: dict[str, tuple[str, str, str | None]] = {}  # host id -> (name, gateway, via)
        direct = {p["host_id"]: p for p in plan.get("peers") or []}
        for p in direct.values():
            targets[p["host_id"]] = (p["name"], p["gateway"], None)
        for note in plan.get("relays") or []:
            if note.get("relay_id") and note.get("gateway"):
                targets[note["target_id"]] = (note["target_name"], note["gateway"], note["relay_name"])
        rtts = probe_all({h: gw for h, (_, gw, _) in targets.items()}, self.config.dns_port)
        health: dict[str, PeerHealth] = {}
        for host_id, (name, _, via) in targets.items():
            h = self.health.get(host_id) or PeerHealth(name, since=now)
            h.name, h.via = name, via
            rtt = rtts.get(host_id)
            h.rtt_ms = None if rtt is None else round(rtt * 1000, 1)
            h.failures = 0 if rtt is not None else h.failures + 1
            peer = direct.get(host_id)
            if peer is not None:
                st = status.peer(peer["public_key"])
                h.handshake_at = st.latest_handshake if st else 0
                h.endpoint = st.endpoint if st else None
                age = None if not h.handshake_at else now - h.handshake_at
                if rtt is not None:
                    h.state = "up"
                elif age is not None and age < self.config.stale_after:
                    h.state = "up"  # the tunnel handshakes; the peer's DNS may just be starting
                elif now - h.since < self.config.stale_after:
                    h.state = "new" if age is None else "stale"
                else:
                    h.state = "stale"
                gap = min(REPAIR_GAP, self.config.stale_after)
                if h.state == "stale" and h.failures >= 3 and now - h.repaired_at >= gap:
                    self._repair_peer(peer, h, age)
            else:
                h.state = "relayed" if rtt is not None else "down"
            health[host_id] = h
        self.health = health

    def _repair_peer(self, peer: dict[str, Any], h: PeerHealth, age: float | None) -> None:
        h.repaired_at = self.clock()
        endpoint = peer.get("endpoint") or h.endpoint
        self.wg.set_peers(self.config.interface, [])  # forget sessions; the next pass adds everyone back
        self._converge(self.plan or {})
        since = "never handshook" if age is None else f"no handshake for {age:.0f} s"
        self._repaired("peer", f"{h.name}: {since} and probes failed; peer re-added"
                               + (f" with endpoint {endpoint}" if endpoint else ""))

    def _repaired(self, what: str, reason: str) -> None:
        self.repairs += 1
        self.last_repair = {"at": round(self.clock(), 3), "what": what, "reason": reason}
        log.warning("overlay repaired (%s): %s", what, reason)

    def leave(self) -> None:
        """The server no longer knows this host (it was removed): take the overlay down here
        too.  The interface goes (and its routes with it), then the forwarding rules, the
        masquerade exemption and the DNS server; the plan is forgotten.  The container network
        stays while containers use it.  A plan that arrives later builds everything again."""
        with self._lock:
            plan, self.plan = self.plan, None
            if plan is None:
                return
            iface, bridge = self.config.interface, self.config.bridge
            try:
                self.wg.remove_interface(iface)
                self.wg.disallow_forwarding(iface, bridge)
                self.wg.disallow_forwarding(iface, iface)
                self.wg.remove_masquerade_exemption(str(plan["subnet"]), str(plan["cluster_cidr"]))
            except (WireGuardError, OSError) as exc:
                log.warning("taking the overlay down: %s", exc)
            self._stop_dns()
            self.docker.overlay = None
            self._applied, self._applied_digest, self.health = False, None, {}
            self._save()
        log.warning("this host is no longer in the cluster: its overlay interface, routes and rules are gone")
        self._update_report()

    def _stop_dns(self) -> None:
        loop, server = self._dns_loop, self._dns_server
        if loop is not None and server is not None:
            asyncio.run_coroutine_threadsafe(server.close(), loop).result(5)
        self._dns_server, self._dns_host = None, ""

    def close(self) -> None:
        self._stop_dns()
        loop, thread = self._dns_loop, self._dns_thread
        if loop is not None and thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
            if not thread.is_alive():
                loop.close()
        self._dns_loop = self._dns_thread = None


def probe_all(gateways: dict[str, str], port: int, timeout: float = 1.0) -> dict[str, float]:
    """Ask each gateway's DNS server one question over the overlay; the round trip of each
    that answered (any answer, NXDOMAIN included, proves the path)."""
    if not gateways:
        return {}
    sent: dict[int, tuple[str, float]] = {}
    out: dict[str, float] = {}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setblocking(False)
        for host_id, gw in gateways.items():
            qid = random.randrange(1, 65536)
            while qid in sent:
                qid = random.randrange(1, 65536)
            try:
                sock.sendto(query_packet(qid, PROBE_NAME), (gw, port))
            except OSError:
                continue  # no route (yet): counts as a failed probe
            sent[qid] = (host_id, time.monotonic())
        deadline = time.monotonic() + timeout
        sock.setblocking(True)
        while sent and (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data = sock.recv(512)
            except (TimeoutError, OSError):
                break
            if len(data) >= 2:
                found = sent.pop(struct.unpack("!H", data[:2])[0], None)
                if found:
                    out[found[0]] = time.monotonic() - found[1]
    return out


def query_packet(qid: int, name: str) -> bytes:
    """A standard recursive A query for ``name``."""
    labels = b"".join(bytes([len(part)]) + part.encode() for part in name.strip(".").split("."))
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + b"\x00" + struct.pack("!HH", 1, 1)


def default_route_address() -> str | None:
    """The IPv4 address of the interface that holds the default route (a lookup, no traffic)."""
    try:
        with open("/proc/net/route") as f:
            rows = [line.split() for line in f.readlines()[1:]]
    except OSError:
        return None
    dev = next((r[0] for r in rows if len(r) > 2 and r[1] == "00000000"), None)
    if dev is None:
        return None
    import fcntl  # Linux only, as is the rest of the overlay
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", dev.encode()[:15]))  # SIOCGIFADDR
        except OSError:
            return None
    return str(ipaddress.IPv4Address(packed[20:24]))
