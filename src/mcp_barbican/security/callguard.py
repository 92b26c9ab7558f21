"""What one MCP checks on its `tools/call` traffic (`integrity`): arguments against the tool's `inputSchema`,
results scanned (`scan.results`) and secrets redacted (`scan.redact_secrets`).

One guard per MCP runtime, shared by every link of it; none at all when the three are off, so the call path
then costs one `is None` test. Validators are compiled when a `tools/list` answer passes (`learn`), never per
call: per tool name the last schema seen and its validator (at most `MAX_TOOLS` names per MCP), compiled
validators shared by schema digest (`MAX_COMPILED`, least recently used out). A call to a tool whose schema is
not known yet, or whose schema does not compile, passes (it is validated once a listing brings a schema that
does). Schemas never reach the network: remote `$ref`s are refused, not fetched.
"""

from __future__ import annotations

import hashlib
import logging
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Final

import orjson

from mcp_barbican.audit.events import AuditEvent
from mcp_barbican.jsonrpc import INTERNAL_ERROR
from mcp_barbican.logs import log_unexpected
from mcp_barbican.security.scanner import Finding, redact_error_secrets, redact_secrets, scan_result

if TYPE_CHECKING:
    import jsonschema_rs

    from mcp_barbican.audit.trail import AuditTrail
    from mcp_barbican.config.integrity import IntegrityConfig

__all__ = ["MAX_COMPILED", "MAX_TOOLS", "CallGuard", "Refusal", "argument_error"]

logger = logging.getLogger(__name__)

#: Tool names per MCP whose validator is kept.
MAX_TOOLS: Final = 10_000
#: Compiled validators kept across MCPs, by schema digest.
MAX_COMPILED: Final = 4096
_MESSAGE: Final = 300


class Refusal(str):
    """Why a call's arguments do not satisfy the tool's schema (the JSON-RPC -32602 message)."""


def _no_remote(uri: str) -> Any:
    raise ValueError(f"remote schema references are not fetched ({uri[:100]})")


_compiled: OrderedDict[bytes, jsonschema_rs.Validator | None] = OrderedDict()


def _compile(schema: dict[str, Any], digest: bytes, where: str) -> jsonschema_rs.Validator | None:
    if digest in _compiled:
        _compiled.move_to_end(digest)
        return _compiled[digest]
    # Imported on first use: it adds 6 MB to the process, which only `validate_arguments` needs.
    import jsonschema_rs

    validator: jsonschema_rs.Validator | None
    try:
        validator = jsonschema_rs.validator_for(schema, retriever=_no_remote)
    except (jsonschema_rs.ValidationError, jsonschema_rs.ReferencingError, ValueError, TypeError) as exc:
        first = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        logger.warning("%s: inputSchema does not compile, its calls are not validated: %s", where, first)
        validator = None
    _compiled[digest] = validator
    if len(_compiled) > MAX_COMPILED:
        _compiled.popitem(last=False)
    return validator


def _path(parts: list[str | int]) -> str:
    return "arguments" + "".join(f"[{part}]" if isinstance(part, int) else f".{part}" for part in parts)


def argument_error(validator: jsonschema_rs.Validator, arguments: Any) -> tuple[str, str, str] | None:
    """The first way `arguments` fails: (path, message, keyword), or None when they are valid."""
    if validator.is_valid(arguments):
        return None
    error = next(iter(validator.iter_errors(arguments)), None)
    if error is None:
        return None
    keyword = str(error.schema_path[-1]) if error.schema_path else ""
    return _path(list(error.instance_path)), error.message[:_MESSAGE], keyword


