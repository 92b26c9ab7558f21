"""The probe's report as a text scorecard, JSON (report.schema.json) or SARIF 2.1.0."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any, Final

from mcp_barbican import __version__
from mcp_barbican.probe.checks import CHECKS, Finding, Severity, score
from mcp_barbican.probe.runner import Report

__all__ = ["SARIF_LEVELS", "render", "report_schema", "to_json", "to_sarif", "to_text"]

SARIF_SCHEMA: Final = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
SARIF_LEVELS: Final = {
    Severity.CRITICAL: "error",
    Severity.HIGH: "error",
    Severity.MEDIUM: "warning",
    Severity.LOW: "note",
    Severity.INFO: "note",
}
#: GitHub code scanning reads `security-severity` (0.0-10.0) to rank security results.
_SECURITY_SEVERITY: Final = {
    Severity.CRITICAL: "9.5",
    Severity.HIGH: "8.0",
    Severity.MEDIUM: "5.5",
    Severity.LOW: "3.0",
    Severity.INFO: "0.0",
}


def report_schema() -> dict[str, Any]:
    """The JSON Schema of `--format json`, as published in the package."""
    text = resources.files("mcp_barbican.probe").joinpath("report.schema.json").read_text()
    schema: dict[str, Any] = json.loads(text)
    return schema


def _ordered(findings: list[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda item: (-item.severity, item.check))


def to_json(report: Report) -> dict[str, Any]:
    return {
        "score": score(report.findings),
        "target": report.target,
        "findings": [
            {"id": item.check, "severity": item.severity.label, "title": item.title, "evidence": item.evidence}
            for item in _ordered(report.findings)
        ],
        "passed": [{"id": check_id, "evidence": evidence} for check_id, evidence in sorted(report.passed.items())],
        "skipped": [{"id": check_id, "reason": reason} for check_id, reason in sorted(report.skipped.items())],
        "requests": report.requests,
        "tool": {"name": "mcp-barbican probe", "version": __version__},
    }


def to_text(report: Report) -> str:
    lines = [f"mcp-barbican probe {report.target}", f"score: {score(report.findings)}/100", ""]
    if not report.findings:
        lines.append("no findings")
    for severity in sorted(Severity, reverse=True):
        group = [item for item in _ordered(report.findings) if item.severity == severity]
        if group:
            lines.append(f"{severity.label.upper()} ({len(group)})")
            lines.extend(f"  {item.check:<20} {item.title}: {item.evidence}" for item in group)
    lines += ["", f"passed ({len(report.passed)})"]
    lines.extend(f"  {check_id:<20} {evidence}" for check_id, evidence in sorted(report.passed.items()))
    if report.skipped:
        lines += ["", f"skipped ({len(report.skipped)})"]
        lines.extend(f"  {check_id:<20} {reason}" for check_id, reason in sorted(report.skipped.items()))
    lines += ["", f"{report.requests} requests sent"]
    return "\n".join(lines)


def to_sarif(report: Report) -> dict[str, Any]:
    rule_index = {check_id: index for index, check_id in enumerate(CHECKS)}
    rules = [
        {
            "id": check.id,
            "name": check.id.replace(".", "_"),
            "shortDescription": {"text": check.title},
            "fullDescription": {"text": f"{check.title}. Passes when: {check.help}."},
            "defaultConfiguration": {"level": SARIF_LEVELS[check.severity]},
            "properties": {"security-severity": _SECURITY_SEVERITY[check.severity], "tags": ["security", "mcp"]},
        }
        for check in CHECKS.values()
    ]
    results = [
        {
            "ruleId": item.check,
            "ruleIndex": rule_index[item.check],
            "level": SARIF_LEVELS[item.severity],
            "message": {"text": f"{item.title}: {item.evidence}"},
            "locations": [{"physicalLocation": {"artifactLocation": {"uri": report.target}}}],
            "properties": {"severity": item.severity.label},
        }
        for item in _ordered(report.findings)
    ]
    return {
        "$schema": SARIF_SCHEMA,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "mcp-barbican probe",
                        "version": __version__,
                        "informationUri": "https://pypi.org/project/mcp-barbican/",
                        "rules": rules,
                    }
                },
                "artifacts": [{"location": {"uri": report.target}}],
                "results": results,
                "properties": {"score": score(report.findings)},
            }
        ],
    }


def render(report: Report, output: str) -> str:
    if output == "json":
        return json.dumps(to_json(report), indent=2)
    if output == "sarif":
        return json.dumps(to_sarif(report), indent=2)
    return to_text(report)
