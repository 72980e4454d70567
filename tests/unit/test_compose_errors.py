"""Bad compose input: every error names the file, the key path and what was expected."""

from __future__ import annotations

from pathlib import Path

import pytest

from corral.compose import ComposeError, load_stack
from tests.unit.test_compose_support import error, write

F = "compose.yaml"
CASES = [
    # schema
    ("services: {web: {imgae: nginx}}", f"{F}: services.web.imgae: unknown key; did you mean 'image'?"),
    ("servics: {web: {image: nginx}}", f"{F}: servics: unknown key; did you mean 'services'?"),
    ("services: {web app: {image: nginx}}",
     f"{F}: services.web app: is not a valid name: use letters, digits, '.', '_' and '-'"),
    ("services: {web: {image: nginx, deploy: {replicas: [1]}}}",
     f"{F}: services.web.deploy.replicas: expected a whole number or a string, got a list"),
    ("services: {web: {image: nginx, ports: [{published: 80}]}}",
     f"{F}: services.web.ports[0]: a port in long syntax needs target"),
    ("services: {web: {image: nginx, volumes: [{source: data, target: /data}]}}",
     f"{F}: services.web.volumes[0].type: is required"),
    ("services: {web: {image: nginx, depends_on: {db: {}}}}", f"{F}: services.web.depends_on.db.condition: is required"),
    ("services: {web: {image: nginx, deploy: {update_config: {order: random}}}}",
     f"{F}: services.web.deploy.update_config.order: expected one of start-first, stop-first, got 'random'"),
    # reading
    ("services: {web: {image: nginx}\n", f"{F}: line 3, column 1: invalid YAML: "),  # then libyaml's words
    ("services:\n  web: {image: a}\n  web: {image: b}\n", f"{F}: line 3, column 3: invalid YAML: duplicate key 'web'"),
    ("- services", f"{F}: expected a mapping of top-level keys (services, volumes, ...), got a list"),
    ("services: {web: {image: nginx, ports: [!reset 80]}}",
     f"{F}: services.web.ports[0]: !reset is only allowed on the value of a key"),
    ("services: {}", f"{F}: services: no services are defined"),
    ("services: {web: {image: '${TAG'}}",
     f"{F}: services.web.image: invalid interpolation format in '${{TAG': missing '}}'"),
    # names and images
    ("services: {Web_1: {image: nginx}}", f"{F}: services.Web_1: invalid service name 'Web_1': Corral names "
     "use 1-63 lower-case letters, digits and '-', starting and ending with a letter or digit"),
    ("services: {web: {build: .}}",
     f"{F}: services.web.build: Corral does not build images: give the image to run with image:"),
    ("services: {web: {command: run}}", f"{F}: services.web.image: is required"),
    ("services: {web: {image: 'Nginx:latest'}}",
     f"{F}: services.web.image: image 'Nginx:latest': invalid reference: repository name must be lowercase"),
    # ports
    ("services: {web: {image: nginx, ports: ['70000:80']}}",
     f"{F}: services.web.ports[0]: invalid published port 70000: ports are 1 to 65535"),
    ("services: {web: {image: nginx, ports: ['1:2:3:4']}}", f"{F}: services.web.ports[0]: invalid port '1:2:3:4': "
     "expected [HOST_IP:][PUBLISHED:]TARGET[/PROTOCOL], e.g. 8080:80 or 8080:80/udp"),
    ("services: {web: {image: nginx, ports: ['8000-8001:80']}}", f"{F}: services.web.ports[0]: published ports "
     "8000-8001 and target ports 80-80 differ in number: give ranges of the same length"),
    ("services: {web: {image: nginx, ports: ['80:80/sctp']}}",
     f"{F}: services.web.ports: port 80/sctp: Corral publishes tcp and udp ports only"),
    ("services: {web: {image: nginx, ports: ['80:80', '80:8080']}}",
     f"{F}: services.web.ports: published port 80/tcp is given twice"),
    # volumes and networks
    ("services: {web: {image: nginx, volumes: ['data:/data']}}", f"{F}: services.web.volumes[0].source: refers "
     "to volume 'data', which is not declared under the top-level volumes"),
    ("services: {web: {image: nginx, volumes: ['data:data']}}", f"{F}: services.web.volumes[0]: invalid volume "
     "'data:data': the path in the container (target) must be absolute, e.g. /data"),
    ("services: {web: {image: nginx, volumes: ['/a:/a:bogus']}}", f"{F}: services.web.volumes[0]: invalid volume "
     "'/a:/a:bogus': unknown mode 'bogus' (expected ro, rw, z, Z, nocopy, or a propagation such as rshared)"),
    ("services: {web: {image: nginx, networks: [back]}}", f"{F}: services.web.networks.back: refers to network "
     "'back', which is not declared under the top-level networks"),
    # placement
    ("services: {web: {image: nginx, deploy: {placement: {constraints: [zone=edge]}}}}",
     f"{F}: services.web.deploy.placement.constraints[0]: invalid constraint 'zone=edge': expected KEY==VALUE "
     "or KEY!=VALUE"),
    ("services: {web: {image: nginx, deploy: {placement: {preferences: [{spread: zone}]}}}}",
     f"{F}: services.web.deploy.placement.preferences[0].spread: invalid placement preference 'spread=zone': "
     "expected spread=node.labels.KEY or spread=engine.labels.KEY"),
    # x-corral
    ("services: {web: {image: nginx, x-corral: {allow_emulaton: true}}}",
     f"{F}: services.web.x-corral.allow_emulaton: unknown x-corral key; did you mean 'allow_emulation'?"),
    ("services: {web: {image: nginx, x-corral: {gpu: 1}}}",
     f"{F}: services.web.x-corral.gpu: unknown x-corral key (known: allow_emulation, prefer_platforms)"),
    ("services: {web: {image: nginx, x-corral: {prefer_platforms: [arm64]}}}",
     f"{F}: services.web.x-corral.prefer_platforms[0]: invalid platform 'arm64': expected os/arch[/variant], "
     "e.g. linux/arm/v7"),
    ("services: {web: {image: nginx, x-corral: {allow_emulation: maybe}}}",
     f"{F}: services.web.x-corral.allow_emulation: expected true or false, got 'maybe'"),
    ("x-corral: {allow_emulation: true}\nservices: {web: {image: nginx}}",
     f"{F}: x-corral: is read under a service (services.NAME.x-corral), not at the top level"),
    # replicas and mode
    ("services: {web: {image: nginx, deploy: {replicas: three}}}",
     f"{F}: services.web.deploy.replicas: expected a whole number, got 'three'"),
    ("services: {web: {image: nginx, deploy: {replicas: 10001}}}",
     f"{F}: services.web.deploy.replicas: expected a whole number of at most 10000, got 10001"),
    ("services: {web: {image: nginx, deploy: {mode: global, replicas: 2}}}", f"{F}: services.web.deploy.replicas: "
     "cannot be used with mode: global (one instance runs on every host that can run it)"),
    ("services: {web: {image: nginx, deploy: {mode: replicated-job}}}", f"{F}: services.web.deploy.mode: expected "
     "replicated or global, got 'replicated-job' (jobs are not supported by Corral)"),
    ("services: {web: {image: nginx, scale: 2, deploy: {replicas: 3}}}",
     f"{F}: services.web.scale: differs from deploy.replicas: give one of them"),
    # commands, healthchecks, restarts, updates
    ("services: {web: {image: nginx, command: 'sh -c \"unclosed'}}",
     f"{F}: services.web.command: cannot split 'sh -c \"unclosed' into words: No closing quotation"),
    ("services: {web: {image: nginx, healthcheck: {test: [echo, hi]}}}", f"{F}: services.web.healthcheck.test: "
     "expected a string, or a list starting with CMD or CMD-SHELL followed by the command, or [NONE]"),
    ("services: {web: {image: nginx, healthcheck: {test: [CMD, 'true'], interval: 10 seconds}}}",
     f"{F}: services.web.healthcheck.interval: expected a duration such as 10s or 1m30s, got '10 seconds'"),
    ("services: {web: {image: nginx, deploy: {restart_policy: {delay: 10m}}}}",
     f"{F}: services.web.deploy.restart_policy.delay: Corral waits at most 300s between restarts, got 600s"),
    ("services: {web: {image: nginx, deploy: {restart_policy: {condition: sometimes}}}}",
     f"{F}: services.web.deploy.restart_policy.condition: expected any, on-failure or none, got 'sometimes'"),
    ("services: {web: {image: nginx, restart: sometimes}}",
     f"{F}: services.web.restart: expected no, always, unless-stopped or on-failure[:N], got 'sometimes'"),
    ("services: {web: {image: nginx, deploy: {rollback_config: {failure_action: rollback}}}}",
     f"{F}: services.web.deploy.rollback_config.failure_action: expected pause or continue, got 'rollback'"),
    ("services: {web: {image: nginx, deploy: {update_config: {max_failure_ratio: 2}}}}",
     f"{F}: services.web.deploy.update_config.max_failure_ratio: expected a number of at most 1, got 2"),
    # resources
    ("services: {web: {image: nginx, deploy: {resources: {reservations: {devices: [{capabilities: [gpu], "
     "count: all}]}}}}}", f"{F}: services.web.deploy.resources.reservations.devices[0].count: count: all is not "
     "supported: give the number of GPUs to reserve"),
    ("services: {web: {image: nginx, deploy: {resources: {limits: {memory: lots}}}}}",
     f"{F}: services.web.deploy.resources.limits.memory: invalid memory 'lots': expected bytes or a number with "
     "k, m, g, t (or Ki, Mi, Gi, Ti)"),
    ("services: {web: {image: nginx, deploy: {resources: {limits: {memory: 1m}}}}}",
     f"{F}: services.web.deploy.resources.limits.memory: a memory limit must be at least 4 MiB (or 0 for none), "
     "got 1048576 bytes"),
    ("services: {web: {image: nginx, deploy: {resources: {limits: {cpus: 2000}}}}}",
     f"{F}: services.web.deploy.resources.limits.cpus: a CPU limit can be at most 1024 cores, got 2000"),
    ("services: {web: {image: nginx, deploy: {resources: {reservations: {cpus: '-1'}}}}}",
     f"{F}: services.web.deploy.resources.reservations.cpus: invalid cpu '-1'"),
    # environment and labels
    ("services: {web: {image: nginx, environment: [BAD-KEY=1]}}", f"{F}: services.web.environment: invalid "
     "environment variable name 'BAD-KEY': use letters, digits and '_', not starting with a digit"),
    ("services: {web: {image: nginx, labels: {-x: y}}}", f"{F}: services.web.labels.-x: invalid label key: use "
     "letters, digits, '.', '_', '/' and '-', starting and ending with a letter or digit, at most 128 characters"),
    ("services: {web: {image: nginx, env_file: missing.env}}",
     f"{F}: services.web.env_file[0]: cannot read env_file missing.env"),
    # what Corral refuses outright
    ("include: [other.yaml]\nservices: {web: {image: nginx}}",
     f"{F}: include: is not supported by Corral: list the files with -c instead"),
    ("services: {web: {image: nginx, extends: {service: base}}}",
     f"{F}: services.web.extends: is not supported by Corral: merge the files with -c instead"),
]


