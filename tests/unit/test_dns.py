"""The service-discovery DNS server on real loopback sockets, with hand-built packets."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from corral.agent.dns import Directory, DnsServer, names_for, upstreams_from_resolv_conf

A, AAAA = 1, 28
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP = 0, 1, 2, 3, 4
RECOGNISABLE = "192.0.2.77"


# --- a minimal DNS client -------------------------------------------------------------------


def encode_name(name: str) -> bytes:
    labels = [label.encode() for label in name.split(".") if label]
    return b"".join(bytes([len(label)]) + label for label in labels) + b"\0"


def query(name: str, qtype: int = A, qid: int = 0x1234, flags: int = 0x0100) -> bytes:
    header = struct.pack("!6H", qid, flags, 1, 0, 0, 0)
    return header + encode_name(name) + struct.pack("!HH", qtype, 1)


@dataclass
class Reply:
    qid: int
    flags: int
    question: bytes
    answers: list[tuple[int, int, str]]  # type, ttl, address

    @property
    def rcode(self) -> int:
        return self.flags & 0xF

    @property
    def truncated(self) -> bool:
        return bool(self.flags & 0x0200)

    @property
    def authoritative(self) -> bool:
        return bool(self.flags & 0x0400)

    @property
    def addresses(self) -> list[str]:
        return [address for rtype, _, address in self.answers if rtype == A]


def skip_name(data: bytes, pos: int) -> int:
    while data[pos]:
        if data[pos] >= 0xC0:
            return pos + 2
        pos += 1 + data[pos]
    return pos + 1


def parse(data: bytes) -> Reply:
    qid, flags, qdcount, ancount, nscount, arcount = struct.unpack_from("!6H", data)
    assert flags & 0x8000 and nscount == arcount == 0
    pos = 12
    for _ in range(qdcount):
        pos = skip_name(data, pos) + 4
    question, answers = data[12:pos], []
    for _ in range(ancount):
        pos = skip_name(data, pos)
        rtype, _rclass, ttl, length = struct.unpack_from("!HHIH", data, pos)
        rdata = data[pos + 10:pos + 10 + length]
        answers.append((rtype, ttl, socket.inet_ntoa(rdata) if rtype == A else rdata.hex()))
        pos += 10 + length
    assert pos == len(data), "trailing bytes"
    return Reply(qid, flags, question, answers)


def udp(port: int, *packets: bytes, timeout: float = 2.0) -> bytes:
    """Send every packet from one socket; the first reply."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        for packet in packets:
            s.sendto(packet, ("127.0.0.1", port))
        return s.recv(65535)


def tcp(port: int, *packets: bytes) -> list[bytes]:
    """Send each packet framed on one connection; the replies, until the server closes."""
    replies = []
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        for packet in packets:
            s.sendall(struct.pack("!H", len(packet)) + packet)
            head = s.recv(2, socket.MSG_WAITALL)
            if len(head) < 2:
                break
            replies.append(s.recv(struct.unpack("!H", head)[0], socket.MSG_WAITALL))
    return replies


# --- the server under test, and fake upstreams -----------------------------------------------


@contextmanager
def serving(directory: Directory, upstreams: Sequence[tuple[str, int]] = (),
            timeout: float = 0.2) -> Iterator[DnsServer]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = DnsServer(directory, host="127.0.0.1", port=0, upstreams=upstreams, timeout=timeout)
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(5)
    try:
        yield server
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


def directory(*entries: tuple[str, str | None, Sequence[str]]) -> Directory:
    d = Directory()
    d.replace(entries)
    return d


