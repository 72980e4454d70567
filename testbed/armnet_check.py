"""Check the network tools layer of a foreign-architecture root (``testbed.armroot``).

``python -m testbed.armnet_check [--arch arm64|armhf] [--keep]`` (as root):

1. builds ``build_root(ARCH, network_tools=True)`` (timed; a second call times the warm
   path) and prints, for every tool the overlay runs, where PATH finds it in the root, the
   ELF machine of the file it resolves to, and ``file``'s opinion;
2. makes a network namespace ``crl-armnetchk`` with ``lo`` up, a bridge ``crlchk-br``
   and, with the machine's own iptables (nft), what dockerd would leave there: FORWARD
   policy DROP, a DOCKER-USER chain jumped to from FORWARD, a MASQUERADE in nat
   POSTROUTING; no dockerd, no veth, so nothing in it reaches anything outside;
3. runs the commands ``corral.agent.wireguard`` runs, one by one, each through
   ``armroot.chroot_argv`` inside that namespace (a host directory bound at
   /run/wireguard, so the separate invocations share wireguard-go's UAPI socket, as an
   agent and its restarts do);
4. runs the agent's own ``corral.agent.wireguard.WireGuard`` with the root's interpreter
   (``python3.11 -c``, PYTHONPATH=/opt/corral as the agent), in four invocations: set up
   (key, interface, peer, routes, forwarding, masquerade exemption), then again as a
   restarted agent (everything already there: nothing changes), then after wireguard-go
   was SIGKILLed (the status says so and ensure_interface builds the interface again),
   finally removing what it added;
5. checks ``ArmAgentProc(overlay=True)``'s command line (network root, CORRAL_OVERLAY=on,
   /run/wireguard bound, extra arguments passed on);

prints PASS/FAIL and the time of every step, removes the namespace, the processes it
started and its directories (``--keep`` leaves the namespace for a look), and exits 1 if
any step failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

from testbed import armroot
from testbed.daemons import RUN_DIR, TestbedError, ensure_binfmt

NETNS = "crl-armnetchk"
NETNS_PATH = f"/run/netns/{NETNS}"
BRIDGE = "crlchk-br"
IFACE = "wgarmchk"  # the raw commands' interface
IFACE2 = "wgarmchk2"  # the WireGuard class's
WORK = RUN_DIR / "armnetchk"  # wireguard/ (bound at /run/wireguard) and state/

CLUSTER, SUBNET, GATEWAY, PEER_SUBNET = "10.99.0.0/16", "10.99.0.0/24", "10.99.0.1", "10.99.1.0/24"

results: list[tuple[str, bool, float, str]] = []


def report(name: str, ok: bool, seconds: float, detail: str = "") -> bool:
    results.append((name, ok, seconds, detail))
    first, *rest = (detail or "").splitlines() or [""]
    print(
        f"{'PASS' if ok else 'FAIL'}  {seconds:6.2f}s  {name}" + (f"  -- {first}" if first else "")
    )
    for line in rest:
        print(f"{'':16}{line}")
    return ok


def host(
    argv: list[str], *, check: bool = True, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """A command of this machine's own, in the namespace."""
    res = subprocess.run(
        ["nsenter", f"--net={NETNS_PATH}", "--", *argv],
        capture_output=True,
        text=True,
        input=input,
        timeout=60,
        check=False,
    )
    if check and res.returncode != 0:
        raise TestbedError(f"{' '.join(argv)} in {NETNS} failed: {res.stderr.strip()}")
    return res


def in_root(
    root: Path,
    argv: list[str],
    *,
    input: str | None = None,
    binds: list[armroot.Bind] | None = None,
    timeout: float = 120,
) -> tuple[subprocess.CompletedProcess[str], float]:
    """``argv`` in the root, in the namespace, as the agent's commands run there."""
    cmd = armroot.chroot_argv(
        root,
        argv,
        binds=[armroot.Bind(WORK / "wireguard", "/run/wireguard"), *(binds or [])],
        env=armroot.agent_env(overlay=True),
    )
    start = time.monotonic()
    res = subprocess.run(
        ["nsenter", f"--net={NETNS_PATH}", "--", *cmd],
        capture_output=True,
        text=True,
        input=input,
        timeout=timeout,
        check=False,
        stdin=None if input is not None else subprocess.DEVNULL,
    )
    return res, time.monotonic() - start


def step(
    root: Path, name: str, argv: list[str], *, input: str | None = None, expect: str | None = None
) -> subprocess.CompletedProcess[str]:
    res, took = in_root(root, argv, input=input)
    out = res.stdout.strip() or res.stderr.strip()
    ok = res.returncode == 0 and (expect is None or expect in res.stdout)
    report(
        name,
        ok,
        took,
        ""
        if ok and not out
        else (out if ok else f"exit {res.returncode}: {res.stderr.strip() or out}")[:600],
    )
    return res


# ---------------------------------------------------------------- the namespace


def netns_inode() -> int | None:
    with contextlib.suppress(OSError):
        return os.stat(NETNS_PATH).st_ino
    return None


def procs_in_netns() -> list[tuple[int, str]]:
    """(pid, cmdline) of every process whose network namespace is ours."""
    ino = netns_inode()
    out: list[tuple[int, str]] = []
    if ino is None:
        return out
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if os.stat(entry / "ns" / "net").st_ino == ino:
                cmd = (
                    (entry / "cmdline")
                    .read_bytes()
                    .replace(b"\0", b" ")
                    .decode(errors="replace")
                    .strip()
                )
                out.append((int(entry.name), cmd))
    return out


def wireguard_go_pids(name: str) -> list[tuple[int, str]]:
    return [
        (pid, cmd)
        for pid, cmd in procs_in_netns()
        if "wireguard-go" in cmd and cmd.split()[-1] == name
    ]


def cleanup() -> list[str]:
    """End what runs in our namespace (wireguard-go daemons), delete it and our directories;
    return what is left."""
    for pid, _ in procs_in_netns():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while procs_in_netns() and time.monotonic() < deadline:
        time.sleep(0.05)
    left = [f"pid {pid}: {cmd}" for pid, cmd in procs_in_netns()]
    if os.path.exists(NETNS_PATH):
        subprocess.run(["ip", "netns", "delete", NETNS], capture_output=True, check=False)
    shutil.rmtree(WORK, ignore_errors=True)
    left += [p for p in (NETNS_PATH, str(WORK)) if os.path.exists(p)]
    return left


def make_netns() -> None:
    cleanup()  # a previous run's leftovers
    subprocess.run(["ip", "netns", "add", NETNS], check=True, capture_output=True)
    host(["ip", "link", "set", "lo", "up"])
    host(["ip", "link", "add", BRIDGE, "type", "bridge"])
    host(["ip", "address", "add", f"{GATEWAY}/24", "dev", BRIDGE])
    host(["ip", "link", "set", BRIDGE, "up"])
    # What dockerd leaves in a namespace (nft backend), without a dockerd.
    host(["iptables", "-w", "5", "-P", "FORWARD", "DROP"])
    host(["iptables", "-w", "5", "-N", "DOCKER-USER"])
    host(["iptables", "-w", "5", "-A", "DOCKER-USER", "-j", "RETURN"])
    host(["iptables", "-w", "5", "-I", "FORWARD", "1", "-j", "DOCKER-USER"])
    host(
        [
            "iptables",
            "-w",
            "5",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-s",
            SUBNET,
            "!",
            "-o",
            BRIDGE,
            "-j",
            "MASQUERADE",
        ]
    )
    (WORK / "wireguard").mkdir(parents=True, mode=0o755)
    (WORK / "state").mkdir(parents=True, mode=0o700)


# ---------------------------------------------------------------- the checks


def check_build(arch: str) -> Path | None:
    stamp = armroot.ROOTS_DIR / f"{arch}-net.json"
    state = "warm" if stamp.exists() else "cold"
    start = time.monotonic()
    try:
        root = armroot.build_root(arch, network_tools=True)
    except TestbedError as exc:
        report(
            f"build_root({arch!r}, network_tools=True) ({state})",
            False,
            time.monotonic() - start,
            str(exc),
        )
        return None
    report(
        f"build_root({arch!r}, network_tools=True) ({state})",
        True,
        time.monotonic() - start,
        str(root),
    )
    start = time.monotonic()
    armroot.build_root(arch, network_tools=True)
    report("build_root again (warm)", True, time.monotonic() - start)
    return root


def check_binaries(root: Path, arch: str) -> None:
    has_file = shutil.which("file") is not None
    for rep in armroot.net_tool_report(root, arch):
        what = (
            f"{rep.path} -> {rep.file}: ELF {rep.machine}, {'static' if rep.static else 'dynamic'}"
            f" (want {rep.want})"
        )
        if rep.missing:
            what += f"; missing {', '.join(rep.missing)}"
        if has_file and rep.file:
            desc = subprocess.run(
                ["file", "-b", str(root / rep.file.lstrip("/"))],
                capture_output=True,
                text=True,
                check=False,
            ).stdout.strip()
            what += f"\nfile: {desc[:110]}"
        report(f"{rep.tool} is {rep.want}", rep.ok, 0.0, what)


def check_commands(root: Path) -> None:
    step(root, "ip -json link", ["ip", "-json", "link"], expect='"ifname":"lo"')
    res = step(root, "wg genkey", ["wg", "genkey"])
    private = res.stdout.strip()
    step(root, "wg pubkey (key on stdin)", ["wg", "pubkey"], input=private + "\n")
    step(root, f"wireguard-go {IFACE}", ["wireguard-go", IFACE])
    sock = WORK / "wireguard" / f"{IFACE}.sock"
    report(f"UAPI socket /run/wireguard/{IFACE}.sock", sock.is_socket(), 0.0, str(sock))
    pids = wireguard_go_pids(IFACE)
    report(
        f"wireguard-go {IFACE} runs (qemu's cmdline)",
        bool(pids),
        0.0,
        "\n".join(f"pid {p}: {c}" for p, c in pids) or "no process",
    )
    step(root, f"wg show {IFACE} dump", ["wg", "show", IFACE, "dump"])
    step(
        root,
        f"ip address replace {GATEWAY}/32 dev {IFACE}",
        ["ip", "address", "replace", f"{GATEWAY}/32", "dev", IFACE],
    )
    step(root, f"ip link set {IFACE} up", ["ip", "link", "set", IFACE, "up"])
    step(
        root,
        f"ip route replace {PEER_SUBNET} dev {IFACE}",
        ["ip", "route", "replace", PEER_SUBNET, "dev", IFACE],
    )
    step(
        root,
        f"ip -details -json link show dev {IFACE}",
        ["ip", "-details", "-json", "link", "show", "dev", IFACE],
        expect='"info_kind":"tun"',
    )
    step(root, "iptables -w 5 -S", ["iptables", "-w", "5", "-S"], expect="-N DOCKER-USER")
    step(
        root,
        "iptables -w 5 -t nat -S POSTROUTING",
        ["iptables", "-w", "5", "-t", "nat", "-S", "POSTROUTING"],
        expect="MASQUERADE",
    )
    rule = ["-i", IFACE, "-o", IFACE, "-j", "ACCEPT"]
    step(
        root,
        f"iptables -w 5 -I FORWARD 1 {' '.join(rule)}",
        ["iptables", "-w", "5", "-I", "FORWARD", "1", *rule],
    )
    step(
        root,
        f"iptables -w 5 -C FORWARD {' '.join(rule)}",
        ["iptables", "-w", "5", "-C", "FORWARD", *rule],
    )
    seen = host(["iptables", "-w", "5", "-S", "FORWARD"], check=False).stdout
    report("the rule, seen by this machine's iptables", f"-A FORWARD {' '.join(rule)}" in seen, 0.0)
    step(
        root,
        f"iptables -w 5 -D FORWARD {' '.join(rule)}",
        ["iptables", "-w", "5", "-D", "FORWARD", *rule],
    )
    host(["sysctl", "-qw", "net.ipv4.ip_forward=0"])
    step(root, "sysctl -qw net.ipv4.ip_forward=1", ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
    value = host(["cat", "/proc/sys/net/ipv4/ip_forward"]).stdout.strip()
    report("net.ipv4.ip_forward in the namespace is 1", value == "1", 0.0, f"it is {value}")
    step(root, f"ip link delete dev {IFACE}", ["ip", "link", "delete", "dev", IFACE])
    deadline = time.monotonic() + 5
    while wireguard_go_pids(IFACE) and time.monotonic() < deadline:
        time.sleep(0.05)
    report(f"wireguard-go {IFACE} left with its link", not wireguard_go_pids(IFACE), 0.0)


# The agent's code, with the root's interpreter. Prints one JSON line per step ("show": the
# result is worth printing even when the step passes).
AGENT_CODE = textwrap.dedent("""
    import json, platform, sys, time
    from corral.agent.wireguard import Peer, WireGuard
    phase, name, bridge, gw, subnet, cluster, peer_net = sys.argv[1:8]
    key = "/var/lib/corral-agent/wireguard.key"
    wg = WireGuard()

    def step(what, fn, check=lambda r: True, show=False):
        t = time.monotonic()
        try:
            r = fn()
            ok, detail = bool(check(r)), repr(r)
        except Exception as e:
            ok, detail = False, f"{type(e).__name__}: {e}"
        took = time.monotonic() - t
        print(json.dumps({"step": what, "ok": ok, "s": took, "detail": detail[:700],
                          "show": show}), flush=True)
        return r if ok else None

    def ensure():
        return wg.ensure_interface(name, gw + "/32", 51820, key)

    def routes():
        return wg.set_routes(name, [peer_net])

    def forward():
        return wg.allow_forwarding(name, bridge)

    def exempt():
        return wg.exempt_from_masquerade(subnet, cluster)

    def status():
        return wg.status(name)

    step("platform.machine()", platform.machine, lambda m: m != "x86_64", show=True)
    if phase == "setup":
        pub = step("ensure_private_key", lambda: wg.ensure_private_key(key))
        step("ensure_interface (creates it)", ensure,
             lambda r: r.created and r.backend == "userspace" and r.public_key == pub, show=True)
        other = step("genkey + pubkey (a peer)", lambda: wg.pubkey(wg.genkey()))
        peer = Peer(other, "192.0.2.7:51820", [peer_net], 25)
        step("set_peers", lambda: wg.set_peers(name, [peer]), lambda r: r.added == (other,))
        step("set_routes", routes, lambda r: r == ([peer_net], []))
        step("enable_ip_forwarding", wg.enable_ip_forwarding)
        step("allow_forwarding (DOCKER-USER)", forward, lambda n: n == 2)
        step("exempt_from_masquerade", exempt, lambda r: r is True)
        step("status", status, show=True,
             check=lambda s: s.healthy and s.backend == "userspace" and s.peer(other))
    elif phase == "again":
        step("ensure_private_key (kept)", lambda: wg.ensure_private_key(key))
        step("ensure_interface (nothing to do)", ensure,
             lambda r: not r.created and r.changed == ())
        step("set_routes (nothing to do)", routes, lambda r: r == ([], []))
        step("allow_forwarding (nothing to do)", forward, lambda n: n == 0)
        step("exempt_from_masquerade (nothing to do)", exempt, lambda r: r is False)
        step("status (healthy)", status, lambda s: s.healthy)
    elif phase == "killed":
        step("status (wireguard-go was killed)", status, lambda s: not s.healthy, show=True)
        step("ensure_interface (rebuilds it)", ensure,
             lambda r: r.created and r.backend == "userspace")
        step("set_routes (again)", routes, lambda r: r == ([peer_net], []))
        step("status (healthy again)", status, lambda s: s.healthy)
    elif phase == "remove":
        step("disallow_forwarding", lambda: wg.disallow_forwarding(name, bridge), lambda n: n == 2)
        step("remove_masquerade_exemption", lambda: wg.remove_masquerade_exemption(subnet, cluster),
             lambda r: r is True)
        step("remove_interface", lambda: wg.remove_interface(name), lambda r: r is True)
        step("status (gone)", status, lambda s: not s.present and not s.daemon_answers)
""")


def run_agent_code(root: Path, phase: str) -> None:
    binds = [
        armroot.Bind(WORK / "state", armroot.STATE_MOUNT),
        armroot.Bind((armroot.REPO_ROOT / "corral").resolve(), armroot.SOURCE_MOUNT, True),
    ]
    res, took = in_root(
        root,
        [
            armroot.PYTHON,
            "-c",
            AGENT_CODE,
            phase,
            IFACE2,
            BRIDGE,
            GATEWAY,
            SUBNET,
            CLUSTER,
            PEER_SUBNET,
        ],
        binds=binds,
        timeout=300,
    )
    steps = []
    for line in res.stdout.splitlines():
        with contextlib.suppress(ValueError):
            steps.append(json.loads(line))
    inner = sum(s["s"] for s in steps)
    ok = res.returncode == 0 and bool(steps)
    report(
        f"WireGuard class, phase {phase}: python3.11 under qemu (start-up and imports)",
        ok,
        took - inner,
        "" if ok else f"exit {res.returncode}: {res.stderr.strip()[-800:]}",
    )
    for s in steps:
        report(
            f"  WireGuard.{s['step']}",
            s["ok"],
            s["s"],
            s["detail"] if s.get("show") or not s["ok"] else "",
        )


def check_agent_class(root: Path) -> None:
    run_agent_code(root, "setup")
    rules = host(["iptables", "-w", "5", "-S", "DOCKER-USER"], check=False).stdout
    report(
        "its DOCKER-USER rules, seen by this machine's iptables",
        rules.count("corral-overlay") == 2,
        0.0,
        "\n".join(r for r in rules.splitlines() if "corral-overlay" in r),
    )
    nat = host(
        ["iptables", "-w", "5", "-t", "nat", "-S", "POSTROUTING"], check=False
    ).stdout.splitlines()
    first = next((r for r in nat if r.startswith("-A")), "")
    report(
        "its masquerade exemption comes first in nat POSTROUTING",
        "corral-overlay" in first,
        0.0,
        first,
    )
    # (This machine's `wg` looks only in its own /var/run/wireguard, not in WORK.)
    link = host(["ip", "-details", "-json", "link", "show", "dev", IFACE2], check=False).stdout
    report(f"{IFACE2} is a TUN link, seen from this machine", '"info_kind":"tun"' in link, 0.0)
    run_agent_code(root, "again")
    pids = wireguard_go_pids(IFACE2)
    for pid, _ in pids:
        os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while wireguard_go_pids(IFACE2) and time.monotonic() < deadline:
        time.sleep(0.05)
    report(
        f"SIGKILL wireguard-go {IFACE2}",
        bool(pids) and not wireguard_go_pids(IFACE2),
        0.0,
        ", ".join(str(p) for p, _ in pids),
    )
    run_agent_code(root, "killed")
    run_agent_code(root, "remove")
    left = (
        host(["iptables", "-w", "5", "-S"], check=False).stdout
        + host(["iptables", "-w", "5", "-t", "nat", "-S"], check=False).stdout
    )
    report("no corral-overlay rule left", "corral-overlay" not in left, 0.0)


def check_agent_argv(arch: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        proc = armroot.ArmAgentProc(
            "https://127.0.0.1:1",
            "CORRAL-J1-x",
            Path(tmp) / "a",
            name="armchk",
            arch=arch,
            overlay=True,
            wireguard_dir=WORK / "wireguard",
            extra_args=["--overlay-interface", "wgarmchk3"],
        )
        argv = proc.argv()
        script = argv[-1]
        ok = (
            str(armroot.root_path(arch, network_tools=True)) in script
            and "CORRAL_OVERLAY=on" in script
            and f"{WORK / 'wireguard'} " in script
            and "/run/wireguard" in script
            and "--overlay-interface wgarmchk3" in script
        )
        report(
            "ArmAgentProc(overlay=True).argv(): net root, CORRAL_OVERLAY=on, /run/wireguard, args",
            ok,
            0.0,
            "" if ok else script[-1500:],
        )
        plain = armroot.ArmAgentProc(
            "https://127.0.0.1:1", "CORRAL-J1-x", Path(tmp) / "b", arch=arch
        ).argv()[-1]
        ok = (
            f"{armroot.root_path(arch)} " in plain
            and "CORRAL_OVERLAY=off" in plain
            and "/run/wireguard" not in plain
        )
        report(
            "ArmAgentProc() unchanged: Python root, CORRAL_OVERLAY=off",
            ok,
            0.0,
            "" if ok else plain[-1500:],
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m testbed.armnet_check", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--arch", default="arm64", choices=("arm64", "armhf"))
    parser.add_argument(
        "--keep", action="store_true", help="leave the namespace (and wireguard-go) behind"
    )
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (namespaces, chroot, wireguard-go)", file=sys.stderr)
        return 2
    ensure_binfmt()
    root = check_build(args.arch)
    if root is None:
        return 1
    check_binaries(root, args.arch)
    # SIGTERM/SIGHUP end the run through the finally below; a closed stdout does not stop it.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda signum, _frame: sys.exit(128 + signum))
    with contextlib.suppress(OSError):
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
    make_netns()
    try:
        check_commands(root)
        check_agent_class(root)
        check_agent_argv(args.arch)
    finally:
        if not args.keep:
            left = cleanup()
            with contextlib.suppress(OSError):
                report(
                    f"cleanup: namespace {NETNS}, its processes and {WORK} gone",
                    not left,
                    0.0,
                    "\n".join(left),
                )
    failed = [r for r in results if not r[1]]
    print(f"\n{len(results) - len(failed)} passed, {len(failed)} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
