"""What the egress tests share: a stub resolver and a recorder of every connection aiohttp attempts."""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

import aiohappyeyeballs
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult

METADATA = "169.254.169.254"


class StubResolver(AbstractResolver):
    """Names to addresses from a table; records every name asked."""

    def __init__(self, table: dict[str, list[str]]) -> None:
        self.table = table
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        host = host.removesuffix(".")  # a fully qualified name, as a resolver reads it
        if host not in self.table:
            raise OSError(socket.EAI_NONAME, "Name or service not known")
        return [
            {"hostname": host, "host": address, "port": port, "proto": 0, "flags": socket.AI_NUMERICHOST,
             "family": socket.AF_INET6 if ":" in address else socket.AF_INET}
            for address in self.table[host]
        ]  # fmt: skip

    async def close(self) -> None:
        return None


STUB = {
    "metadata.test": [METADATA],
    "linklocal.test": ["fe80::1"],
    "split.test": ["127.0.0.1", METADATA],
    "loopback.test": ["127.0.0.1"],
}


def record_connections(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every address aiohttp tries to connect to; anything but loopback fails without a packet sent."""
    tried: list[str] = []
    original = aiohappyeyeballs.start_connection

    async def recording(addr_infos: Any, **kwargs: Any) -> socket.socket:
        addresses = [str(info[4][0]) for info in addr_infos]
        tried.extend(addresses)
        if any(not ipaddress.ip_address(address).is_loopback for address in addresses):
            raise OSError(f"the test sends nothing off the machine (asked for {addresses})")
        return await original(addr_infos, **kwargs)

    monkeypatch.setattr(aiohappyeyeballs, "start_connection", recording)
    return tried
