from __future__ import annotations

import base64
import json
import os
import re
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import types
from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import pytest
import uvicorn
import yaml
from mcp.server.mcpserver import MCPServer

from mcp_barbican import __version__
from mcp_barbican.cli import curl_example, main, python_example
from mcp_barbican.config import ProxyConfig
from mcp_barbican.exceptions import ConfigError

from .proxy import traceback_in
from .test_config import CONFIGS, FULL_ENV, write_full_files

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
TOKEN_CHARS = re.compile(r"[A-Za-z0-9_-]+")


def decoded_length(token: str) -> int:
    return len(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))


@pytest.fixture(autouse=True)
def clean_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test runs in an empty directory without the embedded default's variables."""
    monkeypatch.chdir(tmp_path)
    for name in ("MCP_AUTH_TOKEN", "MCP_ADMIN_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    return tmp_path


class FakeRunner:
    def __init__(self, result: object = None, error: BaseException | None = None) -> None:
        self.configs: list[ProxyConfig] = []
        self.reloads: list[Any] = []
        self.result = result
        self.error = error

    def run(self, config: ProxyConfig, *, reload: Any = None) -> object:
        self.configs.append(config)
        self.reloads.append(reload)
        if self.error is not None:
            raise self.error
        return self.result


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> FakeRunner:
    fake = FakeRunner()
    module = types.ModuleType("mcp_barbican.server.runner")
    module.run = fake.run  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mcp_barbican.server.runner", module)
    return fake


def error_line(stderr: str) -> str:
    """The one `error: ...` line among the log lines."""
    (line,) = [line for line in stderr.splitlines() if line.startswith("error: ")]
    return line


def write_config(directory: Path, text: str, name: str = "mcp-barbican.yaml") -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# token generate, --version, usage


def test_token_generate_prints_32_random_bytes_by_default(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "generate"]) == 0
    token = capsys.readouterr().out.strip()
    assert TOKEN_CHARS.fullmatch(token)
    assert decoded_length(token) == 32


@pytest.mark.parametrize("length", [16, 64, 512])
def test_token_generate_length(capsys: pytest.CaptureFixture[str], length: int) -> None:
    assert main(["token", "generate", "--length", str(length)]) == 0
    assert decoded_length(capsys.readouterr().out.strip()) == length


def test_tokens_differ_between_runs(capsys: pytest.CaptureFixture[str]) -> None:
    main(["token", "generate"])
    main(["token", "generate"])
    first, second = capsys.readouterr().out.split()
    assert first != second


@pytest.mark.parametrize("length", ["15", "513", "0", "ten"])
def test_token_generate_rejects_bad_lengths(capsys: pytest.CaptureFixture[str], length: str) -> None:
    assert main(["token", "generate", "--length", length]) == 2
    assert "--length" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"mcp-barbican {__version__}"


