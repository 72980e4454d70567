"""Loopback forwarder: 127.0.0.1:PORT inside a network namespace -> 127.0.0.1:PORT in ours.

A namespaced "host" (see netns.py) has its own loopback, so its dockerd and agent cannot
see the registry and Corral server that listen on 127.0.0.1 in the root namespace. This
process, started in the root namespace, bridges that gap without veths, routes or NAT:

1. For each port it switches the (still single) thread into the target namespace with
   libc ``setns`` (Python 3.11 has no ``os.setns``), creates, binds and listens a TCP
   socket on 127.0.0.1:PORT there, and switches back to its own namespace, whose fd it
   opened from /proc/thread-self/ns/net beforehand. A socket stays in the namespace it
   was created in, so the listeners serve the namespace while the process lives here.
2. It prints ``ready`` on stdout, then relays every accepted connection to 127.0.0.1:PORT
   in the root namespace with asyncio: both directions, 256 KiB reads, half-close
   (``write_eof``) passed on, and a reset on either side aborts both.

Usage: ``python -m testbed.forward --netns /run/netns/crl-x --port 5000 --port 7443``
(``--port LISTEN:TARGET`` forwards to another port). Stop it with SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import sys

CLONE_NEWNET = 0x40000000
_CHUNK = 256 * 1024
_libc = ctypes.CDLL(None, use_errno=True)


def setns(fd: int, nstype: int = CLONE_NEWNET) -> None:
    """Move the calling thread into the namespace open at ``fd`` (libc setns(2))."""
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def listen_in_netns(netns_path: str, ports: list[int], host: str = "127.0.0.1",
                    backlog: int = 128) -> list[socket.socket]:
    """Listening TCP sockets on ``host:port`` for each port, created inside ``netns_path``.

    Must be called while the process has a single thread: setns(2) moves only the calling
    thread, and the thread is moved back before this returns (also on error).
    """
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    target = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
    socks: list[socket.socket] = []
    try:
        setns(target)
        try:
            for port in ports:
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                socks.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((host, port))
                sock.listen(backlog)
                sock.setblocking(False)
        finally:
            setns(own)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    finally:
        os.close(own)
        os.close(target)
    return socks


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(_CHUNK):
        writer.write(data)
        await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()


async def _relay(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter,
                 target_host: str, target_port: int) -> None:
    try:
        up_r, up_w = await asyncio.open_connection(target_host, target_port)
    except OSError as exc:
        print(f"forward: cannot reach {target_host}:{target_port}: {exc}", file=sys.stderr)
        client_w.transport.abort()
        return
    for w in (client_w, up_w):
        with contextlib.suppress(OSError):
            w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    tasks = [asyncio.create_task(_pipe(client_r, up_w)), asyncio.create_task(_pipe(up_r, client_w))]
    try:
        for fut in asyncio.as_completed(tasks):
            try:
                await fut
            except (OSError, asyncio.IncompleteReadError):
                for w in (client_w, up_w):  # a reset on one side: tear down both
                    w.transport.abort()
    finally:
        for task in tasks:
            task.cancel()
        for w in (client_w, up_w):
            w.close()


async def serve(listeners: list[tuple[socket.socket, str, int]]) -> None:
    """Relay connections accepted on each listener to its (target_host, target_port)."""
    servers = []
    for sock, t_host, t_port in listeners:
        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter,
                         t_host: str = t_host, t_port: int = t_port) -> None:
            await _relay(r, w, t_host, t_port)
        servers.append(await asyncio.start_server(handle, sock=sock, limit=_CHUNK))
    print("ready", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for server in servers:
        server.close()


def _parse_port(spec: str) -> tuple[int, int]:
    listen, _, target = spec.partition(":")
    return int(listen), int(target or listen)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry: ``--netns PATH --port P[:T] ...``."""
    ap = argparse.ArgumentParser(prog="python -m testbed.forward", description=__doc__.split("\n")[0])
    ap.add_argument("--netns", required=True, help="e.g. /run/netns/crl-h1")
    ap.add_argument("--port", action="append", required=True, type=_parse_port,
                    help="LISTEN[:TARGET] port (repeatable)")
    ap.add_argument("--target-host", default="127.0.0.1")
    args = ap.parse_args(argv)
    socks = listen_in_netns(args.netns, [listen for listen, _ in args.port])
    asyncio.run(serve([(s, args.target_host, target)
                       for s, (_, target) in zip(socks, args.port, strict=True)]))


if __name__ == "__main__":
    main()
