"""CORS on the aggregated endpoint is the server's (`server.security.cors`): `/mcp` is the server's route.

Each MCP's own CORS still decides for the messages bound for it (they pass its pipeline).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Final

import httpx2
import pytest

from tests.proxy import AUTH_HEADER, RunningProxy, demo_mcp, run_proxy
from tests.server.test_endpoint import INIT

pytestmark = pytest.mark.e2e

APP: Final = "https://app.example.com"
MCP_HEADERS: Final = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    security = {"auth_failure_ban": {"enabled": False}, "cors": {"enabled": True, "allowed_origins": [APP]}}
    with run_proxy(tmp_path_factory.mktemp("cors"), [demo_mcp("demo")], server={"security": security}) as running:
        yield running


def preflight(proxy: RunningProxy, origin: str) -> httpx2.Response:
    headers = {"Origin": origin, "Access-Control-Request-Method": "POST"}
    headers["Access-Control-Request-Headers"] = "authorization, content-type"
    return httpx2.options(f"{proxy.base}/mcp", headers=headers, timeout=10)


def test_a_preflight_from_an_allowed_origin_is_answered(proxy: RunningProxy) -> None:
    answer = preflight(proxy, APP)
    assert answer.status_code == 204
    assert answer.headers["access-control-allow-origin"] == APP


def test_a_look_alike_origin_is_refused(proxy: RunningProxy) -> None:
    for origin in ("https://app.example.com.evil.test", "https://evil-app.example.com", "http://app.example.com"):
        assert preflight(proxy, origin).status_code == 403, origin
        post = httpx2.post(
            f"{proxy.base}/mcp", json=INIT, headers={**MCP_HEADERS, **AUTH_HEADER, "Origin": origin}, timeout=10
        )
        assert post.status_code == 403, origin


def test_a_request_from_an_allowed_origin_gets_its_cors_headers(proxy: RunningProxy) -> None:
    answer = httpx2.post(
        f"{proxy.base}/mcp", json=INIT, headers={**MCP_HEADERS, **AUTH_HEADER, "Origin": APP}, timeout=10
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["access-control-allow-origin"] == APP
    assert "mcp-session-id" in answer.headers["access-control-expose-headers"].lower()


def test_without_server_cors_a_browser_origin_is_refused_on_the_aggregate(tmp_path: Path) -> None:
    """An MCP's own CORS covers `/mcp/{id}`; `/mcp` follows the server's, which here admits no origin."""
    own = {"cors": {"enabled": True, "allowed_origins": [APP]}}
    with run_proxy(tmp_path, [demo_mcp("demo", security=own)]) as proxy:
        assert (
            httpx2.options(
                proxy.url("demo"), headers={"Origin": APP, "Access-Control-Request-Method": "POST"}, timeout=10
            ).status_code
            == 204
        )
        assert preflight(proxy, APP).status_code == 403
