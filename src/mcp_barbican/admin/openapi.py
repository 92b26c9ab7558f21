"""The OpenAPI 3.1 document of the admin API, built from the route table that dispatches it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from mcp_barbican import __version__

if TYPE_CHECKING:
    from mcp_barbican.admin.routing import Route

__all__ = ["openapi_document"]

_REF = "#/components/schemas/{model}"
_ERROR = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
}
_REASONS = {
    400: "Invalid body (the message names the field)",
    401: "Missing or invalid admin token",
    403: "Address not on the admin list",
    404: "Not found",
    405: "Method not allowed",
    409: "Conflict",
    413: "Body too large",
    503: "The state store failed (Redis unreachable, a disk error)",
}


def _error_response(status: int) -> dict[str, Any]:
    content = {"application/json": {"schema": {"$ref": _REF.format(model="Error")}}}
    return {"description": _REASONS.get(status, "Error"), "content": content}


def openapi_document(routes: Sequence[Route]) -> dict[str, Any]:
    schemas: dict[str, Any] = {"Error": _ERROR}
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        responses: dict[str, Any] = {}
        if route.status == 204:
            responses["204"] = {"description": "Done"}
        elif route.path == "/metrics":
            responses["200"] = {"description": "OK", "content": {"text/plain": {"schema": {"type": "string"}}}}
        else:
            content = {"application/json": {"schema": {"type": "object"}}}
            responses[str(route.status)] = {"description": "OK", "content": content}
        for status in (*route.errors, 401, 403, 405, 503):
            responses[str(status)] = _error_response(status)
        operation: dict[str, Any] = {
            "summary": route.summary,
            "operationId": route.handler.__name__,
            "responses": responses,
        }
        names = [part[1:-1] for part in route.path.split("/") if part.startswith("{")]
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
            for name in names
        ]
        parameters += [{"name": name, "in": "query", "schema": {"type": "string"}} for name in route.query]
        if parameters:
            operation["parameters"] = parameters
        if route.body is not None:
            schema = route.body.model_json_schema(ref_template=_REF)
            schemas.update(schema.pop("$defs", {}))
            schemas[route.body.__name__] = schema
            ref = {"$ref": _REF.format(model=route.body.__name__)}
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": ref}}}
            responses.setdefault("413", _error_response(413))
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {"title": "mcp-barbican admin API", "version": __version__},
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"adminToken": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"adminToken": []}],
    }
