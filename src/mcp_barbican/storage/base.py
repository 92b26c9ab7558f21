"""The state store's interface, and the factory that picks an implementation from the config.

One store holds every kind of state the proxy keeps, as keyed tables of the same shape:

- `mcps`: MCPs registered through the admin API (`McpRecord`);
- `tokens`: client tokens issued through the admin API (`TokenRecord`; revoking is a put);
- `rules`: dynamic IP rules and automatic bans (`IpRule`); `list` and `get` see only the rules
  not yet expired, and the table is bounded (`RuleTableFull`);
- `pins`: tool pins (`PinRecord`, keyed `{mcp}/{tool}`): what each tool of each MCP was approved as,
  and the change awaiting an admin (`security.pins`; bounded there, per MCP);

and the rate-limit buckets, whose one operation is an all-or-nothing take (`buckets.py`).

Every table tells its changes to its subscribers (`notices.py`), so the in-process tables
that the request path reads (the dynamic rule index, the issued token book) follow it;
a shared store also tells the changes other replicas make. Every write is atomic on its
own: `create` either inserts or reports that the id exists, so two concurrent creates of
one id cannot both win.

Memory keeps everything in the process (tests, throwaway runs); SQLite (the default) keeps
the tables in one file so they survive a restart; Redis (`redis.py`) shares them, and the
rate-limit buckets, between replicas. `tests/storage/test_contract.py` runs the same contract
against each.
"""

from __future__ import annotations

import builtins
from typing import Protocol

from mcp_barbican.storage.buckets import DEFAULT_MAX_KEYS, BucketStore
from mcp_barbican.storage.health import StoreHealth
from mcp_barbican.storage.notices import Listener, Unsubscribe
from mcp_barbican.storage.records import IpRule, McpRecord, PinRecord, R, TokenRecord

__all__ = ["Storage", "Table"]


class Table(Protocol[R]):
    """Records of one kind, by id. Each write tells the table's subscribers of the change it made."""

    async def list(self) -> builtins.list[R]:
        """Every record, oldest first (by `created_at`, then id)."""
        ...

    async def get(self, record_id: str) -> R | None: ...

    async def put(self, record: R) -> None:
        """Insert `record`, or replace the one with its id."""
        ...

    async def create(self, record: R) -> bool:
        """Insert `record`; False (and nothing written, nothing told) if its id exists."""
        ...

    async def replace(self, record: R) -> bool:
        """Replace the record of `record.id`, keeping its stored `created_at`; False (nothing written) if none."""
        ...

    async def delete(self, record_id: str) -> bool:
        """Delete by id; False (nothing told) if there was none."""
        ...

    def subscribe(self, listener: Listener[R]) -> Unsubscribe:
        """Call `listener` with every change from now on (on the event loop; it must not block)."""
        ...


class Storage(Protocol):
    """State shared by the data plane and the admin API (see the module docstring)."""

    @property
    def mcps(self) -> Table[McpRecord]: ...

    @property
    def tokens(self) -> Table[TokenRecord]: ...

    @property
    def rules(self) -> Table[IpRule]: ...

    @property
    def pins(self) -> Table[PinRecord]: ...

    @property
    def health(self) -> StoreHealth:
        """Whether the store answers, and what was decided while it did not (in-process stores: always up)."""
        ...

    def buckets(self, namespace: str, *, max_keys: int = DEFAULT_MAX_KEYS) -> BucketStore:
        """The bucket store of one rate limiter; `namespace` keeps its bucket names apart from other limiters'
        (a shared store builds its keys from it, so it must be the same on every replica)."""
        ...

    async def aclose(self) -> None: ...
