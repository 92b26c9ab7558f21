"""The request path's RESP client: its parser from a table, then against a real redis-server."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from redis.exceptions import ConnectionError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeout

from mcp_barbican.storage import redis_wire
from mcp_barbican.storage.redis_wire import RespWire, encode, parse
from tests.storage.redis_server import redis_server

INCOMPLETE = redis_wire._INCOMPLETE


@pytest.mark.parametrize(
    ("data", "value", "end"),
    [
        (b"+OK\r\n", b"OK", 5),
        (b":42\r\n", 42, 5),
        (b"$3\r\nabc\r\n", b"abc", 9),
        (b"$-1\r\n", None, 5),
        (b"*2\r\n$1\r\n1\r\n:7\r\n", [b"1", 7], 15),
        (b"*1\r\n*1\r\n$0\r\n\r\n", [[b""]], 14),
        (b"*-1\r\n", None, 5),
        (b"$3\r\nab", INCOMPLETE, 0),
        (b"$3\r\nabc", INCOMPLETE, 0),
        (b"*2\r\n:1\r\n", INCOMPLETE, 0),
        (b"+OK", INCOMPLETE, 0),
        (b"", INCOMPLETE, 0),
    ],
)
def test_parse(data: bytes, value: Any, end: int) -> None:
    assert parse(data) == (value, end)


def test_an_error_reply_is_a_value_for_its_caller_not_raised() -> None:
    error, end = parse(b"-NOSCRIPT No matching script\r\n")
    assert isinstance(error, ResponseError) and str(error).startswith("NOSCRIPT") and end == 30


def test_an_unknown_reply_type_is_refused() -> None:
    with pytest.raises(ConnectionError):
        parse(b"%1\r\n")


def test_encode() -> None:
    assert encode((b"EVALSHA", "ab", "0")) == b"*3\r\n$7\r\nEVALSHA\r\n$2\r\nab\r\n$1\r\n0\r\n"


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with redis_server() as found:
        yield found


@pytest.fixture
async def wire(url: str) -> AsyncIterator[RespWire]:
    client = RespWire(url, timeout=2.0)
    yield client
    await client.aclose()


@pytest.mark.e2e
@pytest.mark.anyio
async def test_concurrent_commands_get_their_own_replies(wire: RespWire) -> None:
    replies = await asyncio.gather(*(wire.call(b"ECHO", str(n)) for n in range(200)))
    assert replies == [str(n).encode() for n in range(200)]


@pytest.mark.e2e
@pytest.mark.anyio
async def test_a_script_redis_forgot_is_loaded_again(wire: RespWire) -> None:
    source = "return {KEYS[1], ARGV[1]}"
    assert await wire.script(source, ["k"], ["v"]) == [b"k", b"v"]
    assert await wire.call(b"SCRIPT", b"FLUSH") == b"OK"
    assert await wire.script(source, ["k2"], ["v2"]) == [b"k2", b"v2"], "NOSCRIPT: sent again with EVAL"
    with pytest.raises(ResponseError):
        await wire.script("return redis.call('NOSUCHCOMMAND')", [], [])
    assert await wire.call(b"PING") == b"PONG", "one refused command fails only its caller"


@pytest.mark.e2e
@pytest.mark.anyio
async def test_a_password_and_a_database_are_used(tmp_path: Any) -> None:
    port = _free_port()
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--requirepass", "s3cret"]
    with _process(args, port):
        wire = RespWire(f"redis://:s3cret@127.0.0.1:{port}/3")
        try:
            assert await wire.call(b"SET", b"where", b"db3") == b"OK"
        finally:
            await wire.aclose()
        wrong = RespWire(f"redis://:wrong@127.0.0.1:{port}/0")
        with pytest.raises(ConnectionError, match="AUTH"):
            await wrong.call(b"PING")
        await wrong.aclose()


@pytest.mark.e2e
@pytest.mark.anyio
async def test_a_server_that_never_answers_times_out_and_the_next_call_reconnects() -> None:
    silent = socket.create_server(("127.0.0.1", 0))
    port = silent.getsockname()[1]
    wire = RespWire(f"redis://127.0.0.1:{port}/0", timeout=0.3)
    try:
        with pytest.raises(RedisTimeout):
            await wire.call(b"PING")
        silent.close()
        with pytest.raises(ConnectionError):
            await wire.call(b"PING")
    finally:
        silent.close()
        await wire.aclose()


@pytest.mark.e2e
@pytest.mark.anyio
async def test_a_server_that_sends_what_nobody_asked_for_is_dropped() -> None:
    async def chatty(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(100)
        writer.write(b"+PONG\r\n+EXTRA\r\n")
        await writer.drain()
        await reader.read()  # until the client hangs up
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(chatty, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    wire = RespWire(f"redis://127.0.0.1:{port}/0", timeout=1.0)
    try:
        assert await wire.call(b"PING") == b"PONG"
        assert wire._conn is not None and wire._conn.closed, "the extra reply closed the connection"
    finally:
        await wire.aclose()
        server.close()
        await server.wait_closed()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextlib.contextmanager
def _process(args: list[str], port: int) -> Iterator[None]:
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            time.sleep(0.05)
        yield
    finally:
        process.terminate()
        process.wait(timeout=5)
