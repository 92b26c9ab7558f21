"""`session_mode: shared`: many clients on one upstream session, nothing crossing between them.

Clients of one principal share an upstream session; two principals never do (DESIGN §4), so the
upstream's requests, logs, progress and answers for one principal's call never reach another's.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Final

import anyio
import httpx2
import mcp_types as types
import pytest

from tests.proxy import RunningProxy, demo_mcp, mcp_client, run_proxy
from tests.server.test_failures import stdio_children_of

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    with run_proxy(tmp_path_factory.mktemp("shared"), [demo_mcp("demo", session_mode="shared")]) as running:
        yield running


TOKENS: Final = {"a": "principal-a-token-0123456789", "b": "principal-b-token-0123456789"}
TWO_PRINCIPALS: Final = {"type": "token", "tokens": [{"id": key, "token": value} for key, value in TOKENS.items()]}


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    """A shared stdio MCP that two principals, `a` and `b`, both reach."""
    mcps = [demo_mcp("demo", session_mode="shared")]
    with run_proxy(tmp_path_factory.mktemp("shared-two"), mcps, auth=TWO_PRINCIPALS) as running:
        yield running


def as_principal(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {TOKENS[name]}"}


class Recorder:
    """What one client received: progress values, log lines, and what the upstream asked it."""

    def __init__(self) -> None:
        self.progress: list[tuple[float, float | None]] = []
        self.logs: list[str] = []
        self.asked: list[str] = []
        self.started = anyio.Event()

    async def on_progress(self, progress: float, total: float | None, message: str | None) -> None:
        self.progress.append((progress, total))
        self.started.set()

    async def sampling(self, context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
        content = params.messages[0].content
        self.asked.append(getattr(content, "text", repr(content)))
        return types.CreateMessageResult(
            role="assistant", content=types.TextContent(type="text", text=f"model of {id(self)}"), model="m"
        )

    async def elicitation(self, context: Any, params: types.ElicitRequestParams) -> types.ElicitResult:
        self.asked.append(params.message)
        return types.ElicitResult(action="accept", content={"answer": f"user of {id(self)}"})

    def callbacks(self) -> dict[str, Any]:
        return {"sampling_callback": self.sampling, "elicitation_callback": self.elicitation}

    async def on_log(self, params: types.LoggingMessageNotificationParams) -> None:
        self.logs.append(str(params.data))


async def check_answers_and_progress_stay_apart(url: str, headers: Callable[[str], dict[str, str] | None]) -> None:
    """Clients a and b call echo and slow at once: each gets only its own answers and progress."""
    results: dict[str, Any] = {}
    recorders = {"a": Recorder(), "b": Recorder()}

    async def run(name: str, steps: int) -> None:
        async with mcp_client(url, headers=headers(name)) as client:
            echo = await client.call_tool("echo", {"message": f"from {name}"})
            slow = await client.call_tool(
                "slow", {"seconds": 0.6, "steps": steps}, progress_callback=recorders[name].on_progress
            )
            results[name] = (echo.content[0], slow.content[0])

    with anyio.fail_after(60):
        async with anyio.create_task_group() as group:
            group.start_soon(run, "a", 3)
            group.start_soon(run, "b", 5)
    assert results["a"][0].text == "from a" and results["b"][0].text == "from b"
    assert results["a"][1].text == "done after 3 steps" and results["b"][1].text == "done after 5 steps"
    assert recorders["a"].progress == [(float(i), 3.0) for i in range(1, 4)]
    assert recorders["b"].progress == [(float(i), 5.0) for i in range(1, 6)]


async def test_concurrent_clients_each_get_only_their_own_answers_and_progress(proxy: RunningProxy) -> None:
    await check_answers_and_progress_stay_apart(proxy.url("demo"), lambda _name: None)


async def test_a_sampling_request_goes_to_the_client_that_caused_it(proxy: RunningProxy) -> None:
    asked: list[str] = []

    def sampler(name: str) -> Any:
        async def sampling(context: Any, params: types.CreateMessageRequestParams) -> types.CreateMessageResult:
            asked.append(name)
            return types.CreateMessageResult(
                role="assistant", content=types.TextContent(type="text", text=f"model of {name}"), model="m"
            )

        return sampling

    async with (
        mcp_client(proxy.url("demo"), sampling_callback=sampler("a")) as a,
        mcp_client(proxy.url("demo"), sampling_callback=sampler("b")) as b,
    ):
        result_b = await b.call_tool("sample", {"prompt": "q"})
        result_a = await a.call_tool("sample", {"prompt": "q"})
    assert asked == ["b", "a"]
    assert "model of b" in result_b.content[0].text  # type: ignore[union-attr]
    assert "model of a" in result_a.content[0].text  # type: ignore[union-attr]


async def test_a_client_without_sampling_gets_an_error_not_another_clients_model(proxy: RunningProxy) -> None:
    async with mcp_client(proxy.url("demo")) as client:
        result = await client.call_tool("sample", {"prompt": "q"})
    assert result.is_error


# The SDK deprecates the logging capability (SEP-2577) but servers still offer it and the proxy relays it.
@pytest.mark.filterwarnings("ignore:The logging capability is deprecated:mcp.shared.exceptions.MCPDeprecationWarning")
async def test_log_levels_are_kept_per_client(proxy: RunningProxy) -> None:
    quiet, chatty = Recorder(), Recorder()
    async with (
        mcp_client(proxy.url("demo"), logging_callback=quiet.on_log) as a,
        mcp_client(proxy.url("demo"), logging_callback=chatty.on_log) as b,
    ):
        await a.set_logging_level("error")
        await b.set_logging_level("debug")
        await a.call_tool("slow", {"seconds": 0.2, "steps": 2})
        await b.call_tool("slow", {"seconds": 0.2, "steps": 2})
    assert quiet.logs == []
    assert len(chatty.logs) == 2 and all("slow" in line for line in chatty.logs)


async def _while_b_waits(proxy: RunningProxy, b: Recorder, then: Any) -> Any:
    """Run `then()` while principal b has an older request in flight on the same MCP."""
    result: Any = None
    async with mcp_client(proxy.url("demo"), headers=as_principal("b"), **b.callbacks()) as client_b:
        async with anyio.create_task_group() as group:
            group.start_soon(_b_waits, client_b, b)
            await b.started.wait()
            result = await then()
            group.cancel_scope.cancel()
    return result


async def _b_waits(client_b: Any, b: Recorder) -> None:
    """b's request stays in flight (up to 30 s, a step every 0.5 s) until the test cancels it."""
    await client_b.call_tool("slow", {"seconds": 30, "steps": 60}, progress_callback=b.on_progress)


