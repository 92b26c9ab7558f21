"""Tool integrity on tools/call through a running proxy: results redacted and scanned, arguments validated.

The upstream is tests/fixtures/leaky_server.py, whose `leak` tool returns attacker-chosen text (an AWS key pair,
a key split across two content items, secrets deep in structuredContent, Unicode tag smuggling, a huge result),
the demo MCP and server-everything for argument validation.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.admin.test_app import ADMIN, ADMIN_IPS, ADMIN_TOKEN
from tests.fixtures.leaky_server import AWS_KEY, AWS_SECRET
from tests.proxy import AUTH_HEADER, RunningProxy, demo_mcp, everything_stdio, run_proxy
from tests.server.test_endpoint import INIT, MCP_HEADERS

pytestmark = pytest.mark.e2e

LEAKY = str(Path(__file__).resolve().parent.parent / "fixtures" / "leaky_server.py")
REDACT = {"scan": {"redact_secrets": True, "results": "warn"}}


def leaky(mcp_id: str, integrity: dict[str, Any] | None = None) -> dict[str, Any]:
    mcp: dict[str, Any] = {"id": mcp_id, "command": sys.executable, "args": [LEAKY]}
    if integrity is not None:
        mcp["integrity"] = integrity
    return mcp


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningProxy]:
    directory = tmp_path_factory.mktemp("integrity")
    mcps = [
        leaky("redact", REDACT),
        leaky("scan", {"scan": {"results": "warn"}}),
        leaky("plain"),
        demo_mcp("block", integrity={"validate_arguments": "block"}),
        demo_mcp("warn", integrity={"validate_arguments": "warn"}),
        demo_mcp("off"),
        leaky("counting", {"validate_arguments": "block"}),
        everything_stdio("everything", integrity={"validate_arguments": "block"}),
    ]
    server = {
        "admin": {"token": ADMIN_TOKEN, "ip_whitelist": ADMIN_IPS},
        "audit": {"sinks": [{"type": "file", "path": str(directory / "audit.jsonl")}], "arguments": "keep"},
    }
    with run_proxy(directory, mcps, server=server) as running:
        yield running


def audit_events(proxy: RunningProxy, action: str, mcp: str, *, wait: bool = True) -> list[dict[str, Any]]:
    """The integrity events of `action` for `mcp` in the audit file (waiting a little for the writer)."""
    audit = audit_file(proxy)
    deadline = time.monotonic() + (5 if wait else 0.5)
    while True:
        lines = audit.read_text().splitlines() if audit.exists() else []
        events = [json.loads(line) for line in lines]
        found = [e for e in events if e["type"] == "integrity" and e["action"] == action and e["mcp"] == mcp]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def audit_file(proxy: RunningProxy) -> Path:
    """The audit file the fixture configures, beside the proxy's config file (its last argument)."""
    args = proxy.process.args
    assert isinstance(args, list)
    return Path(str(args[-1])).parent / "audit.jsonl"


def audit_text(proxy: RunningProxy) -> str:
    return audit_file(proxy).read_text()


