"""Run the demo MCP server on stdin/stdout: `python -m mcp_barbican.demo`."""

from __future__ import annotations

from mcp_barbican.demo.server import main

raise SystemExit(main())
