"""The aggregated endpoint `/mcp` (and `/sse`) with the official SDK client and three real upstreams.

server-everything runs over stdio (`local`), legacy SSE (`legacy`) and Streamable HTTP (`stream`);
each offers the same names (`echo` three times), so every merged name must carry its MCP. A small
stdio MCP (`pager`) pages its lists two entries at a time, so a merged listing must paginate.
"""

from __future__ import annotations

import base64
import contextlib
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError

from mcp_barbican import jsonrpc
from tests.proxy import RunningProxy, everything_stdio, mcp_client, run_everything_http, run_proxy
from tests.server.test_aggregate_attacks_e2e import Session
from tests.server.test_parity import dump

pytestmark = [pytest.mark.e2e, pytest.mark.anyio, pytest.mark.npm]

EVERYTHING_IDS = ("local", "legacy", "stream")
UNKNOWN_TOOL = -32602

# A stdio MCP whose tools and resources lists come two entries a page (the cursor is the next index);
# a tool call answers with the tool's name.
PAGER = """
import json, sys
LISTS = {"tools/list": ("tools", [{"name": f"t{i}", "inputSchema": {"type": "object"}} for i in range(5)]),
         "resources/list": ("resources", [{"uri": f"pager://r/{i}", "name": f"r{i}"} for i in range(5)])}
for line in sys.stdin:
    msg = json.loads(line)
    if "id" not in msg or "method" not in msg:
        continue
    method, params = msg["method"], msg.get("params") or {}
    answer = {"jsonrpc": "2.0", "id": msg["id"]}
    if method == "initialize":
        info, offers = {"name": "pager", "version": "1"}, {"tools": {}, "resources": {}}
        answer["result"] = {"protocolVersion": params["protocolVersion"], "serverInfo": info, "capabilities": offers}
    elif method in LISTS and not str(params.get("cursor", "0")).isdigit():
        answer["error"] = {"code": -32602, "message": "Invalid cursor"}
    elif method in LISTS:
        key, items = LISTS[method]
        start = int(params.get("cursor", "0"))
        answer["result"] = {key: items[start:start + 2]}
        if start + 2 < len(items):
            answer["result"]["nextCursor"] = str(start + 2)
    elif method == "tools/call":
        answer["result"] = {"content": [{"type": "text", "text": "pager ran " + params["name"]}]}
    else:
        answer["result"] = {}
    print(json.dumps(answer), flush=True)
"""


def three_upstreams(stack: contextlib.ExitStack, legacy: contextlib.ExitStack) -> list[dict[str, Any]]:
    """The proxy entries of server-everything over the three transports (the SSE one runs in `legacy`)."""
    sse = legacy.enter_context(run_everything_http("sse"))
    http = stack.enter_context(run_everything_http("streamableHttp"))
    return [
        everything_stdio("local"),
        {"id": "legacy", "url": sse, "transport": "sse"},
        {"id": "stream", "url": http, "transport": "streamable-http"},
    ]


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    directory = tmp_path_factory.mktemp("aggregate")
    (directory / "pager.py").write_text(PAGER)
    pager = {"id": "pager", "command": sys.executable, "args": [str(directory / "pager.py")]}
    with contextlib.ExitStack() as stack:
        entries = three_upstreams(stack, stack)
        yield stack.enter_context(run_proxy(directory, [*entries, pager]))


def aggregate(proxy: RunningProxy) -> str:
    return f"{proxy.base}/mcp"


def text(result: types.CallToolResult) -> str:
    first = result.content[0]
    assert isinstance(first, types.TextContent), result
    return first.text


async def everything_of(client: Client, kind: str) -> list[Any]:
    """Every entry of a listing, following nextCursor until it is exhausted."""
    method = {
        "tools": client.list_tools,
        "prompts": client.list_prompts,
        "resources": client.list_resources,
        "templates": client.list_resource_templates,
    }[kind]
    key = {"templates": "resource_templates"}.get(kind, kind)
    entries: list[Any] = []
    cursor: str | None = None
    for _page in range(50):
        page = await method(cursor=cursor, cache_mode="bypass")
        entries.extend(getattr(page, key))
        cursor = page.next_cursor
        if cursor is None:
            return entries
    raise AssertionError(f"the {kind} listing never ended")


