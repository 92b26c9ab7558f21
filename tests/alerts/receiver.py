"""A webhook receiver for the alert tests: an aiohttp server on its own thread and loop (a helper, not tests).

Each path answers as told: `ok`, `fail:N` (500 to the first N deliveries, then 200), `fail` (always 500)
or `hang` (never answers in time). Every delivery is kept with the path, its JSON body and when it came.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.proxy import free_port
from tests.threaded_server import serve_in_thread


@dataclass
class Delivery:
    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    at: float = field(default_factory=time.monotonic)


class Receiver:
    def __init__(self, behaviour: dict[str, str]) -> None:
        self.behaviour = behaviour
        self.deliveries: list[Delivery] = []
        self.tries: dict[str, int] = {}
        self.port = free_port()
        self._lock = threading.Lock()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    def got(self, path: str, kind: str | None = None) -> list[Delivery]:
        with self._lock:
            return [d for d in self.deliveries if d.path == path and (kind is None or d.body.get("kind") == kind)]

    def wait_for(self, path: str, count: int, *, kind: str | None = None, timeout: float = 15.0) -> list[Delivery]:
        deadline = time.monotonic() + timeout
        while len(found := self.got(path, kind)) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{path}: {len(found)} deliveries of {kind or 'any kind'}, not {count}")
            time.sleep(0.05)
        return found

    async def _handle(self, request: web.Request) -> web.Response:
        path = request.path.strip("/")
        body = await request.json()
        with self._lock:
            tries = self.tries[path] = self.tries.get(path, 0) + 1
            self.deliveries.append(Delivery(path, body, dict(request.headers)))
        mode = self.behaviour.get(path, "ok")
        if mode == "hang":
            await asyncio.sleep(3600)
        if mode == "fail" or (mode.startswith("fail:") and tries <= int(mode[5:])):
            return web.json_response({"error": "down"}, status=500)
        return web.json_response({"ok": True})

    @contextlib.contextmanager
    def running(self) -> Iterator[Receiver]:
        app = web.Application()
        app.router.add_post("/{path:.*}", self._handle)
        with serve_in_thread(app, self.port):
            yield self
