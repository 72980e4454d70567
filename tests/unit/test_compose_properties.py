"""Properties of the compose loader on generated compose documents (hypothesis).

The generator builds schema-valid documents from a realistic subset of keys, with values
drawn from pools that mix what Corral accepts with what it must refuse (upper-case service
names, bad constraints, unpublished ports, undeclared volumes, GPU counts of "all", ...).
Whatever it draws, load_stack either returns specs that the API's ServiceCreate accepts or
raises ComposeError -- never another exception.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from corral.api.schemas import ServiceCreate
from corral.compose import ComposeError, Stack, load_stack
from corral.compose.errors import Problems
from corral.compose.interpolation import interpolate, substitute
from corral.compose.merge import merge
from corral.compose.normalize import normalize
from corral.compose.schema import validate

def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``good`` nine times in ten, ``bad`` otherwise: most stacks load, some must be refused."""
    return st.integers(0, 9).flatmap(lambda i: bad if i == 0 else good)


def pool(good: list[Any], bad: list[Any]) -> st.SearchStrategy[Any]:
    return mostly(st.sampled_from(good), st.sampled_from(bad))


SERVICE_NAMES = pool(["web", "worker", "kv", "db-1", "a"], ["Web", "api_v2", "x.y", "n" * 64])
IMAGES = pool(["nginx", "nginx:1.25", "127.0.0.1:5000/shop/web:1", "redis:7", "img@sha256:" + "a" * 64,
               "ghcr.io/org/app:v1.2.3"], ["Bad/Image", "x y"])
WORDS = st.text(st.characters(codec="utf-8", exclude_characters="$\x00", exclude_categories=("Cs",)),
                max_size=12)
ENV_KEYS = pool(["A", "LOG_LEVEL", "_x", "PATH", "KV_URL"], ["1BAD", "a.b"])
LABEL_KEYS = pool(["com.example.team", "tier", "a/b"], ["-bad", "x" * 130])
DURATIONS = pool(["0s", "1s", "500ms", "1m30s", "2m", "1.5s"], ["bad", "10m"])
PORT_NUMBERS = mostly(st.integers(1, 65535), st.sampled_from([0, 70000]))
CONSTRAINTS = pool(["node.labels.zone==edge", "node.platform.arch==arm64", "node.role!=manager",
                    "node.platform==linux/arm/v7"], ["zone=edge", "node.labels.==x"])


def scalar() -> st.SearchStrategy[Any]:
    return st.one_of(WORDS, st.integers(-5, 100), st.booleans(), st.none())


def short_port() -> st.SearchStrategy[Any]:
    return st.one_of(
        PORT_NUMBERS,
        st.builds(lambda p, t: f"{p}:{t}", PORT_NUMBERS, PORT_NUMBERS),
        st.builds(lambda p, t, proto: f"{p}:{t}/{proto}", PORT_NUMBERS, PORT_NUMBERS,
                  pool(["tcp", "udp"], ["sctp"])),
        st.builds(lambda p, n: f"{p}-{p + n}:{p}-{p + n}", st.integers(1, 65000), st.integers(0, 3)),
        st.builds(lambda t: f"127.0.0.1::{t}", PORT_NUMBERS),
        st.fixed_dictionaries({"target": PORT_NUMBERS},
                              optional={"published": mostly(PORT_NUMBERS, st.just("8080-8081")),
                                        "protocol": st.sampled_from(["tcp", "udp"]),
                                        "mode": st.sampled_from(["host", "ingress"]),
                                        "host_ip": st.just("127.0.0.1")}),
    )


VOLUMES = pool(["data:/data", "./conf:/etc/app:ro", "/abs:/abs", "/anon", "data:/x:nocopy",
                {"type": "volume", "source": "data", "target": "/v", "read_only": True},
                {"type": "tmpfs", "target": "/tmp"}],
               ["undeclared:/u", "data:relative", {"type": "bind", "target": "/nosource"}])
