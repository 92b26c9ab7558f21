"""A client settles on the protocol era the upstream speaks, through the proxy as direct.

The SDK client's default mode probes `server/discover` (2026-07-28) and falls back to
`initialize`. The proxy relays the probe, so a dual-era upstream is reached in the modern
era and a legacy-only one in the legacy era, the same as without the proxy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client, StdioServerParameters

from tests.conformance import fixture_command, start_fixture
from tests.proxy import demo_mcp, mcp_client, run_proxy

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]


@contextlib.contextmanager
def upstream(kind: str) -> Iterator[tuple[dict[str, Any], Any]]:
    if kind == "legacy-stdio":
        entry = demo_mcp("up")
        yield entry, StdioServerParameters(command=entry["command"], args=entry["args"])
    elif kind == "dual-era-stdio":
        command = fixture_command("stdio")
        yield (
            {"id": "up", "command": command[0], "args": command[1:]},
            StdioServerParameters(command=command[0], args=command[1:]),
        )
    else:
        with start_fixture("streamable-http") as url:
            yield {"id": "up", "url": url, "transport": "streamable-http"}, url


@pytest.mark.parametrize("kind", ["legacy-stdio", "dual-era-stdio", "dual-era-http"])
async def test_the_client_settles_on_the_upstreams_era(tmp_path: Path, kind: str) -> None:
    with upstream(kind) as (entry, target):
        if isinstance(target, StdioServerParameters):
            async with Client(target) as client:
                direct = (client.protocol_version, sorted(t.name for t in (await client.list_tools()).tools))
        else:
            async with mcp_client(target, headers={}) as client:
                direct = (client.protocol_version, sorted(t.name for t in (await client.list_tools()).tools))
        with run_proxy(tmp_path, [entry]) as proxy:
            async with mcp_client(proxy.url("up")) as client:
                proxied = (client.protocol_version, sorted(t.name for t in (await client.list_tools()).tools))
    assert proxied == direct
    expected = "2025-11-25" if kind == "legacy-stdio" else "2026-07-28"
    assert direct[0] == expected
