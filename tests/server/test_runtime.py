"""McpRuntime set-up: what it reads from disk, it reads before any request."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme

from mcp_barbican.config import ListenerLimits, McpConfig
from mcp_barbican.exceptions import ConfigError
from mcp_barbican.server.quota import SessionQuota
from mcp_barbican.server.runtime import McpRuntime


def test_an_upstream_ca_file_gone_after_load_fails_the_set_up_not_a_request(tmp_path: Path) -> None:
    ca_file = tmp_path / "ca.pem"
    trustme.CA().cert_pem.write_to_path(str(ca_file))
    mcp = McpConfig.model_validate({"id": "remote", "url": "https://127.0.0.1:1/mcp", "tls": {"ca_file": str(ca_file)}})
    McpRuntime(mcp, idle_timeout=60, quota=SessionQuota(ListenerLimits()))  # the file is there: set up succeeds
    ca_file.unlink()
    with pytest.raises(ConfigError, match="ca_file"):
        McpRuntime(mcp, idle_timeout=60, quota=SessionQuota(ListenerLimits()))
