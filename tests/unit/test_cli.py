"""The `corral` CLI against a fake API server.

The fake server is a plain in-memory object whose ``handle`` method is an
``httpx.MockTransport`` handler; it implements the API contract the real
server follows (auth, 401/403/404/409/422 shapes, streamed logs).  It is
plugged in through ``corral.cli.session.hooks``; the CA fetch is faked the
same way.  Commands run through ``typer.testing.CliRunner``.

A last group of tests uses no fakes at all for TLS: a real HTTPS server in a
thread with a freshly made CA, to prove that pinning works end to end and
that a server whose certificate chains to another CA is refused.
"""

from __future__ import annotations

import base64
import json
import os
import re
import stat
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from corral import tokens
from corral.cli import app as app_module
from corral.cli import client as client_module
from corral.cli import config, output, parsing, render, session, waiting
from corral.cli.app import app
from corral.cli.client import APIError, ClientError, CorralClient, format_detail, mask_token


def fake_pem(seed: bytes) -> str:
    """Enough of a PEM for fingerprinting (the MockTransport needs no real TLS)."""
    body = base64.encodebytes(seed * 8).decode()
    return f"-----BEGIN CERTIFICATE-----\n{body}-----END CERTIFICATE-----\n"


CA = fake_pem(b"corral test ca ")
OTHER_CA = fake_pem(b"someone else's ")
FP = tokens.fingerprint(CA)
SECRET = "5ec12e7a11ce5ec12e7a11ce5ec12e7a"
ADMIN = f"CORRAL-A1-{FP}-{SECRET}"
JOIN = f"CORRAL-J1-{FP}-{'ab' * 16}"
URL = "https://corral.test:7443"


AGENT_IMAGE = "127.0.0.1:5000/corral/agent:0.1.0"
IMAGE_REF = "127.0.0.1:5000/hello:1"
INDEX_DIGEST = "sha256:" + "0123456789abcdef" * 4
PASSWORD = "s3cr3t-Pa55w0rd!"


def iso(seconds_ago: float) -> str:
    when = datetime.now(UTC) - timedelta(seconds=seconds_ago)
    return when.isoformat().replace("+00:00", "Z")


def make_host(name: str, **extra: Any) -> dict[str, Any]:
    host = {
        "id": f"{name}-0123456789abcdef",
        "name": name,
        "state": "ready",
        "platform": "linux/arm64",
        "engine_platform": "linux/arm64",
        "labels": {},
        "facts": {
            "hostname": name,
            "platform": "linux/arm64",
            "emulated_platforms": ["linux/amd64"],
            "cpus": 4,
            "memory_bytes": 2 * 1024**3,
            "gpus": [],
            "os": "Debian GNU/Linux 12",
            "kernel": "6.1.0",
            "docker": {"version": "20.10.24"},
            "platform_mismatch": False,
            "agent_version": "0.1.0",
        },
        "created_at": iso(3600),
        "last_seen": iso(3),
        "instances": 0,
    }
    host.update(extra)
    return host


def make_instance(service: str, slot: int, **extra: Any) -> dict[str, Any]:
    inst = {
        "id": f"{service}{slot}-fedcba9876543210",
        "name": f"{service}.{slot}",
        "service": service,
        "slot": slot,
        "host_id": "host-a-0123456789abcdef",
        "host_name": "host-a",
        "platform": "linux/arm64",
        "state": "running",
        "desired_state": "running",
        "exit_code": None,
        "error": "",
        "since": iso(12),
        "container_id": "c0ffee",
        "restarts": 0,
        "emulated": False,
    }
    inst.update(extra)
    return inst


def make_image(**extra: Any) -> dict[str, Any]:
    def build(platform: str, digit: str, size: int) -> dict[str, Any]:
        return {
            "platform": platform,
            "digest": "sha256:" + digit * 64,
            "size": size,
            "media_type": "application/vnd.oci.image.manifest.v1+json",
            "os_version": None,
        }

    image = {
        "reference": IMAGE_REF,
        "registry": "127.0.0.1:5000",
        "repository": "hello",
        "tag": "1",
        "digest": INDEX_DIGEST,
        "media_type": "application/vnd.oci.image.index.v1+json",
        "platforms": [
            build("linux/amd64", "a", 1_153_433),
            build("linux/arm64", "b", 1_048_576),
            build("linux/arm/v7", "c", 912),
        ],
    }
    image.update(extra)
    return image


