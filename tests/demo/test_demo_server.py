"""End-to-end tests of the bundled demo MCP server, spawned over real stdio.

The SDK tests use the mcp 2.3 `Client` in its default "auto" mode, so every one of them also
proves that the `server/discover` probe falls back to the initialize handshake. Raw protocol
details (parse errors, version negotiation, exit on EOF) are driven by hand.
"""

from __future__ import annotations

import json
import sys
import time
import tomllib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import ByteReceiveStream, ByteSendStream, Process
from anyio.streams.buffered import BufferedByteReceiveStream
from mcp import Client, MCPError, StdioServerParameters
from mcp import types as mcp_types
from mcp.client.session import ClientRequestContext
from mcp.client.stdio import get_default_environment

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

ROOT = Path(__file__).resolve().parents[2]
# The checkout's src, not an installed copy; PYTHONCOERCECLOCALE=0 stops Python from adding
# LC_CTYPE to the child's environment when the minimal environment has no locale.
BASE_ENV = {"PYTHONPATH": str(ROOT / "src"), "PYTHONCOERCECLOCALE": "0"}
TOOL_NAMES = {"echo", "add", "slow", "sample", "elicit", "whoami"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def demo_params(**env: str) -> StdioServerParameters:
    return StdioServerParameters(command=sys.executable, args=["-m", "mcp_barbican.demo"], env=BASE_ENV | env)


def text_of(result: mcp_types.CallToolResult) -> str:
    assert len(result.content) == 1
    block = result.content[0]
    assert isinstance(block, mcp_types.TextContent)
    return block.text


class LogCollector:
    def __init__(self) -> None:
        self.messages: list[tuple[str, str]] = []
        self.got_notice = anyio.Event()

    async def __call__(self, params: mcp_types.LoggingMessageNotificationParams) -> None:
        self.messages.append((params.level, str(params.data)))
        if params.level == "notice":
            self.got_notice.set()

    def texts(self, level: str) -> list[str]:
        return [text for lvl, text in self.messages if lvl == level]


# --- SDK client --------------------------------------------------------------------------------


async def test_initialize_falls_back_from_discover_and_reports_server() -> None:
    project_version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    async with Client(demo_params()) as client:
        assert client.protocol_version == "2025-11-25"
        info = client.server_info
        assert info is not None
        assert (info.name, info.version) == ("mcp-barbican-demo", project_version)
        caps = client.server_capabilities
        assert caps.tools is not None and caps.tools.list_changed is False
        assert caps.logging is not None
        assert caps.prompts is None and caps.resources is None
        assert client.instructions and client.instructions.endswith(".")


async def test_list_tools() -> None:
    async with Client(demo_params()) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
    assert set(tools) == TOOL_NAMES
    for tool in tools.values():
        assert tool.description and tool.input_schema["type"] == "object"
        assert tool.annotations is not None and tool.annotations.read_only_hint is True
    assert tools["add"].output_schema is not None
    assert tools["add"].output_schema["required"] == ["sum"]
    assert tools["slow"].input_schema["properties"]["steps"] == {
        "type": "integer",
        "minimum": 1,
        "maximum": 100,
        "default": 5,
    }


async def test_echo_returns_the_message() -> None:
    message = '  héllo\nwörld "quoted" \u2028 end\n'
    async with Client(demo_params()) as client:
        result = await client.call_tool("echo", {"message": message})
    assert result.is_error is False
    assert text_of(result) == message


async def test_add_returns_structured_content() -> None:
    async with Client(demo_params()) as client:
        result = await client.call_tool("add", {"a": 2, "b": 3.5})
        bad = await client.call_tool("add", {"a": "2", "b": 3})
    assert result.is_error is False
    assert result.structured_content == {"sum": 5.5}
    assert text_of(result) == "5.5"
    assert bad.is_error is True
    assert "a: expected number" in text_of(bad)


async def test_unknown_tool_is_invalid_params() -> None:
    async with Client(demo_params()) as client:
        with pytest.raises(MCPError) as caught:
            await client.call_tool("no-such-tool", {})
    assert caught.value.error.code == -32602
    assert "no-such-tool" in caught.value.error.message


async def test_slow_reports_increasing_progress_and_logs() -> None:
    updates: list[tuple[float, float | None, str | None]] = []
    logs = LogCollector()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        updates.append((progress, total, message))

    async with Client(demo_params(), logging_callback=logs) as client:
        result = await client.call_tool("slow", {"seconds": 0.3, "steps": 3}, progress_callback=on_progress)
    assert text_of(result) == "done after 3 steps"
    assert [(progress, total) for progress, total, _ in updates] == [(1, 3), (2, 3), (3, 3)]
    assert updates[-1][2] == "step 3 of 3"
    assert logs.texts("info") == [f"slow: step {n} of 3" for n in (1, 2, 3)]


@pytest.mark.filterwarnings("ignore::mcp.MCPDeprecationWarning")
async def test_slow_does_not_block_ping_and_stops_when_cancelled() -> None:
    logs = LogCollector()
    started = anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        started.set()

    async with Client(demo_params(), logging_callback=logs) as client:

        async def run_slow() -> None:
            await client.call_tool("slow", {"seconds": 10, "steps": 100}, progress_callback=on_progress)

        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(run_slow)
                await started.wait()
                before = time.monotonic()
                await client.send_ping()
                ping_seconds = time.monotonic() - before
                tg.cancel_scope.cancel()  # the SDK sends notifications/cancelled for the abandoned call
            await logs.got_notice.wait()
        steps_at_cancel = len(logs.texts("info"))
        await anyio.sleep(0.5)  # five step intervals: a task that kept running would log again
        assert len(logs.texts("info")) == steps_at_cancel
        assert text_of(await client.call_tool("echo", {"message": "alive"})) == "alive"
    assert ping_seconds < 1
    assert logs.texts("notice") == [f"slow: cancelled after {steps_at_cancel} of 100 steps"]


async def test_sample_asks_the_clients_model() -> None:
    prompts: list[str] = []

    async def sampling(
        context: ClientRequestContext, params: mcp_types.CreateMessageRequestParams
    ) -> mcp_types.CreateMessageResult:
        content = params.messages[0].content
        assert isinstance(content, mcp_types.TextContent)
        prompts.append(content.text)
        assert isinstance(context.request_id, str) and context.request_id.startswith("demo-s-")
        return mcp_types.CreateMessageResult(
            role="assistant", content=mcp_types.TextContent(type="text", text="forty-two"), model="test-model"
        )

    async with Client(demo_params(), sampling_callback=sampling) as client:
        result = await client.call_tool("sample", {"prompt": "What is six times seven?"})
    assert prompts == ["What is six times seven?"]
    assert result.is_error is False
    assert text_of(result) == "the client's model said: forty-two"


async def test_sample_refused_by_the_client_is_a_tool_error() -> None:
    async def refuse(
        context: ClientRequestContext, params: mcp_types.CreateMessageRequestParams
    ) -> mcp_types.ErrorData:
        return mcp_types.ErrorData(code=-1, message="user rejected the sampling request")

    async with Client(demo_params(), sampling_callback=refuse) as client:
        result = await client.call_tool("sample", {"prompt": "hello?"})
    assert result.is_error is True
    assert "user rejected the sampling request" in text_of(result)


async def test_sample_without_sampling_capability_is_a_tool_error() -> None:
    async with Client(demo_params()) as client:
        result = await client.call_tool("sample", {"prompt": "hello?"})
    assert result.is_error is True
    assert "did not declare the sampling capability" in text_of(result)


async def test_elicit_asks_the_user() -> None:
    questions: list[tuple[str, dict[str, Any]]] = []

    async def elicitation(
        context: ClientRequestContext, params: mcp_types.ElicitRequestParams
    ) -> mcp_types.ElicitResult:
        assert isinstance(params, mcp_types.ElicitRequestFormParams)
        questions.append((params.message, params.requested_schema))
        return mcp_types.ElicitResult(action="accept", content={"answer": "blue"})

    async with Client(demo_params(), elicitation_callback=elicitation) as client:
        result = await client.call_tool("elicit", {"question": "Favourite colour?"})
    assert result.is_error is False
    assert json.loads(text_of(result)) == {"action": "accept", "content": {"answer": "blue"}}
    [(message, schema)] = questions
    assert message == "Favourite colour?"
    assert schema["properties"]["answer"]["type"] == "string" and schema["required"] == ["answer"]


async def test_elicit_without_elicitation_capability_is_a_tool_error() -> None:
    async with Client(demo_params()) as client:
        result = await client.call_tool("elicit", {"question": "Favourite colour?"})
    assert result.is_error is True
    assert "did not declare form-mode elicitation" in text_of(result)


@pytest.mark.filterwarnings("ignore::mcp.MCPDeprecationWarning")
async def test_set_level_filters_log_notifications() -> None:
    logs = LogCollector()
    async with Client(demo_params(), logging_callback=logs) as client:
        await client.set_logging_level("warning")
        await client.call_tool("slow", {"seconds": 0, "steps": 2})
        await client.send_ping()  # notifications precede the responses that follow them on stdout
        assert logs.messages == []
        await client.set_logging_level("info")
        await client.call_tool("slow", {"seconds": 0, "steps": 2})
        await client.send_ping()
        assert logs.texts("info") == ["slow: step 1 of 2", "slow: step 2 of 2"]


async def test_whoami_lists_only_the_variables_the_client_passed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DEMO_TEST_PARENT_SECRET", "parent-secret-value")
    async with Client(demo_params(DEMO_TEST_PASSED="passed-value")) as client:
        names = text_of(await client.call_tool("whoami", {})).split("\n")
    expected = set(get_default_environment()) | set(BASE_ENV) | {"DEMO_TEST_PASSED"}
    assert names == sorted(expected)
    assert "DEMO_TEST_PARENT_SECRET" not in names
    assert not any("passed-value" in name for name in names)


# --- raw protocol ------------------------------------------------------------------------------


class RawSession:
    def __init__(self, process: Process) -> None:
        assert process.stdin is not None and process.stdout is not None
        self.process = process
        self._stdin: ByteSendStream = process.stdin
        stdout: ByteReceiveStream = process.stdout
        self._stdout = BufferedByteReceiveStream(stdout)

    async def send_line(self, line: bytes) -> None:
        await self._stdin.send(line + b"\n")

    async def send(self, message: dict[str, Any]) -> None:
        await self.send_line(json.dumps(message).encode())

    async def receive(self) -> dict[str, Any]:
        with anyio.fail_after(5):
            message: dict[str, Any] = json.loads(await self._stdout.receive_until(b"\n", 1 << 20))
        return message

    async def request(self, request_id: int, method: str, params: dict[str, Any]) -> dict[str, Any]:
        await self.send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        return await self.receive()

    async def notifications_before_response(
        self, request_id: int, method: str, params: dict[str, Any]
    ) -> list[dict[str, Any]]:
        await self.send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        notifications: list[dict[str, Any]] = []
        while "id" not in (message := await self.receive()):
            notifications.append(message)
        assert message["id"] == request_id and "result" in message
        return notifications

    async def close_stdin_and_wait(self) -> int:
        await self._stdin.aclose()
        with anyio.fail_after(3):
            return await self.process.wait()


@asynccontextmanager
async def raw_demo() -> AsyncIterator[RawSession]:
    command = [sys.executable, "-m", "mcp_barbican.demo"]
    async with await anyio.open_process(command, env=BASE_ENV, stderr=None) as process:
        try:
            yield RawSession(process)
        finally:
            if process.returncode is None:
                process.kill()


def initialize_params(version: str) -> dict[str, Any]:
    return {"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "raw", "version": "0"}}


async def test_malformed_line_gets_a_parse_error_and_the_server_survives() -> None:
    async with raw_demo() as demo:
        await demo.send_line(b'{"jsonrpc": "2.0", "id": 1, "method": ')
        error = await demo.receive()
        assert error["id"] is None and error["error"]["code"] == -32700
        await demo.send_line(b"\xff\xfe not utf-8")
        assert (await demo.receive())["error"]["code"] == -32700
        assert await demo.request(2, "ping", {}) == {"jsonrpc": "2.0", "id": 2, "result": {}}
        assert await demo.close_stdin_and_wait() == 0


@pytest.mark.parametrize(
    ("requested", "negotiated"),
    [("2024-11-05", "2024-11-05"), ("2025-06-18", "2025-06-18"), ("2026-07-28", "2025-11-25"), ("1.0", "2025-11-25")],
)
async def test_version_negotiation(requested: str, negotiated: str) -> None:
    async with raw_demo() as demo:
        discover = await demo.request(1, "server/discover", {})
        assert discover["error"]["code"] == -32601
        response = await demo.request(2, "initialize", initialize_params(requested))
        assert response["result"]["protocolVersion"] == negotiated
        assert await demo.close_stdin_and_wait() == 0


async def test_protocol_errors_and_prompt_exit_with_a_running_tool() -> None:
    async with raw_demo() as demo:
        assert (await demo.request(1, "tools/list", {}))["error"]["code"] == -32600  # before initialize
        await demo.request(2, "initialize", initialize_params("2025-11-25"))
        assert (await demo.request(3, "no/such/method", {}))["error"]["code"] == -32601
        assert (await demo.request(4, "logging/setLevel", {"level": "loud"}))["error"]["code"] == -32602
        assert (await demo.request(5, "tools/call", {"arguments": {}}))["error"]["code"] == -32602
        slow = {"name": "slow", "arguments": {"seconds": 30, "steps": 1}}
        await demo.send({"jsonrpc": "2.0", "id": 6, "method": "tools/call", "params": slow})
        started = time.monotonic()
        assert await demo.close_stdin_and_wait() == 0
        assert time.monotonic() - started < 2


async def test_progress_only_for_requests_with_a_token() -> None:
    slow = {"name": "slow", "arguments": {"seconds": 0, "steps": 2}}
    async with raw_demo() as demo:
        await demo.request(1, "initialize", initialize_params("2025-11-25"))
        untracked = await demo.notifications_before_response(2, "tools/call", slow)
        tracked = await demo.notifications_before_response(3, "tools/call", slow | {"_meta": {"progressToken": "t"}})
        assert await demo.close_stdin_and_wait() == 0
    assert [message["method"] for message in untracked] == ["notifications/message"] * 2
    progress = [message["params"] for message in tracked if message["method"] == "notifications/progress"]
    assert progress == [{"progressToken": "t", "progress": n, "total": 2, "message": f"step {n} of 2"} for n in (1, 2)]


async def test_requests_written_just_before_stdin_closes_are_answered() -> None:
    async with raw_demo() as demo:
        await demo.send({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": initialize_params("2025-06-18")})
        echo = {"name": "echo", "arguments": {"message": "last words"}}
        await demo.send({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": echo})
        assert await demo.close_stdin_and_wait() == 0
        assert (await demo.receive())["id"] == 1
        assert (await demo.receive())["result"]["content"][0]["text"] == "last words"