class Upstream:
    """A resolver on 127.0.0.1 that answers every A query with RECOGNISABLE.

    ``silent`` never answers; ``truncate_udp`` answers over UDP with TC set and
    no records, and fully over TCP on the same port.
    """

    def __init__(self, silent: bool = False, truncate_udp: bool = False) -> None:
        self.silent, self.truncate_udp = silent, truncate_udp
        self.received: list[bytes] = []
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.address = self.udp.getsockname()
        self.tcp = socket.create_server(self.address)
        threading.Thread(target=self._serve_udp, daemon=True).start()
        threading.Thread(target=self._serve_tcp, daemon=True).start()

    def answer(self, q: bytes, truncated: bool = False) -> bytes:
        question = q[12:skip_name(q, 12) + 4]
        if truncated:
            return q[:2] + struct.pack("!5H", 0x8380, 1, 0, 0, 0) + question
        record = struct.pack("!HHHIH", 0xC00C, A, 1, 300, 4) + socket.inet_aton(RECOGNISABLE)
        return q[:2] + struct.pack("!5H", 0x8180, 1, 1, 0, 0) + question + record

    def _serve_udp(self) -> None:
        with self.udp:
            while True:
                q, peer = self.udp.recvfrom(65535)
                self.received.append(q)
                if not self.silent:
                    self.udp.sendto(self.answer(q, truncated=self.truncate_udp), peer)

    def _serve_tcp(self) -> None:
        with self.tcp:
            while True:
                conn, _ = self.tcp.accept()
                with conn:
                    (length,) = struct.unpack("!H", conn.recv(2, socket.MSG_WAITALL))
                    reply = self.answer(conn.recv(length, socket.MSG_WAITALL))
                    conn.sendall(struct.pack("!H", len(reply)) + reply)


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- names and the directory -----------------------------------------------------------------


def test_names_for_services_in_and_out_of_stacks() -> None:
    assert names_for("hello") == ["hello", "hello.corral.internal"]
    assert names_for("Shop_Web", "SHOP") == [
        "shop_web", "shop_web.corral.internal", "web.shop", "web.shop.corral.internal",
        "web", "web.corral.internal"]
    # a stack service whose name lacks the prefix: its name is its short name
    assert names_for("web", "shop") == ["web", "web.corral.internal", "web.shop",
                                        "web.shop.corral.internal"]


def test_short_names_yield_to_full_names_and_to_ambiguity() -> None:
    d = directory(("shop_web", "shop", ["10.42.1.2"]), ("blog_web", "blog", ["10.42.2.2"]),
                  ("shop_db", "shop", ["10.42.1.3"]), ("db", None, ["10.42.9.9"]),
                  ("shop_kv", "shop", ["10.42.1.4", "not-an-ip", "10.42.1.4"]))
    assert d.lookup("web") is None  # two stacks have a "web": neither gets it
    assert d.lookup("web.corral.internal") is None
    assert d.lookup("web.shop") == ["10.42.1.2"]
    assert d.lookup("blog_web.corral.internal") == ["10.42.2.2"]
    assert d.lookup("db") == ["10.42.9.9"]  # the service named "db" beats shop's short "db"
    assert d.lookup("db.shop.corral.internal") == ["10.42.1.3"]
    assert d.lookup("KV.Corral.Internal.") == ["10.42.1.4"]  # case, trailing dot, bad address
    assert d.lookup("shop.corral.internal") == []  # exists: web.shop.corral.internal is below it
    assert d.lookup("corral.internal") == []
    assert d.lookup("shop") is None
    d.replace([])
    assert d.lookup("db") is None and d.lookup("corral.internal") is None


# --- answers ---------------------------------------------------------------------------------


def test_a_answer_bytes_and_every_address_in_varying_order() -> None:
    addresses = ["10.42.1.2", "10.42.1.3", "10.42.2.7"]
    with serving(directory(("shop_web", "shop", addresses))) as server:
        raw = udp(server.port, query("Web.Shop.corral.internal", qid=0xBEEF))
        qname = encode_name("Web.Shop.corral.internal")
        assert raw[:12] == struct.pack("!6H", 0xBEEF, 0x8500, 1, 3, 0, 0)  # QR AA RD, NOERROR
        assert raw[12:12 + len(qname) + 4] == qname + b"\x00\x01\x00\x01"  # echoed as asked
        first = raw[12 + len(qname) + 4:][:16]
        assert first[:12] == b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x01\x00\x04"  # TTL 1 s
        reply = parse(raw)
        assert sorted(reply.addresses) == addresses
        firsts = {parse(udp(server.port, query("web"))).addresses[0] for _ in range(30)}
        assert len(firsts) > 1
        assert server.stats["answered"] == 31


