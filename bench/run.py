#!/usr/bin/env python3
"""mcp-barbican's benchmark: peers and baselines measured side by side, in one run, as ratios.

    python bench/run.py [--quick] [--out bench/results]

Scenarios (see bench/README.md and docs/performance.md):
- S1: server-everything over stdio, exposed over Streamable HTTP by mcp-barbican (security on and
  off), sparfenyuk mcp-proxy 0.13.0 and supergateway 4.0.0 (stateful); "direct" is a stdio pump.
- S2: server-everything's own Streamable HTTP transport, called directly and through mcp-barbican.
- Fixed-rate latency (open loop, 200 and 500 req/s), and memory (idle, per open session).

Pinning as in the peers' bench: the system under test on CPU 0; this runner, wrk, the rate client,
the HTTP upstreams and every stdio child on CPU 1. Every process is started and stopped here.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import functools
import hashlib
import http.client
import importlib.metadata
import json
import math
import os
import platform
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
CONFIGS = BENCH / "configs"
NODE_MODULES = ROOT / "tests" / "node" / "node_modules"
NODE = NODE_MODULES / ".bin" / "node"
EVERYTHING = NODE_MODULES / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"
SUPERGATEWAY = NODE_MODULES / "supergateway" / "dist" / "index.js"
BIND_LOCAL = BENCH / "bind-local.cjs"
STDIO_CMD = BENCH / "everything-stdio.sh"
PEERS_VENV = BENCH / ".peers" / "venv"
MCP_PROXY = PEERS_VENV / "bin" / "mcp-proxy"
LUA = BENCH / "mcpcall.lua"
RATE_CLIENT = BENCH / "mcprate.py"
PUMP = BENCH / "stdiopump.py"

PROTOCOL = "2025-11-25"
SUT_CPU = "0"
LOAD_CPU = "1"
LOOPBACK = "127.0.0.1"
ECHO_PARAMS: dict[str, Any] = {"name": "echo", "arguments": {"message": "hello"}}
CLK_TCK = os.sysconf("SC_CLK_TCK")

# DESIGN.md section 5.
BAR_S1_VS_MCP_PROXY = 3.0
BAR_S1_VS_SUPERGATEWAY = 2.0
BAR_S2_VS_DIRECT = 0.80
#: Issue 11: authorization (10 rules, 2 roles) costs under 5 % against the same layers without it.
BAR_AUTHORIZATION_RATIO = 0.95
#: Issue 11: the aggregated /mcp with one MCP costs under 10 % against /mcp/{id} (same config).
BAR_AGGREGATE_RATIO = 0.90
BAR_S2_ADDED_P50_MS = 1.5
BAR_SECURITY_RATIO = 0.90
BAR_IDLE_RSS_MB = 80.0
BAR_SESSION_KB = 100.0

# Before each timed run, wait (up to Settings.quiet_timeout) until other processes use at most this.
QUIET_CORES = 0.15
# Timer lateness of the rate client that is not counted as latency (epoll wakes in whole ms).
RATE_SLACK_MS = 2.0
# A timed run during which other processes used more than this is repeated (Settings.retries times);
# the attempt with the least other load is kept, and flagged if it is still above this.
DIRTY_CORES = 0.25
# A saturation run whose load core (CPU 1) was busier than this was limited by the load side.
LOAD_BOUND = 0.95


@dataclass(frozen=True)
class Settings:
    quick: bool
    out: Path
    seconds: float
    warmup: float
    repetitions: int
    rates: tuple[int, ...]
    rate_seconds: float
    sessions: int
    quiet_timeout: float
    retries: int
    lock_timeout: float = 3600.0
    over_fraction: float = 0.8


# ---------------------------------------------------------------------------------------------
# Processes


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (index 0 is the state)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()


def _children(parent: int) -> list[int]:
    """Live direct children of `parent`."""
    pids = [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]
    return [pid for pid in pids if (fields := _proc_stat(pid)) is not None and int(fields[1]) == parent]


def descendants(root: int) -> list[int]:
    """Live descendants of `root` (not including it), found through /proc parent links."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _proc_stat(int(entry))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry))
    found: list[int] = []
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    log: TextIO

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            self.log.flush()
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


