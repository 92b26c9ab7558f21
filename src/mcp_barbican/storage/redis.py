"""State in Redis (or Valkey), shared by replicas: every table, its change notices, and the rate-limit buckets.

Keys, all under `key_prefix`: `{table}` is a hash of id to the stored record, `rules:expiry` a
sorted set of the rules that expire (by `expires_at`), `changes` the pub/sub channel of change
notices and `bucket:{namespace}:{name}:{key}` one rate-limit bucket. A stored record is its
`created_at` (repr, exact), a newline, and the JSON of its other fields, so a `replace` keeps
the stored `created_at` inside one script without a float going through Lua.

Every write is one Lua script (`redis_lua.py`, atomic on the server) that also publishes its change, so a
notice goes out exactly when a write happened. Subscribers hear every change, this process's own
included, from the listener task, so in the one order Redis made them (two replicas writing one id
at once cannot leave a follower holding the older record); a write returns once its listener has
told its change (`settle`), and tells it itself when no listener runs or hears it in time.
When the change channel comes back after an outage, each followed table is read again and its
subscribers told every record, and the deletion of every id they were told of that is gone
(`RedisTable.known`), so a follower catches up on what it missed without a restart.
"""

from __future__ import annotations

import asyncio
import builtins
import dataclasses
import json
import logging
import secrets
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final, Generic

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError, RedisError

from mcp_barbican.exceptions import StorageError
from mcp_barbican.logs import log_unexpected
from mcp_barbican.storage.buckets import DEFAULT_MAX_KEYS, TOKEN_EPSILON, BucketRef, MemoryBucketStore
from mcp_barbican.storage.health import StoreHealth
from mcp_barbican.storage.leases import Leases
from mcp_barbican.storage.notices import Listener, Subscribers, Unsubscribe
from mcp_barbican.storage.records import (
    DEFAULT_MAX_RULES,
    Change,
    IpRule,
    McpRecord,
    PinRecord,
    R,
    RuleTableFull,
    TableName,
    TokenRecord,
)
from mcp_barbican.storage.redis_lua import DELETE, LIST_RULES, REPLACE, TAKE, WRITE, WRITE_RULE
from mcp_barbican.storage.redis_wire import RespWire

__all__ = ["RedisBucketStore", "RedisStorage", "RedisTable"]

logger = logging.getLogger(__name__)

#: Seconds between attempts to listen again after the pub/sub connection failed.
RETRY_SECONDS: Final = 1.0
#: How long a write waits for its own change to come back through the listener before telling it itself.
SETTLE_SECONDS: Final = 1.0
#: How long a read waits for the change listener to subscribe (Redis unreachable at start-up: an error).
SUBSCRIBE_SECONDS: Final = 5.0


@dataclasses.dataclass(frozen=True)
class Codec(Generic[R]):
    """One kind of record as a stored value: `created_at`, a newline, the JSON of the other fields."""

    decode_fields: Callable[[dict[str, Any], float], R]

    @staticmethod
    def body(record: Any) -> str:
        fields = {f.name: getattr(record, f.name) for f in dataclasses.fields(record) if f.name != "created_at"}
        return json.dumps(fields, separators=(",", ":"))

    def decode(self, value: str | bytes) -> R:
        text = value.decode() if isinstance(value, bytes) else value
        created, _, body = text.partition("\n")
        return self.decode_fields(json.loads(body), float(created))


def _token(fields: dict[str, Any], created_at: float) -> TokenRecord:
    mcps, roles = fields.pop("mcps"), fields.pop("roles")
    return TokenRecord(**fields, roles=tuple(roles), mcps=None if mcps is None else tuple(mcps), created_at=created_at)


_CODECS: Final[dict[TableName, Codec[Any]]] = {
    "mcps": Codec(lambda fields, created_at: McpRecord(**fields, created_at=created_at)),
    "tokens": Codec(_token),
    "rules": Codec(lambda fields, created_at: IpRule(**fields, created_at=created_at)),
    "pins": Codec(lambda fields, created_at: PinRecord(**fields, created_at=created_at)),
}


