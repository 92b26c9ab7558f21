"""How admin answers show stored things (rules, tokens, times) and read what callers send."""

from __future__ import annotations

import datetime as dt
import shlex
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mcp_barbican.storage import IpRule, TokenRecord

__all__ = ["compozy_names", "instant", "iso", "rule_json", "spawn_details", "token_json"]


def iso(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return dt.datetime.fromtimestamp(seconds, dt.UTC).isoformat().replace("+00:00", "Z")


def rule_json(rule: IpRule) -> dict[str, Any]:
    return {
        "id": rule.id,
        "cidr": rule.cidr,
        "action": rule.action,
        "reason": rule.reason,
        "created_at": iso(rule.created_at),
        "expires_at": iso(rule.expires_at),
    }


def token_json(record: TokenRecord, now: float) -> dict[str, Any]:
    """A token's metadata: never the token, never its digest."""
    return {
        "id": record.id,
        "roles": list(record.roles),
        "mcps": None if record.mcps is None else list(record.mcps),
        "description": record.description,
        "created_at": iso(record.created_at),
        "expires_at": iso(record.expires_at),
        "revoked_at": iso(record.revoked_at),
        "active": record.active(now),
    }


def compozy_names(body: dict[str, Any]) -> dict[str, Any]:
    """Compozy's definitions name the MCP `name`; ours call it `id`."""
    if "name" in body and "id" not in body:
        return {"id": body["name"], **{k: v for k, v in body.items() if k != "name"}}
    return body


def instant(text: str | None) -> str | None:
    """An RFC 3339 time (or Unix seconds) as the audit store writes it: UTC, microseconds, Z."""
    if text is None:
        return None
    try:
        moment = dt.datetime.fromtimestamp(float(text), dt.UTC)
    except ValueError:
        try:
            moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError(f"not a time: {text!r} (use RFC 3339 or Unix seconds)") from None
    except (OverflowError, OSError):
        raise ValueError(f"not a time: {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def spawn_details(body: object) -> dict[str, Any]:
    """What a stdio registration will run, for its audit event: the command, its arguments and the names of
    the variables it gets (never their values). Nothing for another body."""
    definition = compozy_names(body) if isinstance(body, dict) else {}
    command = definition.get("command")
    if not isinstance(command, str):
        return {}
    args = [str(arg) for arg in definition.get("args") or ()]
    env = definition.get("env")
    names = sorted(str(name) for name in env) if isinstance(env, dict) else []
    return {"spawn": {"command": command, "args": args, "command_line": shlex.join([command, *args]), "env": names}}
