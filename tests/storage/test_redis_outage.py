"""`fail_mode.auth` while Redis is down: issued tokens refused (closed) or accepted as last known (open), counted,
logged once; configured tokens unaffected; everything back when Redis returns, without a restart."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.proxy import TOKEN, RunningProxy, demo_mcp, free_port, run_proxy, traceback_in
from tests.server.test_endpoint import INIT, MCP_HEADERS
from tests.storage.redis_server import redis_server

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

ADMIN_TOKEN = "admin-token-0123456789abcdef"
ADMIN = {"authorization": f"Bearer {ADMIN_TOKEN}"}


async def _initialize(http: httpx2.AsyncClient, proxy: RunningProxy, token: str) -> httpx2.Response:
    headers = {**MCP_HEADERS, "Authorization": f"Bearer {token}"}
    return await http.post(proxy.url("demo"), headers=headers, json=INIT)


async def _within(seconds: float, probe: Callable[[], Awaitable[bool]]) -> bool:
    deadline = time.monotonic() + seconds
    while not await probe():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


def _metric(text: str, name: str) -> float | None:
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return None if found is None else float(found.group(1))


@pytest.mark.parametrize(("mode", "while_down"), [("closed", 503), ("open", 200)])
async def test_issued_tokens_follow_fail_mode_auth_while_redis_is_down_and_work_again_after(
    tmp_path: Path, mode: str, while_down: int
) -> None:
    data = tmp_path / "redis"
    data.mkdir()
    port, admin_port = free_port(), free_port()
    admin = f"http://127.0.0.1:{admin_port}/admin"
    decisions = f'mcp_barbican_storage_outage_decisions_total{{decision="{mode}",feature="auth"}}'
    with contextlib.ExitStack() as stack:
        async with httpx2.AsyncClient(timeout=10) as http:

            async def metrics() -> str:
                return (await http.get(f"http://127.0.0.1:{admin_port}/metrics", headers=ADMIN)).text

            async def store_up(wanted: float) -> bool:
                return _metric(await metrics(), "mcp_barbican_storage_up") == wanted

            with redis_server(port, keep_in=data) as url:
                server: dict[str, Any] = {
                    "storage": {"type": "redis", "url": url, "fail_mode": {"auth": mode}},
                    "admin": {"port": admin_port, "token": ADMIN_TOKEN},
                }
                proxy = stack.enter_context(run_proxy(tmp_path, [demo_mcp()], server=server))
                issued = await http.post(f"{admin}/tokens", headers=ADMIN, json={"id": "kept"})
                assert issued.status_code == 201, issued.text
                token = issued.json()["token"]
                assert (await _initialize(http, proxy, token)).status_code == 200
                assert await store_up(1.0)
                assert _metric(await metrics(), decisions) == 0.0

            assert await _within(5.0, lambda: store_up(0.0)), "the proxy notices Redis is gone"
            answers = [await _initialize(http, proxy, token) for _ in range(3)]
            assert [a.status_code for a in answers] == [while_down] * 3, answers[0].text
            if while_down == 503:
                assert answers[0].json()["error"] == "storage_unavailable"
            assert (await _initialize(http, proxy, TOKEN)).status_code == 200, "a configured token does not need Redis"
            assert (await http.post(f"{admin}/tokens", headers=ADMIN, json={})).status_code == 503
            assert _metric(await metrics(), decisions) == 3.0, "each decision counted"

            with redis_server(port, keep_in=data):

                async def accepted() -> bool:
                    return (await _initialize(http, proxy, token)).status_code == 200

                assert await _within(5.0, accepted), "the issued token works again, without a restart"
                assert await _within(5.0, lambda: store_up(1.0))
    log = proxy.log_text()
    assert traceback_in(proxy.log) is None
    assert log.count("issued tokens: Redis unreachable") == 1, log
    assert log.count("state store: Redis reachable again") == 1, log
