"""The ``corral`` command: a Typer app whose commands are thin over the API client.

Layout: every command (1) validates its arguments locally
(:mod:`corral.cli.parsing`, usage errors exit 2), (2) opens a client from the
login (:func:`corral.cli.session.open_client`), (3) calls the API and (4)
prints a table or panel (:mod:`corral.cli.render`) or, with ``-o json``, the
API objects verbatim (:func:`corral.cli.output.print_json`).

Failures are not handled command by command: :class:`CorralGroup`, the root
group, catches every :class:`~corral.cli.errors.CLIError` (API errors,
connection and TLS failures, no login) and prints ``error: <message>`` in
red on stderr with exit code 1.  Usage errors stay Typer's (exit 2).

Startup is kept cheap: httpx, Rich and the command helpers are imported
inside the commands that need them, so importing this module loads Typer
only (``--help`` then pulls in Rich to draw the help screen).
``server`` and ``agent`` hand their arguments, untouched, to
``corral.server.main.run`` and ``corral.agent.main.run``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperGroup

from corral import __version__
from corral.cli.errors import CLIError
from corral.cli.output import OutputFormat

if TYPE_CHECKING:
    from corral.cli.parsing import ArgumentProblem

OutputOpt = Annotated[
    OutputFormat,
    typer.Option("--output", "-o", help="table for people, json (the API objects) for scripts."),
]


class ServiceMode(str, enum.Enum):
    replicated = "replicated"
    global_ = "global"


class RestartCondition(str, enum.Enum):
    any = "any"
    on_failure = "on-failure"
    none = "none"


class CorralGroup(TyperGroup):
    """The root group: one place that turns failures into ``error: …`` and exit 1."""

    def invoke(self, ctx: Any) -> Any:
        from corral.cli import output

        try:
            return super().invoke(ctx)
        except CLIError as exc:
            output.error(str(exc))
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            output.console(stderr=True).print()
            raise typer.Exit(130) from None


app = typer.Typer(
    name="corral",
    cls=CorralGroup,
    help="Corral: run containers across a mixed ARM / x86 fleet.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
host_app = typer.Typer(help="List, inspect, label and remove hosts.", no_args_is_help=True)
label_app = typer.Typer(
    help="Add or remove host labels (used by constraints).", no_args_is_help=True
)
service_app = typer.Typer(help="List, inspect, scale, update, roll back and remove services.",
                          no_args_is_help=True)
token_app = typer.Typer(help="Tokens for joining hosts.", no_args_is_help=True)
image_app = typer.Typer(
    help="Look at images as the cluster's registries serve them.", no_args_is_help=True
)
registry_app = typer.Typer(
    help="Credentials the cluster pulls images with (admin).", no_args_is_help=True
)
network_app = typer.Typer(
    help="The WireGuard overlay: subnets, NAT, relays and peer health.", no_args_is_help=True
)
app.add_typer(host_app, name="host")
host_app.add_typer(label_app, name="label")
app.add_typer(service_app, name="service")
app.add_typer(image_app, name="image")
app.add_typer(registry_app, name="registry")
app.add_typer(network_app, name="network")
app.add_typer(token_app, name="token")


def main() -> None:
    """Console-script entry point."""
    app(prog_name="corral")


def _usage(exc: ArgumentProblem, hint: str | None = None) -> typer.BadParameter:
    return typer.BadParameter(str(exc), param_hint=hint)


def _show(data: Any, fmt: OutputFormat, renderable: Callable[[], Any]) -> None:
    """JSON verbatim, or a Rich renderable built lazily by ``renderable()``."""
    from corral.cli import output

    if fmt is OutputFormat.json:
        output.print_json(data)
    else:
        output.show(renderable())


# -- login and version --------------------------------------------------------


@app.command()
def login(
    url: Annotated[str, typer.Argument(help="The server, e.g. https://10.0.0.5:7443")],
    token: Annotated[
        str,
        typer.Option(
            "--token",
            "-t",
            help="Admin token (CORRAL-A1-…).",
            prompt="Admin token",
            hide_input=True,
        ),
    ],
) -> None:
    """Pin the server's CA from the admin token, check the token, save the login."""
    import os

    from corral import tokens
    from corral.cli import client as api
    from corral.cli import config, output, session

    try:
        url = config.normalize_url(url)
    except config.ConfigError as exc:
        raise typer.BadParameter(str(exc), param_hint="URL") from None
    try:
        parsed = tokens.parse(token)
    except tokens.TokenError as exc:
        raise typer.BadParameter(str(exc), param_hint="--token") from None
    if parsed.kind != tokens.ADMIN:
        kind = "a join token (CORRAL-J1-…)" if parsed.kind == tokens.JOIN else "a host credential"
        raise typer.BadParameter(
            f"this is {kind}; login needs an admin token (CORRAL-A1-…)", param_hint="--token"
        )
    token = str(parsed)

    ca_pem = api.pin_ca(url, token, fetch=session.hooks.fetch_ca)
    with session.make_client(url, token, ca_pem) as client:
        hosts = client.list_hosts()
    path = config.save(config.Config(url, token, ca_pem))

    output.info(
        f"✔ logged in to {url} ({len(hosts)} host{'s' if len(hosts) != 1 else ''})", "green"
    )
    if ca_pem:
        output.info(f"  CA pinned   {tokens.fingerprint(ca_pem)}")
    else:
        output.warning("plain http: no TLS (the server's dev mode); the token travels in clear")
    output.info(f"  token       {api.mask_token(token)}")
    output.info(f"  saved to    {path}")
    overriding = [v for v in (config.ENV_URL, config.ENV_TOKEN) if os.environ.get(v)]
    if overriding:
        output.warning(f"{' and '.join(overriding)} set in the environment override this login")


