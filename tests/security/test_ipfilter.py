"""IP allow/deny decisions from tables, and the IP filter layer."""

from __future__ import annotations

import time
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mcp_barbican.asgi import CLIENT_IP_KEY
from mcp_barbican.security.addresses import IpSet, parse_ip
from mcp_barbican.security.client_ip import ClientAddress, TrustedProxies
from mcp_barbican.security.counters import SecurityCounters
from mcp_barbican.security.ipfilter import IpFilter, IpVerdict, decide
from mcp_barbican.security.iprules import DynamicRules
from mcp_barbican.storage import IpRule
from mcp_barbican.types import Message, Scope
from tests.security.asgi import call, make_scope, ok_app
from tests.security.test_iprules import NOW, Clock, ban, rules

EMPTY = IpSet.build([])


def test_a_thousand_entry_list_decides_in_microseconds() -> None:
    entries = [f"{a}.{b}.0.0/{16 + b % 9}" for a in range(11, 51) for b in range(25)]
    whitelist = IpSet.build(entries)
    blacklist = IpSet.build(f"2001:db8:{i:x}::/48" for i in range(1000))
    dynamic = DynamicRules()
    rounds = 5000
    start = time.perf_counter()
    for _ in range(rounds):
        decide("203.0.113.9", whitelist=whitelist, blacklist=blacklist, dynamic=dynamic, now=0.0)
    per_decision = (time.perf_counter() - start) / rounds
    # A linear scan of 1000 networks costs ~200 µs; the prefix-indexed sets cost a few.
    assert per_decision < 50e-6


WHITE = IpSet.build(["10.0.0.0/8", "2001:db8::/32"])
BLACK = IpSet.build(["10.0.0.50", "2001:db8::bad"])


_ALLOWED = IpVerdict(True, "no_whitelist")


