"""The tools/call guard: validators compiled from listings, never per call; results redacted and scanned."""

from __future__ import annotations

from typing import Any

import pytest

from mcp_barbican.audit import AuditEvent
from mcp_barbican.config.integrity import IntegrityConfig, ScanConfig
from mcp_barbican.security import callguard
from mcp_barbican.security.callguard import MAX_TOOLS, CallGuard

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}


class Trail:
    """An audit trail that keeps what it is given."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []
        self.arguments = "redact"

    def emit_soon(self, event: AuditEvent) -> None:
        self.events.append(event)


def guard(validate: str = "block", results: str = "off", redact: bool = False) -> tuple[CallGuard, Trail]:
    config = IntegrityConfig(
        validate_arguments=validate,  # type: ignore[arg-type]
        scan=ScanConfig(results=results, redact_secrets=redact),  # type: ignore[arg-type]
    )
    trail = Trail()
    built = CallGuard.build("m", config, trail)  # type: ignore[arg-type]
    assert built is not None
    return built, trail


def listing(*tools: tuple[str, Any]) -> dict[str, Any]:
    return {"tools": [{"name": name, "inputSchema": schema} for name, schema in tools]}


def test_nothing_on_builds_no_guard() -> None:
    assert CallGuard.build("m", IntegrityConfig(), None) is None
    assert CallGuard.build("m", IntegrityConfig(validate_arguments="warn"), None) is not None
    assert CallGuard.build("m", IntegrityConfig(scan=ScanConfig(redact_secrets=True)), None) is not None


def test_a_tool_whose_schema_is_not_known_yet_passes_and_is_checked_once_listed() -> None:
    g, _ = guard()
    assert g.check_arguments({"name": "count", "arguments": {"n": "x"}}, "p", "s") is None
    g.learn(listing(("count", SCHEMA)))
    refusal = g.check_arguments({"name": "count", "arguments": {"n": "x"}}, "p", "s")
    assert refusal is not None and "arguments.n: " in refusal
    assert g.check_arguments({"name": "count", "arguments": {"n": 1}}, "p", "s") is None
    assert g.check_arguments({"name": "count"}, "p", "s") is not None  # no arguments: {} lacks n


def test_a_changed_schema_is_compiled_again_and_a_same_one_is_not(monkeypatch: pytest.MonkeyPatch) -> None:
    g, _ = guard()
    compiled: list[object] = []
    real = callguard._compile

    def counting(*args: Any) -> Any:
        compiled.append(args)
        return real(*args)

    monkeypatch.setattr(callguard, "_compile", counting)
    g.learn(listing(("count", SCHEMA)))
    g.learn(listing(("count", dict(SCHEMA))))
    assert len(compiled) == 1
    g.learn(listing(("count", {"type": "object", "properties": {"n": {"type": "string"}}})))
    assert len(compiled) == 2
    assert g.check_arguments({"name": "count", "arguments": {"n": "x"}}, "p", "s") is None


def test_a_schema_that_does_not_compile_lets_calls_pass_and_remote_refs_are_never_fetched(
    caplog: pytest.LogCaptureFixture,
) -> None:
    g, _ = guard()
    g.learn(listing(("bad", {"type": "nonsense"}), ("remote", {"$ref": "http://169.254.169.254/schema.json"})))
    assert g.check_arguments({"name": "bad", "arguments": {}}, "p", "s") is None
    assert g.check_arguments({"name": "remote", "arguments": {}}, "p", "s") is None
    assert "remote schema references are not fetched" in caplog.text
    assert "Traceback" not in caplog.text


def test_warn_forwards_and_audits_the_path_never_the_value() -> None:
    g, trail = guard("warn")
    g.learn(listing(("count", SCHEMA)))
    assert g.check_arguments({"name": "count", "arguments": {"n": "secret-value"}}, "token:x", "s1") is None
    (event,) = trail.events
    assert (event.type, event.action, event.user, event.session_id) == (
        "integrity",
        "invalid_arguments",
        "token:x",
        "s1",
    )
    assert event.details == {"path": "arguments.n", "keyword": "type", "mode": "warn"}
    assert "secret-value" not in repr(event.as_dict())


def test_tools_per_mcp_are_bounded() -> None:
    g, _ = guard()
    g.learn({"tools": [{"name": f"t{i}", "inputSchema": SCHEMA} for i in range(MAX_TOOLS + 5)]})
    assert g.check_arguments({"name": "t0", "arguments": {}}, "p", "s") is not None
    assert g.check_arguments({"name": f"t{MAX_TOOLS + 1}", "arguments": {}}, "p", "s") is None


@pytest.mark.parametrize("result", [None, [], "text", {"tools": "not a list"}, {"tools": [1, {"name": 2}]}])
def test_malformed_listings_are_ignored(result: Any) -> None:
    g, _ = guard()
    g.learn(result)


def test_a_result_is_redacted_in_place_then_scanned() -> None:
    g, trail = guard("off", "warn", True)
    response = {"result": {"content": [{"type": "text", "text": "AKIAIOSFODNN7EXAMPLE <IMPORTANT>"}]}}
    g.check_result(response, "leak", "p", "s")
    assert response["result"]["content"][0]["text"] == "[REDACTED:aws-access-key] <IMPORTANT>"
    assert [(e.action, e.details["rules"]) for e in trail.events] == [
        ("redacted", ["secret.aws-access-key"]),
        ("result_finding", ["instruction.hidden-tag"]),
    ]
    g.check_result({"error": {"code": 1, "message": "x"}}, "leak", "p", "s")
    assert len(trail.events) == 2


def test_an_error_answer_is_redacted_too() -> None:
    g, trail = guard("off", "off", True)
    error = {
        "code": -32000,
        "message": "connect failed: postgres://app:hunter2pass@db/x",
        "data": {"k": "AKIAIOSFODNN7EXAMPLE"},
    }
    g.check_result({"error": error}, "leak", "p", "s")
    assert error["message"] == "connect failed: postgres://app:[REDACTED:url-password]@db/x"
    assert error["data"] == {"k": "[REDACTED:aws-access-key]"}
    assert trail.events[0].details["rules"] == ["secret.aws-access-key", "secret.url-password"]


def test_a_schema_orjson_cannot_write_leaves_the_tool_unvalidated_without_raising(
    caplog: pytest.LogCaptureFixture,
) -> None:
    g, _ = guard()
    g.learn(listing(("huge", {"type": "integer", "maximum": 10**30})))
    assert g.check_arguments({"name": "huge", "arguments": 5}, "p", "s") is None
    assert "cannot be read" in caplog.text


def test_a_failing_check_withholds_the_result_when_redaction_is_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(result: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(callguard, "redact_secrets", broken)
    g, _ = guard("off", "off", True)
    response: dict[str, Any] = {"result": {"content": [{"type": "text", "text": "AKIAIOSFODNN7EXAMPLE"}]}}
    g.check_result(response, "leak", "p", "s")
    assert "result" not in response and response["error"]["code"] == -32603
    assert "the result could not be checked: RuntimeError: boom" in caplog.text
    assert "Traceback" not in caplog.text
