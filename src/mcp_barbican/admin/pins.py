"""The admin API's tool pin routes: `/admin/mcps/{id}/pins` (list, approve, reset). See `security/pins.py`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from mcp_barbican.admin.models import PinApproval
from mcp_barbican.admin.routing import Params, Reply, Route, error

if TYPE_CHECKING:
    from mcp_barbican.admin.control import AdminCore
    from mcp_barbican.security.pins import ToolPins

__all__ = ["PinRoutes"]


class PinRoutes:
    """Handlers of the pin routes; the store fails as a 503 (the dispatcher's StorageError answer)."""

    def __init__(self, core: AdminCore) -> None:
        self.core = core

    def routes(self) -> list[Route]:
        path = "/admin/mcps/{id}/pins"
        return [
            Route(
                "GET", path, self.list_pins, "An MCP's pinned tools and the changes awaiting approval", errors=(404,)
            ),
            Route(
                "POST",
                f"{path}/approve",
                self.approve,
                "Approve pending tool changes (`tools`, or every pending one): they are served at once",
                PinApproval,
                errors=(400, 404),
            ),
            Route(
                "POST",
                f"{path}/reset",
                self.reset,
                "Forget an MCP's pins (the next listing re-baselines)",
                errors=(404,),
            ),
            Route("DELETE", path, self.reset, "Forget an MCP's pins (as POST .../reset)", errors=(404,)),
        ]

    def _pins(self, mcp_id: str) -> ToolPins | Reply:
        runtime = self.core.control.runtimes.get(mcp_id)
        if runtime is None or runtime.pins is None:
            return error(404, "not_found", f"no MCP with id {mcp_id!r}")
        return runtime.pins

    async def list_pins(self, params: Params, body: None) -> Reply:
        pins = self._pins(params["id"])
        if isinstance(pins, tuple):
            return pins
        return 200, {"mcp": params["id"], **await pins.describe()}

    async def approve(self, params: Params, body: PinApproval) -> Reply:
        pins = self._pins(params["id"])
        if isinstance(pins, tuple):
            return pins
        approved, unknown = await pins.approve(body.tools)
        if unknown:
            listed = ", ".join(repr(name) for name in unknown[:20])
            return 400, {
                "error": "unknown_tools",
                "message": f"nothing pending for {listed} on MCP {params['id']!r}",
                "tools": unknown,
            }
        return 200, {"mcp": params["id"], "approved": approved}

    async def reset(self, params: Params, body: None) -> Reply:
        pins = self._pins(params["id"])
        if isinstance(pins, tuple):
            return pins
        return 200, {"mcp": params["id"], "forgotten": await pins.reset()}
