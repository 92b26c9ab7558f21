"""What a first-time user hit, end to end: Compozy's MCP fields at run time, a missing file at `serve`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.proxy import mcp_client, run_proxy, write_config

pytestmark = [pytest.mark.e2e, pytest.mark.anyio]

# A stdio MCP server that writes the protocolVersion of each initialize it gets to argv[1].
RECORDER = """
import json, sys
for line in sys.stdin:
    msg = json.loads(line)
    if msg.get("method") == "initialize":
        with open(sys.argv[1], "a") as out:
            out.write(msg["params"]["protocolVersion"] + "\\n")
        result = {"protocolVersion": msg["params"]["protocolVersion"], "capabilities": {},
                  "serverInfo": {"name": "recorder", "version": "1"}}
        print(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": result}), flush=True)
    elif "id" in msg and "method" in msg:
        print(json.dumps({"jsonrpc": "2.0", "id": msg["id"], "result": {}}), flush=True)
"""


def test_proto_is_the_version_the_proxy_offers_upstream(tmp_path: Path) -> None:
    script, seen = tmp_path / "recorder.py", tmp_path / "seen.txt"
    script.write_text(RECORDER)
    mcp = {"id": "rec", "command": sys.executable, "args": [str(script), str(seen)], "proto": "2025-03-26"}
    with run_proxy(tmp_path, [mcp]):
        pass
    assert seen.read_text().splitlines()[0] == "2025-03-26"


async def test_a_one_string_command_runs(tmp_path: Path) -> None:
    mcp = {"id": "demo", "command": f"{sys.executable} -m mcp_barbican.demo", "max_sessions": 0}
    with run_proxy(tmp_path, [mcp]) as proxy:
        async with mcp_client(proxy.url("demo")) as client:
            assert "echo" in [tool.name for tool in (await client.list_tools()).tools]
        assert 'max_sessions: 0 (Compozy\'s "unlimited") is taken as the default cap of 100' in proxy.log_text()


def test_serve_stops_on_a_missing_ca_file_before_listening(tmp_path: Path) -> None:
    remote = {"id": "remote", "url": "https://mcp.example.com/mcp", "tls": {"ca_file": "ca.pem"}}
    path = write_config(tmp_path, {"server": {"auth": {"type": "token", "token": "t" * 20}}, "mcps": [remote]})
    result = subprocess.run(
        [sys.executable, "-m", "mcp_barbican", "serve", "-c", str(path), "--port", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=dict(os.environ),
        check=False,
    )
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1] == "error: mcps[0].tls.ca_file: cannot read ca.pem: No such file or directory"
    assert "listening" not in result.stderr and "Traceback" not in result.stderr