class CallGuard:
    """Argument validation, result scanning and secret redaction for one MCP (see the module's doc)."""

    def __init__(self, mcp_id: str, config: IntegrityConfig, audit: AuditTrail | None) -> None:
        self.mcp_id = mcp_id
        self.validate = config.validate_arguments
        self.scan_results = config.scan.results == "warn"
        self.redact = config.scan.redact_secrets
        self.audit = audit
        #: Per tool name: the schema last seen and its validator (None: it does not compile).
        self._tools: dict[str, tuple[Any, jsonschema_rs.Validator | None]] = {}
        self._full_logged = False

    @classmethod
    def build(cls, mcp_id: str, config: IntegrityConfig, audit: AuditTrail | None) -> CallGuard | None:
        """A guard when anything is on, else None (nothing is checked and the call path pays nothing)."""
        if config.validate_arguments == "off" and config.scan.results == "off" and not config.scan.redact_secrets:
            return None
        return cls(mcp_id, config, audit)

    @property
    def watches_results(self) -> bool:
        return self.scan_results or self.redact

    # -- argument validation ---------------------------------------------------------------

    def learn(self, result: Any) -> None:
        """Compile the validators of a `tools/list` result's tools whose schema is new or changed."""
        tools = result.get("tools") if isinstance(result, dict) else None
        if self.validate == "off" or not isinstance(tools, list):
            return
        for tool in tools:
            if not isinstance(tool, dict):
                continue
            name, schema = tool.get("name"), tool.get("inputSchema")
            if not isinstance(name, str) or not isinstance(schema, dict):
                continue
            known = self._tools.get(name)
            if known is not None and known[0] == schema:
                continue
            if known is None and len(self._tools) >= MAX_TOOLS:
                if not self._full_logged:
                    logger.warning("MCP %r lists over %d tools: the arguments of the rest are not validated",
                                   self.mcp_id, MAX_TOOLS)  # fmt: skip
                    self._full_logged = True
                continue
            try:
                digest = hashlib.sha256(orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)).digest()
            except TypeError:  # not JSON orjson can write (an integer past 64 bits): the tool goes unvalidated
                logger.warning("mcps[%s] tool %.64r: inputSchema cannot be read, its calls are not validated",
                               self.mcp_id, name)  # fmt: skip
                self._tools[name] = (schema, None)
                continue
            self._tools[name] = (schema, _compile(schema, digest, f"mcps[{self.mcp_id}] tool {name[:64]!r}"))

    def check_arguments(
        self, params: Any, principal: str | None, session_id: str | None, shown: Any = None
    ) -> Refusal | None:
        """None to forward the call; a refusal (`block`) to answer -32602 with. `warn` audits and forwards.
        `shown`: the name the client called the tool by, when the proxy renamed it (`/mcp`)."""
        if self.validate == "off" or not isinstance(params, dict):
            return None
        name = params.get("name")
        known = self._tools.get(name) if isinstance(name, str) else None
        if known is None or known[1] is None:
            return None
        try:
            failure = argument_error(known[1], params.get("arguments", {}))
        except (ValueError, TypeError, OverflowError):
            log_unexpected(logger, "mcps[%s] tool %.64r: arguments could not be validated, the call passes",
                           self.mcp_id, name)  # fmt: skip
            return None
        if failure is None:
            return None
        path, message, keyword = failure
        details = {"path": path, "keyword": keyword, "mode": self.validate}
        self._emit("invalid_arguments", self.validate == "warn", str(name), principal, session_id, details)
        if self.validate == "warn":
            return None
        return Refusal(f"Invalid arguments for tool {str(shown or name)[:128]!r}: {path}: {message}")

    # -- results -----------------------------------------------------------------------------

    def check_result(self, response: dict[str, Any], tool: str, principal: str | None, session_id: str | None) -> None:
        """Redact (in place, before the answer is serialized) and scan one `tools/call` answer; audit both.

        A failure of either (it has none known) is one log line; with redaction on the answer is then withheld
        (an error goes to the client instead), since it may hold what redaction was there to remove.
        """
        try:
            self._check_result(response, tool, principal, session_id)
        except Exception:  # the upstream's message callback must not raise
            log_unexpected(logger, "mcps[%s] tool %.64r: the result could not be checked", self.mcp_id, tool)
            if self.redact:
                response.pop("result", None)
                response["error"] = {"code": INTERNAL_ERROR, "message": "the proxy could not check this tool result"}

    def _check_result(self, response: dict[str, Any], tool: str, principal: str | None, session_id: str | None) -> None:
        result = response.get("result")
        if not isinstance(result, dict):
            if self.redact and "error" in response:
                redacted = redact_error_secrets(response["error"])
                if redacted:
                    self._emit("redacted", True, tool, principal, session_id, _summary(redacted))
            return
        if self.redact:
            _, redacted = redact_secrets(result)
            if redacted:
                self._emit("redacted", True, tool, principal, session_id, _summary(redacted))
        if self.scan_results:
            findings = scan_result(result)
            if findings:
                self._emit("result_finding", True, tool, principal, session_id, _summary(findings))

    def _emit(
        self, action: str, success: bool, tool: str, principal: str | None, session_id: str | None, details: Any
    ) -> None:
        if self.audit is None:
            return
        tool = tool[:256]
        event = AuditEvent(
            "integrity",
            action,
            success,
            resource=f"tool:{self.mcp_id}/{tool}",
            user=principal,
            mcp=self.mcp_id,
            tool=tool,
            session_id=session_id,
            details=details,
        )
        self.audit.emit_soon(event)


def _summary(findings: list[Finding]) -> dict[str, Any]:
    """What an event says of findings: rule ids, severities and where; never the text (it may be a secret)."""
    return {
        "rules": sorted({finding.rule for finding in findings}),
        "findings": [{"rule": f.rule, "severity": f.severity, "where": f.where[:200]} for f in findings[:50]],
        "count": len(findings),
    }