RESOURCES = st.fixed_dictionaries({}, optional={
    "limits": st.fixed_dictionaries({}, optional={"cpus": pool([0.5, "1.5"], ["x", -1]),
                                                  "memory": pool(["512M", "1g", "0"], ["lots"])}),
    "reservations": st.fixed_dictionaries({}, optional={
        "cpus": pool([0.25, "2", "500m"], ["-1"]),
        "memory": pool(["128M", "1GiB"], ["12x"]),
        "generic_resources": st.lists(st.fixed_dictionaries({"discrete_resource_spec": st.fixed_dictionaries(
            {"kind": pool(["gpu", "NVIDIA-GPU", "fpga"], ["bad kind!"]), "value": pool([1, 2, "3"], [-1])})}),
            max_size=2),
        "devices": st.lists(st.fixed_dictionaries(
            {"capabilities": pool([["gpu"], ["gpu", "utility"]], [["tpu"]])},
            optional={"count": pool([1, 2, "1"], ["all"]), "driver": st.sampled_from(["nvidia", "amd"]),
                      "device_ids": st.just(["0"])}), max_size=2),
    }),
})
DEPLOY = st.fixed_dictionaries({}, optional={
    "mode": pool(["replicated", "global"], ["global-job"]),
    "replicas": mostly(st.integers(0, 20), st.sampled_from([-1, 10001, "three"])),
    "labels": st.dictionaries(LABEL_KEYS, WORDS, max_size=2),
    "placement": st.fixed_dictionaries({}, optional={
        "constraints": st.lists(CONSTRAINTS, max_size=3),
        "preferences": st.lists(st.fixed_dictionaries({"spread": pool(["node.labels.zone"], ["zone"])}),
                                max_size=2),
        "max_replicas_per_node": st.integers(0, 5)}),
    "resources": RESOURCES,
    "restart_policy": st.fixed_dictionaries({}, optional={
        "condition": pool(["any", "on-failure", "none"], ["sometimes"]),
        "delay": DURATIONS, "max_attempts": mostly(st.integers(0, 5), st.just(-1))}),
    "update_config": st.fixed_dictionaries({}, optional={
        "parallelism": mostly(st.integers(0, 4), st.just(-1)), "delay": DURATIONS, "monitor": DURATIONS,
        "order": st.sampled_from(["start-first", "stop-first"]),
        "failure_action": pool(["pause", "continue", "rollback"], ["explode"]),
        "max_failure_ratio": pool([0, 0.5], [2])}),
})
SERVICE_WITH_IMAGE = st.fixed_dictionaries({"image": IMAGES}, optional={
    "build": st.just("."),
    "command": st.one_of(WORDS, st.lists(WORDS, max_size=3)),
    "entrypoint": st.one_of(WORDS, st.lists(WORDS, max_size=3)),
    "environment": st.one_of(st.dictionaries(ENV_KEYS, scalar(), max_size=3),
                             st.lists(st.builds(lambda k, v: f"{k}={v}", ENV_KEYS, WORDS), max_size=3, unique=True)),
    "labels": st.dictionaries(LABEL_KEYS, st.one_of(WORDS, st.none()), max_size=2),
    "ports": st.lists(short_port(), max_size=3, unique_by=lambda p: json.dumps(p, sort_keys=True)),
    "volumes": st.lists(VOLUMES, max_size=3, unique_by=lambda v: json.dumps(v, sort_keys=True)),
    "healthcheck": st.fixed_dictionaries({}, optional={
        "test": st.one_of(WORDS, pool([["CMD", "true"], ["NONE"], ["CMD-SHELL", "x"]], [["echo"]])),
        "interval": DURATIONS, "retries": mostly(st.integers(0, 5), st.just(-1)), "disable": st.booleans()}),
    "restart": pool(["no", "always", "on-failure:3", "unless-stopped"], ["sometimes"]),
    "stop_grace_period": DURATIONS,
    "working_dir": st.just("/srv"),
    "user": st.sampled_from(["1000", "app:app"]),
    "networks": st.lists(pool(["back", "default"], ["undeclared"]), max_size=2, unique=True),
    "cap_add": st.lists(st.sampled_from(["NET_ADMIN", "SYS_PTRACE"]), max_size=2, unique=True),
    "depends_on": st.lists(st.sampled_from(["web", "kv"]), max_size=2, unique=True),
    "privileged": st.booleans(),
    "deploy": DEPLOY,
    "x-corral": st.fixed_dictionaries({}, optional={
        "allow_emulation": pool([True, False, "yes"], ["maybe"]),
        "prefer_platforms": st.lists(pool(["linux/arm64", "linux/arm/v7"], ["arm64"]), max_size=2),
        "surprise": mostly(st.nothing(), st.just(1))}),
})
SERVICE = mostly(SERVICE_WITH_IMAGE, SERVICE_WITH_IMAGE.map(lambda s: {k: v for k, v in s.items() if k != "image"}))
DOCUMENTS = st.fixed_dictionaries(
    {"services": st.dictionaries(SERVICE_NAMES, SERVICE, min_size=1, max_size=3),
     "volumes": mostly(st.just({"data": None}), st.just({})),
     "networks": mostly(st.just({"back": None}), st.just({}))},
    optional={"x-shared": st.just({"anything": [1, 2]})})


