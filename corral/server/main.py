"""`corral server`: open the store, make the PKI and tokens on first start, serve.

On first start the data directory gets the CA, the server certificate, the
store (SQLite unless --db names PostgreSQL), an admin token (written to
DATA/admin.token, mode 0600, and printed once) and a join token.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from corral import __version__, tokens
from corral.net.ipam import (DEFAULT_CLUSTER_CIDR, DEFAULT_HOST_PREFIX, ClusterNet, IpamError, check_change,
                             parse_cluster)
from corral.server import gcpause

if TYPE_CHECKING:
    from corral.store.store import Store
    from corral.controllers.services import ImageResolver
    from corral.server.pki import ServerPKI
    from corral.server.state import ServerState

log = logging.getLogger("corral.server")


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"invalid --listen {text!r}: expected ADDR:PORT, e.g. 0.0.0.0:7443")
    return host.strip("[]") or "0.0.0.0", int(port)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="corral server", description="Run the Corral control plane.")
    p.add_argument("--data-dir", type=Path, default=Path(os.environ.get("CORRAL_DATA_DIR", "/var/lib/corral")))
    p.add_argument("--listen", type=parse_listen, default=parse_listen("0.0.0.0:7443"), metavar="ADDR:PORT")
    p.add_argument("--db", default=os.environ.get("CORRAL_DB"),
                   help="SQLAlchemy URL of the store (default: SQLite in the data dir); "
                        "e.g. postgresql+psycopg://user:pw@host/db")
    p.add_argument("--insecure-http", action="store_true",
                   help="serve plain HTTP (development only: tokens travel in the clear)")
    p.add_argument("--san", action="append", default=[], metavar="NAME_OR_IP",
                   help="extra subject alternative name for the server certificate")
    p.add_argument("--advertise-url", help="URL agents should dial (shown by `corral token join`)")
    p.add_argument("--heartbeat-interval", type=float, default=10.0, help="seconds between agent heartbeats")
    p.add_argument("--down-after", type=float, default=None,
                   help="seconds without heartbeat before a host is down (default: 3 intervals)")
    p.add_argument("--poll-wait", type=float, default=55.0,
                   help="seconds an agent's long-poll stays open when nothing changes (it renews it then)")
    p.add_argument("--reschedule-after", type=float, default=30.0,
                   help="seconds a host stays down before its replicated instances are placed elsewhere "
                        "(a host label corral.reschedule-after=SECONDS overrides it, e.g. for edge hosts)")
    p.add_argument("--insecure-registry", action="append", default=[], metavar="HOST[:PORT]|CIDR",
                   help="registry reached over plain HTTP (loopback registries always are)")
    p.add_argument("--agent-image", default=os.environ.get("CORRAL_AGENT_IMAGE", f"127.0.0.1:5000/corral/agent:{__version__}"),
                   help="multi-arch image of the agent, shown by `corral token join`")
    p.add_argument("--cluster-cidr", default=None, metavar="CIDR",
                   help="the overlay's network, set at the first start (default 10.42.0.0/16); "
                        "it can grow later, but never away from subnets hosts hold")
    p.add_argument("--host-subnet-prefix", type=int, default=None, metavar="N",
                   help="prefix length of each host's subnet of the cluster CIDR (default 24)")
    p.add_argument("--log-level", default="info")
    return p


CLUSTER_CIDR_SETTING = "overlay.cluster_cidr"
HOST_PREFIX_SETTING = "overlay.host_prefix"


def cluster_network(store: Store, cidr: str | None, host_prefix: int | None) -> ClusterNet:
    """The overlay's cluster network: the stored one, or the one given at the first start.

    A different one given later is taken only if every subnet hosts hold fits it
    (:func:`corral.net.ipam.check_change`); otherwise :class:`IpamError` says why.
    """
    stored_cidr, stored_prefix = store.get_setting(CLUSTER_CIDR_SETTING), store.get_setting(HOST_PREFIX_SETTING)
    stored = parse_cluster(stored_cidr, int(stored_prefix or DEFAULT_HOST_PREFIX)) if stored_cidr else None
    wanted = parse_cluster(cidr or (stored_cidr or DEFAULT_CLUSTER_CIDR),
                           host_prefix or (stored.host_prefix if stored else DEFAULT_HOST_PREFIX))
    if stored is not None and wanted != stored:
        check_change(stored, wanted, [h.subnet for h in store.overlay_hosts() if h.subnet])
    if wanted != stored:
        store.set_setting(CLUSTER_CIDR_SETTING, str(wanted.network))
        store.set_setting(HOST_PREFIX_SETTING, str(wanted.host_prefix))
    return wanted


def bootstrap(args: argparse.Namespace, images: ImageResolver | None = None) -> tuple[ServerState, ServerPKI]:
    """Open everything; return (state, pki)."""
    from corral.api.registries import registry_credentials
    from corral.api.tokens import JOIN_SETTING, issue_join_token
    from corral.images import RegistryClient
    from corral.server.pki import ensure_pki
    from corral.server.state import ServerState
    from corral.store.db import open_engine, sqlite_url
    from corral.store.store import Store

    data: Path = args.data_dir
    data.mkdir(parents=True, exist_ok=True)
    os.chmod(data, 0o700)
    host, port = args.listen
    pki = ensure_pki(data, args.san + ([host] if host not in ("0.0.0.0", "::") else []))
    fp = tokens.fingerprint(pki.ca_pem)
    store = Store(open_engine(args.db or sqlite_url(data)))
    try:
        store.cluster = cluster_network(store, args.cluster_cidr, args.host_subnet_prefix)
    except IpamError as exc:
        raise SystemExit(f"corral server: overlay network: {exc}") from None
    if store.get_setting(JOIN_SETTING) is None:
        admin = tokens.Token(tokens.ADMIN, fp, tokens.new_secret())
        store.add_token(tokens.ADMIN, tokens.hash_secret(admin.secret))
        issue_join_token(store, fp)
        token_file = data / "admin.token"
        fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(str(admin) + "\n")
        print(f"corral: new cluster; admin token written to {token_file}", file=sys.stderr)
    scheme = "http" if args.insecure_http else "https"
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    public = args.advertise_url or f"{scheme}://{shown}:{port}"
    interval = args.heartbeat_interval
    if images is None:
        images = RegistryClient(credentials=registry_credentials(store), insecure=args.insecure_registry,
                                timeout=5.0, retries=2)
    state = ServerState.build(store, images, ca_pem=pki.ca_pem, ca_fingerprint=fp, heartbeat_interval=interval,
                              down_after=args.down_after or 3 * interval, public_url=public,
                              agent_image=args.agent_image, reschedule_after=args.reschedule_after,
                              poll_wait=args.poll_wait)
    return state, pki


def run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("alembic").setLevel(logging.WARNING)
    import uvicorn

    from corral.server.app import create_app

    state, pki = bootstrap(args)
    gcpause.watch()
    host, port = args.listen
    certfile, keyfile = (None, None) if args.insecure_http else (str(pki.cert_path), str(pki.key_path))
    if args.insecure_http:
        log.warning("serving plain HTTP: development only")
    config = uvicorn.Config(create_app(state), host=host, port=port, log_level="warning", access_log=False,
                            timeout_keep_alive=75, ssl_certfile=certfile, ssl_keyfile=keyfile,
                            # agents hold long-polls open; they reconnect, so don't wait them out
                            timeout_graceful_shutdown=2)
    log.info("corral server %s listening on %s", state.public_url, f"{host}:{port}")
    uvicorn.Server(config).run(sockets=[listening_socket(host, port, state.heartbeat_interval)])
    return 0


def listening_socket(host: str, port: int, interval: float) -> socket.socket:
    """The server's socket, with TCP keepalive on every connection accepted from it.

    Agents hold a long-poll open; the kernel probes each such connection after
    ``interval`` seconds of silence and every ``interval / 2`` after that, and
    resets it after 3 unanswered probes.  That is the heartbeat: it costs the
    agent one empty ACK per interval and the server no work at all, and a host
    that dies is noticed within ``interval × 2.5`` seconds.  (Linux copies these
    options from the listening socket to the accepted ones.)
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    if hasattr(socket, "TCP_KEEPIDLE"):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, max(1, round(interval)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, max(1, round(interval / 2)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
