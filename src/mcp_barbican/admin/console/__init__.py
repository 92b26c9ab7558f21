"""The web console at /admin/ui (pages, script and stylesheet ship inside the package)."""

from mcp_barbican.admin.console.app import CSP, ConsoleApp

__all__ = ["CSP", "ConsoleApp"]
