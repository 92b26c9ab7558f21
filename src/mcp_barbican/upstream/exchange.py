"""OAuth 2.0 Token Exchange (RFC 8693) for `upstream_auth.token_exchange`.

The caller's credential is the `subject_token`; the token endpoint sees it, the upstream
never does. The token it issues is kept per principal until shortly before `expires_in`
runs out (300 s when the endpoint gives none), in a table bounded by `cache_size` (the
least recently used goes first). Concurrent requests of one principal share one exchange.
A failure raises `ExchangeFailed` with a reason fit for the client and the log: the
endpoint's `error` code at most (never its `error_description`, which may quote the subject
token), never a token or the client secret.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import aiohttp
import orjson

from mcp_barbican import egress
from mcp_barbican.exceptions import UpstreamError

if TYPE_CHECKING:
    from mcp_barbican.config.upstream_auth import TokenExchangeConfig

__all__ = ["GRANT_TYPE", "ExchangeFailed", "TokenExchange"]

logger = logging.getLogger(__name__)

GRANT_TYPE: Final = "urn:ietf:params:oauth:grant-type:token-exchange"
_ACCESS_TYPE_URN: Final = "urn:ietf:params:oauth:token-type:access_token"
#: Lifetime assumed when the endpoint does not say (`expires_in` is only RECOMMENDED).
DEFAULT_LIFETIME: Final = 300.0
#: A token is exchanged anew this long before it expires (at most a tenth of its lifetime).
_EARLY: Final = 30.0
_MAX_RESPONSE: Final = 64 * 1024
_TOKEN = re.compile(r"[\x21-\x7e]+")
_WORDS = re.compile(r"[^\x20-\x7e]")


class ExchangeFailed(UpstreamError):
    """The token endpoint refused or could not be reached; `status` is what the client gets (502 or 503)."""

    def __init__(self, reason: str, status: int) -> None:
        super().__init__(reason)
        self.status = status


class TokenExchange:
    """Exchanged tokens per principal for one MCP, and the exchange itself."""

    def __init__(self, config: TokenExchangeConfig, *, clock: Any = time.monotonic) -> None:
        self.config = config
        self._clock = clock
        self._cache: OrderedDict[str, tuple[Mapping[str, str], float]] = OrderedDict()
        self._pending: dict[str, asyncio.Task[None]] = {}
        self._http: aiohttp.ClientSession | None = None
        #: Exchanges made (what a test or an operator counts).
        self.exchanges = 0

    def current(self, principal: str) -> Mapping[str, str]:
        """The `Authorization` header for `principal` while its token is valid, else nothing."""
        entry = self._cache.get(principal)
        if entry is None or self._clock() >= entry[1]:
            return {}
        return entry[0]

    async def ensure(self, principal: str, subject_token: str) -> None:
        """Make sure `principal` has a valid exchanged token (exchanging `subject_token` if not)."""
        entry = self._cache.get(principal)
        if entry is not None and self._clock() < entry[1]:
            self._cache.move_to_end(principal)
            return
        task = self._pending.get(principal)
        if task is None:
            task = asyncio.create_task(self._exchange(principal, subject_token), name="token-exchange")
            self._pending[principal] = task
            task.add_done_callback(lambda done: self._done(principal, done))
        await asyncio.shield(task)

    def _done(self, principal: str, task: asyncio.Task[None]) -> None:
        self._pending.pop(principal, None)
        if not task.cancelled():
            task.exception()  # raised to every waiter already; retrieved here in case none is left

    async def _exchange(self, principal: str, subject_token: str) -> None:
        config = self.config
        form = {
            "grant_type": GRANT_TYPE,
            "subject_token": subject_token,
            "subject_token_type": _ACCESS_TYPE_URN,
            "requested_token_type": _ACCESS_TYPE_URN,
        }
        if config.audience is not None:
            form["audience"] = config.audience
        if config.scope is not None:
            form["scope"] = config.scope
        authorization = aiohttp.encode_basic_auth(config.client_id, config.client_secret.get_secret_value(), "latin1")
        timeout = aiohttp.ClientTimeout(total=config.timeout)
        self.exchanges += 1
        try:
            resp = await egress.installed().request(
                self._session(), "POST", config.token_endpoint, purpose="token exchange", data=form,
                headers={"Authorization": authorization}, timeout=timeout,
            )  # fmt: skip
            async with resp:
                body = await resp.content.read(_MAX_RESPONSE)
                status = resp.status
        except egress.EgressRefused as exc:
            raise ExchangeFailed(f"token endpoint {exc}", 503) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ExchangeFailed(f"token endpoint unreachable ({type(exc).__name__})", 503) from None
        token, lifetime = _parse(status, body)
        early = min(_EARLY, lifetime / 10)
        self._cache[principal] = ({"Authorization": f"Bearer {token}"}, self._clock() + lifetime - early)
        self._cache.move_to_end(principal)
        while len(self._cache) > config.cache_size:
            self._cache.popitem(last=False)

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = egress.installed().session("token exchange")
        return self._http

    async def aclose(self) -> None:
        for task in list(self._pending.values()):
            task.cancel()
        if self._http is not None:
            await self._http.close()


def _parse(status: int, body: bytes) -> tuple[str, float]:
    """The issued token and its lifetime (seconds) from a token endpoint answer, or why not."""
    try:
        answer = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        answer = None
    if not isinstance(answer, dict):
        raise ExchangeFailed(f"token endpoint answered HTTP {status} without a JSON object", 502)
    if status != 200:
        # Only the error code: a description may quote what it was sent (the subject token).
        error = _clean(answer.get("error")) or "no error code"
        raise ExchangeFailed(f"token endpoint refused (HTTP {status}, {error})", 502)
    token = answer.get("access_token")
    if not isinstance(token, str) or not _TOKEN.fullmatch(token):
        raise ExchangeFailed("token endpoint answer has no usable access_token", 502)
    token_type = answer.get("token_type", "Bearer")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise ExchangeFailed(f"token endpoint issued a {_clean(token_type)!r} token, not a bearer token", 502)
    expires_in = answer.get("expires_in", DEFAULT_LIFETIME)
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float) or expires_in <= 0:
        raise ExchangeFailed("token endpoint answer has an invalid expires_in", 502)
    return token, float(expires_in)


def _clean(value: object) -> str:
    """A short, printable excerpt of an endpoint's error text (RFC 6749 limits these to visible ASCII)."""
    return _WORDS.sub("?", value)[:200] if isinstance(value, str) else ""
