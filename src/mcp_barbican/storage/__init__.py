"""Where state lives: registered MCPs, issued tokens, dynamic IP rules and bans, rate-limit buckets.

`base.py` is the interface; `memory.py` and `sqlite.py` implement it; `open_storage` picks one.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from mcp_barbican.config import REDIS_UNAVAILABLE
from mcp_barbican.exceptions import ConfigError
from mcp_barbican.storage.base import Storage, Table
from mcp_barbican.storage.memory import MemoryStorage
from mcp_barbican.storage.records import Change, IpRule, McpRecord, RuleTableFull, TokenRecord
from mcp_barbican.storage.sqlite import SqliteStorage

if TYPE_CHECKING:
    from mcp_barbican.config import StorageConfig

__all__ = [
    "Change",
    "IpRule",
    "McpRecord",
    "RuleTableFull",
    "Storage",
    "Table",
    "TokenRecord",
    "open_storage",
]


def open_storage(config: StorageConfig) -> Storage:
    """The configured store, opened (a relative `path` is relative to the working directory)."""
    if config.type == "memory":
        return MemoryStorage()
    if config.type == "sqlite":
        return SqliteStorage(Path(config.path))
    raise ConfigError(REDIS_UNAVAILABLE, path="server.storage.type")