class Processes:
    """Every process the bench starts; stop_all() in a finally leaves nothing behind."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.procs: list[Proc] = []

    def start(
        self,
        name: str,
        argv: Sequence[str | Path],
        *,
        cpu: str,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Proc:
        log_path = self.log_dir / f"{name}.log"
        log = log_path.open("a")
        log.write(f"# {dt.datetime.now(dt.UTC).isoformat()} taskset -c {cpu} {' '.join(map(str, argv))}\n")
        log.flush()
        popen = subprocess.Popen(
            ["taskset", "-c", cpu, *map(str, argv)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
        )
        proc = Proc(name, popen, log_path, log)
        self.procs.append(proc)
        return proc

    def stop(self, proc: Proc) -> None:
        """SIGTERM the process group, then SIGKILL it and any descendant that escaped it."""
        family = descendants(proc.pid) if proc.alive() else []
        if proc.alive():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.popen.wait(timeout=8)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.popen.wait(timeout=5)
        # Children in their own sessions (a proxy may start its stdio children that way).
        deadline = time.monotonic() + 3
        for pid in family:
            while _proc_stat(pid) is not None and time.monotonic() < deadline:
                time.sleep(0.05)
            fields = _proc_stat(pid)
            if fields is not None and fields[0] != "Z":
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
        proc.log.close()
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            with contextlib.suppress(Exception):
                self.stop(proc)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def wait_port(proc: Proc, port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise BenchError(f"{proc.name} exited with {proc.popen.returncode}; log:\n{proc.log_tail()}")
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=0.5):
            return
        time.sleep(0.1)
    raise BenchError(f"{proc.name} did not listen on {LOOPBACK}:{port} within {timeout:.0f} s; log:\n{proc.log_tail()}")


class BenchError(Exception):
    """A target failed to start or misbehaved; the message says how, with the exchange if any."""


# ---------------------------------------------------------------------------------------------
# A minimal MCP client over Streamable HTTP (stdlib)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def describe(self) -> str:
        head = "".join(f"{k}: {v}\n" for k, v in self.headers.items())
        return f"HTTP {self.status}\n{head}\n{self.body[:1500].decode(errors='replace')}"


def http_request(method: str, url: str, body: bytes | None, headers: dict[str, str], timeout: float = 60.0) -> Reply:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or LOOPBACK, parts.port or 80, timeout=timeout)
    try:
        conn.request(method, parts.path or "/", body=body, headers=headers)
        resp = conn.getresponse()
        data = resp.read()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
    finally:
        conn.close()


def jsonrpc_messages(reply: Reply) -> list[dict[str, Any]]:
    """The JSON-RPC messages of a reply, whether framed as JSON or as SSE `data:` lines."""
    ctype = reply.headers.get("content-type", "")
    texts: list[str] = []
    if "text/event-stream" in ctype:
        for event in reply.body.decode(errors="replace").replace("\r\n", "\n").split("\n\n"):
            data = "\n".join(line[5:].lstrip(" ") for line in event.split("\n") if line.startswith("data:"))
            if data.strip():
                texts.append(data)
    elif reply.body.strip():
        texts.append(reply.body.decode(errors="replace"))
    messages: list[dict[str, Any]] = []
    for text in texts:
        try:
            parsed = json.loads(text)
        except ValueError:
            continue
        if isinstance(parsed, dict):
            messages.append(parsed)
        elif isinstance(parsed, list):
            messages.extend(m for m in parsed if isinstance(m, dict))
    return messages


@dataclass
class Session:
    url: str
    sid: str
    protocol: str
    auth: str
    tool: str = "echo"

    def headers(self) -> dict[str, str]:
        return _base_headers(self.auth) | {"Mcp-Session-Id": self.sid, "MCP-Protocol-Version": self.protocol}


def _base_headers(auth: str) -> dict[str, str]:
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    if auth:
        headers["Authorization"] = auth
    return headers


def _exchange(what: str, url: str, payload: dict[str, Any], headers: dict[str, str], timeout: float) -> Reply:
    body = json.dumps(payload).encode()
    try:
        return http_request("POST", url, body, headers, timeout)
    except (OSError, http.client.HTTPException) as exc:
        raise BenchError(f"{what}: POST {url} {body.decode()} failed: {exc!r}") from exc


def _result_of(what: str, url: str, payload: dict[str, Any], reply: Reply) -> dict[str, Any]:
    if reply.status == 200:
        for message in jsonrpc_messages(reply):
            if message.get("id") == payload["id"] and isinstance(message.get("result"), dict):
                return dict(message["result"])
    raise BenchError(f"{what}: POST {url}\nrequest: {json.dumps(payload)}\nresponse: {reply.describe()}")


def open_session(url: str, auth: str, timeout: float = 60.0, tool: str = "echo") -> Session:
    """initialize, notifications/initialized and one probe echo call."""
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": PROTOCOL,
            "capabilities": {},
            "clientInfo": {"name": "mcp-barbican-bench", "version": "1"},
        },
    }
    headers = _base_headers(auth) | {"MCP-Protocol-Version": PROTOCOL}
    reply = _exchange("initialize", url, init, headers, timeout)
    result = _result_of("initialize", url, init, reply)
    sid = reply.headers.get("mcp-session-id", "")
    if not sid:
        raise BenchError(f"initialize: no Mcp-Session-Id in the reply\nresponse: {reply.describe()}")
    protocol = str(result.get("protocolVersion", PROTOCOL))
    session = Session(url, sid, protocol, auth, tool)
    note = {"jsonrpc": "2.0", "method": "notifications/initialized"}
    reply = _exchange("notifications/initialized", url, note, session.headers(), timeout)
    if reply.status not in (200, 202):
        raise BenchError(f"notifications/initialized: POST {url}\nresponse: {reply.describe()}")
    probe = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {**ECHO_PARAMS, "name": tool}}
    _result_of("probe tools/call", url, probe, _exchange("probe tools/call", url, probe, session.headers(), timeout))
    return session


def delete_session(session: Session) -> str | None:
    """DELETE the session; returns a problem description, or None when it went fine."""
    try:
        reply = http_request("DELETE", session.url, None, session.headers(), timeout=15)
    except (OSError, http.client.HTTPException) as exc:
        return f"DELETE failed: {exc!r}"
    if reply.status not in (200, 202, 204, 405):
        return f"DELETE answered {reply.describe()}"
    return None


@contextlib.contextmanager
def mcp_session(target: Target) -> Iterator[Session]:
    assert target.url is not None
    session = open_session(target.url, target.auth, tool=target.tool)
    try:
        yield session
    finally:
        problem = delete_session(session)
        if problem:
            target.notes.append(problem)


# ---------------------------------------------------------------------------------------------
# Targets


@dataclass
class Target:
    key: str
    label: str
    scenario: str
    url: str | None = None
    auth: str = ""
    proc: Proc | None = None
    state_dir: Path | None = None
    barbican: bool = False
    failed: str = ""
    notes: list[str] = field(default_factory=list)
    layers: dict[str, str] = field(default_factory=dict)
    #: The echo tool's name at this target's endpoint.
    tool: str = "echo"
    #: `serve --workers N`: the process is a supervisor, and its own CPU is its workers' too.
    workers: int = 1

    @property
    def http(self) -> bool:
        return self.url is not None


def node_argv(*args: str | Path) -> list[str | Path]:
    return [NODE, "--require", BIND_LOCAL, *args]


class Lab:
    """Starts the targets, runs the measurements, and remembers every failure."""

    def __init__(self, settings: Settings, procs: Processes, state_root: Path) -> None:
        self.settings = settings
        self.procs = procs
        self.state_root = state_root
        self.token = secrets.token_urlsafe(32)
        self.barbican_cmd = barbican_command()
        self.errors: list[str] = []

    # -- starting ---------------------------------------------------------------------------

    def start_barbican(
        self, key: str, config: str, extra_env: dict[str, str] | None = None, args: Sequence[str] = ()
    ) -> tuple[Proc, int, Path]:
        port = free_port()
        state = self.state_root / key
        state.mkdir(parents=True, exist_ok=True)
        env = {
            "BENCH_DIR": str(BENCH),
            "BENCH_PORT": str(port),
            "BENCH_TOKEN": self.token,
            "BENCH_STATE_DIR": str(state),
            **(extra_env or {}),
        }
        proc = self.procs.start(
            key, [*self.barbican_cmd, "serve", "-c", CONFIGS / config, *args], cpu=SUT_CPU, env=env, cwd=state
        )
        wait_port(proc, port, 60)
        return proc, port, state

    def start_redis(self, key: str) -> str:
        """A throwaway redis-server (no persistence) on the system-under-test CPU; its URL."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise BenchError("redis-server is not installed (apt-get install -y redis-server)")
        port = free_port()
        argv = [binary, "--port", str(port), "--bind", LOOPBACK, "--save", "", "--appendonly", "no"]
        proc = self.procs.start(key, argv, cpu=SUT_CPU)
        wait_port(proc, port, 30)
        return f"redis://{LOOPBACK}:{port}/0"

    def redis_config(self, key: str, url: str) -> Path:
        """s1.yaml with its state in Redis (a key prefix of its own) instead of SQLite."""
        import yaml  # the project's own dependency; only these scenarios need it

        config = yaml.safe_load((CONFIGS / "s1.yaml").read_text())
        config["server"]["storage"] = {"type": "redis", "url": url, "key_prefix": f"{key}:"}
        path = self.state_root / f"{key}.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    def integrity_off_config(self, key: str) -> Path:
        """s1.yaml with tool pins and the definition scanner off (the default config has both on)."""
        import yaml  # the project's own dependency; only these scenarios need it

        config = yaml.safe_load((CONFIGS / "s1.yaml").read_text())
        config["server"]["integrity"] = {"pin": "off", "scan": {"definitions": "off"}}
        path = self.state_root / f"{key}.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    def wait_workers(self, proc: Proc, count: int, timeout: float = 60) -> None:
        """Until the supervisor's log says all `count` workers serve."""
        deadline = time.monotonic() + timeout
        while f"{count} workers serving" not in proc.log_path.read_text(errors="replace"):
            if not proc.alive() or time.monotonic() > deadline:
                raise BenchError(f"{proc.name}: {count} workers did not start (see {proc.log_path})")
            time.sleep(0.1)

    def authorization_config(self, key: str) -> Path:
        """s1-layers.yaml with configs/authorization.yaml's auth and policies laid over its MCP."""
        import yaml  # the project's own dependency; only this scenario needs it

        config = yaml.safe_load((CONFIGS / "s1-layers.yaml").read_text())
        config["mcps"][0].update(yaml.safe_load((CONFIGS / "authorization.yaml").read_text()))
        path = self.state_root / f"{key}.yaml"
        path.write_text(yaml.safe_dump(config))
        return path

    def start_mcp_proxy(self, key: str) -> tuple[Proc, int]:
        port = free_port()
        argv: list[str | Path] = [MCP_PROXY, "--host", LOOPBACK, "--port", str(port), "--log-level", "WARNING"]
        proc = self.procs.start(key, [*argv, "--", STDIO_CMD], cpu=SUT_CPU)
        wait_port(proc, port, 60)
        return proc, port

    def start_supergateway(self, key: str) -> tuple[Proc, int]:
        port = free_port()
        argv = node_argv(SUPERGATEWAY, "--stdio", str(STDIO_CMD), "--outputTransport", "streamableHttp")
        argv += ["--stateful", "--port", str(port), "--logLevel", "none"]
        proc = self.procs.start(key, argv, cpu=SUT_CPU)
        wait_port(proc, port, 60)
        return proc, port

    def start_everything_http(self, key: str, cpu: str) -> tuple[Proc, int]:
        port = free_port()
        proc = self.procs.start(key, node_argv(EVERYTHING, "streamableHttp"), cpu=cpu, env={"PORT": str(port)})
        wait_port(proc, port, 60)
        return proc, port

    def targets(self) -> list[Target]:
        """Start every target (each in a try: one failure does not stop the others)."""
        bearer = f"Bearer {self.token}"
        out: list[Target] = []

        def add(target: Target, starter: Callable[[], None]) -> None:
            try:
                starter()
            except (BenchError, OSError) as exc:
                target.failed = f"start-up failed: {exc}"
                self.errors.append(f"{target.label}: {target.failed}")
            out.append(target)

        s1 = Target("barbican-s1", "mcp-barbican, security on", "S1", auth=bearer, barbican=True)
        s1_off = Target("barbican-s1-off", "mcp-barbican, security off", "S1", barbican=True)
        s1_layers = Target(
            "barbican-s1-layers", "mcp-barbican, security layers (no audit)", "S1", auth=bearer, barbican=True
        )
        s1_authz = Target(
            "barbican-s1-authz",
            "mcp-barbican, security layers + authorization (10 rules, 2 roles)",
            "S1",
            auth=bearer,
            barbican=True,
        )
        s1_aggregate = Target(
            "barbican-s1-aggregate",
            "mcp-barbican, security on, aggregated /mcp (one MCP)",
            "S1",
            auth=bearer,
            barbican=True,
            tool="everything__echo",
        )
        s1_redis = Target(
            "barbican-s1-redis", "mcp-barbican, security on, Redis storage", "S1", auth=bearer, barbican=True
        )
        s1_redis_shared = Target(
            "barbican-s1-redis-shared",
            "mcp-barbican, security on, Redis storage, shared upstream sessions",
            "S1",
            auth=bearer,
            barbican=True,
        )
        s1_workers = Target(
            "barbican-s1-workers2",
            "mcp-barbican, security on, Redis storage, shared upstream sessions, --workers 2",
            "S1",
            auth=bearer,
            barbican=True,
            workers=2,
        )
        s1_workers_isolated = Target(
            "barbican-s1-workers2-isolated",
            "mcp-barbican, security on, Redis storage, isolated stdio sessions, --workers 2 (half tunnelled)",
            "S1",
            auth=bearer,
            barbican=True,
            workers=2,
        )
        s1_nointegrity = Target(
            "barbican-s1-nointegrity",
            "mcp-barbican, security on, tool pins and definition scanner off",
            "S1",
            auth=bearer,
            barbican=True,
        )
        proxy = Target("mcp-proxy", "mcp-proxy 0.13.0", "S1")
        sg = Target("supergateway", "supergateway 4.0.0 --stateful", "S1")
        pump = Target("stdio-direct", "direct (stdio pump)", "S1")
        s2_direct = Target("s2-direct", "direct (server-everything HTTP)", "S2")
        s2 = Target("barbican-s2", "mcp-barbican, security on", "S2", auth=bearer, barbican=True)
        s2_off = Target("barbican-s2-off", "mcp-barbican, security off", "S2", barbican=True)
        upstream_port: list[int] = []
        redis_url: list[str] = []

        def redis() -> str:
            if not redis_url:
                redis_url.append(self.start_redis("redis-server"))
            return redis_url[0]

        def s2_upstream() -> int:
            if not upstream_port:
                upstream_port.append(self.start_everything_http("s2-upstream-everything", LOAD_CPU)[1])
            return upstream_port[0]

        def start_s1() -> None:
            s1.proc, port, s1.state_dir = self.start_barbican("barbican-s1", "s1.yaml")
            s1.url = f"http://{LOOPBACK}:{port}/mcp/everything"

        def start_s1_off() -> None:
            s1_off.proc, port, s1_off.state_dir = self.start_barbican("barbican-s1-off", "s1-nosec.yaml")
            s1_off.url = f"http://{LOOPBACK}:{port}/mcp/everything"

        def start_s1_layers() -> None:
            s1_layers.proc, port, s1_layers.state_dir = self.start_barbican("barbican-s1-layers", "s1-layers.yaml")
            s1_layers.url = f"http://{LOOPBACK}:{port}/mcp/everything"

        def start_s1_authz() -> None:
            config = self.authorization_config("barbican-s1-authz")
            s1_authz.proc, port, s1_authz.state_dir = self.start_barbican("barbican-s1-authz", str(config))
            s1_authz.url = f"http://{LOOPBACK}:{port}/mcp/everything"

        def start_s1_aggregate() -> None:
            s1_aggregate.proc, port, s1_aggregate.state_dir = self.start_barbican("barbican-s1-aggregate", "s1.yaml")
            s1_aggregate.url = f"http://{LOOPBACK}:{port}/mcp"

        def start_s1_redis() -> None:
            config = self.redis_config("barbican-s1-redis", redis())
            s1_redis.proc, port, s1_redis.state_dir = self.start_barbican("barbican-s1-redis", str(config))
            s1_redis.url = f"http://{LOOPBACK}:{port}/mcp/everything"

        shared = {"BENCH_SESSION_MODE": "shared"}

        def start_s1_redis_shared() -> None:
            config = self.redis_config("barbican-s1-redis-shared", redis())
            started = self.start_barbican("barbican-s1-redis-shared", str(config), shared)
            s1_redis_shared.proc, port, s1_redis_shared.state_dir = started
            s1_redis_shared.url = f"http://{LOOPBACK}:{port}/mcp/everything"

        def start_workers(target: Target, env: dict[str, str] | None) -> None:
            config = self.redis_config(target.key, redis())
            started = self.start_barbican(target.key, str(config), env, args=["--workers", "2"])
            target.proc, port, target.state_dir = started
            self.wait_workers(target.proc, 2)
            target.url = f"http://{LOOPBACK}:{port}/mcp/everything"

        def start_s1_nointegrity() -> None:
            config = self.integrity_off_config("barbican-s1-nointegrity")
            started = self.start_barbican("barbican-s1-nointegrity", str(config))
            s1_nointegrity.proc, port, s1_nointegrity.state_dir = started
            s1_nointegrity.url = f"http://{LOOPBACK}:{port}/mcp/everything"

        def start_proxy() -> None:
            proxy.proc, port = self.start_mcp_proxy("mcp-proxy")
            proxy.url = f"http://{LOOPBACK}:{port}/mcp"

        def start_sg() -> None:
            sg.proc, port = self.start_supergateway("supergateway")
            sg.url = f"http://{LOOPBACK}:{port}/mcp"

        def start_s2_direct() -> None:
            s2_direct.proc, port = self.start_everything_http("s2-direct-everything", SUT_CPU)
            s2_direct.url = f"http://{LOOPBACK}:{port}/mcp"

        def start_s2() -> None:
            up = {"BENCH_UPSTREAM_PORT": str(s2_upstream())}
            s2.proc, port, s2.state_dir = self.start_barbican("barbican-s2", "s2.yaml", up)
            s2.url = f"http://{LOOPBACK}:{port}/mcp/everything"

        def start_s2_off() -> None:
            up = {"BENCH_UPSTREAM_PORT": str(s2_upstream())}
            s2_off.proc, port, s2_off.state_dir = self.start_barbican("barbican-s2-off", "s2-nosec.yaml", up)
            s2_off.url = f"http://{LOOPBACK}:{port}/mcp/everything"

        add(s1, start_s1)
        add(s1_off, start_s1_off)
        add(s1_layers, start_s1_layers)
        add(s1_authz, start_s1_authz)
        add(s1_aggregate, start_s1_aggregate)
        add(s1_redis, start_s1_redis)
        add(s1_redis_shared, start_s1_redis_shared)
        add(s1_workers, lambda: start_workers(s1_workers, shared))
        add(s1_workers_isolated, lambda: start_workers(s1_workers_isolated, None))
        add(s1_nointegrity, start_s1_nointegrity)
        add(proxy, start_proxy)
        add(sg, start_sg)
        add(pump, lambda: None)
        add(s2_direct, start_s2_direct)
        add(s2, start_s2)
        add(s2_off, start_s2_off)
        for t in out:
            if t.barbican and t.proc is not None:
                with contextlib.suppress(OSError):
                    for line in t.proc.log_path.read_text(errors="replace").splitlines():
                        if " WARNING " in line:
                            t.notes.append("start-up log: " + line.split(" WARNING ", 1)[1].strip())
        return out

    # -- measuring --------------------------------------------------------------------------

    def wait_quiet(self) -> float:
        """Wait (bounded) until processes that are not ours use little CPU; returns their last load."""
        deadline = time.monotonic() + self.settings.quiet_timeout
        while True:
            before = host_sample(self.procs)
            time.sleep(0.5)
            other = host_delta(before, host_sample(self.procs))["other_cores"]
            if other <= QUIET_CORES or time.monotonic() > deadline:
                return other
            time.sleep(1.0)

    def saturate(self, target: Target, seconds: float, *, measured: bool = True) -> dict[str, Any]:
        pre_other = self.wait_quiet() if measured else math.nan
        if not target.http:
            host_before = host_sample(self.procs)
            result = run_pump(seconds)
            result.update(host_delta(host_before, host_sample(self.procs)))
        else:
            assert target.url is not None
            with mcp_session(target) as session:
                before = cpu_sample(target.proc, workers=target.workers > 1)
                host_before = host_sample(self.procs)
                result = run_wrk(target.url, session, seconds)
                host_after = host_sample(self.procs)
                after = cpu_sample(target.proc, workers=target.workers > 1)
            result.update(cpu_delta(before, after, result["good"], result["duration_us"] / 1e6))
            result.update(host_delta(host_before, host_after))
        result["pre_other_cores"] = pre_other
        return result

    def measured(self, what: str, run: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """Run a timed measurement; repeat it while other processes disturbed it (bounded)."""
        best: dict[str, Any] | None = None
        for attempt in range(1 + self.settings.retries):
            result = run()
            result["attempts"] = attempt + 1
            other = result.get("other_cores", 0.0)
            if best is None or other < best.get("other_cores", 0.0):
                best = result
            if other <= DIRTY_CORES:
                return result
            log(f"{what}: other processes used {other:.2f} cores during the run; repeating it")
        assert best is not None
        best["disturbed"] = True
        return best

    def fixed_rate(self, target: Target, rate: int, seconds: float) -> dict[str, Any]:
        pre_other = self.wait_quiet()
        with mcp_session(target) as session:
            host_before = host_sample(self.procs)
            result = run_rate(session, rate, seconds)
            result.update(host_delta(host_before, host_sample(self.procs)))
        result["pre_other_cores"] = pre_other
        return result


def barbican_command() -> list[str]:
    exe = shutil.which("mcp-barbican")
    return [exe] if exe else [sys.executable, "-m", "mcp_barbican"]


# ---------------------------------------------------------------------------------------------
# Load generators


def run_wrk(url: str, session: Session, seconds: float) -> dict[str, Any]:
    env = {**os.environ, "MCP_SESSION": session.sid, "MCP_PROTOCOL": session.protocol, "MCP_AUTH": session.auth}
    env["MCP_TOOL"] = session.tool
    argv = ["taskset", "-c", LOAD_CPU, "wrk", "-t1", "-c8", f"-d{seconds:g}s", "--timeout", "10s", "-s", str(LUA), url]
    try:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=seconds + 60, check=False)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"wrk did not finish within {seconds + 60:.0f} s") from exc
    for line in done.stdout.splitlines():
        if line.startswith("MCPBENCH "):
            data: dict[str, Any] = json.loads(line[len("MCPBENCH ") :])
            duration = data["duration_us"] / 1e6
            data["rps"] = data["good"] / duration if duration > 0 else 0.0
            socket_errors = sum(data[k] for k in ("connect_errors", "read_errors", "write_errors", "timeouts"))
            data["errors"] = data["bad"] + socket_errors
            return data
    raise BenchError(f"wrk printed no result (exit {done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")


