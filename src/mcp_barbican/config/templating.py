"""Environment templating of config values, applied before validation.

Three forms are expanded in every string value (never in keys):

    {{ .env.NAME }}       Compozy / Go-template style (spaces optional)
    ${NAME}               shell style
    ${NAME:-default}      shell style with a default, used when NAME is unset or empty

`$${` stands for a literal `${`. An unset variable without a default is an error, and so is
anything that looks like a template but is none of the above: a template is never left in
place. Substituted values are not expanded again.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from mcp_barbican.exceptions import ConfigError

__all__ = ["TemplateError", "expand_string", "expand_tree", "join_path"]

_TEMPLATE = re.compile(
    r"\$\$\{"  # escaped: a literal ${
    r"|\$\{(?P<shell>[^}]*)\}"
    r"|\$\{"  # unterminated
    r"|\{\{(?P<go>.*?)\}\}",
    re.DOTALL,
)
_SHELL_EXPR = re.compile(r"(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?::-(?P<default>.*))?", re.DOTALL)
_GO_EXPR = re.compile(r"\s*\.env\.(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*")


class TemplateError(ValueError):
    """A template in a string value cannot be expanded."""


def expand_string(value: str, environ: Mapping[str, str]) -> str:
    """Return `value` with every template replaced from `environ`; raise TemplateError."""

    def replace(match: re.Match[str]) -> str:
        template = match.group(0)
        if template == "$${":
            return "${"
        if match.group("shell") is not None:
            return _expand_shell(match.group("shell"), template, environ)
        if match.group("go") is not None:
            return _expand_go(match.group("go"), template, environ)
        raise TemplateError("unterminated '${' (write '$${' for a literal '${')")

    return _TEMPLATE.sub(replace, value)


def _expand_shell(expr: str, template: str, environ: Mapping[str, str]) -> str:
    parsed = _SHELL_EXPR.fullmatch(expr)
    if parsed is None:
        raise TemplateError(f"invalid variable reference '{template}': use ${{NAME}} or ${{NAME:-default}}")
    name, default = parsed.group("name"), parsed.group("default")
    value = environ.get(name)
    if default is not None and not value:
        return default
    if value is None:
        raise TemplateError(
            f"environment variable {name} is not set (used as '{template}'; ${{{name}:-default}} gives a default)"
        )
    return value


def _expand_go(expr: str, template: str, environ: Mapping[str, str]) -> str:
    parsed = _GO_EXPR.fullmatch(expr)
    if parsed is None:
        raise TemplateError(f"unsupported template '{template}': only {{{{ .env.NAME }}}} is supported")
    name = parsed.group("name")
    value = environ.get(name)
    if value is None:
        raise TemplateError(f"environment variable {name} is not set (used as '{template}')")
    return value


def expand_tree(node: Any, environ: Mapping[str, str], path: str = "") -> Any:
    """Expand templates in every string value of a parsed YAML/JSON document.

    Raises ConfigError whose path is the key path of the offending value.
    """
    if isinstance(node, dict):
        return {key: expand_tree(value, environ, join_path(path, key)) for key, value in node.items()}
    if isinstance(node, list):
        return [expand_tree(item, environ, f"{path}[{index}]") for index, item in enumerate(node)]
    if isinstance(node, str):
        try:
            return expand_string(node, environ)
        except TemplateError as exc:
            raise ConfigError(str(exc), path=path) from None
    return node


def join_path(path: str, key: object) -> str:
    """Append a mapping key to a dotted key path (`a.b` + `c` → `a.b.c`)."""
    return f"{path}.{key}" if path else str(key)
