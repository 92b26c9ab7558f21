"""How the pipeline is built: every policy in its slot, none the fast path can skip, none it cannot run."""

from __future__ import annotations

import functools
from typing import Any

import pytest

from mcp_barbican import jsonrpc
from mcp_barbican.asgi import CLIENT_IP_KEY, json_error
from mcp_barbican.config import ProxyConfig, validate_model
from mcp_barbican.security.authorization import ACCESS_KEY, AuthorizationPolicy
from mcp_barbican.security.limits import header_bytes
from mcp_barbican.security.pipeline import ORDER, Head, Pipeline, Policy, PolicyFactory
from mcp_barbican.security.principal import Principal
from mcp_barbican.server.shields import Shields
from mcp_barbican.types import ASGIApp, Receive, Scope, Send
from tests.security.asgi import call, make_scope, ok_app
from tests.security.test_pipeline import CONFIG, TOKENS

GOOD = "Bearer " + TOKENS["good"]


class Tally(Policy):
    """A policy added to the empty `authorization` slot: refuses one address, counts both paths."""

    slot = "authorization"

    def __init__(self, app: ASGIApp, *, refused: str, seen: dict[str, int]) -> None:
        self.app = app
        self.refused = refused
        self.seen = seen

    def fast(self, scope: Scope, head: Head) -> bool:
        self.seen["fast"] += 1
        return head.ip != self.refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.seen["layer"] += 1
        if scope[CLIENT_IP_KEY] == self.refused:
            await json_error(send, 403, "forbidden", "refused by the added policy")
            return
        await self.app(scope, receive, send)


def shields_for(config: dict[str, Any] = CONFIG) -> tuple[Shields, list[PolicyFactory]]:
    shields = Shields(validate_model(ProxyConfig, config))
    mcp = shields.config.mcps[0]
    authenticator = shields.authenticator(shields.config.effective_auth(mcp), mcp)
    return shields, shields.policies(mcp, authenticator, shields.config)


async def request(app: ASGIApp, ip: str, credential: str | None = GOOD, body: bytes = b"{}") -> tuple[int, bytes]:
    headers = [("host", "127.0.0.1:6001"), ("content-type", "application/json")]
    headers += [("accept", "application/json, text/event-stream"), ("mcp-session-id", "nope")]
    if credential is not None:
        headers.append(("authorization", credential))
    scope = make_scope("POST", "/mcp/m", headers, client=(ip, 40000))
    scope[CLIENT_IP_KEY] = ip
    sent = await call(app, scope, body)
    return sent.status, sent.body


@pytest.mark.anyio
async def test_a_policy_added_to_the_pipeline_runs_on_the_fast_path() -> None:
    _, policies = shields_for()
    seen = {"fast": 0, "layer": 0}
    pipeline = Pipeline(ok_app, [*policies, functools.partial(Tally, refused="10.0.0.2", seen=seen)])
    assert [policy.slot for policy in pipeline.policies] == [s for s in ORDER if s != "integrity"]
    assert pipeline.fast_path

    assert (await request(pipeline, "127.0.0.1"))[0] == 200
    assert seen == {"fast": 0, "layer": 1}, "a credential seen for the first time goes through the layers"
    assert [(await request(pipeline, "127.0.0.1"))[0] for _ in range(2)] == [200, 200]
    assert seen == {"fast": 2, "layer": 1}, "a remembered credential takes the fast path, which runs the policy"

    # The added policy refuses on the fast path too: the request goes to the layers, which answer.
    # The rate limit (burst 4 per address) sits before it: each refused request spends one token
    # in the layers, and none on the fast path, which runs the one policy that takes last.
    statuses = [(await request(pipeline, "10.0.0.2"))[0] for _ in range(5)]
    assert statuses == [403, 403, 403, 403, 429]
    assert seen == {"fast": 6, "layer": 5}


class NoFastCheck(Policy):
    slot = "authorization"

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope, receive, send)


class Taker(Tally):
    slot = "integrity"
    fast_takes = True


class Nowhere(Tally):
    slot = "somewhere"


def plain_layer(app: ASGIApp) -> ASGIApp:
    return app


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        pytest.param([plain_layer], "builds no pipeline Policy", id="a-plain-asgi-layer"),
        pytest.param([NoFastCheck], "abstract", id="a-policy-without-a-fast-check"),
        pytest.param([functools.partial(Nowhere, refused="", seen={})], "slot in ORDER", id="an-unknown-slot"),
        pytest.param([functools.partial(Tally, refused="", seen={})] * 2, "one pipeline slot", id="one-slot-twice"),
        pytest.param([functools.partial(Taker, refused="", seen={})], "more than one policy takes", id="two-takers"),
    ],
)
def test_a_policy_the_fast_path_cannot_run_makes_construction_fail(extra: list[Any], error: str) -> None:
    _, policies = shields_for()
    with pytest.raises(TypeError, match=error):
        Pipeline(ok_app, [*policies, *extra])


