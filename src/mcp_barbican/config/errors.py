"""Key paths: pydantic's errors turned into one `ConfigError` naming each key the user wrote.

A model-level check raises `LocatedError` with the key below the model that is wrong; every problem
is reported at its path (`mcps[0].security.rate_limit.burst_size`), never as a pydantic dump.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import NoneType, UnionType
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from mcp_barbican.exceptions import ConfigError

__all__ = [
    "Loc",
    "LocatedError",
    "ModelT",
    "config_error",
    "format_path",
    "short_repr",
    "validate_model",
    "validation_problems",
]

Loc = tuple[str | int, ...]
ModelT = TypeVar("ModelT", bound=BaseModel)


class LocatedError(ValueError):
    """A model-level check that knows which key below the model is wrong."""

    def __init__(self, loc: Loc, message: str) -> None:
        super().__init__(message)
        self.loc = loc


def validate_model(model: type[ModelT], data: object, *, prefix: Loc = ()) -> ModelT:
    """Validate `data` as `model`; raise ConfigError naming every error's key path (below `prefix`)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = validation_problems(model, exc)
    raise config_error([(prefix + loc, message) for loc, message in problems])


def config_error(problems: list[tuple[Loc, str]]) -> ConfigError:
    """One ConfigError carrying every problem, the first one's path as its own."""
    (loc, message), *others = problems
    return ConfigError(message, path=format_path(loc), also=[ConfigError(m, path=format_path(lc)) for lc, m in others])


def validation_problems(model: type[BaseModel], exc: ValidationError) -> list[tuple[Loc, str]]:
    """The user's key path and a short message for each error (one per key path)."""
    problems: dict[Loc, str] = {}
    for error in exc.errors():
        loc: Loc = tuple(error["loc"])
        cause = error.get("ctx", {}).get("error")
        if isinstance(cause, LocatedError):
            loc += cause.loc
        steps = _walk(model, loc)
        message = _message(error, steps[-1][1] if steps else model)
        # A member of a tagged union without its tag: the missing key is the tag itself.
        missing_tag: Loc = ("type",) if error["type"] == "union_tag_not_found" else ()
        problems.setdefault(tuple(step for step, _ in steps) + missing_tag, message)
    return list(problems.items())


def _walk(root: type[BaseModel], loc: Loc) -> list[tuple[str | int, Any]]:
    """Keep the segments of a pydantic `loc` that the user wrote, each with its container type.

    Pydantic adds segments of its own: the tag of a discriminated union member and `[key]`
    for an invalid mapping key.
    """
    steps: list[tuple[str | int, Any]] = []
    current: Any = root
    for segment in loc:
        current = _strip_optional(current)
        if segment == "[key]":
            continue
        if _is_union(current):
            current = _union_member(current, segment)
            continue
        steps.append((segment, current))
        current = _child_type(current, segment)
    return steps


def _strip_optional(tp: Any) -> Any:
    while True:
        if get_origin(tp) is Annotated:
            tp = get_args(tp)[0]
        elif _is_union(tp) and len(members := [arg for arg in get_args(tp) if arg is not NoneType]) == 1:
            tp = members[0]
        else:
            return tp


def _is_union(tp: Any) -> bool:
    return get_origin(tp) in (Union, UnionType)


def _union_member(tp: Any, tag: str | int) -> Any:
    for member in get_args(tp):
        member = _strip_optional(member)
        if _is_model(member) and "type" in member.model_fields:
            if tag in get_args(member.model_fields["type"].annotation):
                return member
    return None


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def _child_type(tp: Any, segment: str | int) -> Any:
    if _is_model(tp):
        field = tp.model_fields.get(segment) if isinstance(segment, str) else None
        return field.annotation if field is not None else None
    args = get_args(tp)
    if get_origin(tp) in (tuple, list) and args:
        return args[0]
    if get_origin(tp) is dict and len(args) == 2:
        return args[1]
    return None


def _message(error: Mapping[str, Any], container: Any) -> str:
    kind = error["type"]
    ctx = error.get("ctx", {})
    if kind == "missing" or kind == "union_tag_not_found":
        return "required key is missing"
    if kind == "extra_forbidden":
        if _is_model(container):
            return f"unknown key (expected one of: {', '.join(container.model_fields)})"
        return "unknown key"
    if kind in ("value_error", "assertion_error") and "error" in ctx:
        return str(ctx["error"])
    if kind == "union_tag_invalid":
        return f"unknown type {ctx.get('tag')!r} (expected one of: {ctx.get('expected_tags')})"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected')}, not {short_repr(error.get('input'))}"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return "must be a mapping of keys to values"
    if kind in ("tuple_type", "list_type"):
        return "must be a list"
    text = str(error["msg"])
    return "must be " + text.removeprefix("Input should be ") if text.startswith("Input should be ") else text


def short_repr(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def format_path(loc: Loc) -> str:
    """Render a key path: ("mcps", 0, "auth") → "mcps[0].auth"."""
    text = ""
    for segment in loc:
        text += f"[{segment}]" if isinstance(segment, int) else (f".{segment}" if text else str(segment))
    return text
