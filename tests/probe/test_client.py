"""The probe's raw HTTP client and TLS version check against small in-process servers."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import warnings
from collections.abc import Awaitable, Callable

import pytest
import trustme

from mcp_barbican.probe.client import Unreachable, parse_target, send
from mcp_barbican.probe.runner import Options, Report, run
from mcp_barbican.probe.tlsversions import tls_versions

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def serve(handler: Handler, context: ssl.SSLContext | None = None) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=context)
    port: int = server.sockets[0].getsockname()[1]
    return server, port


def test_header_bytes_go_out_exactly_as_given() -> None:
    seen: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 2\r\nX-Thing: a\r\n\r\n{}")
        await writer.drain()
        writer.close()

    async def main() -> None:
        server, port = await serve(handler)
        async with server:
            target = parse_target(f"http://127.0.0.1:{port}/mcp")
            answer = await send(
                target, "POST", [("Authorization", b"Bearer t\xf6k\xe9n")], b"", timeout=5, host="evil.example:1"
            )
        assert (answer.status, answer.body, answer.header("X-THING")) == (401, b"{}", "a")

    asyncio.run(main())
    head = seen[0]
    assert head.startswith(b"POST /mcp HTTP/1.1\r\nHost: evil.example:1\r\n")
    assert b"\r\nAuthorization: Bearer t\xf6k\xe9n\r\n" in head
    assert b"Content-Length: 0\r\n" in head


def test_an_event_stream_is_read_up_to_its_first_message_only() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n")
        writer.write(b'id: 0\ndata:\n\nevent: message\ndata: {"jsonrpc":"2.0","id":1,"result":{}}\n\n')
        await writer.drain()
        try:
            await asyncio.sleep(30)  # a stream that stays open: the client must not wait for its end
        finally:
            writer.close()

    async def main() -> None:
        server, port = await serve(handler)
        async with server:
            answer = await send(parse_target(f"http://127.0.0.1:{port}/"), "POST", [], b"{}", timeout=5)
            assert answer.status == 200 and b'"result"' in answer.body

    asyncio.run(main())


def test_no_answer_in_time_is_unreachable_with_a_reason() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await asyncio.sleep(30)
        finally:
            writer.close()

    async def main() -> None:
        server, port = await serve(handler)
        async with server:
            with pytest.raises(Unreachable, match=r"no answer within 0.3s"):
                await send(parse_target(f"http://127.0.0.1:{port}/"), "GET", [], timeout=0.3)

    asyncio.run(main())


def test_a_server_still_speaking_tls_1_0_and_1_1_is_told_apart() -> None:
    ca = trustme.CA()
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # an old server is what this test needs
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_1

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    async def main() -> dict[str, bool | None]:
        server, port = await serve(handler, context)
        async with server:
            return await tls_versions(parse_target(f"https://127.0.0.1:{port}/mcp"), 5)

    assert asyncio.run(main()) == {"TLS 1.0": True, "TLS 1.1": True, "TLS 1.2": False, "TLS 1.3": False}


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "malformed answer"),
        (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "not an HTTP answer"),
        (b"", "connection closed without an answer"),
    ],
)
def test_a_broken_answer_is_one_reason_not_an_exception(answer: bytes, reason: str) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    async def main() -> None:
        server, port = await serve(handler)
        async with server:
            with pytest.raises(Unreachable, match=reason):
                await send(parse_target(f"http://127.0.0.1:{port}/"), "GET", [], timeout=5)

    asyncio.run(main())


def test_a_redirecting_server_never_gets_the_probe_to_send_the_token_elsewhere() -> None:
    """Every answer is a 307 to another server: the probe follows none, and only the target sees the token."""
    token = "redirect-test-token-0123456789"
    heads: list[bytes] = []
    elsewhere: list[bytes] = []

    async def elsewhere_handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        elsewhere.append(await reader.read(1024))
        writer.close()

    async def main() -> Report:
        other, other_port = await serve(elsewhere_handler)

        async def redirecting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
                heads.append(await reader.readuntil(b"\r\n\r\n"))
                location = f"http://127.0.0.1:{other_port}/steal"
                writer.write(f"HTTP/1.1 307 Temporary Redirect\r\nLocation: {location}\r\n".encode())
                writer.write(b"Content-Length: 0\r\n\r\n")
                await writer.drain()
            writer.close()

        server, port = await serve(redirecting)
        async with server, other:
            options = Options(token=token, second_token=token + "-2", burst=5, body_bytes=4096, timeout=5)
            return await run(parse_target(f"http://127.0.0.1:{port}/mcp"), options)

    report = asyncio.run(main())
    assert elsewhere == []
    assert report.requests == len(heads) > 20
    assert any(token.encode() in head for head in heads)
    assert token not in repr(report)
