"""What the aggregated endpoint changes in the messages it relays: routes up, names and URIs down."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from mcp_barbican.server.aggregate.rewrite import LISTED, rewrite_notification, rewrite_result, route

W = "mcp-barbican://"


@pytest.mark.parametrize(
    ("method", "params", "routed"),
    [
        (
            "tools/call",
            {"name": "demo__echo", "arguments": {"message": "hi"}, "_meta": {"progressToken": 1}},
            ("demo", {"name": "echo", "arguments": {"message": "hi"}, "_meta": {"progressToken": 1}}),
        ),
        ("tools/call", {"name": "my_mcp__a__b"}, ("my_mcp", {"name": "a__b"})),
        (
            "prompts/get",
            {"name": "demo__greet", "arguments": {"who": "x"}},
            ("demo", {"name": "greet", "arguments": {"who": "x"}}),
        ),
        ("resources/read", {"uri": W + "demo/file:///a.txt"}, ("demo", {"uri": "file:///a.txt"})),
        ("resources/subscribe", {"uri": W + "d-1/demo://r/1"}, ("d-1", {"uri": "demo://r/1"})),
        ("resources/unsubscribe", {"uri": W + "d_1/x%2Fy?q=1#f"}, ("d_1", {"uri": "x%2Fy?q=1#f"})),
        (
            "completion/complete",
            {"ref": {"type": "ref/prompt", "name": "demo__greet"}, "argument": {"name": "who", "value": "a"}},
            ("demo", {"ref": {"type": "ref/prompt", "name": "greet"}, "argument": {"name": "who", "value": "a"}}),
        ),
        (
            "completion/complete",
            {"ref": {"type": "ref/resource", "uri": W + "demo/file:///{path}"}, "argument": {"name": "path"}},
            ("demo", {"ref": {"type": "ref/resource", "uri": "file:///{path}"}, "argument": {"name": "path"}}),
        ),
    ],
)
def test_a_routed_request_goes_to_its_mcp_with_the_upstreams_name(
    method: str, params: dict[str, Any], routed: tuple[str, dict[str, Any]]
) -> None:
    before = copy.deepcopy(params)
    assert route(method, params) == routed
    assert params == before, "the caller's message is left as it came"


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("tools/call", {"name": "echo"}),  # no prefix
        ("tools/call", {"name": "__echo"}),
        ("tools/call", {"name": 3}),
        ("tools/call", {}),
        ("tools/call", None),
        ("tools/call", ["demo__echo"]),
        ("tools/call", {"uri": W + "demo/x"}),  # a tool is named, not a URI
        ("prompts/get", {"name": "greet"}),
        ("resources/read", {"uri": "file:///a.txt"}),  # not wrapped
        ("resources/read", {"uri": "demo__file"}),  # a name where a URI belongs
        ("resources/read", {"uri": W + "demo"}),
        ("resources/subscribe", {"name": "demo__x"}),
        ("completion/complete", {"ref": {"type": "ref/prompt", "name": "greet"}}),
        ("completion/complete", {"ref": {"type": "ref/prompt", "uri": W + "demo/x"}}),
        ("completion/complete", {"ref": {"type": "ref/resource", "uri": "file:///x"}}),
        ("completion/complete", {"ref": {"type": "ref/tool", "name": "demo__echo"}}),
        ("completion/complete", {"ref": "demo__greet"}),
        ("completion/complete", {}),
        ("tools/list", {"name": "demo__echo"}),  # not a routed method
        ("ping", {"name": "demo__echo"}),
        ("sampling/createMessage", {"name": "demo__echo"}),
    ],
)
def test_a_request_naming_no_mcp_of_ours_routes_nowhere(method: str, params: Any) -> None:
    assert route(method, params) is None


def test_routing_a_completion_leaves_the_callers_ref_alone() -> None:
    ref = {"type": "ref/prompt", "name": "demo__greet"}
    params = {"ref": ref, "argument": {"name": "who", "value": ""}}
    routed = route("completion/complete", params)
    assert routed is not None
    routed[1]["ref"]["name"] = "changed"
    assert ref == {"type": "ref/prompt", "name": "demo__greet"}


@pytest.mark.parametrize(
    ("method", "result", "rewritten"),
    [
        (
            "tools/list",
            {"tools": [{"name": "echo", "inputSchema": {}}, {"name": "a__b"}], "nextCursor": "2"},
            {"tools": [{"name": "demo__echo", "inputSchema": {}}, {"name": "demo__a__b"}], "nextCursor": "2"},
        ),
        (
            "prompts/list",
            {"prompts": [{"name": "greet", "arguments": [{"name": "who"}]}]},
            {"prompts": [{"name": "demo__greet", "arguments": [{"name": "who"}]}]},
        ),
        (
            "resources/list",
            {"resources": [{"uri": "file:///a.txt", "name": "a"}]},
            {"resources": [{"uri": W + "demo/file:///a.txt", "name": "a"}]},  # a resource's name is no route
        ),
        (
            "resources/templates/list",
            {"resourceTemplates": [{"uriTemplate": "file:///{path}", "name": "files"}]},
            {"resourceTemplates": [{"uriTemplate": W + "demo/file:///{path}", "name": "files"}]},
        ),
        ("tools/list", {"tools": []}, {"tools": []}),
    ],
)
def test_a_listing_gives_every_entry_its_mcp(method: str, result: dict[str, Any], rewritten: dict[str, Any]) -> None:
    assert rewrite_result("demo", method, result) is True
    assert result == rewritten


@pytest.mark.parametrize(("method", "keys"), list(LISTED.items()))
def test_listed_entries_without_their_name_are_left_out(method: str, keys: tuple[str, str]) -> None:
    list_key, name_key = keys
    good = {name_key: "kept", "description": "x"}
    entries: list[Any] = [
        good,
        {"description": "no name"},
        {name_key: None},
        {name_key: 3},
        "not an entry",
        None,
        [name_key],
    ]
    result = {list_key: entries}
    rewrite_result("demo", method, result)
    assert [entry[name_key] for entry in result[list_key]] == [
        W + "demo/kept" if "uri" in name_key.lower() else "demo__kept"
    ]


@pytest.mark.parametrize("method", list(LISTED))
@pytest.mark.parametrize(
    "result", [{}, {"tools": None, "prompts": "x", "resources": {}, "resourceTemplates": 1}, None, []]
)
def test_a_listing_without_a_list_is_left_as_it_came(method: str, result: Any) -> None:
    before = copy.deepcopy(result)
    assert rewrite_result("demo", method, result) is False
    assert result == before


def test_resource_contents_carry_their_mcp() -> None:
    result = {
        "contents": [
            {"uri": "file:///a.txt", "text": "a"},
            {"uri": "file:///b.bin", "blob": "AA=="},
            {"text": "no uri"},
            "odd",
        ]
    }
    assert rewrite_result("demo", "resources/read", result) is True
    assert result["contents"] == [
        {"uri": W + "demo/file:///a.txt", "text": "a"},
        {"uri": W + "demo/file:///b.bin", "blob": "AA=="},
        {"text": "no uri"},
        "odd",
    ]


def test_links_and_embedded_resources_in_a_tool_result_carry_their_mcp() -> None:
    result = {
        "content": [
            {"type": "text", "text": "see file:///a.txt", "uri": "file:///not-a-link"},
            {"type": "resource_link", "uri": "file:///a.txt", "name": "a"},
            {"type": "resource", "resource": {"uri": "file:///b.txt", "text": "b"}},
            {"type": "image", "data": "AA==", "mimeType": "image/png"},
            {"type": "resource", "resource": "odd"},
            {"type": "resource_link"},
        ],
        "structuredContent": {"uri": "file:///left-alone"},
        "isError": False,
    }
    assert rewrite_result("demo", "tools/call", result) is True
    assert result == {
        "content": [
            {"type": "text", "text": "see file:///a.txt", "uri": "file:///not-a-link"},
            {"type": "resource_link", "uri": W + "demo/file:///a.txt", "name": "a"},
            {"type": "resource", "resource": {"uri": W + "demo/file:///b.txt", "text": "b"}},
            {"type": "image", "data": "AA==", "mimeType": "image/png"},
            {"type": "resource", "resource": "odd"},
            {"type": "resource_link"},
        ],
        "structuredContent": {"uri": "file:///left-alone"},
        "isError": False,
    }


@pytest.mark.parametrize(
    "result",
    [
        {"content": [{"type": "text", "text": "plain"}]},
        {"content": []},
        {"content": "odd"},
        {},
    ],
)
def test_a_tool_result_without_resources_is_unchanged(result: dict[str, Any]) -> None:
    before = copy.deepcopy(result)
    assert rewrite_result("demo", "tools/call", result) is False
    assert result == before


def test_prompt_messages_carry_their_mcp() -> None:
    result: dict[str, Any] = {
        "description": "d",
        "messages": [
            {"role": "user", "content": {"type": "text", "text": "hi"}},
            {"role": "user", "content": {"type": "resource", "resource": {"uri": "file:///a.txt", "text": "a"}}},
            {"role": "assistant", "content": {"type": "resource_link", "uri": "demo://r/1", "name": "r"}},
            "odd",
            {"role": "user"},
        ],
    }
    assert rewrite_result("demo", "prompts/get", result) is True
    assert [m["content"] for m in result["messages"][:3]] == [
        {"type": "text", "text": "hi"},
        {"type": "resource", "resource": {"uri": W + "demo/file:///a.txt", "text": "a"}},
        {"type": "resource_link", "uri": W + "demo/demo://r/1", "name": "r"},
    ]
    assert result["messages"][3:] == ["odd", {"role": "user"}]


@pytest.mark.parametrize(
    ("method", "result"),
    [
        ("prompts/get", {"messages": [{"role": "user", "content": {"type": "text", "text": "hi"}}]}),
        ("prompts/get", {"messages": "odd"}),
        ("completion/complete", {"completion": {"values": ["file:///a"]}}),
        ("resources/read", {"contents": "odd"}),
        ("initialize", {"capabilities": {}}),
        ("ping", {}),
        ("tools/call", "not a dict"),
    ],
)
def test_other_results_are_left_as_they_came(method: str, result: Any) -> None:
    before = copy.deepcopy(result)
    assert rewrite_result("demo", method, result) is False
    assert result == before


@pytest.mark.parametrize(
    ("method", "params", "rewritten"),
    [
        ("notifications/resources/updated", {"uri": "file:///a.txt"}, {"uri": W + "demo/file:///a.txt"}),
        ("notifications/resources/updated", {"uri": 3}, {"uri": 3}),
        ("notifications/resources/updated", {}, {}),
        (
            "notifications/message",
            {"level": "info", "data": "x", "logger": "db"},
            {"level": "info", "data": "x", "logger": "demo__db"},
        ),
        ("notifications/message", {"level": "info", "data": "x"}, {"level": "info", "data": "x", "logger": "demo"}),
        (
            "notifications/message",
            {"level": "info", "data": "x", "logger": ""},
            {"level": "info", "data": "x", "logger": "demo"},
        ),
        (
            "notifications/message",
            {"level": "info", "data": "x", "logger": 5},
            {"level": "info", "data": "x", "logger": "demo"},
        ),
        (
            "notifications/progress",
            {"progressToken": "file:///a", "progress": 1},
            {"progressToken": "file:///a", "progress": 1},
        ),
        ("notifications/tools/list_changed", {}, {}),
    ],
)
def test_a_notification_carries_its_mcp(method: str, params: dict[str, Any], rewritten: dict[str, Any]) -> None:
    rewrite_notification("demo", method, params)
    assert params == rewritten


@pytest.mark.parametrize("params", [None, [], "x"])
def test_a_notification_without_params_is_left_alone(params: Any) -> None:
    rewrite_notification("demo", "notifications/message", params)
    rewrite_notification("demo", "notifications/resources/updated", params)
