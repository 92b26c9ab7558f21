"""Start-up checks of a valid config: every file it names can be read (or written), and the bind is safe."""

from __future__ import annotations

import ipaddress
import os
import ssl
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel

from mcp_barbican.config.auth import JwtConfig
from mcp_barbican.config.errors import Loc, config_error
from mcp_barbican.config.proxy import ProxyConfig
from mcp_barbican.config.storage import FileSink
from mcp_barbican.config.tls import ServerTLSConfig, UpstreamTLSConfig
from mcp_barbican.exceptions import ConfigError

__all__ = ["check_bind", "check_files", "file_problems"]

_LOOPBACK_NAMES = frozenset({"localhost", "localhost.", "ip6-localhost"})


def check_files(model: BaseModel, *, prefix: Loc = ()) -> None:
    """Read every file `model` names (see `file_problems`); ConfigError naming each one that fails."""
    problems = file_problems(model, prefix)
    if problems:
        raise config_error(problems)


def file_problems(model: BaseModel, loc: Loc = ()) -> list[tuple[Loc, str]]:
    """Every named file that cannot be read (or, for an audit file, written), with its key path.

    Relative paths are relative to the working directory, as everywhere else. TLS files must
    also load: PEM trust roots, and a certificate with its unencrypted key.
    """
    problems: list[tuple[Loc, str]] = []
    names: tuple[str, ...] = getattr(model, "FILES", ())
    for name in names:
        path = getattr(model, name)
        if path is not None and (problem := _unreadable(path)) is not None:
            problems.append(((*loc, name), problem))
    if isinstance(model, ServerTLSConfig | UpstreamTLSConfig) and model.enabled and not problems:
        problems += [((*loc, name), problem) for name, problem in _tls_problems(model)]
    if isinstance(model, JwtConfig) and model.public_key_file is not None and not problems:
        problems += [((*loc, "public_key_file"), problem) for problem in _jwt_key_problems(model)]
    if isinstance(model, FileSink) and (problem := _unwritable(model.path)) is not None:
        problems.append(((*loc, "path"), problem))
    for name in type(model).model_fields:
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            problems += file_problems(value, (*loc, name))
        elif isinstance(value, tuple):
            for index, item in enumerate(value):
                if isinstance(item, BaseModel):
                    problems += file_problems(item, (*loc, name, index))
    return problems


def _unreadable(path: str) -> str | None:
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    return None


def _unwritable(path: str) -> str | None:
    target = Path(path)
    if target.exists():
        if target.is_dir():
            return f"cannot write {path}: Is a directory"
        return None if os.access(target, os.W_OK) else f"cannot write {path}: Permission denied"
    parent = target.absolute().parent
    while not parent.exists():
        parent = parent.parent  # the sink creates missing directories
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot create {path}: {parent} is not a writable directory"
    return None


def _tls_problems(tls: ServerTLSConfig | UpstreamTLSConfig) -> Iterator[tuple[str, str]]:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if tls.ca_file is not None:
        try:
            context.load_verify_locations(cafile=tls.ca_file)
        except ssl.SSLError as exc:
            yield "ca_file", f"{tls.ca_file} holds no PEM certificate: {exc}"
    if tls.cert_file is not None:
        try:
            context.load_cert_chain(tls.cert_file, tls.key_file, password=_refuse_password)
        except ssl.SSLError as exc:
            yield "cert_file", f"cannot load {tls.cert_file} with key {tls.key_file}: {exc}"


def _jwt_key_problems(jwt: JwtConfig) -> list[str]:
    if jwt.public_key_file is None:
        return []
    # Imported here: key loading needs cryptography, which loading a config does not.
    from mcp_barbican.keys import load_key_file

    try:
        load_key_file(Path(jwt.public_key_file), frozenset(jwt.algorithms))
    except ValueError as exc:
        return [str(exc)]
    return []


def _refuse_password() -> str:
    raise ssl.SSLError("encrypted private keys are not supported")


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(config: ProxyConfig, *, allow_unauthenticated: bool) -> list[str]:
    """Refuse an unauthenticated MCP on a non-loopback bind; return warnings to log.

    Raises ConfigError at `server.host` when the bind address is not loopback, an MCP's
    effective auth is `none`, and `allow_unauthenticated` is false.
    """
    host = config.server.host
    exposed = not _is_loopback(host)
    open_ids = [mcp.id for mcp in config.mcps if config.effective_auth(mcp).type == "none"]
    warnings: list[str] = []
    if exposed and open_ids:
        if not allow_unauthenticated:
            raise ConfigError(
                f"binding {host} (not loopback) with auth type none on {', '.join(open_ids)} needs "
                "--allow-unauthenticated",
                path="server.host",
            )
        warnings.append(f"binding {host} (not loopback) with NO authentication on: {', '.join(open_ids)}")
    for index, mcp in enumerate(config.mcps):
        if mcp.tls is not None and mcp.tls.insecure_skip_verify:
            warnings.append(
                f"mcps[{index}] ({mcp.id}): tls.insecure_skip_verify is true; the upstream certificate is not verified"
            )
    if exposed and not config.server.allowed_hosts:
        warnings.append(
            f"binding {host} (not loopback) without server.allowed_hosts: list the host names clients use "
            "(DNS-rebinding guard)"
        )
    if exposed and config.server.tls is None and not config.server.trusted_proxies:
        warnings.append(f"binding {host} (not loopback) without server.tls: credentials travel in clear text")
    return warnings
