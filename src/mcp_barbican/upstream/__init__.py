"""Upstream connectors: stdio child processes, legacy HTTP+SSE and Streamable HTTP servers."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from mcp_barbican.upstream.base import CloseHandler, IdentityHeaders, MessageHandler, UpstreamChannel

if TYPE_CHECKING:
    import aiohttp

    from mcp_barbican.config import McpConfig
    from mcp_barbican.upstream.sse import SseChannel
    from mcp_barbican.upstream.streamable import StreamableHttpChannel

__all__ = ["UpstreamChannel", "open_channel"]


def open_channel(
    mcp: McpConfig,
    on_message: MessageHandler,
    on_close: CloseHandler,
    *,
    http: Callable[[], aiohttp.ClientSession],
    identity: IdentityHeaders | None = None,
) -> UpstreamChannel:
    """A new, not yet started channel to the MCP's upstream, by its transport (`identity`: HTTP only)."""
    if mcp.transport == "stdio":
        from mcp_barbican.upstream.stdio import StdioChannel

        assert mcp.command is not None
        return StdioChannel(
            on_message, on_close, command=mcp.command, args=mcp.args, env=mcp.env, cwd=mcp.cwd, name=mcp.id
        )
    assert mcp.url is not None
    channel: type[SseChannel | StreamableHttpChannel]
    if mcp.transport == "sse":
        from mcp_barbican.upstream.sse import SseChannel as channel
    else:
        from mcp_barbican.upstream.streamable import StreamableHttpChannel as channel
    return channel(
        on_message,
        on_close,
        url=mcp.url,
        headers=mcp.headers,
        http=http(),
        start_timeout=mcp.start_timeout,
        identity=identity,
    )
