"""Security counters kept in one place (the seed guide's SecurityMetrics), for metrics and admin.

The proxy runs on one event loop, so plain increments are safe: no lock, as the guide's
sample used, and nothing to contend on in the request path.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SecurityCounters"]


@dataclass
class SecurityCounters:
    """What the security layers saw since start."""

    authentication_attempts: int = 0
    authentication_failures: int = 0
    rate_limit_exceeded: int = 0
    ip_blocked: int = 0
    bans_issued: int = 0
    origin_rejected: int = 0
    requests_rejected_limits: int = 0
    authorization_denied: int = 0
    tokens_generated: int = 0
    tokens_revoked: int = 0
    egress_refused: int = 0
    security_violations: int = 0
    last_violation: float | None = field(default=None)
    #: Tool definition changes seen, by (mcp, change): added, changed, removed, renamed, duplicate.
    integrity_changes: dict[tuple[str, str], int] = field(default_factory=dict)
    #: Alert deliveries and deliveries given up, by (webhook, kind).
    alerts_sent: dict[tuple[str, str], int] = field(default_factory=dict)
    alerts_failed: dict[tuple[str, str], int] = field(default_factory=dict)

    def violation(self) -> None:
        """Any refused request counts as a violation too (the guide's SecurityViolations)."""
        self.security_violations += 1
        self.last_violation = time.time()

    def snapshot(self) -> dict[str, Any]:
        """The seed guide's field names, plus ours; times as Unix seconds (None if never)."""
        return {
            "authentication_attempts": self.authentication_attempts,
            "authentication_failures": self.authentication_failures,
            "rate_limit_exceeded": self.rate_limit_exceeded,
            "ip_blocked": self.ip_blocked,
            "bans_issued": self.bans_issued,
            "origin_rejected": self.origin_rejected,
            "requests_rejected_limits": self.requests_rejected_limits,
            "authorization_denied": self.authorization_denied,
            "tokens_generated": self.tokens_generated,
            "tokens_revoked": self.tokens_revoked,
            "egress_refused": self.egress_refused,
            "security_violations": self.security_violations,
            "last_violation": self.last_violation,
        }
