"""The offline tool-definition and tool-result scanner.

Deterministic, no model: the rules of `scan_rules` over tool and prompt definitions (names, titles, descriptions,
schemas walked recursively with their property names, descriptions, defaults, enums and examples, prompt
arguments) and over tool results (text content, embedded resources' text, structuredContent). What one call
scans is bounded (depth, nodes, bytes: `MAX_SCAN_BYTES`); a definition or result beyond the bounds is scanned
as far as the bounds go and says so with a `scan.truncated` finding.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

from mcp_barbican.security.scan_rules import (
    MAX_DESCRIPTION_BYTES,
    NEEDLES,
    RULES,
    RULES_BY_ID,
    TEXT_PATTERNS,
    Searcher,
    deceptive_name,
    identifier_like,
)
from mcp_barbican.security.secrets import redact_error, redact_texts

__all__ = [
    "MAX_SCAN_BYTES",
    "RULES",
    "SEVERITIES",
    "Finding",
    "Severity",
    "redact_error_secrets",
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
_TextRule = tuple[str, Searcher, tuple[str, ...] | None]
_TEXT_RULES_DEFINITION: Final[tuple[_TextRule, ...]] = tuple(
    (rule_id, pattern, NEEDLES[rule_id]) for rule_id, pattern in TEXT_PATTERNS.items()
)
_TEXT_RULES_RESULT: Final = tuple(rule for rule in _TEXT_RULES_DEFINITION if RULES_BY_ID[rule[0]].results)
#: A word of prose or an identifier (`send_email`, `srv__read`, `api.v1-get`): candidates for another tool's name.
_WORD: Final = re.compile(r"\w+(?:[.\-]\w+)*")
_QUOTES: Final = (("`", "`"), ("'", "'"), ('"', '"'), ("“", "”"), ("‘", "’"))


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
        """A name: checked for look-alike letters, and read as text only for the Unicode rules (it has no prose)."""
        self.names.append((where, value[:256]))
        if not value.isascii():
            self.text(where, value)

    def walk(self, where: str, value: Any, depth: int = 0, *, schema: bool = False) -> None:
        """Every string under `value`; under a schema, property names as names and structural keywords skipped."""
        self.nodes += 1
        if depth > MAX_DEPTH or self.nodes > MAX_NODES:
            self.truncated = True
            return
        if isinstance(value, str):
            self.text(where, value)
        elif isinstance(value, dict):
            for key, item in value.items():
                if item is None or isinstance(item, (bool, int, float)):
                    continue
                key = str(key)
                if schema and key in _STRUCTURAL:
                    continue
                path = f"{where}.{key}" if where else key
                if isinstance(item, str):
                    self.text(path, item)
                elif schema and key in _NAMED and isinstance(item, dict):
                    for name, sub in item.items():
                        self.name(f"{path}.{name}", str(name))
                        self.walk(f"{path}.{name}", sub, depth + 2, schema=True)
                else:
                    self.walk(path, item, depth + 1, schema=schema)
        elif isinstance(value, list):
            for index, item in enumerate(value):
                self.walk(f"{where}[{index}]", item, depth + 1, schema=schema)


def _scan_texts(texts: list[tuple[str, str]], rules: tuple[_TextRule, ...], *, sized: bool) -> Iterator[Finding]:
    """Each rule over each text (lowercased), its pattern run only on texts holding one of its needles."""
    lowered = [text.lower() for _, text in texts]
    joined = "\n".join(lowered)
    starts: list[int] = []
    offset = 0
    for low in lowered:
        starts.append(offset)
        offset += len(low) + 1
    non_ascii = None if joined.isascii() else {i for i, (_, text) in enumerate(texts) if not text.isascii()}
    for rule_id, pattern, needles in rules:
        holding = (non_ascii or ()) if needles is None else _holding(joined, starts, needles)
        for index in sorted(holding):
            where, text = texts[index]
            low = lowered[index]
            match = pattern.search(low)
            if match is not None:
                shown = text if len(text) == len(low) else low
                yield _finding(rule_id, where, _excerpt(shown, match.start(), match.end()))
    if sized:
        for where, text in texts:
            if len(text) > MAX_DESCRIPTION_BYTES // 4 and len(text.encode()) > MAX_DESCRIPTION_BYTES:
                yield _finding("size.oversized-description", where, f"{len(text.encode())} bytes")


def _holding(joined: str, starts: list[int], needles: tuple[str, ...]) -> set[int]:
    """The indexes of the texts (joined, lowercased, at `starts`) that hold one of the needles."""
    found: set[int] = set()
    for needle in needles:
        at = joined.find(needle)
        while at >= 0:
            index = bisect.bisect_right(starts, at) - 1
            found.add(index)
            following = index + 1
            at = joined.find(needle, starts[following]) if following < len(starts) else -1
    return found


def _finding(rule_id: str, where: str, excerpt: str) -> Finding:
    return Finding(rule_id, RULES_BY_ID[rule_id].severity, where, excerpt)


def _references(texts: list[tuple[str, str]], own: str, other_tools: Collection[str]) -> Iterator[Finding]:
    """Other tools a text names: identifier-like names anywhere, plain words only quoted (`echo`)."""
    if not other_tools:
        return
    others = other_tools if isinstance(other_tools, (set, frozenset)) else frozenset(other_tools)
    if not others.intersection(_WORD.findall("\n".join(text for _, text in texts))) - {own}:
        return
    for where, text in texts:
        named = others.intersection(_WORD.findall(text))
        for name in sorted(named - {own}):
            if identifier_like(name) or any(f"{q}{name}{e}" in text for q, e in _QUOTES):
                start = text.find(name)
                yield _finding("shadowing.tool-reference", where, _excerpt(text, start, start + len(name)))
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


def redact_error_secrets(error: Any) -> list[Finding]:
    """The same for a JSON-RPC error answering a tool call (its message and data), in place."""
    if not isinstance(error, dict):
        return []
    return [Finding(f"secret.{kind}", "high", where, f"[REDACTED:{kind}]") for where, kind in redact_error(error)]