@app.command()
def version(output_format: OutputOpt = OutputFormat.table) -> None:
    """Show the CLI's version and, when logged in, the server's."""
    from corral.cli import config, output, session

    server: dict[str, Any] | None = None
    problem: CLIError | None = None
    try:
        with session.open_client() as client:
            server = client.info()
    except config.ConfigError as exc:
        if str(exc) != config.NOT_LOGGED_IN:
            problem = exc
    except CLIError as exc:
        problem = exc
    if output_format is OutputFormat.json:
        output.print_json({"client": {"version": __version__}, "server": server})
    else:
        output.info(f"client  {__version__}")
        if server is not None:
            output.info(
                f"server  {server.get('version', '?')}  (CA {server.get('ca_fingerprint', '?')})"
            )
        elif problem is None:
            output.info("server  (not logged in)", "dim")
    if problem is not None:
        raise problem


# -- hosts ----------------------------------------------------------------------


@host_app.command("ls")
def host_ls(output_format: OutputOpt = OutputFormat.table) -> None:
    """List hosts."""
    from corral.cli import render, session

    with session.open_client() as client:
        hosts = client.list_hosts()
    _show(hosts, output_format, lambda: render.hosts_table(hosts))


@host_app.command("inspect")
def host_inspect(
    host: Annotated[str, typer.Argument(help="Host id or name.")],
    output_format: OutputOpt = OutputFormat.table,
) -> None:
    """Show one host: its platform, facts and labels, and its overlay (subnet, NAT, relays)."""
    from corral.cli import render, session

    with session.open_client() as client:
        data = client.get_host(host)
    _show(data, output_format, lambda: render.host_panel(data))


def _scheduling(cpu: str | None, memory: str | None, generic: list[str] | None, max_per_node: int | None,
                affinities: list[str] | None, preferences: list[str] | None, strategy: str) -> dict[str, Any]:
    """The scheduling part of a service spec: only what was given (the server checks it all)."""
    if strategy not in ("spread", "binpack"):
        raise typer.BadParameter("must be spread or binpack", param_hint="--strategy")
    if max_per_node is not None and max_per_node < 1:
        raise typer.BadParameter("must be 1 or more", param_hint="--max-replicas-per-node")
    out: dict[str, Any] = {}
    reservations: dict[str, Any] = {}
    if cpu is not None:
        reservations["cpu"] = cpu
    if memory is not None:
        reservations["memory"] = memory
    if generic:
        reservations["generic"] = list(generic)
    if reservations:
        out["reservations"] = reservations
    if max_per_node is not None:
        out["max_replicas_per_node"] = max_per_node
    if affinities:
        out["affinities"] = list(affinities)
    if preferences:
        out["preferences"] = list(preferences)
    if strategy != "spread":
        out["strategy"] = strategy
    return out


