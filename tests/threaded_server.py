"""An aiohttp server on its own thread and event loop, for tests whose client side is synchronous
(webhook receivers, OTLP collectors, HTTP upstreams). A helper, not tests."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import Iterator

from aiohttp import web


@contextlib.contextmanager
def serve_in_thread(app: web.Application, port: int, *, ssl_context: ssl.SSLContext | None = None) -> Iterator[None]:
    """Serve `app` on 127.0.0.1:`port` for as long as the context lives."""
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, shutdown_timeout=0.5)

    async def start() -> None:
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port, ssl_context=ssl_context).start()

    async def stop() -> None:
        await runner.cleanup()
        # A handler that never answers outlives the runner's shutdown timeout: end it here, not at exit.
        others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(start(), loop).result(10)
    try:
        yield
    finally:
        asyncio.run_coroutine_threadsafe(stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()