def load_json(doc: dict[str, Any], copies: int = 1) -> Stack | ComposeError:
    """``doc`` written as JSON (a YAML 1.2 subset: every string stays a string) and loaded
    ``copies`` times over itself, in the same folder every time; the error if it is refused."""
    folder = Path(tempfile.gettempdir()) / "corral-compose-properties"
    folder.mkdir(exist_ok=True)
    path = folder / "compose.yaml"
    path.write_text(json.dumps(doc))
    try:
        return load_stack([path] * copies, {"HOME": "/home/u"}, stack="prop")
    except ComposeError as exc:
        return exc


@settings(max_examples=60, deadline=None)
@given(DOCUMENTS)
def test_generated_documents_are_valid_compose(doc: dict[str, Any]) -> None:
    problems = Problems(lambda _path: "generated")
    validate(doc, problems)
    assert problems.errors == []


@settings(max_examples=300, deadline=None)
@given(DOCUMENTS)
def test_load_stack_gives_specs_the_api_accepts_or_a_compose_error(doc: dict[str, Any]) -> None:
    stack = load_json(doc)
    if isinstance(stack, ComposeError):
        assert stack.errors and all(": " in e for e in stack.errors)
        return
    assert stack.services
    for spec in stack.services:
        ServiceCreate(**{k: v for k, v in spec.items() if k in ServiceCreate.model_fields})


@settings(max_examples=100, deadline=None)
@given(DOCUMENTS)
def test_merging_a_file_with_itself_changes_nothing(doc: dict[str, Any]) -> None:
    normalized = normalize(doc, Problems(lambda _path: "generated"))
    once = merge({}, normalized, {})
    assert merge(once, normalized, {}) == once
    single, double = load_json(doc), load_json(doc, copies=2)
    if isinstance(single, ComposeError) or isinstance(double, ComposeError):
        assert isinstance(single, ComposeError) and isinstance(double, ComposeError)
        return
    assert (double.services, double.networks, double.volumes) == (single.services, single.networks, single.volumes)


@given(st.text())
def test_escaped_dollars_come_back_unchanged(text: str) -> None:
    missing: list[str] = []
    assert substitute(text.replace("$", "$$"), {"A": "x"}.get, missing.append) == text
    assert missing == []


@given(st.recursive(st.one_of(st.text(), st.integers(), st.none()),
                    lambda inner: st.one_of(st.lists(inner, max_size=3),
                                            st.dictionaries(st.text(max_size=5), inner, max_size=3)),
                    max_leaves=10))
def test_escaped_documents_interpolate_to_themselves(doc: Any) -> None:
    def escape(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: escape(v) for k, v in value.items()}
        if isinstance(value, list):
            return [escape(v) for v in value]
        return value.replace("$", "$$") if isinstance(value, str) else value

    problems = Problems(lambda _path: "generated")
    assert interpolate(escape(doc), {}, problems) == doc
    assert problems.errors == problems.warnings == []


@given(st.text())
def test_any_text_interpolates_or_fails_with_a_message(text: str) -> None:
    problems = Problems(lambda _path: "generated")
    interpolate({"v": text}, {"A": "1"}, problems)
    assert all(e.startswith("generated: v: ") for e in problems.errors)