def _for_each(names: list[str], act: Callable[[Any, str], None], report: bool = True) -> None:
    """Act on each name, going on past failures; exit 1 if any failed."""
    from corral.cli import output, session

    failed = False
    with session.open_client() as client:
        for name in names:
            try:
                act(client, name)
            except CLIError as exc:
                output.error(f"{name}: {exc}")
                failed = True
            else:
                if report:
                    output.info(name)
    if failed:
        raise typer.Exit(1)


def _availability(hosts: list[str], action: str) -> None:
    from corral.cli import output

    def act(client: Any, host: str) -> None:
        result = client.set_host_availability(host, action)
        output.info(f"{host}: {result.get('availability')}")

    _for_each(hosts, act, report=False)


@host_app.command("cordon")
def host_cordon(hosts: Annotated[list[str], typer.Argument(help="Host ids or names.")]) -> None:
    """Place nothing new on these hosts; what runs there stays."""
    _availability(hosts, "cordon")


@host_app.command("drain")
def host_drain(hosts: Annotated[list[str], typer.Argument(help="Host ids or names.")]) -> None:
    """Move these hosts' instances to other hosts, and place nothing new on them."""
    _availability(hosts, "drain")


@host_app.command("activate")
def host_activate(hosts: Annotated[list[str], typer.Argument(help="Host ids or names.")]) -> None:
    """Make cordoned or drained hosts schedulable again."""
    _availability(hosts, "activate")


@host_app.command("rm")
def host_rm(hosts: Annotated[list[str], typer.Argument(help="Host ids or names.")]) -> None:
    """Remove hosts and revoke their credentials."""
    _for_each(hosts, lambda client, host: client.remove_host(host))


@label_app.command("add")
def label_add(
    host: Annotated[str, typer.Argument(help="Host id or name.")],
    labels: Annotated[list[str], typer.Argument(help="KEY=VALUE pairs.")],
    output_format: OutputOpt = OutputFormat.table,
) -> None:
    """Set labels on a host (constraints match them: node.labels.KEY==VALUE)."""
    from corral.cli import output, session
    from corral.cli.parsing import ArgumentProblem, parse_label

    try:
        pairs = [parse_label(item) for item in labels]
    except ArgumentProblem as exc:
        raise _usage(exc, "LABELS") from None
    with session.open_client() as client:
        data: dict[str, Any] = {}
        for key, value in pairs:
            data = client.set_host_label(host, key, value)
    _print_labels(data, output_format, output)


@label_app.command("rm")
def label_rm(
    host: Annotated[str, typer.Argument(help="Host id or name.")],
    keys: Annotated[list[str], typer.Argument(help="Label keys.")],
    output_format: OutputOpt = OutputFormat.table,
) -> None:
    """Remove labels from a host."""
    from corral.cli import output, session

    with session.open_client() as client:
        data: dict[str, Any] = {}
        for key in keys:
            data = client.remove_host_label(host, key)
    _print_labels(data, output_format, output)


def _print_labels(host: dict[str, Any], fmt: OutputFormat, output: Any) -> None:
    if fmt is OutputFormat.json:
        output.print_json(host)
    else:
        output.info(f"{host.get('name', '?')}: {output.kv(host.get('labels'))}")


# -- the overlay network --------------------------------------------------------


@network_app.command("status")
def network_status(output_format: OutputOpt = OutputFormat.table) -> None:
    """Show the cluster CIDR, each host's subnet, endpoint and NAT, the peer matrix and relays.

    Peer matrix: each row is what that host's agent reports of each column's host:
    "up 12ms" (probe round trip), "via ov1" (relayed through ov1), "stale 4m" (last
    handshake 4 minutes ago; it is being repaired), "new", "down"; blank when the host
    does not report that peer.

    Exit status (also with -o json), for use as a health check: 0 when the overlay is
    healthy; 1 when a ready host reports an overlay error, a peer between two ready hosts
    is down or stale, or two ready hosts have no relay between them (each problem is
    named on stderr).
    """
    from corral.cli import output, render, session

    with session.open_client() as client:
        network = client.get_network()
    _show(network, output_format, lambda: render.network_view(network))
    problems = render.network_problems(network)
    if problems:
        for problem in problems:
            output.error(f"unhealthy: {problem}")
        raise typer.Exit(1)


# -- services -------------------------------------------------------------------


