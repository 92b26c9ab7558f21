"""Request bodies of the admin API: validated like the config file, errors name the field."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from mcp_barbican.config import Duration, IpOrNetwork, McpId, PositiveDuration

__all__ = ["IpRuleRequest", "PinApproval", "RotateRequest", "TokenRequest", "ToolCallRequest"]

_TOKEN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


def _check_token_id(value: str) -> str:
    if not _TOKEN_ID.fullmatch(value):
        raise ValueError("use 1-64 characters from A-Z, a-z, 0-9, '_', '.' and '-', starting with a letter or digit")
    return value


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


#: Ten years: longer lifetimes are mistakes (and overflow date arithmetic).
MAX_SECONDS = 10 * 365 * 86400
Lifetime = Annotated[PositiveDuration, Field(le=MAX_SECONDS)]
Overlap = Annotated[Duration, Field(le=MAX_SECONDS)]

TokenId = Annotated[str, AfterValidator(_check_token_id)]
ShortText = Annotated[str, Field(max_length=200)]


class IpRuleRequest(_Model):
    """A dynamic rule: `cidr` is an address or a network; no `duration` means until removed."""

    cidr: IpOrNetwork
    action: Literal["allow", "deny"] = "deny"
    duration: Lifetime | None = None
    reason: ShortText = ""


class TokenRequest(_Model):
    """A client token to issue; `mcps` limits it to those MCPs (default: every token-auth MCP)."""

    id: TokenId | None = None
    roles: tuple[Annotated[str, Field(min_length=1, max_length=64)], ...] = ()
    mcps: tuple[McpId, ...] | None = None
    expires_in: Lifetime | None = None
    expires_at: datetime | None = None
    description: ShortText = ""


class RotateRequest(_Model):
    """How long the old token keeps working beside its successor (0: it stops at once)."""

    overlap: Overlap = 3600.0


class ToolCallRequest(_Model):
    """Compozy's REST tool call."""

    mcpName: McpId
    toolName: Annotated[str, Field(min_length=1, max_length=256)]
    arguments: dict[str, object] = {}
    #: Call as this principal would (its policies apply); default: the admin caller, with the role `admin`.
    principal: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    #: Roles that principal holds besides those of a listed or issued token (a JWT's, a certificate's).
    roles: tuple[Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[^,]+$")], ...] = ()


class PinApproval(_Model):
    """The pending tool changes to approve (no body, or no `tools`: every pending change of the MCP)."""

    tools: Annotated[list[Annotated[str, Field(max_length=1000)]], Field(max_length=10_000)] | None = None
