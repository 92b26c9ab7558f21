from __future__ import annotations

from mcp_barbican.cli import main

raise SystemExit(main())