def _order(record: R) -> tuple[float, str]:
    return (record.created_at, record.id)


class RedisTable(Generic[R]):
    """A `Table` in one Redis hash; every write is one script that also publishes its change."""

    def __init__(self, storage: RedisStorage, name: TableName) -> None:
        self.storage = storage
        self.name: TableName = name
        self.codec: Codec[R] = _CODECS[name]
        self.key = storage.prefix + name
        self.expiry_key = storage.prefix + name + ":expiry"
        self.subscribers: Subscribers[R] = Subscribers()
        #: The ids its subscribers may hold, with when each expires (None: never): what a resync deletes.
        self.known: dict[str, float | None] = {}

    def _argv(self) -> builtins.list[str]:
        return [self.storage.origin, self.name, self.storage.channel]

    async def list(self) -> builtins.list[R]:
        values = await self.storage.call(lambda r: r.hvals(self.key))
        return self._listed(self.codec.decode(v) for v in values)

    def _listed(self, records: Iterable[R]) -> builtins.list[R]:
        listed = sorted(records, key=_order)
        for record in listed:
            self.known[record.id] = self._expiry(record)
        return listed

    def _expiry(self, record: R) -> float | None:
        return None

    async def get(self, record_id: str) -> R | None:
        value = await self.storage.call(lambda r: r.hget(self.key, record_id))
        return None if value is None else self.codec.decode(value)

    async def put(self, record: R) -> None:
        await self._write(record, "put")

    async def create(self, record: R) -> bool:
        return await self._write(record, "create")

    def _keys(self) -> builtins.list[str]:
        return [self.key, self.expiry_key, self.storage.sequence_key]

    async def _write(self, record: R, mode: str) -> bool:
        argv = [*self._argv(), record.id, repr(record.created_at), Codec.body(record), mode]
        sequence = await self.storage.script(WRITE, [self.key, self.storage.sequence_key], argv)
        if not sequence:
            return False
        if not await self.storage.settle(sequence):
            self.told(record.id, record)
        return True

    async def replace(self, record: R) -> bool:
        replaced = await self.storage.script(REPLACE, self._keys(), [*self._argv(), *self._replacing(record)])
        if replaced is None:
            return False
        sequence, stored = replaced
        if not await self.storage.settle(sequence):
            self.told(record.id, self.codec.decode(stored))
        return True

    def _replacing(self, record: R) -> builtins.list[str]:
        return [record.id, Codec.body(record), "", ""]

    async def delete(self, record_id: str) -> bool:
        sequence = await self.storage.script(DELETE, self._keys(), [*self._argv(), record_id])
        if not sequence:
            return False
        if not await self.storage.settle(sequence):
            self.told(record_id, None)
        return True

    def subscribe(self, listener: Listener[R]) -> Unsubscribe:
        unsubscribe = self.subscribers.subscribe(listener)
        self.storage.listen()
        return unsubscribe

    def told(self, record_id: str, record: R | None) -> None:
        if record is None:
            self.known.pop(record_id, None)
        else:
            self.known[record_id] = self._expiry(record)
        self.subscribers.notify(Change(self.name, record_id, record))

    async def resync(self) -> None:
        """Tell the subscribers every record, and the deletion of every id they know that is gone."""
        records = await self.list()
        present = {record.id for record in records}
        for record_id in [i for i in self.known if i not in present]:
            self.told(record_id, None)
        for record in records:
            self.told(record.id, record)

    def heard(self, record_id: str, value: str | None) -> None:
        self.told(record_id, None if value is None else self.codec.decode(value))


