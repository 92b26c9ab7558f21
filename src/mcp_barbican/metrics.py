"""Request counts and latency per MCP and method, as the request path keeps them.

The request path only bumps plain integers (a dict entry and a histogram bucket): metric
objects with locks and label lookups cost more per request than the proxying itself.
`admin/prometheus.py` turns these numbers into `mcp_barbican_*` families at scrape time.
"""

from __future__ import annotations

import bisect
from typing import Final

__all__ = ["BUCKETS", "Latency", "RequestStats"]

#: Seconds; proxied calls sit between a fraction of a millisecond and a slow tool's minutes.
BUCKETS: Final = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Latency:
    """A histogram's raw numbers: counts per bucket (not cumulative), their sum, and the total."""

    __slots__ = ("counts", "sum")

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKETS) + 1)
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(BUCKETS, seconds)] += 1
        self.sum += seconds

    def cumulative(self) -> list[tuple[str, float]]:
        running = 0
        out: list[tuple[str, float]] = []
        for bound, count in zip((*map(str, BUCKETS), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out


class RequestStats:
    """Per method: requests relayed, those that failed to reach the upstream, and their latency."""

    __slots__ = ("errors", "latency", "requests")

    def __init__(self) -> None:
        self.requests: dict[str, int] = {}
        self.errors: dict[str, int] = {}
        self.latency: dict[str, Latency] = {}

    def record(self, method: str, seconds: float | None, *, failed: bool) -> None:
        """Count one request; `seconds` None when its answer is not waited for (legacy SSE)."""
        self.requests[method] = self.requests.get(method, 0) + 1
        if failed:
            self.errors[method] = self.errors.get(method, 0) + 1
        if seconds is None:
            return
        latency = self.latency.get(method)
        if latency is None:
            latency = self.latency[method] = Latency()
        latency.observe(seconds)

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    @property
    def total_errors(self) -> int:
        return sum(self.errors.values())