def run_pump(seconds: float) -> dict[str, Any]:
    argv = ["taskset", "-c", LOAD_CPU, sys.executable, str(PUMP), "--seconds", f"{seconds:g}", "--"]
    argv += ["taskset", "-c", SUT_CPU, str(NODE), str(EVERYTHING), "stdio"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 90, check=False)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"the stdio pump did not finish within {seconds + 90:.0f} s") from exc
    if done.returncode != 0:
        raise BenchError(f"the stdio pump failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    data: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    data["errors"] = data["bad"]
    return data


def run_rate(session: Session, rate: int, seconds: float) -> dict[str, Any]:
    env = {**os.environ, "MCP_AUTH": session.auth}
    argv = ["taskset", "-c", LOAD_CPU, sys.executable, str(RATE_CLIENT), f"--url={session.url}"]
    # `--name=value`: session ids may start with "-" (URL-safe base64), which argparse would take for an option.
    argv += [f"--session={session.sid}", f"--protocol={session.protocol}", f"--rate={rate}", f"--seconds={seconds:g}"]
    argv += [f"--slack-ms={RATE_SLACK_MS:g}", f"--tool={session.tool}"]
    try:
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=seconds + 60, check=False)
    except subprocess.TimeoutExpired as exc:
        raise BenchError(f"the rate client did not finish within {seconds + 60:.0f} s") from exc
    if done.returncode != 0:
        raise BenchError(f"the rate client failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


# ---------------------------------------------------------------------------------------------
# CPU and memory from /proc


@dataclass
class CpuSample:
    at: float
    own: int
    tree: int


def cpu_sample(proc: Proc | None, *, workers: bool = False) -> CpuSample | None:
    """`workers`: `proc` is a `serve --workers N` supervisor; "own" CPU is its own plus its workers'
    (its direct children; a worker restarted mid-run would move its time into the supervisor's cutime)."""
    if proc is None:
        return None
    fields = _proc_stat(proc.pid)
    if fields is None:
        return None
    own = int(fields[11]) + int(fields[12])
    if workers:
        for pid in _children(proc.pid):
            f = _proc_stat(pid)
            if f is not None:
                own += int(f[11]) + int(f[12])
    # Live processes' own + reaped children's time: a child reaped during the run moves its whole
    # time into its parent's cutime/cstime, so differences of this sum stay consistent.
    tree = 0
    for pid in [proc.pid, *descendants(proc.pid)]:
        f = _proc_stat(pid)
        if f is not None:
            tree += sum(int(v) for v in f[11:15])
    return CpuSample(time.monotonic(), own, tree)


def cpu_delta(before: CpuSample | None, after: CpuSample | None, calls: int, seconds: float) -> dict[str, Any]:
    if before is None or after is None or calls <= 0:
        return {}
    own = (after.own - before.own) / CLK_TCK
    tree = (after.tree - before.tree) / CLK_TCK
    return {
        "cpu_us_per_call": own / calls * 1e6,
        "tree_cpu_us_per_call": tree / calls * 1e6,
        "core_util": own / seconds if seconds > 0 else 0.0,
    }


@dataclass
class HostSample:
    at: float
    busy: dict[int, int]
    total: dict[int, int]
    ours: int


def host_sample(procs: Processes) -> HostSample:
    """Per-CPU busy ticks from /proc/stat, and the ticks used by this bench's own processes."""
    busy: dict[int, int] = {}
    total: dict[int, int] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *values = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        ticks = [int(v) for v in values[:8]]  # user nice system idle iowait irq softirq steal
        cpu = int(name[3:])
        total[cpu] = sum(ticks)
        busy[cpu] = total[cpu] - ticks[3] - ticks[4]
    ours = 0
    for proc in procs.procs:
        for pid in [proc.pid, *descendants(proc.pid)]:
            fields = _proc_stat(pid)
            if fields is not None:
                ours += sum(int(v) for v in fields[11:15])
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        ours += round((usage.ru_utime + usage.ru_stime) * CLK_TCK)
    return HostSample(time.monotonic(), busy, total, ours)


def host_delta(before: HostSample, after: HostSample) -> dict[str, float]:
    """CPU 0 / CPU 1 busy fractions, and cores used by processes that are not ours ("other load")."""
    out: dict[str, float] = {}
    for cpu in (int(SUT_CPU), int(LOAD_CPU)):
        span = after.total.get(cpu, 0) - before.total.get(cpu, 0)
        out[f"cpu{cpu}_busy"] = (after.busy[cpu] - before.busy[cpu]) / span if span > 0 else math.nan
    busy = sum(after.busy.values()) - sum(before.busy.values())
    seconds = after.at - before.at
    # Kernel work not charged to any process (softirq, kworkers) lands here too: a floor, not zero.
    out["other_cores"] = max(0.0, (busy - (after.ours - before.ours)) / CLK_TCK / seconds) if seconds > 0 else 0.0
    return out


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def pss_kb(pid: int) -> int:
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def memory_snapshot(proc: Proc) -> dict[str, int]:
    tree = [proc.pid, *descendants(proc.pid)]
    return {"rss_kb": rss_kb(proc.pid), "tree_pss_kb": sum(pss_kb(pid) for pid in tree), "procs": len(tree)}


def measure_memory(lab: Lab, settings: Settings) -> list[dict[str, Any]]:
    """Fresh process each: idle, after 1 session, after N sessions (initialize + 1 call, kept open)."""
    rows: list[dict[str, Any]] = []
    bearer = f"Bearer {lab.token}"
    plans: list[tuple[str, str, Callable[[], tuple[Proc, str]]]] = []

    def barbican(key: str, config: str, mode: str) -> Callable[[], tuple[Proc, str]]:
        def start() -> tuple[Proc, str]:
            proc, port, _state = lab.start_barbican(key, config, {"BENCH_SESSION_MODE": mode})
            return proc, f"http://{LOOPBACK}:{port}/mcp/everything"

        return start

    def mcp_proxy() -> tuple[Proc, str]:
        proc, port = lab.start_mcp_proxy("mem-mcp-proxy")
        return proc, f"http://{LOOPBACK}:{port}/mcp"

    for config, auth, onoff in (("s1.yaml", bearer, "on"), ("s1-nosec.yaml", "", "off")):
        for mode in ("isolated", "shared"):
            label = f"mcp-barbican {mode}, security {onoff} ({config})"
            plans.append((label, auth, barbican(f"mem-barbican-{mode}-{onoff}", config, mode)))
    plans.append(("mcp-proxy 0.13.0", "", mcp_proxy))
    for label, auth, start in plans:
        row: dict[str, Any] = {"label": label, "sessions": settings.sessions}
        proc: Proc | None = None
        try:
            proc, url = start()
            time.sleep(3)
            row["idle"] = memory_snapshot(proc)
            sessions = [open_session(url, auth)]
            time.sleep(1)
            row["one"] = memory_snapshot(proc)
            deadline = time.monotonic() + 30 + 3 * settings.sessions
            while len(sessions) < settings.sessions:
                if time.monotonic() > deadline:
                    raise BenchError(f"opening {settings.sessions} sessions took too long ({len(sessions)} open)")
                sessions.append(open_session(url, auth))
            time.sleep(3)
            row["many"] = memory_snapshot(proc)
            span = settings.sessions - 1
            row["kb_per_session_rss"] = (row["many"]["rss_kb"] - row["one"]["rss_kb"]) / span
            row["kb_per_session_pss"] = (row["many"]["tree_pss_kb"] - row["one"]["tree_pss_kb"]) / span
        except (BenchError, OSError) as exc:
            row["error"] = str(exc)
            lab.errors.append(f"memory, {label}: {exc}")
        finally:
            if proc is not None:
                lab.procs.stop(proc)
        rows.append(row)
        log(f"memory {label}: {json.dumps({k: v for k, v in row.items() if k != 'label'})}")
    return rows


# ---------------------------------------------------------------------------------------------
# What the security layers visibly do (so the report says what "on" actually enforced)


def probe_layers(target: Target) -> dict[str, str]:
    assert target.url is not None
    found: dict[str, str] = {}
    try:
        session = open_session(target.url, target.auth, tool=target.tool)
    except BenchError as exc:
        return {"error": str(exc)}
    try:
        call = {"jsonrpc": "2.0", "id": 99, "method": "tools/call", "params": {**ECHO_PARAMS, "name": target.tool}}
        ok = http_request("POST", target.url, json.dumps(call).encode(), session.headers())
        bare = {k: v for k, v in session.headers().items() if k != "Authorization"}
        no_auth = http_request("POST", target.url, json.dumps(call).encode(), bare)
        found["auth"] = f"no token -> {no_auth.status}" + (
            f" ({no_auth.headers['www-authenticate'][:40]})" if "www-authenticate" in no_auth.headers else ""
        )
        wanted = ("x-content-type-options", "x-frame-options", "content-security-policy", "referrer-policy")
        present = [h for h in wanted if h in ok.headers]
        found["headers"] = ", ".join(present) if present else "none seen"
        limits = [h for h in ok.headers if h.startswith(("ratelimit", "x-ratelimit"))]
        found["rate limit"] = ", ".join(limits) if limits else "no RateLimit headers on a 200"
        preflight = http_request(
            "OPTIONS",
            target.url,
            None,
            {
                "Origin": "https://app.example.com",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "content-type, authorization, mcp-session-id",
            },
        )
        allow = preflight.headers.get("access-control-allow-origin")
        found["cors"] = f"preflight -> {preflight.status}" + (
            f", allow-origin {allow}" if allow else ", no allow-origin"
        )
    except (OSError, http.client.HTTPException) as exc:
        found["error"] = repr(exc)
    finally:
        delete_session(session)
    return found


def audit_size(target: Target) -> str:
    if target.state_dir is None:
        return "n/a"
    files = sorted(target.state_dir.glob("audit.jsonl*"))
    if not files:
        return "no audit file written"
    size = sum(f.stat().st_size for f in files)
    lines = 0
    with contextlib.suppress(OSError), files[0].open("rb") as fh:
        lines = sum(1 for _ in fh)
    return f"{size / 1024:.0f} KiB, {lines} events in {files[0].name}"


# ---------------------------------------------------------------------------------------------
# Statistics and the report


def median_range(values: Sequence[float | None]) -> tuple[float, float, float] | None:
    clean = [v for v in values if v is not None and not math.isnan(v)]
    if not clean:
        return None
    return statistics.median(clean), min(clean), max(clean)


def fmt_num(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}"


def fmt_mr(values: Sequence[float | None], digits: int = 0, single: bool = False) -> str:
    mr = median_range(values)
    if mr is None:
        return "n/a"
    med, lo, hi = mr
    if single or lo == hi:
        return fmt_num(med, digits)
    return f"{fmt_num(med, digits)} [{fmt_num(lo, digits)}–{fmt_num(hi, digits)}]"


def median_of(values: Sequence[float | None]) -> float | None:
    mr = median_range(values)
    return None if mr is None else mr[0]


@dataclass
class Check:
    label: str
    values: list[float | None]
    bar: float
    higher_is_better: bool = True
    digits: int = 2


def verdict(value: float | None, bar: float, higher_is_better: bool = True) -> str:
    if value is None:
        return "not measured"
    ok = value >= bar if higher_is_better else value < bar
    return "met" if ok else "**missed**"


@dataclass
class Results:
    settings: Settings
    started: str
    env: dict[str, str]
    targets: list[Target]
    sat: list[dict[str, dict[str, Any]]] = field(default_factory=list)
    rate: list[dict[str, dict[int, dict[str, Any]]]] = field(default_factory=list)
    memory: list[dict[str, Any]] = field(default_factory=list)

    def sat_values(self, key: str, metric: str) -> list[float | None]:
        return [rep.get(key, {}).get(metric) for rep in self.sat]

    def ratio(self, num: str, den: str) -> list[float | None]:
        out: list[float | None] = []
        for rep in self.sat:
            a = rep.get(num, {}).get("rps")
            b = rep.get(den, {}).get("rps")
            out.append(a / b if a and b else None)
        return out

    def rate_values(self, key: str, rate: int, metric: str) -> list[float | None]:
        out: list[float | None] = []
        for rep in self.rate:
            row = rep.get(key, {}).get(rate, {})
            out.append(row.get(metric) if not row.get("over") and not row.get("error") else None)
        return out

    def rate_delta(self, key: str, base: str, rate: int, metric: str) -> list[float | None]:
        a = self.rate_values(key, rate, metric)
        b = self.rate_values(base, rate, metric)
        return [x - y if x is not None and y is not None else None for x, y in zip(a, b, strict=True)]


def report(res: Results) -> str:
    s = res.settings
    lines: list[str] = []
    add = lines.append
    mode = "QUICK smoke run (not a result)" if s.quick else "full run"
    add(f"## mcp-barbican benchmark: {mode}, {res.started}")
    add("")
    add(
        f"{s.repetitions} repetition(s) in alternating order; wrk -t1 -c8 for {s.seconds:g} s per target; "
        f"fixed rate {' and '.join(map(str, s.rates))} req/s for {s.rate_seconds:g} s; "
        f"system under test on CPU {SUT_CPU}, load generator, upstreams and stdio children on CPU {LOAD_CPU}. "
        "Medians [min–max] over repetitions; ratios are computed within each repetition, then medianed."
    )
    add("")
    add("### Bars (DESIGN.md section 5)")
    add("")
    add("| check | measured (median [min–max]) | bar | verdict |")
    add("|---|---|---|---|")
    checks = [
        Check("S1 mcp-barbican (security on) / mcp-proxy", res.ratio("barbican-s1", "mcp-proxy"), BAR_S1_VS_MCP_PROXY),
        Check(
            "S1 mcp-barbican (security on) / supergateway",
            res.ratio("barbican-s1", "supergateway"),
            BAR_S1_VS_SUPERGATEWAY,
        ),
        Check("S2 mcp-barbican (security on) / direct", res.ratio("barbican-s2", "s2-direct"), BAR_S2_VS_DIRECT),
        Check("S2 mcp-barbican (security off) / direct", res.ratio("barbican-s2-off", "s2-direct"), BAR_S2_VS_DIRECT),
    ]
    checks += [
        Check(
            f"S2 added p50 at {rate} req/s, security {onoff} (ms)",
            res.rate_delta(key, "s2-direct", rate, "p50_ms"),
            BAR_S2_ADDED_P50_MS,
            higher_is_better=False,
        )
        for key, onoff in (("barbican-s2", "on"), ("barbican-s2-off", "off"))
        for rate in s.rates
    ]
    checks.append(
        Check(
            "S1 security layers (no audit) / off (throughput)",
            res.ratio("barbican-s1-layers", "barbican-s1-off"),
            BAR_SECURITY_RATIO,
            digits=3,
        )
    )
    checks.append(
        Check(
            "S1 authorization (10 rules, 2 roles) / the same layers without (throughput)",
            res.ratio("barbican-s1-authz", "barbican-s1-layers"),
            BAR_AUTHORIZATION_RATIO,
            digits=3,
        )
    )
    checks.append(
        Check(
            "S1 aggregated /mcp (one MCP) / /mcp/{id}, security on (throughput)",
            res.ratio("barbican-s1-aggregate", "barbican-s1"),
            BAR_AGGREGATE_RATIO,
            digits=3,
        )
    )
    checks.append(
        Check(
            "S1 security on, audit included / off (throughput)",
            res.ratio("barbican-s1", "barbican-s1-off"),
            BAR_SECURITY_RATIO,
            digits=3,
        )
    )
    checks.append(
        Check(
            "S2 security on / off (throughput)",
            res.ratio("barbican-s2", "barbican-s2-off"),
            BAR_SECURITY_RATIO,
            digits=3,
        )
    )
    for c in checks:
        bar_text = f"≥ {c.bar:g}×" if c.higher_is_better else f"< {c.bar:g} ms"
        outcome = verdict(median_of(c.values), c.bar, c.higher_is_better)
        add(f"| {c.label} | {fmt_mr(c.values, c.digits)} | {bar_text} | {outcome} |")
    for row in res.memory:
        if row.get("label", "").startswith("mcp-barbican") and "idle" in row:
            idle_mb = row["idle"]["rss_kb"] / 1024
            idle_verdict = verdict(idle_mb, BAR_IDLE_RSS_MB, False)
            add(f"| idle RSS, {row['label']} (MB) | {idle_mb:.1f} | < 80 MB | {idle_verdict} |")
            if "kb_per_session_rss" in row:
                kb = row["kb_per_session_rss"]
                add(
                    f"| proxy RSS per open session, {row['label']} (KB) | {kb:.0f} | < 100 KB | "
                    f"{verdict(kb, BAR_SESSION_KB, False)} |"
                )
    add("")

    add("### Saturation (closed loop, wrk 8 connections)")
    add("")
    add(
        "| target | scen. | rps | ×direct | p50 ms | p99 ms | bad | CPU µs/call proxy | tree | proxy core util "
        "| CPU0 / CPU1 busy | other load |"
    )
    add("|---|---|---|---|---|---|---|---|---|---|---|---|")
    direct_of = {"S1": "stdio-direct", "S2": "s2-direct"}
    load_bound: list[str] = []
    for t in res.targets:
        if t.failed and not any(t.key in rep for rep in res.sat):
            add(f"| {t.label} | {t.scenario} | failed (see Errors) | | | | | | | | | |")
            continue
        rps = res.sat_values(t.key, "rps")
        x_direct = fmt_mr(res.ratio(t.key, direct_of[t.scenario]), 3)
        p50 = [v / 1000 if v is not None else None for v in res.sat_values(t.key, "p50_us")]
        p99 = [v / 1000 if v is not None else None for v in res.sat_values(t.key, "p99_us")]
        bad = sum(v or 0 for v in res.sat_values(t.key, "errors"))
        fails = sum(1 for rep in res.sat if rep.get(t.key, {}).get("error"))
        bad_text = f"{bad}" + (f" ({fails} run(s) failed)" if fails else "")
        busy0 = fmt_mr(res.sat_values(t.key, "cpu0_busy"), 2, single=True)
        busy1_values = res.sat_values(t.key, "cpu1_busy")
        busy1 = fmt_mr(busy1_values, 2, single=True)
        if any(v is not None and v > LOAD_BOUND for v in busy1_values) and t.http:
            load_bound.append(t.label + f" ({t.scenario})")
            busy1 += "¹"
        add(
            f"| {t.label} | {t.scenario} | {fmt_mr(rps)} | {x_direct} | {fmt_mr(p50, 2)} | {fmt_mr(p99, 2)} | "
            f"{bad_text} | {fmt_mr(res.sat_values(t.key, 'cpu_us_per_call'))} | "
            f"{fmt_mr(res.sat_values(t.key, 'tree_cpu_us_per_call'))} | "
            f"{fmt_mr(res.sat_values(t.key, 'core_util'), 2)} | {busy0} / {busy1} | "
            f"{fmt_mr(res.sat_values(t.key, 'other_cores'), 2, single=True)} |"
        )
    add("")
    add(
        "CPU µs/call: the proxy process / its whole process tree (including the stdio child on CPU 1), per good reply. "
        "'other load': cores used meanwhile by processes this bench did not start (plus uncharged kernel work)."
    )
    if load_bound:
        add(
            f"¹ CPU {LOAD_CPU} (wrk + upstream/stdio child) was over {LOAD_BOUND:.0%} busy in at least one repetition: "
            f"the load side, not the system under test, limited: {', '.join(load_bound)}."
        )
    add("")
    add("Ratios between targets (same repetition):")
    add("")
    add("| ratio | median [min–max] |")
    add("|---|---|")
    for label, num, den in (
        ("mcp-barbican security on / mcp-proxy", "barbican-s1", "mcp-proxy"),
        ("mcp-barbican security on / supergateway", "barbican-s1", "supergateway"),
        ("mcp-barbican security off / mcp-proxy", "barbican-s1-off", "mcp-proxy"),
        ("mcp-barbican security off / supergateway", "barbican-s1-off", "supergateway"),
        ("mcp-barbican security on / off", "barbican-s1", "barbican-s1-off"),
        ("mcp-barbican security layers (no audit) / off", "barbican-s1-layers", "barbican-s1-off"),
        ("mcp-barbican layers + authorization / layers", "barbican-s1-authz", "barbican-s1-layers"),
        ("mcp-barbican aggregated /mcp / /mcp/{id}", "barbican-s1-aggregate", "barbican-s1"),
        ("mcp-barbican Redis storage / SQLite", "barbican-s1-redis", "barbican-s1"),
        ("mcp-barbican tool pins + scanner on / off", "barbican-s1", "barbican-s1-nointegrity"),
        (
            "mcp-barbican --workers 2 / one worker (Redis, shared sessions)",
            "barbican-s1-workers2",
            "barbican-s1-redis-shared",
        ),
        (
            "mcp-barbican --workers 2, isolated stdio sessions / one worker",
            "barbican-s1-workers2-isolated",
            "barbican-s1-redis",
        ),
        ("supergateway / mcp-proxy", "supergateway", "mcp-proxy"),
        ("S2 mcp-barbican security on / direct", "barbican-s2", "s2-direct"),
        ("S2 mcp-barbican security off / direct", "barbican-s2-off", "s2-direct"),
        ("S2 mcp-barbican security on / off", "barbican-s2", "barbican-s2-off"),
    ):
        add(f"| {label} | {fmt_mr(res.ratio(num, den), 3)} |")
    add("")

    add("### Fixed rate (open loop, latency from the due time, ms)")
    add("")
    head = "| target | scen. |" + "".join(f" {r}/s p50 | p99 | +Δp50 | +Δp99 |" for r in s.rates)
    add(head)
    add("|---|---|" + "---|---|---|---|" * len(s.rates))
    base_of = {"S1": "barbican-s1-off", "S2": "s2-direct"}
    for t in res.targets:
        if not t.http:
            continue
        cells = [t.label, t.scenario]
        for rate in s.rates:
            runs = [rep.get(t.key, {}).get(rate, {}) for rep in res.rate]
            if runs and all(r.get("over") for r in runs):
                cells += ["over", "", "", ""]
                continue
            if runs and all(r.get("error") for r in runs):
                cells += ["failed", "", "", ""]
                continue
            base = base_of[t.scenario]
            if t.scenario == "S1" or t.key == base:
                d50 = d99 = "–"
            else:
                d50 = fmt_mr(res.rate_delta(t.key, base, rate, "p50_ms"), 2)
                d99 = fmt_mr(res.rate_delta(t.key, base, rate, "p99_ms"), 2)
            cells += [
                fmt_mr(res.rate_values(t.key, rate, "p50_ms"), 2),
                fmt_mr(res.rate_values(t.key, rate, "p99_ms"), 2),
                d50,
                d99,
            ]
        add("| " + " | ".join(cells) + " |")
    late = [
        (i + 1, t.label, rate, r)
        for i, rep in enumerate(res.rate)
        for t in res.targets
        for rate, r in rep.get(t.key, {}).items()
        if r.get("bad") or r.get("late", 0) > 0.01 * r.get("scheduled", 0)
    ]
    late_total = sum(r.get("late", 0) for rep in res.rate for d in rep.values() for r in d.values())
    sent_total = sum(r.get("scheduled", 0) for rep in res.rate for d in rep.values() for r in d.values())
    add("")
    add(
        "+Δ is the paired difference to S2 direct (S2 only; S1 has no HTTP baseline here). "
        f"'over' means the rate exceeded {s.over_fraction:.0%} of that target's saturation rps in the same repetition."
    )
    add("")
    add(
        f"Client dispatches more than {RATE_SLACK_MS:g} ms late (their lateness counts in the latency): "
        f"{late_total} of {sent_total}."
    )
    if late:
        add("")
        add("Fixed-rate runs with bad replies, or with more than 1 % of dispatches late:")
        add("")
        for rep_no, label, rate, r in late:
            first_bad = f"; first bad: {cell(r['first_bad'], 300)}" if r.get("first_bad") else ""
            add(
                f"- rep {rep_no}, {label} at {rate}/s: {r.get('bad', 0)} bad, {r.get('late', 0)} of "
                f"{r.get('scheduled', 0)} dispatches late (max {r.get('max_late_ms', 0):.1f} ms){first_bad}"
            )
    disturbed = [
        f"rep {i + 1}, {t.label} ({t.scenario}) {what}: other load {r.get('other_cores', 0):.2f} cores"
        for i, (sat, rates) in enumerate(zip(res.sat, res.rate, strict=False))
        for t in res.targets
        for what, r in [("saturation", sat.get(t.key, {}))]
        + [(f"at {rate}/s", x) for rate, x in rates.get(t.key, {}).items()]
        if r.get("disturbed")
    ]
    retried = sum(
        1
        for sat, rates in zip(res.sat, res.rate, strict=False)
        for r in [*sat.values(), *(x for d in rates.values() for x in d.values())]
        if r.get("attempts", 1) > 1
    )
    add("")
    add(
        f"Runs repeated because other processes used more than {DIRTY_CORES:g} cores meanwhile: {retried}; "
        f"still disturbed after {s.retries} repeat(s) (kept, least disturbed attempt): {len(disturbed)}."
    )
    for line in disturbed:
        add(f"- {line}")
    add("")

    add(f"### Memory (fresh process; {s.sessions} sessions, each initialize + initialized + one call, kept open)")
    add("")
    add(
        "| target | procs idle→1→N | idle MB (RSS / tree PSS) | 1 session MB | N sessions MB | "
        "**KB/session proxy RSS** | KB/session tree PSS |"
    )
    add("|---|---|---|---|---|---|---|")

    def mb(snap: dict[str, int]) -> str:
        return f"{snap['rss_kb'] / 1024:.1f} / {snap['tree_pss_kb'] / 1024:.1f}"

    for row in res.memory:
        if "error" in row and "many" not in row:
            add(f"| {row['label']} | failed: {cell(row['error'])} (see Errors) | | | | | |")
            continue
        i, o, m = row["idle"], row["one"], row["many"]
        add(
            f"| {row['label']} | {i['procs']}→{o['procs']}→{m['procs']} | {mb(i)} | {mb(o)} | {mb(m)} | "
            f"**{row['kb_per_session_rss']:.0f}** | {row['kb_per_session_pss']:,.0f} |"
        )
    add("")

    barbicans = [t for t in res.targets if t.barbican]
    if any(t.layers for t in barbicans):
        add("### What the security layers visibly did (probe before the timed runs)")
        add("")
        add("| target | auth | security headers | rate limit | CORS | audit after the run |")
        add("|---|---|---|---|---|---|")
        for t in barbicans:
            lay = t.layers
            if t.failed and not lay.get("auth"):
                add(f"| {t.label} ({t.scenario}) | not running (see Errors) | | | | |")
                continue
            if "error" in lay:
                add(f"| {t.label} ({t.scenario}) | probe failed: {cell(lay['error'])} | | | | |")
                continue
            add(
                f"| {t.label} ({t.scenario}) | {lay.get('auth', '')} | {lay.get('headers', '')} | "
                f"{lay.get('rate limit', '')} | {lay.get('cors', '')} | {lay.get('audit', '')} |"
            )
        add("")
        add("The 1000-entry `ip_blacklist` cannot be seen from 127.0.0.1 (nothing in it matches).")
        add("")

    add("### Environment")
    add("")
    for k, v in res.env.items():
        add(f"- {k}: {v}")
    notes = [f"{t.label}: {n}" for t in res.targets for n in t.notes]
    if notes:
        add("")
        add("### Notes")
        add("")
        for n in dict.fromkeys(notes):
            add(f"- {n}")
    return "\n".join(lines) + "\n"


def cell(text: str, limit: int = 160) -> str:
    """One Markdown table cell: the last meaningful line, no pipes."""
    lines = [line.strip() for line in text.strip().splitlines() if line.strip() and not line.startswith("#")]
    last = lines[-1] if lines else text.strip()
    return last.replace("|", "\\|")[:limit]


def errors_section(errors: list[str]) -> str:
    if not errors:
        return ""
    out = ["", "### Errors", ""]
    for e in errors:
        out.append("```")
        out.append(e.strip())
        out.append("```")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------
# Environment and prerequisites


def _version(argv: list[str], *, any_exit: bool = False) -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
        if done.returncode == 0 or any_exit:
            out = (done.stdout or done.stderr).strip().splitlines()
            return out[0] if out else ""
    return "unknown"


def _pkg_version(path: Path) -> str:
    with contextlib.suppress(OSError, ValueError):
        return str(json.loads(path.read_text())["version"])
    return "unknown"


def environment() -> dict[str, str]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        barbican = importlib.metadata.version("mcp-barbican")
    except importlib.metadata.PackageNotFoundError:
        barbican = "unknown"
    rev = _version(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    if rev in ("", "unknown"):
        rev = "no commit yet"
    dirty = _version(["git", "-C", str(ROOT), "status", "--porcelain", "--", "src"])
    state = ", src/ has uncommitted changes" if dirty not in ("", "unknown") else ""
    peer_py = str(PEERS_VENV / "bin" / "python")
    peer_versions = _version(
        [
            peer_py,
            "-c",
            "import importlib.metadata as m; print(' '.join(f'{p} {m.version(p)}' for p in "
            "('mcp-proxy', 'mcp', 'uvicorn', 'starlette', 'pydantic')))",
        ]
    )
    mem_kb = 0
    with contextlib.suppress(OSError):
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "machine": f"{os.cpu_count()} vCPU {cpu}, {mem_kb / 1024 / 1024:.0f} GiB RAM, Linux {platform.release()}",
        "mcp-barbican": f"{barbican} (git {rev}{state})",
        "Python (mcp-barbican, clients)": platform.python_version(),
        "peers venv": peer_versions,
        "Node": _version([str(NODE), "--version"]),
        "server-everything": _pkg_version(
            NODE_MODULES / "@modelcontextprotocol" / "server-everything" / "package.json"
        ),
        "supergateway": _pkg_version(NODE_MODULES / "supergateway" / "package.json"),
        "wrk": _version(["wrk", "--version"], any_exit=True).split(" Copyright")[0],
    }


def source_digest() -> str:
    """A short digest of mcp-barbican's source tree, to notice code that changed during a run."""
    digest = hashlib.sha256()
    package = ROOT / "src" / "mcp_barbican"
    for path in sorted(package.rglob("*.py")):
        digest.update(str(path.relative_to(package)).encode())
        with contextlib.suppress(OSError):
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def check_prerequisites() -> list[str]:
    problems: list[str] = []
    if (os.cpu_count() or 1) < 2:
        problems.append("needs at least 2 CPUs (system under test on CPU 0, load on CPU 1)")
    for tool, hint in (("wrk", "apt-get install -y wrk"), ("taskset", "apt-get install -y util-linux")):
        if shutil.which(tool) is None:
            problems.append(f"{tool} not found ({hint})")
    problems += [f"{p} missing (run scripts/node-deps)" for p in (NODE, EVERYTHING, SUPERGATEWAY) if not p.exists()]
    if not MCP_PROXY.exists():
        problems.append(f"{MCP_PROXY} missing (run bench/setup_peers.sh)")
    return problems


# ---------------------------------------------------------------------------------------------
# Main


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _sigterm(_signum: int, _frame: object) -> None:
    raise SystemExit(143)


LOCK_FILE = Path("/tmp/mcp-barbican-bench.lock")


def acquire_machine_lock(timeout: float) -> TextIO | None:
    """One benchmark at a time per machine: two runs on 2 cores would measure each other.

    Returns the open lock file (held until the process exits), or None after `timeout` seconds.
    """
    handle = LOCK_FILE.open("a+")
    deadline = time.monotonic() + timeout
    announced = False
    while True:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if time.monotonic() > deadline:
                handle.close()
                return None
            if not announced:
                handle.seek(0)
                holder = handle.read().strip() or "unknown"
                log(f"another benchmark run holds {LOCK_FILE} ({holder}); waiting up to {timeout / 60:.0f} min")
                announced = True
            time.sleep(5)
            continue
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} since {dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}\n")
        handle.flush()
        return handle


