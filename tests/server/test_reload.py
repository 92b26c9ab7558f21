"""Hot reload of the config file: valid changes apply MCP by MCP, invalid ones change nothing."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml

from tests.admin.test_app import ADMIN_TOKEN, call
from tests.proxy import AUTH_HEADER, RunningProxy, demo_mcp, run_proxy
from tests.server.test_endpoint import INIT, MCP_HEADERS

pytestmark = pytest.mark.e2e

SERVER = {"admin": {"token": ADMIN_TOKEN}, "audit": {"sinks": [{"type": "sqlite"}]}}
PING = {"jsonrpc": "2.0", "id": 7, "method": "ping"}


def edit(directory: Path, change: Callable[[dict[str, Any]], None]) -> None:
    path = directory / "mcp-barbican.yaml"
    config = yaml.safe_load(path.read_text())
    change(config)
    path.write_text(yaml.safe_dump(config))


def session(proxy: RunningProxy, mcp_id: str) -> dict[str, str]:
    headers = {**MCP_HEADERS, **AUTH_HEADER}
    reply = httpx2.post(proxy.url(mcp_id), headers=headers, json=INIT)
    assert reply.status_code == 200
    return {**headers, "Mcp-Session-Id": reply.headers["mcp-session-id"]}


def ping(proxy: RunningProxy, mcp_id: str, headers: dict[str, str]) -> int:
    return int(httpx2.post(proxy.url(mcp_id), headers=headers, json=PING).status_code)


def mcp_ids(proxy: RunningProxy) -> set[str]:
    return {m["definition"]["id"] for m in call(proxy, "GET", "/admin/mcps").json()["mcps"]}


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the reload did not happen in time"
        time.sleep(0.1)


def reload_events(proxy: RunningProxy) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = call(proxy, "GET", "/admin/audit?type=config_reload").json()["events"]
    return events


def test_a_valid_change_applies_and_keeps_unchanged_sessions(tmp_path: Path) -> None:
    with run_proxy(tmp_path, [demo_mcp("a"), demo_mcp("b")], server=SERVER) as proxy:
        on_a, on_b = session(proxy, "a"), session(proxy, "b")

        def change(config: dict[str, Any]) -> None:
            config["mcps"][0]["description"] = "changed"
            config["mcps"].append(demo_mcp("c"))

        edit(tmp_path, change)
        wait_for(lambda: "c" in mcp_ids(proxy))
        assert ping(proxy, "b", on_b) == 200, "an unchanged MCP keeps its sessions"
        assert ping(proxy, "a", on_a) == 404, "a changed MCP starts afresh"
        assert ping(proxy, "a", session(proxy, "a")) == 200
        assert ping(proxy, "c", session(proxy, "c")) == 200
        wait_for(lambda: bool(reload_events(proxy)))
        (event,) = reload_events(proxy)
        assert event["success"] is True
        assert set(event["details"]["changes"]) == {"replaced a", "added c"}


def test_an_invalid_change_is_refused_and_the_old_config_keeps_serving(tmp_path: Path) -> None:
    with run_proxy(tmp_path, [demo_mcp("a")], server=SERVER) as proxy:
        edit(tmp_path, lambda config: config["mcps"][0].update({"no_such_key": 1}))
        wait_for(lambda: bool(reload_events(proxy)))
        (event,) = reload_events(proxy)
        assert event["success"] is False
        assert "no_such_key" in event["error"]
        assert "refused" in proxy.log_text()
        assert ping(proxy, "a", session(proxy, "a")) == 200
        port = proxy.port

        def move_listener(config: dict[str, Any]) -> None:
            config["mcps"] = [demo_mcp("a")]
            config["server"]["port"] = 1

        edit(tmp_path, move_listener)
        wait_for(lambda: len(reload_events(proxy)) == 2)
        assert "server.port changed: restart to apply" in reload_events(proxy)[0]["error"]
        assert proxy.port == port
        assert ping(proxy, "a", session(proxy, "a")) == 200


def test_sighup_reloads_an_unchanged_looking_file(tmp_path: Path) -> None:
    with run_proxy(tmp_path, [demo_mcp("a"), demo_mcp("b")], server=SERVER) as proxy:
        path = tmp_path / "mcp-barbican.yaml"
        before = path.stat()
        edit(tmp_path, lambda config: config["mcps"][1].update({"id": "z"}))  # same length: same size
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert path.stat().st_size == before.st_size
        time.sleep(1.5)
        assert mcp_ids(proxy) == {"a", "b"}, "no change seen without the signal"
        os.kill(proxy.process.pid, signal.SIGHUP)
        wait_for(lambda: mcp_ids(proxy) == {"a", "z"})
        assert reload_events(proxy)[0]["details"]["trigger"] == "SIGHUP"


def test_a_refused_reload_names_every_error_on_one_line(tmp_path: Path) -> None:
    with run_proxy(tmp_path, [demo_mcp("a")], server=SERVER) as proxy:
        edit(tmp_path, lambda config: config["mcps"][0].update({"one": 1, "two": 2}))
        wait_for(lambda: bool(reload_events(proxy)))
        # The watcher may see the file twice as it is written; each reload is refused alike.
        for event in reload_events(proxy):
            assert event["error"].startswith("mcps[0].one: unknown key")
            assert "; mcps[0].two: unknown key" in event["error"]
        lines = [line for line in proxy.log_text().splitlines() if "config reload (file change) refused" in line]
        assert lines and all("mcps[0].one" in line and "mcps[0].two" in line for line in lines)


def test_a_reload_cannot_list_an_issued_token_id(tmp_path: Path) -> None:
    with run_proxy(tmp_path, [demo_mcp("a")], server=SERVER) as proxy:
        assert call(proxy, "POST", "/admin/tokens", {"id": "ci"}).status_code == 201
        listed = {"type": "token", "tokens": [{"id": "ci", "token": "ci-token-0123456789"}]}
        edit(tmp_path, lambda config: config["mcps"][0].update({"auth": listed}))
        wait_for(lambda: bool(reload_events(proxy)))
        (event,) = reload_events(proxy)
        assert event["success"] is False
        assert "mcps[0].auth.tokens[0].id: token id 'ci' is taken" in event["error"]
        assert ping(proxy, "a", session(proxy, "a")) == 200, "the running config keeps serving"


def test_a_reload_of_server_authorization_applies_to_the_mcps_that_inherit_it(tmp_path: Path) -> None:
    own = {"policies": [{"principals": ["token:server"], "allow": {"tools": ["echo"]}}]}
    with run_proxy(tmp_path, [demo_mcp("a"), demo_mcp("b", authorization=own)], server=SERVER) as proxy:
        assert ping(proxy, "a", session(proxy, "a")) == 200

        def change(config: dict[str, Any]) -> None:
            config["server"]["authorization"] = {"policies": [{"roles": ["admin"], "allow": {"tools": ["*"]}}]}

        edit(tmp_path, change)
        headers = {**MCP_HEADERS, **AUTH_HEADER}
        wait_for(lambda: httpx2.post(proxy.url("a"), headers=headers, json=INIT).status_code == 403)
        assert httpx2.post(proxy.url("a"), headers=headers, json=INIT).json()["error"] == "insufficient_scope"
        assert ping(proxy, "b", session(proxy, "b")) == 200, "an MCP with its own block is not governed by the server's"
