"""JSON-RPC helpers: parsing and serializing keep every value exact."""

from __future__ import annotations

import pytest

from mcp_barbican import jsonrpc


@pytest.mark.parametrize(
    "text",
    [b'{"id":123456789012345678901234567890}', b'{"n":-99999999999999999999,"s":"x"}', b'{"id":7,"ok":true}'],
)
def test_json_round_trips_keep_big_integers_exact(text: bytes) -> None:
    assert jsonrpc.dumps(jsonrpc.loads(text)) == text
