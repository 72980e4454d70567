"""Interpolation ($VAR, ${VAR:-x}, ...), the .env file and env_file, as docker compose does them."""

from __future__ import annotations

import pytest

from corral.compose import ComposeError
from corral.compose.dotenv import parse_dotenv
from corral.compose.errors import Invalid
from corral.compose.errors import Problems
from corral.compose.interpolation import interpolate, substitute
from tests.unit.test_compose_support import error, load, service

VARS = {"SET": "value", "EMPTY": ""}


def sub(text: str, variables: dict[str, str] | None = None) -> tuple[str, list[str]]:
    missing: list[str] = []
    return substitute(text, (VARS if variables is None else variables).get, missing.append), missing


@pytest.mark.parametrize(("text", "expected"), [
    ("$SET", "value"), ("${SET}", "value"), ("pre-${SET}-post", "pre-value-post"), ("$SET.x", "value.x"),
    ("${SET:-d}", "value"), ("${EMPTY:-d}", "d"), ("${UNSET:-d}", "d"),
    ("${SET-d}", "value"), ("${EMPTY-d}", ""), ("${UNSET-d}", "d"),
    ("${SET:+alt}", "alt"), ("${EMPTY:+alt}", ""), ("${UNSET:+alt}", ""),
    ("${SET+alt}", "alt"), ("${EMPTY+alt}", "alt"), ("${UNSET+alt}", ""),
    ("${SET:?boom}", "value"), ("${EMPTY?boom}", ""),
    ("$$SET", "$SET"), ("$${SET}", "${SET}"), ("cost: $$5", "cost: $5"), ("$5 and $", "$5 and $"),
    ("${UNSET:-${SET}}", "value"), ("${UNSET:-${ALSO:-deep}}", "deep"), ("${UNSET:-a}b}", "ab}"),
    ("${UNSET:-$$}", "$"), ("${lower:-x}", "x"),
])
def test_substitution_forms(text: str, expected: str) -> None:
    assert sub(text)[0] == expected


def test_an_unset_variable_is_empty_and_reported() -> None:
    assert sub("a${UNSET}b$ALSO") == ("ab", ["UNSET", "ALSO"])
    assert sub("${UNSET:-x}")[1] == []  # a default is not a miss


@pytest.mark.parametrize(("text", "message"), [
    ("${UNSET:?give UNSET}", "required variable UNSET is missing a value: give UNSET"),
    ("${EMPTY:?}", "required variable EMPTY is missing a value"),
    ("${UNSET?no}", "required variable UNSET is missing a value: no"),
    ("${}", "invalid interpolation format"),
    ("${SET", "invalid interpolation format"),
    ("${SET:x}", "invalid interpolation format"),
    ("${1A}", "invalid interpolation format"),
])
def test_substitution_errors(text: str, message: str) -> None:
    with pytest.raises(Invalid, match="^" + message.replace("$", r"\$")):
        sub(text)


def test_interpolation_happens_before_validation_and_in_values_only(tmp_path) -> None:
    stack = load(tmp_path, """
        services:
          web:
            image: "nginx:${TAG:-1.25}"
            environment: {KEY: "${VALUE}"}
            deploy: {replicas: "${N:-2}"}
        """, env={"VALUE": "v", "N": "4"})
    web = service(stack, "web")
    assert web["image"] == "nginx:1.25" and web["replicas"] == 4 and web["env"] == {"KEY": "v"}
    problems = Problems(lambda _path: "f.yaml")
    assert interpolate({"$K": ["$V", 1, None]}, {"K": "k", "V": "v"}, problems) == {"$K": ["v", 1, None]}


def test_missing_variable_warns_once_naming_file_and_places(tmp_path) -> None:
    stack = load(tmp_path, """
        services:
          web: {image: "nginx:1$TAG", labels: {a: "$TAG"}}
        """)
    assert service(stack, "web")["image"] == "nginx:1"
    [warning] = [w for w in stack.warnings if "TAG" in w]
    assert warning.endswith("compose.yaml: variable TAG is not set (used at services.web.image, "
                            "services.web.labels.a); an empty string was substituted")


