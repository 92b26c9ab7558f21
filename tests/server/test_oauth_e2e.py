"""OAuth 2.1 resource server end to end: a real authorization server (tests/fixtures/oauth_server.py, authlib),
the real proxy, the official SDK client.

JWT mode finds the JWKS through the issuer's RFC 8414 metadata; introspection mode asks the
authorization server's RFC 7662 endpoint and caches the answer. Audience is the MCP's resource
URL (server.public_url + /mcp/{id}); a missing scope is a 403 naming it.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import httpx2
import pytest
from mcp import Client
from mcp.client.auth.extensions.client_credentials import ClientCredentialsOAuthProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import OAuthClientInformationFull, OAuthToken

from tests.proxy import REPO_ROOT, RunningProxy, _process, demo_mcp, free_port, mcp_client, run_proxy
from tests.server.test_endpoint import INIT

pytestmark = pytest.mark.e2e

AS_SCRIPT: Final = REPO_ROOT / "tests" / "fixtures" / "oauth_server.py"
HEADERS: Final = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


@pytest.fixture(scope="module")
def issuer() -> Iterator[str]:
    port = free_port()
    with _process([sys.executable, str(AS_SCRIPT), str(port)], {"PATH": ""}, port, tag="oauth-as"):
        yield f"http://127.0.0.1:{port}"


def get_token(issuer: str, resource: str, scope: str) -> str:
    form = {"grant_type": "client_credentials", "scope": scope, "resource": resource}
    response = httpx2.post(f"{issuer}/token", data=form, auth=("app", "app-secret"), timeout=10)
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def introspections(issuer: str) -> int:
    count: int = httpx2.get(f"{issuer}/stats", timeout=10).json()["introspections"]
    return count


def post_init(proxy: RunningProxy, mcp_id: str, token: str | None) -> httpx2.Response:
    headers = {**HEADERS, **({"Authorization": f"Bearer {token}"} if token else {})}
    return httpx2.post(proxy.url(mcp_id), json=INIT, headers=headers, timeout=10)


def start(
    tmp_path: Path, oauth2: dict[str, Any], mcps: list[dict[str, Any]] | None = None
) -> contextlib.AbstractContextManager[RunningProxy]:
    port = free_port()
    server = {"port": port, "public_url": f"http://127.0.0.1:{port}"}
    auth = {"type": "oauth2", "oauth2": oauth2}
    return run_proxy(tmp_path, mcps or [demo_mcp()], server=server, auth=auth)


async def call_echo(proxy: RunningProxy, token: str, message: str = "hi") -> str:
    async with mcp_client(proxy.url("demo"), headers={"Authorization": f"Bearer {token}"}) as client:
        result = await client.call_tool("echo", {"message": message})
        text: str = result.content[0].text  # type: ignore[union-attr]
        return text


@pytest.mark.anyio
async def test_jwt_from_issuer_metadata_audience_and_scope(tmp_path: Path, issuer: str) -> None:
    with start(tmp_path, {"issuer": issuer, "required_scopes": ["mcp:tools"]}) as proxy:
        resource = proxy.url("demo")
        assert "hi" in await call_echo(proxy, get_token(issuer, resource, "mcp:tools mcp:read"))

        metadata_url = f"{proxy.base}/.well-known/oauth-protected-resource/mcp/demo"
        document = httpx2.get(metadata_url, timeout=10).json()
        assert document == {
            "resource": resource,
            "authorization_servers": [issuer],
            "scopes_supported": ["mcp:tools"],
            "bearer_methods_supported": ["header"],
        }

        missing = post_init(proxy, "demo", None)
        assert missing.status_code == 401
        assert f'resource_metadata="{metadata_url}"' in missing.headers["www-authenticate"]

        other = post_init(proxy, "demo", get_token(issuer, "http://elsewhere.test/mcp/demo", "mcp:tools"))
        assert other.status_code == 401 and other.json()["error"] == "invalid_token"
        challenge = other.headers["www-authenticate"]
        assert 'error="invalid_token"' in challenge and f'resource_metadata="{metadata_url}"' in challenge

        short = post_init(proxy, "demo", get_token(issuer, resource, "mcp:read"))
        assert short.status_code == 403
        assert short.json()["error"] == "insufficient_scope" and "mcp:tools" in short.json()["message"]
        challenge = short.headers["www-authenticate"]
        assert 'error="insufficient_scope"' in challenge and 'scope="mcp:tools"' in challenge
        assert f'resource_metadata="{metadata_url}"' in challenge


@pytest.mark.anyio
async def test_introspection_is_cached_and_fails_closed(tmp_path: Path, issuer: str) -> None:
    introspection = {"url": f"{issuer}/introspect", "client_id": "proxy", "client_secret": "proxy-secret"}
    dead = {**introspection, "url": f"http://127.0.0.1:{free_port()}/introspect"}
    broken = demo_mcp("broken", auth={"type": "oauth2", "oauth2": {"issuer": issuer, "introspection": dead}})
    oauth2 = {"issuer": issuer, "required_scopes": ["mcp:tools"], "introspection": introspection}
    with start(tmp_path, oauth2, [demo_mcp(), broken]) as proxy:
        token = get_token(issuer, proxy.url("demo"), "mcp:tools")
        before = introspections(issuer)
        for message in ("one", "two", "three"):
            assert message in await call_echo(proxy, token, message)
        assert introspections(issuer) == before + 1  # one call for every request of three sessions

        other = get_token(issuer, "http://elsewhere.test/mcp/demo", "mcp:tools")
        assert post_init(proxy, "demo", other).status_code == 401
        assert post_init(proxy, "demo", other).status_code == 401
        assert introspections(issuer) == before + 2  # the refusal is cached briefly too

        short = post_init(proxy, "demo", get_token(issuer, proxy.url("demo"), "mcp:read"))
        assert short.status_code == 403 and 'scope="mcp:tools"' in short.headers["www-authenticate"]

        down = post_init(proxy, "broken", get_token(issuer, proxy.url("broken"), "mcp:tools"))
        assert down.status_code == 503 and down.json()["error"] == "temporarily_unavailable"
        lines = [line for line in proxy.log_text().splitlines() if "introspection" in line and "503" in line]
        assert len(lines) == 1 and "proxy-secret" not in lines[0]


class MemoryStorage:
    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client = client_info


@pytest.mark.anyio
async def test_sdk_oauth_flow_discovers_and_calls(tmp_path: Path, issuer: str) -> None:
    with start(tmp_path, {"issuer": issuer, "required_scopes": ["mcp:tools"]}) as proxy:
        storage = MemoryStorage()
        provider = ClientCredentialsOAuthProvider(
            proxy.url("demo"), storage, "app", "app-secret", scope="mcp:tools", issuer=issuer
        )
        async with httpx2.AsyncClient(auth=provider, timeout=30) as http:
            async with Client(streamable_http_client(proxy.url("demo"), http_client=http)) as client:
                result = await client.call_tool("echo", {"message": "via the SDK flow"})
        assert "via the SDK flow" in result.content[0].text  # type: ignore[union-attr]
        assert storage.tokens is not None  # the SDK obtained its token from the authorization server


@pytest.mark.anyio
async def test_aggregated_endpoint_is_a_resource_of_its_own(tmp_path: Path, issuer: str) -> None:
    """/mcp has its RFC 9728 metadata; a token for it reaches every MCP on server.auth, one for /mcp/{id} that MCP."""
    mcps = [demo_mcp("alpha"), demo_mcp("beta")]
    with start(tmp_path, {"issuer": issuer, "required_scopes": ["mcp:tools"]}, mcps) as proxy:
        aggregate = f"{proxy.base}/mcp"
        metadata_url = f"{proxy.base}/.well-known/oauth-protected-resource/mcp"
        document = httpx2.get(metadata_url, timeout=10).json()
        assert document["resource"] == aggregate and document["authorization_servers"] == [issuer]

        missing = httpx2.post(aggregate, json=INIT, headers=HEADERS, timeout=10)
        assert missing.status_code == 401
        assert f'resource_metadata="{metadata_url}"' in missing.headers["www-authenticate"]

        async def tool_names(token: str) -> list[str]:
            async with mcp_client(aggregate, headers={"Authorization": f"Bearer {token}"}) as client:
                listed = await client.list_tools()
                echoed = await client.call_tool(listed.tools[0].name, {"message": "via /mcp"})
                assert "via /mcp" in echoed.content[0].text  # type: ignore[union-attr]
                return sorted({tool.name.partition("__")[0] for tool in listed.tools})

        assert await tool_names(get_token(issuer, aggregate, "mcp:tools")) == ["alpha", "beta"]
        assert await tool_names(get_token(issuer, proxy.url("alpha"), "mcp:tools")) == ["alpha"]

        elsewhere = get_token(issuer, "http://elsewhere.test/mcp", "mcp:tools")
        refused = httpx2.post(aggregate, json=INIT, headers={**HEADERS, "Authorization": f"Bearer {elsewhere}"})
        assert refused.status_code == 401 and refused.json()["error"] == "invalid_token"
