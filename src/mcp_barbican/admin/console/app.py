"""`/admin/ui`: the operator's console, pages rendered here and a script of our own, nothing from elsewhere.

The admin guard (security/admin.py) decides who is logged in: a request it passes with a console
session gets the console; one without gets the login page and its stylesheet, and every other
path sends it there. The pages call the admin API with the session cookie and its CSRF token,
which the page carries in a meta element. Every value put into a page is escaped here; the
script writes data only as text. The CSP forbids inline script and style and any other origin.
"""

from __future__ import annotations

import html
import string
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any, Final

from mcp_barbican.asgi import json_error, query_param, respond
from mcp_barbican.audit import EVENT_TYPES
from mcp_barbican.security.console import CONSOLE_SESSION_KEY, ConsoleSession

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from mcp_barbican.types import Receive, Scope, Send

__all__ = ["CSP", "ConsoleApp", "page_headers"]

CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
PREFIX: Final = "/admin/ui"
LOGIN: Final = f"{PREFIX}/login"
#: Assets by name: content type, and whether the login page uses it (served before login).
_ASSETS: Final = {
    "console.css": (b"text/css; charset=utf-8", True),
    "console.js": (b"text/javascript; charset=utf-8", False),
}
_FAILURES: Final = {
    "token": "That is not an admin token.",
    "address": "This address may not use the admin console.",
    "error": "The login failed; try again.",
}


def page_headers(content_type: bytes = b"text/html; charset=utf-8") -> list[tuple[bytes, bytes]]:
    return [
        (b"content-type", content_type),
        (b"content-security-policy", CSP.encode()),
        (b"cache-control", b"no-store"),
        (b"x-frame-options", b"DENY"),
        (b"referrer-policy", b"same-origin"),  # no-referrer would make a form post send `Origin: null`
    ]


@cache
def _file(folder: str, name: str) -> bytes:
    return (resources.files(__package__) / folder / name).read_bytes()


def _template(name: str) -> string.Template:
    return string.Template(_file("templates", name).decode())


def _render(name: str, **values: str) -> bytes:
    """A page with every value escaped for HTML text and attributes."""
    return _template(name).substitute({key: html.escape(value, quote=True) for key, value in values.items()}).encode()


def mcp_rows(mcps: Iterable[dict[str, Any]]) -> str:
    """The MCP table's rows, escaped (the script refreshes them the same way)."""
    cells = ("id", "transport", "status", "sessions", "tool_count")
    rows = []
    for status in mcps:
        row = "".join(f"<td>{html.escape(str(status.get(cell, '')))}</td>" for cell in cells)
        rows.append(f"<tr>{row}</tr>")
    return "\n".join(rows) or '<tr><td colspan="5">No MCP is served.</td></tr>'


class ConsoleApp:
    """Serves the console's pages and assets; `enabled` and `mcps` read the live config and runtimes."""

    def __init__(
        self, *, enabled: Callable[[], bool], mcps: Callable[[], list[dict[str, Any]]], feed: Callable[[], bool]
    ) -> None:
        self.enabled = enabled
        self.mcps = mcps
        self.feed = feed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.enabled():
            await json_error(send, 404, "console_disabled", "the web console is off (server.admin.ui.enabled)")
            return
        path: str = scope["path"]
        session: ConsoleSession | None = scope.get(CONSOLE_SESSION_KEY)
        if path.startswith(f"{PREFIX}/static/"):
            await self._asset(send, path.rpartition("/")[2], session is not None)
        elif scope["method"] not in ("GET", "HEAD"):
            await json_error(send, 405, "method_not_allowed", f"{scope['method']} is not allowed on console pages")
        elif session is None:
            if path == LOGIN:
                failure = _FAILURES.get(query_param(scope, "failed") or "", "")
                await respond(send, 200, _render("login.html", failure=failure), page_headers())
            else:
                await _redirect(send, LOGIN)
        elif path in (PREFIX, f"{PREFIX}/"):
            await respond(send, 200, self._console(session), page_headers())
        elif path == LOGIN:
            await _redirect(send, PREFIX)
        else:
            await json_error(send, 404, "not_found", f"no console page {path}")

    def _console(self, session: ConsoleSession) -> bytes:
        page = _render(
            "console.html",
            csrf=session.csrf,
            expires=str(session.expires),
            principal=f"admin:{session.admin}",
            event_types=" ".join(EVENT_TYPES),
            feed_note="" if self.feed() else "Live events need an audit sink (server.audit.sinks): none is configured.",
        )
        return page.replace(b"<!--MCP_ROWS-->", mcp_rows(self.mcps()).encode())

    async def _asset(self, send: Send, name: str, logged_in: bool) -> None:
        asset = _ASSETS.get(name)
        if not logged_in and (asset is None or not asset[1]):
            await _redirect(send, LOGIN)
            return
        if asset is None:
            await json_error(send, 404, "not_found", f"no console asset {name!r}")
            return
        await respond(send, 200, _file("static", name), page_headers(asset[0]))


async def _redirect(send: Send, location: str) -> None:
    await respond(send, 303, headers=[(b"location", location.encode()), *page_headers()])