def test_required_variable_error_names_file_and_key(tmp_path) -> None:
    message = error(tmp_path, """
        services:
          web: {image: "${IMAGE:?set IMAGE to the image to run}"}
        """)
    assert message.endswith("compose.yaml: services.web.image: required variable IMAGE is missing a "
                            "value: set IMAGE to the image to run")


def test_dotenv_next_to_the_first_file_is_overridden_by_the_environment(tmp_path) -> None:
    (tmp_path / ".env").write_text("TAG=from-dotenv\nREPLICAS=3\nDERIVED=${TAG}-x\n")
    stack = load(tmp_path, """
        services:
          web:
            image: "nginx:$TAG"
            deploy: {replicas: $REPLICAS}
            environment: [DERIVED, FROM_ENV]
        """, env={"TAG": "from-env", "FROM_ENV": "e"})
    web = service(stack, "web")
    assert web["image"] == "nginx:from-env" and web["replicas"] == 3
    # .env values interpolate from the environment first, as docker compose does
    assert web["env"] == {"DERIVED": "from-env-x", "FROM_ENV": "e"}


def test_dotenv_syntax() -> None:
    text = (
        "# comment\n"
        "export A=1\n"
        "B = two words  # a comment\n"
        "C='single $A # not a comment'\n"
        'D="double $A\\nnext \\"q\\" \\$A"\n'
        'E="spans\nlines"\n'
        "F=\n"
        "G\n"
        "H=a#b\n"
    )
    warnings: list[str] = []
    values = parse_dotenv(text, "x.env", {}.get, warnings.append)
    assert values == {"A": "1", "B": "two words", "C": "single $A # not a comment",
                      "D": 'double 1\nnext "q" $A', "E": "spans\nlines", "F": "", "G": None, "H": "a#b"}
    assert warnings == []


@pytest.mark.parametrize(("text", "message"), [
    ("A='open\n", "x.env: line 1: the value of A has no closing '"),
    ("OK=1\n=3\n", "x.env: line 2: expected KEY=VALUE"),
    ("A B\n", "x.env: line 1: expected '=' after A"),
    ("A=${B:?need B}\n", "x.env: line 1: required variable B is missing a value: need B"),
    ("A='x' y\n", "x.env: line 1: unexpected text after the quoted value of A"),
])
def test_dotenv_errors_name_file_and_line(text: str, message: str) -> None:
    with pytest.raises(ComposeError, match="^" + message.replace("$", r"\$").replace("?", r"\?")):
        parse_dotenv(text, "x.env", {}.get, lambda _w: None)


def test_env_file_relative_to_the_project_and_environment_wins(tmp_path) -> None:
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "web.env").write_text("A=from-file\nB=from-file\nC=${OUTER:-d}\nD\n")
    stack = load(tmp_path, """
        services:
          web:
            image: nginx
            env_file: [conf/web.env, {path: missing.env, required: false}]
            environment: {B: from-environment}
        """, env={"OUTER": "o", "D": "from-shell"})
    assert service(stack, "web")["env"] == {"A": "from-file", "B": "from-environment", "C": "o",
                                            "D": "from-shell"}


def test_environment_entry_without_value_comes_from_the_shell_or_is_left_out(tmp_path) -> None:
    stack = load(tmp_path, """
        services:
          web: {image: nginx, environment: [FROM_SHELL, NOWHERE, "EMPTY="]}
        """, env={"FROM_SHELL": "yes"})
    assert service(stack, "web")["env"] == {"FROM_SHELL": "yes", "EMPTY": ""}
    assert ("services.web.environment.NOWHERE has no value and is not set in the environment; "
            "it was left out") in stack.warnings