@pytest.mark.parametrize(
    ("tool", "argument", "transport"),
    [("sample", "prompt", "streamable"), ("elicit", "question", "streamable"), ("sample", "prompt", "sse")],
)
async def test_a_request_to_the_client_never_reaches_another_principal(
    two: RunningProxy, tool: str, argument: str, transport: str
) -> None:
    a, b = Recorder(), Recorder()
    url = two.url("demo", "/sse" if transport == "sse" else "")

    async def a_asks() -> types.CallToolResult:
        async with mcp_client(url, transport=transport, headers=as_principal("a"), **a.callbacks()) as client_a:
            return await client_a.call_tool(tool, {argument: "the secret of a"})

    with anyio.fail_after(60):
        result = await _while_b_waits(two, b, a_asks)
    assert b.asked == []
    assert a.asked == ["the secret of a"]
    assert str(id(a)) in result.content[0].text


@pytest.mark.filterwarnings("ignore::mcp.shared.exceptions.MCPDeprecationWarning")  # logging/setLevel
async def test_log_lines_never_reach_another_principal(two: RunningProxy) -> None:
    a, b = Recorder(), Recorder()

    async def a_logs() -> None:
        async with mcp_client(two.url("demo"), headers=as_principal("a"), logging_callback=a.on_log) as client_a:
            await client_a.set_logging_level("debug")
            await client_a.call_tool("slow", {"seconds": 0.6, "steps": 3})

    async with mcp_client(two.url("demo"), headers=as_principal("b"), logging_callback=b.on_log) as client_b:
        await client_b.set_logging_level("debug")
        with anyio.fail_after(60):
            async with anyio.create_task_group() as group:
                group.start_soon(_b_waits, client_b, b)
                await b.started.wait()
                await a_logs()
                group.cancel_scope.cancel()
    assert a.logs == [f"slow: step {i} of 3" for i in range(1, 4)]
    assert not any("of 3" in line for line in b.logs)
    assert any("of 60" in line for line in b.logs)


async def test_answers_and_progress_stay_with_their_principal(two: RunningProxy) -> None:
    await check_answers_and_progress_stay_apart(two.url("demo"), as_principal)


async def test_clients_of_one_principal_share_its_upstream_and_principals_do_not(two: RunningProxy) -> None:
    with anyio.fail_after(60):
        async with (
            mcp_client(two.url("demo"), headers=as_principal("a")) as a1,
            mcp_client(two.url("demo"), headers=as_principal("a")) as a2,
            mcp_client(two.url("demo"), headers=as_principal("b")) as b1,
        ):
            for client in (a1, a2, b1):
                await client.call_tool("echo", {"message": "hi"})
            assert len(_children(two)) == 2


def test_the_upstream_is_one_process_for_all_clients(proxy: RunningProxy) -> None:
    assert len(_children(proxy)) == 1