@pytest.mark.parametrize(
    ("ip", "whitelist", "blacklist", "dynamic", "verdict"),
    [
        pytest.param("1.2.3.4", None, EMPTY, rules(), IpVerdict(True, "no_whitelist"), id="no-lists"),
        pytest.param("1.2.3.4", EMPTY, EMPTY, rules(), IpVerdict(True, "no_whitelist"), id="empty-whitelist"),
        pytest.param("10.1.1.1", WHITE, EMPTY, rules(), IpVerdict(True, "whitelisted"), id="whitelisted-v4"),
        pytest.param("2001:db8::7", WHITE, EMPTY, rules(), IpVerdict(True, "whitelisted"), id="whitelisted-v6"),
        pytest.param("::ffff:10.1.1.1", WHITE, EMPTY, rules(), IpVerdict(True, "whitelisted"), id="whitelisted-mapped"),
        pytest.param("11.0.0.0", WHITE, EMPTY, rules(), IpVerdict(False, "not_whitelisted"), id="outside-whitelist"),
        pytest.param("2001:db9::", WHITE, EMPTY, rules(), IpVerdict(False, "not_whitelisted"), id="outside-v6"),
        pytest.param("10.0.0.50", WHITE, BLACK, rules(), IpVerdict(False, "blacklisted"), id="blacklist-wins"),
        pytest.param("::ffff:10.0.0.50", WHITE, BLACK, rules(), IpVerdict(False, "blacklisted"), id="mapped-black"),
        pytest.param("2001:db8::bad", WHITE, BLACK, rules(), IpVerdict(False, "blacklisted"), id="v6-blacklist-wins"),
        pytest.param("10.0.0.51", WHITE, BLACK, rules(), IpVerdict(True, "whitelisted"), id="blacklist-neighbour"),
        pytest.param("10.0.0.50", None, BLACK, rules(), IpVerdict(False, "blacklisted"), id="blacklist-alone"),
        pytest.param(None, None, BLACK, rules(), IpVerdict(True, "no_whitelist"), id="unknown-no-whitelist"),
        pytest.param("garbage", None, BLACK, rules(), IpVerdict(True, "no_whitelist"), id="garbage-no-whitelist"),
        pytest.param(None, WHITE, EMPTY, rules(), IpVerdict(False, "unknown_address"), id="unknown-whitelist"),
        pytest.param("garbage", WHITE, EMPTY, rules(), IpVerdict(False, "unknown_address"), id="garbage-whitelist"),
        pytest.param(
            "10.1.1.1",
            WHITE,
            EMPTY,
            rules(("10.1.0.0/16", "deny", None)),
            IpVerdict(False, "dynamic_deny", "r0"),
            id="dynamic-deny-beats-static-allow",
        ),
        pytest.param(
            "10.1.1.1",
            WHITE,
            EMPTY,
            rules(("10.1.1.1", "deny", NOW + 1)),
            IpVerdict(False, "dynamic_deny", "r0"),
            id="ban-in-force",
        ),
        pytest.param(
            "10.1.1.1",
            WHITE,
            EMPTY,
            rules(("10.1.1.1", "deny", NOW)),
            IpVerdict(True, "whitelisted"),
            id="ban-expired-at-its-instant",
        ),
        pytest.param(
            "10.0.0.50",
            WHITE,
            BLACK,
            rules(("10.0.0.50", "allow", None)),
            IpVerdict(False, "blacklisted"),
            id="dynamic-allow-never-beats-blacklist",
        ),
        pytest.param(
            "10.0.0.9",
            None,
            EMPTY,
            rules(("10.0.0.9", "allow", None), ("10.0.0.9", "deny", None)),
            IpVerdict(False, "dynamic_deny", "r1"),
            id="dynamic-deny-beats-dynamic-allow",
        ),
        pytest.param(
            "8.8.8.8",
            None,
            EMPTY,
            rules(("1.1.1.1", "allow", None)),
            IpVerdict(False, "not_whitelisted"),
            id="dynamic-allow-makes-a-whitelist",
        ),
        pytest.param(
            "1.1.1.1",
            None,
            EMPTY,
            rules(("1.1.1.1", "allow", None)),
            IpVerdict(True, "dynamic_allow", "r0"),
            id="dynamic-allow",
        ),
        pytest.param(
            "192.0.2.1",
            WHITE,
            EMPTY,
            rules(("192.0.2.0/24", "allow", NOW + 60)),
            IpVerdict(True, "dynamic_allow", "r0"),
            id="dynamic-allow-extends-static",
        ),
        pytest.param(
            "8.8.8.8",
            None,
            EMPTY,
            rules(("1.1.1.1", "allow", NOW - 1)),
            IpVerdict(True, "no_whitelist"),
            id="expired-dynamic-allow-is-no-whitelist",
        ),
        pytest.param(
            None,
            None,
            EMPTY,
            rules(("1.1.1.1", "allow", None)),
            IpVerdict(False, "unknown_address"),
            id="unknown-with-dynamic-whitelist",
        ),
        pytest.param(
            "::ffff:1.1.1.1",
            None,
            EMPTY,
            rules(("1.1.1.1", "deny", None)),
            IpVerdict(False, "dynamic_deny", "r0"),
            id="mapped-client-dynamic-deny",
        ),
        pytest.param(
            "1.1.1.1",
            None,
            EMPTY,
            rules(("::ffff:1.1.1.0/120", "deny", None)),
            IpVerdict(False, "dynamic_deny", "r0"),
            id="mapped-dynamic-rule",
        ),
        pytest.param(
            "10.1.1.1",
            WHITE,
            EMPTY,
            rules(("10.1.1.1", "deny", NOW + 60), ban("10.1.1.1", NOW + 30)),
            IpVerdict(False, "dynamic_deny", "r0"),
            id="an-operator-deny-is-named-before-a-ban",
        ),
        pytest.param(
            "2001:db8:0:1::9",
            None,
            EMPTY,
            rules(ban("2001:db8:0:1::/64", NOW + 30)),
            IpVerdict(False, "banned", "ban:2001:db8:0:1::_64", NOW + 30),
            id="banned-by-network",
        ),
        pytest.param(
            "2001:db8:0:2::9", None, EMPTY, rules(ban("2001:db8:0:1::/64", NOW + 30)), _ALLOWED, id="other-network"
        ),
        pytest.param(
            "::ffff:10.1.1.1",
            WHITE,
            EMPTY,
            rules(ban("10.1.1.1", NOW + 30)),
            IpVerdict(False, "banned", "ban:10.1.1.1", NOW + 30),
            id="banned-and-whitelisted",
        ),
        pytest.param(
            "10.1.1.1", WHITE, EMPTY, rules(ban("10.1.1.1", NOW)), IpVerdict(True, "whitelisted"), id="ban-over"
        ),
        pytest.param(
            "11.1.1.1",
            WHITE,
            EMPTY,
            rules(ban("11.1.1.1", NOW + 30)),
            IpVerdict(False, "not_whitelisted"),
            id="off-the-whitelist-is-named-before-a-ban",
        ),
        pytest.param(
            "1.1.1.1",
            None,
            EMPTY,
            rules(("1.1.1.1", "allow", None), ban("1.1.1.1", NOW + 30)),
            IpVerdict(False, "banned", "ban:1.1.1.1", NOW + 30),
            id="a-dynamic-allow-never-beats-a-ban",
        ),
        pytest.param(
            "1.1.1.1",
            None,
            EMPTY,
            rules(("1.1.1.1", "deny", None)),
            IpVerdict(False, "dynamic_deny", "r0"),
            id="a-deny-rule-not-named-ban-is-an-operators",
        ),
    ],
)
def test_ip_decisions(
    ip: str | None, whitelist: IpSet | None, blacklist: IpSet, dynamic: DynamicRules, verdict: IpVerdict
) -> None:
    assert decide(ip, whitelist=whitelist, blacklist=blacklist, dynamic=dynamic, now=NOW) == verdict