class RedisRuleTable(RedisTable[IpRule]):
    """The rules table: expired rules are dropped on the way, and it holds at most `max_rules` (the same
    bound and eviction order as the other backends: expired first, then the one closest to expiry)."""

    def __init__(self, storage: RedisStorage, *, max_rules: int, clock: Callable[[], float]) -> None:
        super().__init__(storage, "rules")
        self.max_rules = max_rules
        self.clock = clock

    async def list(self) -> builtins.list[IpRule]:
        argv = [*self._argv(), repr(self.clock())]
        flat = await self.storage.script(LIST_RULES, [self.key, self.expiry_key], argv)
        return self._listed(self.codec.decode(v) for v in flat[1::2])

    def _expiry(self, record: IpRule) -> float | None:
        return record.expires_at

    def told(self, record_id: str, record: IpRule | None) -> None:
        super().told(record_id, record)
        if len(self.known) > 2 * self.max_rules:  # rules expire without a notice: forget those
            now = self.clock()
            self.known = {i: at for i, at in self.known.items() if at is None or at > now}

    async def get(self, record_id: str) -> IpRule | None:
        rule = await super().get(record_id)
        return None if rule is None or rule.expired(self.clock()) else rule

    def _replacing(self, record: IpRule) -> builtins.list[str]:
        expires = "" if record.expires_at is None else repr(record.expires_at)
        return [record.id, Codec.body(record), repr(self.clock()), expires]

    async def _write(self, record: IpRule, mode: str) -> bool:
        expires = "" if record.expires_at is None else repr(record.expires_at)
        argv = [*self._argv(), record.id, repr(record.created_at), Codec.body(record), expires]
        argv += [repr(self.clock()), str(self.max_rules), mode]
        result = await self.storage.script(WRITE_RULE, self._keys(), argv)
        if result == -1:
            raise RuleTableFull(f"{self.max_rules} permanent dynamic rules already; remove some first")
        if not result[0]:
            return False
        _, evicted, sequence = result
        if not await self.storage.settle(sequence):
            if evicted:
                self.told(evicted.decode(), None)
            self.told(record.id, record)
        return True


def _level(ref: BucketRef, level: float) -> float:
    """As `Bucket.level` reads it."""
    return min(float(ref.spec.capacity), max(0.0, level - TOKEN_EPSILON))


class RedisBucketStore:
    """Rate-limit buckets in Redis, taken all or nothing by one script (exact across replicas).

    "Now" is Redis TIME unless `server_time` is off (then the caller's `now`, for tests with a fixed
    clock). While Redis is unreachable, `fail_open` decides: admit (levels unknown, read as full) or refuse;
    after a failure the store asks Redis again only every RETRY_SECONDS, so an unreachable server does not
    add its connect timeout to every request.
    """

    def __init__(
        self, storage: RedisStorage, namespace: str, *, server_time: bool, fail_open: bool, max_keys: int
    ) -> None:
        self.storage = storage
        self.prefix = f"{storage.prefix}bucket:{namespace}:"
        self.server_time = server_time
        self.fail_open = fail_open
        self._failing = False
        self._retry_at = 0.0
        #: Tokens this replica took ahead of need (storage/leases.py): most requests then ask Redis nothing.
        self._leases = Leases(max_keys)

    @property
    def local(self) -> MemoryBucketStore | None:
        return None

    def _outage(self, refs: Sequence[BucketRef], error: object = None) -> tuple[bool, list[float]]:
        self.storage.health.decided("rate_limit", "open" if self.fail_open else "closed", error)
        return self.fail_open, [float(ref.spec.capacity) if self.fail_open else 0.0 for ref in refs]

    def take_held(self, refs: Sequence[BucketRef]) -> bool:
        return self._leases.spend([f"{self.prefix}{ref.spec.name}:{ref.key}" for ref in refs]) is not None

    async def take(self, refs: Sequence[BucketRef], now: float) -> tuple[bool, list[float]]:
        keys = [f"{self.prefix}{ref.spec.name}:{ref.key}" for ref in refs]
        held = self._leases.spend(keys)
        if held is not None:  # a token of this replica's own for every bucket: Redis is not asked
            return True, [_level(ref, level) for ref, level in zip(refs, held, strict=True)]
        wanted = self._leases.wanted(refs, keys)
        argv = ["" if self.server_time else repr(now)]
        for ref, want in zip(refs, wanted, strict=True):
            argv += [repr(ref.spec.lead), repr(ref.spec.interval), str(want)]
        if self._failing and time.monotonic() < self._retry_at:
            return self._outage(refs)
        try:
            out = await self.storage.wire.script(TAKE, keys, argv)
        except RedisError as exc:
            self._leases.asked(keys, wanted)
            self._retry_at = time.monotonic() + RETRY_SECONDS
            self._failing = True
            self.storage.health.down("commands", exc, deciding="rate_limit")
            return self._outage(refs, exc)
        self._leases.asked(keys, wanted)
        if self._failing:
            self._failing = False
            self.storage.health.restored("commands")
        levels = [float(v) for v in out[1::2]]
        if out[0] != b"1":
            held = self._leases.spend(keys)  # a lease granted meanwhile to a concurrent request of this replica
            if held is not None:
                return True, [_level(ref, level) for ref, level in zip(refs, held, strict=True)]
            return False, [_level(ref, level) for ref, level in zip(refs, levels, strict=True)]
        left = self._leases.granted(keys, [int(v) for v in out[2::2]], levels)
        if left is None:  # a token held when Redis was asked expired meanwhile: ask for that bucket too
            return await self.take(refs, now)
        return True, [_level(ref, level) for ref, level in zip(refs, left, strict=True)]


