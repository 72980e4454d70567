"""Unit tests of corral.images.reference: Docker's normalisation rules, errors, round trips.

Docker Hub references are only parsed here; nothing is ever dialled.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from corral.images import ImageError, InvalidReference, Reference, parse_reference

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize(("text", "registry", "repository", "tag", "digest"), [
    ("busybox", "docker.io", "library/busybox", "latest", ""),
    ("busybox:1.36", "docker.io", "library/busybox", "1.36", ""),
    ("library/busybox", "docker.io", "library/busybox", "latest", ""),
    ("docker.io/busybox", "docker.io", "library/busybox", "latest", ""),
    ("index.docker.io/library/busybox:1", "docker.io", "library/busybox", "1", ""),
    ("user/app", "docker.io", "user/app", "latest", ""),
    ("user/team/app:v2", "docker.io", "user/team/app", "v2", ""),
    (f"busybox@{D}", "docker.io", "library/busybox", "", D),
    (f"busybox:1@{D}", "docker.io", "library/busybox", "1", D),
    ("127.0.0.1:5000/corral/busybox:1", "127.0.0.1:5000", "corral/busybox", "1", ""),
    (f"127.0.0.1:5000/ns/name:tag@{D}", "127.0.0.1:5000", "ns/name", "tag", D),
    ("localhost/x", "localhost", "x", "latest", ""),
    ("localhost:5000/x:1", "localhost:5000", "x", "1", ""),
    ("registry.example.com/a/b", "registry.example.com", "a/b", "latest", ""),
    ("[::1]:5000/a:1", "[::1]:5000", "a", "1", ""),
    ("Registry/foo", "Registry", "foo", "latest", ""),  # uppercase first part: a host
    ("localhost:5000", "docker.io", "library/localhost", "5000", ""),  # Docker agrees
    ("a.b-c/e--f.g_h__i:T_a.g-1", "a.b-c", "e--f.g_h__i", "T_a.g-1", ""),
    ("a__b/c", "docker.io", "a__b/c", "latest", ""),
])
def test_parse_normalises_like_docker(text: str, registry: str, repository: str, tag: str,
                                      digest: str) -> None:
    ref = parse_reference(text)
    assert ref == Reference(registry, repository, tag, digest)


def test_docker_hub_is_parsed_to_its_api_host_and_familiar_names() -> None:
    ref = parse_reference("busybox")
    assert ref.endpoint == "registry-1.docker.io"
    assert ref.name == "busybox"
    assert ref.familiar() == "busybox:latest"
    assert ref.canonical() == "docker.io/library/busybox:latest"
    assert str(ref) == ref.canonical()
    assert parse_reference("user/app:1").name == "user/app"
    assert parse_reference("library/a/b").name == "library/a/b"  # not an official image
    assert parse_reference("docker.io/a.b/c").name == "docker.io/a.b/c"  # else a.b is a host
    local = parse_reference("127.0.0.1:5000/corral/busybox:1")
    assert local.endpoint == "127.0.0.1:5000"
    assert local.name == "127.0.0.1:5000/corral/busybox"
    assert local.manifest_reference == "1"
    assert parse_reference(f"x:1@{D}").manifest_reference == D


def test_with_digest_gives_what_docker_engine_pulls() -> None:
    assert parse_reference("busybox:1").with_digest(D) == f"docker.io/library/busybox@{D}"
    assert parse_reference("user/app").with_digest(D) == f"docker.io/user/app@{D}"
    assert (parse_reference("127.0.0.1:5000/corral/busybox:1").with_digest(D)
            == f"127.0.0.1:5000/corral/busybox@{D}")
    with pytest.raises(InvalidReference, match="busybox"):
        parse_reference("busybox").with_digest("sha256:abc")


@pytest.mark.parametrize(("text", "why"), [
    ("", "empty"),
    ("Busybox", "lowercase"),
    ("127.0.0.1:5000/Corral/x", "lowercase"),
    ("busybox:", "invalid tag"),
    ("busybox:-x", "invalid tag"),
    ("busybox:" + "a" * 129, "invalid tag"),
    ("busybox:a b", "whitespace"),
    (" busybox", "whitespace"),
    ("busybox@sha256:abc", "64 lowercase hex"),
    ("busybox@sha256:" + "AB" * 32, "64 lowercase hex"),
    ("busybox@md5:" + "ab" * 16, "expected sha256"),
    ("busybox@", "expected sha256"),
    ("ab" * 32, "image ID"),
    ("foo//bar", "invalid repository name"),
    ("foo/", "invalid repository name"),
    ("-foo", "invalid repository name"),
    ("foo_-bar", "invalid repository name"),
    ("host:99999/x", "invalid port"),
    ("ho_st:5000/x", "invalid registry host"),
    (":1", "no repository"),
    ("a/" + "b" * 260, "longer than 255"),
])
def test_malformed_references_name_the_image(text: str, why: str) -> None:
    with pytest.raises(InvalidReference) as info:
        parse_reference(text)
    err = info.value
    assert why in str(err)
    assert repr(text) in str(err)
    assert err.image == text
    assert err.retryable is False
    assert isinstance(err, ImageError) and isinstance(err, ValueError)


# ---------------------------------------------------------------- properties

_component = st.from_regex(r"[a-z0-9]{1,5}(?:(?:[._]|__|-{1,2})[a-z0-9]{1,5}){0,2}",
                           fullmatch=True)
_path = st.lists(_component, min_size=1, max_size=3).map("/".join)
_registry = st.one_of(
    st.just(""),
    st.sampled_from(["docker.io", "index.docker.io", "localhost", "localhost:5000",
                     "127.0.0.1:5000", "[::1]:5000", "registry.example.com",
                     "my-registry.internal:443"]),
)
_tag = st.one_of(st.just(""), st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True))
_digest = st.one_of(st.just(""), st.from_regex(r"sha256:[a-f0-9]{64}", fullmatch=True))


@st.composite
def references(draw: st.DrawFn) -> str:
    registry, path, tag, digest = draw(_registry), draw(_path), draw(_tag), draw(_digest)
    if not registry and "." in path.split("/")[0]:
        path = "x/" + path  # a dotted first component would name a registry
    text = f"{registry}/{path}" if registry else path
    return text + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


@given(references())
def test_canonical_and_familiar_forms_round_trip(text: str) -> None:
    ref = parse_reference(text)
    assert parse_reference(ref.canonical()) == ref
    assert parse_reference(ref.familiar()) == ref
    assert ref.tag or ref.digest


@given(st.text(max_size=40))
def test_arbitrary_text_parses_or_raises_invalid_reference(text: str) -> None:
    try:
        ref = parse_reference(text)
    except InvalidReference as exc:
        assert exc.image == text
    else:
        assert parse_reference(ref.canonical()) == ref
