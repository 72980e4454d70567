"""Compose services mapped to Corral service specs, on a realistic stack and key by key."""

from __future__ import annotations

import pytest

from corral.api import schemas
from corral.api.schemas import ServiceCreate
from corral.compose import load_stack
from corral.compose import values as compose_values
from tests.unit.test_compose_support import SAMPLES, load, service


@pytest.fixture(scope="module")
def shop():
    return load_stack([SAMPLES / "shop.yaml"], {"LOG_LEVEL": "info"}, stack="shop")


def test_every_spec_is_accepted_by_the_api(shop) -> None:
    assert shop.name == "shop"
    assert [s["name"] for s in shop.services] == ["web", "worker", "kv", "node-exporter"]
    for spec in shop.services:
        known = {k: v for k, v in spec.items() if k in ServiceCreate.model_fields}
        ServiceCreate(**known)


def test_web(shop) -> None:
    web = service(shop, "web")
    assert web["image"] == "127.0.0.1:5000/shop/web:1.4"
    assert web["command"] == ["gunicorn", "--bind", "0.0.0.0:8000", "shop.wsgi:application"]
    # env_file first, environment wins; a bare LOG_LEVEL comes from the environment
    assert web["env"] == {"SECRET_KEY": "s3cr3t $not-a-var", "WORKERS": "4", "KV_URL": "redis://kv:6379/0",
                          "LOG_LEVEL": "info"}
    assert web["ports"] == [{"published": 8080, "target": 8000, "protocol": "tcp", "mode": "ingress"},
                            {"published": 8443, "target": 8443, "protocol": "tcp", "mode": "ingress"}]
    assert web["replicas"] == 3 and web["mode"] == "replicated"
    assert web["constraints"] == ["node.labels.zone==edge"]
    assert web["preferences"] == ["spread=node.labels.rack"]
    assert web["max_replicas_per_node"] == 2
    assert web["restart"] == {"condition": "on-failure", "max_attempts": 5, "delay": 1.0}  # from <<: *defaults
    assert web["labels"] == {"com.example.team": "shop"}
    assert web["service_labels"] == {"com.example.tier": "front"}
    assert web["healthcheck"] == {"test": ["CMD", "wget", "-q", "-O-", "http://localhost:8000/health"],
                                  "interval": 10.0, "timeout": 2.0, "start_period": 90.0, "retries": 5}
    assert web["update_config"] == {"parallelism": 2, "delay": 0.0, "order": "start-first", "monitor": 5.0,
                                    "max_failure_ratio": 0.0, "failure_action": "pause"}
    assert web["rollback_config"]["order"] == "stop-first"
    assert web["limits"] == {"cpu": 1.5, "memory": 512 << 20}
    assert web["reservations"] == {"cpu": 0.25, "memory": 128 << 20}
    assert web["allow_emulation"] is True
    assert web["platform_preference"] == ["linux/arm64", "linux/arm/v7"]
    assert web["networks"] == ["default"]


def test_worker_kv_and_global_exporter(shop) -> None:
    worker, kv, exporter = service(shop, "worker"), service(shop, "kv"), service(shop, "node-exporter")
    assert worker["entrypoint"] == ["/usr/bin/tini", "--"]
    assert worker["command"] == ["python", "-m", "shop.worker"]
    assert (worker["working_dir"], worker["user"], worker["stop_grace_period"]) == ("/srv", "1000:1000", 60.0)
    assert worker["env"] == {"KV_URL": "redis://kv:6379/0", "BATCH": "50", "DEBUG": "false"}
    assert worker["restart"] == {"condition": "on-failure", "max_attempts": 3, "delay": 5.0}
    assert worker["reservations"] == {"generic": {"nvidia.com/gpu": 1}}
    assert kv["hostname"] == "kv" and kv["networks"] == ["back"]
    assert kv["volumes"] == [
        {"type": "volume", "source": "kvdata", "target": "/data", "read_only": False},
        {"type": "bind", "source": "/etc/shop/redis.conf", "target": "/usr/local/etc/redis/redis.conf",
         "read_only": True}]
    assert kv["healthcheck"]["test"] == ["CMD-SHELL", "redis-cli ping"]
    assert kv["healthcheck"]["retries"] == 3  # Docker's defaults filled in
    assert exporter["mode"] == "global" and "replicas" not in exporter
    assert shop.volumes == {"kvdata": {"name": None, "external": False, "driver": None, "driver_opts": {},
                                       "labels": {}}}
    assert set(shop.networks) == {"back", "default"}


def test_keys_corral_does_not_honour_are_warned(shop) -> None:
    assert shop.warnings == [
        "services.web.depends_on is not supported by Corral and was ignored (ordering is not guaranteed: "
        "services start in any order)",
        "services.worker.cap_add is not supported by Corral and was ignored",
        "services.node-exporter.privileged is not supported by Corral and was ignored",
        "networks back, default: every service joins Corral's one overlay network, so services on different "
        "networks can reach each other (no isolation)",
    ]