def test_other_types_are_empty_unknown_internal_names_nxdomain() -> None:
    with serving(directory(("web", None, ["10.42.1.2"]))) as server:
        aaaa = parse(udp(server.port, query("web", AAAA)))
        assert (aaaa.rcode, aaaa.answers, aaaa.authoritative) == (NOERROR, [], True)
        missing = parse(udp(server.port, query("Nope.CORRAL.Internal")))
        assert (missing.rcode, missing.answers, missing.authoritative) == (NXDOMAIN, [], True)
        apex = parse(udp(server.port, query("corral.internal")))
        assert (apex.rcode, apex.answers) == (NOERROR, [])
        assert server.stats["nxdomain"] == 1 and server.stats["answered"] == 2


def test_replacing_the_directory_shows_in_the_next_answer() -> None:
    d = directory(("web", None, ["10.42.1.2"]))
    with serving(d) as server:
        assert parse(udp(server.port, query("web"))).addresses == ["10.42.1.2"]
        d.replace([("web", None, ["10.42.3.3"]), ("api", None, [])])
        assert parse(udp(server.port, query("web"))).addresses == ["10.42.3.3"]
        api = parse(udp(server.port, query("api.corral.internal")))
        assert (api.rcode, api.answers) == (NOERROR, [])  # known, but nothing healthy


def test_tcp_answers_several_queries_on_one_connection() -> None:
    with serving(directory(("web", None, ["10.42.1.2"]))) as server:
        asked = tcp(server.port, query("web", qid=1), query("nope.corral.internal", qid=2))
        replies = [parse(r) for r in asked]
        assert [(r.qid, r.rcode, r.addresses) for r in replies] == [
            (1, NOERROR, ["10.42.1.2"]), (2, NXDOMAIN, [])]


def test_large_answers_are_truncated_over_udp_and_whole_over_tcp() -> None:
    addresses = [f"10.42.7.{i}" for i in range(1, 61)]
    with serving(directory(("many", None, addresses))) as server:
        raw = udp(server.port, query("many.corral.internal"))
        short = parse(raw)
        assert len(raw) <= 512 and short.truncated
        assert 0 < len(short.answers) < 60 and set(short.addresses) <= set(addresses)
        [whole] = [parse(r) for r in tcp(server.port, query("many.corral.internal"))]
        assert not whole.truncated and sorted(whole.addresses) == sorted(addresses)


# --- forwarding ------------------------------------------------------------------------------


def test_other_names_go_upstream_in_turn_and_come_back_with_the_askers_id() -> None:
    upstream = Upstream()
    refusing = ("127.0.0.1", closed_port())
    with serving(directory(), upstreams=[refusing, upstream.address]) as server:
        sent = query("example.org", qid=0x4242)
        reply = parse(udp(server.port, sent))
        assert (reply.qid, reply.rcode, reply.addresses) == (0x4242, NOERROR, [RECOGNISABLE])
        assert reply.answers[0][1] == 300  # relayed verbatim, not our TTL
        assert [q[2:] for q in upstream.received] == [sent[2:]]
        assert server.stats["forwarded"] == 1


def test_a_truncated_upstream_answer_is_fetched_over_tcp_for_a_tcp_client() -> None:
    upstream = Upstream(truncate_udp=True)
    with serving(directory(), upstreams=[upstream.address]) as server:
        assert parse(udp(server.port, query("example.org"))).truncated
        [reply] = [parse(r) for r in tcp(server.port, query("example.org", qid=7))]
        assert (reply.qid, reply.truncated, reply.addresses) == (7, False, [RECOGNISABLE])


def test_servfail_when_the_upstream_is_silent_or_there_is_none() -> None:
    with serving(directory(), upstreams=[Upstream(silent=True).address], timeout=0.2) as server:
        started = time.monotonic()
        reply = parse(udp(server.port, query("example.org")))
        assert reply.rcode == SERVFAIL and 0.15 < time.monotonic() - started < 1.5
    with serving(directory()) as server:
        assert parse(udp(server.port, query("example.org"))).rcode == SERVFAIL
        assert server.stats["servfail"] == 1


