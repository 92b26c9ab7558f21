"""TLS of the proxy's own listener: its SSLContext, certificate reload, and uvicorn wiring.

`server_ssl_context()` builds the context from `server.tls`: TLS 1.2 and 1.3 only (the
config refuses older versions), `minimum_version`/`maximum_version` as configured, and
mTLS through `client_auth` (`none`: no certificate asked; `optional`: asked and verified
against `ca_file` when sent; `required`: the handshake fails without one).

Cipher suites, honestly: TLS 1.2 suites named by IANA name are mapped to OpenSSL names and
are the only TLS 1.2 suites offered, in the configured order (server preference). Without
TLS 1.2 names, TLS 1.2 offers forward-secret AEAD suites only (ECDHE with AES-GCM or
ChaCha20, as Envoy does). TLS 1.3 suite names are validated by the config but NOT enforced:
Python's `ssl` has no per-context setting for TLS 1.3 suites (`set_ciphers` only reaches
TLS 1.2 and below; OpenSSL's `SSL_CTX_set_ciphersuites` is not exposed), so OpenSSL picks
among its default TLS 1.3 suites (TLS_AES_256_GCM_SHA384, TLS_CHACHA20_POLY1305_SHA256,
TLS_AES_128_GCM_SHA256: all AEAD). A warning says so at start when any were configured.

`CertReloader` watches the certificate and key files and loads a changed pair into the
same context, so new handshakes present the new certificate without a restart. The CA
file is not reloaded: OpenSSL's trust store only grows, so a removed CA would stay trusted.

`configure_uvicorn_tls()` makes uvicorn serve with this context (through uvicorn's
`ssl_context_factory`); `tls_scope_extension()` is the ASGI `tls` scope extension that the
listener's protocol (server/protocol.py) gives every request on a TLS connection.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, NoReturn

from mcp_barbican.config import TLS12_IANA_TO_OPENSSL, TLS13_SUITES
from mcp_barbican.exceptions import ConfigError

if TYPE_CHECKING:
    import uvicorn

    from mcp_barbican.config import ServerTLSConfig

__all__ = [
    "DEFAULT_TLS12_CIPHERS",
    "CertReloader",
    "configure_uvicorn_tls",
    "rfc4514_name",
    "server_ssl_context",
    "tls12_cipher_string",
    "tls_scope_extension",
]

logger = logging.getLogger(__name__)

#: The config allows only these two (TLS 1.0 and 1.1 are deprecated by RFC 8996).
_VERSIONS: Final = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}
#: Forward-secret AEAD suites only when none are configured (Envoy's default set).
DEFAULT_TLS12_CIPHERS: Final = "ECDHE+AESGCM:ECDHE+CHACHA20"
#: `optional` still verifies a certificate that is sent; only its absence is tolerated.
_CLIENT_AUTH: Final = {"none": ssl.CERT_NONE, "optional": ssl.CERT_OPTIONAL, "required": ssl.CERT_REQUIRED}
#: Protocol version numbers of the ASGI `tls` extension (the TLS wire values).
_WIRE_VERSIONS: Final = {"TLSv1.2": 0x0303, "TLSv1.3": 0x0304}
#: RFC 4514 §3 short names; other attributes keep the name OpenSSL reports.
_RFC4514_NAMES: Final = {
    "commonName": "CN",
    "localityName": "L",
    "stateOrProvinceName": "ST",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "streetAddress": "STREET",
    "domainComponent": "DC",
    "userId": "UID",
}
#: Characters RFC 4514 §2.4 escapes anywhere in a value.
_RFC4514_SPECIAL: Final = frozenset('"+,;<>\\')


def _refuse_password() -> NoReturn:
    # Without this, OpenSSL would prompt on the terminal for an encrypted key.
    raise ssl.SSLError("encrypted private keys are not supported; store the key unencrypted with 0600 permissions")


def tls12_cipher_string(suites: Sequence[str]) -> str:
    """The `set_ciphers` string for the configured suites (IANA names, validated by the config)."""
    names = [TLS12_IANA_TO_OPENSSL[suite] for suite in suites if suite in TLS12_IANA_TO_OPENSSL]
    return ":".join(dict.fromkeys(names)) or DEFAULT_TLS12_CIPHERS


def server_ssl_context(tls: ServerTLSConfig) -> ssl.SSLContext:
    """The listener's context for an enabled `server.tls`; ConfigError naming the key if a file fails."""
    if not tls.enabled or tls.cert_file is None or tls.key_file is None:
        raise ValueError("server.tls is disabled: serve plain HTTP instead of building a context")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _VERSIONS[tls.min_version]
    context.maximum_version = _VERSIONS[tls.max_version]
    # Client-initiated renegotiation only costs the server CPU (a DoS lever); nothing needs it.
    # Server preference and no compression are Python's defaults; set so they do not depend on it.
    context.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_COMPRESSION
    try:
        context.set_ciphers(tls12_cipher_string(tls.cipher_suites))
    except ssl.SSLError as exc:
        raise ConfigError(f"no usable cipher suite: {exc}", path="server.tls.cipher_suites") from exc
    _warn_about_suites(tls)
    try:
        _load_pair(context, tls.cert_file, tls.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise _pair_error(tls.cert_file, tls.key_file, exc) from exc
    context.verify_mode = _CLIENT_AUTH[tls.client_auth]
    if tls.client_auth != "none":
        assert tls.ca_file is not None  # the config requires it with client_auth
        try:
            context.load_verify_locations(cafile=tls.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load the client CA file: {exc}", path="server.tls.ca_file") from exc
    elif tls.ca_file is not None:
        logger.warning("server.tls.ca_file is ignored with client_auth: none (no client certificate is asked for)")
    return context


def _warn_about_suites(tls: ServerTLSConfig) -> None:
    tls13 = [suite for suite in tls.cipher_suites if suite in TLS13_SUITES]
    if tls13 and tls.max_version == "1.3":
        logger.warning(
            "server.tls.cipher_suites: TLS 1.3 suites %s are accepted but not enforced; OpenSSL chooses among its "
            "default TLS 1.3 suites (all AEAD) because Python's ssl module cannot restrict them",
            ", ".join(tls13),
        )
    if tls.min_version == "1.3" and any(suite in TLS12_IANA_TO_OPENSSL for suite in tls.cipher_suites):
        logger.warning("server.tls.cipher_suites: TLS 1.2 suites have no effect with min_version 1.3")


def _load_pair(context: ssl.SSLContext, cert_file: str, key_file: str) -> None:
    context.load_cert_chain(cert_file, key_file, password=_refuse_password)


def _pair_error(cert_file: str, key_file: str, exc: Exception) -> ConfigError:
    """Which of the two files is at fault: OpenSSL's own error ("PEM lib") does not say."""
    for path, key in ((cert_file, "cert_file"), (key_file, "key_file")):
        if not os.access(path, os.R_OK):
            return ConfigError(f"cannot read {path!r}: {exc}", path=f"server.tls.{key}")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=cert_file)
    except ssl.SSLError:
        return ConfigError(f"{cert_file!r} holds no PEM certificate: {exc}", path="server.tls.cert_file")
    return ConfigError(
        f"{key_file!r} is not the unencrypted PEM private key of the certificate: {exc}", path="server.tls.key_file"
    )


FileSignature = tuple[int, int, int, int] | None


def _signature(path: str) -> FileSignature:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino, stat.st_dev)


