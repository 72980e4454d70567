"""Corral's command-line interface.

Modules (each small, imported lazily by the commands that need them):

* ``app``      the Typer app ``app`` and every command; ``main()`` is the entry point
* ``client``   ``CorralClient``: the REST API client (transport injectable, CA pinning)
* ``config``   the login file and env-over-file precedence
* ``session``  builds the client for one run; test seams (``hooks``)
* ``parsing``  local validation of arguments (K=V, ports, scale targets, names)
* ``waiting``  ``corral run``'s wait-until-converged loop
* ``output``   consoles, JSON, errors, time/size formatting
* ``render``   tables and panels for hosts, services, instances, images, registries

Nothing is imported here, so ``import corral.cli.app`` stays cheap.
"""
