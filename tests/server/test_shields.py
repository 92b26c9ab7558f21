"""Shields: the per-MCP limiters take their buckets from the state store, by a stable name."""

from __future__ import annotations

from typing import Any

import pytest

from mcp_barbican.config import ProxyConfig, validate_model
from mcp_barbican.security.pipeline import Pipeline
from mcp_barbican.security.ratelimit import RateLimit
from mcp_barbican.server.shields import Shields
from mcp_barbican.storage.memory import MemoryStorage
from tests.security.asgi import ok_app
from tests.security.test_pipeline_policies import request

RATE = {"per_ip_requests_per_minute": 1, "per_ip_burst_size": 3}


def config(rate: dict[str, Any], *, own: bool = False) -> ProxyConfig:
    mcp: dict[str, Any] = {"id": "m", "command": "true", "auth": {"type": "none"}}
    security = {"rate_limit": rate}
    if own:
        mcp["security"] = security
    return validate_model(ProxyConfig, {"server": {"security": security}, "mcps": [mcp]})


@pytest.mark.anyio
@pytest.mark.parametrize("own", [False, True], ids=["server-default", "own-block"])
async def test_two_shields_on_one_store_share_the_buckets_as_replicas_will(own: bool) -> None:
    store = MemoryStorage()
    first, second = Shields(config(RATE, own=own), store=store), Shields(config(RATE, own=own), store=store)
    apps = [s.protect(ok_app, s.config.mcps[0]).app for s in (first, second)]
    statuses = [(await request(apps[i % 2], "10.0.0.1", None))[0] for i in range(4)]
    assert statuses == [200, 200, 200, 429], "one burst of 3 across both"


@pytest.mark.anyio
async def test_changed_limits_get_fresh_buckets_and_unchanged_ones_keep_theirs() -> None:
    store = MemoryStorage()
    before = Shields(config(RATE), store=store)
    app = before.protect(ok_app, before.config.mcps[0]).app
    assert [(await request(app, "10.0.0.1", None))[0] for _ in range(4)] == [200, 200, 200, 429]

    same = Shields(config(RATE), store=store)
    assert (await request(same.protect(ok_app, same.config.mcps[0]).app, "10.0.0.1", None))[0] == 429
    changed = Shields(config({**RATE, "per_ip_burst_size": 5}), store=store)
    assert (await request(changed.protect(ok_app, changed.config.mcps[0]).app, "10.0.0.1", None))[0] == 200


def test_mcps_on_the_server_default_share_its_limiter_and_an_own_block_is_apart() -> None:
    none = {"type": "none"}
    mcps = [
        {"id": "a", "command": "true", "auth": none},
        {"id": "b", "command": "true", "auth": none},
        {"id": "c", "command": "true", "auth": none, "security": {"rate_limit": RATE}},
    ]
    shields = Shields(validate_model(ProxyConfig, {"server": {"security": {"rate_limit": RATE}}, "mcps": mcps}))
    limiters = []
    for mcp in shields.config.mcps:
        app = shields.protect(ok_app, mcp).app
        assert isinstance(app, Pipeline)
        policy = app.policy("rate_limit")
        assert isinstance(policy, RateLimit)
        limiters.append(policy.limiter)
    assert limiters[0] is limiters[1], "the server default: one limiter, one set of global buckets"
    assert limiters[2] is not limiters[0], "same settings, another owner: its own buckets"
