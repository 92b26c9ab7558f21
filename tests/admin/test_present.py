"""How admin answers show times, and read the times callers send (pure functions, from tables)."""

from __future__ import annotations

import pytest

from mcp_barbican.admin.present import compozy_names, instant, iso


@pytest.mark.parametrize(
    ("text", "stored"),
    [
        (None, None),
        ("0", "1970-01-01T00:00:00.000000Z"),
        ("1.5", "1970-01-01T00:00:01.500000Z"),
        ("2026-12-03T10:00:00Z", "2026-12-03T10:00:00.000000Z"),
        ("2026-12-03T12:00:00+02:00", "2026-12-03T10:00:00.000000Z"),
        ("2026-12-03T10:00:00", "2026-12-03T10:00:00.000000Z"),  # no zone: UTC
    ],
)
def test_query_times_become_the_audit_stores_form(text: str | None, stored: str | None) -> None:
    assert instant(text) == stored


@pytest.mark.parametrize("text", ["yesterday", "", "1e400", "2026-13-01T00:00:00Z"])
def test_text_that_is_no_time_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a time"):
        instant(text)


def test_iso_and_compozy_names() -> None:
    assert iso(None) is None and iso(0) == "1970-01-01T00:00:00Z"
    assert compozy_names({"name": "a", "url": "u"}) == {"id": "a", "url": "u"}
    assert compozy_names({"id": "b", "name": "x"}) == {"id": "b", "name": "x"}
