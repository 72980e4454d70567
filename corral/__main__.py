"""Entry point of the `corral` command.

`corral agent` is dispatched before anything else is imported: on an edge
board the agent must start with the standard library alone (no Typer, Rich or
pydantic installed).  Everything else goes to the Typer CLI.
"""

from __future__ import annotations

import sys


def main() -> None:
    argv = sys.argv[1:]
    if argv[:1] == ["agent"]:
        from corral.agent.main import run as run_agent

        sys.exit(run_agent(argv[1:]))
    if argv[:1] == ["server"]:
        from corral.server.main import run as run_server

        sys.exit(run_server(argv[1:]))
    from corral.cli.app import app

    app(prog_name="corral")


if __name__ == "__main__":
    main()