class CertReloader:
    """Loads a changed certificate/key pair into the live context; a broken pair keeps the old one.

    Changes are seen by mtime, size and inode (an atomic rename changes the inode). A new pair
    is first loaded into a scratch context, so a half-written file or a certificate whose key
    has not been replaced yet never reaches the live one; the failure is logged once per
    change and retried when the files change again. Run `run()` as a task beside the server,
    on the event loop that serves TLS: handshakes and reloads then never overlap.
    """

    def __init__(
        self,
        context: ssl.SSLContext,
        tls: ServerTLSConfig,
        *,
        interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if tls.cert_file is None or tls.key_file is None:
            raise ValueError("server.tls has no cert_file/key_file to watch")
        self.context = context
        self.cert_file = tls.cert_file
        self.key_file = tls.key_file
        self.interval = interval
        self.clock = clock
        self.sleep = sleep
        self.loaded = self._signatures()
        self.failed: tuple[FileSignature, FileSignature] | None = None
        self.next_check = clock() + interval
        self.reloads = 0
        self.last_reload: float | None = None

    def _signatures(self) -> tuple[FileSignature, FileSignature]:
        return _signature(self.cert_file), _signature(self.key_file)

    def check(self) -> bool:
        """Reload now if the files changed since the last load; True when a new pair is live."""
        current = self._signatures()
        if current in (self.loaded, self.failed):
            return False
        try:
            _load_pair(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), self.cert_file, self.key_file)
            _load_pair(self.context, self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            self.failed = current
            logger.error(
                "TLS certificate reload from %s failed; still serving the previous one: %s", self.cert_file, exc
            )
            return False
        self.loaded, self.failed = current, None
        self.reloads += 1
        self.last_reload = self.clock()
        logger.info("TLS certificate reloaded from %s (new handshakes use it)", self.cert_file)
        return True

    def poll(self) -> bool:
        """`check()` if `interval` has passed since the last check, else nothing."""
        now = self.clock()
        if now < self.next_check:
            return False
        self.next_check = now + self.interval
        return self.check()

    async def run(self) -> None:
        """Poll until cancelled."""
        while True:
            await self.sleep(max(self.next_check - self.clock(), 0.0))
            self.poll()


# ---------------------------------------------------------------------------------------------
# uvicorn


def configure_uvicorn_tls(config: uvicorn.Config, context: ssl.SSLContext) -> None:
    """Make `config` serve TLS with `context` (call before the server starts).

    uvicorn (0.54) builds its context in `Config.load()` unless `ssl_context_factory` returns
    one; ours keeps uvicorn's ALPN list when its protocol declares one. The `tls` scope
    extension comes from the protocol class (`BarbicanHttpProtocol`), not from here.
    """
    if config.loaded:
        raise RuntimeError("configure_uvicorn_tls() must run before the uvicorn Config is loaded")

    def use_our_context(loaded: uvicorn.Config, _default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        alpn: list[str] | None = getattr(loaded.http_protocol_class, "alpn_protocols", None)
        if alpn:
            context.set_alpn_protocols(alpn)
        return context

    config.ssl_context_factory = use_our_context


def rfc4514_name(subject: Sequence[Sequence[tuple[str, str]]]) -> str:
    """A subject as `ssl.SSLSocket.getpeercert()` gives it, as an RFC 4514 string (`CN=a,O=b`)."""
    return ",".join(
        "+".join(f"{_RFC4514_NAMES.get(name, name)}={_rfc4514_escape(value)}" for name, value in rdn)
        for rdn in reversed(subject)
    )


def _rfc4514_escape(value: str) -> str:
    last = len(value) - 1
    out: list[str] = []
    for index, char in enumerate(value):
        if char == "\0":
            out.append("\\00")
        elif char in _RFC4514_SPECIAL or (index == 0 and char in "# ") or (index == last and char == " "):
            out.append("\\" + char)
        else:
            out.append(char)
    return "".join(out)


@functools.cache
def _cipher_ids() -> dict[str, int]:
    # OpenSSL knows every suite's wire id; Python exposes it only through get_ciphers().
    probe = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    probe.set_ciphers("ALL:@SECLEVEL=0")
    return {cipher["name"]: cipher["id"] & 0xFFFF for cipher in probe.get_ciphers()}


def tls_scope_extension(ssl_object: ssl.SSLObject | None) -> dict[object, object] | None:
    """The ASGI `tls` extension for a finished handshake; None for a plain connection.

    `client_cert_chain` holds the client's leaf only (Python 3.11 cannot read the rest),
    `server_cert` is None, and `client_cert_error` is None because a certificate that fails
    verification fails the handshake.
    """
    if ssl_object is None:
        return None
    leaf = ssl_object.getpeercert(binary_form=True)
    details: dict[str, Any] = ssl_object.getpeercert() or {}
    cipher = ssl_object.cipher()
    version = ssl_object.version()
    return {
        "server_cert": None,
        "client_cert_chain": [ssl.DER_cert_to_PEM_cert(leaf)] if leaf else [],
        "client_cert_name": rfc4514_name(details["subject"]) if "subject" in details else None,
        "client_cert_error": None,
        "tls_version": _WIRE_VERSIONS.get(version) if version else None,
        "cipher_suite": _cipher_ids().get(cipher[0]) if cipher else None,
    }
