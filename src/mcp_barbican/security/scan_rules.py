"""The scanner's rules: ids, severities, and the compiled patterns behind them.

Each rule looks at one kind of thing: `text` rules at every string a definition or result carries, `name` rules
at identifiers (tool, property, prompt and argument names), `size` rules at a field's length. Patterns are
compiled once, at import. They come from published attacks on MCP clients (tool poisoning, shadowing, line
jumping, Unicode tag smuggling) and are written to miss ordinary tool documentation: an instruction must be
phrased at the model, an exfiltration must pair a sensitive source with a way out.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Final, Literal, Protocol

__all__ = [
    "MAX_DESCRIPTION_BYTES",
    "NEEDLES",
    "RULES",
    "RULES_BY_ID",
    "TEXT_PATTERNS",
    "Rule",
    "deceptive_name",
    "identifier_like",
]

Severity = Literal["low", "medium", "high", "critical"]

#: A description (or any other single text field of a definition) longer than this is flagged.
MAX_DESCRIPTION_BYTES: Final = 8 * 1024


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    severity: Severity
    description: str
    #: Whether the rule also runs over tool results (`scan.results`).
    results: bool = True


RULES: Final[tuple[Rule, ...]] = (
    Rule("unicode.tag-chars", "critical", "Unicode tag characters (U+E0000-E007F): text invisible to a human"),
    Rule("unicode.bidi-control", "high", "bidirectional override, embedding or isolate controls that reorder text"),
    Rule("unicode.zero-width", "medium", "zero-width or invisible characters inside words"),
    Rule("unicode.variation-run", "high", "runs of variation selectors, a channel for hidden bytes"),
    Rule("unicode.homoglyph-name", "high", "a name mixing scripts or made of look-alike letters", results=False),
    Rule("instruction.hidden-tag", "high", "pseudo-markup aimed at the model (<IMPORTANT>, <SYSTEM>, [INST])"),
    Rule("instruction.override", "high", "asks the model to ignore or replace its instructions"),
    Rule("instruction.conceal", "high", "asks the model to keep something from the user"),
    Rule("instruction.line-jump", "high", "claims precedence over other tools (must be called first)"),
    Rule("shadowing.tool-reference", "medium", "names a tool of another server", results=False),
    Rule("shadowing.behavior-change", "high", "tells the model to change how other tools behave"),
    Rule("exfiltration.templated-url", "high", "a URL that carries templated data out ({data}, $VAR in the query)"),
    Rule("exfiltration.sensitive-file", "critical", "asks to send or pass along keys, credentials or dotfiles"),
    Rule("exfiltration.encode-and-send", "high", "asks to encode data and send or embed it"),
    Rule("size.oversized-description", "medium", f"a text field over {MAX_DESCRIPTION_BYTES} bytes", results=False),
)
RULES_BY_ID: Final = {rule.id: rule for rule in RULES}

#: Within one sentence: no period or newline between the parts of a phrase.
_GAP = r"[^.\n]{0,60}?"
_GAP_LONG = r"[^.\n]{0,100}?"

_SENSITIVE = (
    r"(?:~/\.ssh\b|\.ssh/|id_(?:rsa|dsa|ecdsa|ed25519)\b|~/\.aws\b|\.aws/credentials|\.env\b|\.netrc\b|\.npmrc\b"
    r"|\.pgpass\b|\.git-credentials\b|/etc/(?:passwd|shadow)\b|mcp\.json\b|\.cursor/|claude_desktop_config"
    r"|\bcredentials?\b|\bprivate keys?\b|\bapi[ _-]?keys?\b|\bsecret keys?\b|\baccess tokens?\b|\bpasswords?\b"
    r"|\bsession cookies?\b|\bkeychain\b|\bseed phrase\b|\bconversation history\b|\bchat history\b"
    r"|\bsystem prompt\b|\benvironment variables\b)"
)
_OUT = (
    r"\b(?:send|sends|sending|upload|post|forward|exfiltrate|transmit|pass|include|attach|append|embed|leak|share"
    r"|copy|paste|put|add)\b"
)
_INTO_ARG = r"\b(?:as|in|into|to)\b[^.\n]{0,30}?\b(?:argument|parameter|param|field|sidenote|note|url|request|query)\b"


class Searcher(Protocol):
    def search(self, string: str) -> re.Match[str] | None: ...


class _SensitiveSource:
    """`exfiltration.sensitive-file`: a sensitive source with a way out in the same sentence (a verb that sends it
    before, or one after, or "as the ... parameter" after; or "read <dotfile> and ..."). Found from the source
    outwards over short windows: one pattern that could start at any verb cost ten times as much.

    A generic secret word (an API key, a password) counts only when it is someone's or everything of its kind
    ("the user's API keys", "all credentials"): "send a request with the API key in the header" is how an
    ordinary HTTP tool documents itself, "send the user's API keys" is not.
    """

    _source = re.compile(_SENSITIVE)
    _out = re.compile(_OUT)
    _after = re.compile(_OUT + "|" + _INTO_ARG)
    _read = re.compile(r"\b(?:read|cat|open|dump|print)\b")
    _file = re.compile(r"~/\.ssh|\.ssh/|id_|~/\.aws|\.env|mcp\.json|\.cursor/")
    _then = re.compile(r"\b(?:and|then)\b")
    _generic = re.compile(
        r"credentials?|private keys?|api[ _-]?keys?|secret keys?|access tokens?|passwords?|session cookies?"
        r"|seed phrase|environment variables"
    )
    _owned = re.compile(
        r"\b(?:user'?s|users'|all|every|any|your|their|his|her|stored|saved|local|cached|contents of)\b[^.\n]{0,25}$"
    )

    def search(self, string: str) -> re.Match[str] | None:
        for match in self._source.finditer(string):
            start, end = match.span()
            before = string[max(0, start - 100) : start]
            before = before[max(before.rfind("."), before.rfind("\n")) + 1 :]
            if self._generic.fullmatch(match.group()) and not self._owned.search(before):
                continue
            after = string[end : end + 100]
            after = after[: min(_cut(after, "."), _cut(after, "\n"))]
            if self._out.search(before) or self._after.search(after):
                return match
            if self._read.search(before) and self._file.match(match.group()) and self._then.search(after):
                return match
        return None


def _cut(text: str, char: str) -> int:
    at = text.find(char)
    return len(text) if at < 0 else at


#: The text rules' patterns. They run over lowercased text (no IGNORECASE: it costs two to four times as much).
TEXT_PATTERNS: Final[dict[str, Searcher]] = {
    "unicode.tag-chars": re.compile("[\U000e0000-\U000e007f]+"),
    "unicode.bidi-control": re.compile("[\u202a-\u202e\u2066-\u2069]"),
    # ZWJ and ZWNJ are legitimate in emoji sequences and in Indic and Persian text: flagged between Latin letters.
    "unicode.zero-width": re.compile(
        "[\u200b\u2060-\u2064\ufeff\u180e\u115f\u1160\u3164\uffa0]|(?<=[A-Za-z])[\u200c\u200d]+(?=[A-Za-z])"
    ),
    "unicode.variation-run": re.compile("[\ufe00-\ufe0f\U000e0100-\U000e01ef]{2,}"),
    "instruction.hidden-tag": re.compile(
        r"<\s*/?\s*(?:important|system|system[-_ ]?(?:prompt|message|reminder)|instructions?|secret|hidden|admin"
        r"|assistant[-_ ]?instructions?)\s*>|\[/?inst\]|<\|im_start\|>|<\|system\|>"
    ),
    "instruction.override": re.compile(
        r"\b(?:ignore|disregard|forget|override|bypass)\b\s+(?:all\s+|any\s+|the\s+|your\s+)*"
        r"(?:previous|prior|above|earlier|preceding|former|existing|original|system|other)\s+"
        r"(?:instructions?|prompts?|rules|directions|directives|guidelines|messages|context)"
        r"|\bnew (?:system )?instructions\s*:|\byou are now (?:in|a|an|the)\b|\bfrom now on,? you\b"
    ),
    "instruction.conceal": re.compile(
        r"\b(?:do not|don't|never|must not|should not)\s+(?:tell|inform|mention\b[^.\n]{0,40}?\bto|reveal"
        r"\b[^.\n]{0,40}?\bto|notify|alert|warn|show|let)\s+(?:the\s+|your\s+)?(?:user|human|person|operator)s?\b"
        r"|\b(?:without|not)\s+(?:telling|informing|notifying|alerting|asking|warning)\s+(?:the\s+|your\s+)?"
        r"(?:user|human)s?\b"
        r"|\b(?:keep|hide)\s+(?:this|it|these|that)\b[^.\n]{0,30}?\bfrom\s+(?:the\s+)?(?:user|human)s?\b"
        r"|\bthe\s+(?:user|human)\s+(?:must|should|will|need)\s+(?:not|never)\s+(?:know|see|notice|be told)\b"
        r"|\b(?:silently|secretly|covertly)\s+(?:send|forward|copy|add|include|call|read|upload)\b"
    ),
    "instruction.line-jump": re.compile(
        r"\bbefore\s+(?:using|calling|invoking|running|executing)\s+(?:any|every|all|each)\s+(?:other\s+)?"
        r"(?:tools?|functions?)\b"
        r"|\b(?:this|the)\s+tool\s+(?:must|should|has to|needs to)\s+(?:always\s+)?be\s+(?:called|used|run|invoked)"
        r"\s+(?:first|before)\b"
        r"|\b(?:always|first)\s+(?:call|use|run|invoke)\s+this\s+tool\s+(?:first|before)\b"
        r"|\bmust\s+be\s+(?:called|invoked|used)\s+before\s+(?:any|every|all)\b"
    ),
    "shadowing.behavior-change": re.compile(
        r"\b(?:when|whenever|each time|every time|if)\b[^.\n]{0,40}?\b(?:any|every|all|another|other|the\s+[\w.-]+)"
        r"\s+tools?\s+(?:is\s+|are\s+)?(?:called|used|invoked|runs?)\b" + _GAP + r"\b(?:must|should|always|instead"
        r"|change|replace|add|set|send)\b"
        r"|\b(?:change|replace|override|modify|rewrite)\s+(?:the\s+)?(?:recipient|destination|to[- ]address"
        r"|email address|phone number|target (?:account|address)|account number|webhook)s?\b" + _GAP + r"\bto\b"
        r"|\b(?:also|always)\s+(?:bcc|cc|forward|copy|send)\b"
        + _GAP
        + r"\b(?:every|all|each|any)\b"
        + _GAP
        + r"\bto\b\s+\S+@\S+"
        r"|\binstead of\s+(?:calling|using|invoking)\s+(?:the\s+)?[\w.-]+\b[^.\n]{0,20}?\b(?:call|use|invoke)\b"
        r"|\b(?:other|all other|every other)\s+tools?\s+(?:must|should)\b"
    ),
    "exfiltration.templated-url": re.compile(
        r"\bhttps?://[^\s\"'<>]*?(?:\?|&)[^\s\"'<>#]*?=(?:\{\{?[^}\s]{1,64}\}\}?|\$\{?[A-Za-z_][A-Za-z0-9_]*\}?"
        r"|<[A-Za-z_ ]{1,40}>|%s)"
        r"|\bhttps?://[^\s\"'<>]*?(?:\{\{?|\$\{?|<)\s*(?:[\w.]*?(?:content|contents|data|secret|key|token|file"
        r"|conversation|history|env|password|credential|ssh|message|chat|prompt|cookie)[\w.]*)\s*(?:\}\}?|>)?"
    ),
    "exfiltration.sensitive-file": _SensitiveSource(),
    "exfiltration.encode-and-send": re.compile(
        r"\b(?:base64|base-64|hex|rot13|url)[- ]?(?:encode|encoded|encoding)\b"
        + _GAP_LONG
        + r"\b(?:and|then|before)\b"
        + _GAP
        + r"\b(?:send|sending|append|appending|include|including|pass|passing|put"
        r"|embed|embedding|post|posting|upload|uploading|add|adding)\b"
        r"|\b(?:encode|encrypt|obfuscate)\b" + _GAP + r"\b(?:before|then)\s+(?:sending|send|uploading|posting"
        r"|including)\b"
    ),
}

#: Per text rule, lowercase words of which a text must hold one before its pattern runs (None: any non-ASCII text).
#: A substring test is far cheaper than a pattern that may match anywhere: most text holds none of them.
NEEDLES: Final[dict[str, tuple[str, ...] | None]] = {
    "unicode.tag-chars": None,
    "unicode.bidi-control": None,
    "unicode.zero-width": None,
    "unicode.variation-run": None,
    "instruction.hidden-tag": ("<", "[inst", "[/inst"),
    "instruction.override": (
        "ignore", "disregard", "forget", "override", "bypass", "new instructions", "new system", "you are now",
        "from now on",
    ),
    "instruction.conceal": ("user", "human", "person", "operator", "silently", "secretly", "covertly"),
    "instruction.line-jump": ("before", "first"),
    "shadowing.behavior-change": (
        "tool", "recipient", "destination", "address", "phone", "account", "webhook", "bcc", "cc", "forward", "copy",
        "send", "instead of",
    ),
    "exfiltration.templated-url": ("http",),
    "exfiltration.sensitive-file": (
        "ssh", "id_rsa", "id_dsa", "id_ecdsa", "id_ed25519", ".aws", ".env", ".netrc", ".npmrc", ".pgpass",
        ".git-credentials", "/etc/", "mcp.json", ".cursor", "claude_desktop", "credential", "private key", "api key",
        "api_key", "api-key", "apikey", "secret key", "access token", "password", "cookie", "keychain", "seed phrase",
        "history", "system prompt", "environment variables",
    ),
    "exfiltration.encode-and-send": ("encod", "encrypt", "obfuscat"),
}  # fmt: skip
assert NEEDLES.keys() == TEXT_PATTERNS.keys()

_IDENTIFIER_HINT = re.compile(r"[_\-.0-9]|[a-z][A-Z]")


def identifier_like(name: str) -> bool:
    """A name that cannot be an ordinary word (`send_email`, `getUser`, `srv__read`): safe to look for in prose."""
    return len(name) >= 4 and _IDENTIFIER_HINT.search(name) is not None


_CONFUSABLE_FOREIGN: Final = frozenset(
    # Cyrillic and Greek letters drawn like Latin ones.
    "аеорсухіјѕԁԛԝһӏвмнктАЕОРСУХІЈЅВМНКТοαρνυικτχεΑΒΕΖΗΙΚΜΝΟΡΤΥΧ"
)
_SCRIPTS: Final = ("LATIN", "CYRILLIC", "GREEK", "ARMENIAN", "CHEROKEE", "COPTIC")


def _script(char: str) -> str | None:
    if char.isascii():
        return "LATIN" if char.isalpha() else None
    if "\uff01" <= char <= "\uff5e":
        return "FULLWIDTH"
    name = unicodedata.name(char, "")
    for script in _SCRIPTS:
        if name.startswith(script):
            return script
    return "OTHER" if char.isalpha() else None


def deceptive_name(name: str) -> str | None:
    """Why a name looks like something it is not (mixed scripts, look-alike letters), or None."""
    if name.isascii():
        return None
    scripts = {script for char in name if (script := _script(char)) is not None}
    if "FULLWIDTH" in scripts:
        return "fullwidth Latin letters"
    confusables = scripts & {"CYRILLIC", "GREEK", "ARMENIAN", "CHEROKEE", "COPTIC"}
    if "LATIN" in scripts and confusables:
        return f"mixes Latin with {', '.join(sorted(confusables)).lower()}"
    letters = [char for char in name if char.isalpha()]
    if confusables and letters and all(char in _CONFUSABLE_FOREIGN for char in letters):
        return "made only of letters that look Latin"
    return None
