"""Temporary bans after repeated authentication failures, from the window arithmetic to the stack."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import pytest

from mcp_barbican.asgi import CLIENT_IP_KEY, get_header, json_error
from mcp_barbican.config import BanConfig, ProxyConfig, validate_model
from mcp_barbican.exceptions import ConfigError
from mcp_barbican.security.addresses import IpSet
from mcp_barbican.security.bans import BAN_REASON, AuthFailureTracker, ban_target, register_failure
from mcp_barbican.security.client_ip import ClientAddress, TrustedProxies
from mcp_barbican.security.counters import SecurityCounters
from mcp_barbican.security.ipfilter import IpFilter, decide
from mcp_barbican.security.iprules import DynamicRules
from mcp_barbican.server.shields import Shields
from mcp_barbican.storage import IpRule
from mcp_barbican.storage.memory import MemoryRuleTable
from mcp_barbican.types import ASGIApp, Receive, Scope, Send
from tests.security.asgi import call, make_scope

NOW = 1_000_000.0
DEFAULTS = BanConfig()
EMPTY = IpSet.build([])


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_defaults_are_fail2bans() -> None:
    assert (DEFAULTS.enabled, DEFAULTS.max_failures, DEFAULTS.find_time, DEFAULTS.ban_time) == (True, 5, 600, 600)


@pytest.mark.parametrize(
    ("previous", "now", "kept"),
    [
        pytest.param((), 0.0, (0.0,), id="first"),
        pytest.param((0.0, 1.0, 2.0), 3.0, (0.0, 1.0, 2.0, 3.0), id="fourth-in-window"),
        pytest.param((0.0, 1.0, 2.0, 3.0), 4.0, None, id="fifth-in-window-bans"),
        pytest.param((0.0, 100.0, 200.0, 300.0), 599.9, None, id="fifth-just-inside"),
        pytest.param((0.0, 100.0, 200.0, 300.0), 600.0, (100.0, 200.0, 300.0, 600.0), id="oldest-exactly-out"),
        pytest.param((0.0, 1.0, 2.0, 3.0), 603.0, (603.0,), id="all-out-of-window"),
        pytest.param((0.0, 1.0, 2.0, 3.0, 4.0, 5.0), 6.0, None, id="more-than-enough"),
    ],
)
def test_failure_window_arithmetic(previous: tuple[float, ...], now: float, kept: tuple[float, ...] | None) -> None:
    assert register_failure(previous, now, DEFAULTS) == kept


def test_a_single_failure_bans_when_max_is_one() -> None:
    assert register_failure((), 0.0, BanConfig(max_failures=1)) is None


def allowed(rules: DynamicRules, ip: str, now: float) -> bool:
    return decide(ip, whitelist=None, blacklist=EMPTY, dynamic=rules, now=now).allowed


@dataclass
class Jail:
    """A tracker wired to its own rule index, counters and clock, recording the bans it issues."""

    bans: AuthFailureTracker
    rules: DynamicRules
    counters: SecurityCounters
    clock: Clock
    banned: list[IpRule]

    def fail(self, ip: str | None, times: int = 1) -> None:
        for _ in range(times):
            self.bans.record_failure(ip)

    def allows(self, ip: str, at: float | None = None) -> bool:
        return allowed(self.rules, ip, self.clock.now if at is None else at)


def jail(config: BanConfig = DEFAULTS, *, exempt: tuple[str, ...] = (), max_tracked: int = 100_000) -> Jail:
    clock = Clock()
    rules = DynamicRules(clock=clock)
    counters = SecurityCounters()
    banned: list[IpRule] = []
    bans = AuthFailureTracker(
        config,
        rules=rules,
        counters=counters,
        clock=clock,
        exempt=exempt,
        max_tracked=max_tracked,
        on_ban=banned.append,
    )
    return Jail(bans, rules, counters, clock, banned)


def test_five_failures_in_ten_minutes_ban_for_ten_minutes() -> None:
    j = jail()
    for _ in range(4):
        j.fail("203.0.113.9")
        j.clock.now += 100
    assert j.allows("203.0.113.9")
    assert j.banned == []
    j.fail("203.0.113.9")
    now = j.clock.now
    assert j.banned == [IpRule("ban:203.0.113.9", "203.0.113.9", "deny", now + 600, BAN_REASON, now)]
    assert j.counters.bans_issued == 1
    assert not j.allows("203.0.113.9")
    assert j.allows("203.0.113.10")
    assert not j.allows("203.0.113.9", now + 599.9)
    assert j.allows("203.0.113.9", now + 600)
    assert len(j.bans) == 0  # the banned address's failures are forgotten


def test_four_failures_then_a_wait_past_find_time_do_not_ban() -> None:
    j = jail()
    j.fail("203.0.113.9", 4)
    j.clock.now += 600
    j.fail("203.0.113.9")
    assert (j.banned, j.counters.bans_issued) == ([], 0)
    assert j.allows("203.0.113.9")


def test_failures_count_again_from_zero_after_a_ban_is_lifted() -> None:
    j = jail()
    j.fail("198.51.100.1", 5)
    j.clock.now += 600
    assert j.allows("198.51.100.1")
    j.fail("198.51.100.1", 4)
    assert len(j.banned) == 1
    j.fail("198.51.100.1")
    assert len(j.banned) == j.counters.bans_issued == 2


def test_the_config_decides_threshold_window_and_ban_time() -> None:
    j = jail(BanConfig(max_failures=2, find_time=5, ban_time=30))
    j.fail("1.1.1.1")
    j.clock.now += 5
    j.fail("1.1.1.1")
    assert j.banned == []
    j.fail("1.1.1.1")
    assert [rule.expires_at for rule in j.banned] == [j.clock.now + 30]


def test_disabled_bans_nothing_and_remembers_nothing() -> None:
    j = jail(BanConfig(enabled=False))
    j.fail("1.1.1.1", 20)
    assert (len(j.bans), len(j.rules), j.counters.bans_issued, j.banned) == (0, 0, 0, [])


@pytest.mark.parametrize("ip", [None, "", "unknown", "1.1.1.1:80", "not-an-address"])
def test_failures_without_a_usable_address_are_not_counted(ip: str | None) -> None:
    j = jail()
    j.fail(ip, 10)
    assert (len(j.bans), len(j.rules), j.banned) == (0, 0, [])


def test_mapped_and_plain_spellings_are_one_address() -> None:
    j = jail()
    for ip in ("::ffff:1.2.3.4", "1.2.3.4", "::FFFF:1.2.3.4", "1.2.3.4"):
        j.fail(ip)
    assert j.banned == []
    j.fail("::ffff:1.2.3.4")
    assert [rule.cidr for rule in j.banned] == ["1.2.3.4"]
    assert not j.allows("1.2.3.4")


def test_exempt_addresses_are_never_banned() -> None:
    j = jail(exempt=("10.0.0.0/8",))
    j.fail("10.1.2.3", 10)
    assert (len(j.bans), j.counters.bans_issued) == (0, 0)
    j.fail("11.1.2.3", 5)
    assert j.counters.bans_issued == 1


def test_ipv6_clients_are_banned_by_their_slash_64_by_default() -> None:
    j = jail()
    for host in range(1, 6):
        j.fail(f"2001:db8:0:1::{host}")
    assert [rule.cidr for rule in j.banned] == ["2001:db8:0:1::/64"]
    assert [rule.id for rule in j.banned] == ["ban:2001:db8:0:1::_64"]
    assert not j.allows("2001:db8:0:1:ffff::1")
    assert j.allows("2001:db8:0:2::1")


def test_failures_in_another_slash_64_count_apart() -> None:
    j = jail()
    for host in range(1, 5):
        j.fail(f"2001:db8:0:1::{host}")
        j.fail(f"2001:db8:0:2::{host}")
    assert j.banned == []
    j.fail("2001:db8:0:2::99")
    assert [rule.cidr for rule in j.banned] == ["2001:db8:0:2::/64"]
    assert j.allows("2001:db8:0:1::1")


def test_an_ipv6_prefix_of_128_counts_every_address_apart() -> None:
    j = jail(BanConfig(ipv6_prefix=128))
    for host in range(1, 6):
        j.fail(f"2001:db8::{host}")
    assert j.counters.bans_issued == 0
    j.fail("2001:db8::1", 4)
    assert [rule.cidr for rule in j.banned] == ["2001:db8::1"]


@pytest.mark.parametrize("prefix", [0, 129])
def test_ipv6_prefix_is_checked(prefix: int) -> None:
    with pytest.raises(ConfigError, match="ipv6_prefix"):
        validate_model(BanConfig, {"ipv6_prefix": prefix})


@pytest.mark.parametrize("ip", ["127.0.0.1", "::1", "::ffff:127.0.0.1", "0:0:0:0:0:0:0:1"])
def test_loopback_is_ignored_by_default(ip: str) -> None:
    j = jail()
    j.fail(ip, 20)
    assert (len(j.bans), len(j.rules), j.counters.bans_issued) == (0, 0, 0)
    assert DEFAULTS.ignore == ("127.0.0.1", "::1")


def test_an_empty_ignore_list_lets_loopback_be_banned() -> None:
    j = jail(BanConfig(ignore=()))
    j.fail("::ffff:127.0.0.1", 5)
    assert [rule.cidr for rule in j.banned] == ["127.0.0.1"]


def test_ignore_takes_networks_and_mapped_spellings() -> None:
    j = jail(BanConfig(ignore=("192.0.2.0/24", "::ffff:198.51.100.7", "2001:db8:5::/48")))
    for ip in ("192.0.2.200", "198.51.100.7", "::ffff:192.0.2.1", "2001:db8:5:7::1"):
        j.fail(ip, 10)
    assert j.counters.bans_issued == 0
    j.fail("198.51.100.8", 5)
    assert [rule.cidr for rule in j.banned] == ["198.51.100.8"]


def test_a_slash_64_holding_an_ignored_address_is_banned_per_address() -> None:
    j = jail(BanConfig(ignore=("2001:db8:0:1::1",)))
    j.fail("2001:db8:0:1::1", 10)
    for host in range(2, 6):
        j.fail(f"2001:db8:0:1::{host}")
    assert j.banned == [], "each address counts on its own here"
    j.fail("2001:db8:0:1::2", 4)
    assert [rule.cidr for rule in j.banned] == ["2001:db8:0:1::2"]
    assert j.allows("2001:db8:0:1::1"), "the ignored address is never banned"


EXEMPT = IpSet.build(["127.0.0.1", "::1", "2001:db8:9:9::1", "2001:db8:8::/48"])


@pytest.mark.parametrize(
    ("ip", "prefix", "target"),
    [
        ("203.0.113.9", 64, "203.0.113.9"),
        ("::ffff:203.0.113.9", 64, "203.0.113.9"),
        ("::ffff:203.0.113.9", 1, "203.0.113.9"),
        ("2001:db8:0:1::5", 64, "2001:db8:0:1::/64"),
        ("2001:db8:0:1:ffff:ffff:ffff:ffff", 64, "2001:db8:0:1::/64"),
        ("2001:db8:abcd:12ff::1", 56, "2001:db8:abcd:1200::/56"),
        ("2001:db8::5", 128, "2001:db8::5"),
        ("2001:DB8::5", 128, "2001:db8::5"),
        ("fe80::1%eth0", 64, "fe80::/64"),
        ("127.0.0.1", 64, None),
        ("::ffff:127.0.0.1", 64, None),
        ("::1", 64, None),
        ("::1", 128, None),
        ("127.0.0.2", 64, "127.0.0.2"),
        ("2001:db8:9:9::1", 64, None),
        ("2001:db8:9:9::2", 64, "2001:db8:9:9::2"),
        ("2001:db8:9:9::2", 32, "2001:db8:9:9::2"),
        ("2001:db8:8:1::2", 64, None),
        ("2001:db8:7:1::2", 64, "2001:db8:7:1::/64"),
        ("2001:db8:7:1::2", 40, "2001:db8:7:1::2"),
        ("garbage", 64, None),
        ("", 64, None),
    ],
)
def test_what_a_failure_counts_against(ip: str, prefix: int, target: str | None) -> None:
    assert ban_target(ip, prefix, EXEMPT) == target


def test_a_success_forgets_the_failures() -> None:
    j = jail()
    j.fail("1.1.1.1", 4)
    j.bans.record_success("1.1.1.1")
    j.bans.record_success(None)
    j.bans.record_success("garbage")
    j.fail("1.1.1.1")
    assert j.counters.bans_issued == 0


def test_memory_stays_bounded_under_a_flood_of_distinct_addresses() -> None:
    j = jail()
    for n in range(200_000):
        j.fail(f"10.{n >> 16 & 255}.{n >> 8 & 255}.{n & 255}")
    assert len(j.bans) == 100_000
    assert (len(j.rules), j.counters.bans_issued) == (0, 0)


def test_the_least_recently_failing_address_is_forgotten_first() -> None:
    j = jail(max_tracked=2)
    j.fail("1.1.1.1", 4)
    j.fail("2.2.2.2")
    j.fail("3.3.3.3")  # evicts 1.1.1.1, the least recent
    assert len(j.bans) == 2
    j.fail("1.1.1.1")
    assert j.counters.bans_issued == 0


def test_a_new_failure_makes_an_address_recent_again() -> None:
    j = jail(max_tracked=2)
    j.fail("1.1.1.1", 3)
    j.fail("2.2.2.2")
    j.fail("1.1.1.1")
    j.fail("3.3.3.3")  # evicts 2.2.2.2
    j.fail("1.1.1.1")
    assert [rule.cidr for rule in j.banned] == ["1.1.1.1"]


def test_a_full_rule_table_refuses_the_ban_without_counting_it(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    rules = DynamicRules(max_rules=1, clock=clock)
    rules.add(IpRule("admin", "9.9.9.9", "deny", None))
    counters = SecurityCounters()
    bans = AuthFailureTracker(DEFAULTS, rules=rules, counters=counters, clock=clock)
    with caplog.at_level(logging.ERROR):
        for _ in range(5):
            bans.record_failure("1.1.1.1")
    assert counters.bans_issued == 0
    assert len(rules) == 1
    assert "table is full" in caplog.text


@pytest.mark.anyio
async def test_bans_reach_the_store_and_an_index_following_it() -> None:
    clock = Clock()
    store = MemoryRuleTable(clock=clock)
    rules = DynamicRules(clock=clock)
    await rules.follow(store)
    other_replica = DynamicRules(clock=clock)
    await other_replica.follow(store)
    bans = AuthFailureTracker(DEFAULTS, rules=rules, counters=SecurityCounters(), clock=clock, store=store)
    for _ in range(5):
        bans.record_failure("1.1.1.1")
    assert not allowed(rules, "1.1.1.1", NOW)  # before the store has it
    await bans.flush()
    assert [rule.id for rule in await store.list()] == ["ban:1.1.1.1"]
    assert not allowed(other_replica, "1.1.1.1", NOW)


class FailingStore(MemoryRuleTable):
    async def put(self, record: IpRule) -> None:
        raise ConnectionError("store down")


@pytest.mark.anyio
async def test_a_store_failure_keeps_the_ban_in_process(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    rules = DynamicRules(clock=clock)
    bans = AuthFailureTracker(DEFAULTS, rules=rules, counters=SecurityCounters(), clock=clock, store=FailingStore())
    with caplog.at_level(logging.ERROR):
        for _ in range(5):
            bans.record_failure("1.1.1.1")
        await bans.flush()
    assert not allowed(rules, "1.1.1.1", NOW)
    assert "could not store the ban of 1.1.1.1" in caplog.text


GOOD_TOKEN = b"Bearer good"


def fake_auth(bans: AuthFailureTracker) -> ASGIApp:
    """Stands in for the authentication layer: its on_failure hook receives the client address."""

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if get_header(scope, b"authorization") != GOOD_TOKEN:
            bans.record_failure(scope.get(CLIENT_IP_KEY))
            await json_error(send, 401, "invalid_token", "invalid credentials")
            return
        await json_error(send, 200, "ok", "welcome")

    return app


@pytest.mark.anyio
async def test_six_bad_tokens_from_one_address_ban_that_address_only() -> None:
    clock = Clock()
    rules = DynamicRules(clock=clock)
    counters = SecurityCounters()
    bans = AuthFailureTracker(DEFAULTS, rules=rules, counters=counters, clock=clock)
    guarded = IpFilter(
        fake_auth(bans),
        whitelist=None,
        blacklist=EMPTY,
        dynamic=rules,
        counters=counters,
        clock=clock,
    )
    stack = ClientAddress(guarded, trusted=TrustedProxies.build(["10.0.0.1"]))

    def request(token: str, client: str, forwarded: str | None = None) -> Scope:
        headers = [("Authorization", token)] + ([("X-Forwarded-For", forwarded)] if forwarded else [])
        return make_scope("POST", "/mcp/demo", headers, client=(client, 40000))

    statuses = [(await call(stack, request("Bearer bad", "192.0.2.7"))).status for _ in range(6)]
    assert statuses == [401, 401, 401, 401, 401, 403]
    blocked = await call(stack, request("Bearer good", "192.0.2.7"))
    assert (blocked.status, blocked.json()["error"]) == (403, "banned")
    assert blocked.headers["retry-after"] == str(int(DEFAULTS.ban_time))
    assert blocked.json()["retry_after"] == int(DEFAULTS.ban_time)
    assert (await call(stack, request("Bearer good", "192.0.2.8"))).status == 200
    assert (await call(stack, request("Bearer good", "10.0.0.1", "192.0.2.8"))).status == 200
    assert (await call(stack, request("Bearer good", "10.0.0.1", "192.0.2.7"))).status == 403
    assert (counters.bans_issued, counters.ip_blocked) == (1, 3)
    clock.now += DEFAULTS.ban_time
    assert (await call(stack, request("Bearer good", "192.0.2.7"))).status == 200


def test_the_start_up_log_names_the_bans_in_force_and_counts_the_rest(caplog: pytest.LogCaptureFixture) -> None:
    config = validate_model(ProxyConfig, {"mcps": [{"id": "m", "command": "true", "auth": {"type": "none"}}]})
    shields = Shields(config)
    now = time.time()
    for n in range(25):
        shields.dynamic.add(IpRule(f"ban:10.0.0.{n}", f"10.0.0.{n}", "deny", now + 100 + n, BAN_REASON, now))
    shields.dynamic.add(IpRule("operator", "10.9.0.0/16", "deny", None))
    with caplog.at_level(logging.WARNING):
        shields.log_bans()
    lines = [record.getMessage() for record in caplog.records]
    assert lines[0] == "25 automatic ban(s) in force; lift one with DELETE /admin/security/ip-rules/{id}"
    assert len(lines) == 22 and lines[-1].startswith("... and 5 more bans")
    assert lines[1].startswith("ban in force: 10.0.0.0 until ") and lines[1].endswith("s from now), id ban:10.0.0.0")
    assert not any("10.9.0.0" in line for line in lines), "an operator's rule is not a ban"


def test_no_ban_no_log_line(caplog: pytest.LogCaptureFixture) -> None:
    config = validate_model(ProxyConfig, {"mcps": [{"id": "m", "command": "true", "auth": {"type": "none"}}]})
    with caplog.at_level(logging.DEBUG):
        Shields(config).log_bans()
    assert caplog.records == []
