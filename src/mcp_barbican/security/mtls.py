"""Client authentication by the verified TLS client certificate (`auth.type: mtls`).

The listener verified the certificate against `server.tls.ca_file` during the handshake and
put its leaf into `scope["extensions"]["tls"]["client_cert_chain"]` (ASGI TLS extension); a
certificate that fails verification never gets that far. What is left is choosing the
identity (`subject_cn`, `san_uri` or `san_dns`) and naming the principal `mtls:{identity}`.

Parsing is remembered per certificate (the PEM text, one object per connection), so a
connection's requests after the first cost one dict lookup; the table is bounded.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final, Literal

from cryptography import x509
from cryptography.x509.oid import NameOID

from mcp_barbican.security.auth import Authenticate, AuthFailure
from mcp_barbican.security.pipeline import Head
from mcp_barbican.security.principal import Principal
from mcp_barbican.types import Receive, Scope, Send

if TYPE_CHECKING:
    from mcp_barbican.config import MtlsConfig

__all__ = ["NO_CERTIFICATE", "CertificateAuth", "CertificateIdentity", "certificate_pem", "identity_of"]

Identity = Literal["subject_cn", "san_uri", "san_dns"]

#: The reason when the connection carries no client certificate (treated like a missing credential).
NO_CERTIFICATE: Final = "missing credentials"
#: Certificates remembered per layer (all are forgotten when it is full).
_KNOWN_MAX: Final = 1024


def certificate_pem(scope: Mapping[str, Any]) -> str | None:
    """The verified client certificate of the request's connection (PEM), None without one."""
    extensions = scope.get("extensions")
    tls = extensions.get("tls") if isinstance(extensions, dict) else None
    chain = tls.get("client_cert_chain") if isinstance(tls, dict) else None
    if not chain or not isinstance(chain[0], str):
        return None
    return chain[0]


def identity_of(certificate: x509.Certificate, identity: Identity) -> str | None:
    """The chosen identity of a certificate: its subject CN, or its first URI or DNS SAN; None without one.

    A subject with several CNs has no single identity (None); SANs are taken in the order
    the certificate lists them.
    """
    if identity == "subject_cn":
        names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        value = names[0].value if len(names) == 1 else None
        return value if isinstance(value, str) and value else None
    try:
        sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    kind: type[x509.UniformResourceIdentifier | x509.DNSName]
    kind = x509.UniformResourceIdentifier if identity == "san_uri" else x509.DNSName
    found = sans.get_values_for_type(kind)
    return found[0] if found and found[0] else None


class CertificateIdentity:
    """Maps a verified client certificate (PEM) to its principal, remembering each certificate's verdict."""

    def __init__(self, config: MtlsConfig) -> None:
        self.identity: Identity = config.identity
        self._known: dict[str, Principal | AuthFailure] = {}

    async def authenticate(self, credential: str) -> Principal | AuthFailure:
        return self.verify(credential)

    def of_scope(self, scope: Mapping[str, Any]) -> Principal | AuthFailure:
        pem = certificate_pem(scope)
        return AuthFailure(NO_CERTIFICATE) if pem is None else self.verify(pem)

    def remembered(self, pem: str) -> Principal | None:
        verdict = self._known.get(pem)
        return verdict if isinstance(verdict, Principal) else None

    def verify(self, pem: str) -> Principal | AuthFailure:
        verdict = self._known.get(pem)
        if verdict is None:
            verdict = self._decide(pem)
            if len(self._known) >= _KNOWN_MAX:
                self._known.clear()
            self._known[pem] = verdict
        return verdict

    def _decide(self, pem: str) -> Principal | AuthFailure:
        try:
            certificate = x509.load_pem_x509_certificate(pem.encode("ascii"))
        except ValueError:
            return AuthFailure("unreadable client certificate")
        value = identity_of(certificate, self.identity)
        if value is None:
            return AuthFailure(f"the client certificate has no {self.identity}")
        claims = {"sub": value, "subject": certificate.subject.rfc4514_string()}
        return Principal(id=f"mtls:{value}", kind="mtls", claims=claims)


class CertificateAuth(Authenticate):
    """Authenticate by the connection's certificate: 401 without one or without the identity, like any auth.

    The request's `Authorization` header (the configured `header`) is still removed: no
    credential of the client's reaches the upstream.
    """

    authenticator: CertificateIdentity

    @property
    def decides_fast(self) -> bool:
        return True

    def fast(self, scope: Scope, head: Head) -> bool:
        pem = certificate_pem(scope)
        principal = self.authenticator.remembered(pem) if pem is not None else None
        if principal is None:
            return False
        head.principal = principal
        return True

    def remembered(self, raw: bytes | None, now: float) -> Principal | None:
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        name = self.header
        headers = scope["headers"]
        if sum(1 for key, _ in headers if key == name) > 1:
            self.counters.authentication_attempts += 1
            await self._refuse(scope, send, self._repeated)
            return
        verdict = self.authenticator.of_scope(scope)
        if isinstance(verdict, AuthFailure):
            self.counters.authentication_attempts += 1
            await self._refuse(scope, send, verdict)
            return
        self.admit(scope, verdict, [header for header in headers if header[0] != name])
        await self.record_success(scope, verdict)
        await self.app(scope, receive, send)