def names(kind: str, entries: list[Any]) -> list[str]:
    attribute = {"tools": "name", "prompts": "name", "resources": "uri", "templates": "uri_template"}[kind]
    return [getattr(entry, attribute) for entry in entries]


def merged_name(mcp_id: str, kind: str, name: str) -> str:
    return f"mcp-barbican://{mcp_id}/{name}" if kind in ("resources", "templates") else f"{mcp_id}__{name}"


async def test_a_continuation_no_mcp_can_serve_is_an_error_not_the_last_page(proxy: RunningProxy) -> None:
    """The pager refuses its cursor: an empty page without nextCursor would end the client's listing quietly."""
    forged = base64.urlsafe_b64encode(json.dumps({"pager": "not-a-page"}).encode()).decode()
    async with mcp_client(aggregate(proxy)) as client:
        await client.list_tools()  # the pager's member session is open
        with pytest.raises(MCPError) as refused:
            await client.list_tools(cursor=forged, cache_mode="bypass")
    assert refused.value.code == -32000
    assert "cannot be continued" in refused.value.message and "pager" in refused.value.message


@pytest.mark.parametrize("kind", ["tools", "prompts", "resources", "templates"])
async def test_merged_lists_hold_every_mcps_entries_once_with_its_prefix(proxy: RunningProxy, kind: str) -> None:
    expected: list[str] = []
    paged = kind in ("tools", "resources")  # the pager declares no prompts (so no templates either)
    for mcp_id in (*EVERYTHING_IDS, "pager") if paged else EVERYTHING_IDS:
        async with mcp_client(proxy.url(mcp_id)) as client:
            direct = names(kind, await everything_of(client, kind))
        if mcp_id == "pager":
            assert len(direct) == 5  # over three pages
        expected.extend(merged_name(mcp_id, kind, name) for name in direct)
    async with mcp_client(aggregate(proxy)) as client:
        merged = names(kind, await everything_of(client, kind))
    assert len(merged) == len(set(merged)), "an entry came twice"
    assert sorted(merged) == sorted(expected)
    if kind == "tools":
        assert {"local__echo", "legacy__echo", "stream__echo"} <= set(merged)


async def test_each_prefix_reaches_its_own_mcp(proxy: RunningProxy) -> None:
    async with mcp_client(aggregate(proxy)) as client:
        assert client.server_info is not None and client.server_info.name == "mcp-barbican"
        for mcp_id in EVERYTHING_IDS:
            assert text(await client.call_tool(f"{mcp_id}__echo", {"message": mcp_id})) == f"Echo: {mcp_id}"
            prompt = await client.get_prompt(f"{mcp_id}__simple-prompt")
            assert prompt.messages
        assert text(await client.call_tool("pager__t1", {})) == "pager ran t1"


async def test_progress_of_calls_to_several_mcps_at_once_reaches_each_caller(proxy: RunningProxy) -> None:
    seen: dict[str, list[float]] = {mcp_id: [] for mcp_id in EVERYTHING_IDS}
    async with mcp_client(aggregate(proxy)) as client:

        async def run(mcp_id: str) -> None:
            async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                seen[mcp_id].append(progress)

            args = {"duration": 1, "steps": 3}
            await client.call_tool(f"{mcp_id}__trigger-long-running-operation", args, progress_callback=on_progress)

        async with anyio.create_task_group() as group:
            for mcp_id in EVERYTHING_IDS:
                group.start_soon(run, mcp_id)
    assert seen == {mcp_id: [1.0, 2.0, 3.0] for mcp_id in EVERYTHING_IDS}


async def test_a_merged_resource_uri_reads_back_with_the_upstreams_content(proxy: RunningProxy) -> None:
    async with mcp_client(aggregate(proxy)) as client:
        listed = {resource.uri for resource in await everything_of(client, "resources")}
        read = {}
        for mcp_id in EVERYTHING_IDS:
            uri = sorted(u for u in listed if u.startswith(f"mcp-barbican://{mcp_id}/demo://resource/static/"))[0]
            result = await client.read_resource(uri)
            assert [content.uri for content in result.contents] == [uri]
            read[mcp_id] = (uri.removeprefix(f"mcp-barbican://{mcp_id}/"), dump(result.contents[0]))
        linked = await client.call_tool("stream__get-resource-links", {"count": 1})
        link = next(item for item in linked.content if isinstance(item, types.ResourceLink))
        assert link.uri.startswith("mcp-barbican://stream/")
        assert (await client.read_resource(link.uri)).contents[0].uri == link.uri
    for mcp_id, (original, content) in read.items():
        async with mcp_client(proxy.url(mcp_id)) as client:
            direct = dump((await client.read_resource(original)).contents[0])
        assert content == {**direct, "uri": f"mcp-barbican://{mcp_id}/{original}"}


