"""Stacks, rolling updates and events: ``corral stack …``, ``service update|rollback``, ``events``.

The compose files are loaded here, on the user's machine (interpolation sees
the user's environment; ``env_file`` and ``.env`` are read next to the files),
and the server gets the resulting service specs.  Rollouts are watched by
polling each service and drawn as one Rich progress bar per service (new
version running / total, the current batch); ``--detach`` returns at once.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from corral.cli.app import OutputOpt, _show, app, service_app
from corral.cli.errors import CLIError
from corral.cli.output import OutputFormat

stack_app = typer.Typer(help="Deploy and manage stacks from compose files.", no_args_is_help=True)
app.add_typer(stack_app, name="stack")

ACTIVE = ("updating", "rolling_back")
WATCH_TIMEOUT = 600.0


def _client() -> Any:
    from corral.cli import session

    return session.open_client()


def _stack_specs(files: list[Path], name: str) -> tuple[list[dict[str, Any]], list[str]]:
    from corral.compose import ComposeError, load_stack

    try:
        stack = load_stack(files, stack=name)
    except ComposeError as exc:
        raise CLIError(str(exc)) from None
    except OSError as exc:
        raise CLIError(f"cannot read {exc.filename}: {exc.strerror}") from None
    for svc in stack.services:  # a stack's named volumes are STACK_NAME unless external or named
        for vol in svc.get("volumes") or []:
            declared = stack.volumes.get(vol["source"]) if vol.get("type") == "volume" else None
            if declared is not None:
                vol["source"] = declared.get("name") or (
                    vol["source"] if declared.get("external") else f"{name}_{vol['source']}")
    return stack.services, stack.warnings


@stack_app.command("deploy")
def stack_deploy(
    name: Annotated[str, typer.Argument(help="Stack name; its services are named STACK_SERVICE.")],
    compose_file: Annotated[list[Path], typer.Option("--compose-file", "-c",
                                                     help="Compose file; repeat to override (later wins).")],
    prune: Annotated[bool, typer.Option("--prune", help="Remove the stack's services the files no longer name.")]
    = False,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Return at once; do not watch the rollout.")]
    = False,
    output_format: OutputOpt = OutputFormat.table,
) -> None:
    """Create or update a stack: only the services that changed are updated (rolling)."""
    from corral.cli import output

    specs, warnings = _stack_specs(compose_file, name)
    for w in warnings:
        output.warning(w)
    with _client() as client:
        result = client.deploy_stack(name, specs, prune)
        if output_format is OutputFormat.json:
            output.print_json(result)
            return
        for outcome in ("created", "updated", "scaled", "removed", "unchanged"):
            if result.get(outcome):
                output.info(f"{outcome}: {', '.join(result[outcome])}")
        moving = result.get("created", []) + result.get("updated", []) + result.get("scaled", [])
        if moving and not detach:
            watch(client, moving)


@stack_app.command("ls")
def stack_ls(output_format: OutputOpt = OutputFormat.table) -> None:
    """List stacks with their services and how many instances run."""
    from corral.cli import render

    with _client() as client:
        stacks = client.list_stacks()
    _show(stacks, output_format, lambda: render.stacks_table(stacks))


@stack_app.command("services")
def stack_services(name: Annotated[str, typer.Argument(help="Stack name.")],
                   output_format: OutputOpt = OutputFormat.table) -> None:
    """The stack's services, as `corral service ls` shows them."""
    from corral.cli import render

    with _client() as client:
        services = client.stack_services(name)
    _show(services, output_format, lambda: render.services_table(services))


@stack_app.command("ps")
def stack_ps(name: Annotated[str, typer.Argument(help="Stack name.")],
             output_format: OutputOpt = OutputFormat.table) -> None:
    """The stack's instances, as `corral ps` shows them."""
    from corral.cli import render

    with _client() as client:
        instances = client.stack_instances(name)
    _show(instances, output_format, lambda: render.instances_table(instances))


@stack_app.command("rm")
def stack_rm(names: Annotated[list[str], typer.Argument(help="Stack names.")]) -> None:
    """Remove stacks: every service of each, and their instances."""
    from corral.cli import output

    with _client() as client:
        for name in names:
            client.remove_stack(name)
            output.info(f"stack {name} removed")


@service_app.command("update")
def service_update(
    name: Annotated[str, typer.Argument(help="Service name.")],
    image: Annotated[str | None, typer.Option("--image", help="New image reference.")] = None,
    env: Annotated[list[str] | None, typer.Option("--env", "-e", help="KEY=VALUE; replaces the environment.")]
    = None,
    replicas: Annotated[int | None, typer.Option("--replicas", min=0)] = None,
    parallelism: Annotated[int | None, typer.Option("--update-parallelism", min=0,
                                                    help="Instances replaced at once (0: all).")] = None,
    delay: Annotated[float | None, typer.Option("--update-delay", min=0, help="Seconds between batches.")] = None,
    order: Annotated[str | None, typer.Option("--update-order", help="stop-first or start-first.")] = None,
    monitor: Annotated[float | None, typer.Option("--update-monitor", min=0,
                                                  help="Seconds a new instance is watched for failure.")] = None,
    max_failure_ratio: Annotated[float | None, typer.Option("--update-max-failure-ratio", min=0, max=1)] = None,
    failure_action: Annotated[str | None, typer.Option("--update-failure-action",
                                                       help="pause, continue or rollback.")] = None,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Return at once; do not watch.")] = False,
    output_format: OutputOpt = OutputFormat.table,
) -> None:
    """Change a service; what its containers run rolls out batch by batch (through the scheduler)."""
    from corral.cli import output, parsing

    body: dict[str, Any] = {}
    if image is not None:
        body["image"] = image
    if env is not None:
        try:
            body["env"] = parsing.parse_env(env)
        except parsing.ArgumentProblem as exc:
            raise typer.BadParameter(str(exc), param_hint="--env") from None
    if replicas is not None:
        body["replicas"] = replicas
    settings = {"parallelism": parallelism, "delay": delay, "order": order, "monitor": monitor,
                "max_failure_ratio": max_failure_ratio, "failure_action": failure_action}
    given = {k: v for k, v in settings.items() if v is not None}
    with _client() as client:
        if given:
            current = client.get_service(name).get("update_config") or {}
            body["update_config"] = {**current, **given}
        if not body:
            raise typer.BadParameter("nothing to change: give --image, --env, --replicas or --update-*")
        svc = client.update_service(name, body)
        if output_format is OutputFormat.json:
            output.print_json(svc)
            return
        started = (svc.get("update") or {}).get("state") in ACTIVE and svc.get("version")
        output.info(f"{name}: version {svc.get('version')}" + (", rolling update started" if started else ""))
        if started and not detach:
            watch(client, [name])


