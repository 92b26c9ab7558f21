"""IP allow/deny lists: static sets, dynamic rules with expiry, and the layer that enforces them.

Deny always wins: a static blacklist entry or a dynamic deny rule (bans included) refuses an
address even when a whitelist names it. A whitelist applies as soon as it has any entry,
static or dynamic: then everything not on it is refused, an unknown address included.
IPv4-mapped IPv6 addresses and networks are folded into IPv4, so `::ffff:10.0.0.1` matches
the rule `10.0.0.0/8` and the reverse. Lookups never scan a list: every table keeps, per
prefix length, a set (or dict) of masked integers, so a decision costs one hash lookup per
distinct prefix length whatever the number of entries.

Dynamic rules (the seed guide's IPManager) live in an `IpRuleStore`; `DynamicRules` is the
in-process index of them that the request path reads synchronously. Automatic bans are deny
rules whose id starts with `ban:`; they are indexed apart so that the admin plane can let a
valid admin credential past a ban (never past an operator's own deny rule), and a banned
client is told so: 403 `banned` with `Retry-After`.
"""

from __future__ import annotations

import builtins
import functools
import heapq
import ipaddress
import itertools
import math
import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal, Protocol

from mcp_barbican.audit.events import AuditEvent, request_fields
from mcp_barbican.security.counters import SecurityCounters
from mcp_barbican.security.principal import CLIENT_IP_KEY
from mcp_barbican.server.http import json_error, respond_json
from mcp_barbican.types import ASGIApp, Receive, Scope, Send

if TYPE_CHECKING:
    from mcp_barbican.audit.trail import AuditTrail

__all__ = [
    "BAN_ID_PREFIX",
    "DEFAULT_MAX_RULES",
    "Action",
    "Address",
    "Clock",
    "DynamicRules",
    "IPFilter",
    "IpRule",
    "IpRuleStore",
    "IpSet",
    "IpVerdict",
    "MemoryIpRuleStore",
    "RuleSubscribers",
    "RuleChange",
    "RuleTableFull",
    "address_key",
    "client_ip",
    "decide",
    "is_ban",
    "parse_ip",
    "parse_network",
    "refuse",
]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Action = Literal["allow", "deny"]
#: How the index files a rule: its action, except that automatic bans are deny rules of their own kind.
RuleKind = Literal["allow", "deny", "ban"]
Clock = Callable[[], float]

#: Dynamic rules kept at most; bans from a flood of distinct addresses must not grow memory forever.
DEFAULT_MAX_RULES: Final = 100_000
#: Automatic bans are named after what they cover, so a new ban of the same network replaces the old one.
BAN_ID_PREFIX: Final = "ban:"
_BITS: Final = {4: 32, 6: 128}  # address width per IP version, to turn a prefix length into a shift
#: IPv4-mapped IPv6 (RFC 4291 §2.5.5.2): the same host as the IPv4 address in its low 32 bits.
_MAPPED: Final = ipaddress.IPv6Network("::ffff:0:0/96")
_MAPPED_PREFIX: Final = 96  # a mapped network's IPv4 prefix length is its own minus this
_LOW_32_BITS: Final = 0xFFFFFFFF  # where a mapped address keeps its IPv4 address
_ACTIONS: Final = ("allow", "deny")  # checked at run time too: rules may come from a shared store
_KINDS: Final[tuple[RuleKind, ...]] = ("allow", "deny", "ban")
# One text for every refusal: naming the rule would tell a prober which lists exist.
_BLOCKED_MESSAGE: Final = "requests from this address are not allowed"
_BANNED_MESSAGE: Final = "this address is banned for a while after repeated authentication failures"
# Verdicts kept per address while no dynamic rule exists (the static lists cannot change).
_STATIC_CACHE: Final = 65_536
# WebSocket close code "policy violation"; a close before accept becomes a 403 at the server.
_WS_POLICY_VIOLATION: Final = 1008

# (IP version, shift = address bits - prefix length, address >> shift)
_Key = tuple[int, int, int]


@functools.lru_cache(maxsize=4096)  # pure: the same few client values recur
def parse_ip(text: str) -> Address | None:
    """An address from its text (IPv6 zone id dropped, IPv4-mapped as IPv4); None if it is not one."""
    host = text.strip()
    if ":" in host:
        host = host.partition("%")[0]
    if not host.isascii():
        return None
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return None
    return _unmapped(address)


