from __future__ import annotations

from mcp_bastion.cli import main

raise SystemExit(main())
