"""Which TLS versions a server accepts: one handshake pinned to each version, nothing sent after it."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import warnings
from typing import Final

from mcp_barbican.probe.client import Target

__all__ = ["VERSIONS", "tls_versions"]

VERSIONS: Final = {
    "TLS 1.0": ssl.TLSVersion.TLSv1,
    "TLS 1.1": ssl.TLSVersion.TLSv1_1,
    "TLS 1.2": ssl.TLSVersion.TLSv1_2,
    "TLS 1.3": ssl.TLSVersion.TLSv1_3,
}


def pinned_context(version: ssl.TLSVersion) -> ssl.SSLContext | None:
    """A client context offering only `version` (certificates not checked: only the handshake counts);
    None when this machine's OpenSSL cannot offer it at all."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    try:
        with warnings.catch_warnings():
            # Offering TLS 1.0/1.1 is deprecated, and is the point: the probe asks whether the server still agrees.
            warnings.simplefilter("ignore", DeprecationWarning)
            if version < ssl.TLSVersion.TLSv1_2:
                context.set_ciphers("DEFAULT:@SECLEVEL=0")
            context.minimum_version = version
            context.maximum_version = version
    except (ValueError, ssl.SSLError):
        return None
    return context


async def _accepts(target: Target, context: ssl.SSLContext, timeout: float) -> bool | None:
    try:
        _reader, writer = await asyncio.wait_for(
            asyncio.open_connection(target.host, target.port, ssl=context, server_hostname=target.host), timeout
        )
    except ssl.SSLError as exc:
        # The local library refusing to speak the version says nothing about the server.
        return None if exc.reason == "NO_PROTOCOLS_AVAILABLE" else False
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError, ssl.SSLError):
        await writer.wait_closed()
    return True


async def tls_versions(target: Target, timeout: float) -> dict[str, bool | None]:
    """Version name -> accepted (True), refused (False), or not testable from here (None)."""
    result: dict[str, bool | None] = {}
    for name, version in VERSIONS.items():
        context = pinned_context(version)
        result[name] = None if context is None else await _accepts(target, context, timeout)
    return result
