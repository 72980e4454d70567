"""Several compose files (-c base -c override) merged by the Compose Specification's rules."""

from __future__ import annotations

from corral.compose.merge import merge
from tests.unit.test_compose_support import SAMPLES, error, load, service

BASE = """
    services:
      web:
        image: nginx:1
        command: ["nginx", "-g", "daemon off;"]
        environment: [A=1, B=2]
        labels: {team: web}
        ports: ["8080:80", "9090:90"]
        volumes: ["data:/data", "./conf:/etc/nginx:ro"]
        cap_add: [NET_ADMIN]
        healthcheck: {test: [CMD, curl, -f, http://localhost], interval: 10s}
        deploy:
          replicas: 2
          placement: {constraints: [node.labels.zone==edge]}
    volumes: {data: {}, other: {}}
    """


def test_mappings_merge_sequences_append_commands_replace(tmp_path) -> None:
    stack = load(tmp_path, BASE, """
        services:
          web:
            image: nginx:2
            command: nginx-debug
            environment: {B: "20", C: "3"}
            labels: [tier=front]
            ports: ["8080:80", "8443:443"]
            volumes: ["other:/data"]
            healthcheck: {test: "curl -f http://localhost/health"}
            deploy:
              placement: {constraints: [node.platform.arch==arm64]}
        """)
    web = service(stack, "web")
    assert web["image"] == "nginx:2"
    assert web["command"] == ["nginx-debug"]  # replaced, not appended
    assert web["env"] == {"A": "1", "B": "20", "C": "3"}  # list form and mapping form merge as mappings
    assert web["labels"] == {"team": "web", "tier": "front"}
    assert [(p["published"], p["target"]) for p in web["ports"]] == [(8080, 80), (9090, 90), (8443, 443)]
    assert [(v["source"], v["target"]) for v in web["volumes"]] == [("other", "/data"),
                                                                    (str(tmp_path / "conf"), "/etc/nginx")]
    assert web["volumes"][1]["read_only"] is True
    assert web["healthcheck"]["test"] == ["CMD-SHELL", "curl -f http://localhost/health"]
    assert web["healthcheck"]["interval"] == 10.0  # the rest of the healthcheck mapping is kept
    assert web["constraints"] == ["node.labels.zone==edge", "node.platform.arch==arm64"]
    assert web["replicas"] == 2


def test_reset_and_override_tags(tmp_path) -> None:
    stack = load(tmp_path, BASE, """
        services:
          web:
            ports: !override ["80:80"]
            cap_add: !reset []
            environment:
              A: !reset null
            labels: !reset {}
            deploy: {replicas: !reset null}
        """)
    web = service(stack, "web")
    assert [(p["published"], p["target"]) for p in web["ports"]] == [(80, 80)]
    assert web["env"] == {"B": "2"} and web["labels"] == {} and web["replicas"] == 1
    assert not any("cap_add" in w for w in stack.warnings)


def test_later_files_add_services_and_three_files_apply_in_order(tmp_path) -> None:
    stack = load(tmp_path, BASE, """
        services:
          web: {deploy: {replicas: 5}}
          worker: {image: "worker:1"}
        """, """
        services:
          web: {deploy: {replicas: 7}}
        """)
    assert [s["name"] for s in stack.services] == ["web", "worker"]
    assert service(stack, "web")["replicas"] == 7


def test_the_sample_with_its_production_override(tmp_path) -> None:
    from corral.compose import load_stack
    stack = load_stack([SAMPLES / "shop.yaml", SAMPLES / "prod.override.yaml"], {}, stack="shop")
    web, worker = service(stack, "web"), service(stack, "worker")
    assert web["ports"] == [{"published": 80, "target": 8000, "protocol": "tcp", "mode": "ingress"}]
    assert web["env"]["LOG_LEVEL"] == "warning"
    assert web["constraints"] == ["node.labels.zone==edge", "node.labels.tier==prod"]
    assert not any(w.startswith("services.worker.cap_add") for w in stack.warnings)
    assert worker["entrypoint"] == ["/usr/bin/tini", "--"]


def test_errors_after_merging_name_the_file_that_set_the_key(tmp_path) -> None:
    message = error(tmp_path, BASE, """
        services:
          web: {deploy: {replicas: many}}
        """)
    assert message == "override.yaml: services.web.deploy.replicas: expected a whole number, got 'many'"
    message = error(tmp_path, BASE, "services: {web: {image: nginx:3}}\n", """
        services:
          web: {deploy: {placement: {constraints: [zone=edge]}}}
        """)
    assert message.startswith("override2.yaml: services.web.deploy.placement.constraints[1]: ")


def test_merge_does_not_touch_its_inputs_and_is_idempotent() -> None:
    base = {"services": {"web": {"image": "a", "ports": [{"target": 80, "published": 80, "protocol": "tcp"}],
                                 "cap_add": ["A"], "environment": {"A": "1"}}}}
    snapshot = repr(base)
    once = merge({}, base, {})
    assert merge(once, base, {}) == once == base
    assert repr(base) == snapshot
