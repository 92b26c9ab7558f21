"""The storage interface, its records, and the factory that picks an implementation from the config.

Memory keeps everything in the process (tests, throwaway runs); SQLite (the default) keeps it
in one file so registrations, tokens, rules and bans survive a restart; Redis, for replicas,
implements the same interface in the scale-out issue. Every write is atomic on its own:
`create_mcp` either inserts or reports that the id exists, so two concurrent creates of one
id cannot both win.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from mcp_barbican.config import StorageConfig
    from mcp_barbican.security.iprules import IpRuleStore

__all__ = ["McpRecord", "Storage", "TokenRecord", "open_storage"]


@dataclass(frozen=True, slots=True)
class McpRecord:
    """An MCP registered through the admin API: its definition as submitted (validated), and when."""

    id: str
    definition: dict[str, Any]
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """An issued client token, by its SHA-256 only; `mcps` None reaches every token-auth MCP."""

    id: str
    sha256: str
    roles: tuple[str, ...] = ()
    mcps: tuple[str, ...] | None = None
    expires_at: float | None = None
    created_at: float = 0.0
    revoked_at: float | None = None
    description: str = ""

    def active(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


class Storage(Protocol):
    """State shared by the data plane and the admin API.

    `ip_rules` holds dynamic allow/deny rules and bans. MCP and token methods are
    coroutines because networked stores need them to be; the in-process ones answer at once.
    """

    @property
    def ip_rules(self) -> IpRuleStore: ...

    async def aclose(self) -> None: ...

    async def mcps(self) -> builtins.list[McpRecord]: ...

    async def create_mcp(self, record: McpRecord) -> bool:
        """Insert `record`; False (and nothing written) if its id exists."""
        ...

    async def replace_mcp(self, record: McpRecord) -> bool:
        """Replace the record of `record.id`; False (and nothing written) if there is none."""
        ...

    async def delete_mcp(self, mcp_id: str) -> bool: ...

    async def tokens(self) -> builtins.list[TokenRecord]: ...

    async def put_token(self, record: TokenRecord) -> None:
        """Insert or replace the token with `record.id`."""
        ...


def open_storage(config: StorageConfig) -> Storage:
    """The configured store, opened (a relative `path` is relative to the working directory)."""
    from mcp_barbican.storage.memory import MemoryStorage
    from mcp_barbican.storage.sqlite import SqliteStorage

    if config.type == "memory":
        return MemoryStorage()
    if config.type == "sqlite":
        return SqliteStorage(Path(config.path))
    from mcp_barbican.config import REDIS_UNAVAILABLE
    from mcp_barbican.exceptions import ConfigError

    raise ConfigError(REDIS_UNAVAILABLE, path="server.storage.type")
