"""Sealed session ids: what opens, what does not, and key rotation."""

from __future__ import annotations

import base64
import string

import pytest

from mcp_barbican.server.seal import (
    KIND_OWNED,
    KIND_RESUMABLE,
    MAX_SEALED_CHARS,
    Sealer,
    new_replica_id,
    owned_elsewhere,
)

OLD = "o" * 8 + "-old-session-key-with-enough-chars"
NEW = "n" * 8 + "-new-session-key-with-enough-chars"
VISIBLE_ASCII = set(string.printable[:94])  # the spec: session ids are visible ASCII (0x21-0x7E)


def sealer(*keys: str, replica: str = "0123456789abcdef") -> Sealer:
    return Sealer(list(keys), replica)


def test_a_sealed_id_opens_to_what_was_sealed() -> None:
    seal = sealer(OLD)
    session_id = seal.seal(
        KIND_RESUMABLE, mcp="api", principal="token:alice", upstream="up-1", version="2025-06-18", capabilities={"x": 1}
    )
    opened = seal.open(session_id)
    assert opened is not None
    assert (opened.kind, opened.owner, opened.mcp, opened.principal) == (
        KIND_RESUMABLE,
        "0123456789abcdef",
        "api",
        "token:alice",
    )
    assert (opened.upstream, opened.version, opened.capabilities) == ("up-1", "2025-06-18", {"x": 1})
    assert set(session_id) <= VISIBLE_ASCII


def test_two_seals_of_the_same_session_differ() -> None:
    seal = sealer(OLD)
    assert seal.seal(KIND_OWNED, mcp="a", principal=None) != seal.seal(KIND_OWNED, mcp="a", principal=None)


def test_another_replicas_seal_opens_with_the_same_key() -> None:
    session_id = sealer(OLD, replica="aaaaaaaaaaaaaaaa").seal(KIND_OWNED, mcp="a", principal="p")
    opened = sealer(OLD, replica="bbbbbbbbbbbbbbbb").open(session_id)
    assert opened is not None and opened.owner == "aaaaaaaaaaaaaaaa"


def _flip(text: str, index: int) -> str:
    swapped = "A" if text[index] != "A" else "B"
    return text[:index] + swapped + text[index + 1 :]


@pytest.mark.parametrize(
    ("case", "change"),
    [
        ("kind changed (owned made resumable)", lambda sid: "h" + sid[1:]),
        ("owner changed", lambda sid: sid[0] + "f" * 16 + sid[17:]),
        ("a ciphertext byte flipped", lambda sid: _flip(sid, len(sid) - 5)),
        ("the tag cut off", lambda sid: sid[:-22]),
        ("truncated to the prefix", lambda sid: sid[:17]),
        ("empty", lambda sid: ""),
        ("a plain random id", lambda sid: "Zm9vYmFyYmF6cXV4cXV1eHF1dXhxdXV4"),
        ("an unknown kind", lambda sid: "x" + sid[1:]),
        ("non-hex owner", lambda sid: sid[0] + "g" * 16 + sid[17:]),
        ("not base64", lambda sid: sid[:17] + "!!!!" + sid[21:]),
        ("oversized", lambda sid: sid + "A" * MAX_SEALED_CHARS),
    ],
)
def test_an_altered_or_foreign_id_does_not_open(case: str, change: object) -> None:
    seal = sealer(OLD)
    session_id = seal.seal(KIND_OWNED, mcp="a", principal="token:alice")
    assert callable(change)
    assert seal.open(change(session_id)) is None, case


def test_an_id_sealed_with_a_key_not_listed_does_not_open() -> None:
    session_id = sealer(OLD).seal(KIND_OWNED, mcp="a", principal=None)
    assert sealer(NEW).open(session_id) is None


def test_rotation_new_key_first_old_keys_still_open() -> None:
    before = sealer(OLD).seal(KIND_RESUMABLE, mcp="a", principal="p")
    rotated = sealer(NEW, OLD)
    assert rotated.open(before) is not None
    after = rotated.seal(KIND_RESUMABLE, mcp="a", principal="p")
    assert sealer(NEW).open(after) is not None  # sealed with the first key
    assert sealer(OLD).open(after) is None


def test_a_reload_keeps_ids_sealed_with_a_key_still_listed() -> None:
    seal = sealer(OLD)
    before = seal.seal(KIND_OWNED, mcp="a", principal=None)
    seal.set_keys([NEW, OLD])
    assert seal.open(before) is not None
    seal.set_keys([NEW])
    assert seal.open(before) is None


def test_without_keys_ids_are_random_and_nothing_opens() -> None:
    seal = sealer()
    assert not seal.active
    session_id = seal.new_id("a", "p")
    assert len(session_id) == 32 and set(session_id) <= VISIBLE_ASCII
    assert seal.open(sealer(OLD).seal(KIND_OWNED, mcp="a", principal="p")) is None


def test_large_client_capabilities_keep_their_names_only() -> None:
    seal = sealer(OLD)
    big = {"sampling": {"blob": "x" * 5000}, "roots": {"listChanged": True}}
    opened = seal.open(seal.seal(KIND_RESUMABLE, mcp="a", principal=None, capabilities=big))
    assert opened is not None and opened.capabilities == {"sampling": {}, "roots": {}}


@pytest.mark.parametrize(
    ("session_id", "replica", "expected"),
    [
        ("o" + "a" * 16 + "blob", "b" * 16, "a" * 16),
        ("o" + "a" * 16 + "blob", "a" * 16, None),  # ours
        ("h" + "a" * 16 + "blob", "b" * 16, None),  # any replica continues it
        ("o" + "A" * 16 + "blob", "b" * 16, None),  # not our shape
        ("o" + "a" * 15, "b" * 16, None),
        ("", "b" * 16, None),
    ],
)
def test_owned_elsewhere(session_id: str, replica: str, expected: str | None) -> None:
    assert owned_elsewhere(session_id, replica) == expected


def test_messages_between_replicas_are_signed() -> None:
    seal = sealer(NEW, OLD)
    signed = seal.sign(b'{"k":"req"}')
    assert seal.verify(signed) == b'{"k":"req"}'
    assert sealer(OLD, NEW).verify(signed) == b'{"k":"req"}'  # any listed key verifies
    assert sealer(OLD).verify(signed) is None
    assert seal.verify(signed[:-1] + b"x") is None
    assert seal.verify(signed[:10]) is None
    assert seal.verify(b"") is None


def test_replica_ids_are_hex_and_distinct() -> None:
    ids = {new_replica_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(len(i) == 16 and set(i) <= set("0123456789abcdef") for i in ids)


def test_a_sealed_id_is_compact() -> None:
    session_id = sealer(OLD).seal(KIND_OWNED, mcp="a" * 64, principal="token:" + "p" * 64)
    assert len(session_id) < 300
    raw = base64.urlsafe_b64decode(session_id[17:] + "=" * (-len(session_id[17:]) % 4))
    assert b"token:" not in raw  # the principal is sealed, not merely encoded
