"""How the aggregated endpoint names what it merges, and reads the names back: tables and round trips."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from mcp_barbican.config import McpConfig
from mcp_barbican.server.aggregate.names import (
    MAX_CURSOR,
    decode_cursor,
    encode_cursor,
    prefixed,
    split_name,
    unwrap_uri,
    wrap_uri,
)


@pytest.mark.parametrize(
    ("mcp_id", "name", "joined"),
    [
        ("demo", "echo", "demo__echo"),
        ("my_mcp", "read_file", "my_mcp__read_file"),
        ("my-mcp", "read-file", "my-mcp__read-file"),
        ("0", "x", "0__x"),
        ("demo", "a__b", "demo__a__b"),  # `__` in the upstream's name stays in the name
        ("demo", "_private", "demo___private"),
        ("demo", "trailing_", "demo__trailing_"),
        ("demo", "__", "demo____"),
        ("demo", "ünï cödé/x", "demo__ünï cödé/x"),
    ],
)
def test_a_prefixed_name_splits_back_at_the_first_separator(mcp_id: str, name: str, joined: str) -> None:
    assert prefixed(mcp_id, name) == joined
    assert split_name(joined) == (mcp_id, name)


@pytest.mark.parametrize(
    "name",
    [
        "echo",  # no prefix
        "demo_echo",  # one underscore is no separator
        "__echo",  # empty MCP id
        "demo__",  # empty name
        "__",
        "",
        None,
        42,
        b"demo__echo",
        ["demo", "echo"],
        {"demo": "echo"},
    ],
)
def test_what_is_not_a_prefixed_name_routes_nowhere(name: object) -> None:
    assert split_name(name) is None


def _valid_id(value: str) -> bool:
    try:
        McpConfig.model_validate({"id": value, "command": "true"})
    except ValueError:
        return False
    return True


@given(st.from_regex(r"[a-z0-9][a-z0-9_-]{0,20}", fullmatch=True), st.text(min_size=1, max_size=20))
@example("a_", "x")  # an id ending in `_`: `a___x` would split as ("a", "_x")
@example("a", "_x")
@example("a-", "-x")
def test_every_id_the_config_accepts_round_trips_with_any_name(mcp_id: str, name: str) -> None:
    if _valid_id(mcp_id):
        assert split_name(prefixed(mcp_id, name)) == (mcp_id, name)


@pytest.mark.parametrize("mcp_id", ["a_", "my_mcp_", "a__b"])
def test_the_config_refuses_ids_whose_names_would_split_ambiguously(mcp_id: str) -> None:
    assert not _valid_id(mcp_id)


@pytest.mark.parametrize(
    ("mcp_id", "uri"),
    [
        ("demo", "file:///tmp/a.txt"),
        ("demo", "demo://resource/1"),
        ("my_mcp-2", "https://example.com/a/b?x=1&y=%2F#frag"),
        ("demo", "file:///{path}"),  # a template: variables expand after the prefix as the upstream defined them
        ("demo", "users://{id}/posts{?page,limit}"),
        ("demo", "{+base}/x"),
        ("demo", "a%2Fb"),
        ("demo", "/absolute/path"),
        ("demo", "//authority-only"),
        ("demo", "mcp-barbican://other/nested"),  # an upstream's own URI in our scheme: unwrapped once
        ("demo", "no-scheme"),
    ],
)
def test_a_wrapped_uri_unwraps_to_the_original(mcp_id: str, uri: str) -> None:
    wrapped = wrap_uri(mcp_id, uri)
    assert wrapped == f"mcp-barbican://{mcp_id}/{uri}"
    assert unwrap_uri(wrapped) == (mcp_id, uri)


def test_an_expanded_template_unwraps_to_what_the_upstreams_template_expands_to() -> None:
    template = wrap_uri("demo", "file:///{path}")
    expanded = template.replace("{path}", "etc%2Fhosts")
    assert unwrap_uri(expanded) == ("demo", "file:///etc%2Fhosts")


@pytest.mark.parametrize(
    "uri",
    [
        "mcp-barbican://demo",  # no slash after the id
        "mcp-barbican://demo/",  # nothing after it
        "mcp-barbican:///file:///x",  # empty id
        "mcp-barbican:/demo/x",
        "MCP-BARBICAN://demo/x",
        "file:///tmp/a.txt",
        "demo__echo",
        "",
        None,
        7,
        b"mcp-barbican://demo/x",
    ],
)
def test_what_is_not_a_wrapped_uri_routes_nowhere(uri: object) -> None:
    assert unwrap_uri(uri) is None


@pytest.mark.parametrize(
    "cursors",
    [
        {"demo": "page-2"},
        {"a": "1", "b": "eyJvZmZzZXQiOjEwfQ==", "c_d-e": ""},
        {"demo": 'ünïcödé ✓ with "quotes" and \\ and /'},
        {"demo": "x" * 4000},
    ],
)
def test_a_cursor_round_trips(cursors: dict[str, str]) -> None:
    encoded = encode_cursor(cursors)
    assert isinstance(encoded, str) and encoded.isascii()
    assert decode_cursor(encoded) == cursors


def test_no_more_pages_is_no_cursor() -> None:
    assert encode_cursor({}) is None


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode("ascii")


@pytest.mark.parametrize(
    "cursor",
    [
        pytest.param(None, id="none"),
        pytest.param(12, id="int"),
        pytest.param(["a"], id="list"),
        pytest.param({"demo": "1"}, id="a-dict-not-encoded"),
        pytest.param(b"eyJhIjoiMSJ9", id="bytes"),
        pytest.param("", id="empty"),
        pytest.param("not base64 at all!", id="garbage"),
        pytest.param("é", id="non-ascii"),
        pytest.param("abc", id="bad-padding"),
        pytest.param(_b64(b"\xff\xfe\x00"), id="not-utf8"),
        pytest.param(_b64(b"not json"), id="not-json"),
        pytest.param(_b64(b'"a string"'), id="json-string"),
        pytest.param(_b64(b'["demo", "1"]'), id="json-list"),
        pytest.param(_b64(b"{}"), id="empty-map"),
        pytest.param(_b64(b'{"demo": 1}'), id="non-string-value"),
        pytest.param(_b64(b'{"demo": null}'), id="null-value"),
        pytest.param(_b64(b'{"demo": {"nested": "1"}}'), id="nested-value"),
        pytest.param(_b64(b'{"demo": NaN}'), id="nan"),
        pytest.param(_b64(b"[" * 9000), id="deeply-nested"),
        pytest.param(_b64(b'{"demo": "' + b"x" * 13_000 + b'"}'), id="oversized"),
    ],
)
def test_a_cursor_that_is_not_ours_is_refused(cursor: Any) -> None:
    assert decode_cursor(cursor) is None


def test_the_longest_accepted_cursor_is_max_cursor() -> None:
    def of_length(n: int) -> str:
        # base64 of {"d": "xxx..."}: 4 characters per 3 bytes
        return _b64(json.dumps({"d": "x" * (n * 3 // 4 - 9)}).encode())

    at_limit = of_length(MAX_CURSOR)
    assert len(at_limit) == MAX_CURSOR
    assert decode_cursor(at_limit) is not None
    over = of_length(MAX_CURSOR + 4)
    assert len(over) == MAX_CURSOR + 4
    assert decode_cursor(over) is None
