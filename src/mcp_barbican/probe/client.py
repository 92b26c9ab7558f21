"""A small HTTP/1.1 client over asyncio streams with exact control of the request head.

The probe sends heads no polite client library would (non-ASCII credentials, a foreign Host),
so it writes the bytes itself. One request per connection (`Connection: close`); every answer
is read up to a cap and a deadline, and an event stream only up to its first event.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import ssl
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

__all__ = ["MAX_ANSWER_BYTES", "Response", "Target", "TargetError", "Unreachable", "parse_target", "send"]

#: How much of an answer the probe keeps: enough for any JSON-RPC answer it asks for.
MAX_ANSWER_BYTES: Final = 256 * 1024
_MAX_HEAD_BYTES: Final = 64 * 1024
_WRITE_CHUNK: Final = 64 * 1024


class TargetError(ValueError):
    """The URL given is not one the probe can test."""


class Unreachable(OSError):
    """No connection (or no answer) from the target: the reason in one line."""


@dataclass(frozen=True)
class Target:
    url: str
    scheme: str
    host: str
    port: int
    path: str

    @property
    def origin(self) -> str:
        default = 443 if self.scheme == "https" else 80
        return f"{self.scheme}://{self.authority}" if self.port != default else f"{self.scheme}://{self._host_text}"

    @property
    def authority(self) -> str:
        """The Host header value the target expects."""
        return f"{self._host_text}:{self.port}"

    @property
    def _host_text(self) -> str:
        return f"[{self.host}]" if ":" in self.host else self.host

    @property
    def loopback(self) -> bool:
        if self.host == "localhost" or self.host.endswith(".localhost"):
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def parse_target(url: str) -> Target:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise TargetError(f"{url}: only http:// and https:// URLs can be probed")
    if not parts.hostname:
        raise TargetError(f"{url}: no host")
    if parts.username or parts.password:
        raise TargetError(f"{url}: credentials in the URL are not sent; use --token")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise TargetError(f"{url}: bad port") from None
    path = parts.path or "/"
    if parts.query:
        path += f"?{parts.query}"
    return Target(url, parts.scheme, parts.hostname, port, path)


@dataclass
class Response:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    #: The server closed the connection before the whole request was written.
    cut_short: bool = False

    def header(self, name: str) -> str | None:
        lowered = name.lower()
        return next((value for key, value in self.headers if key == lowered), None)

    def header_values(self, name: str) -> list[str]:
        lowered = name.lower()
        return [value for key, value in self.headers if key == lowered]


async def send(
    target: Target,
    method: str,
    headers: list[tuple[str, bytes | str]],
    body: bytes = b"",
    *,
    timeout: float,
    ssl_context: ssl.SSLContext | None = None,
    host: str | None = None,
    path: str | None = None,
) -> Response:
    """One request on its own connection; `host` replaces the Host header (None: the target's own)."""
    try:
        return await asyncio.wait_for(
            _exchange(target, method, headers, body, ssl_context, host, path), timeout=timeout
        )
    except TimeoutError:
        raise Unreachable(f"no answer within {timeout:g}s") from None
    except ssl.SSLError as exc:
        raise Unreachable(f"TLS handshake failed: {exc.reason or exc}") from None
    except (ValueError, asyncio.LimitOverrunError, asyncio.IncompleteReadError) as exc:
        raise Unreachable(f"malformed answer ({type(exc).__name__})") from None
    except OSError as exc:
        if isinstance(exc, Unreachable):
            raise
        raise Unreachable(exc.strerror or str(exc) or type(exc).__name__) from None


async def _exchange(
    target: Target,
    method: str,
    headers: list[tuple[str, bytes | str]],
    body: bytes,
    ssl_context: ssl.SSLContext | None,
    host: str | None,
    path: str | None,
) -> Response:
    context = ssl_context if target.scheme == "https" else None
    if target.scheme == "https" and context is None:
        context = ssl.create_default_context()
    reader, writer = await asyncio.open_connection(
        target.host, target.port, ssl=context, server_hostname=target.host if context else None
    )
    try:
        head = _head(method, path or target.path, host or target.authority, headers, len(body))
        cut_short = await _write(writer, head, body)
        try:
            response = await _read(reader)
        except (OSError, Unreachable):
            if cut_short:  # the server hung up on the request, maybe with an answer the socket then lost
                return Response(0, cut_short=True)
            raise
        response.cut_short = cut_short
        return response
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


def _head(method: str, path: str, host: str, headers: list[tuple[str, bytes | str]], length: int) -> bytes:
    lines = [f"{method} {path} HTTP/1.1".encode(), f"Host: {host}".encode()]
    for name, value in headers:
        lines.append(name.encode() + b": " + (value if isinstance(value, bytes) else value.encode("latin-1")))
    if length or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {length}".encode())
    lines.append(b"Connection: close")
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def _write(writer: asyncio.StreamWriter, head: bytes, body: bytes) -> bool:
    """Write the request; True when the server hung up before taking all of it."""
    try:
        writer.write(head)
        for start in range(0, len(body), _WRITE_CHUNK):
            writer.write(body[start : start + _WRITE_CHUNK])
            await writer.drain()
        await writer.drain()
    except (ConnectionResetError, BrokenPipeError):
        return True
    return False


async def _read(reader: asyncio.StreamReader) -> Response:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError:
        raise Unreachable("answer head too large") from None
    except asyncio.IncompleteReadError as exc:
        if exc.partial:
            raise Unreachable("connection closed inside the answer head") from None
        raise Unreachable("connection closed without an answer") from None
    if len(head) > _MAX_HEAD_BYTES:
        raise Unreachable("answer head too large")
    lines = head.decode("latin-1").split("\r\n")
    status_parts = lines[0].split(" ", 2)
    if len(status_parts) < 2 or not status_parts[0].startswith("HTTP/") or not status_parts[1].isdigit():
        raise Unreachable(f"not an HTTP answer: {lines[0][:80]!r}")
    response = Response(int(status_parts[1]))
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            response.headers.append((name.strip().lower(), value.strip()))
    response.body = await _body(reader, response)
    return response


async def _body(reader: asyncio.StreamReader, response: Response) -> bytes:
    if response.status in (204, 304) or 100 <= response.status < 200:
        return b""
    streaming = "text/event-stream" in (response.header("content-type") or "")
    chunked = "chunked" in (response.header("transfer-encoding") or "").lower()
    length = response.header("content-length")
    with contextlib.suppress(asyncio.IncompleteReadError, ConnectionResetError):
        if chunked:
            return await _chunked(reader, streaming)
        if length is not None and length.isdigit():
            return await reader.readexactly(min(int(length), MAX_ANSWER_BYTES))
        return await _until_event(reader) if streaming else await reader.read(MAX_ANSWER_BYTES)
    return b""


async def _chunked(reader: asyncio.StreamReader, streaming: bool) -> bytes:
    body = bytearray()
    while len(body) < MAX_ANSWER_BYTES:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            break
        body += await reader.readexactly(size)
        await reader.readexactly(2)
        if streaming and _has_event(body):
            break
    return bytes(body)


async def _until_event(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while len(body) < MAX_ANSWER_BYTES and not _has_event(body):
        chunk = await reader.read(4096)
        if not chunk:
            break
        body += chunk
    return bytes(body)


def _has_event(body: bytes | bytearray) -> bool:
    """An event stream holds a complete event with data (a priming event without data does not count)."""
    text = bytes(body).replace(b"\r\n", b"\n")
    return any(
        line.startswith(b"data:") and line[5:].strip()
        for event in text.split(b"\n\n")[:-1]
        for line in event.split(b"\n")
    )
