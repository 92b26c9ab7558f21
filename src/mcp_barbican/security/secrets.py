"""Secret shapes in tool results, and their redaction (`scan.redact_secrets`).

Only shapes precise enough to redact without damaging ordinary output: cloud and SaaS keys with a fixed prefix,
AWS secret keys beside an access key id or after their variable name, private key PEM blocks, JWTs, the
password in a URL's userinfo. Each is replaced by `[REDACTED:kind]`. Consecutive text content items are read as
one text (a client shows them side by side), so a key split across two items is found and each part replaced.
The first `MAX_REDACT_BYTES` of a result are read; what lies beyond is passed on unread (documented).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any, Final

__all__ = ["MAX_REDACT_BYTES", "SECRET_KINDS", "marker", "redact_error", "redact_texts"]

MAX_REDACT_BYTES: Final = 1024 * 1024
_MAX_DEPTH: Final = 64
_MAX_NODES: Final = 100_000

#: Per kind: literals one of which a text must hold (a substring test, far cheaper than the pattern), the pattern.
_KINDS: Final[tuple[tuple[str, tuple[str, ...], str], ...]] = (
    (
        "private-key",
        ("-----BEGIN",),
        r"-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY-----(?:[\s\S]{0,16384}?-----END[A-Z0-9 ]{0,40}PRIVATE KEY-----"
        r"|[A-Za-z0-9+/=\s]*)",
    ),
    ("jwt", ("eyJ",), r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"),
    ("aws-access-key", ("AKIA", "ASIA", "ABIA", "ACCA"), r"\b(?:AKIA|ASIA|ABIA|ACCA)[A-Z0-9]{16}\b"),
    (
        "aws-secret-key",
        ("secret", "SECRET", "Secret"),
        r"(?i:aws_?secret_?access_?key|aws_?secret_?key|secret_?access_?key)[\"']?\s*[:=]\s*[\"']?"
        r"[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])",
    ),
    (
        "github-token",
        ("ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_"),
        r"\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36,255}\b|\bgithub_pat_[A-Za-z0-9_]{22,255}",
    ),
    (
        "slack-token",
        ("xox", "hooks.slack.com"),
        r"\bxox[abposr]-[A-Za-z0-9-]{10,250}|https://hooks\.slack\.com/services/[A-Za-z0-9/]{20,200}",
    ),
    ("stripe-key", ("_live_",), r"\b(?:sk|rk)_live_[A-Za-z0-9]{16,247}\b"),
    ("google-api-key", ("AIza",), r"\bAIza[0-9A-Za-z_-]{35}(?![0-9A-Za-z_-])"),
    ("url-password", ("://",), r"://[^/\s:@\"'<>]{1,128}:([^/\s@\"'<>]{1,128})@"),
)
SECRET_KINDS: Final = tuple(kind for kind, _, _ in _KINDS)
_COMPILED: Final = tuple((kind, anchors, re.compile(pattern)) for kind, anchors, pattern in _KINDS)
#: A 40-character AWS secret access key: redacted when it stands near an access key id.
_AWS_SECRET: Final = re.compile(r"(?<![A-Za-z0-9/+=])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])")
_AWS_WINDOW: Final = 200


def marker(kind: str) -> str:
    return f"[REDACTED:{kind}]"


def _spans(text: str) -> list[tuple[int, int, str]]:
    """The secrets in `text`: (start, end, kind), in order, not overlapping."""
    found: list[tuple[int, int, str]] = []
    for kind, anchors, pattern in _COMPILED:
        if not any(anchor in text for anchor in anchors):
            continue
        for match in pattern.finditer(text):
            # The password of a URL's userinfo (group 1): the user name stays.
            start, end = match.span(1) if kind == "url-password" else match.span()
            found.append((start, end, kind))
    keys = [span for span in found if span[2] == "aws-access-key"]
    for key_start, key_end, _ in keys:
        window_start = max(0, key_start - _AWS_WINDOW)
        window = _AWS_SECRET.finditer(text, window_start, min(len(text), key_end + _AWS_WINDOW))
        found.extend((m.start(), m.end(), "aws-secret-key") for m in window if _looks_random(m.group()))
    found.sort()
    spans: list[tuple[int, int, str]] = []
    for span in found:
        if not spans or span[0] >= spans[-1][1]:
            spans.append(span)
    return spans


def _looks_random(value: str) -> bool:
    return any(c.islower() for c in value) and any(c.isupper() for c in value) and any(c.isdigit() for c in value)


def _redact_run(texts: list[str]) -> tuple[list[str], list[tuple[int, str]]]:
    """Redact secrets in texts read as one (consecutive content items); the new texts and (item, kind) found."""
    joined = texts[0] if len(texts) == 1 else "".join(texts)
    spans = _spans(joined)
    if not spans:
        return texts, []
    starts: list[int] = []
    offset = 0
    for text in texts:
        starts.append(offset)
        offset += len(text)
    pieces: list[list[str]] = [[] for _ in texts]
    cursors = list(starts)
    found: list[tuple[int, str]] = []
    for start, end, kind in spans:
        first = True
        for index, base in enumerate(starts):
            top = base + len(texts[index])
            if end <= base or start >= top:
                continue
            low, high = max(start, base), min(end, top)
            pieces[index].append(joined[cursors[index] : low])
            if first:
                pieces[index].append(marker(kind))
                found.append((index, kind))
                first = False
            cursors[index] = high
    out = [
        "".join(pieces[i]) + joined[cursors[i] : starts[i] + len(texts[i])] if pieces[i] else texts[i]
        for i in range(len(texts))
    ]
    return out, found


class _Budget:
    __slots__ = ("chars", "nodes")

    def __init__(self) -> None:
        self.chars = MAX_REDACT_BYTES
        self.nodes = _MAX_NODES

    def redact(self, texts: list[str]) -> tuple[list[str], list[tuple[int, str]]]:
        """`_redact_run` over as much of the texts as the budget leaves; the rest passes unread."""
        total = sum(len(text) for text in texts)
        if total <= self.chars:
            self.chars -= total
            return _redact_run(texts)
        heads: list[str] = []
        tails: list[str] = []
        for text in texts:
            allowed = max(0, min(len(text), self.chars))
            self.chars -= allowed
            heads.append(text[:allowed])
            tails.append(text[allowed:])
        if not any(heads):
            return texts, []
        new, hits = _redact_run(heads)
        return [head + tail for head, tail in zip(new, tails, strict=True)], hits


def redact_texts(result: dict[str, Any]) -> list[tuple[str, str]]:
    """Redact `result` in place: its text content (consecutive items as one text), embedded resources' text and
    structuredContent's strings. Returns (where, kind) per secret replaced."""
    budget = _Budget()
    found: list[tuple[str, str]] = []
    content = result.get("content")
    if isinstance(content, list):
        found += _redact_content(content, budget)
    if "structuredContent" in result:
        result["structuredContent"] = _redact_value(result["structuredContent"], "structuredContent", budget, 0, found)
    return found


