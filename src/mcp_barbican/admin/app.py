"""The admin API under `/admin` (reached only through the admin guard).

Routes and shapes follow DESIGN.md section 3 and Compozy's proxy (`/admin/mcps`,
`/admin/tools`, `/admin/tools/call`, `/admin/metrics`), without its flaws: secrets are
masked in every answer, bodies are validated with the field named on failure, and every
route is described in `/admin/openapi.json`, built from the same table that dispatches.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Any, Final

import orjson
from pydantic import BaseModel

from mcp_barbican.admin.authorization import access_for, call_refusal, explain, principal_for
from mcp_barbican.admin.console import ConsoleApp
from mcp_barbican.admin.events import stream_events
from mcp_barbican.admin.models import MAX_SECONDS, IpRuleRequest, RotateRequest, TokenRequest, ToolCallRequest
from mcp_barbican.admin.openapi import openapi_document
from mcp_barbican.admin.pins import PinRoutes
from mcp_barbican.admin.present import compozy_names, instant, iso, rule_json, spawn_details, token_json
from mcp_barbican.admin.prometheus import CONTENT_TYPE, exposition
from mcp_barbican.admin.routing import ERROR_CODES, Params, Raw, Reply, Route, error
from mcp_barbican.asgi import BodyTooLarge, json_error, query_param, read_body, respond, respond_json
from mcp_barbican.audit import EVENT_TYPES, AuditEvent, request_fields
from mcp_barbican.config import SERVER_OWNER, McpConfig, format_path, masked_mcp, validate_model
from mcp_barbican.exceptions import ConfigError, StorageError, UpstreamError
from mcp_barbican.logs import worker_number
from mcp_barbican.security.authorization import KINDS
from mcp_barbican.security.iprules import new_rule
from mcp_barbican.security.principal import principal_id
from mcp_barbican.security.tokens import new_token
from mcp_barbican.security.tools import tool_allowed
from mcp_barbican.storage import RuleTableFull, TokenRecord
from mcp_barbican.types import Receive, Scope, Send

if TYPE_CHECKING:
    from collections.abc import Mapping

    from mcp_barbican.admin.control import AdminCore, ServedMcp

__all__ = ["ADMIN_BODY_LIMIT", "AdminApp"]

#: Admin bodies are small JSON documents.
ADMIN_BODY_LIMIT: Final = 1024 * 1024
MAX_AUDIT_LIMIT: Final = 1000


class AdminApp:
    """Dispatches `/admin/*` by the route table; the core holds the state it changes."""

    def __init__(self, core: AdminCore) -> None:
        self.core = core
        self.routes = [
            Route("GET", "/admin/openapi.json", self.openapi, "This document"),
            Route("GET", "/admin/mcps", self.list_mcps, "Every MCP with its masked definition and live status"),
            Route(
                "POST",
                "/admin/mcps",
                self.create_mcp,
                "Register an MCP (served at once)",
                McpConfig,
                201,
                (400, 409),
                validate=False,
            ),
            Route("GET", "/admin/mcps/{id}", self.get_mcp, "One MCP", errors=(404,)),
            *PinRoutes(core).routes(),
            Route(
                "PUT",
                "/admin/mcps/{id}",
                self.replace_mcp,
                "Replace a registered MCP (its sessions end)",
                McpConfig,
                errors=(400, 404, 409),
                validate=False,
            ),
            Route(
                "DELETE",
                "/admin/mcps/{id}",
                self.delete_mcp,
                "Remove a registered MCP (its sessions end)",
                status=204,
                errors=(404, 409),
            ),
            Route(
                "GET",
                "/admin/tools",
                self.list_tools,
                "Every tool of every ready MCP that the caller (or `principal`, with `roles`) may use",
                query=("principal", "roles"),
                caller=True,
            ),
            Route(
                "POST",
                "/admin/tools/call",
                self.call_tool,
                "Call a tool (Compozy's REST call), as the caller or as `principal`",
                ToolCallRequest,
                errors=(400, 403, 404, 502),
                caller=True,
            ),
            Route(
                "GET",
                "/admin/authorization/explain",
                self.explain,
                "Which authorization rule decides whether `principal` may use `tool` of `mcp`",
                errors=(400, 404),
                query=("principal", "roles", "mcp", "tool", "kind"),
                caller=True,
            ),
            Route("GET", "/admin/security/ip-rules", self.list_ip_rules, "Dynamic IP rules and bans, with expiry"),
            Route(
                "POST",
                "/admin/security/ip-rules",
                self.add_ip_rule,
                "Add a dynamic allow or deny rule (optionally for a duration)",
                IpRuleRequest,
                201,
                (400, 409),
            ),
            Route(
                "DELETE",
                "/admin/security/ip-rules/{id}",
                self.delete_ip_rule,
                "Remove a rule or ban",
                status=204,
                errors=(404,),
            ),
            Route("GET", "/admin/tokens", self.list_tokens, "Issued client tokens (metadata only)"),
            Route(
                "POST",
                "/admin/tokens",
                self.issue_token,
                "Issue a client token (shown once)",
                TokenRequest,
                201,
                (400, 409),
            ),
            Route("DELETE", "/admin/tokens/{id}", self.revoke_token, "Revoke a token", status=204, errors=(404,)),
            Route(
                "POST",
                "/admin/tokens/{id}/rotate",
                self.rotate_token,
                "Issue a successor; the old token keeps working for the overlap",
                RotateRequest,
                201,
                (400, 404, 409),
            ),
            Route(
                "GET",
                "/admin/audit",
                self.query_audit,
                "Audit events, newest first",
                errors=(400, 409),
                query=("type", "principal", "mcp", "since", "until", "limit"),
            ),
            Route("GET", "/admin/metrics", self.metrics, "Compozy's JSON counters"),
            Route(
                "GET", "/metrics", self.prometheus, "Prometheus text (open without a token if server.metrics.public)"
            ),
            Route("GET", "/admin/security/metrics", self.security_metrics, "The security counters"),
        ]
        self._openapi: bytes | None = None
        self.console = ConsoleApp(
            enabled=lambda: core.control.config.server.admin.ui.enabled,
            mcps=lambda: [runtime.describe() for runtime in core.control.runtimes.values()],
            feed=lambda: core.feed is not None,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"].rstrip("/") or "/"
        method: str = scope["method"]
        if path == "/admin/ui" or path.startswith("/admin/ui/"):  # pages, not API routes: not in openapi.json
            await self.console(scope, receive, send)
            return
        if path == "/admin/events" and method == "GET":  # a stream: schemathesis would wait on it forever
            await stream_events(self.core.feed, scope, receive, send)
            return
        allowed: list[str] = []
        for route in self.routes:
            params = route.match(path)
            if params is None:
                continue
            if route.method != method:
                allowed.append(route.method)
                continue
            await self._dispatch(route, params, scope, receive, send)
            return
        if allowed:
            allow = ", ".join(sorted(set(allowed))).encode()
            await json_error(send, 405, "method_not_allowed", f"{method} is not allowed here", [(b"allow", allow)])
            return
        await json_error(send, 404, "not_found", f"no admin route {path}")

    async def _dispatch(self, route: Route, params: Params, scope: Scope, receive: Receive, send: Send) -> None:
        body: Any = None
        if route.body is not None:
            parsed = await self._body(route.body, scope, receive, validate=route.validate)
            if isinstance(parsed, tuple):
                status, payload = parsed
                await respond_json(send, status, payload)
                return
            body = parsed
        for name in route.query:
            value = query_param(scope, name)
            if value is not None:
                params = {**params, name: value}
        if route.caller:
            params = {**params, "caller": principal_id(scope) or "admin"}
        try:
            status, payload = await route.handler(params, body)
        except StorageError as exc:  # the state store failed (Redis unreachable, a disk error): a 503, not a 500
            logging.getLogger(__name__).warning("admin %s %s: %s", route.method, scope["path"], exc)
            status, payload = error(503, "storage_unavailable", str(exc))
        if route.method != "GET" and self.core.audit.enabled:
            registered = route.path.startswith("/admin/mcps") and route.method in ("POST", "PUT") and status < 400
            await self._audit(route, scope, status, {**params, **spawn_details(body)} if registered else params)
        if payload is None:
            await respond(send, status)
        elif isinstance(payload, Raw):
            await respond(send, status, payload.body, [(b"content-type", payload.content_type)])
        else:
            await respond_json(send, status, payload)

    async def _audit(self, route: Route, scope: Scope, status: int, params: Mapping[str, Any]) -> None:
        event = AuditEvent(
            "token" if route.path.startswith("/admin/tokens") else "admin",
            f"{route.method} {route.path}",
            status < 400,
            resource=scope["path"],
            user=principal_id(scope),
            error=None if status < 400 else f"HTTP {status}",
            details={"status": status, **params},
            **request_fields(scope),
        )
        await self.core.audit.emit(event)

    async def _body(
        self, model: type[BaseModel], scope: Scope, receive: Receive, *, validate: bool
    ) -> BaseModel | dict[str, Any] | Reply:
        try:
            raw = await read_body(scope, receive, ADMIN_BODY_LIMIT)
        except BodyTooLarge:
            return error(413, "body_too_large", f"admin request bodies are limited to {ADMIN_BODY_LIMIT} bytes")
        try:
            data = orjson.loads(raw or b"{}")
        except orjson.JSONDecodeError as exc:
            return error(400, "invalid_json", f"the body is not JSON: {exc}")
        if not validate:
            if not isinstance(data, dict):
                return error(400, "invalid_request", "the body must be a JSON object")
            return data
        try:
            return validate_model(model, data)
        except ConfigError as exc:
            return error(400, "invalid_request", str(exc))

    # -- documentation -----------------------------------------------------------------

    async def openapi(self, params: Params, body: None) -> Reply:
        if self._openapi is None:
            self._openapi = orjson.dumps(openapi_document(self.routes))
        return 200, Raw(self._openapi)

    # -- MCPs --------------------------------------------------------------------------

    def _describe(self, runtime: ServedMcp) -> dict[str, Any]:
        status = {**runtime.describe(), "source": self.core.control.source(runtime.id) or "config"}
        return {"definition": masked_mcp(runtime.mcp), "status": status}

    async def list_mcps(self, params: Params, body: None) -> Reply:
        mcps = [self._describe(runtime) for runtime in self.core.control.runtimes.values()]
        return 200, {"mcps": mcps, "count": len(mcps)}

    async def get_mcp(self, params: Params, body: None) -> Reply:
        runtime = self.core.control.runtimes.get(params["id"])
        if runtime is None:
            return error(404, "not_found", f"no MCP with id {params['id']!r}")
        return 200, self._describe(runtime)

    async def create_mcp(self, params: Params, body: dict[str, Any]) -> Reply:
        definition = compozy_names(body)
        try:
            status, mcp_id = await self.core.registry.create(definition)
        except ConfigError as exc:
            return error(400, "invalid_request", str(exc))
        if status != 201:
            return error(status, ERROR_CODES[status], mcp_id)
        return 201, {"message": "MCP definition added successfully", "name": mcp_id}

    async def replace_mcp(self, params: Params, body: dict[str, Any]) -> Reply:
        definition = compozy_names(body)
        if definition.get("id", params["id"]) != params["id"]:
            return error(400, "invalid_request", "id: must match the id in the path")
        try:
            status, message = await self.core.registry.replace(params["id"], definition)
        except ConfigError as exc:
            return error(400, "invalid_request", str(exc))
        if status != 200:
            return error(status, ERROR_CODES[status], message)
        return 200, {"message": "MCP definition updated successfully", "name": params["id"]}

    async def delete_mcp(self, params: Params, body: None) -> Reply:
        status, message = await self.core.registry.delete(params["id"])
        if status != 204:
            return error(status, ERROR_CODES[status], message)
        return 204, None

    # -- tools -------------------------------------------------------------------------

    async def list_tools(self, params: Params, body: None) -> Reply:
        tools: list[dict[str, Any]] = []
        failures: list[dict[str, str]] = []
        principal = principal_for(self.core, params["caller"], params.get("principal"), params.get("roles"))
        for mcp_id, runtime in self.core.control.runtimes.items():
            access = access_for(self.core, runtime, principal)
            if access is None:
                continue
            if runtime.status != "ready":
                failures.append({"mcpName": mcp_id, "error": f"status {runtime.status}"})
                continue
            try:
                listed = await runtime.list_tools()
            except UpstreamError as exc:
                failures.append({"mcpName": mcp_id, "error": str(exc)})
                continue
            tools += [
                {
                    "name": tool.get("name"),
                    "description": tool.get("description", ""),
                    "inputSchema": tool.get("inputSchema", {}),
                    "mcpName": mcp_id,
                }
                for tool in listed
                if access.visible("tools", str(tool.get("name", "")))
            ]
        return 200, {"tools": tools, "count": len(tools), "errors": failures, "principal": principal.id}

    async def call_tool(self, params: Params, body: ToolCallRequest) -> Reply:
        runtime = self.core.control.runtimes.get(body.mcpName)
        if runtime is None:
            return error(404, "not_found", f"no MCP with id {body.mcpName!r}")
        if not tool_allowed(runtime.mcp.tool_filter, body.toolName):
            return error(
                403, "tool_blocked", f"tool {body.toolName!r} is blocked by the tool filter of {body.mcpName!r}"
            )
        principal = principal_for(self.core, params["caller"], body.principal, ",".join(body.roles))
        refused = call_refusal(self.core, runtime, principal, body.toolName, body.arguments)
        if refused is not None:
            return error(403, "insufficient_scope", refused)
        try:
            response = await runtime.call_tool(body.toolName, body.arguments)
        except UpstreamError as exc:
            return error(502, "upstream_error", f"MCP {body.mcpName!r}: {exc}")
        if "error" in response:
            failure = response["error"] if isinstance(response["error"], dict) else {}
            return 502, {
                "error": "tool_call_failed",
                "message": str(failure.get("message", "the upstream refused the call")),
                "rpc_error": failure,
            }
        return 200, {"result": response.get("result")}

    async def explain(self, params: Params, body: None) -> Reply:
        mcp_id, name = params.get("mcp"), params.get("tool")
        kind = params.get("kind", "tools")
        if not mcp_id or not name or kind not in KINDS:
            return error(400, "invalid_request", "name mcp and tool (and kind: tools, prompts or resources)")
        runtime = self.core.control.runtimes.get(mcp_id)
        if runtime is None:
            return error(404, "not_found", f"no MCP with id {mcp_id!r}")
        principal = principal_for(self.core, params["caller"], params.get("principal"), params.get("roles"))
        return 200, explain(self.core, runtime, principal, kind, name)

    # -- IP rules ----------------------------------------------------------------------

    async def list_ip_rules(self, params: Params, body: None) -> Reply:
        rules = await self.core.shields.rule_store.list()
        return 200, {"rules": [rule_json(rule) for rule in rules], "count": len(rules)}

    async def add_ip_rule(self, params: Params, body: IpRuleRequest) -> Reply:
        rule = new_rule(body.cidr, body.action, now=time.time(), duration=body.duration, reason=body.reason)
        try:
            await self.core.shields.rule_store.put(rule)
        except RuleTableFull as exc:
            return error(409, "rule_table_full", str(exc) or "the rule table is full of permanent rules")
        return 201, {"rule": rule_json(rule)}

    async def delete_ip_rule(self, params: Params, body: None) -> Reply:
        if not await self.core.shields.rule_store.delete(params["id"]):
            return error(404, "not_found", f"no IP rule {params['id']!r}")
        return 204, None

    # -- tokens ------------------------------------------------------------------------

    async def list_tokens(self, params: Params, body: None) -> Reply:
        now = time.time()
        records = self.core.shields.issued.records()
        return 200, {"tokens": [token_json(record, now) for record in records], "count": len(records)}

    async def issue_token(self, params: Params, body: TokenRequest) -> Reply:
        unknown = sorted(set(body.mcps or ()) - set(self.core.control.runtimes))
        if unknown:
            return error(400, "invalid_request", f"mcps: no MCP with id {', '.join(unknown)}")
        now = time.time()
        expires_at = body.expires_at.timestamp() if body.expires_at is not None else None
        if body.expires_in is not None:
            expires_at = now + body.expires_in
        if expires_at is not None and not now < expires_at <= now + MAX_SECONDS:
            return error(400, "invalid_request", "expires_at: must be in the future, and within ten years")
        token_id = body.id or f"tok-{new_token()[1][:12]}"
        taken = self._id_taken(token_id)
        if taken is not None:
            return error(409, "conflict", taken)
        plaintext, digest = new_token()
        record = TokenRecord(token_id, digest, body.roles, body.mcps, expires_at, now, None, body.description)
        await self._save_token(record)
        self.core.counters.tokens_generated += 1
        return 201, {"token": plaintext, **token_json(record, now)}

    async def revoke_token(self, params: Params, body: None) -> Reply:
        record = self.core.shields.issued.get(params["id"])
        if record is None:
            return error(404, "not_found", f"no issued token {params['id']!r}")
        if record.revoked_at is None:
            await self._save_token(dataclasses.replace(record, revoked_at=time.time()))
            self.core.counters.tokens_revoked += 1
        return 204, None

    async def rotate_token(self, params: Params, body: RotateRequest) -> Reply:
        old = self.core.shields.issued.get(params["id"])
        if old is None:
            return error(404, "not_found", f"no issued token {params['id']!r}")
        now = time.time()
        if not old.active(now):
            return error(409, "conflict", f"token {old.id!r} is revoked or expired: issue a new one")
        plaintext, digest = new_token()
        successor_id = f"{old.id.partition('.')[0]}.{digest[:6]}"
        while self._id_taken(successor_id) is not None:
            plaintext, digest = new_token()
            successor_id = f"{old.id.partition('.')[0]}.{digest[:6]}"
        successor = TokenRecord(successor_id, digest, old.roles, old.mcps, old.expires_at, now, None, old.description)
        ends = now + body.overlap
        previous = dataclasses.replace(old, expires_at=ends if old.expires_at is None else min(old.expires_at, ends))
        await self._save_token(successor)
        await self._save_token(previous)
        self.core.counters.tokens_generated += 1
        return 201, {"token": plaintext, **token_json(successor, now), "previous": token_json(previous, now)}

    def _id_taken(self, token_id: str) -> str | None:
        """Why `token_id` cannot be issued: principals are `token:{id}`, one id per credential."""
        if self.core.shields.issued.get(token_id) is not None:
            return f"a token with id {token_id!r} exists"
        if token_id == SERVER_OWNER:
            return f"token id {token_id!r} is reserved: token:server is the principal of server.auth.token"
        listed = next((loc for loc, entry in self.core.control.config.listed_tokens() if entry.id == token_id), None)
        if listed is not None:
            return f"token id {token_id!r} is configured at {format_path(listed)}"
        return None

    async def _save_token(self, record: TokenRecord) -> None:
        await self.core.storage.tokens.put(record)  # the issued-token book follows the store

    # -- audit -------------------------------------------------------------------------

    async def query_audit(self, params: Params, body: None) -> Reply:
        sink = self.core.audit.queryable
        if sink is None:
            return error(409, "no_queryable_sink", "no audit sink of type sqlite or redis is configured")
        kind = params.get("type")
        if kind is not None and kind not in EVENT_TYPES:
            return error(400, "invalid_request", f"type: expected one of {', '.join(EVENT_TYPES)}")
        try:
            limit = int(params.get("limit", "100"))
            since = instant(params.get("since"))
            until = instant(params.get("until"))
        except ValueError as exc:
            return error(400, "invalid_request", str(exc))
        if not 1 <= limit <= MAX_AUDIT_LIMIT:
            return error(400, "invalid_request", f"limit: must be 1-{MAX_AUDIT_LIMIT}")
        events = await sink.query(
            type=kind, user=params.get("principal"), mcp=params.get("mcp"), since=since, until=until, limit=limit
        )
        return 200, {"events": events, "count": len(events)}

    # -- metrics -----------------------------------------------------------------------

    async def metrics(self, params: Params, body: None) -> Reply:
        runtimes = list(self.core.control.runtimes.values())
        statuses = [runtime.status for runtime in runtimes]
        counts = {
            "total_clients": len(runtimes),
            "connected": statuses.count("ready"),
            "connecting": statuses.count("connecting"),
            "errored": statuses.count("failed"),
            "disconnected": sum(1 for s in statuses if s not in ("ready", "connecting", "failed")),
            "total_requests": sum(runtime.stats.total for runtime in runtimes),
            "total_errors": sum(runtime.stats.total_errors for runtime in runtimes),
            "max_connections": sum(runtime.mcp.max_sessions for runtime in runtimes),
        }
        reply: dict[str, Any] = {"timestamp": iso(time.time()), "metrics": counts, **_this_worker()}
        if self.core.tunnel is not None:  # requests for sessions another replica owns
            reply["session_forwards"] = {"forwarded": self.core.tunnel.forwarded, "served": self.core.tunnel.served}
        return 200, reply

    async def prometheus(self, params: Params, body: None) -> Reply:
        core = self.core
        text = exposition(core.control.runtimes.values(), core.counters, core.audit, core.storage.health, core.tunnel)
        return 200, Raw(text, CONTENT_TYPE)

    async def security_metrics(self, params: Params, body: None) -> Reply:
        snapshot = self.core.counters.snapshot()
        return 200, {
            **snapshot,
            "last_violation_at": iso(snapshot["last_violation"]),
            "dynamic_rules": len(self.core.shields.dynamic),
            "issued_tokens": len(self.core.shields.issued),
            "audit_events_written": self.core.audit.written,
            "audit_events_failed": dict(self.core.audit.failed),
            "timestamp": iso(time.time()),
            **_this_worker(),
        }


def _this_worker() -> dict[str, int]:
    """Under `serve --workers N`, which worker's counters these are (each worker counts its own requests)."""
    number = worker_number()
    return {} if number is None else {"worker": number}
