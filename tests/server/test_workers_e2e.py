"""`serve --workers 2`: a supervisor and two workers on one listener, as a user runs them (real Redis)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml

from mcp_barbican.upstream.process import GUARD_NAME
from tests.proxy import AUTH_HEADER, RunningProxy, demo_mcp, free_port, run_proxy, wait_for_log
from tests.server.test_endpoint import INIT, MCP_HEADERS
from tests.server.test_failures import children_of
from tests.server.test_stdio_children_e2e import LINGERING, alive, command_line, descendants, survivors
from tests.storage.redis_server import redis_server
from tests.storage.test_redis_replicas import ADMIN_TOKEN, workers_counters

pytestmark = pytest.mark.e2e

#: A ping without a session: 400 from a worker that serves the MCP, 404 from one that does not know it.
PING = {"jsonrpc": "2.0", "id": 1, "method": "ping"}


@pytest.fixture
def redis_url() -> Iterator[str]:
    with redis_server() as url:
        yield url


def _server(redis_url: str, admin_port: int) -> dict[str, Any]:
    return {"storage": {"type": "redis", "url": redis_url}, "admin": {"port": admin_port, "token": ADMIN_TOKEN}}


def _workers(proxy: RunningProxy) -> list[int]:
    return sorted(children_of(proxy.process.pid))


def _wait_gone(pid: int, within: float = 10) -> None:
    deadline = time.monotonic() + within
    while alive(pid):
        assert time.monotonic() < deadline, f"pid {pid} still runs"
        time.sleep(0.05)


def test_more_than_one_worker_with_sqlite_storage_is_refused_before_anything_starts(tmp_path: Path) -> None:
    path = tmp_path / "mcp-barbican.yaml"
    path.write_text(f"server: {{port: {free_port()}, auth: {{type: none}}}}\nmcps: []\n")
    run = [sys.executable, "-m", "mcp_barbican", "serve", "-c", str(path), "--workers", "2"]
    done = subprocess.run(run, capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: server.storage.type: --workers 2 needs server.storage.type: redis "
        "(the workers share their state through it), not sqlite"
    ]
    assert "Traceback" not in done.stderr
    assert "listening" not in done.stderr


def test_a_supervisor_killed_with_sigkill_leaves_no_worker_nor_stdio_child(tmp_path: Path, redis_url: str) -> None:
    mcp = {"id": "lingering", "command": "/bin/sh", "args": LINGERING}
    with run_proxy(tmp_path, [mcp], server=_server(redis_url, free_port()), workers=2) as proxy:
        workers = _workers(proxy)
        for _ in range(40):  # sessions on new connections until each worker runs a child (a demo and its sleep)
            opened = httpx2.post(proxy.url("lingering"), headers=MCP_HEADERS, json=INIT, timeout=30)
            assert opened.status_code == 200, opened.text
            below = [[command_line(pid) for pid in descendants(worker)] for worker in workers]
            if all(any("sleep 600" in line for line in lines) for lines in below):
                break
        assert all(any(GUARD_NAME in line for line in lines) for lines in below), below
        found = descendants(proxy.process.pid)
        assert len(_workers(proxy)) == 2
        os.kill(proxy.process.pid, signal.SIGKILL)  # the supervisor alone, not its process group
        proxy.process.wait(10)
        assert survivors(found, within=20) == []


def test_a_killed_worker_is_restarted_and_the_proxy_keeps_answering(tmp_path: Path, redis_url: str) -> None:
    admin_port = free_port()
    with run_proxy(tmp_path, [demo_mcp("demo")], server=_server(redis_url, admin_port), workers=2) as proxy:
        first, second = _workers(proxy)
        os.kill(first, signal.SIGKILL)
        _wait_gone(first)
        for _ in range(10):  # the other worker serves alone meanwhile
            answer = httpx2.get(f"{proxy.base}/api/v1/mcp/list", headers=AUTH_HEADER, timeout=10)
            assert answer.status_code == 200, answer.text
        log = wait_for_log(proxy, f"(pid {first}) exited unexpectedly", timeout=30)
        line = re.search(
            rf"worker (\d) \(pid {first}\) exited unexpectedly \(killed by signal SIGKILL\); restarting", log
        )
        assert line is not None, log
        number = line.group(1)
        deadline = time.monotonic() + 30
        while len(restarted := re.findall(rf"worker {number} \(pid (\d+)\) accepts connections", log)) < 2:
            assert time.monotonic() < deadline, log
            time.sleep(0.1)
            log = proxy.log_text()
        assert int(restarted[1]) not in (first, second), restarted
        assert sorted(_workers(proxy)) == sorted([second, int(restarted[1])])
        assert set(workers_counters(admin_port)) == {1, 2}, "both workers answer again"


def test_a_rolling_restart_under_a_steady_trickle_of_requests_loses_none(tmp_path: Path, redis_url: str) -> None:
    with run_proxy(tmp_path, [demo_mcp("demo")], server=_server(redis_url, free_port()), workers=2) as proxy:
        before = _workers(proxy)
        statuses: list[int | str] = []
        stop = threading.Event()

        def trickle() -> None:
            with httpx2.Client(timeout=30, limits=httpx2.Limits(max_keepalive_connections=0)) as http:
                while not stop.is_set():
                    try:
                        statuses.append(http.get(f"{proxy.base}/api/v1/mcp/list", headers=AUTH_HEADER).status_code)
                    except httpx2.HTTPError as exc:
                        statuses.append(f"{type(exc).__name__}: {exc}")
                    time.sleep(0.02)

        sender = threading.Thread(target=trickle)
        sender.start()
        try:
            time.sleep(0.5)
            os.kill(proxy.process.pid, signal.SIGUSR2)
            log = wait_for_log(proxy, "rolling restart: done", timeout=60)
            time.sleep(0.5)
        finally:
            stop.set()
            sender.join(30)
        assert len(statuses) > 20, statuses
        assert set(statuses) == {200}, [s for s in statuses if s != 200]
        after = _workers(proxy)
        assert len(after) == 2 and not set(after) & set(before), (before, after)
        for number in (1, 2):  # each new worker accepted connections before its predecessor was asked to drain
            new, old = re.findall(rf"rolling restart: worker {number}: pid (\d+) serves, pid (\d+) drains", log)[0]
            assert log.index(f"worker {number} (pid {new}) accepts connections") < log.index(f"pid {old} drains")
            assert f"rolling restart: worker {number} (pid {old}) drained and exited" in log


def test_sighup_reaches_every_worker_and_sigterm_stops_them_all(tmp_path: Path, redis_url: str) -> None:
    with run_proxy(tmp_path, [demo_mcp("demo")], server=_server(redis_url, free_port()), workers=2) as proxy:
        workers = _workers(proxy)
        os.kill(proxy.process.pid, signal.SIGHUP)
        for number in (1, 2):
            wait_for_log(proxy, f"worker={number} mcp_barbican.server.reload: config reloaded (SIGHUP)")
        os.kill(proxy.process.pid, signal.SIGTERM)
        assert proxy.process.wait(30) == 0
        for pid in workers:
            _wait_gone(pid, within=1)
        log = proxy.log_text()
        assert log.count("Application shutdown complete") == 2, log
        assert "every worker has exited" in log


def test_a_start_up_failure_of_the_first_worker_stops_everything_before_another_starts(tmp_path: Path) -> None:
    unreachable = f"redis://127.0.0.1:{free_port()}/0"  # found only when the app starts, not in the config
    path = tmp_path / "mcp-barbican.yaml"
    server = {"port": free_port(), "auth": {"type": "none"}, "storage": {"type": "redis", "url": unreachable}}
    path.write_text(json.dumps({"server": server, "mcps": []}))
    run = [sys.executable, "-m", "mcp_barbican", "serve", "-c", str(path), "--workers", "2"]
    done = subprocess.run(run, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 1, done.stderr
    assert re.search(r"worker 1 \(pid \d+\) failed to start \(exit status 3\): stopping", done.stderr), done.stderr
    assert "started worker 2" not in done.stderr
    assert "Traceback" not in done.stderr


def test_a_worker_restarted_after_the_config_file_changed_serves_the_new_config(tmp_path: Path, redis_url: str) -> None:
    with run_proxy(tmp_path, [demo_mcp("demo")], server=_server(redis_url, free_port()), workers=2) as proxy:
        path = tmp_path / "mcp-barbican.yaml"
        config = yaml.safe_load(path.read_text())
        config["mcps"].append(demo_mcp("extra"))
        path.write_text(yaml.safe_dump(config))
        for number in (1, 2):
            wait_for_log(proxy, f"worker={number} mcp_barbican.server.reload: config reloaded (file change)")
        first = _workers(proxy)[0]
        os.kill(first, signal.SIGKILL)  # its replacement is forked from the supervisor, which loaded the old file
        wait_for_log(proxy, f"(pid {first}) exited unexpectedly")
        deadline = time.monotonic() + 30
        while len(re.findall(r"accepts connections", proxy.log_text())) < 3:
            assert time.monotonic() < deadline, proxy.log_text()
            time.sleep(0.1)
        with httpx2.Client(timeout=30, limits=httpx2.Limits(max_keepalive_connections=0)) as http:
            answers = [http.post(proxy.url("extra"), headers=MCP_HEADERS, json=PING).status_code for _ in range(20)]
        assert 404 not in answers, answers  # 404 unknown_mcp: a worker still on the old config


def _answer(conn: socket.socket) -> bytes:
    """One HTTP response read from `conn` (b"" if the worker closed it unanswered)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
    while len(body) < length:
        body += conn.recv(65536)
    return data


