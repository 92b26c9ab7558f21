"""Dynamic IP rules and automatic bans: building rules, and the in-process index of them.

Dynamic rules (the seed guide's IPManager) live in the state store's `rules` table (records
in `storage/records.py`); `DynamicRules` is the in-process index of them that the request
path reads synchronously, following the table's change notices. Like `addresses.IpSet`,
the index keeps masked integers per prefix length, so a lookup never scans the rules.
Automatic bans are deny rules whose id starts with `ban:`; they are indexed apart so that
the admin plane can let a valid admin credential past a ban (never past an operator's own
deny rule).
"""

from __future__ import annotations

import builtins
import secrets
import time
from collections.abc import Callable, Iterable
from typing import Final, Literal

from mcp_barbican.security.addresses import Address, NetworkKey, network_keys, parse_network, unmapped
from mcp_barbican.storage.base import Table
from mcp_barbican.storage.expiry import ExpiryQueue
from mcp_barbican.storage.notices import Unsubscribe, follow
from mcp_barbican.storage.records import DEFAULT_MAX_RULES, Action, Change, IpRule, RuleTableFull

__all__ = [
    "BAN_ID_PREFIX",
    "Clock",
    "DynamicRules",
    "RuleKind",
    "is_ban",
    "new_rule",
]

#: How the index files a rule: its action, except that automatic bans are deny rules of their own kind.
RuleKind = Literal["allow", "deny", "ban"]
Clock = Callable[[], float]

#: Automatic bans are named after what they cover, so a new ban of the same network replaces the old one.
BAN_ID_PREFIX: Final = "ban:"
_ACTIONS: Final = ("allow", "deny")  # checked at run time too: rules may come from a shared store
_KINDS: Final[tuple[RuleKind, ...]] = ("allow", "deny", "ban")


def new_rule(cidr: str, action: Action, *, now: float, duration: float | None = None, reason: str = "") -> IpRule:
    """A rule with a fresh random id for an address or CIDR (ValueError if neither, normalized to its
    network); `duration` seconds from `now`, or permanent."""
    if action not in _ACTIONS:
        raise ValueError(f"rule action must be allow or deny, not {action!r}")
    network = parse_network(cidr)
    expires_at = None if duration is None else now + duration
    return IpRule(secrets.token_hex(8), str(network), action, expires_at, reason, now)


def is_ban(rule: IpRule) -> bool:
    """Whether `rule` is an automatic ban (a deny rule the ban tracker made), not an operator's rule."""
    return rule.action == "deny" and rule.id.startswith(BAN_ID_PREFIX)


def _kind(rule: IpRule) -> RuleKind:
    return "ban" if is_ban(rule) else rule.action


class DynamicRules:
    """The in-process index of dynamic rules: synchronous lookups for the request path.

    Expiry is honoured at lookup time: every lookup first drops the rules whose time has
    come, from a heap ordered by expiry, so the cost is O(log n) per expired rule and one
    comparison otherwise. When the table is full, the rule closest to expiry makes room;
    permanent rules are never evicted (adding then raises RuleTableFull).
    """

    def __init__(self, *, max_rules: int = DEFAULT_MAX_RULES, clock: Clock = time.time) -> None:
        self.max_rules = max_rules
        self.clock = clock
        self._rules: dict[str, tuple[IpRule, list[NetworkKey]]] = {}
        self._index: dict[RuleKind, dict[int, dict[int, dict[int, set[str]]]]] = {k: {4: {}, 6: {}} for k in _KINDS}
        self._allow_count = 0
        self._expiry = ExpiryQueue()

    def __len__(self) -> int:
        return len(self._rules)

    def add(self, rule: IpRule) -> None:
        """Add or replace `rule` (by id); ValueError if it is malformed. An expired rule only removes."""
        if rule.action not in _ACTIONS:
            raise ValueError(f"rule action must be allow or deny, not {rule.action!r}")
        keys = network_keys(parse_network(rule.cidr))
        self.remove(rule.id)
        now = self.clock()
        if rule.expired(now):
            return
        if len(self._rules) >= self.max_rules:
            self._make_room(now)
        self._rules[rule.id] = (rule, keys)
        for version, shift, value in keys:
            self._index[_kind(rule)][version].setdefault(shift, {}).setdefault(value, set()).add(rule.id)
        if rule.action == "allow":
            self._allow_count += 1
        if rule.expires_at is not None:
            self._expiry.push(rule.id, rule.expires_at)

    def remove(self, rule_id: str) -> bool:
        """Drop a rule by id; False if there was none."""
        entry = self._rules.pop(rule_id, None)
        if entry is None:
            return False
        rule, keys = entry
        kind = _kind(rule)
        for version, shift, value in keys:
            by_value = self._index[kind][version][shift]
            ids = by_value[value]
            ids.discard(rule_id)
            if not ids:
                del by_value[value]
                if not by_value:
                    del self._index[kind][version][shift]
        if rule.action == "allow":
            self._allow_count -= 1
        self._expiry.discard(rule_id)
        return True

    def replace(self, rules: Iterable[IpRule]) -> None:
        """Make the index hold exactly `rules` (those not yet expired)."""
        for rule_id in list(self._rules):
            self.remove(rule_id)
        for rule in rules:
            self.add(rule)

    def apply(self, change: Change[IpRule]) -> None:
        if change.record is None:
            self.remove(change.id)
        else:
            self.add(change.record)

    async def refresh(self, table: Table[IpRule]) -> None:
        """Reload every rule from `table` (for a store that cannot tell its changes)."""
        self.replace(await table.list())

    async def follow(self, table: Table[IpRule]) -> Unsubscribe:
        """Load `table`'s rules and apply each change it tells from now on; returns the unsubscribe."""
        return await follow(table, self.replace, self.apply)

    def sweep(self, now: float) -> int:
        """Drop every rule expired at `now`; how many were dropped."""
        heap = self._expiry.heap
        if not heap or heap[0][0] > now:  # the request path: one comparison
            return 0
        due = self._expiry.pop_due(now)
        for rule_id in due:
            self.remove(rule_id)
        return len(due)

    def match(self, address: Address, kind: RuleKind, now: float) -> IpRule | None:
        """A rule of `kind` covering `address` and active at `now`, or None ("deny" excludes bans)."""
        self.sweep(now)
        address = unmapped(address)
        value = int(address)
        for shift, by_value in self._index[kind][address.version].items():
            ids = by_value.get(value >> shift)
            if ids:
                return self._rules[next(iter(ids))][0]
        return None

    def has_allow(self, now: float) -> bool:
        """Whether any allow rule is active, which makes the dynamic whitelist apply."""
        self.sweep(now)
        return self._allow_count > 0

    def bans(self, now: float) -> builtins.list[IpRule]:
        """The automatic bans in force, soonest expiry first."""
        return [rule for rule in self.rules(now) if is_ban(rule)]

    def rules(self, now: float) -> builtins.list[IpRule]:
        """The active rules, soonest expiry first, permanent rules last."""
        self.sweep(now)
        return sorted((rule for rule, _ in self._rules.values()), key=_expiry_order)

    def _make_room(self, now: float) -> None:
        if self.sweep(now):
            return
        soonest = self._expiry.pop_soonest()
        if soonest is None:
            raise RuleTableFull(f"{self.max_rules} permanent dynamic rules already; remove some first")
        self.remove(soonest)


def _expiry_order(rule: IpRule) -> tuple[bool, float, str]:
    return (rule.expires_at is None, rule.expires_at or 0.0, rule.id)