@service_app.command("rollback")
def service_rollback(
    name: Annotated[str, typer.Argument(help="Service name.")],
    detach: Annotated[bool, typer.Option("--detach", "-d", help="Return at once; do not watch.")] = False,
) -> None:
    """Go back to the spec before the last update (rolled out with the rollback settings)."""
    from corral.cli import output

    with _client() as client:
        svc = client.rollback_service(name)
        output.info(f"{name}: rolling back to the previous spec (version {svc.get('version')})")
        if not detach:
            watch(client, [name])


def watch(client: Any, names: list[str], timeout: float = WATCH_TIMEOUT, interval: float = 0.5) -> None:
    """Progress bars until every service has converged, or its update paused or finished."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from corral.cli import output

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("{task.fields[note]}"), TimeElapsedColumn())
    deadline = time.monotonic() + timeout
    problems: list[str] = []
    with Progress(*columns, console=output.console(stderr=True), transient=False) as progress:
        tasks = {n: progress.add_task(n, total=None, note="") for n in names}
        pending = set(names)
        while pending and time.monotonic() < deadline:
            for name in sorted(pending):
                svc = client.get_service(name, instances=False)
                done, total, note, finished = rollout_progress(svc)
                progress.update(tasks[name], completed=done, total=total, note=note)
                if finished:
                    pending.discard(name)
                    if svc.get("status") == "paused" or note.startswith("paused"):
                        problems.append(f"{name}: {note}")
            if pending:
                time.sleep(interval)
    if pending:
        output.warning(f"still converging after {timeout:g}s: {', '.join(sorted(pending))} (see `corral ps`)")
    for p in problems:
        output.error(p)
    if problems or pending:
        raise typer.Exit(1)


def rollout_progress(svc: dict[str, Any]) -> tuple[int, int, str, bool]:
    """(done, total, note, finished) for a service's progress bar."""
    update = svc.get("update") or {}
    state = update.get("state")
    if state in ACTIVE:
        verb = "rolling back" if state == "rolling_back" else "updating"
        note = f"{verb}, batch of {update.get('batch', 0)}"
        if update.get("failed"):
            note += f", {update['failed']} failed"
        return int(update.get("updated", 0)), int(update.get("total", 0)) or 1, note, False
    if state in ("paused", "rollback_paused"):
        return int(update.get("updated", 0)), int(update.get("total", 0)) or 1, f"paused: {update.get('message')}", True
    desired = int(svc.get("desired", 0))
    running = int(svc.get("running", 0))
    if svc.get("pending_reason") and running < desired:
        return running, desired, f"pending: {svc['pending_reason']}", True
    if state in ("completed", "rollback_completed"):  # done: the service's own state is `ps`'s to show
        return running, max(desired, 1), state.replace("_", " "), True
    return running, max(desired, 1), "running", running >= desired


@app.command()
def events(
    since: Annotated[str | None, typer.Option("--since", help="Show past events too: 10m, 2h, 1d, or a Unix time.")]
    = None,
    event_type: Annotated[list[str] | None, typer.Option("--type", help="host, service or instance (repeatable).")]
    = None,
    subject: Annotated[list[str] | None, typer.Option("--subject", help="A host or service name (repeatable).")]
    = None,
    no_follow: Annotated[bool, typer.Option("--no-follow", help="Print past events and stop.")] = False,
    output_format: OutputOpt = OutputFormat.table,
) -> None:
    """Stream host, service and instance events as they happen (Ctrl-C to stop)."""
    from corral.cli import output

    params: dict[str, Any] = {"type": event_type or [], "subject": subject or []}
    if since is not None:
        params["since"] = parse_since(since, time.time())
    with _client() as client:
        try:
            if no_follow:
                for ev in client.list_events(params):
                    _print_event(ev, output_format, output)
                return
            for ev in client.stream_events(params):
                _print_event(ev, output_format, output)
        except KeyboardInterrupt:
            pass


def parse_since(text: str, now: float) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text[-1:] in units:
            return now - float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise typer.BadParameter(f"{text!r}: expected e.g. 30s, 10m, 2h, 1d or a Unix time",
                                 param_hint="--since") from None


def _print_event(ev: dict[str, Any], fmt: OutputFormat, output: Any) -> None:
    if fmt is OutputFormat.json:
        print(json.dumps(ev), flush=True)
        return
    attrs = " ".join(f"{k}={v}" for k, v in sorted(ev.get("attrs", {}).items()) if v not in ("", None))
    print(f"{ev['time']} {ev['type']} {ev['action']} {ev['subject']} {attrs}".rstrip(), flush=True)
