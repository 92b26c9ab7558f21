"""Run the demo MCP server on stdin/stdout: `python -m mcp_bastion.demo`."""

from __future__ import annotations

from mcp_bastion.demo.server import main

raise SystemExit(main())
