"""Run the proxy: uvicorn with uvloop and httptools, no access log, our own Host and client checks."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import uvicorn

from mcp_barbican.server.app import BarbicanApp, build_app
from mcp_barbican.server.protocol import BarbicanHttpProtocol
from mcp_barbican.server.reload import Reloader
from mcp_barbican.server.tls import CertReloader, configure_uvicorn_tls, server_ssl_context

if TYPE_CHECKING:
    from mcp_barbican.config import ProxyConfig

__all__ = ["run", "uvicorn_config"]

logger = logging.getLogger(__name__)


def uvicorn_config(
    config: ProxyConfig, *, reload: tuple[Path, Callable[[], ProxyConfig]] | None = None
) -> tuple[uvicorn.Config, BarbicanApp]:
    """The uvicorn settings for a proxy config, and the app core (tests run it in-process).

    `reload` is the config file and its loader: the app then re-reads it on SIGHUP and on change.
    """
    app, core = build_app(config)
    if reload is not None:
        core.background.append(Reloader(core, *reload).run)
    server_config = uvicorn.Config(
        app,
        host=config.server.host,
        port=config.server.port,
        loop="uvloop",
        http=BarbicanHttpProtocol,
        lifespan="on",
        # Client addresses come from the socket; forwarded headers only via trusted_proxies.
        proxy_headers=False,
        server_header=False,
        date_header=False,
        access_log=False,
        log_config=None,
        timeout_keep_alive=30,
        timeout_graceful_shutdown=5,
    )
    tls = config.server.tls
    if tls is not None and tls.enabled:
        context = server_ssl_context(tls)
        configure_uvicorn_tls(server_config, context)
        core.background.append(CertReloader(context, tls).run)
    return server_config, core


def listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family, backlog=2048)


def run(config: ProxyConfig, *, reload: tuple[Path, Callable[[], ProxyConfig]] | None = None) -> None:
    """Serve until interrupted (the admin API on its own listener when server.admin.port is set)."""
    server_config, _core = uvicorn_config(config, reload=reload)
    scheme = "https" if server_config.is_ssl else "http"
    host, port, admin_port = config.server.host, config.server.port, config.server.admin.port
    logger.info("mcp-barbican listening on %s://%s:%s", scheme, host, port)
    if admin_port is None:
        uvicorn.Server(server_config).run()
        return
    logger.info("admin API listening on %s://%s:%s", scheme, host, admin_port)
    sockets = [listen(host, port), listen(host, admin_port)]
    try:
        uvicorn.Server(server_config).run(sockets=sockets)
    finally:
        for sock in sockets:
            sock.close()