# --- bad input -------------------------------------------------------------------------------


def test_malformed_packets_are_dropped_and_the_server_keeps_answering() -> None:
    good = query("web", qid=99)
    bad = [b"", b"\x12", good[:14],  # no header; question cut short
           good[:2] + b"\x81\x00" + good[4:],  # a response, not a query
           good[:12] + b"\x43web\x00\x00\x01\x00\x01",  # label type 01
           good[:12] + b"\x3f" + b"a" * 63 * 5]  # a label past the end
    with serving(directory(("web", None, ["10.42.1.2"]))) as server:
        reply = parse(udp(server.port, *bad, good))  # the first reply is the good query's
        assert (reply.qid, reply.addresses) == (99, ["10.42.1.2"])
        assert server.stats["dropped"] == len(bad)
        assert tcp(server.port, b"\x00\x01", good) == []  # closed after the bad message
        assert [parse(r).qid for r in tcp(server.port, good)] == [99]


def test_compressed_question_names_are_followed_and_pointer_loops_rejected() -> None:
    header = struct.pack("!6H", 5, 0x0100, 1, 0, 0, 0)
    # "\xc0\x04" points back at offset 4, the 0x00 high byte of QDCOUNT: the root
    backwards = header + b"\x03WEB\xc0\x04" + b"\x00\x01\x00\x01"
    loop = header + b"\xc0\x0c" + b"\x00\x01\x00\x01"  # points at itself
    forwards = header + b"\xc0\x0e\x03web\x00" + b"\x00\x01\x00\x01"
    with serving(directory(("web", None, ["10.42.1.2"]))) as server:
        reply = parse(udp(server.port, loop, forwards, backwards))
        assert (reply.qid, reply.addresses) == (5, ["10.42.1.2"])
        assert reply.question == encode_name("WEB") + b"\x00\x01\x00\x01"
        assert server.stats["dropped"] == 2


def test_only_standard_queries_with_one_question() -> None:
    with serving(directory(("web", None, ["10.42.1.2"]))) as server:
        status = parse(udp(server.port, query("web", flags=0x1100)))  # opcode 2, STATUS
        assert (status.rcode, status.flags & 0x7800, status.answers) == (NOTIMP, 0x1000, [])
        two = struct.pack("!6H", 3, 0x0100, 2, 0, 0, 0) + query("web")[12:] * 2
        assert parse(udp(server.port, two)).rcode == FORMERR
        assert server.stats["rejected"] == 2


def test_every_query_is_counted_once() -> None:
    with serving(directory(("web", None, ["10.42.1.2"]))) as server:
        udp(server.port, b"junk", query("web"))
        udp(server.port, query("x.corral.internal"))
        udp(server.port, query("example.org"))
        stats = dict(server.stats)
        assert stats.pop("queries") == sum(stats.values()) == 4


def test_upstreams_from_resolv_conf(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text("# generated\nsearch lan\nnameserver 10.42.3.1\nnameserver 1.1.1.1\n"
                    "nameserver bogus\n;nameserver 8.8.8.8\nnameserver 1.1.1.1\nnameserver ::1\n")
    found = upstreams_from_resolv_conf(str(conf), exclude={"10.42.3.1"})
    assert found == [("1.1.1.1", 53), ("::1", 53)]
    assert upstreams_from_resolv_conf(str(tmp_path / "missing")) == []


def test_freebind_binds_an_address_the_host_does_not_have_yet() -> None:
    absent = "203.0.113.254"  # TEST-NET-3; binding sends nothing anywhere
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((absent, 0))
        except OSError:
            pass
        else:
            pytest.skip(f"this host has {absent}")

    async def start(freebind: bool) -> int:
        server = DnsServer(Directory(), host=absent, port=0, freebind=freebind)
        try:
            await server.start()
            return server.port
        finally:
            await server.close()

    assert asyncio.run(start(freebind=True)) > 0
    with pytest.raises(OSError):
        asyncio.run(start(freebind=False))