def test_more_unsupported_keys_each_named(tmp_path) -> None:
    stack = load(tmp_path, """
        version: "3.9"
        name: other
        services:
          web:
            image: nginx
            build: .
            platform: linux/arm64
            mem_limit: 1g
            links: [db]
            x-anything: ignored by design
            deploy:
              endpoint_mode: dnsrr
              restart_policy: {window: 10s, delay: 0s}
              resources: {limits: {pids: 10}}
            healthcheck: {test: [CMD, "true"], start_interval: 1s}
            networks: {back: {aliases: [w]}}
            ports: [{target: 80, published: 8080, host_ip: 127.0.0.1}]
            volumes: [{type: tmpfs, target: /tmp}, "data:/data:nocopy"]
        networks: {back: {driver: overlay}}
        volumes: {data: {}}
        secrets: {s: {file: ./s}}
        """)
    assert stack.warnings == [
        "version is obsolete and was ignored",
        "name was ignored: the stack is named shop",
        "secrets is not supported by Corral and was ignored",
        "networks.back.driver is not supported by Corral and was ignored",
        "services.web.platform is not supported by Corral and was ignored (use x-corral.prefer_platforms "
        "or a node.platform constraint)",
        "services.web.mem_limit is not supported by Corral and was ignored (use deploy.resources)",
        "services.web.links is not supported by Corral and was ignored",
        "services.web.deploy.endpoint_mode is not supported by Corral and was ignored",
        "services.web.build is not supported by Corral and was ignored (Corral does not build images; "
        "nginx is pulled)",
        "services.web.ports.host_ip is not supported by Corral and was ignored (on port 8080:80/tcp)",
        "services.web.deploy.restart_policy.window is not supported by Corral and was ignored",
        "services.web.deploy.restart_policy.delay of 0s was raised to 0.1s, the shortest Corral waits",
        "services.web.volumes[0] is not supported by Corral and was ignored (tmpfs mounts)",
        "services.web.volumes[1].volume.nocopy is not supported by Corral and was ignored",
        "services.web.healthcheck.start_interval is not supported by Corral and was ignored",
        "services.web.networks.back.aliases is not supported by Corral and was ignored",
        "services.web.deploy.resources.limits.pids is not supported by Corral and was ignored",
    ]


@pytest.mark.parametrize(("ports", "expected"), [
    ('["80:8080"]', [(80, 8080, "tcp")]),
    ('[8080:80/udp]', [(8080, 80, "udp")]),
    ('["127.0.0.1:8080:80"]', [(8080, 80, "tcp")]),
    ('["[::1]:8080:80"]', [(8080, 80, "tcp")]),
    ('["8000-8002:9000-9002"]', [(8000, 9000, "tcp"), (8001, 9001, "tcp"), (8002, 9002, "tcp")]),
    ('[{target: 80, published: "8080", protocol: udp, mode: host}]', [(8080, 80, "udp")]),
    ('[{target: 53, published: 53, protocol: udp}, {target: 53, published: 53}]',
     [(53, 53, "udp"), (53, 53, "tcp")]),
])
def test_port_syntaxes(tmp_path, ports: str, expected: list) -> None:
    web = service(load(tmp_path, f"services: {{web: {{image: nginx, ports: {ports}}}}}\n"), "web")
    assert [(p["published"], p["target"], p["protocol"]) for p in web["ports"]] == expected


def test_a_port_that_is_not_published_is_warned(tmp_path) -> None:
    stack = load(tmp_path, "services: {web: {image: nginx, ports: [80, '127.0.0.1::81', '8080:8080']}}\n")
    assert [p["published"] for p in service(stack, "web")["ports"]] == [8080]
    assert stack.warnings == [
        "services.web.ports entry 80/tcp is not published (no host port given); Corral only opens "
        "published ports, so it was ignored",
        "services.web.ports entry 81/tcp is not published (no host port given); Corral only opens "
        "published ports, so it was ignored",
    ]


def test_volumes_short_and_long(tmp_path) -> None:
    stack = load(tmp_path, """
        services:
          db:
            image: postgres
            volumes:
              - pgdata:/var/lib/postgresql/data
              - ./init:/docker-entrypoint-initdb.d:ro
              - /var/run/x.sock:/x.sock
              - /cache
              - {type: volume, source: pgdata, target: /backup, read_only: "true"}
        volumes: {pgdata: {external: true, name: shared-pg}}
        """)
    assert service(stack, "db")["volumes"] == [
        {"type": "volume", "source": "pgdata", "target": "/var/lib/postgresql/data", "read_only": False},
        {"type": "bind", "source": str(tmp_path / "init"), "target": "/docker-entrypoint-initdb.d",
         "read_only": True},
        {"type": "bind", "source": "/var/run/x.sock", "target": "/x.sock", "read_only": False},
        {"type": "volume", "source": None, "target": "/cache", "read_only": False},
        {"type": "volume", "source": "pgdata", "target": "/backup", "read_only": True},
    ]
    assert stack.volumes["pgdata"]["external"] is True and stack.volumes["pgdata"]["name"] == "shared-pg"
    assert any(w.startswith("services.db.volumes[1].source ./init is relative and was resolved to ")
               for w in stack.warnings)


