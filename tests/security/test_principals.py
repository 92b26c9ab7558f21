"""Principal ids are unique per credential (DESIGN section 2): what each kind of token stands for."""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

import pytest

from mcp_barbican.config import ProxyConfig, validate_model
from mcp_barbican.exceptions import ConfigError
from mcp_barbican.security.admin import admin_tokens
from mcp_barbican.security.principal import Principal
from mcp_barbican.security.tokens import IssuedTokens, check_listed_ids
from mcp_barbican.server.shields import Shields
from mcp_barbican.storage import TokenRecord
from mcp_barbican.storage.memory import MemoryStorage
from mcp_barbican.storage.sqlite import SqliteStorage

# Before the fix every single `token` was `token:token`, and a token listed or issued as `token` was too.
CONFIG: dict[str, Any] = {
    "server": {
        "storage": {"type": "memory"},
        "auth": {"type": "token", "token": "server-token", "tokens": [{"id": "token", "token": "listed-token"}]},
        "admin": {"token": "admin-token", "tokens": ["admin-token-2"]},
    },
    "mcps": [
        {"id": "a", "command": "x", "auth": {"type": "token", "token": "a-token"}},
        {
            "id": "b",
            "command": "x",
            "auth": {"type": "token", "token": "b-token", "tokens": [{"id": "ci", "token": "ci"}]},
        },
        {"id": "c", "command": "x"},
    ],
}


def issued(token_id: str, token: str) -> TokenRecord:
    return TokenRecord(token_id, hashlib.sha256(token.encode()).hexdigest())


@pytest.fixture
def shields() -> Shields:
    shields = Shields(validate_model(ProxyConfig, CONFIG))
    shields.issued.put(issued("issued", "issued-token"))
    return shields


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("mcp", "credential", "principal"),
    [
        ("a", "a-token", "token:mcp:a"),
        ("b", "b-token", "token:mcp:b"),
        ("b", "ci", "token:ci"),
        ("c", "server-token", "token:server"),
        ("c", "listed-token", "token:token"),
        ("a", "issued-token", "token:issued"),
        ("c", "issued-token", "token:issued"),
    ],
)
async def test_each_credential_has_its_own_principal(
    shields: Shields, mcp: str, credential: str, principal: str
) -> None:
    config = shields.config
    found = config.mcp(mcp)
    assert found is not None
    verdict = await shields.authenticator(config.effective_auth(found), found).authenticate(credential)
    assert isinstance(verdict, Principal)
    assert verdict.id == principal


@pytest.mark.anyio
async def test_admin_tokens_are_admin_principals() -> None:
    tokens = admin_tokens(validate_model(ProxyConfig, CONFIG).server.admin)
    first, second = [await tokens.authenticate(t) for t in ("admin-token", "admin-token-2")]
    assert isinstance(first, Principal) and isinstance(second, Principal)
    assert (first.id, second.id) == ("admin:0", "admin:1"), "never a client's token:{id}"


def test_a_listed_id_that_an_issued_token_has_is_refused_with_its_key_path() -> None:
    config = validate_model(ProxyConfig, CONFIG)
    book = IssuedTokens()
    book.put(issued("other", "x"))
    check_listed_ids(config, book)
    book.put(issued("ci", "y"))
    with pytest.raises(ConfigError) as caught:
        check_listed_ids(config, book)
    assert caught.value.path == "mcps[1].auth.tokens[0].id"
    assert "issued through the admin API" in str(caught.value)


@pytest.mark.anyio
@pytest.mark.parametrize("backend", ["memory", "sqlite"])
async def test_tokens_written_to_the_store_reach_every_follower_at_once(backend: str, tmp_path: Path) -> None:
    """The admin API writes a token only to the store; each Shields' book follows the store's notices."""
    store = MemoryStorage() if backend == "memory" else SqliteStorage(tmp_path / "state.db")
    config = validate_model(ProxyConfig, CONFIG)
    replicas = [Shields(config, store=store), Shields(config, store=store)]
    for replica in replicas:
        await replica.start()
    mcp = config.mcp("a")
    assert mcp is not None
    authenticators = [replica.authenticator(config.effective_auth(mcp), mcp) for replica in replicas]
    record = issued("issued", "issued-token")
    try:
        await store.tokens.put(record)
        for authenticator in authenticators:
            verdict = await authenticator.authenticate("issued-token")
            assert isinstance(verdict, Principal) and verdict.id == "token:issued"
        await store.tokens.put(dataclasses.replace(record, revoked_at=1.0))
        for authenticator in authenticators:
            refused = await authenticator.authenticate("issued-token")
            assert not isinstance(refused, Principal) and refused is not None and refused.reason == "token revoked"
    finally:
        for replica in replicas:
            await replica.stop()
        await store.aclose()
