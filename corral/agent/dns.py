"""Service discovery on the overlay: a small DNS server on each host.

Every host runs one of these on its Corral bridge gateway (say ``10.42.3.1:53``,
UDP and TCP) and points its containers' resolv.conf at it.  It is
authoritative for the services' names and forwards everything else.

Names.  A service outside a stack answers to ``NAME``; a service in a stack
(named ``STACK_SHORT`` by ``corral stack deploy``) answers to ``STACK_SHORT``,
``SHORT.STACK`` and plain ``SHORT``; each of these also with the suffix
``.corral.internal``.  Names are case-insensitive.  A short name is the weakest
claim: a service whose full name it is wins, and a short name that two stacks
share answers for neither.  Swarm scopes short names by network, so each
stack sees its own; we cannot tell which stack the asker is in (every
container on the host shares the bridge), so we refuse to guess.

Answers.  ``A`` for a known name lists the addresses of the service's running,
healthy instances, shuffled per answer for a rough spread of load, with a TTL
of 1 s because instances move.  Other types for a known name get an empty
NOERROR.  An unknown name under ``corral.internal`` is NXDOMAIN; the zone's
"empty" names (``corral.internal``, ``shop.corral.internal``) exist but hold
nothing.  Negative answers carry no SOA, so resolvers do not cache them.
Every other name is relayed to the upstream resolvers in turn over UDP (over
TCP too when a TCP client's answer came back truncated), verbatim but for the
query id; SERVFAIL when none answers in time.  EDNS is not implemented: OPT
records are ignored, and local answers over UDP stop at 512 bytes, with TC
set when something did not fit (the client then asks again over TCP).

The table (:class:`Directory`) is replaced whole from the agent's reconcile
thread; the server reads it from its asyncio loop.  Replacing swaps one
reference, so a query sees either the old table or the new one.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import random
import secrets
import socket
import struct
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("corral.agent.dns")

SUFFIX = "corral.internal"
TTL = 1
UDP_LIMIT = 512
TCP_LIMIT = 65535
TCP_IDLE = 10.0
MAX_IN_FLIGHT = 512  # concurrent queries; beyond this UDP queries are dropped

Upstream = tuple[str, int]

# Header flags, types, classes and response codes (RFC 1035).
_QR, _AA, _TC, _RD, _RA = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080
_A, _IN, _ANY = 1, 1, 255
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP = 0, 1, 2, 3, 4
_IP_FREEBIND = getattr(socket, "IP_FREEBIND", 15)  # Linux; not exported by Python 3.11


def names_for(service: str, stack: str | None = None) -> list[str]:
    """Every name ``service`` answers to, full names first."""
    full, short = _base_names(service, stack)
    return _qualified(full + ([short] if short else []))


def _base_names(service: str, stack: str | None) -> tuple[list[str], str | None]:
    """A service's names without the suffix, and its short name (None outside a stack)."""
    service = service.lower()
    if not stack:
        return [service], None
    stack = stack.lower()
    short = service.removeprefix(stack + "_")
    return _unique([service, f"{short}.{stack}"]), short


def _qualified(names: Iterable[str]) -> list[str]:
    return _unique(n for name in names for n in (name, f"{name}.{SUFFIX}"))


