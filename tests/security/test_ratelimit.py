"""Rate limiting: bucket arithmetic, the all-or-nothing decision, LRU bounds, and the 429 layer."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mcp_barbican.asgi import CLIENT_IP_KEY, PRINCIPAL_KEY
from mcp_barbican.config import RateLimitConfig
from mcp_barbican.security.counters import SecurityCounters
from mcp_barbican.security.principal import Principal
from mcp_barbican.security.ratelimit import (
    RPC_RATE_LIMITED,
    UNKNOWN_CLIENT,
    Decision,
    Limits,
    RateLimit,
    RateLimiter,
    RequestKeys,
    jsonrpc_request_id,
    rate_limit_headers,
    refusal,
)
from mcp_barbican.storage.buckets import DEFAULT_MAX_KEYS, Bucket, BucketRef, BucketSpec, MemoryBucketStore
from mcp_barbican.types import Message, Receive, Scope, Send
from tests.security.asgi import Sent, call, make_scope, ok_app


def limiter(**config: Any) -> RateLimiter:
    return RateLimiter.from_config(RateLimitConfig(**config))


def check(rl: RateLimiter, request: RequestKeys, now: float) -> Decision:
    """`rl.check` run to its end at once: a store in this process never suspends a take."""
    coroutine = rl.check(request, now)
    try:
        coroutine.send(None)
    except StopIteration as done:
        decision: Decision = done.value
        return decision
    coroutine.close()
    raise AssertionError("the bucket store suspended")


def keys(ip: str | None = "10.0.0.1", principal: str | None = None, mcp: str | None = None) -> RequestKeys:
    return RequestKeys(ip=ip, principal=principal, mcp=mcp)


def admitted(rl: RateLimiter, count: int, now: float, request: RequestKeys | None = None) -> int:
    request = request or keys()
    return sum(check(rl, request, now).allowed for _ in range(count))


def minute_spec(rate: int, burst: int | None = None) -> BucketSpec:
    return BucketSpec("m", capacity=burst or rate, per_second=rate / 60, quota=rate, window=60)


# --- bucket arithmetic -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "burst", "takes_at_zero", "at", "level"),
    [
        pytest.param(60, 10, 0, 0.0, 10.0, id="starts-full"),
        pytest.param(60, 10, 10, 0.0, 0.0, id="empty-after-burst"),
        pytest.param(60, 10, 10, 1.0, 1.0, id="one-token-per-second-at-60"),
        pytest.param(60, 10, 10, 0.25, 0.25, id="fractions-kept"),
        pytest.param(60, 10, 10, 3600.0, 10.0, id="never-above-burst"),
        pytest.param(60, 10, 10, -5.0, 0.0, id="clock-stepping-back-refills-nothing"),
        pytest.param(6, None, 6, 5.0, 0.5, id="burst-defaults-to-rate"),
    ],
)
def test_bucket_level(rate: int, burst: int | None, takes_at_zero: int, at: float, level: float) -> None:
    bucket = Bucket(minute_spec(rate, burst), now=0.0)
    for _ in range(takes_at_zero):
        assert bucket.try_take(0.0)
    assert bucket.level(at) == pytest.approx(level)


@pytest.mark.parametrize(
    ("rate", "at", "wait"),
    [
        pytest.param(60, 0.0, 1.0, id="empty-60-per-minute"),
        pytest.param(60, 0.4, 0.6, id="partly-refilled"),
        pytest.param(60, 1.0, 0.0, id="token-there"),
        pytest.param(1, 0.0, 60.0, id="one-per-minute"),
        pytest.param(7, 0.0, 60 / 7, id="odd-rate"),
    ],
)
def test_seconds_until_token(rate: int, at: float, wait: float) -> None:
    bucket = Bucket(minute_spec(rate, 1), now=0.0)
    assert bucket.try_take(0.0)
    assert bucket.seconds_until_token(at) == pytest.approx(wait)


def test_a_refill_that_lands_a_hair_below_a_whole_token_still_counts() -> None:
    bucket = Bucket(minute_spec(7, 1), now=0.0)
    assert bucket.try_take(0.0)
    assert bucket.try_take(60 / 7)
    assert 0.0 <= bucket.level(60 / 7) < 1e-6


def test_an_empty_bucket_refuses_and_is_not_charged_for_it() -> None:
    bucket = Bucket(minute_spec(60, 1), now=0.0)
    assert bucket.try_take(0.0)
    assert not bucket.try_take(0.5)
    assert bucket.level(0.5) == pytest.approx(0.5)
    assert bucket.try_take(1.0)


# --- the decision over every applicable bucket -------------------------------------------------


@pytest.mark.parametrize(
    ("config", "request_keys"),
    [
        pytest.param({"requests_per_minute": 60, "burst_size": 10}, keys(), id="global"),
        pytest.param({"per_ip_requests_per_minute": 60, "per_ip_burst_size": 10}, keys(), id="per-ip"),
        pytest.param(
            {"per_token_requests_per_minute": 60, "per_token_burst_size": 10}, keys(principal="x"), id="per-token"
        ),
        pytest.param({"per_mcp_requests_per_minute": 60, "per_mcp_burst_size": 10}, keys(mcp="m1"), id="per-mcp"),
    ],
)
def test_a_burst_of_30_against_60_per_minute_burst_10_admits_exactly_10(
    config: dict[str, int], request_keys: RequestKeys
) -> None:
    rl = limiter(**config)
    verdicts = [check(rl, request_keys, 100.0).allowed for _ in range(30)]
    assert verdicts == [True] * 10 + [False] * 20


def test_refill_gives_exactly_one_token_per_second_at_60_per_minute() -> None:
    rl = limiter(requests_per_minute=60, burst_size=10)
    assert admitted(rl, 30, 0.0) == 10
    assert admitted(rl, 5, 0.999) == 0
    assert admitted(rl, 5, 1.0) == 1
    assert admitted(rl, 5, 1.5) == 0
    assert admitted(rl, 5, 2.0) == 1


def test_fractional_refill_accumulates_across_frequent_polls() -> None:
    # The guide's sample truncated elapsed seconds and reset its clock on every call, so
    # polling faster than once a second never refilled anything.
    rl = limiter(requests_per_minute=60, burst_size=10)
    assert admitted(rl, 30, 0.0) == 10
    polls = [step * 0.3 for step in range(1, 101)]
    assert sum(check(rl, keys(), t).allowed for t in polls) == 30


def test_refused_requests_do_not_delay_recovery() -> None:
    rl = limiter(requests_per_minute=60, burst_size=1, per_ip_requests_per_minute=60, per_ip_burst_size=1)
    assert admitted(rl, 1, 0.0) == 1
    for step in range(1000):
        assert not check(rl, keys(), step * 0.000999).allowed
    assert check(rl, keys(), 1.0).allowed


def test_a_refused_request_takes_nothing_from_the_buckets_that_had_tokens() -> None:
    rl = limiter(requests_per_minute=100, per_ip_requests_per_minute=1)
    assert admitted(rl, 1, 0.0, keys(ip="a")) == 1
    assert admitted(rl, 50, 0.0, keys(ip="a")) == 0
    assert admitted(rl, 200, 0.0, keys(ip="b")) == 1
    # "a" spent one, "b" one: the global bucket still holds 98 of 100.
    assert sum(check(rl, keys(ip=f"c{i}"), 0.0).allowed for i in range(200)) == 98


def test_the_hour_bucket_binds_when_the_minute_one_does_not() -> None:
    rl = limiter(requests_per_minute=60, requests_per_hour=100)
    assert admitted(rl, 100, 0.0) == 60
    # A minute later the minute bucket is full again; the hour one holds 40 + 60 * 100/3600.
    assert admitted(rl, 100, 60.0) == 41
    refused = check(rl, keys(), 60.0)
    assert not refused.allowed and refused.limit_name == "global-hour"
    assert refused.retry_after == pytest.approx((1 - 2 / 3) * 36)


def test_the_day_bucket_binds_when_the_minute_one_does_not() -> None:
    rl = limiter(requests_per_minute=60, requests_per_day=50)
    assert admitted(rl, 100, 0.0) == 50
    refused = check(rl, keys(), 0.0)
    assert refused.limit_name == "global-day"
    assert refused.retry_after == pytest.approx(86400 / 50)
    assert admitted(rl, 10, 86400 / 50) == 1


def test_an_hour_limit_alone_holds_its_whole_quota_and_refills_per_second() -> None:
    rl = limiter(requests_per_hour=3600)
    assert admitted(rl, 5000, 0.0) == 3600
    assert admitted(rl, 10, 1.0) == 1


# Each request: (time, ip, principal, mcp); expected: "Y" admitted, "N" refused.
Request = tuple[float, str | None, str | None, str | None]


@pytest.mark.parametrize(
    ("config", "requests", "expected"),
    [
        pytest.param(
            {"per_ip_requests_per_minute": 2},
            [(0, "a", None, None)] * 3 + [(0, "b", None, None)] * 2,
            "YYNYY",
            id="ip-a-exhausted-b-allowed",
        ),
        pytest.param(
            {"per_ip_requests_per_minute": 1},
            [(0, None, None, None), (0, None, None, None), (0, "a", None, None)],
            "YNY",
            id="unknown-ips-share-one-bucket",
        ),
        pytest.param(
            {"per_ip_requests_per_minute": 1},
            [(0, "::ffff:10.0.0.1", None, None), (0, "10.0.0.1", None, None)],
            "YY",
            id="keys-are-taken-as-resolved-upstream",
        ),
        pytest.param(
            {"per_token_requests_per_minute": 1},
            [(0, "a", "x", None), (0, "b", "x", None), (0, "a", "y", None)],
            "YNY",
            id="principal-x-vs-y-across-ips",
        ),
        pytest.param(
            {"per_token_requests_per_minute": 1},
            [(0, "a", None, None)] * 3,
            "YYY",
            id="no-principal-no-token-bucket",
        ),
        pytest.param(
            {"per_mcp_requests_per_minute": 1},
            [(0, "a", None, "m1"), (0, "b", None, "m1"), (0, "a", None, "m2")],
            "YNY",
            id="mcp-m1-vs-m2",
        ),
        pytest.param(
            {"requests_per_minute": 3, "per_ip_requests_per_minute": 10},
            [(0, f"10.0.0.{i}", None, None) for i in range(5)],
            "YYYNN",
            id="global-binds-across-ips",
        ),
        pytest.param(
            {"requests_per_minute": 60, "burst_size": 2, "per_token_requests_per_minute": 60},
            [(0, "a", "x", None), (0, "a", "x", None), (0, "a", "x", None), (1, "a", "x", None)],
            "YYNY",
            id="every-bucket-must-hold-a-token",
        ),
        pytest.param(
            {},
            [(0, "a", "x", "m")] * 5,
            "YYYYY",
            id="no-limits-configured",
        ),
    ],
)
def test_limiter_decisions(config: dict[str, int], requests: list[Request], expected: str) -> None:
    rl = limiter(**config)
    verdicts = "".join("Y" if check(rl, RequestKeys(ip, p, m), t).allowed else "N" for t, ip, p, m in requests)
    assert verdicts == expected


@pytest.mark.parametrize(
    ("config", "names_and_shapes"),
    [
        pytest.param(
            {"requests_per_minute": 60, "burst_size": 10, "requests_per_hour": 1000, "requests_per_day": 10000},
            {"global-minute": (10, 1.0), "global-hour": (1000, 1000 / 3600), "global-day": (10000, 10000 / 86400)},
            id="global-minute-hour-day",
        ),
        pytest.param(
            {"per_ip_requests_per_minute": 10, "per_ip_burst_size": 5},
            {"ip-minute": (5, 10 / 60)},
            id="per-ip-with-burst",
        ),
        pytest.param(
            {"per_token_requests_per_minute": 50}, {"token-minute": (50, 50 / 60)}, id="per-token-burst-defaults"
        ),
        pytest.param({"per_mcp_requests_per_minute": 30}, {"mcp-minute": (30, 0.5)}, id="per-mcp"),
        pytest.param({}, {}, id="empty"),
    ],
)
def test_limits_from_config(config: dict[str, int], names_and_shapes: dict[str, tuple[int, float]]) -> None:
    limits = Limits.from_config(RateLimitConfig(**config))
    specs = [*limits.global_, *limits.per_ip, *limits.per_principal, *limits.per_mcp]
    assert {s.name: s.capacity for s in specs} == {name: cap for name, (cap, _) in names_and_shapes.items()}
    assert {s.name: s.per_second for s in specs} == pytest.approx({n: r for n, (_, r) in names_and_shapes.items()})
    assert limits.empty == (not names_and_shapes)


def test_decision_reports_the_tightest_bucket_when_admitted() -> None:
    rl = limiter(requests_per_minute=100, per_ip_requests_per_minute=60, per_ip_burst_size=3)
    decision = check(rl, keys(), 0.0)
    assert (decision.allowed, decision.retry_after, decision.limit_name, decision.remaining) == (
        True,
        0.0,
        "ip-minute",
        2,
    )
    assert decision.reset == pytest.approx(1.0)
    assert decision.policies == ['"global-minute";q=100;w=60', '"ip-minute";q=60;w=60;barbican-burst=3']


def test_decision_names_the_bucket_with_the_longest_wait_when_refused() -> None:
    rl = limiter(requests_per_minute=60, burst_size=1, per_ip_requests_per_minute=6, per_ip_burst_size=1)
    assert check(rl, keys(), 0.0).allowed
    refused = check(rl, keys(), 0.5)
    assert (refused.allowed, refused.limit_name, refused.remaining) == (False, "ip-minute", 0)
    assert refused.retry_after == pytest.approx(9.5) and refused.reset == refused.retry_after


# --- bounded memory ----------------------------------------------------------------------------


def test_a_flood_of_a_million_distinct_keys_stays_at_the_table_cap() -> None:
    store = MemoryBucketStore()
    rl = RateLimiter.from_config(RateLimitConfig(per_ip_requests_per_minute=1), store=store)
    for i in range(1_000_000):
        assert check(rl, RequestKeys(ip=str(i), principal=None, mcp=None), 0.0).allowed
    assert {name: len(table) for name, table in store.tables.items()} == {"ip-minute": DEFAULT_MAX_KEYS}
    ips = store.tables["ip-minute"]
    assert "999999" in ips and str(1_000_000 - DEFAULT_MAX_KEYS) in ips
    assert str(1_000_000 - DEFAULT_MAX_KEYS - 1) not in ips


def test_lru_keeps_recently_seen_keys_and_forgets_the_oldest() -> None:
    store = MemoryBucketStore(max_keys=3)
    rl = RateLimiter.from_config(RateLimitConfig(per_ip_requests_per_minute=1), store=store)
    for ip in ("a", "b", "c"):
        assert check(rl, keys(ip=ip), 0.0).allowed
    assert not check(rl, keys(ip="a"), 0.0).allowed  # "a" is now the most recent
    assert check(rl, keys(ip="d"), 0.0).allowed  # evicts "b", the least recent
    assert list(store.tables["ip-minute"]) == ["c", "a", "d"]
    assert not check(rl, keys(ip="a"), 0.0).allowed
    # The documented trade-off: an evicted key starts full again.
    assert check(rl, keys(ip="b"), 0.0).allowed


def test_max_keys_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_keys"):
        MemoryBucketStore(max_keys=0)


# --- properties --------------------------------------------------------------------------------

steps = st.lists(
    st.tuples(st.floats(min_value=0, max_value=30, allow_nan=False), st.integers(min_value=0, max_value=5)),
    max_size=60,
)


@given(rate=st.integers(1, 600), burst=st.integers(1, 50), plan=steps)
@settings(deadline=None)
def test_level_stays_between_zero_and_capacity(rate: int, burst: int, plan: list[tuple[float, int]]) -> None:
    bucket = Bucket(minute_spec(rate, burst), now=0.0)
    now = 0.0
    for advance, attempts in plan:
        now += advance
        for _ in range(attempts):
            bucket.try_take(now)
            assert 0.0 <= bucket.level(now) <= burst


@given(rate=st.integers(1, 600), burst=st.integers(1, 50), plan=steps)
@settings(deadline=None)
def test_admissions_in_any_window_are_at_most_burst_plus_refill(
    rate: int, burst: int, plan: list[tuple[float, int]]
) -> None:
    rl = limiter(requests_per_minute=rate, burst_size=burst)
    now = 0.0
    times: list[float] = []
    for advance, attempts in plan:
        now += advance
        times += [now for _ in range(attempts) if check(rl, keys(), now).allowed]
    for first in range(len(times)):
        for last in range(first, len(times)):
            window = times[last] - times[first]
            assert last - first + 1 <= burst + rate * window / 60 + 1e-6


@given(
    config=st.fixed_dictionaries(
        {},
        optional={
            "requests_per_minute": st.integers(1, 20),
            "requests_per_hour": st.integers(1, 40),
            "per_ip_requests_per_minute": st.integers(1, 20),
            "per_token_requests_per_minute": st.integers(1, 20),
            "per_mcp_requests_per_minute": st.integers(1, 20),
        },
    ),
    plan=st.lists(
        st.tuples(
            st.floats(min_value=0, max_value=5, allow_nan=False),
            st.sampled_from([None, "a", "b"]),
            st.sampled_from([None, "x", "y"]),
        ),
        max_size=80,
    ),
)
@settings(deadline=None)
def test_a_refused_request_changes_no_bucket(
    config: dict[str, int], plan: list[tuple[float, str | None, str | None]]
) -> None:
    store = MemoryBucketStore()
    rl = RateLimiter.from_config(RateLimitConfig(**config), store=store)
    now = 0.0
    for advance, ip, principal in plan:
        now += advance
        before = {(name, key): b.level(now) for name, t in store.tables.items() for key, b in t.items()}
        if not check(rl, RequestKeys(ip, principal, "m"), now).allowed:
            after = {(name, key): b.level(now) for name, t in store.tables.items() for key, b in t.items()}
            assert {k: v for k, v in after.items() if k in before} == before
            assert all(after[k] == pytest.approx(b.spec.capacity) for k, b in _new(store, before))


def _new(store: MemoryBucketStore, seen: dict[tuple[str, str], float]) -> list[tuple[tuple[str, str], Bucket]]:
    return [((name, key), b) for name, t in store.tables.items() for key, b in t.items() if (name, key) not in seen]


# --- headers and bodies ------------------------------------------------------------------------


def refused(retry_after: float, name: str = "ip-minute") -> Decision:
    return Decision(False, retry_after, name, 0, retry_after, ['"ip-minute";q=60;w=60'])


@pytest.mark.parametrize(
    ("retry_after", "header"),
    [
        pytest.param(0.2, "1", id="at-least-one"),
        pytest.param(1.0, "1", id="whole-second"),
        pytest.param(1.0000001, "2", id="rounded-up"),
        pytest.param(2.5, "3", id="half"),
        pytest.param(1728.0, "1728", id="day-bucket"),
    ],
)
def test_retry_after_is_whole_seconds_rounded_up(retry_after: float, header: str) -> None:
    headers, _ = refusal(refused(retry_after), None)
    assert dict(headers)[b"retry-after"] == header.encode()
    assert int(dict(headers)[b"ratelimit"].split(b";t=")[1]) <= int(header)


@pytest.mark.parametrize(
    ("decision", "expected"),
    [
        pytest.param(
            refused(2.2),
            [(b"ratelimit-policy", b'"ip-minute";q=60;w=60'), (b"ratelimit", b'"ip-minute";r=0;t=3')],
            id="refused",
        ),
        pytest.param(
            Decision(True, 0.0, "global-minute", 7, 0.4, ['"global-minute";q=60;w=60', '"global-day";q=9;w=86400']),
            [
                (b"ratelimit-policy", b'"global-minute";q=60;w=60, "global-day";q=9;w=86400'),
                (b"ratelimit", b'"global-minute";r=7;t=1'),
            ],
            id="admitted-two-policies",
        ),
        pytest.param(Decision(True, 0.0, "", 0, 0.0, []), [], id="unlimited"),
    ],
)
def test_rate_limit_headers(decision: Decision, expected: list[tuple[bytes, bytes]]) -> None:
    assert rate_limit_headers(decision) == expected


@pytest.mark.parametrize(
    ("body", "verdict"),
    [
        pytest.param(b'{"jsonrpc":"2.0","id":7,"method":"tools/call"}', (True, 7), id="int-id"),
        pytest.param(b'{"jsonrpc":"2.0","id":"abc","method":"x"}', (True, "abc"), id="str-id"),
        pytest.param(b'{"jsonrpc":"2.0","method":"notifications/x"}', (True, None), id="notification"),
        pytest.param(b'{"jsonrpc":"2.0","id":true,"method":"x"}', (True, None), id="bool-id-not-echoed"),
        pytest.param(b'{"jsonrpc":"2.0","id":{"a":1},"method":"x"}', (True, None), id="object-id-not-echoed"),
        pytest.param(b'{"jsonrpc":"2.0","id":1.5,"method":"x"}', (True, None), id="fractional-id-not-echoed"),
        pytest.param(b'[{"jsonrpc":"2.0","id":1,"method":"x"}]', (True, None), id="batch"),
        pytest.param(b'{"hello":"world"}', (False, None), id="plain-json"),
        pytest.param(b"[1, 2]", (False, None), id="plain-list"),
        pytest.param(b"not json", (False, None), id="not-json"),
        pytest.param(b"\xff\xfe", (False, None), id="not-utf8"),
    ],
)
def test_jsonrpc_request_id(body: bytes, verdict: tuple[bool, object]) -> None:
    assert jsonrpc_request_id(body) == verdict


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(
            b'{"jsonrpc":"2.0","id":"r1","method":"tools/list"}',
            {
                "jsonrpc": "2.0",
                "id": "r1",
                "error": {
                    "code": RPC_RATE_LIMITED,
                    "message": "rate limit exceeded",
                    "data": {"retryAfterSeconds": 3, "limit": "ip-minute"},
                },
            },
            id="jsonrpc",
        ),
        pytest.param(
            None,
            {
                "error": "rate_limited",
                "message": "too many requests: the ip-minute limit is exhausted; retry in 3 s",
                "retry_after": 3,
            },
            id="plain",
        ),
    ],
)
def test_refusal_body(body: bytes | None, expected: dict[str, Any]) -> None:
    headers, payload = refusal(refused(2.5), body)
    assert orjson.loads(payload) == expected
    assert dict(headers)[b"content-type"] == b"application/json"


# --- the ASGI layer ----------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def layer(counters: SecurityCounters | None = None, clock: Clock | None = None, **config: int) -> RateLimit:
    return RateLimit(
        ok_app,
        limiter=limiter(**config),
        mcp_id="m1",
        counters=counters or SecurityCounters(),
        clock=clock or Clock(),
    )


def scope_from(ip: str | None = "10.0.0.1", method: str = "POST", principal: Principal | None = None) -> Scope:
    extra: dict[str, Any] = {CLIENT_IP_KEY: ip}
    if principal is not None:
        extra[PRINCIPAL_KEY] = principal
    return make_scope(method, "/mcp/m1", [("content-type", "application/json")], **extra)


RPC = b'{"jsonrpc":"2.0","id":42,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hi"}}}'


@pytest.mark.anyio
async def test_layer_refuses_with_429_and_a_jsonrpc_error_echoing_the_id() -> None:
    counters = SecurityCounters()
    app = layer(counters, per_ip_requests_per_minute=60, per_ip_burst_size=1)
    assert (await call(app, scope_from(), RPC)).status == 200
    sent = await call(app, scope_from(), RPC)
    assert sent.status == 429
    assert sent.headers["retry-after"] == "1"
    assert sent.headers["ratelimit-policy"] == '"ip-minute";q=60;w=60;barbican-burst=1'
    assert sent.headers["ratelimit"] == '"ip-minute";r=0;t=1'
    assert sent.headers["content-type"] == "application/json"
    assert sent.json() == {
        "jsonrpc": "2.0",
        "id": 42,
        "error": {
            "code": -32029,
            "message": "rate limit exceeded",
            "data": {"retryAfterSeconds": 1, "limit": "ip-minute"},
        },
    }
    assert (counters.rate_limit_exceeded, counters.security_violations) == (1, 1)
    assert counters.last_violation is not None


@pytest.mark.anyio
async def test_layer_refuses_a_plain_request_with_a_json_error() -> None:
    app = layer(requests_per_minute=1)
    assert (await call(app, scope_from(method="GET"))).status == 200
    sent = await call(app, scope_from(method="GET"))
    assert sent.status == 429
    assert sent.headers["retry-after"] == "60"
    assert sent.json() == {
        "error": "rate_limited",
        "message": "too many requests: the global-minute limit is exhausted; retry in 60 s",
        "retry_after": 60,
    }


@pytest.mark.anyio
async def test_layer_reads_a_chunked_refused_body_to_find_the_id() -> None:
    app = layer(requests_per_minute=1)
    assert (await call(app, scope_from(), RPC)).status == 200
    chunks = [RPC[:10], RPC[10:50], RPC[50:]]
    sent = await call_chunked(app, scope_from(), chunks)
    assert sent.status == 429 and sent.json()["id"] == 42


@pytest.mark.anyio
async def test_layer_leaves_the_id_null_for_a_body_too_large_to_peek() -> None:
    app = layer(requests_per_minute=1)
    assert (await call(app, scope_from(), RPC)).status == 200
    huge = b'{"jsonrpc":"2.0","id":1,"method":"x","params":{"pad":"' + b"x" * 300_000 + b'"}}'
    sent = await call(app, scope_from(), huge)
    assert sent.status == 429
    assert sent.json()["error"] == "rate_limited"


@pytest.mark.anyio
async def test_layer_hands_an_admitted_body_to_the_app_intact_without_extra_headers() -> None:
    app = RateLimit(
        whole_body_app,
        limiter=limiter(requests_per_minute=60, burst_size=5),
        mcp_id="m1",
        counters=SecurityCounters(),
        clock=Clock(),
    )
    sent = await call_chunked(app, scope_from(), [RPC[:7], RPC[7:]])
    assert sent.status == 200
    assert sent.body == RPC
    assert "ratelimit" not in sent.headers and "ratelimit-policy" not in sent.headers
    assert sent.headers["content-type"] == "text/plain"


@pytest.mark.anyio
async def test_layer_recovers_with_the_injected_clock() -> None:
    clock = Clock()
    app = layer(clock=clock, requests_per_minute=60, burst_size=1)
    assert (await call(app, scope_from(), RPC)).status == 200
    assert (await call(app, scope_from(), RPC)).status == 429
    clock.now += 1.0
    assert (await call(app, scope_from(), RPC)).status == 200


@pytest.mark.anyio
async def test_layer_keys_on_the_principal_and_the_client_ip_from_the_scope() -> None:
    app = layer(per_token_requests_per_minute=1, per_ip_requests_per_minute=10)
    alice, bob = Principal(id="alice", kind="token"), Principal(id="bob", kind="token")
    assert (await call(app, scope_from(ip="a", principal=alice), RPC)).status == 200
    assert (await call(app, scope_from(ip="b", principal=alice), RPC)).status == 429
    assert (await call(app, scope_from(ip="a", principal=bob), RPC)).status == 200


@pytest.mark.anyio
async def test_layer_without_limits_passes_everything_untouched() -> None:
    app = layer()
    for _ in range(100):
        sent = await call(app, scope_from(), RPC)
        assert sent.status == 200 and "ratelimit" not in sent.headers


@pytest.mark.anyio
async def test_layer_passes_non_http_scopes_through() -> None:
    seen: list[str] = []

    async def lifespan_app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope["type"])

    app = RateLimit(
        lifespan_app, limiter=limiter(requests_per_minute=1), mcp_id=None, counters=SecurityCounters(), clock=Clock()
    )
    for _ in range(3):
        await app({"type": "lifespan"}, _never_receive, _discard)
    assert seen == ["lifespan"] * 3


async def _never_receive() -> Message:
    raise AssertionError("nothing should be received")


async def _discard(message: Message) -> None:
    pass


async def whole_body_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers 200 with every chunk of the request body it received."""
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"".join(chunks)})


