"""Logging what nobody expected, without a traceback in the log.

A failure is one line naming what and where; the traceback goes to DEBUG, for a developer
who asks for it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Mapping

__all__ = ["WORKER_ENV", "Fields", "json_line", "log_unexpected", "worker_number"]


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


class Fields:
    """A log message with named fields: `message k=v ...` as text, each field a key in `--log-format json`.

    Rendered only when a handler formats the record, so a line nobody emits costs one object.
    Fields that are None are left out.
    """

    __slots__ = ("fields", "message")

    def __init__(self, message: str, fields: Mapping[str, object]) -> None:
        self.message = message
        self.fields = fields

    def present(self) -> dict[str, object]:
        return {key: value for key, value in self.fields.items() if value is not None}

    def __str__(self) -> str:
        parts = [self.message]
        for key, value in self.fields.items():
            if value is not None:
                text = str(value)
                parts.append(f"{key}={text if _BARE.fullmatch(text) else json.dumps(text, ensure_ascii=False)}")
        return " ".join(parts)


def json_line(ts: str, level: str, logger: str, message: str | Fields, worker: int | None) -> dict[str, object]:
    """What one `--log-format json` line holds: ts, level, logger, message, then a `Fields` message's fields
    (never over those keys), then the worker's number under `serve --workers N`."""
    text = message.message if isinstance(message, Fields) else message
    payload: dict[str, object] = {"ts": ts, "level": level, "logger": logger, "message": text}
    if isinstance(message, Fields):
        for key, value in message.present().items():
            payload.setdefault(key, value)
    if worker is not None:
        payload["worker"] = worker
    return payload


#: A value written as it is in a text line; anything else (spaces, quotes, '=', control characters) is quoted.
_BARE = re.compile(r'[^\s"=\\\x00-\x1f\x7f-\x9f\u2028\u2029]+')
