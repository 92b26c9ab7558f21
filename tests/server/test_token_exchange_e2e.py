"""upstream_auth token_exchange through a running proxy, against a minimal RFC 8693 endpoint started here."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from typing import Any

import httpx2
import pytest
from aiohttp import web

from tests.proxy import RunningProxy, free_port, run_proxy
from tests.server.test_auth_e2e import RecordingUpstream
from tests.server.test_endpoint import INIT, MCP_HEADERS

pytestmark = pytest.mark.e2e

ALICE, BOB = "alice-token-0123456789", "bob-token-0123456789"
CAROL, DAVE = "carol-token-0123456789", "dave-token-0123456789"  # carol's tokens are short-lived; dave is refused
SECRET = "proxy-client-secret-42"
SHORT_LIFETIME = 3
LIST = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
GRANT = "urn:ietf:params:oauth:grant-type:token-exchange"


class TokenEndpoint(RecordingUpstream):
    """An RFC 8693 token endpoint: checks the client and the grant, issues `exchanged-{subject}-{n}`."""

    def __init__(self) -> None:
        super().__init__()
        self.url = f"http://127.0.0.1:{self.port}/token"
        self.forms: list[dict[str, str]] = []

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/token", self.token)

    async def token(self, request: web.Request) -> web.StreamResponse:
        form = {key: str(value) for key, value in (await request.post()).items()}
        self.forms.append(form)
        expected = "Basic " + base64.b64encode(f"barbican:{SECRET}".encode()).decode()
        if request.headers.get("Authorization") != expected:
            return web.json_response({"error": "invalid_client"}, status=401)
        subject = form.get("subject_token", "")
        if form.get("grant_type") != GRANT or form.get("audience") != "https://upstream.example" or subject == DAVE:
            return web.json_response({"error": "invalid_grant", "error_description": f"refused {subject}"}, status=400)
        number = sum(1 for f in self.forms if f.get("subject_token") == subject)
        body: dict[str, Any] = {
            "access_token": f"exchanged-{subject.split('-')[0]}-{number}",
            "issued_token_type": "urn:ietf:params:oauth:token-type:access_token",
            "token_type": "Bearer",
            "expires_in": SHORT_LIFETIME if subject == CAROL else 3600,
        }
        return web.json_response(body)

    def hits(self, subject: str) -> int:
        return sum(1 for form in self.forms if form.get("subject_token") == subject)


@pytest.fixture(scope="module")
def endpoint() -> Iterator[TokenEndpoint]:
    server = TokenEndpoint()
    with server.serve():
        yield server


@pytest.fixture(scope="module")
def upstream() -> Iterator[RecordingUpstream]:
    server = RecordingUpstream()
    with server.serve():
        yield server


def exchange(url: str) -> dict[str, Any]:
    config = {"token_endpoint": url, "client_id": "barbican", "client_secret": SECRET}
    return {"type": "token_exchange", "token_exchange": {**config, "audience": "https://upstream.example"}}


@pytest.fixture(scope="module")
def proxy(
    tmp_path_factory: pytest.TempPathFactory, endpoint: TokenEndpoint, upstream: RecordingUpstream
) -> Iterator[RunningProxy]:
    tokens = [{"id": name, "token": token} for name, token in zip("abcd", (ALICE, BOB, CAROL, DAVE), strict=True)]
    http = {"url": upstream.url, "transport": "streamable-http", "start_timeout": "5s"}
    mcps = [
        {"id": "tx", **http, "upstream_auth": exchange(endpoint.url)},
        {"id": "down", **http, "upstream_auth": exchange(f"http://127.0.0.1:{free_port()}/token")},
    ]
    with run_proxy(tmp_path_factory.mktemp("exchange"), mcps, auth={"type": "token", "tokens": tokens}) as running:
        yield running


def rpc(proxy: RunningProxy, token: str, body: dict[str, Any], session: str | None = None, mcp: str = "tx") -> Any:
    headers = {**MCP_HEADERS, "Authorization": f"Bearer {token}"}
    if session is not None:
        headers["Mcp-Session-Id"] = session
    return httpx2.post(proxy.url(mcp), headers=headers, json=body, timeout=30)


def bearer_seen(upstream: RecordingUpstream, since: int) -> list[str | None]:
    return [headers.get("Authorization") for headers in upstream.headers[since:]]


def test_each_principal_gets_its_own_exchanged_token_once(
    proxy: RunningProxy, endpoint: TokenEndpoint, upstream: RecordingUpstream
) -> None:
    start = len(upstream.headers)
    alice = rpc(proxy, ALICE, INIT)
    assert alice.status_code == 200, alice.text
    assert rpc(proxy, ALICE, LIST, alice.headers["mcp-session-id"]).status_code == 200
    alice_seen = bearer_seen(upstream, start)
    middle = len(upstream.headers)
    assert rpc(proxy, BOB, INIT).status_code == 200
    assert set(alice_seen) == {"Bearer exchanged-alice-1"}
    assert set(bearer_seen(upstream, middle)) == {"Bearer exchanged-bob-1"}
    assert (endpoint.hits(ALICE), endpoint.hits(BOB)) == (1, 1)  # the second request reused alice's token
    form = next(form for form in endpoint.forms if form["subject_token"] == ALICE)
    assert form["subject_token_type"] == "urn:ietf:params:oauth:token-type:access_token"
    for headers in upstream.headers:
        text = "\n".join(f"{name}: {value}" for name, value in headers.items())
        assert ALICE not in text and BOB not in text and SECRET not in text


def test_an_expired_token_is_exchanged_again(
    proxy: RunningProxy, endpoint: TokenEndpoint, upstream: RecordingUpstream
) -> None:
    start = len(upstream.headers)
    carol = rpc(proxy, CAROL, INIT)
    assert carol.status_code == 200, carol.text
    assert endpoint.hits(CAROL) == 1
    time.sleep(SHORT_LIFETIME + 0.5)
    assert rpc(proxy, CAROL, LIST, carol.headers["mcp-session-id"]).status_code == 200
    assert endpoint.hits(CAROL) == 2
    seen = bearer_seen(upstream, start)
    assert seen[0] == "Bearer exchanged-carol-1"
    assert seen[-1] == "Bearer exchanged-carol-2"


def test_a_refused_exchange_refuses_the_request_and_logs_one_line(
    proxy: RunningProxy, endpoint: TokenEndpoint, upstream: RecordingUpstream
) -> None:
    start = len(upstream.headers)
    response = rpc(proxy, DAVE, INIT)
    assert response.status_code == 502
    message = response.json()["error"]["message"]
    assert "token exchange" in message and "invalid_grant" in message
    assert len(upstream.headers) == start  # nothing went upstream
    lines = [line for line in proxy.log_text().splitlines() if "token exchange for token:d failed" in line]
    assert len(lines) == 1, proxy.log_text()
    # The endpoint's error_description quotes the subject token: neither the client nor the log gets it.
    assert DAVE not in proxy.log_text() and DAVE not in response.text


def test_an_unreachable_token_endpoint_is_a_503(proxy: RunningProxy) -> None:
    response = rpc(proxy, ALICE, INIT, mcp="down")
    assert response.status_code == 503
    assert "unreachable" in response.json()["error"]["message"]
    log = proxy.log_text()
    assert "Traceback" not in log and SECRET not in log and ALICE not in log
