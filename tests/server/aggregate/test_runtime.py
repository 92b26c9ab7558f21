"""What the aggregated endpoint declares: the union of the reached MCPs' capabilities."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from mcp_barbican.server.aggregate.runtime import union_capabilities

LISTS = {"listChanged": True}


@pytest.mark.parametrize(
    ("declared", "union"),
    [
        pytest.param([], {"tools": LISTS}, id="nothing-reached-still-tools"),
        pytest.param([{}], {"tools": LISTS}, id="an-mcp-without-capabilities"),
        pytest.param([{"tools": {}}], {"tools": LISTS}, id="list-changed-always"),
        pytest.param([{"tools": {"listChanged": False}}], {"tools": LISTS}, id="list-changed-even-if-one-says-no"),
        pytest.param(
            [{"prompts": {}}, {"resources": {}}],
            {"tools": LISTS, "prompts": LISTS, "resources": LISTS},
            id="every-list-any-mcp-has",
        ),
        pytest.param(
            [{"resources": {"subscribe": True}}],
            {"tools": LISTS, "resources": {"listChanged": True, "subscribe": True}},
            id="subscribe",
        ),
        pytest.param(
            [{"resources": {"subscribe": True}}, {"resources": {"listChanged": True}}],
            {"tools": LISTS, "resources": {"listChanged": True, "subscribe": True}},
            id="subscribe-kept-when-a-later-mcp-lacks-it",
        ),
        pytest.param(
            [{"resources": {}}, {"resources": {"subscribe": True}}],
            {"tools": LISTS, "resources": {"listChanged": True, "subscribe": True}},
            id="subscribe-from-a-later-mcp",
        ),
        pytest.param([{"resources": {"subscribe": False}}], {"tools": LISTS, "resources": LISTS}, id="subscribe-false"),
        pytest.param(
            [{"logging": {}}, {"completions": {"x": 1}}],
            {"tools": LISTS, "logging": {}, "completions": {}},
            id="logging-and-completions",
        ),
        pytest.param(
            [{"experimental": {"x": {}}, "tasks": {}, "sampling": {}}],
            {"tools": LISTS},
            id="nothing-else",
        ),
        pytest.param(
            [{"tools": {}, "prompts": {}, "resources": {"subscribe": True}, "logging": {}, "completions": {}}] * 3,
            {
                "tools": LISTS,
                "prompts": LISTS,
                "resources": {"listChanged": True, "subscribe": True},
                "logging": {},
                "completions": {},
            },
            id="everything-from-many",
        ),
    ],
)
def test_the_aggregated_capabilities_are_the_union(declared: list[dict[str, Any]], union: dict[str, Any]) -> None:
    before = copy.deepcopy(declared)
    assert union_capabilities(declared) == union
    assert declared == before, "the MCPs' probed capabilities are left as they are"
