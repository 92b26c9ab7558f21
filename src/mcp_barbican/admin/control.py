"""What the admin API sees of the server: the control plane's interface, as protocols.

The server implements them (`server/control.py`, `server/registry.py`, `server/app.py`); the
admin plane sits below the server and reaches the served MCPs, their runtimes and the
registry only through these.
"""

from __future__ import annotations

from collections.abc import Mapping, Sized
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from mcp_barbican.audit import AuditTrail, EventFeed
    from mcp_barbican.config import McpConfig, ProxyConfig
    from mcp_barbican.metrics import RequestStats
    from mcp_barbican.security.counters import SecurityCounters
    from mcp_barbican.security.iprules import DynamicRules
    from mcp_barbican.security.pins import ToolPins
    from mcp_barbican.security.tokens import IssuedTokens
    from mcp_barbican.storage import IpRule, Storage, Table

__all__ = ["AdminCore", "ControlPlane", "Registrations", "ServedMcp", "ShieldsView", "Source"]

#: Who defined a served MCP: the config file or the admin API.
Source = Literal["config", "api"]


class ServedMcp(Protocol):
    """One served MCP's runtime, as the admin API and /metrics read it."""

    @property
    def id(self) -> str: ...
    @property
    def mcp(self) -> McpConfig: ...
    @property
    def status(self) -> str: ...
    @property
    def stats(self) -> RequestStats: ...
    @property
    def sessions(self) -> Sized: ...
    @property
    def pins(self) -> ToolPins | None:
        """Its tool pins (None: not kept for it)."""
        ...

    def describe(self) -> dict[str, Any]:
        """Status, tool count and sessions as plain data."""
        ...

    async def list_tools(self) -> list[dict[str, Any]]:
        """The upstream's tools its filter lets clients see (UpstreamError when it cannot answer)."""
        ...

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        """The upstream's JSON-RPC response to `tools/call` (UpstreamError when it cannot answer)."""
        ...


class ControlPlane(Protocol):
    """The served MCPs and the live config (read side; changes go through `Registrations`)."""

    @property
    def config(self) -> ProxyConfig: ...

    @property
    def runtimes(self) -> Mapping[str, ServedMcp]:
        """Every served MCP's runtime by id, in serving order."""
        ...

    def source(self, mcp_id: str) -> Source | None:
        """Who defined a served MCP (None: no MCP is served under that id)."""
        ...


class Registrations(Protocol):
    """MCPs the admin API registers: each answer is an HTTP status and the id or the refusal."""

    async def create(self, definition: dict[str, Any]) -> tuple[int, str]: ...
    async def replace(self, mcp_id: str, definition: dict[str, Any]) -> tuple[int, str]: ...
    async def delete(self, mcp_id: str) -> tuple[int, str]: ...


class ShieldsView(Protocol):
    """The shared security state the admin API manages."""

    @property
    def rule_store(self) -> Table[IpRule]: ...
    @property
    def issued(self) -> IssuedTokens: ...
    @property
    def dynamic(self) -> DynamicRules: ...


class SessionForwards(Protocol):
    """Requests for sessions another replica owns: those this one passed on, and those it served for others."""

    forwarded: int
    served: int


class AdminCore(Protocol):
    """Everything the admin API works on."""

    @property
    def tunnel(self) -> SessionForwards | None: ...

    @property
    def control(self) -> ControlPlane: ...
    @property
    def registry(self) -> Registrations: ...
    @property
    def shields(self) -> ShieldsView: ...
    @property
    def storage(self) -> Storage: ...
    @property
    def audit(self) -> AuditTrail: ...
    @property
    def counters(self) -> SecurityCounters: ...
    @property
    def feed(self) -> EventFeed | None:
        """Live security events (None: the audit trail does not record, so there are none)."""
        ...
