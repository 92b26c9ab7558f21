"""The offline tool-definition and tool-result scanner.

Deterministic, no model: the rules of `scan_rules` over tool and prompt definitions (names, titles, descriptions,
schemas walked recursively with their property names, descriptions, defaults, enums and examples, prompt
arguments) and over tool results (text content, embedded resources' text, structuredContent). What one call
scans is bounded (depth, nodes, bytes: `MAX_SCAN_BYTES`); a definition or result beyond the bounds is scanned
as far as the bounds go and says so with a `scan.truncated` finding.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from mcp_barbican.security.scan_rules import (
    MAX_DESCRIPTION_BYTES,
    RULES,
    RULES_BY_ID,
    TEXT_PATTERNS,
    deceptive_name,
    identifier_like,
)
from mcp_barbican.security.secrets import redact_texts

__all__ = [
    "MAX_SCAN_BYTES",
    "RULES",
    "SEVERITIES",
    "Finding",
    "Severity",
    "redact_secrets",
    "scan_prompt",
    "scan_result",
    "scan_tool",
]

Severity = Literal["low", "medium", "high", "critical"]
SEVERITIES: tuple[Severity, ...] = ("low", "medium", "high", "critical")

#: The most text one definition or one result is scanned for (beyond it: a `scan.truncated` finding).
MAX_SCAN_BYTES: Final = 1024 * 1024
#: The deepest nesting walked, and the most JSON nodes visited, per definition or result.
MAX_DEPTH: Final = 64
MAX_NODES: Final = 100_000
_EXCERPT: Final = 80
#: Schema keywords whose string values are structure, not prose.
_STRUCTURAL: Final = frozenset({"type", "$ref", "$schema", "$id", "$anchor", "format", "pattern", "required"})
#: Schema keywords whose object keys are property names.
_NAMED: Final = frozenset({"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"})
_TEXT_RULES_DEFINITION: Final = tuple(TEXT_PATTERNS.items())
_TEXT_RULES_RESULT: Final = tuple((rid, pattern) for rid, pattern in TEXT_PATTERNS.items() if RULES_BY_ID[rid].results)
_UNICODE_RULES: Final = frozenset(rid for rid in TEXT_PATTERNS if rid.startswith("unicode."))
#: A word of prose, or a quoted one (`echo`, 'echo'): the candidates for another tool's name.
_TOKEN: Final = re.compile(r"[`'\"“‘]([\w.\-]{1,128})[`'\"”’]|(\w[\w.\-]{0,127})")


@dataclass(frozen=True, slots=True)
class Finding:
    """One rule's hit: `where` is the path in the definition (`description`, `inputSchema.properties.x.default`)."""

    rule: str
    severity: Severity
    where: str
    excerpt: str


def _excerpt(text: str, start: int, end: int) -> str:
    """The matched text with a little context, invisible characters made visible, bounded."""
    low, high = max(0, start - 20), min(len(text), max(end, start + 1) + 20)
    shown = text[low:high]
    visible = "".join(ch if ch.isprintable() else f"<U+{ord(ch):04X}>" for ch in shown)
    return visible if len(visible) <= _EXCERPT else visible[: _EXCERPT - 1] + "…"


class _Collector:
    """Strings and names of one definition or result, within the bounds, with where each came from."""

    __slots__ = ("budget", "names", "nodes", "texts", "truncated")

    def __init__(self) -> None:
        self.texts: list[tuple[str, str]] = []
        self.names: list[tuple[str, str]] = []
        self.budget = MAX_SCAN_BYTES
        self.nodes = 0
        self.truncated = False

    def text(self, where: str, value: str) -> None:
        if self.budget <= 0:
            self.truncated = True
            return
        if len(value) > self.budget:
            value, self.truncated = value[: self.budget], True
        self.budget -= len(value)
        self.texts.append((where, value))

    def name(self, where: str, value: str) -> None:
        self.names.append((where, value[:256]))
        self.text(where, value)

    def walk(self, where: str, value: Any, depth: int = 0, *, schema: bool = False) -> None:
        """Every string under `value`; under a schema, property names as names and structural keywords skipped."""
        self.nodes += 1
        if depth > MAX_DEPTH or self.nodes > MAX_NODES:
            self.truncated = True
            return
        if isinstance(value, str):
            self.text(where, value)
        elif isinstance(value, Mapping):
            for key, item in value.items():
                key = str(key)
                if schema and key in _STRUCTURAL:
                    continue
                path = f"{where}.{key}" if where else key
                if schema and key in _NAMED and isinstance(item, Mapping):
                    for name, sub in item.items():
                        self.name(f"{path}.{name}", str(name))
                        self.walk(f"{path}.{name}", sub, depth + 2, schema=True)
                else:
                    self.walk(path, item, depth + 1, schema=schema)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                self.walk(f"{where}[{index}]", item, depth + 1, schema=schema)


def _scan_texts(texts: list[tuple[str, str]], rules: tuple[tuple[str, Any], ...], *, sized: bool) -> Iterator[Finding]:
    for where, text in texts:
        ascii_only = text.isascii()
        for rule_id, pattern in rules:
            if ascii_only and rule_id in _UNICODE_RULES:
                continue
            match = pattern.search(text)
            if match is not None:
                yield _finding(rule_id, where, _excerpt(text, match.start(), match.end()))
        if sized and len(text) > MAX_DESCRIPTION_BYTES // 4 and len(text.encode()) > MAX_DESCRIPTION_BYTES:
            yield _finding("size.oversized-description", where, f"{len(text.encode())} bytes")