def session(proxy: RunningProxy, mcp_id: str, path: str = "") -> tuple[str, dict[str, str]]:
    url = proxy.url(mcp_id) if not path else f"{proxy.base}{path}"
    response = httpx2.post(url, headers={**MCP_HEADERS, **AUTH_HEADER}, json=INIT, timeout=30)
    assert response.status_code == 200, response.text
    headers = {**MCP_HEADERS, **AUTH_HEADER, "Mcp-Session-Id": response.headers["mcp-session-id"]}
    httpx2.post(url, headers=headers, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
    return url, headers


def rpc(proxy: RunningProxy, mcp_id: str, method: str, params: dict[str, Any], path: str = "") -> dict[str, Any]:
    """One request in a fresh session; the JSON-RPC answer (read from the SSE stream)."""
    url, headers = session(proxy, mcp_id, path)
    response = httpx2.post(url, headers=headers, json={"jsonrpc": "2.0", "id": 7, "method": method, "params": params},
                           timeout=60)  # fmt: skip
    assert response.status_code == 200, response.text
    data = [line[6:] for line in response.text.splitlines() if line.startswith("data: ") and line[6:].strip()]
    answer: dict[str, Any] = json.loads(data[-1])
    assert answer["id"] == 7
    return answer


def call(proxy: RunningProxy, mcp_id: str, tool: str, arguments: dict[str, Any], path: str = "") -> dict[str, Any]:
    return rpc(proxy, mcp_id, "tools/call", {"name": tool, "arguments": arguments}, path)


def texts(answer: dict[str, Any]) -> str:
    return "".join(item.get("text", "") for item in answer["result"]["content"])


# -- results: redaction ---------------------------------------------------------------------------


def test_an_aws_key_pair_in_a_result_is_redacted_for_the_client_and_audited_without_the_secret(
    proxy: RunningProxy,
) -> None:
    answer = call(proxy, "redact", "leak", {"kind": "aws"})
    shown = texts(answer)
    assert AWS_KEY not in shown and AWS_SECRET not in shown
    assert "aws_access_key_id = [REDACTED:aws-access-key]" in shown
    assert "[REDACTED:aws-secret-key]" in shown
    event = audit_events(proxy, "redacted", "redact")[0]
    assert event["tool"] == "leak" and event["user"] == "token:server"
    assert set(event["details"]["rules"]) == {"secret.aws-access-key", "secret.aws-secret-key"}
    assert AWS_KEY not in audit_text(proxy) and AWS_SECRET not in audit_text(proxy)


def test_without_redaction_the_same_result_reaches_the_client_unchanged(proxy: RunningProxy) -> None:
    assert AWS_SECRET in texts(call(proxy, "plain", "leak", {"kind": "aws"}))
    assert AWS_SECRET in texts(call(proxy, "scan", "leak", {"kind": "aws"}))  # results: warn reports, changes nothing


def test_a_key_split_across_two_content_items_is_redacted_in_both(proxy: RunningProxy) -> None:
    content = call(proxy, "redact", "leak", {"kind": "split"})["result"]["content"]
    assert [item["text"] for item in content] == ["key [REDACTED:aws-access-key]", " done"]


def test_secrets_deep_in_structured_content_are_redacted(proxy: RunningProxy) -> None:
    structured = call(proxy, "redact", "leak", {"kind": "structured"})["result"]["structuredContent"]
    flat = json.dumps(structured)
    assert AWS_KEY not in flat and "ghp_" not in flat
    assert "[REDACTED:github-token]" in flat and "[REDACTED:aws-access-key]" in flat


def test_an_embedded_resource_text_is_redacted(proxy: RunningProxy) -> None:
    content = call(proxy, "redact", "leak", {"kind": "resource"})["result"]["content"]
    assert content[0]["resource"]["text"] == "pem:\n[REDACTED:aws-access-key]"


def test_a_huge_result_is_read_up_to_the_bound_what_lies_beyond_passes_unread(proxy: RunningProxy) -> None:
    shown = texts(call(proxy, "redact", "leak", {"kind": "huge"}))
    assert shown.startswith("[REDACTED:aws-access-key] xxx")
    assert shown.endswith(f" {AWS_KEY}")  # past the first MiB: documented, not scanned


def test_redaction_holds_on_the_aggregated_endpoint_and_the_admin_rest_call(proxy: RunningProxy) -> None:
    answer = call(proxy, "", "redact__leak", {"kind": "aws"}, path="/mcp")
    assert AWS_KEY not in texts(answer) and "[REDACTED:aws-access-key]" in texts(answer)
    body = {"mcpName": "redact", "toolName": "leak", "arguments": {"kind": "aws"}}
    response = httpx2.post(f"{proxy.base}/admin/tools/call", headers=ADMIN, json=body, timeout=30)
    assert response.status_code == 200, response.text
    shown = json.dumps(response.json())
    assert AWS_KEY not in shown and "[REDACTED:aws-access-key]" in shown


def test_redaction_holds_on_the_legacy_sse_transport(proxy: RunningProxy) -> None:
    with httpx2.Client(headers=AUTH_HEADER, timeout=30) as http, http.stream("GET", proxy.url("redact", "/sse")) as sse:
        lines = sse.iter_lines()
        endpoint = next(line[6:] for line in lines if line.startswith("data: "))
        post = f"{proxy.base}{endpoint}"
        init = {**INIT, "id": 1}
        assert http.post(post, json=init).status_code == 202
        next(line for line in lines if line.startswith("data: ") and '"id":1' in line.replace(" ", ""))
        http.post(post, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
        request = {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                   "params": {"name": "leak", "arguments": {"kind": "aws"}}}  # fmt: skip
        assert http.post(post, json=request).status_code == 202
        answer = next(line for line in lines if line.startswith("data: ") and '"id":2' in line.replace(" ", ""))
    assert AWS_KEY not in answer and "[REDACTED:aws-access-key]" in answer


# -- results: scanning ----------------------------------------------------------------------------


def test_results_warn_audits_tag_smuggling_and_changes_nothing(proxy: RunningProxy) -> None:
    shown = texts(call(proxy, "scan", "leak", {"kind": "tags"}))
    assert "\U000e0069" in shown  # passed on as the upstream sent it
    event = audit_events(proxy, "result_finding", "scan")[0]
    assert "unicode.tag-chars" in event["details"]["rules"]
    assert event["tool"] == "leak"


def test_a_clean_result_makes_no_finding(proxy: RunningProxy) -> None:
    call(proxy, "scan", "leak", {"kind": "echo", "text": "Ignores case when matching."})
    call(proxy, "plain", "leak", {"kind": "tags"})  # scan off: no event
    assert audit_events(proxy, "result_finding", "plain", wait=False) == []


# -- arguments ------------------------------------------------------------------------------------


def test_validate_block_answers_invalid_params_naming_the_path(proxy: RunningProxy) -> None:
    answer = call(proxy, "block", "add", {"a": "x", "b": 2})
    assert answer["error"]["code"] == -32602
    assert "arguments.a: " in answer["error"]["message"] and "is not of type" in answer["error"]["message"]
    assert call(proxy, "block", "add", {"a": 1, "b": 2})["result"]["structuredContent"] == {"sum": 3}
    event = audit_events(proxy, "invalid_arguments", "block")[0]
    assert event["details"]["path"] == "arguments.a" and event["success"] is False


def test_validate_block_names_nested_paths_and_missing_properties(proxy: RunningProxy) -> None:
    nested = call(proxy, "counting", "count", {"n": 1, "tags": ["a", 5]})
    assert "arguments.tags[1]: " in nested["error"]["message"]
    missing = call(proxy, "counting", "count", {})
    assert missing["error"]["code"] == -32602 and "arguments: " in missing["error"]["message"]
    assert "required" in missing["error"]["message"]
    assert "error" not in call(proxy, "counting", "count", {"n": 3})


def test_validate_warn_forwards_and_audits(proxy: RunningProxy) -> None:
    answer = call(proxy, "warn", "add", {"a": "x", "b": 2})
    assert "error" not in answer and answer["result"]["isError"] is True  # the demo's own refusal: it was forwarded
    event = audit_events(proxy, "invalid_arguments", "warn")[0]
    assert event["details"] == {"path": "arguments.a", "keyword": "type", "mode": "warn"}
    assert event["success"] is True


def test_validate_off_forwards_and_audits_nothing(proxy: RunningProxy) -> None:
    answer = call(proxy, "off", "add", {"a": "x", "b": 2})
    assert "error" not in answer and answer["result"]["isError"] is True
    assert audit_events(proxy, "invalid_arguments", "off", wait=False) == []


def test_validate_block_on_server_everything_and_through_the_aggregated_endpoint(proxy: RunningProxy) -> None:
    answer = call(proxy, "everything", "echo", {"message": 5})
    assert answer["error"]["code"] == -32602 and "arguments.message: " in answer["error"]["message"]
    assert texts(call(proxy, "everything", "echo", {"message": "hi"})) == "Echo: hi"
    via_aggregate = call(proxy, "", "block__add", {"a": 1}, path="/mcp")
    assert via_aggregate["error"]["code"] == -32602
    assert via_aggregate["error"]["message"].startswith("Invalid arguments for tool 'block__add': arguments: ")


def test_validate_block_holds_for_the_admin_rest_call(proxy: RunningProxy) -> None:
    body = {"mcpName": "block", "toolName": "add", "arguments": {"a": "x", "b": 1}}
    response = httpx2.post(f"{proxy.base}/admin/tools/call", headers=ADMIN, json=body, timeout=30)
    assert response.status_code == 502
    assert response.json()["rpc_error"]["code"] == -32602