def _open(port: int, count: int) -> list[socket.socket]:
    """`count` connections that send nothing yet, opened apart so the kernel hands them to either worker."""
    opened = []
    for _ in range(count):
        opened.append(socket.create_connection(("127.0.0.1", port), timeout=15))
        time.sleep(0.03)
    return opened


def _ask(conns: list[socket.socket], port: int) -> list[bytes]:
    for conn in conns:
        conn.sendall(f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
    return [_answer(conn) for conn in conns]


def test_a_draining_worker_answers_a_request_on_a_connection_it_accepted_before_the_stop(
    tmp_path: Path, redis_url: str
) -> None:
    """A connection the kernel handed to a worker just before it drains is served, not closed unanswered."""
    with run_proxy(tmp_path, [demo_mcp("demo")], server=_server(redis_url, free_port()), workers=2) as proxy:
        first = _open(proxy.port, 8)
        os.kill(proxy.process.pid, signal.SIGUSR2)
        old = re.findall(r"worker 1: pid \d+ serves, pid (\d+) drains", wait_for_log(proxy, "worker 1: pid"))[0]
        time.sleep(0.5)  # the old worker 1 has stopped accepting and asked its connections to close
        answers = _ask(first, proxy.port)
        wait_for_log(proxy, f"worker 1 (pid {old}) drained and exited")
        second = _open(proxy.port, 8)
        wait_for_log(proxy, "worker 2: pid")
        time.sleep(0.5)
        answers += _ask(second, proxy.port)
        wait_for_log(proxy, "rolling restart: done")
        for conn in first + second:
            conn.close()
    assert all(answer.startswith(b"HTTP/1.1 200") for answer in answers), answers
    closing = [answer for answer in answers if b"connection: close" in answer.lower()]
    assert closing, "some connections were on a draining worker (it answers, then closes)"


def _demo_children(worker: int) -> int:
    return sum("mcp_barbican.demo" in command_line(pid) for pid in descendants(worker))


def test_restarting_one_worker_leaves_the_sessions_of_the_other_untouched(tmp_path: Path, redis_url: str) -> None:
    with run_proxy(tmp_path, [demo_mcp("demo")], server=_server(redis_url, free_port()), workers=2) as proxy:
        second = int(re.findall(r"started worker 2 \(pid (\d+)\)", proxy.log_text())[0])
        clients: list[httpx2.Client] = []
        try:
            for _ in range(20):  # a session (one keep-alive connection) until one lives in worker 2
                client = httpx2.Client(headers=MCP_HEADERS, timeout=30)
                clients.append(client)
                before = _demo_children(second)
                opened = client.post(proxy.url("demo"), json=INIT)
                assert opened.status_code == 200, opened.text
                if _demo_children(second) > before:
                    break
            else:
                raise AssertionError("no session landed on worker 2")
            session = {"Mcp-Session-Id": opened.headers["mcp-session-id"]}
            initialized = {"jsonrpc": "2.0", "method": "notifications/initialized"}
            assert client.post(proxy.url("demo"), json=initialized, headers=session).status_code == 202
            os.kill(proxy.process.pid, signal.SIGUSR2)
            wait_for_log(proxy, "rolling restart: worker 1 (pid")  # worker 1 replaced, and drained
            listed = client.post(
                proxy.url("demo"), json={"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, headers=session
            )
            assert listed.status_code == 200, listed.text
            assert "echo" in listed.text
            wait_for_log(proxy, "rolling restart: done")
        finally:
            for client in clients:
                client.close()