ADMIN_LIST = IpSet.build(["127.0.0.1", "::1"])


@pytest.mark.parametrize(
    ("ip", "whitelist", "dynamic", "verdict"),
    [
        pytest.param("127.0.0.1", ADMIN_LIST, rules(), IpVerdict(True, "whitelisted"), id="listed"),
        pytest.param(
            "198.51.100.7",
            ADMIN_LIST,
            rules(("198.51.100.7", "allow", None)),
            IpVerdict(False, "not_whitelisted"),
            id="dynamic-allow-does-not-widen",
        ),
        pytest.param(
            "127.0.0.1",
            ADMIN_LIST,
            rules(("127.0.0.1", "deny", None)),
            IpVerdict(False, "dynamic_deny", "r0"),
            id="dynamic-deny-still-applies",
        ),
        pytest.param(
            "198.51.100.7",
            None,
            rules(("1.1.1.1", "allow", None)),
            IpVerdict(True, "no_whitelist"),
            id="dynamic-allow-alone-is-no-whitelist",
        ),
        pytest.param(
            "127.0.0.1",
            ADMIN_LIST,
            rules(ban("127.0.0.1", NOW + 30)),
            IpVerdict(False, "banned", "ban:127.0.0.1", NOW + 30),
            id="a-ban-on-a-listed-address-says-banned",
        ),
        pytest.param(
            "198.51.100.7",
            ADMIN_LIST,
            rules(ban("198.51.100.7", NOW + 30)),
            IpVerdict(False, "not_whitelisted"),
            id="a-ban-off-the-list-says-not-listed",
        ),
    ],
)
def test_decisions_that_ignore_dynamic_allows(
    ip: str, whitelist: IpSet | None, dynamic: DynamicRules, verdict: IpVerdict
) -> None:
    assert decide(ip, whitelist=whitelist, blacklist=EMPTY, dynamic=dynamic, now=NOW, dynamic_allow=False) == verdict


@given(ip=st.one_of(st.none(), st.text(max_size=60), st.ip_addresses().map(str)))
def test_decide_never_raises_and_fails_closed_with_a_whitelist(ip: str | None) -> None:
    verdict = decide(ip, whitelist=WHITE, blacklist=BLACK, dynamic=rules(), now=NOW)
    address = parse_ip(ip) if ip is not None else None
    assert verdict.allowed is (address is not None and address in WHITE and address not in BLACK)


