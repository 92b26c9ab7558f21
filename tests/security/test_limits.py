"""Input-limit decisions, from a table."""

from __future__ import annotations

from typing import Any

import pytest

from mcp_barbican.security.limits import header_bytes, json_violation


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"a": value}
    return value


@pytest.mark.parametrize(
    ("value", "max_depth", "max_string", "problem"),
    [
        pytest.param(nested(4), 4, None, None, id="depth-at-limit"),
        pytest.param({"a": nested(4)}, 4, None, "deeper than 4", id="depth-over"),
        pytest.param([[[[1]]]], 3, None, "deeper than 3", id="lists-count"),
        pytest.param([[[1]]], 3, None, None, id="lists-at-limit"),
        pytest.param({"s": "x" * 10}, 8, 10, None, id="string-at-limit"),
        pytest.param({"s": ["x" * 11]}, 8, 10, "longer than 10", id="string-over"),
        pytest.param({"k" * 11: 1}, 8, 10, "key is longer than 10", id="key-over"),
        pytest.param({"s": "x" * 100_000}, 8, None, None, id="no-string-limit"),
        pytest.param(nested(100_000), 64, None, "deeper than 64", id="no-recursion-error"),
    ],
)
def test_json_limits(value: Any, max_depth: int, max_string: int | None, problem: str | None) -> None:
    found = json_violation(value, max_depth=max_depth, max_string=max_string)
    assert (found is None) == (problem is None)
    if problem is not None:
        assert found is not None and problem in found


def test_header_bytes_counts_names_values_and_separators() -> None:
    assert header_bytes([(b"host", b"a"), (b"x", b"yz")]) == (4 + 1 + 4) + (1 + 2 + 4)
