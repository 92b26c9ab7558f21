"""Log levels kept per client on a shared link (server/shared.py), from a table."""

from __future__ import annotations

import pytest

from mcp_barbican.server.shared import LOG_LEVELS, admits


@pytest.mark.parametrize(
    ("threshold", "level", "delivered"),
    [
        (None, "debug", True),  # a client that asked nothing gets what its own requests cause
        ("info", "info", True),
        ("info", "debug", False),
        ("warning", "error", True),
        ("emergency", "alert", False),
        ("debug", "unknown-level", True),
        ("error", "unknown-level", False),
    ],
)
def test_a_client_gets_lines_at_or_above_its_level(threshold: str | None, level: str, delivered: bool) -> None:
    assert admits(threshold, level) is delivered


def test_levels_are_the_syslog_order() -> None:
    assert LOG_LEVELS[0] == "debug" and LOG_LEVELS[-1] == "emergency" and len(set(LOG_LEVELS)) == 8
