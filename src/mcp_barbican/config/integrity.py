"""Tool integrity (`mcps[].integrity`, default `server.integrity`): pins, the definition scanner, argument checks."""

from __future__ import annotations

from typing import Literal

from mcp_barbican.config.fields import Model

__all__ = ["IntegrityConfig", "ScanConfig"]


class ScanConfig(Model):
    """The offline scanner: `definitions` (tools and prompts, when they change) `block` hides a flagged tool until
    an admin approves it, `warn` reports it; `results` scans tool results and reports; `redact_secrets` replaces
    well-known secret shapes in tool results with a marker and audits it."""

    definitions: Literal["block", "warn", "off"] = "warn"
    results: Literal["warn", "off"] = "off"
    redact_secrets: bool = False


class IntegrityConfig(Model):
    """What the proxy holds each tool to.

    `pin`: `tofu` takes the first definitions seen as the baseline, `approve` shows no tool until an admin
    approves it, `off` pins nothing. `on_change`: a changed, new or renamed tool is hidden and its calls refused
    until approved (`block`), or only reported (`warn`). `validate_arguments`: `tools/call` arguments against the
    tool's pinned `inputSchema` (`block` answers -32602 naming the failing path, `warn` forwards and audits).
    """

    pin: Literal["tofu", "approve", "off"] = "tofu"
    on_change: Literal["block", "warn"] = "block"
    scan: ScanConfig = ScanConfig()
    validate_arguments: Literal["block", "warn", "off"] = "off"
