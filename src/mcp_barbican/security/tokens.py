"""Client tokens issued through the admin API: the request path's index of them.

Each token is kept only as its SHA-256 digest. A presented credential is hashed and looked up
by digest: an attacker controls the credential, not its digest, so the lookup's timing says
nothing about any stored token (the same reason password stores may index by hash). The
book follows the store's `tokens` table: loaded at start, then changed by each notice of the
table (the admin API writes only to the store), so a revocation counts from the next request.

While the store is unreachable the book may have missed a revocation: `fail_mode.auth` decides
whether the issued tokens it holds are refused (`closed`, 503) or accepted as last known
(`open`); see `outage_decision`.
"""

from __future__ import annotations

import hashlib
import math
import secrets
from collections.abc import Iterable
from typing import TYPE_CHECKING, Final

from mcp_barbican.config import format_path
from mcp_barbican.exceptions import ConfigError
from mcp_barbican.security.principal import Principal
from mcp_barbican.storage.base import Table
from mcp_barbican.storage.health import Decision, StoreHealth
from mcp_barbican.storage.notices import Unsubscribe, follow
from mcp_barbican.storage.records import Change, TokenRecord

if TYPE_CHECKING:
    from mcp_barbican.config import ProxyConfig

__all__ = ["STORE_UNAVAILABLE", "TOKEN_BYTES", "IssuedTokens", "check_listed_ids", "new_token", "outage_decision"]

#: 32 random bytes from the OS CSPRNG, URL-safe base64 (the seed's generator).
TOKEN_BYTES: Final = 32
#: The refusal of an issued token while the store is unreachable and `fail_mode.auth` is closed.
STORE_UNAVAILABLE: Final = "storage_unavailable"

Verdict = Principal | str | None


def outage_decision(verdict: Verdict, *, store_up: bool, fail_open: bool) -> tuple[Verdict, Decision | None]:
    """The verdict on an issued token given what the book says (`verdict`) and whether the store answers, and the
    outage decision it took (None: no decision, the book's verdict stands).

    Only an acceptance depends on the store: the book may have missed a revocation. A token it knows
    as revoked or expired, or does not know, is refused whatever the store's state.
    """
    if store_up or not isinstance(verdict, Principal):
        return verdict, None
    if fail_open:
        return verdict, "open"
    return STORE_UNAVAILABLE, "closed"


def new_token() -> tuple[str, str]:
    """A fresh token and its SHA-256 (hex): the plaintext is shown once, the digest kept."""
    token = secrets.token_urlsafe(TOKEN_BYTES)
    return token, hashlib.sha256(token.encode()).hexdigest()


class IssuedTokens:
    """Issued tokens by id and by digest, with the Principal each one stands for."""

    def __init__(self) -> None:
        self._by_id: dict[str, TokenRecord] = {}
        self._by_digest: dict[bytes, tuple[TokenRecord, Principal]] = {}
        #: Bumped by every change, so anything remembering an earlier verdict knows to forget it.
        self.generation = 0
        #: The store's health, once watched, and whether its outages accept the last-known tokens.
        self.health: StoreHealth | None = None
        self.fail_open = False

    def watch(self, health: StoreHealth, *, fail_open: bool) -> None:
        """Decide by `fail_open` while `health` is down; remembered verdicts are forgotten when it changes."""
        self.health, self.fail_open = health, fail_open
        health.on_change.append(self._store_changed)

    def _store_changed(self, up: bool) -> None:
        self.generation += 1

    def __len__(self) -> int:
        return len(self._by_id)

    def put(self, record: TokenRecord) -> None:
        """Add or replace (by id) one token."""
        self.generation += 1
        old = self._by_id.get(record.id)
        if old is not None:
            del self._by_digest[bytes.fromhex(old.sha256)]
        principal = Principal(id=f"token:{record.id}", kind="token", roles=record.roles, mcps=record.mcps)
        self._by_id[record.id] = record
        self._by_digest[bytes.fromhex(record.sha256)] = (record, principal)

    def remove(self, token_id: str) -> None:
        self.generation += 1
        old = self._by_id.pop(token_id, None)
        if old is not None:
            del self._by_digest[bytes.fromhex(old.sha256)]

    def replace(self, records: Iterable[TokenRecord]) -> None:
        """Hold exactly `records`."""
        for token_id in list(self._by_id):
            self.remove(token_id)
        for record in records:
            self.put(record)

    def apply(self, change: Change[TokenRecord]) -> None:
        if change.record is None:
            self.remove(change.id)
        else:
            self.put(change.record)

    async def follow(self, table: Table[TokenRecord]) -> Unsubscribe:
        """Load `table`'s tokens and apply each change it tells from now on; returns the unsubscribe."""
        return await follow(table, self.replace, self.apply)

    def get(self, token_id: str) -> TokenRecord | None:
        return self._by_id.get(token_id)

    def records(self) -> list[TokenRecord]:
        return list(self._by_id.values())

    def lookup(self, presented: bytes, now: float) -> tuple[Verdict, float]:
        """The principal of a presented digest, why it is refused (revoked, expired, STORE_UNAVAILABLE), or None
        if unknown; and until when (epoch seconds) a principal stays valid (0 while the store is down: an
        acceptance then is not remembered, each is decided and counted)."""
        entry = self._by_digest.get(presented)
        if entry is None:
            return None, 0.0
        record, principal = entry
        if record.revoked_at is not None:
            return "token revoked", 0.0
        if record.expires_at is not None and now >= record.expires_at:
            return "token expired", 0.0
        health = self.health
        if health is not None and health.failing:
            verdict, decision = outage_decision(principal, store_up=False, fail_open=self.fail_open)
            if decision is not None:
                health.decided("auth", decision)
            return verdict, 0.0
        return principal, math.inf if record.expires_at is None else record.expires_at


def check_listed_ids(config: ProxyConfig, issued: IssuedTokens) -> None:
    """Refuse a config whose listed token id an issued token already has (both would be `token:{id}`).

    An issued id stays taken once issued, revoked or not: audit events name it.
    """
    for loc, entry in config.listed_tokens():
        if issued.get(entry.id) is not None:
            raise ConfigError(
                f"token id {entry.id!r} is taken by a token issued through the admin API: choose another id",
                path=format_path(loc),
            )
