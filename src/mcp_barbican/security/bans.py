"""Temporary bans after repeated authentication failures (fail2ban's jail, in process).

Failures are counted per address in a sliding window of `find_time`; the `max_failures`-th
within it adds a dynamic deny rule for `ban_time`. The rule goes into the in-process index
at once (the IP filter refuses the very next request) and, when a store is given, into the
store too, so the ban survives a restart and reaches other replicas. Failure counts are
kept for at most `max_tracked` addresses, least recently failing first out.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Final

from mcp_barbican.security.counters import SecurityCounters
from mcp_barbican.security.ipfilter import Clock, DynamicRules, IpRule, IpRuleStore, IpSet, RuleTableFull, parse_ip

if TYPE_CHECKING:
    from mcp_barbican.config import BanConfig

__all__ = ["BAN_ID_PREFIX", "BAN_REASON", "DEFAULT_MAX_TRACKED", "AuthFailureTracker", "register_failure"]

logger = logging.getLogger(__name__)

#: Addresses whose recent failures are remembered; a flood of distinct ones evicts the oldest.
DEFAULT_MAX_TRACKED: Final = 100_000
#: Ban rules are named after their address, so a new ban of the same address replaces the old one.
BAN_ID_PREFIX: Final = "ban:"
#: The `reason` of every ban rule, for listings and audit.
BAN_REASON: Final = "authentication failures"
_IPV6_BITS: Final = 128  # an ipv6_prefix of 128 means one address: no grouping


def register_failure(previous: Iterable[float], now: float, config: BanConfig) -> tuple[float, ...] | None:
    """The failure times to remember after one more at `now`, or None when this one earns a ban.

    Only failures younger than `find_time` count; one exactly `find_time` old is out.
    """
    recent = (*(when for when in previous if now - when < config.find_time), now)
    return None if len(recent) >= config.max_failures else recent


class AuthFailureTracker:
    """Counts authentication failures per address and bans an address that fails too often.

    `exempt` addresses are never banned (fail2ban's `ignoreip`). With `ipv6_prefix` below 128
    an IPv6 client is counted and banned as its whole network, since one host usually holds
    a /64 and could otherwise change address at every attempt. `on_ban` hears of every ban
    issued (for the audit trail).
    """

    def __init__(
        self,
        config: BanConfig,
        *,
        rules: DynamicRules,
        counters: SecurityCounters,
        clock: Clock = time.time,
        store: IpRuleStore | None = None,
        exempt: IpSet | None = None,
        max_tracked: int = DEFAULT_MAX_TRACKED,
        ipv6_prefix: int = _IPV6_BITS,
        on_ban: Callable[[IpRule], None] | None = None,
    ) -> None:
        if not 0 < ipv6_prefix <= _IPV6_BITS:
            raise ValueError(f"ipv6_prefix must be 1-128, not {ipv6_prefix}")
        self.config = config
        self.rules = rules
        self.counters = counters
        self.clock = clock
        self.store = store
        self.exempt = exempt if exempt is not None else IpSet()
        self.max_tracked = max_tracked
        self.ipv6_prefix = ipv6_prefix
        self.on_ban = on_ban
        self._failures: OrderedDict[str, tuple[float, ...]] = OrderedDict()
        self._pending: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        """How many addresses have failures on record."""
        return len(self._failures)

    def record_failure(self, ip: str | None) -> None:
        """Count one failure from `ip` (the authentication layer's `on_failure` hook); ban when due."""
        if not self.config.enabled or ip is None:
            return
        target = self._target(ip)
        if target is None:
            return
        now = self.clock()
        recent = register_failure(self._failures.pop(target, ()), now, self.config)
        if recent is None:
            self._ban(target, now)
            return
        self._failures[target] = recent
        if len(self._failures) > self.max_tracked:
            self._failures.popitem(last=False)

    def record_success(self, ip: str | None) -> None:
        """Forget the failures of `ip` (fail2ban does not; wire it only where that is wanted)."""
        if ip is not None and (target := self._target(ip)) is not None:
            self._failures.pop(target, None)

    async def flush(self) -> None:
        """Wait until every ban has reached the store (at shutdown, and in tests)."""
        while self._pending:
            await asyncio.gather(*self._pending)

    def _target(self, ip: str) -> str | None:
        address = parse_ip(ip)
        if address is None or address in self.exempt:
            return None
        if address.version == 6 and self.ipv6_prefix < _IPV6_BITS:
            return str(ipaddress.IPv6Network((address, self.ipv6_prefix), strict=False))
        return str(address)

    def _ban(self, target: str, now: float) -> None:
        rule = IpRule(
            id=BAN_ID_PREFIX + target,
            cidr=target,
            action="deny",
            expires_at=now + self.config.ban_time,
            reason=BAN_REASON,
            created_at=now,
        )
        try:
            self.rules.add(rule)
        except RuleTableFull:
            logger.error("cannot ban %s: the dynamic rule table is full of permanent rules", target)
            return
        self.counters.bans_issued += 1
        logger.warning(
            "banned %s for %gs after %d authentication failures within %gs",
            target,
            self.config.ban_time,
            self.config.max_failures,
            self.config.find_time,
        )
        if self.store is not None:
            task = asyncio.get_running_loop().create_task(self._store(self.store, rule))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)
        if self.on_ban is not None:
            self.on_ban(rule)

    async def _store(self, store: IpRuleStore, rule: IpRule) -> None:
        try:
            await store.add(rule)
        except Exception:
            logger.exception("could not store the ban of %s; it holds in this process only", rule.cidr)