async def call_chunked(app: RateLimit, scope: Scope, chunks: list[bytes]) -> Sent:
    """Like `call`, with the body in several `http.request` messages."""
    pending = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
    replay = iter(pending)

    async def receive() -> Message:
        return next(replay, {"type": "http.disconnect"})

    sent = Sent()

    async def send(message: Message) -> None:
        sent.messages.append(message)

    await app(scope, receive, send)
    return sent


class SharedStore:
    """A bucket store outside this process, as the limiter sees one: no `local` table, every take awaited."""

    def __init__(self) -> None:
        self.inner = MemoryBucketStore()
        self.takes = 0

    @property
    def local(self) -> MemoryBucketStore | None:
        return None

    def take_held(self, refs: Sequence[BucketRef]) -> bool:
        return False  # holds nothing ahead of need: every take is awaited

    async def take(self, refs: Sequence[BucketRef], now: float) -> tuple[bool, list[float]]:
        self.takes += 1
        return self.inner.take_all(refs, now)


LIMITS = {
    "requests_per_minute": 30,
    "burst_size": 5,
    "requests_per_hour": 200,
    "per_ip_requests_per_minute": 12,
    "per_ip_burst_size": 3,
    "per_token_requests_per_minute": 6,
    "per_token_burst_size": 2,
    "per_mcp_requests_per_minute": 20,
}


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 3), st.sampled_from([None, "token:a"]), st.floats(0, 3)),
        min_size=1,
        max_size=60,
    )
)
def test_the_fast_path_decides_exactly_as_a_store_outside_the_process(
    steps: list[tuple[int, str | None, float]],
) -> None:
    config = RateLimitConfig(**LIMITS)
    cached = RateLimiter.from_config(config)
    shared = RateLimiter.from_config(config, store=SharedStore())
    now = 1000.0
    for ip, principal, dt in steps:
        now += dt
        request = keys(f"10.0.0.{ip}", principal, "demo")
        admitted = cached.admits(*request, now)
        assert not shared.admits(*request, now), "a store outside the process is never taken from synchronously"
        decision = check(shared, request, now)  # what the RateLimit layer then asks
        assert decision.allowed == admitted
        if not admitted:  # a refusal takes nothing, so asking again tells the same levels
            assert check(cached, request, now) == decision


