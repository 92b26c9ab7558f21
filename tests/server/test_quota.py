"""Sessions per principal: what a session counts against, and the count itself (pure decisions)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from mcp_barbican.config import ListenerLimits
from mcp_barbican.server.quota import Held, SessionQuota, holder_key


@pytest.mark.parametrize(
    ("principal", "client_ip", "holder"),
    [
        pytest.param("token:ci", "10.0.0.1", "token:ci", id="a-principal-wherever-it-comes-from"),
        pytest.param(None, "10.0.0.1", "ip:10.0.0.1", id="ipv4"),
        pytest.param(None, "2001:db8:1:2:aaaa::1", "ip:2001:db8:1:2::/64", id="ipv6-per-64"),
        pytest.param(None, "2001:db8:1:2:ffff::9", "ip:2001:db8:1:2::/64", id="same-64-same-holder"),
        pytest.param(None, "2001:db8:1:3::1", "ip:2001:db8:1:3::/64", id="next-64-another-holder"),
        pytest.param(None, None, "ip:unknown", id="no-address"),
    ],
)
def test_what_a_session_counts_against(principal: str | None, client_ip: str | None, holder: str) -> None:
    assert holder_key(principal, client_ip) == holder


@dataclass
class FakeSession:
    id: str
    last_seen: float
    idle: bool = False
    closed: bool = False

    def reclaimable(self, settle: float) -> bool:
        assert settle == 10.0, "the quota gives uninitialized sessions init_timeout to settle"
        return self.idle


class Closer:
    """Closes sessions the way the runtime does: synchronously, releasing the slot."""

    def __init__(self, quota: SessionQuota, holder: str) -> None:
        self.quota, self.holder = quota, holder
        self.closed: list[str] = []

    def __call__(self, session: Held) -> None:
        self.closed.append(session.id)
        self.quota.release(self.holder, session.id)


def test_the_cap_holds_per_holder_and_the_table_keeps_only_holders_with_sessions() -> None:
    quota = SessionQuota(ListenerLimits(max_sessions_per_principal=2))
    a1, a2, a3, b1 = (FakeSession(name, 0.0) for name in ("a1", "a2", "a3", "b1"))
    close_a, close_b = Closer(quota, "a"), Closer(quota, "b")
    taken = [quota.take("a", a1, close_a), quota.take("a", a2, close_a), quota.take("a", a3, close_a)]
    assert taken + [quota.take("b", b1, close_b)] == [True, True, False, True]
    assert close_a.closed == [], "busy sessions are never closed to make room"
    quota.release("a", "a1")
    assert quota.take("a", a3, close_a) is True, "a released slot is free again"
    for holder, session_id in (("a", "a2"), ("a", "a3"), ("b", "b1")):
        quota.release(holder, session_id)
    assert quota.held == {}
    quota.configure(ListenerLimits(max_sessions_per_principal=1, init_timeout=10))
    assert (quota.take("a", a1, close_a), quota.take("a", a2, close_a), quota.init_timeout) == (True, False, 10.0)


@pytest.mark.parametrize(
    ("sessions", "closed"),
    [
        pytest.param([("s1", 3.0, True), ("s2", 1.0, True)], ["s2"], id="the-least-recently-used-idle-one"),
        pytest.param([("s1", 1.0, False), ("s2", 2.0, True)], ["s2"], id="never-a-busy-one"),
        pytest.param([("s1", 1.0, False), ("s2", 2.0, False)], None, id="all-busy-refused"),
    ],
)
def test_at_the_cap_an_idle_session_of_the_same_holder_makes_room(
    sessions: list[tuple[str, float, bool]], closed: list[str] | None
) -> None:
    quota = SessionQuota(ListenerLimits(max_sessions_per_principal=2))
    close_a = Closer(quota, "a")
    other = FakeSession("other", 0.0, idle=True)
    assert quota.take("b", other, Closer(quota, "b"))
    for session_id, seen, idle in sessions:
        assert quota.take("a", FakeSession(session_id, seen, idle), close_a)
    admitted = quota.take("a", FakeSession("new", 9.0), close_a)
    assert admitted is (closed is not None)
    assert close_a.closed == (closed or [])
    assert len(quota.held["a"]) == 2 and "other" in quota.held["b"], "another holder's session is never touched"


def test_a_cap_of_one_replaces_the_idle_session() -> None:
    quota = SessionQuota(ListenerLimits(max_sessions_per_principal=1))
    close_a = Closer(quota, "a")
    assert quota.take("a", FakeSession("old", 1.0, idle=True), close_a)
    assert quota.take("a", FakeSession("new", 2.0), close_a)
    assert list(quota.held["a"]) == ["new"] and close_a.closed == ["old"]
