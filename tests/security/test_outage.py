"""Issued tokens while the state store is unreachable: the decision table, and the book that applies it."""

from __future__ import annotations

import asyncio
import hashlib
import logging

import pytest

from mcp_barbican.security.auth import StaticTokens
from mcp_barbican.security.principal import Principal
from mcp_barbican.security.tokens import STORE_UNAVAILABLE, IssuedTokens, outage_decision
from mcp_barbican.storage.health import StoreHealth
from mcp_barbican.storage.records import TokenRecord

ALICE = Principal(id="token:alice", kind="token")


@pytest.mark.parametrize(
    ("verdict", "store_up", "fail_open", "expected"),
    [
        (ALICE, True, False, (ALICE, None)),
        (ALICE, True, True, (ALICE, None)),
        (ALICE, False, False, (STORE_UNAVAILABLE, "closed")),
        (ALICE, False, True, (ALICE, "open")),
        ("token revoked", False, True, ("token revoked", None)),
        ("token revoked", False, False, ("token revoked", None)),
        ("token expired", False, True, ("token expired", None)),
        (None, False, True, (None, None)),
        (None, False, False, (None, None)),
    ],
)
def test_outage_decision(verdict: object, store_up: bool, fail_open: bool, expected: tuple[object, object]) -> None:
    assert outage_decision(verdict, store_up=store_up, fail_open=fail_open) == expected  # type: ignore[arg-type]


def _book(fail_open: bool) -> tuple[IssuedTokens, StoreHealth, bytes, bytes]:
    book, health = IssuedTokens(), StoreHealth()
    book.watch(health, fail_open=fail_open)
    book.put(TokenRecord("alice", hashlib.sha256(b"alice-token").hexdigest()))
    book.put(TokenRecord("gone", hashlib.sha256(b"gone-token").hexdigest(), revoked_at=1.0))
    return book, health, hashlib.sha256(b"alice-token").digest(), hashlib.sha256(b"gone-token").digest()


@pytest.mark.parametrize(("fail_open", "decision"), [(False, "closed"), (True, "open")])
def test_the_book_decides_and_counts_while_the_store_is_down(fail_open: bool, decision: str) -> None:
    book, health, alice, gone = _book(fail_open)
    verdict, until = book.lookup(alice, 0.0)
    assert isinstance(verdict, Principal) and until == float("inf")
    generation = book.generation
    health.down("changes", "connection refused")
    assert book.generation > generation, "verdicts remembered before the outage are forgotten"
    verdict, until = book.lookup(alice, 0.0)
    assert (verdict == STORE_UNAVAILABLE) is not fail_open
    assert until == 0.0, "an outage acceptance is not remembered: each one is decided and counted"
    assert book.lookup(gone, 0.0)[0] == "token revoked", "a known revocation holds in either mode"
    assert health.decisions == {("auth", decision): 1}
    health.restored("changes")
    verdict, until = book.lookup(alice, 0.0)
    assert isinstance(verdict, Principal) and until == float("inf"), "back to the usual verdict"
    assert health.decisions == {("auth", decision): 1}, "only outage decisions are counted"


def test_a_closed_outage_refuses_an_issued_token_with_503_and_keeps_configured_ones() -> None:
    book, health, _, _ = _book(False)
    tokens = StaticTokens([], issued=book)
    health.down("commands", "timeout")
    refusal, _ = tokens.verify("alice-token")
    assert (getattr(refusal, "status", None), getattr(refusal, "error", None)) == (503, "storage_unavailable")


def test_one_warning_when_an_outage_starts_one_per_feature_decision_and_one_info_when_it_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    health = StoreHealth()
    told: list[bool] = []
    health.on_change.append(told.append)
    with caplog.at_level(logging.INFO, logger="mcp_barbican.storage.health"):
        health.down("changes", "connection refused")
        health.down("commands", "connection refused")
        for _ in range(5):
            health.decided("auth", "closed")
            health.decided("rate_limit", "open")
        assert not health.up
        health.restored("changes")
        assert not health.up, "up only when every part is"
        health.restored("commands")
    lines = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert [level for level, _ in lines] == ["WARNING", "WARNING", "WARNING", "INFO"], lines
    assert lines[0][1].startswith("state store: Redis unreachable (lost the Redis change channel: connection refused)")
    assert lines[1][1].startswith("issued tokens: Redis unreachable; refusing them (503)")
    assert lines[2][1].startswith("rate limits: Redis unreachable; admitting requests")
    assert lines[3][1].startswith("state store: Redis reachable again after")
    assert health.up and told == [False, True]
    assert health.decisions == {("auth", "closed"): 5, ("rate_limit", "open"): 5}


def test_a_feature_that_notices_first_tells_the_outage_in_its_own_line(caplog: pytest.LogCaptureFixture) -> None:
    health = StoreHealth()
    with caplog.at_level(logging.INFO, logger="mcp_barbican.storage.health"):
        health.down("commands", "refused", deciding="rate_limit")
        health.decided("rate_limit", "closed", "refused")
    assert [r.getMessage() for r in caplog.records] == [
        "rate limits: Redis unreachable (refused); refusing requests until it returns"
    ]


@pytest.mark.anyio
async def test_a_failed_command_is_probed_until_redis_answers_so_the_outage_ends_without_another_request() -> None:
    answers = [ConnectionError("refused"), ConnectionError("refused"), None]

    async def ping() -> None:
        answer = answers.pop(0)
        if answer is not None:
            raise answer

    health = StoreHealth(probe=ping, retry=0.01)
    health.down("commands", "refused")
    try:
        for _ in range(200):
            if health.up:
                break
            await asyncio.sleep(0.01)
        assert health.up and answers == [], "up after the third probe"
    finally:
        await health.aclose()
