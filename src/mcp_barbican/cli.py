"""The `mcp-barbican` command: serve, token generate, config check, config schema."""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import logging
import secrets
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import yaml

from mcp_barbican import __version__
from mcp_barbican import probe as probe_command
from mcp_barbican.config import (
    CONFIG_FILE_NAMES,
    ProxyConfig,
    ServerConfig,
    check_bind,
    config_schema,
    find_config,
    load_config,
    load_environ,
    masked_dump,
    validate_model,
)
from mcp_barbican.config.schema_docs import render_markdown
from mcp_barbican.embedded import DEMO_MCP_ID, EmbeddedInfo, embedded_default
from mcp_barbican.exceptions import ConfigError, StorageError
from mcp_barbican.logs import Fields, json_line
from mcp_barbican.probe import bounded_int

__all__ = ["JsonFormatter", "check_workers", "curl_example", "main", "python_example"]

logger = logging.getLogger(__name__)

STATE_DIR_NAME = ".mcp-barbican"
TEXT_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
MIN_TOKEN_BYTES, MAX_TOKEN_BYTES = 16, 512
#: `serve --workers`: 1 serves in this process; more fork a supervisor's workers (a cap against a typo's fork storm).
MAX_WORKERS = 64
_NO_CONFIG = f"no config file found (looked for {', '.join(CONFIG_FILE_NAMES)}); pass -c FILE"


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the process exit code."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    handler: Callable[[argparse.Namespace], int] = args.handler
    return handler(args)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mcp-barbican", description="A security proxy for MCP servers.")
    parser.add_argument("--version", action="version", version=f"mcp-barbican {__version__}")
    parser.set_defaults(handler=lambda _args: _usage(parser))
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_serve(commands)
    _add_token(commands)
    _add_config(commands)
    _add_probe(commands)
    return parser


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _add_serve(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser("serve", help="run the proxy")
    serve.add_argument("-c", "--config", type=Path, metavar="FILE", help="config file (default: looked up in .)")
    serve.add_argument("--host", type=_host, help="bind address (overrides server.host)")
    serve.add_argument("--port", type=bounded_int(1, 65535), help="bind port (overrides server.port)")
    serve.add_argument(
        "--workers",
        type=bounded_int(1, MAX_WORKERS),
        default=1,
        metavar="N",
        help=f"worker processes sharing the listener (1-{MAX_WORKERS}, default 1; more than 1 needs redis storage)",
    )
    serve.add_argument("--log-format", choices=("text", "json"), default="text")
    serve.add_argument("--log-level", type=str.upper, choices=LOG_LEVELS, default="INFO")
    serve.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        help="allow MCPs with auth type none on a non-loopback address",
    )
    serve.set_defaults(handler=_serve)


