"""The records the state store keeps, and the change notice every table sends.

Every record is a frozen dataclass with an `id` (its key in its table) and a `created_at`
(Unix seconds, wall clock: records outlive the process and are shared by replicas). The
store checks nothing about a record's meaning: the layers that build records validate them
(an IP rule's network is parsed by `security.iprules.new_rule`, an MCP definition by the
config models).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Generic, Literal, Protocol, TypeVar

__all__ = [
    "DEFAULT_MAX_RULES",
    "Action",
    "Change",
    "IpRule",
    "Keyed",
    "McpRecord",
    "PinRecord",
    "R",
    "RuleTableFull",
    "TableName",
    "TokenRecord",
]

Action = Literal["allow", "deny"]
#: The tables of the store; every change notice names one.
TableName = Literal["mcps", "tokens", "rules", "pins"]


class Keyed(Protocol):
    """What every record has: its key, and when it was first stored."""

    @property
    def id(self) -> str: ...

    @property
    def created_at(self) -> float: ...


R = TypeVar("R", bound=Keyed)


@dataclass(frozen=True, slots=True)
class McpRecord:
    """An MCP registered through the admin API: its definition as submitted (validated), and when."""

    id: str
    definition: dict[str, Any]
    created_at: float
    updated_at: float


@dataclass(frozen=True, slots=True)
class TokenRecord:
    """An issued client token, by its SHA-256 only; `mcps` None reaches every token-auth MCP.

    A revocation is a put of the same record with `revoked_at` set: the id stays taken.
    """

    id: str
    sha256: str
    roles: tuple[str, ...] = ()
    mcps: tuple[str, ...] | None = None
    expires_at: float | None = None
    created_at: float = 0.0
    revoked_at: float | None = None
    description: str = ""

    def active(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or now < self.expires_at)


@dataclass(frozen=True, slots=True)
class IpRule:
    """A dynamic allow or deny entry for an address or CIDR; active while `now < expires_at` (None: until removed).

    Automatic bans are deny rules whose id starts with `ban:` (`security.iprules.is_ban`).
    """

    id: str
    cidr: str
    action: Action
    expires_at: float | None = None
    reason: str = ""
    created_at: float = 0.0

    def expired(self, now: float) -> bool:
        return self.expires_at is not None and now >= self.expires_at


@dataclass(frozen=True, slots=True)
class PinRecord:
    """One tool of one MCP as pinned (`security.pins`), keyed `{mcp}/{tool}`.

    `sha256`/`definition`: the approved definition ("" / None: none yet). `pending_sha256`/`pending`: the last
    observed definition that differs from it, awaiting an admin ("" / None: nothing pending), with its `change`
    (added, changed, removed, renamed; `renamed_from` for a rename), a bounded `diff`, the scanner's `findings`
    and when it was seen (`observed_at`).
    """

    id: str
    mcp: str
    tool: str
    sha256: str = ""
    definition: dict[str, Any] | None = None
    pending_sha256: str = ""
    pending: dict[str, Any] | None = None
    change: str = ""
    renamed_from: str = ""
    diff: str = ""
    findings: list[dict[str, Any]] = field(default_factory=list)
    observed_at: float = 0.0
    created_at: float = 0.0


#: Dynamic rules kept at most; bans from a flood of distinct addresses must not grow memory forever.
DEFAULT_MAX_RULES: Final = 100_000


class RuleTableFull(Exception):
    """The rule table is at its size limit and holds no expiring rule to make room."""


@dataclass(frozen=True, slots=True)
class Change(Generic[R]):
    """One change a table tells its subscribers of: `record` stored under `id`, or (None) deleted."""

    table: TableName
    id: str
    record: R | None
