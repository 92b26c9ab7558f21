"""The one exception tree of mcp-barbican.

    ProxyError
    ├── ConfigError            a config file or value is invalid (names the key path)
    ├── StorageError           the state store cannot be opened, read or written
    └── UpstreamError          talking to an upstream MCP server failed
        ├── UpstreamUnavailable   it could not be started or reached
        ├── UpstreamTimeout       it did not answer in time
        └── UpstreamClosed        it went away (a stdio child exited, a stream ended)

Security rejections are HTTP responses, not exceptions.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "ConfigError",
    "ProxyError",
    "StorageError",
    "UpstreamClosed",
    "UpstreamError",
    "UpstreamTimeout",
    "UpstreamUnavailable",
]


class ProxyError(Exception):
    """Base class of every error mcp-barbican raises on purpose."""


class ConfigError(ProxyError):
    """The configuration is invalid; the message names the key path.

    One error may carry the others found in the same file (`also`): its text is then one line
    per error, the first one's `path` first.
    """

    def __init__(self, message: str, *, path: str = "", also: Sequence[ConfigError] = ()) -> None:
        self.path = path
        self.also = tuple(also)
        first = f"{path}: {message}" if path else message
        super().__init__("\n".join([first, *(str(error) for error in self.also)]))

    def lines(self) -> list[str]:
        """Every error, one line each."""
        return str(self).splitlines()


class StorageError(ProxyError):
    """The state store cannot be opened, read or written."""


class UpstreamError(ProxyError):
    """Talking to an upstream MCP server failed."""


class UpstreamUnavailable(UpstreamError):
    """The upstream could not be started or reached."""


class UpstreamTimeout(UpstreamError):
    """The upstream did not answer in time."""


class UpstreamClosed(UpstreamError):
    """The upstream went away."""