def _unmapped(address: Address) -> Address:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@functools.lru_cache(maxsize=4096)  # pure: the same few clients recur, and a miss costs a network's str()
def address_key(ip: str, ipv6_prefix: int) -> str | None:
    """What a client address counts as for bans and per-IP limits; None if `ip` is not an address.

    IPv4 (and IPv4-mapped IPv6, folded to IPv4) counts per address; IPv6 per network of
    `ipv6_prefix` bits (1-128), written as a CIDR, since one host usually holds a /64.
    """
    address = parse_ip(ip)
    if address is None:
        return None
    if address.version == 6 and ipv6_prefix < _BITS[6]:
        return str(ipaddress.IPv6Network((address, ipv6_prefix), strict=False))
    return str(address)


def parse_network(text: str) -> Network:
    """A single address or CIDR (host bits allowed, as in the config); ValueError if neither."""
    entry = text.strip()
    if not entry.isascii():
        raise ValueError(f"{text!r} is not an IP address or CIDR")
    try:
        return ipaddress.ip_network(entry, strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not an IP address or CIDR") from None


def _network_keys(network: Network) -> list[_Key]:
    """The keys a network is stored under; mapped IPv6 is stored as the IPv4 it stands for."""
    keys: list[_Key] = []
    if isinstance(network, ipaddress.IPv6Network):
        if network.prefixlen >= _MAPPED_PREFIX and network.subnet_of(_MAPPED):
            v4 = ipaddress.IPv4Network(
                (int(network.network_address) & _LOW_32_BITS, network.prefixlen - _MAPPED_PREFIX)
            )
            return _network_keys(v4)
        if network.supernet_of(_MAPPED):
            keys.append((4, 32, 0))  # it covers every mapped address, hence all of IPv4
    shift = _BITS[network.version] - network.prefixlen
    keys.append((network.version, shift, int(network.network_address) >> shift))
    return keys


@dataclass(frozen=True, slots=True)
class IpSet:
    """A fixed set of addresses and networks with constant-time-per-prefix-length membership."""

    v4: tuple[tuple[int, frozenset[int]], ...] = ()
    v6: tuple[tuple[int, frozenset[int]], ...] = ()
    entries: int = 0

    @classmethod
    def build(cls, entries: Iterable[str]) -> IpSet:
        """Compile single IPs and CIDRs (v4 and v6); ValueError on the first invalid entry."""
        groups: dict[tuple[int, int], set[int]] = {}
        count = 0
        for entry in entries:
            count += 1
            for version, shift, value in _network_keys(parse_network(entry)):
                groups.setdefault((version, shift), set()).add(value)
        by_version = {
            version: tuple((shift, frozenset(values)) for (v, shift), values in groups.items() if v == version)
            for version in _BITS
        }
        return cls(by_version[4], by_version[6], count)

    def __contains__(self, address: object) -> bool:
        """An address object or its text; anything that is not an address is not a member."""
        if isinstance(address, str):
            address = parse_ip(address)
        if not isinstance(address, ipaddress.IPv4Address | ipaddress.IPv6Address):
            return False
        address = _unmapped(address)
        table = self.v4 if address.version == 4 else self.v6
        value = int(address)
        return any(value >> shift in values for shift, values in table)

    def overlaps(self, network: Network) -> bool:
        """Whether any member lies inside `network` or contains it (a mapped network is checked as its IPv4)."""
        for version, shift, value in _network_keys(network):
            table = self.v4 if version == 4 else self.v6
            for own_shift, values in table:
                if own_shift >= shift:  # members as large as the network or larger: one may contain it
                    if value >> (own_shift - shift) in values:
                        return True
                elif any(member >> (shift - own_shift) == value for member in values):
                    return True
        return False

    def __bool__(self) -> bool:
        return self.entries > 0

    def __len__(self) -> int:
        return self.entries


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
        self._rules: dict[str, tuple[IpRule, list[_Key]]] = {}
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
        keys = _network_keys(parse_network(rule.cidr))
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
        address = _unmapped(address)
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


@dataclass(frozen=True, slots=True)
class IpVerdict:
    """The IP decision for one request; `reason` is a short code, `rule_id` the dynamic rule that decided.

    `expires_at` is when the deciding ban ends (reason `banned` only).
    """

    allowed: bool
    reason: str
    rule_id: str | None = None
    expires_at: float | None = None


_NO_RULES: Final = IpVerdict(True, "no_whitelist")
_WHITELISTED: Final = IpVerdict(True, "whitelisted")
_BLACKLISTED: Final = IpVerdict(False, "blacklisted")
_NOT_WHITELISTED: Final = IpVerdict(False, "not_whitelisted")
_UNKNOWN_ADDRESS: Final = IpVerdict(False, "unknown_address")


def decide(
    ip: str | None,
    *,
    whitelist: IpSet | None,
    blacklist: IpSet,
    dynamic: DynamicRules,
    now: float,
    dynamic_allow: bool = True,
) -> IpVerdict:
    """Whether a client address may pass: deny rules first, then the whitelist if there is one, then bans.

    With `dynamic_allow` false, dynamic allow rules are ignored (dynamic denies still apply):
    for a plane whose whitelist they must not widen, such as the admin API's. A ban is the
    reason only when nothing else refuses the address, so a `banned` verdict means that the
    address passes once the ban is lifted (which is what the admin plane relies on).
    """
    address = parse_ip(ip) if ip is not None else None
    whitelist_applies = bool(whitelist) or (dynamic_allow and dynamic.has_allow(now))
    if address is None:
        return _UNKNOWN_ADDRESS if whitelist_applies else _NO_RULES
    if address in blacklist:
        return _BLACKLISTED
    denied = dynamic.match(address, "deny", now)
    if denied is not None:
        return IpVerdict(False, "dynamic_deny", denied.id)
    verdict = _NO_RULES
    if whitelist_applies:
        if whitelist is not None and address in whitelist:
            verdict = _WHITELISTED
        elif dynamic_allow and (allowed := dynamic.match(address, "allow", now)) is not None:
            verdict = IpVerdict(True, "dynamic_allow", allowed.id)
        else:
            return _NOT_WHITELISTED
    banned = dynamic.match(address, "ban", now)
    if banned is not None:
        return IpVerdict(False, "banned", banned.id, banned.expires_at)
    return verdict


class IPFilter:
    """Refuses with 403 every request whose client address the lists do not let through."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        whitelist: IpSet | None,
        blacklist: IpSet,
        dynamic: DynamicRules,
        counters: SecurityCounters,
        clock: Clock = time.time,
        dynamic_allow: bool = True,
        audit: AuditTrail | None = None,
    ) -> None:
        self.app = app
        #: None when nothing is recorded: the builder passes a trail only if it has a sink.
        self.audit = audit
        self.dynamic_allow = dynamic_allow
        self.whitelist = whitelist
        self.blacklist = blacklist
        self.dynamic = dynamic
        self.counters = counters
        self.clock = clock
        self._static: dict[str | None, IpVerdict] = {}

    def known_allowed(self, ip: str | None) -> bool:
        """True when a kept verdict of the static lists admits `ip` and no dynamic rule exists."""
        if len(self.dynamic):
            return False
        verdict = self._static.get(ip)
        return verdict is not None and verdict.allowed

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        ip = client_ip(scope)
        if not self.whitelist and not self.blacklist and not len(self.dynamic):
            await self.app(scope, receive, send)  # no rule at all: nothing to decide
            return
        verdict = self._static.get(ip) if not len(self.dynamic) else None
        if verdict is None:
            verdict = decide(
                ip,
                whitelist=self.whitelist,
                blacklist=self.blacklist,
                dynamic=self.dynamic,
                now=self.clock(),
                dynamic_allow=self.dynamic_allow,
            )
            if not len(self.dynamic):
                # Static lists never change, so their verdicts can be kept (bounded).
                if len(self._static) >= _STATIC_CACHE:
                    self._static.clear()
                self._static[ip] = verdict
        if verdict.allowed:
            await self.app(scope, receive, send)
            return
        await refuse(scope, send, verdict, counters=self.counters, audit=self.audit, now=self.clock())


async def refuse(
    scope: Scope,
    send: Send,
    verdict: IpVerdict,
    *,
    counters: SecurityCounters,
    audit: AuditTrail | None,
    now: float,
    message: str = _BLOCKED_MESSAGE,
) -> None:
    """Answer a refused address: 403 `banned` with `Retry-After` for a ban, else 403 `ip_blocked` with `message`."""
    counters.ip_blocked += 1
    counters.violation()
    if audit is not None:
        details = {"rule": verdict.reason, "rule_id": verdict.rule_id}
        fields = request_fields(scope)
        await audit.emit(AuditEvent("ip_block", "request", False, scope.get("path", ""), details=details, **fields))
    if scope["type"] == "websocket":
        await send({"type": "websocket.close", "code": _WS_POLICY_VIOLATION})
        return
    if verdict.reason != "banned":
        await json_error(send, 403, "ip_blocked", message)
        return
    if verdict.expires_at is None:  # a ban rule written without expiry holds until removed
        await respond_json(send, 403, {"error": "banned", "message": _BANNED_MESSAGE, "retry_after": None})
        return
    wait = max(1, math.ceil(verdict.expires_at - now))
    body = {"error": "banned", "message": _BANNED_MESSAGE, "retry_after": wait}
    await respond_json(send, 403, body, [(b"retry-after", str(wait).encode())])


def client_ip(scope: Scope) -> str | None:
    """The resolved client address; without the client-address layer in front, the socket peer."""
    if CLIENT_IP_KEY in scope:
        resolved: str | None = scope[CLIENT_IP_KEY]
        return resolved
    client = scope.get("client")
    return str(client[0]) if client else None
