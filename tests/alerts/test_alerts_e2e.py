"""Alert webhooks through a running proxy: a ban reaches a local receiver within seconds, once per interval;
failing receivers are retried and counted; a hung one never slows a request; a refused URL stops start-up."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx2
import pytest
import yaml

from tests.alerts.receiver import Receiver
from tests.proxy import AUTH_HEADER, RunningProxy, demo_mcp, free_port, run_proxy, wait_for_log, write_config
from tests.server.test_endpoint import INIT, MCP_HEADERS

pytestmark = pytest.mark.e2e

WRONG = {"Authorization": "Bearer wrong-token-0123456789"}
MAX_FAILURES = 3


def server_block(webhooks: list[dict[str, Any]], *, burst: int = 5) -> dict[str, Any]:
    return {
        "trusted_proxies": ["127.0.0.1"],
        "metrics": {"public": True},
        "security": {"auth_failure_ban": {"max_failures": MAX_FAILURES, "ban_time": 600}},
        "alerts": {"webhooks": webhooks, "auth_failures": {"count": burst, "window": "60s"}, "instance": "e2e"},
    }


def fail_auth(proxy: RunningProxy, ip: str, times: int = 1) -> None:
    for _ in range(times):
        response = httpx2.post(proxy.url("demo"), headers={**MCP_HEADERS, **WRONG, "X-Forwarded-For": ip}, json=INIT)
        assert response.status_code == 401, response.text


def metric(proxy: RunningProxy, name: str, **labels: str) -> float:
    text = httpx2.get(f"{proxy.base}/metrics").text
    shown = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    match = re.search(rf"^{name}\{{{re.escape(shown)}\}} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_a_ban_alerts_within_seconds_once_per_interval_and_other_kinds_still_go(tmp_path: Path) -> None:
    receiver = Receiver({})
    webhooks: list[dict[str, Any]] = [
        {"url": receiver.url("main"), "name": "main", "headers": {"Authorization": "Bearer hook-secret"}},
        {"url": receiver.url("quick"), "name": "quick", "events": ["ban"], "min_interval": "3s"},
        {"url": receiver.url("slack"), "name": "slack", "format": "slack", "events": ["ban"]},
    ]
    with receiver.running(), run_proxy(tmp_path, [demo_mcp()], server=server_block(webhooks)) as proxy:
        started = time.monotonic()
        fail_auth(proxy, "10.0.0.1", MAX_FAILURES)  # a ban (3 failures); the burst needs 5
        [ban] = receiver.wait_for("main", 1, kind="ban", timeout=10)
        assert ban.at - started < 5, "the first ban goes out within seconds"
        assert ban.headers["Authorization"] == "Bearer hook-secret"
        assert ban.body["count"] == 1 and ban.body["instance"] == "e2e" and ban.body["source"] == "mcp-barbican"
        assert ban.body["summary"].startswith("address 10.0.0.1 banned until ")
        assert [event["type"] for event in ban.body["events"]] == ["ban"]
        [slack] = receiver.wait_for("slack", 1)
        assert set(slack.body) == {"text"}
        assert slack.body["text"].startswith("[mcp-barbican e2e] ban: address 10.0.0.1 banned until ")

        fail_auth(proxy, "10.0.0.2", 2)  # failures 4 and 5: a burst, a kind of its own
        [burst] = receiver.wait_for("main", 1, kind="auth_failures", timeout=10)
        assert burst.body["summary"] == "5 authentication failures within 60s (from 10.0.0.1, 10.0.0.2)"
        fail_auth(proxy, "10.0.0.2", 1)  # banned
        fail_auth(proxy, "10.0.0.3", MAX_FAILURES)  # banned
        [_, second] = receiver.wait_for("quick", 2, timeout=15)  # the quick webhook's interval ends
        assert second.body["count"] == 2
        assert second.body["summary"].endswith(", and 1 more")
        assert second.at - receiver.got("quick")[0].at >= 2.5, "not before its min_interval"
        time.sleep(1)
        assert len(receiver.got("main", "ban")) == 1, "no second ban alert inside min_interval (60s)"
        assert len(receiver.got("slack")) == 1
        assert metric(proxy, "mcp_barbican_alerts_sent_total", webhook="main", kind="ban") == 1
        assert metric(proxy, "mcp_barbican_alerts_sent_total", webhook="quick", kind="ban") == 2
        assert "hook-secret" not in proxy.log_text()


def test_failing_receivers_are_retried_and_counted(tmp_path: Path) -> None:
    receiver = Receiver({"flaky": "fail:2", "down": "fail"})
    webhooks: list[dict[str, Any]] = [
        {"url": receiver.url("flaky"), "name": "flaky", "events": ["upstream_down"]},
        {"url": receiver.url("down"), "name": "down", "events": ["upstream_down"], "max_attempts": 2},
    ]
    gone = {"id": "gone", "transport": "streamable-http", "url": f"http://127.0.0.1:{free_port()}/mcp"}
    server = server_block(webhooks)
    with receiver.running(), run_proxy(tmp_path, [demo_mcp(), gone], server=server, wait_ready=False) as proxy:
        tries = receiver.wait_for("flaky", 3, timeout=20)  # 500, 500 (1s and 2s of backoff), then 200
        body = tries[-1].body
        assert body["kind"] == "upstream_down"
        assert body["summary"].startswith("upstream gone is down")
        assert [try_.body for try_ in tries] == [body] * 3, "the same message, tried again"
        assert tries[1].at - tries[0].at >= 0.9 and tries[2].at - tries[1].at >= 1.9, "exponential backoff"
        receiver.wait_for("down", 2, timeout=10)
        deadline = time.monotonic() + 10
        while metric(proxy, "mcp_barbican_alerts_failed_total", webhook="down", kind="upstream_down") < 1:
            assert time.monotonic() < deadline, "the failure is counted"
            time.sleep(0.1)
        assert metric(proxy, "mcp_barbican_alerts_sent_total", webhook="flaky", kind="upstream_down") == 1
        assert metric(proxy, "mcp_barbican_alerts_failed_total", webhook="flaky", kind="upstream_down") == 0
        assert metric(proxy, "mcp_barbican_alerts_sent_total", webhook="down", kind="upstream_down") == 0
        log = proxy.log_text()
        assert log.count("alert webhook down: a upstream_down alert was not delivered (HTTP 500)") == 1


def test_a_hung_receiver_never_slows_requests(tmp_path: Path) -> None:
    receiver = Receiver({"hung": "hang"})
    webhooks = [{"url": receiver.url("hung"), "name": "hung", "min_interval": "1s", "timeout": "30s"}]
    with receiver.running(), run_proxy(tmp_path, [demo_mcp()], server=server_block(webhooks, burst=2)) as proxy:
        fail_auth(proxy, "10.0.1.1", MAX_FAILURES)  # a ban and a burst: the receiver holds the first delivery
        receiver.wait_for("hung", 1, timeout=10)
        slowest = 0.0
        for i in range(30):
            started = time.monotonic()
            if i % 3:
                response = httpx2.post(
                    proxy.url("demo"), headers={**MCP_HEADERS, **AUTH_HEADER, "X-Forwarded-For": "10.0.2.1"}, json=INIT
                )
                assert response.status_code == 200
            else:
                fail_auth(proxy, f"10.0.3.{i}", 1)  # more events for the hung webhook's throttles
            slowest = max(slowest, time.monotonic() - started)
        assert slowest < 5.0, f"a request took {slowest:.2f}s while the receiver hangs (a delivery waits 30s)"
        assert len(receiver.got("hung")) == 1, "one delivery hangs, the others wait for it"


def test_a_reload_moves_the_alerts_to_the_new_webhook(tmp_path: Path) -> None:
    receiver = Receiver({})
    webhooks = [{"url": receiver.url("before"), "events": ["ban"]}]
    with receiver.running(), run_proxy(tmp_path, [demo_mcp()], server=server_block(webhooks)) as proxy:
        path = tmp_path / "mcp-barbican.yaml"
        config = yaml.safe_load(path.read_text())
        config["server"]["alerts"]["webhooks"] = [{"url": receiver.url("after"), "events": ["ban"]}]
        path.write_text(yaml.safe_dump(config))
        wait_for_log(proxy, "config reloaded (file change)")
        fail_auth(proxy, "10.0.4.1", MAX_FAILURES)
        [after] = receiver.wait_for("after", 1, timeout=10)
        assert after.body["kind"] == "ban"
        assert receiver.got("before") == []


def test_a_webhook_url_the_egress_policy_refuses_stops_start_up(tmp_path: Path) -> None:
    server = {
        "port": free_port(),
        "auth": {"type": "none"},
        "alerts": {"webhooks": [{"url": "http://169.254.169.254/latest/hook"}]},
    }
    path = write_config(tmp_path, {"server": server, "mcps": [demo_mcp()]})
    result = subprocess.run(
        [sys.executable, "-m", "mcp_barbican", "serve", "-c", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "error: server.alerts.webhooks[0].url: webhook '169.254.169.254' is refused by server.egress"
        " (a cloud metadata address)"
    )
