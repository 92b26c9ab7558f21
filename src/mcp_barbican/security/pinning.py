"""Tool pinning's pure parts: the canonical hash of a definition, the bounded diff, and how a listing compares
with the pins (which tools are added, changed, removed, renamed or duplicated).

A definition is hashed whole (name, title, description, schemas, annotations, `_meta`: everything the upstream
sent) as canonical JSON: sorted keys, no whitespace, UTF-8. Key order never changes a hash; any value does.
"""

from __future__ import annotations

import difflib
import hashlib
from collections import Counter
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

import orjson

__all__ = [
    "MAX_DIFF_CHARS",
    "ChangeKind",
    "Observed",
    "ToolChange",
    "body_hash",
    "canonical",
    "compare",
    "definition_hash",
    "diff",
    "listing_digest",
    "observe",
]

ChangeKind = Literal["added", "changed", "removed", "renamed", "duplicate"]
#: The most characters of diff an event or a pending entry carries.
MAX_DIFF_CHARS: Final = 8192


def canonical(definition: Any) -> bytes:
    """Canonical JSON: sorted keys, no whitespace, UTF-8 (non-ASCII kept as is)."""
    return orjson.dumps(definition, option=orjson.OPT_SORT_KEYS)


def definition_hash(definition: Mapping[str, Any]) -> str:
    """SHA-256 (hex) of the whole definition's canonical JSON."""
    return hashlib.sha256(canonical(definition)).hexdigest()


def body_hash(definition: Mapping[str, Any]) -> str:
    """SHA-256 of the definition without its name: equal for a tool and its rename."""
    return definition_hash({k: v for k, v in definition.items() if k != "name"})


def listing_digest(tools: Sequence[Any]) -> str:
    """One digest of a whole listing (order counts: an unchanged listing is the same bytes again)."""
    return hashlib.sha256(canonical(tools)).hexdigest()


def _pretty(definition: Mapping[str, Any] | None) -> list[str]:
    if definition is None:
        return []
    return orjson.dumps(definition, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2).decode().splitlines()


def diff(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None, *, limit: int = MAX_DIFF_CHARS) -> str:
    """A unified diff of the pretty canonical JSON of two definitions, cut at `limit` characters."""
    lines = difflib.unified_diff(_pretty(old), _pretty(new), "pinned", "observed", lineterm="", n=2)
    out: list[str] = []
    size = 0
    for line in lines:
        clipped = line if len(line) <= limit else line[:limit] + "…"
        if size + len(clipped) + 1 > limit:
            out.append(f"… (diff cut at {limit} characters)")
            break
        out.append(clipped)
        size += len(clipped) + 1
    return "\n".join(out)


@dataclass(frozen=True, slots=True)
class Observed:
    """One tool of a listing: its definition and hash."""

    name: str
    definition: Mapping[str, Any]
    sha256: str


@dataclass(frozen=True, slots=True)
class ToolChange:
    """One difference between a listing and the pins; `renamed_from` names the pinned tool a rename replaces."""

    tool: str
    change: ChangeKind
    observed: Observed | None = None
    renamed_from: str = ""


def observe(tools: Iterable[Any]) -> tuple[dict[str, Observed], set[str]]:
    """The listing's tools by name, and the names it lists more than once (each a suspect, kept out)."""
    named = [tool for tool in tools if isinstance(tool, dict) and isinstance(tool.get("name"), str)]
    counts = Counter(tool["name"] for tool in named)
    duplicates = {name for name, count in counts.items() if count > 1}
    found = {
        tool["name"]: Observed(tool["name"], tool, definition_hash(tool))
        for tool in named
        if tool["name"] not in duplicates
    }
    return found, duplicates


def compare(
    approved: Mapping[str, tuple[str, Mapping[str, Any] | None]],
    listing: Mapping[str, Observed],
    duplicates: Collection[str] = (),
    *,
    full: bool,
) -> list[ToolChange]:
    """What differs between the approved pins (name: (sha256, definition)) and a listing.

    A name not pinned is added, a different hash is changed; with a `full` listing a pinned name that is absent is
    removed, unless an added tool has its body (everything but the name) exactly: then that one is a rename of it.
    A name listed twice is a duplicate. Names are compared exactly: a case or look-alike change is a new tool.
    """
    changes: list[ToolChange] = [ToolChange(name, "duplicate") for name in sorted(duplicates)]
    added: list[Observed] = []
    for name, seen in listing.items():
        pinned = approved.get(name)
        if pinned is None or not pinned[0]:
            added.append(seen)
        elif pinned[0] != seen.sha256:
            changes.append(ToolChange(name, "changed", seen))
    twice = set(duplicates)
    removed = [n for n in approved if approved[n][0] and n not in listing and n not in twice] if full else []
    bodies: dict[str, str] = {}
    for name in removed:
        definition = approved[name][1]
        if definition is not None:
            bodies.setdefault(body_hash(definition), name)
    for seen in added:
        was = bodies.pop(body_hash(seen.definition), None)
        if was is not None:
            removed.remove(was)
            changes.append(ToolChange(seen.name, "renamed", seen, renamed_from=was))
        else:
            changes.append(ToolChange(seen.name, "added", seen))
    changes += [ToolChange(name, "removed") for name in removed]
    return changes