@app.command(context_settings={"allow_interspersed_args": False})
def run(
    image: Annotated[
        str, typer.Argument(help="Image reference, e.g. busybox or registry:5000/app:1.2")
    ],
    command: Annotated[
        list[str] | None,
        typer.Argument(
            help="Command and arguments for the container (after the image; `--` is allowed)."
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option("--name", "-n", help="Service name \\[default: derived from the image]."),
    ] = None,
    mode: Annotated[
        ServiceMode,
        typer.Option(
            "--mode",
            help="replicated: --replicas instances; global: one on every host that can run it.",
        ),
    ] = ServiceMode.replicated,
    replicas: Annotated[
        int | None,
        typer.Option(
            "--replicas", "-r", help="Number of instances \\[default: 1] (not with --mode global)."
        ),
    ] = None,
    allow_emulation: Annotated[
        bool,
        typer.Option(
            "--allow-emulation",
            help="Also run on hosts that can only emulate the image's platform (qemu; slow).",
        ),
    ] = False,
    env: Annotated[
        list[str] | None, typer.Option("--env", "-e", help="KEY=VALUE (repeatable).")
    ] = None,
    publish: Annotated[
        list[str] | None,
        typer.Option("--publish", "-p", help="PUBLISHED:TARGET\\[/udp] (repeatable)."),
    ] = None,
    constraint: Annotated[
        list[str] | None,
        typer.Option(
            "--constraint", "-c", help="Placement rule, e.g. node.labels.zone==edge (repeatable)."
        ),
    ] = None,
    reserve_cpu: Annotated[
        str | None, typer.Option("--reserve-cpu", help="CPU to reserve per instance, e.g. 0.5 or 500m.")
    ] = None,
    reserve_memory: Annotated[
        str | None, typer.Option("--reserve-memory", help="Memory to reserve per instance, e.g. 512Mi.")
    ] = None,
    generic_resource: Annotated[
        list[str] | None,
        typer.Option("--generic-resource", help="KIND=N to reserve, e.g. nvidia.com/gpu=1 (repeatable)."),
    ] = None,
    max_replicas_per_node: Annotated[
        int | None, typer.Option("--max-replicas-per-node", help="At most N instances on one host.")
    ] = None,
    affinity: Annotated[
        list[str] | None,
        typer.Option("--affinity", help="service!=db, service==cache, soft:node.labels.zone==edge (repeatable)."),
    ] = None,
    placement_pref: Annotated[
        list[str] | None,
        typer.Option("--placement-pref", help="Spread over a label's values: spread=node.labels.zone."),
    ] = None,
    strategy: Annotated[
        str, typer.Option("--strategy", help="spread (default) or binpack.")
    ] = "spread",
    restart: Annotated[
        RestartCondition, typer.Option("--restart", help="When to restart an instance that exits.")
    ] = RestartCondition.any,
    restart_max_attempts: Annotated[
        int, typer.Option("--restart-max-attempts", help="Give up after N restarts (0: never).")
    ] = 0,
    detach: Annotated[
        bool, typer.Option("--detach", "-d", help="Return at once; don't wait.")
    ] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait for the instances.")
    ] = 60.0,
    output_format: OutputOpt = OutputFormat.table,
) -> None:
    """Create a service and wait until its instances run.

    Options go before the image, as with docker run:
    corral run -n web -r 3 -p 8080:80 nginx, corral run busybox -- sh -c 'echo hi',
    corral run --mode global -n node-exporter prom/node-exporter.
    """
    from corral.cli import output, parsing, session

    def checked(hint: str, parse: Any, *args: Any) -> Any:
        try:
            return parse(*args)
        except parsing.ArgumentProblem as exc:
            raise _usage(exc, hint) from None

    if restart_max_attempts < 0:
        raise typer.BadParameter("must be 0 or more", param_hint="--restart-max-attempts")
    if timeout <= 0:
        raise typer.BadParameter("must be more than 0 seconds", param_hint="--timeout")
    is_global = mode is ServiceMode.global_
    if is_global and replicas is not None:
        raise typer.BadParameter(
            "a global service runs one instance on every host that can run it; "
            "drop --replicas or use --mode replicated",
            param_hint="--replicas",
        )
    spec: dict[str, Any] = {
        "name": name or checked("--name", parsing.derive_name, image),
        "image": image,
        "mode": mode.value,
    }
    if not is_global:  # a global service's count is the server's to work out
        count = 1 if replicas is None else replicas
        spec["replicas"] = checked("--replicas", parsing.parse_replicas, count)
    spec |= {
        "allow_emulation": allow_emulation,
        "env": checked("--env", parsing.parse_env, env or []),
        "command": checked("COMMAND", parsing.split_command, command or []),
        "ports": [checked("--publish", parsing.parse_port, p) for p in publish or []],
        "constraints": list(constraint or []),
        "restart": {"condition": restart.value, "max_attempts": restart_max_attempts, "delay": 1.0},
    }
    spec |= _scheduling(reserve_cpu, reserve_memory, generic_resource, max_replicas_per_node, affinity,
                        placement_pref, strategy)

    as_json = output_format is OutputFormat.json
    with session.open_client() as client:
        created = client.create_service(spec)
        svc_name = str(created.get("name", spec["name"]))
        if detach:
            if as_json:
                output.print_json(created)
            else:
                output.info(svc_name)
            return
        outcome = _wait(client, svc_name, timeout)
    if as_json:
        output.print_json(outcome.service)
    if outcome.kind == "converged":
        if not as_json:
            output.info(f"✔ {outcome.message}", "green")
    elif outcome.kind == "pending":
        if as_json:
            output.warning(outcome.message)
        else:
            output.info(outcome.message, "yellow")
    elif outcome.kind == "failed":
        raise CLIError(outcome.message)
    else:
        raise CLIError(f"timed out: {outcome.message}")