@pytest.mark.parametrize(("text", "expected"), CASES, ids=[c[1].split(": ")[1] + ":" + str(i)
                                                            for i, c in enumerate(CASES)])
def test_bad_input_names_file_and_key(tmp_path: Path, text: str, expected: str) -> None:
    assert error(tmp_path, text + "\n").startswith(expected)


def test_many_errors_come_in_one_message(tmp_path: Path) -> None:
    message = error(tmp_path, """
        services:
          web: {image: nginx, deploy: {replicas: x, placement: {constraints: [bad]}}}
          Worker: {image: worker, x-corral: {emulate: true}}
        """)
    assert message.splitlines() == [
        "4 problems in the compose files:",
        "  compose.yaml: services.web.deploy.placement.constraints[0]: invalid constraint 'bad': "
        "expected KEY==VALUE or KEY!=VALUE",
        "  compose.yaml: services.web.deploy.replicas: expected a whole number, got 'x'",
        "  compose.yaml: services.Worker: invalid service name 'Worker': Corral names use 1-63 lower-case "
        "letters, digits and '-', starting and ending with a letter or digit",
        "  compose.yaml: services.Worker.x-corral.emulate: unknown x-corral key (known: allow_emulation, "
        "prefer_platforms)",
    ]


def test_errors_in_several_files_are_all_reported(tmp_path: Path) -> None:
    message = error(tmp_path, "services: {web: {image: nginx, imagee: x}}\n", "services: {web: {portz: []}}\n")
    assert "compose.yaml: services.web.imagee: unknown key; did you mean 'image'?" in message
    assert "override.yaml: services.web.portz: unknown key; did you mean 'ports'?" in message


def test_loader_arguments(tmp_path: Path) -> None:
    [compose] = write(tmp_path, "services: {web: {image: nginx}}\n")
    with pytest.raises(ComposeError, match="^invalid stack name 'My Stack'"):
        load_stack([compose], {}, stack="My Stack")
    with pytest.raises(ComposeError, match="^no compose file given$"):
        load_stack([], {}, stack="shop")
    with pytest.raises(ComposeError, match=r"nope\.yaml: cannot read the file: No such file or directory"):
        load_stack([tmp_path / "nope.yaml"], {}, stack="shop")
