"""Where state lives: registered MCPs, issued tokens, dynamic IP rules and bans, rate-limit buckets.

`base.py` is the interface; `memory.py`, `sqlite.py` and `redis.py` implement it; `open_storage` picks one.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from mcp_barbican.storage.base import Storage, Table
from mcp_barbican.storage.memory import MemoryStorage
from mcp_barbican.storage.records import Change, IpRule, McpRecord, PinRecord, RuleTableFull, TokenRecord
from mcp_barbican.storage.sqlite import SqliteStorage

if TYPE_CHECKING:
    from mcp_barbican.config import StorageConfig

__all__ = [
    "Change",
    "IpRule",
    "McpRecord",
    "PinRecord",
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
    from mcp_barbican.storage.redis import RedisStorage  # redis-py is loaded only by those who use it

    assert config.url is not None  # the config requires it with type redis
    return RedisStorage(
        config.url.get_secret_value(),
        key_prefix=config.key_prefix,
        rate_limit_fail_open=config.fail_mode.rate_limit == "open",
    )
