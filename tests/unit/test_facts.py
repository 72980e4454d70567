"""Unit tests of corral.agent.facts: pure parsers, platform mapping, and a fake /proc tree."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import corral
from corral.agent import facts
from corral.agent.facts import (
    BinfmtEntry,
    agent_platform,
    collect_facts,
    emulated_platforms,
    parse_binfmt_entry,
    parse_cgroup_mounts,
    parse_cpu_max,
    parse_meminfo,
    parse_nvidia_smi,
    parse_os_release,
    parse_proc_cgroup,
    probe_cpus,
    probe_docker,
    probe_emulated_platforms,
    probe_memory_bytes,
    probe_os,
)
from corral.agent.runtime.docker import DockerClient, EngineUnavailable

# Copied from /proc/sys/fs/binfmt_misc on the Debian 12 test bed (qemu-user-static
# + binfmt-support, after `update-binfmts --enable`).
DEBIAN_QEMU_AARCH64 = """\
enabled
interpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P
flags: PF
offset 0
magic 7f454c460201010000000000000000000200b700
mask ffffffffffffff00fffffffffffffffffeffffff
"""
DEBIAN_QEMU_ARM = """\
enabled
interpreter /usr/libexec/qemu-binfmt/arm-binfmt-P
flags: PF
offset 0
magic 7f454c4601010100000000000000000002002800
mask ffffffffffffff00fffffffffffffffffeffffff
"""
DEBIAN_QEMU_PPC64LE = """\
enabled
interpreter /usr/libexec/qemu-binfmt/ppc64le-binfmt-P
flags: PF
offset 0
magic 7f454c4602010100000000000000000002001500
mask fffffffffffffffcfffffffffffffffffeffff00
"""
# What `docker run --privileged tonistiigi/binfmt --install all` registers.
TONISTIIGI_QEMU_RISCV64 = """\
enabled
interpreter /usr/bin/qemu-riscv64
flags: POCF
offset 0
magic 7f454c460201010000000000000000000200f300
mask ffffffffffffff00fffffffffffffffffeffffff
"""
# Plain qemu-user-static registration by path, on an arm64 host.
STATIC_QEMU_X86_64 = """\
enabled
interpreter /usr/bin/qemu-x86_64-static
flags: F
offset 0
magic 7f454c4602010100000000000000000002003e00
mask fffffffffffefefcfffffffffffffffffeffffff
"""
DISABLED_QEMU_S390X = """\
disabled
interpreter /usr/libexec/qemu-binfmt/s390x-binfmt-P
flags: PF
offset 0
magic 7f454c4602020100000000000000000000020016
mask ffffffffffffff00fffffffffffffffffffeffff
"""
# Debian's qemu-user-binfmt (dynamic qemu): no F flag, unusable inside containers.
NO_FIX_BINARY_QEMU_MIPS64EL = """\
enabled
interpreter /usr/bin/qemu-mips64el
flags:\x20
offset 0
magic 7f454c4602010100000000000000000002000800
mask ffffffffffffff00fefffffffffffffffeffffff
"""
JAR = """\
enabled
interpreter /usr/bin/jexec
flags:\x20
offset 0
magic 504b0304
"""
PYTHON = """\
enabled
interpreter /usr/bin/python3.11
flags:\x20
offset 0
magic a70d0d0a
"""


@pytest.mark.parametrize(
    "machine, expected",
    [
        ("x86_64", "linux/amd64"),
        ("aarch64", "linux/arm64"),
        ("arm64", "linux/arm64"),
        ("armv7l", "linux/arm/v7"),
        ("armv8l", "linux/arm/v7"),
        ("armv6l", "linux/arm/v6"),
        ("riscv64", "linux/riscv64"),
        ("ppc64le", "linux/ppc64le"),
        ("s390x", "linux/s390x"),
        ("i686", "linux/386"),
    ],
)
def test_agent_platform_maps_uname(machine: str, expected: str) -> None:
    assert agent_platform(machine, pointer_bits=64) == expected


@pytest.mark.parametrize(
    "machine, bits, expected",
    [
        ("aarch64", 32, "linux/arm/v7"),  # Raspberry Pi OS: 64-bit kernel, armhf userland
        ("x86_64", 32, "linux/386"),
        ("aarch64", 64, "linux/arm64"),
        ("x86_64", 64, "linux/amd64"),
    ],
)
def test_agent_platform_honours_32_bit_userland(machine: str, bits: int, expected: str) -> None:
    assert agent_platform(machine, bits) == expected


def test_agent_platform_of_this_process() -> None:
    import os

    if os.uname().machine == "x86_64":
        assert agent_platform() == "linux/amd64"
    else:
        assert agent_platform().startswith("linux/")


@pytest.mark.parametrize(
    "name, text, enabled, interpreter, flags, target, platforms",
    [
        (
            "qemu-aarch64",
            DEBIAN_QEMU_AARCH64,
            True,
            "/usr/libexec/qemu-binfmt/aarch64-binfmt-P",
            "PF",
            "aarch64",
            ("linux/arm64",),
        ),
        (
            "qemu-arm",
            DEBIAN_QEMU_ARM,
            True,
            "/usr/libexec/qemu-binfmt/arm-binfmt-P",
            "PF",
            "arm",
            ("linux/arm/v7", "linux/arm/v6"),
        ),
        (
            "qemu-ppc64le",
            DEBIAN_QEMU_PPC64LE,
            True,
            "/usr/libexec/qemu-binfmt/ppc64le-binfmt-P",
            "PF",
            "ppc64le",
            ("linux/ppc64le",),
        ),
        (
            "qemu-riscv64",
            TONISTIIGI_QEMU_RISCV64,
            True,
            "/usr/bin/qemu-riscv64",
            "POCF",
            "riscv64",
            ("linux/riscv64",),
        ),
        (
            "qemu-x86_64",
            STATIC_QEMU_X86_64,
            True,
            "/usr/bin/qemu-x86_64-static",
            "F",
            "x86_64",
            ("linux/amd64",),
        ),
        (
            "qemu-s390x",
            DISABLED_QEMU_S390X,
            False,
            "/usr/libexec/qemu-binfmt/s390x-binfmt-P",
            "PF",
            "s390x",
            ("linux/s390x",),
        ),
        (
            "qemu-mips64el",
            NO_FIX_BINARY_QEMU_MIPS64EL,
            True,
            "/usr/bin/qemu-mips64el",
            "",
            "mips64el",
            ("linux/mips64le",),
        ),
        ("jar", JAR, True, "/usr/bin/jexec", "", None, ()),
        ("python3.11", PYTHON, True, "/usr/bin/python3.11", "", None, ()),
        ("broken", "", False, "", "", None, ()),
    ],
)
def test_parse_binfmt_entry(
    name: str,
    text: str,
    enabled: bool,
    interpreter: str,
    flags: str,
    target: str | None,
    platforms: tuple[str, ...],
) -> None:
    entry = parse_binfmt_entry(name, text)
    assert entry == BinfmtEntry(name, enabled, interpreter, flags, target)
    assert entry.platforms == platforms


ALL_ENTRIES = [
    parse_binfmt_entry(n, t)
    for n, t in [
        ("qemu-aarch64", DEBIAN_QEMU_AARCH64),
        ("qemu-arm", DEBIAN_QEMU_ARM),
        ("qemu-x86_64", STATIC_QEMU_X86_64),
        ("qemu-s390x", DISABLED_QEMU_S390X),
        ("qemu-mips64el", NO_FIX_BINARY_QEMU_MIPS64EL),
        ("jar", JAR),
    ]
]


@pytest.mark.parametrize(
    "native, expected",
    [
        # disabled s390x, F-less mips64el and the jar entry never count
        ("linux/amd64", ["linux/arm/v6", "linux/arm/v7", "linux/arm64"]),
        ("linux/arm64", ["linux/amd64", "linux/arm/v6", "linux/arm/v7"]),
        ("linux/arm/v7", ["linux/amd64", "linux/arm/v6", "linux/arm64"]),
    ],
)
def test_emulated_platforms_exclude_native_disabled_and_unfixed(
    native: str, expected: list[str]
) -> None:
    assert emulated_platforms(ALL_ENTRIES, native) == expected


def test_emulated_platforms_empty() -> None:
    assert emulated_platforms([], "linux/amd64") == []


MEMINFO = """\
MemTotal:       24684092 kB
MemFree:        20187724 kB
MemAvailable:   23012340 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
"""


@pytest.mark.parametrize(
    "text, key, expected",
    [
        (MEMINFO, "MemTotal", 24684092 * 1024),
        (MEMINFO, "MemAvailable", 23012340 * 1024),
        (MEMINFO, "HugePages_Total", 0),  # no unit: a count, not kB
        ("MemTotal: 1024 kB\n", "MemTotal", 1024 * 1024),
        ("garbage\nMemTotal: x kB\n", "MemTotal", None),
        ("", "MemTotal", None),
    ],
)
def test_parse_meminfo(text: str, key: str, expected: int | None) -> None:
    assert parse_meminfo(text).get(key) == expected


NVIDIA_SMI = """\
0, NVIDIA A100-SXM4-40GB, GPU-0b6e9f5c-2c4e-5a8f-9e1d-6f0a1b2c3d4e, 40960
1, Tesla T4, GPU-7d3c1a2b-9f8e-4d5c-b6a7-1e2f3a4b5c6d, 15360
"""


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            NVIDIA_SMI,
            [
                {
                    "index": 0,
                    "name": "NVIDIA A100-SXM4-40GB",
                    "uuid": "GPU-0b6e9f5c-2c4e-5a8f-9e1d-6f0a1b2c3d4e",
                    "memory_bytes": 40960 * 1024 * 1024,
                },
                {
                    "index": 1,
                    "name": "Tesla T4",
                    "uuid": "GPU-7d3c1a2b-9f8e-4d5c-b6a7-1e2f3a4b5c6d",
                    "memory_bytes": 15360 * 1024 * 1024,
                },
            ],
        ),
        (
            "0, Jetson, Orin, GPU-1, [N/A]\n",
            [{"index": 0, "name": "Jetson, Orin", "uuid": "GPU-1", "memory_bytes": None}],
        ),
        ("", []),
        ("No devices were found\n", []),
        ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n", []),
    ],
)
def test_parse_nvidia_smi(text: str, expected: list[dict[str, Any]]) -> None:
    assert parse_nvidia_smi(text) == expected


DEBIAN_OS_RELEASE = """\
PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"
NAME="Debian GNU/Linux"
VERSION_ID="12"
VERSION="12 (bookworm)"
VERSION_CODENAME=bookworm
ID=debian
HOME_URL="https://www.debian.org/"
"""


@pytest.mark.parametrize(
    "text, key, expected",
    [
        (DEBIAN_OS_RELEASE, "PRETTY_NAME", "Debian GNU/Linux 12 (bookworm)"),
        (DEBIAN_OS_RELEASE, "ID", "debian"),
        (
            '# comment\nPRETTY_NAME="Raspbian GNU/Linux 11 (bullseye)"\n',
            "PRETTY_NAME",
            "Raspbian GNU/Linux 11 (bullseye)",
        ),
        ("PRETTY_NAME='Alpine Linux v3.19'\n", "PRETTY_NAME", "Alpine Linux v3.19"),
        ('NAME="A \\"quoted\\" \\$name"\n', "NAME", 'A "quoted" $name'),
        ("", "PRETTY_NAME", None),
    ],
)
def test_parse_os_release(text: str, key: str, expected: str | None) -> None:
    assert parse_os_release(text).get(key) == expected


@pytest.mark.parametrize(
    "text, expected",
    [
        ("max 100000\n", None),
        ("150000 100000\n", 1.5),
        ("200000 100000", 2.0),
        ("50000", 0.5),
        ("-1 100000", None),
        ("", None),
        ("x y", None),
    ],
)
def test_parse_cpu_max(text: str, expected: float | None) -> None:
    assert parse_cpu_max(text) == expected


def test_parse_proc_cgroup_hybrid_and_v2() -> None:
    hybrid = "4:memory:/process_api/329f\n2:cpu,cpuacct:/docker/ab\n0::/\n"
    assert parse_proc_cgroup(hybrid) == {
        "memory": "/process_api/329f",
        "cpu": "/docker/ab",
        "cpuacct": "/docker/ab",
        "": "/",
    }
    assert parse_proc_cgroup("0::/system.slice/corral-agent.service\n") == {
        "": "/system.slice/corral-agent.service"
    }


def test_parse_cgroup_mounts() -> None:
    mountinfo = (
        "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n"
        "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct\n"
        "35 31 0:32 /docker/ab /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
        "40 31 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
    )
    assert parse_cgroup_mounts(mountinfo) == {
        "cpu": ("/", "/sys/fs/cgroup/cpu,cpuacct"),
        "memory": ("/docker/ab", "/sys/fs/cgroup/memory"),
        "": ("/", "/sys/fs/cgroup/unified"),
    }


# -- a fake filesystem root ----------------------------------------------------------------


def _tree(root: Path, files: dict[str, str]) -> str:
    for path, text in files.items():
        p = root / path.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return str(root)


def test_cgroup_v2_limits(tmp_path: Path) -> None:
    root = _tree(
        tmp_path,
        {
            "/proc/meminfo": MEMINFO,
            "/proc/self/cgroup": "0::/system.slice/corral.service\n",
            "/proc/self/mountinfo": "30 23 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
            "/sys/fs/cgroup/system.slice/corral.service/cpu.max": "max 100000\n",
            "/sys/fs/cgroup/system.slice/corral.service/memory.max": "536870912\n",
            # an ancestor's quota applies too
            "/sys/fs/cgroup/system.slice/cpu.max": "150000 100000\n",
            "/sys/fs/cgroup/system.slice/memory.max": "max\n",
        },
    )
    assert probe_cpus(root, affinity=4) == 1.5
    assert probe_cpus(root, affinity=1) == 1
    assert probe_memory_bytes(root) == 512 * 1024 * 1024


def test_cgroup_v1_limits_inside_a_container(tmp_path: Path) -> None:
    # Without a cgroup namespace, the container's own cgroup is mounted at the v1 roots.
    root = _tree(
        tmp_path,
        {
            "/proc/meminfo": "MemTotal: 2048 kB\n",
            "/proc/self/cgroup": "4:memory:/docker/ab\n2:cpu,cpuacct:/docker/ab\n",
            "/proc/self/mountinfo": (
                "32 31 0:29 /docker/ab /sys/fs/cgroup/cpu,cpuacct ro "
                "- cgroup cgroup rw,cpu,cpuacct\n"
                "35 31 0:32 /docker/ab /sys/fs/cgroup/memory ro - cgroup cgroup rw,memory\n"
            ),
            "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_quota_us": "200000\n",
            "/sys/fs/cgroup/cpu,cpuacct/cpu.cfs_period_us": "100000\n",
            "/sys/fs/cgroup/memory/memory.limit_in_bytes": "9223372036854771712\n",  # unlimited
        },
    )
    assert probe_cpus(root, affinity=8) == 2
    assert probe_memory_bytes(root) == 2048 * 1024  # the "unlimited" value loses to MemTotal


def test_probes_on_an_empty_root(tmp_path: Path) -> None:
    root = str(tmp_path)
    assert probe_cpus(root, affinity=3) == 3
    assert probe_memory_bytes(root) == 0
    assert probe_emulated_platforms("linux/amd64", root) == []
    assert probe_os(root) == "Linux"


def test_probe_emulated_platforms_reads_binfmt_dir(tmp_path: Path) -> None:
    files = {
        "/proc/sys/fs/binfmt_misc/status": "enabled\n",
        "/proc/sys/fs/binfmt_misc/register": "",
        "/proc/sys/fs/binfmt_misc/qemu-aarch64": DEBIAN_QEMU_AARCH64,
        "/proc/sys/fs/binfmt_misc/qemu-arm": DEBIAN_QEMU_ARM,
        "/proc/sys/fs/binfmt_misc/qemu-s390x": DISABLED_QEMU_S390X,
        "/proc/sys/fs/binfmt_misc/jar": JAR,
    }
    root = _tree(tmp_path, files)
    assert probe_emulated_platforms("linux/amd64", root) == [
        "linux/arm/v6",
        "linux/arm/v7",
        "linux/arm64",
    ]
    assert probe_emulated_platforms("linux/arm64", root) == ["linux/arm/v6", "linux/arm/v7"]
    (tmp_path / "proc/sys/fs/binfmt_misc/status").write_text("disabled\n")
    assert probe_emulated_platforms("linux/amd64", root) == []


class _FakeEngine(DockerClient):
    """A DockerClient whose version() is canned (no socket)."""

    def __init__(
        self, version: dict[str, Any] | None = None, error: Exception | None = None
    ) -> None:
        self._version, self._error = version, error

    def version(self) -> dict[str, Any]:
        if self._error:
            raise self._error
        assert self._version is not None
        return self._version

    def info(self) -> dict[str, Any]:
        return {"Labels": ["storage=ssd", "com.example.rack=r7", "flag"]}

    def image_digests(self) -> list[str]:
        return ["sha256:" + "1" * 64]


AMD64_ENGINE = {"Version": "20.10.24+dfsg1", "ApiVersion": "1.41", "Os": "linux", "Arch": "amd64"}


@pytest.mark.parametrize(
    "engine, expected",
    [
        (
            _FakeEngine(AMD64_ENGINE),
            {
                "version": "20.10.24+dfsg1",
                "api_version": "1.41",
                "os": "linux",
                "arch": "amd64",
                "platform": "linux/amd64",
            },
        ),
        (
            _FakeEngine({**AMD64_ENGINE, "Arch": "arm64"}),
            {
                "version": "20.10.24+dfsg1",
                "api_version": "1.41",
                "os": "linux",
                "arch": "arm64",
                "platform": "linux/arm64",
            },
        ),
        (
            _FakeEngine({**AMD64_ENGINE, "Arch": "arm"}),
            {
                "version": "20.10.24+dfsg1",
                "api_version": "1.41",
                "os": "linux",
                "arch": "arm",
                "platform": "linux/arm/v7",
            },
        ),
        (_FakeEngine(error=EngineUnavailable("no socket")), {"error": "no socket"}),
        (None, {"error": "no Docker Engine configured"}),
    ],
)
def test_probe_docker(engine: Any, expected: dict[str, Any]) -> None:
    assert probe_docker(engine) == expected


def _fake_host(tmp_path: Path) -> str:
    return _tree(
        tmp_path,
        {
            "/proc/meminfo": "MemTotal: 3884328 kB\n",
            "/etc/os-release": 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\n',
            "/proc/sys/fs/binfmt_misc/status": "enabled\n",
            "/proc/sys/fs/binfmt_misc/qemu-x86_64": STATIC_QEMU_X86_64,
            "/proc/sys/fs/binfmt_misc/qemu-arm": DEBIAN_QEMU_ARM,
        },
    )


def test_collect_facts_on_a_fake_arm64_board(tmp_path: Path) -> None:
    gpus = [{"index": 0, "name": "Orin", "uuid": "GPU-1", "memory_bytes": None}]
    facts = collect_facts(
        _FakeEngine({**AMD64_ENGINE, "Arch": "arm64"}),
        {"zone": "edge"},
        "pi-7",
        root=_fake_host(tmp_path),
        machine="aarch64",
        affinity=4,
        kernel="6.1.0-rpi7-rpi-v8",
        gpus=gpus,
        arm32=True,
    )
    assert facts == {
        "hostname": "pi-7",
        "platform": "linux/arm64",
        "arm32": True,
        "emulated_platforms": ["linux/amd64", "linux/arm/v6", "linux/arm/v7"],
        "cpus": 4,
        "memory_bytes": 3884328 * 1024,
        "gpus": gpus,
        "os": "Debian GNU/Linux 12 (bookworm)",
        "kernel": "6.1.0-rpi7-rpi-v8",
        "docker": {
            "version": "20.10.24+dfsg1",
            "api_version": "1.41",
            "os": "linux",
            "arch": "arm64",
            "platform": "linux/arm64",
        },
        "engine_platform": "linux/arm64",
        "platform_mismatch": False,
        "engine_labels": {"storage": "ssd", "com.example.rack": "r7", "flag": ""},
        "images": ["sha256:" + "1" * 64],
        "labels": {"zone": "edge"},
        "agent_version": corral.__version__,
    }
    json.dumps(facts)


def test_collect_facts_reports_a_platform_mismatch(tmp_path: Path) -> None:
    # an arm64 agent under qemu talking to an amd64 engine (test bed only)
    facts = collect_facts(
        _FakeEngine(AMD64_ENGINE),
        {},
        "qemu-host",
        root=_fake_host(tmp_path),
        machine="aarch64",
        affinity=2,
        gpus=[],
    )
    assert facts["platform"] == "linux/arm64"
    assert facts["engine_platform"] == "linux/amd64"
    assert facts["platform_mismatch"] is True


def test_collect_facts_without_an_engine(tmp_path: Path) -> None:
    facts = collect_facts(
        _FakeEngine(error=EngineUnavailable("Docker Engine does not answer")),
        {},
        root=_fake_host(tmp_path),
        machine="armv7l",
        affinity=4,
        gpus=[],
    )
    assert facts["docker"] == {"error": "Docker Engine does not answer"}
    assert facts["engine_labels"] == {} and facts["images"] == []
    assert facts["engine_platform"] is None
    assert facts["platform_mismatch"] is False
    assert facts["platform"] == "linux/arm/v7"
    assert facts["emulated_platforms"] == ["linux/amd64", "linux/arm/v6"]
    assert facts["hostname"]
    json.dumps(facts)


class FakePersonality:
    """personality(2) of an arm64 kernel, with or without 32-bit EL0 support."""

    def __init__(self, aarch32: bool) -> None:
        self.aarch32 = aarch32
        self.persona = 0
        self.calls: list[int] = []

    def __call__(self, value: int) -> int:
        self.calls.append(value)
        old = self.persona
        if value == facts.PERSONALITY_QUERY:
            return old
        if value == facts.PER_LINUX32 and not self.aarch32:
            return -1
        self.persona = value
        return old


@pytest.mark.parametrize("platform, aarch32, expected", [
    ("linux/arm64", True, True),
    ("linux/arm64", False, False),
    ("linux/amd64", True, False),
    ("linux/arm/v7", True, False),
])
def test_probe_arm32(platform: str, aarch32: bool, expected: bool) -> None:
    fake = FakePersonality(aarch32)
    assert facts.probe_arm32(platform, fake) is expected
    assert fake.persona == 0  # the old persona is restored
