"""The admin API's route table: what dispatches a request and what `/admin/openapi.json` says of it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final

from pydantic import BaseModel

__all__ = ["ERROR_CODES", "Handler", "Params", "Raw", "Reply", "Route", "error"]

ERROR_CODES: Final = {403: "forbidden", 404: "not_found", 409: "conflict"}

Params = dict[str, str]
Reply = tuple[int, Any]
Handler = Callable[[Params, Any], Awaitable[Reply]]


@dataclass(frozen=True)
class Route:
    """One admin route: what dispatches it and what the OpenAPI document says about it."""

    method: str
    path: str
    handler: Handler
    summary: str
    body: type[BaseModel] | None = None
    status: int = 200
    errors: tuple[int, ...] = ()
    #: False: the handler gets the JSON object as sent and validates it itself (`body` documents it).
    validate: bool = True
    #: Query parameters (documented; the handler reads them from `params`).
    query: tuple[str, ...] = ()
    #: Whether the handler gets the admin caller's principal id as `params["caller"]`.
    caller: bool = False

    def match(self, path: str) -> Params | None:
        want = self.path.split("/")
        got = path.split("/")
        if len(want) != len(got):
            return None
        params: Params = {}
        for pattern, part in zip(want, got, strict=True):
            if pattern.startswith("{"):
                if not part:
                    return None
                params[pattern[1:-1]] = part
            elif pattern != part:
                return None
        return params


@dataclass(frozen=True)
class Raw:
    """A reply body sent as is."""

    body: bytes
    content_type: bytes = b"application/json"


def error(status: int, code: str, message: str) -> Reply:
    return status, {"error": code, "message": message}