@given(ip=st.ip_addresses())
def test_a_blacklisted_address_is_denied_whatever_else_allows_it(ip: Any) -> None:
    everything = IpSet.build(["0.0.0.0/0", "::/0"])
    dynamic = rules((str(ip), "allow", None))
    verdict = decide(str(ip), whitelist=everything, blacklist=IpSet.build([str(ip)]), dynamic=dynamic, now=NOW)
    assert verdict == IpVerdict(False, "blacklisted")


def resolved(ip: str | None, method: str = "GET", path: str = "/") -> Scope:
    """A request scope as the client-address layer leaves it."""
    scope = make_scope(method, path)
    scope[CLIENT_IP_KEY] = ip
    return scope


def filter_layer(
    *, whitelist: IpSet | None = None, blacklist: IpSet = EMPTY, dynamic: DynamicRules | None = None
) -> tuple[IpFilter, SecurityCounters]:
    counters = SecurityCounters()
    layer = IpFilter(
        ok_app,
        whitelist=whitelist,
        blacklist=blacklist,
        dynamic=dynamic or DynamicRules(clock=lambda: NOW),
        counters=counters,
        clock=lambda: NOW,
    )
    return layer, counters


@pytest.mark.parametrize("ip", ["10.0.0.1", "10.0.0.50", "192.0.2.1", "::ffff:10.0.0.1", None])
def test_admits_answers_as_the_layer_decides_and_counts_nothing(ip: str | None) -> None:
    layer, counters = filter_layer(whitelist=WHITE, blacklist=BLACK)
    expected = decide(ip, whitelist=WHITE, blacklist=BLACK, dynamic=DynamicRules(), now=NOW).allowed
    assert layer.admits(ip) is expected
    assert (counters.ip_blocked, counters.security_violations) == (0, 0)


@pytest.mark.anyio
async def test_layer_refuses_with_403_json_and_counts() -> None:
    layer, counters = filter_layer(whitelist=WHITE, blacklist=BLACK)
    sent = await call(layer, resolved("10.0.0.50", "POST", "/mcp/x"), b"{}")
    assert sent.status == 403
    assert sent.headers["content-type"] == "application/json"
    body = sent.json()
    assert body["error"] == "ip_blocked"
    assert "10.0.0" not in body["message"] and "blacklist" not in body["message"]
    assert (counters.ip_blocked, counters.security_violations) == (1, 1)
    assert counters.last_violation is not None


@pytest.mark.anyio
async def test_layer_lets_allowed_addresses_through_untouched() -> None:
    layer, counters = filter_layer(whitelist=WHITE, blacklist=BLACK)
    sent = await call(layer, resolved("10.0.0.51", "POST"), b"payload")
    assert (sent.status, sent.body) == (200, b"payload")
    assert counters.ip_blocked == counters.security_violations == 0


@pytest.mark.anyio
async def test_layer_refuses_an_unknown_address_when_a_whitelist_exists() -> None:
    layer, counters = filter_layer(whitelist=WHITE)
    sent = await call(layer, resolved(None))
    assert sent.status == 403
    assert counters.ip_blocked == 1


@pytest.mark.anyio
async def test_layer_without_a_resolved_address_judges_the_socket_peer() -> None:
    layer, _ = filter_layer(whitelist=WHITE)
    assert (await call(layer, make_scope(client=("10.0.0.1", 1)))).status == 200
    assert (await call(layer, make_scope(client=("127.0.0.1", 1)))).status == 403
    assert (await call(layer, make_scope(client=None))).status == 403


@pytest.mark.anyio
async def test_a_dynamic_ban_takes_effect_on_the_next_request_and_lifts() -> None:
    clock = Clock(NOW)
    dynamic = DynamicRules(clock=clock)
    counters = SecurityCounters()
    layer = IpFilter(ok_app, whitelist=None, blacklist=EMPTY, dynamic=dynamic, counters=counters, clock=clock)
    assert (await call(layer, resolved("198.51.100.7"))).status == 200
    dynamic.add(IpRule("ban", "198.51.100.7", "deny", NOW + 600))
    assert (await call(layer, resolved("198.51.100.7"))).status == 403
    assert (await call(layer, resolved("198.51.100.8"))).status == 200
    clock.now = NOW + 600
    assert (await call(layer, resolved("198.51.100.7"))).status == 200