class FakeServer:
    """The Corral API, in memory, as an httpx.MockTransport handler."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.ca_fetches: list[str] = []
        self.ca = CA
        self.hosts: dict[str, dict[str, Any]] = {
            "host-a": make_host("host-a", labels={"zone": "edge"}),
            "host-b": make_host(
                "host-b",
                platform="linux/amd64",
                engine_platform="linux/amd64",
                state="down",
                last_seen=iso(7200),
            ),
        }
        self.services: dict[str, dict[str, Any]] = {}
        self.instances: list[dict[str, Any]] = []
        self.join_token = JOIN
        self.advertise: str | None = None
        self.agent_image: str | None = AGENT_IMAGE
        self.images: dict[str, dict[str, Any]] = {IMAGE_REF: make_image()}
        self.registries: dict[str, dict[str, Any]] = {}
        # service name -> successive overrides served by GET /services/{name}
        self.script: dict[str, list[dict[str, Any]]] = {}
        self.log_lines = ["web.1@host-a | hello [world]", "web.2@host-b | second"]
        self.log_interrupt = False
        self.fail_with: httpx.Response | None = None

    # -- the fake network --------------------------------------------------

    def fetch_ca(self, url: str) -> str:
        self.ca_fetches.append(url)
        return self.ca

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.fail_with is not None:
            return self.fail_with
        path = request.url.path
        assert path.startswith("/api/v1/"), path
        path = path[len("/api/v1") :]
        if path == "/ca":
            return httpx.Response(200, text=self.ca)
        if path == "/info":
            return httpx.Response(200, json={"version": "9.9.9", "ca_fingerprint": FP})
        auth = request.headers.get("authorization", "")
        if auth == f"Bearer {JOIN}":
            return err(403, "a join token can only register a host")
        if auth != f"Bearer {ADMIN}":
            return err(401, "invalid or revoked token")
        for pattern, handler in self.routes():
            match = re.fullmatch(pattern, f"{request.method} {path}")
            if match:
                return handler(request, *match.groups())
        return err(404, f"no route {request.method} {path}")

    def routes(self) -> list[tuple[str, Any]]:
        return [
            (r"GET /hosts", lambda r: httpx.Response(200, json=list(self.hosts.values()))),
            (r"GET /hosts/([^/]+)", self.get_host),
            (r"DELETE /hosts/([^/]+)", self.delete_host),
            (r"PUT /hosts/([^/]+)/labels/([^/]+)", self.put_label),
            (r"DELETE /hosts/([^/]+)/labels/([^/]+)", self.delete_label),
            (r"POST /hosts/([^/]+)/(cordon|drain|activate)", self.set_availability),
            (r"POST /services", self.create_service),
            (r"GET /services", lambda r: httpx.Response(200, json=list(self.services.values()))),
            (r"GET /services/([^/]+)", self.get_service),
            (r"PATCH /services/([^/]+)", self.scale_service),
            (r"DELETE /services/([^/]+)", self.delete_service),
            (r"GET /services/([^/]+)/logs", self.logs),
            (r"GET /instances", self.list_instances),
            (r"GET /tokens/join", self.get_join),
            (r"POST /tokens/join/rotate", self.rotate_join),
            (r"GET /images/inspect", self.inspect_image),
            (r"GET /registries", self.list_registries),
            (r"PUT /registries/([^/]+)", self.put_registry),
            (r"DELETE /registries/([^/]+)", self.delete_registry),
        ]

    # -- resources ---------------------------------------------------------

    def _host(self, ref: str) -> dict[str, Any] | None:
        for host in self.hosts.values():
            if ref in (host["id"], host["name"]):
                return host
        return None

    def get_host(self, request: httpx.Request, ref: str) -> httpx.Response:
        host = self._host(ref)
        return httpx.Response(200, json=host) if host else err(404, f"host {ref} not found")

    def delete_host(self, request: httpx.Request, ref: str) -> httpx.Response:
        host = self._host(ref)
        if not host:
            return err(404, f"host {ref} not found")
        del self.hosts[host["name"]]
        return httpx.Response(204)

    def put_label(self, request: httpx.Request, ref: str, key: str) -> httpx.Response:
        host = self._host(ref)
        if not host:
            return err(404, f"host {ref} not found")
        if " " in key:
            return err(422, f"invalid label key {key!r}")
        host["labels"][key] = json.loads(request.content)["value"]
        return httpx.Response(200, json=host)

    def set_availability(self, request: httpx.Request, ref: str, action: str) -> httpx.Response:
        host = self._host(ref)
        if not host:
            return err(404, f"host {ref} not found")
        host["availability"] = {"cordon": "cordoned", "drain": "draining", "activate": "active"}[action]
        return httpx.Response(200, json=host)

    def delete_label(self, request: httpx.Request, ref: str, key: str) -> httpx.Response:
        host = self._host(ref)
        if not host:
            return err(404, f"host {ref} not found")
        host["labels"].pop(key, None)
        return httpx.Response(200, json=host)

    def create_service(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        if body["name"] in self.services:
            return err(409, f"service {body['name']} already exists")
        if body["image"] == "BAD":
            return httpx.Response(
                422,
                json={
                    "detail": [
                        {"loc": ["body", "image"], "msg": "Value error, invalid image reference"},
                        {"loc": ["body", "ports", 0, "target"], "msg": "Input should be <= 65535"},
                    ]
                },
            )
        mode = body.get("mode", "replicated")
        svc = {
            "id": f"svc-{body['name']}-0123456789",
            "allow_emulation": False,
            "replicas": 1,
            **body,
            "mode": mode,
            "image_digest": None,
            "image_platforms": None,
            "created_at": iso(0),
            "updated_at": iso(0),
            "running": 0,
            # a global service's count is worked out later (the script sets it)
            "desired": body.get("replicas", 1) if mode == "replicated" else 0,
            "pending_reason": None,
        }
        self.services[body["name"]] = svc
        return httpx.Response(201, json=svc)

    def get_service(self, request: httpx.Request, name: str) -> httpx.Response:
        svc = self.services.get(name)
        if not svc:
            return err(404, f"service {name} not found")
        if self.script.get(name):
            svc.update(self.script[name].pop(0))
        body = {"instances": [i for i in self.instances if i["service"] == name], **svc}
        return httpx.Response(200, json=body)

    def scale_service(self, request: httpx.Request, name: str) -> httpx.Response:
        svc = self.services.get(name)
        if not svc:
            return err(404, f"service {name} not found")
        replicas = json.loads(request.content)["replicas"]
        svc.update(replicas=replicas, desired=replicas)
        return httpx.Response(200, json=svc)

    def delete_service(self, request: httpx.Request, name: str) -> httpx.Response:
        if self.services.pop(name, None) is None:
            return err(404, f"service {name} not found")
        return httpx.Response(204)

    def list_instances(self, request: httpx.Request) -> httpx.Response:
        service = request.url.params.get("service")
        if service is not None and service not in self.services:
            return err(404, f"service {service} not found")
        found = [i for i in self.instances if service is None or i["service"] == service]
        return httpx.Response(200, json=found)

    def logs(self, request: httpx.Request, name: str) -> httpx.Response:
        if name not in self.services:
            return err(404, f"service {name} not found")
        lines = list(self.log_lines)
        if request.url.params.get("tail"):
            lines = lines[-int(request.url.params["tail"]) :]
        interrupt = self.log_interrupt

        def chunks() -> Iterator[bytes]:
            for line in lines:
                # split a line across chunks: the client must reassemble it
                data = (line + "\n").encode()
                yield data[:5]
                yield data[5:]
            if interrupt:
                raise KeyboardInterrupt

        return httpx.Response(
            200, headers={"content-type": "text/plain"}, stream=ByteStream(chunks())
        )

    def get_join(self, request: httpx.Request) -> httpx.Response:
        body = {"token": self.join_token}
        if self.advertise:
            body["server"] = self.advertise
        if self.agent_image:
            body["agent_image"] = self.agent_image
        return httpx.Response(200, json=body)

    def rotate_join(self, request: httpx.Request) -> httpx.Response:
        self.join_token = f"CORRAL-J1-{FP}-{'cd' * 16}"
        return self.get_join(request)

    def inspect_image(self, request: httpx.Request) -> httpx.Response:
        ref = request.url.params.get("ref", "")
        if ref in self.images:
            return httpx.Response(200, json=self.images[ref])
        if ref.startswith("UPPER"):
            return err(422, f"invalid image reference {ref!r}: repository must be lowercase")
        if ref.startswith("10.9.9.9"):
            return err(
                502, f"image {ref!r}: registry 10.9.9.9:5000 unreachable: connection refused"
            )
        return err(404, f"image {ref!r}: manifest unknown")

    def list_registries(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json=list(self.registries.values()))

    def put_registry(self, request: httpx.Request, registry: str) -> httpx.Response:
        body = json.loads(request.content)
        if body["username"] == "echo":  # an error that quotes the request, password included
            return err(422, [{"loc": ["body"], "input": body}])
        entry = {"registry": registry, "username": body["username"], "created_at": iso(5)}
        self.registries[registry] = {**entry, "password": body["password"]}
        return httpx.Response(200, json=entry)

    def delete_registry(self, request: httpx.Request, registry: str) -> httpx.Response:
        if self.registries.pop(registry, None) is None:
            return err(404, f"no credentials for registry {registry}")
        return httpx.Response(204)

    # -- helpers for assertions -------------------------------------------

    def last(self, method: str, path_part: str = "") -> httpx.Request:
        for request in reversed(self.requests):
            if request.method == method and path_part in request.url.path:
                return request
        raise AssertionError(f"no {method} request to {path_part!r}")


class ByteStream(httpx.SyncByteStream):
    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks

    def __iter__(self) -> Iterator[bytes]:
        yield from self._chunks


def err(status: int, detail: Any) -> httpx.Response:
    return httpx.Response(status, json={"detail": detail})


# -- fixtures ----------------------------------------------------------------


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "cfg" / "config.json"
    monkeypatch.setenv("CORRAL_CONFIG", str(path))
    monkeypatch.delenv("CORRAL_URL", raising=False)
    monkeypatch.delenv("CORRAL_TOKEN", raising=False)
    monkeypatch.setattr(client_module, "_CA_CACHE", {})
    monkeypatch.setattr(app_module, "POLL_INTERVAL", 0.001)
    return path


@pytest.fixture
def fake(config_file: Path, monkeypatch: pytest.MonkeyPatch) -> FakeServer:
    server = FakeServer()
    monkeypatch.setattr(session.hooks, "transport", server.transport())
    monkeypatch.setattr(session.hooks, "fetch_ca", server.fetch_ca)
    return server


@pytest.fixture
def api(fake: FakeServer, config_file: Path) -> FakeServer:
    """A fake server and a CLI logged in to it."""
    config.save(config.Config(URL, ADMIN, CA), config_file)
    return fake


def corral(*args: str, env: dict[str, str] | None = None, input: str | None = None) -> Any:
    return CliRunner().invoke(app, list(args), env=env, input=input)


def ok(*args: str, **kwargs: Any) -> Any:
    result = corral(*args, **kwargs)
    assert result.exit_code == 0, f"exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    return result


def fails(code: int, *args: str, **kwargs: Any) -> Any:
    result = corral(*args, **kwargs)
    assert result.exit_code == code, (
        f"exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    )
    assert not isinstance(result.exception, (AssertionError, TypeError, AttributeError, KeyError))
    return result


def one_line(text: str) -> str:
    """Text without line breaks or the box Typer draws around usage errors."""
    return " ".join(text.translate(str.maketrans("", "", "│╭╮╰╯─")).split())


# -- help and usage -------------------------------------------------------------


def test_help_lists_every_command() -> None:
    result = ok("--help")
    for name in (
        "login",
        "run",
        "ps",
        "logs",
        "host",
        "service",
        "image",
        "registry",
        "token",
        "version",
        "server",
        "agent",
    ):
        assert name in result.stdout
    assert "ls" in ok("host", "--help").stdout
    assert "add" in ok("host", "label", "--help").stdout
    assert "inspect" in ok("image", "--help").stdout
    registry_help = ok("registry", "--help").stdout
    assert all(word in registry_help for word in ("login", "ls", "logout"))


def test_no_arguments_shows_help() -> None:
    result = corral()
    assert result.exit_code in (0, 2)
    assert "Usage" in result.output


def test_unknown_command_is_a_usage_error() -> None:
    assert fails(2, "hots").exit_code == 2


# -- login -----------------------------------------------------------------------


def test_login_pins_the_ca_checks_the_token_and_saves_0600(
    fake: FakeServer, config_file: Path
) -> None:
    result = ok("login", URL + "/", "--token", ADMIN)
    assert fake.ca_fetches == [URL]
    assert fake.last("GET", "/hosts").headers["authorization"] == f"Bearer {ADMIN}"
    saved = json.loads(config_file.read_text())
    assert saved == {"url": URL, "token": ADMIN, "ca_pem": CA}
    assert stat.S_IMODE(config_file.stat().st_mode) == 0o600
    assert FP in result.stdout  # the pinned fingerprint is shown
    assert "2 hosts" in result.stdout
    assert SECRET not in result.output  # the token is masked
    assert "CORRAL-A1-" in result.stdout and "••••" in result.stdout


def test_login_over_plain_http_skips_tls(fake: FakeServer, config_file: Path) -> None:
    result = ok("login", "http://127.0.0.1:7080", "--token", ADMIN)
    assert fake.ca_fetches == []
    assert json.loads(config_file.read_text())["ca_pem"] is None
    assert "no TLS" in result.stderr
    ok("host", "ls")  # and later commands work without a CA
    assert fake.ca_fetches == []


def test_login_prompts_for_the_token_without_echo(fake: FakeServer, config_file: Path) -> None:
    result = ok("login", URL, input=ADMIN + "\n")
    assert SECRET not in result.output
    assert json.loads(config_file.read_text())["token"] == ADMIN


@pytest.mark.parametrize(
    ("token", "message"),
    [
        (JOIN, "join token"),
        (f"CORRAL-H1-host123-{SECRET}", "host credential"),
        ("not-a-token-at-all", "malformed token"),
    ],
)
def test_login_needs_an_admin_token(
    fake: FakeServer, config_file: Path, token: str, message: str
) -> None:
    result = fails(2, "login", URL, "--token", token)
    assert message in one_line(result.stderr)
    assert SECRET not in result.output and "ab" * 16 not in result.output
    assert not config_file.exists()
    assert fake.requests == []


def test_login_refuses_a_server_whose_ca_does_not_match(
    fake: FakeServer, config_file: Path
) -> None:
    fake.ca = OTHER_CA
    result = fails(1, "login", URL, "--token", ADMIN)
    assert "error:" in result.stderr
    assert "does not match the fingerprint" in one_line(result.stderr)
    assert fake.requests == []  # the token never went to that server
    assert not config_file.exists()


def test_login_with_a_rejected_token_saves_nothing(fake: FakeServer, config_file: Path) -> None:
    bad = f"CORRAL-A1-{FP}-{'0' * 32}"
    result = fails(1, "login", URL, "--token", bad)
    assert "unauthorized: invalid or revoked token" in one_line(result.stderr)
    assert not config_file.exists()


def test_login_rejects_a_url_without_scheme(fake: FakeServer) -> None:
    assert "invalid server URL" in fails(2, "login", "corral.test:7443", "--token", ADMIN).stderr


def test_login_fetch_failure_is_reported(fake: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(url: str) -> str:
        raise ConnectionRefusedError(111, "Connection refused")

    monkeypatch.setattr(session.hooks, "fetch_ca", refuse)
    result = fails(1, "login", URL, "--token", ADMIN)
    assert f"cannot fetch the cluster CA from {URL}: Connection refused" in one_line(result.stderr)


def test_login_warns_when_the_environment_overrides_it(
    fake: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORRAL_URL", "https://elsewhere:7443")
    assert "CORRAL_URL set in the environment override" in one_line(
        ok("login", URL, "--token", ADMIN).stderr
    )


# -- config precedence -------------------------------------------------------


def test_not_logged_in(fake: FakeServer) -> None:
    result = fails(1, "host", "ls")
    assert result.stderr.strip() == f"error: {config.NOT_LOGGED_IN}"
    assert result.stdout == ""


def test_saved_login_reuses_the_stored_ca_without_fetching(api: FakeServer) -> None:
    ok("host", "ls")
    assert api.ca_fetches == []
    assert api.last("GET", "/hosts").url.host == "corral.test"


def test_env_url_and_token_override_the_file_and_pin_again(api: FakeServer) -> None:
    env = {"CORRAL_URL": "https://other.test:9443", "CORRAL_TOKEN": ADMIN}
    ok("host", "ls", env=env)
    request = api.last("GET", "/hosts")
    assert (request.url.host, request.url.port) == ("other.test", 9443)
    assert api.ca_fetches == ["https://other.test:9443"]  # another server: its CA is pinned anew


def test_env_alone_is_enough(fake: FakeServer, config_file: Path) -> None:
    ok("service", "ls", env={"CORRAL_URL": URL, "CORRAL_TOKEN": ADMIN})
    assert fake.ca_fetches == [URL]
    assert not config_file.exists()


def test_env_token_overrides_only_the_token(api: FakeServer) -> None:
    other = f"CORRAL-A1-{FP}-{'f' * 32}"
    fails(1, "host", "ls", env={"CORRAL_TOKEN": other})  # the fake knows only ADMIN
    request = api.last("GET", "/hosts")
    assert request.url.host == "corral.test"
    assert request.headers["authorization"] == f"Bearer {other}"
    assert api.ca_fetches == []  # same pin as the stored CA: no fetch


def test_env_token_pinning_another_ca_refuses_the_server(api: FakeServer) -> None:
    foreign = f"CORRAL-A1-{tokens.fingerprint(OTHER_CA)}-{SECRET}"
    result = fails(1, "host", "ls", env={"CORRAL_TOKEN": foreign})
    assert "does not match the fingerprint" in one_line(result.stderr)
    assert api.ca_fetches == [URL]
    assert [r for r in api.requests if "/hosts" in r.url.path] == []


def test_ca_is_fetched_once_per_process(fake: FakeServer) -> None:
    assert client_module.pin_ca(URL, ADMIN, fetch=fake.fetch_ca) == CA
    assert client_module.pin_ca(URL, ADMIN, fetch=fake.fetch_ca) == CA
    assert fake.ca_fetches == [URL]


def test_a_stored_ca_that_does_not_match_the_token_is_not_trusted(
    fake: FakeServer, config_file: Path
) -> None:
    config.save(config.Config(URL, ADMIN, OTHER_CA), config_file)
    ok("host", "ls")
    assert fake.ca_fetches == [URL]


def test_a_damaged_config_file_is_reported(fake: FakeServer, config_file: Path) -> None:
    config_file.parent.mkdir(parents=True)
    config_file.write_text("{not json")
    assert "is damaged" in fails(1, "host", "ls").stderr


def test_config_path_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert config.config_path({"CORRAL_CONFIG": "/x/y.json"}) == Path("/x/y.json")
    assert config.config_path({"XDG_CONFIG_HOME": "/xdg"}) == Path("/xdg/corral/config.json")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert config.config_path({}) == tmp_path / ".config" / "corral" / "config.json"


# -- hosts ---------------------------------------------------------------------------


def test_host_ls_table(api: FakeServer) -> None:
    api.hosts["host-b"]["facts"]["platform_mismatch"] = True
    api.hosts["host-b"]["engine_platform"] = "linux/arm64"
    out = ok("host", "ls").stdout
    lines = out.splitlines()
    assert lines[0].split() == [
        "ID",
        "NAME",
        "PLATFORM",
        "STATE",
        "AVAILABILITY",
        "ENGINE",
        "CPUS",
        "MEMORY",
        "LABELS",
        "LAST",
        "SEEN",
    ]
    a = next(line for line in lines if "host-a" in line)
    assert "host-a-01234" in a and "host-a-0123456789abcdef" not in a  # short id
    assert "linux/arm64" in a and "ready" in a and "20.10.24" in a and "2.0 GiB" in a
    assert "zone=edge" in a and re.search(r"\b[34]s ago\b", a)
    b = next(line for line in lines if "host-b" in line)
    assert "down" in b and "2h ago" in b and "(engine linux/arm64)" in b


@pytest.mark.parametrize(("action", "availability"), [
    ("cordon", "cordoned"), ("drain", "draining"), ("activate", "active")])
def test_host_availability(api: FakeServer, action: str, availability: str) -> None:
    out = ok("host", action, "host-a").stdout
    assert f"host-a: {availability}" in out
    assert api.hosts["host-a"]["availability"] == availability
    assert availability in ok("host", "ls").stdout
    bad = fails(1, "host", action, "nope")
    assert "nope" in bad.output


def test_host_ls_json_is_the_api_objects(api: FakeServer) -> None:
    result = ok("host", "ls", "-o", "json")
    assert json.loads(result.stdout) == list(api.hosts.values())
    assert result.stderr == ""


def test_host_ls_colours_states_on_a_terminal(
    api: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.delenv("NO_COLOR", raising=False)
    out = ok("host", "ls").stdout
    assert "\x1b[32mready" in out and "\x1b[31mdown" in out


def test_host_inspect_panel_and_json(api: FakeServer) -> None:
    out = ok("host", "inspect", "host-a").stdout
    for text in (
        "host host-a",
        "host-a-0123456789abcdef",
        "linux/arm64",
        "linux/amd64",
        "20.10.24",
        "zone=edge",
    ):
        assert text in out
    assert (
        json.loads(ok("host", "inspect", "host-a", "--output", "json").stdout)
        == api.hosts["host-a"]
    )


def test_host_inspect_unknown_host(api: FakeServer) -> None:
    result = fails(1, "host", "inspect", "nope")
    assert result.stderr.strip() == "error: host nope not found"
    assert result.stdout == ""


def test_host_label_add_and_rm(api: FakeServer) -> None:
    out = ok("host", "label", "add", "host-a", "gpu=yes", "rack=").stdout
    assert out.strip() == "host-a: gpu=yes,rack=,zone=edge"
    assert json.loads(api.last("PUT", "/labels/gpu").content) == {"value": "yes"}
    out = ok("host", "label", "rm", "host-a", "zone", "rack", "-o", "json").stdout
    assert json.loads(out)["labels"] == {"gpu": "yes"}


def test_host_label_add_validates_pairs(api: FakeServer) -> None:
    result = fails(2, "host", "label", "add", "host-a", "novalue")
    assert "expected KEY=VALUE" in result.stderr
    assert not any(r.method == "PUT" for r in api.requests)


def test_host_label_server_validation_error(api: FakeServer) -> None:
    result = fails(1, "host", "label", "add", "host-a", "bad key=1")
    assert "invalid request: invalid label key 'bad key'" in result.stderr


def test_host_rm(api: FakeServer) -> None:
    assert ok("host", "rm", "host-b").stdout.strip() == "host-b"
    assert "host-b" not in api.hosts
    result = fails(1, "host", "rm", "host-a", "ghost")
    assert "host-a" in result.stdout and "error: ghost: host ghost not found" in result.stderr
    assert api.hosts == {}


# -- run -------------------------------------------------------------------------------


def test_run_detached_sends_the_full_spec(api: FakeServer) -> None:
    result = ok(
        "run", "-d", "-n", "web", "-r", "3", "-e", "A=1", "--env", "B=x=y", "-p", "8080:80",
        "--publish", "5353:53/udp", "-c", "node.labels.zone==edge", "--restart", "on-failure",
        "--restart-max-attempts", "5", "nginx:1.25", "--", "nginx", "-g", "daemon off;",
    )  # fmt: skip
    assert result.stdout.strip() == "web"
    assert json.loads(api.last("POST", "/services").content) == {
        "name": "web",
        "image": "nginx:1.25",
        "mode": "replicated",
        "replicas": 3,
        "allow_emulation": False,
        "env": {"A": "1", "B": "x=y"},
        "command": ["nginx", "-g", "daemon off;"],
        "ports": [
            {"published": 8080, "target": 80, "protocol": "tcp", "mode": "ingress"},
            {"published": 5353, "target": 53, "protocol": "udp", "mode": "host"},
        ],
        "constraints": ["node.labels.zone==edge"],
        "restart": {"condition": "on-failure", "max_attempts": 5, "delay": 1.0},
    }


def test_run_sends_scheduling_options(api: FakeServer) -> None:
    ok("run", "-d", "-n", "train", "--reserve-cpu", "500m", "--reserve-memory", "1Gi",
       "--generic-resource", "nvidia.com/gpu=1", "--max-replicas-per-node", "1", "--affinity", "service!=db",
       "--affinity", "soft:node.labels.zone==edge", "--placement-pref", "spread=node.labels.zone",
       "--strategy", "binpack", "busybox")  # fmt: skip
    body = json.loads(api.last("POST", "/services").content)
    assert body["reservations"] == {"cpu": "500m", "memory": "1Gi", "generic": ["nvidia.com/gpu=1"]}
    assert body["max_replicas_per_node"] == 1 and body["strategy"] == "binpack"
    assert body["affinities"] == ["service!=db", "soft:node.labels.zone==edge"]
    assert body["preferences"] == ["spread=node.labels.zone"]
    fails(2, "run", "-d", "--strategy", "random", "busybox")
    fails(2, "run", "-d", "--max-replicas-per-node", "0", "busybox")


def test_run_defaults_and_derived_name(api: FakeServer) -> None:
    ok("run", "-d", "registry.test:5000/team/My_App:1.2@sha256:" + "0" * 64)
    body = json.loads(api.last("POST", "/services").content)
    assert body["name"] == "my-app"
    assert (
        body["replicas"] == 1
        and body["env"] == {}
        and body["ports"] == []
        and body["command"] is None
    )
    assert body["restart"] == {"condition": "any", "max_attempts": 0, "delay": 1.0}
    assert (body["mode"], body["allow_emulation"]) == ("replicated", False)


def test_run_command_after_the_image_needs_no_dashes(api: FakeServer) -> None:
    ok("run", "-d", "busybox", "sh", "-c", "echo hi")
    assert json.loads(api.last("POST", "/services").content)["command"] == ["sh", "-c", "echo hi"]


def test_run_refuses_options_after_the_image(api: FakeServer) -> None:
    result = fails(2, "run", "busybox", "--replicas", "3")
    assert "options go before the image" in one_line(result.stderr)
    assert api.requests == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-e", "NOEQUALS"], "expected KEY=VALUE"),
        (["-e", "=v"], "expected KEY=VALUE"),
        (["-p", "80"], "expected PUBLISHED:TARGET"),
        (["-p", "0:80"], "0 is not in 1-65535"),
        (
            ["-p", "8080:70000"],
            "Invalid value for --publish: '8080:70000': port 70000 is not in 1-65535",
        ),
        (["-p", "8080:80/sctp"], "the protocol must be tcp or udp"),
        (["-r", "-1"], "must be 0 or more"),
        (["--restart", "always"], "always"),
        (["--restart-max-attempts", "-2"], "0 or more"),
    ],
)
def test_run_validates_locally(api: FakeServer, args: list[str], message: str) -> None:
    result = fails(2, "run", *args, "busybox")
    assert message in one_line(result.stderr)
    assert api.requests == []


def test_run_name_conflict(api: FakeServer) -> None:
    ok("run", "-d", "busybox")
    result = fails(1, "run", "-d", "busybox")
    assert result.stderr.strip() == "error: service busybox already exists"


def test_run_shows_validation_errors_readably(api: FakeServer) -> None:
    result = fails(1, "run", "-d", "-n", "x", "BAD")
    assert "invalid request:" in result.stderr
    assert "  - image: Value error, invalid image reference" in result.stderr
    assert "  - ports.0.target: Input should be <= 65535" in result.stderr


def test_run_waits_until_converged(api: FakeServer) -> None:
    api.script["web"] = [
        {"running": 0},
        {"running": 1},
        {"running": 3},
    ]
    result = ok("run", "-n", "web", "-r", "3", "nginx")
    assert result.stdout.strip() == "✔ web: 3/3 running"
    gets = [r for r in api.requests if r.method == "GET" and r.url.path == "/api/v1/services/web"]
    assert len(gets) == 3


def test_run_with_zero_replicas_is_converged_at_once(api: FakeServer) -> None:
    assert "0/0 running" in ok("run", "-r", "0", "nginx").stdout


def test_run_stops_waiting_when_the_service_is_pending(api: FakeServer) -> None:
    api.script["web"] = [
        {"running": 0},
        {"pending_reason": "no ready host matches node.labels.zone==moon"},
    ]
    result = ok("run", "-n", "web", "-c", "node.labels.zone==moon", "nginx")
    assert "web: 0/1 running; pending: no ready host matches node.labels.zone==moon" in one_line(
        result.stdout
    )


def test_run_pending_is_yellow(api: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.delenv("NO_COLOR", raising=False)
    api.script["web"] = [{"pending_reason": "no host"}]
    assert "\x1b[33m" in ok("run", "-n", "web", "nginx").stdout


def test_run_fails_when_an_instance_fails_to_pull(api: FakeServer) -> None:
    ok("run", "-d", "-n", "web", "-r", "2", "nginx")
    del api.services["web"]
    api.instances = [
        make_instance("web", 1, state="pulling"),
        make_instance("web", 2, state="pull_failed", host_name="host-b", error="manifest unknown"),
    ]
    result = fails(1, "run", "-n", "web", "-r", "2", "nginx")
    assert result.stderr.strip() == "error: web.2 on host-b: pull failed: manifest unknown"


def test_run_times_out(api: FakeServer) -> None:
    result = fails(1, "run", "-n", "web", "--timeout", "0.05", "nginx")
    assert "timed out: web: 0/1 running after 0.05s" in one_line(result.stderr)
    assert "corral ps web" in result.stderr


def test_run_json_prints_only_the_service(api: FakeServer) -> None:
    api.script["web"] = [{"running": 1}]
    result = ok("run", "-n", "web", "-o", "json", "nginx")
    body = json.loads(result.stdout)
    assert body["name"] == "web" and body["running"] == 1 and body["instances"] == []
    detached = ok("run", "-d", "-n", "api", "-o", "json", "nginx")
    assert json.loads(detached.stdout)["name"] == "api"


def test_run_json_pending_reason_goes_to_stderr(api: FakeServer) -> None:
    api.script["web"] = [{"pending_reason": "no host"}]
    result = ok("run", "-n", "web", "-o", "json", "nginx")
    assert json.loads(result.stdout)["pending_reason"] == "no host"
    assert "pending: no host" in result.stderr


def test_run_global_sends_the_mode_and_no_replicas(api: FakeServer) -> None:
    ok("run", "-d", "--mode", "global", "--allow-emulation", "-n", "exporter", "busybox")
    body = json.loads(api.last("POST", "/services").content)
    assert body["mode"] == "global" and body["allow_emulation"] is True
    assert "replicas" not in body  # the server counts the hosts that can run it


def test_run_allow_emulation_with_replicas(api: FakeServer) -> None:
    ok("run", "-d", "--allow-emulation", "-r", "2", "busybox")
    body = json.loads(api.last("POST", "/services").content)
    assert (body["mode"], body["replicas"], body["allow_emulation"]) == ("replicated", 2, True)


@pytest.mark.parametrize("replicas", ["3", "1", "0"])
def test_run_global_with_replicas_is_a_usage_error(api: FakeServer, replicas: str) -> None:
    result = fails(2, "run", "--mode", "global", "-r", replicas, "busybox")
    message = one_line(result.stderr)
    assert "--replicas" in message
    assert "a global service runs one instance on every host that can run it" in message
    assert "drop --replicas or use --mode replicated" in message
    assert api.requests == []


def test_run_rejects_an_unknown_mode(api: FakeServer) -> None:
    result = fails(2, "run", "--mode", "everywhere", "busybox")
    assert "everywhere" in one_line(result.stderr)
    assert api.requests == []


def test_run_global_waits_until_the_hosts_are_counted(api: FakeServer) -> None:
    # desired 0 right after creation means "not counted yet", not "converged"
    api.script["exporter"] = [
        {"desired": 0, "running": 0},
        {"desired": 3, "running": 1},
        {"desired": 3, "running": 3},
    ]
    result = ok("run", "--mode", "global", "-n", "exporter", "busybox")
    assert result.stdout.strip() == "✔ exporter: 3/3 running"
    gets = [r for r in api.requests if r.method == "GET" and r.url.path.endswith("/exporter")]
    assert len(gets) == 3


def test_run_global_stops_at_a_pending_reason(api: FakeServer) -> None:
    reason = (
        "0 of 3 hosts can run it: image offers linux/amd64, linux/arm64; 1 host is "
        "linux/arm/v7 (no build), 2 hosts do not match constraint node.labels.zone==edge"
    )
    api.script["exporter"] = [{"desired": 0}, {"desired": 0, "pending_reason": reason}]
    result = ok("run", "--mode", "global", "-n", "exporter", "busybox")
    assert f"exporter: 0/0 running; pending: {reason}" in one_line(result.stdout)


def test_run_global_times_out_while_no_host_is_counted(api: FakeServer) -> None:
    result = fails(1, "run", "--mode", "global", "-n", "exporter", "--timeout", "0.05", "busybox")
    assert "timed out: exporter: 0/0 running" in one_line(result.stderr)


# -- services ----------------------------------------------------------------------


def add_service(api: FakeServer, name: str, **extra: Any) -> dict[str, Any]:
    svc = {
        "id": f"svc-{name}",
        "name": name,
        "image": "nginx:1.25",
        "replicas": 3,
        "mode": "replicated",
        "env": {"A": "1"},
        "command": ["nginx", "-g", "daemon off;"],
        "ports": [{"published": 8080, "target": 80, "protocol": "tcp"}],
        "constraints": ["node.labels.zone==edge"],
        "restart": {"condition": "any", "max_attempts": 0, "delay": 1.0},
        "created_at": iso(60),
        "updated_at": iso(30),
        "running": 3,
        "desired": 3,
        "pending_reason": None,
    }
    svc.update(extra)
    api.services[name] = svc
    return svc


def test_service_ls(api: FakeServer) -> None:
    add_service(api, "web")
    add_service(
        api, "edge", running=0, desired=2, replicas=2, pending_reason="no arm/v6 host", ports=[]
    )
    add_service(api, "db", running=1, desired=2, replicas=2)
    add_service(api, "agentd", mode="global", running=4, desired=4, replicas=1, ports=[])
    lines = ok("service", "ls").stdout.splitlines()
    assert lines[0].split() == ["NAME", "IMAGE", "MODE", "REPLICAS", "PORTS", "STATUS"]
    assert lines[1].split() == [
        "web", "nginx:1.25", "replicated", "3/3", "8080->80/tcp", "converged"
    ]  # fmt: skip
    assert lines[2].split() == [
        "edge",
        "nginx:1.25",
        "replicated",
        "0/2",
        "-",
        "pending:",
        "no",
        "arm/v6",
        "host",
    ]
    assert lines[3].split()[-1] == "converging"
    assert lines[4].split() == ["agentd", "nginx:1.25", "global", "4/4", "-", "converged"]


LONG_REASON = (
    "0 of 3 hosts can run it: image offers linux/amd64, linux/arm64; 1 host is linux/arm/v7 "
    "(no build), 2 hosts do not match constraint node.labels.zone==edge"
)


def test_service_ls_cuts_a_long_pending_reason_unless_no_trunc(api: FakeServer) -> None:
    add_service(api, "edge", mode="global", running=0, desired=0, pending_reason=LONG_REASON)
    line = ok("service", "ls").stdout.splitlines()[1]
    assert "pending: 0 of 3 hosts can run it" in line and line.endswith("…")
    assert LONG_REASON not in line
    assert LONG_REASON in one_line(ok("service", "ls", "--no-trunc").stdout)


def test_service_ls_keeps_its_columns_on_a_narrow_terminal(
    api: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    add_service(api, "edge", mode="global", running=0, desired=0, pending_reason=LONG_REASON)
    out = ok("service", "ls", "--no-trunc").stdout
    assert max(len(line) for line in out.splitlines()) <= 80
    first = out.splitlines()[1].split()
    assert first[:5] == ["edge", "nginx:1.25", "global", "0/0", "8080->80/tcp"]
    assert LONG_REASON.replace(" ", "") in out.replace(" ", "").replace("\n", "")


def test_service_ls_json(api: FakeServer) -> None:
    add_service(api, "web")
    assert json.loads(ok("service", "ls", "-o", "json").stdout) == [api.services["web"]]


def test_service_inspect(api: FakeServer) -> None:
    add_service(api, "web")
    api.instances = [make_instance("web", 1), make_instance("web", 2, state="starting")]
    out = ok("service", "inspect", "web").stdout
    for text in ("service web", "3/3 running", "converged", "nginx -g 'daemon off;'", "8080->80/tcp",
                 "node.labels.zone==edge", "web.1", "web.2", "starting"):  # fmt: skip
        assert text in out, text
    body = json.loads(ok("service", "inspect", "web", "-o", "json").stdout)
    assert [i["name"] for i in body["instances"]] == ["web.1", "web.2"]
    assert fails(1, "service", "inspect", "nope").stderr.strip() == "error: service nope not found"


def test_service_inspect_shows_mode_emulation_digest_and_platforms(api: FakeServer) -> None:
    add_service(
        api, "agentd", mode="global", allow_emulation=True, image_digest=INDEX_DIGEST,
        image_platforms=["linux/amd64", "linux/arm64", "linux/arm/v7"],
    )  # fmt: skip
    out = ok("service", "inspect", "agentd").stdout
    assert re.search(r"Mode\s+global", out)
    assert re.search(r"Emulation\s+allowed", out)
    assert INDEX_DIGEST in out  # the pin is shown whole
    assert "linux/amd64, linux/arm64, linux/arm/v7" in out
    assert "one on every host that can run it" in out
    add_service(api, "web", image_digest=None, image_platforms=None, allow_emulation=False)
    out = ok("service", "inspect", "web").stdout
    assert re.search(r"Digest\s+unresolved", out)
    assert re.search(r"Emulation\s+not allowed", out)
    assert re.search(r"Mode\s+replicated", out)


def test_service_inspect_wraps_the_whole_pending_reason(
    api: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    reason = (
        "image '127.0.0.1:5000/x:1': repository 127.0.0.1:5000/x not found (retrying); "
        + LONG_REASON
    )
    add_service(api, "web", running=0, pending_reason=reason)
    out = ok("service", "inspect", "web").stdout
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "…" not in out
    assert f"pending: {reason}" in one_line(out)  # every word, in order


def test_service_inspect_pending_is_yellow(
    api: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.delenv("NO_COLOR", raising=False)
    add_service(api, "web", running=0, pending_reason="no host")
    assert "\x1b[33mpending: no host" in ok("service", "inspect", "web").stdout


@pytest.mark.parametrize(
    "args", [["web=5", "api=0"], ["web", "5", "api", "0"], ["web=5", "api", "0"]]
)
def test_service_scale(api: FakeServer, args: list[str]) -> None:
    add_service(api, "web")
    add_service(api, "api")
    out = ok("service", "scale", *args).stdout
    assert out.splitlines() == ["web scaled to 5", "api scaled to 0"]
    assert (api.services["web"]["replicas"], api.services["api"]["replicas"]) == (5, 0)
    assert json.loads(api.last("PATCH", "/web").content) == {"replicas": 5}


def test_service_scale_json(api: FakeServer) -> None:
    add_service(api, "web")
    assert json.loads(ok("service", "scale", "web=1", "-o", "json").stdout)[0]["replicas"] == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["web"], "web: missing the replica count"),
        (["web=x"], "expected a whole number"),
        (["web=-1"], "must be 0 or more"),
        (["=3"], "expected NAME=REPLICAS"),
    ],
)
def test_service_scale_validates(api: FakeServer, args: list[str], message: str) -> None:
    assert message in one_line(fails(2, "service", "scale", *args).stderr)
    assert api.requests == []


def test_service_rm(api: FakeServer) -> None:
    add_service(api, "web")
    add_service(api, "api")
    result = fails(1, "service", "rm", "web", "ghost", "api")
    assert result.stdout.splitlines() == ["web", "api"]
    assert result.stderr.strip() == "error: ghost: service ghost not found"
    assert api.services == {}


# -- ps -------------------------------------------------------------------------------

LONG_ERROR = "failed to create container: " + "x" * 100


def test_ps_table(api: FakeServer) -> None:
    add_service(api, "web")
    api.instances = [
        make_instance("web", 1, emulated=True, platform="linux/amd64"),
        make_instance("web", 2, state="exited", exit_code=1, since=iso(120)),
        make_instance("web", 3, state="failed", error=LONG_ERROR),
    ]
    lines = ok("ps").stdout.splitlines()
    assert lines[0].split() == ["INSTANCE", "ID", "HOST", "PLATFORM", "STATE", "SINCE", "ERROR"]
    assert lines[1].split()[:6] == [
        "web.1",
        "web1-fedcba9",
        "host-a",
        "linux/amd64",
        "EMULATED",
        "running",
    ]
    assert re.search(r"1[23]s ago", lines[1])
    assert "exited (1)" in lines[2] and "2m ago" in lines[2]
    assert "failed to create container: xxx" in lines[3] and "…" in lines[3]
    assert LONG_ERROR not in lines[3]
    assert api.last("GET", "/instances").url.params.get("service") is None


def test_ps_marks_emulated_instances_in_yellow(
    api: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")
    monkeypatch.delenv("NO_COLOR", raising=False)
    api.instances = [
        make_instance(
            "web",
            1,
            emulated=True,
            platform="linux/arm/v7",
            host_platform="linux/amd64",
            image=f"127.0.0.1:5000/hello@{INDEX_DIGEST}",
        ),
        make_instance("web", 2, host_platform="linux/arm64"),
    ]
    lines = ok("ps").stdout.splitlines()
    assert re.search(r"linux/arm/v7.*\x1b\[1;33m EMULATED", lines[1])
    assert "EMULATED" not in lines[2] and "linux/arm64" in lines[2]


def test_ps_no_trunc_and_filter(api: FakeServer) -> None:
    add_service(api, "web")
    api.instances = [make_instance("web", 1, state="failed", error=LONG_ERROR)]
    out = ok("ps", "web", "--no-trunc").stdout
    assert LONG_ERROR in out and "web1-fedcba9876543210" in out
    assert api.last("GET", "/instances").url.params["service"] == "web"


def test_ps_json(api: FakeServer) -> None:
    add_service(api, "web")
    api.instances = [make_instance("web", 1)]
    assert json.loads(ok("ps", "-o", "json").stdout) == api.instances


def test_ps_unknown_service(api: FakeServer) -> None:
    assert fails(1, "ps", "nope").stderr.strip() == "error: service nope not found"


# -- logs -------------------------------------------------------------------------------


def test_logs_print_lines_verbatim(api: FakeServer) -> None:
    add_service(api, "web")
    result = ok("logs", "web")
    assert result.stdout == "web.1@host-a | hello [world]\nweb.2@host-b | second\n"
    params = api.last("GET", "/logs").url.params
    assert params["follow"] == "false" and "tail" not in params


def test_logs_follow_and_tail(api: FakeServer) -> None:
    add_service(api, "web")
    result = ok("logs", "web", "-f", "--tail", "1")
    assert result.stdout == "web.2@host-b | second\n"
    params = api.last("GET", "/logs").url.params
    assert (params["follow"], params["tail"]) == ("true", "1")


def test_logs_ctrl_c_ends_cleanly(api: FakeServer) -> None:
    add_service(api, "web")
    api.log_interrupt = True
    result = ok("logs", "web", "--follow")
    assert result.stdout.count("\n") == 2
    assert "Traceback" not in result.output and "Aborted" not in result.output


def test_logs_unknown_service(api: FakeServer) -> None:
    assert fails(1, "logs", "nope").stderr.strip() == "error: service nope not found"


def test_logs_negative_tail_is_a_usage_error(api: FakeServer) -> None:
    fails(2, "logs", "web", "--tail", "-1")


# -- images ------------------------------------------------------------------------------


def test_image_inspect_table(api: FakeServer) -> None:
    lines = ok("image", "inspect", IMAGE_REF).stdout.splitlines()
    assert lines[0].split() == [IMAGE_REF, "sha256:0123456789ab"]
    assert lines[1].split() == ["PLATFORM", "DIGEST", "SIZE"]  # no OS VERSION: none has one
    assert lines[2].split() == ["linux/amd64", "sha256:aaaaaaaaaaaa", "1.1", "MiB"]
    assert lines[3].split() == ["linux/arm64", "sha256:bbbbbbbbbbbb", "1.0", "MiB"]
    assert lines[4].split() == ["linux/arm/v7", "sha256:cccccccccccc", "912", "B"]
    assert len(lines) == 5
    assert api.last("GET", "/images/inspect").url.params["ref"] == IMAGE_REF


def test_image_inspect_no_trunc_and_os_version(api: FakeServer) -> None:
    windows = {
        "platform": "windows/amd64", "digest": "sha256:" + "d" * 64, "size": 2048,
        "media_type": "application/vnd.oci.image.manifest.v1+json", "os_version": "10.0.17763.5329",
    }  # fmt: skip
    api.images[IMAGE_REF]["platforms"].append(windows)
    lines = ok("image", "inspect", "--no-trunc", IMAGE_REF).stdout.splitlines()
    assert lines[0].split() == [IMAGE_REF, INDEX_DIGEST]
    assert lines[1].split() == ["PLATFORM", "DIGEST", "SIZE", "OS", "VERSION"]
    assert lines[2].split() == ["linux/amd64", "sha256:" + "a" * 64, "1.1", "MiB", "-"]
    assert lines[5].split() == [
        "windows/amd64",
        "sha256:" + "d" * 64,
        "2.0",
        "KiB",
        "10.0.17763.5329",
    ]


def test_image_inspect_no_trunc_on_a_narrow_terminal_keeps_the_platforms(
    api: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "60")
    out = ok("image", "inspect", "--no-trunc", IMAGE_REF).stdout
    for platform in ("linux/amd64", "linux/arm64", "linux/arm/v7"):
        assert platform in out
    # the full digests fold over two lines rather than squeezing the other columns
    assert max(len(line) for line in out.splitlines()) <= 60
    for digit in "abc":
        assert sum(len(run) for run in re.findall(f"{digit}{{8,}}", out)) == 64


def test_image_inspect_json_is_the_api_object(api: FakeServer) -> None:
    result = ok("image", "inspect", IMAGE_REF, "-o", "json")
    assert json.loads(result.stdout) == api.images[IMAGE_REF]
    assert result.stderr == ""


@pytest.mark.parametrize(
    ("ref", "detail"),
    [
        ("127.0.0.1:5000/nope:1", "image '127.0.0.1:5000/nope:1': manifest unknown"),
        ("UPPER/x", "invalid image reference 'UPPER/x': repository must be lowercase"),
        (
            "10.9.9.9:5000/x:1",
            "image '10.9.9.9:5000/x:1': registry 10.9.9.9:5000 unreachable: connection refused",
        ),
    ],
    ids=["404", "422", "502"],
)
def test_image_inspect_errors_show_the_detail(api: FakeServer, ref: str, detail: str) -> None:
    result = fails(1, "image", "inspect", ref)
    assert result.stderr.strip() == f"error: {detail}"
    assert result.stdout == ""
    result = fails(1, "image", "inspect", ref, "-o", "json")
    assert result.stderr.strip() == f"error: {detail}" and result.stdout == ""


def test_image_inspect_other_errors_keep_their_explanation(api: FakeServer) -> None:
    result = fails(1, "image", "inspect", IMAGE_REF, env={"CORRAL_TOKEN": JOIN})
    assert "forbidden: a join token can only register a host" in result.stderr


def test_image_inspect_needs_a_reference(api: FakeServer) -> None:
    fails(2, "image", "inspect")
    assert "image reference is required" in one_line(fails(2, "image", "inspect", " ").stderr)
    assert api.requests == []


# -- registry credentials --------------------------------------------------------------


def password_leaks(api: FakeServer, result: Any) -> list[str]:
    """Where the password shows up, other than the body of the PUT that stores it."""
    found = []
    if PASSWORD in result.output:
        found.append("output")
    for request in api.requests:
        where = f"{request.method} {request.url}"
        if PASSWORD in str(request.url) or PASSWORD in str(request.headers):
            found.append(where)
        body = request.content.decode(errors="replace")
        if PASSWORD in body and not (
            request.method == "PUT" and request.url.path.startswith("/api/v1/registries/")
        ):
            found.append(f"{where} body")
    return found


def test_registry_login_with_password_stdin(api: FakeServer) -> None:
    result = ok(
        "registry", "login", "127.0.0.1:5001", "-u", "bob", "--password-stdin",
        input=PASSWORD + "\n",
    )  # fmt: skip
    assert result.stdout.strip() == "✔ credentials for 127.0.0.1:5001 stored (user bob)"
    put = api.last("PUT", "/registries/")
    assert put.url.raw_path == b"/api/v1/registries/127.0.0.1%3A5001"  # URL-encoded
    assert json.loads(put.content) == {"username": "bob", "password": PASSWORD}  # no newline
    assert put.headers["authorization"] == f"Bearer {ADMIN}"
    assert password_leaks(api, result) == []


def test_registry_login_password_stdin_keeps_inner_whitespace(api: FakeServer) -> None:
    ok("registry", "login", "docker.io", "--username", "bob", "--password-stdin",
       input=" pass word \r\n")  # fmt: skip
    assert json.loads(api.last("PUT", "/registries/").content)["password"] == " pass word "


def test_registry_login_prompts_without_echo(api: FakeServer) -> None:
    result = ok("registry", "login", "127.0.0.1:5001", input=f"bob\n{PASSWORD}\n")
    assert "Username:" in result.stdout and "Password:" in result.stdout
    assert json.loads(api.last("PUT", "/registries/").content) == {
        "username": "bob",
        "password": PASSWORD,
    }
    assert "✔ credentials for 127.0.0.1:5001 stored (user bob)" in result.stdout
    assert password_leaks(api, result) == []


def test_registry_login_prompts_only_for_the_password_with_a_username(api: FakeServer) -> None:
    result = ok("registry", "login", "docker.io", "-u", "alice", input=PASSWORD + "\n")
    assert "Username:" not in result.stdout and "Password:" in result.stdout
    assert json.loads(api.last("PUT", "/registries/").content)["username"] == "alice"
    assert password_leaks(api, result) == []


def test_registry_login_normalizes_a_url(api: FakeServer) -> None:
    out = ok("registry", "login", "https://127.0.0.1:5001/", "-u", "bob", "--password-stdin",
             input=PASSWORD).stdout  # fmt: skip
    assert "credentials for 127.0.0.1:5001 stored" in out
    assert api.last("PUT", "/registries/").url.path == "/api/v1/registries/127.0.0.1:5001"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["127.0.0.1:5001/team"], "expected a registry as HOST[:PORT]"),
        (["reg istry"], "expected a registry as HOST[:PORT]"),
        (["127.0.0.1:5001", "--password-stdin"], "--password-stdin needs --username"),
    ],
)
def test_registry_login_usage_errors(api: FakeServer, args: list[str], message: str) -> None:
    result = fails(2, "registry", "login", *args, input=PASSWORD)
    assert message in one_line(result.stderr)
    assert api.requests == [] and PASSWORD not in result.output


def test_registry_login_needs_a_password(api: FakeServer) -> None:
    result = fails(1, "registry", "login", "docker.io", "-u", "bob", "--password-stdin", input="")
    assert result.stderr.strip() == "error: a password is required"
    assert not any(r.method == "PUT" for r in api.requests)


def test_registry_login_not_logged_in_asks_for_nothing(fake: FakeServer) -> None:
    result = fails(1, "registry", "login", "docker.io", input=f"bob\n{PASSWORD}\n")
    assert result.stderr.strip() == f"error: {config.NOT_LOGGED_IN}"
    assert "Password" not in result.output and fake.requests == []


def test_registry_login_errors_never_show_the_password(api: FakeServer) -> None:
    # the fake echoes the request body in its error, as a careless server might
    result = fails(1, "registry", "login", "docker.io", "-u", "echo", "--password-stdin",
                   input=PASSWORD)  # fmt: skip
    assert "invalid request" in result.stderr and "••••••••" in result.stderr
    assert password_leaks(api, result) == []


def test_registry_login_rejected_token(api: FakeServer) -> None:
    other = f"CORRAL-A1-{FP}-{'f' * 32}"
    result = fails(1, "registry", "login", "docker.io", "-u", "bob", "--password-stdin",
                   input=PASSWORD, env={"CORRAL_TOKEN": other})  # fmt: skip
    assert "unauthorized" in result.stderr
    assert PASSWORD not in result.output


def test_registry_ls_and_json(api: FakeServer) -> None:
    ok("registry", "login", "127.0.0.1:5001", "-u", "bob", "--password-stdin", input=PASSWORD)
    ok("registry", "login", "docker.io", "-u", "alice", "--password-stdin", input=PASSWORD)
    result = ok("registry", "ls")
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["REGISTRY", "USERNAME", "ADDED"]
    assert lines[1].split()[:2] == ["127.0.0.1:5001", "bob"] and "ago" in lines[1]
    assert lines[2].split()[:2] == ["docker.io", "alice"]
    body = json.loads(ok("registry", "ls", "-o", "json").stdout)
    assert [(r["registry"], r["username"]) for r in body] == [
        ("127.0.0.1:5001", "bob"),
        ("docker.io", "alice"),
    ]
    assert password_leaks(api, result) == []


def test_registry_logout(api: FakeServer) -> None:
    ok("registry", "login", "127.0.0.1:5001", "-u", "bob", "--password-stdin", input=PASSWORD)
    result = ok("registry", "logout", "127.0.0.1:5001")
    assert result.stdout.strip() == "✔ credentials for 127.0.0.1:5001 removed"
    assert api.last("DELETE", "/registries/").url.raw_path == b"/api/v1/registries/127.0.0.1%3A5001"
    assert api.registries == {}
    result = fails(1, "registry", "logout", "127.0.0.1:5001")
    assert result.stderr.strip() == "error: no credentials for registry 127.0.0.1:5001"
    assert "expected a registry" in one_line(fails(2, "registry", "logout", "a/b").stderr)


# -- tokens and version ----------------------------------------------------------------


AGENT_ARGS = f"--server {URL} --token {JOIN}"
DOCKER_RUN = (
    "docker run -d --name corral-agent --restart always --network host --uts host "
    "-v /var/run/docker.sock:/var/run/docker.sock -v /var/lib/corral-agent:/var/lib/corral-agent "
    f"{AGENT_IMAGE} {AGENT_ARGS}"
)


def test_token_join(api: FakeServer) -> None:
    out = ok("token", "join").stdout
    lines = out.splitlines()
    assert lines[0] == JOIN
    assert "Add a host:" in out
    docker = next(i for i, line in enumerate(lines) if "as a container:" in line)
    assert lines[docker].strip() == (
        "as a container:  docker run -d --name corral-agent --restart always --network host "
        "--uts host \\"
    )
    assert lines[docker + 1].strip() == (
        "-v /var/run/docker.sock:/var/run/docker.sock "
        "-v /var/lib/corral-agent:/var/lib/corral-agent \\"
    )
    assert lines[docker + 2].strip() == f"{AGENT_IMAGE} {AGENT_ARGS}"
    # the continuation lines line up under "docker run"
    column = lines[docker].index("docker run")
    assert lines[docker + 1].index("-v") == lines[docker + 2].index(AGENT_IMAGE) == column + 2
    # pasted into a shell, the three lines are the one command
    joined = " ".join(line.strip() for line in lines[docker : docker + 3])
    assert joined.replace(" \\ ", " ") == "as a container:  " + DOCKER_RUN
    assert lines[-1].strip() == f"with pip:        pip install corral && corral agent {AGENT_ARGS}"
    assert SECRET not in out  # the admin token is never shown


def test_token_join_from_a_server_without_an_agent_image(api: FakeServer) -> None:
    api.agent_image = None
    out = ok("token", "join").stdout
    assert "docker run" not in out and "as a container" not in out
    assert f"pip install corral && corral agent {AGENT_ARGS}" in out
    body = json.loads(ok("token", "join", "-o", "json").stdout)
    assert body["commands"] == {
        "docker": None,
        "pip": f"pip install corral && corral agent {AGENT_ARGS}",
    }


def test_token_join_uses_the_advertised_url(api: FakeServer) -> None:
    api.advertise = "https://203.0.113.7:7443"
    assert "--server https://203.0.113.7:7443 " in ok("token", "join").stdout


def test_token_join_rotate_and_json(api: FakeServer) -> None:
    result = ok("token", "join", "--rotate", "-o", "json")
    body = json.loads(result.stdout)
    assert body["token"] == api.join_token != JOIN
    assert body == {
        "token": api.join_token,
        "agent_image": AGENT_IMAGE,
        "commands": {
            "docker": DOCKER_RUN.replace(JOIN, api.join_token),
            "pip": f"pip install corral && corral agent {AGENT_ARGS.replace(JOIN, api.join_token)}",
        },
    }
    assert api.last("POST", "/rotate")
    assert "rotated" in ok("token", "join", "--rotate").stdout


def test_token_join_json_keeps_the_api_object(api: FakeServer) -> None:
    api.advertise = "https://203.0.113.7:7443"
    body = json.loads(ok("token", "join", "-o", "json").stdout)
    assert {k: body[k] for k in ("token", "server", "agent_image")} == {
        "token": JOIN, "server": "https://203.0.113.7:7443", "agent_image": AGENT_IMAGE,
    }  # fmt: skip
    assert "--server https://203.0.113.7:7443 " in body["commands"]["docker"]
    assert body["commands"]["pip"].endswith(f"--server https://203.0.113.7:7443 --token {JOIN}")


def test_version(api: FakeServer) -> None:
    from corral import __version__

    out = ok("version").stdout
    assert f"client  {__version__}" in out and "server  9.9.9" in out and FP in out
    body = json.loads(ok("version", "-o", "json").stdout)
    assert body == {
        "client": {"version": __version__},
        "server": {"version": "9.9.9", "ca_fingerprint": FP},
    }


def test_version_when_not_logged_in(fake: FakeServer) -> None:
    assert "not logged in" in ok("version").stdout
    assert json.loads(ok("version", "-o", "json").stdout)["server"] is None


def test_version_when_the_server_is_down(api: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused")

    monkeypatch.setattr(session.hooks, "transport", httpx.MockTransport(down))
    result = fails(1, "version")
    assert "client" in result.stdout
    assert f"error: cannot reach {URL}: [Errno 111] Connection refused" in result.stderr


# -- error mapping ------------------------------------------------------------------------


def test_forbidden(api: FakeServer) -> None:
    result = fails(1, "host", "ls", env={"CORRAL_TOKEN": JOIN})
    assert "forbidden: a join token can only register a host" in result.stderr
    assert "ab" * 16 not in result.output


def test_server_error_without_json(api: FakeServer) -> None:
    api.fail_with = httpx.Response(502, text="<html>Bad Gateway</html>")
    assert fails(1, "service", "ls").stderr.strip() == "error: <html>Bad Gateway</html>"
    api.fail_with = httpx.Response(500, text="")
    assert fails(1, "service", "ls").stderr.strip() == "error: HTTP 500 Internal Server Error"


def test_timeout_is_reported(api: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out")

    monkeypatch.setattr(session.hooks, "transport", httpx.MockTransport(slow))
    assert fails(1, "ps").stderr.strip() == f"error: timed out talking to {URL}"


def test_secrets_never_appear_in_output(api: FakeServer) -> None:
    add_service(api, "web")
    api.instances = [make_instance("web", 1)]
    api.registries["127.0.0.1:5001"] = {
        "registry": "127.0.0.1:5001", "username": "bob", "created_at": iso(5),
    }  # fmt: skip
    for args in (["host", "ls"], ["service", "ls"], ["ps"], ["service", "inspect", "web"], ["version"],
                 ["host", "inspect", "host-a", "-o", "json"], ["token", "join"],
                 ["token", "join", "-o", "json"], ["registry", "ls"],
                 ["image", "inspect", IMAGE_REF]):  # fmt: skip
        result = corral(*args)
        assert SECRET not in result.output, args


# -- passthrough commands ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "module"), [("server", "corral.server.main"), ("agent", "corral.agent.main")]
)
def test_passthrough_hands_arguments_unchanged(
    monkeypatch: pytest.MonkeyPatch, command: str, module: str
) -> None:
    seen: list[list[str]] = []

    class Fake:
        @staticmethod
        def run(argv: list[str]) -> int:
            seen.append(argv)
            return 3

    monkeypatch.setitem(sys.modules, module, Fake)
    args = ["--help", "--listen", "0.0.0.0:7443", "-x", "positional"]
    assert corral(command, *args).exit_code == 3
    assert seen == [args]
    assert corral(command).exit_code == 3 and seen[-1] == []


def test_passthrough_missing_module(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(
        sys.modules, "corral.server.main", None
    )  # import raises ModuleNotFoundError
    result = fails(1, "server")
    assert "pip install 'corral[server]'" in result.stderr


# -- pure helpers ---------------------------------------------------------------------------


def test_format_detail() -> None:
    assert format_detail("plain") == "plain"
    assert (
        format_detail([{"loc": ["body", "replicas"], "msg": "too small"}]) == "replicas: too small"
    )
    assert format_detail([{"loc": ["query"], "msg": "bad"}, "raw"]) == "\n  - bad\n  - raw"
    assert format_detail(None) == ""


def test_mask_token() -> None:
    masked = mask_token(ADMIN)
    assert masked.startswith("CORRAL-A1-" + FP[:8]) and SECRET not in masked
    assert mask_token("garbage") == "••••••••"


def test_ago_and_sizes() -> None:
    now = datetime(2024, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert output.ago("2024-01-01T11:59:57Z", now) == "3s ago"
    assert output.ago("2024-01-01T11:55:00+00:00", now) == "5m ago"
    assert output.ago("2024-01-01T08:59:59.5Z", now) == "3h ago"
    assert output.ago("2023-12-29T12:00:00Z", now) == "3d ago"
    assert output.ago("2024-01-01T12:00:05Z", now) == "just now"  # clock skew
    assert output.ago(None) == "-" and output.ago("yesterday") == "-"
    assert output.human_bytes(512) == "512 B"
    assert output.human_bytes(1536) == "1.5 KiB"
    assert output.human_bytes(8 * 1024**3) == "8.0 GiB"
    assert output.human_bytes(None) == "-"


def test_parsing_helpers() -> None:
    assert parsing.derive_name("busybox") == "busybox"
    assert parsing.derive_name("localhost:5000/busybox:latest") == "busybox"
    assert parsing.derive_name("ghcr.io/org/web_app.v2@sha256:abc") == "web-app-v2"
    with pytest.raises(parsing.ArgumentProblem):
        parsing.derive_name("___")
    assert parsing.parse_port("53:53/UDP") == {"published": 53, "target": 53, "protocol": "udp", "mode": "host"}
    assert parsing.split_command(["--", "-x"]) == ["-x"]
    assert parsing.split_command(["--"]) is None
    assert parsing.parse_env(["K=", "L=a=b"]) == {"K": "", "L": "a=b"}


def test_render_service_status() -> None:
    assert render.service_status({"running": 1, "desired": 1}) == ("converged", "green")
    assert render.service_status({"running": 0, "desired": 0}) == ("converged", "green")
    # a global service with no host counted yet has not converged
    glob = {"mode": "global", "running": 0, "desired": 0}
    assert render.service_status(glob) == ("converging", "")
    assert render.service_status({**glob, "running": 2, "desired": 2}) == ("converged", "green")
    assert render.service_status({"running": 0, "desired": 1, "pending_reason": "x"}) == (
        "pending: x",
        "yellow",
    )
    assert render.service_status({"running": 0, "desired": 1}) == ("converging", "")


def test_render_tolerates_missing_fields() -> None:
    from rich.console import Console

    console = Console(width=200, file=open(os.devnull, "w"))
    console.print(render.hosts_table([{"id": "x"}]))
    console.print(render.instances_table([{}]))
    console.print(render.services_table([{}]))
    console.print(render.host_panel({}))
    console.print(render.service_panel({"instances": [{}]}))
    console.print(render.service_panel({"mode": "global", "image_digest": None}))
    console.print(render.image_header({}), render.image_platforms_table({"platforms": [{}]}))
    console.print(render.image_platforms_table({}, no_trunc=True))
    console.print(render.registries_table([{}]))


def test_wait_for_service_order_of_checks() -> None:
    class Stub:
        def __init__(self, states: list[dict[str, Any]]) -> None:
            self.states = states

        def get_service(self, name: str) -> dict[str, Any]:
            return self.states.pop(0)

    failed = {"name": "w", "running": 0, "desired": 1, "pending_reason": "p",
              "instances": [{"name": "w.1", "state": "failed", "host_name": "h", "error": "boom"}]}  # fmt: skip
    outcome = waiting.wait_for_service(Stub([failed]), "w", sleep=lambda s: None)  # type: ignore[arg-type]
    assert (outcome.kind, outcome.message) == ("failed", "w.1 on h: failed: boom")
    ticks = iter([0.0, 1.0, 2.0, 3.0])
    slow = [{"name": "w", "running": 0, "desired": 1}] * 3
    outcome = waiting.wait_for_service(
        Stub(slow),
        "w",
        timeout=1.5,
        clock=lambda: next(ticks),
        sleep=lambda s: None,  # type: ignore[arg-type]
    )
    assert outcome.kind == "timeout"


def test_wait_for_a_global_service() -> None:
    class Stub:
        def __init__(self, states: list[dict[str, Any]]) -> None:
            self.states = states

        def get_service(self, name: str) -> dict[str, Any]:
            return self.states.pop(0)

    states = [{"name": "g", "mode": "global", "running": 0, "desired": 0},
              {"name": "g", "mode": "global", "running": 1, "desired": 2},
              {"name": "g", "mode": "global", "running": 2, "desired": 2}]  # fmt: skip
    outcome = waiting.wait_for_service(Stub(states), "g", sleep=lambda s: None)  # type: ignore[arg-type]
    assert (outcome.kind, outcome.message) == ("converged", "g: 2/2 running")
    pending = [{"name": "g", "mode": "global", "running": 0, "desired": 0, "pending_reason": "p"}]
    outcome = waiting.wait_for_service(Stub(pending), "g", sleep=lambda s: None)  # type: ignore[arg-type]
    assert outcome.kind == "pending"


def test_client_requires_a_pinned_ca_for_https() -> None:
    with pytest.raises(ValueError, match="pinned CA"):
        CorralClient(URL, ADMIN)
    with pytest.raises(ClientError, match="host credential"):
        CorralClient.connect(URL, f"CORRAL-H1-host-{SECRET}")


def test_client_api_directly(fake: FakeServer) -> None:
    with CorralClient.connect(
        URL, ADMIN, transport=fake.transport(), fetch_ca=fake.fetch_ca
    ) as client:
        assert [h["name"] for h in client.list_hosts()] == ["host-a", "host-b"]
        assert client.ca() == CA and client.info()["version"] == "9.9.9"
        svc = client.create_service({"name": "web", "image": "nginx", "replicas": 1})
        assert svc["desired"] == 1
        assert client.scale_service("web", 2)["replicas"] == 2
        assert list(client.stream_logs("web", tail=1)) == ["web.2@host-b | second"]
        client.remove_service("web")
        with pytest.raises(APIError) as info:
            client.get_service("web")
        assert info.value.status_code == 404 and info.value.detail == "service web not found"
    assert fake.requests[0].headers["user-agent"].startswith("corral-cli/")


def test_startup_does_not_import_httpx_or_rich() -> None:
    import subprocess

    code = "import sys, corral.cli.app; print(sorted(m for m in ('httpx', 'rich') if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


# -- real TLS: pinning end to end --------------------------------------------------------


def make_ca(common_name: str) -> tuple[Any, Any, str]:
    """A CA (key, cert, PEM), as the server makes one."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert, cert.public_bytes(serialization.Encoding.PEM).decode()


