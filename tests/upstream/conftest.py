"""Fixtures for the upstream channel tests: loopback MCP servers and an HTTP session."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from mcp_barbican.upstream.http import make_http_session
from tests.upstream.upstream_support import (
    everything_argv,
    find_everything,
    find_node,
    leftover_tasks,
    python_server_argv,
    running,
)


def _need_everything() -> None:
    if find_node() is None or find_everything() is None:
        pytest.fail("needs Node and @modelcontextprotocol/server-everything in tests/node: run scripts/node-deps")


@pytest.fixture(scope="session")
def everything_streamable() -> Iterator[str]:
    """server-everything in streamableHttp mode: http://127.0.0.1:PORT/mcp"""
    _need_everything()
    with running(everything_argv("streamableHttp"), "http://127.0.0.1:{port}/mcp", {"PORT": "0"}) as url:
        yield url


@pytest.fixture(scope="session")
def everything_sse() -> Iterator[str]:
    """server-everything in legacy SSE mode: http://127.0.0.1:PORT/sse"""
    _need_everything()
    with running(everything_argv("sse"), "http://127.0.0.1:{port}/sse", {"PORT": "0"}) as url:
        yield url


@pytest.fixture(scope="session")
def py_streamable() -> Iterator[str]:
    """The SDK test server, Streamable HTTP with an event store and retry 50 ms."""
    with running(python_server_argv("streamable-http", "--retry-ms", "50"), "http://127.0.0.1:{port}/mcp") as url:
        yield url


@pytest.fixture(scope="session")
def py_streamable_json() -> Iterator[str]:
    """The SDK test server, Streamable HTTP answering with JSON bodies."""
    with running(python_server_argv("streamable-http", "--json-response"), "http://127.0.0.1:{port}/mcp") as url:
        yield url


@pytest.fixture(scope="session")
def py_sse() -> Iterator[str]:
    """The SDK test server, legacy SSE."""
    with running(python_server_argv("sse"), "http://127.0.0.1:{port}/sse") as url:
        yield url


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """One upstream's HTTP session; the test fails if a channel task outlives it."""
    session = make_http_session(None, connect_timeout=5.0)
    try:
        yield session
    finally:
        await session.close()
    assert leftover_tasks() == [], "channel tasks still pending after the test"