def redact_error(error: dict[str, Any]) -> list[tuple[str, str]]:
    """Redact a JSON-RPC error in place (its message and data: a failing tool may print its configuration)."""
    budget = _Budget()
    found: list[tuple[str, str]] = []
    for key in ("message", "data"):
        if key in error:
            error[key] = _redact_value(error[key], f"error.{key}", budget, 0, found)
    return found


def _text_runs(content: list[Any]) -> Iterator[list[int]]:
    """Indexes of consecutive text items."""
    run: list[int] = []
    for index, item in enumerate(content):
        if isinstance(item, dict) and isinstance(item.get("text"), str):
            run.append(index)
            continue
        if run:
            yield run
            run = []
    if run:
        yield run


def _redact_content(content: list[Any], budget: _Budget) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for run in _text_runs(content):
        new, hits = budget.redact([content[i]["text"] for i in run])
        for index, text in zip(run, new, strict=True):
            content[index]["text"] = text
        found += [(f"content[{run[item]}].text", kind) for item, kind in hits]
    for index, item in enumerate(content):
        resource = item.get("resource") if isinstance(item, dict) else None
        if isinstance(resource, dict) and isinstance(embedded := resource.get("text"), str):
            new, hits = budget.redact([embedded])
            resource["text"] = new[0]
            found += [(f"content[{index}].resource.text", kind) for _, kind in hits]
    return found


def _redact_value(value: Any, where: str, budget: _Budget, depth: int, found: list[tuple[str, str]]) -> Any:
    budget.nodes -= 1
    if depth > _MAX_DEPTH or budget.nodes < 0:
        return value
    if isinstance(value, str):
        new, hits = budget.redact([value])
        found.extend((where, kind) for _, kind in hits)
        return new[0]
    if isinstance(value, dict):
        for key, item in value.items():
            value[key] = _redact_value(item, f"{where}.{key}", budget, depth + 1, found)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            value[index] = _redact_value(item, f"{where}[{index}]", budget, depth + 1, found)
    return value