@pytest.mark.parametrize("argv", [[], ["token"], ["config"]], ids=["no-command", "token", "config"])
def test_incomplete_commands_print_usage(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    assert main(argv) == 2
    assert "usage: mcp-barbican" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# config check


def test_config_check_prints_masked_normalized_yaml(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MCP_AUTH_TOKEN", "very-secret-client-token")
    assert main(["config", "check", "-c", str(CONFIGS / "seed-cors.yaml")]) == 0
    out = capsys.readouterr().out
    dumped = yaml.safe_load(out)
    assert dumped["mcps"][0]["id"] == "cors_enabled_mcp"
    assert dumped["mcps"][0]["transport"] == "streamable-http"
    assert dumped["server"]["auth"]["token"] == "********"
    assert "very-secret-client-token" not in out


def test_config_check_error_names_the_key_path(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_config(tmp_path, "server: {auth: {type: none}}\nmcps: [{id: a, command: x, start_timeout: soon}]\n")
    assert main(["config", "check", "-c", str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: mcps[0].start_timeout: invalid duration 'soon'")


def test_config_check_finds_the_file_in_the_working_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_config(tmp_path, "server: {auth: {type: none}}\nmcps: [{id: found, command: x}]\n")
    assert main(["config", "check"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["mcps"][0]["id"] == "found"


def test_config_check_without_a_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "check"]) == 1
    assert "no config file found" in capsys.readouterr().err


def test_config_check_reads_dotenv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / ".env").write_text("MCP_AUTH_TOKEN=dotenv-token\n")
    write_config(tmp_path, "server: {auth: {type: token, token: '${MCP_AUTH_TOKEN}'}}\nmcps: [{id: a, command: x}]\n")
    assert main(["config", "check"]) == 0
    assert "dotenv-token" not in capsys.readouterr().out


def test_config_check_prints_bind_warnings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_config(tmp_path, "server: {host: 0.0.0.0, auth: {type: none}}\nmcps: [{id: a, command: x}]\n")
    assert main(["config", "check"]) == 0
    assert "warning: binding 0.0.0.0 (not loopback) with NO authentication on: a" in capsys.readouterr().err


def run_module(*args: str, env: dict[str, str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mcp_barbican", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
        check=False,
        cwd=cwd,
    )


@pytest.mark.e2e
def test_config_check_subprocess_matches_golden(tmp_path: Path) -> None:
    write_full_files(tmp_path)
    result = run_module("config", "check", "-c", str(CONFIGS / "full.yaml"), env=FULL_ENV, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert yaml.safe_load(result.stdout) == yaml.safe_load((CONFIGS / "full.masked.yaml").read_text())
    for secret in FULL_ENV.values():
        assert secret not in result.stdout


@pytest.mark.e2e
def test_config_check_subprocess_exit_code_on_error(tmp_path: Path) -> None:
    path = write_config(tmp_path, "mcps: [{id: a, command: x}]\n")
    result = run_module("config", "check", "-c", str(path), env={})
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "error: mcps[0].auth: no auth configured: set mcps[0].auth or server.auth (type: none must be explicit)"
    )


# ---------------------------------------------------------------------------------------------
# serve: the embedded default


def test_serve_embedded_default_first_run(
    tmp_path: Path, runner: FakeRunner, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve"]) == 0
    (config,) = runner.configs
    assert runner.reloads == [None]  # the embedded default has no file to watch
    demo = config.mcps[0]
    assert (demo.id, demo.transport, demo.command, demo.args) == (
        "demo",
        "stdio",
        sys.executable,
        ("-m", "mcp_barbican.demo"),
    )
    assert demo.session_mode == "isolated"
    assert config.server.storage.type == "sqlite"
    assert config.server.storage.path == str(tmp_path / ".mcp-barbican" / "state.db")
    assert [(sink.type, getattr(sink, "path", None)) for sink in config.server.audit.sinks] == [
        ("sqlite", str(tmp_path / ".mcp-barbican" / "audit.db"))
    ]
    state = tmp_path / ".mcp-barbican"
    tokens = json.loads((state / "tokens.json").read_text())
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "tokens.json").stat().st_mode) == 0o600
    assert decoded_length(tokens["client_token"]) == 32 and decoded_length(tokens["admin_token"]) == 32
    assert config.server.auth is not None and config.server.auth.token is not None
    assert config.server.auth.token.get_secret_value() == tokens["client_token"]
    assert config.server.admin.token is not None
    assert config.server.admin.token.get_secret_value() == tokens["admin_token"]
    err = capsys.readouterr().err
    assert "http://127.0.0.1:6001/mcp/demo" in err
    assert f"client token:  {tokens['client_token']}" in err
    assert f"admin token:   {tokens['admin_token']}" in err
    assert "web console:   http://127.0.0.1:6001/admin/ui  (log in with the admin token)" in err
    assert f'-H "Authorization: Bearer {tokens["client_token"]}"' in err
    assert "from mcp import Client" in err and "httpx2.AsyncClient" in err


def test_serve_embedded_default_reuses_tokens(
    tmp_path: Path, runner: FakeRunner, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve"]) == 0
    capsys.readouterr()
    assert main(["serve"]) == 0
    first, second = runner.configs
    assert first.server.auth == second.server.auth
    assert first.server.admin == second.server.admin
    tokens = json.loads((tmp_path / ".mcp-barbican" / "tokens.json").read_text())
    err = capsys.readouterr().err
    assert tokens["admin_token"] not in err
    assert "admin token:   see .mcp-barbican/tokens.json" in err
    assert tokens["client_token"] in err


def test_serve_embedded_default_takes_tokens_from_the_environment(
    tmp_path: Path, runner: FakeRunner, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MCP_AUTH_TOKEN", "client-from-env")
    monkeypatch.setenv("MCP_ADMIN_TOKEN", "admin-from-env")
    assert main(["serve"]) == 0
    (config,) = runner.configs
    assert config.server.auth is not None and config.server.auth.token is not None
    assert config.server.auth.token.get_secret_value() == "client-from-env"
    assert config.server.admin.token is not None and config.server.admin.token.get_secret_value() == "admin-from-env"
    assert not (tmp_path / ".mcp-barbican" / "tokens.json").exists()
    err = capsys.readouterr().err
    assert "client-from-env" not in err and "admin-from-env" not in err
    assert "client token:  from $MCP_AUTH_TOKEN" in err
    assert '"Authorization: Bearer $MCP_AUTH_TOKEN"' in err


def test_serve_embedded_default_stores_only_generated_tokens(
    tmp_path: Path, runner: FakeRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MCP_AUTH_TOKEN", "client-from-env")
    assert main(["serve"]) == 0
    assert list(json.loads((tmp_path / ".mcp-barbican" / "tokens.json").read_text())) == ["admin_token"]


def test_serve_embedded_default_rejects_equal_tokens(
    runner: FakeRunner, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MCP_AUTH_TOKEN", "same-token")
    monkeypatch.setenv("MCP_ADMIN_TOKEN", "same-token")
    assert main(["serve"]) == 1
    assert error_line(capsys.readouterr().err) == "error: MCP_ADMIN_TOKEN: must differ from every client token"
    assert runner.configs == []


def test_serve_embedded_default_with_corrupt_tokens_file(
    tmp_path: Path, runner: FakeRunner, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / ".mcp-barbican").mkdir()
    (tmp_path / ".mcp-barbican" / "tokens.json").write_text("{not json")
    assert main(["serve"]) == 1
    assert "delete it to generate new tokens" in capsys.readouterr().err
    assert runner.configs == []


def test_serve_host_and_port_overrides(runner: FakeRunner, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--host", "0.0.0.0", "--port", "7002"]) == 0
    (config,) = runner.configs
    assert (config.server.host, config.server.port) == ("0.0.0.0", 7002)
    err = capsys.readouterr().err
    assert "http://127.0.0.1:7002/mcp/demo" in err
    assert "without server.allowed_hosts" in err


@pytest.mark.parametrize("argv", [["--port", "0"], ["--port", "http"], ["--host", ""], ["--log-format", "xml"]])
def test_serve_rejects_bad_options(runner: FakeRunner, argv: list[str]) -> None:
    assert main(["serve", *argv]) == 2
    assert runner.configs == []


# ---------------------------------------------------------------------------------------------
# serve: a config file


def test_serve_uses_the_config_file_in_the_working_directory(
    tmp_path: Path, runner: FakeRunner, capsys: pytest.CaptureFixture[str]
) -> None:
    write_config(tmp_path, "server: {auth: {type: none}}\nmcps: [{id: mine, command: x}]\n")
    assert main(["serve"]) == 0
    assert [mcp.id for mcp in runner.configs[0].mcps] == ["mine"]
    assert "client token" not in capsys.readouterr().err
    assert not (tmp_path / ".mcp-barbican").exists()
    path, load = runner.reloads[0]  # the file is watched, and loads again as serve loaded it
    assert path.name == "mcp-barbican.yaml"
    assert load() == runner.configs[0]


def test_serve_refuses_exposed_unauthenticated_mcp(
    tmp_path: Path, runner: FakeRunner, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_config(tmp_path, "server: {auth: {type: none}}\nmcps: [{id: open, command: x}]\n", name="c.yaml")
    assert main(["serve", "-c", str(path), "--host", "0.0.0.0"]) == 1
    assert error_line(capsys.readouterr().err).startswith(
        "error: server.host: binding 0.0.0.0 (not loopback) with auth type none on open needs --allow-unauthenticated"
    )
    assert runner.configs == []
    assert main(["serve", "-c", str(path), "--host", "0.0.0.0", "--allow-unauthenticated"]) == 0
    assert len(runner.configs) == 1
    assert "NO authentication on: open" in capsys.readouterr().err


def test_serve_with_a_missing_file(runner: FakeRunner, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "-c", "nope.yaml"]) == 1
    assert error_line(capsys.readouterr().err) == "error: config file 'nope.yaml' not found"
    assert runner.configs == []


def test_serve_json_logs(tmp_path: Path, runner: FakeRunner, capsys: pytest.CaptureFixture[str]) -> None:
    write_config(tmp_path, "server: {host: 0.0.0.0, auth: {type: token, token: t}}\nmcps: [{id: a, command: x}]\n")
    assert main(["serve", "--log-format", "json"]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line]
    records = [json.loads(line) for line in lines]
    assert records and all(set(record) == {"ts", "level", "logger", "message"} for record in records)
    assert any(record["level"] == "WARNING" and "allowed_hosts" in record["message"] for record in records)


def test_serve_json_logs_wrap_the_banner(runner: FakeRunner, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["serve", "--log-format", "json", "--log-level", "error"]) == 0
    (record,) = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line]
    assert record["level"] == "INFO"
    assert "http://127.0.0.1:6001/mcp/demo" in record["message"]


def test_serve_text_logs_respect_the_level(
    tmp_path: Path, runner: FakeRunner, capsys: pytest.CaptureFixture[str]
) -> None:
    write_config(tmp_path, "server: {host: 0.0.0.0, auth: {type: token, token: t}}\nmcps: [{id: a, command: x}]\n")
    assert main(["serve", "--log-level", "error"]) == 0
    assert capsys.readouterr().err == ""
    assert main(["serve", "--log-level", "info"]) == 0
    assert re.search(r"^\S+ \S+ WARNING mcp_barbican\.cli: binding 0\.0\.0\.0", capsys.readouterr().err, re.MULTILINE)


def test_serve_returns_the_runner_exit_code(tmp_path: Path, runner: FakeRunner) -> None:
    runner.result = 3
    write_config(tmp_path, "server: {auth: {type: none}}\nmcps: [{id: a, command: x}]\n")
    assert main(["serve"]) == 3


def test_serve_reports_config_errors_from_the_runner(
    tmp_path: Path, runner: FakeRunner, capsys: pytest.CaptureFixture[str]
) -> None:
    runner.error = ConfigError("cannot load certificate", path="server.tls.cert_file")
    write_config(tmp_path, "server: {auth: {type: none}}\nmcps: [{id: a, command: x}]\n")
    assert main(["serve"]) == 1
    assert error_line(capsys.readouterr().err) == "error: server.tls.cert_file: cannot load certificate"


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("key", "fix"),
    [("server.port", "pick another with --port"), ("server.admin.port", "pick another server.admin.port")],
)
def test_serve_says_which_port_is_taken_and_never_that_it_listens(tmp_path: Path, key: str, fix: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            other = probe.getsockname()[1]
        server: dict[str, Any] = {"host": "127.0.0.1", "port": busy, "auth": {"type": "token", "token": "t" * 32}}
        if key == "server.admin.port":
            server.update(port=other, admin={"port": busy, "token": "a" * 32})
        path = write_config(tmp_path, yaml.safe_dump({"server": server, "mcps": [{"id": "a", "command": "true"}]}))
        result = subprocess.run(
            [sys.executable, "-m", "mcp_barbican", "serve", "-c", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert error_line(result.stderr) == f"error: {key}: port {busy} on 127.0.0.1 is already in use; {fix}"
    assert "listening" not in output
    assert "Traceback" not in output


def test_bind_listens_on_every_address_a_name_resolves_to() -> None:
    from mcp_barbican.server.runner import bind

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    expected = {info[4][0] for info in socket.getaddrinfo("localhost", port, type=socket.SOCK_STREAM)}
    sockets = bind("localhost", port, "server.port")
    try:
        assert {sock.getsockname()[0] for sock in sockets} == expected
        assert {sock.getsockname()[1] for sock in sockets} == {port}
        with pytest.raises(ConfigError, match=r"^server\.port: port \d+ on localhost is already in use"):
            bind("localhost", port, "server.port")
    finally:
        for sock in sockets:
            sock.close()


# ---------------------------------------------------------------------------------------------
# The banner's examples work against a real MCP server that demands the Authorization header


@pytest.fixture(scope="module")
def guarded_server() -> Iterator[tuple[str, str]]:
    token = "banner-check-token"
    mcp = MCPServer("banner-check")

    @mcp.tool()
    def echo(text: str) -> str:
        return text

    inner = mcp.streamable_http_app()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        headers = dict(scope.get("headers", []))
        if scope["type"] == "http" and headers.get(b"authorization") != f"Bearer {token}".encode():
            await send({"type": "http.response.start", "status": 401, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        await inner(scope, receive, send)

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    yield f"http://127.0.0.1:{port}/mcp", token
    server.should_exit = True
    thread.join(timeout=30)


@pytest.mark.e2e
@pytest.mark.parametrize("from_env", [False, True], ids=["literal-token", "token-from-env"])
def test_banner_python_example_lists_tools(guarded_server: tuple[str, str], from_env: bool) -> None:
    url, token = guarded_server
    authorization = '"Bearer " + os.environ["MCP_AUTH_TOKEN"]' if from_env else json.dumps(f"Bearer {token}")
    script = python_example(url, authorization)
    assert len(script.splitlines()) == 6
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "MCP_AUTH_TOKEN": token},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['echo']"


@pytest.mark.e2e
def test_banner_curl_example_initializes_and_continues_the_session(guarded_server: tuple[str, str]) -> None:
    url, token = guarded_server
    first, rest = curl_example(url, token).split("\n# continue that session", 1)
    result = subprocess.run(["bash", "-c", first], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert '"serverInfo":{"name":"banner-check"' in result.stdout
    session_id = re.search(r"^mcp-session-id: (\S+)", result.stdout, re.IGNORECASE | re.MULTILINE)
    assert session_id is not None, result.stdout
    result = subprocess.run(
        ["bash", "-c", rest.split("\n", 1)[1]],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "SESSION_ID": session_id.group(1)},
    )
    assert result.returncode == 0, result.stderr
    assert '"name":"echo"' in result.stdout


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "mcp-barbican serve exited early"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on port {port}")


@pytest.mark.e2e
def test_embedded_default_end_to_end(tmp_path: Path) -> None:
    """`mcp-barbican serve` with no config, then the banner's own Python example, verbatim."""
    port = free_port()
    log = tmp_path / "stderr.log"
    env = {key: value for key, value in os.environ.items() if key not in ("MCP_AUTH_TOKEN", "MCP_ADMIN_TOKEN")}
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "mcp_barbican", "serve", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:
        wait_for_port(port, process)
        lines = log.read_text().splitlines()
        start = next(index for index, line in enumerate(lines) if line.strip().startswith("import asyncio"))
        script = "\n".join(line.removeprefix("  ") for line in lines[start : start + 6])
        result = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
        )
    finally:
        process.terminate()
        process.wait(timeout=30)
    assert result.returncode == 0, result.stderr
    assert "'echo'" in result.stdout
    assert traceback_in(log) is None, traceback_in(log)
    # The embedded default keeps its state and its audit trail in SQLite, beside the tokens.
    state = tmp_path / ".mcp-barbican"
    assert (state / "state.db").exists()
    with sqlite3.connect(state / "audit.db") as db:
        rows = db.execute("SELECT type, success, user FROM audit").fetchall()
    assert ("authentication", 1, "token:server") in rows


# ---------------------------------------------------------------------------------------------
# What a first-time user hit: the README's sample, every error, schema, redis


def readme_sample() -> str:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    return readme.split("a minimal file:\n\n```yaml\n", 1)[1].split("```", 1)[0]


def test_config_check_refuses_the_readme_sample_without_its_ca_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("MCP_AUTH_TOKEN", "API_KEY", "UPSTREAM_TOKEN"):
        monkeypatch.setenv(name, "x")
    write_config(tmp_path, readme_sample())
    assert main(["config", "check"]) == 1
    assert capsys.readouterr().err == "error: mcps[1].tls.ca_file: cannot read ca.pem: No such file or directory\n"


def test_config_check_lists_every_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_config(tmp_path, "server: {port: 0, auth: {type: none}}\nmcps: [{id: a, command: x, start_timeout: soon}]\n")
    assert main(["config", "check"]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(":")[1] for line in lines] == [" server.port", " mcps[0].start_timeout"]
    assert all(line.startswith("error: ") for line in lines)


def test_config_check_and_serve_refuse_a_wrong_redis_url_alike(
    tmp_path: Path, runner: FakeRunner, capsys: pytest.CaptureFixture[str]
) -> None:
    write_config(tmp_path, "server: {auth: {type: none}, storage: {type: redis, url: 'http://h'}}\nmcps: []\n")
    assert main(["config", "check"]) == 1
    check = capsys.readouterr().err
    assert main(["serve"]) == 1
    assert error_line(capsys.readouterr().err) == check.strip()
    assert check.strip() == "error: server.storage.url: must start with redis:// or rediss://"
    assert runner.configs == []


def test_config_check_shows_durations_with_their_unit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write_config(tmp_path, "server: {auth: {type: none}}\nmcps: [{id: a, command: x}]\n")
    assert main(["config", "check"]) == 0
    dumped = yaml.safe_load(capsys.readouterr().out)
    assert dumped["mcps"][0]["start_timeout"] == "30s"
    assert dumped["server"]["session_idle_timeout"] == "1800s"


def test_config_check_reads_the_dotenv_beside_the_config_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MCP_BESIDE_TOKEN", raising=False)
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / ".env").write_text("MCP_BESIDE_TOKEN=beside-token\n")
    path = write_config(tmp_path / "conf", "server: {auth: {type: token, token: '${MCP_BESIDE_TOKEN}'}}\nmcps: []\n")
    assert main(["config", "check", "-c", str(path)]) == 0, capsys.readouterr().err


def test_config_schema_prints_the_json_schema(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert schema["required"] == ["mcps"]
    mcp_keys = schema["$defs"]["McpConfig"]["properties"]
    assert {"proto", "resource", "max_sessions", "command"} <= set(mcp_keys)
    assert schema["$defs"]["McpConfig"]["additionalProperties"] is False
