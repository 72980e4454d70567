"""Tables and panels for hosts, services, instances, images and registries.

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
    return Panel(
        _grid(rows),
        title=f"host [bold]{escape(str(host.get('name', '?')))}[/bold]",
        title_align="left",
        expand=False,
    )


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
