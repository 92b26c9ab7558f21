"""What the runner says about configured parts this build does not run yet."""

from __future__ import annotations

from mcp_bastion.config import ProxyConfig, validate_model
from mcp_bastion.server.runner import not_yet_active


def config(server: dict[str, object]) -> ProxyConfig:
    mcps = [{"id": "a", "command": "true", "auth": {"type": "none"}}]
    return validate_model(ProxyConfig, {"server": server, "mcps": mcps})


def test_unbuilt_parts_are_named_not_ignored() -> None:
    warnings = not_yet_active(config({"audit": {"sinks": [{"type": "stdout"}]}, "admin": {"token": "t" * 32}}))
    assert any(w.startswith("server.audit:") for w in warnings)
    assert any("/admin/audit" in w for w in warnings)


def test_nothing_to_say_about_a_plain_config() -> None:
    assert not_yet_active(config({})) == []
