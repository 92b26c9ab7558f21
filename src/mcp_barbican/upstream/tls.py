"""Client-side TLS for HTTP upstreams: one `ssl.SSLContext` per upstream MCP server.

`client_ssl_context()` turns the upstream's TLS options into a context that the upstream's
single aiohttp session reuses for every connection (nothing is cached globally: each call
builds a fresh context, so call it once per upstream).

Trust: the system trust store, or only `ca_file` when it is set. mTLS: `cert_file` (PEM
certificate chain) and `key_file` (PEM key; may be omitted when the key is in `cert_file`);
encrypted keys are refused rather than prompting on the terminal.

Cipher suites are given by their IANA names (`TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256`) and
mapped to OpenSSL names for the TLS 1.2 suites in `TLS12_CIPHERS`; the OpenSSL spelling of
those suites is accepted too. TLS 1.3 suite names (`TLS_AES_128_GCM_SHA256`, ...) are
accepted but have no effect: Python's `ssl` module has no per-context setting for TLS 1.3
suites (`SSLContext.set_ciphers` only configures TLS 1.2 and below, and OpenSSL's
`SSL_CTX_set_ciphersuites` is not exposed), so a TLS 1.3 connection always offers OpenSSL's
default TLS 1.3 suites, all of which are AEAD suites.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Sequence
from typing import Final, NoReturn, Protocol

from mcp_barbican.config import TLS12_IANA_TO_OPENSSL, TLS13_SUITES
from mcp_barbican.exceptions import ConfigError

__all__ = ["TLS12_CIPHERS", "TLS13_CIPHERS", "TLSOptions", "client_ssl_context", "openssl_cipher_string"]

logger = logging.getLogger(__name__)


class TLSOptions(Protocol):
    """The TLS settings of one upstream, as the configuration provides them (duck-typed)."""

    @property
    def enabled(self) -> bool: ...
    @property
    def ca_file(self) -> str | None: ...
    @property
    def cert_file(self) -> str | None: ...
    @property
    def key_file(self) -> str | None: ...
    @property
    def insecure_skip_verify(self) -> bool: ...
    @property
    def min_version(self) -> str: ...  # "1.2" or "1.3"
    @property
    def max_version(self) -> str: ...  # "1.2" or "1.3"
    @property
    def cipher_suites(self) -> Sequence[str]: ...


#: The suite tables live with the config schema, which validates names at load time.
TLS12_CIPHERS: Final = TLS12_IANA_TO_OPENSSL
TLS13_CIPHERS: Final = TLS13_SUITES

_OPENSSL_NAMES: Final = frozenset(TLS12_CIPHERS.values())
_VERSIONS: Final = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def openssl_cipher_string(suites: Sequence[str]) -> str | None:
    """The `set_ciphers` string for `suites`, or None when no TLS 1.2 suite is named.

    Raises ConfigError for a name that is neither in `TLS12_CIPHERS` (either spelling) nor a
    TLS 1.3 suite.
    """
    names: list[str] = []
    for suite in suites:
        name = suite.strip()
        if name in TLS12_CIPHERS:
            names.append(TLS12_CIPHERS[name])
        elif name in _OPENSSL_NAMES:
            names.append(name)
        elif name in TLS13_CIPHERS:
            continue  # cannot be set per context in Python's ssl module; see the module doc
        else:
            raise ConfigError(f"unknown or unsupported cipher suite {suite!r}", path="tls.cipher_suites")
    return ":".join(dict.fromkeys(names)) or None


def _version(value: str, key: str) -> ssl.TLSVersion:
    try:
        return _VERSIONS[value]
    except KeyError:
        raise ConfigError(f"must be '1.2' or '1.3', not {value!r}", path=f"tls.{key}") from None


def _no_password() -> NoReturn:
    raise ConfigError("encrypted private keys are not supported", path="tls.key_file")


def client_ssl_context(opts: TLSOptions | None) -> ssl.SSLContext | None:
    """Build the client context for one upstream; None when TLS options are absent or disabled.

    None means "use aiohttp's default verifying context" (system trust store, hostname check).
    Raises ConfigError when a file cannot be loaded or a setting is invalid.
    """
    if opts is None or not opts.enabled:
        return None
    minimum = _version(opts.min_version, "min_version")
    maximum = _version(opts.max_version, "max_version")
    if minimum > maximum:
        raise ConfigError("min_version is above max_version", path="tls.min_version")

    try:
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=opts.ca_file or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot load CA file: {exc}", path="tls.ca_file") from exc
    ctx.minimum_version = minimum
    ctx.maximum_version = maximum

    ciphers = openssl_cipher_string(opts.cipher_suites)
    if ciphers is not None:
        try:
            ctx.set_ciphers(ciphers)
        except ssl.SSLError as exc:
            raise ConfigError(f"no usable cipher suite: {exc}", path="tls.cipher_suites") from exc

    if opts.key_file and not opts.cert_file:
        raise ConfigError("key_file needs cert_file", path="tls.key_file")
    if opts.cert_file:
        try:
            ctx.load_cert_chain(opts.cert_file, opts.key_file or None, password=_no_password)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load client certificate: {exc}", path="tls.cert_file") from exc
        ctx.post_handshake_auth = True

    if opts.insecure_skip_verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        logger.warning(
            "TLS certificate verification is DISABLED for an upstream (insecure_skip_verify): "
            "its identity is not checked and traffic can be intercepted"
        )
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx
