"""Tables and panels for hosts, the overlay network, services, instances, images and registries.

Pure functions from API objects (plain dicts) to Rich renderables; no I/O, so
they are tested directly.  Tables are compact and docker-like: no borders, a
bold header, two spaces between columns.  Missing fields render as ``-``
rather than failing, so an older or newer server still lists.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Any

from corral.cli.output import (
    ago,
    human_bytes,
    kv,
    short_digest,
    short_id,
    state_text,
    timestamp,
    truncate,
)

if TYPE_CHECKING:
    from rich.console import RenderableType
    from rich.table import Table
    from rich.text import Text

JSONDict = dict[str, Any]
ERROR_WIDTH = 48
STATUS_WIDTH = 64


def _table(*columns: str, wrap: tuple[str, ...] = ("ERROR", "LABELS")) -> Table:
    """Columns in ``wrap`` may wrap; on a narrow terminal Rich shrinks them first."""
    from rich.table import Table

    table = Table(
        box=None, pad_edge=False, show_edge=False, header_style="bold", padding=(0, 2, 0, 0)
    )
    for column in columns:
        table.add_column(column, no_wrap=column not in wrap, overflow="fold")
    return table


def _row(table: Table, *cells: Any) -> None:
    """Add a row; plain strings become Text so data is never read as Rich markup."""
    table.add_row(
        *(_text(c) if isinstance(c, (str, int, float)) or c is None else c for c in cells)
    )


def _text(value: Any, style: str = "") -> Text:
    from rich.text import Text

    return Text("-" if value is None or value == "" else str(value), style=style)


def ports_text(ports: list[JSONDict] | None) -> str:
    """``8080->80/tcp, 53->53/udp`` or ``-``."""
    if not ports:
        return "-"
    return ", ".join(
        f"{p.get('published')}->{p.get('target')}/{p.get('protocol') or 'tcp'}" for p in ports
    )


def converged(service: JSONDict) -> bool:
    """Every wanted instance runs.

    A global service wants one instance per host that can run it; until the
    server has counted those hosts (``desired`` 0, no ``pending_reason``), it
    has not converged.
    """
    desired = service.get("desired", service.get("replicas", 0))
    if service.get("running", 0) != desired:
        return False
    return service.get("mode") != "global" or bool(desired)


def service_status(service: JSONDict) -> tuple[str, str]:
    """(text, style): ``updating 2/5`` or ``paused: <why>`` during a rolling update, then
    ``pending: <reason>`` yellow, ``converged`` green, ``degraded`` red or ``converging``."""
    update = service.get("update") or {}
    if update.get("state") in ("updating", "rolling_back"):
        verb = "rolling back" if update["state"] == "rolling_back" else "updating"
        return f"{verb} {update.get('updated', 0)}/{update.get('total', 0)}", "cyan"
    if update.get("state") in ("paused", "rollback_paused"):
        return f"update paused: {update.get('message') or 'an instance failed'}", "red"
    reason = service.get("pending_reason")
    if reason:
        return f"pending: {reason}", "yellow"
    if converged(service):
        return "converged", "green"
    if service.get("status") == "degraded":
        return "degraded", "red"
    return "converging", ""


def stacks_table(stacks: list[JSONDict]) -> Table:
    table = _table("NAME", "SERVICES", "RUNNING", "STATUS")
    for s in stacks:
        _row(table, _text(s.get("name")), str(s.get("services", 0)), f"{s.get('running', 0)}/{s.get('desired', 0)}",
             _text(s.get("status"), "green" if s.get("status") == "converged" else ""))
    return table


# -- hosts ------------------------------------------------------------------


def host_platform(host: JSONDict) -> Text:
    text = _text(host.get("platform"))
    facts = host.get("facts") or {}
    if facts.get("platform_mismatch") and host.get("engine_platform"):
        text.append(f" (engine {host['engine_platform']})", style="yellow")
    return text


def hosts_table(hosts: list[JSONDict], now: datetime | None = None) -> Table:
    table = _table(
        "ID", "NAME", "PLATFORM", "STATE", "AVAILABILITY", "ENGINE", "CPUS", "MEMORY", "LABELS",
        "LAST SEEN"
    )
    for host in hosts:
        facts = host.get("facts") or {}
        _row(
            table,
            short_id(host.get("id")),
            _text(host.get("name")),
            host_platform(host),
            state_text(host.get("state")),
            state_text(host.get("availability") or "active"),
            _text((facts.get("docker") or {}).get("version")),
            _text(facts.get("cpus")),
            human_bytes(facts.get("memory_bytes")),
            _text(kv(host.get("labels"))),
            ago(host.get("last_seen"), now),
        )
    return table


def _grid(rows: list[tuple[str, Any]]) -> Table:
    from rich.table import Table

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    for key, value in rows:
        grid.add_row(key, value if not isinstance(value, (str, int, float)) else _text(value))
    return grid


def host_panel(host: JSONDict, now: datetime | None = None) -> RenderableType:
    from rich.markup import escape
    from rich.panel import Panel

    facts = host.get("facts") or {}
    docker = facts.get("docker") or {}
    emulated = facts.get("emulated_platforms") or []
    gpus = facts.get("gpus") or []
    rows: list[tuple[str, Any]] = [
        ("ID", _text(host.get("id"))),
        ("State", state_text(host.get("state"))),
        ("Platform", host_platform(host)),
        ("Emulates", ", ".join(emulated) or "-"),
        ("Labels", kv(host.get("labels"))),
        ("Hostname", _text(facts.get("hostname"))),
        ("OS / kernel", f"{facts.get('os') or '-'} / {facts.get('kernel') or '-'}"),
        ("CPUs", _text(facts.get("cpus"))),
        ("Memory", human_bytes(facts.get("memory_bytes"))),
        (
            "GPUs",
            ", ".join(g if isinstance(g, str) else str(g.get("name", g)) for g in gpus) or "-",
        ),
        ("Docker", _text(docker.get("version"))),
        ("Agent", _text(facts.get("agent_version"))),
        ("Instances", _text(host.get("instances"))),
        ("Created", timestamp(host.get("created_at"), now)),
        ("Last seen", timestamp(host.get("last_seen"), now)),
    ]
    panel = Panel(
        _grid(rows),
        title=f"host [bold]{escape(str(host.get('name', '?')))}[/bold]",
        title_align="left",
        expand=False,
    )
    if not any(key in host for key in ("subnet", "overlay", "mesh")):
        return panel  # a server from before the overlay
    from rich.console import Group

    return Group(panel, overlay_panel(host, now))


# -- the overlay network ----------------------------------------------------

PEER_STYLES = {"up": "green", "relayed": "cyan", "stale": "yellow", "new": "yellow", "down": "red"}
UNHEALTHY_PEER_STATES = ("down", "stale")


def _epoch(now: datetime | float | None) -> float:
    import time

    if now is None:
        return time.time()
    return now.timestamp() if isinstance(now, datetime) else float(now)


def short_duration(seconds: float) -> str:
    """``45s``, ``4m``, ``2h``, ``3d`` (whole units, rounded down)."""
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _rtt(ms: Any) -> str:
    """``12ms``, ``1.4ms``, ``0.3ms``; empty when unknown."""
    if not isinstance(ms, (int, float)) or isinstance(ms, bool):
        return ""
    if ms >= 10:
        return f"{ms:.0f}ms"
    return f"{ms:.1f}".rstrip("0").rstrip(".") + "ms" if ms >= 0.05 else "<0.1ms"


def peer_cell(peer: JSONDict | None, now: datetime | float | None = None) -> Text:
    """What one host sees of one peer, in a few characters: ``up 12ms``, ``via ov1``,
    ``stale 4m`` (since the last handshake), ``new``, ``down``; coloured by state.
    Empty when the host does not report the peer."""
    from rich.text import Text

    if not peer:
        return Text("")
    state = str(peer.get("state") or "?")
    style = PEER_STYLES.get(state, "magenta")
    if state == "up":
        label = f"up {_rtt(peer.get('rtt_ms'))}".rstrip()
    elif state == "relayed":
        label = f"via {peer['via']}" if peer.get("via") else "relayed"
    elif state == "stale":
        shook = peer.get("handshake_at")
        label = "stale"
        if isinstance(shook, (int, float)) and shook > 0:
            label += f" {short_duration(_epoch(now) - shook)}"
    else:
        label = state
    return Text(label, style=style)


def nat_text(behind_nat: bool | None, reachable: bool | None) -> Text:
    """``behind NAT`` / ``reachable`` / ``no endpoint``; ``-`` when the host is in no plan."""
    if behind_nat:
        return _text("behind NAT", "yellow")
    if reachable:
        return _text("reachable")
    if behind_nat is None and reachable is None:
        return _text(None)
    return _text("no endpoint", "yellow")


def network_hosts_table(hosts: list[JSONDict]) -> Table:
    table = _table("NAME", "STATE", "SUBNET", "ENDPOINT", "NAT", "BACKEND", "REPAIRS", "ERROR")
    for h in hosts:
        backend = h.get("backend") if h.get("overlay") or h.get("backend") else "(no overlay)"
        _row(
            table,
            _text(h.get("name")),
            state_text(h.get("state")),
            _text(h.get("subnet")),
            _text(h.get("endpoint")),
            nat_text(h.get("behind_nat"), h.get("reachable")),
            _text(backend, "" if h.get("overlay") else "dim"),
            _text(h.get("repairs") or 0, "yellow" if h.get("repairs") else ""),
            _text(h.get("error"), "red"),
        )
    return table


def peer_matrix(hosts: list[JSONDict], now: datetime | float | None = None) -> Table:
    """Rows: the reporting host; columns: the peer it reports on; ``—`` on the diagonal."""
    from rich.table import Table

    names = [str(h.get("name") or h.get("id") or "?") for h in hosts]
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold",
                  padding=(0, 2, 0, 0))
    table.add_column("", style="bold", no_wrap=True)
    for name in names:
        table.add_column(name, no_wrap=True)
    for h, name in zip(hosts, names, strict=True):
        peers = h.get("peers") or {}
        cells = [_text("—", "dim") if other == name else peer_cell(peers.get(other), now)
                 for other in names]
        label = _text(name, "" if h.get("state") == "ready" else "dim")
        table.add_row(label, *cells)
    return table


def _relay_pairs(hosts: list[JSONDict]) -> list[tuple[str, str, JSONDict]]:
    """Each pair of hosts that cannot dial each other, once, with the note saying why."""
    seen: set[frozenset[str]] = set()
    out = []
    for h in hosts:
        for note in h.get("relays") or []:
            a, b = str(h.get("name")), str(note.get("target_name") or note.get("target_id"))
            pair = frozenset((a, b))
            if pair in seen:
                continue
            seen.add(pair)
            x, y = sorted((a, b))
            out.append((x, y, note))
    return out


def relay_lines(hosts: list[JSONDict]) -> list[Text]:
    """``ov3 ↔ ov4: <why>; their traffic goes through ov1`` (cyan), or red when no
    reachable host relays for them."""
    lines = []
    for x, y, note in _relay_pairs(hosts):
        style = "cyan" if note.get("relay_name") or note.get("relay_id") else "red"
        lines.append(_text(f"{x} ↔ {y}: {note.get('reason') or 'no direct tunnel'}", style))
    return lines


def network_problems(network: JSONDict) -> list[str]:
    """Why the overlay is unhealthy (empty: healthy): a ready host reporting an error, a
    peer between ready hosts down or stale, two ready hosts no host can relay between."""
    hosts = network.get("hosts") or []
    ready = {str(h.get("name")) for h in hosts if h.get("state") == "ready"}
    problems = []
    for h in hosts:
        name = str(h.get("name"))
        if name not in ready:
            continue
        if h.get("error"):
            problems.append(f"{name}: {h['error']}")
        for peer_name, peer in sorted((h.get("peers") or {}).items()):
            state = (peer or {}).get("state")
            if peer_name in ready and peer_name != name and state in UNHEALTHY_PEER_STATES:
                problems.append(f"{name} → {peer_name}: {peer_cell(peer).plain}")
    for x, y, note in _relay_pairs([h for h in hosts if str(h.get("name")) in ready]):
        if y in ready and x in ready and not (note.get("relay_name") or note.get("relay_id")):
            problems.append(f"{x} ↔ {y}: {note.get('reason') or 'no relay'}")
    return problems


def network_view(network: JSONDict, now: datetime | float | None = None) -> RenderableType:
    """``corral network status``: the cluster CIDR, the hosts, the peer matrix, the relays."""
    from rich.console import Group

    hosts = network.get("hosts") or []
    head = _text("cluster ", "bold")
    cidr = network.get("cluster_cidr")
    head.append(str(cidr) if cidr else "- (no overlay configured)")
    if network.get("host_prefix"):
        head.append(f"  (a /{network['host_prefix']} per host)", style="dim")
    from rich.text import Text

    parts: list[Any] = [head, Text("")]
    if not hosts:
        parts.append(_text("no hosts", "dim"))
        return Group(*parts)
    parts += [network_hosts_table(hosts), Text(""),
              _text("peers (row: the host reporting; column: the peer)", "bold"),
              peer_matrix(hosts, now)]
    relays = relay_lines(hosts)
    if relays:
        parts += [Text(""), _text("relays", "bold"), *relays]
    return Group(*parts)


def _epoch_timestamp(at: Any, now: datetime | None) -> str:
    from datetime import UTC

    if not isinstance(at, (int, float)) or isinstance(at, bool):
        return "-"
    return timestamp(datetime.fromtimestamp(at, UTC).isoformat(), now)


def _relay_note_text(note: JSONDict) -> Text:
    target = note.get("target_name") or note.get("target_id") or "?"
    relay = note.get("relay_name") or note.get("relay_id")
    if relay:
        # the server's reason ends with what this line starts with
        reason = str(note.get("reason") or "").removesuffix(f"; their traffic goes through {relay}")
        why = f": {reason}" if reason else ""
        return _text(f"to {target} through {relay}{why}", "cyan")
    return _text(f"cannot reach {target}: {note.get('reason') or 'no relay'}", "red")


def overlay_panel(host: JSONDict, now: datetime | None = None) -> RenderableType:
    """``host inspect``'s overlay section: subnet, endpoint, NAT, relays, peers, repairs."""
    from rich.console import Group
    from rich.panel import Panel

    report = host.get("overlay") or {}
    mesh = host.get("mesh") or {}
    subnet = host.get("subnet")
    rows: list[tuple[str, Any]] = []
    if subnet:
        try:
            from corral.net.ipam import gateway

            rows.append(("Subnet", f"{subnet} (gateway and DNS {gateway(str(subnet))})"))
        except ValueError:
            rows.append(("Subnet", _text(subnet)))
    else:
        rows.append(("Subnet", _text("none assigned", "dim")))
    if not host.get("overlay"):
        rows.append(("Overlay", _text("no report from the agent (it runs without the overlay, "
                                      "or has not reported yet)", "dim")))
    else:
        backend = report.get("backend") or "-"
        if report.get("interface"):
            backend += f" on {report['interface']}"
        rows += [
            ("Endpoint", _text(report.get("endpoint"))),
            ("Backend", _text(backend)),
            ("Public key", _text(report.get("public_key"))),
        ]
    if mesh:
        if mesh.get("behind_nat"):
            nat = _text("behind NAT (it dials out and keeps its tunnels open with keepalives)",
                        "yellow")
        elif mesh.get("reachable"):
            nat = _text("reachable (peers dial its endpoint)")
        else:
            nat = _text("not reachable (it advertises no endpoint; it dials out)", "yellow")
        rows.append(("NAT", nat))
        relays = mesh.get("relays") or []
        rows.append(("Relays", Group(*(_relay_note_text(n) for n in relays)) if relays
                     else _text("none (it reaches every peer directly)")))
        relaying_for = mesh.get("relaying_for") or []
        rows.append(("Relays for", _text(
            f"{', '.join(relaying_for)} (they cannot dial each other)" if relaying_for else "-")))
    elif host.get("overlay"):
        rows.append(("Mesh", _text("not in the mesh plan (down, no key yet, or refused)", "yellow")))
    peers = report.get("peers") or {}
    if peers:
        from rich.text import Text

        line = Text()
        for i, (peer_id, peer) in enumerate(
                sorted(peers.items(), key=lambda kv: str((kv[1] or {}).get("name") or kv[0]))):
            if i:
                line.append(", ")
            line.append(f"{(peer or {}).get('name') or peer_id} ")
            line.append_text(peer_cell(peer, now))
        rows.append(("Peers", line))
    if host.get("overlay"):
        rows.append(("Repairs", _text(report.get("repairs") or 0)))
        last = report.get("last_repair")
        if isinstance(last, dict):
            what = f"{last.get('what')}: " if last.get("what") else ""
            rows.append(("Last repair", _text(
                f"{_epoch_timestamp(last.get('at'), now)}: {what}{last.get('reason') or ''}")))
    if report.get("error"):
        rows.append(("Error", _text(report["error"], "red")))
    return Panel(_grid(rows), title="overlay", title_align="left", expand=False)


# -- services ---------------------------------------------------------------


def services_table(services: list[JSONDict], *, no_trunc: bool = False) -> Table:
    """A long pending reason is cut to STATUS_WIDTH (``service inspect`` shows it whole)."""
    # STATUS wraps rather than squeezing the other columns on a narrow terminal
    table = _table("NAME", "IMAGE", "MODE", "REPLICAS", "PORTS", "STATUS", wrap=("STATUS",))
    for svc in services:
        status, style = service_status(svc)
        if not no_trunc:
            status = truncate(status, STATUS_WIDTH)
        desired = svc.get("desired", svc.get("replicas"))
        _row(
            table,
            _text(svc.get("name")),
            _text(svc.get("image")),
            _text(svc.get("mode")),
            f"{svc.get('running', 0)}/{desired}",
            ports_text(svc.get("ports")),
            _text(status, style),
        )
    return table


def update_text(update: JSONDict | None, config: JSONDict | None) -> str:
    cfg = config or {}
    settings = (f"parallelism {cfg.get('parallelism', 1)}, {cfg.get('order', 'stop-first')}, "
                f"on failure {cfg.get('failure_action', 'pause')}")
    if not update:
        return settings
    line = f"{str(update.get('state', '')).replace('_', ' ')} ({update.get('updated', 0)}/{update.get('total', 0)})"
    if update.get("message"):
        line += f": {update['message']}"
    return f"{line}; {settings}"


def restart_text(restart: JSONDict | None) -> str:
    if not restart:
        return "-"
    text = str(restart.get("condition", "any"))
    if restart.get("max_attempts"):
        text += f", at most {restart['max_attempts']} attempts"
    if restart.get("delay") is not None:
        text += f", delay {restart['delay']}s"
    return text


def image_digest_text(service: JSONDict) -> Text:
    """The digest the service is pinned to; ``unresolved`` (yellow) while it is null."""
    if "image_digest" in service and not service["image_digest"]:
        return _text("unresolved", "yellow")
    return _text(service.get("image_digest"))


def emulation_text(allowed: bool | None) -> Text:
    if allowed is None:
        return _text(None)
    if allowed:
        return _text("allowed (under qemu where no build matches the host)")
    return _text("not allowed (native builds only)")


def service_panel(service: JSONDict, now: datetime | None = None) -> RenderableType:
    import shlex

    from rich.console import Group
    from rich.markup import escape
    from rich.panel import Panel

    status, style = service_status(service)
    command = service.get("command")
    desired = service.get("desired", service.get("replicas"))
    replicas = f"{service.get('running', 0)}/{desired} running"
    if service.get("mode") == "global":
        replicas += " (one on every host that can run it)"
    rows: list[tuple[str, Any]] = [
        ("ID", _text(service.get("id"))),
        ("Image", _text(service.get("image"))),
        ("Digest", image_digest_text(service)),
        ("Platforms", _text(", ".join(service.get("image_platforms") or []))),
        ("Mode", _text(service.get("mode"))),
        ("Emulation", emulation_text(service.get("allow_emulation"))),
        ("Replicas", replicas),
        # the whole pending reason, wrapped by the grid: never truncated
        ("Status", _text(status, style)),
        ("Command", shlex.join(command) if command else "(image default)"),
        ("Env", kv(service.get("env"))),
        ("Ports", ports_text(service.get("ports"))),
        ("Constraints", ", ".join(service.get("constraints") or []) or "-"),
        ("Restart", restart_text(service.get("restart"))),
        ("Version", _text(service.get("version"))),
        ("Update", update_text(service.get("update"), service.get("update_config"))),
        ("Created", timestamp(service.get("created_at"), now)),
        ("Updated", timestamp(service.get("updated_at"), now)),
    ]
    panel = Panel(
        _grid(rows),
        title=f"service [bold]{escape(str(service.get('name', '?')))}[/bold]",
        title_align="left",
        expand=False,
    )
    instances = service.get("instances")
    if not instances:
        return panel
    return Group(panel, instances_table(instances, now=now))


# -- instances --------------------------------------------------------------


def instance_state(instance: JSONDict) -> Text:
    text = state_text(instance.get("state"), instance.get("exit_code"))
    if instance.get("desired_state") == "shutdown" and instance.get("state") not in (
        "exited",
        "failed",
        "pull_failed",
    ):
        text.append(" → shutdown", style="dim")
    if instance.get("health"):
        style = {"healthy": "green", "unhealthy": "red"}.get(instance["health"], "yellow")
        text.append(f" ({instance['health']})", style=style)
    if instance.get("restarts"):
        text.append(f" ↻{instance['restarts']}", style="dim")
    return text


def instances_table(
    instances: list[JSONDict], *, no_trunc: bool = False, now: datetime | None = None
) -> Table:
    table = _table("INSTANCE", "ID", "HOST", "PLATFORM", "STATE", "SINCE", "ERROR")
    for inst in instances:
        platform = _text(inst.get("platform"))
        if inst.get("emulated"):
            platform.append(" EMULATED", style="bold yellow")
        err = inst.get("error") or ""
        _row(
            table,
            _text(inst.get("name")),
            (inst.get("id") or "-") if no_trunc else short_id(inst.get("id")),
            _text(inst.get("host_name") or inst.get("host_id")),
            platform,
            instance_state(inst),
            ago(inst.get("since"), now),
            _text(err if no_trunc else truncate(err, ERROR_WIDTH), "red"),
        )
    return table


# -- images -----------------------------------------------------------------


def image_header(image: JSONDict, ref: str = "", *, no_trunc: bool = False) -> Text:
    """``REFERENCE  sha256:0123456789ab`` (the full digest with ``no_trunc``)."""
    digest = image.get("digest")
    text = _text(image.get("reference") or ref, "bold")
    text.append("  ")
    text.append(str(digest or "-") if no_trunc else short_digest(digest))
    return text


def image_platforms_table(image: JSONDict, *, no_trunc: bool = False) -> Table:
    """PLATFORM DIGEST SIZE [OS VERSION]: OS VERSION only when some build has one."""
    platforms = image.get("platforms") or []
    with_os = any(p.get("os_version") for p in platforms)
    columns = ["PLATFORM", "DIGEST", "SIZE", *(["OS VERSION"] if with_os else [])]
    # full digests fold on a narrow terminal instead of squeezing the platforms away
    table = _table(*columns, wrap=("DIGEST",) if no_trunc else ())
    for entry in platforms:
        digest = entry.get("digest")
        cells: list[Any] = [
            _text(entry.get("platform")),
            _text(digest if no_trunc else short_digest(digest)),
            # the download size (config + compressed layers); older servers only know the manifest's
            human_bytes(entry.get("image_size", entry.get("size"))),
        ]
        if with_os:
            cells.append(_text(entry.get("os_version")))
        _row(table, *cells)
    return table


# -- registries -------------------------------------------------------------


def registries_table(registries: list[JSONDict], now: datetime | None = None) -> Table:
    table = _table("REGISTRY", "USERNAME", "ADDED")
    for entry in registries:
        _row(
            table,
            _text(entry.get("registry")),
            _text(entry.get("username")),
            ago(entry.get("created_at"), now),
        )
    return table