POLL_INTERVAL = 0.2


def _wait(client: Any, name: str, timeout: float) -> Any:
    """Poll with a transient Rich status line on stderr (``web: 2/3 running``)."""
    from corral.cli import output, waiting

    status_console = output.console(stderr=True)
    with status_console.status(f"{name}: starting", spinner="dots") as status:
        try:
            return waiting.wait_for_service(
                client,
                name,
                timeout=timeout,
                interval=POLL_INTERVAL,
                on_poll=lambda svc: status.update(waiting.progress_line(svc)),
            )
        except KeyboardInterrupt:
            status.stop()
            output.warning(f"stopped waiting; service {name} exists and keeps converging")
            raise typer.Exit(130) from None


@service_app.command("ls")
def service_ls(
    no_trunc: Annotated[
        bool, typer.Option("--no-trunc", help="Whole pending reasons (they wrap).")
    ] = False,
    output_format: OutputOpt = OutputFormat.table,
) -> None:
    """List services with their mode and convergence status."""
    from corral.cli import render, session

    with session.open_client() as client:
        services = client.list_services()
    _show(services, output_format, lambda: render.services_table(services, no_trunc=no_trunc))


@service_app.command("inspect")
def service_inspect(
    name: Annotated[str, typer.Argument(help="Service name.")],
    output_format: OutputOpt = OutputFormat.table,
) -> None:
    """Show a service's spec, status and instances."""
    from corral.cli import render, session

    with session.open_client() as client:
        data = client.get_service(name)
    _show(data, output_format, lambda: render.service_panel(data))


@service_app.command("scale")
def service_scale(
    targets: Annotated[list[str], typer.Argument(help="NAME=REPLICAS … (or NAME REPLICAS).")],
    output_format: OutputOpt = OutputFormat.table,
) -> None:
    """Change the number of replicas: corral service scale web=3 api=2."""
    from corral.cli import output, parsing, session

    try:
        pairs = parsing.parse_scale(targets)
    except parsing.ArgumentProblem as exc:
        raise _usage(exc, "TARGETS") from None
    results = []
    with session.open_client() as client:
        for name, count in pairs:
            results.append(client.scale_service(name, count))
            if output_format is OutputFormat.table:
                output.info(f"{name} scaled to {count}")
    if output_format is OutputFormat.json:
        output.print_json(results)


@service_app.command("rm")
def service_rm(names: Annotated[list[str], typer.Argument(help="Service names.")]) -> None:
    """Remove services (their instances are stopped and removed)."""
    _for_each(names, lambda client, name: client.remove_service(name))


@app.command()
def ps(
    service: Annotated[str | None, typer.Argument(help="Only this service's instances.")] = None,
    no_trunc: Annotated[bool, typer.Option("--no-trunc", help="Full ids and errors.")] = False,
    output_format: OutputOpt = OutputFormat.table,
) -> None:
    """List instances: where each runs, in what state, since when."""
    from corral.cli import render, session

    with session.open_client() as client:
        instances = client.list_instances(service)
    _show(instances, output_format, lambda: render.instances_table(instances, no_trunc=no_trunc))


