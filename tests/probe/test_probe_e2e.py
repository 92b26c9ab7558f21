"""`mcp-barbican probe` as users run it, against the real proxy (protections on, and off) and a bare MCP server."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from tests.probe.test_report import json_validator, sarif_validator
from tests.proxy import TOKEN, TRACEBACK, RunningProxy, demo_mcp, free_port, run_everything_http, run_proxy

pytestmark = pytest.mark.e2e

SECOND_TOKEN = "second-token-0123456789abcdef"
RATE_LIMIT = {"requests_per_minute": 600, "burst_size": 30}
#: Bad credentials from loopback are not banned by default; the probe sends several on purpose.
QUIET_BANS = {"auth_failure_ban": {"enabled": False}}


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    """One proxy, three MCPs: `secure` (defaults plus a rate limit), `nolimit` (no rate limit) and `open`
    (no authentication, no security headers)."""
    mcps = [
        demo_mcp("secure", security={**QUIET_BANS, "rate_limit": RATE_LIMIT}),
        demo_mcp("nolimit"),
        demo_mcp("open", auth={"type": "none"}, security={**QUIET_BANS, "headers": {"enabled": False}}),
    ]
    tokens = {"type": "token", "tokens": [{"id": "one", "token": TOKEN}, {"id": "two", "token": SECOND_TOKEN}]}
    with run_proxy(tmp_path_factory.mktemp("probe"), mcps, auth=tokens) as running:
        yield running


def probe(url: str, *args: str) -> tuple[int, str, str]:
    result = subprocess.run(
        [sys.executable, "-m", "mcp_barbican", "probe", url, *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert TRACEBACK not in result.stderr + result.stdout
    return result.returncode, result.stdout, result.stderr


def probe_json(url: str, *args: str) -> tuple[int, dict[str, Any]]:
    code, out, err = probe(url, "--format", "json", *args)
    assert code in (0, 1), err
    document: dict[str, Any] = json.loads(out)
    json_validator().validate(document)
    return code, document


def ids(document: dict[str, Any], key: str = "findings") -> set[str]:
    return {item["id"] for item in document[key]}


def test_the_proxy_with_security_on_gets_a_clean_scorecard(proxy: RunningProxy) -> None:
    code, document = probe_json(proxy.url("secure"), "--token", TOKEN, "--second-token", SECOND_TOKEN)
    assert code == 0
    assert [(item["id"], item["severity"]) for item in document["findings"]] == [("transport.plaintext", "info")]
    assert document["score"] == 100
    assert TOKEN not in json.dumps(document) and SECOND_TOKEN not in json.dumps(document)
    passed = ids(document, "passed")
    every_check_run_over_http = {
        "auth.missing", "auth.malformed", "auth.invalid", "auth.expired", "auth.duplicate", "auth.error", "auth.valid",
        "origin.foreign", "host.rebinding", "cors.reflected", "cors.credentials", "cors.wildcard",
        "headers.nosniff", "headers.frame", "headers.referrer", "headers.cache", "headers.xss",
        "ratelimit.burst", "session.strength", "session.binding", "session.hijack", "limits.body",
        "jsonrpc.batch", "mcp.version",
    }  # fmt: skip
    assert passed == every_check_run_over_http
    assert ids(document, "skipped") == {"headers.hsts", "tls.legacy"}


def test_the_scorecard_and_sarif_of_the_same_run(proxy: RunningProxy) -> None:
    code, text, _ = probe(proxy.url("secure"), "--token", TOKEN, "--burst", "0")
    assert code == 0
    assert "score: 100/100" in text and "INFO (1)" in text and TOKEN not in text
    code, out, _ = probe(proxy.url("secure"), "--token", TOKEN, "--burst", "0", "--format", "sarif")
    assert code == 0
    document = json.loads(out)
    sarif_validator().validate(document)
    assert [result["ruleId"] for result in document["runs"][0]["results"]] == ["transport.plaintext"]


def test_an_unauthenticated_mcp_without_headers_gets_a_finding_for_each_missing_protection(
    proxy: RunningProxy,
) -> None:
    code, document = probe_json(proxy.url("open"))
    assert code == 1
    severities = {item["id"]: item["severity"] for item in document["findings"]}
    assert severities["auth.missing"] == "critical"
    for check in ("auth.malformed", "auth.invalid", "auth.expired"):
        assert severities[check] == "high"
    assert severities["ratelimit.burst"] == "medium"
    for check in ("headers.nosniff", "headers.frame", "headers.referrer"):
        assert severities[check] == "low"
    # What the proxy keeps on for every MCP still passes: the Origin and Host guards, the body limit.
    assert {"origin.foreign", "host.rebinding", "limits.body", "mcp.version"} <= ids(document, "passed")
    assert document["score"] < 50


def test_server_everything_directly_gets_a_finding_for_each_missing_protection() -> None:
    with run_everything_http("streamableHttp") as url:
        code, document = probe_json(url)
    assert code == 1
    found = ids(document)
    missing = {
        "auth.missing", "auth.malformed", "auth.invalid", "auth.expired", "origin.foreign", "host.rebinding",
        "cors.wildcard", "headers.nosniff", "headers.frame", "headers.referrer", "headers.cache",
        "ratelimit.burst",
    }  # fmt: skip
    assert missing <= found, sorted(missing - found)


@pytest.mark.parametrize(
    ("mcp_id", "fail_on", "code"),
    [
        ("secure", "info", 1),  # plain HTTP on loopback is an info finding
        ("secure", "low", 0),
        ("nolimit", "low", 1),  # no rate limit: a medium finding
        ("nolimit", "medium", 1),
        ("nolimit", "high", 0),
        ("open", "high", 1),
        ("open", "critical", 1),  # answers without a credential
    ],
)
def test_the_exit_status_follows_fail_on(proxy: RunningProxy, mcp_id: str, fail_on: str, code: int) -> None:
    burst = "0" if mcp_id == "secure" else "40"
    assert probe(proxy.url(mcp_id), "--token", TOKEN, "--fail-on", fail_on, "--burst", burst)[0] == code


def test_the_default_fail_on_is_high(proxy: RunningProxy) -> None:
    assert probe(proxy.url("nolimit"), "--token", TOKEN, "--burst", "20")[0] == 0


def test_an_unreachable_target_exits_2_with_one_line() -> None:
    url = f"http://127.0.0.1:{free_port()}/mcp"
    code, out, err = probe(url)
    assert (code, out) == (2, "")
    assert err.startswith(f"error: cannot reach {url}: ") and err.count("\n") == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ftp://example.com/"], "only http:// and https://"),
        (["http://127.0.0.1:1/mcp", "--fail-on", "severe"], "invalid choice"),
        (["http://127.0.0.1:1/mcp", "--burst", "100000"], "not between 0 and 200"),
        (["http://127.0.0.1:1/mcp", "--timeout", "0"], "not between 0 and 60"),
        (["https://127.0.0.1:1/mcp", "--cafile", "/nonexistent/ca.pem"], "--cafile /nonexistent/ca.pem"),
    ],
)
def test_usage_errors_exit_2_with_one_line(args: list[str], message: str) -> None:
    code, out, err = probe(*args)
    assert code == 2 and out == ""
    assert message in err and TRACEBACK not in err


def test_help_says_what_it_sends() -> None:
    code, out, _ = probe("--help")
    assert code == 0
    assert "origin only" in out and "never printed" in out and "requests" in out and "--fail-on" in out


# -- https --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    ca = trustme.CA()
    directory = tmp_path_factory.mktemp("probe-pki")
    server = ca.issue_cert("127.0.0.1", "localhost")
    paths = {name: directory / f"{name}.pem" for name in ("ca", "cert", "key")}
    ca.cert_pem.write_to_path(str(paths["ca"]))
    server.cert_chain_pems[0].write_to_path(str(paths["cert"]))
    server.private_key_pem.write_to_path(str(paths["key"]))
    return paths


def test_an_https_proxy_reports_the_tls_versions_it_offers(
    tls_files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    tls = {"cert_file": str(tls_files["cert"]), "key_file": str(tls_files["key"])}
    mcps = [demo_mcp("secure", security={**QUIET_BANS, "rate_limit": RATE_LIMIT})]
    with run_proxy(tmp_path_factory.mktemp("probe-tls"), mcps, server={"tls": tls}, wait_ready=False) as running:
        url = running.url("secure").replace("http://", "https://")
        code, document = probe_json(url, "--token", TOKEN, "--cafile", str(tls_files["ca"]), "--burst", "0")
        refused, out, err = probe(url, "--token", TOKEN, "--burst", "0")  # no --cafile: the certificate fails
    assert code == 0 and document["findings"] == []
    passed = {item["id"]: item["evidence"] for item in document["passed"]}
    assert passed["tls.legacy"] == "TLS 1.0 refused, TLS 1.1 refused, TLS 1.2 accepted, TLS 1.3 accepted"
    assert passed["transport.plaintext"] == "https"
    assert "max-age=" in passed["headers.hsts"]
    assert (refused, out) == (2, "")
    assert "CERTIFICATE_VERIFY_FAILED" in err and err.count("\n") == 1
