"""Where state lives: API-registered MCPs, issued tokens, dynamic IP rules and bans."""

from mcp_barbican.storage.base import McpRecord, Storage, TokenRecord, open_storage

__all__ = ["McpRecord", "Storage", "TokenRecord", "open_storage"]