@app.command()
def logs(
    service: Annotated[str, typer.Argument(help="Service name.")],
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep streaming new lines.")
    ] = False,
    tail: Annotated[
        int | None, typer.Option("--tail", help="Only the last N lines of each instance.", min=0)
    ] = None,
) -> None:
    """Print a service's logs, each line prefixed with its instance (Ctrl-C to stop)."""
    import sys

    from corral.cli import session

    with session.open_client() as client:
        lines = client.stream_logs(service, follow=follow, tail=tail)
        try:
            for line in lines:
                sys.stdout.write(line + "\n")
                sys.stdout.flush()
        except KeyboardInterrupt:
            pass  # Ctrl-C ends a follow cleanly
        finally:
            lines.close()  # type: ignore[attr-defined]


# -- images ---------------------------------------------------------------------

# Image inspect errors name the image in their detail; shown as they are.
_IMAGE_ERRORS = (404, 422, 502)


@image_app.command("inspect")
def image_inspect(
    ref: Annotated[
        str, typer.Argument(help="Image reference, e.g. 127.0.0.1:5000/app:1 or busybox.")
    ],
    no_trunc: Annotated[bool, typer.Option("--no-trunc", help="Full digests.")] = False,
    output_format: OutputOpt = OutputFormat.table,
) -> None:
    """Show an image's digest and the platforms it offers (the server asks the registry)."""
    from corral.cli import render, session
    from corral.cli.client import APIError, format_detail

    if not ref.strip():
        raise typer.BadParameter("an image reference is required", param_hint="REF")
    with session.open_client() as client:
        try:
            data = client.inspect_image(ref.strip())
        except APIError as exc:
            if exc.status_code in _IMAGE_ERRORS:
                raise CLIError(format_detail(exc.detail) or str(exc)) from None
            raise

    def view() -> Any:
        from rich.console import Group

        return Group(
            render.image_header(data, ref, no_trunc=no_trunc),
            render.image_platforms_table(data, no_trunc=no_trunc),
        )

    _show(data, output_format, view)


# -- registry credentials -----------------------------------------------------------


def _registry_arg(text: str) -> str:
    from corral.cli import parsing

    try:
        return parsing.parse_registry(text)
    except parsing.ArgumentProblem as exc:
        raise _usage(exc, "REGISTRY") from None


def _read_password_stdin() -> str:
    """All of stdin, less one trailing newline (as ``docker login --password-stdin``)."""
    import sys

    return sys.stdin.read().removesuffix("\n").removesuffix("\r")


@registry_app.command("login")
def registry_login(
    registry: Annotated[
        str, typer.Argument(help="HOST[:PORT] of the registry, e.g. 127.0.0.1:5001 or docker.io.")
    ],
    username: Annotated[
        str | None,
        typer.Option("--username", "-u", help="User name (prompted for when missing)."),
    ] = None,
    password_stdin: Annotated[
        bool,
        typer.Option(
            "--password-stdin", help="Read the password from stdin (else: a hidden prompt)."
        ),
    ] = False,
) -> None:
    """Store the credentials the cluster pulls images from REGISTRY with.

    The password is sent once, to the server, and never printed; the server never
    returns it. From a script: echo "$PW" | corral registry login REG -u USER --password-stdin.
    """
    from corral.cli import config, output, session

    registry = _registry_arg(registry)
    if password_stdin and not username:
        raise typer.BadParameter(
            "--password-stdin needs --username (stdin holds the password)", param_hint="--username"
        )
    cfg = config.resolve()  # "not logged in" before asking for anything
    if not username:
        username = str(typer.prompt("Username")).strip()
    if not username:
        raise CLIError("a user name is required")
    if password_stdin:
        password = _read_password_stdin()
    else:
        password = str(typer.prompt("Password", hide_input=True))
    if not password:
        raise CLIError("a password is required")
    try:
        with session.open_client(cfg) as client:
            data = client.set_registry_credentials(registry, username, password)
    except CLIError as exc:
        # Belt and braces: an error that quotes the request must not show the password.
        message = str(exc)
        if password in message:
            raise CLIError(message.replace(password, "••••••••")) from None
        raise
    stored = data.get("registry") or registry
    user = data.get("username") or username
    output.info(f"✔ credentials for {stored} stored (user {user})", "green")


