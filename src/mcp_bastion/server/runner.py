"""Run the proxy: uvicorn with uvloop and httptools, no access log, our own Host checks."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

import uvicorn

from mcp_bastion.exceptions import ConfigError
from mcp_bastion.server.app import build_app

if TYPE_CHECKING:
    from mcp_bastion.config import ProxyConfig, SecurityConfig

__all__ = ["refuse_unenforced", "run", "uvicorn_config"]

logger = logging.getLogger(__name__)


def _security_blocks(config: ProxyConfig) -> Iterator[tuple[str, SecurityConfig]]:
    yield "server.security", config.server.security
    for index, mcp in enumerate(config.mcps):
        if mcp.security is not None:
            yield f"mcps[{index}].security", mcp.security


def refuse_unenforced(config: ProxyConfig) -> list[str]:
    """Fail closed on security settings this build cannot enforce yet; warn about the rest.

    A security rule that is configured but not enforced would be worse than an error.
    """
    if config.server.tls is not None and config.server.tls.enabled:
        raise ConfigError("listener TLS is not enforced by this build yet", path="server.tls")
    for path, security in _security_blocks(config):
        for key in ("ip_whitelist", "ip_blacklist", "rate_limit", "cors", "auth_failure_ban"):
            value = getattr(security, key)
            active = value.enabled if key in ("cors", "auth_failure_ban") and value is not None else value
            if key in security.model_fields_set and active:
                raise ConfigError("not enforced by this build yet; remove it or upgrade", path=f"{path}.{key}")
    warnings = []
    if config.server.audit.sinks:
        warnings.append("server.audit: the audit trail is not written by this build yet")
    if config.server.admin.token is not None or config.server.admin.tokens:
        warnings.append("server.admin: the admin API is not served by this build yet")
    return warnings


def uvicorn_config(config: ProxyConfig) -> uvicorn.Config:
    """The uvicorn settings for a proxy config (also used by tests to run it in-process)."""
    for warning in refuse_unenforced(config):
        logger.warning("%s", warning)
    app, _core = build_app(config)
    return uvicorn.Config(
        app,
        host=config.server.host,
        port=config.server.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        # Client addresses come from the socket; forwarded headers are for trusted proxies only.
        proxy_headers=False,
        server_header=False,
        date_header=False,
        access_log=False,
        log_config=None,
        timeout_keep_alive=30,
        timeout_graceful_shutdown=5,
    )


def run(config: ProxyConfig) -> None:
    """Serve until interrupted."""
    server = uvicorn.Server(uvicorn_config(config))
    logger.info("mcp-bastion listening on http://%s:%s", config.server.host, config.server.port)
    server.run()
