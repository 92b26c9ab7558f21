"""`session_mode: shared`: many clients on one upstream session, nothing crossing between them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import mcp_types as types
import pytest

from tests.proxy import RunningProxy, demo_mcp, mcp_client, run_proxy

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    with run_proxy(tmp_path_factory.mktemp("shared"), [demo_mcp("demo", session_mode="shared")]) as running:
        yield running


class Recorder:
    """What one client received: progress values and log lines."""

    def __init__(self) -> None:
        self.progress: list[tuple[float, float | None]] = []
        self.logs: list[str] = []

    async def on_progress(self, progress: float, total: float | None, message: str | None) -> None:
        self.progress.append((progress, total))

    async def on_log(self, params: types.LoggingMessageNotificationParams) -> None:
        self.logs.append(str(params.data))


async def test_concurrent_clients_each_get_only_their_own_answers_and_progress(proxy: RunningProxy) -> None:
    results: dict[str, Any] = {}
    recorders = {"a": Recorder(), "b": Recorder()}

    async def run(name: str, steps: int) -> None:
        async with mcp_client(proxy.url("demo")) as client:
            echo = await client.call_tool("echo", {"message": f"from {name}"})
            slow = await client.call_tool(
                "slow", {"seconds": 0.6, "steps": steps}, progress_callback=recorders[name].on_progress
            )
            results[name] = (echo.content[0], slow.content[0])

    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            group.start_soon(run, "a", 3)
            group.start_soon(run, "b", 5)
    assert results["a"][0].text == "from a" and results["b"][0].text == "from b"
    assert results["a"][1].text == "done after 3 steps"
    assert results["b"][1].text == "done after 5 steps"
    assert recorders["a"].progress == [(float(i), 3.0) for i in range(1, 4)]
    assert recorders["b"].progress == [(float(i), 5.0) for i in range(1, 6)]


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


def test_the_upstream_is_one_process_for_all_clients(proxy: RunningProxy) -> None:
    children = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _parent(p) == proxy.process.pid]
    assert len(children) == 1


def _parent(proc: Path) -> int | None:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None