@pytest.mark.anyio
async def test_the_layer_admits_through_a_store_outside_the_process() -> None:
    """admits() is False for such a store: the layer awaits the store's take and passes what it admits."""
    store = SharedStore()
    limiter = RateLimiter.from_config(RateLimitConfig(per_ip_requests_per_minute=60, per_ip_burst_size=2), store=store)
    app = RateLimit(ok_app, limiter=limiter, mcp_id="m", counters=SecurityCounters(), clock=lambda: 100.0)
    statuses = [(await call(app, scope_from(), b"{}")).status for _ in range(3)]
    assert statuses == [200, 200, 429]
    assert store.takes == 3


def test_a_forgotten_bucket_is_never_used_from_the_cache() -> None:
    tight = RateLimiter.from_config(RateLimitConfig(per_ip_requests_per_minute=1, per_ip_burst_size=2), max_keys=2)
    now = 50.0
    assert [tight.admits("10.0.0.1", None, None, now) for _ in range(3)] == [True, True, False]
    tight.admits("10.0.0.2", None, None, now)
    tight.admits("10.0.0.3", None, None, now)  # the table holds 2 keys: 10.0.0.1 is forgotten
    assert tight.admits("10.0.0.1", None, None, now), "a forgotten key starts full, cache or not"


def test_the_cache_is_bounded() -> None:
    many = limiter(per_ip_requests_per_minute=10**6)
    for i in range(5000):
        many.admits(f"10.1.{i // 256}.{i % 256}", None, None, 1.0)
    assert len(many._resolved) <= 4096