def _finding(rule_id: str, where: str, excerpt: str) -> Finding:
    return Finding(rule_id, RULES_BY_ID[rule_id].severity, where, excerpt)


def _references(texts: list[tuple[str, str]], own: str, other_tools: Collection[str]) -> Iterator[Finding]:
    """Other tools a text names: identifier-like names anywhere, plain words only quoted (`echo`)."""
    if not other_tools:
        return
    others = other_tools if isinstance(other_tools, (set, frozenset)) else frozenset(other_tools)
    for where, text in texts:
        for match in _TOKEN.finditer(text):
            token = match.group(1) or match.group(2)
            quoted = match.group(1) is not None
            token = token.rstrip(".-")
            if token != own and token in others and (quoted or identifier_like(token)):
                yield _finding("shadowing.tool-reference", where, _excerpt(text, match.start(), match.end()))
                break


def _scan(collector: _Collector, *, own: str = "", other_tools: Collection[str] = ()) -> list[Finding]:
    findings = list(_scan_texts(collector.texts, _TEXT_RULES_DEFINITION, sized=True))
    for where, name in collector.names:
        reason = deceptive_name(name)
        if reason is not None:
            findings.append(_finding("unicode.homoglyph-name", where, f"{_excerpt(name, 0, len(name))}: {reason}"))
    findings += _references(collector.texts, own, other_tools)
    if collector.truncated:
        findings.append(Finding("scan.truncated", "low", "", "scanned only up to the size and depth bounds"))
    return findings


def scan_tool(tool: Mapping[str, Any], *, other_tools: Collection[str] = ()) -> list[Finding]:
    """Findings in one tool definition; `other_tools`: the names of every other tool the client may see
    (other MCPs', `{id}__{name}` on `/mcp`), for shadowing (a set is fastest)."""
    collector = _Collector()
    name = tool.get("name")
    own = name if isinstance(name, str) else ""
    collector.name("name", own)
    for key in ("title", "description"):
        if isinstance(value := tool.get(key), str):
            collector.text(key, value)
    annotations = tool.get("annotations")
    if isinstance(annotations, Mapping) and isinstance(title := annotations.get("title"), str):
        collector.text("annotations.title", title)
    for key in ("inputSchema", "outputSchema"):
        if isinstance(schema := tool.get(key), Mapping):
            collector.walk(key, schema, schema=True)
    return _scan(collector, own=own, other_tools=other_tools)


def scan_prompt(prompt: Mapping[str, Any], *, other_tools: Collection[str] = ()) -> list[Finding]:
    """Findings in one prompt definition (its description and arguments)."""
    collector = _Collector()
    if isinstance(name := prompt.get("name"), str):
        collector.name("name", name)
    for key in ("title", "description"):
        if isinstance(value := prompt.get(key), str):
            collector.text(key, value)
    arguments = prompt.get("arguments")
    if isinstance(arguments, list):
        for index, argument in enumerate(arguments[:1000]):
            if not isinstance(argument, Mapping):
                continue
            if isinstance(arg_name := argument.get("name"), str):
                collector.name(f"arguments[{index}].name", arg_name)
            for key in ("title", "description"):
                if isinstance(value := argument.get(key), str):
                    collector.text(f"arguments[{index}].{key}", value)
    return _scan(collector, other_tools=other_tools)


def _result_texts(result: Any) -> _Collector:
    collector = _Collector()
    if not isinstance(result, Mapping):
        return collector
    content = result.get("content")
    if isinstance(content, list):
        for index, item in enumerate(content):
            if not isinstance(item, Mapping):
                continue
            if isinstance(text := item.get("text"), str):
                collector.text(f"content[{index}].text", text)
            resource = item.get("resource")
            if isinstance(resource, Mapping) and isinstance(text := resource.get("text"), str):
                collector.text(f"content[{index}].resource.text", text)
    if "structuredContent" in result:
        collector.walk("structuredContent", result["structuredContent"])
    return collector


def scan_result(result: Any) -> list[Finding]:
    """Findings in a tool result (`scan.results: warn`): the definition rules that apply to text, over its text
    content, embedded resources' text and every string of its structuredContent (the first `MAX_SCAN_BYTES`)."""
    collector = _result_texts(result)
    findings = list(_scan_texts(collector.texts, _TEXT_RULES_RESULT, sized=False))
    if collector.truncated:
        findings.append(Finding("scan.truncated", "low", "", "scanned only up to the size and depth bounds"))
    return findings


def redact_secrets(result: Any) -> tuple[Any, list[Finding]]:
    """The result with well-known secret shapes replaced by a marker, and what was replaced.

    The result is changed in place (it is the proxy's own parsed copy) and returned. Consecutive text content
    items are read as one text, so a secret split across two of them is still found.
    """
    if not isinstance(result, dict):
        return result, []
    return result, [
        Finding(f"secret.{kind}", "high", where, f"[REDACTED:{kind}]") for where, kind in redact_texts(result)
    ]
