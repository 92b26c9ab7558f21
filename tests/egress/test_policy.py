"""The egress decision from tables: host spellings as a resolver reads them, and each address's verdict."""

from __future__ import annotations

import ipaddress

import pytest

from mcp_barbican.config import EgressConfig, ProxyConfig, validate_model
from mcp_barbican.egress import EgressPolicy, host_address
from mcp_barbican.exceptions import ConfigError

METADATA = "169.254.169.254"


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("169.254.169.254", METADATA),
        ("2852039166", METADATA),
        ("0251.0376.0251.0376", METADATA),
        ("0xA9FEA9FE", METADATA),
        ("0xa9.0xfe.0xa9.0xfe", METADATA),
        ("169.254.43518", METADATA),
        ("169.16689662", METADATA),
        ("169.254.169.254.", METADATA),
        ("0251.254.0xa9.254", METADATA),
        ("[::ffff:169.254.169.254]", "::ffff:a9fe:a9fe"),
        ("[fd00:ec2::254]", "fd00:ec2::254"),
        ("fe80::1%eth0", "fe80::1"),
        ("[fe80::1%25eth0]", "fe80::1"),
        ("127.1", "127.0.0.1"),
        ("0", "0.0.0.0"),
        ("0x", "0.0.0.0"),
        ("example.com", None),
        ("1.2.3.4.5", None),
        ("256.1.1.1", None),
        ("1.2.3.256", None),
        ("1.2.65536", None),
        ("4294967296", None),
        ("09.1.1.1", None),  # not octal: a resolver asks DNS for it, and checks what it answers
        ("1..2", None),
        ("0x1g", None),
        ("[not-ip]", None),
    ],
)
def test_host_spellings_read_as_a_resolver_reads_them(host: str, address: str | None) -> None:
    expected = None if address is None else ipaddress.ip_address(address)
    assert host_address(host) == expected


DEFAULT = EgressPolicy.from_config(EgressConfig())
CLOSED = EgressPolicy.from_config(EgressConfig(allow_private=False, allow=("10.9.0.0/16", "fd12::/16")))
DENYING = EgressPolicy.from_config(EgressConfig(deny=("10.0.0.0/8", "2001:db8::/32"), allow=("10.1.0.0/16",)))

REFUSED_ALWAYS = [
    (METADATA, "cloud metadata"),
    ("fd00:ec2::254", "cloud metadata"),
    ("100.100.100.200", "cloud metadata"),
    ("192.0.0.192", "cloud metadata"),
    ("168.63.129.16", "cloud metadata"),
    ("169.254.1.1", "link-local"),
    ("fe80::1", "link-local"),
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "unspecified"),
    ("::", "unspecified"),
    ("224.0.0.1", "multicast"),
    ("ff02::1", "multicast"),
    ("255.255.255.255", "reserved"),
    ("::ffff:169.254.169.254", "cloud metadata"),
    ("::169.254.169.254", "cloud metadata"),
    ("64:ff9b::169.254.169.254", "cloud metadata"),
    ("2002:a9fe:a9fe::1", "cloud metadata"),
    ("::ffff:0.0.0.0", "unspecified"),
]


@pytest.mark.parametrize(("address", "reason"), REFUSED_ALWAYS)
@pytest.mark.parametrize("policy", [DEFAULT, CLOSED, DENYING], ids=["default", "closed", "denying"])
def test_always_refused_whatever_the_config(policy: EgressPolicy, address: str, reason: str) -> None:
    refusal = policy.refusal(ipaddress.ip_address(address))
    assert refusal is not None and reason in refusal


def test_allow_never_lifts_an_always_refused_range() -> None:
    policy = EgressPolicy.from_config(EgressConfig(deny=(), allow=("169.254.0.0/16", "0.0.0.0/0")))
    assert policy.refusal(ipaddress.ip_address(METADATA)) is not None
    assert policy.refusal(ipaddress.ip_address("169.254.3.4")) is not None


@pytest.mark.parametrize(
    ("policy", "address", "refused"),
    [
        (DEFAULT, "127.0.0.1", False),
        (DEFAULT, "::1", False),
        (DEFAULT, "10.1.2.3", False),
        (DEFAULT, "172.16.0.1", False),
        (DEFAULT, "192.168.1.1", False),
        (DEFAULT, "100.64.0.1", False),
        (DEFAULT, "fd12:3456::1", False),
        (DEFAULT, "8.8.8.8", False),
        (DEFAULT, "2606:4700::1111", False),
        (DEFAULT, "::ffff:10.0.0.1", False),
        (CLOSED, "127.0.0.1", True),
        (CLOSED, "::1", True),
        (CLOSED, "10.1.2.3", True),
        (CLOSED, "100.64.0.1", True),
        (CLOSED, "fd34::1", True),
        (CLOSED, "192.0.2.1", True),  # documentation range: not public
        (CLOSED, "::ffff:10.0.0.1", True),
        (CLOSED, "64:ff9b::10.0.0.1", True),
        (CLOSED, "8.8.8.8", False),
        (CLOSED, "2606:4700::1111", False),
        (CLOSED, "64:ff9b::8.8.8.8", False),
        (CLOSED, "10.9.8.7", False),  # allow lifts allow_private: false
        (CLOSED, "fd12::1", False),
        (DENYING, "10.2.3.4", True),
        (DENYING, "10.1.2.3", True),  # deny wins over allow
        (DENYING, "::ffff:10.2.3.4", True),  # deny reaches the IPv4 an IPv6 address carries
        (DENYING, "2001:db8::1", True),
        (DENYING, "192.168.1.1", False),
    ],
)
def test_private_ranges_deny_and_allow(policy: EgressPolicy, address: str, refused: bool) -> None:
    assert (policy.refusal(ipaddress.ip_address(address)) is not None) is refused


@pytest.mark.parametrize(
    ("egress", "path"),
    [
        ({"deny": ["not-a-network"]}, "server.egress.deny"),
        ({"allow": ["10.0.0.0/33"]}, "server.egress.allow"),
        ({"allow_private": "sometimes"}, "server.egress.allow_private"),
        ({"deny_all": True}, "server.egress.deny_all"),
    ],
)
def test_egress_config_mistakes_name_their_key_path(egress: dict[str, object], path: str) -> None:
    data = {"server": {"auth": {"type": "none"}, "egress": egress}, "mcps": [{"id": "a", "command": "x"}]}
    with pytest.raises(ConfigError) as caught:
        validate_model(ProxyConfig, data)
    assert caught.value.path.startswith(path), str(caught.value)
