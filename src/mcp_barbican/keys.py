"""Key material: public keys for verifying JWTs (which algorithms a key may verify, loading one from a
PEM file), and HKDF for the keys the proxy derives from its secrets (sealed session ids, console cookies).

A leaf: `config check` loads a key file exactly as the verifier does, without the verifier.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import load_pem_public_key

__all__ = [
    "MIN_RSA_BITS",
    "PUBLIC_KEY_TYPES",
    "PublicKey",
    "compatible_algorithms",
    "describe_key",
    "hkdf",
    "load_key_file",
    "load_public_key",
]

#: RSA keys below this size are too weak to trust (NIST SP 800-131A).
MIN_RSA_BITS: Final = 2048

_HMAC_ALGORITHMS: Final = frozenset({"HS256", "HS384", "HS512"})
_RSA_ALGORITHMS: Final = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
_EC_ALGORITHM_BY_CURVE: Final = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
PUBLIC_KEY_TYPES: Final = (rsa.RSAPublicKey, ec.EllipticCurvePublicKey, ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey


@functools.lru_cache(maxsize=64)
def hkdf(secret: bytes, info: bytes, length: int = 32) -> bytes:
    """RFC 5869 HKDF-SHA256 without salt (every secret it is given is already high in entropy)."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=info).derive(secret)


def compatible_algorithms(key: PublicKey | bytes) -> frozenset[str]:
    """The JWS algorithms a key of this type and size can verify (RFC 8725 §3.1: one family per key)."""
    if isinstance(key, bytes):
        return _HMAC_ALGORITHMS
    if isinstance(key, rsa.RSAPublicKey):
        return _RSA_ALGORITHMS if key.key_size >= MIN_RSA_BITS else frozenset()
    if isinstance(key, ec.EllipticCurvePublicKey):
        alg = _EC_ALGORITHM_BY_CURVE.get(key.curve.name)
        return frozenset({alg}) if alg else frozenset()
    return frozenset({"EdDSA"})


def describe_key(key: PublicKey | bytes) -> str:
    if isinstance(key, bytes):
        return "HMAC secret"
    if isinstance(key, rsa.RSAPublicKey):
        return f"{key.key_size}-bit RSA key"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name} key"
    return "Ed25519 key" if isinstance(key, ed25519.Ed25519PublicKey) else "Ed448 key"


def load_public_key(path: Path) -> PublicKey:
    """The public key in a PEM file (a public key or a certificate); ValueError says what is wrong."""
    data = path.read_bytes()
    if b"PRIVATE KEY-----" in data:
        raise ValueError("it holds a private key; give the public key (openssl pkey -pubout)")
    if b"-----BEGIN CERTIFICATE-----" in data:
        key: object = x509.load_pem_x509_certificate(data).public_key()
    else:
        key = load_pem_public_key(data)
    if not isinstance(key, PUBLIC_KEY_TYPES):
        raise ValueError(f"unsupported key type {type(key).__name__}")
    return key


def load_key_file(path: Path, allowed: frozenset[str]) -> tuple[PublicKey, frozenset[str]]:
    """A `public_key_file` and the allowed algorithms it verifies; ValueError names the file and the problem."""
    try:
        key = load_public_key(path)
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot use public_key_file {str(path)!r}: {exc}") from None
    algorithms = compatible_algorithms(key) & allowed
    if not algorithms:
        raise ValueError(
            f"public_key_file {str(path)!r} ({describe_key(key)}) verifies none of "
            f"{', '.join(sorted(allowed))} (RSA keys need {MIN_RSA_BITS} bits or more)"
        )
    return key, algorithms