@pytest.mark.parametrize(("text", "expected"), [
    ("healthcheck: {disable: true}", {"disable": True}),
    ("healthcheck: {test: [NONE]}", {"disable": True}),
    ("healthcheck: {interval: 5s}", {"test": None, "interval": 5.0, "timeout": 30.0, "start_period": 0.0,
                                     "retries": 3}),
    ("restart: always", {"condition": "any", "max_attempts": 0, "delay": 1.0}),
    ("restart: 'no'", {"condition": "none", "max_attempts": 0, "delay": 1.0}),
    ("restart: on-failure:3", {"condition": "on-failure", "max_attempts": 3, "delay": 1.0}),
    ("deploy: {restart_policy: {condition: none, delay: 1m30s}}",
     {"condition": "none", "max_attempts": 0, "delay": 90.0}),
])
def test_healthcheck_and_restart_forms(tmp_path, text: str, expected: dict) -> None:
    key = "healthcheck" if text.startswith("healthcheck") else "restart"
    web = service(load(tmp_path, f"services:\n  web:\n    image: nginx\n    {text}\n"), "web")
    assert web[key] == expected


@pytest.mark.parametrize(("reservations", "expected"), [
    ("{generic_resources: [{discrete_resource_spec: {kind: NVIDIA-GPU, value: 2}}]}", {"nvidia.com/gpu": 2}),
    ("{generic_resources: [{discrete_resource_spec: {kind: fpga, value: '1'}}]}", {"fpga": 1}),
    ("{devices: [{capabilities: [gpu], device_ids: ['0', '1']}]}", {"nvidia.com/gpu": 2}),
    ("{devices: [{capabilities: [gpu, compute], count: 1}, {capabilities: [gpu], count: 2}]}",
     {"nvidia.com/gpu": 3}),
])
def test_gpu_and_generic_reservations(tmp_path, reservations: str, expected: dict) -> None:
    stack = load(tmp_path, f"services: {{ml: {{image: ml, deploy: {{resources: {{reservations: {reservations}}}}}}}}}\n")
    assert service(stack, "ml")["reservations"] == {"generic": expected}


@pytest.mark.parametrize("limits, expected", [
    ("{memory: '0', cpus: 0}", None),  # 0 means no limit, as in Docker
    ("{memory: '0', cpus: '0.5'}", {"cpu": 0.5}),
    ("{memory: 4m}", {"memory": 4 << 20}),
])
def test_zero_limits_mean_none(tmp_path, limits: str, expected: dict | None) -> None:
    web = service(load(tmp_path, f"services: {{web: {{image: nginx, deploy: {{resources: {{limits: {limits}}}}}}}}}\n"),
                  "web")
    assert web.get("limits") == expected
    ServiceCreate(**{k: v for k, v in web.items() if k in ServiceCreate.model_fields})


def test_scale_and_string_values_after_interpolation(tmp_path) -> None:
    web = service(load(tmp_path, """
        services:
          web:
            image: nginx
            scale: 4
            x-corral: {allow_emulation: "yes"}
            deploy:
              placement: {max_replicas_per_node: 0}
              update_config: {max_failure_ratio: "0.25", monitor: 30s, failure_action: rollback}
        """), "web")
    assert web["replicas"] == 4 and web["allow_emulation"] is True
    assert web["max_replicas_per_node"] is None  # 0 means no limit, as in Swarm
    assert web["update_config"]["max_failure_ratio"] == 0.25
    assert (web["update_config"]["monitor"], web["update_config"]["failure_action"]) == (30.0, "rollback")


def test_name_rules_stay_those_of_the_api() -> None:
    assert compose_values.NAME.pattern == schemas._NAME.pattern
    assert compose_values.ENV_KEY.pattern == schemas._ENV_KEY.pattern
    assert compose_values.LABEL_KEY.pattern == schemas._LABEL_KEY.pattern


def test_yaml_is_read_as_yaml_1_2(tmp_path) -> None:
    web = service(load(tmp_path, """
        services:
          web:
            image: nginx
            ports: [22:22]
            environment: {FLAG: yes, OFF: off, DAY: 2024-01-01, MODE: 0755}
        """), "web")
    assert web["ports"] == [{"published": 22, "target": 22, "protocol": "tcp", "mode": "ingress"}]
    assert web["env"] == {"FLAG": "yes", "OFF": "off", "DAY": "2024-01-01", "MODE": "755"}


def test_networks_join_the_one_overlay_and_say_so(tmp_path) -> None:
    stack = load(tmp_path, """
        services:
          web: {image: nginx, networks: [front]}
          api: {image: nginx, networks: [front, back]}
        networks:
          front: {}
          back: {external: true}
        """)
    assert [s["networks"] for s in stack.services] == [["front"], ["front", "back"]]
    assert stack.warnings == [
        "networks.back.external Corral has no external networks: services that name it join the overlay network",
        "networks back, front: every service joins Corral's one overlay network, so services on different "
        "networks can reach each other (no isolation)"]
