"""The offline tool-definition and tool-result scanner (interface; the rules land with issue 13's scanner work).

Deterministic, no model: rules with ids and severities over tool and prompt definitions (descriptions, schemas
with their property descriptions and defaults, prompt texts) and over tool results.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["SEVERITIES", "Finding", "Severity", "redact_secrets", "scan_prompt", "scan_result", "scan_tool"]

Severity = Literal["low", "medium", "high", "critical"]
SEVERITIES: tuple[Severity, ...] = ("low", "medium", "high", "critical")


@dataclass(frozen=True, slots=True)
class Finding:
    """One rule's hit: `where` is the path in the definition (`description`, `inputSchema.properties.x.default`)."""

    rule: str
    severity: Severity
    where: str
    excerpt: str


def scan_tool(tool: Mapping[str, Any], *, other_tools: Collection[str] = ()) -> list[Finding]:
    """Findings in one tool definition; `other_tools`: the names of every other tool the client may see
    (other MCPs', `{id}__{name}` on `/mcp`), for shadowing."""
    return []


def scan_prompt(prompt: Mapping[str, Any], *, other_tools: Collection[str] = ()) -> list[Finding]:
    """Findings in one prompt definition (its description and arguments)."""
    return []


def scan_result(result: Any) -> list[Finding]:
    """Findings in a tool result (`scan.results: warn`)."""
    return []


def redact_secrets(result: Any) -> tuple[Any, list[Finding]]:
    """The result with well-known secret shapes replaced by a marker, and what was replaced."""
    return result, []
