"""Logging what nobody expected, without a traceback in the log.

A failure is one line naming what and where; the traceback goes to DEBUG, for a developer
who asks for it.
"""

from __future__ import annotations

import logging
import os
import sys

__all__ = ["WORKER_ENV", "log_unexpected", "worker_number"]


def log_unexpected(logger: logging.Logger, message: str, *args: object) -> None:
    """Call inside `except`: `message` (%-formatted with `args`) and the exception, as one ERROR line."""
    exc = sys.exc_info()[1]
    detail = f"{type(exc).__name__}: {exc}" if exc is not None else "no exception"
    logger.error(f"{message}: %s", *args, detail)
    logger.debug("traceback of the above", exc_info=True)


#: Set by `serve --workers N` in each worker process: its number, 1 to N.
WORKER_ENV = "MCP_BARBICAN_WORKER"


def worker_number() -> int | None:
    """This process's worker number under `serve --workers N`; None when one process serves alone."""
    value = os.environ.get(WORKER_ENV, "")
    return int(value) if value.isdigit() else None