@registry_app.command("ls")
def registry_ls(output_format: OutputOpt = OutputFormat.table) -> None:
    """List the registries the cluster has credentials for (never the passwords)."""
    from corral.cli import render, session

    with session.open_client() as client:
        registries = client.list_registries()
    _show(registries, output_format, lambda: render.registries_table(registries))


@registry_app.command("logout")
def registry_logout(
    registry: Annotated[str, typer.Argument(help="HOST[:PORT] of the registry.")],
) -> None:
    """Forget the credentials for REGISTRY (the cluster then pulls from it anonymously)."""
    from corral.cli import output, session

    registry = _registry_arg(registry)
    with session.open_client() as client:
        client.remove_registry_credentials(registry)
    output.info(f"✔ credentials for {registry} removed", "green")


# -- tokens ---------------------------------------------------------------------

AGENT_STATE_DIR = "/var/lib/corral-agent"


def join_commands(server_url: str, token: str, agent_image: str | None) -> dict[str, Any]:
    """The two ways to add a host, as Rancher's "Add Host" showed them.

    ``{"docker": [line, ...] or None, "pip": line}``: the ``docker run`` of the
    (multi-arch) agent image is split in lines that together make one command
    (no image from an older server: None).
    """
    import shlex

    agent_args = f"--server {shlex.quote(server_url)} --token {shlex.quote(token)}"
    docker = None
    if agent_image:
        docker = [
            "docker run -d --name corral-agent --restart always --network host --uts host",
            f"-v /var/run/docker.sock:/var/run/docker.sock -v {AGENT_STATE_DIR}:{AGENT_STATE_DIR}",
            f"{shlex.quote(agent_image)} {agent_args}",
        ]
    return {"docker": docker, "pip": f"pip install corral && corral agent {agent_args}"}


@token_app.command("join")
def token_join(
    rotate: Annotated[
        bool, typer.Option("--rotate", help="Invalidate the current join token; issue a new one.")
    ] = False,
    output_format: OutputOpt = OutputFormat.table,
) -> None:
    """Print the token that lets a new host join, and the commands that add a host."""
    from corral.cli import config, output, session

    cfg = config.resolve()
    with session.open_client(cfg) as client:
        data = client.rotate_join_token() if rotate else client.get_join_token()
    token = str(data.get("token") or "")
    if not token:
        raise CLIError("the server has no join token; issue one with `corral token join --rotate`")
    # The server's advertised URL (--advertise-url) is what agents should dial;
    # without one, the URL this CLI reaches the server at.
    server_url = str(data.get("server") or cfg.url)
    agent_image = str(data.get("agent_image") or "") or None
    commands = join_commands(server_url, token, agent_image)
    docker_lines = commands["docker"]
    if output_format is OutputFormat.json:
        docker = " ".join(docker_lines) if docker_lines else None
        output.print_json({**data, "commands": {"docker": docker, "pip": commands["pip"]}})
        return
    if rotate:
        output.info("✔ join token rotated: the previous one no longer works", "green")
    output.info(token)
    output.info("")
    output.info("Add a host:", "dim")
    if docker_lines:
        pad = "\n" + " " * len("  as a container:  ") + "  "
        output.info("  as a container:  " + f" \\{pad}".join(docker_lines))
    output.info(f"  with pip:        {commands['pip']}")


# -- server and agent passthrough ----------------------------------------------

_PASSTHROUGH: dict[str, Any] = {
    "context_settings": {"allow_extra_args": True, "ignore_unknown_options": True},
    "add_help_option": False,
}


def _delegate(module: str, extra: str, argv: list[str]) -> None:
    import importlib

    try:
        entry = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        raise CLIError(f"{exc}; install it with: pip install 'corral[{extra}]'") from None
    raise typer.Exit(int(entry.run(argv) or 0))


@app.command(**_PASSTHROUGH)
def server(ctx: typer.Context) -> None:
    """Run the Corral server (API, scheduler, controllers). `corral server --help` for options."""
    _delegate("corral.server.main", "server", list(ctx.args))


@app.command(**_PASSTHROUGH)
def agent(ctx: typer.Context) -> None:
    """Run the agent on a host. `corral agent --help` for options."""
    _delegate("corral.agent.main", "all", list(ctx.args))


# Commands defined in their own modules register themselves on the apps above.
from corral.cli import lifecycle  # noqa: E402,F401