def test_the_slots_decide_the_order_whatever_order_the_policies_come_in() -> None:
    _, policies = shields_for()
    forward = Pipeline(ok_app, policies)
    backward = Pipeline(ok_app, list(reversed(policies)))
    expected = ["addresses", "cors", "authentication", "rate_limit", "input_limits"]
    assert [p.slot for p in forward.policies] == [p.slot for p in backward.policies] == expected
    layer: Any = backward.layers
    for policy in backward.policies:
        assert layer is policy, "each layer wraps the next one in order"
        layer = policy.app
    assert layer is ok_app


@pytest.mark.anyio
async def test_input_limits_decide_alike_on_both_paths_and_count_what_the_upstream_gets() -> None:
    limit = 400
    security = {**CONFIG["mcps"][0]["security"], "limits": {"max_header_size": limit}, "rate_limit": None}
    config = {**CONFIG, "mcps": [{**CONFIG["mcps"][0], "security": security}]}
    _, policies = shields_for(config)
    reached: list[int] = []

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        reached.append(header_bytes(scope["headers"]))
        await ok_app(scope, receive, send)

    pipeline = Pipeline(endpoint, policies)
    seen = {"fast": 0, "layer": 0}
    counting = Pipeline(endpoint, [*policies, functools.partial(Tally, refused="", seen=seen)])

    async def sized(app: ASGIApp, total: int) -> int:
        headers = [("host", "127.0.0.1:6001"), ("authorization", GOOD), ("x-pad", "")]
        scope = make_scope("POST", "/mcp/m", headers, client=("127.0.0.1", 40000))
        scope[CLIENT_IP_KEY] = "127.0.0.1"
        without_credential = header_bytes([h for h in scope["headers"] if h[0] != b"authorization"])
        scope["headers"] = [
            (k, b"p" * (total - without_credential) if k == b"x-pad" else v) for k, v in scope["headers"]
        ]
        return (await call(app, scope, b"{}")).status

    # The credential is not counted: it never reaches the upstream. Twice each: the layers, then the fast path.
    assert [await sized(pipeline, limit) for _ in range(2)] == [200, 200]
    assert reached == [limit, limit]
    assert [await sized(pipeline, limit + 1) for _ in range(2)] == [431, 431]
    assert [await sized(counting, limit) for _ in range(2)] == [200, 200]
    assert seen == {"fast": 1, "layer": 1}, "the second request at the limit took the fast path"


@pytest.mark.anyio
async def test_the_authorization_policy_runs_on_both_paths() -> None:
    idle = "idle-token-0123456789"
    auth = CONFIG["mcps"][0]["auth"]
    mcp = {
        **CONFIG["mcps"][0],
        "auth": {**auth, "tokens": [*auth["tokens"], {"id": "idle", "token": idle, "roles": ["idle"]}]},
        "authorization": {"policies": [{"principals": ["token:good"], "allow": {"tools": ["echo"]}}]},
        "security": {"rate_limit": None},
    }
    shields, policies = shields_for({**CONFIG, "mcps": [mcp]})
    handed: list[Any] = []

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        handed.append(scope.get(ACCESS_KEY))
        await ok_app(scope, receive, send)

    pipeline = Pipeline(endpoint, policies)
    policy = pipeline.policy("authorization")
    assert isinstance(policy, AuthorizationPolicy)
    asked: list[str] = []
    decide_anything = policy.authorizer.allows_anything

    def spy(principal: Principal) -> bool:
        asked.append(principal.id)
        return decide_anything(principal)

    policy.authorizer.allows_anything = spy  # type: ignore[method-assign]
    assert [(await request(pipeline, "127.0.0.1"))[0] for _ in range(2)] == [200, 200]
    assert asked == ["token:good", "token:good"], "the layer, then the fast path, asked the policy"
    assert [access.principal.id for access in handed] == ["token:good", "token:good"]
    assert handed[1].visible("tools", "echo") and not handed[1].visible("tools", "add")

    for _ in range(2):  # a caller allowed nothing: 403 on either path, counted each time
        status, body = await request(pipeline, "127.0.0.1", credential="Bearer " + idle)
        assert status == 403
        assert jsonrpc.loads(body)["error"] == "insufficient_scope"
    assert asked[2:] == ["token:idle"] * 3, "the layer; then the fast path, which refused, and the layer again"
    assert len(handed) == 2
    assert shields.counters.authorization_denied == 2


@pytest.mark.anyio
@pytest.mark.parametrize(("principals", "status"), [(["anonymous"], 200), (["token:someone"], 403)])
async def test_an_unauthenticated_caller_is_the_principal_anonymous(principals: list[str], status: int) -> None:
    policy = {"policies": [{"principals": principals, "allow": {"tools": ["echo"]}}]}
    mcp = {"id": "m", "command": "true", "auth": {"type": "none"}, "authorization": policy}
    shields = Shields(validate_model(ProxyConfig, {"server": {"storage": {"type": "memory"}}, "mcps": [mcp]}))
    handed: list[Any] = []

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        handed.append(scope[ACCESS_KEY].principal.id)
        await ok_app(scope, receive, send)

    pipeline = Pipeline(endpoint, shields.policies(shields.config.mcps[0], None, shields.config))
    assert (await request(pipeline, "127.0.0.1", credential=None))[0] == status
    assert handed == (["anonymous"] if status == 200 else [])
