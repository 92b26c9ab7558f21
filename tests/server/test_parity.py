"""Parity: the official SDK client sees the same server-everything direct and through the proxy.

For each upstream transport (stdio, legacy SSE, Streamable HTTP) the same observation runs
against server-everything directly and through mcp-barbican (downstream over Streamable
HTTP and over legacy SSE), and the observations must be equal: tools and their schemas,
tool results, progress, sampling and elicitation answered by the client, resources read
and subscribed, prompts.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import mcp_types as types
import pytest
from mcp import Client, StdioServerParameters

from tests.proxy import EVERYTHING, NODE, everything_stdio, mcp_client, run_everything_http, run_proxy

pytestmark = [pytest.mark.e2e, pytest.mark.anyio, pytest.mark.npm]


async def sampling(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
    prompt = params.messages[0].content
    text = prompt.text if isinstance(prompt, types.TextContent) else "?"
    return types.CreateMessageResult(
        role="assistant", content=types.TextContent(type="text", text=f"echo: {text}"), model="test-model"
    )


async def elicitation(context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
    return types.ElicitResult(action="accept", content={"color": "blue", "name": "ada"})


def dump(model: Any) -> Any:
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


async def observe(client: Client) -> dict[str, Any]:
    """Everything a client can see of server-everything, as plain data."""
    seen: dict[str, Any] = {}
    tools = await client.list_tools()
    seen["tools"] = sorted((dump(tool) for tool in tools.tools), key=lambda t: t["name"])
    seen["echo"] = dump(await client.call_tool("echo", {"message": "parity"}))
    seen_progress: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen_progress.append(progress)

    long_args = {"duration": 1, "steps": 3}
    seen["long"] = dump(
        await client.call_tool("trigger-long-running-operation", long_args, progress_callback=on_progress)
    )
    seen["progress"] = seen_progress
    seen["sampling"] = dump(await client.call_tool("trigger-sampling-request", {"prompt": "hello", "maxTokens": 10}))
    elicited = dump(await client.call_tool("trigger-elicitation-request", {}))
    seen["elicitation"] = elicited
    resources = await client.list_resources()
    seen["resources"] = sorted(r.uri for r in resources.resources)
    first = sorted(resources.resources, key=lambda r: r.uri)[0]
    seen["read"] = dump(await client.read_resource(first.uri))
    await client.subscribe_resource(first.uri)
    await client.unsubscribe_resource(first.uri)
    prompts = await client.list_prompts()
    seen["prompts"] = sorted(p.name for p in prompts.prompts)
    seen["prompt"] = dump(await client.get_prompt("simple-prompt"))
    return seen


@contextlib.contextmanager
def upstream_entry(transport: str) -> Iterator[tuple[dict[str, Any], Any]]:
    """The proxy's MCP entry for server-everything over `transport`, and the direct target."""
    if transport == "stdio":
        entry = everything_stdio("everything")
        yield entry, StdioServerParameters(command=str(NODE), args=[str(EVERYTHING), "stdio"])
        return
    mode = "sse" if transport == "sse" else "streamableHttp"
    with run_everything_http(mode) as url:
        yield {"id": "everything", "url": url, "transport": transport}, url


@contextlib.asynccontextmanager
async def direct_client(target: Any, transport: str) -> AsyncIterator[Client]:
    if isinstance(target, StdioServerParameters):
        async with Client(target, sampling_callback=sampling, elicitation_callback=elicitation) as client:
            yield client
    else:
        kind = "sse" if transport == "sse" else "streamable"
        async with mcp_client(
            target, transport=kind, headers={}, sampling_callback=sampling, elicitation_callback=elicitation
        ) as client:
            yield client


# The SDK deprecates resources/subscribe (SEP-2577) but servers still offer it and the proxy relays it.
@pytest.mark.filterwarnings("ignore:resources/(un)?subscribe is removed:mcp.shared.exceptions.MCPDeprecationWarning")
@pytest.mark.parametrize("upstream", ["stdio", "sse", "streamable-http"])
async def test_the_proxy_shows_the_same_server_as_a_direct_connection(tmp_path: Path, upstream: str) -> None:
    with upstream_entry(upstream) as (entry, target):
        async with direct_client(target, upstream) as client:
            direct = await observe(client)
        with run_proxy(tmp_path, [entry]) as proxy:
            async with mcp_client(
                proxy.url("everything"), sampling_callback=sampling, elicitation_callback=elicitation
            ) as client:
                streamable = await observe(client)
            async with mcp_client(
                proxy.url("everything", "/sse"),
                transport="sse",
                sampling_callback=sampling,
                elicitation_callback=elicitation,
            ) as client:
                legacy = await observe(client)
    assert direct["progress"] == [1.0, 2.0, 3.0]
    assert "echo: " in str(direct["sampling"])
    assert streamable == direct
    assert legacy == direct