def command_client(url: str) -> Redis:
    """A client for commands, with one immediate retry on a fresh connection: a pooled connection the server
    dropped (Redis restarted) fails its next command once, which must not reach a caller."""
    return Redis.from_url(
        url,
        socket_connect_timeout=2.0,
        socket_timeout=5.0,
        retry=Retry(NoBackoff(), 1),
        retry_on_error=[ConnectionError],
    )


def listening_client(url: str) -> Redis:
    """A client for a subscription, retrying nothing: it must see every disconnection, which redis-py would
    otherwise mend by subscribing again quietly, losing the messages sent meanwhile."""
    return Redis.from_url(url, socket_connect_timeout=2.0, retry=Retry(NoBackoff(), 0))


class RedisStorage:
    """Every table in Redis, with change notices over pub/sub so every replica follows every change."""

    def __init__(
        self,
        url: str,
        *,
        key_prefix: str = "barbican:",
        rate_limit_fail_open: bool = True,
        max_rules: int = DEFAULT_MAX_RULES,
        clock: Callable[[], float] = time.time,
        server_time: bool = True,
    ) -> None:
        self.redis = command_client(url)
        self._listening_client = listening_client(url)
        #: The request path's own client: every rate-limit take of a loop turn in one write (redis_wire.py).
        self.wire = RespWire(url)
        #: Whether Redis answers (the listener and the commands), and the decisions taken while it does not.
        self.health = StoreHealth(probe=lambda: self.redis.ping(), retry=RETRY_SECONDS)
        self.prefix = key_prefix
        self.channel = key_prefix + "changes"
        self.sequence_key = key_prefix + "changes:sequence"
        self.origin = secrets.token_hex(8)
        self.rate_limit_fail_open = rate_limit_fail_open
        self.server_time = server_time
        self.mcps: RedisTable[McpRecord] = RedisTable(self, "mcps")
        self.tokens: RedisTable[TokenRecord] = RedisTable(self, "tokens")
        self.rules = RedisRuleTable(self, max_rules=max_rules, clock=clock)
        self.pins: RedisTable[PinRecord] = RedisTable(self, "pins")
        self._tables: dict[str, RedisTable[Any]] = {
            "mcps": self.mcps,
            "tokens": self.tokens,
            "rules": self.rules,
            "pins": self.pins,
        }
        self._scripts: dict[str, Any] = {}
        self._listener: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self._listen_error = ""
        #: Whether the listener is subscribed now, and the sequence of the last change it told.
        self._connected = False
        self._heard_sequence = 0
        self._settling: builtins.list[tuple[int, asyncio.Future[None]]] = []

    def buckets(self, namespace: str, *, max_keys: int = DEFAULT_MAX_KEYS) -> RedisBucketStore:
        """`max_keys` bounds the leases held here; a bucket key in Redis expires when its bucket is full again."""
        return RedisBucketStore(
            self, namespace, server_time=self.server_time, fail_open=self.rate_limit_fail_open, max_keys=max_keys
        )

    async def call(self, command: Callable[[Redis], Any]) -> Any:
        try:
            await self._ready()
            result = await command(self.redis)
        except RedisError as exc:
            self.health.down("commands", exc)
            raise StorageError(f"the Redis state store failed: {exc}") from None
        except TimeoutError:
            why = f": {self._listen_error}" if self._listen_error else ""
            raise StorageError(f"the Redis state store failed: cannot hear its changes{why}") from None
        if "commands" in self.health.failing:
            self.health.restored("commands")
        return result

    async def script(self, source: str, keys: Sequence[str], argv: Sequence[str], *, raw: bool = False) -> Any:
        """Run one of this module's Lua scripts (by SHA, loaded on first use)."""
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = self.redis.register_script(source)
        if raw:
            return await script(keys=list(keys), args=list(argv))
        return await self.call(lambda _: script(keys=list(keys), args=list(argv)))

    def listen(self) -> None:
        """Start hearing other processes' changes (once; needs a running event loop, else on the next call)."""
        if self._listener is None:
            try:
                self._listener = asyncio.get_running_loop().create_task(self._listen())
            except RuntimeError:
                return

    async def _ready(self) -> None:
        """Wait until the listener is subscribed, once a table has a subscriber: no change is missed after."""
        if self._listener is None and any(len(t.subscribers) for t in self._tables.values()):
            self.listen()
        if self._listener is not None and not self._listening.is_set():
            await asyncio.wait_for(self._listening.wait(), timeout=SUBSCRIBE_SECONDS)

    async def _listen(self) -> None:
        while True:
            try:
                async with self._listening_client.pubsub(ignore_subscribe_messages=True) as pubsub:
                    await pubsub.subscribe(self.channel)
                    self._heard_sequence = 0  # a restarted Redis counts from 0 again
                    self._connected = True
                    if self._listening.is_set():
                        for table in self._tables.values():
                            if len(table.subscribers):
                                await table.resync()
                    self._listening.set()
                    self.health.restored("changes")
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            self._heard(message["data"])
            except (RedisError, OSError, StorageError) as exc:
                self._connected = False
                self._listen_error = str(exc)
                self.health.down("changes", exc)
            except Exception:
                self._connected = False
                log_unexpected(logger, "state store: the Redis change listener failed; retrying")
                self.health.down("changes", "the listener failed")
            await asyncio.sleep(RETRY_SECONDS)

    def _heard(self, data: bytes) -> None:
        try:
            _origin, table, record_id, value, sequence = json.loads(data)
            self._tables[table].heard(record_id, value)
        except Exception:
            log_unexpected(logger, "state store: an unreadable change notice on %s", self.channel)
            return
        self._heard_sequence = max(self._heard_sequence, sequence)
        waiting = []
        for awaited, future in self._settling:
            if awaited <= self._heard_sequence:
                if not future.done():
                    future.set_result(None)
            else:
                waiting.append((awaited, future))
        self._settling = waiting

    async def settle(self, sequence: int) -> bool:
        """Wait until the listener has told change `sequence`; False if no listener hears changes now (or not
        in time), and the writer tells its change itself."""
        if not self._connected:
            return False
        if self._heard_sequence >= sequence:
            return True
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (sequence, future)
        self._settling.append(entry)
        try:
            await asyncio.wait_for(future, timeout=SETTLE_SECONDS)
        except TimeoutError:
            if entry in self._settling:
                self._settling.remove(entry)
            return False
        return True

    async def aclose(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            try:
                await self._listener
            except asyncio.CancelledError:
                pass
        await self.health.aclose()
        await self.wire.aclose()
        await self.redis.aclose()
        await self._listening_client.aclose()