@pytest.mark.parametrize(
    ("prefix", "requests", "expected"),
    [
        pytest.param(64, ["2001:db8:0:1::1", "2001:db8:0:1::2", "2001:db8:0:1:ffff::3"], "YYN", id="one-64-one-bucket"),
        pytest.param(64, ["2001:db8:0:1::1", "2001:db8:0:1::2", "2001:db8:0:2::1"], "YYY", id="another-64-apart"),
        pytest.param(128, ["2001:db8:0:1::1", "2001:db8:0:1::2", "2001:db8:0:1::3"], "YYY", id="per-address-at-128"),
        pytest.param(48, ["2001:db8:0:1::1", "2001:db8:0:2::1", "2001:db8:0:3::1"], "YYN", id="one-48-one-bucket"),
        pytest.param(64, ["10.0.0.1", "10.0.0.2", "10.0.0.1", "10.0.0.1"], "YYYN", id="ipv4-per-address"),
        pytest.param(64, [None, None, None], "YYN", id="unknown-shares-one"),
    ],
)
def test_per_ip_buckets_group_ipv6_by_prefix(prefix: int, requests: list[str | None], expected: str) -> None:
    rl = RateLimiter.from_config(RateLimitConfig(per_ip_requests_per_minute=1, per_ip_burst_size=2), ipv6_prefix=prefix)
    fast = "".join("Y" if rl.admits(ip, None, None, 0.0) else "N" for ip in requests)
    rl = RateLimiter.from_config(RateLimitConfig(per_ip_requests_per_minute=1, per_ip_burst_size=2), ipv6_prefix=prefix)
    full = "".join("Y" if check(rl, keys(ip), 0.0).allowed else "N" for ip in requests)
    assert fast == full == expected


def test_the_per_ip_key_is_the_masked_network() -> None:
    rl = RateLimiter.from_config(RateLimitConfig(per_ip_requests_per_minute=1), ipv6_prefix=64)
    assert [ref.key for ref in rl.refs(keys("2001:db8:0:1::9"))] == ["2001:db8:0:1::/64"]
    assert [ref.key for ref in rl.refs(keys("::ffff:10.0.0.1"))] == ["::ffff:10.0.0.1"], "as resolved upstream"
    assert rl.ip_key(None) == UNKNOWN_CLIENT


@pytest.mark.parametrize("prefix", [0, 129])
def test_the_limiter_checks_its_prefix(prefix: int) -> None:
    with pytest.raises(ValueError, match="ipv6_prefix"):
        RateLimiter.from_config(RateLimitConfig(per_ip_requests_per_minute=1), ipv6_prefix=prefix)
