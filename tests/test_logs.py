"""Unexpected failures are logged as one line; the traceback only at DEBUG."""

from __future__ import annotations

import logging

import pytest

from mcp_barbican.logs import log_unexpected


def test_an_unexpected_failure_is_one_error_line_and_a_debug_traceback(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("tests.logs")
    with caplog.at_level(logging.DEBUG, logger="tests.logs"):
        try:
            raise ValueError("bad value")
        except ValueError:
            log_unexpected(logger, "sink %s failed", "file")
    error, debug = caplog.records
    assert (error.levelno, error.getMessage(), error.exc_info) == (
        logging.ERROR,
        "sink file failed: ValueError: bad value",
        None,
    )
    assert debug.levelno == logging.DEBUG and debug.exc_info is not None


def test_at_the_default_level_no_traceback_is_written(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("tests.logs.info")
    with caplog.at_level(logging.INFO, logger="tests.logs.info"):
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log_unexpected(logger, "task failed")
    assert "Traceback" not in caplog.text and "task failed: RuntimeError: boom" in caplog.text
