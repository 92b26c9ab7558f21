"""The admin plane: the admin API behind the admin guard."""

from mcp_barbican.admin.app import AdminApp

__all__ = ["AdminApp"]
