"""The compose loader behind ``corral stack deploy``: compose files -> Corral service specs.

A pure library: it reads the files it is given (and the ``.env`` and ``env_file`` files
they name), never the network or the server.  The public surface is three names::

    from corral.compose import ComposeError, Stack, load_stack
    stack = load_stack([Path("compose.yaml"), Path("prod.yaml")], os.environ, stack="shop")
    stack.services   # [{"name": "web", "image": ..., "replicas": 3, "ports": [...], ...}]
    stack.warnings   # ["services.web.cap_add is not supported by Corral and was ignored", ...]

The work is split the way docker compose does it, one module a step (stack.py runs them):

    yamlfile.py       YAML 1.2 scalars, no duplicate keys, the !reset / !override tags
    interpolation.py  $VAR, ${VAR:-default}, ${VAR:?error}, ${VAR:+alt}, $$ ...
    dotenv.py         the .env file and env_file files
    schema.py         validation against the vendored compose-spec.json (SCHEMA.md), with
                      messages that name the key path and what was expected
    syntax.py         the short syntaxes of ports and volumes
    normalize.py      one form per key, so that files can merge
    merge.py          the Compose Specification's merge rules
    values.py         numbers, booleans, durations, commands from strings
    services.py       one compose service -> one Corral spec; warnings for what is not honoured
    errors.py         ComposeError and the collector every step reports into

Design rules: an error names the file and the key path (``compose.yaml:
services.web.deploy.replicas: expected a whole number, got 'three'``) and one run reports
every error it cheaply can; a key the schema allows that Corral does not honour is never
dropped silently but listed in ``Stack.warnings``; the produced specs use ServiceCreate's field
names, and the loader refuses what ServiceCreate would refuse, so a loaded stack is accepted
by the server.
"""

from corral.compose.errors import ComposeError
from corral.compose.stack import Stack, load_stack

__all__ = ["ComposeError", "Stack", "load_stack"]
