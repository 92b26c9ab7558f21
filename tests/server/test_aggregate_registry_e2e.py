"""The aggregated endpoint follows the registry: an MCP registered or removed at run time joins or leaves
every open `/mcp` session, which hears `list_changed`."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Final

import anyio
import httpx2
import pytest
from mcp import types
from mcp.shared.exceptions import MCPError

from tests.proxy import demo_mcp, mcp_client, run_proxy

pytestmark = pytest.mark.e2e

ADMIN: Final = {"Authorization": "Bearer admin-token-0123456789abcdef"}


@pytest.mark.anyio
async def test_registered_and_removed_mcps_join_and_leave_open_sessions(tmp_path: Path) -> None:
    server = {"admin": {"token": ADMIN["Authorization"].split()[1]}}
    with run_proxy(tmp_path, [demo_mcp("first")], server=server) as proxy:
        changed = asyncio.Event()

        async def on_message(message: Any) -> None:
            if isinstance(message, types.ToolListChangedNotification):
                changed.set()

        async with mcp_client(f"{proxy.base}/mcp", message_handler=on_message) as client:
            assert {t.name.partition("__")[0] for t in (await client.list_tools()).tools} == {"first"}
            added = await anyio.to_thread.run_sync(
                lambda: httpx2.post(f"{proxy.base}/admin/mcps", json=demo_mcp("second"), headers=ADMIN, timeout=30)
            )
            assert added.status_code == 201, added.text
            with anyio.fail_after(15):
                await changed.wait()
            names = {t.name for t in (await client.list_tools()).tools}
            assert {"first__echo", "second__echo"} <= names
            answer = await client.call_tool("second__echo", {"message": "joined"})
            assert "joined" in answer.content[0].text  # type: ignore[union-attr]

            changed.clear()
            removed = await anyio.to_thread.run_sync(
                lambda: httpx2.delete(f"{proxy.base}/admin/mcps/second", headers=ADMIN, timeout=30)
            )
            assert removed.status_code in (200, 204), removed.text
            with anyio.fail_after(15):
                await changed.wait()
            assert {t.name.partition("__")[0] for t in (await client.list_tools()).tools} == {"first"}
            with pytest.raises(MCPError, match="Unknown tool: 'second__echo'"):
                await client.call_tool("second__echo", {"message": "left"})