def _unique(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _normal(name: str) -> str:
    return name.lower().removesuffix(".")


def _in_zone(name: str) -> bool:
    return name == SUFFIX or name.endswith("." + SUFFIX)


class Directory:
    """The name → addresses table, replaced whole as services change."""

    def __init__(self) -> None:
        self._table: dict[str, tuple[str, ...]] = {}

    def replace(self, entries: Iterable[tuple[str, str | None, Sequence[str]]]) -> None:
        """Rebuild from (service name, stack or None, IPv4 addresses of its ready instances).

        An address that is not IPv4 is logged and left out.
        """
        full: dict[str, list[str]] = {}
        shorts: dict[str, dict[str, list[str]]] = {}  # short name -> stack -> addresses
        for service, stack, addresses in entries:
            valid = _ipv4s(service, addresses)
            names, short = _base_names(service, stack)
            for name in _qualified(names):
                full.setdefault(name, []).extend(valid)
            if short and stack:
                shorts.setdefault(short, {}).setdefault(stack.lower(), []).extend(valid)
        for short, stacks in shorts.items():
            if len(stacks) == 1 and short not in full:
                for name in _qualified([short]):
                    full[name] = next(iter(stacks.values()))
        table = {name: tuple(_unique(addresses)) for name, addresses in full.items()}
        for name in list(table):  # the zone's empty non-terminals: they exist, with no records
            labels = name.split(".")
            for i in range(1, len(labels) - 1):
                parent = ".".join(labels[i:])
                if _in_zone(parent):
                    table.setdefault(parent, ())
        self._table = table

    def lookup(self, name: str) -> list[str] | None:
        """The addresses for ``name`` (maybe none), or None if the name is unknown."""
        found = self._table.get(_normal(name))
        return None if found is None else list(found)


def _ipv4s(service: str, addresses: Sequence[str]) -> list[str]:
    valid = []
    for address in addresses:
        try:
            valid.append(str(ipaddress.IPv4Address(address)))
        except ValueError:
            log.warning("service %s: %r is not an IPv4 address; left out of DNS", service, address)
    return valid


def upstreams_from_resolv_conf(path: str = "/etc/resolv.conf",
                               exclude: Collection[str] = ()) -> list[Upstream]:
    """The ``nameserver`` entries of a resolv.conf as (address, 53), without ``exclude``.

    Pass our own listen address in ``exclude`` so we never forward to ourselves.
    A missing file gives no upstreams (the server then answers SERVFAIL for
    names it does not own), not glibc's fallback to 127.0.0.1.
    """
    try:
        text = Path(path).read_text()
    except OSError:
        return []
    found: list[Upstream] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 2 or fields[0] != "nameserver":
            continue
        try:
            ipaddress.ip_address(fields[1])
        except ValueError:
            continue
        if fields[1] not in exclude and (fields[1], 53) not in found:
            found.append((fields[1], 53))
    return found


class _Malformed(Exception):
    pass


@dataclass(frozen=True)
class _Question:
    labels: tuple[bytes, ...]  # as asked: the reply echoes the asker's case
    qtype: int
    qclass: int

    @property
    def name(self) -> str:
        # A dot inside a label is escaped as in zone files, so it never matches our names.
        return ".".join(label.lower().replace(b".", b"\\.").decode("latin-1")
                        for label in self.labels)

    def encode(self) -> bytes:
        name = b"".join(bytes([len(label)]) + label for label in self.labels) + b"\0"
        return name + struct.pack("!HH", self.qtype, self.qclass)


def _read_question(message: bytes) -> _Question:
    labels, end = _read_name(message, 12)
    if end + 4 > len(message):
        raise _Malformed("question cut short")
    qtype, qclass = struct.unpack_from("!HH", message, end)
    return _Question(tuple(labels), qtype, qclass)


def _read_name(message: bytes, offset: int) -> tuple[list[bytes], int]:
    """The labels of the name at ``offset``, and the offset just past it.

    A compression pointer must point before the stretch of labels that holds
    it (RFC 1035: "a prior occurrence"), so each jump goes strictly backwards
    and a loop is impossible: one that tries is malformed.
    """
    labels: list[bytes] = []
    size = 1
    end = None
    start = pos = offset
    while True:
        if pos >= len(message):
            raise _Malformed("name runs past the message")
        length = message[pos]
        if length == 0:
            return labels, end if end is not None else pos + 1
        if length & 0xC0 == 0xC0:
            if pos + 1 >= len(message):
                raise _Malformed("pointer cut short")
            target = (length & 0x3F) << 8 | message[pos + 1]
            if target >= start:
                raise _Malformed("compression pointer does not point backwards")
            if end is None:
                end = pos + 2
            start = pos = target
            continue
        if length & 0xC0:
            raise _Malformed("unknown label type")
        label = message[pos + 1:pos + 1 + length]
        size += length + 1
        if len(label) != length or size > 255:
            raise _Malformed("label cut short or name too long")
        labels.append(label)
        pos += 1 + length


class DnsServer:
    """The DNS server over UDP and TCP on one address and port."""

    def __init__(self, directory: Directory, host: str = "127.0.0.1", port: int = 53,
                 upstreams: Sequence[Upstream] = (), timeout: float = 2.0,
                 freebind: bool = False) -> None:
        """``freebind`` lets ``host`` be an address the host does not have yet
        (the bridge gateway before the bridge exists); queries arrive once it does."""
        self.directory = directory
        self.stats = dict.fromkeys(
            ("queries", "answered", "nxdomain", "forwarded", "servfail", "rejected", "dropped"), 0)
        self._host = host
        self._port = port
        self._upstreams = list(upstreams)
        self._timeout = timeout
        self._freebind = freebind
        self._udp: asyncio.DatagramTransport | None = None
        self._tcp: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def port(self) -> int:
        """The bound port (the chosen one when constructed with port 0)."""
        return self._port

    async def start(self) -> None:
        """Listen on UDP and TCP; raises OSError if the address or port cannot be bound."""
        loop = asyncio.get_running_loop()
        udp, tcp = self._bind()
        self._port = udp.getsockname()[1]
        transport, _ = await loop.create_datagram_endpoint(lambda: _UdpProtocol(self), sock=udp)
        self._udp = transport
        self._tcp = await asyncio.start_server(self._serve_tcp, sock=tcp)

    async def close(self) -> None:
        """Stop listening and abandon queries in flight."""
        if self._udp is not None:
            self._udp.close()
        if self._tcp is not None:
            self._tcp.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._tcp is not None:
            await self._tcp.wait_closed()
        self._udp = self._tcp = None

    def _bind(self) -> tuple[socket.socket, socket.socket]:
        """A UDP and a TCP socket on one port (with port 0, one free for both)."""
        tries = 5 if self._port == 0 else 1
        for attempt in range(tries):
            udp = self._socket(socket.SOCK_DGRAM, self._port)
            try:
                return udp, self._socket(socket.SOCK_STREAM, udp.getsockname()[1])
            except OSError:  # the TCP twin of the UDP port is taken
                udp.close()
                if attempt == tries - 1:
                    raise
        raise AssertionError("unreachable")

    def _socket(self, kind: int, port: int) -> socket.socket:
        family = socket.AF_INET6 if ":" in self._host else socket.AF_INET
        sock = socket.socket(family, kind)
        try:
            if kind == socket.SOCK_STREAM:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self._freebind:
                sock.setsockopt(socket.IPPROTO_IP, _IP_FREEBIND, 1)
            sock.bind((self._host, port))
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        return sock

    def _on_datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(self._tasks) >= MAX_IN_FLIGHT:
            self.stats["queries"] += 1
            self.stats["dropped"] += 1
            return
        self._track(asyncio.get_running_loop().create_task(self._answer_udp(data, addr)))

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer_udp(self, data: bytes, addr: tuple[str, int]) -> None:
        reply = await self._handle(data, tcp=False)
        if reply is not None and self._udp is not None:
            self._udp.sendto(reply, addr)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._track(task)
        try:
            while True:
                async with asyncio.timeout(TCP_IDLE):
                    query = await _read_frame(reader)
                reply = await self._handle(query, tcp=True)
                if reply is None:
                    break
                writer.write(_frame(reply))
                await writer.drain()
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except asyncio.CancelledError:  # by close(); Python 3.11 would log it as an error
            pass
        finally:
            writer.close()

    async def _handle(self, query: bytes, tcp: bool) -> bytes | None:
        """The reply to one query, or None to drop it (and close a TCP connection)."""
        self.stats["queries"] += 1
        try:
            return await self._resolve(query, tcp)
        except _Malformed:
            pass
        except Exception:  # a bug must cost one query, not the server
            log.exception("DNS query failed")
        self.stats["dropped"] += 1
        return None

    async def _resolve(self, query: bytes, tcp: bool) -> bytes | None:
        if len(query) < 12:
            raise _Malformed("no header")
        qid, flags, qdcount = struct.unpack_from("!HHH", query)
        if flags & _QR:
            raise _Malformed("a response, not a query")
        if (flags >> 11) & 0xF != 0 or qdcount != 1:
            self.stats["rejected"] += 1
            rcode = NOTIMP if (flags >> 11) & 0xF else FORMERR
            return self._reply(qid, flags, None, rcode)
        question = _read_question(query)
        limit = TCP_LIMIT if tcp else UDP_LIMIT
        addresses = self.directory.lookup(question.name)
        if addresses is not None:
            self.stats["answered"] += 1
            wanted = question.qtype in (_A, _ANY) and question.qclass in (_IN, _ANY)
            shuffled = random.sample(addresses, len(addresses)) if wanted else []
            return self._reply(qid, flags, question, NOERROR, shuffled, authoritative=True,
                               limit=limit)
        if _in_zone(question.name):
            self.stats["nxdomain"] += 1
            return self._reply(qid, flags, question, NXDOMAIN, authoritative=True)
        reply = await self._forward(query, tcp)
        if reply is None:
            self.stats["servfail"] += 1
            return self._reply(qid, flags, question, SERVFAIL)
        self.stats["forwarded"] += 1
        return reply

    def _reply(self, qid: int, flags: int, question: _Question | None, rcode: int,
               addresses: Sequence[str] = (), authoritative: bool = False,
               limit: int = UDP_LIMIT) -> bytes:
        body = question.encode() if question else b""
        records = [struct.pack("!HHHIH", 0xC00C, _A, _IN, TTL, 4) + socket.inet_aton(a)
                   for a in addresses]  # 0xC00C: the name at offset 12, the question's
        room = (limit - 12 - len(body)) // 16
        out = (_QR | (flags & 0x7800) | (flags & _RD) | rcode
               | (_AA if authoritative else 0)
               | (_RA if self._upstreams else 0)
               | (_TC if len(records) > room else 0))
        records = records[:room]
        header = struct.pack("!6H", qid, out, 1 if question else 0, len(records), 0, 0)
        return header + body + b"".join(records)

    async def _forward(self, query: bytes, tcp: bool) -> bytes | None:
        """The first upstream's reply, with the asker's query id; None if none answers."""
        for upstream in self._upstreams:
            try:
                reply = await self._ask_udp(upstream, query)
                if tcp and struct.unpack_from("!H", reply, 2)[0] & _TC:
                    reply = await self._ask_tcp(upstream, query)
            except (OSError, TimeoutError, asyncio.IncompleteReadError, _Malformed) as exc:
                log.debug("upstream %s:%d: %r", *upstream, exc)
                continue
            return query[:2] + reply[2:]
        return None

    async def _ask_udp(self, upstream: Upstream, query: bytes) -> bytes:
        # A fresh random id (and a fresh source port) per query: an off-path
        # spoofer has to guess both for a forged answer to be relayed.
        qid = secrets.randbits(16)
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[bytes] = loop.create_future()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: _UpstreamProtocol(answer, qid), remote_addr=upstream)
        try:
            transport.sendto(struct.pack("!H", qid) + query[2:])
            return await asyncio.wait_for(answer, self._timeout)
        finally:
            transport.close()

    async def _ask_tcp(self, upstream: Upstream, query: bytes) -> bytes:
        async with asyncio.timeout(self._timeout):
            reader, writer = await asyncio.open_connection(*upstream)
            try:
                writer.write(_frame(query))
                reply = await _read_frame(reader)
            finally:
                writer.close()
        if len(reply) < 12:
            raise _Malformed("short upstream reply")
        return reply


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self._server = server

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self._server._on_datagram(data, addr)


class _UpstreamProtocol(asyncio.DatagramProtocol):
    def __init__(self, answer: asyncio.Future[bytes], qid: int) -> None:
        self._answer = answer
        self._qid = struct.pack("!H", qid)

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if len(data) >= 12 and data[:2] == self._qid and data[2] & 0x80 and not self._answer.done():
            self._answer.set_result(data)

    def error_received(self, exc: Exception) -> None:  # e.g. port unreachable: next upstream
        if not self._answer.done():
            self._answer.set_exception(exc)


def _frame(message: bytes) -> bytes:
    return struct.pack("!H", len(message)) + message


async def _read_frame(reader: asyncio.StreamReader) -> bytes:
    (length,) = struct.unpack("!H", await reader.readexactly(2))
    return await reader.readexactly(length)
