"""A graceful stop with streams open that have no end of their own (a session's GET stream, a legacy
SSE connection): each response ends cleanly at once, rather than holding the stop until uvicorn's
timeout cancels it and logs a traceback (which `run_proxy` would find)."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx2
import pytest

from tests.proxy import AUTH_HEADER, demo_mcp, run_proxy
from tests.server.test_endpoint import initialize

pytestmark = pytest.mark.e2e

#: Well under uvicorn's 5 s graceful-stop timeout, which is what a held stream would take.
STOP_WITHIN = 4.0


class Reader(threading.Thread):
    """Follows one stream until it ends; records whether it ended cleanly."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.url, self.headers = url, headers
        self.got = b""
        self.ended: str | None = None

    def run(self) -> None:
        try:
            with httpx2.stream("GET", self.url, headers=self.headers, timeout=30) as response:
                assert response.status_code == 200, response.status_code
                for chunk in response.iter_bytes():
                    self.got += chunk
            self.ended = "complete"
        except httpx2.HTTPError as exc:
            self.ended = f"broken: {exc!r}"

    def wait_for(self, text: bytes) -> None:
        deadline = time.monotonic() + 15
        while text not in self.got:
            assert time.monotonic() < deadline, f"{self.url}: never sent {text!r}, got {self.got!r}"
            time.sleep(0.05)


def test_open_streams_end_cleanly_and_at_once_when_the_proxy_stops(tmp_path: Path) -> None:
    with run_proxy(tmp_path, [demo_mcp("demo")]) as running:
        session = initialize(running)
        stream_headers = {**AUTH_HEADER, "Accept": "text/event-stream", "Mcp-Session-Id": session}
        get_stream = Reader(running.url("demo"), {**stream_headers, "MCP-Protocol-Version": "2025-11-25"})
        legacy = Reader(f"{running.url('demo')}/sse", {**AUTH_HEADER, "Accept": "text/event-stream"})
        for reader in (get_stream, legacy):
            reader.start()
        get_stream.wait_for(b"id:")  # the priming event
        legacy.wait_for(b"event: endpoint")
        started = time.monotonic()
        running.process.send_signal(signal.SIGTERM)
        running.process.wait(30)
        took = time.monotonic() - started
        for reader in (get_stream, legacy):
            reader.join(10)
        assert took < STOP_WITHIN, f"the stop took {took:.1f} s"
        assert (get_stream.ended, legacy.ended) == ("complete", "complete")