async def test_templates_completions_and_prompt_resources_carry_their_mcp(proxy: RunningProxy) -> None:
    async with mcp_client(aggregate(proxy)) as client:
        for mcp_id in EVERYTHING_IDS:
            template = f"mcp-barbican://{mcp_id}/demo://resource/dynamic/text/{{resourceId}}"
            assert template in names("templates", await everything_of(client, "templates"))
            uri = template.replace("{resourceId}", "3")
            read = await client.read_resource(uri)
            assert read.contents[0].uri == uri
            direct_uri = uri.removeprefix(f"mcp-barbican://{mcp_id}/")
            prompt = await client.get_prompt(f"{mcp_id}__resource-prompt", {"resourceType": "Text", "resourceId": "3"})
            embedded = [m.content for m in prompt.messages if isinstance(m.content, types.EmbeddedResource)]
            assert [e.resource.uri for e in embedded] == [uri]
            ref = types.PromptReference(name=f"{mcp_id}__completable-prompt")
            completed = await client.complete(ref, {"name": "department", "value": "E"})
            assert "Engineering" in completed.completion.values
    async with mcp_client(proxy.url(mcp_id)) as direct:  # the last one read; its text ends with the time it was made
        direct_read = dump((await direct.read_resource(direct_uri)).contents[0])
    through = {**dump(read.contents[0]), "uri": direct_uri}
    assert {**direct_read, "text": direct_read["text"].partition(" created at ")[0]} == {
        **through,
        "text": through["text"].partition(" created at ")[0],
    }
    assert " created at " in through["text"]


# The SDK deprecates resources/subscribe (SEP-2577) and the logging capability but servers still offer them.
@pytest.mark.filterwarnings("ignore:resources/(un)?subscribe is removed:mcp.shared.exceptions.MCPDeprecationWarning")
@pytest.mark.filterwarnings("ignore:The logging capability is deprecated:mcp.shared.exceptions.MCPDeprecationWarning")
async def test_resource_updates_and_log_lines_name_their_mcp(proxy: RunningProxy) -> None:
    updated: set[str] = set()
    loggers: set[str | None] = set()
    arrived = anyio.Event()

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            updated.add(message.params.uri)
        if len(updated) == len(EVERYTHING_IDS) and len(loggers) >= len(EVERYTHING_IDS):
            arrived.set()

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        loggers.add(params.logger)
        await on_message(None)

    uris = {f"mcp-barbican://{mcp_id}/demo://resource/static/document/features.md" for mcp_id in EVERYTHING_IDS}
    async with mcp_client(aggregate(proxy), message_handler=on_message, logging_callback=on_log) as client:
        await client.set_logging_level("debug")
        for uri in uris:
            await client.subscribe_resource(uri)
        for mcp_id in EVERYTHING_IDS:
            await client.call_tool(f"{mcp_id}__toggle-subscriber-updates", {})
            await client.call_tool(f"{mcp_id}__toggle-simulated-logging", {})
        with anyio.fail_after(20):
            await arrived.wait()
        for mcp_id in EVERYTHING_IDS:  # off again: the upstreams are shared by the module's tests
            await client.call_tool(f"{mcp_id}__toggle-subscriber-updates", {})
            await client.call_tool(f"{mcp_id}__toggle-simulated-logging", {})
    assert updated == uris
    assert loggers == set(EVERYTHING_IDS)


