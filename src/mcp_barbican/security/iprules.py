"""Dynamic IP rules and automatic bans: rules with expiry, where they are stored, and their index.

Dynamic rules (the seed guide's IPManager) live in an `IpRuleStore`; `DynamicRules` is the
in-process index of them that the request path reads synchronously. Like `addresses.IpSet`,
the index keeps masked integers per prefix length, so a lookup never scans the rules.
Automatic bans are deny rules whose id starts with `ban:`; they are indexed apart so that
the admin plane can let a valid admin credential past a ban (never past an operator's own
deny rule).
"""

from __future__ import annotations

import builtins
import heapq
import itertools
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Final, Literal, Protocol

from mcp_barbican.security.addresses import Address, NetworkKey, network_keys, parse_network, unmapped

__all__ = [
    "BAN_ID_PREFIX",
    "DEFAULT_MAX_RULES",
    "Action",
    "Clock",
    "DynamicRules",
    "IpRule",
    "IpRuleStore",
    "MemoryIpRuleStore",
    "RuleChange",
    "RuleKind",
    "RuleSubscribers",
    "RuleTableFull",
    "is_ban",
]

Action = Literal["allow", "deny"]
#: How the index files a rule: its action, except that automatic bans are deny rules of their own kind.
RuleKind = Literal["allow", "deny", "ban"]
Clock = Callable[[], float]

#: Dynamic rules kept at most; bans from a flood of distinct addresses must not grow memory forever.
DEFAULT_MAX_RULES: Final = 100_000
#: Automatic bans are named after what they cover, so a new ban of the same network replaces the old one.
BAN_ID_PREFIX: Final = "ban:"
_ACTIONS: Final = ("allow", "deny")  # checked at run time too: rules may come from a shared store
_KINDS: Final[tuple[RuleKind, ...]] = ("allow", "deny", "ban")


@dataclass(frozen=True, slots=True)
class IpRule:
    """A dynamic allow or deny entry; active while `now < expires_at` (None: until removed).

    Times are Unix seconds (wall clock): rules outlive the process and are shared by replicas.
    """

    id: str
    cidr: str
    action: Action
    expires_at: float | None = None
    reason: str = ""
    created_at: float = 0.0

    @classmethod
    def new(cls, cidr: str, action: Action, *, now: float, duration: float | None = None, reason: str = "") -> IpRule:
        """A rule with a fresh random id; `duration` seconds from `now`, or permanent."""
        network = parse_network(cidr)
        expires_at = None if duration is None else now + duration
        return cls(secrets.token_hex(8), str(network), action, expires_at, reason, now)

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


def is_ban(rule: IpRule) -> bool:
    """Whether `rule` is an automatic ban (a deny rule the ban tracker made), not an operator's rule."""
    return rule.action == "deny" and rule.id.startswith(BAN_ID_PREFIX)


def _kind(rule: IpRule) -> RuleKind:
    return "ban" if is_ban(rule) else rule.action


@dataclass(frozen=True, slots=True)
class RuleChange:
    """One change a store pushes to its subscribers: `rule` added or replaced, or (None) removed."""

    rule_id: str
    rule: IpRule | None


class IpRuleStore(Protocol):
    """Where dynamic rules live (memory now; SQLite and Redis later).

    - `add` stores a rule, replacing one with the same id; `remove` deletes by id and says
      whether it existed; `list` returns the rules not yet expired.
    - `subscribe` registers a listener called with every change made through this store
      (and, for shared stores, by other replicas) and returns the function that unsubscribes.
      Listeners run on the event loop and must not block; a store that cannot push changes
      documents it, and its users call `DynamicRules.refresh` on a timer instead.
    """

    async def add(self, rule: IpRule) -> None: ...

    async def remove(self, rule_id: str) -> bool: ...

    async def list(self) -> builtins.list[IpRule]: ...

    def subscribe(self, listener: Callable[[RuleChange], None]) -> Callable[[], None]: ...


