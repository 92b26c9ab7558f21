"""Client address resolution: the socket peer unless a trusted proxy vouches for X-Forwarded-For."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from mcp_barbican.asgi import CLIENT_IP_KEY
from mcp_barbican.security.client_ip import ClientAddress, TrustedProxies, parse_hop, resolve_client_ip
from mcp_barbican.types import Receive, Scope, Send
from tests.security.asgi import call, make_scope

NO_PROXIES = TrustedProxies.build([])
LOCAL_PROXIES = TrustedProxies.build(["10.0.0.0/8", "fd00::/8"])
EDGE = TrustedProxies.build(["10.0.0.0/8"])


@pytest.mark.parametrize(
    ("peer", "xff", "trusted", "client"),
    [
        pytest.param("198.51.100.7", [], NO_PROXIES, "198.51.100.7", id="no-xff"),
        pytest.param("198.51.100.7", ["1.2.3.4"], NO_PROXIES, "198.51.100.7", id="untrusted-peer-spoofed-xff"),
        pytest.param("198.51.100.7", ["1.2.3.4"], LOCAL_PROXIES, "198.51.100.7", id="peer-not-in-trusted-list"),
        pytest.param("10.0.0.2", [], LOCAL_PROXIES, "10.0.0.2", id="trusted-peer-empty-chain"),
        pytest.param("10.0.0.2", [""], LOCAL_PROXIES, "10.0.0.2", id="trusted-peer-blank-header"),
        pytest.param("10.0.0.2", ["203.0.113.9"], LOCAL_PROXIES, "203.0.113.9", id="one-trusted-hop"),
        pytest.param("10.0.0.2", ["203.0.113.9, 10.0.0.3"], LOCAL_PROXIES, "203.0.113.9", id="two-trusted-hops"),
        pytest.param(
            "10.0.0.2", ["6.6.6.6, 203.0.113.9, 10.0.0.3"], LOCAL_PROXIES, "203.0.113.9", id="spoofed-leftmost"
        ),
        pytest.param(
            "10.0.0.2", ["10.9.9.9, 6.6.6.6, 203.0.113.9"], LOCAL_PROXIES, "203.0.113.9", id="spoofed-trusted-leftmost"
        ),
        pytest.param("10.0.0.2", ["10.0.0.5, 10.0.0.4"], LOCAL_PROXIES, "10.0.0.2", id="all-trusted"),
        pytest.param("10.0.0.2", ["unknown"], LOCAL_PROXIES, "10.0.0.2", id="unknown"),
        pytest.param("10.0.0.2", ["not an ip"], LOCAL_PROXIES, "10.0.0.2", id="garbage"),
        pytest.param("10.0.0.2", ["1.2.3.4, unknown"], LOCAL_PROXIES, "10.0.0.2", id="garbage-stops-the-walk"),
        pytest.param("10.0.0.2", ["garbage, 1.2.3.4"], LOCAL_PROXIES, "1.2.3.4", id="garbage-left-of-client"),
        pytest.param("10.0.0.2", ["1.2.3.4, , 10.0.0.3,"], LOCAL_PROXIES, "1.2.3.4", id="empty-elements-skipped"),
        pytest.param("10.0.0.2", ["1.2.3.4:5678"], LOCAL_PROXIES, "1.2.3.4", id="v4-port"),
        pytest.param("10.0.0.2", ["1.2.3.4:http"], LOCAL_PROXIES, "10.0.0.2", id="v4-bad-port"),
        pytest.param("10.0.0.2", ["[2001:db8::1]:443"], LOCAL_PROXIES, "2001:db8::1", id="v6-bracket-port"),
        pytest.param("10.0.0.2", ["[2001:db8::1]"], LOCAL_PROXIES, "2001:db8::1", id="v6-bracket"),
        pytest.param("10.0.0.2", ["[2001:db8::1"], LOCAL_PROXIES, "10.0.0.2", id="v6-unclosed-bracket"),
        pytest.param("10.0.0.2", ["2001:DB8:0::1"], LOCAL_PROXIES, "2001:db8::1", id="v6-normalized"),
        pytest.param("10.0.0.2", ["fe80::1%eth0"], LOCAL_PROXIES, "fe80::1", id="v6-zone-id"),
        pytest.param("10.0.0.2", ["[fe80::1%25eth0]:80"], LOCAL_PROXIES, "fe80::1", id="v6-zone-id-bracket"),
        pytest.param("10.0.0.2", ["::ffff:1.2.3.4"], LOCAL_PROXIES, "1.2.3.4", id="mapped-hop"),
        pytest.param("10.0.0.2", ["::ffff:10.0.0.7"], LOCAL_PROXIES, "10.0.0.2", id="mapped-trusted-hop"),
        pytest.param("::ffff:10.0.0.2", ["1.2.3.4"], LOCAL_PROXIES, "1.2.3.4", id="mapped-trusted-peer"),
        pytest.param("::ffff:198.51.100.7", [], NO_PROXIES, "198.51.100.7", id="mapped-peer"),
        pytest.param("fd00::2", ["2001:db8::9, fd00::3"], LOCAL_PROXIES, "2001:db8::9", id="v6-proxies"),
        pytest.param("10.0.0.2", ["1.1.1.1, 203.0.113.9", "10.0.0.3"], LOCAL_PROXIES, "203.0.113.9", id="two-lines"),
        pytest.param("10.0.0.2", ["203.0.113.9", "unknown"], LOCAL_PROXIES, "10.0.0.2", id="two-lines-garbage-last"),
        pytest.param(None, ["1.2.3.4"], LOCAL_PROXIES, None, id="no-peer"),
        pytest.param("unix:/run/sock", ["1.2.3.4"], LOCAL_PROXIES, None, id="peer-not-ip"),
        pytest.param("1.2.3.4:5000", [], NO_PROXIES, "1.2.3.4", id="peer-with-port"),
    ],
)
def test_client_ip_resolution(peer: str | None, xff: list[str], trusted: TrustedProxies, client: str | None) -> None:
    assert resolve_client_ip(peer, xff, trusted) == client


ENVOY_XFF = "203.0.113.128, 203.0.113.10, 203.0.113.1"


@pytest.mark.parametrize(
    ("peer", "xff", "trusted", "client"),
    [
        # Edge proxy, xff_num_trusted_hops 0: the XFF is ignored, the peer is the client.
        pytest.param("192.0.2.5", ENVOY_XFF, [], "192.0.2.5", id="edge-no-trusted-hops"),
        # Internal proxy behind the edge (10.11.12.13), which appended the peer it saw.
        pytest.param("10.11.12.13", f"{ENVOY_XFF}, 192.0.2.5", ["10.0.0.0/8"], "192.0.2.5", id="internal-behind-edge"),
        # Edge behind an external load balancer at 192.0.2.5 (one trusted hop).
        pytest.param("192.0.2.5", ENVOY_XFF, ["192.0.2.5"], "203.0.113.1", id="edge-one-trusted-hop"),
        # Internal proxy behind that edge: the LB's entry is trusted too.
        pytest.param(
            "10.11.12.13",
            f"{ENVOY_XFF}, 192.0.2.5",
            ["10.0.0.0/8", "192.0.2.5"],
            "203.0.113.1",
            id="internal-behind-edge-behind-lb",
        ),
    ],
)
def test_envoy_xff_examples(peer: str, xff: str, trusted: list[str], client: str) -> None:
    assert resolve_client_ip(peer, [xff], TrustedProxies.build(trusted)) == client


TRAEFIK_XFF = "10.0.0.1,11.0.0.1,12.0.0.1,13.0.0.1"


@pytest.mark.parametrize(
    ("excluded", "client"),
    [
        pytest.param(["12.0.0.1", "13.0.0.1"], "11.0.0.1", id="excluded-two"),
        pytest.param(["13.0.0.1"], "12.0.0.1", id="excluded-one"),
        # Traefik answers "" (and rejects); we keep the peer, which the filter then judges.
        pytest.param(["10.0.0.1", "11.0.0.1", "12.0.0.1", "13.0.0.1"], "192.0.2.1", id="all-excluded"),
    ],
)
def test_traefik_excluded_ips_examples(excluded: list[str], client: str) -> None:
    trusted = TrustedProxies.build(["192.0.2.1", *excluded])
    assert resolve_client_ip("192.0.2.1", [TRAEFIK_XFF], trusted) == client


@pytest.mark.parametrize(
    ("text", "address"),
    [
        pytest.param("1.2.3.4", "1.2.3.4", id="v4"),
        pytest.param(" 1.2.3.4 ", "1.2.3.4", id="spaces"),
        pytest.param("1.2.3.4:0", "1.2.3.4", id="port-0"),
        pytest.param("1.2.3.4:123456", None, id="port-too-long"),
        pytest.param("1.2.3.4:", None, id="empty-port"),
        pytest.param("1.2.3.4:٣", None, id="non-ascii-port"),
        pytest.param("01.2.3.4", None, id="leading-zero-octal"),
        pytest.param("::1", "::1", id="v6-loopback"),
        pytest.param("[::1]x", None, id="junk-after-bracket"),
        pytest.param("[1.2.3.4]:80", "1.2.3.4", id="bracketed-v4"),
        pytest.param("1.2.3.4%eth0", None, id="v4-zone-id"),
        pytest.param("", None, id="empty"),
    ],
)
def test_parse_hop(text: str, address: str | None) -> None:
    parsed = parse_hop(text)
    assert (str(parsed) if parsed is not None else None) == address


ADDRESS_LIKE = st.one_of(
    st.text(max_size=60),
    st.text(alphabet="0123456789abcdefABCDEF:.[]%, ", max_size=60),
    st.ip_addresses().map(str),
)


@given(peer=st.one_of(st.none(), ADDRESS_LIKE), lines=st.lists(ADDRESS_LIKE, max_size=4))
def test_resolution_never_raises_and_returns_an_address_or_none(peer: str | None, lines: list[str]) -> None:
    client = resolve_client_ip(peer, lines, LOCAL_PROXIES)
    assert client is None or parse_hop(client) is not None


@given(peer=st.ip_addresses(), lines=st.lists(ADDRESS_LIKE, max_size=4))
def test_an_untrusted_peer_is_always_the_client(peer: Any, lines: list[str]) -> None:
    assume(peer not in EDGE)
    unmapped = peer.ipv4_mapped if peer.version == 6 and peer.ipv4_mapped is not None else peer
    assert resolve_client_ip(str(peer), lines, EDGE) == str(unmapped)


@given(client=st.ip_addresses(v=4), spoofed=st.lists(st.ip_addresses().map(str), max_size=3))
def test_whatever_the_client_prepends_the_hop_the_proxy_saw_wins(client: Any, spoofed: list[str]) -> None:
    # Our proxy at 10.0.0.2 appended the address it saw; everything left of it is the client's.
    assume(client not in EDGE)
    chain = ", ".join([*spoofed, str(client)])
    assert resolve_client_ip("10.0.0.2", [chain], EDGE) == str(client)


class Recorder:
    """A downstream app that keeps the scope it was called with."""

    def __init__(self) -> None:
        self.scope: Scope | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.scope = scope
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})


FORWARDING = [
    ("X-Forwarded-For", "6.6.6.6"),
    ("X-Real-IP", "6.6.6.6"),
    ("Forwarded", "for=6.6.6.6"),
    ("X-Forwarded-Host", "evil.example"),
    ("X-Forwarded-Proto", "https"),
    ("Accept", "application/json"),
]


@pytest.mark.anyio
async def test_layer_ignores_and_strips_forwarding_headers_from_an_untrusted_peer() -> None:
    downstream = Recorder()
    layer = ClientAddress(downstream, trusted=EDGE)
    await call(layer, make_scope(headers=FORWARDING, client=("198.51.100.7", 40000)))
    assert downstream.scope is not None
    assert downstream.scope[CLIENT_IP_KEY] == "198.51.100.7"
    assert downstream.scope["headers"] == [(b"accept", b"application/json")]
    assert downstream.scope["client"] == ("198.51.100.7", 40000)


@pytest.mark.anyio
async def test_layer_believes_a_trusted_proxy_and_keeps_its_headers() -> None:
    downstream = Recorder()
    layer = ClientAddress(downstream, trusted=EDGE)
    headers = [("X-Forwarded-For", "6.6.6.6, 203.0.113.9"), ("X-Forwarded-For", "10.0.0.3"), ("X-Real-IP", "1.1.1.1")]
    await call(layer, make_scope(headers=headers, client=("10.0.0.2", 40000)))
    assert downstream.scope is not None
    assert downstream.scope[CLIENT_IP_KEY] == "203.0.113.9"
    assert len(downstream.scope["headers"]) == 3


@pytest.mark.anyio
async def test_layer_sets_none_without_a_peer() -> None:
    downstream = Recorder()
    await call(
        ClientAddress(downstream, trusted=EDGE), make_scope(client=None, headers=[("X-Forwarded-For", "1.1.1.1")])
    )
    assert downstream.scope is not None
    assert downstream.scope[CLIENT_IP_KEY] is None
    assert downstream.scope["headers"] == []


@pytest.mark.anyio
async def test_layer_leaves_lifespan_alone() -> None:
    seen: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope)

    async def receive() -> dict[str, Any]:
        return {"type": "lifespan.startup"}

    async def send(message: Any) -> None:
        return None

    await ClientAddress(app, trusted=EDGE)({"type": "lifespan"}, receive, send)
    assert seen == [{"type": "lifespan"}]
