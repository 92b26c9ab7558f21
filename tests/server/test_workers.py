"""`serve --workers N`: the decisions behind the supervisor, from tables (the processes: test_workers_e2e.py)."""

from __future__ import annotations

import base64
import errno
import json
import logging
import os
import signal

import pytest

from mcp_barbican.cli import JsonFormatter, check_workers, main
from mcp_barbican.exceptions import ConfigError
from mcp_barbican.logs import WORKER_ENV, worker_number
from mcp_barbican.server.supervisor import Supervisor, describe_exit, new_session_key, restart_delay


@pytest.mark.parametrize(
    ("failures", "delay"),
    [(0, 0.5), (1, 0.5), (2, 1.0), (3, 2.0), (6, 16.0), (7, 30.0), (50, 30.0)],
)
def test_restart_delay_doubles_from_half_a_second_to_thirty(failures: int, delay: float) -> None:
    assert restart_delay(failures) == delay


@pytest.mark.parametrize(
    ("status", "words"),
    [
        (0, "exit status 0"),
        (1 << 8, "exit status 1"),
        (3 << 8, "exit status 3"),
        (signal.SIGKILL, "killed by signal SIGKILL"),
        (signal.SIGTERM, "killed by signal SIGTERM"),
    ],
)
def test_describe_exit_names_the_status_or_the_signal(status: int, words: str) -> None:
    assert describe_exit(status) == words


@pytest.mark.parametrize(
    ("workers", "storage", "refused"),
    [(1, "sqlite", False), (1, "memory", False), (1, "redis", False), (2, "redis", False), (8, "redis", False),
     (2, "sqlite", True), (2, "memory", True), (16, "sqlite", True)],
)  # fmt: skip
def test_more_than_one_worker_needs_redis(workers: int, storage: str, refused: bool) -> None:
    if not refused:
        check_workers(workers, storage)
        return
    with pytest.raises(ConfigError) as caught:
        check_workers(workers, storage)
    assert caught.value.path == "server.storage.type"
    assert caught.value.lines() == [
        f"server.storage.type: --workers {workers} needs server.storage.type: redis "
        f"(the workers share their state through it), not {storage}"
    ]


@pytest.mark.parametrize("value", ["0", "-1", "two", "65", ""])
def test_a_bad_worker_count_is_a_usage_error(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--workers", value]) == 2
    assert "argument --workers:" in capsys.readouterr().err


def test_the_session_key_is_32_random_bytes_in_url_safe_base64() -> None:
    keys = {new_session_key() for _ in range(20)}
    assert len(keys) == 20
    for key in keys:
        assert len(base64.urlsafe_b64decode(key)) == 32
        assert set(key) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=")


@pytest.mark.parametrize(("value", "number"), [(None, None), ("", None), ("2", 2), ("x", None)])
def test_worker_number_comes_from_the_environment(
    value: str | None, number: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if value is None:
        monkeypatch.delenv(WORKER_ENV, raising=False)
    else:
        monkeypatch.setenv(WORKER_ENV, value)
    assert worker_number() == number


def test_json_log_lines_carry_the_worker_number_in_a_worker_only() -> None:
    record = logging.makeLogRecord({"name": "x", "levelname": "INFO", "msg": "hello"})
    assert json.loads(JsonFormatter(2).format(record))["worker"] == 2
    assert "worker" not in json.loads(JsonFormatter().format(record))
    assert os.environ.get(WORKER_ENV) is None  # the test process is no worker


def test_a_supervisor_that_cannot_fork_its_first_worker_stops_with_status_1(caplog: pytest.LogCaptureFixture) -> None:
    def refuse(number: int, ready: int, inherited: list[int]) -> int:
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGCHLD)}
    with caplog.at_level(logging.INFO):
        assert Supervisor(2, refuse).run() == 1
    assert "cannot start worker 1: Resource temporarily unavailable: stopping" in caplog.text
    assert {sig: signal.getsignal(sig) for sig in handlers} == handlers, "the supervisor restores the signals"