class RuleTableFull(Exception):
    """The rule table is at its size limit and holds no expiring rule to make room."""


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
        self._expiries: list[tuple[float, int, str]] = []
        self._heap_entry: dict[str, int] = {}
        self._sequence = itertools.count()

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
            sequence = next(self._sequence)
            self._heap_entry[rule.id] = sequence
            heapq.heappush(self._expiries, (rule.expires_at, sequence, rule.id))

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
        if self._heap_entry.pop(rule_id, None) is not None and len(self._expiries) > 2 * len(self._heap_entry) + 64:
            self._compact_heap()
        return True

    def replace(self, rules: Iterable[IpRule]) -> None:
        """Make the index hold exactly `rules` (those not yet expired)."""
        for rule_id in list(self._rules):
            self.remove(rule_id)
        for rule in rules:
            self.add(rule)

    def apply(self, change: RuleChange) -> None:
        if change.rule is None:
            self.remove(change.rule_id)
        else:
            self.add(change.rule)

    async def refresh(self, store: IpRuleStore) -> None:
        """Reload every rule from `store` (for stores that cannot push their changes)."""
        self.replace(await store.list())

    async def follow(self, store: IpRuleStore) -> Callable[[], None]:
        """Load `store`'s rules and apply each change it pushes from now on; returns the unsubscribe.

        Changes pushed while the initial list is loading are replayed after it, so none is lost.
        """
        backlog: builtins.list[RuleChange] = []
        loading = True

        def on_change(change: RuleChange) -> None:
            if loading:
                backlog.append(change)
            else:
                self.apply(change)

        unsubscribe = store.subscribe(on_change)
        try:
            await self.refresh(store)
        except BaseException:
            unsubscribe()
            raise
        for change in backlog:
            self.apply(change)
        loading = False
        return unsubscribe

    def sweep(self, now: float) -> int:
        """Drop every rule expired at `now`; how many were dropped."""
        dropped = 0
        while self._expiries and self._expiries[0][0] <= now:
            _, sequence, rule_id = heapq.heappop(self._expiries)
            if self._heap_entry.get(rule_id) == sequence:
                self.remove(rule_id)
                dropped += 1
        return dropped

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
        while self._expiries:
            _, sequence, rule_id = heapq.heappop(self._expiries)
            if self._heap_entry.get(rule_id) == sequence:
                self.remove(rule_id)
                return
        raise RuleTableFull(f"{self.max_rules} permanent dynamic rules already; remove some first")

    def _compact_heap(self) -> None:
        self._expiries = [entry for entry in self._expiries if self._heap_entry.get(entry[2]) == entry[1]]
        heapq.heapify(self._expiries)


def _expiry_order(rule: IpRule) -> tuple[bool, float, str]:
    return (rule.expires_at is None, rule.expires_at or 0.0, rule.id)


class RuleSubscribers:
    """The listeners of one IpRuleStore: `subscribe` for the protocol, `notify` after each change."""

    def __init__(self) -> None:
        self._listeners: builtins.list[Callable[[RuleChange], None]] = []

    def subscribe(self, listener: Callable[[RuleChange], None]) -> Callable[[], None]:
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def notify(self, change: RuleChange) -> None:
        for listener in tuple(self._listeners):
            listener(change)


class MemoryIpRuleStore:
    """An IpRuleStore in process memory: changes reach subscribers at once; nothing survives a restart."""

    def __init__(self, *, max_rules: int = DEFAULT_MAX_RULES, clock: Clock = time.time) -> None:
        self._table = DynamicRules(max_rules=max_rules, clock=clock)
        self._subscribers = RuleSubscribers()

    async def add(self, rule: IpRule) -> None:
        self._table.add(rule)
        self._subscribers.notify(RuleChange(rule.id, rule))

    async def remove(self, rule_id: str) -> bool:
        removed = self._table.remove(rule_id)
        if removed:
            self._subscribers.notify(RuleChange(rule_id, None))
        return removed

    async def list(self) -> builtins.list[IpRule]:
        return self._table.rules(self._table.clock())

    def subscribe(self, listener: Callable[[RuleChange], None]) -> Callable[[], None]:
        return self._subscribers.subscribe(listener)
