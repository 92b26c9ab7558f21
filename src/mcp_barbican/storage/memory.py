"""State in process memory: nothing survives a restart (tests and throwaway runs)."""

from __future__ import annotations

import builtins

from mcp_barbican.security.iprules import MemoryIpRuleStore
from mcp_barbican.storage.base import McpRecord, TokenRecord

__all__ = ["MemoryStorage"]


class MemoryStorage:
    def __init__(self) -> None:
        self._ip_rules = MemoryIpRuleStore()
        self._mcps: dict[str, McpRecord] = {}
        self._tokens: dict[str, TokenRecord] = {}

    @property
    def ip_rules(self) -> MemoryIpRuleStore:
        return self._ip_rules

    async def aclose(self) -> None:
        return None

    async def mcps(self) -> builtins.list[McpRecord]:
        return list(self._mcps.values())

    async def create_mcp(self, record: McpRecord) -> bool:
        if record.id in self._mcps:
            return False
        self._mcps[record.id] = record
        return True

    async def replace_mcp(self, record: McpRecord) -> bool:
        if record.id not in self._mcps:
            return False
        self._mcps[record.id] = record
        return True

    async def delete_mcp(self, mcp_id: str) -> bool:
        return self._mcps.pop(mcp_id, None) is not None

    async def tokens(self) -> builtins.list[TokenRecord]:
        return list(self._tokens.values())

    async def put_token(self, record: TokenRecord) -> None:
        self._tokens[record.id] = record
