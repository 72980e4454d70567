"""Helpers shared by the test_compose_*.py files (no tests here): write compose texts into a
temporary project folder and load them as a stack."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from pathlib import Path

import pytest

from corral.compose import ComposeError, Stack, load_stack

SAMPLES = Path(__file__).parent / "compose_samples"
NAMES = ("compose.yaml", "override.yaml", "override2.yaml")


def write(folder: Path, *texts: str) -> list[Path]:
    """Each text (dedented) as compose.yaml, override.yaml, override2.yaml in ``folder``."""
    paths = []
    for name, text in zip(NAMES, texts, strict=False):
        path = folder / name
        path.write_text(textwrap.dedent(text))
        paths.append(path)
    return paths


def load(folder: Path, *texts: str, env: Mapping[str, str] | None = None, stack: str = "shop") -> Stack:
    return load_stack(write(folder, *texts), {} if env is None else env, stack=stack)


def service(stack: Stack, name: str) -> dict:
    return next(s for s in stack.services if s["name"] == name)


def error(folder: Path, *texts: str, env: Mapping[str, str] | None = None) -> str:
    """The ComposeError message that loading ``texts`` raises, file names relative to ``folder``."""
    with pytest.raises(ComposeError) as info:
        load(folder, *texts, env=env)
    return str(info.value).replace(f"{folder}/", "")
