"""Sealed session ids: what another replica needs to continue a session, sealed with `server.session_keys`.

An id is `{kind}{owner}{blob}`: `kind` says how another replica continues the session, `owner` is the
replica that opened it (16 hex), `blob` is URL-safe base64 of a key fingerprint, a random nonce and
the AES-256-GCM sealed payload (the MCP, the principal and, for a resumable session, the upstream
session id, the protocol version and the client's capabilities). The clear prefix is authenticated
with the payload, so no part can be changed or moved to another id.

- `KIND_RESUMABLE`: any replica continues it (Streamable HTTP upstreams: the upstream session id is in
  the seal; shared mode: each replica's own link for the principal).
- `KIND_OWNED`: only the owner can serve it (a stdio child, a legacy SSE stream, an aggregated session);
  another replica passes its requests to the owner (server/tunnel.py).

The per-key AES and HMAC keys are derived once with HKDF when the sealer is built: opening an id is one
AES-GCM decryption, no slow key derivation per request.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from mcp_barbican.keys import hkdf

if TYPE_CHECKING:
    from mcp_barbican.config import ProxyConfig

__all__ = [
    "KIND_OWNED",
    "KIND_RESUMABLE",
    "OWNER_CHARS",
    "Sealer",
    "SessionSeal",
    "configured_keys",
    "new_replica_id",
    "owned_elsewhere",
]

KIND_OWNED: Final = "o"
KIND_RESUMABLE: Final = "h"
OWNER_CHARS: Final = 16
_PREFIX: Final = 1 + OWNER_CHARS
_FINGERPRINT: Final = 4
_NONCE: Final = 12
_TAG: Final = 16
#: Longest id opened (a longer header is not a session of ours): bounds the work an attacker can ask for.
MAX_SEALED_CHARS: Final = 4096
#: Client capabilities kept in a seal as they are up to this size; larger ones keep their names only.
_MAX_CAPABILITIES_JSON: Final = 1024
_HEX: Final = frozenset("0123456789abcdef")


#: The key `serve --workers N` makes for its workers when `server.session_keys` is not set.
AUTO_KEY_ENV: Final = "MCP_BARBICAN_SESSION_KEY_AUTO"


def configured_keys(config: ProxyConfig) -> list[str]:
    """`server.session_keys`, else the key the workers' supervisor made, else none."""
    keys = [key.get_secret_value() for key in config.server.session_keys]
    auto = os.environ.get(AUTO_KEY_ENV)
    return keys or ([auto] if auto else [])


