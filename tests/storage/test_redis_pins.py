"""Tool pins shared through Redis: a change one replica sees is pending on the other, and an approval made on one
is served by the other within a second (its sessions hear `list_changed`)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import anyio
import httpx2
import pytest
from mcp import types

from tests.proxy import RunningProxy, free_port, mcp_client, run_proxy, traceback_in
from tests.server.test_pins_e2e import names, set_tools, shifting, tool
from tests.storage.redis_server import redis_server

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

ADMIN_TOKEN: Final = "admin-token-0123456789abcdef"
ADMIN: Final = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
WITHIN: Final = 1.0

Replica = tuple[RunningProxy, int]


@contextlib.contextmanager
def two_replicas(tmp_path: Path, state: Path) -> Iterator[tuple[Replica, Replica]]:
    with redis_server() as url, contextlib.ExitStack() as stack:
        started = []
        for name in ("a", "b"):
            directory = tmp_path / name
            directory.mkdir()
            admin_port = free_port()
            server: dict[str, Any] = {
                "storage": {"type": "redis", "url": url},
                "admin": {"port": admin_port, "token": ADMIN_TOKEN},
                "security": {"auth_failure_ban": {"enabled": False}},
            }
            started.append((stack.enter_context(run_proxy(directory, [shifting(state)], server=server)), admin_port))
        yield started[0], started[1]


async def pins(client: httpx2.AsyncClient, port: int) -> dict[str, Any]:
    answer = await client.get(f"http://127.0.0.1:{port}/admin/mcps/shift/pins", headers=ADMIN)
    assert answer.status_code == 200, answer.text
    listed: dict[str, Any] = answer.json()
    return listed


async def test_a_change_seen_on_one_replica_is_pending_on_the_other_and_approved_everywhere(tmp_path: Path) -> None:
    state = tmp_path / "tools.json"
    set_tools(state, tool("echo"), tool("other"))
    with two_replicas(tmp_path, state) as ((a, admin_a), (b, admin_b)):
        changed = asyncio.Event()

        async def on_message(message: Any) -> None:
            if isinstance(message, types.ToolListChangedNotification):
                changed.set()

        async with (
            httpx2.AsyncClient(timeout=30) as http,
            mcp_client(a.url("shift")) as on_a,
            mcp_client(b.url("shift"), message_handler=on_message) as on_b,
        ):
            assert names(await on_a.list_tools()) == {"echo", "other"}
            assert names(await on_b.list_tools()) == {"echo", "other"}
            set_tools(state, tool("echo", "Changed."), tool("other"))
            assert names(await on_a.list_tools()) == {"other"}  # a sees the change first

            for _ in range(200):  # a's write reaches the store just after its answer
                if (await pins(http, admin_b))["pending"]:
                    break
                await asyncio.sleep(0.05)
            assert [(p["tool"], p["change"]) for p in (await pins(http, admin_b))["pending"]] == [("echo", "changed")]
            assert names(await on_b.list_tools()) == {"other"}

            changed.clear()
            approved = await http.post(f"http://127.0.0.1:{admin_a}/admin/mcps/shift/pins/approve", headers=ADMIN)
            assert approved.status_code == 200, approved.text
            start = time.monotonic()
            with anyio.fail_after(WITHIN):
                await changed.wait()  # b's session hears it: b's decision follows the store
            took = time.monotonic() - start
            assert names(await on_b.list_tools()) == {"echo", "other"}, f"after {took:.3f} s"
            assert "called echo" in (await on_b.call_tool("echo", {})).content[0].text  # type: ignore[union-attr]
            assert (await pins(http, admin_b))["pending"] == []


async def test_while_redis_is_down_the_pins_hold_and_the_admin_routes_answer_503(tmp_path: Path) -> None:
    state = tmp_path / "tools.json"
    set_tools(state, tool("echo"))
    data = tmp_path / "redis"
    data.mkdir()
    port, admin_port = free_port(), free_port()
    pins_url = f"http://127.0.0.1:{admin_port}/admin/mcps/shift/pins"
    async with contextlib.AsyncExitStack() as stack:
        async with httpx2.AsyncClient(timeout=30) as http:
            with redis_server(port, keep_in=data) as url:
                server: dict[str, Any] = {
                    "storage": {"type": "redis", "url": url},
                    "admin": {"port": admin_port, "token": ADMIN_TOKEN},
                }
                proxy = stack.enter_context(run_proxy(tmp_path, [shifting(state)], server=server))
                client = await stack.enter_async_context(mcp_client(proxy.url("shift")))
                assert names(await client.list_tools()) == {"echo"}
                assert (await http.get(pins_url, headers=ADMIN)).json()["pinned"]
            set_tools(state, tool("echo", "Changed while Redis is down."))
            assert names(await client.list_tools()) == set()  # the last-known pins still decide
            for method, path in (("GET", ""), ("POST", "/approve"), ("POST", "/reset")):
                answer = await http.request(method, pins_url + path, headers=ADMIN)
                assert answer.status_code == 503, answer.text
                assert answer.json()["error"] == "storage_unavailable"
    assert traceback_in(proxy.log) is None
    assert "a tool pin could not be stored" in proxy.log_text()


async def _per_worker_pins(admin_port: int) -> dict[int, dict[str, Any]]:
    """Each worker's own view of the pins: asked on one connection per try (one worker), until both answered."""
    seen: dict[int, dict[str, Any]] = {}
    for _ in range(200):
        async with httpx2.AsyncClient(timeout=30) as http:  # one connection: both requests reach one worker
            metrics = await http.get(f"http://127.0.0.1:{admin_port}/admin/metrics", headers=ADMIN)
            seen[metrics.json()["worker"]] = await pins(http, admin_port)
        if len(seen) == 2:
            break
    assert set(seen) == {1, 2}, f"only worker(s) {sorted(seen)} answered"
    return seen


async def test_with_two_workers_a_change_is_pending_in_both_and_an_approval_serves_it_in_both(tmp_path: Path) -> None:
    state = tmp_path / "tools.json"
    set_tools(state, tool("echo"), tool("other"))
    admin_port = free_port()
    with redis_server() as url:
        server: dict[str, Any] = {
            "storage": {"type": "redis", "url": url},
            "admin": {"port": admin_port, "token": ADMIN_TOKEN},
        }
        with run_proxy(tmp_path, [shifting(state)], server=server, workers=2) as proxy:
            async with mcp_client(proxy.url("shift")) as client:
                assert names(await client.list_tools()) == {"echo", "other"}
                set_tools(state, tool("echo", "Changed."), tool("other"))
                assert names(await client.list_tools()) == {"other"}  # the worker that listed saw the change
            for _ in range(100):
                views = await _per_worker_pins(admin_port)
                if all(view["pending"] for view in views.values()):
                    break
                await asyncio.sleep(0.05)
            assert {n: [(p["tool"], p["change"]) for p in v["pending"]] for n, v in views.items()} == {
                1: [("echo", "changed")],
                2: [("echo", "changed")],
            }
            async with httpx2.AsyncClient(timeout=30) as http:
                approved = await http.post(
                    f"http://127.0.0.1:{admin_port}/admin/mcps/shift/pins/approve", headers=ADMIN
                )
                assert approved.status_code == 200, approved.text
            start = time.monotonic()
            while any(view["pending"] for view in (await _per_worker_pins(admin_port)).values()):
                assert time.monotonic() - start < WITHIN, "both workers apply the approval within a second"
                await asyncio.sleep(0.02)
            async with mcp_client(proxy.url("shift")) as client:
                assert names(await client.list_tools()) == {"echo", "other"}
        assert traceback_in(proxy.log) is None
