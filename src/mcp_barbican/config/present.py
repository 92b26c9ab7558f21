"""A loaded config as users see it: the masked dump (`config check`, admin API) and the JSON Schema."""

from __future__ import annotations

from datetime import date
from typing import Any

from pydantic import BaseModel, BeforeValidator, SecretStr

from mcp_barbican.config.auth import TokenEntry
from mcp_barbican.config.mcp import McpConfig
from mcp_barbican.config.proxy import ProxyConfig
from mcp_barbican.config.units import format_duration, parse_duration

__all__ = ["MASK", "config_schema", "masked_dump", "masked_mcp"]

#: What `masked_dump()` shows instead of a secret.
MASK = "********"


def masked_dump(config: ProxyConfig) -> dict[str, Any]:
    """The normalized config as a user reads it, with every secret replaced by MASK.

    Masked: static tokens and their hashes, the JWT secret, admin tokens, the storage URL,
    and every value of an MCP's `env` and `headers`. Durations read as written (`600s`).
    """
    dumped = _mask(config, durations=True)
    assert isinstance(dumped, dict)
    return dumped


def masked_mcp(mcp: McpConfig) -> dict[str, Any]:
    """One MCP's normalized definition with its secrets masked (what the admin API shows)."""
    dumped = _mask(mcp)
    assert isinstance(dumped, dict)
    return dumped


def _mask(value: object, *, durations: bool = False) -> object:
    if isinstance(value, BaseModel):
        return {name: _mask_field(value, name, getattr(value, name), durations) for name in type(value).model_fields}
    if isinstance(value, SecretStr):
        return MASK
    if isinstance(value, tuple | list):
        return [_mask(item, durations=durations) for item in value]
    if isinstance(value, dict):
        return {str(key): _mask(item, durations=durations) for key, item in value.items()}
    if isinstance(value, date):
        return value.isoformat()
    return value


def _mask_field(model: BaseModel, name: str, value: object, durations: bool) -> object:
    if isinstance(model, McpConfig) and name in McpConfig.SECRET_MAPS and isinstance(value, dict):
        return dict.fromkeys(value, MASK)
    if isinstance(model, TokenEntry) and name == "sha256" and value is not None:
        return MASK
    if durations and isinstance(value, float) and _is_duration(type(model).model_fields[name].metadata):
        return format_duration(value)
    return _mask(value, durations=durations)


def _is_duration(metadata: list[Any]) -> bool:
    return any(isinstance(item, BeforeValidator) and item.func is parse_duration for item in metadata)


def config_schema() -> dict[str, Any]:
    """The JSON Schema of the config file (what `ProxyConfig` accepts)."""
    schema = ProxyConfig.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "mcp-barbican config file"
    return schema
