"""One worker of `serve --workers N`: a forked process serving the supervisor's listening sockets.

A worker builds its own app (its own upstreams, stdio children, storage clients: nothing with a
thread or a connection crosses the fork) and runs uvicorn on the inherited sockets; the kernel
spreads the connections. It tells the supervisor it accepts connections by writing one byte on
its pipe, and it never outlives the supervisor: PR_SET_PDEATHSIG (Linux) sends it SIGTERM when
the supervisor dies, and a once-a-second look at its parent id covers the rest (a supervisor
that died before the prctl, another platform). SIGTERM drains it as it drains one process.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import functools
import logging
import os
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Final, NoReturn

import uvicorn

from mcp_barbican.exceptions import ConfigError, StorageError
from mcp_barbican.logs import WORKER_ENV, log_unexpected
from mcp_barbican.server.access import flush_writer
from mcp_barbican.server.protocol import BarbicanHttpProtocol
from mcp_barbican.server.reload import Stamp, file_stamp
from mcp_barbican.server.runner import bind_listeners, uvicorn_config
from mcp_barbican.server.supervisor import Supervisor, fork_worker, new_session_key
from mcp_barbican.server.tls import server_ssl_context

if TYPE_CHECKING:
    from mcp_barbican.config import ProxyConfig

__all__ = ["SESSION_KEY_ENV", "WORKER_ENV", "WorkerPlan", "serve_workers", "worker_main"]

logger = logging.getLogger(__name__)

#: The key every worker shares for sealing session ids when `server.session_keys` is not set.
SESSION_KEY_ENV: Final = "MCP_BARBICAN_SESSION_KEY_AUTO"
_PR_SET_PDEATHSIG: Final = 1
#: How often a worker checks that its supervisor is still its parent.
PARENT_CHECK_SECONDS: Final = 1.0
#: The supervisor's own signals: a worker that gets one (a signal to the whole group) ignores it.
#: A handler rather than SIG_IGN, so that the stdio children a worker starts get the default again.
_SUPERVISOR_ONLY: Final = (signal.SIGHUP, signal.SIGUSR2)


def serve_workers(
    config: ProxyConfig,
    count: int,
    *,
    reload: tuple[Path, Callable[[], ProxyConfig]] | None,
    on_worker: Callable[[int], None],
) -> int:
    """Bind the listeners once, run `count` workers on them until stopped; the supervisor's exit status."""
    tls = config.server.tls
    enabled = tls is not None and tls.enabled
    if tls is not None and enabled:
        server_ssl_context(tls)  # certificate mistakes stop start-up here, once, not in each worker
    loaded = file_stamp(reload[0]) if reload is not None else None
    sockets = bind_listeners(config, tls=enabled)
    try:
        plan = WorkerPlan(config, sockets, reload, new_session_key(), on_worker)
        plan.loaded = loaded
        return Supervisor(count, fork_worker(functools.partial(worker_main, plan))).run()
    finally:
        for sock in sockets:
            sock.close()


class WorkerPlan:
    """What every worker serves, fixed by the supervisor before the first fork."""

    def __init__(
        self,
        config: ProxyConfig,
        sockets: list[socket.socket],
        reload: tuple[Path, Callable[[], ProxyConfig]] | None,
        session_key: str,
        on_start: Callable[[int], None],
    ) -> None:
        self.config = config
        self.sockets = sockets
        self.reload = reload
        self.session_key = session_key
        #: Run first in each worker with its number (the command line sets its log format there).
        self.on_start = on_start
        #: The config file's stamp when the supervisor started: a worker forked after a change reloads it.
        self.loaded: Stamp | None = None


def worker_main(plan: WorkerPlan, number: int, parent: int, ready: int) -> NoReturn:
    """Run worker `number` in a freshly forked process until it is stopped; never returns."""
    code = 1
    try:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        for sig in _SUPERVISOR_ONLY:
            signal.signal(sig, _ignore)
        _die_with(parent)
        os.environ[WORKER_ENV] = str(number)
        os.environ[SESSION_KEY_ENV] = plan.session_key
        plan.on_start(number)
        code = _serve(plan, parent, ready)
    except SystemExit as exc:  # uvicorn ends a failed start-up this way
        code = exc.code if isinstance(exc.code, int) else 1
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        log_unexpected(logger, "worker %d failed", number)
    finally:
        with contextlib.suppress(Exception):
            flush_writer()
            for handler in logging.getLogger().handlers:
                handler.flush()
        os._exit(code)


def _ignore(_signum: int, _frame: object) -> None:
    return None


def _die_with(parent: int) -> None:
    """Ask the kernel for SIGTERM when the supervisor dies; leave at once if it already has."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, ctypes.c_ulong(signal.SIGTERM), 0, 0, 0)
    if os.getppid() != parent:
        os._exit(0)


def _current_config(plan: WorkerPlan) -> tuple[ProxyConfig, Stamp | None]:
    """The config to start with: the supervisor's, or the file again if it changed since (a restart after a reload)."""
    if plan.reload is None:
        return plan.config, None
    path, load = plan.reload
    stamp = file_stamp(path)
    if stamp == plan.loaded:
        return plan.config, stamp
    try:
        config = load()
    except ConfigError as exc:
        error = "; ".join(exc.lines())
        logger.error("%s changed but does not load, starting with the config the supervisor read: %s", path, error)
        return plan.config, stamp
    logger.info("%s changed since the supervisor read it: starting with the file as it is now", path)
    return config, stamp


def _serve(plan: WorkerPlan, parent: int, ready: int) -> int:
    try:
        config, loaded = _current_config(plan)
        server_config, core = uvicorn_config(config, reload=plan.reload, loaded=loaded)
    except (ConfigError, StorageError) as exc:
        for line in str(exc).splitlines():
            logger.error("start-up failed: %s", line)
        return 1
    core.background.append(functools.partial(watch_parent, parent))
    # Another worker takes the listener's new connections meanwhile: draining answers what reached this one.
    BarbicanHttpProtocol.drain_requests = True
    _Server(server_config, ready).run(sockets=plan.sockets)
    return 0


async def watch_parent(parent: int, interval: float = PARENT_CHECK_SECONDS) -> None:
    """Stop this worker (as SIGTERM does) once the supervisor is no longer its parent."""
    while os.getppid() == parent:  # noqa: ASYNC110 - nothing signals a parent's death to a process but a poll
        await asyncio.sleep(interval)
    logger.warning("the supervisor (pid %d) is gone: stopping", parent)
    os.kill(os.getpid(), signal.SIGTERM)


class _Server(uvicorn.Server):
    """uvicorn, telling the supervisor once it accepts connections on the shared sockets."""

    def __init__(self, config: uvicorn.Config, ready: int) -> None:
        super().__init__(config)
        self._ready: int | None = ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self._ready is not None:
            with contextlib.suppress(OSError):
                os.write(self._ready, b"r")
            os.close(self._ready)
            self._ready = None
