"""`corral agent`: join once with a join token, then run with the host credential.

Stdlib only.  The state dir keeps the credential (the join token is not needed
again) and the last desired set.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path

from corral import tokens
from corral.agent import facts as facts_mod
from corral.agent.agent import Agent, fake_gpus
from corral.agent.overlay import OverlayConfig, OverlayManager
from corral.agent.runtime.docker import DockerClient
from corral.agent.session import ServerError, ServerSession, Unreachable
from corral.agent.state import Credential, StateDir
from corral.agent.wireguard import WireGuard

log = logging.getLogger("corral.agent")


def parse_labels(items: list[str]) -> dict[str, str]:
    labels = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"corral agent: invalid --label {item!r}: expected KEY=VALUE")
        labels[key] = value
    return labels


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="corral agent", description="Run the Corral agent on this host.")
    p.add_argument("--server", help="server URL, e.g. https://corral.example:7443 (needed to join)")
    p.add_argument("--token", default=os.environ.get("CORRAL_JOIN_TOKEN"), help="join token (needed once)")
    p.add_argument("--state-dir", type=Path, default=Path(os.environ.get("CORRAL_AGENT_STATE", "/var/lib/corral-agent")))
    p.add_argument("--docker-host", default=os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock"))
    p.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="host label, set when joining")
    p.add_argument("--name", help="host name to report (default: the system hostname)")
    p.add_argument("--test-fake-gpus", type=int, default=int(os.environ.get("CORRAL_TEST_FAKE_GPUS", "0")),
                   metavar="N", help="test beds only: report N GPUs named 'fake GPU (test bed)' instead of probing")
    o = p.add_argument_group("overlay", "the WireGuard overlay between hosts, and service discovery")
    o.add_argument("--overlay", choices=("on", "off"), default=os.environ.get("CORRAL_OVERLAY", "on"),
                   help="join the overlay network (default on; needs root, ip, iptables, wg and the "
                        "kernel's wireguard module or wireguard-go)")
    o.add_argument("--overlay-endpoint", metavar="IP[:PORT]",
                   help="address other hosts dial for this host's WireGuard (default: the address of the "
                        "interface with the default route)")
    o.add_argument("--overlay-port", type=int, default=51820, help="WireGuard's UDP port (default 51820)")
    o.add_argument("--overlay-nat", choices=("auto", "yes", "no"), default="auto",
                   help="is this host behind NAT (others cannot dial it)? auto: the server infers it from "
                        "where peers see its packets come from")
    o.add_argument("--overlay-interface", default="corral0", help="WireGuard interface name (default corral0)")
    o.add_argument("--overlay-bridge", default="corral-br", help="the container bridge's name (default corral-br)")
    o.add_argument("--overlay-dns-port", type=int, default=53, help=argparse.SUPPRESS)
    o.add_argument("--overlay-stale-after", type=float, default=180.0, help=argparse.SUPPRESS)  # tests
    o.add_argument("--overlay-probe-every", type=float, default=30.0,
                   help="seconds between reachability probes of each peer (default 30)")
    p.add_argument("--log-level", default="info")
    return p


def overlay_manager(args: argparse.Namespace, docker: DockerClient, state: StateDir,
                    on_change: Callable[[], None]) -> OverlayManager | None:
    if args.overlay == "off":
        return None
    config = OverlayConfig(interface=args.overlay_interface, bridge=args.overlay_bridge,
                           listen_port=args.overlay_port, endpoint=args.overlay_endpoint,
                           nat={"auto": None, "yes": True, "no": False}[args.overlay_nat],
                           dns_port=args.overlay_dns_port, probe_every=args.overlay_probe_every,
                           stale_after=args.overlay_stale_after)
    return OverlayManager(docker, WireGuard(), config, state.path, on_change)


def join(args: argparse.Namespace, state: StateDir, docker: DockerClient, labels: dict[str, str]) -> Credential:
    if not args.server or not args.token:
        raise SystemExit("corral agent: this host has not joined yet: give --server URL and --token JOIN_TOKEN "
                         "(see `corral token join`)")
    try:
        token = tokens.parse(args.token)
        if token.kind != tokens.JOIN:
            raise tokens.TokenError("this is not a join token (it should start with CORRAL-J1-)")
        ca_pem = tokens.fetch_ca(args.server)
        tokens.verify_pin(ca_pem, token)
    except (tokens.TokenError, OSError) as exc:
        raise SystemExit(f"corral agent: cannot join {args.server}: {exc}") from None
    session = ServerSession(args.server, ca_pem)
    gpus = fake_gpus(args.test_fake_gpus) if args.test_fake_gpus else None
    body = {"facts": facts_mod.collect_facts(docker, labels, args.name, gpus=gpus), "labels": labels,
            "name": args.name}
    try:
        reply = session.call("POST", "/api/v1/agent/register", body, token=args.token)
    except (ServerError, Unreachable) as exc:
        raise SystemExit(f"corral agent: cannot join {args.server}: {exc}") from None
    cred = Credential(server=args.server, host_id=reply["host_id"], token=reply["credential"], ca_pem=ca_pem)
    state.save_credential(cred)
    log.info("joined %s as host %s", args.server, cred.host_id)
    return cred


def run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    labels = parse_labels(args.label)
    state = StateDir(args.state_dir)
    docker = DockerClient(args.docker_host)
    cred = state.credential() or join(args, state, docker, labels)
    server = args.server or cred.server
    session = ServerSession(server, cred.ca_pem, cred.token)
    agent = Agent(session, docker, state, cred.host_id, labels, hostname=args.name or socket.gethostname(),
                  fake_gpus=args.test_fake_gpus)
    agent.overlay = overlay_manager(args, docker, state, agent.report_soon)
    signal.signal(signal.SIGTERM, lambda *_: agent.stop())
    signal.signal(signal.SIGINT, lambda *_: agent.stop())
    log.info("agent for host %s talking to %s (engine %s)", cred.host_id, server, args.docker_host)
    agent.run()
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