def _add_token(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    token = commands.add_parser("token", help="token utilities")
    token.set_defaults(handler=lambda _args: _usage(token))
    actions = token.add_subparsers(title="commands", metavar="COMMAND")
    generate = actions.add_parser("generate", help="print a random URL-safe token")
    length = bounded_int(MIN_TOKEN_BYTES, MAX_TOKEN_BYTES)
    generate.add_argument("--length", type=length, default=32, help="random bytes (16-512, default 32)")
    generate.set_defaults(handler=_token_generate)


def _add_config(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    config = commands.add_parser("config", help="config file utilities")
    config.set_defaults(handler=lambda _args: _usage(config))
    actions = config.add_subparsers(title="commands", metavar="COMMAND")
    check = actions.add_parser("check", help="validate and print the normalized config, secrets masked")
    check.add_argument("-c", "--config", type=Path, metavar="FILE")
    check.set_defaults(handler=_config_check)
    schema = actions.add_parser("schema", help="print the JSON Schema of the config file")
    schema.add_argument(
        "--format", choices=("json", "markdown"), default="json", help="markdown: docs/configuration.md"
    )
    schema.set_defaults(handler=_config_schema)


def _add_probe(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    probe = commands.add_parser(
        "probe",
        help="test an MCP endpoint's defences and print a scorecard",
        description=probe_command.DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    probe_command.add_arguments(probe)
    probe.set_defaults(handler=probe_command.command)


def _host(text: str) -> str:
    try:
        return validate_model(ServerConfig, {"host": text}).host
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix("host: ")) from None


def _serve(args: argparse.Namespace) -> int:
    _setup_logging(args.log_format, args.log_level)
    try:
        config, info = _resolve_config(args.config, Path.cwd())
        config = _override_bind(config, args.host, args.port)
        check_workers(args.workers, config.server.storage.type)
        for warning in check_bind(config, allow_unauthenticated=args.allow_unauthenticated):
            logger.warning("%s", warning)
    except ConfigError as exc:
        _print_errors(exc)
        return 1
    if info is not None:
        _print_banner(_banner(config, info), args.log_format)
        return _run(config, None)
    reload = _reload_source(args, Path.cwd())
    if args.workers > 1:
        return _run_workers(config, reload, args)
    return _run(config, reload)


def check_workers(workers: int, storage_type: str) -> None:
    """More than one worker shares its state through Redis: a ConfigError naming both settings otherwise."""
    if workers > 1 and storage_type != "redis":
        raise ConfigError(
            f"--workers {workers} needs server.storage.type: redis (the workers share their state through it), "
            f"not {storage_type}",
            path="server.storage.type",
        )


def _reload_source(args: argparse.Namespace, cwd: Path) -> tuple[Path, Callable[[], ProxyConfig]] | None:
    """The config file and how to load it again as `serve` did (for hot reload)."""
    path = args.config or find_config(cwd)
    if path is None:
        return None

    def load() -> ProxyConfig:
        config = _override_bind(load_config(path, load_environ(cwd, path.parent)), args.host, args.port)
        for warning in check_bind(config, allow_unauthenticated=args.allow_unauthenticated):
            logger.warning("%s", warning)
        return config

    return path, load


def _resolve_config(path: Path | None, cwd: Path) -> tuple[ProxyConfig, EmbeddedInfo | None]:
    path = path or find_config(cwd)
    if path is not None:
        logger.info("loading config %s", path)
        return load_config(path, load_environ(cwd, path.parent)), None
    logger.info("no config file found (looked for %s): serving the embedded default", ", ".join(CONFIG_FILE_NAMES))
    return embedded_default(cwd / STATE_DIR_NAME, load_environ(cwd))


def _override_bind(config: ProxyConfig, host: str | None, port: int | None) -> ProxyConfig:
    updates: dict[str, object] = {}
    if host is not None:
        updates["host"] = host
    if port is not None:
        if port == config.server.admin.port:
            raise ConfigError(f"--port {port} is also server.admin.port", path="server.admin.port")
        updates["port"] = port
    if not updates:
        return config
    return config.model_copy(update={"server": config.server.model_copy(update=updates)})


def _run_workers(
    config: ProxyConfig, reload: tuple[Path, Callable[[], ProxyConfig]] | None, args: argparse.Namespace
) -> int:
    """A supervisor and its workers; each worker's log lines carry its number."""

    def on_worker(number: int) -> None:
        _setup_logging(args.log_format, args.log_level, worker=number)

    workers = importlib.import_module("mcp_barbican.server.worker")
    return _run(config, reload, functools.partial(workers.serve_workers, count=args.workers, on_worker=on_worker))


def _run(
    config: ProxyConfig,
    reload: tuple[Path, Callable[[], ProxyConfig]] | None,
    run: Callable[..., object] | None = None,
) -> int:
    if run is None:
        run = importlib.import_module("mcp_barbican.server.runner").run
    try:
        result = run(config, reload=reload)
    except (ConfigError, StorageError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: cannot listen: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return result if isinstance(result, int) else 0


def _banner(config: ProxyConfig, info: EmbeddedInfo) -> str:
    base = f"http://{_display_host(config.server.host)}:{config.server.port}"
    url = f"{base}/mcp/{DEMO_MCP_ID}"
    tokens_file = _display_path(info.tokens_file)
    client_shell, client_python = _token_expressions(info)
    lines = [
        "",
        f"mcp-barbican: no config file, serving the embedded default (demo MCP server, state in {tokens_file.parent})",
        "",
        f"  MCP endpoint:  {url}",
        f"  client token:  {_describe_token(info.client_token, info.client_source, 'MCP_AUTH_TOKEN', tokens_file)}",
        f"  admin token:   {_describe_admin_token(info, tokens_file)}",
        f"  web console:   {base}/admin/ui  (log in with the admin token)",
        "",
        "Try it with curl:",
        "",
        *(f"  {line}" for line in curl_example(url, client_shell).splitlines()),
        "",
        "or with the MCP Python SDK (pip install 'mcp>=2.3'):",
        "",
        *(f"  {line}" for line in python_example(url, client_python).splitlines()),
        "",
    ]
    return "\n".join(lines)


def _print_banner(banner: str, log_format: str) -> None:
    if log_format == "json":
        # Keep stderr one JSON object per line; the banner bypasses --log-level on purpose.
        record = logging.makeLogRecord({"name": logger.name, "levelname": "INFO", "msg": banner.strip()})
        banner = JsonFormatter().format(record)
    print(banner, file=sys.stderr)


def _describe_token(token: str, source: str, variable: str, tokens_file: Path) -> str:
    if source == "env":
        return f"from ${variable}"
    if source == "generated":
        return f"{token}  (new, kept in {tokens_file})"
    return f"{token}  (from {tokens_file})"


def _describe_admin_token(info: EmbeddedInfo, tokens_file: Path) -> str:
    # The admin token is shown once, when generated; afterwards it stays in the file.
    if info.admin_source == "stored":
        return f"see {tokens_file}"
    return _describe_token(info.admin_token, info.admin_source, "MCP_ADMIN_TOKEN", tokens_file)


def _token_expressions(info: EmbeddedInfo) -> tuple[str, str]:
    """How the examples refer to the client token: (shell word, Python header-value expression)."""
    if info.client_source == "env":
        # A token from the environment stays out of the terminal and the logs.
        return "$MCP_AUTH_TOKEN", '"Bearer " + os.environ["MCP_AUTH_TOKEN"]'
    return info.client_token, json.dumps(f"Bearer {info.client_token}")


def curl_example(url: str, token: str) -> str:
    """curl commands: `initialize` (`-i` shows its Mcp-Session-Id header), then that session continued."""
    headers = [
        f'  -H "Authorization: Bearer {token}" \\',
        '  -H "Content-Type: application/json" \\',
        '  -H "Accept: application/json, text/event-stream" \\',
    ]
    session = '  -H "Mcp-Session-Id: $SESSION_ID" -H "MCP-Protocol-Version: 2025-06-18" \\'
    initialize = {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "curl", "version": "1.0"}}
    return "\n".join(
        [
            f"curl -sS -i {url} \\",
            *headers,
            f"  -d '{_jsonrpc({'id': 1, 'method': 'initialize', 'params': initialize})}'",
            "# continue that session: SESSION_ID=<the Mcp-Session-Id header of the answer above>",
            f"curl -sS {url} \\",
            *headers,
            session,
            f"  -d '{_jsonrpc({'method': 'notifications/initialized'})}'",
            f"curl -sS {url} \\",
            *headers,
            session,
            f"  -d '{_jsonrpc({'id': 2, 'method': 'tools/list'})}'",
        ]
    )


def _jsonrpc(fields: dict[str, object]) -> str:
    return json.dumps({"jsonrpc": "2.0", **fields}, separators=(",", ":"))


def python_example(url: str, authorization: str) -> str:
    """A short script listing the tools at `url` with the official `mcp` SDK (2.3).

    `authorization` is a Python expression for the Authorization header value. SDK 2.3 takes
    request headers on its own `httpx2.AsyncClient`, handed to the transport.
    """
    imports = "import asyncio, os, httpx2" if "os.environ" in authorization else "import asyncio, httpx2"
    return "\n".join(
        [
            f"{imports}; from mcp import Client; from mcp.client.streamable_http import streamable_http_client",
            "async def main() -> None:",
            f'    async with httpx2.AsyncClient(headers={{"Authorization": {authorization}}}) as http:',
            f'        async with Client(streamable_http_client("{url}", http_client=http)) as client:',
            "            print([tool.name for tool in (await client.list_tools()).tools])",
            "asyncio.run(main())",
        ]
    )


def _display_host(host: str) -> str:
    if host in ("0.0.0.0", ""):  # noqa: S104 - shown as the address a local client connects to
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _display_path(path: Path) -> Path:
    try:
        return path.relative_to(Path.cwd())
    except ValueError:
        return path


# ---------------------------------------------------------------------------------------------
# token generate, config check


def _token_generate(args: argparse.Namespace) -> int:
    print(secrets.token_urlsafe(args.length))
    return 0


def _config_check(args: argparse.Namespace) -> int:
    _setup_logging("text", "INFO")
    cwd = Path.cwd()
    path = args.config or find_config(cwd)
    if path is None:
        print(f"error: {_NO_CONFIG}", file=sys.stderr)
        return 1
    try:
        config = load_config(path, load_environ(cwd, path.parent))
        warnings = check_bind(config, allow_unauthenticated=True)
    except ConfigError as exc:
        _print_errors(exc)
        return 1
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    sys.stdout.write(yaml.safe_dump(masked_dump(config), sort_keys=False, allow_unicode=True))
    return 0


def _config_schema(args: argparse.Namespace) -> int:
    schema = config_schema()
    text = render_markdown(schema) if args.format == "markdown" else json.dumps(schema, indent=2) + "\n"
    sys.stdout.write(text)
    return 0


def _print_errors(exc: ConfigError) -> None:
    for line in exc.lines():
        print(f"error: {line}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# logging


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message (and exc when there is one; worker in a worker)."""

    def __init__(self, worker: int | None = None) -> None:
        super().__init__()
        self.worker = worker

    def format(self, record: logging.LogRecord) -> str:
        """Render `record` as a single JSON line."""
        ts = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        message = record.msg if isinstance(record.msg, Fields) else record.getMessage()  # Fields: each its own key
        payload = json_line(ts, record.levelname, record.name, message, self.worker)
        if record.exc_info:
            payload["exc"] = self.formatException(record.exc_info)
        return json.dumps(payload, ensure_ascii=False)


def _setup_logging(log_format: str, level: str, *, worker: int | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    text_format = TEXT_LOG_FORMAT
    if worker is not None:
        text_format = TEXT_LOG_FORMAT.replace("%(name)s", f"worker={worker} %(name)s")
    handler.setFormatter(JsonFormatter(worker) if log_format == "json" else logging.Formatter(text_format))
    handler.set_name("mcp-barbican-cli")
    root = logging.getLogger()
    # Replace only our own handler, so a second call (or a test harness's handler) is left alone.
    for existing in [h for h in root.handlers if h.get_name() == "mcp-barbican-cli"]:
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    # Access lines, one per request, skip logging's per-record cost: rendered alike, written in batches.
    from mcp_barbican.server.access import AccessWriter, install_writer

    install_writer(AccessWriter(sys.stderr, json=log_format == "json", worker=worker))