def run(settings: Settings) -> int:
    problems = check_prerequisites()
    if problems:
        for p in problems:
            print(f"bench: {p}", file=sys.stderr)
        return 2
    lock = acquire_machine_lock(settings.lock_timeout)
    if lock is None:
        print(f"bench: another benchmark run still holds {LOCK_FILE}; not starting", file=sys.stderr)
        return 3
    # This runner (and the wrk, rate and pump clients it starts) lives on the load core.
    os.sched_setaffinity(0, {int(LOAD_CPU)})
    settings.out.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    work = settings.out / f"run-{stamp}"
    (work / "logs").mkdir(parents=True)
    procs = Processes(work / "logs")
    lab = Lab(settings, procs, work / "state")
    res = Results(settings, dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"), environment(), [])
    signal.signal(signal.SIGTERM, _sigterm)
    digest_at_start = source_digest()
    res.env["mcp-barbican source digest"] = digest_at_start
    try:
        log("starting targets")
        res.targets = lab.targets()
        live = [t for t in res.targets if not t.failed]
        log("warming up: " + ", ".join(t.key for t in live))
        for t in live:
            try:
                lab.saturate(t, settings.warmup, measured=False)
            except BenchError as exc:
                t.failed = f"warm-up failed: {exc}"
                lab.errors.append(f"{t.label} ({t.scenario}): {t.failed}")
                log(f"{t.key}: warm-up failed: {exc}")
        for t in res.targets:
            if t.barbican and not t.failed:
                t.layers = probe_layers(t)
                log(f"{t.key} layers: {t.layers}")
        for rep in range(settings.repetitions):
            sat: dict[str, dict[str, Any]] = {}
            for t in res.targets:
                if t.failed:
                    continue
                try:
                    sat[t.key] = lab.measured(
                        f"rep {rep + 1} sat {t.key}", functools.partial(lab.saturate, t, settings.seconds)
                    )
                except BenchError as exc:
                    sat[t.key] = {"error": str(exc)}
                    lab.errors.append(f"rep {rep + 1}, {t.label} ({t.scenario}) saturation: {exc}")
                row = sat[t.key]
                log(
                    f"rep {rep + 1} sat {t.key}: {row.get('rps', 0):.0f} rps, errors {row.get('errors', '-')}"
                    + (f", {row['cpu_us_per_call']:.0f} µs/call" if "cpu_us_per_call" in row else "")
                    + (f", first bad: {row['first_bad']}" if row.get("first_bad") else "")
                    + (f" ERROR {row['error'][:300]}" if "error" in row else "")
                )
            res.sat.append(sat)
            rates: dict[str, dict[int, dict[str, Any]]] = {}
            for rate in settings.rates:
                for t in res.targets:
                    if t.failed or not t.http:
                        continue
                    slot = rates.setdefault(t.key, {})
                    rps = sat.get(t.key, {}).get("rps")
                    if not rps or rate > settings.over_fraction * rps:
                        slot[rate] = {"over": True}
                        log(f"rep {rep + 1} rate {rate} {t.key}: over (saturation {rps or 0:.0f} rps)")
                        continue
                    try:
                        slot[rate] = lab.measured(
                            f"rep {rep + 1} rate {rate} {t.key}",
                            functools.partial(lab.fixed_rate, t, rate, settings.rate_seconds),
                        )
                    except BenchError as exc:
                        slot[rate] = {"error": str(exc)}
                        lab.errors.append(f"rep {rep + 1}, {t.label} ({t.scenario}) at {rate}/s: {exc}")
                    r = slot[rate]
                    log(
                        f"rep {rep + 1} rate {rate} {t.key}: p50 {r.get('p50_ms', math.nan):.2f} ms, "
                        f"p99 {r.get('p99_ms', math.nan):.2f} ms, bad {r.get('bad', '-')}, late {r.get('late', '-')}"
                        + (f" ERROR {r['error'][:300]}" if "error" in r else "")
                    )
            res.rate.append(rates)
        for t in res.targets:
            if t.barbican:
                t.layers["audit"] = audit_size(t)
        log("timing done; stopping targets")
        procs.stop_all()
        log("memory")
        res.memory = measure_memory(lab, settings)
    finally:
        procs.stop_all()
    digest_at_end = source_digest()
    if digest_at_end != digest_at_start:
        warning = (
            f"mcp-barbican's source changed during the run ({digest_at_start} -> {digest_at_end}): "
            "processes started before and after the change ran different code"
        )
        res.env["mcp-barbican source digest"] += f" **changed during the run to {digest_at_end}**"
        lab.errors.append(warning)
        log(warning)
    text = report(res) + errors_section(lab.errors)
    print(text)
    (settings.out / "latest.md").write_text(text)
    (work / "summary.md").write_text(text)
    raw = {
        "settings": {k: str(v) for k, v in vars(settings).items()},
        "env": res.env,
        "targets": [
            {"key": t.key, "label": t.label, "url": t.url, "failed": t.failed, "layers": t.layers} for t in res.targets
        ],
        "saturation": res.sat,
        "rate": [{k: {str(r): v for r, v in d.items()} for k, d in rep.items()} for rep in res.rate],
        "memory": res.memory,
        "errors": lab.errors,
    }
    (work / "results.json").write_text(json.dumps(raw, indent=2))
    log(f"wrote {settings.out / 'latest.md'} and {work}/")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="mcp-barbican vs mcp-proxy, supergateway and direct, in one run.")
    parser.add_argument("--quick", action="store_true", help="smoke test: 3 s runs, 1 repetition, 10 sessions")
    parser.add_argument("--out", type=Path, default=BENCH / "results", help="output directory (default bench/results)")
    args = parser.parse_args(argv)
    if args.quick:
        settings = Settings(True, args.out.resolve(), 3, 1, 1, (200, 500), 3, 10, quiet_timeout=10, retries=1)
    else:
        settings = Settings(False, args.out.resolve(), 10, 2, 3, (200, 500), 10, 100, quiet_timeout=30, retries=2)
    return run(settings)


if __name__ == "__main__":
    raise SystemExit(main())
