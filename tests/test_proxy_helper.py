"""The safeguard in tests/proxy.py: a Python traceback in a process log fails the test that started it."""

from __future__ import annotations

import os
import sys

import pytest

from .proxy import TRACEBACK, _process, free_port

pytestmark = pytest.mark.e2e

# Listens on the port, writes a traceback to stderr, and waits to be stopped.
SCRIPT = f"""
import socket, sys, time
sock = socket.socket(); sock.bind(("127.0.0.1", int(sys.argv[1]))); sock.listen()
sys.stderr.write("{TRACEBACK}:\\n  File 'x.py', line 1\\nRuntimeError: boom\\n"); sys.stderr.flush()
time.sleep(60)
"""


def test_a_traceback_in_the_log_fails_the_test() -> None:
    port = free_port()
    with pytest.raises(AssertionError, match=r"-\d+\.log holds a traceback") as caught:
        with _process([sys.executable, "-c", SCRIPT, str(port)], dict(os.environ), port, tag="safeguard") as (_, log):
            pass
    assert str(log) in str(caught.value) and "RuntimeError: boom" in str(caught.value)


def test_a_failing_test_gets_the_traceback_as_a_note() -> None:
    port = free_port()
    with pytest.raises(ValueError, match="the test's own failure") as caught:
        with _process([sys.executable, "-c", SCRIPT, str(port)], dict(os.environ), port, tag="safeguard"):
            raise ValueError("the test's own failure")
    assert any("holds a traceback" in note for note in getattr(caught.value, "__notes__", []))
