"""Sessions per principal: what a session counts against, and the count itself (pure decisions)."""

from __future__ import annotations

import pytest

from mcp_barbican.config import ListenerLimits
from mcp_barbican.server.quota import SessionQuota, holder_key


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


def test_the_cap_holds_per_holder_and_the_table_keeps_only_holders_with_sessions() -> None:
    quota = SessionQuota(ListenerLimits(max_sessions_per_principal=2))
    assert [quota.take("a"), quota.take("a"), quota.take("a"), quota.take("b")] == [True, True, False, True]
    quota.release("a")
    assert quota.take("a") is True, "a released slot is free again"
    for holder in ("a", "a", "b"):
        quota.release(holder)
    assert quota.held == {}
    quota.configure(ListenerLimits(max_sessions_per_principal=1, init_timeout=2))
    assert (quota.take("a"), quota.take("a"), quota.init_timeout) == (True, False, 2.0)
