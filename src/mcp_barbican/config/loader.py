"""Reading the config file: YAML or JSON, `.env` files, templates, Compozy's and Claude's shapes.

`load_config()` reads one file, expands `{{ .env.NAME }}` / `${NAME}` templates in every string
value, accepts Compozy's `mcps:` list and Claude-style `mcpServers`, validates it as a
`ProxyConfig` and reads every file it names.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from dotenv import dotenv_values
from pydantic import ValidationError

from mcp_barbican.config.checks import file_problems
from mcp_barbican.config.errors import Loc, config_error, short_repr, validation_problems
from mcp_barbican.config.fields import MCP_ID, MCP_ID_RULE
from mcp_barbican.config.proxy import ProxyConfig
from mcp_barbican.config.templating import expand_tree
from mcp_barbican.exceptions import ConfigError

__all__ = ["CONFIG_FILE_NAMES", "find_config", "load_config", "load_environ"]

# One logger for the package: its log lines keep the name they had before config became a package.
logger = logging.getLogger("mcp_barbican.config")

#: Looked for in this order in the working directory when no `-c FILE` is given.
CONFIG_FILE_NAMES: tuple[str, ...] = ("mcp-barbican.yaml", "mcp-barbican.yml", "compozy.yaml")
_COMPOZY_FILE_NAME = "compozy.yaml"


def find_config(cwd: Path) -> Path | None:
    """The config file `serve` uses without `-c`: the first of CONFIG_FILE_NAMES in `cwd`."""
    for name in CONFIG_FILE_NAMES:
        candidate = cwd / name
        if candidate.is_file():
            return candidate
    return None


def load_environ(cwd: Path, config_dir: Path | None = None) -> dict[str, str]:
    """The variables templates see: the process environment, then `cwd/.env`, then `config_dir/.env`.

    The first place that sets a variable wins: a `.env` file never overrides a set variable, and
    the working directory's `.env` wins over the one beside the config file.
    """
    values: dict[str, str] = {}
    for directory in dict.fromkeys(path.resolve() for path in (config_dir, cwd) if path is not None):
        dotenv_path = directory / ".env"
        if dotenv_path.is_file():
            values.update((key, value) for key, value in dotenv_values(dotenv_path).items() if value is not None)
    values.update(os.environ)
    return values


def load_config(path: Path, environ: Mapping[str, str]) -> ProxyConfig:
    """Read, template and validate one config file, and read every file it names.

    Raises ConfigError listing every error with its key path.
    """
    document = expand_tree(_read_document(path), environ)
    data, origins = _assemble(document, path.name)
    try:
        config = ProxyConfig.model_validate(data)
    except ValidationError as exc:
        problems = validation_problems(ProxyConfig, exc)
    else:
        problems = file_problems(config)
        if not problems:
            return config
    raise config_error([_relocate(loc, message, origins) for loc, message in problems])


def _relocate(loc: Loc, message: str, origins: Mapping[int, _ClaudeOrigin]) -> tuple[Loc, str]:
    if len(loc) >= 2 and loc[0] == "mcps" and isinstance(loc[1], int) and loc[1] in origins:
        return origins[loc[1]].relocate(loc[2:], message)
    return loc, message


def _read_document(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {str(path)!r}: {exc}") from None
    document = _parse_text(text, json_only=path.suffix.lower() == ".json")
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigError("the top level must be a mapping (server:, mcps:)")
    return document


def _parse_text(text: str, *, json_only: bool) -> Any:
    if json_only or text.lstrip().startswith("{"):
        try:
            return json.loads(text, object_pairs_hook=_unique_json_object)
        except json.JSONDecodeError as exc:
            if json_only:
                raise ConfigError(f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - _StrictLoader is a SafeLoader
    except yaml.MarkedYAMLError as exc:
        raise ConfigError(_yaml_error_message(exc, text)) from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"invalid YAML: {exc}") from None


def _unique_json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ConfigError(f"invalid JSON: duplicate key {key!r}")
        result[key] = value
    return result


def _yaml_error_message(exc: yaml.MarkedYAMLError, text: str) -> str:
    mark = exc.problem_mark or exc.context_mark
    problem = exc.problem or exc.context or "syntax error"
    if mark is None:
        return f"invalid YAML: {problem}"
    message = f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {problem}"
    lines = text.splitlines()
    if mark.line < len(lines) and "{{" in lines[mark.line]:
        message += " (quote values that contain {{ ... }})"
    return message


class _StrictLoader(yaml.SafeLoader):
    """A SafeLoader that rejects duplicate mapping keys instead of keeping the last one."""


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a plain value", key_node.start_mark
            ) from None
        if duplicate:
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
    return loader.construct_mapping(node)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping)


@dataclass(frozen=True)
class _ClaudeOrigin:
    """Where an MCP built from a `mcpServers` entry came from, to report errors there."""

    name: str
    transport_key: str

    def relocate(self, rest: Loc, message: str) -> tuple[Loc, str]:
        if rest == ("auth",):
            # Claude-style entries have no auth key of their own: only server.auth covers them.
            message = (
                "no auth configured: set server.auth, which covers mcpServers entries (type: none must be explicit)"
            )
        if rest[:1] == ("id",):
            rest = rest[1:]
        if rest[:1] == ("transport",):
            rest = (self.transport_key, *rest[1:])
        return ("mcpServers", self.name, *rest), message


_CLAUDE_KEYS = ("command", "args", "env", "url", "type", "transport", "headers", "cwd")
_CLAUDE_TYPES = {"stdio": "stdio", "sse": "sse", "http": "streamable-http", "streamable-http": "streamable-http"}


def _assemble(document: dict[str, Any], file_name: str) -> tuple[dict[str, Any], dict[int, _ClaudeOrigin]]:
    """Build ProxyConfig input from the top-level keys, converting Claude-style entries."""
    ours = ("server", "mcps") if file_name == _COMPOZY_FILE_NAME else ("server", "mcps", "mcpServers")
    _check_top_level_keys(document, ours, file_name)
    if not any(key in document for key in ours if key != "server"):
        raise ConfigError(f"required: list the MCP servers to proxy ({' or '.join(ours[1:])})", path="mcps")
    mcps = document.get("mcps", [])
    if not isinstance(mcps, list):
        raise ConfigError("must be a list of MCP entries (use [] for none)", path="mcps")
    origins: dict[int, _ClaudeOrigin] = {}
    entries = list(mcps)
    for name, entry in _claude_entries(document.get("mcpServers") if "mcpServers" in ours else None):
        origins[len(entries)] = _ClaudeOrigin(name, "type" if "type" in entry else "transport")
        entries.append(_from_claude(name, entry))
    data: dict[str, Any] = {"mcps": entries}
    if "server" in document:
        data["server"] = document["server"]
    return data, origins


def _check_top_level_keys(document: dict[str, Any], ours: tuple[str, ...], file_name: str) -> None:
    others = [str(key) for key in document if key not in ours]
    if not others:
        return
    if file_name == _COMPOZY_FILE_NAME:
        logger.info("compozy.yaml: reading %s; left to Compozy: %s", " and ".join(ours), ", ".join(others))
        return
    raise ConfigError(f"unknown top-level key (expected one of: {', '.join(ours)})", path=others[0])


def _claude_entries(servers: object) -> Iterator[tuple[str, dict[str, Any]]]:
    if servers is None:
        return
    if not isinstance(servers, dict):
        raise ConfigError("must be a mapping of server name to {command, args, env} or {url}", path="mcpServers")
    for name, entry in servers.items():
        path = f"mcpServers.{name}"
        if not isinstance(name, str) or not MCP_ID.fullmatch(name) or "__" in name:
            raise ConfigError(f"invalid server name {str(name)!r} (it becomes the MCP id): {MCP_ID_RULE}", path=path)
        if not isinstance(entry, dict):
            raise ConfigError("must be a mapping such as {command: ..., args: [...]}", path=path)
        yield name, entry


def _from_claude(name: str, entry: dict[str, Any]) -> dict[str, Any]:
    path = f"mcpServers.{name}"
    for key in entry:
        if key not in _CLAUDE_KEYS:
            raise ConfigError(f"unknown key (expected one of: {', '.join(_CLAUDE_KEYS)})", path=f"{path}.{key}")
    if "type" in entry and "transport" in entry:
        raise ConfigError("set type or transport, not both", path=f"{path}.transport")
    result: dict[str, Any] = {"id": name}
    result.update({key: entry[key] for key in ("command", "args", "env", "url", "headers", "cwd") if key in entry})
    kind_key = "type" if "type" in entry else "transport"
    if kind_key in entry:
        kind = entry[kind_key]
        if kind not in _CLAUDE_TYPES:
            raise ConfigError(
                f"must be one of {', '.join(_CLAUDE_TYPES)}, not {short_repr(kind)}", path=f"{path}.{kind_key}"
            )
        result["transport"] = _CLAUDE_TYPES[kind]
    return result
