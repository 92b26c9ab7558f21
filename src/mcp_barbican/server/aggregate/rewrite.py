"""What the aggregated endpoint changes in the messages it relays: pure functions, table-tested.

On the way up, a request naming a tool, prompt or resource is routed by its prefix and reaches
the upstream with the upstream's own name. On the way down, every name and URI the upstream
gives out carries its MCP: listings, resource contents, resource links and embedded resources
in tool results and prompt messages, and `resources/updated` notifications.
"""

from __future__ import annotations

from typing import Any, Final

from mcp_barbican.server.aggregate.names import prefixed, split_name, unwrap_uri, wrap_uri

__all__ = ["LISTED", "route", "rewrite_notification", "rewrite_result"]

#: Listing methods: the result's list key, and the key of each entry that carries the MCP.
LISTED: Final = {
    "tools/list": ("tools", "name"),
    "prompts/list": ("prompts", "name"),
    "resources/list": ("resources", "uri"),
    "resources/templates/list": ("resourceTemplates", "uriTemplate"),
}
#: Requests that name one thing: the params key and whether it is a URI (else a prefixed name).
_ROUTED: Final = {
    "tools/call": ("name", False),
    "prompts/get": ("name", False),
    "resources/read": ("uri", True),
    "resources/subscribe": ("uri", True),
    "resources/unsubscribe": ("uri", True),
}
_COMPLETION_REFS: Final = {"ref/prompt": ("name", False), "ref/resource": ("uri", True)}
#: Content items that name a resource.
_LINKING: Final = frozenset({"resource_link", "resource"})


def route(method: str, params: Any) -> tuple[str, dict[str, Any]] | None:
    """The MCP a request goes to and its params as that MCP knows them; None when it names no MCP of ours.

    The params are a copy: the caller's message is left as it came.
    """
    if not isinstance(params, dict):
        return None
    if method == "completion/complete":
        ref = params.get("ref")
        if not isinstance(ref, dict):
            return None
        key_uri = _COMPLETION_REFS.get(str(ref.get("type")))
        if key_uri is None:
            return None
        found = _unname(ref.get(key_uri[0]), uri=key_uri[1])
        if found is None:
            return None
        return found[0], {**params, "ref": {**ref, key_uri[0]: found[1]}}
    key_uri = _ROUTED.get(method)
    if key_uri is None:
        return None
    found = _unname(params.get(key_uri[0]), uri=key_uri[1])
    if found is None:
        return None
    return found[0], {**params, key_uri[0]: found[1]}


def _unname(value: object, *, uri: bool) -> tuple[str, str] | None:
    return unwrap_uri(value) if uri else split_name(value)


def rewrite_result(mcp_id: str, method: str, result: Any) -> bool:
    """Give the names and URIs in an upstream's result their MCP, in place; whether anything changed."""
    if not isinstance(result, dict):
        return False
    if method == "tools/call":  # the common answer: most name no resource, so look before calling
        content = result.get("content")
        if not isinstance(content, list):
            return False
        changed = False
        for item in content:
            if isinstance(item, dict) and item.get("type") in _LINKING:
                changed = _rewrite_item(mcp_id, item) or changed
        return changed
    listed = LISTED.get(method)
    if listed is not None:
        return _rewrite_listing(mcp_id, result, *listed)
    if method == "resources/read":
        return _wrap_all(mcp_id, result.get("contents"))
    if method == "prompts/get":
        messages = result.get("messages")
        changed = False
        if isinstance(messages, list):
            for message in messages:
                if isinstance(message, dict):
                    changed |= _rewrite_item(mcp_id, message.get("content"))
        return changed
    return False


def _rewrite_listing(mcp_id: str, result: dict[str, Any], list_key: str, name_key: str) -> bool:
    entries = result.get(list_key)
    if not isinstance(entries, list):
        return False
    kept = []
    for entry in entries:
        value = entry.get(name_key) if isinstance(entry, dict) else None
        if not isinstance(value, str):
            continue  # an entry without its name cannot be routed back: left out
        entry[name_key] = wrap_uri(mcp_id, value) if name_key in ("uri", "uriTemplate") else prefixed(mcp_id, value)
        kept.append(entry)
    result[list_key] = kept
    return True


def _wrap_all(mcp_id: str, items: Any) -> bool:
    changed = False
    if isinstance(items, list):
        for item in items:
            if isinstance(item, dict) and isinstance(item.get("uri"), str):
                item["uri"] = wrap_uri(mcp_id, item["uri"])
                changed = True
    return changed


def _rewrite_item(mcp_id: str, item: Any) -> bool:
    """A resource link's URI, or an embedded resource's, as the client must ask for it."""
    if not isinstance(item, dict):
        return False
    kind = item.get("type")
    if kind == "resource_link" and isinstance(item.get("uri"), str):
        item["uri"] = wrap_uri(mcp_id, item["uri"])
        return True
    if kind == "resource" and isinstance(item.get("resource"), dict):
        return _wrap_all(mcp_id, [item["resource"]])
    return False


def rewrite_notification(mcp_id: str, method: str, params: Any) -> None:
    """Give a notification from an upstream its MCP, in place (URIs; the logger of a log line)."""
    if not isinstance(params, dict):
        return
    if method == "notifications/resources/updated" and isinstance(params.get("uri"), str):
        params["uri"] = wrap_uri(mcp_id, params["uri"])
    elif method == "notifications/message":
        logger = params.get("logger")
        params["logger"] = prefixed(mcp_id, logger) if isinstance(logger, str) and logger else mcp_id
