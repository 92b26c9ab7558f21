"""Run the proxy: uvicorn with uvloop and httptools, no access log, our own Host and client checks."""

from __future__ import annotations

import errno
import logging
import socket
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import uvicorn

from mcp_barbican.exceptions import ConfigError
from mcp_barbican.server.app import BarbicanApp, build_app
from mcp_barbican.server.protocol import listener_protocol
from mcp_barbican.server.reload import Reloader, Stamp
from mcp_barbican.server.tls import CertReloader, configure_uvicorn_tls, server_ssl_context

if TYPE_CHECKING:
    from mcp_barbican.config import ProxyConfig

__all__ = ["bind", "bind_listeners", "run", "uvicorn_config"]

logger = logging.getLogger(__name__)


def uvicorn_config(
    config: ProxyConfig,
    *,
    reload: tuple[Path, Callable[[], ProxyConfig]] | None = None,
    loaded: Stamp | None = None,
) -> tuple[uvicorn.Config, BarbicanApp]:
    """The uvicorn settings for a proxy config, and the app core (tests run it in-process).

    `reload` is the config file and its loader: the app then re-reads it on SIGHUP and on change
    (on a change since `loaded`, the file's stamp when `config` was read, if given).
    """
    app, core = build_app(config)
    if reload is not None:
        core.background.append(Reloader(core.registry, core.audit, *reload, seen=loaded).run)
    server_config = uvicorn.Config(
        app,
        host=config.server.host,
        port=config.server.port,
        loop="uvloop",
        # One protocol class: head headers, the TLS extension and server.limits (server/protocol.py).
        http=listener_protocol(config.server.limits, core.counters),
        # No route serves WebSocket; an upgraded connection would leave the listener's limits behind.
        ws="none",
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


def bind(host: str, port: int, key: str) -> list[socket.socket]:
    """Listening sockets on every address `host` names; a ConfigError naming `key` if one cannot be bound.

    Bound before anything says "listening", and handed to uvicorn, so there is no window between
    checking a port and using it.
    """
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot resolve {host!r}: {exc.strerror}", path="server.host") from exc
    sockets: list[socket.socket] = []
    try:
        for family, address in dict.fromkeys((info[0], info[4]) for info in found):
            sockets.append(socket.create_server(address, family=family, backlog=2048))
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise ConfigError(_bind_failure(host, port, key, exc), path=key) from exc
    return sockets


def _bind_failure(host: str, port: int, key: str, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        fix = "pick another with --port" if key == "server.port" else f"pick another {key}"
        return f"port {port} on {host} is already in use; {fix}"
    return f"cannot listen on {host} port {port}: {exc.strerror or exc}"


def run(config: ProxyConfig, *, reload: tuple[Path, Callable[[], ProxyConfig]] | None = None) -> None:
    """Serve until interrupted (the admin API on its own listener when server.admin.port is set)."""
    server_config, _core = uvicorn_config(config, reload=reload)
    sockets = bind_listeners(config, tls=server_config.is_ssl)
    try:
        uvicorn.Server(server_config).run(sockets=sockets)
    finally:
        for sock in sockets:
            sock.close()


def bind_listeners(config: ProxyConfig, *, tls: bool) -> list[socket.socket]:
    """The main listener's sockets, and the admin listener's when it has its own port; logged once bound."""
    scheme = "https" if tls else "http"
    host, port, admin_port = config.server.host, config.server.port, config.server.admin.port
    sockets = bind(host, port, "server.port")
    try:
        if admin_port is not None:
            sockets += bind(host, admin_port, "server.admin.port")
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    logger.info("mcp-barbican listening on %s://%s:%s", scheme, host, port)
    if admin_port is not None:
        logger.info("admin API listening on %s://%s:%s", scheme, host, admin_port)
    return sockets