def make_server_cert(ca_key: Any, ca_cert: Any, tmp: Path) -> tuple[Path, Path]:
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "corral server")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "server.crt", tmp / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[dict[str, Any]]:
    """A real HTTPS server with its own CA, serving /api/v1/ca and /api/v1/hosts."""
    import ssl
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    ca_key, ca_cert, ca_pem = make_ca("corral test CA")
    cert_path, key_path = make_server_cert(ca_key, ca_cert, tmp_path)
    admin = f"CORRAL-A1-{tokens.fingerprint(ca_pem)}-{SECRET}"

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            if self.path == "/api/v1/ca":
                self.reply(200, ca_pem.encode(), "text/plain")
            elif self.headers.get("Authorization") != f"Bearer {admin}":
                self.reply(401, b'{"detail": "invalid or revoked token"}')
            elif self.path == "/api/v1/hosts":
                self.reply(200, json.dumps([make_host("real-host")]).encode())
            else:
                self.reply(404, b'{"detail": "not found"}')

        def reply(self, status: int, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_path, key_path)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield {
            "url": f"https://127.0.0.1:{httpd.server_address[1]}",
            "admin": admin,
            "ca_pem": ca_pem,
        }
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_real_tls_login_then_commands(tls_server: dict[str, Any], config_file: Path) -> None:
    result = ok("login", tls_server["url"], "--token", tls_server["admin"])
    assert tokens.fingerprint(tls_server["ca_pem"]) in result.stdout
    assert json.loads(config_file.read_text())["ca_pem"] == tls_server["ca_pem"]
    assert json.loads(ok("host", "ls", "-o", "json").stdout)[0]["name"] == "real-host"


def test_real_tls_refuses_a_server_signed_by_another_ca(
    tls_server: dict[str, Any], config_file: Path
) -> None:
    # The token and the saved CA agree, but the server we reach presents a
    # certificate from a different CA (an impostor): the handshake must fail.
    _, _, impostor_pem = make_ca("the real cluster CA")
    token = f"CORRAL-A1-{tokens.fingerprint(impostor_pem)}-{SECRET}"
    config.save(config.Config(tls_server["url"], token, impostor_pem), config_file)
    result = fails(1, "host", "ls")
    assert "certificate is not signed by the pinned cluster CA" in one_line(result.stderr)
    # and login with that token refuses the server before sending the token
    result = fails(1, "login", tls_server["url"], "--token", token)
    assert "does not match the fingerprint" in one_line(result.stderr)
