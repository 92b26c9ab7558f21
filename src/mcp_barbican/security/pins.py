"""Tool pins at run time: what each MCP's tools were approved as, the changes awaiting an admin, what is hidden.

One `ToolPins` per MCP id, shared by every link of its runtime (and its control link): `screen` observes a
`tools/list` result, compares it with the pins only when the listing's bytes changed (the last digest is kept),
records each change (`PinRecord`, in the store, so every replica sees it) with an `integrity.changed` event and
a counter, and drops the hidden tools from the result; `hidden` is the set `tools/call` consults (one lookup).
`PinBook` follows the store's `pins` table for every MCP, so an approval or a reset made on any replica reaches
every replica's decision at once (and the runtime announces `notifications/tools/list_changed`).
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import Any, Final

from mcp_barbican.audit import AuditEvent, AuditTrail
from mcp_barbican.config.integrity import IntegrityConfig
from mcp_barbican.exceptions import StorageError
from mcp_barbican.logs import log_unexpected
from mcp_barbican.security.counters import SecurityCounters
from mcp_barbican.security.pinning import Observed, ToolChange, compare, diff, listing_digest, observe
from mcp_barbican.security.scanner import Finding, scan_tool
from mcp_barbican.storage import Change, PinRecord, Table
from mcp_barbican.storage.notices import Unsubscribe, follow

__all__ = ["MAX_TOOLS_PER_MCP", "PinBook", "ToolPins", "blocking", "hides"]

logger = logging.getLogger(__name__)

#: Tools pinned per MCP at most; a listing beyond it has its excess hidden (pinning on) and logged.
MAX_TOOLS_PER_MCP: Final = 10_000
#: (tool, hash) pairs remembered as reported, per MCP: each distinct definition is reported once.
MAX_REPORTED: Final = 4096
#: Log lines per listing that changes (each change is an audit event; the log gets a summary past these).
MAX_LOGGED: Final = 10
_BLOCKING: Final = frozenset({"high", "critical"})


def blocking(findings: Iterable[Mapping[str, Any]]) -> bool:
    """Whether any finding is severe enough for `scan.definitions: block` to hold its tool back."""
    return any(finding.get("severity") in _BLOCKING for finding in findings)


def hides(config: IntegrityConfig, record: PinRecord | None, observed_sha: str) -> bool:
    """Whether a tool observed with `observed_sha` is kept from clients, given its pin record."""
    if config.pin == "off":
        return False
    if record is None:  # not pinned yet (the pins were just reset: the next listing is the baseline)
        return config.pin == "approve"
    if record.sha256 == observed_sha:
        return False
    if config.scan.definitions == "block" and record.pending_sha256 == observed_sha and blocking(record.findings):
        return True
    if not record.sha256:
        return config.pin == "approve" or config.on_change == "block"
    return config.on_change == "block"


def _name(tool: dict[str, Any]) -> str:
    name = tool.get("name")
    return name if isinstance(name, str) else ""


class _Others(Collection[str]):
    """The names of a listing but one, without copying them (a listing of n tools scans in O(n), not O(n^2))."""

    __slots__ = ("_all", "_but")

    def __init__(self, names: frozenset[str], but: str) -> None:
        self._all = names
        self._but = but

    def __contains__(self, name: object) -> bool:
        return name != self._but and name in self._all

    def __iter__(self) -> Iterator[str]:
        return (name for name in self._all if name != self._but)

    def __len__(self) -> int:
        return len(self._all) - (self._but in self._all)


def _finding(finding: Finding) -> dict[str, Any]:
    return dataclasses.asdict(finding)


class ToolPins:
    """One MCP's pins in this process (see the module's doc)."""

    def __init__(
        self,
        mcp_id: str,
        config: IntegrityConfig,
        *,
        records: dict[str, PinRecord],
        table: Table[PinRecord],
        audit: AuditTrail | None,
        counters: SecurityCounters,
    ) -> None:
        self.mcp_id = mcp_id
        self.config = config
        #: The store's records of this MCP by tool (the book keeps this dict up to date).
        self.records = records
        self.table = table
        self.audit = audit
        self.counters = counters
        #: Names never to list or call now (pending under block, unapproved under approve, duplicated).
        self.hidden: frozenset[str] = frozenset()
        self.observed: dict[str, Observed] = {}
        self.duplicates: set[str] = set()
        self.excess: set[str] = set()
        #: Told when `hidden` changes (the runtime announces list_changed), and when every pin is forgotten.
        self.on_visible_change: list[Callable[[], None]] = []
        self.on_forgotten: list[Callable[[], None]] = []
        self._last_digest: str | None = None
        self._logged = 0
        self._reported: collections.OrderedDict[tuple[str, str], None] = collections.OrderedDict()
        #: Records waiting for the store, the latest per tool (a store that is down never grows it past the tools).
        self._writes: dict[str, PinRecord] = {}
        self._writer: asyncio.Task[None] | None = None

    @property
    def active(self) -> bool:
        return self.config.pin != "off" or self.config.scan.definitions != "off"

    # -- the listing path ------------------------------------------------------------------

    def screen(self, result: Any, *, full: bool, own: bool = False) -> None:
        """Observe a `tools/list` result and drop the hidden tools from it (in place).

        `full`: the listing has every tool (no page before or after it), so a tool it lacks that has a pinned
        twin in it was renamed; `own`: the proxy listed through its own session, so a tool it lacks was removed
        (a client's listing may lack tools the upstream shows only to clients declaring some capability).
        """
        if not self.active or not isinstance(result, dict):
            return
        tools = result.get("tools")
        if not isinstance(tools, list):
            return
        try:
            digest = listing_digest(tools)
        except TypeError:  # orjson refuses what JSON cannot carry; the upstream's own parse let it through
            logger.warning("MCP %r: a tools/list answer that cannot be hashed; its tools are hidden", self.mcp_id)
            result["tools"] = []
            return
        if own:
            digest += ":own"
        if digest != self._last_digest:
            self._last_digest = digest
            self._observe(tools, full=full, own=own)
        if self.hidden:
            hidden = self.hidden
            result["tools"] = [t for t in tools if not (isinstance(t, dict) and _name(t) in hidden)]

    def screened(self, tools: list[dict[str, Any]], *, full: bool) -> list[dict[str, Any]]:
        """`screen` for a listing the proxy gathered itself (the control link's, all pages)."""
        result: dict[str, Any] = {"tools": tools}
        self.screen(result, full=full, own=True)
        listed: list[dict[str, Any]] = result["tools"]
        return listed

    def _observe(self, tools: list[Any], *, full: bool, own: bool) -> None:
        self._logged = 0
        listing, duplicates = observe(tools)
        self.excess = set()
        if len(listing) > MAX_TOOLS_PER_MCP:
            names = list(listing)
            self.excess = set(names[MAX_TOOLS_PER_MCP:])
            listing = {name: listing[name] for name in names[:MAX_TOOLS_PER_MCP]}
            logger.warning(
                "MCP %r lists %d tools; only %d are pinned, the rest hidden", self.mcp_id, len(names), MAX_TOOLS_PER_MCP
            )
        if full:
            self.observed, self.duplicates = dict(listing), set(duplicates)
        else:
            room = MAX_TOOLS_PER_MCP - len(self.observed)
            fresh = [name for name in listing if name not in self.observed][: max(room, 0)]
            self.observed.update(
                {name: listing[name] for name in (*fresh, *(n for n in listing if n in self.observed))}
            )
            self.duplicates = (self.duplicates | duplicates) if len(self.duplicates) < MAX_TOOLS_PER_MCP else duplicates
        others = frozenset(listing)
        if self.config.pin == "off":
            for seen in listing.values():
                self._findings(seen, others)
        else:
            baseline = self.config.pin == "tofu" and not self.records
            approved = {name: (record.sha256, record.definition) for name, record in self.records.items()}
            for change in compare(approved, listing, duplicates, full=full):
                if change.change != "removed" or own:
                    self._apply(change, baseline=baseline, others=others)
            self._returned(listing)
        if self._logged > MAX_LOGGED:
            logger.warning("MCP %r: %d more tool changes (see the audit trail)", self.mcp_id, self._logged - MAX_LOGGED)
        self._recompute()

    def _returned(self, listing: Mapping[str, Observed]) -> None:
        """A tool pending as removed that is listed again as approved is no longer pending."""
        for name, seen in listing.items():
            record = self.records.get(name)
            if record is not None and record.change == "removed" and record.sha256 == seen.sha256:
                self._store(dataclasses.replace(record, change="", diff="", observed_at=time.time()))

    def _findings(self, seen: Observed, others: frozenset[str]) -> list[dict[str, Any]]:
        if self.config.scan.definitions == "off":
            return []
        findings = [_finding(f) for f in scan_tool(seen.definition, other_tools=_Others(others, seen.name))]
        if findings and self._first_report(seen.name, "finding:" + seen.sha256):
            self._emit("integrity.finding", seen.name, {"sha256": seen.sha256, "findings": findings})
        return findings

    def _apply(self, change: ToolChange, *, baseline: bool, others: frozenset[str]) -> None:
        now = time.time()
        record = self.records.get(change.tool)
        if change.change == "duplicate":
            self._report(change.tool, "duplicate", "duplicate", {"diff": ""})
            return
        if change.change == "removed":
            if record is None or record.change == "removed":
                return
            gone = dataclasses.replace(
                record, pending_sha256="", pending=None, change="removed", renamed_from="", findings=[], observed_at=now
            )
            self._store(dataclasses.replace(gone, diff=diff(record.definition, None)))
            self._report(change.tool, "removed", "removed:" + record.sha256, {"diff": gone.diff})
            return
        seen = change.observed
        assert seen is not None
        if record is not None and record.pending_sha256 == seen.sha256 and record.change == change.change:
            return  # pending already, and reported when first seen
        findings = self._findings(seen, others)
        held = self.config.scan.definitions == "block" and blocking(findings)
        if record is None and len(self.records) >= MAX_TOOLS_PER_MCP:
            self.excess.add(seen.name)  # hidden: nothing to hold it to
            if self._first_report(seen.name, "bound"):
                logger.warning(
                    "MCP %r: %d tools pinned already; %r is hidden", self.mcp_id, len(self.records), seen.name
                )
            return
        if change.change == "added" and self.config.pin == "tofu" and baseline and not held:  # the first listing
            self._store(PinRecord(self._id(seen.name), self.mcp_id, seen.name, seen.sha256, dict(seen.definition)))
            return
        before = record.definition if record is not None else None
        if change.renamed_from and change.renamed_from in self.records:
            before = self.records[change.renamed_from].definition
        pending = PinRecord(
            self._id(seen.name),
            self.mcp_id,
            seen.name,
            record.sha256 if record is not None else "",
            record.definition if record is not None else None,
            seen.sha256,
            dict(seen.definition),
            change.change,
            change.renamed_from,
            diff(before, seen.definition),
            findings,
            now,
            record.created_at if record is not None else now,
        )
        self._store(pending)
        details = {"diff": pending.diff, "sha256": seen.sha256, "renamed_from": change.renamed_from or None}
        self._report(seen.name, change.change, f"{change.change}:{seen.sha256}", details)

    def _id(self, tool: str) -> str:
        return f"{self.mcp_id}/{tool}"

    def _first_report(self, tool: str, key: str) -> bool:
        entry = (tool, key)
        if entry in self._reported:
            return False
        self._reported[entry] = None
        if len(self._reported) > MAX_REPORTED:
            self._reported.popitem(last=False)
        return True

    def _report(self, tool: str, change: str, key: str, details: dict[str, Any]) -> None:
        if not self._first_report(tool, key):
            return
        counted = (self.mcp_id, change)
        self.counters.integrity_changes[counted] = self.counters.integrity_changes.get(counted, 0) + 1
        held = tool in self.hidden or self._would_hide(tool)
        self._logged += 1
        if self._logged <= MAX_LOGGED:
            hint = " (hidden until approved)" if held else ""
            logger.warning("MCP %r: tool %r %s%s", self.mcp_id, tool, change, hint)
        self._emit("integrity.changed", tool, {"change": change, "hidden": held, **details})

    def _would_hide(self, tool: str) -> bool:
        seen = self.observed.get(tool)
        if tool in self.duplicates:
            return self.config.on_change == "block" or self.config.pin == "approve"
        return seen is not None and hides(self.config, self.records.get(tool), seen.sha256)

    def _emit(self, action: str, tool: str, details: dict[str, Any]) -> None:
        if self.audit is not None:
            done = action in ("integrity.approved", "integrity.reset")  # an admin's act, not a suspicion
            event = AuditEvent("integrity", action, done, f"/mcp/{self.mcp_id}", mcp=self.mcp_id, tool=tool)
            event.details = details
            self.audit.emit_soon(event)

    def _recompute(self) -> None:
        hidden = {
            name for name, seen in self.observed.items() if hides(self.config, self.records.get(name), seen.sha256)
        }
        if self.config.pin != "off":
            hidden |= self.excess
            if self.config.on_change == "block" or self.config.pin == "approve":
                hidden |= self.duplicates
        if hidden != self.hidden:
            self.hidden = frozenset(hidden)
            for listener in tuple(self.on_visible_change):
                listener()

    # -- the store -------------------------------------------------------------------------

    def _store(self, record: PinRecord) -> None:
        self.records[record.tool] = record
        self._writes.pop(record.tool, None)
        self._writes[record.tool] = record
        if self._writer is None or self._writer.done():
            self._writer = asyncio.get_running_loop().create_task(self._write(), name=f"pins-{self.mcp_id}")

    async def _write(self) -> None:
        while self._writes:
            record = self._writes.pop(next(iter(self._writes)))
            try:
                await self.table.put(record)
            except StorageError as exc:
                logger.warning("MCP %r: a tool pin could not be stored: %s", self.mcp_id, exc)
            except Exception:
                log_unexpected(logger, "MCP %r: a tool pin could not be stored", self.mcp_id)

    def heard(self, tool: str | None = None, *, deleted: bool = False) -> None:
        """The store told a change of this MCP's pins (the book updated `records`): of `tool`, or of all."""
        self._last_digest = None
        if tool is None:
            self._recompute()
        else:
            self._recompute_one(tool)
        if deleted and not self.records and self.config.pin == "tofu":
            for listener in tuple(self.on_forgotten):
                listener()

    def _recompute_one(self, tool: str) -> None:
        seen = self.observed.get(tool)
        if seen is None or tool in self.duplicates or tool in self.excess:
            return
        hidden = hides(self.config, self.records.get(tool), seen.sha256)
        if hidden != (tool in self.hidden):
            self.hidden = self.hidden | {tool} if hidden else self.hidden - {tool}
            for listener in tuple(self.on_visible_change):
                listener()

    def reconfigure(self, config: IntegrityConfig) -> None:
        if config != self.config:
            self.config = config
            self._last_digest = None
            self._recompute()

    # -- the admin API ---------------------------------------------------------------------

    async def stored(self) -> list[PinRecord]:
        """This MCP's records as the store has them now (StorageError if it cannot say)."""
        return [record for record in await self.table.list() if record.mcp == self.mcp_id]

    async def describe(self) -> dict[str, Any]:
        records = await self.stored()
        pinned = [{"tool": r.tool, "sha256": r.sha256} for r in records if r.sha256]
        pending = [
            {
                "tool": r.tool,
                "change": r.change,
                "diff": r.diff,
                "findings": r.findings,
                "sha256": r.pending_sha256 or None,
                "renamed_from": r.renamed_from or None,
                "observed_at": r.observed_at,
            }
            for r in records
            if r.change
        ]
        return {"pinned": pinned, "pending": pending}

    async def approve(self, tools: list[str] | None) -> tuple[list[str], list[str]]:
        """Approve the pending changes of `tools` (None: all); (approved, unknown names). Nothing is written
        when a name has nothing pending."""
        pending = {r.tool: r for r in await self.stored() if r.change}
        names = sorted(pending) if tools is None else tools
        unknown = [name for name in names if name not in pending]
        if unknown:
            return [], unknown
        for name in dict.fromkeys(names):
            record = pending[name]
            if record.change == "removed":
                await self.table.delete(record.id)
                continue
            await self.table.put(
                dataclasses.replace(
                    record,
                    sha256=record.pending_sha256,
                    definition=record.pending,
                    pending_sha256="",
                    pending=None,
                    change="",
                    renamed_from="",
                    diff="",
                    findings=[],
                )
            )
            if record.renamed_from and record.renamed_from not in pending:
                await self.table.delete(self._id(record.renamed_from))
        if names:
            self._emit("integrity.approved", ",".join(names)[:1000], {"tools": names})
        return list(dict.fromkeys(names)), []

    async def reset(self) -> int:
        """Forget every pin of this MCP (the next listing is a new baseline under tofu); how many there were."""
        records = await self.stored()
        for record in records:
            await self.table.delete(record.id)
        self._emit("integrity.reset", "", {"forgotten": len(records)})
        return len(records)


class PinBook:
    """Every MCP's pins in this process, following the store's `pins` table."""

    def __init__(self, table: Table[PinRecord], *, audit: AuditTrail | None, counters: SecurityCounters) -> None:
        self.table = table
        self.audit = audit
        self.counters = counters
        self.guards: dict[str, ToolPins] = {}
        self._records: dict[str, dict[str, PinRecord]] = {}
        self._unfollow: Unsubscribe | None = None

    def guard(self, mcp_id: str, config: IntegrityConfig) -> ToolPins:
        """The one `ToolPins` of `mcp_id` (a swapped route keeps its predecessor's, with the new config)."""
        guard = self.guards.get(mcp_id)
        if guard is None:
            records = self._records.setdefault(mcp_id, {})
            guard = ToolPins(
                mcp_id, config, records=records, table=self.table, audit=self.audit, counters=self.counters
            )
            self.guards[mcp_id] = guard
        else:
            guard.reconfigure(config)
        return guard

    async def start(self) -> None:
        self._unfollow = await follow(self.table, self._load, self._apply)

    def stop(self) -> None:
        if self._unfollow is not None:
            self._unfollow()
            self._unfollow = None

    def _load(self, records: Iterable[PinRecord]) -> None:
        for record in records:
            self._records.setdefault(record.mcp, {})[record.tool] = record
        for guard in self.guards.values():
            guard.heard()

    def _apply(self, change: Change[PinRecord]) -> None:
        mcp_id, _, tool = change.id.partition("/")
        records = self._records.setdefault(mcp_id, {})
        if records.get(tool) == change.record:
            return  # this process's own write (it holds the record already), or nothing new
        if change.record is None:
            records.pop(tool, None)
        else:
            records[tool] = change.record
        guard = self.guards.get(mcp_id)
        if guard is not None:
            guard.heard(tool, deleted=change.record is None)