@pytest.mark.anyio
async def test_a_banned_client_is_told_so_and_when_to_come_back() -> None:
    clock = Clock(NOW)
    dynamic = DynamicRules(clock=clock)
    counters = SecurityCounters()
    layer = IpFilter(ok_app, whitelist=None, blacklist=EMPTY, dynamic=dynamic, counters=counters, clock=clock)
    dynamic.add(ban("2001:db8:0:1::/64", NOW + 600))
    dynamic.add(IpRule("operator", "198.51.100.0/24", "deny", NOW + 600))
    clock.now = NOW + 0.5
    sent = await call(layer, resolved("2001:db8:0:1::77"))
    assert (sent.status, sent.headers["retry-after"]) == (403, "600")
    assert sent.json()["error"] == "banned"
    assert sent.json()["retry_after"] == 600
    clock.now = NOW + 599.2
    assert (await call(layer, resolved("2001:db8:0:1::78"))).headers["retry-after"] == "1"
    operator = await call(layer, resolved("198.51.100.1"))
    assert (operator.status, operator.json()["error"]) == (403, "ip_blocked")
    assert "retry-after" not in operator.headers, "an operator's rule is not a ban"
    assert counters.ip_blocked == 3
    dynamic.add(IpRule("ban:203.0.113.9", "203.0.113.9", "deny", None))
    forever = await call(layer, resolved("203.0.113.9"))
    assert (forever.status, forever.json()["retry_after"]) == (403, None)
    assert "retry-after" not in forever.headers


@pytest.mark.anyio
async def test_behind_the_client_address_layer_a_spoofed_header_changes_nothing() -> None:
    inner, counters = filter_layer(blacklist=IpSet.build(["198.51.100.7"]))
    stack = ClientAddress(inner, trusted=TrustedProxies.build(["10.0.0.0/8"]))
    spoofed = make_scope(headers=[("X-Forwarded-For", "1.1.1.1")], client=("198.51.100.7", 5))
    assert (await call(stack, spoofed)).status == 403
    relayed = make_scope(headers=[("X-Forwarded-For", "198.51.100.7")], client=("10.0.0.2", 5))
    assert (await call(stack, relayed)).status == 403
    clean = make_scope(headers=[("X-Forwarded-For", "198.51.100.7, 203.0.113.1")], client=("10.0.0.2", 5))
    assert (await call(stack, clean)).status == 200
    assert counters.ip_blocked == 2


@pytest.mark.anyio
async def test_layer_can_ignore_dynamic_allows() -> None:
    dynamic = rules(("198.51.100.7", "allow", None))
    counters = SecurityCounters()
    admin = IpFilter(
        ok_app, whitelist=ADMIN_LIST, blacklist=EMPTY, dynamic=dynamic, counters=counters, dynamic_allow=False
    )
    assert (await call(admin, resolved("198.51.100.7"))).status == 403
    data, _ = filter_layer(whitelist=ADMIN_LIST, dynamic=dynamic)
    assert (await call(data, resolved("198.51.100.7"))).status == 200


@pytest.mark.anyio
async def test_layer_closes_a_refused_websocket_and_passes_lifespan() -> None:
    layer, counters = filter_layer(blacklist=IpSet.build(["1.1.1.1"]))
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        sent.append(message)

    await layer({"type": "websocket", "headers": [], CLIENT_IP_KEY: "1.1.1.1"}, receive, send)
    assert sent == [{"type": "websocket.close", "code": 1008}]
    assert counters.ip_blocked == 1
    passed: list[str] = []

    async def lifespan_app(scope: Any, receive: Any, send: Any) -> None:
        passed.append(scope["type"])

    lifespan_layer = IpFilter(lifespan_app, whitelist=WHITE, blacklist=EMPTY, dynamic=DynamicRules(), counters=counters)
    await lifespan_layer({"type": "lifespan"}, receive, send)
    assert passed == ["lifespan"]
