"""The conformance fixture passes the official MCP conformance suite when run directly.

This is the baseline for the proxy conformance tests: whatever passes here must also pass through
mcp-barbican. The suite needs the Node tooling from ``scripts/node-deps``; without it these tests
fail (they never skip), because a silently skipped conformance run hides regressions.
"""

from __future__ import annotations

import http.client
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio
import mcp.types as types
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.session import ClientRequestContext
from mcp.client.sse import sse_client

from tests.conformance import (
    EXPECTED_SCENARIO_COUNTS,
    FIXTURE_SCRIPT,
    SUITE_VERSIONS,
    SuiteVersion,
    conformance_problem,
    run_conformance,
    start_fixture,
)

pytestmark = pytest.mark.e2e

FIXTURE_TOOLS = {
    "test_simple_text",
    "test_image_content",
    "test_audio_content",
    "test_embedded_resource",
    "test_multiple_content_types",
    "test_tool_with_logging",
    "test_error_handling",
    "test_tool_with_progress",
    "test_sampling",
    "test_elicitation",
    "test_elicitation_sep1034_defaults",
    "test_elicitation_sep1330_enums",
    "json_schema_2020_12_tool",
    "test_reconnection",
    "test_echo",
    "test_notify_resource_updated",
}


def _fixture_log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return "(no fixture log)"
    return "\n".join(text) or "(fixture log empty)"


@pytest.mark.conformance
@pytest.mark.timeout(240)
@pytest.mark.parametrize("version", SUITE_VERSIONS)
def test_fixture_passes_conformance_suite_directly(version: SuiteVersion, tmp_path: Path) -> None:
    problem = conformance_problem()
    if problem is not None:
        pytest.fail(f"cannot run the MCP conformance suite: {problem}", pytrace=False)

    log_path = tmp_path / "fixture.log"
    with start_fixture("streamable-http", log_path=log_path) as url:
        result = run_conformance(url, version=version, out_dir=tmp_path / "results")

    detail = f"{result.summary()}\n--- fixture log tail ---\n{_fixture_log_tail(log_path)}"
    assert not result.failed and not result.timed_out, detail
    assert result.ran == EXPECTED_SCENARIO_COUNTS[version], (
        f"expected {EXPECTED_SCENARIO_COUNTS[version]} scenarios, got {result.ran}\n{detail}"
    )
    assert result.all_passed, detail


# ---------------------------------------------------------------------------------------------
# The fixture's other transports, through the official Python SDK client
# ---------------------------------------------------------------------------------------------


async def _sampling(
    context: ClientRequestContext, params: types.CreateMessageRequestParams
) -> types.CreateMessageResult:
    return types.CreateMessageResult(
        role="assistant", content=types.TextContent(type="text", text="pong"), model="test-model", stop_reason="endTurn"
    )


async def _bounded(scenario: Callable[[], Awaitable[None]], seconds: float = 30) -> None:
    with anyio.fail_after(seconds):
        await scenario()


def _first_text(result: types.CallToolResult) -> str:
    assert result.content, result
    block = result.content[0]
    assert isinstance(block, types.TextContent), result
    return block.text


@pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")  # logging/setLevel
def test_fixture_over_stdio() -> None:
    logs: list[types.LoggingMessageNotificationParams] = []

    async def on_log(params: types.LoggingMessageNotificationParams) -> None:
        logs.append(params)

    async def scenario() -> None:
        params = StdioServerParameters(command=sys.executable, args=[str(FIXTURE_SCRIPT), "--transport", "stdio"])
        async with (
            stdio_client(params) as (read, write),
            ClientSession(read, write, sampling_callback=_sampling, logging_callback=on_log) as session,
        ):
            init = await session.initialize()
            assert init.server_info.name == "conformance-fixture"
            assert init.capabilities.resources is not None and init.capabilities.resources.subscribe
            assert init.capabilities.completions is not None and init.capabilities.logging is not None

            tools = await session.list_tools()
            assert {t.name for t in tools.tools} == FIXTURE_TOOLS

            assert _first_text(await session.call_tool("test_echo", {"text": "hello"})) == "hello"
            assert _first_text(await session.call_tool("test_sampling", {"prompt": "ping"})) == "LLM response: pong"

            # logging/setLevel is per connection: below the level nothing is sent.
            await session.set_logging_level("error")
            await session.call_tool("test_tool_with_logging", {})
            assert logs == []
            await session.set_logging_level("debug")
            await session.call_tool("test_tool_with_logging", {})
            assert [entry.data for entry in logs] == [
                "Tool execution started",
                "Tool processing data",
                "Tool execution completed",
            ]

    anyio.run(_bounded, scenario)


def test_fixture_over_legacy_sse(tmp_path: Path) -> None:
    log_path = tmp_path / "fixture-sse.log"
    with start_fixture("sse", log_path=log_path) as url:

        async def scenario() -> None:
            async with (
                sse_client(url) as (read, write),
                ClientSession(read, write, sampling_callback=_sampling) as session,
            ):
                init = await session.initialize()
                assert init.server_info.name == "conformance-fixture"
                tools = await session.list_tools()
                assert {t.name for t in tools.tools} == FIXTURE_TOOLS
                assert _first_text(await session.call_tool("test_simple_text", {})).startswith("This is a simple")
                assert _first_text(await session.call_tool("test_sampling", {"prompt": "x"})) == "LLM response: pong"
                contents = (await session.read_resource("test://static-text")).contents
                assert isinstance(contents[0], types.TextResourceContents)
                assert contents[0].text == "This is the content of the static text resource."

        anyio.run(_bounded, scenario)

        # DNS-rebinding protection on the legacy endpoint too: a foreign Host is refused.
        host, port = url.removeprefix("http://").split("/")[0].rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            conn.request("GET", "/sse", headers={"Host": "evil.example.com", "Accept": "text/event-stream"})
            status = conn.getresponse().status
        finally:
            conn.close()
        assert status == 421, _fixture_log_tail(log_path)