INIT: Final = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}
MCP_HEADERS: Final = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def _initialize(proxy: RunningProxy, principal: str) -> httpx2.Response:
    return httpx2.post(proxy.url("demo"), headers={**MCP_HEADERS, **as_principal(principal)}, json=INIT, timeout=30)


def _end(proxy: RunningProxy, principal: str, response: httpx2.Response) -> None:
    session = {"Mcp-Session-Id": response.headers["mcp-session-id"]}
    ended = httpx2.delete(proxy.url("demo"), headers={**MCP_HEADERS, **as_principal(principal), **session})
    assert ended.status_code == 204


def test_max_sessions_bounds_the_upstream_sessions_and_idle_ones_make_room(tmp_path: Path) -> None:
    mcps = [demo_mcp("demo", session_mode="shared", max_sessions=1)]
    server = {"session_idle_timeout": 2}
    with run_proxy(tmp_path, mcps, auth=TWO_PRINCIPALS, server=server) as proxy:
        first_a, second_a = _initialize(proxy, "a"), _initialize(proxy, "a")
        assert first_a.status_code == second_a.status_code == 200
        refused = _initialize(proxy, "b")
        assert refused.status_code == 503 and "max_sessions" in refused.json()["error"]["message"]
        assert refused.headers["retry-after"] == "5"
        _end(proxy, "a", first_a)
        assert _initialize(proxy, "b").status_code == 503  # a still has a client on its upstream
        _end(proxy, "a", second_a)
        taken_over = _initialize(proxy, "b")
        assert taken_over.status_code == 200, taken_over.text
        assert len(_children(proxy)) == 1
        _end(proxy, "b", taken_over)
        deadline = time.monotonic() + 20
        while _children(proxy) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert _children(proxy) == []  # b's upstream closed after session_idle_timeout unused


def _children(proxy: RunningProxy) -> list[int]:
    """The MCP servers the proxy runs, without the guard beside each (upstream/process.py)."""
    return stdio_children_of(proxy.process.pid)


# An upstream of the stateless era over stdio that logs without saying for which request
# (stdio cannot say): `wait` answers after WAIT_SECONDS, `chatty` logs a line and answers.
CHATTY_UPSTREAM: Final = r"""
import json, sys, threading
lock = threading.Lock()
def send(message):
    with lock:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()
def result(request, value):
    send({"jsonrpc": "2.0", "id": request["id"], "result": value})
def text(value):
    return {"content": [{"type": "text", "text": value}]}
TOOLS = [{"name": name, "inputSchema": {"type": "object"}} for name in ("wait", "chatty")]
for line in sys.stdin:
    request = json.loads(line)
    method = request.get("method")
    if "id" not in request:
        continue
    if method == "initialize":
        result(request, {"protocolVersion": "2025-11-25", "capabilities": {"tools": {}, "logging": {}},
                         "serverInfo": {"name": "chatty", "version": "1"}})
    elif method == "tools/list":
        result(request, {"tools": TOOLS})
    elif method == "tools/call" and request["params"]["name"] == "wait":
        threading.Timer(WAIT_SECONDS, result, (request, text("waited"))).start()
    elif method == "tools/call":
        send({"jsonrpc": "2.0", "method": "notifications/message",
              "params": {"level": "info", "data": request["params"]["arguments"]["secret"]}})
        result(request, text("chatted"))
    else:
        send({"jsonrpc": "2.0", "id": request["id"], "error": {"code": -32601, "message": "no"}})
"""


async def test_requests_outside_sessions_never_carry_another_principals_messages(tmp_path: Path) -> None:
    script = tmp_path / "chatty.py"
    script.write_text("WAIT_SECONDS = 3\n" + CHATTY_UPSTREAM)
    mcps = [{"id": "demo", "command": sys.executable, "args": [str(script)]}]
    with run_proxy(tmp_path, mcps, auth=TWO_PRINCIPALS) as proxy:
        bodies: dict[str, str] = {}

        async def call(principal: str, tool: str, arguments: dict[str, Any]) -> None:
            meta = {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}
            params = {"name": tool, "arguments": arguments, "_meta": meta}
            body = {"jsonrpc": "2.0", "id": 7, "method": "tools/call", "params": params}
            headers = {**MCP_HEADERS, **as_principal(principal)}
            async with httpx2.AsyncClient(timeout=30) as http:
                response = await http.post(proxy.url("demo"), headers=headers, json=body)
            assert response.status_code == 200, response.text
            bodies[principal] = response.text

        with anyio.fail_after(30):
            async with anyio.create_task_group() as group:
                group.start_soon(call, "b", "wait", {})
                await anyio.sleep(1)
                await call("a", "chatty", {"secret": "the secret of a"})
    assert "chatted" in bodies["a"] and "waited" in bodies["b"]
    assert "the secret of a" not in bodies["b"]