def new_replica_id() -> str:
    """This process's name among replicas (random: a restarted replica is a new owner)."""
    return secrets.token_hex(OWNER_CHARS // 2)


@dataclass(frozen=True, slots=True)
class SessionSeal:
    """What an opened id says."""

    kind: str
    owner: str
    mcp: str
    principal: str | None
    upstream: str | None = None
    version: str | None = None
    capabilities: dict[str, Any] = field(default_factory=dict)


def _derive(secret: bytes, purpose: bytes) -> bytes:
    return hkdf(secret, b"mcp-barbican " + purpose)


class _Key:
    __slots__ = ("aead", "fingerprint", "mac", "secret")

    def __init__(self, secret: bytes) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # loaded only when sessions are sealed

        self.secret = secret
        self.aead = AESGCM(_derive(secret, b"session seal v1"))
        self.mac = _derive(secret, b"tunnel mac v1")
        self.fingerprint = hashlib.sha256(_derive(secret, b"fingerprint v1")).digest()[:_FINGERPRINT]


class Sealer:
    """Seals with the first key, opens with any (`keys`: the configured secrets, newest first).

    Without keys it seals nothing: ids are plain random ones and no id opens (sessions stay where they began).
    """

    def __init__(self, keys: list[str], replica: str) -> None:
        self.replica = replica
        self._keys: list[_Key] = []
        self._by_fingerprint: dict[bytes, _Key] = {}
        self.set_keys(keys)

    def set_keys(self, keys: list[str]) -> None:
        """Take a new key list (a reload): ids sealed with a key still listed keep opening."""
        known = {key.secret: key for key in self._keys}
        self._keys = [known.get(secret.encode()) or _Key(secret.encode()) for secret in keys]
        self._by_fingerprint = {key.fingerprint: key for key in reversed(self._keys)}

    @property
    def active(self) -> bool:
        return bool(self._keys)

    def new_id(self, mcp: str, principal: str | None) -> str:
        """The id of a new session: sealed as owned by this replica, or plain random without keys."""
        if not self._keys:
            return secrets.token_urlsafe(24)
        return self.seal(KIND_OWNED, mcp=mcp, principal=principal)

    # -- session ids -------------------------------------------------------------------

    def seal(
        self,
        kind: str,
        *,
        mcp: str,
        principal: str | None,
        upstream: str | None = None,
        version: str | None = None,
        capabilities: dict[str, Any] | None = None,
    ) -> str:
        payload: dict[str, Any] = {"m": mcp, "p": principal}
        if upstream is not None:
            payload["u"] = upstream
        if version is not None:
            payload["v"] = version
        if capabilities:
            payload["c"] = _bounded(capabilities)
        prefix = f"{kind}{self.replica}"
        key = self._keys[0]
        nonce = secrets.token_bytes(_NONCE)
        plain = json.dumps(payload, separators=(",", ":")).encode()
        sealed = key.aead.encrypt(nonce, plain, prefix.encode())
        return prefix + base64.urlsafe_b64encode(key.fingerprint + nonce + sealed).rstrip(b"=").decode()

    def open(self, session_id: str) -> SessionSeal | None:
        """What the id says, or None if it is not one of ours (forged, altered, or sealed with an unknown key)."""
        if not _shaped(session_id):
            return None
        prefix, blob = session_id[:_PREFIX], session_id[_PREFIX:]
        try:
            raw = base64.urlsafe_b64decode(blob + "=" * (-len(blob) % 4))
        except (binascii.Error, ValueError):
            return None
        key = self._by_fingerprint.get(raw[:_FINGERPRINT])
        if key is None or len(raw) < _FINGERPRINT + _NONCE + _TAG:
            return None
        from cryptography.exceptions import InvalidTag  # imported with AESGCM: a cached lookup

        try:
            nonce, sealed = raw[_FINGERPRINT : _FINGERPRINT + _NONCE], raw[_FINGERPRINT + _NONCE :]
            plain = key.aead.decrypt(nonce, sealed, prefix.encode())
            payload = json.loads(plain)
            return SessionSeal(
                kind=prefix[0],
                owner=prefix[1:],
                mcp=payload["m"],
                principal=payload["p"],
                upstream=payload.get("u"),
                version=payload.get("v"),
                capabilities=payload.get("c") or {},
            )
        except (InvalidTag, ValueError, KeyError, TypeError):
            return None  # InvalidTag: altered, or sealed with another key of the same fingerprint

    # -- messages between replicas -----------------------------------------------------

    def sign(self, data: bytes) -> bytes:
        key = self._keys[0]
        return key.fingerprint + hmac.digest(key.mac, data, "sha256") + data

    def verify(self, signed: bytes) -> bytes | None:
        """The signed data, or None when no key of ours signed it."""
        key = self._by_fingerprint.get(signed[:_FINGERPRINT])
        mac_end = _FINGERPRINT + 32
        if key is None or len(signed) < mac_end:
            return None
        data = signed[mac_end:]
        if not hmac.compare_digest(signed[_FINGERPRINT:mac_end], hmac.digest(key.mac, data, "sha256")):
            return None
        return data


def owned_elsewhere(session_id: str, replica: str) -> str | None:
    """The owner of an id only its owner serves, when that is not `replica` (no cryptography: a shape check)."""
    if not session_id.startswith(KIND_OWNED) or not _shaped(session_id):
        return None
    owner = session_id[1:_PREFIX]
    return None if owner == replica else owner


def _shaped(session_id: str) -> bool:
    return (
        _PREFIX < len(session_id) <= MAX_SEALED_CHARS
        and session_id[0] in (KIND_OWNED, KIND_RESUMABLE)
        and _HEX.issuperset(session_id[1:_PREFIX])
    )


def _bounded(capabilities: dict[str, Any]) -> dict[str, Any]:
    if len(json.dumps(capabilities, separators=(",", ":"))) <= _MAX_CAPABILITIES_JSON:
        return capabilities
    return {str(name)[:64]: {} for name in list(capabilities)[:32]}
