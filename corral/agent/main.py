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
from pathlib import Path

from corral import tokens
from corral.agent import facts as facts_mod
from corral.agent.agent import Agent, fake_gpus
from corral.agent.runtime.docker import DockerClient
from corral.agent.session import ServerError, ServerSession, Unreachable
from corral.agent.state import Credential, StateDir

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
    p.add_argument("--log-level", default="info")
    return p


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
    signal.signal(signal.SIGTERM, lambda *_: agent.stop())
    signal.signal(signal.SIGINT, lambda *_: agent.stop())
    log.info("agent for host %s talking to %s (engine %s)", cred.host_id, server, args.docker_host)
    agent.run()
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
