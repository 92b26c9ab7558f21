"""TLS settings: the proxy's listener (`server.tls`) and each upstream connection (`mcps[].tls`)."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal, Self

from pydantic import AfterValidator, BeforeValidator, model_validator

from mcp_barbican.config.errors import LocatedError
from mcp_barbican.config.fields import Model, NonEmptyStr

__all__ = ["TLS12_IANA_TO_OPENSSL", "TLS13_SUITES", "CipherSuite", "ServerTLSConfig", "TlsVersion", "UpstreamTLSConfig"]

#: TLS 1.2 cipher suites accepted by IANA name, with the OpenSSL name `ssl.set_ciphers()` takes.
TLS12_IANA_TO_OPENSSL: dict[str, str] = {
    "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
    "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
    "TLS_DHE_RSA_WITH_AES_128_GCM_SHA256": "DHE-RSA-AES128-GCM-SHA256",
    "TLS_DHE_RSA_WITH_AES_256_GCM_SHA384": "DHE-RSA-AES256-GCM-SHA384",
    "TLS_DHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "DHE-RSA-CHACHA20-POLY1305",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256": "ECDHE-ECDSA-AES128-SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256": "ECDHE-RSA-AES128-SHA256",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA384": "ECDHE-ECDSA-AES256-SHA384",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA384": "ECDHE-RSA-AES256-SHA384",
    "TLS_DHE_RSA_WITH_AES_128_CBC_SHA256": "DHE-RSA-AES128-SHA256",
    "TLS_DHE_RSA_WITH_AES_256_CBC_SHA256": "DHE-RSA-AES256-SHA256",
}

#: TLS 1.3 suite names accepted (OpenSSL chooses among them; Python's ssl cannot restrict them).
TLS13_SUITES: frozenset[str] = frozenset(
    {
        "TLS_AES_128_GCM_SHA256",
        "TLS_AES_256_GCM_SHA384",
        "TLS_CHACHA20_POLY1305_SHA256",
        "TLS_AES_128_CCM_SHA256",
        "TLS_AES_128_CCM_8_SHA256",
    }
)


def _check_cipher_suite(value: str) -> str:
    name = value.strip()
    if name in TLS13_SUITES or name in TLS12_IANA_TO_OPENSSL:
        return name
    for iana, openssl in TLS12_IANA_TO_OPENSSL.items():
        if openssl == name:
            raise ValueError(f"cipher suite {name!r} is an OpenSSL name; use the IANA name {iana}")
    raise ValueError(
        f"unknown or insecure cipher suite {name!r}: use IANA names such as "
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 (TLS 1.2) or TLS_AES_128_GCM_SHA256 (TLS 1.3)"
    )


def _normalize_tls_version(value: object) -> object:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return value
    text = str(value).strip().lower().removeprefix("tlsv").removeprefix("tls").strip()
    if text in ("1", "1.0", "1.1"):
        raise ValueError(f"TLS {value} is not allowed: TLS 1.0 and 1.1 are deprecated by RFC 8996; use 1.2 or 1.3")
    return text


CipherSuite = Annotated[str, AfterValidator(_check_cipher_suite)]
TlsVersion = Annotated[Literal["1.2", "1.3"], BeforeValidator(_normalize_tls_version)]


class ServerTLSConfig(Model):
    """TLS of the proxy's own listener (`server.tls`)."""

    #: Fields naming files read at load (`check_files`).
    FILES: ClassVar[tuple[str, ...]] = ("cert_file", "key_file", "ca_file")

    enabled: bool = True
    cert_file: NonEmptyStr | None = None
    key_file: NonEmptyStr | None = None
    ca_file: NonEmptyStr | None = None
    client_auth: Literal["none", "optional", "required"] = "none"
    min_version: TlsVersion = "1.2"
    max_version: TlsVersion = "1.3"
    cipher_suites: tuple[CipherSuite, ...] = ()

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.enabled and self.cert_file is None:
            raise LocatedError(("cert_file",), "required when TLS is enabled")
        if self.enabled and self.key_file is None:
            raise LocatedError(("key_file",), "required when TLS is enabled")
        if self.client_auth != "none" and self.ca_file is None:
            raise LocatedError(("ca_file",), f"required with client_auth: {self.client_auth} (trust roots of clients)")
        _check_version_order(self.min_version, self.max_version)
        return self


class UpstreamTLSConfig(Model):
    """TLS of the connection to one upstream (`mcps[].tls`)."""

    FILES: ClassVar[tuple[str, ...]] = ("ca_file", "cert_file", "key_file")

    enabled: bool = True
    ca_file: NonEmptyStr | None = None
    cert_file: NonEmptyStr | None = None
    key_file: NonEmptyStr | None = None
    insecure_skip_verify: bool = False
    min_version: TlsVersion = "1.2"
    max_version: TlsVersion = "1.3"
    cipher_suites: tuple[CipherSuite, ...] = ()

    @model_validator(mode="after")
    def _check(self) -> Self:
        if self.cert_file is not None and self.key_file is None:
            raise LocatedError(("key_file",), "required with cert_file (client certificate for upstream mTLS)")
        if self.key_file is not None and self.cert_file is None:
            raise LocatedError(("cert_file",), "required with key_file (client certificate for upstream mTLS)")
        _check_version_order(self.min_version, self.max_version)
        return self


def _check_version_order(min_version: str, max_version: str) -> None:
    if min_version > max_version:
        raise LocatedError(("max_version",), f"{max_version} is below min_version {min_version}")
