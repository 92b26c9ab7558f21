"""Token endpoint answers (RFC 8693 section 2.2) and what the proxy makes of each."""

from __future__ import annotations

import orjson
import pytest

from mcp_barbican.upstream.exchange import DEFAULT_LIFETIME, ExchangeFailed, _parse

OK = {"access_token": "tok", "token_type": "Bearer", "expires_in": 60}

ANSWERS = [
    pytest.param(200, OK, ("tok", 60.0), id="issued"),
    pytest.param(200, {"access_token": "tok", "token_type": "bearer"}, ("tok", DEFAULT_LIFETIME), id="no-expiry"),
    pytest.param(200, {"access_token": "tok"}, ("tok", DEFAULT_LIFETIME), id="no-token-type"),
    pytest.param(200, {**OK, "token_type": "N_A"}, "not a bearer token", id="not-bearer"),
    pytest.param(200, {**OK, "access_token": "a b"}, "no usable access_token", id="token-with-space"),
    pytest.param(200, {**OK, "access_token": "a\r\nX: y"}, "no usable access_token", id="token-with-crlf"),
    pytest.param(200, {"token_type": "Bearer"}, "no usable access_token", id="no-token"),
    pytest.param(200, {**OK, "expires_in": 0}, "invalid expires_in", id="zero-expiry"),
    pytest.param(200, {**OK, "expires_in": "60"}, "invalid expires_in", id="string-expiry"),
    pytest.param(400, {"error": "invalid_grant", "error_description": "bad tok-123"}, "invalid_grant)", id="refused"),
    pytest.param(500, None, "without a JSON object", id="not-json"),
]


@pytest.mark.parametrize(("status", "answer", "expected"), ANSWERS)
def test_token_endpoint_answers(status: int, answer: object, expected: tuple[str, float] | str) -> None:
    body = orjson.dumps(answer) if answer is not None else b"<html>oops</html>"
    if isinstance(expected, tuple):
        assert _parse(status, body) == expected
        return
    with pytest.raises(ExchangeFailed) as caught:
        _parse(status, body)
    assert expected in str(caught.value)
    assert caught.value.status == 502
    assert "tok-123" not in str(caught.value)  # an error_description never reaches the client or the log
