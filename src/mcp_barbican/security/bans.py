"""Temporary bans after repeated authentication failures (fail2ban's jail, in process).

Failures are counted per address in a sliding window of `find_time`; the `max_failures`-th
within it adds a dynamic deny rule for `ban_time`. The rule goes into the in-process index
at once (the IP filter refuses the very next request) and, when a store is given, into the
store too, so the ban survives a restart and reaches other replicas. Failure counts are
kept for at most `max_tracked` addresses, least recently failing first out.

IPv6 clients count and are banned per network of `ipv6_prefix` bits (one host usually holds
a /64 and could otherwise change address at every attempt), IPv4 per address. Exempt
addresses (`ignore`, fail2ban's `ignoreip`, and the trusted proxies) never count, and a ban
never covers one: a network holding an exempt address is banned per address instead.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Final

from mcp_barbican.logs import log_unexpected
from mcp_barbican.security.addresses import IpSet, address_key, parse_ip, parse_network
from mcp_barbican.security.counters import SecurityCounters
from mcp_barbican.security.iprules import BAN_ID_PREFIX, Clock, DynamicRules
from mcp_barbican.storage.base import Table
from mcp_barbican.storage.records import IpRule, RuleTableFull

if TYPE_CHECKING:
    from mcp_barbican.config import BanConfig

__all__ = [
    "BAN_REASON",
    "DEFAULT_MAX_TRACKED",
    "AuthFailureTracker",
    "ban_id",
    "ban_target",
    "register_failure",
]

logger = logging.getLogger(__name__)

#: Addresses whose recent failures are remembered; a flood of distinct ones evicts the oldest.
DEFAULT_MAX_TRACKED: Final = 100_000
#: The `reason` of every ban rule, for listings and audit.
BAN_REASON: Final = "authentication failures"


def register_failure(previous: Iterable[float], now: float, config: BanConfig) -> tuple[float, ...] | None:
    """The failure times to remember after one more at `now`, or None when this one earns a ban.

    Only failures younger than `find_time` count; one exactly `find_time` old is out.
    """
    recent = (*(when for when in previous if now - when < config.find_time), now)
    return None if len(recent) >= config.max_failures else recent


def ban_target(ip: str, ipv6_prefix: int, exempt: IpSet) -> str | None:
    """What a failure from `ip` counts against and a ban would cover (an address or a CIDR), or None.

    None for an exempt address and for text that is no address. An IPv6 network that holds an
    exempt address or network is never banned whole: its clients then count per address.
    """
    address = parse_ip(ip)
    if address is None or address in exempt:
        return None
    key = address_key(ip, ipv6_prefix)
    if key is not None and "/" in key and exempt and exempt.overlaps(parse_network(key)):
        return str(address)
    return key


def ban_id(target: str) -> str:
    """The id of the ban of an address or network: readable, and one path segment of the admin API's URL."""
    return BAN_ID_PREFIX + target.replace("/", "_")


class AuthFailureTracker:
    """Counts authentication failures per address and bans an address that fails too often.

    The config's `ignore` entries and the `exempt` ones (addresses or CIDRs) are never banned
    (fail2ban's `ignoreip`); IPv6 clients count per network of `config.ipv6_prefix` bits (see
    `ban_target`). `on_ban` hears of every ban issued (for the audit trail).
    """

    def __init__(
        self,
        config: BanConfig,
        *,
        rules: DynamicRules,
        counters: SecurityCounters,
        clock: Clock = time.time,
        store: Table[IpRule] | None = None,
        exempt: Iterable[str] = (),
        max_tracked: int = DEFAULT_MAX_TRACKED,
        on_ban: Callable[[IpRule], None] | None = None,
    ) -> None:
        self.config = config
        self.rules = rules
        self.counters = counters
        self.clock = clock
        self.store = store
        self.exempt = IpSet.build((*config.ignore, *exempt))
        self.max_tracked = max_tracked
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
        target = ban_target(ip, self.config.ipv6_prefix, self.exempt)
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
        if ip is not None and (target := ban_target(ip, self.config.ipv6_prefix, self.exempt)) is not None:
            self._failures.pop(target, None)

    async def flush(self) -> None:
        """Wait until every ban has reached the store (at shutdown, and in tests)."""
        while self._pending:
            await asyncio.gather(*self._pending)

    def _ban(self, target: str, now: float) -> None:
        rule = IpRule(
            id=ban_id(target),
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

    async def _store(self, store: Table[IpRule], rule: IpRule) -> None:
        try:
            await store.put(rule)
        except Exception:
            log_unexpected(logger, "could not store the ban of %s; it holds in this process only", rule.cidr)
