"""Per-layer cost of the security stack, in microseconds per request, measured in-process.

Each layer wraps a no-op app and handles the same representative MCP POST (a Bearer token,
an Origin, a JSON-RPC body) many times on one event loop; the table is the seed guide's
"Security Performance Impact" card, measured instead of guessed. The last rows compare the
per-MCP policies (IP list, CORS, authentication, rate limit, input limits) one after another
with the same policies through the pipeline's fast path, for an agent's request (no Origin)
with a credential seen before. The authorization rows time the decision itself (10 rules, 2 roles):
the policy's check per request, and the per-call decision with and without a `when` on arguments. Run:

    python bench/layers.py [--requests 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from mcp_barbican.config import AuthorizationConfig, CorsConfig, HeadersConfig, LimitsConfig, RateLimitConfig
from mcp_barbican.security.addresses import IpSet
from mcp_barbican.security.auth import Authenticate, StaticToken, StaticTokens, digest
from mcp_barbican.security.authorization import Access, AuthorizationPolicy, Authorizer
from mcp_barbican.security.client_ip import ClientAddress, TrustedProxies
from mcp_barbican.security.cors import CORS
from mcp_barbican.security.counters import SecurityCounters
from mcp_barbican.security.headers import SecurityHeaders
from mcp_barbican.security.hosts import AllowedHosts, HostOriginGuard
from mcp_barbican.security.ipfilter import IpFilter
from mcp_barbican.security.iprules import DynamicRules
from mcp_barbican.security.limits import InputLimits
from mcp_barbican.security.pipeline import Pipeline
from mcp_barbican.security.principal import Principal
from mcp_barbican.security.ratelimit import RateLimit, RateLimiter
from mcp_barbican.types import ASGIApp, Message, Receive, Scope, Send

TOKEN = "bench-token-0123456789abcdef"
BODY = b'{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"message":"hi"}}}'
HEADERS = [
    (b"host", b"127.0.0.1:6001"),
    (b"origin", b"https://app.example.com"),
    (b"authorization", f"Bearer {TOKEN}".encode()),
    (b"content-type", b"application/json"),
    (b"accept", b"application/json, text/event-stream"),
    (b"mcp-protocol-version", b"2025-11-25"),
]


async def noop(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b"{}"})


def thousand_networks() -> list[str]:
    return [f"203.0.{i // 256}.{i % 256}/32" if i % 2 else f"198.{i % 200}.{i // 200}.0/24" for i in range(1000)]


def layers(counters: SecurityCounters) -> dict[str, Callable[[ASGIApp], ASGIApp]]:
    tokens = StaticTokens([StaticToken("bench", digest(TOKEN), roles=("reader", "writer"))])
    limiter = RateLimiter.from_config(
        RateLimitConfig(
            requests_per_minute=10**9, per_ip_requests_per_minute=10**9, per_token_requests_per_minute=10**9
        )
    )
    blacklist = IpSet.build(thousand_networks())
    return {
        "client address": lambda app: ClientAddress(app, trusted=TrustedProxies.build(())),
        "host/origin guard": lambda app: HostOriginGuard(
            app, allowed=AllowedHosts.build("127.0.0.1", ()), origin_allowed=lambda scope, origin: True
        ),
        "IP filter (1000 entries)": functools.partial(
            IpFilter, whitelist=None, blacklist=blacklist, dynamic=DynamicRules(), counters=counters
        ),
        "security headers": lambda app: SecurityHeaders(app, config=HeadersConfig()),
        "CORS": functools.partial(
            CORS, config=CorsConfig(allowed_origins=("https://app.example.com",)), counters=counters
        ),
        "auth (static token)": functools.partial(
            Authenticate,
            authenticator=tokens,
            header="Authorization",
            prefix="Bearer",
            mcp_id="bench",
            counters=counters,
            challenge=lambda failure, scope: "Bearer",
        ),
        "rate limit (non-binding)": functools.partial(RateLimit, limiter=limiter, mcp_id="bench", counters=counters),
        "input limits (header bytes)": functools.partial(InputLimits, limits=LimitsConfig(), counters=counters),
        "authorization (10 rules, 2 roles)": functools.partial(
            AuthorizationPolicy, authorizer=scenario_authorizer(), counters=counters
        ),
    }


def scenario_authorizer() -> Authorizer:
    scenario = yaml.safe_load(AUTHORIZATION.read_text())["authorization"]
    return Authorizer(AuthorizationConfig.model_validate(scenario), "bench")


PER_MCP = (
    "IP filter (1000 entries)",
    "CORS",
    "auth (static token)",
    "rate limit (non-binding)",
    "input limits (header bytes)",
)


async def per_request_us(app: ASGIApp, requests: int, *, origin: bool = True) -> float:
    async def receive() -> Message:
        return {"type": "http.request", "body": BODY, "more_body": False}

    async def send(message: Message) -> None:
        return None

    def scope() -> dict[str, Any]:
        return {
            "type": "http",
            "method": "POST",
            "path": "/mcp/bench",
            "scheme": "http",
            "headers": [h for h in HEADERS if origin or h[0] != b"origin"],
            "client": ("127.0.0.1", 50000),
            "query_string": b"",
        }

    for _ in range(500):
        await app(scope(), receive, send)
    start = time.perf_counter()
    for _ in range(requests):
        await app(scope(), receive, send)
    return (time.perf_counter() - start) / requests * 1e6


async def main(requests: int) -> None:
    counters = SecurityCounters()
    factories = layers(counters)
    base = await per_request_us(noop, requests)
    rows = []
    for name, wrap in factories.items():
        rows.append((name, await per_request_us(wrap(noop), requests) - base))
    stacked: ASGIApp = noop
    for wrap in reversed(list(factories.values())):
        stacked = wrap(stacked)
    total = await per_request_us(stacked, requests) - base
    print(f"| layer | added µs per request ({requests} requests, one core) |")
    print("|---|---|")
    for name, added in rows:
        print(f"| {name} | {added:.1f} |")
    print(f"| **all layers together** | **{total:.1f}** |")
    chained, fast = await per_mcp(counters, requests)
    print(f"| per-MCP policies one after another, agent request (no Origin) | {chained:.1f} |")
    print(f"| the same policies through the pipeline's fast path | {fast:.1f} |")
    _, fast_authz = await per_mcp(counters, requests, (*PER_MCP, "authorization (10 rules, 2 roles)"))
    print(f"| the same with authorization, fast path | {fast_authz:.1f} |")
    for name, cost in authorization_us(requests).items():
        print(f"| {name} | {cost:.2f} |")


#: The authorization scenario: 10 rules over 2 roles, as bench/run.py serves it.
AUTHORIZATION = Path(__file__).parent / "configs" / "authorization.yaml"


def authorization_us(requests: int) -> dict[str, float]:
    """µs for the policy's per-request check and for one tools/call decision (cached; and `when` on args)."""
    authorizer = scenario_authorizer()
    access = Access(authorizer, Principal("token:bench", "token", roles=("reader", "writer")))
    cached = {"name": "echo", "arguments": {"message": "hi"}}
    conditional = {"name": "sampleLLM", "arguments": {"prompt": "hi", "maxTokens": 100}}
    rows = {}
    for name, step in (
        (
            "authorization: policy check per request (10 rules, 2 roles)",
            lambda: authorizer.allows_anything(access.principal),
        ),
        ("authorization: tools/call decision, cached", lambda: access.permits("tools/call", cached)),
        (
            "authorization: tools/call decision, `when` on arguments (CEL)",
            lambda: access.permits("tools/call", conditional),
        ),
    ):
        for _ in range(500):
            step()
        start = time.perf_counter()
        for _ in range(requests):
            step()
        rows[name] = (time.perf_counter() - start) / requests * 1e6
    return rows


async def per_mcp(counters: SecurityCounters, requests: int, names: tuple[str, ...] = PER_MCP) -> tuple[float, float]:
    """What the per-MCP policies add chained, and through the pipeline's fast path, to a request without Origin.

    Both sit behind the client-address layer (the fast path reads the address it resolves),
    whose own cost is taken off.
    """
    trusted = TrustedProxies.build(())
    factories = layers(counters)
    pipeline = Pipeline(noop, [factories[name] for name in names])
    base = await per_request_us(ClientAddress(noop, trusted=trusted), requests, origin=False)
    chained = await per_request_us(ClientAddress(pipeline.layers, trusted=trusted), requests, origin=False)
    fast = await per_request_us(ClientAddress(pipeline, trusted=trusted), requests, origin=False)
    return chained - base, fast - base


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    asyncio.run(main(parser.parse_args().requests))