@pytest.mark.parametrize("transport", ["streamable", "sse"])
async def test_the_clients_sampling_answer_reaches_each_mcps_tool_result(proxy: RunningProxy, transport: str) -> None:
    url = aggregate(proxy) if transport == "streamable" else f"{proxy.base}/sse"
    answered: dict[str, str] = {}  # the prompt the client's model got -> its answer (unique per request)

    async def answer(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        prompt = params.messages[0].content
        asked = prompt.text if isinstance(prompt, types.TextContent) else "?"
        said = answered[asked] = f"model answer {len(answered)}"
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text=said), model="test-model"
        )

    results: dict[str, str] = {}
    async with mcp_client(url, transport=transport, sampling_callback=answer) as client:

        async def ask(mcp_id: str) -> None:
            args = {"prompt": f"hello {mcp_id}", "maxTokens": 10}
            results[mcp_id] = str(dump(await client.call_tool(f"{mcp_id}__trigger-sampling-request", args)))

        async with anyio.create_task_group() as group:  # at once: the three upstreams' request ids must not mix
            for mcp_id in EVERYTHING_IDS:
                group.start_soon(ask, mcp_id)
    assert len(answered) == len(EVERYTHING_IDS)
    for mcp_id in EVERYTHING_IDS:
        said = next(said for asked, said in answered.items() if asked.endswith(f"hello {mcp_id}"))
        assert said in results[mcp_id]


async def test_the_legacy_sse_route_serves_the_same_session(proxy: RunningProxy) -> None:
    async with mcp_client(f"{proxy.base}/sse", transport="sse") as client:
        tools = {tool.name for tool in await everything_of(client, "tools")}
        assert {"local__echo", "legacy__echo", "stream__echo", "pager__t4"} <= tools
        for mcp_id in EVERYTHING_IDS:
            assert text(await client.call_tool(f"{mcp_id}__echo", {"message": "sse"})) == "Echo: sse"
        with pytest.raises(MCPError, match="Unknown tool") as caught:
            await client.call_tool("nosuch__echo", {"message": "x"})
        assert caught.value.code == UNKNOWN_TOOL


@pytest.mark.parametrize(
    ("tool", "args"),
    [
        ("echo", {"message": "same"}),
        ("get-sum", {"a": 2, "b": 3}),
        ("get-structured-content", {"location": "New York"}),
        ("get-tiny-image", {}),
        ("get-annotated-message", {"messageType": "error", "includeImage": False}),
    ],
)
async def test_a_call_through_the_aggregate_equals_the_direct_call(
    proxy: RunningProxy, tool: str, args: dict[str, Any]
) -> None:
    for mcp_id in EVERYTHING_IDS:
        async with mcp_client(proxy.url(mcp_id)) as client:
            direct = dump(await client.call_tool(tool, args))
        async with mcp_client(aggregate(proxy)) as client:
            through = dump(await client.call_tool(f"{mcp_id}__{tool}", args))
        assert through == direct, mcp_id


async def test_a_killed_upstream_is_left_out_while_the_others_keep_working(tmp_path: Path) -> None:
    with contextlib.ExitStack() as stack, contextlib.ExitStack() as legacy:
        entries = three_upstreams(stack, legacy)
        entries[1]["start_timeout"] = "2s"  # how long a request waits for the upstream to come back
        proxy = stack.enter_context(run_proxy(tmp_path, entries))
        async with mcp_client(aggregate(proxy)) as client:
            for mcp_id in EVERYTHING_IDS:  # every member's upstream session is open
                assert text(await client.call_tool(f"{mcp_id}__echo", {"message": "before"})) == "Echo: before"
            raw = Session(proxy, {})  # the same through raw requests, to see the status codes
            assert raw.call("legacy__echo")["result"]["content"][0]["text"] == "Echo: hi"
            before = len(proxy.log_text())
            legacy.close()  # server-everything over SSE stops mid-session
            with anyio.fail_after(30):
                with pytest.raises(MCPError, match="upstream 'legacy'") as caught:
                    await client.call_tool("legacy__echo", {"message": "after"})
                assert caught.value.code == jsonrpc.UPSTREAM_ERROR
                assert (
                    raw.call("legacy__echo")["error"]["code"] == jsonrpc.UPSTREAM_ERROR
                )  # HTTP 200, the session lives
                assert raw.call("stream__echo")["result"]["content"][0]["text"] == "Echo: hi"
                for mcp_id in ("local", "stream"):  # the session goes on
                    assert text(await client.call_tool(f"{mcp_id}__echo", {"message": "after"})) == "Echo: after"
                tools = {tool.name for tool in await everything_of(client, "tools")}
                prompts = {prompt.name for prompt in await everything_of(client, "prompts")}
            assert {"local__echo", "stream__echo"} <= tools
            assert not any(name.startswith("legacy__") for name in tools | prompts)
            assert any(name.startswith("stream__") for name in prompts)
        assert "MCP 'legacy' left out of the merged tools/list" in proxy.log_text()[before:]
