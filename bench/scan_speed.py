"""How long the definition scanner takes over a 500-tool listing (issue 13: under 50 ms), and the result scanner and
redaction over one ordinary and one 1 MiB tool result. Prints the times; asserts nothing (never a timed test).

    python bench/scan_speed.py [--tools 500] [--rounds 20]
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

from mcp_barbican.security.scanner import redact_secrets, scan_result, scan_tool


def listing(count: int) -> list[dict[str, Any]]:
    """Tools shaped like real servers' (GitHub-, filesystem- and Slack-like descriptions and schemas)."""
    tools = []
    for i in range(count):
        properties = {
            "path": {"type": "string", "description": "Absolute path of the file to read; must be inside a root."},
            "owner": {"type": "string", "description": "Repository owner (user or organisation)."},
            "limit": {"type": "integer", "minimum": 1, "maximum": 100, "default": 30, "description": "Page size."},
            "mode": {"type": "string", "enum": ["fast", "full", "diff"], "description": "How much to return."},
            "labels": {"type": "array", "items": {"type": "string"}, "description": "Labels to filter by."},
        }
        tools.append(
            {
                "name": f"server{i % 7}__tool_{i}",
                "title": f"Tool number {i}",
                "description": (
                    f"Reads the file at path and returns its content (tool {i}). Ignores case when matching. "
                    "Lists issues of a repository with their labels, newest first; see https://docs.example.com/api "
                    "for the fields. Returns at most `limit` items per page; use the cursor for the next page."
                ),
                "inputSchema": {"type": "object", "properties": properties, "required": ["path"]},
                "outputSchema": {"type": "object", "properties": {"items": {"type": "array"}}},
                "annotations": {"title": f"Tool {i}", "readOnlyHint": True},
            }
        )
    return tools


def timed(rounds: int, work: Any) -> tuple[list[float], list[float]]:
    """Wall and CPU milliseconds per round (on a shared machine the CPU time is the steadier of the two)."""
    wall, cpu = [], []
    for _ in range(rounds):
        start, start_cpu = time.perf_counter(), time.process_time()
        work()
        wall.append((time.perf_counter() - start) * 1000)
        cpu.append((time.process_time() - start_cpu) * 1000)
    return wall, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tools", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    tools = listing(args.tools)
    names = frozenset(tool["name"] for tool in tools)

    def scan_listing() -> None:
        for tool in tools:
            scan_tool(tool, other_tools=names)

    def report(label: str, times: tuple[list[float], list[float]]) -> None:
        wall, cpu = times
        print(
            f"{label}: wall median {statistics.median(wall):.2f} ms (min {min(wall):.2f}), "
            f"CPU median {statistics.median(cpu):.2f} ms (min {min(cpu):.2f})"
        )

    report(f"scan_tool over a {args.tools}-tool listing", timed(args.rounds, scan_listing))
    result = {"content": [{"type": "text", "text": "Line of ordinary output, nothing secret here. " * 100}]}
    report("scan_result, 4.6 KB result", timed(args.rounds, lambda: scan_result(result)))
    report("redact_secrets, 4.6 KB result", timed(args.rounds, lambda: redact_secrets(result)))
    big = {"content": [{"type": "text", "text": "x" * (1024 * 1024)}]}
    report("scan_result, 1 MiB result", timed(max(1, args.rounds // 4), lambda: scan_result(big)))
    report("redact_secrets, 1 MiB result", timed(max(1, args.rounds // 4), lambda: redact_secrets(big)))


if __name__ == "__main__":
    main()
