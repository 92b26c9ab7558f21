"""The alert decisions, each pure: which kind an audit record is, when failures make a burst, when a
webhook may send a kind again, what a message says, and how long to wait before trying again.

A record is the audit trail's (`AuditEvent.as_dict()`): principal ids and addresses, never credentials,
so a message made of records carries none either.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from mcp_barbican.audit.events import rfc3339
from mcp_barbican.config import AlertKind

__all__ = [
    "AUTH_FAILURE",
    "MAX_EVENTS",
    "AuthBurst",
    "Batch",
    "Throttle",
    "backoff",
    "classify",
    "describe",
    "json_payload",
    "slack_payload",
    "summary",
]

Record = Mapping[str, Any]

#: One failed authentication: not an alert by itself, a step towards an `auth_failures` burst.
AUTH_FAILURE: Final = "auth_failure"
#: Records a message carries (the first ones of its batch); the rest are counted.
MAX_EVENTS: Final = 5
#: Seconds before the second try of a delivery, doubled for each try after, at most `BACKOFF_CAP`.
BACKOFF_BASE: Final = 1.0
BACKOFF_CAP: Final = 60.0
_SCANNED: Final = frozenset({"integrity.finding", "result_finding"})


def classify(record: Record) -> AlertKind | Literal["auth_failure"] | None:
    """The alert kind of one audit record (None: not alerted on)."""
    kind, action, success = record.get("type"), record.get("action"), record.get("success")
    if kind == "ban" and action == "ban" and success:
        return "ban"
    if kind == "authentication" and success is False:
        return AUTH_FAILURE
    if kind == "upstream" and action == "upstream.down":
        return "upstream_down"
    if kind == "integrity" and action == "integrity.changed":
        return "tool_changed"
    if kind == "integrity" and action in _SCANNED:
        return "scan_finding"
    return None


class AuthBurst:
    """`count` failures within `window` seconds make a burst; the failures that made one start the next afresh."""

    def __init__(self, count: int, window: float) -> None:
        self.count = count
        self.window = window
        self._times: deque[float] = deque(maxlen=count)
        self._latest: deque[Record] = deque(maxlen=MAX_EVENTS)

    def add(self, record: Record, now: float) -> dict[str, Any] | None:
        """The burst's own record when this failure completes one, else None."""
        self._times.append(now)
        self._latest.append(record)
        if len(self._times) < self.count or now - self._times[0] > self.window:
            return None
        latest = list(self._latest)
        self._times.clear()
        self._latest.clear()
        addresses = sorted({str(each["remote_addr"]) for each in latest if each.get("remote_addr")})
        return {
            "timestamp": rfc3339(time.time()),
            "type": "authentication",
            "action": "auth_failures",
            "success": False,
            "details": {"failures": self.count, "window_seconds": self.window, "remote_addrs": addresses},
            "latest": latest,
        }


@dataclass
class Batch:
    """What one message tells: `count` records of one kind, the first `MAX_EVENTS` of them kept."""

    kind: AlertKind
    count: int
    events: list[Record] = field(default_factory=list)


class Throttle:
    """One kind on one webhook: the first record goes out at once, then at most one message per `min_interval`."""

    def __init__(self, kind: AlertKind, min_interval: float) -> None:
        self.kind = kind
        self.min_interval = min_interval
        self.last_sent: float | None = None
        self.count = 0
        self.events: list[Record] = []

    def add(self, record: Record) -> None:
        self.count += 1
        if len(self.events) < MAX_EVENTS:
            self.events.append(record)

    def due_at(self) -> float | None:
        """When the waiting records may go (None: nothing waits)."""
        if not self.count:
            return None
        return 0.0 if self.last_sent is None else self.last_sent + self.min_interval

    def take(self, now: float) -> Batch | None:
        """The batch to send now, if one is due (the interval counts from now)."""
        due = self.due_at()
        if due is None or now < due:
            return None
        batch = Batch(self.kind, self.count, self.events)
        self.count, self.events, self.last_sent = 0, [], now
        return batch


def backoff(attempt: int) -> float:
    """Seconds to wait after failed try number `attempt` (1, 2, ...): 1, 2, 4, ... at most BACKOFF_CAP."""
    return float(min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (attempt - 1)))


def _details(record: Record) -> Mapping[str, Any]:
    details = record.get("details")
    return details if isinstance(details, Mapping) else {}


def _until(expires_at: object) -> str:
    if not isinstance(expires_at, int | float):
        return "until lifted"
    return "until " + time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(expires_at))


def describe(kind: AlertKind, record: Record) -> str:
    """One line saying what one record of `kind` means."""
    details = _details(record)
    mcp, tool = record.get("mcp") or "?", record.get("tool") or "?"
    if kind == "ban":
        reason = f" ({details['reason']})" if details.get("reason") else ""
        return f"address {record.get('resource') or '?'} banned {_until(details.get('expires_at'))}{reason}"
    if kind == "auth_failures":
        addresses = ", ".join(details.get("remote_addrs") or ()) or "unknown addresses"
        window = details.get("window_seconds")
        within = f"{window:g}s" if isinstance(window, int | float) else "the window"
        return f"{details.get('failures')} authentication failures within {within} (from {addresses})"
    if kind == "upstream_down":
        error = f": {record['error']}" if record.get("error") else ""
        return f"upstream {mcp} is down{error}"
    if kind == "tool_changed":
        held = " (hidden until approved)" if details.get("hidden") else ""
        return f"MCP {mcp}: tool {tool} {details.get('change') or 'changed'}{held}"
    where = "the definition of" if record.get("action") == "integrity.finding" else "a result of"
    findings = details.get("findings")
    listed = findings if isinstance(findings, list) else []
    rules = sorted({str(f.get("rule")) for f in listed if isinstance(f, Mapping)})
    named = f" ({', '.join(rules)})" if rules else ""
    return f"MCP {mcp}: scanner findings{named} in {where} tool {tool}"


def summary(batch: Batch) -> str:
    """The message's line: the first record described, and how many more there were."""
    first = describe(batch.kind, batch.events[0]) if batch.events else batch.kind
    return first if batch.count == 1 else f"{first}, and {batch.count - 1} more"


def json_payload(batch: Batch, instance: str, now: float) -> dict[str, Any]:
    """The `json` format's object (docs/alerts.md documents it; keep it stable)."""
    return {
        "source": "mcp-barbican",
        "instance": instance,
        "kind": batch.kind,
        "summary": summary(batch),
        "count": batch.count,
        "events": [dict(record) for record in batch.events[:MAX_EVENTS]],
        "timestamp": rfc3339(now),
    }


def slack_payload(batch: Batch, instance: str) -> dict[str, Any]:
    """The `slack` format: Slack's incoming-webhook `{"text": ...}` (also read by Mattermost, Rocket.Chat...).

    The summary, then one line for each further record the batch kept.
    """
    others = [f"- {describe(batch.kind, record)}" for record in batch.events[1:MAX_EVENTS]]
    lines = [f"[mcp-barbican {instance}] {batch.kind}: {summary(batch)}", *others]
    return {"text": "\n".join(_slack_escape(line) for line in lines)}


def _slack_escape(text: str) -> str:
    """Slack's three control characters: a record's text never becomes a link or a mention."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
